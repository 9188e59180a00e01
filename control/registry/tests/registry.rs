//! Registry contract tests: the same checks against `MemoryRegistry` and `RedisRegistry` (a real
//! `redis-server` started on a free loopback port).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registry::{
    MemoryRegistry, NodeInfo, NodeLoad, NodeState, Placement, RedisRegistry, RedisSettings,
    Registry, RegistryError, RegistryTiming,
};

const DEAD_AFTER: Duration = Duration::from_millis(600);

struct RedisServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

/// Fail (never skip) when redis-server is missing.
fn require_redis() {
    assert!(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is required: apt-get install redis-server, or run ./scripts/test"
    );
}

impl RedisServer {
    /// Start redis-server on a free loopback port and wait until it answers.
    fn start() -> Self {
        require_redis();
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sfu-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = spawn_redis(port, &dir);
        let s = Self { child, dir, port };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn registry(&self, prefix: &str) -> RedisRegistry {
        let mut s = RedisSettings::new(format!("redis://127.0.0.1:{}", self.port));
        s.prefix = prefix.into();
        s.timing = RegistryTiming {
            dead_after: DEAD_AFTER,
        };
        RedisRegistry::new(s).expect("registry")
    }
}

/// `redis-server` on `port` in `dir`, no persistence.
fn spawn_redis(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

impl RedisServer {
    /// Kill and start again on the same port, empty (no persistence); wait until it answers.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_redis(self.port, &self.dir);
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node(id: &str, participants: u32) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        media_ip: "127.0.0.1".into(),
        media_ports: vec![40000],
        capacity_rooms: 0,
        load: NodeLoad {
            participants,
            ..NodeLoad::default()
        },
        state: NodeState::Serving,
        version: "test".into(),
    }
}

/// The contract. `r` and `other` share one registry (two processes' views).
fn contract(r: &mut dyn Registry, other: &mut dyn Registry) {
    assert_eq!(
        r.place_room("r0", &[]),
        Err(RegistryError::NoNodes),
        "no nodes yet"
    );

    r.heartbeat(&node("n1", 10)).expect("hb");
    other.heartbeat(&node("n2", 0)).expect("hb");
    let mut ids: Vec<String> = r
        .nodes()
        .expect("nodes")
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2"]);

    // Least loaded wins; a placed room stays put (same epoch) for everyone.
    let p1 = r.place_room("r1", &[]).expect("place");
    assert_eq!(p1.node, "n2");
    assert_eq!(other.place_room("r1", &[]).expect("place"), p1);
    // Rooms count as load: n2 now has one room, n1 ten participants → n2 again, then still n2
    // until it reaches n1's load.
    let p2 = r.place_room("r2", &[]).expect("place");
    assert_eq!(p2.node, "n2");
    assert!(p2.epoch > p1.epoch, "every placement takes a new epoch");
    assert_eq!(
        r.room_owners(&["r1".into(), "nope".into()])
            .expect("owners"),
        vec![Some(p1.clone()), None]
    );

    // A draining node gets no new rooms but keeps its rooms.
    let mut drain = node("n2", 0);
    drain.state = NodeState::Draining;
    other.heartbeat(&drain).expect("hb");
    assert_eq!(r.place_room("r3", &[]).expect("place").node, "n1");
    assert_eq!(
        r.place_room("r1", &[]).expect("place"),
        p1,
        "existing room stays on the draining node"
    );
    other.heartbeat(&node("n2", 0)).expect("hb");

    // Capacity: a full node is skipped.
    let mut full = node("n1", 0);
    full.capacity_rooms = 1; // n1 already has r3
    r.heartbeat(&full).expect("hb");
    assert_eq!(r.place_room("r4", &[]).expect("place").node, "n2");
    r.heartbeat(&node("n1", 10)).expect("hb");

    // Release is compare-and-delete on the exact placement.
    let stale = Placement {
        node: p1.node.clone(),
        epoch: p1.epoch + 1000,
    };
    assert_eq!(r.release_room("r1", &stale), Ok(false));
    assert_eq!(r.release_room("r1", &p1), Ok(true));
    assert_eq!(r.room_owners(&["r1".into()]).expect("owners"), vec![None]);

    // Exclusion (a caller saw the owner fail): re-placed elsewhere with a larger epoch; the old
    // owner can no longer release it (fencing).
    let p5 = r.place_room("r5", &[]).expect("place");
    let moved = r
        .place_room("r5", std::slice::from_ref(&p5.node))
        .expect("re-place");
    assert_ne!(moved.node, p5.node);
    assert!(moved.epoch > p5.epoch);
    assert_eq!(r.release_room("r5", &p5), Ok(false));
    assert_eq!(other.place_room("r5", &[]).expect("place"), moved);

    // mark_dead: immediately re-placed; a heartbeat revives the node.
    let owner = moved.node.clone();
    other.mark_dead(&owner).expect("mark");
    let again = r.place_room("r5", &[]).expect("place");
    assert_ne!(again.node, owner);
    assert!(again.epoch > moved.epoch);
    r.heartbeat(&node(&owner, 0)).expect("hb");
    assert!(r.nodes().expect("nodes").iter().any(|n| n.node_id == owner));

    // Death by silence: n1 stops heartbeating; its rooms move on the next placement, and the
    // reaper removes the node and its mappings.
    let on_n1 = r.place_room("r6", &["n2".into()]).expect("place on n1");
    assert_eq!(on_n1.node, "n1");
    let end = Instant::now() + DEAD_AFTER * 3;
    while Instant::now() < end {
        other.heartbeat(&node("n2", 0)).expect("hb");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        r.nodes()
            .expect("nodes")
            .iter()
            .map(|n| n.node_id.as_str())
            .collect::<Vec<_>>(),
        ["n2"]
    );
    let r6 = r.place_room("r6", &[]).expect("re-place");
    assert_eq!(r6.node, "n2");
    assert!(r6.epoch > on_n1.epoch);
    let _ = r.place_room("r7", &["n2".into()]);
    assert_eq!(r.reap_dead().expect("reap"), vec!["n1".to_string()]);
    assert_eq!(r.reap_dead().expect("reap"), Vec::<String>::new());
    assert_eq!(
        r.room_owners(&["r3".into()]).expect("owners"),
        vec![None],
        "dead node's rooms are gone"
    );

    // Re-assert: a missing mapping is restored under the node's epoch, the counter never goes
    // back below it, and a room held elsewhere under a newer epoch is reported, not taken.
    let high = r6.epoch + 500;
    let lost = other
        .reassert("n2", &[("gone".into(), high), ("r6".into(), r6.epoch)])
        .expect("reassert");
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(
        r.room_owners(&["gone".into()]).expect("owners"),
        vec![Some(Placement {
            node: "n2".into(),
            epoch: high
        })]
    );
    let next = r.place_room("after-reassert", &[]).expect("place");
    assert!(next.epoch > high, "epochs never go backwards: {next:?}");
    r.heartbeat(&node("n1", 0)).expect("hb");
    let lost = r
        .reassert("n1", &[("gone".into(), high - 1)])
        .expect("reassert");
    assert_eq!(
        lost,
        vec!["gone".to_string()],
        "n2 holds it under a newer epoch"
    );
    let stale_elsewhere = r
        .reassert("n1", &[("after-reassert".into(), next.epoch + 1)])
        .expect("reassert");
    assert!(
        stale_elsewhere.is_empty(),
        "an older mapping elsewhere is taken back"
    );
    assert_eq!(
        r.place_room("after-reassert", &[]).expect("place").node,
        "n1"
    );

    other.deregister("n2").expect("deregister");
    r.deregister("n1").expect("deregister");
    assert!(r.nodes().expect("nodes").is_empty());
    assert_eq!(r.place_room("r8", &[]), Err(RegistryError::NoNodes));
}

#[test]
fn memory_registry_contract() {
    let timing = RegistryTiming {
        dead_after: DEAD_AFTER,
    };
    let mut a = MemoryRegistry::new(timing);
    let mut b = a.clone();
    contract(&mut a, &mut b);
}

#[test]
fn redis_registry_contract() {
    let redis = RedisServer::start();
    let mut a = redis.registry("t1");
    let mut b = redis.registry("t1");
    contract(&mut a, &mut b);
}

#[test]
fn redis_placement_is_atomic_under_concurrency() {
    let redis = RedisServer::start();
    let mut setup = redis.registry("t2");
    for i in 0..4 {
        setup.heartbeat(&node(&format!("n{i}"), 0)).expect("hb");
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let mut r = redis.registry("t2");
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| r.place_room(&format!("room{i}"), &[]).expect("place"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Placement>> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    for r in &results[1..] {
        assert_eq!(
            r, &results[0],
            "every caller sees the same owner and epoch for each room"
        );
    }
    let mut per_node = std::collections::HashMap::new();
    for p in &results[0] {
        *per_node.entry(p.node.clone()).or_insert(0) += 1;
    }
    assert!(
        per_node.values().all(|n| (10..=15).contains(n)),
        "spread by load: {per_node:?}"
    );
}

#[test]
fn redis_outage_is_a_fast_error_and_recovers() {
    let mut redis = RedisServer::start();
    let mut r = redis.registry("t3");
    r.heartbeat(&node("n1", 0)).expect("hb");
    let port = redis.port;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let t = Instant::now();
    for _ in 0..5 {
        assert!(matches!(
            r.place_room("x", &[]),
            Err(RegistryError::Unavailable(_))
        ));
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "errors are fast: {:?}",
        t.elapsed()
    );
    // Redis returns on the same port: the registry reconnects by itself.
    redis.child = spawn_redis(port, &redis.dir);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if r.heartbeat(&node("n1", 0)).is_ok() {
            break;
        }
        assert!(Instant::now() < end, "registry did not reconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Redis came back empty: unmapped rooms wait out the recovery window (nodes re-assert
    // theirs meanwhile), then placement works again without any restart.
    let end = Instant::now() + Duration::from_secs(10);
    let placed = loop {
        match r.place_room("x", &[]) {
            Err(RegistryError::Recovering) => {
                assert!(Instant::now() < end, "the recovery window never ended");
                std::thread::sleep(Duration::from_millis(100));
                r.heartbeat(&node("n1", 0)).expect("hb"); // the node stays alive meanwhile
            }
            other => break other,
        }
    };
    assert_eq!(placed.expect("place").node, "n1");
}

fn flushall(port: u16) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "FLUSHALL"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
}

fn short_window(redis: &RedisServer, prefix: &str) -> RedisRegistry {
    let mut s = RedisSettings::new(format!("redis://127.0.0.1:{}", redis.port));
    s.prefix = prefix.into();
    s.timing = RegistryTiming {
        dead_after: Duration::from_secs(5),
    };
    s.recovery_window = Duration::from_millis(800);
    RedisRegistry::new(s).expect("registry")
}

/// Failure recovery 1: Redis forgot everything (`FLUSHALL`; a restart without persistence does
/// the same). The node notices at its next heartbeat and re-asserts its room; meanwhile a join
/// of that room is told to retry (not placed elsewhere under a restarted epoch counter); then it
/// finds the real owner, and the counter continues above every epoch in use.
#[test]
fn redis_data_loss_is_noticed_and_live_rooms_are_reasserted() {
    let redis = RedisServer::start();
    let mut a = short_window(&redis, "t4");
    let mut b = short_window(&redis, "t4");
    let mut sig = short_window(&redis, "t4");
    assert!(
        !a.heartbeat(&node("a", 5)).expect("hb"),
        "a fresh registry is not a loss"
    );
    b.heartbeat(&node("b", 0)).expect("hb");
    let live = sig.place_room("live", &[]).expect("place");
    assert_eq!(live.node, "b");
    for i in 0..5 {
        sig.place_room(&format!("x{i}"), &[]).expect("place");
    }
    let highest = sig.place_room("last", &[]).expect("place").epoch;

    flushall(redis.port);
    // The first caller after the loss is signaling placing the live room again: it must not get
    // a fresh placement (the registry no longer knows b holds it).
    assert_eq!(
        sig.place_room("live", &[]),
        Err(RegistryError::Recovering),
        "no placement of an unmapped room while the registry recovers"
    );
    // The nodes notice at their next heartbeat and re-assert.
    assert!(
        a.heartbeat(&node("a", 5)).expect("hb"),
        "a notices the loss"
    );
    assert!(
        b.heartbeat(&node("b", 0)).expect("hb"),
        "b notices the loss"
    );
    assert!(!b.heartbeat(&node("b", 0)).expect("hb"), "once");
    assert!(
        b.reassert("b", &[("live".into(), live.epoch)])
            .expect("reassert")
            .is_empty()
    );
    // A mapped room is placed at once, window or not.
    assert_eq!(sig.place_room("live", &[]).expect("place"), live);
    // After the window, new rooms are placed with epochs above every one still in use.
    std::thread::sleep(Duration::from_millis(900));
    let fresh = sig.place_room("fresh", &[]).expect("place");
    assert!(fresh.epoch > live.epoch, "{fresh:?} vs {live:?}");
    assert!(
        fresh.epoch <= highest + 2,
        "only the epochs nodes still hold count: {fresh:?} (highest before {highest})"
    );
}

/// Failure recovery 2: the first request after Redis came back used to fail ("unexpected end of
/// file") on the stale connection. It is now retried once on a fresh connection.
#[test]
fn the_first_request_after_redis_returns_is_served() {
    let mut redis = RedisServer::start();
    let mut r = redis.registry("t5");
    r.heartbeat(&node("n1", 0)).expect("hb");
    let p = r.place_room("room", &[]).expect("place");
    // Restart with the data kept (as with persistence): the connection is stale, the data not.
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "DEBUG", "RELOAD"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
    let _ = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "normal",
        ])
        .output();
    assert_eq!(
        r.room_owners(&["room".into()])
            .expect("the first request after the outage"),
        vec![Some(p)]
    );
    // And after a real restart (new server, data gone): the first call is answered, not an EOF.
    redis.restart();
    assert!(
        r.heartbeat(&node("n1", 0))
            .expect("the first heartbeat after the restart"),
        "the new server is noticed"
    );
}

/// A restart that kept the data (RDB) changes only the server's run id. The first call after it
/// is retried on a fresh connection with the arguments built for the old server, so it cannot
/// see the change; the next call must (it used to be lost for good), and the recovery window
/// opens.
#[test]
fn a_redis_restart_that_kept_the_data_is_noticed_after_a_retried_call() {
    let mut redis = RedisServer::start();
    let mut r = short_window(&redis, "t7");
    assert!(!r.heartbeat(&node("n1", 0)).expect("hb"));
    let kept = r.place_room("kept", &[]).expect("place");
    assert_eq!(redis_cli(redis.port, &["SAVE"]).trim(), "OK");
    redis.restart();
    let first = r
        .heartbeat(&node("n1", 0))
        .expect("first heartbeat after the restart");
    let noticed = first || r.heartbeat(&node("n1", 0)).expect("second heartbeat");
    assert!(
        noticed,
        "the new server incarnation is noticed by the second call at the latest"
    );
    assert!(!r.heartbeat(&node("n1", 0)).expect("hb"), "and only once");
    assert_eq!(
        r.place_room("unmapped", &[]),
        Err(RegistryError::Recovering),
        "the recovery window is open"
    );
    assert_eq!(
        r.place_room("kept", &[]).expect("mapped rooms still place"),
        kept
    );
}

/// After a flush, a process that started afterwards (knowing no generation) creates the new one;
/// the first caller that knew the old generation must still open the recovery window (it used
/// to see the change but open none, so live rooms could be placed on a second node).
#[test]
fn a_flush_first_seen_by_a_new_process_still_opens_the_recovery_window() {
    let redis = RedisServer::start();
    let mut old = short_window(&redis, "t8");
    let mut sig = short_window(&redis, "t8");
    assert!(!old.heartbeat(&node("a", 0)).expect("hb"));
    sig.place_room("live", &[]).expect("place");
    flushall(redis.port);
    let mut newcomer = short_window(&redis, "t8");
    assert!(
        !newcomer.heartbeat(&node("b", 0)).expect("hb"),
        "a process that knew nothing has nothing to notice"
    );
    assert!(
        old.heartbeat(&node("a", 0)).expect("hb"),
        "the old node notices the loss"
    );
    assert_eq!(
        newcomer.place_room("live", &[]),
        Err(RegistryError::Recovering),
        "no placement of an unmapped room while the nodes re-assert"
    );
}

/// A `redis-server` in cluster mode owning all slots: multi-key commands and scripts must keep
/// every key in one slot (a key in another slot fails with CROSSSLOT or "non local key").
fn cluster_node(dir: &std::path::Path, port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-node-timeout",
            "2000",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server --cluster-enabled")
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Failure recovery 3: the Lua scripts used to touch keys they did not declare, in several
/// slots, so Redis Cluster refused them. Every key is declared and hash-tagged now: the whole
/// contract passes on a three-master Redis Cluster, reached through a node that does not own
/// the slot (its `MOVED` answer is followed).
#[test]
fn the_registry_runs_on_redis_cluster() {
    require_redis();
    let dir = std::env::temp_dir().join(format!("sfu-redis-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut children: Vec<Child> = ports.iter().map(|p| cluster_node(&dir, *p)).collect();
    let end = Instant::now() + Duration::from_secs(10);
    for p in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(Instant::now() < end, "cluster node did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let end = Instant::now() + Duration::from_secs(20);
    while !ports
        .iter()
        .all(|p| redis_cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < end, "cluster did not converge");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node that does not own the slot of our hash tag.
    let via = ports
        .iter()
        .copied()
        .find(|p| redis_cli(*p, &["GET", "{t6}:probe"]).contains("MOVED"))
        .expect("a node that does not own the slot");
    let registry = |prefix: &str| {
        let mut s = RedisSettings::new(format!("redis://127.0.0.1:{via}"));
        s.prefix = prefix.into();
        s.timing = RegistryTiming {
            dead_after: DEAD_AFTER,
        };
        RedisRegistry::new(s).expect("registry")
    };
    let mut a = registry("t6");
    let mut b = registry("t6");
    contract(&mut a, &mut b);
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

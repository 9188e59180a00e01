//! The registry contract (one function, every implementation): nodes, least-loaded placement,
//! draining, capacity, compare-and-delete release, fencing on re-placement, death by
//! `mark_dead` and by silence, reaping, re-assertion. Run on the memory registry (fake clock),
//! standalone Redis and a three-master Redis Cluster; plus placement under concurrency.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::harness::wait_until;
use registry::{
    ManualClock, MemoryRegistry, NodeState, Placement, RedisRegistry, RedisSettings, Registry,
    RegistryError, RegistryTiming,
};

use super::{DEAD_AFTER, RedisServer, node};

/// The contract. `r` and `other` share one registry (two processes' views); `pass` lets time
/// go by (the memory registry's fake clock advances; Redis, which compares its own server
/// time, needs real time to pass).
fn contract(r: &mut dyn Registry, other: &mut dyn Registry, pass: &dyn Fn(Duration)) {
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
    let step = Duration::from_millis(100);
    for _ in 0..(DEAD_AFTER * 3).as_millis() / step.as_millis() {
        other.heartbeat(&node("n2", 0)).expect("hb");
        pass(step);
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

/// The contract on the memory registry, on a fake clock: expiry without sleeping.
#[test]
fn memory_registry_contract() {
    let timing = RegistryTiming {
        dead_after: DEAD_AFTER,
    };
    let clock = ManualClock::new();
    let mut a = MemoryRegistry::with_clock(timing, Arc::new(clock.clone()));
    let mut b = a.clone();
    let t = Instant::now();
    contract(&mut a, &mut b, &|d| clock.advance(d));
    assert!(
        t.elapsed() < DEAD_AFTER,
        "the fake clock did the waiting: {:?}",
        t.elapsed()
    );
}

#[test]
fn redis_registry_contract() {
    let redis = RedisServer::start();
    let mut a = redis.registry("t1");
    let mut b = redis.registry("t1");
    contract(&mut a, &mut b, &std::thread::sleep);
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

/// Failure recovery 3: the Lua scripts used to touch keys they did not declare, in several
/// slots, so Redis Cluster refused them. Every key is declared and hash-tagged now: the whole
/// contract passes on a three-master Redis Cluster, reached through a node that does not own
/// the slot (its `MOVED` answer is followed).
#[test]
fn the_registry_runs_on_redis_cluster() {
    // Three masters, each in its own directory (a cluster node keeps its state in nodes.conf).
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let ports: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
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
    wait_until(
        "the cluster converges",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        },
    )
    .expect("cluster");
    // The node that does not own the slot of our hash tag.
    let via = nodes
        .iter()
        .find(|n| n.cli(&["GET", "{t6}:probe"]).contains("MOVED"))
        .map(RedisServer::port)
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
    contract(&mut a, &mut b, &std::thread::sleep);
}

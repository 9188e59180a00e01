//! Redis failures under live calls: an outage (calls continue, new rooms fail fast, nothing
//! busy-loops), data loss (`FLUSHALL`, a restart without persistence: live rooms stay on their
//! owners) and a Sentinel failover.

use std::time::{Duration, Instant};

use bench::client;
use bench::client::{Client, Media};
use bench::harness::{Cluster, Redis, RedisTopology, Sentinel, cpu_seconds, wait_until};

use super::{
    T, all_flowing, assert_keeps_flowing, assert_single_owners, call, cluster, join, serial,
    wait_registered,
};

/// Redis dies: calls continue, a new room fails quickly with `unavailable`, nothing crashes or
/// busy-loops, and when Redis returns the nodes re-register and new rooms work again.
#[test]
fn cluster_redis_outage_keeps_calls_and_refuses_new_rooms_quickly() {
    let (_serial, mut c) = cluster(&[], &[]);
    let epoch = Instant::now();
    // One call through each signaling instance, so both local and relayed sessions are covered.
    let mut cs = call(&c, "redis-a", &[(0, "a1"), (1, "a2")], epoch);

    c.redis.kill();
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.signaling.pid()])
        .flatten()
        .collect();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).expect("CPU time before"))
        .collect();
    assert_keeps_flowing(
        &c,
        &mut cs,
        Duration::from_secs(4),
        80,
        "during the Redis outage",
    );

    // A new room cannot be placed: a clear, quick error, not a hang.
    for via in 0..2 {
        let t = Instant::now();
        let err = Client::join(
            &c.nodes[via].ws_url(),
            &format!("new-room-{via}"),
            "x",
            Some(Media::default()),
            epoch,
            T,
        )
        .expect_err("no placement without Redis");
        let took = t.elapsed();
        assert!(format!("{err:#}").contains("unavailable"), "{err:#}");
        assert!(took < Duration::from_secs(3), "error took {took:?}");
    }
    // Nothing crashed or busy-looped meanwhile.
    let cpu1: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).expect("CPU time after"))
        .collect();
    for (i, n) in c.nodes.iter_mut().enumerate() {
        assert!(
            n.dataplane.running() && n.signaling.running(),
            "node {i} processes alive"
        );
    }
    for (a, b) in cpu0.iter().zip(&cpu1) {
        // Four seconds of a two-party call costs well under one CPU-second; a retry loop would not.
        assert!(b - a < 1.5, "CPU during the outage: {a} → {b}");
    }

    c.redis.restart().expect("redis back");
    wait_registered(&c, 2, "the nodes re-register with the returned Redis");
    let _fresh = call(&c, "after-redis", &[(0, "n1"), (1, "n2")], epoch);
    assert_keeps_flowing(
        &c,
        &mut cs,
        Duration::from_secs(1),
        20,
        "old call after Redis returned",
    );
}

/// Failure recovery 1: Redis forgot everything (FLUSHALL, then a restart without persistence).
/// A newcomer to a live room used to be placed on the other node under a restarted epoch, and
/// the real owner then closed the live call (`moved`). Now the nodes re-assert their rooms and
/// the newcomer lands on the owner; nothing is closed; epochs never go backwards.
#[test]
fn cluster_redis_data_loss_never_splits_or_closes_a_live_room() {
    let (_serial, mut c) = cluster(&[], &[]);
    let epoch = Instant::now();
    let mut cs = call(&c, "live", &[(0, "a"), (1, "b")], epoch);
    let owner = c
        .node_by_port(cs[0].server_port().expect("port"))
        .expect("owner");
    let (_, first_epoch) = c.room_owner("live").expect("mapped");
    for (round, wipe) in ["flushall", "restart"].iter().enumerate() {
        match *wipe {
            "flushall" => flush_all(&c, "live"),
            _ => {
                let before = run_id(&c);
                c.redis.kill();
                c.redis.restart().expect("redis back");
                assert_ne!(run_id(&c), before, "a new server incarnation");
            }
        }
        // A newcomer joins the live room through the instance that is not the owner's own.
        let via = 1 - owner;
        let name = format!("newcomer-{round}");
        let t = Instant::now();
        let n = join(&c, via, "live", &name, epoch);
        eprintln!("after {wipe}: newcomer joined in {:?}", t.elapsed());
        assert_eq!(
            c.node_by_port(n.server_port().expect("port")),
            Some(owner),
            "after {wipe} the newcomer landed on the live room's owner\n{}",
            c.logs()
        );
        cs.push(n);
        assert!(
            client::run(&mut cs, T, |cs| all_flowing(cs, 30)).expect("run"),
            "media with the newcomer after {wipe}\n{}",
            c.logs()
        );
        assert_eq!(
            cs.iter().map(|cl| cl.count("room_closed")).sum::<usize>(),
            0,
            "nobody's room was closed after {wipe}\n{}",
            c.logs()
        );
        let (node, e) = c.room_owner("live").expect("re-asserted");
        assert_eq!(node, c.nodes[owner].node_id);
        assert!(e >= first_epoch, "epoch went back: {e} < {first_epoch}");
        assert_single_owners(&c);
    }
    // New rooms get epochs above every one in use.
    let _fresh = call(&c, "fresh", &[(0, "f1"), (1, "f2")], epoch);
    let (_, fresh_epoch) = c.room_owner("fresh").expect("mapped");
    assert!(fresh_epoch > first_epoch, "{fresh_epoch} <= {first_epoch}");
}

/// Failure recovery 3: Sentinel-managed failover. The master dies; calls continue (media never
/// needs Redis), the nodes and signaling follow the sentinel to the promoted replica, new rooms
/// work, and no room ends up on two nodes.
#[test]
fn cluster_sentinel_failover_keeps_calls_and_places_nothing_twice() {
    let guard = serial();
    assert!(
        Redis::available() && Sentinel::available(),
        "redis-server and redis-sentinel are required"
    );
    let mut c = Cluster::start_with(2, &[], &[], RedisTopology::Sentinel).expect("cluster");
    let epoch = Instant::now();
    let mut cs = call(&c, "s1", &[(0, "a"), (1, "b")], epoch);
    let owner = c
        .node_by_port(cs[0].server_port().expect("port"))
        .expect("owner");
    let replica = c.sentinel.as_ref().expect("sentinel").replica.port;
    c.redis.kill();
    let killed = Instant::now();
    // Media continues while the sentinel notices and promotes the replica.
    let end = Instant::now() + Duration::from_secs(20);
    while c.master_port() != replica {
        assert_keeps_flowing(
            &c,
            &mut cs,
            Duration::from_millis(500),
            5,
            "during the failover",
        );
        assert!(Instant::now() < end, "no failover\n{}", c.logs());
    }
    eprintln!(
        "sentinel promoted the replica {:?} after the master died",
        killed.elapsed()
    );
    // Both nodes follow the sentinel: each heartbeats to the new master after its promotion (any
    // entry the replica copied from the old master is older than this).
    let promoted = c.redis_time_ms().expect("TIME on the new master");
    wait_until(
        "both nodes heartbeat to the new master",
        T,
        Duration::from_millis(100),
        || c.heartbeats_since(promoted).unwrap_or(0) >= 2,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // A new room works; a newcomer to the old room lands on its owner.
    let _fresh = call(&c, "s2", &[(0, "c"), (1, "d")], epoch);
    let n = join(&c, 1 - owner, "s1", "e", epoch);
    assert_eq!(c.node_by_port(n.server_port().expect("port")), Some(owner));
    cs.push(n);
    assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 30)).expect("run"));
    assert_eq!(
        cs.iter().map(|cl| cl.count("room_closed")).sum::<usize>(),
        0
    );
    assert_single_owners(&c);
    drop(guard);
}

/// `FLUSHALL` on the master, checked in the same script: the room's mapping existed just before
/// and the database is empty just after (the nodes may re-assert at any moment afterwards, so
/// this cannot be checked from outside later).
fn flush_all(c: &Cluster, room: &str) {
    let out = c.redis_cli(&[
        "EVAL",
        "local had = redis.call('EXISTS', KEYS[1]) redis.call('FLUSHALL') \
         return {had, redis.call('DBSIZE')}",
        "1",
        &format!("{{sfu}}:room:{room}"),
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "FLUSHALL wiped the mapping of {room} (had it, then an empty database): {out:?}"
    );
}

/// The current master's `run_id` (a new one for every server start).
fn run_id(c: &Cluster) -> String {
    let info = c.redis_cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no run_id in {info:?}"))
}

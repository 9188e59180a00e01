//! The cluster's failure behaviour with real processes: one real `redis-server`, two nodes
//! (dataplane + signaling each), synthetic str0m peers as clients.
//!
//! Needs `cargo build --bins`, `redis-server` and `redis-sentinel`; without them the tests fail
//! (`./scripts/test` installs them).
//!
//! One test binary; this file owns starting a cluster and the media checks the scenarios share.
//! The scenarios:
//! - `node_failures.rs`: signaling and dataplane crashes, a restart in place, a stalled node, a
//!   lost control link, repeated `room_closed` and rejoin;
//! - `redis_failures.rs`: Redis outage, Redis data loss, Sentinel failover;
//! - `operations.rs`: drain, rolling restart of signaling, the short chaos run.

mod node_failures;
mod operations;
mod redis_failures;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::client::{all_flowing, video_from};
use bench::harness::{Cluster, Redis, wait_until};

const T: Duration = Duration::from_secs(15);

/// The scenarios run one at a time: each starts five processes and measures timing-sensitive
/// behaviour (failure detection within ~2 s) that a 2-core machine shared with four other
/// clusters would blur.
static SERIAL: Mutex<()> = Mutex::new(());

/// Take the one-at-a-time lock (a failed scenario poisons it; the next one runs anyway).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fail (never skip) without `redis-server`.
fn require_redis() {
    assert!(
        Redis::available(),
        "redis-server is required: apt-get install redis-server, or run ./scripts/test"
    );
}

/// A two-node cluster around a standalone Redis, with the serial lock held.
fn cluster(dp_extra: &[&str], sig_extra: &[&str]) -> (MutexGuard<'static, ()>, Cluster) {
    let guard = serial();
    require_redis();
    (
        guard,
        Cluster::start(2, dp_extra, sig_extra).expect("cluster starts"),
    )
}

fn join(c: &Cluster, via: usize, room: &str, name: &str, epoch: Instant) -> Client {
    Client::join(
        &c.nodes[via].ws_url(),
        room,
        name,
        Some(Media::default()),
        epoch,
        T,
    )
    .unwrap_or_else(|e| panic!("{name} failed to join via node {via}: {e:#}\n{}", c.logs()))
}

/// Join `room` as each `(signaling instance, name)` and wait until everyone receives everyone's
/// video.
fn call(c: &Cluster, room: &str, parts: &[(usize, &str)], epoch: Instant) -> Vec<Client> {
    let mut cs: Vec<Client> = parts
        .iter()
        .map(|(via, name)| join(c, *via, room, name, epoch))
        .collect();
    assert!(
        client::run(&mut cs, T, |cs| all_flowing(cs, 30)).expect("run"),
        "{}",
        c.logs()
    );
    cs
}

/// Video counts between every pair.
fn counts(cs: &[Client]) -> Vec<u64> {
    cs.iter()
        .flat_map(|a| {
            cs.iter()
                .filter(|b| b.id != a.id)
                .map(move |b| video_from(a, b))
        })
        .collect()
}

/// Assert media keeps flowing for `d` (every pair gains at least `min_gain` packets).
fn assert_keeps_flowing(c: &Cluster, cs: &mut [Client], d: Duration, min_gain: u64, what: &str) {
    let before = counts(cs);
    client::run(cs, d, |_| false).expect("run");
    let after = counts(cs);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a >= &(b + min_gain),
            "{what}: media stalled {before:?} → {after:?}\n{}",
            c.logs()
        );
    }
}

/// Wait until at least `n` nodes are registered and alive in Redis.
fn wait_registered(c: &Cluster, n: usize, what: &str) {
    wait_until(what, T, Duration::from_millis(100), || {
        c.registered_nodes().unwrap_or(0) >= n
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// The rooms node `node`'s dataplane hosts.
fn rooms_on(c: &Cluster, node: usize) -> Vec<String> {
    match bench::harness::control_request(&c.nodes[node].control_socket, control::Request::Stats) {
        Ok(control::Response::Stats(s)) => s
            .workers
            .iter()
            .flat_map(|w| w.rooms.iter().map(|r| r.room.clone()))
            .collect(),
        other => panic!("stats of node {node}: {other:?}"),
    }
}

/// No room is hosted by two nodes, and every hosted room is mapped to its host in Redis.
fn assert_single_owners(c: &Cluster) {
    let per_node: Vec<Vec<String>> = (0..c.nodes.len()).map(|i| rooms_on(c, i)).collect();
    for (i, rooms) in per_node.iter().enumerate() {
        for room in rooms {
            for (j, other) in per_node.iter().enumerate() {
                assert!(
                    i == j || !other.contains(room),
                    "room {room} is hosted by two nodes\n{}",
                    c.logs()
                );
            }
            let owner = c.room_owner(room).map(|(n, _)| n);
            assert_eq!(
                owner.as_deref(),
                Some(c.nodes[i].node_id.as_str()),
                "room {room} on {} is mapped to {owner:?}",
                c.nodes[i].node_id
            );
        }
    }
}

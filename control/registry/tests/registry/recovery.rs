//! The Redis registry's failure recovery: an outage (fast errors, reconnection, the recovery
//! window), data loss (`FLUSHALL`: noticed, live rooms re-asserted, epochs re-seeded), stale
//! connections and restarts with and without the data, and a flush first seen by a process that
//! started after it.

use std::time::{Duration, Instant};

use bench::harness::poll;
use registry::{RedisRegistry, RedisSettings, Registry, RegistryError, RegistryTiming};

use super::{RedisServer, node};

#[test]
fn redis_outage_is_a_fast_error_and_recovers() {
    let mut redis = RedisServer::start();
    let mut r = redis.registry("t3");
    r.heartbeat(&node("n1", 0)).expect("hb");
    redis.kill();
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
    // Redis returns on the same port, empty: the registry reconnects by itself, and its first
    // answered heartbeat reports the loss.
    redis.restart();
    let noticed = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        r.heartbeat(&node("n1", 0)).ok()
    })
    .expect("registry did not reconnect");
    assert!(noticed, "the empty new server is noticed as a loss");
    // So unmapped rooms wait out the recovery window (nodes re-assert theirs meanwhile), then
    // placement works again without any restart.
    let mut recovering = 0;
    let placed = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        match r.place_room("x", &[]) {
            Err(RegistryError::Recovering) => {
                recovering += 1;
                r.heartbeat(&node("n1", 0)).expect("hb"); // the node stays alive meanwhile
                None
            }
            other => Some(other),
        }
    })
    .expect("the recovery window never ended");
    assert!(
        recovering >= 1,
        "placement waited for the recovery window before it succeeded"
    );
    assert_eq!(placed.expect("place").node, "n1");
}

/// `FLUSHALL`, checked: answered `OK` and nothing is left.
fn flushall(redis: &RedisServer) {
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "FLUSHALL left keys");
}

fn short_window(redis: &RedisServer, prefix: &str) -> RedisRegistry {
    let mut s = RedisSettings::new(format!("redis://127.0.0.1:{}", redis.port()));
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

    flushall(&redis);
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
    // After the window (800 ms), new rooms are placed again.
    let fresh = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match sig.place_room("fresh", &[]) {
            Err(RegistryError::Recovering) => None,
            other => Some(other),
        },
    )
    .expect("the recovery window never ended")
    .expect("place");
    // The counter was re-seeded from the epochs the nodes re-asserted (b's `live`), so the next
    // one follows it exactly: above every epoch in use, and the epochs of rooms nobody holds any
    // more (x0…x4, last: up to {highest}) are forgotten.
    assert_eq!(
        fresh.epoch,
        live.epoch + 1,
        "{fresh:?} after re-asserting {live:?} (highest before the loss {highest})"
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
    // The server keeps running with its data, but the registry's connection is cut under it
    // (as by a proxy, an idle timeout or a failed-over address): the next request finds a stale
    // connection. CLIENT KILL answers how many it cut (never its own).
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(
        killed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "CLIENT KILL cut the registry's connection: {killed:?}"
    );
    assert_eq!(
        r.room_owners(&["room".into()])
            .expect("the first request on the stale connection"),
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
    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
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
    flushall(&redis);
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

//! Operations on a live cluster: draining a node, a rolling restart of signaling, and the short
//! chaos run (random kills of every process kind, then the cluster's invariants).

use std::time::{Duration, Instant};

use bench::client;
use bench::harness::{http_get, wait_until};

use super::{
    T, all_flowing, assert_keeps_flowing, call, cluster, counts, join, require_redis, serial,
};

/// Drain (`SIGUSR1`): new rooms go to the other node, the old room continues and still takes
/// joiners, and when it empties the node deregisters and exits.
#[test]
fn cluster_drain_moves_new_rooms_away_finishes_old_ones_then_exits() {
    let (_serial, mut c) = cluster(&[], &[]);
    let epoch = Instant::now();
    let mut cs = call(&c, "drain-old", &[(0, "o1"), (0, "o2")], epoch);
    let owner = c
        .node_by_port(cs[0].server_port().expect("port"))
        .expect("owner");
    let other = 1 - owner;

    let pid = c.nodes[owner].dataplane.pid().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The node's next heartbeat publishes its new state; placement reads it from there.
    let owner_id = c.nodes[owner].node_id.clone();
    wait_until(
        "the registry sees the node draining",
        T,
        Duration::from_millis(50),
        || c.node_state(&owner_id).as_deref() == Some("draining"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // New rooms go to the other node, whichever signaling is used.
    for via in 0..2 {
        let mut n = join(&c, via, &format!("drain-new-{via}"), "n", epoch);
        assert_eq!(
            c.node_by_port(n.server_port().expect("port")),
            Some(other),
            "new room avoided the draining node"
        );
        n.leave().expect("leave");
    }
    // The existing room continues, and still accepts joiners.
    cs.push(join(&c, 1, "drain-old", "o3", epoch));
    assert_eq!(
        c.node_by_port(cs[2].server_port().expect("port")),
        Some(owner)
    );
    assert!(
        client::run(&mut cs, T, |cs| all_flowing(cs, 30)).expect("run"),
        "{}",
        c.logs()
    );

    // When the room empties the node deregisters and exits.
    for cl in &mut cs {
        cl.leave().expect("leave");
    }
    client::run(&mut cs, Duration::from_millis(500), |_| false).expect("run");
    let dataplane = &mut c.nodes[owner].dataplane;
    wait_until(
        "the drained node exits",
        T,
        Duration::from_millis(100),
        || !dataplane.running(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        c.registered_nodes().expect("registry"),
        1,
        "it deregistered"
    );
}

/// `scripts/rolling-restart-signaling` restarts every signaling instance in turn: media never
/// stalls on any path, every client resumes, no call drops.
#[test]
fn cluster_rolling_restart_of_signaling_drops_no_call() {
    let (_serial, mut c) = cluster(&[], &[]);
    let epoch = Instant::now();
    let mut cs = call(&c, "rolling", &[(0, "r1"), (1, "r2"), (0, "r3")], epoch);
    for cl in &mut cs {
        cl.resume_urls = vec![c.nodes[0].ws_url(), c.nodes[1].ws_url()];
    }

    // The script restarts each instance in turn; here the harness plays the supervisor
    // (systemd's Restart=always): whenever an instance exits, it is started again.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/rolling-restart-signaling");
    let mut args = vec!["--grace".to_string(), "1".to_string()];
    for n in &c.nodes {
        args.push(format!(
            "{}:{}",
            c.dir.0.join(format!("{}.pid", n.signaling_id)).display(),
            n.sig_addr
        ));
    }
    let mut child = std::process::Command::new(&script)
        .args(&args)
        .spawn()
        .expect("run script");
    let end = Instant::now() + Duration::from_secs(60);
    let mut before = counts(&cs);
    let mut progress = Instant::now();
    let mut worst = Duration::ZERO;
    loop {
        client::run(&mut cs, Duration::from_millis(100), |_| false).expect("run");
        for n in &mut c.nodes {
            if !n.signaling.running() {
                n.start_signaling().expect("supervisor restart");
                progress = Instant::now(); // the supervisor's own restart time is not a media stall
            }
        }
        // Media never stops between any two participants.
        let now_counts = counts(&cs);
        if now_counts.iter().zip(&before).all(|(a, b)| a > b) {
            before = now_counts;
            progress = Instant::now();
        }
        worst = worst.max(progress.elapsed());
        assert!(
            progress.elapsed() < Duration::from_millis(1500),
            "media stalled during the rolling restart\n{}",
            c.logs()
        );
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "rolling restart script failed\n{}",
                c.logs()
            );
            break;
        }
        assert!(Instant::now() < end, "rolling restart did not finish");
    }
    eprintln!("rolling restart: longest interval without progress on every media path: {worst:?}");
    assert_keeps_flowing(
        &c,
        &mut cs,
        Duration::from_secs(2),
        40,
        "after the rolling restart",
    );
    assert!(
        cs.iter().all(|cl| cl.ws_open()),
        "every client is connected again"
    );
    assert!(
        cs.iter().map(|cl| cl.resumes).sum::<u32>() >= 3,
        "every client resumed at least once"
    );
    assert_eq!(
        cs.iter()
            .map(|cl| cl.count("participant_left"))
            .sum::<usize>(),
        0,
        "no call dropped"
    );
    // And the restarted instances serve.
    for n in &c.nodes {
        assert_eq!(http_get(n.sig_addr, "/healthz").expect("healthz").0, 200);
    }
}

/// Failure recovery 7: a short chaos run (the full one is `bench chaos`, figures in
/// docs/cluster.md): signaling, dataplanes and Redis killed at random every few seconds under
/// live calls; afterwards no room has two owners, every client is back with media, nothing
/// leaked, memory is near its baseline.
#[test]
fn cluster_chaos_run_keeps_the_invariants() {
    let _serial = serial();
    require_redis();
    let opts = bench::chaos::ChaosOptions {
        duration: Duration::from_secs(24),
        interval: Duration::from_secs(4),
        rooms: 2,
        per_room: 2,
        seed: 7,
        settle: Duration::from_secs(45),
    };
    let r = bench::chaos::run(&opts).expect("chaos run");
    eprintln!(
        "chaos: kills {:?}, resumes {}, rejoins {}, fresh joins {}, longest media gap {} ms, settled after {} ms, RSS {} → {} KiB",
        r.kills,
        r.resumes,
        r.rejoins,
        r.fresh_joins,
        r.longest_media_gap_ms,
        r.settled_after_ms,
        r.rss_before_kib,
        r.rss_after_kib
    );
    for c in &r.checks {
        assert!(c.ok, "{}: {}", c.name, c.detail);
    }
    assert!(r.kills.values().sum::<u32>() >= 5, "{:?}", r.kills);
}

//! Table tests of node liveness ([`Liveness::check`]): which evidence declares a node failed,
//! when the registry is asked, and what is forgotten.

use super::*;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn verdict(announce: Option<&str>, ask: &[&str], failed: &[&str]) -> Verdict {
    Verdict {
        announce_down: announce.map(str::to_string),
        check_alive: names(ask),
        failed: names(failed),
    }
}

/// Cluster mode, subscribed at `t0` and hearing beacons; n2 beaconed at `t0`.
fn hearing(l: &mut Liveness, t0: Instant, at: Instant) {
    l.subscribed_since = Some(t0);
    l.last_any = Some(at - 100 * MS);
    l.seen.insert("n2".into(), t0);
}

#[test]
fn nodes_fail_on_corroborated_evidence_only() {
    type Setup = fn(&mut Liveness, Instant, Instant);
    let none: Setup = |_, _, _| {};
    let up = LocalLink {
        node: Some("n1"),
        ready: true,
        down_since: None,
        refused_since: None,
    };
    // Down and refused since t0 (nothing listens on the socket).
    let gone = LocalLink {
        ready: false,
        down_since: None,
        refused_since: None,
        ..up
    };
    let t0 = Instant::now();
    let refused = LocalLink {
        down_since: Some(t0),
        refused_since: Some(t0),
        ..gone
    };
    let down = LocalLink {
        down_since: Some(t0),
        ..gone
    };
    // (case, setup, local link, cluster, nodes in use, checked at, expected)
    type Case<'a> = (
        &'a str,
        Setup,
        LocalLink<'a>,
        bool,
        &'a [&'a str],
        Duration,
        Verdict,
    );
    let cases: Vec<Case<'_>> = vec![
        // Our own dataplane.
        (
            "local up",
            none,
            up,
            false,
            &[],
            10 * S,
            verdict(None, &[], &[]),
        ),
        (
            "local down, single node",
            none,
            down,
            false,
            &[],
            1500 * MS,
            verdict(None, &[], &[]),
        ),
        (
            "local down long, single node",
            none,
            down,
            false,
            &[],
            1501 * MS,
            verdict(None, &[], &["n1"]),
        ),
        (
            "local refused, single node",
            none,
            refused,
            false,
            &[],
            501 * MS,
            verdict(None, &[], &["n1"]),
        ),
        (
            "local refused briefly",
            none,
            refused,
            true,
            &[],
            500 * MS,
            verdict(None, &[], &[]),
        ),
        (
            "local refused, cluster",
            none,
            refused,
            true,
            &[],
            501 * MS,
            verdict(Some("n1"), &[], &["n1"]),
        ),
        (
            "local refused, already announced",
            |l, _, _| l.announced_down = true,
            refused,
            true,
            &[],
            501 * MS,
            verdict(None, &[], &["n1"]),
        ),
        (
            "local refused but reconnected",
            none,
            LocalLink {
                ready: true,
                ..refused
            },
            true,
            &[],
            10 * S,
            verdict(None, &[], &[]),
        ),
        // In cluster mode a link that is down but not refused (a busy dataplane) is no
        // evidence.
        (
            "local down long, cluster",
            none,
            down,
            true,
            &[],
            10 * S,
            verdict(None, &[], &[]),
        ),
        (
            "already failed",
            |l, t0, _| {
                l.failed.insert("n1".into(), t0);
            },
            down,
            false,
            &[],
            10 * S,
            verdict(None, &[], &[]),
        ),
        // A remote node: silence makes it suspect, the registry decides.
        (
            "remote beaconing",
            hearing,
            up,
            true,
            &["n2"],
            3 * S,
            verdict(None, &[], &[]),
        ),
        (
            "remote silent",
            hearing,
            up,
            true,
            &["n2"],
            3 * S + MS,
            verdict(None, &["n2"], &[]),
        ),
        (
            "remote silent, asked just now",
            |l, t0, at| {
                hearing(l, t0, at);
                l.asked.insert("n2".into(), at - S);
            },
            up,
            true,
            &["n2"],
            5 * S,
            verdict(None, &[], &[]),
        ),
        (
            "remote silent, asked a while ago",
            |l, t0, at| {
                hearing(l, t0, at);
                l.asked.insert("n2".into(), at - S - MS);
            },
            up,
            true,
            &["n2"],
            5 * S,
            verdict(None, &["n2"], &[]),
        ),
        (
            "remote silent, no fresh heartbeat",
            |l, t0, at| {
                hearing(l, t0, at);
                l.registry_says.insert("n2".into(), (at - S, false));
            },
            up,
            true,
            &["n2"],
            5 * S,
            verdict(None, &[], &["n2"]),
        ),
        (
            "remote silent, the registry's answer is old",
            |l, t0, at| {
                hearing(l, t0, at);
                l.registry_says.insert("n2".into(), (at - 2 * S, false));
            },
            up,
            true,
            &["n2"],
            5 * S,
            verdict(None, &["n2"], &[]),
        ),
        (
            "remote silent but heartbeating",
            |l, t0, at| {
                hearing(l, t0, at);
                l.registry_says.insert("n2".into(), (at - MS, true));
            },
            up,
            true,
            &["n2"],
            5 * S,
            verdict(None, &["n2"], &[]),
        ),
        (
            "the registry's verdict alone is not enough",
            |l, t0, at| {
                hearing(l, t0, at);
                l.registry_says.insert("n2".into(), (at - MS, false));
            },
            up,
            true,
            &["n2"],
            3 * S,
            verdict(None, &[], &[]),
        ),
        (
            "witnessed down by another instance, and silent",
            |l, t0, at| {
                hearing(l, t0, at);
                l.witnessed_down.insert("n2".into(), t0);
            },
            up,
            true,
            &["n2"],
            501 * MS,
            verdict(None, &[], &["n2"]),
        ),
        (
            "witnessed down, but beaconing",
            |l, t0, at| {
                hearing(l, t0, at);
                l.witnessed_down.insert("n2".into(), t0);
            },
            up,
            true,
            &["n2"],
            500 * MS,
            verdict(None, &[], &[]),
        ),
        // Silence means nothing while the subscription does not demonstrably deliver...
        (
            "not subscribed",
            |l, t0, at| {
                hearing(l, t0, at);
                l.subscribed_since = None;
            },
            up,
            true,
            &["n2"],
            60 * S,
            verdict(None, &[], &[]),
        ),
        (
            "no beacon from anyone for a second",
            |l, t0, at| {
                hearing(l, t0, at);
                l.last_any = Some(at - S);
            },
            up,
            true,
            &["n2"],
            60 * S,
            verdict(None, &[], &[]),
        ),
        // ... and counts from when it came up at the earliest.
        (
            "silent since before the subscription",
            |l, t0, at| {
                hearing(l, t0, at);
                l.seen.insert("n2".into(), t0 - 60 * S);
            },
            up,
            true,
            &["n2"],
            3 * S,
            verdict(None, &[], &[]),
        ),
        (
            "never heard of, in use since the subscription",
            hearing,
            up,
            true,
            &["n2", "n3"],
            3 * S + MS,
            verdict(None, &["n2", "n3"], &[]),
        ),
        // Only the nodes our sessions use are watched.
        (
            "not in use",
            hearing,
            up,
            true,
            &[],
            60 * S,
            verdict(None, &[], &[]),
        ),
        (
            "our own node's failure and a remote one's, together",
            |l, t0, at| {
                hearing(l, t0, at);
                l.registry_says.insert("n2".into(), (at, false));
            },
            refused,
            true,
            &["n2"],
            5 * S,
            verdict(Some("n1"), &[], &["n1", "n2"]),
        ),
    ];
    for (case, setup, local, cluster, nodes, after, want) in cases {
        let mut l = Liveness::default();
        let at = t0 + after;
        setup(&mut l, t0, at);
        let in_use = nodes.iter().map(|n| n.to_string()).collect();
        assert_eq!(l.check(at, local, cluster, |_| in_use), want, "{case}");
        for node in &want.failed {
            assert!(l.failed.contains_key(node), "{case}: {node} marked failed");
        }
        // Each failure is reported once; a check within the interval does nothing.
        let again = l.check(at + CHECK_EVERY - MS, local, cluster, |_| BTreeSet::new());
        assert_eq!(again, Verdict::default(), "{case}: throttled");
        let in_use = nodes.iter().map(|n| n.to_string()).collect();
        let later = l.check(at + CHECK_EVERY, local, cluster, |_| in_use);
        for node in &later.failed {
            assert!(!want.failed.contains(node), "{case}: {node} failed once");
        }
        if want.announce_down.is_some() {
            assert_eq!(later.announce_down, None, "{case}: announced once");
        }
    }
}

#[test]
fn what_concerns_nodes_nobody_uses_is_forgotten() {
    let t0 = Instant::now();
    let at = t0 + 10 * S;
    let up = LocalLink {
        node: None,
        ready: false,
        down_since: None,
        refused_since: None,
    };
    let mut l = Liveness::default();
    hearing(&mut l, t0, at);
    l.asked.insert("n2".into(), at);
    l.registry_says.insert("n2".into(), (at, true));
    l.failed.insert("n3".into(), at - FORGET_FAILED_AFTER + S);
    l.witnessed_down
        .insert("n3".into(), at - FORGET_FAILED_AFTER + S);
    l.failed.insert("n4".into(), at - FORGET_FAILED_AFTER);
    l.witnessed_down
        .insert("n4".into(), at - FORGET_FAILED_AFTER);
    let nothing = l.check(at, up, true, |_| BTreeSet::new());
    assert_eq!(nothing, Verdict::default());
    assert!(l.asked.is_empty() && l.registry_says.is_empty());
    assert_eq!(
        (l.failed.len(), l.witnessed_down.len()),
        (1, 1),
        "a failure is remembered for a while"
    );
    assert!(l.failed.contains_key("n3") && l.witnessed_down.contains_key("n3"));
    // A node in use keeps its evidence.
    let mut l = Liveness::default();
    hearing(&mut l, t0, at);
    l.failed.insert("n2".into(), t0);
    let in_use = BTreeSet::from(["n2".to_string()]);
    l.check(at, up, true, |_| in_use);
    assert!(l.failed.contains_key("n2"));
}

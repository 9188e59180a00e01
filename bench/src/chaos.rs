//! Chaos run: a two-node cluster with real Redis under synthetic calls, while a random signaling,
//! dataplane or Redis is killed with SIGKILL every few seconds (and restarted, as a supervisor
//! would). Clients behave like the web page: they resume after a lost WebSocket, rejoin after
//! `room_closed`, and join afresh when their session is gone. After the chaos the run settles and
//! checks the invariants:
//!
//! - no room is hosted by two nodes, and Redis maps every hosted room to its host;
//! - every client ended connected with media flowing from everyone in its room;
//! - nothing leaked: the dataplanes host exactly the clients' participants and rooms, Redis
//!   holds exactly their rooms and the live nodes;
//! - memory is back near its baseline.
//!
//! Bounded in time and count; every process is started on loopback and killed by PID.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use str0m::media::MediaKind;

use crate::client::{Client, Media};
use crate::harness::{Cluster, LOAD_SIGNALING_ARGS, control_request};
use crate::stats::rss_kib;

/// How a chaos run goes.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// How long processes are being killed.
    pub duration: Duration,
    /// Time between kills.
    pub interval: Duration,
    pub rooms: usize,
    pub per_room: usize,
    pub seed: u64,
    /// How long the run may take to settle after the chaos before the checks fail.
    pub settle: Duration,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(120),
            interval: Duration::from_secs(5),
            rooms: 3,
            per_room: 3,
            seed: 1,
            settle: Duration::from_secs(60),
        }
    }
}

/// One invariant checked after the run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a chaos run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    pub duration_secs: f64,
    /// Kills by target kind (`signaling`, `dataplane`, `redis`).
    pub kills: BTreeMap<String, u32>,
    pub clients: usize,
    /// How clients recovered: resumed on a new WebSocket, rejoined after `room_closed`, joined
    /// afresh after their session was gone.
    pub resumes: u32,
    pub rejoins: u32,
    pub fresh_joins: u32,
    /// Longest time any client went without receiving media from others, during the chaos.
    pub longest_media_gap_ms: u64,
    /// The longest gaps, with the kills that preceded them (seconds since the chaos started).
    pub worst_gaps: Vec<String>,
    /// Every kill: (seconds since the chaos started, what).
    pub timeline: Vec<(f64, String)>,
    /// Time from the end of the chaos until every invariant held.
    pub settled_after_ms: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub checks: Vec<Check>,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }
}

/// A synthetic participant slot: a client, or the wait before the next fresh join.
struct Member {
    room: String,
    name: String,
    client: Option<Client>,
    /// When the WebSocket was lost (resume attempts run meanwhile).
    lost_since: Option<Instant>,
    room_closed_seen: usize,
    /// Video packets received from others at the last progress, and when.
    progress: (u64, Instant),
    next_join: Instant,
    /// Media gaps during the chaos: (start, length).
    gaps: Vec<(Instant, Duration)>,
}

/// xorshift: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A client without a WebSocket for this long gives its session up and joins afresh.
const GIVE_UP_RESUME: Duration = Duration::from_secs(6);

fn video_from_others(c: &Client) -> u64 {
    c.others
        .iter()
        .map(|(id, _)| c.peer.received.packets_from(id, MediaKind::Video))
        .sum()
}

/// Run the chaos and the checks.
pub fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let dp_args = ["--ice-timeout-secs", "6"];
    let mut c = Cluster::start(2, &dp_args, LOAD_SIGNALING_ARGS).context("cluster")?;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
    let epoch = Instant::now();
    let mut rng = Rng(opts.seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut report = ChaosReport {
        clients: opts.rooms * opts.per_room,
        ..ChaosReport::default()
    };
    let now = Instant::now();
    let mut members: Vec<Member> = (0..opts.rooms)
        .flat_map(|r| {
            (0..opts.per_room).map(move |i| Member {
                room: format!("chaos-{r}"),
                name: format!("c{r}-{i}"),
                client: None,
                lost_since: None,
                room_closed_seen: 0,
                progress: (0, now),
                next_join: now,
                gaps: Vec::new(),
            })
        })
        .collect();
    // Warm up: everyone in, media flowing; that is the memory baseline.
    let warm_end = Instant::now() + Duration::from_secs(30);
    while !all_flowing(&members) {
        anyhow::ensure!(
            Instant::now() < warm_end,
            "calls did not start\n{}",
            c.logs()
        );
        tend(&mut members, &urls, &mut rng, epoch, &mut report, false);
    }
    report.rss_before_kib = total_rss(&c).map_err(|e| anyhow::anyhow!("baseline RSS: {e}"))?;

    // The chaos.
    let start = Instant::now();
    let mut next_kill = start + opts.interval;
    let mut restart: Option<(Instant, usize)> = None;
    while start.elapsed() < opts.duration || restart.is_some() {
        tend(&mut members, &urls, &mut rng, epoch, &mut report, true);
        let now = Instant::now();
        if let Some((at, target)) = restart
            && now >= at
        {
            revive(&mut c, target)?;
            restart = None;
        }
        if restart.is_none() && now >= next_kill && start.elapsed() < opts.duration {
            let target = rng.below(5) as usize;
            let kind = kill(&mut c, target);
            *report.kills.entry(kind.into()).or_insert(0) += 1;
            report.timeline.push((
                start.elapsed().as_secs_f64(),
                format!("kill {kind} {target}"),
            ));
            let down = Duration::from_millis(500 + rng.below(1500));
            restart = Some((now + down, target));
            next_kill = now + opts.interval;
        }
    }
    report.duration_secs = start.elapsed().as_secs_f64();
    let mut gaps: Vec<(Duration, f64, String)> = members
        .iter()
        .flat_map(|m| {
            m.gaps.iter().map(move |(at, len)| {
                (
                    *len,
                    at.saturating_duration_since(start).as_secs_f64(),
                    m.name.clone(),
                )
            })
        })
        .collect();
    gaps.sort_by_key(|g| std::cmp::Reverse(g.0));
    report.worst_gaps = gaps
        .iter()
        .take(5)
        .map(|(len, at, name)| {
            let before: Vec<&String> = report
                .timeline
                .iter()
                .filter(|(t, _)| *t <= *at + 0.5 && *t >= *at - 3.0)
                .map(|(_, w)| w)
                .collect();
            format!("{name}: {len:?} from {at:.1} s (kills just before: {before:?})")
        })
        .collect();

    // Settle, then check.
    let settle_start = Instant::now();
    let settle_end = settle_start + opts.settle;
    loop {
        tend(&mut members, &urls, &mut rng, epoch, &mut report, false);
        let checks = check(&c, &members);
        if checks.iter().all(|k| k.ok) || Instant::now() >= settle_end {
            report.settled_after_ms = settle_start.elapsed().as_millis() as u64;
            report.checks = checks;
            break;
        }
    }
    let after = total_rss(&c);
    report.rss_after_kib = after.as_ref().map_or(0, |k| *k);
    report
        .checks
        .push(memory_check(report.rss_before_kib, after));
    if !report.passed() {
        tracing::warn!("chaos checks failed; logs:\n{}", c.logs());
    }
    Ok(report)
}

/// Total RSS of the nodes' processes (dataplanes and signaling; Redis is not ours). Every one
/// must be running and readable: a missing process or reading is an error, never a zero that
/// would pass the memory check.
fn total_rss(c: &Cluster) -> Result<u64, String> {
    let mut total = 0;
    for n in &c.nodes {
        for (what, p) in [("dataplane", &n.dataplane), ("signaling", &n.signaling)] {
            let pid = p
                .pid()
                .ok_or(format!("{what} of {} is not running", n.node_id))?;
            total += rss_kib(pid)
                .filter(|k| *k > 0)
                .ok_or(format!("no RSS for {what} of {} (pid {pid})", n.node_id))?;
        }
    }
    Ok(total)
}

/// Memory after the run against the baseline taken when the calls first flowed: at most 15 %
/// above it. Measured (debug build, total of the four node processes): eight runs of the test's
/// configuration (24 s, a kill every 4 s, 2 × 2 clients, seeds 1–5 and 7) ended between 9 %
/// below and 5.5 % above their ~127 MiB baseline (the most growth, +7.1 MiB, when no signaling
/// was killed, so it kept its memory); two 2-minute runs ended 8 % below; the 5-minute release
/// run in docs/cluster.md 14 % below. Killed processes restart small, so only a process that
/// survives the whole run can grow, and 15 % (~19 MiB here) is ~2.7× the worst growth seen. The
/// old bound (1.5× + 30 MiB, ~220 MiB) let the processes grow by 90 MiB unnoticed.
fn memory_check(before_kib: u64, after: Result<u64, String>) -> Check {
    let bound = before_kib + before_kib * 15 / 100;
    let (ok, detail) = match after {
        Ok(after) => (
            before_kib > 0 && after <= bound,
            format!("{after} KiB after vs {before_kib} KiB before (bound {bound} KiB)"),
        ),
        Err(e) => (false, format!("no reading after the run: {e}")),
    };
    Check {
        name: "memory back near its baseline".into(),
        ok,
        detail,
    }
}

/// Kill target `t` (0/1 signaling of node 0/1, 2/3 their dataplanes, 4 Redis). Returns its kind.
fn kill(c: &mut Cluster, t: usize) -> &'static str {
    match t {
        0 | 1 => {
            c.nodes[t].signaling.kill();
            "signaling"
        }
        2 | 3 => {
            c.nodes[t - 2].dataplane.kill();
            "dataplane"
        }
        _ => {
            c.redis.kill();
            "redis"
        }
    }
}

/// Start target `t` again.
fn revive(c: &mut Cluster, t: usize) -> anyhow::Result<()> {
    match t {
        0 | 1 => c.nodes[t].start_signaling(),
        2 | 3 => c.nodes[t - 2].start_dataplane(),
        _ => c.redis.restart(),
    }
}

/// One round of client work: poll everyone, recover whoever needs it.
fn tend(
    members: &mut [Member],
    urls: &[String],
    rng: &mut Rng,
    epoch: Instant,
    report: &mut ChaosReport,
    chaos: bool,
) {
    let now = Instant::now();
    for m in members.iter_mut() {
        let drop_client = match &mut m.client {
            None => {
                if now >= m.next_join {
                    let url = &urls[rng.below(urls.len() as u64) as usize];
                    match Client::join(
                        url,
                        &m.room,
                        &m.name,
                        Some(Media::default()),
                        epoch,
                        JOIN_TIMEOUT,
                    ) {
                        Ok(mut cl) => {
                            cl.resume_urls = urls.to_vec();
                            m.room_closed_seen = 0;
                            m.lost_since = None;
                            // New peer, counters from zero; the outage clock keeps running.
                            m.progress.0 = 0;
                            m.client = Some(cl);
                            if chaos {
                                report.fresh_joins += 1;
                            }
                        }
                        Err(_) => m.next_join = now + Duration::from_millis(500),
                    }
                }
                false
            }
            Some(cl) => {
                let resumes = cl.resumes;
                let broken = cl.poll(now).is_err();
                if cl.resumes > resumes {
                    report.resumes += 1;
                }
                let closed = cl.count("room_closed");
                let left = cl.count("left") > 0;
                if broken || left {
                    true
                } else if closed > m.room_closed_seen {
                    m.room_closed_seen = closed;
                    if cl.rejoin(JOIN_TIMEOUT).is_ok() {
                        report.rejoins += 1;
                        m.room_closed_seen = cl.count("room_closed");
                        m.progress.0 = 0;
                        false
                    } else {
                        true
                    }
                } else if !cl.ws_open() {
                    let since = *m.lost_since.get_or_insert(now);
                    now.duration_since(since) > GIVE_UP_RESUME
                } else {
                    m.lost_since = None;
                    false
                }
            }
        };
        if drop_client {
            // Its session is gone (or hopeless): a fresh participant joins.
            m.client = None;
            m.next_join = now + Duration::from_millis(200);
        }
        let seen = m.client.as_ref().map_or(0, video_from_others);
        if seen > m.progress.0 || m.client.as_ref().is_some_and(|c| c.others.is_empty()) {
            let gap = now.duration_since(m.progress.1);
            if chaos && gap > Duration::from_secs(2) {
                m.gaps.push((m.progress.1, gap));
            }
            m.progress = (seen, now);
        } else if chaos {
            let gap = now.duration_since(m.progress.1).as_millis() as u64;
            report.longest_media_gap_ms = report.longest_media_gap_ms.max(gap);
        }
    }
    std::thread::sleep(Duration::from_millis(1));
}

/// Everyone has a client, connected, receiving video from everyone else in its room recently.
fn all_flowing(members: &[Member]) -> bool {
    members.iter().all(|m| {
        m.client.as_ref().is_some_and(|c| {
            c.ws_open()
                && c.others.len() + 1 == members.iter().filter(|o| o.room == m.room).count()
                && c.others
                    .iter()
                    .all(|(id, _)| c.peer.received.packets_from(id, MediaKind::Video) > 10)
        }) && m.progress.1.elapsed() < Duration::from_secs(2)
    })
}

/// The invariants (see the module docs), one [`Check`] each.
fn check(c: &Cluster, members: &[Member]) -> Vec<Check> {
    let mut checks = Vec::new();
    let expected_rooms: BTreeSet<String> = members.iter().map(|m| m.room.clone()).collect();
    checks.push(Check {
        name: "every client connected with media from everyone in its room".into(),
        ok: all_flowing(members),
        detail: format!(
            "{} of {} clients connected",
            members
                .iter()
                .filter(|m| m.client.as_ref().is_some_and(Client::ws_open))
                .count(),
            members.len()
        ),
    });
    // What the dataplanes host.
    let mut hosted: Vec<(usize, String, usize)> = Vec::new(); // (node, room, participants)
    let mut reachable = true;
    for (i, n) in c.nodes.iter().enumerate() {
        match control_request(&n.control_socket, control::Request::Stats) {
            Ok(control::Response::Stats(s)) => {
                for w in s.workers {
                    for r in w.rooms {
                        hosted.push((i, r.room, r.participants.len()));
                    }
                }
            }
            _ => reachable = false,
        }
    }
    let mut owners: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, room, _) in &hosted {
        owners.entry(room).or_default().push(*i);
    }
    let doubled: Vec<&&str> = owners
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(r, _)| r)
        .collect();
    let mut mismatched = Vec::new();
    for (room, nodes) in &owners {
        let mapped = c.room_owner(room).map(|(n, _)| n);
        if mapped.as_deref() != nodes.first().map(|i| c.nodes[*i].node_id.as_str()) {
            mismatched.push(format!("{room} on {nodes:?} mapped to {mapped:?}"));
        }
    }
    checks.push(Check {
        name: "no room owned by two nodes; Redis maps each to its host".into(),
        ok: reachable && doubled.is_empty() && mismatched.is_empty(),
        detail: format!("doubled {doubled:?}, mismatched {mismatched:?}"),
    });
    let participants: usize = hosted.iter().map(|(_, _, n)| n).sum();
    let hosted_rooms: BTreeSet<String> = hosted.iter().map(|(_, r, _)| r.clone()).collect();
    checks.push(Check {
        name: "no leaked participants or rooms in the dataplanes".into(),
        ok: participants == members.len() && hosted_rooms == expected_rooms,
        detail: format!(
            "{participants} participants for {} clients; rooms {hosted_rooms:?}",
            members.len()
        ),
    });
    let keys = c.redis_cli(&["KEYS", "{sfu}:room:*"]);
    let redis_rooms: BTreeSet<String> = keys
        .lines()
        .filter_map(|k| k.trim().strip_prefix("{sfu}:room:"))
        .map(str::to_string)
        .collect();
    let nodes = c.registered_nodes().unwrap_or(0);
    checks.push(Check {
        name: "no leaked rooms or nodes in Redis".into(),
        ok: redis_rooms == expected_rooms && nodes == c.nodes.len(),
        detail: format!("rooms {redis_rooms:?}, live nodes {nodes}"),
    });
    checks
}

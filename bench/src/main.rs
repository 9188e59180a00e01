//! `bench`: load and capacity measurements against the real binaries.
//!
//! ```text
//! cargo build --release --bins
//! ulimit -n 65536
//! ./target/release/bench signaling --sessions 5000 --joins 3000     # single node
//! ./target/release/bench signaling --cluster --joins 2000           # two nodes + Redis
//! ```
//!
//! Services are started by the bench itself on loopback (release binaries next to this one).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::harness::{Cluster, LOAD_SIGNALING_ARGS, Node, Ws, cpu_seconds, read_json};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "Load and capacity measurements for the SFU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Chaos run: calls on a two-node cluster while random signaling, dataplane and Redis
    /// processes are killed (SIGKILL) and restarted; then the cluster's invariants are checked.
    Chaos {
        /// Minutes of killing.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// Seconds between kills.
        #[arg(long, default_value_t = 5.0)]
        interval_secs: f64,
        #[arg(long, default_value_t = 3)]
        rooms: usize,
        #[arg(long, default_value_t = 3)]
        per_room: usize,
        /// Seed of the kill sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Synthetic-peer load: join through signaling, publish and subscribe, measure the SFU.
    Load(Box<LoadArgs>),
    /// Signaling capacity: idle sessions held, join throughput, Redis round trips per join.
    Signaling {
        /// Joined sessions to open and hold.
        #[arg(long, default_value_t = 5000)]
        sessions: usize,
        /// Seconds to hold them (measuring signaling CPU while idle).
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Joins in the join storm (connect, join, joined, leave, close).
        #[arg(long, default_value_t = 2000)]
        joins: usize,
        /// Concurrent clients in the storm.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Two nodes and Redis instead of one node.
        #[arg(long)]
        cluster: bool,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Preset: smoke, small-rooms, large-room, audio-room, join-storm, soak.
    #[arg(long, default_value = "small-rooms")]
    scenario: String,
    /// A TOML file with a `Scenario` (overrides --scenario); flags below override either.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Number of rooms.
    #[arg(long)]
    rooms: Option<usize>,
    /// Participants per room (publishers + subscribers; everyone subscribes to the others).
    #[arg(long)]
    per_room: Option<usize>,
    /// Publishers per room (the rest only subscribe).
    #[arg(long)]
    publishers: Option<usize>,
    /// Video bitrate per publisher, kb/s (frames are split into ~1200-byte packets).
    #[arg(long)]
    video_kbps: Option<u32>,
    /// Video frames per second.
    #[arg(long)]
    fps: Option<u32>,
    /// Publish no video (audio only).
    #[arg(long)]
    no_video: bool,
    /// Publish video as three simulcast layers (q, h, f) instead of one stream.
    #[arg(long)]
    simulcast: bool,
    /// Every peer's media over ICE-TCP (a TCP connection to the worker) instead of UDP.
    #[arg(long)]
    ice_tcp: bool,
    /// Publish no audio.
    #[arg(long)]
    no_audio: bool,
    /// Measurement window, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Joins per second (0 = as fast as possible).
    #[arg(long)]
    join_rate: Option<f64>,
    /// Load-generator threads.
    #[arg(long)]
    threads: Option<usize>,
    /// GSO/GRO batching of the dataplane under test: on, off, or both (two runs, side by side).
    #[arg(long, default_value = "on", value_parser = ["on", "off", "both"])]
    batching: String,
    /// Pin the dataplane to CPU 1 and the load generator to CPU 0 (for a 2-core machine).
    #[arg(long)]
    pin: bool,
    /// Dataplane workers.
    #[arg(long, default_value_t = 1)]
    workers: u16,
    /// Output directory for the JSON results and SVG plots.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
    /// Use an already running service (signaling WebSocket URL) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Which SFU is at --url: ours, or janus (VideoRoom over its WebSocket API; rooms with one
    /// publisher only, e.g. --scenario large-room).
    #[arg(long, default_value = "ours", value_parser = ["ours", "janus"])]
    sfu: String,
    /// IP the synthetic peers bind (Janus needs one on a non-loopback interface; a generator in
    /// its own network namespace binds the namespace's address).
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: std::net::IpAddr,
    /// How subscribers take media off the socket: `light` counts packets from the clear-text RTP
    /// header and decrypts one in --sample-every (cheap: the generator can saturate the
    /// dataplane); `full` decrypts and processes every packet with str0m (the realism check).
    #[arg(long, default_value = "light", value_parser = ["light", "full"])]
    receivers: String,
    /// Light subscribers decrypt one packet in this many per stream (the latency sample).
    #[arg(long)]
    sample_every: Option<u32>,
    /// Capacity ramp: after the joins, raise the offered load ×--ramp-factor per step until loss
    /// is above 0.1 %, SFU-added latency p99 above 20 ms or the dataplane's CPU saturated;
    /// report the steps and the last that passed.
    #[arg(long)]
    ramp: bool,
    /// Seconds measured per ramp step.
    #[arg(long, default_value_t = 5.0)]
    ramp_step_secs: f64,
    /// Offered-load multiplier between ramp steps.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// The first ramp step's multiple of the scenario's load (below 1 thins audio only).
    #[arg(long, default_value_t = 1.0)]
    ramp_start: f64,
    /// With --url: the CPU the dataplane is pinned to alone (its busy time, softirq included,
    /// is reported next to the process CPU). With --pin it is CPU 1.
    #[arg(long)]
    dataplane_cpu: Option<usize>,
    /// With --url: the dataplane's control socket and pid, for its stats, CPU and memory.
    #[arg(long)]
    control_socket: Option<std::path::PathBuf>,
    /// With --url: the pid of the SFU process whose CPU and memory are measured.
    #[arg(long)]
    dataplane_pid: Option<u32>,
}

/// Connect and join `room`; returns the socket after `joined` and the node hosting the room.
fn join(url: &str, room: &str) -> anyhow::Result<(Ws, String)> {
    let (mut ws, _) = tungstenite::connect(url)?;
    ws.send(Message::text(
        json!({"type":"join","room":room,"name":"bench"}).to_string(),
    ))?;
    let v = read_json(&mut ws)?;
    if v["type"] != "joined" {
        bail!("join failed: {v}");
    }
    // The resume token names the node (base64url JSON {"n": node, ...}).
    use base64::Engine;
    let node = v["resume"]
        .as_str()
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
        .and_then(|t| t["n"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((ws, node))
}

/// Client round trips Redis has served: `EVALSHA` + `PUBLISH` calls (every call our processes make
/// on the join path is one of these; `INFO stats` would also count the commands run inside the
/// Lua scripts, which are not round trips).
fn redis_commands(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output();
    out.ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_publish:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        })
        .unwrap_or(0)
}

fn load(a: LoadArgs) -> anyhow::Result<()> {
    use bench::load::{self, Scenario, Target};
    let mut sc = match &a.config {
        Some(p) => toml_scenario(p)?,
        None => Scenario::preset(&a.scenario)
            .with_context(|| format!("unknown scenario {:?}", a.scenario))?,
    };
    if let Some(v) = a.rooms {
        sc.rooms = v;
    }
    if let Some(v) = a.per_room {
        sc.per_room = v;
    }
    if let Some(v) = a.publishers {
        sc.publishers_per_room = v;
    }
    if let Some(v) = a.video_kbps {
        sc.video_kbps = v;
    }
    if let Some(v) = a.fps {
        sc.fps = v;
    }
    if a.simulcast {
        sc.simulcast = true;
    }
    if a.ice_tcp {
        sc.ice_tcp = true;
    }
    if let Some(v) = a.duration {
        sc.duration_secs = v;
    }
    if let Some(v) = a.join_rate {
        sc.join_rate = v;
    }
    if let Some(v) = a.threads {
        sc.threads = v;
    }
    if a.ramp {
        sc.ramp = Some(load::Ramp {
            step_secs: a.ramp_step_secs,
            factor: a.ramp_factor.max(1.05),
            start: a.ramp_start,
            ..load::Ramp::default()
        });
    }
    if a.receivers == "full" {
        sc.full_receivers = true;
    }
    if let Some(v) = a.sample_every {
        sc.sample_every = v;
    }
    sc.video &= !a.no_video;
    sc.audio &= !a.no_audio;
    anyhow::ensure!(
        sc.per_room >= 2 && sc.rooms >= 1,
        "need at least one room of two"
    );
    let modes: Vec<bool> = match a.batching.as_str() {
        "both" => vec![true, false],
        "off" => vec![false],
        _ => vec![true],
    };
    let mut all = Vec::new();
    for batching in modes {
        let mut dp_args: Vec<String> = vec![
            "--max-participants-per-room".into(),
            "100000".into(),
            "--max-participants".into(),
            "1000000".into(),
            "--socket-buffer".into(),
            (32 << 20).to_string(),
        ];
        if !batching {
            dp_args.push("--no-batching".into());
        }
        if a.pin {
            dp_args.extend(["--cpus".into(), "1".into()]);
        }
        let refs: Vec<&str> = dp_args.iter().map(String::as_str).collect();
        let (node, target) = match &a.url {
            Some(url) => (
                None,
                Target {
                    sfu: match &a.sfu[..] {
                        "janus" => load::Sfu::Janus,
                        _ => load::Sfu::Ours,
                    },
                    ws_urls: vec![url.clone()],
                    dataplane_pid: a.dataplane_pid,
                    control_socket: a.control_socket.clone(),
                    bind_ip: a.bind_ip,
                    dataplane_cpu: a.dataplane_cpu,
                },
            ),
            None => {
                let n = Node::start_with(a.workers, &refs, LOAD_SIGNALING_ARGS)?;
                let t = Target {
                    sfu: load::Sfu::Ours,
                    ws_urls: vec![n.ws_url(0)],
                    dataplane_pid: n.dataplane.pid(),
                    control_socket: Some(n.control_socket.clone()),
                    bind_ip: a.bind_ip,
                    dataplane_cpu: a.pin.then_some(1),
                };
                (Some(n), t)
            }
        };
        eprintln!(
            "running {:?}: {} rooms × {} ({} publishers each), video {} kb/s @ {} fps, audio {}, batching {batching}, {} thread(s){}",
            sc.name,
            sc.rooms,
            sc.per_room,
            sc.publishers_per_room.min(sc.per_room),
            if sc.video { sc.video_kbps } else { 0 },
            sc.fps,
            sc.audio,
            sc.threads,
            if a.pin {
                ", dataplane pinned to CPU 1, load generator to CPU 0"
            } else {
                ""
            }
        );
        let mut r = load::run(&target, &sc, a.pin.then_some(0), true)?;
        if matches!(target.sfu, load::Sfu::Ours) {
            r.batching = Some(batching);
            if !batching {
                r.sfu = "sfu-nobatch".into();
            }
        }
        if let Some(t) = load::capacity_table(&r) {
            println!("{t}");
        }
        for f in load::write_outputs(&a.out, &r)? {
            eprintln!("wrote {}", f.display());
        }
        drop(node);
        all.push(r);
    }
    let refs: Vec<&load::Results> = all.iter().collect();
    println!("{}", load::table(&refs));
    Ok(())
}

fn toml_scenario(path: &std::path::Path) -> anyhow::Result<bench::load::Scenario> {
    let text = std::fs::read_to_string(path)?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let Cli { cmd } = Cli::parse();
    if let Cmd::Load(a) = cmd {
        return load(*a);
    }
    if let Cmd::Chaos {
        minutes,
        interval_secs,
        rooms,
        per_room,
        seed,
        json,
    } = cmd
    {
        anyhow::ensure!(
            (0.0..=60.0).contains(&minutes) && interval_secs >= 1.0,
            "--minutes 0..60, --interval-secs ≥ 1"
        );
        let opts = bench::chaos::ChaosOptions {
            duration: Duration::from_secs_f64(minutes * 60.0),
            interval: Duration::from_secs_f64(interval_secs),
            rooms,
            per_room,
            seed,
            ..bench::chaos::ChaosOptions::default()
        };
        let r = bench::chaos::run(&opts)?;
        println!("{}", serde_json::to_string_pretty(&r)?);
        if let Some(p) = json {
            std::fs::write(&p, serde_json::to_vec_pretty(&r)?)?;
        }
        anyhow::ensure!(r.passed(), "chaos invariants failed");
        return Ok(());
    }
    let Cmd::Signaling {
        sessions,
        hold_secs,
        joins,
        concurrency,
        cluster,
        json,
    } = cmd
    else {
        return Ok(());
    };
    // One node (or two with Redis). Sessions never connect media, so give them a long ICE timeout.
    let dp_args = [
        "--ice-timeout-secs",
        "3600",
        "--max-participants-per-room",
        "100000",
        "--max-participants",
        "1000000",
    ];
    let (urls, sig_pid, dp_pid, redis_port, _node, _cluster) = if cluster {
        let c = Cluster::start(2, &dp_args, LOAD_SIGNALING_ARGS)?;
        let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
        // url i belongs to node i: "node-a", "node-b".
        let sig = c.nodes[0].signaling.pid().context("pid")?;
        let dp = c.nodes[0].dataplane.pid().context("pid")?;
        let port = c.redis.port;
        (urls, sig, dp, Some(port), None, Some(c))
    } else {
        let n = Node::start_with(1, &dp_args, LOAD_SIGNALING_ARGS)?;
        let urls = vec![n.ws_url(0)];
        let sig = n.signaling[0].1.pid().context("pid")?;
        let dp = n.dataplane.pid().context("pid")?;
        (urls, sig, dp, None, Some(n), None)
    };
    let url = urls[0].clone();
    let mut results = serde_json::Map::new();
    results.insert(
        "mode".into(),
        json!(if cluster { "cluster" } else { "single" }),
    );

    // 1. Idle sessions: open and join `sessions` WebSockets (100 rooms), hold them.
    let rss0 = bench::stats::rss_kib(sig_pid).unwrap_or(0);
    let t = Instant::now();
    let mut held = Vec::with_capacity(sessions);
    for i in 0..sessions {
        held.push(
            join(&url, &format!("idle-{}", i % 100))
                .with_context(|| format!("session {i}"))?
                .0,
        );
    }
    let open_time = t.elapsed();
    let cpu0 = cpu_seconds(sig_pid).unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(hold_secs));
    let idle_cpu = cpu_seconds(sig_pid).unwrap_or(0.0) - cpu0;
    let rss1 = bench::stats::rss_kib(sig_pid).unwrap_or(0);
    println!(
        "idle: {sessions} joined sessions held on one signaling instance; opened in {open_time:.2?}; \
         signaling RSS {rss0} → {rss1} KiB ({:.1} KiB/session); CPU while idle {:.3} s over {hold_secs} s",
        (rss1.saturating_sub(rss0)) as f64 / sessions as f64,
        idle_cpu
    );
    results.insert("idle_sessions".into(), json!(sessions));
    results.insert(
        "idle_rss_kib_per_session".into(),
        json!((rss1.saturating_sub(rss0)) as f64 / sessions as f64),
    );
    results.insert("idle_cpu_seconds".into(), json!(idle_cpu));
    for mut ws in held.drain(..) {
        let _ = ws.send(Message::text(r#"{"type":"leave"}"#));
        let _ = ws.close(None);
    }
    std::thread::sleep(Duration::from_secs(1));

    // 2. Join storm: `concurrency` threads, each connect → join → joined → leave → close.
    let redis0 = redis_port.map(redis_commands);
    let base_t = Instant::now();
    if let Some(p) = redis_port {
        // Background Redis traffic (heartbeats, beacons) over one second, subtracted below.
        std::thread::sleep(Duration::from_secs(2));
        let bg = redis_commands(p).saturating_sub(redis0.unwrap_or(0));
        results.insert(
            "redis_background_per_sec".into(),
            json!(bg as f64 / base_t.elapsed().as_secs_f64()),
        );
    }
    let redis1 = redis_port.map(redis_commands);
    let sig_cpu0 = cpu_seconds(sig_pid).unwrap_or(0.0);
    let dp_cpu0 = cpu_seconds(dp_pid).unwrap_or(0.0);
    let t = Instant::now();
    let per = joins / concurrency.max(1);
    let handles: Vec<_> = (0..concurrency)
        .map(|w| {
            // In cluster mode half the clients go through the other instance (relayed joins).
            let url = urls[w % urls.len()].clone();
            let local_node = format!("node-{}", (b'a' + (w % urls.len()) as u8) as char);
            std::thread::spawn(move || -> anyhow::Result<Vec<(Duration, bool)>> {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    let (mut ws, node) = join(&url, &format!("storm-{w}-{i}"))?;
                    lat.push((
                        t.elapsed(),
                        !node.is_empty() && node != local_node && cluster,
                    ));
                    ws.send(Message::text(r#"{"type":"leave"}"#))?;
                    let _ = read_json(&mut ws);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("storm thread panicked"))??,
        );
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    if cluster {
        let local: Vec<Duration> = all.iter().filter(|(_, r)| !r).map(|(d, _)| *d).collect();
        let relayed: Vec<Duration> = all.iter().filter(|(_, r)| *r).map(|(d, _)| *d).collect();
        println!(
            "relay cost: join→joined p50 {:.2?} when the room is on the local node ({} joins) vs {:.2?} when relayed over Redis ({} joins)",
            median(local.clone()),
            local.len(),
            median(relayed.clone()),
            relayed.len()
        );
        results.insert(
            "join_p50_local_ms".into(),
            json!(median(local).as_secs_f64() * 1e3),
        );
        results.insert(
            "join_p50_relayed_ms".into(),
            json!(median(relayed).as_secs_f64() * 1e3),
        );
    }
    let mut lat: Vec<Duration> = all.into_iter().map(|(d, _)| d).collect();
    let wall = t.elapsed();
    let done = lat.len();
    let sig_cpu = cpu_seconds(sig_pid).unwrap_or(0.0) - sig_cpu0;
    let dp_cpu = cpu_seconds(dp_pid).unwrap_or(0.0) - dp_cpu0;
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "storm: {done} joins in {wall:.2?} = {:.0} joins/s (wall, {concurrency} clients on the same 2 cores); \
         join→joined p50 {:.2?} p99 {:.2?}; signaling CPU {:.0} µs/join = {:.0} joins/s per core; \
         dataplane CPU {:.0} µs/join (incl. the leave)",
        done as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        sig_cpu * 1e6 / done as f64,
        done as f64 / sig_cpu.max(1e-9),
        dp_cpu * 1e6 / done as f64
    );
    results.insert("storm_joins".into(), json!(done));
    results.insert(
        "storm_joins_per_sec_wall".into(),
        json!(done as f64 / wall.as_secs_f64()),
    );
    results.insert(
        "storm_join_p50_ms".into(),
        json!(pct(0.5).as_secs_f64() * 1e3),
    );
    results.insert(
        "storm_join_p99_ms".into(),
        json!(pct(0.99).as_secs_f64() * 1e3),
    );
    results.insert(
        "signaling_cpu_us_per_join".into(),
        json!(sig_cpu * 1e6 / done as f64),
    );
    results.insert(
        "signaling_joins_per_core_sec".into(),
        json!(done as f64 / sig_cpu.max(1e-9)),
    );
    if let (Some(p), Some(r1)) = (redis_port, redis1) {
        let cmds = redis_commands(p).saturating_sub(r1);
        let bg = results
            .get("redis_background_per_sec")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            * wall.as_secs_f64();
        let per_join = (cmds as f64 - bg) / done as f64;
        println!(
            "redis: {cmds} EVALSHA+PUBLISH calls during the storm, ~{bg:.0} of them background → {per_join:.2} per join+leave \
             (half the joins relayed: placement EVALSHA + join/leave PUBLISHes + their reply PUBLISHes from the node + the \
             release EVALSHA when the room empties)"
        );
        results.insert("redis_commands_per_join_and_leave".into(), json!(per_join));
    }
    if let Some(path) = json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&Value::Object(results))?,
        )?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

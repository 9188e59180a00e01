//! Browser end-to-end: the real binaries plus headless Debian Chromium (driven by npm
//! `playwright-core`, `scripts/browser/e2e.mjs`) using the real web page.
//!
//! Without `/usr/bin/chromium`, the npm dependencies or coturn the test fails (`./scripts/test`
//! installs them).
//!
//! One test, in phases (each its own node; `E2E_PHASES=a,b` runs only those, for local work):
//! - `main`: every scenario on loopback, coturn for the TURN scenario, and a small HTTP endpoint
//!   that kills and restarts signaling (`RESTART_SIGNALING_URL`) for the reconnect scenario;
//! - `constrained`: a subscriber's Chromium in a network namespace behind a shaped veth; then,
//!   against the same node on the veth's address (Firefox gathers no loopback candidates),
//!   `firefox`: Debian's firefox-esr and Chromium in one room;
//! - `firewalled`: pages in a namespace that drops all UDP (and TCP to plain TURN's port), like a
//!   corporate network: with ICE-TCP they connect to the dataplane over TCP next to a page on
//!   UDP and one through TURN over TLS on 443 (scenario `ice-tcp`, with TCP loss); with ICE-TCP
//!   off they connect through TURN over TLS (scenario `turn-tls`).

mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::harness::{Node, TempDir, Turn};
use netns::{Netns, loss_endpoint, restart_endpoint, shape_endpoint};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const FIREFOX: &str = "/usr/bin/firefox-esr";

fn browser_available() -> Result<(), String> {
    if !PathBuf::from("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing (apt-get install chromium)".into());
    }
    if !PathBuf::from(FIREFOX).exists() {
        return Err(format!(
            "{FIREFOX} is missing (apt-get install firefox-esr)"
        ));
    }
    if !repo_root()
        .join("scripts/browser/node_modules/puppeteer-core")
        .exists()
    {
        return Err(
            "scripts/browser/node_modules/puppeteer-core is missing (cd scripts/browser && npm install)"
                .into(),
        );
    }
    if !repo_root()
        .join("scripts/browser/node_modules/playwright-core")
        .exists()
    {
        return Err(
            "scripts/browser/node_modules is missing (cd scripts/browser && npm install)".into(),
        );
    }
    Ok(())
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// Run `e2e.mjs` with `env`; panic with `logs()` if it fails.
fn run_e2e(what: &str, env: &[(&str, &str)], logs: impl FnOnce() -> String) {
    let started = Instant::now();
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("scripts/browser/e2e.mjs"))
        .env("OUT_DIR", repo_root().join("test-output"))
        .current_dir(repo_root().join("scripts/browser"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("run node");
    let took = started.elapsed();
    assert!(
        status.success(),
        "browser e2e ({what}) failed after {took:?}\n{}",
        logs()
    );
    assert!(took < Duration::from_secs(400), "{what} took {took:?}");
}

/// The last lines of a coturn log, newest first.
fn turn_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "--- coturn (last lines, newest first) ---\n{}",
        tail.join("\n")
    )
}

fn phase_selected(name: &str) -> bool {
    match std::env::var("E2E_PHASES") {
        Ok(v) if !v.is_empty() => v.split(',').any(|p| p.trim() == name),
        _ => true,
    }
}

#[test]
fn browser_two_pages_see_each_other_and_chat() {
    if let Err(why) = browser_available() {
        panic!("the browser test needs {why}; ./scripts/test installs it");
    }
    assert!(
        Turn::installed(),
        "coturn is required for the TURN scenarios: apt-get install coturn, or run ./scripts/test"
    );
    let dir = TempDir::new("sfu-browser").expect("dir");
    if phase_selected("main") {
        main_suite(&dir.0);
    }
    if phase_selected("constrained") {
        constrained(&dir.0);
    }
    if phase_selected("firewalled") {
        firewalled(&dir.0);
    }
}

/// Every scenario but the namespaced ones, on loopback.
fn main_suite(dir: &Path) {
    let turn = Turn::start(dir, &format!("turn-{:016x}", rand_u64())).expect("coturn starts");
    let sig_args: Vec<String> = vec![
        "--turn-url".into(),
        turn.url.clone(),
        "--turn-secret".into(),
        turn.secret.clone(),
    ];
    let sig_refs: Vec<&str> = sig_args.iter().map(String::as_str).collect();
    let node = Node::start_with(2, &[], &sig_refs).expect("node starts");
    let base = format!("http://{}", node.signaling[0].0);
    let node = Arc::new(Mutex::new(node));
    let restart_url = restart_endpoint(Arc::downgrade(&node));
    run_e2e(
        "main",
        &[
            ("BASE_URL", &base),
            ("RESTART_SIGNALING_URL", &restart_url),
            ("TURN_URL", &turn.url),
        ],
        || {
            let logs = node.lock().map(|n| n.logs()).unwrap_or_default();
            format!("{logs}\n{}", turn_tail(dir))
        },
    );
}

/// A subscriber on a slow link: its Chromium in a network namespace whose link from the SFU is
/// shaped with `tc tbf`; the node listens on the veth's host address so every page reaches it.
fn constrained(dir: &Path) {
    let ns = Arc::new(Netns::create().unwrap_or_else(|e| {
        panic!("the constrained-link scenario needs a network namespace (root, iproute2): {e}")
    }));
    let wrapper = ns.chromium_wrapper(dir);
    let node = Node::start_on(ns.host_ip, 2, &[], &[]).expect("node on the veth address");
    let base = format!("http://{}", node.signaling[0].0);
    let shape_url = shape_endpoint(Arc::downgrade(&ns));
    run_e2e(
        "constrained link",
        &[
            ("BASE_URL", &base),
            ("E2E_SCENARIOS", "constrained,firefox"),
            ("E2E_NETNS_CHROMIUM", &wrapper.display().to_string()),
            ("SHAPE_URL", &shape_url),
            ("E2E_FIREFOX", FIREFOX),
        ],
        || node.logs(),
    );
}

/// Pages behind a firewall that drops UDP (and TCP to plain TURN): ICE-TCP to the dataplane, and
/// TURN over TLS on 443 (coturn with a self-signed certificate on the veth's host address).
fn firewalled(dir: &Path) {
    let ns = Arc::new(Netns::create().unwrap_or_else(|e| {
        panic!("the firewalled scenarios need a network namespace (root, iproute2): {e}")
    }));
    let wrapper = ns.chromium_wrapper(dir).display().to_string();
    let turn = Turn::start_tls(dir, &format!("turn-{:016x}", rand_u64()), ns.host_ip, 443)
        .expect("coturn with TLS on 443 starts");
    ns.block_udp(turn.port)
        .unwrap_or_else(|e| panic!("the firewalled scenarios need nftables in the namespace: {e}"));
    let mut sig_args: Vec<String> = Vec::new();
    for u in &turn.urls {
        sig_args.push("--turn-url".into());
        sig_args.push(u.clone());
    }
    sig_args.push("--turn-secret".into());
    sig_args.push(turn.secret.clone());
    let sig_refs: Vec<&str> = sig_args.iter().map(String::as_str).collect();

    // ICE-TCP on: a page on UDP (outside the namespace), one over ICE-TCP and one through
    // TURN/TLS (inside), all in one room; then loss on the TCP path.
    let node = Node::start_on(ns.host_ip, 2, &[], &sig_refs).expect("node on the veth address");
    let base = format!("http://{}", node.signaling[0].0);
    let loss_url = loss_endpoint(
        Arc::downgrade(&ns),
        (node.udp_base, node.udp_base + node.workers - 1),
    );
    run_e2e(
        "ice-tcp",
        &[
            ("BASE_URL", &base),
            ("E2E_SCENARIOS", "ice-tcp"),
            ("E2E_NETNS_CHROMIUM", &wrapper),
            ("LOSS_URL", &loss_url),
            ("TURN_URL", &turn.urls.join(" ")),
        ],
        || format!("{}\n{}", node.logs(), turn_tail(dir)),
    );
    drop(node);

    // ICE-TCP off: the namespaced page can only get through TURN over TLS.
    let node =
        Node::start_on(ns.host_ip, 2, &["--no-ice-tcp"], &sig_refs).expect("node without ICE-TCP");
    let base = format!("http://{}", node.signaling[0].0);
    run_e2e(
        "turn-tls",
        &[
            ("BASE_URL", &base),
            ("E2E_SCENARIOS", "turn-tls"),
            ("E2E_NETNS_CHROMIUM", &wrapper),
            ("TURN_URL", &turn.urls.join(" ")),
        ],
        || format!("{}\n{}", node.logs(), turn_tail(dir)),
    );
    drop(node);
    drop(turn);
    drop(ns);
}

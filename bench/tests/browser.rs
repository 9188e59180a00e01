//! Browser end-to-end: the real binaries plus headless Debian Chromium (driven by npm
//! `playwright-core`, `scripts/browser/e2e.mjs`) using the real web page.
//!
//! Without `/usr/bin/chromium`, the npm dependencies or coturn the test fails (`./scripts/test`
//! installs them).
//!
//! The script can kill and restart signaling through a small HTTP endpoint this test serves
//! (`RESTART_SIGNALING_URL`: `POST /kill`, `POST /start`), for the reconnect scenario.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bench::harness::{Node, TempDir, Turn};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn browser_available() -> Result<(), String> {
    if !PathBuf::from("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing (apt-get install chromium)".into());
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

/// A tiny HTTP endpoint for the browser scripts: each request line (`POST /kill`, …) goes to
/// `handle` with the state `target` while the test still holds it, and its (status, body) is the
/// answer. Returns the base URL. The thread keeps only a `Weak`, so the state (a node and every
/// process it started) is dropped when the test ends, even though the accept loop never returns.
fn control_endpoint<T: Send + Sync + 'static>(
    target: Weak<T>,
    handle: impl Fn(&T, &str) -> (&'static str, String) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let Some(target) = target.upgrade() else {
                return; // the test is over
            };
            let (status, body) = handle(&target, &line);
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `POST /kill` and `POST /start` for signaling instance 0 of `node`.
fn restart_endpoint(node: Weak<Mutex<Node>>) -> String {
    control_endpoint(node, |node, line| {
        let mut node = node.lock().unwrap_or_else(|e| e.into_inner());
        if line.starts_with("POST /kill") {
            node.kill_signaling(0);
            ("200 OK", "killed".to_string())
        } else if line.starts_with("POST /start") {
            match node.restart_signaling(0) {
                Ok(()) => ("200 OK", "started".to_string()),
                Err(e) => ("500 Internal Server Error", format!("{e:#}")),
            }
        } else {
            ("404 Not Found", "no".to_string())
        }
    })
}

/// `POST /shape` and `POST /unshape` for the link toward `ns`.
fn shape_endpoint(ns: Weak<Netns>) -> String {
    control_endpoint(ns, |ns, line| {
        let result = if line.starts_with("POST /shape") {
            ns.shape(true)
        } else if line.starts_with("POST /unshape") {
            ns.shape(false)
        } else {
            return ("404 Not Found", "no".to_string());
        };
        match result {
            Ok(()) => ("200 OK", "done".to_string()),
            Err(e) => ("500 Internal Server Error", e),
        }
    })
}

/// A network namespace behind a veth pair, for a page on a link of its own: the host end has
/// `host_ip`, the namespace end the next address. Removed (with the veth) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: std::net::IpAddr,
}

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Self, String> {
        let id = std::process::id();
        let net = (id % 200) as u8 + 20;
        let ns = Self {
            name: format!("sfu-e2e-{id}"),
            host_if: format!("vh{}", id % 1_000_000),
            host_ip: std::net::IpAddr::from([10, 77, net, 1]),
        };
        let peer_if = format!("vn{}", id % 1_000_000);
        let host_cidr = format!("{}/24", ns.host_ip);
        let ns_cidr = format!("10.77.{net}.2/24");
        run(&["ip", "netns", "add", &ns.name])?;
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ])?;
        run(&["ip", "link", "set", &peer_if, "netns", &ns.name])?;
        run(&["ip", "addr", "add", &host_cidr, "dev", &ns.host_if])?;
        run(&["ip", "link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut cmd = vec!["ip", "netns", "exec", ns.name.as_str()];
            cmd.extend_from_slice(args);
            run(&cmd)
        };
        inside(&["ip", "addr", "add", &ns_cidr, "dev", &peer_if])?;
        inside(&["ip", "link", "set", &peer_if, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Shape the link toward the namespace to ~300 kbit/s (`tc tbf`), or remove the shaping.
    fn shape(&self, on: bool) -> Result<(), String> {
        if on {
            run(&[
                "tc",
                "qdisc",
                "replace",
                "dev",
                &self.host_if,
                "root",
                "tbf",
                "rate",
                "300kbit",
                "burst",
                "16kb",
                "latency",
                "200ms",
            ])
        } else {
            run(&["tc", "qdisc", "del", "dev", &self.host_if, "root"])
        }
    }

    /// A script that runs Chromium inside the namespace (what playwright launches).
    fn chromium_wrapper(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("chromium-in-netns");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec ip netns exec {} /usr/bin/chromium \"$@\"\n",
                self.name
            ),
        )
        .expect("write the wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
        path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

#[test]
fn browser_two_pages_see_each_other_and_chat() {
    if let Err(why) = browser_available() {
        panic!("the browser test needs {why}; ./scripts/test installs it");
    }
    let dir = TempDir::new("sfu-browser").expect("dir");
    assert!(
        Turn::installed(),
        "coturn is required for the TURN scenario: apt-get install coturn, or run ./scripts/test"
    );
    let turn = Turn::start(&dir.0, &format!("turn-{:016x}", rand_u64())).expect("coturn starts");
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
    let out_dir = repo_root().join("test-output");
    let started = Instant::now();
    let status = Command::new("node")
        .arg(repo_root().join("scripts/browser/e2e.mjs"))
        .env("BASE_URL", &base)
        .env("OUT_DIR", &out_dir)
        .env("RESTART_SIGNALING_URL", &restart_url)
        .env("TURN_URL", &turn.url)
        .current_dir(repo_root().join("scripts/browser"))
        .status()
        .expect("run node");
    let took = started.elapsed();
    let logs = node.lock().map(|n| n.logs()).unwrap_or_default();
    let turn_log = std::fs::read_to_string(dir.0.join("turn.log")).unwrap_or_default();
    let turn_tail: Vec<&str> = turn_log.lines().rev().take(40).collect();
    assert!(
        status.success(),
        "browser e2e failed after {took:?}\n{logs}\n--- coturn (last lines, newest first) ---\n{}",
        turn_tail.join("\n")
    );
    assert!(took < Duration::from_secs(400));
    drop(node);
    drop(turn);

    // A subscriber on a slow link: its Chromium in a network namespace whose link from the SFU is
    // shaped with `tc tbf`; the node listens on the veth's host address so every page reaches it.
    let ns = Arc::new(Netns::create().unwrap_or_else(|e| {
        panic!("the constrained-link scenario needs a network namespace (root, iproute2): {e}")
    }));
    let wrapper = ns.chromium_wrapper(&dir.0);
    let node = Node::start_on(ns.host_ip, 2, &[], &[]).expect("node on the veth address");
    let base = format!("http://{}", node.signaling[0].0);
    let shape_url = shape_endpoint(Arc::downgrade(&ns));
    let started = Instant::now();
    let status = Command::new("node")
        .arg(repo_root().join("scripts/browser/e2e.mjs"))
        .env("BASE_URL", &base)
        .env("OUT_DIR", &out_dir)
        .env("E2E_SCENARIOS", "constrained")
        .env("E2E_NETNS_CHROMIUM", &wrapper)
        .env("SHAPE_URL", &shape_url)
        .current_dir(repo_root().join("scripts/browser"))
        .status()
        .expect("run node");
    let took = started.elapsed();
    assert!(
        status.success(),
        "browser e2e (constrained link) failed after {took:?}\n{}",
        node.logs()
    );
    drop(node);
    drop(ns);
}

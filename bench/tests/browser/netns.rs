//! Helpers of the browser test: the small HTTP control endpoints the browser scripts call
//! (restart signaling, shape or firewall the namespace's link) and the network namespace a page
//! can run in ([`Netns`]).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, Weak};

use bench::harness::Node;

/// A tiny HTTP endpoint for the browser scripts: each request line (`POST /kill`, …) goes to
/// `handle` with the state `target` while the test still holds it, and its (status, body) is the
/// answer. Returns the base URL. The thread keeps only a `Weak`, so the state (a node and every
/// process it started) is dropped when the test ends, even though the accept loop never returns.
pub fn control_endpoint<T: Send + Sync + 'static>(
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
pub fn restart_endpoint(node: Weak<Mutex<Node>>) -> String {
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
pub fn shape_endpoint(ns: Weak<Netns>) -> String {
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
pub struct Netns {
    name: String,
    host_if: String,
    pub host_ip: std::net::IpAddr,
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
    pub fn create() -> Result<Self, String> {
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
    pub fn shape(&self, on: bool) -> Result<(), String> {
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
    pub fn chromium_wrapper(&self, dir: &std::path::Path) -> PathBuf {
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

impl Netns {
    /// Inside the namespace: run `nft -f -` with `rules`.
    pub fn nft(&self, rules: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("ip netns exec nft: {e} (apt-get install nftables)"))?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(rules.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A firewall like a corporate network's: no UDP out of the namespace at all, and no TCP to
    /// `blocked_tcp` (plain TURN's port); TCP to other ports (HTTP, the dataplane's ICE-TCP
    /// ports, TURN over TLS on 443) passes. Also an empty `loss` chain for [`Netns::tcp_loss`].
    pub fn block_udp(&self, blocked_tcp: u16) -> Result<(), String> {
        self.nft(&format!(
            "table inet fw {{\n\
             chain out {{ type filter hook output priority 0; policy accept;\n\
               meta l4proto udp drop\n tcp dport {blocked_tcp} drop\n }}\n\
             chain loss {{ type filter hook input priority 0; policy accept; }}\n\
             }}\n"
        ))
    }

    /// Drop `percent` % of the TCP segments arriving from `ports` (the dataplane's ICE-TCP ports)
    /// with nftables `numgen`, or stop dropping (0).
    pub fn tcp_loss(&self, ports: (u16, u16), percent: u32) -> Result<(), String> {
        let mut rules = String::from("flush chain inet fw loss\n");
        if percent > 0 {
            rules.push_str(&format!(
                "add rule inet fw loss tcp sport {}-{} numgen random mod 100 < {percent} drop\n",
                ports.0, ports.1
            ));
        }
        self.nft(&rules)
    }
}

/// `POST /tcploss` (5 % of the dataplane's TCP segments toward the namespace dropped) and
/// `POST /notcploss`.
pub fn loss_endpoint(ns: Weak<Netns>, ports: (u16, u16)) -> String {
    control_endpoint(ns, move |ns, line| {
        let result = if line.starts_with("POST /tcploss") {
            ns.tcp_loss(ports, 5)
        } else if line.starts_with("POST /notcploss") {
            ns.tcp_loss(ports, 0)
        } else {
            return ("404 Not Found", "no".to_string());
        };
        match result {
            Ok(()) => ("200 OK", "done".to_string()),
            Err(e) => ("500 Internal Server Error", e),
        }
    })
}

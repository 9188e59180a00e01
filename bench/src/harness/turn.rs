//! Debian `coturn` on loopback ([`Turn`]), ready when it answers a STUN binding request.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::{Proc, free_udp_ports, poll};

/// Debian `coturn` on a free loopback port with a shared secret (TURN REST API credentials),
/// logging into a directory; stopped when dropped.
#[derive(Debug)]
pub struct Turn {
    _proc: Proc,
    pub port: u16,
    /// `turn:127.0.0.1:<port>?transport=udp`
    pub url: String,
    pub secret: String,
}

impl Turn {
    /// Whether `turnserver` is installed.
    pub fn installed() -> bool {
        Command::new("turnserver").arg("-h").output().is_ok()
    }

    /// Start it with `secret` and 40 relay ports; its log is `dir/turn.log`. Returns once it
    /// answers a STUN binding request on its port.
    pub fn start(dir: &Path, secret: &str) -> anyhow::Result<Self> {
        let port = free_udp_ports(1)?;
        let relay = free_udp_ports(40)?;
        let args: Vec<String> = vec![
            "-n".into(),
            "--listening-ip=127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            format!("--min-port={relay}"),
            format!("--max-port={}", relay + 39),
            "--use-auth-secret".into(),
            format!("--static-auth-secret={secret}"),
            "--realm=sfu.test".into(),
            "--fingerprint".into(),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--no-cli".into(),
            "--allow-loopback-peers".into(),
            "--no-multicast-peers".into(),
            format!("--userdb={}", dir.join("turndb").display()),
            format!("--pidfile={}", dir.join("turn.pid").display()),
            format!("--log-file={}", dir.join("turn.log").display()),
            "--simple-log".into(),
        ];
        let proc = Proc::spawn(
            "turnserver",
            Path::new("turnserver"),
            &args,
            dir.join("turn.out"),
        )?;
        poll(Duration::from_secs(10), Duration::from_millis(50), || {
            answers_stun(port).then_some(())
        })
        .with_context(|| {
            format!(
                "turnserver did not answer STUN on port {port}: {}",
                std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default()
            )
        })?;
        Ok(Self {
            _proc: proc,
            port,
            url: format!("turn:127.0.0.1:{port}?transport=udp"),
            secret: secret.to_string(),
        })
    }
}

/// Whether a STUN server on loopback `port` answers a binding request (RFC 8489: type 0x0001,
/// no attributes, the magic cookie, a random transaction id) with a success response for it.
fn answers_stun(port: u16) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let txid: [u8; 12] = rand::random();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&txid);
    if s.send_to(&req, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == txid)
}

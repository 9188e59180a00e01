//! Debian `coturn` on loopback ([`Turn`]), or on another local address with TURN over TLS on
//! port 443 and a self-signed certificate ([`Turn::start_tls`]); ready when it answers a STUN
//! binding request.

use std::net::{IpAddr, UdpSocket};
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
    /// Every URL to hand out: UDP, and with [`Turn::start_tls`] also TCP and TLS (`turns:`).
    pub urls: Vec<String>,
}

impl Turn {
    /// Whether `turnserver` is installed.
    pub fn installed() -> bool {
        Command::new("turnserver").arg("-h").output().is_ok()
    }

    /// Start it with `secret` and 40 relay ports; its log is `dir/turn.log`. Returns once it
    /// answers a STUN binding request on its port.
    pub fn start(dir: &Path, secret: &str) -> anyhow::Result<Self> {
        Self::start_on(dir, secret, IpAddr::from([127, 0, 0, 1]), None)
    }

    /// Start it on `ip` (an address of this host) with TURN over UDP and TCP on a free port and
    /// over TLS on `tls_port` (443 in the tests: what firewalls that allow only HTTPS let
    /// through), with a self-signed certificate for `ip` made by `openssl`.
    pub fn start_tls(dir: &Path, secret: &str, ip: IpAddr, tls_port: u16) -> anyhow::Result<Self> {
        let (cert, key) = (dir.join("turn-cert.pem"), dir.join("turn-key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", "/CN=turn.test", "-addext"])
            .arg(format!("subjectAltName=IP:{ip}"))
            .output()
            .context("running openssl (apt-get install openssl)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl could not make a certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_on(dir, secret, ip, Some((tls_port, cert, key)))
    }

    fn start_on(
        dir: &Path,
        secret: &str,
        ip: IpAddr,
        tls: Option<(u16, std::path::PathBuf, std::path::PathBuf)>,
    ) -> anyhow::Result<Self> {
        let port = free_udp_ports(1)?;
        let relay = free_udp_ports(40)?;
        let mut args: Vec<String> = vec![
            "-n".into(),
            format!("--listening-ip={ip}"),
            format!("--listening-port={port}"),
            format!("--relay-ip={ip}"),
            format!("--min-port={relay}"),
            format!("--max-port={}", relay + 39),
            "--use-auth-secret".into(),
            format!("--static-auth-secret={secret}"),
            "--realm=sfu.test".into(),
            "--fingerprint".into(),
            "--no-dtls".into(),
            "--no-cli".into(),
            "--allow-loopback-peers".into(),
            "--no-multicast-peers".into(),
            format!("--userdb={}", dir.join("turndb").display()),
            format!("--pidfile={}", dir.join("turn.pid").display()),
            format!("--log-file={}", dir.join("turn.log").display()),
            "--simple-log".into(),
        ];
        match &tls {
            Some((tls_port, cert, key)) => {
                args.push(format!("--tls-listening-port={tls_port}"));
                args.push(format!("--cert={}", cert.display()));
                args.push(format!("--pkey={}", key.display()));
            }
            None => args.push("--no-tls".into()),
        }
        let proc = Proc::spawn(
            "turnserver",
            Path::new("turnserver"),
            &args,
            dir.join("turn.out"),
        )?;
        poll(Duration::from_secs(10), Duration::from_millis(50), || {
            answers_stun(ip, port).then_some(())
        })
        .with_context(|| {
            format!(
                "turnserver did not answer STUN on port {port}: {}",
                std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default()
            )
        })?;
        let url = format!("turn:{ip}:{port}?transport=udp");
        let mut urls = vec![url.clone()];
        if let Some((tls_port, ..)) = tls {
            urls.push(format!("turn:{ip}:{port}?transport=tcp"));
            urls.push(format!("turns:{ip}:{tls_port}?transport=tcp"));
        }
        Ok(Self {
            _proc: proc,
            port,
            url,
            secret: secret.to_string(),
            urls,
        })
    }
}

/// Whether a STUN server on `ip:port` answers a binding request (RFC 8489: type 0x0001, no
/// attributes, the magic cookie, a random transaction id) with a success response for it.
fn answers_stun(ip: IpAddr, port: u16) -> bool {
    let Ok(s) = UdpSocket::bind((ip, 0)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let txid: [u8; 12] = rand::random();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&txid);
    if s.send_to(&req, (ip, port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == txid)
}

//! The control socket (defect 8): a private directory and mode whatever the umask, peer
//! credentials checked by both ends (against a squatter running as another user), the hello
//! timeout and the connection cap. These run a process as another user: root only.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use bench::harness::{control_request, http_get, wait_until};
use control::{Request, Response};

use super::T;

/// A child process killed when dropped (so a failing assertion leaves nothing running).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `path` exists (a socket being bound).
fn wait_exists(path: &Path) {
    wait_until(
        &format!("{} exists", path.display()),
        T,
        Duration::from_millis(20),
        || path.exists(),
    )
    .expect("socket");
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the control-socket tests run a squatter as another user and need root"
    );
}

/// A Python Unix-socket listener at `path`, running as uid/gid 65534, that records what it
/// receives into `log` and answers nothing.
fn squatter(path: &Path, log: &Path) -> Kill {
    let script = format!(
        "import socket,os\ns=socket.socket(socket.AF_UNIX)\ns.bind({p:?})\nos.chmod({p:?},0o777)\ns.listen(8)\nf=open({l:?},'ab',0)\nwhile True:\n  c,_=s.accept()\n  c.settimeout(3)\n  try:\n    d=c.recv(65536)\n    f.write(d)\n  except Exception: pass\n",
        p = path.display().to_string(),
        l = log.display().to_string()
    );
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .spawn()
        .map(Kill)
        .expect("setpriv python3")
}

#[test]
fn the_control_socket_is_private_and_both_ends_check_each_other() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let dir = bench::harness::TempDir::new("sfu-ctl").expect("dir");
    let bin = bench::harness::binary("dataplane").expect("bin");
    let sig = bench::harness::binary("signaling").expect("bin");
    let udp = bench::harness::free_udp_ports(1).expect("port");
    let dp = |sock: &Path, extra: &[&str]| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(&bin)
            .args(["--workers", "1", "--no-pin", "--metrics-listen", "off"])
            .args(["--port-base", &udp.to_string(), "--control-socket"])
            .arg(sock)
            .args(extra);
        c
    };

    // A world-writable (non-sticky) directory is refused.
    let open = dir.0.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = dp(&open.join("dp.sock"), &[]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by other users"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Under a permissive umask the socket is still 0600, in a 0700 directory it created.
    let private = dir.0.join("private").join("dp.sock");
    let child = Kill(dp(&private, &[]).spawn().expect("dataplane"));
    wait_exists(&private);
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(private.parent().expect("dir")), 0o700);

    // The dataplane refuses a connection from another user (SO_PEERCRED), even one the file
    // mode lets in; it gets no welcome (the refusal can close the socket before the hello is
    // even written: a broken pipe counts as refused too).
    drop(child);
    let shared = dir.0.join("shared.sock");
    let child = Kill(
        dp(&shared, &["--control-socket-mode", "0660"])
            .spawn()
            .expect("dataplane"),
    );
    wait_exists(&shared);
    let probe = format!(
        "import socket,struct,json\ns=socket.socket(socket.AF_UNIX)\ns.connect({p:?})\nm=json.dumps({{'kind':'hello','version':1,'client':'x'}}).encode()\ns.settimeout(3)\ntry:\n  s.sendall(struct.pack('>I',len(m))+m)\n  print(len(s.recv(65536)))\nexcept (ConnectionResetError, BrokenPipeError):\n  print(0)\n",
        p = shared.display().to_string()
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=0",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &probe,
        ])
        .output()
        .expect("probe");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "another user got an answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our own user is served.
    let r = control_request(&shared, Request::Stats).expect("stats");
    assert!(matches!(r, Response::Stats(_)));
    // Hello timeout: a silent connection is closed after 5 s.
    let mut silent = std::os::unix::net::UnixStream::connect(&shared).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let t = Instant::now();
    let mut b = [0u8; 16];
    assert_eq!(silent.read(&mut b).expect("read"), 0);
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    // At most 64 connections. The kernel queues them in the order they were made and the
    // dataplane accepts (and counts) them in that order, so the 65th is counted after the 64:
    // no wait is needed.
    let many: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&shared).expect("connect"))
        .collect();
    let mut extra = std::os::unix::net::UnixStream::connect(&shared).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(extra.read(&mut b).expect("read"), 0, "the 65th is closed");
    drop(many);
    drop(child);

    // A socket squatted by another user: signaling never talks to it, the dataplane refuses to
    // start on it.
    let sticky = dir.0.join("sticky");
    std::fs::create_dir(&sticky).expect("mkdir");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let sock = sticky.join("dp.sock");
    let log = dir.0.join("squatter.log");
    std::fs::write(&log, b"").expect("log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let sq = squatter(&sock, &log);
    wait_exists(&sock);
    let addr: std::net::SocketAddr = (
        [127, 0, 0, 1],
        bench::harness::free_tcp_port().expect("port"),
    )
        .into();
    let mut s = bench::harness::Proc::spawn(
        "signaling",
        &sig,
        &[
            "--listen".into(),
            addr.to_string(),
            "--metrics-listen".into(),
            "off".into(),
            "--control-socket".into(),
            sock.display().to_string(),
        ],
        dir.0.join("sig.log"),
    )
    .expect("signaling");
    // Signaling checked the socket's owner and refused it, without sending anything.
    wait_until(
        "signaling refuses the squatted socket",
        T,
        Duration::from_millis(20),
        || s.log_text().contains("refusing the control socket"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 503);
    assert!(
        std::fs::read(&log).expect("log").is_empty(),
        "signaling sent the squatter something"
    );
    s.kill();
    let out = dp(&sock, &[]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uid 65534"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sq);
}

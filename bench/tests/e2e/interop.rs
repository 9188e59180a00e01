//! An independent WebRTC stack through the real binaries: aiortc (Python, from PyPI, in the venv
//! `scripts/test` makes at `target/interop-venv`) publishes a VP8 test picture and a tone over
//! WHIP, a synthetic WebSocket participant receives it, and an aiortc WHEP viewer decodes its
//! frames (`scripts/interop/aiortc_whip.py`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::client;
use bench::harness::Node;
use str0m::media::MediaKind;

use super::{T, join};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python with aiortc, or a panic saying how to get it.
fn aiortc_python() -> PathBuf {
    let python = std::env::var_os("SFU_AIORTC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/interop-venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import aiortc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} has no aiortc: run ./scripts/test (it makes the venv), or \
         python3 -m venv target/interop-venv && target/interop-venv/bin/pip install aiortc",
        python.display()
    );
    python
}

#[test]
fn aiortc_publishes_over_whip_and_views_over_whep() {
    let python = aiortc_python();
    let script = repo().join("scripts/interop/aiortc_whip.py");
    let node = Node::start(1, &[]).expect("node starts");
    let base = format!("http://{}", node.signaling[0].0);
    let epoch = Instant::now();
    let mut cs = vec![join(&node, 0, "interop", "ws-bob", None, epoch)];
    let publisher = Command::new(&python)
        .arg(&script)
        .args(["whip", &format!("{base}/whip/interop"), "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the aiortc publisher");
    // The WebSocket participant sees aiortc join and receives its video and audio.
    let ok = client::run(&mut cs, T, |cs| {
        cs[0].others.iter().any(|(id, _)| {
            cs[0].peer.received.packets_from(id, MediaKind::Video) > 60
                && cs[0].peer.received.packets_from(id, MediaKind::Audio) > 30
        })
    })
    .expect("run");
    assert!(
        ok,
        "no media from the aiortc WHIP publisher:\n{}",
        node.logs()
    );
    // An aiortc WHEP viewer decodes the aiortc publisher's VP8.
    let viewer = Command::new(&python)
        .arg(&script)
        .args(["whep", &format!("{base}/whep/interop"), "12", "30"])
        .output()
        .expect("run the aiortc viewer");
    let out = String::from_utf8_lossy(&viewer.stdout);
    assert!(
        viewer.status.success(),
        "aiortc WHEP viewer: {out}\n{}\n{}",
        String::from_utf8_lossy(&viewer.stderr),
        node.logs()
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("viewer JSON");
    assert!(v["video_frames"].as_u64().is_some_and(|n| n >= 30), "{v}");
    assert_eq!(v["width"], 320, "{v}");
    // Keep the WebSocket participant's peer connection served while the publisher finishes
    // (an unserved one would hit the dataplane's ICE timeout).
    let mut publisher = publisher;
    let deadline = Instant::now() + Duration::from_secs(30);
    while publisher.try_wait().expect("publisher status").is_none() && Instant::now() < deadline {
        client::run(&mut cs, Duration::from_millis(100), |_| false).expect("run");
    }
    let published = publisher.wait_with_output().expect("publisher ends");
    let out = String::from_utf8_lossy(&published.stdout);
    assert!(
        published.status.success(),
        "aiortc WHIP publisher: {out}\n{}",
        String::from_utf8_lossy(&published.stderr)
    );
    // Its DELETE removed it from the room.
    let ok = client::run(&mut cs, Duration::from_secs(10), |cs| {
        cs[0].others.is_empty()
    })
    .expect("run");
    assert!(
        ok,
        "the aiortc publisher left after DELETE: {:?}",
        cs[0].others
    );
}

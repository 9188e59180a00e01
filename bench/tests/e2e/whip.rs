//! WHIP and WHEP through the real binaries: a synthetic str0m peer publishes over WHIP (an HTTP
//! POST of its offer) and a WebSocket participant and WHEP viewers receive it; `DELETE` ends the
//! session; bad requests get clear HTTP errors and leave signaling healthy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::harness::{Node, mint_token};
use bench::whip::{WhipClient, http_request};
use str0m::media::MediaKind;

use super::{T, join};

/// Drive WHIP/WHEP clients and WebSocket clients together until `until` or `d`.
fn run_all(
    whips: &mut [&mut WhipClient],
    cs: &mut [Client],
    d: Duration,
    mut until: impl FnMut(&[&mut WhipClient], &[Client]) -> bool,
) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let now = Instant::now();
        for w in whips.iter_mut() {
            w.poll(now);
        }
        for c in cs.iter_mut() {
            c.poll(now).expect("poll");
        }
        if until(whips, cs) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Packets received on `w`'s m-lines of `kind` (a WHEP viewer's slots).
fn slot_packets(w: &WhipClient, kind: MediaKind) -> u64 {
    w.peer
        .received
        .tracks
        .values()
        .filter(|t| t.kind == Some(kind))
        .map(|t| t.packets)
        .sum()
}

fn sig(node: &Node) -> SocketAddr {
    node.signaling[0].0
}

#[test]
fn whip_publishes_to_a_room_and_whep_viewers_watch() {
    let mut node = Node::start(1, &[]).expect("node starts");
    let epoch = Instant::now();
    // A participant in the page's shoes (WebSocket), publishing too.
    let mut cs = vec![join(
        &node,
        0,
        "whip-room",
        "ws-alice",
        Some(Media::default()),
        epoch,
    )];
    let mut whip = WhipClient::publish(
        sig(&node),
        "whip-room",
        Media::default(),
        None,
        false,
        epoch,
    )
    .unwrap_or_else(|e| panic!("WHIP publish: {e:#}\n{}", node.logs()));
    assert!(
        whip.location.starts_with("/whip/whip-room/"),
        "{}",
        whip.location
    );
    assert!(
        whip.answer.contains("a=candidate") && whip.answer.contains("tcptype passive"),
        "the answer carries the UDP and ICE-TCP candidates: {}",
        whip.answer
    );
    // The WebSocket participant learns of the publisher and receives its media.
    let ok = run_all(&mut [&mut whip], &mut cs, T, |_, cs| {
        cs[0].others.iter().any(|(_, n)| n.starts_with("whip-"))
    });
    assert!(ok, "the WHIP publisher joined the room:\n{}", node.logs());
    let whip_id = cs[0]
        .others
        .iter()
        .find(|(_, n)| n.starts_with("whip-"))
        .map(|(id, _)| id.clone())
        .expect("whip participant");
    let ok = run_all(&mut [&mut whip], &mut cs, T, |_, cs| {
        client::video_from(&cs[0], &cs[0]) == 0
            && cs[0].peer.received.packets_from(&whip_id, MediaKind::Video) > 60
            && cs[0].peer.received.packets_from(&whip_id, MediaKind::Audio) > 30
    });
    assert!(
        ok,
        "the WebSocket participant got the WHIP media:\n{}",
        node.logs()
    );
    // A WHIP publisher subscribes to nothing: it never got the WebSocket participant's media.
    assert_eq!(slot_packets(&whip, MediaKind::Video), 0);

    // WHEP: one viewer of the room, one of alice only.
    let mut room_viewer = WhipClient::view(sig(&node), "whip-room", None, 1, 1, None, epoch)
        .unwrap_or_else(|e| panic!("WHEP view: {e:#}\n{}", node.logs()));
    let mut alice_viewer =
        WhipClient::view(sig(&node), "whip-room", Some(&cs[0].id), 1, 1, None, epoch)
            .unwrap_or_else(|e| panic!("WHEP view of alice: {e:#}\n{}", node.logs()));
    assert!(room_viewer.location.starts_with("/whep/whip-room/"));
    let ok = run_all(
        &mut [&mut whip, &mut room_viewer, &mut alice_viewer],
        &mut cs,
        T,
        |w, _| {
            w[1..].iter().all(|v| {
                slot_packets(v, MediaKind::Video) > 60 && slot_packets(v, MediaKind::Audio) > 30
            })
        },
    );
    assert!(
        ok,
        "both WHEP viewers receive audio and video:\n{}",
        node.logs()
    );
    for v in [&room_viewer, &alice_viewer] {
        for t in v.peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "no gaps on loopback: {t:?}");
        }
    }

    // DELETE ends the WHIP session: the room sees it leave; a second DELETE is 404.
    assert_eq!(whip.delete().expect("delete"), 200);
    let ok = run_all(&mut [&mut room_viewer], &mut cs, T, |_, cs| {
        !cs[0].others.iter().any(|(id, _)| *id == whip_id)
    });
    assert!(ok, "the WHIP publisher left the room:\n{}", node.logs());
    assert_eq!(whip.delete().expect("delete"), 404);
    // The room viewer's slots now carry alice (the only publisher left).
    let before = slot_packets(&room_viewer, MediaKind::Video);
    let ok = run_all(&mut [&mut room_viewer], &mut cs, T, |w, _| {
        slot_packets(w[0], MediaKind::Video) > before + 60
    });
    assert!(
        ok,
        "the room viewer's video slot was refilled:\n{}",
        node.logs()
    );
    assert_eq!(room_viewer.delete().expect("delete"), 200);
    // A DELETE that the load balancer sends to another signaling instance ends the session too
    // (its Location is the session's resume token); a garbage resource there is 404.
    let other = node.add_signaling().expect("a second signaling instance");
    assert_eq!(alice_viewer.delete_via(other).expect("delete"), 200);
    let gone = http_request(other, "DELETE", &alice_viewer.location, &[], b"").expect("http");
    assert_eq!(gone.status, 404, "{}", gone.text());
    let junk =
        http_request(other, "DELETE", "/whep/whip-room/not-a-token", &[], b"").expect("http");
    assert_eq!(junk.status, 404);
}

#[test]
fn whip_refuses_bad_requests_with_clear_http_errors() {
    let node = Node::start(1, &[]).expect("node starts");
    let addr = sig(&node);
    let sdp_headers = |len: &str| -> Vec<(String, String)> {
        vec![
            ("Content-Type".into(), "application/sdp".into()),
            ("Content-Length".into(), len.into()),
        ]
    };
    let req = |method: &str, path: &str, headers: &[(String, String)], body: &[u8]| {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        http_request(addr, method, path, &h, body).expect("http")
    };
    // A 10 MB body: refused from its Content-Length (the body is never read).
    let big = vec![b'x'; 10 * 1024 * 1024];
    let started = Instant::now();
    let r = req(
        "POST",
        "/whip/r1",
        &sdp_headers(&big.len().to_string()),
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    // Not SDP by type, by content, or without a length.
    let r = req(
        "POST",
        "/whip/r1",
        &[
            ("Content-Type".into(), "application/json".into()),
            ("Content-Length".into(), "2".into()),
        ],
        b"{}",
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let r = req("POST", "/whip/r1", &sdp_headers("11"), b"hello world");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = req(
        "POST",
        "/whip/r1",
        &[("Content-Type".into(), "application/sdp".into())],
        b"",
    );
    assert_eq!(r.status, 411, "{}", r.text());
    // SDP-shaped nonsense reaches the dataplane and comes back as 400.
    let junk = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=nonsense\r\n";
    let r = req(
        "POST",
        "/whip/r1",
        &sdp_headers(&junk.len().to_string()),
        junk.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A bad room name, other methods, unknown resources.
    let r = req(
        "POST",
        "/whip/bad%20room",
        &sdp_headers(&junk.len().to_string()),
        junk.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(req("GET", "/whip/r1", &[], b"").status, 405);
    assert_eq!(
        req("PATCH", "/whip/r1/abc", &sdp_headers("0"), b"").status,
        405
    );
    assert_eq!(
        req("DELETE", "/whip/r1/0123456789abcdef", &[], b"").status,
        404
    );
    assert_eq!(
        req("POST", "/whip/r1/extra", &sdp_headers("0"), b"").status,
        404
    );
    let r = req("OPTIONS", "/whip/r1", &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    // A WHEP viewer's offer must have something to receive on.
    let epoch = Instant::now();
    let mut p = bench::Peer::new("x", "127.0.0.1:9".parse().expect("addr"), epoch, epoch);
    let sendonly = p.create_whip_offer(true, true);
    let r = req(
        "POST",
        "/whep/r1",
        &sdp_headers(&sendonly.len().to_string()),
        sendonly.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("recvonly"), "{}", r.text());

    // A flood of POSTs from one address: the join rate answers 429.
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let mut p = bench::Peer::new("f", "127.0.0.1:9".parse().expect("addr"), epoch, epoch);
        let offer = p.create_whip_offer(true, false);
        statuses.push(
            req(
                "POST",
                "/whip/flood",
                &sdp_headers(&offer.len().to_string()),
                offer.as_bytes(),
            )
            .status,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [201, 429].contains(s)),
        "{statuses:?}"
    );
    // Signaling is still healthy and serves a WebSocket join (once the address's join
    // allowance, spent by the flood, has refilled).
    let deadline = Instant::now() + T;
    let bob = loop {
        match Client::join(
            &node.ws_url(0),
            "after",
            "bob",
            Some(Media::default()),
            epoch,
            T,
        ) {
            Ok(c) => break c,
            Err(e) if format!("{e:#}").contains("rate_limited") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("bob failed to join: {e:#}\n{}", node.logs()),
        }
    };
    let mut cs = vec![bob];
    assert!(client::run(&mut cs, T, |cs| cs[0].peer.is_connected()).expect("run"));
}

#[test]
fn whip_needs_the_same_token_as_a_websocket_join() {
    const SECRET: &str = "test-secret-0123456789abcdef";
    let node = Node::start_with(1, &[], &["--jwt-secret", SECRET]).expect("node starts");
    let epoch = Instant::now();
    let err = WhipClient::publish(sig(&node), "secure", Media::default(), None, false, epoch)
        .expect_err("no token");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let mut p = bench::Peer::new("x", "127.0.0.1:9".parse().expect("addr"), epoch, epoch);
    let offer = p.create_whip_offer(true, true);
    let r = http_request(
        sig(&node),
        "POST",
        "/whip/secure",
        &[
            ("Content-Type", "application/sdp"),
            ("Content-Length", &offer.len().to_string()),
        ],
        offer.as_bytes(),
    )
    .expect("http");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let other_room =
        mint_token(&["--secret", SECRET, "--room", "elsewhere", "--identity", "u"]).expect("mint");
    let err = WhipClient::publish(
        sig(&node),
        "secure",
        Media::default(),
        Some(&other_room),
        false,
        epoch,
    )
    .expect_err("token for another room");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let good =
        mint_token(&["--secret", SECRET, "--room", "secure", "--identity", "u"]).expect("mint");
    let mut whip = WhipClient::publish(
        sig(&node),
        "secure",
        Media::default(),
        Some(&good),
        true,
        epoch,
    )
    .unwrap_or_else(|e| {
        panic!(
            "WHIP with a token (media over ICE-TCP): {e:#}\n{}",
            node.logs()
        )
    });
    let viewer_token =
        mint_token(&["--secret", SECRET, "--room", "secure", "--identity", "v"]).expect("mint");
    let mut viewer = WhipClient::view(sig(&node), "secure", None, 1, 1, Some(&viewer_token), epoch)
        .unwrap_or_else(|e| panic!("WHEP with a token: {e:#}\n{}", node.logs()));
    let ok = run_all(&mut [&mut whip, &mut viewer], &mut [], T, |w, _| {
        slot_packets(w[1], MediaKind::Video) > 60
    });
    assert!(
        ok,
        "the viewer gets the ICE-TCP WHIP publisher's video:\n{}",
        node.logs()
    );
    assert_eq!(whip.delete().expect("delete"), 200);
    assert_eq!(viewer.delete().expect("delete"), 200);
}

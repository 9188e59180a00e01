//! Faults on the link between signaling and the dataplane: an offer whose answer would not fit a
//! control frame, control reconnects, a panicking worker. Each must fail alone — the calls of
//! everyone else on the instance continue.

use std::time::{Duration, Instant};

use bench::client;
use bench::harness::{Node, control_request, http_get, poll};
use control::{Fault, Request, Response};
use serde_json::json;

use super::{T, all_flowing, join, raw_join, send, told_of_newcomer, wait_type};

/// An offer with `n` audio m-lines, all but the first minimal (~115 bytes): what a hostile client
/// can send in well under 1 MiB. Valid enough for str0m to accept.
fn offer_with_media(n: usize) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = api.apply().expect("offer");
    let one = offer.to_sdp_string();
    let (head, first) = one.split_at(one.find("m=").expect("m-line"));
    let mid0 = first
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("mid")
        .trim()
        .to_string();
    let mids: Vec<String> = (1..n).map(|i| i.to_string()).collect();
    let head = head.replace(
        &format!("a=group:BUNDLE {mid0}"),
        &format!("a=group:BUNDLE {mid0} {}", mids.join(" ")),
    );
    let mut sdp = head + first;
    for i in 1..n {
        sdp += &format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
        );
    }
    sdp
}

/// Defect 1: an offer of ~2,500 m-lines made the dataplane build an answer larger than a control
/// frame and close the whole control link: every call on the instance stopped. Now the offer is
/// refused (`bad_request`), and with the m-line cap raised the oversized answer fails that one
/// request; other calls never notice.
#[test]
fn an_oversized_offer_fails_alone_and_other_calls_continue() {
    for (cap, why) in [(None, "media sections"), (Some("5000"), "control limit")] {
        let mut dp: Vec<&str> = vec![];
        if let Some(c) = cap {
            dp.extend(["--max-media-per-offer", c]);
        }
        let node = Node::start(1, &dp).expect("node");
        let epoch = Instant::now();
        let mut cs = vec![
            join(&node, "calm", "a", epoch),
            join(&node, "calm", "b", epoch),
        ];
        assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));

        let (mut evil, _) = raw_join(&node.ws_url(0), "evil", "mallory");
        let offer = offer_with_media(2500);
        assert!(offer.len() < 1 << 20, "fits a WebSocket message");
        send(&mut evil, json!({"type":"offer","sdp":offer}));
        let (err, other) = wait_type(&mut evil, "error", T);
        let err = err.unwrap_or_else(|| panic!("no error ({why}): {other:?}\n{}", node.logs()));
        assert_eq!(err["code"], "bad_request", "{err}");
        assert!(err["message"].as_str().unwrap_or("").contains(why), "{err}");

        // The control link is intact: events and renegotiation still flow for everyone.
        cs.push(join(&node, "calm", "c", epoch));
        assert!(
            client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"),
            "the call continued after the attack (cap {cap:?})\n{}",
            node.logs()
        );
        told_of_newcomer(&cs[..2], "c");
        assert!(
            !node
                .logs()
                .contains("lost the dataplane control connection"),
            "{}",
            node.logs()
        );
    }
}

/// Defect 1: after any control reconnect, re-attached sessions silently became `Idle` (answers
/// got "join the room first", newcomers were never announced). Two reconnects in a row, then a
/// newcomer is announced and the renegotiation that brings its media completes.
#[test]
fn sessions_stay_joined_across_two_control_reconnects() {
    let node = Node::start(1, &["--test-faults"]).expect("node");
    let epoch = Instant::now();
    let mut cs = vec![join(&node, "r", "a", epoch), join(&node, "r", "b", epoch)];
    assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));
    for round in 0..2 {
        let r = control_request(
            &node.control_socket,
            Request::InjectFault {
                fault: Fault::DropControlLinks,
            },
        )
        .expect("inject");
        assert_eq!(r, Response::Ok);
        // Signaling reconnects (100 ms backoff) and re-attaches; the clients keep running.
        let end = Instant::now() + T;
        loop {
            client::run(&mut cs, Duration::from_millis(200), |_| false).expect("run");
            let logs = node.signaling[0].1.log_text();
            if logs.matches("connected to the local dataplane").count() >= round + 2 {
                break;
            }
            assert!(
                Instant::now() < end,
                "signaling did not reconnect\n{}",
                node.logs()
            );
        }
    }
    client::run(&mut cs, Duration::from_millis(500), |_| false).expect("run");
    cs.push(join(&node, "r", "c", epoch));
    let ok = client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run");
    assert!(
        ok,
        "media with the newcomer after two reconnects\n{}",
        node.logs()
    );
    told_of_newcomer(&cs[..2], "c");
    for c in &cs[..2] {
        assert!(
            !c.messages.iter().any(|m| m["type"] == "error"),
            "{}: {:?}",
            c.name,
            c.messages
        );
    }
}

/// Failure recovery 4: a panicking worker used to be dead forever ("overloaded" for every
/// request, no signal). Its participants now get `room_closed {reason:"worker_failed"}`, it
/// restarts on the same port, metrics show it, and the clients' rejoin works.
#[test]
fn a_panicking_worker_is_restarted_and_its_clients_rejoin() {
    let mut node = Node::start(1, &["--test-faults"]).expect("node");
    let epoch = Instant::now();
    let mut cs = vec![join(&node, "w", "a", epoch), join(&node, "w", "b", epoch)];
    assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));
    let r = control_request(
        &node.control_socket,
        Request::InjectFault {
            fault: Fault::WorkerPanic { worker: 0 },
        },
    )
    .expect("inject");
    assert_eq!(r, Response::Ok);
    let ok = client::run(&mut cs, Duration::from_secs(5), |cs| {
        cs.iter().all(|c| c.count("room_closed") > 0)
    })
    .expect("run");
    assert!(ok, "room_closed not delivered\n{}", node.logs());
    for c in &cs {
        let m = c
            .messages
            .iter()
            .find(|m| m["type"] == "room_closed")
            .expect("room_closed");
        assert_eq!(m["reason"], "worker_failed");
    }
    assert!(node.dataplane.running(), "the process survived");
    let mut last = String::new();
    let restarted = poll(T, Duration::from_millis(200), || {
        last = http_get(node.metrics_addr, "/metrics").expect("metrics").1;
        (last
            .lines()
            .any(|l| l == "sfu_worker_restarts_total{worker=\"0\"} 1")
            && last.lines().any(|l| l == "sfu_worker_up{worker=\"0\"} 1"))
        .then_some(())
    });
    assert!(
        restarted.is_some(),
        "restart not visible in metrics:\n{last}"
    );
    assert_eq!(
        http_get(node.metrics_addr, "/healthz").expect("healthz").0,
        200
    );
    for c in &mut cs {
        c.rejoin(T)
            .unwrap_or_else(|e| panic!("rejoin: {e:#}\n{}", node.logs()));
    }
    assert!(
        client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"),
        "media after the restart\n{}",
        node.logs()
    );
}

//! ICE over TCP (RFC 6544): the core advertises a passive TCP candidate next to its UDP one and
//! serves peers that reach it only over TCP exactly like UDP peers (the shell does the framing;
//! here the simulated network carries whole datagrams tagged `Transport::Tcp`). Also: every
//! m-section of the SDP the core sends carries the candidates.

use super::*;
use sfu_core::Transport;

/// The `a=candidate` lines of each m-section of `sdp`.
fn candidates_per_section(sdp: &str) -> Vec<Vec<String>> {
    let mut sections: Vec<Vec<String>> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        } else if let (Some(s), Some(c)) = (sections.last_mut(), line.strip_prefix("a=candidate:"))
        {
            s.push(c.to_string());
        }
    }
    sections
}

/// Peer "a" joins with an offer (audio, and video if `video`); the answer.
fn answer_to_offer(sim: &mut Sim, video: bool) -> String {
    sim.add_peer("a");
    let offer = sim.peer_mut("a").peer.create_offer(true, video);
    let resp = sim.command(Request::Join {
        room: "r".into(),
        participant: "a".into(),
        name: "A".into(),
        offer: Some(offer),
        epoch: None,
        grants: Grants::default(),
        identity: None,
        viewer: None,
    });
    match resp {
        Response::Joined {
            answer: Some(answer),
            ..
        } => answer,
        other => panic!("join failed: {other:?}"),
    }
}

#[test]
fn a_tcp_only_peer_publishes_receives_and_chats_with_a_udp_peer() {
    let mut sim = Sim::new(41);
    sim.add_tcp_peer("tcp");
    sim.join("tcp", "r", pub_av());
    sim.join("udp", "r", pub_av());
    assert!(
        sim.run_until(secs(5), |s| s.peer("tcp").peer.is_connected()
            && s.peer("udp").peer.is_connected()
            && s.peer("tcp").peer.chat_open()
            && s.peer("udp").peer.chat_open()),
        "both connect (ICE, DTLS, SCTP) — the TCP one over its TCP pair"
    );
    sim.run_for(secs(3));
    assert_full_mesh(&sim, &["tcp", "udp"], 100);
    for id in ["tcp", "udp"] {
        for t in sim.peer(id).peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "{id} saw a gap on {t:?}");
        }
    }
    // Everything to and from the TCP peer went over TCP: it has no UDP candidate, and the UDP
    // peer never got anything over TCP (its flights are counted apart).
    assert!(sim.tcp_in > 300, "datagrams in over TCP: {}", sim.tcp_in);
    assert!(sim.tcp_out > 300, "datagrams out over TCP: {}", sim.tcp_out);
    let tcp_video = sim
        .peer("udp")
        .peer
        .received
        .packets_from("tcp", MediaKind::Video);
    assert!(
        tcp_video > 200,
        "the UDP peer got {tcp_video} video packets"
    );

    assert!(sim.peer_mut("tcp").peer.send_chat(None, "over tcp"));
    assert!(sim.peer_mut("udp").peer.send_chat(Some("tcp"), "over udp"));
    sim.run_for(secs(1));
    let to_udp = sim.chat_of("udp");
    let to_tcp = sim.chat_of("tcp");
    assert!(to_udp.iter().any(|m| m["text"] == "over tcp"), "{to_udp:?}");
    assert!(to_tcp.iter().any(|m| m["text"] == "over udp"), "{to_tcp:?}");
}

#[test]
fn udp_loss_is_repaired_while_a_tcp_peer_shares_the_room() {
    let mut sim = Sim::new(42);
    sim.add_tcp_peer("pub");
    sim.join("pub", "r", pub_av());
    sim.join("sub-udp", "r", None);
    sim.add_tcp_peer("sub-tcp");
    sim.join("sub-tcp", "r", None);
    sim.run_for(secs(2));
    sim.peer_mut("sub-udp").loss_down_permille = 50;
    // Loss configured on the TCP subscriber's link never drops (TCP retransmits underneath).
    sim.peer_mut("sub-tcp").loss_down_permille = 50;
    sim.run_for(secs(10));
    sim.peer_mut("sub-udp").loss_down_permille = 0;
    sim.peer_mut("sub-tcp").loss_down_permille = 0;
    sim.run_for(secs(2));
    assert!(sim.peer("sub-udp").dropped_down > 30);
    assert_eq!(sim.peer("sub-tcp").dropped_down, 0);
    for id in ["sub-udp", "sub-tcp"] {
        let rx = &sim.peer(id).peer.received;
        let video = rx
            .tracks
            .values()
            .find(|t| t.kind == Some(MediaKind::Video))
            .expect("video");
        assert!(video.packets > 900, "{id}: {video:?}");
        // NACK/RTX repaired every UDP loss; the TCP subscriber never had a gap.
        assert_eq!(video.lost, 0, "{id}: unrepaired loss {video:?}");
    }
    assert!(sim.core.counters().nacks_received > 0);
}

#[test]
fn a_udp_datagram_from_a_tcp_peers_address_is_not_that_peer() {
    let mut sim = Sim::new(43);
    sim.add_tcp_peer("tcp");
    sim.join("tcp", "r", pub_av());
    sim.join("udp", "r", None);
    assert!(sim.run_until(secs(5), |s| s.peer("tcp").peer.is_connected()));
    let addr = sim.peer("tcp").peer.local_addr();
    let before = sim.core.counters().dropped(DropReason::UnknownSource);
    // RTP and DTLS from the same ip:port, but over UDP: a different remote, never proven.
    sim.inject_on(
        Transport::Udp,
        addr,
        &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    sim.inject_on(Transport::Udp, addr, &[22, 254, 253, 0, 0]);
    assert_eq!(
        sim.core.counters().dropped(DropReason::UnknownSource),
        before + 2
    );
    // Garbage over TCP from the bound address is dropped without harming the session.
    sim.inject_on(Transport::Tcp, addr, &[0x80, 96, 0, 1]);
    sim.inject_on(Transport::Tcp, addr, &[99; 40]);
    sim.run_for(secs(2));
    assert!(sim.peer("tcp").peer.is_connected());
    assert!(
        sim.peer("udp")
            .peer
            .received
            .packets_from("tcp", MediaKind::Video)
            > 50
    );
}

#[test]
fn every_media_section_carries_the_candidates() {
    let mut sim = Sim::new(44);
    let answer = answer_to_offer(&mut sim, true);
    let sections = candidates_per_section(&answer);
    assert_eq!(sections.len(), 3, "audio, video, data: {answer}");
    for (i, cs) in sections.iter().enumerate() {
        assert!(
            cs.iter()
                .any(|c| c.contains(" udp ") && c.contains(" typ host")),
            "section {i} lacks the UDP candidate: {cs:?}"
        );
        assert!(
            cs.iter()
                .any(|c| c.contains(" tcp ") && c.contains("tcptype passive")),
            "section {i} lacks the passive TCP candidate: {cs:?}"
        );
    }
    // UDP is preferred: its priority is higher than the TCP candidate's.
    let prio = |proto: &str| -> u64 {
        sections[0]
            .iter()
            .find(|c| c.contains(&format!(" {proto} ")))
            .and_then(|c| c.split_whitespace().nth(3))
            .and_then(|p| p.parse().ok())
            .expect("priority")
    };
    assert!(
        prio("udp") > prio("tcp"),
        "udp {} tcp {}",
        prio("udp"),
        prio("tcp")
    );

    // A server offer (after another participant publishes) carries them in every section too.
    sim.peer_mut("a")
        .peer
        .handle_answer(&answer)
        .expect("answer applies");
    sim.join("b", "r", pub_av());
    sim.run_for(secs(2));
    let offer = sim
        .events
        .iter()
        .find_map(|e| match e {
            Event::Offer { participant, sdp } if participant == "a" => Some(sdp.clone()),
            _ => None,
        })
        .expect("a server offer to a");
    let sections = candidates_per_section(&offer);
    assert!(sections.len() >= 5, "{offer}");
    for (i, cs) in sections.iter().enumerate() {
        assert!(cs.len() >= 2, "offer section {i}: {cs:?}");
    }
}

#[test]
fn without_ice_tcp_no_tcp_candidate_is_offered() {
    let mut sim = Sim::with_config(45, |c| c.tcp_addr = None);
    let answer = answer_to_offer(&mut sim, false);
    assert!(!answer.contains(" tcp "), "{answer}");
    assert!(answer.contains(" udp "), "{answer}");
}

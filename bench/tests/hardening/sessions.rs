//! Who receives what: a dropped WebSocket must leave no route behind, a forged resume token takes
//! nothing from its victim, and a `--no-subscribe` token receives no media.

use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::harness::{Node, mint_token};
use serde_json::{Value, json};
use str0m::media::MediaKind;

use super::{T, connect, drain, join, raw_join, send, video_from, wait_type, wait_websockets};

/// Defect 2: a dropped WebSocket left its participant routed to its connection slot; the next
/// client in that slot got the old participant's events, across rooms, and was closed when the
/// old participant timed out.
#[test]
fn a_dropped_websocket_leaves_no_stale_route() {
    let node = Node::start(1, &["--ice-timeout-secs", "2"]).expect("node");
    let url = node.ws_url(0);
    let (old, _) = raw_join(&url, "r1", "gone");
    drop(old); // a closed tab: no leave; its participant (no media) times out after 2 s
    // Signaling noticed and freed the connection slot.
    wait_websockets(&node, 0);
    // The next client takes the freed connection slot and joins another room (with media, so it
    // stays alive).
    let epoch = Instant::now();
    let mut innocent = vec![join(&node, "r2", "innocent", epoch)];
    // Someone joins the dropped participant's room; then that participant times out.
    let (mut newcomer, nj) = raw_join(&url, "r1", "newcomer");
    let gone_id = nj["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "gone"))
        .map(|p| p["id"].clone())
        .expect("the dropped participant is still in its room");
    // The innocent client keeps running through the dropped participant's timeout (2 s after
    // its drop): everything it receives meanwhile is checked below.
    client::run(&mut innocent, Duration::from_secs(4), |_| false).expect("run");
    // The dropped participant did time out meanwhile (the half of the defect that closed the
    // innocent client).
    let (left, other) = wait_type(&mut newcomer, "participant_left", Duration::from_secs(3));
    assert_eq!(
        left.map(|l| l["participant_id"].clone()),
        Some(gone_id),
        "{other:?}"
    );
    let c = &innocent[0];
    let foreign: Vec<&Value> = c
        .messages
        .iter()
        .filter(|m| m["type"] != "offer" && m["type"] != "answer")
        .collect();
    assert!(
        foreign.is_empty(),
        "the innocent client received another room's traffic: {foreign:?}"
    );
    assert!(c.ws_open(), "the innocent client was not closed");
}

fn decode_token(t: &str) -> Value {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .expect("base64");
    serde_json::from_slice(&raw).expect("json")
}

fn encode_token(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Defect 4: `join {resume}` with a forged token (victim's id, wrong key) got `resume_failed` but
/// had already taken over the victim's events.
#[test]
fn a_forged_resume_cannot_take_a_victims_events() {
    let node = Node::start(1, &[]).expect("node");
    let url = node.ws_url(0);
    let (mut victim, vj) = raw_join(&url, "room", "victim");
    let victim_id = vj["participant"]["id"].as_str().expect("id").to_string();
    // The attacker is in the room (sees the victim's id) and knows the node id from its own token.
    let (_att, aj) = raw_join(&url, "room", "attacker");
    let _ = drain(&mut victim, Duration::from_millis(300));
    let mut forged = decode_token(aj["resume"].as_str().expect("token"));
    forged["p"] = json!(victim_id);
    forged["k"] = json!("00000000000000000000000000000000");
    let mut hijack = connect(&url);
    send(
        &mut hijack,
        json!({"type":"join","resume":encode_token(&forged)}),
    );
    let (e, _) = wait_type(&mut hijack, "error", T);
    assert_eq!(e.map(|e| e["code"].clone()), Some(json!("resume_failed")));
    // The victim still hears of newcomers; the attacker hears nothing of the room.
    let (_n1, _) = raw_join(&url, "room", "newcomer");
    let (pj, other) = wait_type(&mut victim, "participant_joined", Duration::from_secs(3));
    assert!(pj.is_some(), "victim lost its events: {other:?}");
    // Once the attacker's connection joins some room, it still gets nothing of the victim's.
    send(
        &mut hijack,
        json!({"type":"join","room":"elsewhere","name":"x"}),
    );
    let (joined, leaked) = wait_type(&mut hijack, "joined", T);
    assert!(
        joined.is_some(),
        "the attacker's own join failed: {leaked:?}"
    );
    assert!(
        leaked.is_empty(),
        "the attacker heard of the victim's room: {leaked:?}"
    );
    let (_n2, _) = raw_join(&url, "room", "second");
    let got = drain(&mut hijack, Duration::from_secs(1));
    assert!(got.is_empty(), "attacker received: {got:?}");
    let (pj, _) = wait_type(&mut victim, "participant_joined", Duration::from_secs(3));
    assert!(pj.is_some());
}

/// Defect 5: a `--no-subscribe` token still received and decoded every track.
#[test]
fn a_no_subscribe_token_receives_no_media() {
    const SECRET: &str = "hardening-secret-0123456789";
    let node = Node::start_with(1, &[], &["--jwt-secret", SECRET]).expect("node");
    let mint = |identity: &str, extra: &[&str]| -> String {
        let mut args = vec!["--secret", SECRET, "--room", "g", "--identity", identity];
        args.extend(extra);
        mint_token(&args).expect("mint")
    };
    let epoch = Instant::now();
    let full = mint("pub", &[]);
    let viewer = mint("view", &["--no-subscribe"]);
    let url = node.ws_url(0);
    let media = Some(Media::default());
    let mut cs = vec![
        Client::join_with_token(&url, "g", "pub", Some(&full), media, epoch, T).expect("pub"),
        Client::join_with_token(&url, "g", "view", Some(&viewer), media, epoch, T).expect("view"),
    ];
    // The viewer may publish (the publisher receives it) but receives nothing, also during one
    // more second of media.
    let ok = client::run(&mut cs, T, |cs| video_from(&cs[0], &cs[1]) > 30).expect("run");
    assert!(ok, "{}", node.logs());
    client::run(&mut cs, Duration::from_secs(1), |_| false).expect("run");
    assert_eq!(cs[1].peer.received.packets(MediaKind::Video), 0);
    assert_eq!(cs[1].peer.received.packets(MediaKind::Audio), 0);
}

//! Chat over the data channel: broadcast and whisper, bad input, mute state, per-sender rate limits.

use super::*;

#[test]
fn chat_broadcast_and_whisper() {
    let mut sim = Sim::new(5);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    assert!(sim.peer_mut("a").peer.send_chat(None, "hello all"));
    assert!(sim.peer_mut("a").peer.send_chat(Some("b"), "psst b"));
    sim.run_for(secs(1));

    let b = sim.chat_of("b");
    let c = sim.chat_of("c");
    let a = sim.chat_of("a");
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0]["text"], "hello all");
    assert_eq!(b[0]["from"], "a");
    assert_eq!(b[0]["name"], "name-a");
    assert!(b[0]["to"].is_null());
    assert!(
        b[0]["ts"]
            .as_u64()
            .is_some_and(|ts| ts >= 1_700_000_000_000)
    );
    assert_eq!(b[1]["text"], "psst b");
    assert_eq!(b[1]["to"], "b");
    // C sees only the broadcast; the whisper never reaches its channel.
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["text"], "hello all");
    // A gets no copy of its broadcast, but the whisper echoed back as confirmation.
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["text"], "psst b");
    assert_eq!(a[0]["to"], "b");
    assert_eq!(sim.core.counters().chat_messages, 2);
}

#[test]
fn chat_bad_input_gets_errors_on_the_channel_and_nothing_is_delivered() {
    let mut sim = Sim::new(6);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.join("x", "elsewhere", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()
        && s.peer("b").peer.chat_open()));
    let big = "y".repeat(4097);
    let at_limit = "z".repeat(4096);
    assert!(sim.peer_mut("a").peer.send_chat(Some("nobody"), "hi"));
    assert!(sim.peer_mut("a").peer.send_chat(Some("x"), "other room"));
    assert!(sim.peer_mut("a").peer.send_chat(None, &big));
    assert!(sim.peer_mut("a").peer.send_chat_raw(b"{not json"));
    assert!(sim.peer_mut("a").peer.send_chat_raw(br#"{"type":"dance"}"#));
    assert!(sim.peer_mut("a").peer.send_chat(None, &at_limit));
    sim.run_for(secs(1));
    let codes: Vec<String> = sim
        .chat_of("a")
        .iter()
        .map(|m| m["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        codes,
        [
            "unknown_participant",
            "unknown_participant",
            "too_large",
            "bad_request",
            "bad_request"
        ]
    );
    let b = sim.chat_of("b");
    assert_eq!(b.len(), 1, "only the valid message is delivered");
    assert_eq!(
        b[0]["text"].as_str().map(str::len),
        Some(4096),
        "not truncated"
    );
    assert!(sim.chat_of("x").is_empty());
    assert_eq!(sim.core.counters().dropped(DropReason::ChatInvalid), 5);
}

#[test]
fn mute_state_is_relayed_to_the_room_and_given_to_late_joiners() {
    let mut sim = Sim::new(18);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()
        && s.peer("b").peer.chat_open()));
    assert!(
        sim.peer_mut("a")
            .peer
            .send_chat_raw(br#"{"type":"state","audio_muted":true,"video_muted":false}"#)
    );
    sim.run_for(secs(1));
    let b = sim.chat_of("b");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (
            b[0]["type"].as_str(),
            b[0]["from"].as_str(),
            b[0]["audio_muted"].as_bool()
        ),
        (Some("state"), Some("a"), Some(true))
    );
    assert!(sim.chat_of("a").is_empty(), "no echo of one's own state");
    // A late joiner learns a's state as soon as its channel opens.
    sim.join("c", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| !s.chat_of("c").is_empty()));
    let c = sim.chat_of("c");
    assert_eq!(
        (
            c[0]["from"].as_str(),
            c[0]["audio_muted"].as_bool(),
            c[0]["video_muted"].as_bool()
        ),
        (Some("a"), Some(true), Some(false))
    );
    // Malformed state is refused like any bad message.
    assert!(
        sim.peer_mut("a")
            .peer
            .send_chat_raw(br#"{"type":"state","audio_muted":"yes"}"#)
    );
    sim.run_for(secs(1));
    assert_eq!(
        sim.chat_of("a")
            .last()
            .and_then(|m| m["code"].as_str().map(str::to_string))
            .as_deref(),
        Some("bad_request")
    );
}

/// Defect 9 (hardening): one participant could flood the room's chat (20 k messages in 6 s).
#[test]
fn chat_floods_are_rate_limited_per_sender() {
    let mut sim = Sim::new(31);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    for i in 0..100 {
        assert!(sim.peer_mut("a").peer.send_chat(None, &format!("spam {i}")));
    }
    assert!(sim.peer_mut("c").peer.send_chat(None, "legit"));
    sim.run_for(secs(1));
    let b = sim.chat_of("b");
    let from_a = b.iter().filter(|m| m["from"] == "a").count();
    // The burst (20) and at most the refill of the second it took (5/s).
    assert!((20..=26).contains(&from_a), "delivered from a: {from_a}");
    assert!(
        b.iter().any(|m| m["text"] == "legit"),
        "others are not crowded out"
    );
    let errors: Vec<_> = sim
        .chat_of("a")
        .into_iter()
        .filter(|m| m["code"] == "rate_limited")
        .collect();
    assert_eq!(errors.len(), 1, "told once per run of refusals: {errors:?}");
    assert!(sim.core.counters().dropped(DropReason::ChatRateLimited) >= 70);
    // After slowing down, messages go through again.
    sim.run_for(secs(3));
    assert!(sim.peer_mut("a").peer.send_chat(None, "calm now"));
    sim.run_for(secs(1));
    assert!(sim.chat_of("b").iter().any(|m| m["text"] == "calm now"));
}

/// A late joiner gets the room's earlier public messages once, in order, marked `history`, then
/// live messages; never anyone's whispers. Sequence numbers are per room and increase by one per
/// relayed message (whispers included). The history keeps only the last `chat_history`.
#[test]
fn a_late_joiner_gets_the_rooms_public_history_once_and_no_whispers() {
    let mut sim = Sim::with_config(31, |c| c.chat_history = 3);
    for id in ["a", "b"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    for text in ["one", "two", "three", "four"] {
        assert!(sim.peer_mut("a").peer.send_chat(None, text));
        sim.run_for(Duration::from_millis(50));
    }
    assert!(sim.peer_mut("b").peer.send_chat(Some("a"), "secret"));
    sim.run_for(Duration::from_millis(200));
    // Another room's chat never leaks into this one's history.
    sim.join("x", "other", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("x").peer.chat_open()));
    assert!(sim.peer_mut("x").peer.send_chat(None, "elsewhere"));
    sim.run_for(Duration::from_millis(200));

    sim.join("c", "r", pub_av());
    // Sent after c joined, before its channel is open: delivered live after the history.
    assert!(sim.peer_mut("b").peer.send_chat(None, "five"));
    assert!(sim.run_until(secs(5), |s| s.peer("c").peer.chat_open()));
    sim.run_for(secs(1));
    assert!(sim.peer_mut("a").peer.send_chat(None, "six"));
    sim.run_for(secs(1));

    let c: Vec<_> = sim
        .chat_of("c")
        .into_iter()
        .filter(|m| m["type"] == "chat")
        .collect();
    let texts: Vec<&str> = c.iter().filter_map(|m| m["text"].as_str()).collect();
    // The last 3 public messages before the join, then "five" and "six" live.
    assert_eq!(texts, ["two", "three", "four", "five", "six"], "{c:?}");
    let history: Vec<bool> = c.iter().map(|m| m["history"] == true).collect();
    assert_eq!(history, [true, true, true, false, false]);
    let seqs: Vec<u64> = c.iter().filter_map(|m| m["seq"].as_u64()).collect();
    // one..four are 1..4, the whisper 5, "five" 6, "six" 7.
    assert_eq!(seqs, [2, 3, 4, 6, 7]);
    // The members who were there see live messages only, with the same numbers.
    let b: Vec<u64> = sim
        .chat_of("b")
        .iter()
        .filter(|m| m["type"] == "chat")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(b, [1, 2, 3, 4, 5, 7], "b: one..four, its whisper echo, six");
    assert!(sim.chat_of("b").iter().all(|m| m["history"].is_null()));
    let x: Vec<_> = sim.chat_of("x");
    assert!(x.iter().all(|m| m["text"] != "one"), "{x:?}");
}

/// The history is bounded in bytes as well as in count: big messages push the oldest out.
#[test]
fn chat_history_is_bounded_in_bytes() {
    let mut sim = Sim::with_config(32, |c| {
        c.chat_history = 50;
        c.chat_history_bytes = 3_000;
    });
    sim.join("a", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()));
    for i in 0..5 {
        let text = format!("{i}{}", "x".repeat(1000));
        assert!(sim.peer_mut("a").peer.send_chat(None, &text));
        sim.run_for(Duration::from_millis(50));
    }
    sim.join("b", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("b").peer.chat_open()));
    sim.run_for(secs(1));
    let firsts: Vec<char> = sim
        .chat_of("b")
        .iter()
        .filter_map(|m| m["text"].as_str().and_then(|t| t.chars().next()))
        .collect();
    // ~1 070 bytes each against 3 000: the last two.
    assert_eq!(firsts, ['3', '4']);
}

/// A long history does not crowd out live messages waiting for a joiner's channel to open.
#[test]
fn a_long_history_leaves_room_for_live_messages_before_the_channel_opens() {
    let mut sim = Sim::with_config(33, |c| {
        c.chat_history = 100;
        c.chat_rate = 1000.0;
        c.chat_burst = 1000.0;
    });
    sim.join("a", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()));
    for i in 0..100 {
        assert!(sim.peer_mut("a").peer.send_chat(None, &format!("m{i}")));
        if i % 10 == 9 {
            sim.run_for(Duration::from_millis(20));
        }
    }
    sim.run_for(Duration::from_millis(200));
    sim.join("b", "r", pub_av());
    assert!(sim.peer_mut("a").peer.send_chat(None, "live"));
    assert!(sim.run_until(secs(5), |s| s.peer("b").peer.chat_open()));
    sim.run_for(secs(1));
    let texts: Vec<String> = sim
        .chat_of("b")
        .iter()
        .filter_map(|m| m["text"].as_str().map(String::from))
        .collect();
    assert_eq!(texts.len(), 101, "{texts:?}");
    assert_eq!(texts[0], "m0");
    assert_eq!(texts[99], "m99");
    assert_eq!(texts[100], "live");
    assert_eq!(sim.core.counters().dropped(DropReason::ChatBackpressure), 0);
}

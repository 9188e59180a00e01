//! WebSocket and HTTP protocol edges: close codes for protocol errors and invalid UTF-8, `HEAD`
//! without a body, the `Origin` allow-list, and error texts without heap addresses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bench::harness::Node;
use serde_json::json;
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

use super::{T, close_code, send, wait_type};

/// Defect 9: protocol errors and invalid UTF-8 got no close frame; HEAD returned a body; the
/// Origin could not be restricted; parser errors leaked heap addresses.
#[test]
fn close_codes_head_origin_and_clean_errors() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let node =
        Node::start_with(1, &[], &["--allowed-origin", "http://good.example"]).expect("node");
    let url = node.ws_url(0);
    let with_origin = |origin: &str| {
        use tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        tungstenite::connect(req)
    };
    match with_origin("http://evil.example") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("evil origin: {:?}", other.map(|_| ())),
    }
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    // Invalid UTF-8 in a text frame: 1007.
    let bad = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).expect("send");
    assert_eq!(close_code(&mut ws), Some(1007));
    // A reserved opcode: 1002.
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    let bad = Frame::message(vec![1], OpCode::Data(Data::Reserved(3)), true);
    ws.send(Message::Frame(bad)).expect("send");
    assert_eq!(close_code(&mut ws), Some(1002));
    // HEAD: headers only (the WebSocket path too).
    for (path, status) in [("/", "200"), ("/ws", "426")] {
        let mut s = TcpStream::connect(node.signaling[0].0).expect("connect");
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        assert!(
            resp.ends_with("\r\n\r\n"),
            "HEAD {path} has no body: {resp}"
        );
    }
    // Parser errors carry no heap addresses.
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    send(&mut ws, json!({"type":"join","room":"sdp","name":"s"}));
    wait_type(&mut ws, "joined", T).0.expect("joined");
    for sdp in [
        "garbage",
        "v=0\r\nm=audio x\r\n",
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\nzz",
    ] {
        send(&mut ws, json!({"type":"offer","sdp":sdp}));
        let (e, _) = wait_type(&mut ws, "error", T);
        let msg = e.expect("error")["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let leaks = msg
            .split("0x")
            .skip(1)
            .any(|h| h.chars().take_while(char::is_ascii_hexdigit).count() >= 6);
        assert!(!leaks, "heap address in {msg:?}");
    }
}

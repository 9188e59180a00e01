//! The raw signaling WebSocket as tests and tools use it: the socket type ([`Ws`]) and reading
//! the next JSON message ([`read_json`]). The one copy for the synthetic client, the `bench`
//! binary and the integration tests.

use std::net::TcpStream;

use anyhow::bail;
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A client WebSocket to signaling.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// The next text message, parsed as JSON (blocking, up to the socket's read timeout). Pings,
/// pongs and binary frames are skipped; a close frame or a read error is an error.
pub fn read_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.read()? {
            Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Message::Close(f) => bail!("websocket closed: {f:?}"),
            _ => {}
        }
    }
}

//! The signaling server: one mio loop serving HTTP (the page), WebSockets (sessions) and the
//! control connection to the local dataplane.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::{
    Framed, FromDataplane, PROTOCOL_VERSION, ReadStatus, Request, Response, ToDataplane,
};
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::http::{self, HeadError};
use crate::page;
use crate::protocol::{ErrorCode, IceServer, ServerMsg};
use crate::session::{Action, JoinContext, Session};

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Server settings (see `main.rs` for the CLI).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub control_socket: PathBuf,
    pub ice_servers: Vec<IceServer>,
    /// Largest WebSocket message; larger ones close the connection with 1009.
    pub max_message: usize,
    pub max_connections: usize,
    /// An HTTP request head must arrive within this time.
    pub http_timeout: Duration,
    /// How long a control request may stay unanswered before the client gets `unavailable`.
    pub request_timeout: Duration,
}

impl Settings {
    pub fn new(listen: SocketAddr, control_socket: PathBuf) -> Self {
        Self {
            listen,
            control_socket,
            ice_servers: Vec::new(),
            max_message: 1 << 20,
            max_connections: 20_000,
            http_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

enum ConnState {
    /// Reading a request head.
    Http { stream: TcpStream, buf: Vec<u8> },
    /// Writing an HTTP response, then closing.
    Respond {
        stream: TcpStream,
        out: Vec<u8>,
        pos: usize,
    },
    Ws {
        ws: Box<WebSocket<TcpStream>>,
        session: Session,
    },
    /// Transitional placeholder while a state is being replaced.
    Gone,
}

struct Conn {
    state: ConnState,
    since: Instant,
    writable: bool,
    /// When we started closing the WebSocket; the socket is dropped 2 s later at the latest.
    closing: Option<Instant>,
}

/// The control connection to the dataplane.
struct ControlLink {
    path: PathBuf,
    stream: Option<UnixStream>,
    framed: Framed,
    ready: bool,
    /// The last health report and when it arrived.
    last_health: Option<(Instant, control::NodeStats)>,
    retry_at: Instant,
    backoff: Duration,
    writable: bool,
}

struct PendingRequest {
    conn: Option<usize>,
    request: Request,
    sent: Instant,
}

/// The server. See the module docs.
pub struct Server {
    settings: Settings,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    control: ControlLink,
    pending: HashMap<u64, PendingRequest>,
    next_id: u64,
    by_participant: HashMap<String, usize>,
    ctx: JoinContext,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    pub fn bind(settings: Settings, shutdown: Arc<AtomicBool>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(settings.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let ctx = JoinContext {
            ice_servers: settings.ice_servers.clone(),
        };
        let control = ControlLink {
            path: settings.control_socket.clone(),
            stream: None,
            framed: Framed::new(control::DEFAULT_MAX_FRAME),
            ready: false,
            last_health: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            writable: false,
        };
        Ok(Self {
            settings,
            poll,
            listener,
            conns: Slab::with_capacity(1024),
            control,
            pending: HashMap::new(),
            next_id: 1,
            by_participant: HashMap::new(),
            ctx,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Run until the shutdown flag is set.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if self.control.stream.is_none() && now >= self.control.retry_at {
                self.connect_control(now);
            }
            let timeout = if self.control.stream.is_none() {
                self.control
                    .retry_at
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(500))
            } else {
                Duration::from_millis(500)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    CONTROL => {
                        self.control_ready(ev.is_readable() || ev.is_read_closed() || ev.is_error())
                    }
                    Token(t) => self.conn_ready(t - FIRST_CONN),
                }
            }
            self.expire(Instant::now());
            self.flush_control();
        }
        info!("signaling stopping");
        Ok(())
    }

    // -------------------------------------------------------------------------------------------
    // Control connection

    fn connect_control(&mut self, now: Instant) {
        match UnixStream::connect(&self.control.path) {
            Ok(mut stream) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    CONTROL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!(error = %e, "register control stream");
                    return;
                }
                self.control.writable = true;
                self.control.framed = Framed::new(control::DEFAULT_MAX_FRAME);
                let hello = ToDataplane::Hello {
                    version: PROTOCOL_VERSION,
                    client: format!("signaling@{}:{}", self.settings.listen, std::process::id()),
                };
                let _ = self.control.framed.queue(&hello);
                self.control.stream = Some(stream);
                debug!(path = %self.control.path.display(), "control socket connected; handshaking");
            }
            Err(e) => {
                self.control.retry_at = now + self.control.backoff;
                if self.control.backoff >= Duration::from_secs(2) {
                    debug!(error = %e, "dataplane control socket not reachable");
                }
                self.control.backoff = (self.control.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    fn control_ready(&mut self, readable: bool) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        if readable {
            let status = self.control.framed.read_from(stream);
            loop {
                match self.control.framed.next_message::<FromDataplane>() {
                    Ok(Some(msg)) => self.handle_control_message(msg),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "bad frame from dataplane");
                        self.control_lost();
                        return;
                    }
                }
            }
            if !matches!(status, Ok(ReadStatus::Open)) {
                self.control_lost();
                return;
            }
        }
        self.flush_control();
    }

    fn flush_control(&mut self) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        match self.control.framed.flush_to(stream) {
            Ok(done) => {
                if done == self.control.writable {
                    let interest = if done {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    let _ = self.poll.registry().reregister(stream, CONTROL, interest);
                    self.control.writable = !done;
                }
            }
            Err(_) => self.control_lost(),
        }
    }

    fn control_lost(&mut self) {
        if let Some(mut s) = self.control.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if self.control.ready {
            warn!("lost the dataplane control connection; sessions keep their media, reconnecting");
        }
        self.control.ready = false;
        self.control.retry_at = Instant::now() + Duration::from_millis(100);
        self.control.backoff = Duration::from_millis(200);
        // Every outstanding request fails now: the dataplane will not answer it on a new connection.
        let pending: Vec<(u64, PendingRequest)> = self.pending.drain().collect();
        for (_, p) in pending {
            self.fail_request(p, "the media server connection was lost");
        }
    }

    fn handle_control_message(&mut self, msg: FromDataplane) {
        match msg {
            FromDataplane::Welcome {
                node_id, workers, ..
            } => {
                info!(%node_id, workers, "connected to dataplane");
                self.control.ready = true;
                self.control.backoff = Duration::from_millis(100);
                // Re-attach every joined session to this connection.
                let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
                for id in ids {
                    let actions = match self.conns.get_mut(id).map(|c| &mut c.state) {
                        Some(ConnState::Ws { session, .. }) => session.handle_control_restored(),
                        _ => continue,
                    };
                    self.apply(id, actions);
                }
            }
            FromDataplane::Response { id, response } => {
                let Some(p) = self.pending.remove(&id) else {
                    return;
                };
                self.deliver_response(p, response);
            }
            FromDataplane::Health { stats } => {
                self.control.last_health = Some((Instant::now(), stats));
            }
            FromDataplane::Event { event } => {
                let Some(conn) = self.by_participant.get(event.participant()).copied() else {
                    return;
                };
                let actions = match self.conns.get_mut(conn).map(|c| &mut c.state) {
                    Some(ConnState::Ws { session, .. }) => session.handle_event(event),
                    _ => return,
                };
                self.apply(conn, actions);
            }
        }
    }

    fn deliver_response(&mut self, p: PendingRequest, response: Response) {
        let Some(conn) = p.conn.filter(|c| self.conns.contains(*c)) else {
            // The client went away while its join was in flight: undo it.
            if let (Request::Join { participant, .. }, Response::Joined { .. }) =
                (&p.request, &response)
            {
                self.send_request(
                    None,
                    Request::Leave {
                        participant: participant.clone(),
                    },
                );
            }
            return;
        };
        let actions = match self.conns.get_mut(conn).map(|c| &mut c.state) {
            Some(ConnState::Ws { session, .. }) => {
                session.handle_response(&p.request, response, &self.ctx)
            }
            _ => return,
        };
        self.apply(conn, actions);
    }

    fn fail_request(&mut self, p: PendingRequest, why: &str) {
        let resp = Response::error(control::ErrorCode::Unavailable, why);
        self.deliver_response(p, resp);
    }

    fn send_request(&mut self, conn: Option<usize>, request: Request) {
        let p = PendingRequest {
            conn,
            request,
            sent: Instant::now(),
        };
        if !self.control.ready {
            self.fail_request(p, "the media server is not reachable; retry later");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let msg = ToDataplane::Request {
            id,
            request: p.request.clone(),
        };
        if self.control.framed.queue(&msg).is_err() {
            self.fail_request(p, "the media server is not keeping up; retry later");
            return;
        }
        self.pending.insert(id, p);
    }

    // -------------------------------------------------------------------------------------------
    // Client connections

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.settings.max_connections {
                        debug!(%peer, "connection limit reached; refusing");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(Conn {
                        state: ConnState::Http {
                            stream,
                            buf: Vec::with_capacity(1024),
                        },
                        since: Instant::now(),
                        writable: false,
                        closing: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept");
                    return;
                }
            }
        }
    }

    fn conn_ready(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match &mut conn.state {
            ConnState::Http { .. } => self.read_http(id),
            ConnState::Respond { .. } => self.write_response(id),
            ConnState::Ws { .. } => self.ws_ready(id),
            ConnState::Gone => self.remove(id),
        }
    }

    fn read_http(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, buf } = &mut conn.state else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return self.remove(id),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let head = match http::parse_head(buf) {
            Ok(None) => return,
            Ok(Some(h)) => h,
            Err(HeadError::TooLarge) => {
                return self.respond(
                    id,
                    http::response(
                        431,
                        "Request Header Fields Too Large",
                        "text/plain",
                        b"request head too large\n",
                    ),
                );
            }
            Err(HeadError::Malformed(m)) => {
                return self.respond(
                    id,
                    http::response(
                        400,
                        "Bad Request",
                        "text/plain",
                        format!("{m}\n").as_bytes(),
                    ),
                );
            }
        };
        if head.path == "/ws" {
            if !head.is_websocket_upgrade() {
                return self.respond(
                    id,
                    http::response(
                        426,
                        "Upgrade Required",
                        "text/plain",
                        b"WebSocket upgrade required\n",
                    ),
                );
            }
            match http::websocket_accept(&head) {
                Ok(resp) => self.upgrade(id, resp),
                Err(why) => self.respond(
                    id,
                    http::response(
                        400,
                        "Bad Request",
                        "text/plain",
                        format!("{why}\n").as_bytes(),
                    ),
                ),
            }
            return;
        }
        if head.method != "GET" && head.method != "HEAD" {
            return self.respond(
                id,
                http::response(
                    405,
                    "Method Not Allowed",
                    "text/plain",
                    b"method not allowed\n",
                ),
            );
        }
        let resp = match head.path.as_str() {
            "/healthz" if self.control.ready => http::response(200, "OK", "text/plain", b"ok\n"),
            "/healthz" => http::response(
                503,
                "Service Unavailable",
                "text/plain",
                b"dataplane unavailable\n",
            ),
            path => match page::asset(path) {
                Some((ctype, body)) => http::response(200, "OK", ctype, body),
                None => http::response(404, "Not Found", "text/plain", b"not found\n"),
            },
        };
        self.respond(id, resp);
    }

    /// Switch a connection to writing `out` and closing.
    fn respond(&mut self, id: usize, out: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, .. } = std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        conn.state = ConnState::Respond {
            stream,
            out,
            pos: 0,
        };
        self.write_response(id);
    }

    fn write_response(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Respond { stream, out, pos } = &mut conn.state else {
            return;
        };
        while *pos < out.len() {
            match stream.write(&out[*pos..]) {
                Ok(0) => return self.remove(id),
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.writable {
                        conn.writable = true;
                        let _ = self.poll.registry().reregister(
                            stream,
                            Token(id + FIRST_CONN),
                            Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.remove(id);
    }

    fn upgrade(&mut self, id: usize, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { mut stream, .. } =
            std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        // The 101 response is ~130 bytes into a fresh socket buffer: it does not block in
        // practice; if it does, the connection is dropped rather than stalling the loop.
        let mut written = 0;
        for _ in 0..100 {
            match stream.write(&response[written..]) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
            if written == response.len() {
                break;
            }
        }
        if written < response.len() {
            return self.remove(id);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.settings.max_message))
            .max_frame_size(Some(self.settings.max_message));
        let ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
        conn.state = ConnState::Ws {
            ws: Box::new(ws),
            session: Session::new(),
        };
        debug!(conn = id, "websocket open");
    }

    fn ws_ready(&mut self, id: usize) {
        // Read every complete message; each may produce actions that write to this socket.
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            let ConnState::Ws { ws, session } = &mut conn.state else {
                return;
            };
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let actions = session.handle_text(text.as_str(), new_participant_id);
                    self.apply(id, actions);
                }
                Ok(Message::Binary(_)) => {
                    let msg = ServerMsg::error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                    );
                    self.apply(id, vec![Action::Send(msg)]);
                }
                Ok(Message::Close(_)) => {
                    conn.closing.get_or_insert_with(Instant::now);
                }
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Capacity(e)) => {
                    debug!(conn = id, error = %e, "message too large; closing with 1009");
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too large".into(),
                    }));
                    let _ = ws.flush();
                    return self.disconnect(id);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.disconnect(id);
                }
                Err(e) => {
                    debug!(conn = id, error = %e, "websocket error");
                    return self.disconnect(id);
                }
            }
        }
        self.flush_ws(id);
    }

    /// Perform a session's actions.
    fn apply(&mut self, id: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(msg) => {
                    if let Some(Conn {
                        state: ConnState::Ws { ws, .. },
                        ..
                    }) = self.conns.get_mut(id)
                    {
                        match ws.write(Message::text(msg.to_json())) {
                            Ok(()) => {}
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                debug!(conn = id, error = %e, "websocket write failed");
                                self.disconnect(id);
                                return;
                            }
                        }
                    }
                }
                Action::Request(request) => {
                    if let Request::Join { participant, .. } = &request {
                        self.by_participant.insert(participant.clone(), id);
                    }
                    self.send_request(Some(id), request);
                }
                Action::Close => {
                    if let Some(Conn {
                        state: ConnState::Ws { ws, .. },
                        closing,
                        ..
                    }) = self.conns.get_mut(id)
                    {
                        let _ = ws.close(None);
                        closing.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
        self.flush_ws(id);
    }

    fn flush_ws(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Ws { ws, .. } = &mut conn.state else {
            return;
        };
        let blocked = match ws.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(tungstenite::Error::ConnectionClosed) => return self.disconnect(id),
            Err(_) => return self.disconnect(id),
        };
        if blocked != conn.writable {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(ws.get_mut(), Token(id + FIRST_CONN), interest);
            conn.writable = blocked;
        }
    }

    /// The client's WebSocket is gone: the session leaves and the connection is removed.
    fn disconnect(&mut self, id: usize) {
        let actions = match self.conns.get_mut(id).map(|c| &mut c.state) {
            Some(ConnState::Ws { session, .. }) => session.handle_disconnect(),
            _ => vec![],
        };
        self.remove(id);
        for action in actions {
            if let Action::Request(r) = action {
                self.send_request(None, r);
            }
        }
    }

    fn remove(&mut self, id: usize) {
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        let participant = match &mut conn.state {
            ConnState::Http { stream, .. } | ConnState::Respond { stream, .. } => {
                let _ = self.poll.registry().deregister(stream);
                None
            }
            ConnState::Ws { ws, session } => {
                let _ = self.poll.registry().deregister(ws.get_mut());
                session.participant().map(str::to_string)
            }
            ConnState::Gone => None,
        };
        if let Some(p) = participant
            && self.by_participant.get(&p) == Some(&id)
        {
            self.by_participant.remove(&p);
        }
        for p in self.pending.values_mut() {
            if p.conn == Some(id) {
                p.conn = None;
            }
        }
    }

    /// Time out slow HTTP clients and unanswered control requests.
    fn expire(&mut self, now: Instant) {
        let slow: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Http { .. } | ConnState::Respond { .. })
                    && now.duration_since(c.since) > self.settings.http_timeout
            })
            .map(|(i, _)| i)
            .collect();
        for id in slow {
            self.remove(id);
        }
        let closed: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.closing
                    .is_some_and(|t| now.duration_since(t) > Duration::from_secs(2))
            })
            .map(|(i, _)| i)
            .collect();
        for id in closed {
            self.disconnect(id);
        }
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) > self.settings.request_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                warn!(request = ?std::mem::discriminant(&p.request), "dataplane did not answer in time");
                self.fail_request(p, "the media server did not answer in time");
            }
        }
    }
}

/// A fresh random participant id.
fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}

//! The control thread's peers: local signaling processes on the Unix socket (peer credentials
//! checked, `hello` within [`HELLO_TIMEOUT`], at most [`MAX_LOCAL_PEERS`]) and remote signaling
//! instances over Redis. Sending checks every message against the frame limit: an oversized
//! response becomes an error response, an oversized event is dropped; the link stays up.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Instant;

use control::{
    CodecError, ErrorCode, Framed, FromDataplane, PROTOCOL_VERSION, ReadStatus, Response,
    ToDataplane,
};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use tracing::{debug, info, warn};

use super::{
    ControlServer, FIRST_CONN, HELLO_TIMEOUT, MAX_LOCAL_PEERS, PeerId, REMOTE_PEER_TIMEOUT,
};
use crate::io::cluster::ClusterCmd;

pub(super) enum Peer {
    /// A signaling process on this host, over the Unix socket.
    Local {
        stream: UnixStream,
        framed: Framed,
        /// Name from `hello`; `None` until the handshake is done.
        client: Option<String>,
        /// The signaling instance's id from `hello`.
        signaling_id: Option<String>,
        writable: bool,
        accepted: Instant,
    },
    /// A signaling instance elsewhere, over Redis pub/sub.
    Remote {
        signaling: String,
        last_seen: Instant,
    },
}

impl Peer {
    /// The handshake is done (remote peers need none).
    pub(super) fn ready(&self) -> bool {
        match self {
            Peer::Local { client, .. } => client.is_some(),
            Peer::Remote { .. } => true,
        }
    }

    /// The signaling instance behind this peer, if known.
    fn instance(&self) -> Option<&str> {
        match self {
            Peer::Local { signaling_id, .. } => signaling_id.as_deref(),
            Peer::Remote { signaling, .. } => Some(signaling),
        }
    }
}

/// Bind the control socket safely before anything else starts: a private directory (created
/// 0700 if missing, refused if another user owns it or can write it), a stale socket from a crash
/// replaced, a live one refused (whoever holds it), the socket's mode set explicitly.
pub fn bind(path: &Path, mode: u32, peer_uids: &[u32]) -> anyhow::Result<UnixListener> {
    control::local::prepare_dir(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        // A live dataplane answers on it; a stale file from a crash does not.
        if let Ok(s) = std::os::unix::net::UnixStream::connect(path) {
            match control::local::peer_uid(&s) {
                Ok(uid) if control::local::uid_allowed(uid, peer_uids) => anyhow::bail!(
                    "control socket {} is in use by another dataplane",
                    path.display()
                ),
                Ok(uid) => anyhow::bail!(
                    "control socket {} is held by a process of uid {uid}; refusing to start",
                    path.display()
                ),
                Err(e) => anyhow::bail!("control socket {}: {e}", path.display()),
            }
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    control::local::set_mode(path, mode)?;
    Ok(listener)
}

impl ControlServer {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if let Err(e) = control::local::check_peer(&stream, &self.settings.peer_uids) {
                        warn!(error = %e, "refused a control connection");
                        continue;
                    }
                    let locals = self
                        .peers
                        .iter()
                        .filter(|(_, p)| matches!(p, Peer::Local { .. }))
                        .count();
                    if locals >= MAX_LOCAL_PEERS {
                        warn!(
                            max = MAX_LOCAL_PEERS,
                            "too many control connections; refusing"
                        );
                        continue;
                    }
                    let entry = self.peers.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        warn!(error = %e, "register control connection");
                        continue;
                    }
                    debug!(peer = entry.key(), "control connection accepted");
                    entry.insert(Peer::Local {
                        stream,
                        framed: Framed::new(self.settings.max_frame),
                        client: None,
                        signaling_id: None,
                        writable: false,
                        accepted: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept on control socket");
                    return;
                }
            }
        }
    }

    pub(super) fn read_local(&mut self, id: PeerId) {
        let Some(Peer::Local { stream, framed, .. }) = self.peers.get_mut(id) else {
            return;
        };
        let status = framed.read_from(stream);
        loop {
            let Some(Peer::Local { framed, .. }) = self.peers.get_mut(id) else {
                return;
            };
            match framed.next_message::<ToDataplane>() {
                Ok(Some(msg)) => self.handle_message(id, msg),
                Ok(None) => break,
                Err(e) => {
                    warn!(peer = id, error = %e, "bad control frame; closing connection");
                    self.close_peer(id);
                    return;
                }
            }
        }
        if !matches!(status, Ok(ReadStatus::Open)) {
            self.close_peer(id);
        }
    }

    pub(super) fn close_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.try_remove(id) else {
            return;
        };
        let who = match peer {
            Peer::Local {
                mut stream,
                mut framed,
                client,
                ..
            } => {
                let _ = framed.flush_to(&mut stream);
                let _ = self.poll.registry().deregister(&mut stream);
                client.unwrap_or_else(|| "local".into())
            }
            Peer::Remote { signaling, .. } => {
                self.remote_ids.remove(&signaling);
                signaling
            }
        };
        // Its id will be reused: answers still due to it go nowhere.
        self.pending.peer_closed(id);
        let orphaned = self.routes.peer_gone(id, Instant::now());
        info!(peer = id, %who, orphaned, "signaling peer gone; its sessions keep running for the resume window");
    }

    /// Close local peers that did not say hello in time and remote ones that went silent.
    pub(super) fn expire_peers(&mut self, now: Instant) {
        let subscribed = self.subscribed;
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| match p {
                Peer::Local {
                    client: None,
                    accepted,
                    ..
                } => now.saturating_duration_since(*accepted) > HELLO_TIMEOUT,
                Peer::Local { .. } => false,
                Peer::Remote { last_seen, .. } => {
                    subscribed && now.saturating_duration_since(*last_seen) > REMOTE_PEER_TIMEOUT
                }
            })
            .map(|(i, _)| i)
            .collect();
        for id in stale {
            debug!(peer = id, "control peer timed out");
            self.close_peer(id);
        }
    }

    /// The peer id of remote signaling instance `from` (created on first contact).
    pub(super) fn remote_peer(&mut self, from: &str) -> PeerId {
        let peer = match self.remote_ids.get(from) {
            Some(p) => *p,
            None => {
                let p = self.peers.insert(Peer::Remote {
                    signaling: from.to_string(),
                    last_seen: Instant::now(),
                });
                self.remote_ids.insert(from.to_string(), p);
                p
            }
        };
        self.remote_seen(from);
        peer
    }

    /// A sign of life from remote signaling instance `id`.
    pub(super) fn remote_seen(&mut self, id: &str) {
        if let Some(p) = self.remote_ids.get(id)
            && let Some(Peer::Remote { last_seen, .. }) = self.peers.get_mut(*p)
        {
            *last_seen = Instant::now();
        }
    }

    /// Silence while the subscription was down proves nothing: restart every remote clock.
    pub(super) fn refresh_remote_peers(&mut self) {
        let now = Instant::now();
        for (_, p) in self.peers.iter_mut() {
            if let Peer::Remote { last_seen, .. } = p {
                *last_seen = now;
            }
        }
    }

    /// Send a message to a peer. `false` if it could not be (too large for a frame: dropped;
    /// the peer is stuck: closed).
    pub(super) fn send(&mut self, peer: PeerId, msg: &FromDataplane) -> bool {
        self.send_encoded(peer, control::encode(msg))
    }

    fn send_encoded(&mut self, peer: PeerId, payload: Vec<u8>) -> bool {
        if payload.len() > self.settings.max_frame {
            warn!(
                peer,
                len = payload.len(),
                max = self.settings.max_frame,
                "message too large for the control link; dropped"
            );
            return false;
        }
        match self.peers.get_mut(peer) {
            Some(Peer::Local { framed, .. }) => match framed.queue_encoded(&payload) {
                Ok(()) => true,
                Err(CodecError::MessageTooLarge { .. }) => false,
                Err(e) => {
                    warn!(peer, error = %e, "control connection not reading; closing it");
                    self.close_peer(peer);
                    false
                }
            },
            Some(Peer::Remote { signaling, .. }) => {
                if let Some(c) = &self.cluster {
                    c.send(ClusterCmd::Publish {
                        channel: c.settings.reply_channel(signaling),
                        payload,
                    });
                }
                true
            }
            None => false,
        }
    }

    /// Answer request `id` of `peer`. A response too large for the link is replaced by a
    /// `bad_request` error (the request fails alone). `false` if the original response was not
    /// delivered.
    pub(super) fn respond(&mut self, peer: PeerId, id: u64, response: Response) -> bool {
        let payload = control::encode(&FromDataplane::Response { id, response });
        let len = payload.len();
        if len <= self.settings.max_frame {
            return self.send_encoded(peer, payload);
        }
        warn!(
            peer,
            len,
            max = self.settings.max_frame,
            "response too large for the control link; failing that request"
        );
        let error = Response::error(
            ErrorCode::BadRequest,
            format!(
                "the answer would be {len} bytes, over the control limit of {} bytes; send a smaller offer",
                self.settings.max_frame
            ),
        );
        self.send(
            peer,
            &FromDataplane::Response {
                id,
                response: error,
            },
        );
        false
    }

    pub(super) fn welcome(&self) -> FromDataplane {
        FromDataplane::Welcome {
            version: PROTOCOL_VERSION,
            node_id: self.settings.node_id.clone(),
            workers: self.workers.len() as u32,
            incarnation: self.settings.incarnation.clone(),
        }
    }

    /// Whether two peers are the same signaling instance (over its socket and over Redis).
    pub(super) fn same_instance(&self, a: PeerId, b: PeerId) -> bool {
        let id = |p| self.peers.get(p).and_then(Peer::instance);
        a == b || id(a).is_some_and(|x| Some(x) == id(b))
    }

    pub(super) fn hello(
        &mut self,
        peer: PeerId,
        version: u32,
        client: String,
        signaling_id: Option<String>,
    ) {
        if version != PROTOCOL_VERSION {
            self.respond(
                peer,
                0,
                Response::error(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {version} not supported; this dataplane speaks {PROTOCOL_VERSION}"
                    ),
                ),
            );
            self.flush_locals();
            self.close_peer(peer);
            return;
        }
        info!(peer, %client, "control client connected");
        if let Some(Peer::Local {
            client: c,
            signaling_id: s,
            ..
        }) = self.peers.get_mut(peer)
        {
            *c = Some(client);
            *s = signaling_id;
        }
        let welcome = self.welcome();
        self.send(peer, &welcome);
    }

    pub(super) fn flush_locals(&mut self) {
        let mut dead = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let Peer::Local {
                stream,
                framed,
                writable,
                ..
            } = p
            else {
                continue;
            };
            if framed.pending_out() == 0 {
                continue;
            }
            match framed.flush_to(stream) {
                Ok(done) => {
                    if done == *writable {
                        let interest = if done {
                            Interest::READABLE
                        } else {
                            Interest::READABLE | Interest::WRITABLE
                        };
                        let _ = self.poll.registry().reregister(
                            stream,
                            Token(id + FIRST_CONN),
                            interest,
                        );
                        *writable = !done;
                    }
                }
                Err(_) => dead.push(id),
            }
        }
        for id in dead {
            self.close_peer(id);
        }
    }
}

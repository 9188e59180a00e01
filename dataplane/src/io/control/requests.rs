//! Control requests: the `hello` handshake and every request a peer (local connection or remote
//! signaling instance) makes — join and attach routed to a worker with admission and fencing,
//! per-participant requests routed to the participant's worker, stats, drain, close_room and
//! test faults.

use std::sync::atomic::Ordering;

use control::{ErrorCode, Fault, Request, Response, ToDataplane};
use crossbeam_channel::TrySendError;
use tracing::warn;

use super::ControlServer;
use super::peers::Peer;
use super::pending::{Pending, PendingKind};
use crate::io::routes::{JoinRefused, JoinRoute, PeerId};
use crate::io::translate;
use crate::io::worker::ToWorker;

impl ControlServer {
    pub(super) fn handle_message(&mut self, peer: PeerId, msg: ToDataplane) {
        let hello_done = match self.peers.get(peer) {
            Some(p) => p.ready(),
            None => return,
        };
        match msg {
            ToDataplane::Hello {
                version,
                client,
                signaling_id,
            } => self.hello(peer, version, client, signaling_id),
            ToDataplane::Request { id, .. } if !hello_done => {
                self.respond(
                    peer,
                    id,
                    Response::error(ErrorCode::BadRequest, "hello first"),
                );
                self.flush_locals();
                self.close_peer(peer);
            }
            ToDataplane::Request { id, request } => self.handle_request(peer, id, request),
        }
    }

    pub(super) fn handle_request(&mut self, peer: PeerId, id: u64, request: Request) {
        if self.shutdown.load(Ordering::Relaxed) {
            self.respond(
                peer,
                id,
                Response::error(ErrorCode::Unavailable, "dataplane is shutting down"),
            );
            return;
        }
        let refuse = |code, message: String| Response::error(code, message);
        let (worker, kind, participant) = match &request {
            Request::Stats => {
                let stats = self.node_stats();
                self.respond(peer, id, Response::Stats(stats));
                return;
            }
            Request::Drain => {
                self.drain.store(true, Ordering::SeqCst);
                self.start_drain();
                self.respond(peer, id, Response::Ok);
                return;
            }
            Request::InjectFault { fault } => {
                self.inject_fault(peer, id, *fault);
                return;
            }
            Request::CloseRoom { room } => match self.routes.room_worker(room) {
                Some(w) => (w, PendingKind::Other, String::new()),
                None => {
                    self.respond(
                        peer,
                        id,
                        refuse(ErrorCode::BadRequest, format!("no room {room:?} here")),
                    );
                    return;
                }
            },
            Request::Join {
                room,
                participant,
                epoch,
                ..
            } => {
                let draining = self.draining;
                match self
                    .routes
                    .reserve_join(participant, room, *epoch, peer, draining)
                {
                    Ok(JoinRoute { worker, placed }) => {
                        if let Some(epoch) = placed {
                            self.room_placed(room, epoch);
                        }
                        (worker, PendingKind::Join, participant.clone())
                    }
                    Err(e) => {
                        let (code, message) = match e {
                            JoinRefused::Duplicate => (
                                ErrorCode::DuplicateParticipant,
                                format!("participant {participant:?} already exists"),
                            ),
                            JoinRefused::AtCapacity { max } => (
                                ErrorCode::Unavailable,
                                format!("this media server is full ({max} participants)"),
                            ),
                            JoinRefused::StaleEpoch => (
                                ErrorCode::Unavailable,
                                "stale room placement; look the room up again".into(),
                            ),
                            JoinRefused::Draining => {
                                (ErrorCode::Unavailable, "node is draining".into())
                            }
                            JoinRefused::NoWorker => (
                                ErrorCode::Unavailable,
                                "no media worker is running; retry shortly".into(),
                            ),
                        };
                        self.respond(peer, id, refuse(code, message));
                        return;
                    }
                }
            }
            Request::Answer { participant, .. }
            | Request::Offer { participant, .. }
            | Request::Leave { participant }
            | Request::Attach { participant, .. } => {
                let Some(worker) = self.routes.worker_of(participant) else {
                    self.respond(
                        peer,
                        id,
                        refuse(
                            ErrorCode::UnknownParticipant,
                            format!("no participant {participant:?} on this dataplane"),
                        ),
                    );
                    return;
                };
                // Ownership of an attach moves only once the worker verified the resume key
                // (see `handle_reports`); until then events keep going to the old owner.
                let kind = if matches!(request, Request::Attach { .. }) {
                    PendingKind::Attach
                } else {
                    PendingKind::Other
                };
                (worker, kind, participant.clone())
            }
        };
        let tag = self.pending.next_tag();
        let sent = match self.workers.get(worker as usize) {
            Some(w) if !self.routes.worker_down(worker) => {
                let r = match translate::command(tag, request) {
                    Some(cmd) => w.commands.try_send(ToWorker::Command(cmd)),
                    // Not a worker's request (routed above): nothing to send, fail it below.
                    None => Err(TrySendError::Disconnected(ToWorker::Restart)),
                };
                let _ = w.waker.wake();
                r
            }
            _ => Err(TrySendError::Disconnected(ToWorker::Restart)),
        };
        match sent {
            Ok(()) => {
                self.pending.insert(Pending {
                    peer: Some(peer),
                    id,
                    kind,
                    participant,
                    worker,
                });
            }
            Err(e) => {
                if kind == PendingKind::Join
                    && let Some(g) = self.routes.remove_participant(&participant, worker)
                {
                    self.room_gone(g);
                }
                let why = if matches!(e, TrySendError::Full(_)) {
                    "worker is overloaded; retry later"
                } else {
                    "the worker is restarting; retry shortly"
                };
                self.respond(peer, id, refuse(ErrorCode::Unavailable, why.into()));
            }
        }
    }

    /// Tests only (`--test-faults`): make a worker panic, or drop every local control link.
    pub(super) fn inject_fault(&mut self, peer: PeerId, id: u64, fault: Fault) {
        if !self.settings.test_faults {
            self.respond(
                peer,
                id,
                Response::error(
                    ErrorCode::BadRequest,
                    "fault injection is off (start the dataplane with --test-faults)",
                ),
            );
            return;
        }
        warn!(?fault, "injecting a fault (--test-faults)");
        match fault {
            Fault::WorkerPanic { worker } => match self.workers.get(worker as usize) {
                Some(w) => {
                    let _ = w.commands.try_send(ToWorker::InjectPanic);
                    let _ = w.waker.wake();
                    self.respond(peer, id, Response::Ok);
                }
                None => {
                    self.respond(
                        peer,
                        id,
                        Response::error(ErrorCode::BadRequest, format!("no worker {worker}")),
                    );
                }
            },
            Fault::DropControlLinks => {
                self.respond(peer, id, Response::Ok);
                let locals: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| matches!(p, Peer::Local { .. }))
                    .map(|(i, _)| i)
                    .collect();
                for p in locals {
                    self.close_peer(p);
                }
            }
        }
    }
}

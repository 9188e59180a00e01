//! The control thread and its workers: commands to them (bounded queues, never blocking; a
//! refused removal is retried), their reports (answers routed to the peer that asked, events to
//! the participant's owner), and supervision (a failed worker's participants are told, its rooms
//! released, its pending requests failed, then it restarts).

use control::{ErrorCode, Event, FromDataplane, LeaveReason, Response, WorkerStats};
use crossbeam_channel::TrySendError;
use tracing::{debug, error, info, warn};

use super::ControlServer;
use super::pending::PendingKind;
use crate::io::cluster::ClusterCmd;
use crate::io::translate::{self, WireReport as Report};
use crate::io::worker::{FromWorker, ToWorker};
use sfu_core::{Command, Op};

impl ControlServer {
    /// Tell `worker` to remove `participant`; if its queue is full, retried on the next sweep.
    pub(super) fn remove(&mut self, worker: u32, participant: String, reason: LeaveReason) {
        let op = translate::remove(participant.clone(), reason);
        if !self.command(worker, op) && !self.routes.worker_down(worker) {
            warn!(worker, %participant, "worker queue full; removal retried next sweep");
            self.removes_due.push((worker, participant, reason));
        }
    }

    pub(super) fn command(&self, worker: u32, op: Op) -> bool {
        let Some(w) = self.workers.get(worker as usize) else {
            return false;
        };
        let ok = w
            .commands
            .try_send(ToWorker::Command(Command { tag: 0, op }))
            .is_ok();
        let _ = w.waker.wake();
        ok
    }

    pub(super) fn handle_reports(&mut self) {
        while let Ok((worker, msg)) = self.reports.try_recv() {
            let report = match msg {
                FromWorker::Report(r) => r,
                FromWorker::Failed { reason } => {
                    self.worker_failed(worker, reason);
                    continue;
                }
                FromWorker::Restarted => {
                    info!(worker, "worker running again");
                    self.routes.worker_up(worker);
                    self.failures.remove(&worker);
                    self.metrics.worker_up(worker, true);
                    self.refresh_admin();
                    if let Some(c) = &self.cluster {
                        c.send(ClusterCmd::Node(self.node_info()));
                    }
                    continue;
                }
            };
            match report {
                Report::Response { tag, mut response } => {
                    let Some(p) = self.pending.take(tag) else {
                        continue;
                    };
                    if let Response::Joined { incarnation, .. }
                    | Response::Attached { incarnation, .. } = &mut response
                    {
                        incarnation.clone_from(&self.settings.incarnation);
                    }
                    match (p.kind, &response, p.peer) {
                        (PendingKind::Join, Response::Error { .. }, _) => {
                            if let Some(g) = self.routes.remove_participant(&p.participant, worker)
                            {
                                self.room_gone(g);
                            }
                        }
                        // An attach whose peer closed meanwhile moves nothing: the participant
                        // stays orphaned (and is removed after the resume window).
                        (PendingKind::Attach, Response::Attached { .. }, Some(peer)) => {
                            if let Some(old) = self.routes.attached(&p.participant, peer)
                                && !self.same_instance(old, peer)
                            {
                                // Resumed through another signaling instance: the old one's
                                // session is over. (The same instance reaching us over its socket
                                // and over Redis is one owner, whose router handles it.)
                                self.send(
                                    old,
                                    &FromDataplane::Event {
                                        event: Event::Gone {
                                            participant: p.participant.clone(),
                                            reason: LeaveReason::Replaced,
                                        },
                                    },
                                );
                            }
                        }
                        _ => {}
                    }
                    let joined = matches!(response, Response::Joined { .. });
                    let delivered = p
                        .peer
                        .is_some_and(|peer| self.respond(peer, p.id, response));
                    if !delivered && joined {
                        // Its answer could not be delivered: nobody will ever use the slot.
                        self.remove(worker, p.participant, LeaveReason::Failed);
                    }
                }
                Report::Event(event) => match self.routes.owner(event.participant()) {
                    Some(peer) => {
                        self.send(peer, &FromDataplane::Event { event });
                    }
                    None => debug!(
                        participant = event.participant(),
                        "event for a participant without signaling"
                    ),
                },
                Report::ParticipantClosed { participant } => {
                    if let Some(g) = self.routes.remove_participant(&participant, worker) {
                        self.room_gone(g);
                    }
                }
                Report::RoomClosed { room } => {
                    if let Some(g) = self.routes.room_closed(&room, worker) {
                        self.room_gone(g);
                    }
                }
                Report::Stats(mut s) => {
                    self.metrics.observe_worker(&s);
                    s.join_seconds.clear();
                    if let Some(slot) = self.stats.get_mut(worker as usize) {
                        *slot = *s;
                    }
                }
            }
        }
    }

    /// A worker panicked: its participants are told (`room_closed {reason:"worker_failed"}`, so
    /// clients rejoin), its rooms released, its pending requests failed; then it restarts.
    pub(super) fn worker_failed(&mut self, worker: u32, reason: String) {
        error!(worker, %reason, "worker failed");
        self.metrics.worker_down(worker);
        self.failures.insert(worker, reason);
        let (lost, rooms) = self.routes.worker_failed(worker);
        info!(
            worker,
            participants = lost.len(),
            rooms = rooms.len(),
            "closing the failed worker's rooms"
        );
        for (participant, owner) in lost {
            if let Some(peer) = owner {
                self.send(
                    peer,
                    &FromDataplane::Event {
                        event: Event::Gone {
                            participant,
                            reason: LeaveReason::WorkerFailed,
                        },
                    },
                );
            }
        }
        for g in rooms {
            self.room_gone(g);
        }
        for p in self.pending.take_worker(worker) {
            if let Some(peer) = p.peer {
                self.respond(
                    peer,
                    p.id,
                    Response::error(ErrorCode::Unavailable, "the worker failed; retry"),
                );
            }
        }
        if let Some(s) = self.stats.get_mut(worker as usize) {
            *s = WorkerStats {
                worker,
                port: s.port,
                ..WorkerStats::default()
            };
        }
        self.refresh_admin();
        if let Some(c) = &self.cluster {
            c.send(ClusterCmd::Node(self.node_info()));
        }
        self.restart_worker(worker);
    }

    pub(super) fn restart_worker(&mut self, worker: u32) {
        let Some(w) = self.workers.get(worker as usize) else {
            return;
        };
        match w.commands.try_send(ToWorker::Restart) {
            Ok(()) => {
                let _ = w.waker.wake();
            }
            // Its queue is full of commands it is refusing: try again at the next sweep.
            Err(TrySendError::Full(_)) => self.restart_due.push(worker),
            Err(TrySendError::Disconnected(_)) => {
                error!(worker, "worker thread is gone; it stays down")
            }
        }
    }
}

//! Control requests a worker core answers: join (with or without the first offer), attach
//! (session resume), the client's answers and offers, leave. Every SDP from outside is checked
//! (size, m-line cap) and parsed under the panic guard; errors go back as clean responses.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use crate::messages::{ErrorCode, Event, Join, LeaveReason, PeerInfo, Reply};
use rand::Rng;
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::net::TcpType;
use str0m::{Candidate, IceCreds, Rtc, RtcConfig};
use tracing::{debug, info};

use super::participant::Participant;
use super::slots::{Slots, recvonly_sections};
use super::{
    Command, Op, Output, ParticipantIdx, Report, TrackInIdx, Work, WorkerCore, clean_error, guard,
    media_sections, p_fail, unknown,
};

impl WorkerCore {
    pub(super) fn handle_command(&mut self, now: Instant, cmd: Command) {
        if self.next_stats.is_none() {
            self.next_stats = Some(now + self.cfg.stats_interval);
        }
        let response = match cmd.op {
            Op::Remove {
                participant,
                reason,
            } => {
                if let Some(idx) = self.by_id.get(participant.as_str()).copied() {
                    self.remove_participant(idx, now, reason);
                }
                None
            }
            Op::Join(join) => self.handle_join(now, cmd.tag, join),
            Op::Answer { participant, sdp } => self.handle_answer(now, participant.as_str(), &sdp),
            Op::Offer { participant, sdp } => {
                self.handle_client_offer(now, participant.as_str(), &sdp)
            }
            Op::Leave { participant } => match self.by_id.get(participant.as_str()).copied() {
                Some(idx) => {
                    self.remove_participant(idx, now, LeaveReason::Left);
                    Some(Reply::Ok)
                }
                None => Some(unknown(participant.as_str())),
            },
            Op::Attach {
                participant,
                resume_key,
            } => self.handle_attach(cmd.tag, participant.as_str(), &resume_key),
            Op::CloseRoom { room } => {
                let members = self
                    .rooms
                    .get(room.as_str())
                    .map(|r| r.participants.clone())
                    .unwrap_or_default();
                for idx in members {
                    self.remove_participant(idx, now, LeaveReason::RoomClosed);
                }
                Some(Reply::Ok)
            }
        };
        if let Some(response) = response {
            self.respond(cmd.tag, response);
        }
        self.run_work(now);
    }

    pub(super) fn respond(&mut self, tag: u64, response: Reply) {
        self.out.push_back(Output::Report(Report::Reply {
            tag,
            reply: response,
        }));
    }

    pub(super) fn event(&mut self, event: Event) {
        self.out.push_back(Output::Report(Report::Event(event)));
    }

    /// Returns `None` when the response was already emitted (it must precede the events).
    pub(super) fn handle_join(&mut self, now: Instant, tag: u64, join: Join) -> Option<Reply> {
        let Join {
            room,
            participant,
            name,
            offer,
            grants,
            identity,
            viewer,
        } = join;
        let id = participant;
        let offer = offer.as_deref();
        // A viewer's slots are the recvonly audio/video sections of its offer.
        let slots = match (viewer, offer) {
            (None, _) => None,
            (Some(_), None) => {
                return Some(Reply::error(
                    ErrorCode::BadRequest,
                    "a viewer joins with an SDP offer",
                ));
            }
            (Some(v), Some(o)) => {
                let mids = recvonly_sections(o);
                if mids.is_empty() {
                    return Some(Reply::error(
                        ErrorCode::BadRequest,
                        "the offer has no recvonly audio or video section to receive on",
                    ));
                }
                Some(Slots::new(v.from, mids))
            }
        };
        if self.by_id.contains_key(&id) {
            return Some(Reply::error(
                ErrorCode::DuplicateParticipant,
                format!("participant {id:?} already exists"),
            ));
        }
        match self.rooms.get(&room) {
            None if self.rooms.len() >= self.cfg.max_rooms => {
                return Some(Reply::error(
                    ErrorCode::Unavailable,
                    format!(
                        "this worker hosts its maximum of {} rooms",
                        self.cfg.max_rooms
                    ),
                ));
            }
            Some(r) if r.participants.len() >= self.cfg.max_participants_per_room => {
                return Some(Reply::error(
                    ErrorCode::RoomFull,
                    format!(
                        "room {room:?} has its maximum of {} participants",
                        self.cfg.max_participants_per_room
                    ),
                ));
            }
            _ => {}
        }
        let offer = match offer.map(|o| self.parse_offer(o)) {
            None => None,
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => return Some(e),
        };
        let creds = self.ice_credentials();
        let ufrag = creds.ufrag.clone();
        let resume_key = format!("{:032x}", self.rng.random::<u128>());
        let mut rtc = self.build_rtc(creds, now);
        match self.local_candidates() {
            Ok(cs) => {
                for c in cs {
                    rtc.add_local_candidate(c);
                }
            }
            Err(e) => {
                return Some(Reply::error(
                    ErrorCode::Internal,
                    format!("bad local candidate: {e}"),
                ));
            }
        }
        let answer = match offer {
            None => None,
            Some(offer) => match guard(|| rtc.sdp_api().accept_offer(offer)) {
                Some(Ok(a)) => Some(a.to_sdp_string()),
                Some(Err(e)) => {
                    return Some(Reply::error(
                        ErrorCode::BadRequest,
                        format!("SDP offer not acceptable: {}", clean_error(e)),
                    ));
                }
                None => {
                    return Some(Reply::error(
                        ErrorCode::BadRequest,
                        "SDP offer not acceptable",
                    ));
                }
            },
        };
        let initial_done = answer.is_some();

        let others: Vec<ParticipantIdx> = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let mut p = Participant::new(
            id.clone(),
            name.clone(),
            room.clone(),
            rtc,
            ufrag.clone(),
            resume_key.clone(),
            now,
        );
        p.initial_done = initial_done;
        p.grants = grants;
        p.slots = slots;
        p.identity = identity;
        let idx = ParticipantIdx(self.participants.insert(p));
        self.by_id.insert(id.clone(), idx);
        self.demux.insert_ufrag(ufrag, idx);
        let r = self.rooms.entry(room.clone()).or_default();
        r.participants.push(idx);
        // The room's earlier public messages, held (like anything sent before its chat channel
        // opens) and delivered first, once.
        let history = Self::history(r);
        if let Some(p) = self.participants.get_mut(idx.0) {
            p.chat_backlog.extend(history);
        }
        info!(participant = %id, %room, worker = self.cfg.worker, "joined");

        let peers: Vec<PeerInfo> = others
            .iter()
            .filter_map(|o| self.participants.get(o.0))
            .map(|o| PeerInfo {
                id: o.id.clone(),
                name: o.name.clone(),
            })
            .collect();
        self.respond(
            tag,
            Reply::Joined {
                answer,
                worker: self.cfg.worker,
                port: self.cfg.local_addr.port(),
                participants: peers,
                resume_key,
            },
        );
        let me = PeerInfo { id, name };
        for o in &others {
            if let Some(op) = self.participants.get(o.0) {
                let participant = op.id.clone();
                self.event(Event::PeerJoined {
                    participant,
                    peer: me.clone(),
                });
            }
        }
        // Subscribe the newcomer to everything already published in the room.
        for o in &others {
            let tracks: Vec<TrackInIdx> = self
                .participants
                .get(o.0)
                .map(|op| op.tracks_in.iter().map(|(_, t)| *t).collect())
                .unwrap_or_default();
            for ti in tracks {
                self.subscribe(idx, ti);
            }
        }
        self.work.push_back(Work::Negotiate(idx));
        self.drain(idx, now);
        None
    }

    /// A signaling connection took over the participant's events: tell it the room and re-send
    /// the outstanding server offer (the previous connection may have died before relaying it).
    pub(super) fn handle_attach(&mut self, tag: u64, id: &str, resume_key: &str) -> Option<Reply> {
        let Some(idx) = self.by_id.get(id).copied() else {
            return Some(unknown(id));
        };
        let p = self.participants.get(idx.0)?;
        if p.resume_key != resume_key {
            // Same answer as for an unknown id: a wrong key reveals nothing.
            return Some(unknown(id));
        }
        let participants = self
            .rooms
            .get(&p.room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|o| **o != idx)
                    .filter_map(|o| self.participants.get(o.0))
                    .map(|o| PeerInfo {
                        id: o.id.clone(),
                        name: o.name.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let offer = p.pending.as_ref().map(|o| Event::Offer {
            participant: p.id.clone(),
            sdp: o.sdp.clone(),
        });
        let response = Reply::Attached {
            room: p.room.clone(),
            name: p.name.clone(),
            participants,
            identity: p.identity.clone(),
        };
        // The response must precede the re-sent offer.
        self.respond(tag, response);
        if let Some(offer) = offer {
            self.event(offer);
        }
        None
    }

    pub(super) fn parse_offer(&self, sdp: &str) -> Result<SdpOffer, Reply> {
        self.parse_sdp(sdp, "offer", SdpOffer::from_sdp_string)
    }

    /// Parse client SDP: refused before parsing if it has more media sections than allowed (an
    /// answer to thousands of m-lines would not fit the control link), parse errors cleaned of
    /// internal details, a parser panic caught.
    pub(super) fn parse_sdp<T, E: std::fmt::Display>(
        &self,
        sdp: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, Reply> {
        let sections = media_sections(sdp);
        if sections > self.cfg.max_media_per_offer {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                format!(
                    "SDP {what} has {sections} media sections; at most {} are accepted",
                    self.cfg.max_media_per_offer
                ),
            ));
        }
        match guard(|| parse(sdp)) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(Reply::error(
                ErrorCode::BadRequest,
                format!("invalid SDP {what}: {}", clean_error(e)),
            )),
            None => Err(Reply::error(
                ErrorCode::BadRequest,
                format!("invalid SDP {what}"),
            )),
        }
    }

    /// Fresh ICE credentials from the core's seeded RNG (str0m's `IceCreds::new` would draw from
    /// the OS), shaped like str0m's: 16 alphanumeric characters of ufrag (~95 bits) and 32 of
    /// password (~190 bits; RFC 8445 asks for ≥ 24 and ≥ 128 bits).
    fn ice_credentials(&mut self) -> IceCreds {
        const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut draw = |n: usize| -> String {
            (0..n)
                .map(|_| ICE_CHARS[self.rng.random_range(0..ICE_CHARS.len())] as char)
                .collect()
        };
        let ufrag = draw(16);
        let pass = draw(32);
        IceCreds { ufrag, pass }
    }

    /// This worker's host candidates: UDP, and passive ICE-TCP when it listens on TCP (str0m
    /// gives TCP host candidates a lower priority, so a client with both prefers UDP).
    fn local_candidates(&self) -> Result<Vec<Candidate>, str0m::error::IceError> {
        let mut v = vec![Candidate::host(self.cfg.local_addr, "udp")?];
        if let Some(addr) = self.cfg.tcp_addr {
            v.push(
                Candidate::builder()
                    .tcp()
                    .host(addr)
                    .tcptype(TcpType::Passive)
                    .build()?,
            );
        }
        Ok(v)
    }

    pub(super) fn build_rtc(&self, creds: IceCreds, now: Instant) -> Rtc {
        RtcConfig::new()
            .set_crypto_provider(self.crypto.provider.clone())
            .set_dtls_cert(self.crypto.cert.clone())
            .set_local_ice_credentials(creds)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_send_buffer_video(self.cfg.rtx_buffer_video)
            .set_stats_interval(self.cfg.rtc_stats_interval)
            .enable_bwe(self.cfg.bwe_initial.map(Bitrate::bps))
            .build(now)
    }

    /// The prelude of a client answer or offer: its participant and its parsed SDP, or the
    /// reply refusing them.
    fn client_sdp<T, E: std::fmt::Display>(
        &self,
        id: &str,
        sdp: &str,
        kind: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(ParticipantIdx, T), Reply> {
        let idx = self.by_id.get(id).copied().ok_or_else(|| unknown(id))?;
        Ok((idx, self.parse_sdp(sdp, kind, parse)?))
    }

    /// The epilogue of a client answer or offer: renegotiate if tracks changed meanwhile, drain
    /// the `Rtc`, then reply.
    fn after_client_sdp(
        &mut self,
        idx: ParticipantIdx,
        now: Instant,
        reply: Reply,
    ) -> Option<Reply> {
        self.work.push_back(Work::Negotiate(idx));
        self.drain(idx, now);
        Some(reply)
    }

    pub(super) fn handle_answer(&mut self, now: Instant, id: &str, sdp: &str) -> Option<Reply> {
        let (idx, answer) = match self.client_sdp(id, sdp, "answer", SdpAnswer::from_sdp_string) {
            Ok(x) => x,
            Err(reply) => return Some(reply),
        };
        let p = self.participants.get_mut(idx.0)?;
        let Some(pending) = p.pending.take() else {
            return Some(Reply::error(
                ErrorCode::BadRequest,
                "no server offer is outstanding",
            ));
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.sdp_api().accept_answer(pending.pending, answer)
        }));
        let connected = p.connected;
        let response = match result {
            Ok(Ok(())) => {
                for to in &pending.tracks {
                    self.finish_negotiation(*to, connected);
                }
                Reply::Ok
            }
            Ok(Err(e)) => {
                // The offer is consumed either way: put its tracks back and offer again.
                for to in &pending.tracks {
                    self.rollback_negotiation(*to);
                }
                Reply::error(
                    ErrorCode::BadRequest,
                    format!("SDP answer not acceptable: {}", clean_error(e)),
                )
            }
            Err(_) => {
                p_fail(&mut self.participants, idx);
                Reply::error(ErrorCode::BadRequest, "SDP answer not acceptable")
            }
        };
        self.after_client_sdp(idx, now, response)
    }

    pub(super) fn handle_client_offer(
        &mut self,
        now: Instant,
        id: &str,
        sdp: &str,
    ) -> Option<Reply> {
        let (idx, offer) = match self.client_sdp(id, sdp, "offer", SdpOffer::from_sdp_string) {
            Ok(x) => x,
            Err(reply) => return Some(reply),
        };
        let p = self.participants.get_mut(idx.0)?;
        // Glare: the server is the polite peer. Its outstanding offer is rolled back (str0m
        // invalidates it on accept_offer) and re-sent, updated, after answering the client.
        let rolled_back = p.pending.take();
        let result = catch_unwind(AssertUnwindSafe(|| p.rtc.sdp_api().accept_offer(offer)));
        if let Some(pending) = rolled_back {
            debug!(participant = %id, "glare: rolled back server offer");
            for to in &pending.tracks {
                self.rollback_negotiation(*to);
            }
        }
        let response = match result {
            Ok(Ok(answer)) => {
                if let Some(p) = self.participants.get_mut(idx.0) {
                    p.initial_done = true;
                }
                Reply::Answer {
                    sdp: answer.to_sdp_string(),
                }
            }
            Ok(Err(e)) => Reply::error(
                ErrorCode::BadRequest,
                format!("SDP offer not acceptable: {}", clean_error(e)),
            ),
            Err(_) => {
                p_fail(&mut self.participants, idx);
                Reply::error(ErrorCode::BadRequest, "SDP offer not acceptable")
            }
        };
        self.after_client_sdp(idx, now, response)
    }
}

//! Chat and mute state over the DataChannel: a sender's message goes to its room (or privately to
//! one participant), rate-limited per sender, backlogged while a channel is not open yet.

use std::collections::HashMap;

use crate::messages::RoomId;
use std::time::Instant;

use tracing::{debug, warn};

use super::participant::MAX_CHAT_BACKLOG;
use super::{
    ChannelRequest, ChatDelivery, ChatError, ChatRequest, CoreConfig, DropReason, MediaState,
    ParticipantIdx, Room, WorkerCore, guard, parse_request,
};

impl WorkerCore {
    pub(super) fn handle_chat(&mut self, from: ParticipantIdx, data: &[u8], now: Instant) {
        let parsed = parse_request(data, self.cfg.max_chat_text);
        // Tile hints are not chat: their own allowance, nothing relayed, no error echoed.
        if let Ok(ChannelRequest::Hint(hint)) = parsed {
            self.handle_hint(from, hint, now);
            return;
        }
        let (rate, burst) = (self.cfg.chat_rate, self.cfg.chat_burst);
        let Some(p) = self.participants.get_mut(from.0) else {
            return;
        };
        // Per-sender rate limit: a flood from one participant never crowds out the room.
        if !p.chat_allowance.try_take(now, rate, burst) {
            self.counters.drop(DropReason::ChatRateLimited);
            if !std::mem::replace(&mut p.chat_limited, true) {
                let msg = ChatError::RateLimited {
                    per_sec: rate.round() as u32,
                }
                .to_json();
                self.send_chat(from, &msg);
                self.drain(from, now);
            }
            return;
        }
        p.chat_limited = false;
        let Some(p) = self.participants.get(from.0) else {
            return;
        };
        let request = parsed.and_then(|req| {
            if let ChannelRequest::Chat(ChatRequest { to: Some(to), .. }) = &req {
                let target = self.by_id.get(to.as_str()).copied();
                let same_room = target
                    .and_then(|t| self.participants.get(t.0))
                    .is_some_and(|t| t.room == p.room);
                if !same_room {
                    return Err(ChatError::UnknownParticipant(to.clone()));
                }
            }
            Ok(req)
        });
        let req = match request {
            Ok(ChannelRequest::Chat(r)) => r,
            Ok(ChannelRequest::State(state)) => {
                self.handle_media_state(from, state, now);
                return;
            }
            Ok(ChannelRequest::Hint(_)) => return, // handled above
            Err(e) => {
                debug!(participant = %p.id, code = e.code(), "chat rejected");
                self.counters.drop(DropReason::ChatInvalid);
                let msg = e.to_json();
                self.send_chat(from, &msg);
                self.drain(from, now);
                return;
            }
        };
        self.counters.chat_messages += 1;
        let mut delivery = ChatDelivery::new(
            &p.id,
            &p.name,
            req.to.as_deref(),
            &req.text,
            self.clock.unix_ms(now),
        );
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.chat_seq += 1;
            delivery.seq = room.chat_seq;
            if req.to.is_none() {
                Self::remember(room, &delivery, &self.cfg);
            }
        }
        let delivery = delivery.to_json();
        let recipients: Vec<ParticipantIdx> = match &req.to {
            // A whisper goes to its target and back to its sender as confirmation.
            Some(to) => {
                let mut r = vec![from];
                if let Some(t) = self.by_id.get(to.as_str()).copied()
                    && t != from
                {
                    r.push(t);
                }
                r
            }
            None => Self::room_except(&self.rooms, &p.room, from),
        };
        for r in recipients {
            self.send_chat(r, &delivery);
            self.drain(r, now);
        }
    }

    /// Keep a public message in the room's history, dropping the oldest beyond the configured
    /// count or bytes.
    fn remember(room: &mut Room, msg: &ChatDelivery, cfg: &CoreConfig) {
        if cfg.chat_history == 0 || msg.weight() > cfg.chat_history_bytes {
            return;
        }
        room.chat_history_bytes += msg.weight();
        room.chat_history.push_back(msg.clone());
        while room.chat_history.len() > cfg.chat_history
            || room.chat_history_bytes > cfg.chat_history_bytes
        {
            match room.chat_history.pop_front() {
                Some(old) => room.chat_history_bytes -= old.weight(),
                None => break,
            }
        }
    }

    /// A room's kept public messages as delivered to a participant who joins now (marked
    /// `history`), oldest first.
    pub(super) fn history(room: &Room) -> Vec<Vec<u8>> {
        room.chat_history
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.history = true;
                m.to_json()
            })
            .collect()
    }

    /// Everyone in `room` but `except` (over `rooms` alone, so a participant may be borrowed).
    pub(super) fn room_except(
        rooms: &HashMap<RoomId, Room>,
        room: &str,
        except: ParticipantIdx,
    ) -> Vec<ParticipantIdx> {
        rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .copied()
                    .filter(|x| *x != except)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A participant announced its mute state: remember it (for later joiners) and tell the room.
    pub(super) fn handle_media_state(
        &mut self,
        from: ParticipantIdx,
        state: MediaState,
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(from.0) else {
            return;
        };
        p.media_state = state;
        let msg = state.to_json(&p.id);
        for o in Self::room_except(&self.rooms, &p.room, from) {
            self.send_chat(o, &msg);
            self.drain(o, now);
        }
    }

    /// Write a message on a participant's chat channel, or hold it until the channel opens.
    pub(super) fn send_chat(&mut self, idx: ParticipantIdx, msg: &[u8]) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        let Some(id) = p.chat else {
            // Room for MAX_CHAT_BACKLOG live messages on top of the history seeded at join.
            if p.chat_backlog.len() < MAX_CHAT_BACKLOG + self.cfg.chat_history {
                p.chat_backlog.push_back(msg.to_vec());
            } else {
                self.counters.drop(DropReason::ChatBackpressure);
            }
            return;
        };
        let written = guard(|| p.rtc.channel(id).map(|mut ch| ch.write(false, msg)));
        if written.is_none() {
            warn!(participant = %p.id, "rtc panicked on a chat write; closing participant");
            p.failed = true;
        }
        if !matches!(written, Some(Some(Ok(true)))) {
            self.counters.drop(DropReason::ChatBackpressure);
        }
    }
}

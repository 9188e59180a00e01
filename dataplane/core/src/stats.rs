//! The periodic statistics snapshot of the worker, its rooms and participants.

use super::*;

impl WorkerCore {
    /// A statistics snapshot of this worker.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        let mut rooms: Vec<RoomStats> = self
            .rooms
            .iter()
            .map(|(name, r)| RoomStats {
                room: name.clone(),
                participants: r
                    .participants
                    .iter()
                    .filter_map(|i| self.participants.get(i.0))
                    .map(|p| ParticipantStats {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        connected: p.connected,
                        tracks_in: p.tracks_in.len() as u32,
                        tracks_out: p.tracks_out.len() as u32,
                        rtp_in: p.rtp_in,
                        rtp_out: p.rtp_out,
                    })
                    .collect(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        WorkerStats {
            worker: self.cfg.worker,
            port: self.cfg.local_addr.port(),
            rooms,
            participants: self.participants.len() as u32,
            datagrams_in: c.datagrams_in,
            datagrams_out: c.datagrams_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            rtp_in: c.rtp_in,
            rtp_forwarded: c.rtp_forwarded,
            keyframe_requests: c.keyframe_requests,
            chat_messages: c.chat_messages,
            nacks_received: c.nacks_received,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), c.dropped(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ..WorkerStats::default()
        }
    }
}

//! The periodic statistics snapshot of the worker, its rooms and participants.

use super::{ParticipantStats, RoomStats, Stats, WorkerCore};

impl WorkerCore {
    /// A statistics snapshot of this worker.
    pub fn stats(&self) -> Stats {
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
        Stats {
            worker: self.cfg.worker,
            port: self.cfg.local_addr.port(),
            participants: self.participants.len() as u32,
            rooms,
            counters: self.counters.clone(),
            join_seconds: Vec::new(),
        }
    }
}

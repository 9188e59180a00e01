//! Routing a datagram to its participant without scanning participants.
//!
//! RFC 7983 classifies a datagram by its first byte. STUN is routed by the local (server) ufrag in
//! its USERNAME attribute, everything else by source address. A source address is bound to a
//! participant only after that participant's `Rtc` has accepted a STUN request from it
//! (`Rtc::accepts` verifies MESSAGE-INTEGRITY), so a packet with a guessed ufrag cannot hijack
//! the address map.

use std::collections::HashMap;

use str0m::ice::StunMessage;

use super::Remote;
use super::ids::ParticipantIdx;

/// What a datagram looks like from its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    /// RTP or RTCP.
    Rtp,
    Unknown,
}

/// Classify a datagram by its first byte.
pub fn classify(data: &[u8]) -> PacketClass {
    match data.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => PacketClass::Rtp,
        _ => PacketClass::Unknown,
    }
}

/// Why a datagram could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Not STUN/DTLS/RTP, or STUN that does not parse.
    Malformed,
    /// STUN without USERNAME or with a ufrag no participant owns.
    UnknownUfrag,
    /// DTLS/RTP from an address no participant has proven via STUN.
    UnknownSource,
}

/// The routing tables of one worker.
#[derive(Debug, Default)]
pub struct Demux {
    by_ufrag: HashMap<String, ParticipantIdx>,
    by_addr: HashMap<Remote, ParticipantIdx>,
}

impl Demux {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            by_ufrag: HashMap::with_capacity(n),
            by_addr: HashMap::with_capacity(n),
        }
    }

    /// Register the local ufrag of a participant.
    pub fn insert_ufrag(&mut self, ufrag: String, idx: ParticipantIdx) {
        self.by_ufrag.insert(ufrag, idx);
    }

    /// Route a datagram. Also returns whether it is STUN (which may need address binding).
    pub fn route(&self, source: Remote, data: &[u8]) -> Result<(ParticipantIdx, bool), RouteError> {
        match classify(data) {
            PacketClass::Stun => {
                let msg = StunMessage::parse(data).map_err(|_| RouteError::Malformed)?;
                let (local, _remote) = msg.split_username().ok_or(RouteError::UnknownUfrag)?;
                let idx = self.by_ufrag.get(local).ok_or(RouteError::UnknownUfrag)?;
                Ok((*idx, true))
            }
            PacketClass::Dtls | PacketClass::Rtp => self
                .by_addr
                .get(&source)
                .map(|idx| (*idx, false))
                .ok_or(RouteError::UnknownSource),
            PacketClass::Unknown => Err(RouteError::Malformed),
        }
    }

    /// Which participant an address is bound to.
    pub fn addr_owner(&self, addr: &Remote) -> Option<ParticipantIdx> {
        self.by_addr.get(addr).copied()
    }

    /// Bind a proven source address to a participant (replacing a stale binding).
    pub fn bind_addr(&mut self, addr: Remote, idx: ParticipantIdx) -> Option<ParticipantIdx> {
        self.by_addr.insert(addr, idx).filter(|old| *old != idx)
    }

    /// Forget a participant: its ufrag and the given addresses (only where still bound to it).
    pub fn remove(&mut self, idx: ParticipantIdx, ufrag: &str, addrs: &[Remote]) {
        if self.by_ufrag.get(ufrag) == Some(&idx) {
            self.by_ufrag.remove(ufrag);
        }
        for a in addrs {
            if self.by_addr.get(a) == Some(&idx) {
                self.by_addr.remove(a);
            }
        }
    }

    /// Number of (ufrags, addresses) routed; for tests and stats.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::TransId;

    fn stun_request(username: &str) -> Vec<u8> {
        let msg = StunMessage::binding_request(username, TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 1500];
        // The HMAC is irrelevant to routing; the Rtc verifies it later.
        let n = msg
            .to_bytes(Some(b"password"), &mut buf, |_, _| [0u8; 20])
            .expect("serialize");
        buf.truncate(n);
        buf
    }

    fn addr(port: u16) -> Remote {
        Remote::udp(std::net::SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn tcp(port: u16) -> Remote {
        Remote {
            transport: crate::Transport::Tcp,
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    #[test]
    fn classifies_by_first_byte() {
        let table: &[(&[u8], PacketClass)] = &[
            (&[0], PacketClass::Stun),
            (&[1, 1], PacketClass::Stun),
            (&[3], PacketClass::Stun),
            (&[4], PacketClass::Unknown),
            (&[19], PacketClass::Unknown),
            (&[20], PacketClass::Dtls),
            (&[22, 254, 253], PacketClass::Dtls),
            (&[63], PacketClass::Dtls),
            (&[64], PacketClass::Unknown),
            (&[127], PacketClass::Unknown),
            (&[128], PacketClass::Rtp),
            (&[0x80, 96], PacketClass::Rtp),
            (&[191], PacketClass::Rtp),
            (&[192], PacketClass::Unknown),
            (&[255], PacketClass::Unknown),
            (&[], PacketClass::Unknown),
        ];
        for (data, class) in table {
            assert_eq!(classify(data), *class, "{data:?}");
        }
    }

    #[test]
    fn stun_routes_by_local_ufrag_and_rtp_by_bound_address() {
        let mut d = Demux::default();
        d.insert_ufrag("srvA".into(), ParticipantIdx(1));
        d.insert_ufrag("srvB".into(), ParticipantIdx(2));

        assert_eq!(
            d.route(addr(1), &stun_request("srvB:cli")),
            Ok((ParticipantIdx(2), true))
        );
        assert_eq!(
            d.route(addr(1), &stun_request("srvA:x")),
            Ok((ParticipantIdx(1), true))
        );
        assert_eq!(
            d.route(addr(1), &stun_request("nope:x")),
            Err(RouteError::UnknownUfrag)
        );
        assert_eq!(
            d.route(addr(1), &[0x80, 96, 0, 1]),
            Err(RouteError::UnknownSource)
        );

        d.bind_addr(addr(1), ParticipantIdx(2));
        assert_eq!(
            d.route(addr(1), &[0x80, 96, 0, 1]),
            Ok((ParticipantIdx(2), false))
        );
        assert_eq!(
            d.route(addr(1), &[22, 254, 253]),
            Ok((ParticipantIdx(2), false))
        );
        assert_eq!(
            d.route(addr(2), &[0x80, 96, 0, 1]),
            Err(RouteError::UnknownSource)
        );
        // The same address over TCP is another remote: not bound.
        assert_eq!(
            d.route(tcp(1), &[0x80, 96, 0, 1]),
            Err(RouteError::UnknownSource)
        );
        d.bind_addr(tcp(1), ParticipantIdx(1));
        assert_eq!(
            d.route(tcp(1), &[0x80, 96, 0, 1]),
            Ok((ParticipantIdx(1), false))
        );
        assert_eq!(
            d.route(addr(1), &[0x80, 96, 0, 1]),
            Ok((ParticipantIdx(2), false))
        );
        assert_eq!(d.route(addr(1), &[99]), Err(RouteError::Malformed));
        assert_eq!(d.route(addr(1), &[0, 1, 0, 0]), Err(RouteError::Malformed));
    }

    #[test]
    fn remove_only_forgets_own_entries() {
        let mut d = Demux::default();
        d.insert_ufrag("a".into(), ParticipantIdx(1));
        d.bind_addr(addr(1), ParticipantIdx(1));
        d.bind_addr(addr(2), ParticipantIdx(1));
        // addr(2) moved to participant 2 (e.g. NAT rebinding), participant 1 then leaves.
        assert_eq!(
            d.bind_addr(addr(2), ParticipantIdx(2)),
            Some(ParticipantIdx(1))
        );
        d.remove(ParticipantIdx(1), "a", &[addr(1), addr(2)]);
        assert_eq!(d.addr_owner(&addr(1)), None);
        assert_eq!(d.addr_owner(&addr(2)), Some(ParticipantIdx(2)));
        assert_eq!(d.len(), (0, 1));
    }
}

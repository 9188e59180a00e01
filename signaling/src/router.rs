//! Who gets what on this signaling instance: which connection a participant's events are
//! delivered to ([`Routes`]), which control requests are still waiting for an answer
//! ([`Pending`]), which placement lookups are in flight or waiting for the registry to recover
//! ([`Placements`]), which way a request goes and what its answer means ([`Links`], [`Answer`]).
//! Pure: no I/O and no clock (time comes in as an argument), so the rules are table-tested in
//! each module.
//!
//! The ownership rules (move ownership only on confirmation):
//! - a participant is routed to a connection only once the dataplane **confirmed** it (`joined`
//!   or `attached`), never on the client's claim (a `join {resume}` naming someone else's
//!   participant changes nothing until the dataplane has verified the resume key);
//! - a confirmed owner replaces the previous one, which is told so by the caller;
//! - a connection that stops owning its participant (closed, left, room closed, replaced) is
//!   removed from the table on every path, looked up by connection, not through the session
//!   (whose state may already be gone).

use std::collections::HashMap;

mod delivery;
mod pending;
mod placements;

pub use delivery::{Answer, Links, Path, Start};
pub use pending::{Pending, PendingRequest};
pub use placements::{Answered, PlaceJob, Placements, RECOVERY_RETRY, RECOVERY_WAIT};

/// A client connection of this instance (its slab key).
pub type ConnId = usize;

/// Participant ↔ connection routing of events.
#[derive(Debug, Default)]
pub struct Routes {
    by_participant: HashMap<String, ConnId>,
    by_conn: HashMap<ConnId, String>,
}

impl Routes {
    /// The connection that owns `participant`'s events.
    pub fn owner(&self, participant: &str) -> Option<ConnId> {
        self.by_participant.get(participant).copied()
    }

    /// The participant `conn` owns.
    pub fn participant(&self, conn: ConnId) -> Option<&str> {
        self.by_conn.get(&conn).map(String::as_str)
    }

    /// The dataplane confirmed that `conn` owns `participant`. Whatever `conn` owned before is
    /// forgotten. Returns the connection that owned `participant` before, if it was another one:
    /// it has been replaced and must be told.
    pub fn confirm(&mut self, conn: ConnId, participant: &str) -> Option<ConnId> {
        if self.participant(conn) == Some(participant) {
            return None;
        }
        self.release(conn);
        let previous = self.by_participant.insert(participant.to_string(), conn);
        self.by_conn.insert(conn, participant.to_string());
        let previous = previous.filter(|p| *p != conn)?;
        self.by_conn.remove(&previous);
        Some(previous)
    }

    /// `conn` owns nothing any more. Returns the participant it owned.
    pub fn release(&mut self, conn: ConnId) -> Option<String> {
        let participant = self.by_conn.remove(&conn)?;
        if self.by_participant.get(&participant) == Some(&conn) {
            self.by_participant.remove(&participant);
        }
        Some(participant)
    }

    /// Number of routed participants.
    pub fn len(&self) -> usize {
        self.by_participant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_participant.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Confirm(ConnId, &'static str),
        Release(ConnId),
    }

    #[test]
    fn routes_follow_confirmations_only() {
        // (operations, expected owner of p1, expected owner of p2, expected displaced by the last op)
        type Case = (
            &'static [Op],
            Option<ConnId>,
            Option<ConnId>,
            Option<ConnId>,
        );
        let cases: &[Case] = &[
            (&[Op::Confirm(1, "p1")], Some(1), None, None),
            // Confirming again is idempotent.
            (
                &[Op::Confirm(1, "p1"), Op::Confirm(1, "p1")],
                Some(1),
                None,
                None,
            ),
            // A confirmed resume on connection 2 replaces connection 1, which is reported.
            (
                &[Op::Confirm(1, "p1"), Op::Confirm(2, "p1")],
                Some(2),
                None,
                Some(1),
            ),
            // The replaced connection closing later does not remove the new owner's route.
            (
                &[Op::Confirm(1, "p1"), Op::Confirm(2, "p1"), Op::Release(1)],
                Some(2),
                None,
                None,
            ),
            // A dropped connection (closed tab) forgets its participant: the slot id reused by
            // the next client inherits nothing.
            (&[Op::Confirm(1, "p1"), Op::Release(1)], None, None, None),
            (
                &[Op::Confirm(1, "p1"), Op::Release(1), Op::Confirm(1, "p2")],
                None,
                Some(1),
                None,
            ),
            // A connection that joins again (after room_closed) owns only its new participant.
            (
                &[Op::Confirm(1, "p1"), Op::Confirm(1, "p2")],
                None,
                Some(1),
                None,
            ),
            (&[Op::Release(7)], None, None, None),
        ];
        for (ops, p1, p2, displaced) in cases {
            let mut r = Routes::default();
            let mut last = None;
            for op in *ops {
                last = match *op {
                    Op::Confirm(c, p) => r.confirm(c, p),
                    Op::Release(c) => {
                        r.release(c);
                        None
                    }
                };
            }
            assert_eq!(
                (r.owner("p1"), r.owner("p2"), last),
                (*p1, *p2, *displaced),
                "{ops:?}"
            );
            // The two maps always agree.
            for (p, c) in &r.by_participant {
                assert_eq!(r.by_conn.get(c), Some(p), "{ops:?}");
            }
            assert_eq!(r.by_conn.len(), r.by_participant.len(), "{ops:?}");
        }
    }
}

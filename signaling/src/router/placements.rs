//! Placement lookups (cluster mode: which node owns a room?) in flight, by ticket, and those
//! waiting to be retried while the registry recovers from data loss. Pure: time comes in as an
//! argument.
//!
//! A lookup is remembered with the connection that asked; an answer is delivered only to a
//! connection that still has a lookup under that ticket, so a slot id reused by the next client
//! never receives an earlier client's placement.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ConnId;

/// How long a join waits for the registry to recover from data loss before it fails.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// Retry interval of a placement while the registry recovers.
pub const RECOVERY_RETRY: Duration = Duration::from_millis(250);

/// A placement lookup in flight (cluster mode).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceJob {
    pub conn: ConnId,
    pub room: String,
    pub exclude: Vec<String>,
    /// While the registry recovers from data loss, the lookup is retried until then.
    pub give_up: Instant,
}

impl PlaceJob {
    /// A lookup for `conn` starting at `now`: retried while the registry recovers, for
    /// [`RECOVERY_WAIT`] at most.
    pub fn new(conn: ConnId, room: String, exclude: Vec<String>, now: Instant) -> Self {
        Self {
            conn,
            room,
            exclude,
            give_up: now + RECOVERY_WAIT,
        }
    }
}

/// What became of a placement answer ([`Placements::answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Deliver the result to this connection's session.
    Deliver(ConnId),
    /// The registry is recovering: the lookup of `room` is retried [`RECOVERY_RETRY`] later
    /// (see [`Placements::due`]); the session hears nothing yet.
    Deferred { room: String },
    /// No lookup under this ticket (answered already, or its connection went away).
    Unknown,
}

/// Placement lookups in flight and deferred.
#[derive(Debug, Default)]
pub struct Placements {
    by_ticket: HashMap<u64, PlaceJob>,
    /// Lookups waiting to be retried (registry recovering), with their retry time.
    deferred: Vec<(Instant, PlaceJob)>,
}

impl Placements {
    /// `job` was sent under `ticket`.
    pub fn insert(&mut self, ticket: u64, job: PlaceJob) {
        self.by_ticket.insert(ticket, job);
    }

    /// The answer to `ticket` came at `now`; `recovering` if the registry said it is recovering
    /// from data loss (nodes are re-asserting their rooms): then the lookup is deferred until its
    /// give-up time, after which the answer is delivered like any other.
    pub fn answer(&mut self, ticket: u64, recovering: bool, now: Instant) -> Answered {
        let Some(job) = self.by_ticket.remove(&ticket) else {
            return Answered::Unknown;
        };
        if recovering && now < job.give_up {
            let room = job.room.clone();
            self.deferred.push((now + RECOVERY_RETRY, job));
            return Answered::Deferred { room };
        }
        Answered::Deliver(job.conn)
    }

    /// Remove and return the deferred lookups due at `now`, in the order they were deferred; the
    /// caller sends them again under new tickets.
    pub fn due(&mut self, now: Instant) -> Vec<PlaceJob> {
        if self.deferred.is_empty() {
            return Vec::new();
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.deferred = later;
        due.into_iter().map(|(_, job)| job).collect()
    }

    /// `conn` is gone: forget its lookups, in flight (a late answer is then [`Answered::Unknown`])
    /// and deferred.
    pub fn forget(&mut self, conn: ConnId) {
        self.by_ticket.retain(|_, j| j.conn != conn);
        self.deferred.retain(|(_, j)| j.conn != conn);
    }

    /// Lookups in flight or deferred.
    pub fn len(&self) -> usize {
        self.by_ticket.len() + self.deferred.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn answers_are_delivered_deferred_or_dropped() {
        let t0 = Instant::now();
        // (ticket answered, registry recovering, answered at, expected, lookups left)
        type Case = (u64, bool, Duration, Answered, usize);
        let cases: &[Case] = &[
            (1, false, MS, Answered::Deliver(7), 0),
            // An unknown ticket (another instance's, or a connection that went away) is dropped.
            (2, false, MS, Answered::Unknown, 1),
            (2, true, MS, Answered::Unknown, 1),
            // Recovering: retried later, not delivered, still counted.
            (1, true, MS, Answered::Deferred { room: "r".into() }, 1),
            (
                1,
                true,
                RECOVERY_WAIT - MS,
                Answered::Deferred { room: "r".into() },
                1,
            ),
            // Past its give-up time the error goes to the session (the join fails).
            (1, true, RECOVERY_WAIT, Answered::Deliver(7), 0),
            (1, true, RECOVERY_WAIT + MS, Answered::Deliver(7), 0),
        ];
        for (ticket, recovering, at, want, left) in cases {
            let mut p = Placements::default();
            p.insert(1, PlaceJob::new(7, "r".into(), vec!["n1".into()], t0));
            let got = p.answer(*ticket, *recovering, t0 + *at);
            assert_eq!(
                (&got, p.len()),
                (want, *left),
                "ticket {ticket} recovering {recovering} at {at:?}"
            );
            assert_eq!(
                p.answer(*ticket, false, t0 + *at),
                Answered::Unknown,
                "answered once"
            );
        }
    }

    #[test]
    fn deferred_lookups_come_back_when_due_and_keep_their_give_up_time() {
        let t0 = Instant::now();
        let mut p = Placements::default();
        let a = PlaceJob::new(1, "a".into(), vec![], t0);
        let b = PlaceJob::new(2, "b".into(), vec!["n1".into()], t0 + 100 * MS);
        p.insert(10, a.clone());
        p.insert(11, b.clone());
        assert_eq!(
            p.due(t0 + RECOVERY_RETRY * 4),
            vec![],
            "nothing deferred yet"
        );
        p.answer(10, true, t0);
        p.answer(11, true, t0 + 100 * MS);
        assert!(p.due(t0 + RECOVERY_RETRY - MS).is_empty(), "not due yet");
        assert_eq!(p.due(t0 + RECOVERY_RETRY), vec![a.clone()]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.due(t0 + 100 * MS + RECOVERY_RETRY),
            vec![b.clone()],
            "unchanged, so it gives up on time"
        );
        assert!(p.is_empty());
        // Sent again under a new ticket, it is deferred again until its (original) give-up.
        p.insert(12, a.clone());
        assert_eq!(
            p.answer(12, true, t0 + RECOVERY_WAIT - MS),
            Answered::Deferred { room: "a".into() }
        );
        assert_eq!(p.due(t0 + RECOVERY_WAIT * 2), vec![a]);
    }

    #[test]
    fn a_connection_that_goes_away_takes_its_lookups_along() {
        let t0 = Instant::now();
        let mut p = Placements::default();
        p.insert(1, PlaceJob::new(5, "r".into(), vec![], t0));
        p.insert(2, PlaceJob::new(5, "r".into(), vec![], t0));
        p.insert(3, PlaceJob::new(6, "r".into(), vec![], t0));
        p.answer(2, true, t0);
        assert_eq!(p.len(), 3);
        p.forget(5);
        assert_eq!(p.len(), 1, "in flight and deferred");
        // The slot id is reused by the next client: the old answer does not reach it.
        assert_eq!(p.answer(1, false, t0), Answered::Unknown);
        assert!(p.due(t0 + RECOVERY_RETRY).is_empty());
        assert_eq!(p.answer(3, false, t0), Answered::Deliver(6));
        p.forget(9);
        assert!(p.is_empty());
    }
}

//! Slab handles. They are only meaningful inside the worker that created them.

/// Index of a participant in its worker's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantIdx(pub usize);

/// Index of a published track (publisher → SFU) in its worker's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackInIdx(pub usize);

/// Index of a subscribed track (SFU → one subscriber) in its worker's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackOutIdx(pub usize);

//! The identity under which the log deduplicates an event. A leaf: the event types and the anomaly both
//! name their keys with it, and it names nothing of theirs.

/// The identity under which the log deduplicates an event: a key space and a slot within it. Readings of
/// one terminal share a space (`reading/<terminal>/`) and use their `seq` as the slot, so that the log can
/// keep the index of neighbouring sequences together; a registration is alone in its space, at slot 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DedupeKey {
    pub space: Vec<u8>,
    pub slot: u64,
}

//! The versioned envelope every event is stored in, its on-disk record format and its checks.
//!
//! A record is `[format: u8 = 1][crc32 of the rest: u32 little-endian][rkyv bytes of Envelope]`. Reading a
//! record checks, in order: the format byte, the CRC (catches any flipped bit, also in the header fields),
//! rkyv's structural validation (catches what a CRC collision would let through), that the sequence in the
//! envelope is the one it was stored under, and that the SHA-256 of the payload's canonical JSON equals the
//! stored fingerprint. A record that fails any of them is reported as corrupt and never used.

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Event, SCHEMA_VERSION};

/// The record format written today.
pub const RECORD_FORMAT: u8 = 1;

const HEADER_LEN: usize = 5;

/// A SHA-256 fingerprint of an event's canonical bytes.
pub type Fingerprint = [u8; 32];

/// SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> Fingerprint {
    Sha256::digest(bytes).into()
}

/// An event as the log holds it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Global, gapless, starting at 1.
    pub seq: u64,
    /// The aggregate the event is about, e.g. `terminal:T-1`.
    pub stream: String,
    pub event_type: String,
    pub schema_version: u16,
    /// When the log recorded the event, UTC nanoseconds since the Unix epoch.
    pub recorded_at_ns: i64,
    /// SHA-256 of `event.canonical()`.
    pub fingerprint: Fingerprint,
    pub event: Event,
}

impl Envelope {
    /// Wraps `event` for storage at `seq`; `fingerprint` must be that of `event.canonical()`.
    pub fn new(seq: u64, recorded_at_ns: i64, fingerprint: Fingerprint, event: Event) -> Self {
        Envelope {
            seq,
            stream: event.stream(),
            event_type: event.event_type().to_owned(),
            schema_version: SCHEMA_VERSION,
            recorded_at_ns,
            fingerprint,
            event,
        }
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// Encodes the envelope as a record.
    pub fn encode(&self) -> Vec<u8> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("serialising an in-memory envelope cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a record stored under `seq`.
    pub fn decode(seq: u64, record: &[u8]) -> Result<Envelope, CorruptRecord> {
        let corrupt = |reason: String| CorruptRecord { seq, reason };
        if record.len() < HEADER_LEN {
            return Err(corrupt(format!("record is {} bytes long", record.len())));
        }
        if record[0] != RECORD_FORMAT {
            return Err(corrupt(format!("unknown record format {}", record[0])));
        }
        let crc = u32::from_le_bytes(record[1..HEADER_LEN].try_into().expect("4 bytes"));
        let body = &record[HEADER_LEN..];
        if crc32fast::hash(body) != crc {
            return Err(corrupt("CRC mismatch: the record's bytes changed".into()));
        }
        // sled does not promise alignment; rkyv needs it.
        let mut aligned = AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let env = rkyv::from_bytes::<Envelope, rkyv::rancor::Error>(&aligned)
            .map_err(|e| corrupt(format!("invalid encoding: {e}")))?;
        if env.seq != seq {
            return Err(corrupt(format!("envelope says seq {}", env.seq)));
        }
        if env.event_type != env.event.event_type() {
            return Err(corrupt(format!(
                "event_type {} does not match the payload {}",
                env.event_type,
                env.event.event_type()
            )));
        }
        if fingerprint(&env.event.canonical().to_bytes()) != env.fingerprint {
            return Err(corrupt(
                "fingerprint mismatch: the payload is not what was recorded".into(),
            ));
        }
        Ok(env)
    }
}

/// A record that failed its checks on read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq} is corrupt: {reason}")]
pub struct CorruptRecord {
    pub seq: u64,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TerminalId;
    use crate::reading::{Reading, ReadingKind, Stage};
    use proptest::prelude::*;

    fn reading(seq: u64, value: i64, container: Option<&str>) -> Event {
        Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse("T-1").unwrap(),
            seq,
            measured_at_ns: 1_795_000_000_123_456_789,
            kind: ReadingKind::Weight,
            value,
            container_id: container.map(|c| crate::ids::ContainerId::parse(c).unwrap()),
            stage: Some(Stage::StorageIn),
            waste_code: Some("HW08".into()),
        })
    }

    fn envelope(seq: u64, event: Event) -> Envelope {
        let fp = fingerprint(&event.canonical().to_bytes());
        Envelope::new(seq, 1_795_000_001_000_000_000, fp, event)
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let env = envelope(7, reading(3, 152_300_000, Some("C-9")));
        let record = env.encode();
        assert_eq!(Envelope::decode(7, &record).unwrap(), env);
        for byte in 0..record.len() {
            for bit in 0..8 {
                let mut flipped = record.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    Envelope::decode(7, &flipped).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_record_under_the_wrong_sequence_is_corrupt() {
        let record = envelope(7, reading(3, 1, None)).encode();
        let err = Envelope::decode(8, &record).unwrap_err();
        assert!(err.reason.contains("seq 7"), "{err}");
    }

    #[test]
    fn a_wrong_fingerprint_is_caught_even_with_a_valid_crc() {
        let mut env = envelope(1, reading(3, 1, None));
        env.fingerprint[0] ^= 1;
        let err = Envelope::decode(1, &env.encode()).unwrap_err();
        assert!(err.reason.contains("fingerprint"), "{err}");
    }

    #[test]
    fn truncated_records_are_corrupt() {
        let record = envelope(1, reading(3, 1, None)).encode();
        for len in 0..record.len() {
            assert!(Envelope::decode(1, &record[..len]).is_err(), "len {len}");
        }
    }

    proptest! {
        /// Encoding then decoding gives back the same envelope for any reading.
        #[test]
        fn records_round_trip(seq in 1u64..u64::MAX, rseq in 1u64..(1 << 53), value in 0i64..1_000_000_000_000, c in proptest::option::of("[A-Za-z0-9._-]{1,64}")) {
            let env = envelope(seq, reading(rseq, value, c.as_deref()));
            prop_assert_eq!(Envelope::decode(seq, &env.encode()).unwrap(), env);
        }
    }
}

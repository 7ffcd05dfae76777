//! The versioned envelope every event is stored in, its on-disk record format and its checks.
//!
//! A record is `[format: u8][crc32 of the rest: u32 little-endian][rkyv bytes of the stored envelope]`.
//! Format 3 (every sealed record) keeps nothing identifying in the clear: the stream (`terminal:T-1`) and
//! the fingerprint are stored as keyed hashes ([`HeaderTags`], HMAC-SM3 under a key derived from the
//! master key), the payload names its data key by an opaque id, and the payload is sealed; after opening,
//! the event's own stream and fingerprint must hash to the stored tags. Format 2 (plain payloads: a log
//! without a keyring) keeps the stream and fingerprint in the clear; format 1 (before events carried the
//! token that caused them) and format 2 records are still read. Reading a
//! record checks, in order: the format byte, the CRC (catches any flipped bit, also in the header fields),
//! rkyv's structural validation (catches what a CRC collision would let through), that the sequence in the
//! envelope is the one it was stored under, and that the SHA-256 of the payload's canonical JSON equals the
//! stored fingerprint. A record that fails any of them is reported as corrupt and never used.

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::event::{Event, SCHEMA_VERSION};
use crate::keyring::{Keyring, SealedPayload, Tag};

/// The record format of a plain payload: 2 added `caused_by` to the header.
pub const RECORD_FORMAT: u8 = 2;

/// The record format of a sealed payload: stream and fingerprint as keyed hashes.
pub const RECORD_FORMAT_KEYED: u8 = 3;

/// The first record format, without `caused_by`; still read.
const RECORD_FORMAT_V1: u8 = 1;

/// The longest `caused_by` a record holds, in bytes (token ids are 32 hex digits, `bootstrap` is shorter).
pub const CAUSED_BY_BYTES_MAX: usize = 64;

const HEADER_LEN: usize = 5;

pub use crate::fingerprint::{Fingerprint, fingerprint};

/// An event as the log holds it, opened and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Global, gapless, starting at 1.
    pub seq: u64,
    /// The aggregate the event is about, e.g. `terminal:T-1`.
    pub stream: String,
    pub event_type: String,
    pub schema_version: u16,
    /// When the log recorded the event, UTC nanoseconds since the Unix epoch.
    pub recorded_at_ns: i64,
    /// SHA-256 of `event.canonical()` (the plaintext, so dedupe works on sealed events too).
    pub fingerprint: Fingerprint,
    /// The data key the payload is sealed with at rest, if it is.
    pub key_id: Option<String>,
    /// The id of the bearer token whose request caused the event (`bootstrap` for the node's own admin
    /// token); `None` for what terminals send (their signature is the evidence) and what the platform
    /// derives. Outside the fingerprint, so the same fact caused twice by different tokens stays one fact
    /// (the first cause is kept); bound into a sealed payload's associated data.
    pub caused_by: Option<String>,
    pub event: Event,
}

/// What is stored: the header in the clear, the payload plain or sealed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct StoredEnvelope {
    seq: u64,
    stream: String,
    event_type: String,
    schema_version: u16,
    recorded_at_ns: i64,
    fingerprint: Fingerprint,
    caused_by: Option<String>,
    payload: StoredPayload,
}

/// What a format 3 record stores: the same header with the stream and the fingerprint as tags.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct StoredEnvelopeKeyed {
    seq: u64,
    stream_tag: Tag,
    event_type: String,
    schema_version: u16,
    recorded_at_ns: i64,
    fingerprint_tag: Tag,
    caused_by: Option<String>,
    payload: SealedPayload,
}

/// The keyed hashes a format 3 record keeps of its stream and its fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderTags {
    pub stream: Tag,
    pub fingerprint: Tag,
}

impl HeaderTags {
    pub fn of(keyring: &Keyring, stream: &str, fp: &Fingerprint) -> HeaderTags {
        HeaderTags {
            stream: keyring.tag(&[b"stream\0", stream.as_bytes()].concat()),
            fingerprint: keyring.tag(&[b"fingerprint\0".as_slice(), fp].concat()),
        }
    }
}

/// The associated data of a format 3 sealed payload: what its header stores.
pub fn seal_aad_keyed(
    tags: &HeaderTags,
    event_type: &str,
    key_id: &str,
    caused_by: Option<&str>,
) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(40 + event_type.len() + key_id.len() + caused_by.map_or(0, str::len));
    aad.extend_from_slice(b"custodian record v3\0");
    aad.extend_from_slice(&tags.stream);
    aad.extend_from_slice(event_type.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&tags.fingerprint);
    aad.extend_from_slice(key_id.as_bytes());
    if let Some(c) = caused_by {
        aad.push(0);
        aad.extend_from_slice(c.as_bytes());
    }
    aad
}

/// What format 1 stored: the same without `caused_by`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct StoredEnvelopeV1 {
    seq: u64,
    stream: String,
    event_type: String,
    schema_version: u16,
    recorded_at_ns: i64,
    fingerprint: Fingerprint,
    payload: StoredPayload,
}

impl From<StoredEnvelopeV1> for StoredEnvelope {
    fn from(v1: StoredEnvelopeV1) -> Self {
        StoredEnvelope {
            seq: v1.seq,
            stream: v1.stream,
            event_type: v1.event_type,
            schema_version: v1.schema_version,
            recorded_at_ns: v1.recorded_at_ns,
            fingerprint: v1.fingerprint,
            caused_by: None,
            payload: v1.payload,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
// Stored records are encoded, not held: the plain variant's size does not cost memory anywhere.
#[allow(clippy::large_enum_variant)]
enum StoredPayload {
    Plain(Event),
    /// SM4-GCM of the rkyv bytes of the `Event` (see [`crate::keyring`]).
    Sealed(SealedPayload),
}

/// The associated data a sealed payload is bound to: its envelope's stream, type, fingerprint, key and,
/// when there is one, the token that caused it (absent, the bytes are those of format 1).
pub fn seal_aad(
    stream: &str,
    event_type: &str,
    fp: &Fingerprint,
    key_id: &str,
    caused_by: Option<&str>,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        stream.len() + event_type.len() + 35 + key_id.len() + caused_by.map_or(0, str::len),
    );
    aad.extend_from_slice(stream.as_bytes());
    aad.push(0);
    aad.extend_from_slice(event_type.as_bytes());
    aad.push(0);
    aad.extend_from_slice(fp);
    aad.extend_from_slice(key_id.as_bytes());
    if let Some(c) = caused_by {
        aad.push(0);
        aad.extend_from_slice(c.as_bytes());
    }
    aad
}

/// The rkyv bytes of an event, the plaintext of a sealed payload.
pub fn event_bytes(event: &Event) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(event)
        .expect("serialising an in-memory event cannot fail")
        .to_vec()
}

impl Envelope {
    /// `event` as the log would hold it at `seq`, recorded at `recorded_at_ns`: stream, type and fingerprint
    /// its own, the current schema version, not sealed and caused by nobody (what terminals send and the
    /// platform derives).
    pub fn plain(seq: u64, recorded_at_ns: i64, event: Event) -> Envelope {
        Envelope {
            seq,
            stream: event.stream(),
            event_type: event.event_type().to_owned(),
            schema_version: SCHEMA_VERSION,
            recorded_at_ns,
            fingerprint: fingerprint(&event.canonical().to_bytes()),
            key_id: None,
            caused_by: None,
            event,
        }
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// Encodes a record for `seq`: the event in the clear, or `sealed` (made by [`Keyring::seal`] over
    /// [`event_bytes`] with [`seal_aad`], given the same `caused_by`) in its place.
    ///
    /// With `tags` (and `sealed`, made over [`seal_aad_keyed`]), a format 3 record.
    pub fn encode(
        seq: u64,
        recorded_at_ns: i64,
        fingerprint: Fingerprint,
        event: Event,
        sealed: Option<SealedPayload>,
        caused_by: Option<String>,
        tags: Option<HeaderTags>,
    ) -> Vec<u8> {
        if let (Some(tags), Some(sealed)) = (tags, &sealed) {
            let stored = StoredEnvelopeKeyed {
                seq,
                stream_tag: tags.stream,
                event_type: event.event_type().to_owned(),
                schema_version: SCHEMA_VERSION,
                recorded_at_ns,
                fingerprint_tag: tags.fingerprint,
                caused_by,
                payload: sealed.clone(),
            };
            let body = rkyv::to_bytes::<rkyv::rancor::Error>(&stored)
                .expect("serialising an in-memory envelope cannot fail");
            return framed(RECORD_FORMAT_KEYED, &body);
        }
        let stored = StoredEnvelope {
            seq,
            stream: event.stream(),
            event_type: event.event_type().to_owned(),
            schema_version: SCHEMA_VERSION,
            recorded_at_ns,
            fingerprint,
            caused_by,
            payload: match sealed {
                Some(s) => StoredPayload::Sealed(s),
                None => StoredPayload::Plain(event),
            },
        };
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&stored)
            .expect("serialising an in-memory envelope cannot fail");
        framed(RECORD_FORMAT, &body)
    }

    /// Decodes, opens and checks a record stored under `seq`. A sealed payload needs `keyring`.
    pub fn decode(
        seq: u64,
        record: &[u8],
        keyring: Option<&Keyring>,
    ) -> Result<Envelope, CorruptRecord> {
        Ok(Self::decode_if(seq, record, keyring, &|_| true)?.expect("every event type is wanted"))
    }

    /// Like [`Envelope::decode`], but opens and checks the payload only when `want(event_type)`; other
    /// records pass the structural checks (format, CRC, encoding, sequence) and come back as `None`. For
    /// readers that need a few types, so that they do not pay for decrypting and hashing the rest.
    pub fn decode_if(
        seq: u64,
        record: &[u8],
        keyring: Option<&Keyring>,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Envelope>, CorruptRecord> {
        let corrupt = |reason: String| CorruptRecord { seq, reason };
        if record.len() < HEADER_LEN {
            return Err(corrupt(format!("record is {} bytes long", record.len())));
        }
        let format = record[0];
        if format != RECORD_FORMAT && format != RECORD_FORMAT_V1 && format != RECORD_FORMAT_KEYED {
            return Err(corrupt(format!("unknown record format {format}")));
        }
        let crc = u32::from_le_bytes(record[1..HEADER_LEN].try_into().expect("4 bytes"));
        let body = &record[HEADER_LEN..];
        if crc32fast::hash(body) != crc {
            return Err(corrupt("CRC mismatch: the record's bytes changed".into()));
        }
        let invalid = |e: rkyv::rancor::Error| corrupt(format!("invalid encoding: {e}"));
        if format == RECORD_FORMAT_KEYED {
            let stored =
                rkyv::from_bytes::<StoredEnvelopeKeyed, rkyv::rancor::Error>(&aligned(body))
                    .map_err(invalid)?;
            return Self::open_keyed(seq, stored, keyring, want);
        }
        let stored = if format == RECORD_FORMAT_V1 {
            rkyv::from_bytes::<StoredEnvelopeV1, rkyv::rancor::Error>(&aligned(body))
                .map_err(invalid)?
                .into()
        } else {
            rkyv::from_bytes::<StoredEnvelope, rkyv::rancor::Error>(&aligned(body))
                .map_err(invalid)?
        };
        if stored.seq != seq {
            return Err(corrupt(format!("envelope says seq {}", stored.seq)));
        }
        if !want(&stored.event_type) {
            return Ok(None);
        }
        let (event, key_id) = match stored.payload {
            StoredPayload::Plain(event) => (event, None),
            StoredPayload::Sealed(sealed) => {
                let keyring = keyring.ok_or_else(|| {
                    corrupt(format!(
                        "sealed with data key {} but this reader has no keyring",
                        sealed.key_id
                    ))
                })?;
                let aad = seal_aad(
                    &stored.stream,
                    &stored.event_type,
                    &stored.fingerprint,
                    &sealed.key_id,
                    stored.caused_by.as_deref(),
                );
                let plain = keyring
                    .open(&sealed, &aad)
                    .map_err(|e| corrupt(e.to_string()))?;
                let event = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&aligned(&plain))
                    .map_err(|e| corrupt(format!("invalid sealed payload: {e}")))?;
                (event, Some(sealed.key_id))
            }
        };
        if stored.event_type != event.event_type() || stored.stream != event.stream() {
            return Err(corrupt(format!(
                "header ({} on {}) does not match the payload ({} on {})",
                stored.event_type,
                stored.stream,
                event.event_type(),
                event.stream()
            )));
        }
        if fingerprint(&event.canonical().to_bytes()) != stored.fingerprint {
            return Err(corrupt(
                "fingerprint mismatch: the payload is not what was recorded".into(),
            ));
        }
        Ok(Some(Envelope {
            seq,
            stream: stored.stream,
            event_type: stored.event_type,
            schema_version: stored.schema_version,
            recorded_at_ns: stored.recorded_at_ns,
            fingerprint: stored.fingerprint,
            key_id,
            caused_by: stored.caused_by,
            event,
        }))
    }
}

impl Envelope {
    /// The rest of [`Envelope::decode_if`] for a format 3 record.
    fn open_keyed(
        seq: u64,
        stored: StoredEnvelopeKeyed,
        keyring: Option<&Keyring>,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Envelope>, CorruptRecord> {
        let corrupt = |reason: String| CorruptRecord { seq, reason };
        if stored.seq != seq {
            return Err(corrupt(format!("envelope says seq {}", stored.seq)));
        }
        if !want(&stored.event_type) {
            return Ok(None);
        }
        let keyring = keyring.ok_or_else(|| {
            corrupt("a sealed record, but this reader has no keyring (no master key)".into())
        })?;
        let tags = HeaderTags {
            stream: stored.stream_tag,
            fingerprint: stored.fingerprint_tag,
        };
        let aad = seal_aad_keyed(
            &tags,
            &stored.event_type,
            &stored.payload.key_id,
            stored.caused_by.as_deref(),
        );
        let key = keyring.get(&stored.payload.key_id).ok_or_else(|| {
            corrupt(format!(
                "sealed with data key {}, which is not known to this node",
                stored.payload.key_id
            ))
        })?;
        let plain = keyring
            .open(&stored.payload, &aad)
            .map_err(|e| corrupt(e.to_string()))?;
        let event = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&aligned(&plain))
            .map_err(|e| corrupt(format!("invalid sealed payload: {e}")))?;
        let stream = event.stream();
        let fp = fingerprint(&event.canonical().to_bytes());
        if stored.event_type != event.event_type() {
            return Err(corrupt(format!(
                "header ({}) does not match the payload ({})",
                stored.event_type,
                event.event_type()
            )));
        }
        let mine = HeaderTags::of(keyring, &stream, &fp);
        if mine.stream != tags.stream {
            return Err(corrupt(format!(
                "the header's stream is not the payload's ({stream})"
            )));
        }
        if mine.fingerprint != tags.fingerprint {
            return Err(corrupt(
                "fingerprint mismatch: the payload is not what was recorded".into(),
            ));
        }
        Ok(Some(Envelope {
            seq,
            stream,
            event_type: stored.event_type,
            schema_version: stored.schema_version,
            recorded_at_ns: stored.recorded_at_ns,
            fingerprint: fp,
            key_id: Some(key.id.clone()),
            caused_by: stored.caused_by,
            event,
        }))
    }

    /// The sealed payload of a record stored under `seq`, as stored (not opened), if it is sealed, with the
    /// tags of a format 3 record. Only the framing is checked here; [`Envelope::decode`] checks the rest.
    pub fn sealed_part(
        seq: u64,
        record: &[u8],
    ) -> Result<Option<(SealedPayload, Option<HeaderTags>)>, CorruptRecord> {
        let corrupt = |reason: String| CorruptRecord { seq, reason };
        let invalid = |e: rkyv::rancor::Error| corrupt(format!("invalid encoding: {e}"));
        if record.len() < HEADER_LEN {
            return Err(corrupt(format!("record is {} bytes long", record.len())));
        }
        let body = aligned(&record[HEADER_LEN..]);
        match record[0] {
            RECORD_FORMAT => {
                let stored = rkyv::from_bytes::<StoredEnvelope, rkyv::rancor::Error>(&body)
                    .map_err(invalid)?;
                Ok(match stored.payload {
                    StoredPayload::Plain(_) => None,
                    StoredPayload::Sealed(s) => Some((s, None)),
                })
            }
            RECORD_FORMAT_KEYED => {
                let stored = rkyv::from_bytes::<StoredEnvelopeKeyed, rkyv::rancor::Error>(&body)
                    .map_err(invalid)?;
                let tags = HeaderTags {
                    stream: stored.stream_tag,
                    fingerprint: stored.fingerprint_tag,
                };
                Ok(Some((stored.payload, Some(tags))))
            }
            other => Err(corrupt(format!(
                "not a record of format {RECORD_FORMAT} or {RECORD_FORMAT_KEYED} (format {other})"
            ))),
        }
    }

    /// The same record stored under `seq` instead of `from_seq` (a cluster log's owner publishes records
    /// under sequence 0 and every node files them under the next sequence of its copy). Only the framing
    /// and the sequence are checked and changed: the payload, sealed or not, is carried over byte for byte
    /// (the sequence is not part of a sealed payload's associated data).
    pub fn reseq(from_seq: u64, record: &[u8], seq: u64) -> Result<Vec<u8>, CorruptRecord> {
        let corrupt = |reason: String| CorruptRecord {
            seq: from_seq,
            reason,
        };
        if record.len() < HEADER_LEN {
            return Err(corrupt(format!("record is {} bytes long", record.len())));
        }
        let format = record[0];
        if format != RECORD_FORMAT && format != RECORD_FORMAT_KEYED {
            return Err(corrupt(format!(
                "record format {format} cannot be re-sequenced (only {RECORD_FORMAT} and {RECORD_FORMAT_KEYED})"
            )));
        }
        let crc = u32::from_le_bytes(record[1..HEADER_LEN].try_into().expect("4 bytes"));
        let body = &record[HEADER_LEN..];
        if crc32fast::hash(body) != crc {
            return Err(corrupt("CRC mismatch: the record's bytes changed".into()));
        }
        let invalid = |e: rkyv::rancor::Error| corrupt(format!("invalid encoding: {e}"));
        let wrong_seq = |s: u64| corrupt(format!("envelope says seq {s}"));
        // The same steps for either layout: decode, check the seq it says, give it the new one, encode.
        macro_rules! reseq_as {
            ($stored:ty) => {{
                let mut stored = rkyv::from_bytes::<$stored, rkyv::rancor::Error>(&aligned(body))
                    .map_err(invalid)?;
                if stored.seq != from_seq {
                    return Err(wrong_seq(stored.seq));
                }
                stored.seq = seq;
                rkyv::to_bytes::<rkyv::rancor::Error>(&stored)
            }};
        }
        let body = if format == RECORD_FORMAT_KEYED {
            reseq_as!(StoredEnvelopeKeyed)
        } else {
            reseq_as!(StoredEnvelope)
        }
        .expect("serialising an in-memory envelope cannot fail");
        Ok(framed(format, &body))
    }
}

/// `[format][crc32 of body][body]`.
fn framed(format: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(format);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// sled does not promise alignment; rkyv needs it.
fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
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
            manifest_id: None,
        })
    }

    const RECORDED_AT_NS: i64 = 1_795_000_001_000_000_000;

    fn record(seq: u64, event: &Event) -> Vec<u8> {
        let fp = fingerprint(&event.canonical().to_bytes());
        Envelope::encode(seq, RECORDED_AT_NS, fp, event.clone(), None, None, None)
    }

    fn sealed_record(seq: u64, event: &Event, ring: &Keyring) -> Vec<u8> {
        sealed_record_by(seq, event, ring, Some("0123456789abcdef0123456789abcdef"))
    }

    fn sealed_record_by(
        seq: u64,
        event: &Event,
        ring: &Keyring,
        caused_by: Option<&str>,
    ) -> Vec<u8> {
        let fp = fingerprint(&event.canonical().to_bytes());
        let key = ring.current("E-1").unwrap();
        let tags = HeaderTags::of(ring, &event.stream(), &fp);
        let aad = seal_aad_keyed(&tags, event.event_type(), &key.opaque_id, caused_by);
        let sealed = ring.seal(&key, &aad, &event_bytes(event));
        Envelope::encode(
            seq,
            RECORDED_AT_NS,
            fp,
            event.clone(),
            Some(sealed),
            caused_by.map(str::to_owned),
            Some(tags),
        )
    }

    /// A sealed record as format 2 wrote it: the stream, fingerprint and key id in the clear.
    fn sealed_record_v2(seq: u64, event: &Event, ring: &Keyring) -> Vec<u8> {
        let fp = fingerprint(&event.canonical().to_bytes());
        let key = ring.current("E-1").unwrap();
        let aad = seal_aad(&event.stream(), event.event_type(), &fp, &key.id, None);
        let mut sealed = ring.seal(&key, &aad, &event_bytes(event));
        sealed.key_id = key.id.clone();
        Envelope::encode(
            seq,
            RECORDED_AT_NS,
            fp,
            event.clone(),
            Some(sealed),
            None,
            None,
        )
    }

    #[test]
    fn format_2_sealed_records_are_still_read() {
        let event = reading(3, 152_300_000, Some("C-9"));
        let ring = ring();
        let record = sealed_record_v2(5, &event, &ring);
        assert_eq!(record[0], RECORD_FORMAT);
        let env = Envelope::decode(5, &record, Some(&ring)).unwrap();
        assert_eq!(env.event, event);
        assert_eq!(env.key_id.as_deref(), Some("E-1/1"));
        assert_eq!(Envelope::reseq(5, &record, 6).unwrap()[0], RECORD_FORMAT);
    }

    #[test]
    fn a_keyed_record_names_neither_its_stream_nor_its_key_nor_its_fingerprint() {
        let event = reading(3, 152_300_000, Some("C-9"));
        let ring = ring();
        let record = sealed_record(9, &event, &ring);
        assert_eq!(record[0], RECORD_FORMAT_KEYED);
        let fp = fingerprint(&event.canonical().to_bytes());
        for needle in [
            b"T-1".as_slice(),
            b"terminal:",
            b"E-1",
            b"E-1/1",
            fp.as_slice(),
        ] {
            assert!(
                !record.windows(needle.len()).any(|w| w == needle),
                "{:?} in the record",
                String::from_utf8_lossy(needle)
            );
        }
        // Opened, it says what it is: the stream, the readable key id, the public fingerprint.
        let env = Envelope::decode(9, &record, Some(&ring)).unwrap();
        assert_eq!(env.stream, "terminal:T-1");
        assert_eq!(env.key_id.as_deref(), Some("E-1/1"));
        assert_eq!(env.fingerprint, fp);
        // A header moved onto another record's payload does not open: the tags are bound into it.
        let other = reading(4, 152_300_000, Some("C-9"));
        let mut stored = rkyv::from_bytes::<StoredEnvelopeKeyed, rkyv::rancor::Error>(&aligned(
            &sealed_record(9, &other, &ring)[HEADER_LEN..],
        ))
        .unwrap();
        let mine = rkyv::from_bytes::<StoredEnvelopeKeyed, rkyv::rancor::Error>(&aligned(
            &record[HEADER_LEN..],
        ))
        .unwrap();
        stored.fingerprint_tag = mine.fingerprint_tag;
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&stored).unwrap();
        assert!(Envelope::decode(9, &framed(RECORD_FORMAT_KEYED, &body), Some(&ring)).is_err());
    }

    /// A record as format 1 wrote it, before `caused_by`.
    fn v1_record(seq: u64, event: &Event) -> Vec<u8> {
        let stored = StoredEnvelopeV1 {
            seq,
            stream: event.stream(),
            event_type: event.event_type().to_owned(),
            schema_version: SCHEMA_VERSION,
            recorded_at_ns: RECORDED_AT_NS,
            fingerprint: fingerprint(&event.canonical().to_bytes()),
            payload: StoredPayload::Plain(event.clone()),
        };
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&stored).unwrap();
        let mut out = vec![RECORD_FORMAT_V1];
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn format_1_records_are_still_read_without_a_cause() {
        let event = reading(3, 152_300_000, Some("C-9"));
        let env = Envelope::decode(4, &v1_record(4, &event), None).unwrap();
        assert_eq!(env.event, event);
        assert_eq!(env.caused_by, None);
        assert_eq!(env.recorded_at_ns, RECORDED_AT_NS);
    }

    #[test]
    fn the_cause_of_a_sealed_record_is_bound_to_its_payload() {
        let event = reading(3, 152_300_000, Some("C-9"));
        let ring = ring();
        let token = "0123456789abcdef0123456789abcdef";
        let record = sealed_record_by(2, &event, &ring, Some(token));
        let env = Envelope::decode(2, &record, Some(&ring)).unwrap();
        assert_eq!(env.caused_by.as_deref(), Some(token));
        // The same payload, re-labelled with another cause (CRC made to match): refused.
        let fp = fingerprint(&event.canonical().to_bytes());
        let key = ring.current("E-1").unwrap();
        let tags = HeaderTags::of(&ring, &event.stream(), &fp);
        let aad = seal_aad_keyed(&tags, event.event_type(), &key.opaque_id, Some(token));
        let sealed = ring.seal(&key, &aad, &event_bytes(&event));
        let relabelled = Envelope::encode(
            2,
            RECORDED_AT_NS,
            fp,
            event.clone(),
            Some(sealed),
            Some("bootstrap".into()),
            Some(tags),
        );
        assert!(Envelope::decode(2, &relabelled, Some(&ring)).is_err());
        let none = sealed_record_by(2, &event, &ring, None);
        assert_eq!(
            Envelope::decode(2, &none, Some(&ring)).unwrap().caused_by,
            None
        );
    }

    fn ring() -> Keyring {
        let ring = Keyring::new([3; 16], std::sync::Arc::new(crate::crypto::OsEntropy));
        ring.install(&ring.issue("E-1", 1)).unwrap();
        ring
    }

    #[test]
    fn every_single_bit_flip_is_detected_plain_or_sealed() {
        let event = reading(3, 152_300_000, Some("C-9"));
        let ring = ring();
        for (record, sealed) in [
            (record(7, &event), false),
            (sealed_record(7, &event, &ring), true),
        ] {
            let env = Envelope::decode(7, &record, Some(&ring)).unwrap();
            assert_eq!(env.event, event);
            assert_eq!(env.key_id.is_some(), sealed);
            assert_eq!(env.recorded_at_ns, RECORDED_AT_NS);
            for byte in 0..record.len() {
                for bit in 0..8 {
                    let mut flipped = record.clone();
                    flipped[byte] ^= 1 << bit;
                    assert!(
                        Envelope::decode(7, &flipped, Some(&ring)).is_err(),
                        "flip of bit {bit} in byte {byte} went unnoticed (sealed: {sealed})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_sealed_record_does_not_hold_its_plaintext_and_needs_the_keyring() {
        let event = reading(3, 152_300_000, Some("CONTAINER-PLAINTEXT-MARKER"));
        let ring = ring();
        let sealed = sealed_record(1, &event, &ring);
        let needle = b"CONTAINER-PLAINTEXT-MARKER";
        assert!(!sealed.windows(needle.len()).any(|w| w == needle));
        assert!(record(1, &event).windows(needle.len()).any(|w| w == needle));
        let err = Envelope::decode(1, &sealed, None).unwrap_err();
        assert!(err.reason.contains("no keyring"), "{err}");
        let stranger = Keyring::new([4; 16], std::sync::Arc::new(crate::crypto::OsEntropy));
        let err = Envelope::decode(1, &sealed, Some(&stranger)).unwrap_err();
        assert!(err.reason.contains("not known"), "{err}");
    }

    #[test]
    fn reseq_moves_a_record_to_another_sequence_and_keeps_its_payload() {
        let ring = ring();
        let event = reading(3, 152_300_000, Some("C-9"));
        for rec in [record(0, &event), sealed_record(0, &event, &ring)] {
            let moved = Envelope::reseq(0, &rec, 42).unwrap();
            let env = Envelope::decode(42, &moved, Some(&ring)).unwrap();
            assert_eq!(env.event, event);
            assert_eq!(env.recorded_at_ns, RECORDED_AT_NS);
            assert!(Envelope::decode(0, &moved, Some(&ring)).is_err());
            // The claimed source sequence is checked, and so are the bytes.
            assert!(Envelope::reseq(1, &rec, 42).is_err());
            let mut flipped = rec.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(Envelope::reseq(0, &flipped, 42).is_err());
        }
    }

    #[test]
    fn a_record_under_the_wrong_sequence_is_corrupt() {
        let record = record(7, &reading(3, 1, None));
        let err = Envelope::decode(8, &record, None).unwrap_err();
        assert!(err.reason.contains("seq 7"), "{err}");
    }

    #[test]
    fn a_wrong_fingerprint_is_caught_even_with_a_valid_crc() {
        let event = reading(3, 1, None);
        let mut fp = fingerprint(&event.canonical().to_bytes());
        fp[0] ^= 1;
        let err = Envelope::decode(
            1,
            &Envelope::encode(1, 0, fp, event, None, None, None),
            None,
        )
        .unwrap_err();
        assert!(err.reason.contains("fingerprint"), "{err}");
    }

    #[test]
    fn truncated_records_are_corrupt() {
        let record = record(1, &reading(3, 1, None));
        for len in 0..record.len() {
            assert!(
                Envelope::decode(1, &record[..len], None).is_err(),
                "len {len}"
            );
        }
    }

    proptest! {
        /// Encoding then decoding gives back the same envelope for any reading.
        #[test]
        fn records_round_trip(seq in 1u64..u64::MAX, rseq in 1u64..(1 << 53), value in 0i64..1_000_000_000_000, c in proptest::option::of("[A-Za-z0-9._-]{1,64}")) {
            let event = reading(rseq, value, c.as_deref());
            let env = Envelope::decode(seq, &record(seq, &event), None).unwrap();
            prop_assert_eq!(env.seq, seq);
            prop_assert_eq!(env.event, event);
        }
    }
}

//! The domain events that the log stores, their streams, dedupe keys and canonical forms.

use rkyv::{Archive, Deserialize, Serialize};
use serde::Deserialize as SerdeDeserialize;

use crate::Rejection;
use crate::anomaly::AnomalyDetected;
use crate::anomaly::ReadingRef;
use crate::canonical::Jcs;
pub use crate::dedupe::DedupeKey;
use crate::ids::{ContainerId, EnterpriseId, ManifestId, TerminalId};
pub use crate::limits::{
    AUTHOR_CHARS_MAX, CAPACITY_KG_MAX, NAME_CHARS_MAX, NOTE_CHARS_MAX, REPORT_INTERVAL_S_MAX,
};
use crate::reading::{Reading, ReadingKind, format_utc_ns};

/// The schema version of every event type defined here. Bump it for a type whose fields change, and keep
/// reading the old version.
pub const SCHEMA_VERSION: u16 = 1;

/// Why a free text is refused ([`check_text`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must have 1 ..= {max} characters")]
    Length { max: usize },
    #[error(
        "contains the control character U+{0:04X}; only tab and line breaks are allowed in text"
    )]
    Control(u32),
}

/// Checks a free text a person typed (a name, a note, an author): 1 ..= `max` characters after trimming,
/// and no control characters but tab, line feed and carriage return (and none of those where `one_line`).
/// NUL in particular: PostgreSQL's `text` cannot hold it, so an event carrying one would stall the read
/// model that stores it.
pub fn check_text(s: &str, max: usize, one_line: bool) -> Result<(), TextError> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(TextError::Length { max });
    }
    match s
        .chars()
        .find(|&c| c.is_control() && (one_line || !matches!(c, '\t' | '\n' | '\r')))
    {
        Some(c) => Err(TextError::Control(c as u32)),
        None => Ok(()),
    }
}

/// Every fact the platform records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Event {
    EnterpriseRegistered(EnterpriseRegistered),
    TerminalRegistered(TerminalRegistered),
    ReadingRecorded(Reading),
    /// A reading whose `(terminal, seq)` was already recorded with other content: kept as evidence of a
    /// terminal rewriting its history, never counted as a reading.
    ReadingConflicted(ReadingConflicted),
    /// A terminal's signing key replaced by a new one; the old key keeps verifying readings measured
    /// before `effective_from_ns`.
    TerminalKeyRotated(TerminalKeyRotated),
    /// A terminal key that verifies nothing any more.
    TerminalKeyRevoked(TerminalKeyRevoked),
    /// A signed upload body and its signature, kept as evidence a third party can re-verify. Stored in the
    /// same atomic append as the readings it carried.
    UploadSigned(UploadSigned),
    /// A data key for sealing events at rest, wrapped by the node's master key.
    DataKeyIssued(DataKeyIssued),
    /// A rule of the domain core found an irregularity (derived, never sent by a terminal).
    AnomalyDetected(AnomalyDetected),
    /// A transfer order opened by an administrator: containers from a generator to a receiver.
    ManifestOpened(ManifestOpened),
    /// A manifest's containers were all weighed out (`dispatched`) or all weighed in at the receiver
    /// (`received`, which closes it). Derived.
    ManifestProgressed(ManifestProgressed),
    /// The node's (or the simulator's) clock, appended at an interval: time-driven rules decide only on
    /// these, so a replay decides exactly as the live run did.
    ClockTicked(ClockTicked),
    /// A reading that a statistical filter (Hampel, over the terminal's recent readings) found out of line:
    /// flagged, never dropped. Derived.
    ReadingSuspect(ReadingSuspect),
    /// An inspection note (free text) filed about an enterprise or one of its containers.
    NoteFiled(NoteFiled),
    /// A bearer token issued to a regulator (or an administrator); the token itself is never stored.
    TokenIssued(TokenIssued),
    /// A token that no longer opens anything.
    TokenRevoked(TokenRevoked),
    /// A regulator or administrator acknowledged (seen, being handled) or resolved an anomaly.
    AnomalyHandled(AnomalyHandled),
    /// An edge node (a site's store-and-forward gateway) the platform accepts forwarded batches from.
    EdgeRegistered(EdgeRegistered),
    /// An anomaly an edge node detected locally and sent ahead of its backlog. Its identity is the one the
    /// platform derives itself once the readings arrive, so the two are recognised as one anomaly.
    AnomalyReported(AnomalyReported),
}

/// How many enterprises one edge may serve.
pub const EDGE_ENTERPRISES_MAX: usize = 1_000;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EdgeRegistered {
    pub id: String,
    /// The edge's SM2 public key (SubjectPublicKeyInfo DER): it signs the batches it forwards.
    pub public_key_der: Vec<u8>,
    /// The enterprises whose terminals the edge may forward for; sorted, without repeats.
    pub enterprise_ids: Vec<EnterpriseId>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AnomalyReported {
    pub edge_id: String,
    /// As the edge derived it: `cause_seq` and `evidence_seqs` are sequences of the edge's log.
    pub anomaly: AnomalyDetected,
}

named_enum! {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum AnomalyState {
        Acknowledged => "acknowledged",
        Resolved => "resolved",
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AnomalyHandled {
    /// Hex of the anomaly's id.
    pub anomaly_id: String,
    /// The enterprise the anomaly belongs to (its data key seals this event).
    pub enterprise_id: Option<EnterpriseId>,
    pub state: AnomalyState,
    pub note: String,
    /// The token that did it (`bootstrap` for the node's admin token).
    pub by: String,
    pub at_ns: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenIssued {
    pub id: String,
    /// `national`, `province`, `enterprise` or `admin`.
    pub tier: String,
    /// The province code (`440000`) or enterprise id the token is confined to.
    pub scope: Option<String>,
    pub issued_at_ns: i64,
    pub expires_at_ns: i64,
    /// The token that asked for this one (`bootstrap` for the node's admin token).
    pub issued_by: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenRevoked {
    pub id: String,
    pub revoked_at_ns: i64,
    pub revoked_by: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ManifestOpened {
    pub id: ManifestId,
    pub generator_id: EnterpriseId,
    pub receiver_id: EnterpriseId,
    pub waste_code: String,
    /// Sorted, without repeats.
    pub container_ids: Vec<ContainerId>,
    pub declared_mg: i64,
    /// Free text the administrator filed with the order (searchable), at most `NOTE_CHARS_MAX` characters.
    pub notes: Option<String>,
}

/// An inspection note filed by a person about an enterprise, optionally about one of its containers
/// (`POST /v1/notes`). Notes are facts like any other: kept in the log, sealed under the enterprise's data
/// key, indexed for search. They have no dedupe key: filing the same words twice is two notes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NoteFiled {
    pub enterprise_id: EnterpriseId,
    pub container_id: Option<ContainerId>,
    pub author: String,
    pub text: String,
    /// When the node accepted it, UTC ns.
    pub filed_at_ns: i64,
}

named_enum! {
    #[derive(serde::Serialize, serde::Deserialize, PartialOrd, Ord, Hash)]
    pub enum ManifestStatus {
        Dispatched => "dispatched",
        Received => "received",
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ManifestProgressed {
    pub manifest_id: ManifestId,
    pub status: ManifestStatus,
    /// The sum of the `transfer_out` weighings of the manifest's containers.
    pub dispatched_mg: i64,
    /// The sum of the `transfer_in` weighings, once received.
    pub received_mg: Option<i64>,
    /// The event whose arrival completed the step.
    pub cause_seq: u64,
    /// The weighings summed, sorted.
    pub causes: Vec<ReadingRef>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClockTicked {
    /// UTC nanoseconds since the Unix epoch.
    pub at_ns: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReadingSuspect {
    pub terminal_id: TerminalId,
    pub seq: u64,
    pub kind: ReadingKind,
    pub value: i64,
    /// The median of the terminal's recent readings of this kind, before this one.
    pub window_median: i64,
    /// Their median absolute deviation (floored, see `domain::cleaning`).
    pub window_mad: i64,
    /// The event that recorded the reading.
    pub cause_seq: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EnterpriseRegistered {
    pub id: EnterpriseId,
    pub name: String,
    /// 6-digit administrative division code of the province, ending in 0000 (e.g. 440000).
    pub province_code: String,
    /// 6-digit code of the city within that province (e.g. 440100).
    pub city_code: String,
    pub storage_capacity_mg: i64,
}

named_enum! {
    /// What a terminal is.
    #[derive(serde::Serialize, serde::Deserialize, PartialOrd, Ord, Hash)]
    pub enum TerminalKind {
        Scale => "scale",
        LoadCell => "load_cell",
        StorageSensor => "storage_sensor",
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TerminalRegistered {
    pub id: TerminalId,
    pub enterprise_id: EnterpriseId,
    pub kind: TerminalKind,
    pub capacity_mg: i64,
    pub report_interval_s: u32,
    /// The terminal's SM2 public key (SubjectPublicKeyInfo DER), if it signs its uploads.
    pub public_key: Option<Vec<u8>>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TerminalKeyRotated {
    pub terminal_id: TerminalId,
    /// 1 for the first change of this terminal's keys, 2 for the next, … (rotations and revocations count
    /// alike); the dedupe slot, so two concurrent changes cannot both take the same place.
    pub change: u64,
    /// SubjectPublicKeyInfo DER of the new SM2 key.
    pub public_key: Vec<u8>,
    /// From this instant (UTC ns) on, readings must be signed with the new key.
    pub effective_from_ns: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TerminalKeyRevoked {
    pub terminal_id: TerminalId,
    pub change: u64,
    /// SHA-256 of the revoked key's SubjectPublicKeyInfo DER.
    pub key_fingerprint: [u8; 32],
    pub revoked_at_ns: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UploadSigned {
    pub terminal_id: TerminalId,
    /// SHA-256 of the SubjectPublicKeyInfo DER of the key that verified the signature.
    pub key_fingerprint: [u8; 32],
    /// The request body exactly as received.
    pub body: Vec<u8>,
    /// The DER SM2 signature (SM3, user id 1234567812345678) over `body`.
    pub signature: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DataKeyIssued {
    /// Whose data the key seals: an enterprise id, or `platform` for events of no enterprise.
    pub scope: String,
    /// 1, 2, … per scope; the newest generation seals, every generation opens.
    pub generation: u32,
    /// The 16-byte SM4 data key sealed with SM4-GCM under the master key (nonce ‖ ciphertext ‖ tag).
    pub wrapped_key: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReadingConflicted {
    /// The reading as this resend carried it.
    pub reading: Reading,
    /// The event that first recorded this `(terminal, seq)`.
    pub original_event_seq: u64,
}

impl Event {
    /// Every name [`Event::event_type`] answers.
    pub const TYPES: [&'static str; 19] = [
        "EnterpriseRegistered",
        "TerminalRegistered",
        "ReadingRecorded",
        "ReadingConflicted",
        "TerminalKeyRotated",
        "TerminalKeyRevoked",
        "UploadSigned",
        "DataKeyIssued",
        "AnomalyDetected",
        "ManifestOpened",
        "ManifestProgressed",
        "ClockTicked",
        "ReadingSuspect",
        "NoteFiled",
        "TokenIssued",
        "TokenRevoked",
        "AnomalyHandled",
        "EdgeRegistered",
        "AnomalyReported",
    ];

    /// The event type's name as shown over the API.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::EnterpriseRegistered(_) => "EnterpriseRegistered",
            Event::TerminalRegistered(_) => "TerminalRegistered",
            Event::ReadingRecorded(_) => "ReadingRecorded",
            Event::ReadingConflicted(_) => "ReadingConflicted",
            Event::TerminalKeyRotated(_) => "TerminalKeyRotated",
            Event::TerminalKeyRevoked(_) => "TerminalKeyRevoked",
            Event::UploadSigned(_) => "UploadSigned",
            Event::DataKeyIssued(_) => "DataKeyIssued",
            Event::AnomalyDetected(_) => "AnomalyDetected",
            Event::ManifestOpened(_) => "ManifestOpened",
            Event::ManifestProgressed(_) => "ManifestProgressed",
            Event::ClockTicked(_) => "ClockTicked",
            Event::ReadingSuspect(_) => "ReadingSuspect",
            Event::NoteFiled(_) => "NoteFiled",
            Event::TokenIssued(_) => "TokenIssued",
            Event::TokenRevoked(_) => "TokenRevoked",
            Event::AnomalyHandled(_) => "AnomalyHandled",
            Event::EdgeRegistered(_) => "EdgeRegistered",
            Event::AnomalyReported(_) => "AnomalyReported",
        }
    }

    /// The stream the event belongs to: the aggregate it is about.
    pub fn stream(&self) -> String {
        match self {
            Event::EnterpriseRegistered(e) => format!("enterprise:{}", e.id),
            Event::TerminalRegistered(t) => format!("terminal:{}", t.id),
            Event::ReadingRecorded(r) => format!("terminal:{}", r.terminal_id),
            Event::ReadingConflicted(c) => format!("terminal:{}", c.reading.terminal_id),
            Event::TerminalKeyRotated(k) => format!("terminal:{}", k.terminal_id),
            Event::TerminalKeyRevoked(k) => format!("terminal:{}", k.terminal_id),
            Event::UploadSigned(u) => format!("terminal:{}", u.terminal_id),
            Event::DataKeyIssued(d) => format!("keys:{}", d.scope),
            Event::AnomalyDetected(a) => a.subject.clone(),
            Event::ManifestOpened(m) => format!("manifest:{}", m.id),
            Event::ManifestProgressed(m) => format!("manifest:{}", m.manifest_id),
            Event::ClockTicked(_) => "clock".to_owned(),
            Event::ReadingSuspect(r) => format!("terminal:{}", r.terminal_id),
            Event::NoteFiled(n) => format!("enterprise:{}", n.enterprise_id),
            Event::TokenIssued(t) => format!("token:{}", t.id),
            Event::TokenRevoked(t) => format!("token:{}", t.id),
            Event::AnomalyHandled(h) => format!("anomaly:{}", h.anomaly_id),
            Event::EdgeRegistered(e) => format!("edge:{}", e.id),
            Event::AnomalyReported(r) => r.anomaly.subject.clone(),
        }
    }

    /// The identity under which the log deduplicates this event, if it has one. Two events with the same key
    /// and the same fingerprint are one fact; with different fingerprints they conflict.
    pub fn dedupe_key(&self) -> Option<DedupeKey> {
        match self {
            Event::EnterpriseRegistered(e) => Some(dedupe_key_enterprise(&e.id)),
            Event::TerminalRegistered(t) => Some(dedupe_key_terminal(&t.id)),
            Event::ReadingRecorded(r) => Some(dedupe_key_reading(&r.terminal_id, r.seq)),
            // Evidence is deduplicated by the log under the conflicting reading's key and fingerprint.
            Event::ReadingConflicted(_) => None,
            Event::TerminalKeyRotated(k) => {
                Some(dedupe_key_terminal_keys(&k.terminal_id, k.change))
            }
            Event::TerminalKeyRevoked(k) => {
                Some(dedupe_key_terminal_keys(&k.terminal_id, k.change))
            }
            Event::UploadSigned(u) => Some(DedupeKey {
                space: format!(
                    "upload/{}/{}",
                    u.terminal_id,
                    hex::encode(crate::fingerprint::fingerprint(&u.body))
                )
                .into_bytes(),
                slot: 0,
            }),
            Event::DataKeyIssued(d) => Some(dedupe_key_data_key(&d.scope, d.generation)),
            Event::AnomalyDetected(a) => Some(a.dedupe_key()),
            Event::ManifestOpened(m) => Some(DedupeKey {
                space: [b"manifest/".as_slice(), m.id.as_str().as_bytes()].concat(),
                slot: 0,
            }),
            Event::ManifestProgressed(m) => Some(DedupeKey {
                space: [
                    b"manifest-progress/".as_slice(),
                    m.manifest_id.as_str().as_bytes(),
                    b"/",
                ]
                .concat(),
                slot: m.status as u64,
            }),
            // One tick per instant; ticks before 1970 do not exist.
            Event::ClockTicked(t) => Some(DedupeKey {
                space: b"clock/".to_vec(),
                slot: t.at_ns.max(0) as u64,
            }),
            Event::ReadingSuspect(r) => Some(DedupeKey {
                space: [
                    b"suspect/".as_slice(),
                    r.terminal_id.as_str().as_bytes(),
                    b"/",
                ]
                .concat(),
                slot: r.seq,
            }),
            Event::NoteFiled(_) => None,
            Event::TokenIssued(t) => Some(DedupeKey {
                space: [b"token/".as_slice(), t.id.as_bytes(), b"/"].concat(),
                slot: 0,
            }),
            Event::TokenRevoked(t) => Some(DedupeKey {
                space: [b"token/".as_slice(), t.id.as_bytes(), b"/"].concat(),
                slot: 1,
            }),
            // Every acknowledgement or resolution is its own fact (notes differ, people differ).
            Event::AnomalyHandled(_) => None,
            Event::EdgeRegistered(e) => Some(dedupe_key_edge(&e.id)),
            // One report per anomaly, whichever edge sent it first.
            Event::AnomalyReported(r) => Some(DedupeKey {
                space: format!("anomaly-report/{}", hex::encode(r.anomaly.anomaly_id)).into_bytes(),
                slot: 0,
            }),
        }
    }

    /// Whether the log records evidence when this event conflicts with the one first stored under its
    /// dedupe key: whether [`Event::conflict_evidence`] gives any.
    pub fn keeps_conflict_evidence(&self) -> bool {
        matches!(self, Event::ReadingRecorded(_))
    }

    /// What the log records when this event conflicts with the one first stored under its dedupe key:
    /// evidence for readings, nothing for registrations (a conflicting registration is just refused).
    pub fn conflict_evidence(&self, original_event_seq: u64) -> Option<Event> {
        match self {
            Event::ReadingRecorded(r) => Some(Event::ReadingConflicted(ReadingConflicted {
                reading: r.clone(),
                original_event_seq,
            })),
            _ => None,
        }
    }

    /// The canonical JSON (RFC 8785) of the payload; its SHA-256 is the event's fingerprint.
    pub fn canonical(&self) -> Jcs {
        match self {
            Event::EnterpriseRegistered(e) => Jcs::obj(vec![
                ("id", Jcs::str(e.id.as_str())),
                ("name", Jcs::str(e.name.as_str())),
                ("province_code", Jcs::str(e.province_code.as_str())),
                ("city_code", Jcs::str(e.city_code.as_str())),
                ("storage_capacity_mg", Jcs::Int(e.storage_capacity_mg)),
            ]),
            Event::TerminalRegistered(t) => Jcs::obj(vec![
                ("id", Jcs::str(t.id.as_str())),
                ("enterprise_id", Jcs::str(t.enterprise_id.as_str())),
                ("kind", Jcs::str(t.kind.name())),
                ("capacity_mg", Jcs::Int(t.capacity_mg)),
                (
                    "report_interval_s",
                    Jcs::Int(i64::from(t.report_interval_s)),
                ),
            ]),
            Event::ReadingRecorded(r) => r.canonical(),
            Event::ReadingConflicted(c) => Jcs::obj(vec![
                ("reading", c.reading.canonical()),
                ("original_event_seq", Jcs::Int(c.original_event_seq as i64)),
            ]),
            Event::TerminalKeyRotated(k) => Jcs::obj(vec![
                ("terminal_id", Jcs::str(k.terminal_id.as_str())),
                ("change", Jcs::Int(k.change as i64)),
                ("public_key", b64(&k.public_key)),
                (
                    "effective_from",
                    Jcs::Str(format_utc_ns(k.effective_from_ns)),
                ),
            ]),
            Event::TerminalKeyRevoked(k) => Jcs::obj(vec![
                ("terminal_id", Jcs::str(k.terminal_id.as_str())),
                ("change", Jcs::Int(k.change as i64)),
                ("key_fingerprint", Jcs::Str(hex::encode(k.key_fingerprint))),
                ("revoked_at", Jcs::Str(format_utc_ns(k.revoked_at_ns))),
            ]),
            Event::UploadSigned(u) => Jcs::obj(vec![
                ("terminal_id", Jcs::str(u.terminal_id.as_str())),
                ("key_fingerprint", Jcs::Str(hex::encode(u.key_fingerprint))),
                ("body", b64(&u.body)),
                ("signature", b64(&u.signature)),
            ]),
            Event::DataKeyIssued(d) => Jcs::obj(vec![
                ("scope", Jcs::str(d.scope.as_str())),
                ("generation", Jcs::Int(i64::from(d.generation))),
                ("wrapped_key", b64(&d.wrapped_key)),
            ]),
            Event::AnomalyDetected(a) => a.canonical(),
            Event::ManifestOpened(m) => Jcs::obj(vec![
                ("id", Jcs::str(m.id.as_str())),
                ("generator_id", Jcs::str(m.generator_id.as_str())),
                ("receiver_id", Jcs::str(m.receiver_id.as_str())),
                ("waste_code", Jcs::str(m.waste_code.as_str())),
                (
                    "container_ids",
                    Jcs::Arr(
                        m.container_ids
                            .iter()
                            .map(|c| Jcs::str(c.as_str()))
                            .collect(),
                    ),
                ),
                ("declared_mg", Jcs::Int(m.declared_mg)),
            ])
            .with_optional("notes", m.notes.as_deref().map(Jcs::str)),
            Event::ManifestProgressed(m) => Jcs::obj(vec![
                ("manifest_id", Jcs::str(m.manifest_id.as_str())),
                ("status", Jcs::str(m.status.name())),
                ("dispatched_mg", Jcs::Int(m.dispatched_mg)),
                ("cause_seq", Jcs::Int(m.cause_seq as i64)),
                (
                    "causes",
                    Jcs::Arr(m.causes.iter().map(|c| Jcs::Str(c.text())).collect()),
                ),
            ])
            .with_optional("received_mg", m.received_mg.map(Jcs::Int)),
            Event::ClockTicked(t) => Jcs::obj(vec![("at", Jcs::Str(format_utc_ns(t.at_ns)))]),
            Event::ReadingSuspect(r) => Jcs::obj(vec![
                ("terminal_id", Jcs::str(r.terminal_id.as_str())),
                ("seq", Jcs::Int(r.seq as i64)),
                ("kind", Jcs::str(r.kind.name())),
                ("value", Jcs::Int(r.value)),
                ("unit", Jcs::str(r.kind.resolution_unit())),
                ("window_median", Jcs::Int(r.window_median)),
                ("window_mad", Jcs::Int(r.window_mad)),
                ("cause_seq", Jcs::Int(r.cause_seq as i64)),
            ]),
            Event::NoteFiled(n) => Jcs::obj(vec![
                ("enterprise_id", Jcs::str(n.enterprise_id.as_str())),
                ("author", Jcs::str(n.author.as_str())),
                ("text", Jcs::str(n.text.as_str())),
                ("filed_at", Jcs::Str(format_utc_ns(n.filed_at_ns))),
            ])
            .with_optional(
                "container_id",
                n.container_id.as_ref().map(|c| Jcs::str(c.as_str())),
            ),
            Event::TokenIssued(t) => Jcs::obj(vec![
                ("id", Jcs::str(t.id.as_str())),
                ("tier", Jcs::str(t.tier.as_str())),
                ("issued_at", Jcs::Str(format_utc_ns(t.issued_at_ns))),
                ("expires_at", Jcs::Str(format_utc_ns(t.expires_at_ns))),
                ("issued_by", Jcs::str(t.issued_by.as_str())),
            ])
            .with_optional("scope", t.scope.as_deref().map(Jcs::str)),
            Event::TokenRevoked(t) => Jcs::obj(vec![
                ("id", Jcs::str(t.id.as_str())),
                ("revoked_at", Jcs::Str(format_utc_ns(t.revoked_at_ns))),
                ("revoked_by", Jcs::str(t.revoked_by.as_str())),
            ]),
            Event::AnomalyHandled(h) => Jcs::obj(vec![
                ("anomaly_id", Jcs::str(h.anomaly_id.as_str())),
                ("state", Jcs::str(h.state.name())),
                ("note", Jcs::str(h.note.as_str())),
                ("by", Jcs::str(h.by.as_str())),
                ("at", Jcs::Str(format_utc_ns(h.at_ns))),
            ])
            .with_optional(
                "enterprise_id",
                h.enterprise_id.as_ref().map(|e| Jcs::str(e.as_str())),
            ),
            Event::EdgeRegistered(e) => Jcs::obj(vec![
                ("id", Jcs::str(e.id.as_str())),
                ("public_key", Jcs::Str(hex::encode(&e.public_key_der))),
                (
                    "enterprise_ids",
                    Jcs::Arr(
                        e.enterprise_ids
                            .iter()
                            .map(|i| Jcs::str(i.as_str()))
                            .collect(),
                    ),
                ),
            ]),
            Event::AnomalyReported(r) => Jcs::obj(vec![
                ("edge_id", Jcs::str(r.edge_id.as_str())),
                ("anomaly", r.anomaly.canonical()),
            ]),
        }
    }
}

pub fn dedupe_key_enterprise(id: &EnterpriseId) -> DedupeKey {
    DedupeKey {
        space: [b"enterprise/".as_slice(), id.as_str().as_bytes()].concat(),
        slot: 0,
    }
}

/// The identity of edge `id`'s registration.
pub fn dedupe_key_edge(id: &str) -> DedupeKey {
    DedupeKey {
        space: [b"edge/".as_slice(), id.as_bytes(), b"/"].concat(),
        slot: 0,
    }
}

pub fn dedupe_key_terminal(id: &TerminalId) -> DedupeKey {
    DedupeKey {
        space: [b"terminal/".as_slice(), id.as_str().as_bytes()].concat(),
        slot: 0,
    }
}

/// `terminal-keys/<terminal>/` at slot `change`: the n-th change of a terminal's keys.
pub fn dedupe_key_terminal_keys(terminal: &TerminalId, change: u64) -> DedupeKey {
    DedupeKey {
        space: [
            b"terminal-keys/".as_slice(),
            terminal.as_str().as_bytes(),
            b"/",
        ]
        .concat(),
        slot: change,
    }
}

/// `data-key/<scope>/` at slot `generation`.
pub fn dedupe_key_data_key(scope: &str, generation: u32) -> DedupeKey {
    DedupeKey {
        space: [b"data-key/".as_slice(), scope.as_bytes(), b"/"].concat(),
        slot: u64::from(generation),
    }
}

fn b64(bytes: &[u8]) -> Jcs {
    use base64::Engine as _;
    Jcs::Str(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `reading/<terminal>/` at slot `seq`: ids never contain `/`, so spaces of different terminals differ.
pub fn dedupe_key_reading(terminal: &TerminalId, seq: u64) -> DedupeKey {
    DedupeKey {
        space: [b"reading/".as_slice(), terminal.as_str().as_bytes(), b"/"].concat(),
        slot: seq,
    }
}

/// `POST /v1/enterprises` as sent.
#[derive(SerdeDeserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawEnterprise {
    pub id: String,
    pub name: String,
    pub province_code: String,
    pub city_code: String,
    pub storage_capacity_kg: f64,
}

/// The city must lie in the province: one branch per province (`openapi::enterprise_body`).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for RawEnterprise {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::enterprise_body()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for RawEnterprise {}

/// `POST /v1/terminals` as sent.
#[derive(SerdeDeserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTerminal {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::id))]
    pub enterprise_id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::terminal_kind))]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::kilograms))]
    pub capacity_kg: f64,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::report_interval_s))]
    #[serde(deserialize_with = "crate::json_int::u32")]
    pub report_interval_s: u32,
    /// An SM2 public key as SubjectPublicKeyInfo PEM (`openssl pkey -pubout`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_public_key_pem))]
    pub public_key_pem: Option<String>,
}

fn is_division_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
}

/// A province's 6-digit division code (GB/T 2260): not starting with 0, ending in 0000 (`440000`).
pub fn is_province_code(s: &str) -> bool {
    is_division_code(s) && s.ends_with("0000")
}

/// A 6-digit division code below a province (`440100`): not starting with 0, not ending in 0000.
pub fn is_city_code(s: &str) -> bool {
    is_division_code(s) && !s.ends_with("0000")
}

fn capacity_mg(field: &str, kg: f64) -> Result<i64, Rejection> {
    if !kg.is_finite() || kg <= 0.0 || kg > CAPACITY_KG_MAX {
        return Err(Rejection::new(
            "value_out_of_range",
            format!("{field} {kg} is outside (0, {CAPACITY_KG_MAX}] kg"),
        ));
    }
    Ok((kg * 1_000_000.0).round() as i64)
}

impl EnterpriseRegistered {
    pub fn from_raw(raw: &RawEnterprise) -> Result<Self, Rejection> {
        let id = EnterpriseId::parse(&raw.id)
            .map_err(|e| Rejection::new("invalid_id", format!("id {:?}: {e}", raw.id)))?;
        let name = raw.name.trim();
        if let Err(e) = check_text(name, NAME_CHARS_MAX, true) {
            return Err(Rejection::new("invalid_name", format!("name {e}")));
        }
        if !is_province_code(&raw.province_code) {
            return Err(Rejection::new(
                "invalid_province_code",
                format!(
                    "province_code {:?} is not a 6-digit province code ending in 0000 (e.g. 440000)",
                    raw.province_code
                ),
            ));
        }
        if !is_city_code(&raw.city_code) || raw.city_code[..2] != raw.province_code[..2] {
            return Err(Rejection::new(
                "invalid_city_code",
                format!(
                    "city_code {:?} is not a 6-digit code within province {} (e.g. {}0100)",
                    raw.city_code,
                    raw.province_code,
                    &raw.province_code[..2]
                ),
            ));
        }
        Ok(EnterpriseRegistered {
            id,
            name: name.to_owned(),
            province_code: raw.province_code.clone(),
            city_code: raw.city_code.clone(),
            storage_capacity_mg: capacity_mg("storage_capacity_kg", raw.storage_capacity_kg)?,
        })
    }
}

impl TerminalRegistered {
    pub fn from_raw(raw: &RawTerminal) -> Result<Self, Rejection> {
        let id = TerminalId::parse(&raw.id)
            .map_err(|e| Rejection::new("invalid_id", format!("id {:?}: {e}", raw.id)))?;
        let enterprise_id = EnterpriseId::parse(&raw.enterprise_id).map_err(|e| {
            Rejection::new(
                "invalid_id",
                format!("enterprise_id {:?}: {e}", raw.enterprise_id),
            )
        })?;
        let kind = TerminalKind::parse(&raw.kind).ok_or_else(|| {
            Rejection::new(
                "unknown_terminal_kind",
                format!(
                    "kind {:?} is not one of scale, load_cell, storage_sensor",
                    raw.kind
                ),
            )
        })?;
        if raw.report_interval_s == 0 || raw.report_interval_s > REPORT_INTERVAL_S_MAX {
            return Err(Rejection::new(
                "value_out_of_range",
                format!(
                    "report_interval_s {} is outside 1 ..= {REPORT_INTERVAL_S_MAX}",
                    raw.report_interval_s
                ),
            ));
        }
        Ok(TerminalRegistered {
            id,
            enterprise_id,
            kind,
            capacity_mg: capacity_mg("capacity_kg", raw.capacity_kg)?,
            report_interval_s: raw.report_interval_s,
            public_key: match &raw.public_key_pem {
                None => None,
                Some(pem) => Some(crate::crypto::sm2_public_key_der_from_pem(pem)?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enterprise() -> RawEnterprise {
        RawEnterprise {
            id: "E-1".into(),
            name: "广州某化工有限公司".into(),
            province_code: "440000".into(),
            city_code: "440100".into(),
            storage_capacity_kg: 50_000.0,
        }
    }

    #[test]
    fn enterprise_registration_is_validated() {
        assert!(EnterpriseRegistered::from_raw(&enterprise()).is_ok());
        let bad = |f: fn(&mut RawEnterprise), code: &str| {
            let mut r = enterprise();
            f(&mut r);
            assert_eq!(EnterpriseRegistered::from_raw(&r).unwrap_err().code, code);
        };
        bad(|r| r.id = "E 1".into(), "invalid_id");
        bad(|r| r.name = "  ".into(), "invalid_name");
        bad(
            |r| r.province_code = "440100".into(),
            "invalid_province_code",
        );
        bad(
            |r| r.province_code = "44000".into(),
            "invalid_province_code",
        );
        bad(|r| r.city_code = "450100".into(), "invalid_city_code");
        bad(|r| r.city_code = "440000".into(), "invalid_city_code");
        bad(|r| r.storage_capacity_kg = -1.0, "value_out_of_range");
        bad(|r| r.storage_capacity_kg = f64::NAN, "value_out_of_range");
    }

    #[test]
    fn equal_registrations_have_equal_canonical_forms() {
        let a = EnterpriseRegistered::from_raw(&enterprise()).unwrap();
        let mut raw = enterprise();
        raw.name = format!(" {} ", raw.name);
        let b = EnterpriseRegistered::from_raw(&raw).unwrap();
        assert_eq!(
            Event::EnterpriseRegistered(a).canonical().to_bytes(),
            Event::EnterpriseRegistered(b).canonical().to_bytes()
        );
    }

    #[test]
    fn reading_dedupe_keys_do_not_collide_across_terminals() {
        let a = dedupe_key_reading(&TerminalId::parse("T-1").unwrap(), 0x2f);
        let b = dedupe_key_reading(&TerminalId::parse("T-1").unwrap(), 0x2f00);
        let c = dedupe_key_reading(&TerminalId::parse("T-10").unwrap(), 0x2f);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }
}

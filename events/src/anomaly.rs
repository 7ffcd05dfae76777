//! `AnomalyDetected`: what a rule found, with its evidence and a deterministic identity.
//!
//! The identity is the SHA-256 of `{"causes":[...],"kind":...,"subject":...}` in canonical JSON, where the
//! causes are the identities `terminal/seq` of the readings that made the rule fire, sorted. So an edge
//! node and the cloud name the same anomaly alike, and the log's dedupe on that identity makes "a restart
//! or a replay never emits it twice" a property of storage, not of care.

use rkyv::{Archive, Deserialize, Serialize};

use crate::canonical::Jcs;
use crate::dedupe::DedupeKey;
use crate::fingerprint::{Fingerprint, fingerprint};
use crate::ids::{ContainerId, EnterpriseId, ManifestId, TerminalId};

named_enum! {
    /// What kind of irregularity a rule found.
    #[derive(PartialOrd, Ord, Hash)]
    pub enum AnomalyKind {
        WeightFluctuation => "weight_fluctuation",
        ManifestWeightMismatch => "manifest_weight_mismatch",
        StorageOverdue => "storage_overdue",
        OverCapacity => "over_capacity",
        TerminalSilent => "terminal_silent",
        TamperSuspected => "tamper_suspected",
    }
}

named_enum! {
    #[derive(PartialOrd, Ord, Hash)]
    pub enum Severity {
        Low => "low",
        Medium => "medium",
        High => "high",
    }
}

/// A reading's identity: the terminal and its own sequence number.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub struct ReadingRef {
    pub terminal_id: TerminalId,
    pub seq: u64,
}

impl ReadingRef {
    pub fn text(&self) -> String {
        format!("{}/{}", self.terminal_id, self.seq)
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AnomalyDetected {
    /// SHA-256 of the kind, the subject and the sorted causes (see the module doc).
    pub anomaly_id: Fingerprint,
    pub kind: AnomalyKind,
    pub severity: Severity,
    /// What the anomaly is about, e.g. `container:C-9`.
    pub subject: String,
    pub terminal_id: Option<TerminalId>,
    pub container_id: Option<ContainerId>,
    pub enterprise_id: Option<EnterpriseId>,
    pub manifest_id: Option<ManifestId>,
    /// The earlier value compared, in the resolution unit (mg for weights).
    pub previous_value: Option<i64>,
    /// The later value compared.
    pub current_value: Option<i64>,
    /// |current − previous| / previous in parts per million (integers only in canonical JSON); absent when
    /// the previous value was zero.
    pub change_ratio_ppm: Option<i64>,
    /// The limit the value was held against, where the rule has one: the capacity in mg for
    /// `over_capacity`, the allowed duration in seconds for `storage_overdue` and `terminal_silent`.
    pub limit_value: Option<i64>,
    /// The event whose arrival made the rule fire.
    pub cause_seq: u64,
    /// The log sequences of the events compared, in time order.
    pub evidence_seqs: Vec<u64>,
    /// The readings that made the rule fire, sorted.
    pub causes: Vec<ReadingRef>,
}

impl AnomalyDetected {
    /// An anomaly with its identity computed and its causes sorted; the optional fields start empty.
    pub fn new(
        kind: AnomalyKind,
        severity: Severity,
        subject: String,
        mut causes: Vec<ReadingRef>,
        cause_seq: u64,
        evidence_seqs: Vec<u64>,
    ) -> Self {
        causes.sort();
        causes.dedup();
        AnomalyDetected {
            anomaly_id: Self::identity(kind, &subject, &causes),
            kind,
            severity,
            subject,
            terminal_id: None,
            container_id: None,
            enterprise_id: None,
            manifest_id: None,
            previous_value: None,
            current_value: None,
            change_ratio_ppm: None,
            limit_value: None,
            cause_seq,
            evidence_seqs,
            causes,
        }
    }

    /// The deterministic identity of an anomaly of `kind` about `subject` caused by `causes`.
    pub fn identity(kind: AnomalyKind, subject: &str, causes: &[ReadingRef]) -> Fingerprint {
        let mut sorted: Vec<String> = causes.iter().map(ReadingRef::text).collect();
        sorted.sort();
        let doc = Jcs::obj(vec![
            ("kind", Jcs::str(kind.name())),
            ("subject", Jcs::str(subject)),
            (
                "causes",
                Jcs::Arr(sorted.into_iter().map(Jcs::Str).collect()),
            ),
        ]);
        fingerprint(&doc.to_bytes())
    }

    /// The dedupe key: one anomaly per identity, ever.
    pub fn dedupe_key(&self) -> DedupeKey {
        DedupeKey {
            space: format!("anomaly/{}", hex::encode(self.anomaly_id)).into_bytes(),
            slot: 0,
        }
    }

    pub fn canonical(&self) -> Jcs {
        let causes = self.causes.iter().map(|c| Jcs::Str(c.text())).collect();
        let evidence = self
            .evidence_seqs
            .iter()
            .map(|s| Jcs::Int(*s as i64))
            .collect();
        let doc = Jcs::obj(vec![
            ("anomaly_id", Jcs::Str(hex::encode(self.anomaly_id))),
            ("kind", Jcs::str(self.kind.name())),
            ("severity", Jcs::str(self.severity.name())),
            ("subject", Jcs::str(self.subject.as_str())),
            ("cause_seq", Jcs::Int(self.cause_seq as i64)),
            ("evidence_seqs", Jcs::Arr(evidence)),
            ("causes", Jcs::Arr(causes)),
        ]);
        // The optional fields, each only where it is set.
        doc.with_optional("terminal_id", id_text(&self.terminal_id))
            .with_optional("container_id", id_text(&self.container_id))
            .with_optional("enterprise_id", id_text(&self.enterprise_id))
            .with_optional("manifest_id", id_text(&self.manifest_id))
            .with_optional("previous_value", self.previous_value.map(Jcs::Int))
            .with_optional("current_value", self.current_value.map(Jcs::Int))
            .with_optional("change_ratio_ppm", self.change_ratio_ppm.map(Jcs::Int))
            .with_optional("limit_value", self.limit_value.map(Jcs::Int))
    }
}

/// An optional id as canonical JSON text (an id displays as itself).
fn id_text(id: &Option<impl std::fmt::Display>) -> Option<Jcs> {
    id.as_ref().map(|id| Jcs::Str(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::AnomalyKind::{self, *};

    #[test]
    fn all_holds_every_kind_once_in_declaration_order() {
        // Exhaustive: a new kind does not compile here until it has a place, and then in `ALL`.
        let place = |k: AnomalyKind| match k {
            WeightFluctuation => 0,
            ManifestWeightMismatch => 1,
            StorageOverdue => 2,
            OverCapacity => 3,
            TerminalSilent => 4,
            TamperSuspected => 5,
        };
        for (i, k) in AnomalyKind::ALL.iter().enumerate() {
            assert_eq!(place(*k), i, "{}", k.name());
        }
    }
}

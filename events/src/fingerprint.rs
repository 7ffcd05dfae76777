//! SHA-256 fingerprints: of an event's canonical bytes (its identity in dedupe and export) and of a key's
//! SubjectPublicKeyInfo DER. A primitive of its own, so that crypto and the record format both take it from
//! here rather than one from the other.

use sha2::{Digest, Sha256};

/// A SHA-256 fingerprint.
pub type Fingerprint = [u8; 32];

/// SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> Fingerprint {
    Sha256::digest(bytes).into()
}

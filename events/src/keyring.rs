//! Data keys for sealing events at rest.
//!
//! Each scope (an enterprise id, or `platform` for events of no enterprise) has data keys of increasing
//! generation; the newest seals, all of them open. A data key is 16 random bytes, kept in the log only
//! wrapped (SM4-GCM) under the node's master key, as a `DataKeyIssued` event: so keys rotate without
//! rewriting old events (each sealed event names its key id, `scope/generation`), and a log without its
//! master key is unreadable rather than garbage.
//!
//! Sealed payloads are SM4-GCM of the event's rkyv bytes, with a fresh 12-byte random nonce per event and
//! the envelope's stream, event type, fingerprint and key id as associated data, so a ciphertext cannot be
//! moved under another header unnoticed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rkyv::{Archive, Deserialize, Serialize};

use crate::crypto::{
    CryptoError, Entropy, GCM_NONCE_LEN, SM4_KEY_LEN, Sm4GcmKey, hmac_sm3, sm4_gcm_open,
    sm4_gcm_seal,
};
use crate::event::DataKeyIssued;

/// The master key's length in bytes (an SM4 key).
pub const MASTER_KEY_LEN: usize = SM4_KEY_LEN;

/// The scope of events that belong to no enterprise.
pub const PLATFORM_SCOPE: &str = "platform";

/// The key id of the log's own key: derived from the master key, it seals what must open before any data
/// key is known (the `DataKeyIssued` events themselves).
pub const META_KEY_ID: &str = "meta";

/// An SM4 data key, unwrapped.
pub struct DataKey {
    pub id: String,
    /// The id a sealed payload names at rest: a keyed hash of `id`, so that a record does not say which
    /// enterprise it belongs to ([`Keyring::opaque_id`]).
    pub opaque_id: String,
    pub scope: String,
    pub generation: u32,
    cipher: Sm4GcmKey,
}

/// A keyed hash (HMAC-SM3 under a key derived from the master key, 16 bytes) of something that must be
/// looked up or checked at rest but not read there: an index key, a record's stream, its fingerprint.
pub type Tag = [u8; 16];

/// An event payload sealed with a data key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SealedPayload {
    pub key_id: String,
    pub nonce: [u8; GCM_NONCE_LEN],
    /// `ciphertext ‖ tag`.
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "master_key_mismatch: data key {key_id} does not unwrap with this master key; start the node with the master key it was created with"
    )]
    MasterKeyMismatch { key_id: String },
    #[error("data key {key_id} is not known to this node")]
    UnknownKey { key_id: String },
    #[error("a payload sealed with data key {key_id} fails its check: {source}")]
    OpenFailed {
        key_id: String,
        #[source]
        source: CryptoError,
    },
}

/// The node's data keys, unwrapped in memory. Bounded by scopes × generations: 16 bytes and an id each.
pub struct Keyring {
    master: [u8; MASTER_KEY_LEN],
    entropy: Arc<dyn Entropy>,
    /// By id and by opaque id.
    keys: RwLock<BTreeMap<String, Arc<DataKey>>>,
    current: RwLock<BTreeMap<String, Arc<DataKey>>>,
    /// The key of [`Keyring::tag`].
    index: [u8; 32],
    meta: Arc<DataKey>,
}

impl Keyring {
    pub fn new(master: [u8; MASTER_KEY_LEN], entropy: Arc<dyn Entropy>) -> Self {
        let index = hmac_sm3(&master, b"custodian index key v1");
        let meta_key: [u8; SM4_KEY_LEN] = hmac_sm3(&master, b"custodian meta key v1")
            [..SM4_KEY_LEN]
            .try_into()
            .expect("16 bytes");
        let meta = Arc::new(DataKey {
            id: META_KEY_ID.to_owned(),
            opaque_id: opaque(&index, META_KEY_ID),
            scope: META_KEY_ID.to_owned(),
            generation: 0,
            cipher: Sm4GcmKey::new(&meta_key),
        });
        let keys = BTreeMap::from([
            (meta.id.clone(), meta.clone()),
            (meta.opaque_id.clone(), meta.clone()),
        ]);
        Keyring {
            master,
            entropy,
            keys: RwLock::new(keys),
            current: RwLock::default(),
            index,
            meta,
        }
    }

    /// A key of its own for `purpose` (HMAC-SM3 of it under the master key), for stores beside the log
    /// that seal or hash under the master key (the edge's outbox).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hmac_sm3(
            &self.master,
            format!("custodian derived key: {purpose}").as_bytes(),
        )
    }

    /// The log's own key (see [`META_KEY_ID`]).
    pub fn meta_key(&self) -> Arc<DataKey> {
        self.meta.clone()
    }

    /// The keyed hash of `data` (see [`Tag`]); the same on every node with this master key.
    pub fn tag(&self, data: &[u8]) -> Tag {
        hmac_sm3(&self.index, data)[..16]
            .try_into()
            .expect("16 bytes")
    }

    /// The whole 32-byte keyed hash of `data` (for what replaces a 32-byte fingerprint at rest).
    pub fn tag_long(&self, data: &[u8]) -> [u8; 32] {
        hmac_sm3(&self.index, data)
    }

    /// The id a payload sealed with data key `key_id` names at rest.
    pub fn opaque_id(&self, key_id: &str) -> String {
        opaque(&self.index, key_id)
    }

    /// A check value of the master key (HMAC-SM3 under it of a fixed label): what nodes compare to know
    /// they share one master key, without showing it.
    pub fn master_check(&self) -> String {
        crate::crypto::check_value(&self.master, "custodian master key check v1")
    }

    pub fn key_id(scope: &str, generation: u32) -> String {
        format!("{scope}/{generation}")
    }

    /// The newest data key of `scope`, if it has one.
    pub fn current(&self, scope: &str) -> Option<Arc<DataKey>> {
        self.current
            .read()
            .expect("keyring lock")
            .get(scope)
            .cloned()
    }

    pub fn get(&self, key_id: &str) -> Option<Arc<DataKey>> {
        self.keys.read().expect("keyring lock").get(key_id).cloned()
    }

    /// The generation the next key of `scope` takes.
    pub fn next_generation(&self, scope: &str) -> u32 {
        self.current(scope).map_or(1, |k| k.generation + 1)
    }

    /// A fresh data key for `scope`, wrapped for the log. It is used only once the log has stored it and
    /// [`Keyring::install`] has run.
    pub fn issue(&self, scope: &str, generation: u32) -> DataKeyIssued {
        let mut key = [0u8; SM4_KEY_LEN];
        self.entropy.fill(&mut key);
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.entropy.fill(&mut nonce);
        let id = Self::key_id(scope, generation);
        let mut wrapped = nonce.to_vec();
        wrapped.extend(sm4_gcm_seal(&self.master, &nonce, &wrap_aad(&id), &key));
        DataKeyIssued {
            scope: scope.to_owned(),
            generation,
            wrapped_key: wrapped,
        }
    }

    /// Unwraps a stored data key and makes it available (the newest generation of a scope seals).
    pub fn install(&self, issued: &DataKeyIssued) -> Result<Arc<DataKey>, KeyringError> {
        let id = Self::key_id(&issued.scope, issued.generation);
        let mismatch = || KeyringError::MasterKeyMismatch { key_id: id.clone() };
        // The log stores one key per id; what is installed stays (a second install of an id is a replay).
        if let Some(existing) = self.get(&id) {
            return Ok(existing);
        }
        if issued.wrapped_key.len() != GCM_NONCE_LEN + SM4_KEY_LEN + 16 {
            return Err(mismatch());
        }
        let (nonce, sealed) = issued.wrapped_key.split_at(GCM_NONCE_LEN);
        let key = sm4_gcm_open(
            &self.master,
            nonce.try_into().expect("12 bytes"),
            &wrap_aad(&id),
            sealed,
        )
        .map_err(|_| mismatch())?;
        let key = Arc::new(DataKey {
            id: id.clone(),
            opaque_id: self.opaque_id(&id),
            scope: issued.scope.clone(),
            generation: issued.generation,
            cipher: Sm4GcmKey::new(&key.try_into().expect("16 bytes")),
        });
        {
            let mut keys = self.keys.write().expect("keyring lock");
            keys.insert(key.opaque_id.clone(), key.clone());
            keys.insert(id, key.clone());
        }
        let mut current = self.current.write().expect("keyring lock");
        if current
            .get(&issued.scope)
            .is_none_or(|c| c.generation < issued.generation)
        {
            current.insert(issued.scope.clone(), key.clone());
        }
        Ok(key)
    }

    /// Seals `plaintext` under `key` with a fresh nonce; the payload names the key by its opaque id.
    pub fn seal(&self, key: &DataKey, aad: &[u8], plaintext: &[u8]) -> SealedPayload {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.entropy.fill(&mut nonce);
        SealedPayload {
            key_id: key.opaque_id.clone(),
            nonce,
            ciphertext: key.cipher.seal(&nonce, aad, plaintext),
        }
    }

    /// Opens a sealed payload.
    pub fn open(&self, sealed: &SealedPayload, aad: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let key = self
            .get(&sealed.key_id)
            .ok_or_else(|| KeyringError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        key.cipher
            .open(&sealed.nonce, aad, &sealed.ciphertext)
            .map_err(|source| KeyringError::OpenFailed {
                key_id: sealed.key_id.clone(),
                source,
            })
    }
}

/// `k` and the hex of the key id's tag: what a sealed payload names at rest.
fn opaque(index: &[u8; 32], key_id: &str) -> String {
    let mut data = b"key id\0".to_vec();
    data.extend_from_slice(key_id.as_bytes());
    format!("k{}", hex::encode(&hmac_sm3(index, &data)[..16]))
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    format!("custodian data key {key_id}").into_bytes()
}

/// Parses a master key given as 32 hex digits.
pub fn parse_master_key(text: &str) -> Option<[u8; MASTER_KEY_LEN]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::OsEntropy;

    #[test]
    fn keys_wrap_under_the_master_and_only_it() {
        let ring = Keyring::new([7; 16], Arc::new(OsEntropy));
        assert_eq!(ring.next_generation("E-1"), 1);
        let issued = ring.issue("E-1", 1);
        assert!(
            ring.current("E-1").is_none(),
            "not usable before it is installed"
        );
        let key = ring.install(&issued).unwrap();
        assert_eq!(key.id, "E-1/1");
        assert_eq!(ring.next_generation("E-1"), 2);
        let sealed = ring.seal(&key, b"aad", b"payload");
        assert_eq!(ring.open(&sealed, b"aad").unwrap(), b"payload");
        assert!(matches!(
            ring.open(&sealed, b"other"),
            Err(KeyringError::OpenFailed { .. })
        ));

        let other = Keyring::new([8; 16], Arc::new(OsEntropy));
        assert_eq!(
            other.install(&issued).err(),
            Some(KeyringError::MasterKeyMismatch {
                key_id: "E-1/1".into()
            })
        );
        assert!(matches!(
            other.open(&sealed, b"aad"),
            Err(KeyringError::UnknownKey { .. })
        ));
    }

    #[test]
    fn the_newest_generation_seals_and_every_generation_opens() {
        let ring = Keyring::new([1; 16], Arc::new(OsEntropy));
        let k1 = ring.install(&ring.issue("E-1", 1)).unwrap();
        let old = ring.seal(&k1, b"", b"old");
        let k2 = ring.install(&ring.issue("E-1", 2)).unwrap();
        assert_eq!(ring.current("E-1").unwrap().id, k2.id);
        // Installing an older generation again neither replaces it nor demotes the current key.
        assert_eq!(ring.install(&ring.issue("E-1", 1)).unwrap().id, k1.id);
        assert_eq!(ring.current("E-1").unwrap().generation, 2);
        assert_eq!(ring.open(&old, b"").unwrap(), b"old");
        assert_eq!(parse_master_key(&"ab".repeat(16)), Some([0xab; 16]));
        assert_eq!(parse_master_key("abc"), None);
    }
}

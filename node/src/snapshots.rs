//! The deriver's snapshots on disk: a sled database of its own in `DATA_DIR/derive`, every value sealed
//! with SM4-GCM under a key derived from the master key (SHA-256 of a label and the master key, first 16
//! bytes), with the sled key as associated data so a value cannot be moved to another key.
//!
//! Snapshots are a cache of what the log already says: losing them costs a replay, never data. A
//! snapshot ahead of the log (the log was replaced) is discarded at start.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use custodian_actors::SnapshotStore;
use custodian_events::crypto::{Entropy, GCM_NONCE_LEN, Sm4GcmKey};
use custodian_events::domain::AggregateKey;
use custodian_events::keyring::MASTER_KEY_LEN;
use sha2::Digest as _;

const META: &[u8] = b"meta";
const STATE_PREFIX: &str = "a/";

pub struct SledSnapshots {
    db: sled::Db,
    key: Sm4GcmKey,
    entropy: Arc<dyn Entropy>,
}

impl SledSnapshots {
    /// Opens (or creates) the store; discards it when it is ahead of a log whose head is `log_last_seq`.
    pub fn open(
        path: &Path,
        master: &[u8; MASTER_KEY_LEN],
        entropy: Arc<dyn Entropy>,
        log_last_seq: u64,
    ) -> anyhow::Result<Self> {
        let db = custodian_events::log::open_sled(sled::Config::new().path(path))
            .with_context(|| format!("cannot open the deriver snapshots in {}", path.display()))?;
        let digest = sha2::Sha256::new()
            .chain_update(b"custodian/deriver-snapshots/v1")
            .chain_update(master)
            .finalize();
        let key = Sm4GcmKey::new(digest[..16].try_into().expect("16 bytes"));
        let store = SledSnapshots { db, key, entropy };
        match store.load_meta() {
            Ok(Some((seq, _))) if seq > log_last_seq => {
                tracing::warn!(
                    snapshot_seq = seq,
                    log_last_seq,
                    "deriver snapshot is ahead of the log; discarding it and replaying the log"
                );
                store.db.clear()?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "deriver snapshot unreadable; discarding it and replaying the log");
                store.db.clear()?;
            }
            _ => {}
        }
        Ok(store)
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.entropy.fill(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(self.key.seal(&nonce, aad, plain));
        out
    }

    fn open_value(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < GCM_NONCE_LEN {
            return Err("snapshot value too short".into());
        }
        let (nonce, body) = sealed.split_at(GCM_NONCE_LEN);
        self.key
            .open(nonce.try_into().expect("12 bytes"), aad, body)
            .map_err(|e| format!("snapshot value does not open ({e}); wrong master key or damage"))
    }

    fn state_key(key: &AggregateKey) -> Vec<u8> {
        format!("{STATE_PREFIX}{key}").into_bytes()
    }
}

impl SnapshotStore for SledSnapshots {
    fn load_meta(&self) -> Result<Option<(u64, Vec<u8>)>, String> {
        let Some(v) = self.db.get(META).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let plain = self.open_value(META, &v)?;
        if plain.len() < 8 {
            return Err("snapshot meta too short".into());
        }
        let seq = u64::from_be_bytes(plain[..8].try_into().unwrap());
        Ok(Some((seq, plain[8..].to_vec())))
    }

    fn get(&self, key: &AggregateKey) -> Result<Option<Vec<u8>>, String> {
        let k = Self::state_key(key);
        match self.db.get(&k).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => self.open_value(&k, &v).map(Some),
        }
    }

    fn all(&self) -> Result<Vec<(AggregateKey, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(STATE_PREFIX) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            let name = std::str::from_utf8(&k[STATE_PREFIX.len()..]).map_err(|e| e.to_string())?;
            let key = AggregateKey::of_subject(name)
                .ok_or_else(|| format!("unknown aggregate key {name:?} in snapshots"))?;
            out.push((key, self.open_value(&k, &v)?));
        }
        Ok(out)
    }

    fn commit(
        &self,
        checkpoint: u64,
        router: Vec<u8>,
        states: Vec<(AggregateKey, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut batch = sled::Batch::default();
        for (key, bytes) in states {
            let k = Self::state_key(&key);
            let v = self.seal(&k, &bytes);
            batch.insert(k, v);
        }
        let mut meta = checkpoint.to_be_bytes().to_vec();
        meta.extend(router);
        batch.insert(META, self.seal(META, &meta));
        self.db.apply_batch(batch).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }
}

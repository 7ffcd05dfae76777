//! The deriver's snapshots on disk: a sled database of its own in `DATA_DIR/derive`, every value sealed
//! with SM4-GCM under a key derived from the master key (HMAC-SM3 of a label under it, first 16 bytes),
//! with the sled key as associated data so a value cannot be moved to another key. An aggregate's state
//! is stored under `a/` and a keyed hash of its name (`terminal:T-1` names a terminal: it must not rest in
//! the clear), the name itself inside the sealed value.
//!
//! Snapshots are a cache of what the log already says: losing them costs a replay, never data. A
//! snapshot ahead of the log (the log was replaced) is discarded at start.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use custodian_actors::SnapshotStore;
use custodian_events::crypto::{Entropy, GCM_NONCE_LEN, Sm4GcmKey, hmac_sm3};
use custodian_events::domain::AggregateKey;
use custodian_events::keyring::MASTER_KEY_LEN;

const META: &[u8] = b"meta";
const STATE_PREFIX: &[u8] = b"a/";
/// Marks a store of this layout (keyed names); a store without it is an older one and is discarded.
const LAYOUT: &[u8] = b"layout";
const LAYOUT_KEYED: &[u8] = b"keyed-v2";

pub struct SledSnapshots {
    db: sled::Db,
    key: Sm4GcmKey,
    /// The key of the aggregate names' hashes.
    names: [u8; 32],
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
        let open = || {
            custodian_log::open_sled(sled::Config::new().path(path))
                .with_context(|| format!("cannot open the deriver snapshots in {}", path.display()))
        };
        let mut db = open()?;
        if db.get(LAYOUT)?.as_deref() != Some(LAYOUT_KEYED) {
            // An older store (names in the clear, if any): the files go, not just the keys — sled keeps
            // old versions of values in its files until it reclaims them. It is a cache: a replay
            // rebuilds it.
            if !db.is_empty() {
                tracing::warn!(
                    path = %path.display(),
                    "deriver snapshots of an older layout; discarding them (the log is replayed)"
                );
                drop(db);
                std::fs::remove_dir_all(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                db = open()?;
            }
            db.insert(LAYOUT, LAYOUT_KEYED)?;
        }
        let seal_key = hmac_sm3(master, b"custodian deriver snapshots seal v2");
        let key = Sm4GcmKey::new(seal_key[..16].try_into().expect("16 bytes"));
        let names = hmac_sm3(master, b"custodian deriver snapshots names v2");
        let store = SledSnapshots {
            db,
            key,
            names,
            entropy,
        };
        match store.load_meta() {
            Ok(Some((seq, _))) if seq > log_last_seq => {
                tracing::warn!(
                    snapshot_seq = seq,
                    log_last_seq,
                    "deriver snapshot is ahead of the log; discarding it and replaying the log"
                );
                store.clear()?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "deriver snapshot unreadable; discarding it and replaying the log");
                store.clear()?;
            }
            _ => {}
        }
        Ok(store)
    }

    fn clear(&self) -> anyhow::Result<()> {
        self.db.clear()?;
        self.db.insert(LAYOUT, LAYOUT_KEYED)?;
        Ok(())
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

    /// `a/` and the keyed hash of the aggregate's name.
    fn state_key(&self, key: &AggregateKey) -> Vec<u8> {
        let mut k = STATE_PREFIX.to_vec();
        k.extend_from_slice(&hmac_sm3(&self.names, key.to_string().as_bytes())[..16]);
        k
    }

    /// What a state's sealed value holds: the aggregate's name (u16 length first), then its state.
    fn named(key: &AggregateKey, state: &[u8]) -> Vec<u8> {
        let name = key.to_string();
        let mut out = Vec::with_capacity(2 + name.len() + state.len());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(state);
        out
    }

    fn unnamed(plain: &[u8]) -> Result<(AggregateKey, &[u8]), String> {
        let len = plain
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or("snapshot value too short")?;
        let name = plain
            .get(2..2 + len)
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or("snapshot value with a broken name")?;
        let key = AggregateKey::of_subject(name)
            .ok_or_else(|| format!("unknown aggregate {name:?} in snapshots"))?;
        Ok((key, &plain[2 + len..]))
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
        let k = self.state_key(key);
        match self.db.get(&k).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => {
                let plain = self.open_value(&k, &v)?;
                let (named, state) = Self::unnamed(&plain)?;
                if named != *key {
                    return Err(format!("the snapshot of {key} holds {named}'s state"));
                }
                Ok(Some(state.to_vec()))
            }
        }
    }

    fn all(&self) -> Result<Vec<(AggregateKey, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(STATE_PREFIX) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            let plain = self.open_value(&k, &v)?;
            let (key, state) = Self::unnamed(&plain)?;
            out.push((key, state.to_vec()));
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
            let k = self.state_key(&key);
            let v = self.seal(&k, &Self::named(&key, &bytes));
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

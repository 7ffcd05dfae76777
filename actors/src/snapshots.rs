//! Where the deriver keeps its snapshots: the encoded state of each aggregate, and the router with the
//! checkpoint they are consistent with.
//!
//! A commit is one atomic write of the checkpoint `C`, the router at `C`, and the states of every
//! aggregate that changed since the previous commit, so the stored states are always a consistent cut at
//! `C`: after a restart the deriver resumes at `C + 1`. Passivated aggregates live only here.

use std::collections::BTreeMap;
use std::sync::Mutex;

use custodian_events::domain::AggregateKey;

pub trait SnapshotStore: Send + Sync + 'static {
    /// The last committed checkpoint and router, if any.
    fn load_meta(&self) -> Result<Option<(u64, Vec<u8>)>, String>;
    /// The last committed state of one aggregate.
    fn get(&self, key: &AggregateKey) -> Result<Option<Vec<u8>>, String>;
    /// Every stored aggregate state.
    fn all(&self) -> Result<Vec<(AggregateKey, Vec<u8>)>, String>;
    /// Stores states, router and checkpoint atomically.
    fn commit(
        &self,
        checkpoint: u64,
        router: Vec<u8>,
        states: Vec<(AggregateKey, Vec<u8>)>,
    ) -> Result<(), String>;
}

/// A checkpoint and the encoded router at it.
type Meta = (u64, Vec<u8>);
type States = BTreeMap<AggregateKey, Vec<u8>>;

/// Snapshots in memory: for tests, and for a deriver that replays from the start after each restart.
#[derive(Default)]
pub struct MemorySnapshots {
    inner: Mutex<(Option<Meta>, States)>,
}

impl MemorySnapshots {
    /// Aggregates stored.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SnapshotStore for MemorySnapshots {
    fn load_meta(&self) -> Result<Option<(u64, Vec<u8>)>, String> {
        Ok(self.inner.lock().unwrap().0.clone())
    }

    fn get(&self, key: &AggregateKey) -> Result<Option<Vec<u8>>, String> {
        Ok(self.inner.lock().unwrap().1.get(key).cloned())
    }

    fn all(&self) -> Result<Vec<(AggregateKey, Vec<u8>)>, String> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .1
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(
        &self,
        checkpoint: u64,
        router: Vec<u8>,
        states: Vec<(AggregateKey, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap();
        inner.1.extend(states);
        inner.0 = Some((checkpoint, router));
        Ok(())
    }
}

//! Shard ownership with fencing, on JetStream (cluster issue, part 5).
//!
//! - **Owner records** live in a replicated KV bucket, one key per shard (`shard-07`), value the owner's
//!   node id. A node claims a shard by compare-and-set: `create` when the key is absent, `update` on the
//!   revision it saw otherwise. The record's revision is the shard's **epoch**: it only grows, and two
//!   claims on the same revision cannot both win.
//! - **Fenced appends.** Each shard's history is one subject of the log stream (`{subject}.07`). Every
//!   append carries `Nats-Expected-Last-Subject-Sequence` = the last sequence of that subject its owner
//!   knows. A new owner first appends `OwnerChanged { shard, node, epoch }` on the subject's current
//!   last sequence, read from the stream leader (the stream has no direct gets) — so a paused or
//!   partitioned old owner's next append fails with *wrong last sequence*, and it must stop.
//!
//! See `docs/ownership.md`.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::bus::{APPEND_TIMEOUT, REQUEST_TIMEOUT, ShardsConfig};
use crate::bus::{Bus, BusError, Incoming, NatsBus};

/// The event a new owner appends first on a shard's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChanged {
    pub shard: u16,
    pub node: String,
    pub epoch: u64,
}

/// Why a claim or an append did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipError {
    /// Another node claimed the shard since the revision this node saw (a lost compare-and-set).
    Lost { shard: u16 },
    /// An append whose expected last sequence is stale: another owner wrote to the shard. Stop.
    Fenced { shard: u16, expected: u64 },
    /// NATS answered otherwise (or not): retry later.
    Nats(String),
}

impl std::fmt::Display for OwnershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnershipError::Lost { shard } => {
                write!(f, "shard {shard} was claimed by another node first")
            }
            OwnershipError::Fenced { shard, expected } => write!(
                f,
                "shard {shard} has a newer owner (expected last sequence {expected} is stale): stop writing it"
            ),
            OwnershipError::Nats(m) => write!(f, "NATS: {m}"),
        }
    }
}

impl std::error::Error for OwnershipError {}

fn nats(e: impl std::fmt::Display) -> OwnershipError {
    OwnershipError::Nats(e.to_string())
}

fn lost_or(shard: u16) -> impl Fn(BusError) -> OwnershipError {
    move |e| match e {
        BusError::WrongLast => OwnershipError::Lost { shard },
        e => nats(e),
    }
}

/// The owner records and the log stream of one cluster, on a [`Bus`] (NATS, or the simulator's).
#[derive(Clone)]
pub struct Shards {
    bus: Arc<dyn Bus>,
    subject: String,
}

/// A shard this node owns, at `epoch`, knowing its subject's last sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub shard: u16,
    pub node: String,
    pub epoch: u64,
    pub last_seq: u64,
}

impl Shards {
    /// Opens (or makes) the bucket and the stream on NATS.
    pub async fn open(
        client: async_nats::Client,
        config: &ShardsConfig,
    ) -> Result<Shards, OwnershipError> {
        let bus = NatsBus::open(client, config).await.map_err(nats)?;
        Ok(Shards::on(Arc::new(bus), &config.subject))
    }

    /// Shards on any bus; shard `n` appends to `{subject}.{n}`.
    pub fn on(bus: Arc<dyn Bus>, subject: &str) -> Shards {
        Shards {
            bus,
            subject: subject.to_owned(),
        }
    }

    /// Deletes the bucket and the stream (tests clean up with it).
    pub async fn delete(self, _config: &ShardsConfig) -> Result<(), OwnershipError> {
        self.bus.destroy().await.map_err(nats)
    }

    fn key(shard: u16) -> String {
        format!("shard-{shard:02}")
    }

    fn subject_of(&self, shard: u16) -> String {
        format!("{}.{shard:02}", self.subject)
    }

    /// The owner record: the node and the epoch, if any.
    pub async fn owner(&self, shard: u16) -> Result<Option<(String, u64)>, OwnershipError> {
        Ok(self
            .bus
            .kv_get(Self::key(shard))
            .await
            .map_err(nats)?
            .map(|(value, revision)| (String::from_utf8_lossy(&value).into_owned(), revision)))
    }

    /// Claims `shard` for `node`, taking it from whoever holds the record at revision `seen` (`None`: the
    /// shard has no owner yet). Then appends `OwnerChanged` on the subject's last sequence, fencing the
    /// previous owner. The caller decides `seen` from membership (the previous owner is dead) or from a
    /// handoff.
    pub async fn claim(
        &self,
        shard: u16,
        node: &str,
        seen: Option<u64>,
    ) -> Result<Owned, OwnershipError> {
        let key = Self::key(shard);
        let value = Bytes::from(node.as_bytes().to_vec());
        let epoch = match seen {
            None => self.bus.kv_create(key, value).await,
            Some(revision) => self.bus.kv_update(key, value, revision).await,
        }
        .map_err(lost_or(shard))?;
        // Fence: append OwnerChanged on the subject's last sequence as the leader knows it. Another
        // writer slipping in between makes this fail; read again and retry — the epoch is ours.
        for _ in 0..16 {
            let last = self.last_seq(shard).await?;
            let mut owned = Owned {
                shard,
                node: node.to_owned(),
                epoch,
                last_seq: last,
            };
            let event = serde_json::to_vec(&OwnerChanged {
                shard,
                node: node.to_owned(),
                epoch,
            })
            .expect("serialises");
            match self.append(&mut owned, event).await {
                Ok(_) => return Ok(owned),
                Err(OwnershipError::Fenced { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(OwnershipError::Nats(format!(
            "shard {shard}: could not append OwnerChanged after 16 tries (another writer keeps appending)"
        )))
    }

    /// Gives the shard up (rebalancing): the record, still at `owned.epoch`, becomes released (an empty
    /// owner) at a new revision, which the next owner claims on. Fails, changing nothing, when the record
    /// moved on since.
    pub async fn release(&self, owned: &Owned) -> Result<u64, OwnershipError> {
        self.bus
            .kv_update(Self::key(owned.shard), Bytes::new(), owned.epoch)
            .await
            .map_err(lost_or(owned.shard))
    }

    /// The placement plan the planner wrote last (`crate::planner`), if any.
    pub async fn plan(&self) -> Result<Option<Vec<u8>>, OwnershipError> {
        Ok(self
            .bus
            .kv_get(crate::planner::PLAN_KEY.to_owned())
            .await
            .map_err(nats)?
            .map(|(value, _)| value.to_vec()))
    }

    /// Writes the placement plan (last writer wins: only the planner writes it).
    pub async fn put_plan(&self, plan: Vec<u8>) -> Result<u64, OwnershipError> {
        self.bus
            .kv_put(crate::planner::PLAN_KEY.to_owned(), plan.into())
            .await
            .map_err(nats)
    }

    /// The last sequence of the shard's subject, from the stream leader (0: none).
    pub async fn last_seq(&self, shard: u16) -> Result<u64, OwnershipError> {
        self.bus
            .last_subject_seq(self.subject_of(shard))
            .await
            .map_err(nats)
    }

    /// Appends `payload` to the shard as its owner: only if the subject's last sequence is still the one
    /// `owned` knows. Returns the new message's stream sequence (and moves `owned.last_seq` to it).
    pub async fn append(
        &self,
        owned: &mut Owned,
        payload: impl Into<Bytes>,
    ) -> Result<u64, OwnershipError> {
        let seq = self
            .bus
            .append(self.subject_of(owned.shard), payload.into(), owned.last_seq)
            .await
            .map_err(|e| match e {
                BusError::WrongLast => OwnershipError::Fenced {
                    shard: owned.shard,
                    expected: owned.last_seq,
                },
                e => nats(e),
            })?;
        owned.last_seq = seq;
        Ok(seq)
    }

    /// After an append whose answer was lost (an error other than fencing: a timeout, a dropped
    /// acknowledgement): the stream sequence `payload` landed at, when it surely is this owner's message.
    /// That is, the owner record still names `owned`'s node at its epoch, and the subject's last message —
    /// the one right after `owned.last_seq`, on which the append was fenced — is `payload` byte for byte.
    /// Then the append did happen, and the owner carries on from there (`owned.last_seq` moves to it)
    /// instead of letting the shard go and claiming it again. `None` when it has not landed (yet), or it
    /// cannot be told; the caller then lets the shard go. A newer owner that claims the shard meanwhile is
    /// fenced as always: its `OwnerChanged` and this owner's next append expect the same last sequence.
    pub async fn landed(&self, owned: &mut Owned, payload: &Bytes) -> Option<u64> {
        let (node, epoch) = self.owner(owned.shard).await.ok()??;
        if node != owned.node || epoch != owned.epoch {
            return None;
        }
        let subject = self.subject_of(owned.shard);
        let last = self.bus.last_subject_seq(subject.clone()).await.ok()?;
        if last <= owned.last_seq {
            return None;
        }
        let (seq, on, body) = self.bus.stream_message(last).await.ok()??;
        if seq != last || on != subject || body != *payload {
            return None;
        }
        owned.last_seq = last;
        Some(last)
    }

    /// The stream's last sequence, from its leader.
    pub async fn stream_last_seq(&self) -> Result<u64, OwnershipError> {
        self.bus.stream_last_seq().await.map_err(nats)
    }

    /// The bus under these shards.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Shard `n` appends to `{subject}.{n}`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The largest message the servers take (their `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.bus.max_payload()
    }

    /// Every message of the stream from `from_seq` on, in order, as (stream sequence, shard, payload) — the
    /// shard read from the message's subject, [`u16::MAX`] if it names none. Ends or fails when the
    /// servers go away; the caller resumes after the last sequence it got.
    pub async fn follow(
        &self,
        from_seq: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<(u64, u16, Bytes), OwnershipError>> + use<>,
        OwnershipError,
    > {
        use futures_util::StreamExt;
        let messages = self.bus.follow(from_seq).await.map_err(nats)?;
        Ok(messages.map(|m| {
            let (seq, subject, payload) = m.map_err(nats)?;
            let shard = subject
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u16::MAX);
            Ok((seq, shard, payload))
        }))
    }

    /// Every message of the shard's subject, in order: (stream sequence, payload), read one by one from the
    /// stream leader (for checks and tests, not for replaying a big shard).
    pub async fn history(&self, shard: u16) -> Result<Vec<(u64, Vec<u8>)>, OwnershipError> {
        let last = self.last_seq(shard).await?;
        let subject = self.subject_of(shard);
        let mut out = Vec::new();
        for seq in 1..=last {
            // Sequences of other subjects, or removed ones, are skipped.
            if let Ok(Some((seq, s, payload))) = self.bus.stream_message(seq).await
                && s == subject
            {
                out.push((seq, payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Subscribes on core NATS (forwarded appends).
    pub async fn subscribe(
        &self,
        subject: String,
    ) -> Result<crate::bus::BoxStream<Incoming>, OwnershipError> {
        self.bus.subscribe(subject).await.map_err(nats)
    }
}

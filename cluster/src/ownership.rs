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

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use serde::{Deserialize, Serialize};

/// How long an append waits for JetStream's acknowledgement. A publish on R3 with `sync_interval: always`
/// takes 2-3 ms here (docs/nats-cluster.md); seconds mean the stream's leader is gone.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a claim's or an owner read's request to JetStream waits (creating the stream and the bucket
/// waits 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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

/// async-nats 0.51 reports a lost compare-and-set on a KV key as `Other` with the server's "wrong last
/// sequence" (JetStream error 10071 or 10164) inside; both mean another write came first.
fn wrong_last(e: &dyn std::error::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.to_string().contains("wrong last sequence") {
            return true;
        }
        source = err.source();
    }
    false
}

fn nats(e: impl std::fmt::Display) -> OwnershipError {
    OwnershipError::Nats(e.to_string())
}

/// The owner records and the log stream of one cluster.
#[derive(Clone)]
pub struct Shards {
    client: async_nats::Client,
    js: jetstream::Context,
    /// For appends: a shorter timeout, so that an append to a stream whose leader just died fails (and
    /// is retried elsewhere) instead of holding its shard for the whole election.
    append_js: jetstream::Context,
    owners: kv::Store,
    stream: stream::Stream,
    subject: String,
}

/// Names and replication of the bucket and the stream.
#[derive(Debug, Clone)]
pub struct ShardsConfig {
    pub bucket: String,
    pub stream: String,
    /// Shard `n` appends to `{subject}.{n}`.
    pub subject: String,
    pub replicas: usize,
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
    /// Opens (or makes) the bucket and the stream.
    pub async fn open(
        client: async_nats::Client,
        config: &ShardsConfig,
    ) -> Result<Shards, OwnershipError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(10));
        let owners = match js.get_key_value(&config.bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: config.bucket.clone(),
                    history: 1,
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject)],
                num_replicas: config.replicas,
                // Reads of the last sequence go to the stream leader, never to a possibly stale replica.
                allow_direct: false,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        // Claims, owner reads and the copy's consumer go through a context with a short timeout: while
        // JetStream elects a new leader they fail and are tried again on the next pass, instead of each
        // waiting the 10 s that creating the stream and the bucket may need on a busy machine.
        let mut fast = jetstream::new(client.clone());
        fast.set_timeout(REQUEST_TIMEOUT);
        let owners = fast.get_key_value(&config.bucket).await.unwrap_or(owners);
        let stream = fast.get_stream(&config.stream).await.unwrap_or(stream);
        let mut append_js = jetstream::new(client.clone());
        append_js.set_timeout(APPEND_TIMEOUT);
        Ok(Shards {
            client,
            js,
            append_js,
            owners,
            stream,
            subject: config.subject.clone(),
        })
    }

    /// Deletes the bucket and the stream (tests clean up with it).
    pub async fn delete(self, config: &ShardsConfig) -> Result<(), OwnershipError> {
        self.js
            .delete_key_value(&config.bucket)
            .await
            .map_err(nats)?;
        self.js.delete_stream(&config.stream).await.map_err(nats)?;
        Ok(())
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
            .owners
            .entry(Self::key(shard))
            .await
            .map_err(nats)?
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
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
        let value = bytes::Bytes::from(node.as_bytes().to_vec());
        let epoch = match seen {
            None => self.owners.create(&key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists || wrong_last(&e) {
                    OwnershipError::Lost { shard }
                } else {
                    nats(e)
                }
            })?,
            Some(revision) => self
                .owners
                .update(&key, value, revision)
                .await
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_last(&e) {
                        OwnershipError::Lost { shard }
                    } else {
                        nats(e)
                    }
                })?,
        };
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
        self.owners
            .update(Self::key(owned.shard), bytes::Bytes::new(), owned.epoch)
            .await
            .map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_last(&e) {
                    OwnershipError::Lost { shard: owned.shard }
                } else {
                    nats(e)
                }
            })
    }

    /// The placement plan the planner wrote last (`crate::planner`), if any.
    pub async fn plan(&self) -> Result<Option<Vec<u8>>, OwnershipError> {
        Ok(self
            .owners
            .entry(crate::planner::PLAN_KEY)
            .await
            .map_err(nats)?
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| e.value.to_vec()))
    }

    /// Writes the placement plan (last writer wins: only the planner writes it).
    pub async fn put_plan(&self, plan: Vec<u8>) -> Result<u64, OwnershipError> {
        self.owners
            .put(crate::planner::PLAN_KEY, plan.into())
            .await
            .map_err(nats)
    }

    /// The last sequence of the shard's subject, from the stream leader (0: none).
    pub async fn last_seq(&self, shard: u16) -> Result<u64, OwnershipError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject_of(shard))
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(nats(e)),
        }
    }

    /// Appends `payload` to the shard as its owner: only if the subject's last sequence is still the one
    /// `owned` knows. Returns the new message's stream sequence (and moves `owned.last_seq` to it).
    pub async fn append(&self, owned: &mut Owned, payload: Vec<u8>) -> Result<u64, OwnershipError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(owned.last_seq);
        let ack = self
            .append_js
            .send_publish(self.subject_of(owned.shard), publish)
            .await
            .map_err(nats)?
            .await
            .map_err(|e| {
                if e.kind() == PublishErrorKind::WrongLastSequence {
                    OwnershipError::Fenced {
                        shard: owned.shard,
                        expected: owned.last_seq,
                    }
                } else {
                    nats(e)
                }
            })?;
        owned.last_seq = ack.sequence;
        Ok(ack.sequence)
    }

    /// The stream's last sequence, from its leader.
    pub async fn stream_last_seq(&self) -> Result<u64, OwnershipError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(nats)?.state.last_sequence)
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Shard `n` appends to `{subject}.{n}`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The largest message the servers take (their `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Every message of the stream from `from_seq` on, in order, as (stream sequence, shard, payload) — the
    /// shard read from the message's subject, [`u16::MAX`] if it names none — through an
    /// ordered consumer (which recreates itself on a gap). Ends or fails when the servers go away; the
    /// caller resumes after the last sequence it got.
    pub async fn follow(
        &self,
        from_seq: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<(u64, u16, bytes::Bytes), OwnershipError>> + use<>,
        OwnershipError,
    > {
        use futures_util::StreamExt;
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let messages = consumer.messages().await.map_err(nats)?;
        Ok(messages.map(|m| {
            let m = m.map_err(nats)?;
            let seq = m.info().map_err(nats)?.stream_sequence;
            let shard = m
                .message
                .subject
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u16::MAX);
            Ok((seq, shard, m.message.payload.clone()))
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
            if let Ok(m) = self.stream.get_raw_message(seq).await
                && m.subject.as_str() == subject
            {
                out.push((m.sequence, m.payload.to_vec()));
            }
        }
        Ok(out)
    }
}

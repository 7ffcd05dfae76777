//! What the cluster needs of NATS, as one trait: a key-value bucket with compare-and-set (the owner
//! records), a stream with subject-fenced appends and an ordered consumer (the log), and core
//! publish/subscribe/request (heartbeats, forwarded appends).
//!
//! [`NatsBus`] is the real one, on async-nats and JetStream. The simulator's multi-node topology
//! (`custodian-simulations`, `docs/simulation.md`) puts an in-memory network of its own behind the same
//! trait, so that the real membership, coordinator, planner and cluster log run there unchanged while it
//! kills, pauses and cuts nodes off.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// Why a bus operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// A compare-and-set on a key, or an append's expected last subject sequence, did not hold: another
    /// write came first. Nothing changed.
    WrongLast,
    /// A request's subject has no subscriber.
    NoResponders,
    /// Anything else (a timeout, a lost connection, a server's error): the outcome may be unknown.
    Other(String),
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::WrongLast => write!(f, "wrong last sequence"),
            BusError::NoResponders => write!(f, "no responders"),
            BusError::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for BusError {}

/// A message a subscription receives.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub payload: Bytes,
    /// Where to answer a request.
    pub reply: Option<String>,
}

/// A message of the log stream: (stream sequence, subject, payload).
pub type StreamMessage = (u64, String, Bytes);

/// The cluster's view of NATS (module docs). Every method may fail with [`BusError::Other`] when the
/// servers cannot be reached in time.
pub trait Bus: Send + Sync + 'static {
    /// A key's value and revision (`None`: absent or deleted).
    fn kv_get(&self, key: String) -> BoxFuture<'_, Result<Option<(Bytes, u64)>, BusError>>;
    /// Creates a key that must not exist; its revision.
    fn kv_create(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Updates a key whose revision must still be `revision`; the new revision.
    fn kv_update(
        &self,
        key: String,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Writes a key whatever it held; the new revision.
    fn kv_put(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;
    /// Appends to the stream on `subject` only if the subject's last sequence is `expected` (0: none);
    /// the new message's stream sequence once the stream acknowledged it.
    fn append(
        &self,
        subject: String,
        payload: Bytes,
        expected: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>>;
    /// The subject's last stream sequence, from the stream leader (0: none).
    fn last_subject_seq(&self, subject: String) -> BoxFuture<'_, Result<u64, BusError>>;
    /// The stream's last sequence.
    fn stream_last_seq(&self) -> BoxFuture<'_, Result<u64, BusError>>;
    /// What tells this stream from another incarnation of it (deleted and made again under the same
    /// name): its name and creation time.
    fn stream_id(&self) -> BoxFuture<'_, Result<String, BusError>>;
    /// One stream message by sequence (`None`: no such message).
    fn stream_message(&self, seq: u64) -> BoxFuture<'_, Result<Option<StreamMessage>, BusError>>;
    /// Every stream message from `from_seq` on, in order, then each new one as it comes. Ends or fails
    /// when the servers go away; the caller resumes after the last sequence it got.
    fn follow(
        &self,
        from_seq: u64,
    ) -> BoxFuture<'_, Result<BoxStream<Result<StreamMessage, BusError>>, BusError>>;
    /// Publishes on core NATS (at most once).
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>>;
    /// A request on core NATS and its answer.
    fn request(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<Bytes, BusError>>;
    /// Subscribes on core NATS.
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<BoxStream<Incoming>, BusError>>;
    /// Waits until what was published has left this process.
    fn flush(&self) -> BoxFuture<'_, ()>;
    /// The largest message the servers take.
    fn max_payload(&self) -> usize;
    /// Deletes the bucket and the stream (tests clean up with it).
    fn destroy(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// How long an append waits for JetStream's acknowledgement. A publish on R3 with `sync_interval: always`
/// takes 2-3 ms here (docs/nats-cluster.md); seconds mean the stream's leader is gone.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a claim's or an owner read's request to JetStream waits (creating the stream and the bucket
/// waits 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Names and replication of the bucket and the stream.
#[derive(Debug, Clone)]
pub struct ShardsConfig {
    pub bucket: String,
    pub stream: String,
    /// Shard `n` appends to `{subject}.{n}`.
    pub subject: String,
    pub replicas: usize,
}

/// The real bus: a NATS connection and, when opened with [`NatsBus::open`], the bucket and the stream.
pub struct NatsBus {
    client: async_nats::Client,
    jet: Option<Jet>,
}

struct Jet {
    js: jetstream::Context,
    /// For appends: a shorter timeout, so that an append to a stream whose leader just died fails (and
    /// is retried elsewhere) instead of holding its shard for the whole election.
    append_js: jetstream::Context,
    owners: kv::Store,
    stream: stream::Stream,
    bucket: String,
    stream_name: String,
}

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

fn other(e: impl std::fmt::Display) -> BusError {
    BusError::Other(e.to_string())
}

impl NatsBus {
    /// Core NATS only (membership): the bucket and stream methods fail.
    pub fn core(client: async_nats::Client) -> NatsBus {
        NatsBus { client, jet: None }
    }

    /// Opens (or makes) the bucket and the stream.
    pub async fn open(
        client: async_nats::Client,
        config: &ShardsConfig,
    ) -> Result<NatsBus, BusError> {
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
                .map_err(other)?,
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
            .map_err(other)?;
        // Claims, owner reads and the copy's consumer go through a context with a short timeout: while
        // JetStream elects a new leader they fail and are tried again on the next pass, instead of each
        // waiting the 10 s that creating the stream and the bucket may need on a busy machine.
        let mut fast = jetstream::new(client.clone());
        fast.set_timeout(REQUEST_TIMEOUT);
        let owners = fast.get_key_value(&config.bucket).await.unwrap_or(owners);
        let stream = fast.get_stream(&config.stream).await.unwrap_or(stream);
        let mut append_js = jetstream::new(client.clone());
        append_js.set_timeout(APPEND_TIMEOUT);
        Ok(NatsBus {
            client,
            jet: Some(Jet {
                js,
                append_js,
                owners,
                stream,
                bucket: config.bucket.clone(),
                stream_name: config.stream.clone(),
            }),
        })
    }

    fn jet(&self) -> Result<&Jet, BusError> {
        self.jet
            .as_ref()
            .ok_or_else(|| BusError::Other("this NATS bus was opened without JetStream".into()))
    }
}

impl Bus for NatsBus {
    fn kv_get(&self, key: String) -> BoxFuture<'_, Result<Option<(Bytes, u64)>, BusError>> {
        Box::pin(async move {
            Ok(self
                .jet()?
                .owners
                .entry(key)
                .await
                .map_err(other)?
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| (e.value, e.revision)))
        })
    }

    fn kv_create(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.jet()?.owners.create(&key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists || wrong_last(&e) {
                    BusError::WrongLast
                } else {
                    other(e)
                }
            })
        })
    }

    fn kv_update(
        &self,
        key: String,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.jet()?
                .owners
                .update(&key, value, revision)
                .await
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_last(&e) {
                        BusError::WrongLast
                    } else {
                        other(e)
                    }
                })
        })
    }

    fn kv_put(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move { self.jet()?.owners.put(key, value).await.map_err(other) })
    }

    fn append(
        &self,
        subject: String,
        payload: Bytes,
        expected: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload)
                .expected_last_subject_sequence(expected);
            let ack = self
                .jet()?
                .append_js
                .send_publish(subject, publish)
                .await
                .map_err(other)?
                .await
                .map_err(|e| {
                    if e.kind() == PublishErrorKind::WrongLastSequence {
                        BusError::WrongLast
                    } else {
                        other(e)
                    }
                })?;
            Ok(ack.sequence)
        })
    }

    fn last_subject_seq(&self, subject: String) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            match self
                .jet()?
                .stream
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(m) => Ok(m.sequence),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
                Err(e) => Err(other(e)),
            }
        })
    }

    fn stream_last_seq(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            let mut stream = self.jet()?.stream.clone();
            Ok(stream.info().await.map_err(other)?.state.last_sequence)
        })
    }

    fn stream_id(&self) -> BoxFuture<'_, Result<String, BusError>> {
        Box::pin(async move {
            let jet = self.jet()?;
            let mut stream = jet.stream.clone();
            let created = stream.info().await.map_err(other)?.created;
            Ok(format!("{} created {created}", jet.stream_name))
        })
    }

    fn stream_message(&self, seq: u64) -> BoxFuture<'_, Result<Option<StreamMessage>, BusError>> {
        Box::pin(async move {
            match self.jet()?.stream.get_raw_message(seq).await {
                Ok(m) => Ok(Some((m.sequence, m.subject.to_string(), m.payload))),
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(other(e)),
            }
        })
    }

    fn follow(
        &self,
        from_seq: u64,
    ) -> BoxFuture<'_, Result<BoxStream<Result<StreamMessage, BusError>>, BusError>> {
        Box::pin(async move {
            let consumer = self
                .jet()?
                .stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from_seq.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(other)?;
            let messages = consumer.messages().await.map_err(other)?;
            let stream: BoxStream<Result<StreamMessage, BusError>> = Box::pin(messages.map(|m| {
                let m = m.map_err(other)?;
                let seq = m.info().map_err(other)?.stream_sequence;
                Ok((
                    seq,
                    m.message.subject.to_string(),
                    m.message.payload.clone(),
                ))
            }));
            Ok(stream)
        })
    }

    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.client.publish(subject, payload).await.map_err(other) })
    }

    fn request(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<Bytes, BusError>> {
        Box::pin(async move {
            match self.client.request(subject, payload).await {
                Ok(m) => Ok(m.payload),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Err(BusError::NoResponders)
                }
                Err(e) => Err(other(e)),
            }
        })
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<BoxStream<Incoming>, BusError>> {
        Box::pin(async move {
            let sub = self.client.subscribe(subject).await.map_err(other)?;
            let stream: BoxStream<Incoming> = Box::pin(sub.map(|m| Incoming {
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            }));
            Ok(stream)
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.client.flush().await;
        })
    }

    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let jet = self.jet()?;
            jet.js.delete_key_value(&jet.bucket).await.map_err(other)?;
            jet.js
                .delete_stream(&jet.stream_name)
                .await
                .map_err(other)?;
            Ok(())
        })
    }
}

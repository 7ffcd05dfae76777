//! A node's part in a cluster: membership, the ownership coordinator and the cluster log, started together
//! (`custodian serve --cluster URLS --node-id ID`), and the graceful hand-off when it stops.
//!
//! Names on NATS, for a cluster called `custodian` (the default): owner records in the KV bucket
//! `custodian_owners`, the log in the stream `CUSTODIAN_LOG` on subjects `custodian.log.{shard}`,
//! forwarded appends on `custodian.log_fwd.{shard}`, heartbeats on `custodian.members.heartbeat`.

use std::sync::Arc;
use std::time::Duration;

use custodian_events::Clock;
use custodian_events::keyring::Keyring;
use custodian_log::SledLogConfig;

use crate::bus::{Bus, NatsBus};
use crate::cluster_log::{ClusterLog, ClusterLogConfig};
use crate::coordinator::Coordinator;
use crate::membership::{Membership, Thresholds};
use crate::ownership::{Shards, ShardsConfig};

/// How long joining keeps trying to open the owner bucket and the log stream.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// How a node joins.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS servers (`nats://127.0.0.1:4301,...`), comma-separated.
    pub urls: String,
    /// This node's id: unique in the cluster, the same across its restarts.
    pub node_id: String,
    /// The cluster's name, the root of every NATS name it uses.
    pub name: String,
    /// Replicas of the log stream and the owner bucket (3 on the test cluster).
    pub replicas: usize,
    /// Check values (never the secrets) of what every node of the cluster must share — name → value,
    /// e.g. `master_key` → a keyed hash of the master key. The first node records them in the owner
    /// bucket; a node whose values differ is refused before it takes part (see [`agree_on_secrets`]).
    pub secrets: std::collections::BTreeMap<String, String>,
}

/// The owner bucket's key holding the cluster's secret check values.
const SECRETS_KEY: &str = "secrets";

/// Compares this node's secret check values with the cluster's, recording them when the cluster has
/// none yet. `Err` names every secret that differs: such a node would seal what the others cannot open,
/// or issue tokens the others refuse, so it must not join (let alone report itself healthy).
pub async fn agree_on_secrets(
    bus: &dyn Bus,
    mine: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if mine.is_empty() {
        return Ok(());
    }
    let payload =
        bytes::Bytes::from(serde_json::to_vec(mine).expect("a map of strings serialises"));
    let mut last_problem = String::new();
    for _ in 0..5 {
        match bus.kv_get(SECRETS_KEY.into()).await {
            Ok(Some((theirs, _))) => {
                let theirs: std::collections::BTreeMap<String, String> =
                    serde_json::from_slice(&theirs).map_err(|e| {
                        format!(
                            "the cluster's record of its secrets ({SECRETS_KEY}) is unreadable: {e}"
                        )
                    })?;
                let differ: Vec<&str> = mine
                    .iter()
                    .filter(|(name, value)| theirs.get(*name).is_some_and(|t| t != *value))
                    .map(|(name, _)| name.as_str())
                    .collect();
                if differ.is_empty() {
                    return Ok(());
                }
                return Err(format!(
                    "secret_mismatch: this node's {} differ{} from the cluster's; every node of a cluster \
                     shares the master key (CUSTODIAN_MASTER_KEY), the platform's token key \
                     (CUSTODIAN_PLATFORM_KEY_FILE) and the admin token (CUSTODIAN_ADMIN_TOKEN): start it \
                     with the cluster's (docs/cluster.md)",
                    differ.join(", "),
                    if differ.len() == 1 { "s" } else { "" }
                ));
            }
            Ok(None) => match bus.kv_create(SECRETS_KEY.into(), payload.clone()).await {
                Ok(_) => return Ok(()),
                // Another node recorded them first: compare with its.
                Err(e) => last_problem = e.to_string(),
            },
            Err(e) => last_problem = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "cannot read or record the cluster's secret check values: {last_problem}"
    ))
}

impl ClusterSettings {
    pub fn shards_config(&self) -> ShardsConfig {
        ShardsConfig {
            bucket: format!("{}_owners", self.name),
            stream: format!("{}_LOG", self.name.to_uppercase()),
            subject: format!("{}.log", self.name),
            replicas: self.replicas,
        }
    }

    fn members_prefix(&self) -> String {
        format!("{}.members", self.name)
    }
}

/// Connects to the servers in `urls` (comma-separated).
pub async fn connect(urls: &str) -> Result<async_nats::Client, String> {
    let servers = urls
        .split(',')
        .map(|u| {
            u.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{u:?} is not a NATS URL: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Only the servers given: a node reaches the cluster the way its operator said (and a test's proxy
    // in front of NATS is not bypassed by the servers' own advertisements).
    async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(servers)
        .await
        .map_err(|e| {
        format!("cannot reach NATS at {urls} ({e}); is the cluster up (scripts/services nats-cluster up)?")
    })
}

/// A node in a cluster.
pub struct ClusterNode {
    pub node_id: String,
    pub log: Arc<ClusterLog>,
    pub membership: Membership,
    pub coordinator: Coordinator,
    shards: Shards,
    sampler: tokio::task::JoinHandle<()>,
}

impl ClusterNode {
    /// Joins: heartbeats, claims the shards it is the target of, opens its copy of the log at `local`.
    pub async fn join(
        settings: &ClusterSettings,
        local: SledLogConfig,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<ClusterNode, String> {
        if settings.node_id.is_empty()
            || !settings
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "node id {:?} must be letters, digits, '-' or '_'",
                settings.node_id
            ));
        }
        let client = connect(&settings.urls).await?;
        let config = settings.shards_config();
        // Several nodes starting at once make the servers create the stream and the bucket at once,
        // which can time out on a busy machine: try again for a while.
        let started = std::time::Instant::now();
        let bus = loop {
            match NatsBus::open(client.clone(), &config).await {
                Ok(b) => break b,
                Err(e) if started.elapsed() < JOIN_WAIT => {
                    tracing::warn!(error = %e, "cannot open the owner bucket and the log stream yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot open the owner bucket and the log stream within {JOIN_WAIT:?}: {e}"
                    ));
                }
            }
        };
        ClusterNode::join_on(Arc::new(bus), settings, local, clock, keyring).await
    }

    /// Joins over any bus (the simulator's; [`ClusterNode::join`] opens the NATS one).
    pub async fn join_on(
        bus: Arc<dyn Bus>,
        settings: &ClusterSettings,
        local: SledLogConfig,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<ClusterNode, String> {
        // Before anything else: a node that does not share the cluster's secrets takes no part.
        agree_on_secrets(bus.as_ref(), &settings.secrets).await?;
        let shards = Shards::on(bus.clone(), &settings.shards_config().subject);
        let thresholds = Thresholds::default();
        let membership = Membership::start_on(
            bus,
            &settings.members_prefix(),
            &settings.node_id,
            thresholds,
        )
        .await?;
        let sampler = crate::load::start_sampler(&membership);
        let coordinator = Coordinator::start(
            &settings.node_id,
            &membership,
            shards.clone(),
            Duration::from_millis(250),
            thresholds.dead_after,
        );
        let log = ClusterLog::open(
            ClusterLogConfig::new(local),
            &settings.node_id,
            shards.clone(),
            coordinator.held.clone(),
            clock,
            keyring,
        )
        .await
        .map_err(|e| format!("cannot open this node's copy of the log: {e}"))?;
        // A node that does not hear itself is cut off: its appends fail at once (after start-up, until it
        // first hears itself, it is fenced too, but nothing was sent to it yet).
        let mut view = membership.watch();
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            loop {
                let fenced = view.borrow_and_update().fenced;
                let Some(log) = weak.upgrade() else { return };
                log.set_isolated(fenced);
                drop(log);
                if view.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(ClusterNode {
            node_id: settings.node_id.clone(),
            log,
            membership,
            coordinator,
            shards,
            sampler,
        })
    }

    /// What a status page shows: owned shards, peers, how far the copy has come.
    pub fn status(&self) -> serde_json::Value {
        let view = self.membership.view();
        let held = self.coordinator.held.lock().expect("held lock");
        serde_json::json!({
            "node_id": self.node_id,
            "fenced": view.fenced,
            "alive": view.alive(),
            "owned_shards": held.owned.keys().collect::<Vec<_>>(),
            "claims": held.claims,
            "dropped": held.dropped,
            "answers_recovered": held.answers_recovered,
            "follow_gaps": held.follow_gaps,
            "stream_applied": self.log.applied(),
            "epoch_regressions": self.log.epoch_regressions().len(),
            "load": self.membership.loads().get(&self.node_id),
            "placement": {
                "plans_written": held.plans,
                "planned_moves": held.planned_moves,
                "handed_off": held.handed_off,
                "plan": held.plan.as_ref().map(|p| serde_json::json!({
                    "by": p.by,
                    "round": p.round,
                    "moves": p.moves,
                    "owners": p.owners,
                    "loads": p.loads,
                })),
            },
        })
    }

    /// Hands every shard off before stopping: stops claiming, lets in-flight appends finish and stops
    /// appending, says goodbye (the others treat this node as dead at once) and gives up its owner
    /// records, then waits up to `within` for the others to own them.
    pub async fn leave(&self, within: Duration) -> Result<Duration, String> {
        let started = std::time::Instant::now();
        self.coordinator.stop();
        let owned = self.log.release_all().await;
        self.membership.goodbye().await;
        let taken = crate::coordinator::wait_for(within, async || {
            for o in &owned {
                match self.shards.owner(o.shard).await {
                    Ok(Some((owner, _))) if owner != self.node_id => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        self.membership.stop();
        self.sampler.abort();
        match taken {
            Some(_) => Ok(started.elapsed()),
            None => Err(format!(
                "the other nodes did not take this node's {} shards within {within:?}; they take them once it is seen dead",
                owned.len()
            )),
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

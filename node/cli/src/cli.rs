//! The command line. Commands that act on a running node reach it over its API (`--node`); commands that
//! open a data dir directly refuse one that a running node holds.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use custodian_events::crypto::OsEntropy;
use custodian_events::keyring::Keyring;
use custodian_log::{EventLog, SledLog, SledLogConfig};

use crate::keys_cli::{EnvelopeCommand, KeysCommand};
use custodian_node::config::Config;
use custodian_node::datadir::DataDir;
use custodian_node::server::{Node, SystemClock};
use custodian_tools::client::{NodeArgs, NodeClient};
use custodian_tools::terminal_client::TerminalArgs;

#[derive(Parser, Debug)]
#[command(
    name = "custodian",
    version,
    about = "Hazardous-waste and environmental IoT supervision"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node: the event log and the HTTP API.
    Serve(ServeArgs),
    /// Run an edge node at a site: the same ingest API (and MQTT), local anomaly detection, and an outbox
    /// that keeps 72 hours and more while the platform is unreachable and forwards it when it is back.
    Edge(EdgeArgs),
    /// Start a node, let simulated terminals upload (with resends and some bad readings), then summarise.
    Demo(DemoArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print events of a running node's log, as JSON lines.
    Events(EventsArgs),
    /// Show a running node's health and counters.
    Status(NodeArgs),
    /// Replay a recorded log (a stopped node's data dir or an export file) through the current domain
    /// core: events, anomalies by kind, the state hash; `--compare` lists every derived event the current
    /// code decides differently from the log.
    Replay(ReplayArgs),
    /// Work on a stopped node's log directly.
    #[command(subcommand)]
    Log(LogCommand),
    /// SM2 keys: make, fingerprint; terminal key rotation and revocation; data-key rotation.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The SM2/SM4 digital envelope, on stdin and stdout.
    #[command(subcommand)]
    Envelope(EnvelopeCommand),
    /// The read models of a running node: status, rebuild.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Regulators' bearer tokens: issue, revoke (asks the running node; needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// A reference terminal: upload readings (from a file, or simulated) in signed batches, retrying at
    /// most 30 s apart; or make a terminal key with `--keygen`.
    Terminal(TerminalArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token; prints it alone on stdout (its id and expiry on stderr).
    Issue {
        /// national, province, enterprise or admin.
        #[arg(long)]
        tier: String,
        /// The province's 6-digit code ending in 0000 (province tier), or the enterprise id.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime: `8h`, `30m`, `7d`, `3600s` (at most 30 days).
        #[arg(long, default_value = "8h")]
        ttl: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Revoke a token by its id.
    Revoke {
        id: String,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// `8h`, `30m`, `7d`, `90s` or plain seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl {s:?}: write it like 8h, 30m, 7d or 3600s"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("--ttl {s:?}: the unit must be s, m, h or d"),
    };
    Ok(n * unit)
}

#[derive(Subcommand, Debug)]
pub enum ProjectionsCommand {
    /// Checkpoint, lag and state of each read model.
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a read model (postgres, influx or search) from sequence 0 into a shadow copy, which replaces
    /// the live one once it has caught up; shows progress until then.
    Rebuild {
        name: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Start the rebuild and return at once.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address for the HTTP API [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The node's data dir [default: ./.custodian].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A TOML file with settings; environment variables `CUSTODIAN_*` override it, flags override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The PostgreSQL database of the business read model
    /// [default: postgres://postgres@127.0.0.1:5432/custodian].
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// The InfluxDB server of the readings [default: http://127.0.0.1:8086].
    #[arg(long)]
    pub influx_url: Option<String>,
    /// Join a cluster over these NATS servers (comma-separated, JetStream on); without it the node runs
    /// alone on its embedded log.
    #[arg(long, requires = "node_id")]
    pub cluster: Option<String>,
    /// This node's id in the cluster (unique, the same across restarts).
    #[arg(long)]
    pub node_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    /// Print this edge's SM2 public key (made on first use) and exit: the key to register with
    /// `POST /v1/edges` at the platform.
    #[arg(long)]
    pub print_public_key: bool,
    /// The platform's base URL.
    #[arg(long, required_unless_present = "print_public_key")]
    pub upstream: Option<String>,
    /// This edge's id, as registered at the platform.
    #[arg(long, required_unless_present = "print_public_key")]
    pub edge_id: Option<String>,
    /// Address for the edge's HTTP API [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The edge's data dir (event log, outbox, keys) [default: ./.custodian].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The platform's SM2 public key (PEM); else fetched once from the platform and pinned.
    #[arg(long)]
    pub upstream_public_key: Option<PathBuf>,
    /// Registrations to start from (the JSON of `GET /v1/admin/edges/{id}/registrations` at the platform).
    #[arg(long)]
    pub seed_registrations: Option<PathBuf>,
    /// The MQTT broker terminals publish to, e.g. mqtt://127.0.0.1:1883.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Bytes the outbox may hold before uploads get 503 outbox_full.
    #[arg(long)]
    pub outbox_bytes_max: Option<u64>,
    /// A TOML file with settings (section [edge] and the node's); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 12)]
    pub terminals: usize,
    #[arg(long, default_value_t = 15)]
    pub duration_s: u64,
    /// Share of batches that terminals send again, in percent.
    #[arg(long, default_value_t = 30)]
    pub resend_percent: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Use this running node instead of starting one (needs CUSTODIAN_ADMIN_TOKEN).
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// HTTP ingest throughput and latency against a local node, beside the log's own ceiling.
    Ingest(BenchIngestArgs),
    /// Time from a reading's acknowledgement to its anomaly in the log at a steady load, and the
    /// actors' memory per live terminal.
    Detect {
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 100)]
        terminals: usize,
        #[arg(long, default_value_t = 10)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
        /// Live terminals for the memory measurement.
        #[arg(long, default_value_t = 10_000)]
        memory_terminals: usize,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// Failover of shard ownership on the three-node JetStream cluster (`scripts/services nats-cluster
    /// up`): a node stopped every round; p50, p99, max until the survivors own its shards.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        #[arg(
            long,
            default_value = "nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303"
        )]
        cluster: String,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// `custodian serve --cluster` processes on the three-node JetStream cluster (`scripts/services
    /// nats-cluster up`): throughput of one node and of three side by side; `kill -9` of a node every
    /// round under load (p50, p99, max until its shards are owned again and of the longest wait for an
    /// acknowledgement); one NATS server killed; the whole log checked after each phase (fails on a
    /// lost or doubled reading).
    Cluster {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Measured seconds of each throughput phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Terminals of the throughput phases.
        #[arg(long, default_value_t = 24)]
        terminals: usize,
        #[arg(
            long,
            default_value = "nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303"
        )]
        cluster: String,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
        /// Do not kill a NATS server (`scripts/services nats-cluster kill 1`).
        #[arg(long)]
        skip_nats_kill: bool,
    },
    /// Shard placement on a skewed, drifting workload: plain hashing, reactive bounded and predictive
    /// placement side by side (max/mean node load, overloads, moves). No services needed.
    Placement {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seeds `seed ..` to run; the report averages them.
        #[arg(long, default_value_t = 8)]
        seeds: u64,
        /// Placement intervals (a minute each, say).
        #[arg(long, default_value_t = 1_440)]
        intervals: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Voluntary moves per interval at most.
        #[arg(long, default_value_t = 4)]
        moves_max: usize,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// An edge's outbox bytes per buffered reading, and its backlog drain rate beside the terminals'
    /// real-time rate while live traffic continues.
    Edge {
        #[arg(long, default_value_t = 1_000)]
        terminals: usize,
        #[arg(long, default_value_t = 100)]
        backlog_per_terminal: u64,
        #[arg(long, default_value_t = 10)]
        interval_s: u64,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// The read models' throughput beside writing the same rows and points straight to PostgreSQL and
    /// InfluxDB, and their lag at a steady paced load.
    Projections {
        /// Readings in the log the throughput phase projects.
        #[arg(long, default_value_t = 200_000)]
        readings: u64,
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
        #[arg(long, default_value_t = 100)]
        terminals: usize,
        /// The PostgreSQL server (a database named after the run is made and dropped).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        postgres_server: String,
        #[arg(long, default_value = "http://127.0.0.1:8086")]
        influx_url: String,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// Load a seeded TSBS-iot-shaped dataset through the real ingest path into a kept data dir
    /// (resumable), then report the disk each store takes.
    Dataset(DatasetArgs),
    /// Regulator query latency on a `bench dataset` data dir, beside a PostgreSQL-only design, in one run.
    Query {
        #[command(flatten)]
        dataset: DatasetArgs,
        /// Samples per series query (a quarter of that per aggregate and endpoint).
        #[arg(long, default_value_t = 200)]
        samples: usize,
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
    /// SM2 signatures and SM4-GCM on one core.
    Crypto {
        /// Where to keep the Markdown report.
        #[arg(long, default_value = "bench/results")]
        report_dir: PathBuf,
    },
}

/// The dataset of `bench dataset` (and the one `bench query` runs on).
#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[arg(long, default_value = ".custodian-dataset")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 1_000)]
    pub enterprises: usize,
    #[arg(long, default_value_t = 2_000)]
    pub terminals: usize,
    #[arg(long, default_value_t = 7)]
    pub days: u64,
    /// Cap on all readings (default: one a minute for every terminal and day, ~20 million).
    #[arg(long)]
    pub readings: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The PostgreSQL and InfluxDB database of the dataset's read models.
    #[arg(long, default_value = "custodian_dataset")]
    pub database: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres_server: String,
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    pub influx_url: String,
}

impl From<DatasetArgs> for custodian_tools::bench_dataset::DatasetOptions {
    fn from(a: DatasetArgs) -> Self {
        custodian_tools::bench_dataset::DatasetOptions {
            data_dir: a.data_dir,
            enterprises: a.enterprises,
            terminals: a.terminals,
            days: a.days,
            readings: a.readings,
            seed: a.seed,
            database: a.database,
            postgres_server: a.postgres_server,
            influx_url: a.influx_url,
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchIngestArgs {
    #[arg(long, default_value_t = 32)]
    pub terminals: usize,
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    #[arg(long, default_value_t = 15)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 3)]
    pub warmup_s: u64,
    /// Where to keep the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub report_dir: PathBuf,
    /// Run only the signed HTTP phase and print its figures (for profiling it); writes no report.
    #[arg(long)]
    pub signed_only: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[arg(long, default_value_t = 1)]
    pub from_seq: u64,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Only these event types (comma-separated), e.g. `AnomalyDetected,ManifestProgressed`.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false, id = "replay_source")]
pub struct ReplaySourceArgs {
    /// A stopped node's data dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A log export file (`custodian log export`).
    #[arg(long)]
    pub log: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: ReplaySourceArgs,
    /// Stop after this sequence.
    #[arg(long)]
    pub until: Option<u64>,
    /// Compare what the current code derives with the derived events in the log; exits 1 on a difference.
    #[arg(long)]
    pub compare: bool,
    /// Print at most this many differences.
    #[arg(long, default_value_t = 50)]
    pub differences_max: usize,
    /// The node's TOML config: its rules and master key settings (CUSTODIAN_MASTER_KEY works too).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Write a running node's whole log to stdout as a checked, self-describing export (a backup):
    /// `custodian log export --node URL > FILE`.
    Export {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Restore an export into a new data dir, checking every record with the source's master key
    /// (CUSTODIAN_MASTER_KEY, master_key_file in --config, DIR/master.key, or master.key beside FILE).
    Import {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check every record of a stopped node's log: format, CRC, encoding, fingerprint, no gaps.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's TOML config, for its master key settings (CUSTODIAN_MASTER_KEY works too).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Edge(args) => edge(args).await,
        Command::Demo(args) => {
            let summary = custodian_tools::demo::run(custodian_tools::demo::DemoOptions {
                terminals: args.terminals,
                duration_s: args.duration_s,
                resend_percent: args.resend_percent,
                seed: args.seed,
                admin_token: std::env::var("CUSTODIAN_ADMIN_TOKEN").ok(),
                node: args.node,
            })
            .await?;
            anyhow::ensure!(
                summary.stored_once,
                "the demo found acknowledged readings missing or stored twice"
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Ingest(args)) => {
            custodian_tools::bench::ingest(custodian_tools::bench::IngestBenchOptions {
                terminals: args.terminals,
                batch: args.batch,
                duration_s: args.duration_s,
                warmup_s: args.warmup_s,
                report_dir: Some(args.report_dir),
                signed_only: args.signed_only,
            })
            .await?;
            Ok(())
        }
        Command::Events(args) => {
            let client = NodeClient::new(args.node.node, args.node.admin_token);
            let types: Vec<&str> = args.types.iter().map(String::as_str).collect();
            let items = client
                .events(args.from_seq, Some(args.limit as u64), &types)
                .await?;
            let shown = items.len();
            for item in &items {
                println!("{item}");
            }
            if shown == args.limit
                && let Some(last) = items.last().and_then(|i| i["event_seq"].as_u64())
            {
                eprintln!("more: --from-seq {}", last + 1);
            }
            Ok(())
        }
        Command::Status(args) => {
            let client = NodeClient::new(args.node, args.admin_token);
            let health = client
                .healthz()
                .await
                .with_context(|| format!("no node answers at {}", client.base()))?;
            let metrics = client.metrics().await?;
            println!("node {}: {}", client.base(), health);
            for name in [
                "custodian_readings_accepted_total",
                "custodian_readings_duplicate_total",
                "custodian_readings_rejected_total",
                "custodian_log_size_bytes",
            ] {
                println!(
                    "  {name} {}",
                    custodian_node::metrics::sample(&metrics, name).unwrap_or(0.0)
                );
            }
            Ok(())
        }
        Command::Log(LogCommand::Verify { data_dir, config }) => verify(data_dir, config),
        Command::Log(LogCommand::Export { node }) => {
            crate::log_cli::export(&node.node, node.admin_token).await
        }
        Command::Log(LogCommand::Import {
            file,
            data_dir,
            config,
        }) => crate::log_cli::import(&file, &data_dir, config.as_deref()),
        Command::Replay(args) => {
            let source = match (args.source.data_dir, args.source.log) {
                (Some(d), _) => crate::log_cli::ReplaySource::DataDir(d),
                (None, Some(f)) => crate::log_cli::ReplaySource::File(f),
                (None, None) => unreachable!("clap requires one source"),
            };
            let compare = args.compare;
            let report = crate::log_cli::replay(crate::log_cli::ReplayOptions {
                source,
                until: args.until,
                compare,
                config: args.config,
                differences_max: args.differences_max,
            })?;
            anyhow::ensure!(
                !compare
                    || (report.differences.is_empty() && report.derived_twice_in_log.is_empty()),
                "the current code decides {} derived event(s) differently from the log",
                report.differences.len() + report.derived_twice_in_log.len()
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Failover {
            kills,
            cluster,
            report_dir,
        }) => {
            let urls = cluster
                .split(',')
                .map(|u| {
                    u.trim()
                        .parse::<async_nats::ServerAddr>()
                        .map_err(|e| anyhow::anyhow!("--cluster {u:?} is not a NATS URL: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(kills >= 1, "--kills must be 1 or more");
            let markdown = custodian_cluster::failover_bench::run(&urls, kills, &mut |line| {
                eprintln!("{line}")
            })
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
            println!("{markdown}");
            std::fs::create_dir_all(&report_dir)?;
            let file = report_dir.join(format!("failover-{}.md", custodian_tools::bench::stamp()));
            std::fs::write(&file, &markdown)?;
            println!("report written to {}", file.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Cluster {
            kills,
            seconds,
            terminals,
            cluster,
            report_dir,
            skip_nats_kill,
        }) => {
            for u in cluster.split(',') {
                u.trim()
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| anyhow::anyhow!("--cluster {u:?} is not a NATS URL: {e}"))?;
            }
            anyhow::ensure!(kills >= 1, "--kills must be 1 or more");
            let options = custodian_tools::bench_cluster::ClusterBenchOptions {
                kills,
                seconds,
                terminals,
                cluster,
                skip_nats_kill,
            };
            let report =
                custodian_tools::bench_cluster::run(&options, &mut |line| eprintln!("{line}"))
                    .await?;
            println!("{}", report.markdown);
            std::fs::create_dir_all(&report_dir)?;
            let file = report_dir.join(format!("cluster-{}.md", custodian_tools::bench::stamp()));
            std::fs::write(&file, &report.markdown)?;
            println!("report written to {}", file.display());
            anyhow::ensure!(
                report.problems.is_empty(),
                "acknowledged readings lost or stored twice: {}",
                report.problems.join("; ")
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Placement {
            seed,
            seeds,
            intervals,
            nodes,
            moves_max,
            report_dir,
        }) => {
            use custodian_cluster::placement_sim;
            anyhow::ensure!(
                nodes >= 2 && intervals >= 100,
                "the placement simulator needs --nodes 2 or more and --intervals 100 or more"
            );
            let options = placement_sim::SimOptions {
                seed,
                intervals,
                nodes,
                config: custodian_cluster::placement::PlacementConfig {
                    moves_max,
                    ..Default::default()
                },
                ..Default::default()
            };
            let markdown = placement_sim::run_seeds(&options, seeds, &mut |s| {
                eprintln!("seed {s} ({} of {seeds})", s - seed + 1);
            });
            println!("{markdown}");
            std::fs::create_dir_all(&report_dir)?;
            let file = report_dir.join(format!("placement-{}.md", custodian_tools::bench::stamp()));
            std::fs::write(&file, &markdown)?;
            println!("report written to {}", file.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Edge {
            terminals,
            backlog_per_terminal,
            interval_s,
            report_dir,
        }) => {
            custodian_tools::bench_edge::edge(custodian_tools::bench_edge::EdgeBenchOptions {
                terminals,
                backlog_per_terminal,
                interval_s: interval_s.max(1),
                report_dir: Some(report_dir),
            })
            .await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Detect {
            rate,
            terminals,
            batch,
            duration_s,
            warmup_s,
            memory_terminals,
            report_dir,
        }) => {
            custodian_tools::bench_detect::detect(
                custodian_tools::bench_detect::DetectBenchOptions {
                    rate,
                    terminals,
                    batch,
                    duration_s,
                    warmup_s,
                    memory_terminals,
                    report_dir: Some(report_dir),
                },
            )
            .await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Projections {
            readings,
            rate,
            duration_s,
            warmup_s,
            terminals,
            postgres_server,
            influx_url,
            report_dir,
        }) => {
            custodian_tools::bench_projections::projections(
                custodian_tools::bench_projections::ProjectionsBenchOptions {
                    readings,
                    rate,
                    duration_s,
                    warmup_s,
                    terminals,
                    postgres_server,
                    influx_url,
                    report_dir: Some(report_dir),
                },
            )
            .await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Dataset(args)) => {
            custodian_tools::bench_dataset::dataset(args.into()).await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Query {
            dataset,
            samples,
            report_dir,
        }) => {
            custodian_tools::bench_query::query(custodian_tools::bench_query::QueryBenchOptions {
                dataset: dataset.into(),
                samples,
                report_dir: Some(report_dir),
            })
            .await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Crypto { report_dir }) => {
            custodian_tools::bench::crypto(Some(report_dir))?;
            Ok(())
        }
        Command::Keys(cmd) => crate::keys_cli::run(cmd).await,
        Command::Envelope(cmd) => crate::keys_cli::envelope(cmd),
        Command::Projections(cmd) => projections(cmd).await,
        Command::Terminal(args) => custodian_tools::terminal_client::run_command(args).await,
        Command::Token(TokenCommand::Issue {
            tier,
            scope,
            ttl,
            node,
        }) => {
            let client = NodeClient::new(node.node, node.admin_token);
            let body = serde_json::json!({"tier": tier, "scope": scope, "ttl_s": parse_ttl(&ttl)?});
            match client.post_admin("/v1/admin/tokens", &body).await? {
                (201, v) => {
                    println!("{}", v["token"].as_str().unwrap_or(""));
                    eprintln!(
                        "token {} ({} {}) expires {}",
                        v["id"].as_str().unwrap_or("?"),
                        v["tier"].as_str().unwrap_or("?"),
                        v["scope"].as_str().unwrap_or("(everything)"),
                        v["expires_at"].as_str().unwrap_or("?")
                    );
                    Ok(())
                }
                (status, v) => anyhow::bail!(
                    "{} refused to issue the token ({status}): {v}",
                    client.base()
                ),
            }
        }
        Command::Token(TokenCommand::Revoke { id, node }) => {
            let client = NodeClient::new(node.node, node.admin_token);
            match client
                .post_admin(
                    &format!("/v1/admin/tokens/{id}/revoke"),
                    &serde_json::Value::Null,
                )
                .await?
            {
                (200, _) => {
                    eprintln!("token {id} revoked");
                    Ok(())
                }
                (status, v) => {
                    anyhow::bail!("{} refused to revoke {id} ({status}): {v}", client.base())
                }
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(url) = args.postgres_url {
        config.projections.postgres_url = url;
    }
    if let Some(url) = args.influx_url {
        config.projections.influx_url = url;
    }
    if let Some(urls) = args.cluster {
        config.cluster.urls = Some(urls);
    }
    if let Some(id) = args.node_id {
        config.cluster.node_id = Some(id);
    }
    let mut node = Node::start(config).await?;
    println!("custodian node listening on {}", node.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = node.wait() => r,
        _ = tokio::signal::ctrl_c() => { node.stop().await }
        _ = term.recv() => { node.stop().await }
    }
}

async fn edge(args: EdgeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.print_public_key {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot make the data dir {}", config.data_dir.display()))?;
        let tokens = custodian_node::tokens::Tokens::open(
            &config.data_dir.join("platform_signing.key"),
            &OsEntropy,
        )?;
        print!("{}", tokens.key().public_key_pem());
        return Ok(());
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let e = &mut config.edge;
    e.upstream = args.upstream.or(e.upstream.take());
    e.id = args.edge_id.or(e.id.take());
    e.upstream_public_key_file = args
        .upstream_public_key
        .or(e.upstream_public_key_file.take());
    e.seed_registrations_file = args.seed_registrations.or(e.seed_registrations_file.take());
    e.mqtt_url = args.mqtt.or(e.mqtt_url.take());
    if let Some(n) = args.outbox_bytes_max {
        e.outbox_bytes_max = n;
    }
    config.check()?;
    let mut node = Node::start_edge(config).await?;
    println!("custodian edge listening on {}", node.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = node.wait() => r,
        _ = tokio::signal::ctrl_c() => { node.stop().await }
        _ = term.recv() => { node.stop().await }
    }
}

fn verify(data_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = DataDir::acquire(&data_dir)?;
    let mut config = Config::load(config.as_deref())?;
    config.data_dir = data_dir.clone();
    let master = custodian_node::server::resolve_master_key(&config, &dir)?;
    let keyring = Arc::new(Keyring::new(master, Arc::new(OsEntropy)));
    let log = SledLog::open(
        SledLogConfig::new(dir.log_path()),
        Arc::new(SystemClock),
        Some(keyring),
    )
    .with_context(|| format!("cannot open the log in {}", dir.log_path().display()))?;
    let total = log.last_seq();
    let report = log.verify(&mut |done, _| {
        eprint!("\rverifying {done}/{total} records");
    })?;
    eprintln!();
    println!(
        "{} records, last seq {}, {} corrupt, {} gaps",
        report.records,
        report.last_seq,
        report.corrupt.len(),
        report.gaps.len()
    );
    for c in &report.corrupt {
        println!("  {c}");
    }
    for (a, b) in &report.gaps {
        println!("  gap: {a} ..= {b} missing");
    }
    anyhow::ensure!(
        report.is_ok(),
        "the log in {} failed verification",
        data_dir.display()
    );
    Ok(())
}

async fn projections(cmd: ProjectionsCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectionsCommand::Status { node, json } => {
            let client = NodeClient::new(node.node, node.admin_token);
            let all = client
                .projections()
                .await
                .with_context(|| format!("cannot read the projections of {}", client.base()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!("log last_seq {}", all["last_seq"]);
            println!(
                "{:<9} {:<8} {:>4} {:>10} {:>9} {:>12}  target",
                "name", "state", "gen", "checkpoint", "lag", "applied"
            );
            for p in all["projections"].as_array().into_iter().flatten() {
                println!(
                    "{:<9} {:<8} {:>4} {:>10} {:>9} {:>12}  {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                    p["generation"].to_string(),
                    p["checkpoint"].to_string(),
                    p["lag_events"].to_string(),
                    p["applied_events_total"].to_string(),
                    p["target"].as_str().unwrap_or("")
                );
                if let Some(e) = p["last_error"].as_str().filter(|_| p["state"] == "failing") {
                    println!("          error: {e}");
                }
                if let Some(r) = p["rebuild"].as_object() {
                    println!(
                        "          rebuilding into generation {}: {}/{}",
                        r["generation"], r["checkpoint"], r["head"]
                    );
                }
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild {
            name,
            node,
            no_wait,
        } => {
            let client = NodeClient::new(node.node, node.admin_token);
            let generation = client
                .rebuild_projection(&name)
                .await
                .with_context(|| format!("{} refused to rebuild {name}", client.base()))?;
            eprintln!("rebuilding {name} into generation {generation}");
            if no_wait {
                return Ok(());
            }
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let Some(p) = client.projection(&name).await? else {
                    anyhow::bail!("the node no longer runs {name}");
                };
                if p["last_rebuild"]["generation"].as_u64() == Some(generation)
                    && p["rebuild"].is_null()
                {
                    eprintln!(
                        "\r{}\n{name}: generation {generation} is live ({} events in {:.1} s)",
                        progress_bar(1, 1),
                        p["last_rebuild"]["events"],
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                let done = p["rebuild"]["checkpoint"].as_u64().unwrap_or(0);
                let head = p["rebuild"]["head"].as_u64().unwrap_or(0).max(1);
                eprint!(
                    "\r{} {done}/{head} events, {:.0} s",
                    progress_bar(done, head),
                    started.elapsed().as_secs_f64()
                );
                if p["state"] == "failing" {
                    eprint!(" (waiting: {})", p["last_error"].as_str().unwrap_or("?"));
                }
            }
        }
    }
}

/// `[#########...........]  45%`
fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        done.min(total) * 100 / total
    )
}

//! The settings of a node a tool starts for itself (the demo, the benchmarks).

use std::path::PathBuf;

use custodian_node::config::Config;

/// `base` with an ephemeral port on 127.0.0.1, `data_dir` and a fresh master key: a node of the tool's
/// own, in a directory of its own.
pub fn own_node(data_dir: PathBuf, base: Config) -> Config {
    Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir,
        master_key: Some(custodian_node::server::fresh_master_key_hex()),
        ..base
    }
}

/// Turns the read models off: a benchmark of ingest or detection measures that alone, and must not write
/// into the operator's default databases (the read models have `bench projections`).
pub fn without_read_models(config: &mut Config) {
    config.projections.postgres_enabled = false;
    config.projections.influx_enabled = false;
    config.projections.search_enabled = false;
}

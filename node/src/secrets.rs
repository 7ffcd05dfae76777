//! Check values of the node's secrets (never the secrets): so that a node whose master key, token key or
//! admin token does not match its cluster, or whose master key or token key does not match its data dir,
//! refuses to start — instead of joining, reporting itself healthy and then failing every filing.
//!
//! - **Cluster**: the first node records the values in the owner bucket; every other node must match
//!   them (`custodian_cluster::node::agree_on_secrets`).
//! - **Data dir**: `DATA_DIR/secrets.check` records the master key's and the token key's values once the
//!   log has opened with them (which also unwrapped its data keys: a wrong master key for a log that holds
//!   sealed events fails there already); a later start with others is refused, also while the log is
//!   still empty.

use std::collections::BTreeMap;

use anyhow::Context as _;
use custodian_events::crypto::check_value;
use custodian_events::keyring::Keyring;
use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::tokens::Tokens;

/// The file in the data dir.
pub const CHECK_FILE: &str = "secrets.check";

/// The check values of one node's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretChecks {
    pub master_key: String,
    pub platform_key: String,
    /// Not kept in the data dir: an operator may change a single node's admin token.
    #[serde(skip)]
    pub admin_token: String,
}

impl SecretChecks {
    pub fn of(keyring: &Keyring, tokens: &Tokens, admin_token: &str) -> SecretChecks {
        SecretChecks {
            master_key: keyring.master_check(),
            platform_key: tokens.key_check(),
            admin_token: check_value(admin_token.as_bytes(), "custodian admin token check v1"),
        }
    }

    /// What the nodes of a cluster must agree on.
    pub fn for_cluster(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("master_key".to_owned(), self.master_key.clone()),
            ("platform_key".to_owned(), self.platform_key.clone()),
            ("admin_token".to_owned(), self.admin_token.clone()),
        ])
    }

    /// Compares with the values recorded in `dir`, or records them when there are none.
    pub fn check_data_dir(&self, dir: &DataDir) -> anyhow::Result<()> {
        let file = dir.path().join(CHECK_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let recorded: SecretChecks = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not a record of secret check values; restore it from a backup or remove it (it is made again at the next start)",
                        file.display()
                    )
                })?;
                anyhow::ensure!(
                    recorded.master_key == self.master_key,
                    "master_key_mismatch: this is not the master key the data dir {} was made with \
                     (its check value {} is recorded in {}, this key's is {}); start the node with that master \
                     key (CUSTODIAN_MASTER_KEY or master_key_file)",
                    dir.path().display(),
                    recorded.master_key,
                    file.display(),
                    self.master_key
                );
                anyhow::ensure!(
                    recorded.platform_key == self.platform_key,
                    "token_key_mismatch: this is not the platform's token signing key the data dir {} was made \
                     with (public key fingerprint {} recorded in {}, this key's is {}); tokens issued before would \
                     not verify. Start the node with that key (platform_key_file, CUSTODIAN_PLATFORM_KEY_FILE)",
                    dir.path().display(),
                    recorded.platform_key,
                    file.display(),
                    self.platform_key
                );
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir
                .write_secret(
                    CHECK_FILE,
                    &serde_json::to_string_pretty(self).expect("check values serialise"),
                )
                .with_context(|| format!("cannot write {}", file.display())),
            Err(e) => Err(anyhow::anyhow!(e).context(format!("cannot read {}", file.display()))),
        }
    }
}

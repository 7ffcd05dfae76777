//! `custodian keys …` and `custodian envelope …`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context as _;
use custodian_events::crypto::{OsEntropy, Sm2KeyPair, Sm2PublicKey, key_fingerprint};
use custodian_events::digital_envelope::{self, PAYLOAD_BYTES_MAX};

use std::path::PathBuf;

use clap::Subcommand;

use custodian_tools::client::{NodeArgs, NodeClient};

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { out } => {
            let key = Sm2KeyPair::generate(&OsEntropy);
            match out {
                None => print!("{}{}", key.to_pkcs8_pem(), key.public_key_pem()),
                Some(prefix) => {
                    let private = with_suffix(&prefix, ".key.pem");
                    let public = with_suffix(&prefix, ".pub.pem");
                    custodian_tools::write_private(&private, &key.to_pkcs8_pem())?;
                    std::fs::write(&public, key.public_key_pem())
                        .with_context(|| format!("cannot write {}", public.display()))?;
                    eprintln!(
                        "wrote {} and {}; fingerprint {}",
                        private.display(),
                        public.display(),
                        hex::encode(key_fingerprint(&key.public_key_der()))
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Fingerprint { file } => {
            let pem = read_text(&file)?;
            let der = if pem.contains("PRIVATE KEY") {
                Sm2KeyPair::from_pkcs8_pem(&pem)
                    .with_context(|| {
                        format!("{} is not an SM2 PKCS#8 private key", file.display())
                    })?
                    .public_key_der()
            } else {
                Sm2PublicKey::from_pem(&pem)
                    .with_context(|| format!("{} is not an SM2 public key", file.display()))?
                    .to_der()
            };
            println!("{}", hex::encode(key_fingerprint(&der)));
            Ok(())
        }
        KeysCommand::Master => {
            println!("{}", custodian_node::server::fresh_master_key_hex());
            Ok(())
        }
        KeysCommand::RotateTerminal {
            node,
            terminal,
            public_key,
        } => {
            let body = serde_json::json!({ "public_key_pem": read_text(&public_key)? });
            admin_post(&node, &format!("/v1/terminals/{terminal}/keys"), &body).await
        }
        KeysCommand::RevokeTerminal {
            node,
            terminal,
            fingerprint,
        } => {
            admin_post(
                &node,
                &format!("/v1/terminals/{terminal}/keys/{fingerprint}/revoke"),
                &serde_json::Value::Null,
            )
            .await
        }
        KeysCommand::RotateDataKey { node, scope } => {
            admin_post(
                &node,
                &format!("/v1/admin/data-keys/{scope}/rotate"),
                &serde_json::Value::Null,
            )
            .await
        }
    }
}

pub fn envelope(cmd: EnvelopeCommand) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(PAYLOAD_BYTES_MAX + 64 * 1024)
        .read_to_end(&mut input)
        .context("cannot read stdin")?;
    let output = match cmd {
        EnvelopeCommand::Seal { to, sign_with } => {
            let recipient = Sm2PublicKey::from_pem(&read_text(&to)?)
                .with_context(|| format!("{} is not an SM2 public key", to.display()))?;
            let sender = Sm2KeyPair::from_pkcs8_pem(&read_text(&sign_with)?)
                .with_context(|| format!("{} is not an SM2 private key", sign_with.display()))?;
            digital_envelope::seal(&input, &recipient, &sender, &OsEntropy)?
        }
        EnvelopeCommand::Open { key, from } => {
            let recipient = Sm2KeyPair::from_pkcs8_pem(&read_text(&key)?)
                .with_context(|| format!("{} is not an SM2 private key", key.display()))?;
            let sender = Sm2PublicKey::from_pem(&read_text(&from)?)
                .with_context(|| format!("{} is not an SM2 public key", from.display()))?;
            digital_envelope::open(&input, &recipient, &sender)?
        }
    };
    std::io::stdout()
        .write_all(&output)
        .context("cannot write stdout")
}

async fn admin_post(node: &NodeArgs, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let client = NodeClient::new(node.node.clone(), node.admin_token.clone());
    let (status, answer) = client.post_admin(path, body).await?;
    println!("{answer}");
    anyhow::ensure!((200..300).contains(&status), "the node answered {status}");
    Ok(())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn with_suffix(prefix: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an SM2 key pair: PKCS#8 and SubjectPublicKeyInfo PEM, as OpenSSL writes them.
    Generate {
        /// Write PREFIX.key.pem (owner-only) and PREFIX.pub.pem instead of printing both.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The fingerprint of a key (SHA-256 of its SubjectPublicKeyInfo DER), from a public or private PEM.
    Fingerprint { file: PathBuf },
    /// Print a fresh master key (32 hex digits) for CUSTODIAN_MASTER_KEY or a master key file.
    Master,
    /// Rotate a terminal's signing key (the old key keeps verifying readings measured before now).
    RotateTerminal {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        terminal: String,
        /// The new SM2 public key, SubjectPublicKeyInfo PEM.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Revoke a terminal key: it verifies nothing from now on.
    RevokeTerminal {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        terminal: String,
        /// The key's fingerprint (`custodian keys fingerprint`).
        #[arg(long)]
        fingerprint: String,
    },
    /// Seal new events of a scope (an enterprise id, or `platform`) with a new data key.
    RotateDataKey {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        scope: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvelopeCommand {
    /// Seal stdin for a recipient, signed by the sender; the envelope goes to stdout.
    Seal {
        /// The recipient's SM2 public key (SubjectPublicKeyInfo PEM).
        #[arg(long)]
        to: PathBuf,
        /// The sender's SM2 private key (PKCS#8 PEM).
        #[arg(long)]
        sign_with: PathBuf,
    },
    /// Check the sender's signature and open an envelope from stdin; the payload goes to stdout.
    Open {
        /// The recipient's SM2 private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The sender's SM2 public key (SubjectPublicKeyInfo PEM).
        #[arg(long)]
        from: PathBuf,
    },
}

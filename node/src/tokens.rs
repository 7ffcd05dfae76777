//! Bearer tokens for regulators and administrators, signed by the platform's SM2 key.
//!
//! A token is `cst1.<claims>.<signature>`: base64url (no padding) of the claims' JSON
//! `{"v":1,"id","tier","scope","iat","exp"}` and of the DER SM2 signature (SM3, the default user id) over
//! the ASCII of `cst1.<claims>`. The platform key lives in `DATA_DIR/platform_signing.key` (PKCS#8 PEM,
//! made on first start, readable by its owner only). Issuing and revoking are events in the log
//! (`TokenIssued`, `TokenRevoked`); the token itself is never stored.
//!
//! Checking a token costs one SM2 verification the first time; verified claims are then cached (moka)
//! until they expire, and a revocation, known to the node as it appends it, is checked on every request.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use custodian_events::crypto::{Entropy, Sm2KeyPair, Sm2PublicKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "cst1.";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Longest lifetime a token may be issued with: 30 days.
pub const TTL_S_MAX: u64 = 30 * 86_400;
/// Verified tokens kept in memory.
const CACHE_ENTRIES_MAX: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    National,
    Province,
    Enterprise,
    Admin,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "national" => Tier::National,
            "province" => Tier::Province,
            "enterprise" => Tier::Enterprise,
            "admin" => Tier::Admin,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::National => "national",
            Tier::Province => "province",
            Tier::Enterprise => "enterprise",
            Tier::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub v: u32,
    pub id: String,
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// What a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// National staff and administrators: everything.
    All,
    /// A provincial bureau: the enterprises whose `province_code` is this.
    Province(String),
    /// An enterprise: itself.
    Enterprise(String),
}

impl Scope {
    /// `(province, enterprise)` to bind into a query's `($n IS NULL OR province_code = $n) AND
    /// ($m IS NULL OR enterprise_id = $m)`.
    pub fn binds(&self) -> (Option<String>, Option<String>) {
        match self {
            Scope::All => (None, None),
            Scope::Province(p) => (Some(p.clone()), None),
            Scope::Enterprise(e) => (None, Some(e.clone())),
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `bootstrap` for the node's own admin token.
    pub token_id: String,
    pub tier: Tier,
    pub scope: Scope,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.tier == Tier::Admin
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature does not verify with this platform's key")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
}

/// The platform's key, the cache of verified tokens and the revoked ids.
pub struct Tokens {
    key: Sm2KeyPair,
    public: Sm2PublicKey,
    cache: moka::sync::Cache<String, Arc<Claims>>,
    revoked: RwLock<HashSet<String>>,
}

impl Tokens {
    /// Loads `file`, or makes a new key there.
    pub fn open(file: &std::path::Path, entropy: &dyn Entropy) -> anyhow::Result<Tokens> {
        let key = match std::fs::read_to_string(file) {
            Ok(pem) => Sm2KeyPair::from_pkcs8_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an SM2 private key (PKCS#8 PEM): {e}",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nodes sharing a data root may start at once: the key is written whole to a file of
                // this process's own, then linked into place, which fails if another got there first —
                // so no node ever reads a half-written key, and all end up with the first one made.
                let key = Sm2KeyPair::generate(entropy);
                let tmp = file.with_extension(format!(
                    "tmp.{}.{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let written = (|| {
                    let mut f = opts.open(&tmp)?;
                    std::io::Write::write_all(&mut f, key.to_pkcs8_pem().as_bytes())?;
                    f.sync_all()?;
                    std::fs::hard_link(&tmp, file)
                })();
                let _ = std::fs::remove_file(&tmp);
                match written {
                    Ok(()) => key,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Tokens::open(file, entropy);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", file.display())),
        };
        Ok(Tokens::with_key(key))
    }

    /// Tokens signed with `key` (a simulation's, say), with no token revoked yet.
    pub fn with_key(key: Sm2KeyPair) -> Tokens {
        let public = Sm2PublicKey::from_der(&key.public_key_der())
            .expect("an SM2 key pair's public half is a valid SM2 public key");
        Tokens {
            key,
            public,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES_MAX)
                .time_to_live(std::time::Duration::from_secs(TTL_S_MAX))
                .build(),
            revoked: RwLock::new(HashSet::new()),
        }
    }

    /// The platform's SM2 key pair: signs tokens, and opens what edges seal to the platform.
    pub fn key(&self) -> &Sm2KeyPair {
        &self.key
    }

    /// A check value of the token-signing key: the hex SHA-256 fingerprint of its public half (public
    /// anyway), what nodes compare to know they sign and verify tokens with one key.
    pub fn key_check(&self) -> String {
        hex::encode(custodian_events::crypto::key_fingerprint(
            &self.key.public_key_der(),
        ))
    }

    /// Signs `claims` into a token.
    pub fn issue(&self, claims: &Claims) -> String {
        let body = format!(
            "{PREFIX}{}",
            B64.encode(serde_json::to_vec(claims).expect("claims serialise"))
        );
        let sig = self.key.sign(body.as_bytes());
        format!("{body}.{}", B64.encode(sig))
    }

    /// The claims of a valid token at `now_s` (Unix seconds).
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Arc<Claims>, TokenError> {
        let claims = match self.cache.get(token) {
            Some(c) => c,
            None => {
                let rest = token
                    .strip_prefix(PREFIX)
                    .ok_or(TokenError::Malformed("it does not start with cst1."))?;
                let (claims_b64, sig_b64) = rest
                    .split_once('.')
                    .ok_or(TokenError::Malformed("it has no signature part"))?;
                let sig = B64
                    .decode(sig_b64)
                    .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
                let signed = &token[..PREFIX.len() + claims_b64.len()];
                self.public
                    .verify(signed.as_bytes(), &sig)
                    .map_err(|_| TokenError::BadSignature)?;
                let json = B64
                    .decode(claims_b64)
                    .map_err(|_| TokenError::Malformed("the claims are not base64url"))?;
                let claims: Claims = serde_json::from_slice(&json)
                    .map_err(|_| TokenError::Malformed("the claims are not the expected JSON"))?;
                let claims = Arc::new(claims);
                self.cache.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        if claims.exp <= now_s {
            self.cache.invalidate(token);
            return Err(TokenError::Expired);
        }
        if self
            .revoked
            .read()
            .expect("revoked lock")
            .contains(&claims.id)
        {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    pub fn revoke(&self, id: &str) {
        self.revoked
            .write()
            .expect("revoked lock")
            .insert(id.to_owned());
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.read().expect("revoked lock").contains(id)
    }

    /// Every revocation in the log.
    pub fn load_revoked(
        &self,
        log: &dyn custodian_log::EventLog,
    ) -> Result<(), custodian_log::EventLogError> {
        let mut from = 1;
        let head = log.last_seq();
        while from <= head {
            let (events, last) = log.read_where(from, 50_000, &|t| t == "TokenRevoked")?;
            for e in events {
                if let custodian_events::Event::TokenRevoked(r) = e.event {
                    self.revoke(&r.id);
                }
            }
            if last == 0 {
                break;
            }
            from = last + 1;
        }
        Ok(())
    }
}

/// Checks a scope for a tier: a province is a 6-digit code ending in 0000, an enterprise a valid id, the
/// national and admin tiers take none.
pub fn check_scope(tier: Tier, scope: Option<&str>) -> Result<Scope, String> {
    match (tier, scope) {
        (Tier::National | Tier::Admin, None) => Ok(Scope::All),
        (Tier::National | Tier::Admin, Some(_)) => {
            Err(format!("a {} token takes no scope", tier.name()))
        }
        (Tier::Province, Some(p)) if custodian_events::event::is_province_code(p) => {
            Ok(Scope::Province(p.to_owned()))
        }
        (Tier::Province, _) => Err(
            "a province token needs --scope with the province's 6-digit code ending in 0000 (e.g. 440000)"
                .into(),
        ),
        (Tier::Enterprise, Some(e)) => custodian_events::ids::check_id(e)
            .map(|_| Scope::Enterprise(e.to_owned()))
            .map_err(|err| format!("scope {e:?}: {err}")),
        (Tier::Enterprise, None) => Err("an enterprise token needs --scope with the enterprise id".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_events::crypto::OsEntropy;

    fn claims(id: &str, exp: i64) -> Claims {
        Claims {
            v: 1,
            id: id.into(),
            tier: Tier::Province,
            scope: Some("440000".into()),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn nodes_starting_at_once_share_one_whole_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("platform_signing.key");
        let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        Tokens::open(&file, &OsEntropy)
                            .expect("every node opens the key")
                            .key()
                            .public_key_der()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key for all");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_token_verifies_until_it_expires_or_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(&dir.path().join("k"), &OsEntropy).unwrap();
        let t = tokens.issue(&claims("tok-1", 100));
        assert_eq!(
            tokens.verify(&t, 50).unwrap().scope.as_deref(),
            Some("440000")
        );
        // Cached: the same answer without a signature check.
        assert_eq!(tokens.verify(&t, 60).unwrap().id, "tok-1");
        assert_eq!(tokens.verify(&t, 100), Err(TokenError::Expired));
        let t2 = tokens.issue(&claims("tok-2", 100));
        tokens.revoke("tok-2");
        assert_eq!(tokens.verify(&t2, 50), Err(TokenError::Revoked));
        // The same key after a restart.
        let again = Tokens::open(&dir.path().join("k"), &OsEntropy).unwrap();
        assert!(
            again
                .verify(&tokens.issue(&claims("tok-3", 100)), 1)
                .is_ok()
        );
    }

    #[test]
    fn forged_or_altered_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(&dir.path().join("k"), &OsEntropy).unwrap();
        let other = Tokens::open(&dir.path().join("other"), &OsEntropy).unwrap();
        let forged = other.issue(&claims("tok-1", 100));
        assert_eq!(tokens.verify(&forged, 1), Err(TokenError::BadSignature));
        let t = tokens.issue(&claims("tok-1", 100));
        let (body, sig) = t.rsplit_once('.').unwrap();
        let mut c: Claims =
            serde_json::from_slice(&B64.decode(body.strip_prefix(PREFIX).unwrap()).unwrap())
                .unwrap();
        c.tier = Tier::National;
        c.scope = None;
        let altered = format!(
            "{PREFIX}{}.{sig}",
            B64.encode(serde_json::to_vec(&c).unwrap())
        );
        assert_eq!(tokens.verify(&altered, 1), Err(TokenError::BadSignature));
        assert!(matches!(
            tokens.verify("Bearer x", 1),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn scopes_are_checked_per_tier() {
        assert_eq!(check_scope(Tier::National, None), Ok(Scope::All));
        assert!(check_scope(Tier::National, Some("440000")).is_err());
        assert_eq!(
            check_scope(Tier::Province, Some("440000")),
            Ok(Scope::Province("440000".into()))
        );
        assert!(check_scope(Tier::Province, Some("440100")).is_err());
        assert!(check_scope(Tier::Province, None).is_err());
        assert_eq!(
            check_scope(Tier::Enterprise, Some("E-1")),
            Ok(Scope::Enterprise("E-1".into()))
        );
        assert!(check_scope(Tier::Enterprise, Some("E 1")).is_err());
    }
}

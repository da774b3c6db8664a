//! Join tokens: what `k8sd add-node` prints and `k8sd join` consumes.
//!
//! ```text
//!  token string = base64url( JSON { v: 1, ca, addrs, id, secret, role, name? } )
//!  datastore    = /k8sd/tokens/<id> → JSON TokenRecord { sha256(secret), role, name?, expiry, state }
//! ```
//!
//! Invariants:
//! - The secret never reaches the datastore; only its SHA-256 does (the secret is 32 random
//!   bytes, so a fast hash is enough: there is nothing to brute-force).
//! - A record is never deleted on use or revocation: its `state` changes, so a second use is
//!   refused with "already used by node X", not "unknown token".
//! - The token pins the cluster CA by the SHA-256 of its DER certificate: a joiner talks to no
//!   server whose chain lacks that exact CA.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The token format version this binary writes and reads.
pub const TOKEN_VERSION: u32 = 1;
/// Default lifetime of a token (`--ttl`).
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// What the token lets its holder become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    ControlPlane,
    Worker,
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::ControlPlane => "control-plane",
            TokenRole::Worker => "worker",
        })
    }
}

/// The decoded token string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub v: u32,
    /// Hex SHA-256 of the cluster CA certificate (DER).
    pub ca: String,
    /// `host:port` of the join service on control-plane nodes, tried in order.
    pub addrs: Vec<String>,
    /// Public id of the token (names its record; shown by `k8sd tokens list`).
    pub id: String,
    /// Hex of 32 random bytes; proves possession.
    pub secret: String,
    pub role: TokenRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the join token is garbled ({0}); copy the whole line `k8sd add-node` printed")]
    Garbled(String),
    #[error(
        "the join token has format version {0}, this k8sd reads versions 1 to {TOKEN_VERSION}; mint the token on a node \
         running this k8sd version, or upgrade k8sd on this machine"
    )]
    Version(u32),
    #[error("unknown join token; it was never issued by this cluster (or it is for another cluster)")]
    Unknown,
    #[error("the join token expired at {0}; mint a new one with `k8sd add-node`")]
    Expired(String),
    #[error(
        "the join token was already used by node {by} at {at}; tokens are single-use, mint a new one with `k8sd add-node`"
    )]
    Used { by: String, at: String },
    #[error("the join token was revoked at {0}; mint a new one with `k8sd add-node`")]
    Revoked(String),
    #[error(
        "the join token is for a {token} node, but this join asks for a {asked} node; use `k8sd join{flag}`"
    )]
    WrongRole {
        token: TokenRole,
        asked: TokenRole,
        flag: &'static str,
    },
    #[error(
        "the join token is reserved for node name {token:?}, not {asked:?}; leave out --name (the token names the node) or mint a token with `k8sd add-node --worker --name {asked}`"
    )]
    WrongName { token: String, asked: String },
    #[error(
        "this worker token names no node, and a worker's name must come from its token; mint one with `k8sd add-node --worker --name NODE`"
    )]
    WorkerTokenUnnamed,
    #[error("the join token was never presented to Join; start over with `k8sd join`")]
    NotClaimed,
}

impl JoinToken {
    /// A new token with a fresh id and secret.
    pub fn mint(
        ca_fingerprint: &str,
        addrs: Vec<String>,
        role: TokenRole,
        name: Option<String>,
    ) -> JoinToken {
        JoinToken {
            v: TOKEN_VERSION,
            ca: ca_fingerprint.to_string(),
            addrs,
            id: hex::encode(rand::random::<[u8; 6]>()),
            secret: hex::encode(rand::random::<[u8; 32]>()),
            role,
            name,
        }
    }

    /// The node name a join with this token uses: the token's, when it names one (a `--name`
    /// that differs is refused, before anything is sent), else the joiner's `asked` (a
    /// control-plane token; `None` means the host name). A worker token must name its node,
    /// so a worker cannot choose the name its certificates are signed for.
    pub fn node_name(&self, asked: Option<&str>) -> Result<Option<String>, TokenError> {
        match (&self.name, asked) {
            (Some(t), Some(a)) if t != a => Err(TokenError::WrongName {
                token: t.clone(),
                asked: a.to_string(),
            }),
            (Some(t), _) => Ok(Some(t.clone())),
            (None, _) if self.role == TokenRole::Worker => Err(TokenError::WorkerTokenUnnamed),
            (None, a) => Ok(a.map(str::to_string)),
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<JoinToken, TokenError> {
        let text = text.trim();
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| TokenError::Garbled(format!("not base64url: {e}")))?;
        // Read the version first, so a newer format gets a version error, not a parse error.
        let probe: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Garbled(format!("not JSON: {e}")))?;
        let v = probe
            .get("v")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| TokenError::Garbled("no version".into()))?;
        // Every version up to ours is read (a token minted by an older node mid-upgrade);
        // 0 was never written.
        if v == 0 || v > u64::from(TOKEN_VERSION) {
            return Err(TokenError::Version(u32::try_from(v).unwrap_or(u32::MAX)));
        }
        let t: JoinToken = serde_json::from_value(probe).map_err(|e| TokenError::Garbled(e.to_string()))?;
        if t.addrs.is_empty() || t.ca.len() != 64 || t.secret.len() != 64 || t.id.is_empty() {
            return Err(TokenError::Garbled(
                "missing addresses, CA fingerprint, id or secret".into(),
            ));
        }
        Ok(t)
    }

    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Where a token is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum TokenState {
    Active,
    /// A control-plane joiner presented it and received the cluster's keys; only its
    /// `JoinComplete`, under the same name, can use it now.
    Claimed {
        by: String,
        at_unix: u64,
    },
    Used {
        by: String,
        at_unix: u64,
    },
    Revoked {
        at_unix: u64,
    },
}

/// The stored half of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: TokenRole,
    #[serde(default)]
    pub name: Option<String>,
    pub created_unix: u64,
    pub expires_unix: u64,
    #[serde(flatten)]
    pub state: TokenState,
}

impl TokenRecord {
    pub fn new(t: &JoinToken, now_unix: u64, ttl_secs: u64) -> TokenRecord {
        TokenRecord {
            id: t.id.clone(),
            secret_sha256: t.secret_hash(),
            role: t.role,
            name: t.name.clone(),
            created_unix: now_unix,
            expires_unix: now_unix.saturating_add(ttl_secs),
            state: TokenState::Active,
        }
    }

    /// Whether `t` may join now as `role` under `name`. A wrong secret is reported as unknown:
    /// it tells a guesser nothing.
    pub fn check(&self, t: &JoinToken, role: TokenRole, name: &str, now_unix: u64) -> Result<(), TokenError> {
        self.check_secret_and_state(t, |s| matches!(s, TokenState::Active))?;
        if now_unix >= self.expires_unix {
            return Err(TokenError::Expired(rfc3339(self.expires_unix)));
        }
        if self.role != role {
            let flag = if self.role == TokenRole::Worker {
                " --worker"
            } else {
                ""
            };
            return Err(TokenError::WrongRole {
                token: self.role,
                asked: role,
                flag,
            });
        }
        match &self.name {
            Some(n) if n != name => Err(TokenError::WrongName {
                token: n.clone(),
                asked: name.to_string(),
            }),
            // Worker tokens minted before names were required (or forged records) name no
            // node; the joiner would pick the name its kubelet certificate is signed for.
            None if role == TokenRole::Worker => Err(TokenError::WorkerTokenUnnamed),
            _ => Ok(()),
        }
    }

    /// The second half of a control-plane join: the token must be the one `name` claimed at
    /// `Join` (not expired meanwhile: the claim already stopped every other use).
    pub fn check_claimed(&self, t: &JoinToken, name: &str) -> Result<(), TokenError> {
        self.check_secret_and_state(t, |s| matches!(s, TokenState::Claimed { by, .. } if by == name))
    }

    /// What both halves check first: the secret (a wrong one is reported as unknown), then that
    /// the state is one `usable` accepts, or the error that explains the state.
    fn check_secret_and_state(
        &self,
        t: &JoinToken,
        usable: impl Fn(&TokenState) -> bool,
    ) -> Result<(), TokenError> {
        if !constant_time_eq(self.secret_sha256.as_bytes(), t.secret_hash().as_bytes()) {
            return Err(TokenError::Unknown);
        }
        if usable(&self.state) {
            return Ok(());
        }
        Err(match &self.state {
            TokenState::Claimed { by, at_unix } | TokenState::Used { by, at_unix } => TokenError::Used {
                by: by.clone(),
                at: rfc3339(*at_unix),
            },
            TokenState::Revoked { at_unix } => TokenError::Revoked(rfc3339(*at_unix)),
            TokenState::Active => TokenError::NotClaimed,
        })
    }

    /// "active", "joining: n4", "used by n4", "revoked" or "expired", for `k8sd tokens list`.
    pub fn describe(&self, now_unix: u64) -> String {
        match &self.state {
            TokenState::Active if now_unix >= self.expires_unix => "expired".into(),
            TokenState::Active => "active".into(),
            TokenState::Claimed { by, .. } => format!("used by {by} (joining)"),
            TokenState::Used { by, .. } => format!("used by {by}"),
            TokenState::Revoked { .. } => "revoked".into(),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parse a TTL such as `24h`, `90m`, `3600s` or `3600`.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid TTL {s:?}: use e.g. 24h, 90m or 600s"))?;
    if n == 0 {
        return Err(format!("invalid TTL {s:?}: must be positive"));
    }
    Ok(n.saturating_mul(mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker token names its node (`n4`), as `add-node --worker` requires.
    fn token(role: TokenRole) -> JoinToken {
        let name = (role == TokenRole::Worker).then(|| "n4".to_string());
        JoinToken::mint(&"ab".repeat(32), vec!["10.0.0.1:6400".into()], role, name)
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused_clearly() {
        let t = token(TokenRole::Worker);
        let s = t.encode();
        assert!(!s.contains('+') && !s.contains('/'), "base64url");
        assert_eq!(JoinToken::decode(&format!("  {s}\n")).unwrap(), t);
        assert!(matches!(
            JoinToken::decode("not a token!"),
            Err(TokenError::Garbled(_))
        ));
        assert!(matches!(
            JoinToken::decode(&s[..s.len() / 2]),
            Err(TokenError::Garbled(_))
        ));
        let v2 = URL_SAFE_NO_PAD.encode(br#"{"v":2,"whatever":1}"#);
        assert_eq!(JoinToken::decode(&v2), Err(TokenError::Version(2)));
        let v0 = URL_SAFE_NO_PAD.encode(br#"{"v":0}"#);
        assert_eq!(JoinToken::decode(&v0), Err(TokenError::Version(0)));
    }

    /// A token newer than this binary reads is refused with both versions named, before any
    /// field of it is trusted; the same token at this version decodes.
    #[test]
    fn a_newer_token_names_both_versions() {
        let t = token(TokenRole::ControlPlane);
        let mut newer: serde_json::Value = serde_json::to_value(&t).unwrap();
        newer["v"] = serde_json::json!(TOKEN_VERSION + 1);
        newer["a-field-of-the-future"] = serde_json::json!(true);
        let text = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&newer).unwrap());
        let e = JoinToken::decode(&text).unwrap_err();
        assert_eq!(e, TokenError::Version(TOKEN_VERSION + 1));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("format version {}", TOKEN_VERSION + 1))
                && msg.contains(&format!("1 to {TOKEN_VERSION}")),
            "{msg}"
        );
        assert_eq!(JoinToken::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn a_worker_s_name_comes_from_its_token_and_a_different_claim_is_refused() {
        let w = token(TokenRole::Worker);
        assert_eq!(w.node_name(None), Ok(Some("n4".into())));
        assert_eq!(w.node_name(Some("n4")), Ok(Some("n4".into())));
        let err = w.node_name(Some("n1")).unwrap_err();
        assert_eq!(
            err,
            TokenError::WrongName {
                token: "n4".into(),
                asked: "n1".into()
            }
        );
        assert!(
            err.to_string().contains("k8sd add-node --worker --name n1"),
            "{err}"
        );
        let mut unnamed = w.clone();
        unnamed.name = None;
        assert_eq!(unnamed.node_name(Some("n4")), Err(TokenError::WorkerTokenUnnamed));
        assert_eq!(unnamed.node_name(None), Err(TokenError::WorkerTokenUnnamed));
        // A control-plane token may leave the name to the joiner (it receives the CA keys
        // anyway); when it names one, that name wins as for workers.
        let cp = token(TokenRole::ControlPlane);
        assert_eq!(cp.node_name(Some("n2")), Ok(Some("n2".into())));
        assert_eq!(cp.node_name(None), Ok(None));
        let mut named = cp.clone();
        named.name = Some("n3".into());
        assert!(matches!(
            named.node_name(Some("n2")),
            Err(TokenError::WrongName { .. })
        ));
    }

    #[test]
    fn a_claimed_control_plane_token_serves_only_its_claimant_s_completion() {
        let t = token(TokenRole::ControlPlane);
        let mut r = TokenRecord::new(&t, 1000, 60);
        assert_eq!(r.check_claimed(&t, "n2"), Err(TokenError::NotClaimed));
        r.state = TokenState::Claimed {
            by: "n2".into(),
            at_unix: 1010,
        };
        // A replayed Join gets nothing, whoever sends it.
        for name in ["n2", "n3"] {
            assert!(matches!(
                r.check(&t, TokenRole::ControlPlane, name, 1011),
                Err(TokenError::Used { .. })
            ));
        }
        // Completion: only the claimant, even after the token's expiry.
        assert_eq!(r.check_claimed(&t, "n2"), Ok(()));
        assert!(matches!(r.check_claimed(&t, "n3"), Err(TokenError::Used { .. })));
        let mut forged = t.clone();
        forged.secret = "cd".repeat(32);
        assert_eq!(r.check_claimed(&forged, "n2"), Err(TokenError::Unknown));
        assert_eq!(r.describe(1011), "used by n2 (joining)");
        let back: TokenRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn records_hold_only_a_hash_and_enforce_single_use_expiry_role_and_name() {
        let t = token(TokenRole::Worker);
        let mut r = TokenRecord::new(&t, 1000, 60);
        let stored = serde_json::to_string(&r).unwrap();
        assert!(!stored.contains(&t.secret), "the secret is never stored");
        assert_eq!(r.check(&t, TokenRole::Worker, "n4", 1010), Ok(()));
        assert!(matches!(
            r.check(&t, TokenRole::Worker, "n4", 1060),
            Err(TokenError::Expired(_))
        ));
        assert!(matches!(
            r.check(&t, TokenRole::ControlPlane, "n4", 1010),
            Err(TokenError::WrongRole { .. })
        ));
        let mut forged = t.clone();
        forged.secret = "cd".repeat(32);
        assert_eq!(
            r.check(&forged, TokenRole::Worker, "n4", 1010),
            Err(TokenError::Unknown)
        );
        r.name = Some("n5".into());
        assert!(matches!(
            r.check(&t, TokenRole::Worker, "n4", 1010),
            Err(TokenError::WrongName { .. })
        ));
        // A worker token that names no node (minted before names were required) is refused
        // whatever name the joiner asks for.
        r.name = None;
        assert_eq!(
            r.check(&t, TokenRole::Worker, "n4", 1010),
            Err(TokenError::WorkerTokenUnnamed)
        );
        r.name = Some("n4".into());
        r.state = TokenState::Used {
            by: "n4".into(),
            at_unix: 1020,
        };
        assert!(
            r.check(&t, TokenRole::Worker, "n4", 1030)
                .unwrap_err()
                .to_string()
                .contains("already used by node n4")
        );
        r.state = TokenState::Revoked { at_unix: 1020 };
        assert!(matches!(
            r.check(&t, TokenRole::Worker, "n4", 1030),
            Err(TokenError::Revoked(_))
        ));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h"), Ok(86400));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("15"), Ok(15));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}

//! The Secrets encryption key: kube-apiserver's `EncryptionConfiguration`, rendered and checked.
//!
//! k8sd generates one secretbox key (XSalsa20-Poly1305, 32 random bytes) when a cluster is
//! initialised and writes it beside the CA keys (0600). Every control-plane node receives the
//! same file when it joins, so every kube-apiserver reads every Secret. `identity` follows the
//! keys, so Secrets written in plaintext before encryption was on stay readable (and are
//! encrypted on their next write). k8sd replaces the keys only through `k8sd secrets
//! rotate-key` (`rotation.rs`), which gives every apiserver a new key to read before any
//! apiserver writes with it: a key the other apiservers do not know would make every Secret
//! written with it unreadable there.
//!
//! A cluster initialised by a k8sd older than encryption at rest has no file. Its first key is
//! introduced by the same rotation, from a staged configuration: `identity` first (new Secrets
//! still stored in plaintext, as the other apiservers may not read the key yet), then the key.
//! That is the only configuration with `identity` first that k8sd accepts; one with no key
//! after it is refused. In a key list (`encryption_keys`, `render_keys`) the staged `identity`
//! is the entry `KeyEntry::identity()`, which appears only first; the `identity` that ends
//! every other configuration is implied, not listed.
//!
//! Pure: rendering and validation only; `files.rs` does the IO.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::TryRngCore;
use serde::Deserialize;

use super::PkiError;

/// The file name inside the PKI directory.
pub const ENCRYPTION_CONFIG_FILE: &str = "encryption-config.yaml";

const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";

/// The provider and key name of the staged `identity` entry (see the module docs).
pub const IDENTITY: &str = "identity";

/// What a valid configuration does with new Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSummary {
    /// `secretbox` or `aescbc`: the provider that encrypts every write; `identity` in a staged
    /// first key, whose writes stay in plaintext until the rotation makes the key the write key.
    pub provider: String,
    /// The key new writes use; it appears in the stored value's prefix (`identity` when staged).
    pub write_key: String,
    /// Every key name, the write key first (older keys still decrypt).
    pub keys: Vec<String>,
}

impl EncryptionSummary {
    /// The prefix of every Secret kube-apiserver writes with this configuration, as seen in
    /// the datastore (`k8s:enc:<provider>:v1:<key name>:`).
    pub fn stored_prefix(&self) -> String {
        format!("k8s:enc:{}:v1:{}:", self.provider, self.write_key)
    }
}

/// One key of the configuration, with the provider that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// `secretbox` or `aescbc`.
    pub provider: String,
    pub name: String,
    /// Base64, as the file holds it.
    pub secret: String,
}

// The secret never appears in logs or panics.
impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.provider, self.name)
    }
}

impl KeyEntry {
    /// The staged `identity` entry: Secrets written in plaintext, first in the list.
    pub fn identity() -> KeyEntry {
        KeyEntry {
            provider: IDENTITY.into(),
            name: IDENTITY.into(),
            secret: String::new(),
        }
    }

    /// This is the staged `identity` entry, not a key.
    pub fn is_identity(&self) -> bool {
        self.provider == IDENTITY
    }

    /// A fresh secretbox key named `key-<now_unix>`, or `key-<now_unix>-N` when that name is
    /// one of `taken` (two keys made in the same second).
    pub fn generate(now_unix: u64, taken: &[&str]) -> Result<KeyEntry, PkiError> {
        let mut key = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| PkiError::Parse {
                what: "random bytes for the Secrets encryption key".into(),
                reason: e.to_string(),
            })?;
        let mut name = format!("key-{now_unix}");
        let mut n = 2;
        while taken.contains(&name.as_str()) {
            name = format!("key-{now_unix}-{n}");
            n += 1;
        }
        Ok(KeyEntry {
            provider: "secretbox".into(),
            name,
            secret: B64.encode(key),
        })
    }

    /// When k8sd made this key, from its name (`key-<unix seconds>[-N]`); `None` for a key
    /// named otherwise.
    pub fn created_unix(&self) -> Option<u64> {
        let rest = self.name.strip_prefix("key-")?;
        rest.split('-').next()?.parse().ok()
    }
}

/// A new configuration with one fresh secretbox key named after `now_unix`.
pub fn generate_encryption_config(now_unix: u64) -> Result<String, PkiError> {
    Ok(render_keys(&[KeyEntry::generate(now_unix, &[])?]))
}

/// The configuration that encrypts new Secrets with `keys[0]` and decrypts with every key, then
/// reads plaintext (`identity`, last). Consecutive keys of one provider share its entry, as
/// kube-apiserver tries providers in order and each provider's keys in order. With
/// `KeyEntry::identity()` first, the staged configuration: `identity`, then the keys (an
/// `identity` entry anywhere else is the implied last one, and is not written twice).
pub fn render_keys(keys: &[KeyEntry]) -> String {
    let staged = keys.first().is_some_and(KeyEntry::is_identity);
    let mut out = format!(
        "# Written by k8sd (init, join, `k8sd secrets rotate-key`); 0600, the same on every\n\
         # control-plane node. kube-apiserver encrypts every new Secret with the first key and\n\
         # decrypts with any; identity keeps Secrets written before encryption was on readable.\n\
         apiVersion: {API_VERSION}\n\
         kind: {KIND}\n\
         resources:\n\
         - resources:\n\
         \x20 - secrets\n\
         \x20 providers:\n"
    );
    if staged {
        out.push_str("  - identity: {}\n");
    }
    let mut last: Option<&str> = None;
    for k in keys.iter().filter(|k| !k.is_identity()) {
        if last != Some(k.provider.as_str()) {
            out.push_str(&format!("  - {}:\n      keys:\n", k.provider));
            last = Some(&k.provider);
        }
        out.push_str(&format!(
            "      - name: {}\n        secret: {}\n",
            k.name, k.secret
        ));
    }
    if !staged {
        out.push_str("  - identity: {}\n");
    }
    out
}

/// Every key of a valid configuration, in the order kube-apiserver tries them (the write key
/// first).
pub fn encryption_keys(what: &str, text: &str) -> Result<Vec<KeyEntry>, PkiError> {
    validate_encryption_config(what, text)?;
    let cfg: Config = serde_yaml::from_str(text).map_err(|e| PkiError::Parse {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    let mut keys = Vec::new();
    let providers = cfg
        .resources
        .iter()
        .find(|r| r.resources.iter().any(|x| x == "secrets"))
        .map(|r| r.providers.as_slice())
        .unwrap_or_default();
    if providers.first().is_some_and(|p| p.identity.is_some()) {
        keys.push(KeyEntry::identity());
    }
    for p in providers {
        for (provider, k) in [("secretbox", &p.secretbox), ("aescbc", &p.aescbc)] {
            for key in k.iter().flat_map(|k| &k.keys) {
                keys.push(KeyEntry {
                    provider: provider.into(),
                    name: key.name.clone(),
                    secret: key.secret.trim().to_string(),
                });
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
fn render(name: &str, secret: &str) -> String {
    render_keys(&[KeyEntry {
        provider: "secretbox".into(),
        name: name.into(),
        secret: secret.into(),
    }])
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    api_version: String,
    kind: String,
    resources: Vec<Resources>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// One provider: exactly one of the fields is set (kube-apiserver's own rule).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    secretbox: Option<Keys>,
    aescbc: Option<Keys>,
    identity: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<Key>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    name: String,
    secret: String,
}

/// Checks `text` the way kube-apiserver would, and that Secrets are encrypted by it: the
/// Secrets entry's first provider is secretbox or aescbc with well-formed keys. k8sd never
/// starts an apiserver with a configuration that would store Secrets in plaintext.
pub fn validate_encryption_config(what: &str, text: &str) -> Result<EncryptionSummary, PkiError> {
    let bad = |reason: String| PkiError::Parse {
        what: what.to_string(),
        reason,
    };
    let cfg: Config = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if cfg.api_version != API_VERSION || cfg.kind != KIND {
        return Err(bad(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, found {} {}",
            cfg.api_version, cfg.kind
        )));
    }
    let entry = cfg
        .resources
        .iter()
        .find(|r| r.resources.iter().any(|x| x == "secrets"))
        .ok_or_else(|| bad("no entry for the resource \"secrets\"".into()))?;
    for (i, p) in entry.providers.iter().enumerate() {
        let set = [p.secretbox.is_some(), p.aescbc.is_some(), p.identity.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(bad(format!(
                "provider {i} must name exactly one of secretbox, aescbc, identity"
            )));
        }
        if let Some(k) = &p.secretbox {
            check_keys(&bad, "secretbox", k, &[32])?;
        }
        if let Some(k) = &p.aescbc {
            check_keys(&bad, "aescbc", k, &[16, 24, 32])?;
        }
    }
    let first = entry.providers.first();
    if let Some((provider, keys)) = key_provider(first) {
        let names: Vec<String> = keys.keys.iter().map(|k| k.name.clone()).collect();
        return Ok(EncryptionSummary {
            provider: provider.into(),
            write_key: names[0].clone(),
            keys: names,
        });
    }
    // `identity` first: accepted only as a staged first key, with a key right after it.
    match key_provider(entry.providers.get(1)) {
        Some((_, keys)) if first.is_some_and(|p| p.identity.is_some()) => Ok(EncryptionSummary {
            provider: IDENTITY.into(),
            write_key: IDENTITY.into(),
            keys: std::iter::once(IDENTITY.to_string())
                .chain(keys.keys.iter().map(|k| k.name.clone()))
                .collect(),
        }),
        _ => Err(bad(
            "the first provider for secrets must be secretbox or aescbc (or identity followed by \
             one of them, while `k8sd secrets rotate-key` introduces a first key): with identity \
             alone first, Secrets are stored in plaintext"
                .into(),
        )),
    }
}

/// The provider and keys of `p` when it encrypts (secretbox or aescbc).
fn key_provider(p: Option<&Provider>) -> Option<(&'static str, &Keys)> {
    match p {
        Some(Provider {
            secretbox: Some(k), ..
        }) => Some(("secretbox", k)),
        Some(Provider { aescbc: Some(k), .. }) => Some(("aescbc", k)),
        _ => None,
    }
}

fn check_keys(
    bad: &impl Fn(String) -> PkiError,
    provider: &str,
    keys: &Keys,
    lengths: &[usize],
) -> Result<(), PkiError> {
    if keys.keys.is_empty() {
        return Err(bad(format!("{provider} has no keys")));
    }
    let mut seen = BTreeSet::new();
    for k in &keys.keys {
        if k.name.is_empty() || k.name.contains(':') || !seen.insert(k.name.as_str()) {
            return Err(bad(format!(
                "{provider} key name {:?} must be non-empty, unique and without ':'",
                k.name
            )));
        }
        let raw = B64
            .decode(k.secret.trim())
            .map_err(|e| bad(format!("{provider} key {} is not base64: {e}", k.name)))?;
        if !lengths.contains(&raw.len()) {
            return Err(bad(format!(
                "{provider} key {} is {} bytes; it must be {lengths:?}",
                k.name,
                raw.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_config_encrypts_secrets_with_a_fresh_secretbox_key_then_reads_plaintext() {
        let text = generate_encryption_config(1_700_000_000).unwrap();
        let s = validate_encryption_config("test", &text).unwrap();
        assert_eq!(s.provider, "secretbox");
        assert_eq!(s.write_key, "key-1700000000");
        assert_eq!(s.stored_prefix(), "k8s:enc:secretbox:v1:key-1700000000:");
        // The same YAML kube-apiserver reads: secrets only, secretbox then identity.
        let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let entry = &y["resources"][0];
        assert_eq!(entry["resources"][0].as_str(), Some("secrets"));
        assert!(entry["providers"][1]["identity"].is_mapping());
        let secret = entry["providers"][0]["secretbox"]["keys"][0]["secret"]
            .as_str()
            .unwrap();
        assert_eq!(B64.decode(secret).unwrap().len(), 32);
        // Two inits never share a key.
        let other = generate_encryption_config(1_700_000_000).unwrap();
        assert_ne!(text, other);
    }

    /// What rotate-key writes: keys in the given order, one entry per run of one provider,
    /// identity last; read back as the same list; a key's age comes from its name.
    #[test]
    fn rendered_keys_read_back_in_order_and_name_their_creation_time() {
        let k = |p: &str, n: &str, len: usize| KeyEntry {
            provider: p.into(),
            name: n.into(),
            secret: B64.encode(vec![1u8; len]),
        };
        let keys = vec![
            k("secretbox", "key-200", 32),
            k("aescbc", "legacy", 16),
            k("secretbox", "key-100-2", 32),
        ];
        let text = render_keys(&keys);
        assert_eq!(encryption_keys("t", &text).unwrap(), keys);
        let s = validate_encryption_config("t", &text).unwrap();
        assert_eq!(
            (s.provider.as_str(), s.write_key.as_str()),
            ("secretbox", "key-200")
        );
        let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let providers = y["resources"][0]["providers"].as_sequence().unwrap();
        assert_eq!(providers.len(), 4, "{text}");
        assert!(providers[3]["identity"].is_mapping());
        assert_eq!(keys[0].created_unix(), Some(200));
        assert_eq!(keys[2].created_unix(), Some(100));
        assert_eq!(keys[1].created_unix(), None);
        // The secret never shows in a debug print (logs, panics).
        assert_eq!(format!("{:?}", keys[0]), "secretbox:key-200");
        // A name taken in the same second gets a suffix.
        let fresh = KeyEntry::generate(200, &["key-200", "key-200-2"]).unwrap();
        assert_eq!(fresh.name, "key-200-3");
    }

    #[test]
    fn configs_that_would_store_plaintext_or_break_the_apiserver_are_refused() {
        let good = render("k1", &B64.encode([7u8; 32]));
        assert!(validate_encryption_config("x", &good).is_ok());
        let cases = [
            ("not yaml: [", "cannot parse"),
            (
                &good.replace("EncryptionConfiguration", "Other") as &str,
                "expected apiVersion",
            ),
            (&good.replace("- secrets", "- configmaps"), "no entry"),
            (&render("k1", &B64.encode([7u8; 16])), "16 bytes"),
            (&render("k1", "not_base64"), "not base64"),
            (&render("a:b", &B64.encode([7u8; 32])), "without ':'"),
            (
                &good.replace(
                    "  - secretbox:",
                    "  - identity: {}\n  - identity: {}\n  - secretbox:",
                ),
                "plaintext",
            ),
            (
                &good[..good.find("  - secretbox:").unwrap()]
                    .replace("providers:\n", "providers:\n  - identity: {}\n"),
                "plaintext",
            ),
            (&good.replace("secretbox:", "kms:"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = validate_encryption_config("x", text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?} for\n{text}");
        }
    }

    /// A cluster with no key gets its first one staged: identity first (writes stay plaintext
    /// while other apiservers may not read the key), the key second. It reads back as the
    /// identity entry then the key, and renders the same way, with identity written once.
    #[test]
    fn a_staged_first_key_keeps_writes_in_plaintext_and_reads_back_with_identity_first() {
        let key = KeyEntry {
            provider: "secretbox".into(),
            name: "key-300".into(),
            secret: B64.encode([3u8; 32]),
        };
        let staged = vec![KeyEntry::identity(), key.clone()];
        let text = render_keys(&staged);
        let s = validate_encryption_config("t", &text).unwrap();
        assert_eq!(
            (s.provider.as_str(), s.write_key.as_str()),
            ("identity", "identity")
        );
        assert_eq!(s.keys, ["identity", "key-300"]);
        assert_eq!(encryption_keys("t", &text).unwrap(), staged);
        let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let providers = y["resources"][0]["providers"].as_sequence().unwrap();
        assert_eq!(providers.len(), 2, "{text}");
        assert!(providers[0]["identity"].is_mapping());
        // The key made the write key: identity back at the end, implied in the list.
        let text = render_keys(&[key.clone(), KeyEntry::identity()]);
        assert_eq!(encryption_keys("t", &text).unwrap(), vec![key.clone()]);
        assert_eq!(text, render_keys(&[key]));
    }
}

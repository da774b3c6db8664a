//! The Secrets encryption key: kube-apiserver's `EncryptionConfiguration`, rendered and checked.
//!
//! k8sd generates one secretbox key (XSalsa20-Poly1305, 32 random bytes) when a cluster is
//! initialised and writes it beside the CA keys (0600). Every control-plane node receives the
//! same file when it joins, so every kube-apiserver reads every Secret. `identity` follows the
//! key, so Secrets written in plaintext before encryption was on stay readable (and are
//! encrypted on their next write). Like `sa.key`, the key is never replaced by k8sd: a new key
//! that the other apiservers do not know would make every Secret written with it unreadable
//! there.
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

/// What a valid configuration does with new Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSummary {
    /// `secretbox` or `aescbc`: the provider that encrypts every write.
    pub provider: String,
    /// The key new writes use; it appears in the stored value's prefix.
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

/// A new configuration with one fresh secretbox key named after `now_unix`.
pub fn generate_encryption_config(now_unix: u64) -> Result<String, PkiError> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| PkiError::Parse {
            what: "random bytes for the Secrets encryption key".into(),
            reason: e.to_string(),
        })?;
    Ok(render(&format!("key-{now_unix}"), &B64.encode(key)))
}

fn render(name: &str, secret: &str) -> String {
    format!(
        "# Written by k8sd at init and handed to every control-plane node that joins (0600).\n\
         # kube-apiserver encrypts every new Secret with the first key; identity keeps Secrets\n\
         # written before encryption was on readable.\n\
         apiVersion: {API_VERSION}\n\
         kind: {KIND}\n\
         resources:\n\
         - resources:\n\
         \x20 - secrets\n\
         \x20 providers:\n\
         \x20 - secretbox:\n\
         \x20     keys:\n\
         \x20     - name: {name}\n\
         \x20       secret: {secret}\n\
         \x20 - identity: {{}}\n"
    )
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
    let mut first = None;
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
        if first.is_none() {
            first = Some(p);
        }
    }
    let (provider, keys) = match first {
        Some(Provider {
            secretbox: Some(k), ..
        }) => ("secretbox", k),
        Some(Provider { aescbc: Some(k), .. }) => ("aescbc", k),
        _ => {
            return Err(bad(
                "the first provider for secrets must be secretbox or aescbc: with identity first, \
                 Secrets are stored in plaintext"
                    .into(),
            ));
        }
    };
    let names: Vec<String> = keys.keys.iter().map(|k| k.name.clone()).collect();
    Ok(EncryptionSummary {
        provider: provider.into(),
        write_key: names[0].clone(),
        keys: names,
    })
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
                &good.replace("  - secretbox:", "  - identity: {}\n  - secretbox:"),
                "plaintext",
            ),
            (&good.replace("secretbox:", "kms:"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = validate_encryption_config("x", text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?} for\n{text}");
        }
    }
}

//! This node's side of a Secrets key rotation (the cluster API's `Encryption` call): install
//! the new encryption configuration, then make this node's kube-apiserver use it.
//!
//! kube-apiserver runs with `--encryption-provider-config-automatic-reload=true`: it checks the
//! file once a minute and swaps its keys in place, with no restart and so no API downtime
//! (a single control-plane node has no other apiserver to serve meanwhile). After writing the
//! file we wait until the apiserver reports the file's SHA-256 as its loaded configuration
//! (`apiserver_encryption_config_controller_last_config_info{hash="sha256:…"}` on its
//! `/metrics`, set at start and after every successful reload). Only then may the rotation move
//! to its next phase: a phase that starts writing with a key some apiserver cannot read yet
//! would make Secrets unreadable there.
//!
//! An apiserver that fails to load the file counts it in
//! `apiserver_encryption_config_controller_automatic_reloads_total{status="failure"}` and keeps
//! its previous keys: the call then fails, and the previous file is put back, so the node
//! keeps running its last good configuration.
//!
//! An apiserver that does not reload (its reload flag removed by the operator, or started
//! before the node had a key at all) is restarted instead, and one that has not loaded the file
//! within [`RELOAD_WAIT`] too: a restart always reads the file.

use std::sync::Weak;
use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::Daemon;
use super::components::{self, Ctx};
use crate::cluster::EncryptionHostError;
use crate::cluster::wire::KeysApplied;
use crate::pki;

/// kube-apiserver's flag naming the Secrets encryption configuration.
const ENCRYPTION_FLAG: &str = "--encryption-provider-config";
/// kube-apiserver's flag that makes it reload that file when it changes.
const RELOAD_FLAG: &str = "--encryption-provider-config-automatic-reload";
/// The metric whose `hash` label is the SHA-256 of the configuration file the apiserver uses.
const LOADED_METRIC: &str = "apiserver_encryption_config_controller_last_config_info";
/// Its reloads, by `status` (`success`, `failure`).
const FAILURES_METRIC: &str = "apiserver_encryption_config_controller_automatic_reloads_total";
/// The apiserver checks the file every 60 s; a little more than that, and well inside the
/// cluster API's 120 s call timeout, so the fallback restart still fits.
const RELOAD_WAIT: Duration = Duration::from_secs(75);
const POLL: Duration = Duration::from_secs(2);

/// The cluster API's `Encryption` call on this node: its configuration file and its
/// kube-apiserver (reached through the daemon, which owns the supervisor).
#[derive(Debug)]
pub(super) struct ApiserverKeys {
    pub path: std::path::PathBuf,
    pub daemon: Weak<Daemon>,
}

/// What to do with a running kube-apiserver after the file changed, from its arguments.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// It reloads the file on its own: wait until it has.
    AwaitReload,
    /// It reads the file but does not reload it: restart it.
    Restart,
    /// It runs without the file (its cluster had no key): restart it with the flags added.
    AddFlags,
}

fn how_to_take(args: &[String]) -> Take {
    let flag = |name: &str| {
        args.iter()
            .any(|a| a == name || a.starts_with(&format!("{name}=")))
    };
    if !flag(ENCRYPTION_FLAG) {
        Take::AddFlags
    } else if args
        .iter()
        .any(|a| a == RELOAD_FLAG || a == &format!("{RELOAD_FLAG}=true"))
    {
        Take::AwaitReload
    } else {
        Take::Restart
    }
}

/// The value of [`LOADED_METRIC`]'s `hash` label for a file holding `text`.
fn config_hash(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// The samples of metric `name` in a Prometheus text exposition: each line's labels
/// (`key="value"`, whole) and its value.
fn samples<'a>(metrics: &'a str, name: &'a str) -> impl Iterator<Item = (Vec<&'a str>, &'a str)> + 'a {
    metrics.lines().filter_map(move |l| {
        // `{` right after the name: another metric may start with the same text.
        let (labels, value) = l.strip_prefix(name)?.strip_prefix('{')?.split_once('}')?;
        Some((labels.split(',').map(str::trim).collect(), value.trim()))
    })
}

/// Whether a Prometheus text exposition says the apiserver has loaded the file with `hash`.
fn reports_loaded(metrics: &str, hash: &str) -> bool {
    // Whole labels only: `apiserver_id_hash="…"` ends with the same text.
    let label = format!("hash=\"{hash}\"");
    samples(metrics, LOADED_METRIC).any(|(labels, _)| labels.contains(&label.as_str()))
}

/// The failed reloads kube-apiserver has counted (0 before the first).
fn reload_failures(metrics: &str) -> f64 {
    samples(metrics, FAILURES_METRIC)
        .filter(|(labels, _)| labels.contains(&"status=\"failure\""))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

impl crate::cluster::EncryptionHost for ApiserverKeys {
    fn current(&self) -> Result<Option<String>, EncryptionHostError> {
        Ok(pki::read_encryption_config(&self.path)?.map(|(text, _)| text))
    }

    fn apply(&self, text: String) -> BoxFuture<'static, Result<KeysApplied, EncryptionHostError>> {
        let (path, daemon) = (self.path.clone(), self.daemon.clone());
        Box::pin(async move {
            let install = |text: &str| pki::install_encryption_config(&path, text);
            // Not running yet: its kube-apiserver starts with the new file.
            let Some((d, r)) = daemon.upgrade().and_then(|d| d.running().map(|r| (d, r))) else {
                install(&text)?;
                return Ok(KeysApplied::NotRunning);
            };
            let args = r
                .supervisor
                .status()
                .into_iter()
                .find(|c| c.name == "kube-apiserver")
                .map(|c| c.args)
                .unwrap_or_default();
            let restart_err = |e: crate::supervisor::Error| EncryptionHostError::Restart(Box::new(e));
            let take = how_to_take(&args);
            // Counted before the file changes: one more failure afterwards is this file refused.
            let failures_before = match take {
                Take::AwaitReload => d.apiserver_metrics().await.map(|m| reload_failures(&m)),
                _ => None,
            };
            let previous = pki::read_encryption_config(&path).ok().flatten().map(|(t, _)| t);
            install(&text)?;
            match take {
                Take::AwaitReload => match d.await_reload(&config_hash(&text), failures_before).await {
                    Reload::Loaded => return Ok(KeysApplied::Reloaded),
                    Reload::Refused => {
                        // The apiserver still runs with its previous keys; the file goes back
                        // to them too, so a later restart does not read what it refused.
                        if let Some(previous) = previous {
                            install(&previous)?;
                        }
                        return Err(EncryptionHostError::Refused);
                    }
                    Reload::TimedOut => {
                        tracing::warn!(
                            wait = ?RELOAD_WAIT,
                            "kube-apiserver has not reloaded the Secrets encryption configuration; restarting it"
                        );
                        r.supervisor
                            .restart("kube-apiserver")
                            .await
                            .map_err(restart_err)?;
                    }
                },
                Take::Restart => r
                    .supervisor
                    .restart("kube-apiserver")
                    .await
                    .map_err(restart_err)?,
                Take::AddFlags => {
                    // Started without a key (its cluster had none): the flags are new, and a
                    // plain restart would not read the file. Rendered as at start, so the
                    // operator's extra args still apply.
                    let ctx = Ctx {
                        layout: &d.opts.layout,
                        cfg: &r.cfg,
                        cgroup_root: &d.opts.cgroup_root,
                        encrypt_secrets: true,
                    };
                    let args = std::iter::once("kube-apiserver".to_string())
                        .chain(components::apiserver_args(&ctx))
                        .collect();
                    r.supervisor
                        .restart_with_args("kube-apiserver", args)
                        .await
                        .map_err(restart_err)?;
                }
            }
            Ok(KeysApplied::Restarted)
        })
    }
}

/// How a wait for a reload ended.
#[derive(Debug, PartialEq, Eq)]
enum Reload {
    Loaded,
    /// The apiserver counted a failed reload: it keeps its previous keys.
    Refused,
    TimedOut,
}

impl Daemon {
    /// This node's kube-apiserver's `/metrics`, if it answers.
    async fn apiserver_metrics(&self) -> Option<String> {
        let admin = self.admin_client().ok()?;
        match admin
            .get(components::apiserver_addr(), "/metrics", Duration::from_secs(10))
            .await
        {
            Ok((200, body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            Ok((status, _)) => {
                tracing::debug!(status, "kube-apiserver's /metrics");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading kube-apiserver's /metrics");
                None
            }
        }
    }

    /// Wait until this node's kube-apiserver reports the configuration with `hash` as loaded,
    /// or more failed reloads than `failures_before`, for at most [`RELOAD_WAIT`].
    async fn await_reload(&self, hash: &str, failures_before: Option<f64>) -> Reload {
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        loop {
            if let Some(m) = self.apiserver_metrics().await {
                if reports_loaded(&m, hash) {
                    return Reload::Loaded;
                }
                if failures_before.is_some_and(|before| reload_failures(&m) > before) {
                    return Reload::Refused;
                }
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Reload::TimedOut;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_apiserver_with_both_flags_is_left_to_reload() {
        let a = args(&[
            "kube-apiserver",
            "--encryption-provider-config=/d/pki/encryption-config.yaml",
            "--encryption-provider-config-automatic-reload=true",
        ]);
        assert_eq!(how_to_take(&a), Take::AwaitReload);
    }

    #[test]
    fn reload_turned_off_or_missing_means_a_restart() {
        let on = "--encryption-provider-config=/d/pki/encryption-config.yaml";
        assert_eq!(how_to_take(&args(&["kube-apiserver", on])), Take::Restart);
        let off = "--encryption-provider-config-automatic-reload=false";
        assert_eq!(how_to_take(&args(&["kube-apiserver", on, off])), Take::Restart);
    }

    #[test]
    fn an_apiserver_without_the_file_gets_the_flags() {
        // The reload flag alone does not count as reading the file.
        let a = args(&[
            "kube-apiserver",
            "--encryption-provider-config-automatic-reload=true",
        ]);
        assert_eq!(how_to_take(&a), Take::AddFlags);
        assert_eq!(how_to_take(&[]), Take::AddFlags);
    }

    #[test]
    fn failed_reloads_are_counted_from_the_failure_lines_only() {
        assert_eq!(reload_failures(""), 0.0);
        let body = format!(
            "# TYPE {FAILURES_METRIC} counter\n\
             {FAILURES_METRIC}{{apiserver_id_hash=\"sha256:00ff\",status=\"success\"}} 4\n\
             {FAILURES_METRIC}{{apiserver_id_hash=\"sha256:00ff\",status=\"failure\"}} 2\n"
        );
        assert_eq!(reload_failures(&body), 2.0);
    }

    #[test]
    fn the_loaded_hash_is_read_from_the_metric_line() {
        let text = "kind: EncryptionConfiguration\n";
        let hash = config_hash(text);
        assert_eq!(hash.len(), "sha256:".len() + 64);
        let body = format!(
            "# HELP {LOADED_METRIC} Information about the last applied encryption configuration\n\
             # TYPE {LOADED_METRIC} gauge\n\
             {LOADED_METRIC}{{apiserver_id_hash=\"sha256:00ff\",hash=\"{hash}\"}} 1\n"
        );
        assert!(reports_loaded(&body, &hash));
        assert!(!reports_loaded(&body, &config_hash("another file\n")));
        // The apiserver's identity hash is not the file's.
        assert!(!reports_loaded(&body, "sha256:00ff"));
        // Another metric carrying the same label does not count.
        let other = format!("apiserver_other_info{{hash=\"{hash}\"}} 1\n");
        assert!(!reports_loaded(&other, &hash));
    }
}

//! Operators' changes to the components' flags (`--kube-apiserver-arg NAME=VALUE` and its
//! siblings, or `extra-args:` in the config file), applied over k8sd's defaults.
//!
//! A change sets a flag (`NAME=VALUE`: added, or replacing k8sd's value) or removes one of
//! k8sd's defaults (`NAME-`, as `kubectl label` removes a label). Only the Kubernetes components
//! k8sd supervises take changes; containerd is configured through its file.
//!
//! Names are checked here; whether the component accepts them is checked by the component
//! itself (`check_with_component`): its own flag parser runs on the final command line with
//! `--help`, which parses every flag and exits without starting anything. So an unknown flag or
//! a malformed value is refused at init or join with the component's own message, before
//! anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The components whose flags operators may change, by the names `k8sd status` shows.
pub const COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// One component's changes: flag name (without dashes) to `Some(value)` to set, `None` to remove.
pub type Changes = BTreeMap<String, Option<String>>;

/// Every component's changes, by component name. Persisted in node.yaml as `extra-args`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ExtraArgs(pub BTreeMap<String, Changes>);

#[derive(Debug, thiserror::Error)]
pub enum ExtraArgsError {
    #[error("unknown component {component:?} in extra args; valid components are: {}", COMPONENTS.join(", "))]
    UnknownComponent { component: String },
    #[error(
        "{component} argument {arg:?} is malformed: write NAME=VALUE to set a flag or NAME- to remove one of k8sd's defaults (NAME is the flag without its dashes: letters, digits, '-' and '.')"
    )]
    Malformed { component: String, arg: String },
    #[error("{component} does not run on a {role} node; remove its extra args")]
    NotOnThisNode { component: String, role: String },
    #[error("{component} refused the flags {args}: {message}")]
    Refused {
        component: String,
        args: String,
        message: String,
    },
    #[error("cannot run {program} to check the {component} flags: {source}")]
    Check {
        program: PathBuf,
        component: String,
        #[source]
        source: CheckFailure,
    },
}

/// Why a component could not check its flags.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("it did not exit within {} s", CHECK_TIMEOUT.as_secs())]
    TimedOut,
    #[error(transparent)]
    Spawn(#[from] std::io::Error),
}

/// How long a component may take to print its `--help`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

impl ExtraArgs {
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|c| c.is_empty())
    }

    /// The changes for `component` (empty if none).
    pub fn changes(&self, component: &str) -> Option<&Changes> {
        self.0.get(component).filter(|c| !c.is_empty())
    }

    /// Add command-line changes (`NAME=VALUE` or `NAME-`) for `component`; later ones win.
    pub fn add_cli(&mut self, component: &str, items: &[String]) -> Result<(), ExtraArgsError> {
        for item in items {
            let (name, value) = parse_item(component, item)?;
            self.0
                .entry(component.to_string())
                .or_default()
                .insert(name, value);
        }
        Ok(())
    }

    /// Fill components that have no change here from `other` (flags win over the config file).
    pub fn merge_missing(&mut self, other: ExtraArgs) {
        for (component, changes) in other.0 {
            self.0.entry(component).or_insert(changes);
        }
    }

    /// Check component and flag names (not whether the component accepts them).
    pub fn validate(&self) -> Result<(), ExtraArgsError> {
        for (component, changes) in &self.0 {
            if !COMPONENTS.contains(&component.as_str()) {
                return Err(ExtraArgsError::UnknownComponent {
                    component: component.clone(),
                });
            }
            for name in changes.keys() {
                if !valid_name(name) {
                    return Err(ExtraArgsError::Malformed {
                        component: component.clone(),
                        arg: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `NAME=VALUE` → set, `NAME-` → remove. Leading dashes on NAME are accepted and dropped, so
/// `--v=2` and `v=2` mean the same.
fn parse_item(component: &str, item: &str) -> Result<(String, Option<String>), ExtraArgsError> {
    let malformed = || ExtraArgsError::Malformed {
        component: component.to_string(),
        arg: item.to_string(),
    };
    let (name, value) = match item.split_once('=') {
        Some((n, v)) => (n.trim_start_matches('-'), Some(v.to_string())),
        None => match item.strip_suffix('-') {
            Some(n) => (n.trim_start_matches('-'), None),
            None => return Err(malformed()),
        },
    };
    if !valid_name(name) {
        return Err(malformed());
    }
    Ok((name.to_string(), value))
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.' || *c == b'_')
}

/// k8sd's default arguments (each `--name=value`) with `changes` applied: a set flag replaces
/// k8sd's value where it stood (once), a removed flag is dropped, and new flags follow in name
/// order, so the command line is stable from start to start.
pub fn apply(defaults: Vec<String>, changes: Option<&Changes>) -> Vec<String> {
    let Some(changes) = changes else {
        return defaults;
    };
    let mut placed = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(defaults.len() + changes.len());
    for arg in defaults {
        let name = arg
            .strip_prefix("--")
            .and_then(|a| a.split('=').next())
            .unwrap_or_default()
            .to_string();
        match changes.get(&name) {
            None => out.push(arg),
            Some(None) => {}
            Some(Some(v)) => {
                if placed.insert(name.clone()) {
                    out.push(format!("--{name}={v}"));
                }
            }
        }
    }
    for (name, value) in changes {
        if let Some(v) = value
            && !placed.contains(name)
        {
            out.push(format!("--{name}={v}"));
        }
    }
    out
}

/// Run `kubebin COMPONENT ARGS... --help`: the component's flag parser reads the whole command
/// line and exits 0 without starting, or fails with its own message on an unknown flag or a
/// malformed value.
pub async fn check_with_component(
    kubebin: &Path,
    component: &str,
    args: &[String],
    changes: &Changes,
) -> Result<(), ExtraArgsError> {
    let check_err = |source: CheckFailure| ExtraArgsError::Check {
        program: kubebin.to_path_buf(),
        component: component.to_string(),
        source,
    };
    let run = tokio::process::Command::new(kubebin)
        .arg(component)
        .args(args)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHECK_TIMEOUT, run)
        .await
        .map_err(|_| check_err(CheckFailure::TimedOut))?
        .map_err(|e| check_err(e.into()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(ExtraArgsError::Refused {
        component: component.to_string(),
        args: describe(changes),
        message: component_error(&text),
    })
}

/// The line of a failed run that says what is wrong: cobra prints `Error: ...` after the
/// usage, the kubelet logs `"command failed" err="..."`; otherwise the last line.
fn component_error(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(l) = lines.iter().find(|l| l.starts_with("Error: ")) {
        return l.trim_start_matches("Error: ").to_string();
    }
    if let Some(l) = lines.iter().find(|l| l.contains("err=")) {
        let e = &l[l.find("err=").unwrap_or(0) + 4..];
        return e.trim_matches('"').replace("\\\"", "\"");
    }
    lines
        .last()
        .map(|l| l.to_string())
        .unwrap_or_else(|| "it exited with an error".into())
}

/// The changes as the operator wrote them, for messages.
pub fn describe(changes: &Changes) -> String {
    changes
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("--{n}={v}"),
            None => format!("{n}- (removed)"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Config files may give values as YAML numbers or booleans (`v: 2`); they are flags' text.
impl<'de> Deserialize<'de> for ExtraArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        let raw: BTreeMap<String, BTreeMap<String, Option<Scalar>>> = BTreeMap::deserialize(d)?;
        Ok(ExtraArgs(
            raw.into_iter()
                .map(|(component, changes)| {
                    let changes = changes
                        .into_iter()
                        .map(|(name, v)| {
                            let v = v.map(|s| match s {
                                Scalar::Text(t) => t,
                                Scalar::Int(i) => i.to_string(),
                                Scalar::Float(f) => f.to_string(),
                                Scalar::Bool(b) => b.to_string(),
                            });
                            (name.trim_start_matches('-').to_string(), v)
                        })
                        .collect();
                    (component, changes)
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn set_replaces_in_place_remove_drops_and_new_flags_follow() {
        let mut x = ExtraArgs::default();
        x.add_cli(
            "kube-scheduler",
            &args(&["profiling-", "--bind-address=0.0.0.0", "v=2", "v=3"]),
        )
        .unwrap();
        let out = apply(
            args(&["--kubeconfig=/k", "--bind-address=127.0.0.1", "--profiling=false"]),
            x.changes("kube-scheduler"),
        );
        assert_eq!(out, args(&["--kubeconfig=/k", "--bind-address=0.0.0.0", "--v=3"]));
        // No changes for a component: k8sd's defaults, untouched.
        assert_eq!(apply(args(&["--a=1"]), x.changes("kubelet")), args(&["--a=1"]));
    }

    #[test]
    fn bad_names_and_components_are_refused_with_what_to_write() {
        let mut x = ExtraArgs::default();
        for bad in ["profiling", "=1", "--=1", "bad name=1", "-"] {
            let e = x.add_cli("kubelet", &args(&[bad])).unwrap_err().to_string();
            assert!(e.contains("NAME=VALUE") && e.contains(bad), "{e}");
        }
        let file: ExtraArgs = serde_yaml::from_str("kube-apiserverr: {v: 2}\n").unwrap();
        let e = file.validate().unwrap_err().to_string();
        assert!(e.contains("kube-apiserverr") && e.contains("kube-proxy"), "{e}");
    }

    #[test]
    fn the_config_file_takes_scalars_and_null_removes() {
        let file: ExtraArgs =
            serde_yaml::from_str("kubelet:\n  v: 2\n  --serialize-image-pulls: false\n  max-pods: \"50\"\n  read-only-port: null\n")
                .unwrap();
        file.validate().unwrap();
        let c = file.changes("kubelet").unwrap();
        assert_eq!(c["v"].as_deref(), Some("2"));
        assert_eq!(c["serialize-image-pulls"].as_deref(), Some("false"));
        assert_eq!(c["max-pods"].as_deref(), Some("50"));
        assert_eq!(c["read-only-port"], None);
        // Round trip through node.yaml.
        let back: ExtraArgs = serde_yaml::from_str(&serde_yaml::to_string(&file).unwrap()).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn cli_flags_win_over_the_file_per_component() {
        let mut cli = ExtraArgs::default();
        cli.add_cli("kubelet", &args(&["v=4"])).unwrap();
        let file: ExtraArgs = serde_yaml::from_str("kubelet: {v: 2}\nkube-proxy: {v: 1}\n").unwrap();
        cli.merge_missing(file);
        assert_eq!(cli.changes("kubelet").unwrap()["v"].as_deref(), Some("4"));
        assert_eq!(cli.changes("kube-proxy").unwrap()["v"].as_deref(), Some("1"));
    }

    #[test]
    fn the_components_own_error_line_is_kept() {
        let cobra = "Usage:\n  kube-scheduler [flags]\n\n      --v Level\n\nError: unknown flag: --bogus\n";
        assert_eq!(component_error(cobra), "unknown flag: --bogus");
        let kubelet = "E1206 07:51:16.659107 1681 run.go:72] \"command failed\" err=\"failed to parse kubelet flag: unknown flag: --bogus\"\nUsage:\n";
        assert_eq!(
            component_error(kubelet),
            "failed to parse kubelet flag: unknown flag: --bogus"
        );
    }
}

//! Errors of the supervisor. Each variant names the component (and path, where there is one)
//! so that the daemon can show it to the operator without adding context.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("component {component}: cannot find program {program} (is it installed and on PATH?)")]
    ProgramNotFound { component: String, program: PathBuf },

    #[error("component {component}: cannot spawn {program}: {source}")]
    Spawn {
        component: String,
        program: PathBuf,
        source: std::io::Error,
    },

    #[error("component {component}: cannot prepare {path}: {source}")]
    Io {
        component: String,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "component {component} did not become ready within {timeout:?}{}{}",
        format_exit(last_exit.as_deref()),
        format_lines(last_lines)
    )]
    NotReady {
        component: String,
        timeout: Duration,
        last_exit: Option<String>,
        last_lines: Vec<String>,
    },

    #[error(
        "component {component} stopped before it became ready{}{}",
        format_exit(last_exit.as_deref()),
        format_lines(last_lines)
    )]
    StoppedBeforeReady {
        component: String,
        last_exit: Option<String>,
        last_lines: Vec<String>,
    },

    #[error("cannot create the run directory {path}: {source}")]
    RunDir { path: PathBuf, source: std::io::Error },

    #[error("unknown component {0}")]
    UnknownComponent(String),

    #[error("component {0} is listed twice")]
    DuplicateComponent(String),

    #[error("component {0} is already running")]
    AlreadyRunning(String),

    #[error("invalid probe url {url}: {reason} (expected http://host:port/path)")]
    InvalidProbeUrl { url: String, reason: &'static str },
}

fn format_exit(last_exit: Option<&str>) -> String {
    last_exit
        .map(|e| format!(" (last exit: {e})"))
        .unwrap_or_default()
}

/// Renders a component's last output lines as an indented block for an error message.
fn format_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return "; it wrote no output".to_owned();
    }
    let mut out = String::from("; last output:");
    for line in lines {
        out.push_str("\n    | ");
        out.push_str(line);
    }
    out
}

//! A component's output: appended to its log file with size-based rotation, mirrored to
//! `tracing`, and its last lines kept in memory for `k8sd status`.
//!
//! One sink lives as long as the component's registration, across restarts, so the tail shown
//! for a crash-looping component is the output of the run that just died.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::spec::LogRotation;

/// How many lines of output `status()` shows per component.
pub(crate) const TAIL_LINES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug)]
pub(crate) struct LogSink {
    component: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    rotation: LogRotation,
    /// `None` after a write error; reopened on the next line.
    file: Option<File>,
    size: u64,
    tail: VecDeque<String>,
    /// Whether a write error was already logged, so a full disk does not flood the journal.
    warned: bool,
}

impl LogSink {
    /// Opens (creating if needed) the log file for appending.
    pub(crate) fn open(component: &str, path: &Path, rotation: LogRotation) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            component: component.to_owned(),
            inner: Mutex::new(Inner {
                path: path.to_owned(),
                rotation,
                file: Some(file),
                size,
                tail: VecDeque::with_capacity(TAIL_LINES),
                warned: false,
            }),
        })
    }

    /// Records one line of child output (without its trailing newline).
    ///
    /// File IO here is synchronous: appends to a local file are short, and doing them inline
    /// keeps lines from stdout and stderr in the order they were read.
    pub(crate) fn line(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::debug!(component = %self.component, stream = stream.as_str(), "{text}");
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(text.into_owned());
        if let Err(e) = inner.append(line) {
            if !inner.warned {
                tracing::warn!(component = %self.component, path = %inner.path.display(), error = %e,
                    "cannot write component log; output is only kept in memory");
                inner.warned = true;
            }
            inner.file = None;
        }
    }

    /// The last [`TAIL_LINES`] lines, oldest first.
    pub(crate) fn tail(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tail.iter().cloned().collect()
    }
}

impl Inner {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        // A line larger than the limit still goes into a fresh file rather than being dropped.
        if self.size > 0 && self.size + len > self.rotation.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = open_append(&self.path)?;
                self.size = file.metadata()?.len();
                self.file.insert(file)
            }
        };
        // One write per line, so a concurrent reader (`k8sd logs -f`) never sees half a line.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        file.write_all(&buf)?;
        self.size += len;
        self.warned = false;
        Ok(())
    }

    /// `log` → `log.1` → … → `log.<keep>`; the oldest falls off.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_not_found)?;
        } else {
            for n in (1..self.rotation.keep).rev() {
                std::fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_not_found)?;
            }
            std::fs::rename(&self.path, numbered(1)).or_else(ignore_not_found)?;
        }
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/c.log");
        let sink = LogSink::open(
            "c",
            &path,
            LogRotation {
                max_bytes: 100,
                keep: 2,
            },
        )
        .unwrap();
        // 10 bytes per line (9 + newline): 10 lines fill a file exactly.
        for i in 0..35 {
            sink.line(Stream::Stdout, format!("line {i:04}").as_bytes());
        }
        let read = |suffix: &str| std::fs::read_to_string(format!("{}{suffix}", path.display())).unwrap();
        assert_eq!(read("").lines().count(), 5);
        assert!(read("").starts_with("line 0030\n"));
        assert!(read(".1").starts_with("line 0020\n"));
        assert!(read(".2").starts_with("line 0010\n"));
        assert!(!dir.path().join("logs/c.log.3").exists());
        let tail = sink.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("line 0034"));
    }

    #[test]
    fn appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, "old\n").unwrap();
        let sink = LogSink::open("c", &path, LogRotation::default()).unwrap();
        sink.line(Stream::Stderr, b"new \xff");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew \xff\n");
        assert_eq!(sink.tail(), vec!["new \u{fffd}".to_owned()]);
    }
}

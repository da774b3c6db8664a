//! `etcdctl check perf --load=s` against a `k8sd datastore` must pass: operators run it to
//! judge whether a datastore is fast enough for Kubernetes.
//!
//! The small load is 50 clients writing for 60 s through plain Put, then a prefix DeleteRange
//! and a limited Get (`etcd:etcdctl/ctlv3/command/check.go`). etcdctl prints one `PASS:` or
//! `FAIL:` line per criterion (throughput, slowest request, stddev), then `PASS` or `FAIL`, and
//! exits non-zero on failure. Both are checked so that a failure names the criterion.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

mod common;

use common::{Kind, Server};

#[test]
fn etcdctl_check_perf_small_load_passes() {
    let server = Server::start(Kind::K8sd);
    let out = server.etcdctl_raw(&["check", "perf", "--load=s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The progress bar redraws with carriage returns; keep only the verdict lines.
    let verdict: Vec<&str> = stdout
        .split(['\n', '\r'])
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    let report = format!(
        "exit status: {}\nverdict:\n  {}\nstderr:\n{}\nserver log: {}",
        out.status,
        verdict.join("\n  "),
        stderr,
        server.log.display()
    );
    assert!(
        out.status.success(),
        "etcdctl check perf --load=s failed against k8sd\n{report}"
    );
    assert!(
        verdict.iter().all(|l| !l.starts_with("FAIL")) && verdict.last() == Some(&"PASS"),
        "etcdctl check perf --load=s did not report PASS\n{report}"
    );
    assert_eq!(
        verdict.len(),
        4,
        "expected three criteria and a final verdict\n{report}"
    );
    eprintln!("{report}");
}

//! `k8sd debug render` as a user runs it: the real binary with the real kubebin and container
//! runtime (`K8SD_KUBEBIN` and `K8SD_RUNTIME_DIR`, or the build cache; a missing one fails the
//! test with render's own message). It must write what `init` writes, with the modes
//! docs/directories.md gives, and report command lines that name only files it wrote (or that
//! the component makes itself); bad input must be refused with the right exit code and leave
//! the data dir as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::k8sd_bin;

fn render(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(k8sd_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["debug", "render"])
        .args(args)
        .output()
        .unwrap()
}

fn rendered(dir: &Path, args: &[&str]) -> Value {
    let out = render(dir, args);
    assert!(
        out.status.success(),
        "render {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `root` with its mode and, for files, contents: what "changes nothing" compares.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let contents = if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            Vec::new()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.insert(p, (meta.permissions().mode() & 0o7777, contents));
    }
    out
}

fn argv(component: &Value) -> Vec<&str> {
    let argv = component["argv"].as_array().unwrap();
    argv.iter().map(|a| a.as_str().unwrap()).collect()
}

fn component<'a>(r: &'a Value, name: &str) -> Vec<&'a str> {
    let all = r["components"].as_array().unwrap();
    argv(
        all.iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no component {name}")),
    )
}

fn flag<'a>(argv: &[&'a str], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    argv.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

#[test]
fn render_writes_what_init_writes_and_the_command_lines_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = rendered(
        dir.path(),
        &[
            "--node-name",
            "render-1",
            "--node-pod-cidr",
            "10.88.0.0/24",
            // Checked by kube-apiserver's own parser, as at init, then applied over k8sd's flags.
            "--kube-apiserver-arg",
            "event-ttl=2h",
            "--kube-apiserver-arg",
            "profiling-",
        ],
    );
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    assert_eq!(r["version"], 1);
    assert_eq!(r["node"]["name"], "render-1");
    assert_eq!(r["node"]["role"], "control-plane");
    // What init renders: every kubeconfig names the local API load balancer.
    assert_eq!(r["node"]["kubeconfig-server"], "https://127.0.0.1:6444");
    let admin = std::fs::read_to_string(data.join("kubeconfig/admin.conf")).unwrap();
    assert!(admin.contains("server: https://127.0.0.1:6444"), "{admin}");

    // The modes of docs/directories.md, read from the disk, not from the report.
    let mut expected: Vec<(PathBuf, u32)> = vec![
        (data.clone(), 0o700),
        (data.join("node.yaml"), 0o600),
        (data.join("pki"), 0o700),
        (data.join("pki/encryption-config.yaml"), 0o600),
        (data.join("kubeconfig"), 0o700),
        (data.join("config"), 0o700),
        (data.join("datastore"), 0o700),
        (data.join("logs"), 0o700),
        (data.join("cni/net.d/10-k8sd.conflist"), 0o644),
        (run.clone(), 0o700),
        (run.join("containerd"), 0o711),
    ];
    for f in [
        "containerd.toml",
        "kubelet.yaml",
        "kube-proxy.yaml",
        "audit-policy.yaml",
        "admission-control.yaml",
        "registry/_default/hosts.toml",
    ] {
        expected.push((data.join("config").join(f), 0o600));
    }
    for kc in ["admin", "controller-manager", "scheduler", "kubelet", "proxy"] {
        expected.push((data.join(format!("kubeconfig/{kc}.conf")), 0o600));
    }
    for stem in [
        "ca",
        "front-proxy-ca",
        "datastore-ca",
        "apiserver",
        "apiserver-kubelet-client",
        "front-proxy-client",
        "kubelet",
        "kubelet-client",
        "controller-manager",
        "scheduler",
        "kube-proxy",
        "admin",
        "datastore-server",
        "datastore-client",
        "datastore-peer",
    ] {
        expected.push((data.join(format!("pki/{stem}.crt")), 0o644));
        expected.push((data.join(format!("pki/{stem}.key")), 0o600));
    }
    expected.push((data.join("pki/sa.key"), 0o600));
    expected.push((data.join("pki/sa.pub"), 0o644));
    for (path, want) in &expected {
        assert_eq!(mode(path), *want, "{}", path.display());
    }
    // The report lists exactly what is on disk, with the same modes.
    let on_disk: BTreeMap<PathBuf, u32> = tree(&data)
        .into_iter()
        .chain(tree(&run))
        .map(|(p, (m, _))| (p, m))
        .collect();
    let reported: BTreeMap<PathBuf, u32> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let m = u32::from_str_radix(f["mode"].as_str().unwrap(), 8).unwrap();
            (PathBuf::from(f["path"].as_str().unwrap()), m)
        })
        .collect();
    assert_eq!(reported, on_disk);
    assert_eq!(
        std::fs::read_to_string(data.join("cni/net.d/10-k8sd.conflist"))
            .unwrap()
            .matches("10.88.0.0/24")
            .count(),
        1
    );

    // Start order, and every path a command line names exists, except what the component
    // makes itself (its root and certificate dirs, the audit log).
    let names: Vec<&str> = r["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "containerd",
            "kubelet",
            "kube-proxy"
        ]
    );
    let made_by_component = ["audit-log-path", "root-dir", "cert-dir"];
    let mut named = 0;
    for c in r["components"].as_array().unwrap() {
        let cmd = argv(c);
        assert!(Path::new(cmd[0]).is_file(), "{}: {}", c["name"], cmd[0]);
        for arg in &cmd[1..] {
            let Some((flag, value)) = arg.trim_start_matches('-').split_once('=') else {
                continue;
            };
            if value.starts_with(dir.path().to_str().unwrap()) && !made_by_component.contains(&flag) {
                assert!(
                    Path::new(value).exists(),
                    "{}: --{flag}={value} does not exist",
                    c["name"]
                );
                named += 1;
            }
        }
    }
    assert!(named >= 30, "only {named} rendered paths named");
    let kubebin = component(&r, "kube-apiserver")[0];
    for name in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    ] {
        let argv = component(&r, name);
        assert_eq!(
            (argv[0], argv[1]),
            (kubebin, name),
            "kubebin runs each as argv[1]"
        );
    }

    let apiserver = component(&r, "kube-apiserver");
    assert_eq!(flag(&apiserver, "event-ttl"), Some("2h"));
    assert_eq!(
        flag(&apiserver, "profiling"),
        None,
        "profiling- removes k8sd's default"
    );
    assert_eq!(
        flag(&apiserver, "etcd-servers"),
        r["datastore"]["client-url"].as_str()
    );
    let pki = data.join("pki");
    for (f, file) in [
        ("etcd-cafile", "datastore-ca.crt"),
        ("etcd-certfile", "datastore-client.crt"),
        ("etcd-keyfile", "datastore-client.key"),
        ("encryption-provider-config", "encryption-config.yaml"),
    ] {
        assert_eq!(flag(&apiserver, f), Some(pki.join(file).to_str().unwrap()), "{f}");
    }
    assert_eq!(
        r["datastore"]["cert-file"].as_str(),
        Some(pki.join("datastore-server.crt").to_str().unwrap())
    );
    let kubelet = component(&r, "kubelet");
    assert_eq!(flag(&kubelet, "hostname-override"), Some("render-1"));
    assert_eq!(flag(&kubelet, "node-ip"), r["node"]["advertise-address"].as_str());
    let containerd = component(&r, "containerd");
    assert_eq!(
        flag(&containerd, "config"),
        Some(data.join("config/containerd.toml").to_str().unwrap())
    );
    let runtime_dir = Path::new(containerd[0]).parent().unwrap().to_str().unwrap();
    let containerd_path = r["components"][3]["env"]["PATH"].as_str().unwrap();
    assert!(
        containerd_path.starts_with(&format!("{runtime_dir}:")),
        "containerd finds its shim: {containerd_path}"
    );
}

#[test]
fn render_refuses_bad_input_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = render(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.matches(says).count(), 1, "said once: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    refused(
        &["--advertise-address", "10.1.2.300"],
        2,
        "invalid advertise address \"10.1.2.300\"",
    );
    refused(&["--advertise-address", "127.0.0.1"], 2, "is a loopback address");
    refused(
        &["--node-pod-cidr", "10.1.0.0/24"],
        2,
        "not inside the pod CIDR 10.88.0.0/16",
    );
    refused(
        &["--kubeconfig-server", "http://127.0.0.1:6443"],
        2,
        "https://HOST:PORT",
    );
    // kube-apiserver's own flag parser refuses it, as at init.
    refused(
        &["--kube-apiserver-arg", "no-such-flag=1"],
        2,
        "kube-apiserver refused the flags",
    );
    assert!(!data.exists(), "a refusal wrote nothing");

    // A data dir with anything in it is not a new node's.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("k8sd.log"), "another daemon's").unwrap();
    refused(&[], 2, "it is not empty");
    std::fs::remove_file(data.join("k8sd.log")).unwrap();

    rendered(dir.path(), &["--node-name", "render-2"]);
    let before = tree(dir.path());
    refused(&["--node-name", "render-3"], 4, "already initialised");
    assert!(before == tree(dir.path()), "a second render changed the data dir");
}

// Integration tests are their own crate; the unit-test lint does not apply here.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

//! Full disks are survivable (docs/etcd-tools.md, "Quota and NOSPACE"): real `k8sd datastore`
//! processes, standalone and as a Raft member, driven by the Rust etcd client and Debian's
//! etcdctl.
//!
//! - The quota (`--quota-backend-bytes`): writes past it raise etcd's NOSPACE alarm and are
//!   refused with `etcdserver: mvcc: database space exceeded`; reads, deletes, compaction and
//!   defragment still work; `etcdctl alarm disarm` clears it, and a disarm while still over the
//!   quota lasts only until the next write.
//! - A real full disk: the data dir is a small tmpfs filled to its limit. Writes are refused
//!   with the same error, reads go on, nothing acknowledged is lost, and once the filler is
//!   deleted the node takes writes again by itself (no disarm, no restart). Before this, the
//!   first SQLITE_FULL stopped the datastore's writes for good while the process lived on.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Kind, Server, client, free_port};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Extra flags making the server a Raft member (a cluster of one), or standalone.
fn mode(raft: bool) -> Vec<String> {
    if raft {
        vec![format!("--listen-peer-urls=http://127.0.0.1:{}", free_port())]
    } else {
        Vec::new()
    }
}

fn start(raft: bool, dir: tempfile::TempDir, data: PathBuf, extra: &[&str]) -> Server {
    let mut args = mode(raft);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_in(Kind::K8sd, dir, data, &args)
}

/// etcdctl's combined output and whether it succeeded.
fn etcdctl(s: &Server, args: &[&str]) -> (bool, String) {
    let out = s.etcdctl_raw(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `etcdctl txn` with its interactive input (compares, success ops, failure ops).
fn etcdctl_txn(s: &Server, input: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut ch = Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", s.endpoint))
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ch.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = ch.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn quota_case(raft: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(raft, dir, data, &["--quota-backend-bytes=1048576"]);
    let mut c = client(&s).await;
    let value = vec![b'v'; 16 * 1024];
    // Fill until refused: 1 MiB of quota is about 60 values of 16 KiB.
    let mut refused = None;
    let mut written = 0;
    for i in 0..400 {
        match c.put(format!("k{i:04}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("writes past a 1 MiB quota are refused");
    assert!(
        refused.contains(NO_SPACE),
        "the refusal names etcd's error: {refused}"
    );
    assert!(written > 10, "the quota let {written} writes through first");
    let (ok, list) = etcdctl(&s, &["alarm", "list"]);
    assert!(ok && list.contains("alarm:NOSPACE"), "alarm list: {list}");
    let (ok, status) = etcdctl(&s, &["endpoint", "status", "-w", "json"]);
    assert!(
        ok && status.contains("alarm:NOSPACE"),
        "Status lists the alarm: {status}"
    );

    // Under the alarm: puts, txns with puts and lease grants are refused; reads work.
    for args in [vec!["put", "more", "x"], vec!["lease", "grant", "30"]] {
        let (ok, out) = etcdctl(&s, &args);
        assert!(!ok && out.contains(NO_SPACE), "{args:?} under NOSPACE: {out}");
    }
    let (ok, out) = etcdctl_txn(&s, "\nput t1 v\n\n\n");
    assert!(
        !ok && out.contains(NO_SPACE),
        "a txn with a put under NOSPACE: {out}"
    );
    let got = c.get("k0000", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), &value[..], "reads work under NOSPACE");

    // A disarm while still over the quota lasts until the next write, as in etcd.
    let (ok, out) = etcdctl(&s, &["alarm", "disarm"]);
    assert!(
        ok && out.contains("alarm:NOSPACE"),
        "disarm names what it cleared: {out}"
    );
    let (_, list) = etcdctl(&s, &["alarm", "list"]);
    assert!(!list.contains("NOSPACE"), "disarmed: {list}");
    let e = c.put("again", "x", None).await.unwrap_err().to_string();
    assert!(e.contains(NO_SPACE), "still over the quota: {e}");

    // Deletes, compaction and defragment work under the alarm and bring usage down. Two
    // deletes, because a tombstone at the compaction revision is kept, with the value it
    // deleted (watch prevKV), until the next compaction.
    let (ok, out) = etcdctl(&s, &["del", "k0001", "--from-key"]);
    assert!(
        ok && out.trim() == (written - 1).to_string(),
        "delete under NOSPACE: {out}"
    );
    let (ok, out) = etcdctl(&s, &["del", "k0000"]);
    assert!(ok && out.trim() == "1", "delete under NOSPACE: {out}");
    let rev = c.get("k", None).await.unwrap().header().unwrap().revision();
    let (ok, out) = etcdctl(&s, &["compaction", &rev.to_string(), "--physical"]);
    assert!(ok, "compaction under NOSPACE: {out}");
    let (ok, out) = etcdctl(&s, &["defrag"]);
    assert!(ok, "defrag under NOSPACE: {out}");
    // The size the quota reads is refreshed every 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    let (ok, out) = etcdctl(&s, &["alarm", "disarm"]);
    assert!(ok, "disarm: {out}");
    c.put("after", "x", None)
        .await
        .expect("writes work again once under the quota and disarmed");
    let (_, list) = etcdctl(&s, &["alarm", "list"]);
    assert!(!list.contains("NOSPACE"), "no alarm after recovery: {list}");
}

#[tokio::test]
async fn quota_standalone() {
    quota_case(false).await;
}

#[tokio::test]
async fn quota_raft_member() {
    quota_case(true).await;
}

/// A tmpfs mounted for one test, unmounted (lazily, so a crashed server cannot hold it) when
/// the guard goes.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the full-disk tests mount a tmpfs: run them as root"
        );
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling: {e}");
            break;
        }
    }
    // Whatever is left is smaller than a block; take it too.
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() && f.sync_all().is_ok() {}
}

async fn full_disk_case(raft: bool) {
    // The mount lives in its own directory, so the server's scratch dir (its log) never
    // holds it; the guard unmounts before that directory goes.
    let mdir = tempfile::tempdir().unwrap();
    let mnt = mdir.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "16m");
    let dir = tempfile::tempdir().unwrap();
    let data = mnt.join("data");
    // No quota: only the disk limits the store.
    let s = start(raft, dir, data.clone(), &["--quota-backend-bytes=-1"]);
    let mut c = common::client_for(&s.url(), Duration::from_secs(5)).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let k = format!("before{i:02}");
        c.put(k.clone(), "v", None).await.unwrap();
        acked.push(k);
    }
    let filler = mnt.join("filler");
    fill(&filler);
    // The node looks at the free space every 200 ms; give it one look, so that no write is
    // left waiting in a Raft log that cannot grow (it would time out rather than be refused).
    std::thread::sleep(Duration::from_millis(500));
    // Writes fail now; write until refused (each value is larger than what the filler left).
    let value = vec![b'x'; 32 * 1024];
    let mut refusal = None;
    for i in 0..200 {
        let k = format!("full{i:03}");
        match c.put(k.clone(), value.clone(), None).await {
            Ok(_) => acked.push(k),
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("a full disk refuses writes");
    assert!(
        refusal.contains(NO_SPACE),
        "a full disk answers etcd's error: {refusal}"
    );
    // The alarm stays up and keeps refusing while the disk is full; the node still serves.
    std::thread::sleep(Duration::from_millis(500));
    let e = c.put("refused", "v", None).await.unwrap_err().to_string();
    assert!(e.contains(NO_SPACE), "still full: {e}");
    let (ok, list) = etcdctl(&s, &["alarm", "list"]);
    assert!(
        ok && list.contains("alarm:NOSPACE"),
        "alarm list on a full disk: {list}"
    );
    let got = c.get("before00", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v", "reads work on a full disk");
    let (ok, out) = etcdctl(&s, &["endpoint", "health"]);
    assert!(ok, "the node stays up and healthy to clients: {out}");

    // Free the space: the node takes writes again by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.put("after", "v", None).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    e.to_string().contains(NO_SPACE) || e.to_string().contains("timed out"),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no write succeeded within 20 s of freeing space: {e}"),
        }
    }
    acked.push("after".into());
    let (_, list) = etcdctl(&s, &["alarm", "list"]);
    assert!(!list.contains("NOSPACE"), "the alarm cleared itself: {list}");

    // Every acknowledged write survives kill -9 and a restart on the same disk.
    let (dir, data) = s.kill9();
    let s = start(raft, dir, data, &["--quota-backend-bytes=-1"]);
    let mut c = client(&s).await;
    for k in &acked {
        let got = c.get(k.as_str(), None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "acknowledged write {k} kept");
    }
    let e = c.get("refused", None).await.unwrap();
    assert!(e.kvs().is_empty(), "a refused write was not kept");
    drop(s);
}

#[tokio::test]
async fn full_disk_standalone() {
    full_disk_case(false).await;
}

#[tokio::test]
async fn full_disk_raft_member() {
    full_disk_case(true).await;
}

/// A follower of a 3-member cluster whose disk fills: it refuses writes with NOSPACE and lists
/// its own alarm while the others have none and keep taking writes; it stays a member, serves
/// serializable reads of what it has, and once space is freed it catches up (a linearizable
/// read on it sees what was written meanwhile) and takes writes again, with no restart.
#[tokio::test]
async fn full_disk_follower_of_three() {
    let mut c = common::K8sdCluster::start(3, &["--heartbeat-interval=50", "--election-timeout=500"]);
    let status = |i: usize| member_status(&c, i);
    let leader = status(0)["leader"].as_u64().unwrap();
    let f = (0..3)
        .find(|&i| status(i)["header"]["member_id"].as_u64() != Some(leader))
        .unwrap();
    let other = (0..3).find(|&i| i != f).unwrap();
    let urls = c.endpoints();
    let url = |i: usize| urls[i].clone();
    let mut w = common::client_for(&url(other), Duration::from_secs(5)).await;
    w.put("before", "v", None).await.unwrap();

    // Move the follower's data dir onto a 16 MiB tmpfs, then fill it.
    c.kill9(f);
    let data = c.members[f].data_dir.clone();
    let old = data.with_extension("old");
    std::fs::rename(&data, &old).unwrap();
    let _tmpfs = Tmpfs::mount(&data, "16m");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", old.display()))
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a the follower's data onto the tmpfs");
    c.spawn(f);
    c.wait_ready(f, Duration::from_secs(60));
    let mut fc = common::client_for(&url(f), Duration::from_secs(5)).await;
    common::eventually_some(
        Duration::from_secs(20),
        "the follower to serve again after its restart",
        async || (fc.get("before", None).await.map(|r| r.kvs().len()).unwrap_or(0) == 1).then_some(()),
    )
    .await;
    let filler = data.join("filler");
    fill(&filler);
    std::thread::sleep(Duration::from_millis(500));

    let e = fc.put("via-full", "v", None).await.unwrap_err().to_string();
    assert!(e.contains(NO_SPACE), "a write through the full member: {e}");
    let alarms = |i: usize| member_alarms(&c, i);
    assert!(
        alarms(f).contains("alarm:NOSPACE"),
        "the full member lists its alarm"
    );
    assert!(
        !alarms(other).contains("NOSPACE"),
        "the others have none: {}",
        alarms(other)
    );
    for i in 0..20 {
        w.put(format!("during{i}"), "v", None)
            .await
            .expect("the members with room keep taking writes");
    }
    let got = fc
        .get("before", Some(etcd_client::GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1, "serializable reads on the full member");
    let members = w.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3, "the full member stays in the cluster");

    // Free the space: the member catches up and takes writes, by itself.
    std::fs::remove_file(&filler).unwrap();
    common::eventually_some(
        Duration::from_secs(30),
        "the member to catch up and take a write after freeing space",
        async || {
            let seen = fc.get("during19", None).await.map(|r| r.kvs().len()).unwrap_or(0);
            (seen == 1 && fc.put("via-recovered", "v", None).await.is_ok()).then_some(())
        },
    )
    .await;
    assert!(!alarms(f).contains("NOSPACE"), "the alarm cleared itself");
    let got = w.get("via-recovered", None).await.unwrap();
    assert_eq!(
        got.kvs().len(),
        1,
        "a write through the recovered member is replicated"
    );
    let got = w.get("via-full", None).await.unwrap();
    assert!(got.kvs().is_empty(), "the refused write was not kept");
    drop(_tmpfs);
}

/// `etcdctl endpoint status` of member `i`, as JSON.
fn member_status(c: &common::K8sdCluster, i: usize) -> serde_json::Value {
    let out = Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.members[i].endpoint()))
        .args(["endpoint", "status", "-w", "json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()[0]["Status"].clone()
}

/// `etcdctl alarm list` on member `i`.
fn member_alarms(c: &common::K8sdCluster, i: usize) -> String {
    let out = Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.members[i].endpoint()))
        .args(["alarm", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether the member behind `client` holds `key` in its own replica (a serializable read).
async fn has_local(client: &mut etcd_client::Client, key: &str) -> bool {
    let local = Some(etcd_client::GetOptions::new().with_serializable());
    client.get(key, local).await.is_ok_and(|r| r.kvs().len() == 1)
}

/// SIGTERM member `i` and return how long it took to exit, and its exit status.
fn stop(c: &mut common::K8sdCluster, i: usize) -> (Duration, std::process::ExitStatus) {
    let mut child = c.members[i].child.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (started.elapsed(), st);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&c.members[i].log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} did not stop within 30 s of SIGTERM; its log ends:\n{}",
                c.members[i].name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leader of a 3-member cluster whose disk fills. etcd stops a member whose WAL cannot be
/// written, and the others elect a leader; k8sd's full leader stays up and hands leadership to
/// a member that can write once its own writes wait for room. So: writes through the full
/// member are refused with NOSPACE and it lists its alarm; writes through the others succeed
/// again once another member leads (while it hands over, one may time out, never be
/// acknowledged and lost); serializable reads work on the full member; once space is freed it
/// catches up, its alarm clears and it takes writes, with no restart. Filled again, now as a
/// follower whose log writer waits for room, it stops within a few seconds of SIGTERM (before,
/// the writer retried forever and the stop hung). At the end every acknowledged write is on
/// every member.
#[tokio::test]
async fn full_disk_leader_of_three() {
    // Every member's data dir on its own 16 MiB tmpfs, so whichever leads can be filled.
    // Declared before the cluster, so a failing test kills the members before unmounting.
    let mut mounts = Vec::new();
    let mut c = common::K8sdCluster::start_prepared(
        3,
        &["--heartbeat-interval=50", "--election-timeout=500"],
        &[],
        |data| mounts.push(Tmpfs::mount(data, "16m")),
    );
    let urls = c.endpoints();
    let leader_id = member_status(&c, 0)["leader"].as_u64().unwrap();
    let id_of = |c: &common::K8sdCluster, i: usize| member_status(c, i)["header"]["member_id"].as_u64();
    let l = (0..3).find(|&i| id_of(&c, i) == Some(leader_id)).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let mut acked: Vec<String> = Vec::new();
    let mut w = common::client_for(&urls[others[0]], Duration::from_secs(5)).await;
    let mut w2 = common::client_for(&urls[others[1]], Duration::from_secs(5)).await;
    for i in 0..10 {
        let k = format!("before{i}");
        w.put(k.clone(), "v", None).await.unwrap();
        acked.push(k);
    }

    let filler = c.members[l].data_dir.join("filler");
    fill(&filler);
    std::thread::sleep(Duration::from_millis(500));
    let mut lc = common::client_for(&urls[l], Duration::from_secs(5)).await;
    let e = lc.put("via-full", "v", None).await.unwrap_err().to_string();
    assert!(e.contains(NO_SPACE), "a write through the full leader: {e}");
    assert!(
        member_alarms(&c, l).contains("alarm:NOSPACE"),
        "the full leader lists its alarm"
    );

    // Writes through the others: large values, so the leader's log or store must grow and
    // its writes wait for room. Until another member leads a write may time out; after that,
    // 20 writes in a row succeed.
    let value = vec![b'x'; 32 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_a_row = 0;
    let mut i = 0;
    while in_a_row < 20 {
        assert!(
            Instant::now() < deadline,
            "writes through the members with room did not succeed within 60 s (leader now {:?})",
            member_status(&c, others[0])["leader"]
        );
        let k = format!("during{i:04}");
        let client = if i % 2 == 0 { &mut w } else { &mut w2 };
        i += 1;
        let v = if in_a_row > 0 {
            b"v".to_vec()
        } else {
            value.clone()
        };
        match client.put(k.clone(), v, None).await {
            Ok(_) => {
                acked.push(k);
                let now_leader = member_status(&c, others[0])["leader"].as_u64();
                in_a_row = if now_leader != Some(leader_id) {
                    in_a_row + 1
                } else {
                    0
                };
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    !e.contains(NO_SPACE),
                    "a member with room refused a write with NOSPACE: {e}"
                );
                in_a_row = 0;
            }
        }
    }
    let new_leader = member_status(&c, others[0])["leader"].as_u64();
    assert!(
        new_leader.is_some() && new_leader != Some(leader_id),
        "a member with room leads now"
    );
    assert!(
        std::fs::read_to_string(&c.members[l].log)
            .unwrap()
            .contains("handing leadership"),
        "the full leader handed leadership over"
    );
    for &o in &others {
        assert!(
            !member_alarms(&c, o).contains("NOSPACE"),
            "no alarm on member {o}"
        );
    }
    let got = lc
        .get(
            "before0",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1, "serializable reads on the full member");
    let e = lc.put("via-full-2", "v", None).await.unwrap_err().to_string();
    assert!(e.contains(NO_SPACE), "still refused through the full member: {e}");

    // Free the space: the former leader catches up and takes writes, by itself.
    std::fs::remove_file(&filler).unwrap();
    let last = acked.last().unwrap().clone();
    common::eventually_some(
        Duration::from_secs(30),
        "the former leader to catch up and take a write after freeing space",
        async || {
            (has_local(&mut lc, &last).await && lc.put("via-recovered", "v", None).await.is_ok())
                .then_some(())
        },
    )
    .await;
    acked.push("via-recovered".into());
    assert!(
        !member_alarms(&c, l).contains("NOSPACE"),
        "the alarm cleared itself"
    );

    // Fill it again, now a follower, and make its writers wait for room; then stop it.
    let full_warnings = || {
        std::fs::read_to_string(&c.members[l].log)
            .unwrap()
            .matches("the disk is full")
            .count()
    };
    let before_refill = full_warnings();
    fill(&filler);
    for j in 0..10 {
        let k = format!("refill{j}");
        w.put(k.clone(), value.clone(), None)
            .await
            .expect("the others take writes while a follower is full");
        acked.push(k);
    }
    common::eventually(
        Duration::from_secs(20),
        "the refilled member's writes to wait for room",
        || full_warnings() != before_refill,
    )
    .await;
    drop(lc);
    let (took, status) = stop(&mut c, l);
    assert!(
        took < Duration::from_secs(10),
        "a member whose disk is full stops within 10 s of SIGTERM, took {took:?}"
    );
    assert!(status.success(), "it exits cleanly: {status}");

    // Room again and a restart: every acknowledged write is on every member.
    std::fs::remove_file(&filler).unwrap();
    c.spawn(l);
    c.wait_ready(l, Duration::from_secs(60));
    for (m, url) in urls.iter().enumerate() {
        let mut mc = common::client_for(url, Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        for k in &acked {
            common::eventually_some(
                deadline.saturating_duration_since(Instant::now()),
                format!("acknowledged write {k} on member {m}"),
                async || has_local(&mut mc, k).await.then_some(()),
            )
            .await;
        }
        for k in ["via-full", "via-full-2"] {
            let got = mc.get(k, None).await.unwrap();
            assert!(got.kvs().is_empty(), "the refused write {k} was not kept");
        }
    }
    for m in 0..3 {
        c.kill9(m);
    }
    drop(mounts);
}

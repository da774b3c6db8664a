//! The pure decisions of `k8sd reset`: which mounts, iptables rules and chains, nftables
//! tables, routes, cgroups and directory entries belong to this node, chosen from the text the
//! kernel and the tools print. No IO here, so every choice is unit-tested without root.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// iptables chains k8sd's components create: kube-proxy and the kubelet (`KUBE-`), the CNI
/// bridge plugin's masquerading (`CNI-`).
pub const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", "CNI-"];
/// The nftables table kube-proxy's nftables mode creates, in the `ip` and `ip6` families.
pub const NFT_TABLE: &str = "kube-proxy";
/// The bridge of k8sd's CNI configuration (`assets/cni`).
pub const CNI_BRIDGE: &str = "cni0";

/// What to do about the cluster before the host is cleaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveStep {
    /// Not initialised (no `node.yaml`): nothing to leave.
    Skip,
    /// Ask the daemon to leave (`k8sd leave`), with `force` as given.
    Leave { force: bool },
    /// Initialised, but the daemon does not answer: leaving cannot be done or checked.
    RefuseUnreachable,
    /// Initialised, the daemon does not answer, `--force`: clean up without leaving.
    SkipForced,
}

/// Whether and how `reset` leaves the cluster first. Leaving is what checks quorum (on the
/// datastore leader), so a node that cannot ask is refused unless forced.
pub fn leave_step(initialised: bool, daemon_answers: bool, force: bool) -> LeaveStep {
    match (initialised, daemon_answers, force) {
        (false, _, _) => LeaveStep::Skip,
        (true, true, force) => LeaveStep::Leave { force },
        (true, false, false) => LeaveStep::RefuseUnreachable,
        (true, false, true) => LeaveStep::SkipForced,
    }
}

/// Mount points from `/proc/self/mountinfo` (field 5, with the kernel's octal escapes of
/// space, tab, newline and backslash undone).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points strictly under any of `prefixes`, deepest first (a volume inside a pod's
/// directory must go before the directory's own tmpfs), each once. A prefix itself is never
/// chosen: a data dir on its own disk is the operator's mount, not k8sd's.
pub fn mounts_under(points: &[PathBuf], prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = points
        .iter()
        .filter(|p| prefixes.iter().any(|pre| p.starts_with(pre) && *p != pre))
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| b.cmp(a))
    });
    out.dedup();
    out
}

fn is_ours(chain: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// What `iptables-save` shows of k8sd's rules, as `iptables-restore --noflush` input that
/// removes them in one transaction per table: first every rule of another chain that jumps
/// into one of ours (`-A` turned into `-D`, the rule text verbatim so its quoting stays
/// iptables' own), then our chains are flushed and deleted. `None` when nothing is ours.
pub fn iptables_removal(save: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chains_total = 0;
    let mut table: Option<&str> = None;
    let mut chains: Vec<&str> = Vec::new();
    let mut jumps: Vec<&str> = Vec::new();
    let mut flush = |table: Option<&str>, chains: &mut Vec<&str>, jumps: &mut Vec<&str>, out: &mut String| {
        if let Some(t) = table
            && !chains.is_empty()
        {
            out.push_str(&format!("*{t}\n"));
            for j in jumps.iter() {
                out.push_str(&format!("-D {}\n", &j[3..]));
            }
            for c in chains.iter() {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in chains.iter() {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
            chains_total += chains.len();
        }
        chains.clear();
        jumps.clear();
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim());
        } else if line == "COMMIT" {
            flush(table, &mut chains, &mut jumps, &mut out);
            table = None;
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next()
                && is_ours(name)
            {
                chains.push(name);
            }
        } else if line.starts_with("-A ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let in_ours = words.get(1).is_some_and(|c| is_ours(c));
            let target = words
                .windows(2)
                .find(|w| w[0] == "-j" || w[0] == "-g")
                .map(|w| w[1]);
            if !in_ours && target.is_some_and(is_ours) {
                jumps.push(line);
            }
        }
    }
    flush(table, &mut chains, &mut jumps, &mut out);
    (chains_total > 0).then_some((out, chains_total))
}

/// k8sd's chains still present in `iptables-save` output, as `table/chain`.
pub fn iptables_chains(save: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else if let Some(decl) = line.strip_prefix(':')
            && let Some(name) = decl.split_whitespace().next()
            && is_ours(name)
        {
            out.push(format!("{table}/{name}"));
        }
    }
    out
}

/// kube-proxy's tables in `nft list tables` output (`table FAMILY NAME` per line), as
/// `(family, name)`.
pub fn nft_tables(list: &str) -> Vec<(String, String)> {
    list.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["table", fam @ ("ip" | "ip6"), name] if *name == NFT_TABLE => {
                    Some((fam.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The named network namespaces at the far end of the bridge's ports, from
/// `ip -o link show master cni0`: each pod's veth shows `link-netns NAME` when its namespace has
/// a file in /run/netns. Only the CRI's `cni-*` names are taken. This is how reset finds a pod
/// namespace whose processes are gone (a sandbox whose teardown was cut short) but which its
/// bind mount still keeps alive.
pub fn bridge_peer_netns(links: &str) -> Vec<String> {
    let mut out: Vec<String> = links
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "link-netns")?;
            w.next()
        })
        .filter(|n| n.starts_with("cni-") && !n.contains('/'))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// An address range `ADDR/LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDR/LEN"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }
    /// Whether `other` lies wholly inside this range (same family).
    pub fn contains(&self, other: &Cidr) -> bool {
        let ((a, w), (b, w2)) = (Self::bits(self.addr), Self::bits(other.addr));
        if w != w2 || other.len < self.len {
            return false;
        }
        let shift = u32::from(w - self.len);
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

/// The routes k8sd added in this network namespace, as `ip route del` arguments (the
/// destination with the source or gateway that makes it ours), from `ip -o route show` (one
/// route per line, `DST [via GW] dev IF ... [src ADDR]`): the service range when its source is
/// the advertise address (`daemon/svcroute.rs` adds exactly that; an operator's own route for
/// the range has no such source or another one), and every route via a gateway into a part of
/// the pod range (`daemon/podnet.rs`: other nodes' pod CIDRs via their addresses). The route of
/// the cni0 bridge itself goes with the bridge.
pub fn k8sd_routes(routes: &str, service: Option<(Cidr, IpAddr)>, pods: Option<Cidr>) -> Vec<String> {
    let mut out = Vec::new();
    for line in routes.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(dst) = w.first().and_then(|d| d.parse::<Cidr>().ok()) else {
            continue;
        };
        let field = |k: &str| w.windows(2).find(|p| p[0] == k).map(|p| p[1]);
        let src = field("src").and_then(|s| s.parse::<IpAddr>().ok());
        if let Some((cidr, ours)) = service
            && dst == cidr
            && src == Some(ours)
        {
            out.push(format!("{dst} src {ours}"));
        } else if let (Some(p), Some(via)) = (pods, field("via"))
            && p.contains(&dst)
        {
            out.push(format!("{dst} via {via}"));
        }
    }
    out
}

/// The cgroup directories to remove under one hierarchy `base`, given the names of `root`'s
/// children: with a private root (several nodes on one machine), the whole root is this
/// node's; with `/` only the kubelet's `kubepods*` subtrees are k8sd's.
pub fn cgroup_tops(base: &Path, root: &str, children: &[String]) -> Vec<PathBuf> {
    let rel = root.trim_matches('/');
    if rel.is_empty() {
        children
            .iter()
            .filter(|c| c.starts_with("kubepods"))
            .map(|c| base.join(c))
            .collect()
    } else {
        vec![base.join(rel)]
    }
}

/// Container ids among cgroup directory names (the cgroupfs driver names a container's cgroup
/// after its 64-hex id); libcni's cache files carry the sandbox's id.
pub fn container_id(name: &str) -> Option<&str> {
    let id = name.strip_prefix("cri-containerd-").unwrap_or(name);
    let id = id.strip_suffix(".scope").unwrap_or(id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Entries of the data dir that k8sd creates (`docs/directories.md`); anything else is the
/// user's and is left alone, and then the data dir itself stays too.
pub const DATA_ENTRIES: [&str; 15] = [
    "node.yaml",
    "pki",
    "kubeconfig",
    "datastore",
    "config",
    "cni",
    "lb",
    "containerd",
    "kubelet",
    "pod-logs",
    "storage",
    "logs",
    // The scheduled backups go with the rest: the node is being destroyed, and a data dir
    // left holding only them would not be a clean host (docs/operations.md says to copy them
    // off first).
    "backups",
    ".k8sd-write-test",
    "lost+found",
];
/// Entries of the run dir that k8sd creates.
pub const RUN_ENTRIES: [&str; 4] = ["k8sd.sock", "k8sd.pid", "pids", "containerd"];

/// Whether `name` in a k8sd root (`known` lists its entries) is k8sd's: the listed names and
/// k8sd's own scratch entries (`.k8sd-restore-<pid>`, `.k8sd-backup-<pid>`).
pub fn is_k8sd_entry(name: &str, known: &[&str]) -> bool {
    known.contains(&name) || name.starts_with(".k8sd-")
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_bridge_names_its_pods_netns_even_without_their_processes() {
        let links = "\
5: veth6d3a1f2c@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP mode DEFAULT group default \\    link/ether 6a:01:02:03:04:05 brd ff:ff:ff:ff:ff:ff link-netns cni-0d4f3c2e-1b2a-4c5d-8e9f-0a1b2c3d4e5f
6: veth11aa22bb@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP mode DEFAULT group default \\    link/ether 6a:01:02:03:04:06 brd ff:ff:ff:ff:ff:ff link-netnsid 3
7: veth33cc44dd@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP mode DEFAULT group default \\    link/ether 6a:01:02:03:04:07 brd ff:ff:ff:ff:ff:ff link-netns other-tool
8: veth55ee66ff@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP mode DEFAULT group default \\    link/ether 6a:01:02:03:04:08 brd ff:ff:ff:ff:ff:ff link-netns cni-0d4f3c2e-1b2a-4c5d-8e9f-0a1b2c3d4e5f
";
        assert_eq!(
            bridge_peer_netns(links),
            ["cni-0d4f3c2e-1b2a-4c5d-8e9f-0a1b2c3d4e5f"],
            "only named cni-* peers, once each; an unnamed peer (link-netnsid) and another tool's are left"
        );
        assert!(bridge_peer_netns("").is_empty());
    }
    use super::*;

    #[test]
    fn leave_is_refused_without_a_daemon_unless_forced() {
        assert_eq!(leave_step(false, false, false), LeaveStep::Skip);
        assert_eq!(leave_step(false, true, true), LeaveStep::Skip);
        assert_eq!(leave_step(true, true, false), LeaveStep::Leave { force: false });
        assert_eq!(leave_step(true, true, true), LeaveStep::Leave { force: true });
        assert_eq!(leave_step(true, false, false), LeaveStep::RefuseUnreachable);
        assert_eq!(leave_step(true, false, true), LeaveStep::SkipForced);
    }

    #[test]
    fn mounts_under_our_dirs_deepest_first_and_nobody_elses() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
40 22 0:50 / /var/tmp/e2e/n1/kubelet/pods/u1/volumes/x rw - tmpfs tmpfs rw
41 22 0:51 / /var/tmp/e2e/n1/kubelet/pods/u1 rw - tmpfs tmpfs rw
42 22 0:52 / /var/tmp/e2e/n10/kubelet/pods/u2 rw - tmpfs tmpfs rw
43 22 0:53 / /run/n1-x/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw
44 22 0:54 / /var/tmp/e2e/n1/kubelet/pods/with\\040space rw - tmpfs tmpfs rw
45 22 0:4 net:[4026532] /run/netns/cni-1234 rw - nsfs nsfs rw
46 22 8:2 / /var/tmp/e2e/n1 rw - ext4 /dev/sdb1 rw
";
        let points = mount_points(info);
        assert!(points.contains(&PathBuf::from("/var/tmp/e2e/n1/kubelet/pods/with space")));
        let got = mounts_under(
            &points,
            &[PathBuf::from("/var/tmp/e2e/n1"), PathBuf::from("/run/n1-x")],
        );
        assert_eq!(
            got,
            [
                "/var/tmp/e2e/n1/kubelet/pods/u1/volumes/x",
                "/var/tmp/e2e/n1/kubelet/pods/with space",
                "/var/tmp/e2e/n1/kubelet/pods/u1",
                "/run/n1-x/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
            ]
            .map(PathBuf::from)
        );
        // n10 shares a string prefix with n1 but is another node's directory.
        assert!(!got.iter().any(|p| p.starts_with("/var/tmp/e2e/n10")));
    }

    const SAVE: &str = "\
# Generated by iptables-nft-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:DOCKER-USER - [0:0]
-A INPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j DOCKER-USER
-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-abc123 - [0:0]
-A POSTROUTING -s 10.88.0.5/32 -m comment --comment \"name: \\\"k8s-pod-network\\\" id: \\\"abc\\\"\" -j CNI-abc123
-A CNI-abc123 -d 10.88.0.0/16 -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j MARK --set-mark 1
COMMIT
";

    #[test]
    fn iptables_removal_deletes_jumps_then_flushes_and_deletes_only_our_chains() {
        let (restore, n) = iptables_removal(SAVE).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            restore,
            "*filter\n\
             -D INPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D INPUT -j KUBE-FIREWALL\n\
             -F KUBE-FIREWALL\n-F KUBE-SERVICES\n-X KUBE-FIREWALL\n-X KUBE-SERVICES\nCOMMIT\n\
             *nat\n\
             -D POSTROUTING -s 10.88.0.5/32 -m comment --comment \"name: \\\"k8s-pod-network\\\" id: \\\"abc\\\"\" -j CNI-abc123\n\
             -F CNI-abc123\n-X CNI-abc123\nCOMMIT\n"
        );
        assert!(!restore.contains("DOCKER-USER") && !restore.contains("mangle"));
        assert_eq!(
            iptables_chains(SAVE),
            ["filter/KUBE-FIREWALL", "filter/KUBE-SERVICES", "nat/CNI-abc123"]
        );
        assert_eq!(iptables_removal("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), None);
        assert_eq!(iptables_removal(""), None);
    }

    #[test]
    fn only_kube_proxys_nft_tables_are_chosen() {
        let list = "table ip kube-proxy\ntable ip6 kube-proxy\ntable inet firewalld\ntable ip nat\n";
        assert_eq!(
            nft_tables(list),
            [
                ("ip".into(), "kube-proxy".into()),
                ("ip6".into(), "kube-proxy".into())
            ]
        );
        assert!(nft_tables("table inet kube-proxy-not\n").is_empty());
    }

    #[test]
    fn routes_chosen_are_the_service_route_with_our_source_and_pod_routes_via_gateways() {
        let routes = "\
10.214.0.0/24 dev eth0 proto kernel scope link src 10.214.0.11
10.96.0.0/12 dev eth0 scope link src 10.214.0.11
10.88.1.0/24 via 10.214.0.12 dev eth0
10.88.0.0/24 dev cni0 proto kernel scope link src 10.88.0.1
192.168.0.0/16 via 10.214.0.1 dev eth0
";
        let svc = Some(("10.96.0.0/12".parse().unwrap(), "10.214.0.11".parse().unwrap()));
        let pods = Some("10.88.0.0/16".parse().unwrap());
        assert_eq!(
            k8sd_routes(routes, svc, pods),
            ["10.96.0.0/12 src 10.214.0.11", "10.88.1.0/24 via 10.214.0.12"]
        );
        // An operator's route for the service range (another source) is not ours.
        let other = "10.96.0.0/12 via 10.214.0.1 dev eth0\n10.96.0.0/12 dev eth0 src 10.214.0.99\n";
        assert!(k8sd_routes(other, svc, pods).is_empty());
        assert!(k8sd_routes(routes, None, None).is_empty());
    }

    #[test]
    fn cidr_containment() {
        let c: Cidr = "10.88.0.0/16".parse().unwrap();
        assert!(c.contains(&"10.88.3.0/24".parse().unwrap()));
        assert!(c.contains(&c));
        assert!(!c.contains(&"10.89.0.0/24".parse().unwrap()));
        assert!(!c.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!(!c.contains(&"fd00::/64".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(&c));
    }

    #[test]
    fn cgroups_of_a_private_root_are_all_ours_of_the_machine_root_only_kubepods() {
        let base = Path::new("/sys/fs/cgroup/memory");
        let kids = [
            "kubepods".to_string(),
            "system.slice".into(),
            "k8sd-e2e1-ab".into(),
        ];
        assert_eq!(
            cgroup_tops(base, "/", &kids),
            [PathBuf::from("/sys/fs/cgroup/memory/kubepods")]
        );
        assert_eq!(
            cgroup_tops(base, "/k8sd-e2e1-ab/", &kids),
            [PathBuf::from("/sys/fs/cgroup/memory/k8sd-e2e1-ab")]
        );
    }

    #[test]
    fn container_ids_and_k8sd_entries() {
        let id = "a".repeat(64);
        assert_eq!(container_id(&id), Some(id.as_str()));
        assert_eq!(
            container_id(&format!("cri-containerd-{id}.scope")),
            Some(id.as_str())
        );
        assert_eq!(container_id("podabc"), None);
        assert!(is_k8sd_entry("pki", &DATA_ENTRIES));
        assert!(
            is_k8sd_entry("backups", &DATA_ENTRIES),
            "scheduled backups are k8sd's"
        );
        assert!(is_k8sd_entry(".k8sd-restore-42", &DATA_ENTRIES));
        assert!(!is_k8sd_entry("my-notes.txt", &DATA_ENTRIES));
        assert!(is_k8sd_entry("pids", &RUN_ENTRIES));
    }
}

use super::*;

fn values() -> RenderValues {
    RenderValues {
        dns_service_ip: "10.96.0.10".parse().unwrap(),
        cluster_ca_bundle: "Q0EgQlVORExF".into(),
        tls_cipher_suites: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
        storage_dir: "/var/lib/k8sd/storage".into(),
        node_storage_dirs: Default::default(),
        dns_replicas: 2,
    }
}

/// local-path-provisioner's config.json as the rendered storage manifest carries it.
fn local_path_config(v: &RenderValues) -> serde_json::Value {
    let text = render_manifest(Addon::Storage, v).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let cm = find(&docs, "ConfigMap", "local-path-config");
    serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap()
}

fn docs(addon: Addon) -> Vec<serde_yaml::Value> {
    let text = render_manifest(addon, &values()).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every container of every pod template (and local-path's helper pod template).
fn containers(docs: &[serde_yaml::Value]) -> Vec<serde_yaml::Value> {
    let mut out = vec![];
    for d in docs {
        if let Some(cs) = d["spec"]["template"]["spec"]["containers"].as_sequence() {
            out.extend(cs.iter().cloned());
        }
        if let Some(helper) = d["data"]["helperPod.yaml"].as_str() {
            let pod: serde_yaml::Value = serde_yaml::from_str(helper).unwrap();
            out.extend(pod["spec"]["containers"].as_sequence().unwrap().iter().cloned());
        }
    }
    out
}

#[test]
fn every_manifest_renders_completely_and_parses() {
    for a in Addon::ALL {
        let text = render_manifest(a, &values()).unwrap();
        assert!(!text.contains("{{"), "{a}: marker left");
        let docs = docs(a);
        assert!(docs.len() >= 4, "{a}: only {} documents", docs.len());
        for d in &docs {
            assert!(d["apiVersion"].is_string() && d["kind"].is_string(), "{a}: {d:?}");
            assert!(d["metadata"]["name"].is_string(), "{a}: unnamed object");
            assert_eq!(
                d["metadata"]["labels"]["k8sd.io/addon"].as_str(),
                Some(a.name()),
                "{a}: {} {:?} lacks its add-on label",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"]
            );
        }
        let w = a.workload();
        let dep = find(&docs, "Deployment", w.deployment);
        assert_eq!(dep["metadata"]["namespace"].as_str(), Some(w.namespace));
    }
}

#[test]
fn every_image_is_from_the_catalog_and_never_pulled() {
    let catalog: Vec<String> = crate::images::catalog::all()
        .into_iter()
        .map(|e| e.reference)
        .collect();
    for a in Addon::ALL {
        let cs = containers(&docs(a));
        assert!(!cs.is_empty(), "{a}: no containers");
        for c in cs {
            let image = c["image"].as_str().unwrap();
            assert!(
                catalog.iter().any(|r| r == image),
                "{a}: {image} not in the catalog"
            );
            assert_eq!(c["imagePullPolicy"].as_str(), Some("Never"), "{a}: {image}");
        }
    }
    let storage = render_manifest(Addon::Storage, &values()).unwrap();
    assert!(storage.contains(&format!("--helper-image={}", crate::images::BUSYBOX_IMAGE)));
}

#[test]
fn dns_service_and_deployment_follow_the_cluster() {
    let d = docs(Addon::Dns);
    let svc = find(&d, "Service", "kube-dns");
    assert_eq!(svc["metadata"]["namespace"].as_str(), Some("kube-system"));
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("10.96.0.10"));
    assert_eq!(svc["metadata"]["labels"]["k8s-app"].as_str(), Some("kube-dns"));
    let ports: Vec<(i64, &str)> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, [(53, "UDP"), (53, "TCP"), (9153, "TCP")]);
    let dep = find(&d, "Deployment", "coredns");
    assert_eq!(dep["spec"]["replicas"].as_i64(), Some(2));
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["dnsPolicy"].as_str(), Some("Default"));
    assert_eq!(pod["priorityClassName"].as_str(), Some("system-cluster-critical"));
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            ["topologyKey"]
            .as_str(),
        Some("kubernetes.io/hostname")
    );
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_i64(), Some(8181));
    assert_eq!(c["livenessProbe"]["httpGet"]["port"].as_i64(), Some(8080));
    let corefile = find(&d, "ConfigMap", "coredns")["data"]["Corefile"]
        .as_str()
        .unwrap();
    for plugin in [
        "kubernetes cluster.local",
        "forward . /etc/resolv.conf",
        "read_timeout 1s",
        "failfast_all_unhealthy_upstreams",
        "loop",
        "cache 30",
    ] {
        assert!(corefile.contains(plugin), "Corefile lacks {plugin}");
    }
    // The Service IP is whatever the cluster's service CIDR makes it.
    let other = RenderValues {
        dns_service_ip: "10.152.183.10".parse().unwrap(),
        ..values()
    };
    assert!(
        render_manifest(Addon::Dns, &other)
            .unwrap()
            .contains("clusterIP: 10.152.183.10")
    );
}

#[test]
fn metrics_verifies_kubelets_and_is_verified_with_the_cluster_ca() {
    let d = docs(Addon::Metrics);
    let dep = find(&d, "Deployment", "metrics-server");
    let args: Vec<&str> = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!args.iter().any(|a| a.contains("insecure")), "{args:?}");
    assert!(args.contains(&"--kubelet-certificate-authority=/etc/kubernetes/cluster-ca/ca.crt"));
    let volumes = &dep["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "kube-root-ca.crt")
    );
    let api = find(&d, "APIService", "v1beta1.metrics.k8s.io");
    assert_eq!(api["spec"]["caBundle"], "Q0EgQlVORExF");
    assert!(api["spec"]["insecureSkipTLSVerify"].is_null(), "{api:?}");
    assert!(args.contains(&"--tls-cert-file=/etc/metrics-server/tls/tls.crt"));
    assert!(args.contains(&"--tls-min-version=VersionTLS12"));
    assert!(args.contains(&"--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"));
    assert!(
        volumes
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "metrics-server-tls")
    );
    find(&d, "ClusterRole", "system:aggregated-metrics-reader");
    find(&d, "RoleBinding", "metrics-server-auth-reader");
    find(&d, "ClusterRoleBinding", "metrics-server:system:auth-delegator");
}

#[test]
fn storage_is_the_default_class_in_the_storage_dir() {
    let d = docs(Addon::Storage);
    let sc = find(&d, "StorageClass", "local-path");
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].as_str(),
        Some("true")
    );
    assert_eq!(sc["volumeBindingMode"].as_str(), Some("WaitForFirstConsumer"));
    assert_eq!(sc["reclaimPolicy"].as_str(), Some("Delete"));
    assert_eq!(sc["provisioner"].as_str(), Some("rancher.io/local-path"));
    let cm = find(&d, "ConfigMap", "local-path-config");
    let config: serde_json::Value =
        serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["nodePathMap"][0]["node"],
        "DEFAULT_PATH_FOR_NON_LISTED_NODES"
    );
    assert_eq!(config["nodePathMap"][0]["paths"][0], "/var/lib/k8sd/storage");
    let setup = cm["data"]["setup"].as_str().unwrap();
    let (df, mkdir) = (setup.find("df ").unwrap(), setup.find("mkdir").unwrap());
    assert!(
        df < mkdir,
        "free space must be checked before the directory is made"
    );
}

#[test]
fn each_node_that_recorded_its_storage_dir_gets_its_own_path() {
    let mut v = values();
    v.storage_dir = "/var/lib/k8sd/storage".into();
    v.node_storage_dirs = [
        ("worker-1", "/srv/k8sd data/storage"),
        ("cp-2", "/var/snap/k8sd/common/var/lib/k8sd/storage"),
        ("cp-1", "/var/lib/k8sd/storage"),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
    .collect();
    let config = local_path_config(&v);
    let entries: Vec<(&str, Vec<&str>)> = config["nodePathMap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let paths = e["paths"].as_array().unwrap().iter();
            (
                e["node"].as_str().unwrap(),
                paths.map(|p| p.as_str().unwrap()).collect(),
            )
        })
        .collect();
    // Sorted by node name, so every control-plane node renders (and applies) the same text.
    assert_eq!(
        entries,
        [
            ("cp-1", vec!["/var/lib/k8sd/storage"]),
            ("cp-2", vec!["/var/snap/k8sd/common/var/lib/k8sd/storage"]),
            ("worker-1", vec!["/srv/k8sd data/storage"]),
            ("DEFAULT_PATH_FOR_NON_LISTED_NODES", vec!["/var/lib/k8sd/storage"]),
        ]
    );
}

#[test]
fn a_node_without_a_recorded_storage_dir_falls_back_to_the_default() {
    let mut v = values();
    v.storage_dir = "/data/k8sd/storage".into();
    v.node_storage_dirs = [("worker-1".to_string(), PathBuf::from("/w/storage"))].into();
    let config = local_path_config(&v);
    let map = config["nodePathMap"].as_array().unwrap();
    assert_eq!(map.len(), 2, "{map:?}");
    // "cp-1" is not listed: local-path-provisioner takes the default entry for it.
    assert!(!map.iter().any(|e| e["node"] == "cp-1"));
    assert_eq!(map[1]["node"], "DEFAULT_PATH_FOR_NON_LISTED_NODES");
    assert_eq!(map[1]["paths"][0], "/data/k8sd/storage");
    // A path that needs JSON quoting stays one valid string.
    v.node_storage_dirs = [("n\"1".to_string(), PathBuf::from("/a\"b/storage"))].into();
    assert_eq!(
        local_path_config(&v)["nodePathMap"][0]["paths"][0],
        "/a\"b/storage"
    );
}

#[test]
fn only_absolute_normal_storage_dirs_are_accepted() {
    assert_eq!(
        check_storage_dir("/var/lib/k8sd/storage").unwrap(),
        PathBuf::from("/var/lib/k8sd/storage")
    );
    for bad in ["", "storage", "./storage", "/", "/a/../b", "/a/./b"] {
        let e = check_storage_dir(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
    }
}

#[test]
fn names_parse_and_unknown_ones_are_refused_with_the_valid_list() {
    assert_eq!(
        parse_list(&["storage,dns".into(), "DNS".into(), "".into()]).unwrap(),
        [Addon::Dns, Addon::Storage]
    );
    assert_eq!(parse_list(&[]).unwrap(), []);
    let e = parse_list(&["dns,ingress".into()]).unwrap_err().to_string();
    assert!(
        e.contains("\"ingress\"") && e.contains("dns, metrics, storage"),
        "{e}"
    );
    assert_eq!(Addon::parse("metrics").unwrap(), Addon::Metrics);
    for a in Addon::ALL {
        assert_eq!(Addon::parse(a.name()).unwrap(), a);
    }
}

#[test]
fn dns_replicas_spread_over_at_most_two_nodes() {
    assert_eq!(dns_replicas(0), 1);
    assert_eq!(dns_replicas(1), 1);
    assert_eq!(dns_replicas(2), 2);
    assert_eq!(dns_replicas(7), 2);
}

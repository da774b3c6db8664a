//! This node's storage dir (`<data dir>/storage`) recorded on its own Node, as the annotation
//! `k8sd.io/storage-dir`, so that the storage add-on puts each node's local volumes under that
//! node's data dir: the add-on's reconcile loop (`daemon/addons.rs`) renders one
//! local-path-provisioner `nodePathMap` entry per annotated node. Data dirs differ between
//! nodes with `--data-dir` and between a snap node (`$SNAP_COMMON`) and a package one.
//!
//! Every node, workers included, writes it with its kubelet's identity (`system:node:<name>`):
//! the Node authorizer lets a node patch its own Node, and the NodeRestriction admission plugin
//! restricts only its labels, taints, owner references and `configSource`, not annotations.
//! Kept like the role label (`nodemeta.rs`).

use std::sync::Arc;

use super::Daemon;
use super::config::NodeConfig;
use super::nodemeta::{self, Field, Wanted};
use crate::addons::STORAGE_DIR_ANNOTATION;
use crate::httpc::TlsClient;

/// Keep this node's storage dir on its Node while the node runs.
pub fn spawn(d: &Arc<Daemon>, cfg: NodeConfig) {
    let wanted = Wanted {
        field: Field::Annotations,
        key: STORAGE_DIR_ANNOTATION,
        value: d.layout().storage_dir().display().to_string(),
        any_value: false,
        what: "the storage dir",
    };
    let node = cfg.node_name.clone();
    nodemeta::spawn(d, node, wanted, move |d| {
        // Read each time: the kubelet's client certificate is renewed in place.
        let p = d.layout().pki_dir();
        let client = TlsClient::from_files(
            &p.join("ca.crt"),
            &p.join("kubelet-client.crt"),
            &p.join("kubelet-client.key"),
        )
        .map_err(|e| format!("the kubelet's credentials: {e}"))?;
        Ok((client, d.api_addr(&cfg)))
    });
}

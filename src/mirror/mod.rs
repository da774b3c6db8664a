//! The node-local image mirror: a read-only OCI distribution endpoint that serves the images
//! this node's containerd already holds.
//!
//! There is no registry on the machines k8sd is built for, and nothing is ever pulled. Yet the
//! kubelet asks containerd to pull whenever a pod's pull policy is `Always` (the default for a
//! `:latest` tag, and what image volumes use), and containerd then asks the image's registry
//! for its manifest. k8sd points containerd at this mirror for every registry (a `_default`
//! hosts.toml), so such a pull resolves to the local image and succeeds; an image the node does
//! not have still fails, with a message that says so.
//!
//! `route` parses and validates requests, `store` finds images and blobs in containerd, and
//! `server` is the HTTPS listener (client certificates from the cluster CA).

pub mod route;
pub mod server;
pub mod store;

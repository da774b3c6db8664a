//! Local OCI image tarballs (filled in by the Kubernetes components work).

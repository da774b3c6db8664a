//! Cluster PKI: the CA, every certificate and every kubeconfig (filled in by the PKI work).

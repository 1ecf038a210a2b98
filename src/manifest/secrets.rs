//! The catalog of secrets imgbuild generates: the kubeadm-style PKI set, the
//! kubeconfigs, the bootstrap token and the key that encrypts Secrets at rest. Role manifests name entries of this
//! catalog; the plan places them in a node's `secrets` layer and the `pki`
//! stage makes them. The id is the path under the state dir and under
//! `/etc/kubernetes/` on a node.

/// Whether one copy serves the whole cluster or each node gets its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scope {
    Cluster,
    /// Issued per node (its name and IP are in the certificate or kubeconfig).
    PerNode,
    /// Issued per node for a node's image; a role's generic image goes
    /// without it (a kubelet's serving certificate: a generic worker asks
    /// the cluster CA for one instead).
    PerNodeOptional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SecretKind {
    Certificate,
    PrivateKey,
    PublicKey,
    Kubeconfig,
    Token,
    /// A key that encrypts data (kube-apiserver's EncryptionConfiguration).
    EncryptionKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SecretSpec {
    pub(crate) id: &'static str,
    pub(crate) kind: SecretKind,
    pub(crate) scope: Scope,
    /// A CA's private key: only a control-plane node may hold one.
    pub(crate) ca_key: bool,
}

impl SecretSpec {
    /// Private material (a key, a kubeconfig with an embedded key, a token).
    pub(crate) fn is_private(&self) -> bool {
        matches!(
            self.kind,
            SecretKind::PrivateKey
                | SecretKind::Kubeconfig
                | SecretKind::Token
                | SecretKind::EncryptionKey
        )
    }

    /// File mode on the node: 0600 for private material, 0644 otherwise.
    pub(crate) fn mode(&self) -> u32 {
        if self.is_private() { 0o600 } else { 0o644 }
    }

    /// Absolute path on the node.
    pub(crate) fn node_path(&self) -> String {
        format!("/etc/kubernetes/{}", self.id)
    }
}

const fn s(id: &'static str, kind: SecretKind, scope: Scope, ca_key: bool) -> SecretSpec {
    SecretSpec {
        id,
        kind,
        scope,
        ca_key,
    }
}

use Scope::{Cluster, PerNode, PerNodeOptional};
use SecretKind::{
    Certificate as Cert, EncryptionKey, Kubeconfig, PrivateKey as Key, PublicKey, Token,
};

pub(crate) const CATALOG: &[SecretSpec] = &[
    s("pki/ca.crt", Cert, Cluster, false),
    s("pki/ca.key", Key, Cluster, true),
    s("pki/apiserver.crt", Cert, PerNode, false),
    s("pki/apiserver.key", Key, PerNode, false),
    s("pki/apiserver-kubelet-client.crt", Cert, Cluster, false),
    s("pki/apiserver-kubelet-client.key", Key, Cluster, false),
    s("pki/apiserver-etcd-client.crt", Cert, Cluster, false),
    s("pki/apiserver-etcd-client.key", Key, Cluster, false),
    s("pki/front-proxy-ca.crt", Cert, Cluster, false),
    s("pki/front-proxy-ca.key", Key, Cluster, true),
    s("pki/front-proxy-client.crt", Cert, Cluster, false),
    s("pki/front-proxy-client.key", Key, Cluster, false),
    s("pki/sa.key", Key, Cluster, false),
    s("pki/sa.pub", PublicKey, Cluster, false),
    s("pki/etcd/ca.crt", Cert, Cluster, false),
    s("pki/etcd/ca.key", Key, Cluster, true),
    s("pki/etcd/server.crt", Cert, PerNode, false),
    s("pki/etcd/server.key", Key, PerNode, false),
    s("pki/etcd/peer.crt", Cert, PerNode, false),
    s("pki/etcd/peer.key", Key, PerNode, false),
    s("pki/etcd/healthcheck-client.crt", Cert, Cluster, false),
    s("pki/etcd/healthcheck-client.key", Key, Cluster, false),
    s("pki/kubelet.crt", Cert, PerNodeOptional, false),
    s("pki/kubelet.key", Key, PerNodeOptional, false),
    s("admin.conf", Kubeconfig, Cluster, false),
    s("controller-manager.conf", Kubeconfig, Cluster, false),
    s("scheduler.conf", Kubeconfig, Cluster, false),
    s("kube-proxy.conf", Kubeconfig, Cluster, false),
    s("bootstrap-kubelet.conf", Kubeconfig, Cluster, false),
    s("addons/bootstrap-token.yaml", Token, Cluster, false),
    s("keepalived-auth.conf", Token, Cluster, false),
    s("encryption-config.yaml", EncryptionKey, Cluster, false),
];

pub(crate) fn lookup(id: &str) -> Option<&'static SecretSpec> {
    CATALOG.iter().find(|s| s.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_private_and_0600() {
        for spec in CATALOG {
            if spec.id.ends_with(".key")
                || spec.id.ends_with(".conf")
                || spec.id.starts_with("addons/")
                || spec.id == "keepalived-auth.conf"
                || spec.id == "encryption-config.yaml"
            {
                assert!(spec.is_private(), "{}", spec.id);
                assert_eq!(spec.mode(), 0o600, "{}", spec.id);
            } else {
                assert_eq!(spec.mode(), 0o644, "{}", spec.id);
            }
        }
    }

    #[test]
    fn ca_keys_are_exactly_the_three_ca_private_keys() {
        let ca: Vec<_> = CATALOG.iter().filter(|s| s.ca_key).map(|s| s.id).collect();
        assert_eq!(
            ca,
            ["pki/ca.key", "pki/front-proxy-ca.key", "pki/etcd/ca.key"]
        );
    }
}

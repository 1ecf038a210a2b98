//! What the cluster PKI consists of, computed from the manifests: every CA,
//! leaf certificate, kubeconfig, the service-account keypair, the bootstrap
//! token and the encryption configuration, each with its place in the state
//! dir. This follows the Kubernetes
//! "PKI certificates and requirements" table and kubeadm's file names.

use std::net::{IpAddr, Ipv4Addr};

use crate::manifest::{Manifests, Node};

/// Which CA signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ca {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl Ca {
    pub(super) const ALL: [Ca; 3] = [Ca::Kubernetes, Ca::Etcd, Ca::FrontProxy];

    /// State-dir path without extension.
    pub(super) fn stem(self) -> &'static str {
        match self {
            Ca::Kubernetes => "pki/ca",
            Ca::Etcd => "pki/etcd/ca",
            Ca::FrontProxy => "pki/front-proxy-ca",
        }
    }

    pub(super) fn common_name(self) -> &'static str {
        match self {
            Ca::Kubernetes => "kubernetes-ca",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "kubernetes-front-proxy-ca",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// A leaf certificate with its key, as `<stem>.crt` and `<stem>.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeafSpec {
    pub(super) stem: String,
    pub(super) common_name: String,
    pub(super) organizations: Vec<String>,
    pub(super) usage: Usage,
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    pub(super) ca: Ca,
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KubeconfigUser {
    /// A client certificate signed by the Kubernetes CA, embedded.
    Certificate {
        common_name: String,
        organizations: Vec<String>,
    },
    /// The bootstrap token.
    BootstrapToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KubeconfigSpec {
    /// State-dir path of the file.
    pub(super) path: String,
    pub(super) user_name: String,
    pub(super) user: KubeconfigUser,
    pub(super) server: String,
}

/// The whole set for a cluster.
#[derive(Debug, Clone)]
pub(super) struct PkiSpec {
    pub(super) cluster: String,
    pub(super) leaves: Vec<LeafSpec>,
    pub(super) kubeconfigs: Vec<KubeconfigSpec>,
}

pub(super) const SA_KEY: &str = "pki/sa.key";
pub(super) const SA_PUB: &str = "pki/sa.pub";
pub(super) const TOKEN_SECRET: &str = "addons/bootstrap-token.yaml";
pub(super) const KEEPALIVED_AUTH: &str = "keepalived-auth.conf";
pub(super) const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";
/// The static token file of imgbuild before bootstrap tokens expired: removed
/// from a state dir that still has it.
pub(super) const OLD_TOKEN_CSV: &str = "token.csv";

/// The CA that signs the certificate `id` (a path under the state dir,
/// `nodes/<node>/…` for a per-node one, or under `/etc/kubernetes/`; a
/// kubeconfig's id for its client certificate); `None` when `id` names no
/// certificate.
#[cfg_attr(not(test), allow(dead_code))] // used by `chain`, for `verify`
pub(super) fn ca_of(id: &str) -> Option<Ca> {
    let id = id.trim_start_matches("/etc/kubernetes/");
    let id = match id.strip_prefix("nodes/") {
        Some(rest) => rest.split_once('/')?.1,
        None => id,
    };
    match id {
        "pki/apiserver-etcd-client.crt" => Some(Ca::Etcd),
        "pki/front-proxy-ca.crt" | "pki/front-proxy-client.crt" => Some(Ca::FrontProxy),
        "bootstrap-kubelet.conf" => None,
        _ if id.starts_with("pki/etcd/") && id.ends_with(".crt") => Some(Ca::Etcd),
        _ if id.starts_with("pki/") && id.ends_with(".crt") => Some(Ca::Kubernetes),
        _ if id.ends_with(".conf") && !id.contains('/') => Some(Ca::Kubernetes),
        _ => None,
    }
}

/// Where the state dir keeps a secret: per-node ones under `nodes/<node>/`.
pub(crate) fn state_path(id: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("nodes/{n}/{id}"),
        None => id.to_string(),
    }
}

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn leaf(
    stem: String,
    cn: &str,
    orgs: &[&str],
    usage: Usage,
    ca: Ca,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
) -> LeafSpec {
    LeafSpec {
        stem,
        common_name: cn.to_string(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        usage,
        dns,
        ips,
        ca,
    }
}

/// etcd member SANs: its name, IP and the loopback.
fn etcd_sans(n: &Node) -> (Vec<String>, Vec<IpAddr>) {
    (
        vec![n.name.clone(), "localhost".to_string()],
        vec![ip(n.ip), ip(Ipv4Addr::LOCALHOST)],
    )
}

/// The whole set for the cluster of `m`.
pub(super) fn spec(m: &Manifests) -> PkiSpec {
    let mut leaves = cluster_leaves();
    for n in &m.cluster.nodes {
        leaves.extend(node_leaves(m, n));
    }
    PkiSpec {
        cluster: m.cluster.name.clone(),
        leaves,
        kubeconfigs: kubeconfigs(m),
    }
}

/// The leaves every cluster has once.
fn cluster_leaves() -> Vec<LeafSpec> {
    use Usage::*;
    vec![
        leaf(
            "pki/apiserver-kubelet-client".into(),
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            Client,
            Ca::Kubernetes,
            vec![],
            vec![],
        ),
        leaf(
            "pki/apiserver-etcd-client".into(),
            "kube-apiserver-etcd-client",
            &["system:masters"],
            Client,
            Ca::Etcd,
            vec![],
            vec![],
        ),
        leaf(
            "pki/front-proxy-client".into(),
            "front-proxy-client",
            &[],
            Client,
            Ca::FrontProxy,
            vec![],
            vec![],
        ),
        leaf(
            "pki/etcd/healthcheck-client".into(),
            "kube-etcd-healthcheck-client",
            &[],
            Client,
            Ca::Etcd,
            vec![],
            vec![],
        ),
    ]
}

/// A kubeconfig whose user has a client certificate.
fn cert_kubeconfig(path: &str, user: &str, orgs: &[&str], server: &str) -> KubeconfigSpec {
    KubeconfigSpec {
        path: path.into(),
        user_name: user.into(),
        user: KubeconfigUser::Certificate {
            common_name: user.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
        },
        server: server.into(),
    }
}

/// The kubeconfigs: through the load balancer, or the node's own
/// kube-apiserver over loopback (in every apiserver's SANs).
fn kubeconfigs(m: &Manifests) -> Vec<KubeconfigSpec> {
    let lb_url = m.derived.api_server_url.as_str();
    let local = format!("https://127.0.0.1:{}", m.cluster.api.apiserver_port);
    vec![
        cert_kubeconfig(
            "admin.conf",
            "kubernetes-admin",
            &["system:masters"],
            lb_url,
        ),
        cert_kubeconfig("kube-proxy.conf", "system:kube-proxy", &[], lb_url),
        cert_kubeconfig(
            "controller-manager.conf",
            "system:kube-controller-manager",
            &[],
            &local,
        ),
        cert_kubeconfig("scheduler.conf", "system:kube-scheduler", &[], &local),
        KubeconfigSpec {
            path: "bootstrap-kubelet.conf".into(),
            user_name: "kubelet-bootstrap".into(),
            user: KubeconfigUser::BootstrapToken,
            server: lb_url.into(),
        },
    ]
}

/// The kubelet's serving certificate of `n`, as kubelet's own CSR for the
/// `kubernetes.io/kubelet-serving` signer asks for it (CN
/// `system:node:<name>`, O `system:nodes`, server auth; the node's name and
/// IP): kube-apiserver checks it with `--kubelet-certificate-authority`.
fn kubelet_serving(n: &Node) -> LeafSpec {
    let cn = format!("system:node:{}", n.name);
    leaf(
        state_path("pki/kubelet", Some(&n.name)),
        &cn,
        &["system:nodes"],
        Usage::Server,
        Ca::Kubernetes,
        vec![n.name.clone()],
        vec![ip(n.ip)],
    )
}

/// The per-node leaves of `n`: those its roles' secrets name.
fn node_leaves(m: &Manifests, n: &Node) -> Vec<LeafSpec> {
    use Usage::*;
    let needs = |id: &str| {
        n.roles
            .iter()
            .filter_map(|r| m.role(r))
            .any(|r| r.secrets.iter().any(|s| s.id == id))
    };
    let node = Some(n.name.as_str());
    let mut leaves = Vec::new();
    if needs("pki/apiserver.crt")
        && let Some(sans) = m.derived.apiserver_sans.get(&n.name)
    {
        leaves.push(leaf(
            state_path("pki/apiserver", node),
            "kube-apiserver",
            &[],
            Server,
            Ca::Kubernetes,
            sans.dns.clone(),
            sans.ips.iter().copied().map(ip).collect(),
        ));
    }
    if needs("pki/kubelet.crt") {
        leaves.push(kubelet_serving(n));
    }
    for (id, stem, cn) in [
        ("pki/etcd/server.crt", "pki/etcd/server", "kube-etcd"),
        ("pki/etcd/peer.crt", "pki/etcd/peer", "kube-etcd-peer"),
    ] {
        if needs(id) {
            let (dns, ips) = etcd_sans(n);
            let stem = state_path(stem, node);
            leaves.push(leaf(stem, cn, &[], ServerAndClient, Ca::Etcd, dns, ips));
        }
    }
    leaves
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_and_ca_has_its_signing_ca() {
        for l in cluster_leaves() {
            assert_eq!(ca_of(&format!("{}.crt", l.stem)), Some(l.ca), "{}", l.stem);
        }
        for ca in Ca::ALL {
            assert_eq!(ca_of(&format!("{}.crt", ca.stem())), Some(ca));
        }
        assert_eq!(
            ca_of("nodes/master01/pki/apiserver.crt"),
            Some(Ca::Kubernetes)
        );
        assert_eq!(ca_of("/etc/kubernetes/pki/etcd/peer.crt"), Some(Ca::Etcd));
        assert_eq!(ca_of("admin.conf"), Some(Ca::Kubernetes));
        assert_eq!(ca_of("bootstrap-kubelet.conf"), None);
        assert_eq!(ca_of("pki/ca.key"), None);
        assert_eq!(ca_of("addons/bootstrap-token.yaml"), None);
        assert_eq!(ca_of("encryption-config.yaml"), None);
        assert_eq!(
            ca_of("/etc/kubernetes/pki/kubelet.crt"),
            Some(Ca::Kubernetes)
        );
    }
}

//! What the cluster PKI consists of, computed from the manifests: every CA,
//! leaf certificate, kubeconfig, the service-account keypair and the bootstrap
//! token, each with its place in the state dir. This follows the Kubernetes
//! "PKI certificates and requirements" table and kubeadm's file names.

use std::net::{IpAddr, Ipv4Addr};

use crate::manifest::{Manifests, Node};

/// Which CA signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ca {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl Ca {
    pub const ALL: [Ca; 3] = [Ca::Kubernetes, Ca::Etcd, Ca::FrontProxy];

    /// State-dir path without extension.
    pub fn stem(self) -> &'static str {
        match self {
            Ca::Kubernetes => "pki/ca",
            Ca::Etcd => "pki/etcd/ca",
            Ca::FrontProxy => "pki/front-proxy-ca",
        }
    }

    pub fn common_name(self) -> &'static str {
        match self {
            Ca::Kubernetes => "kubernetes-ca",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "kubernetes-front-proxy-ca",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// A leaf certificate with its key, as `<stem>.crt` and `<stem>.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub stem: String,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub usage: Usage,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca: Ca,
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeconfigUser {
    /// A client certificate signed by the Kubernetes CA, embedded.
    Certificate {
        common_name: String,
        organizations: Vec<String>,
    },
    /// The bootstrap token.
    BootstrapToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigSpec {
    /// State-dir path of the file.
    pub path: String,
    pub user_name: String,
    pub user: KubeconfigUser,
    pub server: String,
}

/// The whole set for a cluster.
#[derive(Debug, Clone)]
pub struct PkiSpec {
    pub cluster: String,
    pub leaves: Vec<LeafSpec>,
    pub kubeconfigs: Vec<KubeconfigSpec>,
}

pub const SA_KEY: &str = "pki/sa.key";
pub const SA_PUB: &str = "pki/sa.pub";
pub const TOKEN_CSV: &str = "token.csv";
pub const TOKEN_SECRET: &str = "addons/bootstrap-token.yaml";
pub const KEEPALIVED_AUTH: &str = "keepalived-auth.conf";

/// Where the state dir keeps a secret: per-node ones under `nodes/<node>/`.
pub fn state_path(id: &str, node: Option<&str>) -> String {
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

pub fn spec(m: &Manifests) -> PkiSpec {
    use Usage::*;
    let c = &m.cluster;
    let mut leaves = vec![
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
    ];
    let lb_url = m.derived.api_server_url.clone();
    let local = format!("https://127.0.0.1:{}", c.api.apiserver_port);
    let kubeconfigs = vec![
        KubeconfigSpec {
            path: "admin.conf".into(),
            user_name: "kubernetes-admin".into(),
            user: KubeconfigUser::Certificate {
                common_name: "kubernetes-admin".into(),
                organizations: vec!["system:masters".into()],
            },
            server: lb_url.clone(),
        },
        KubeconfigSpec {
            path: "kube-proxy.conf".into(),
            user_name: "system:kube-proxy".into(),
            user: KubeconfigUser::Certificate {
                common_name: "system:kube-proxy".into(),
                organizations: vec![],
            },
            server: lb_url.clone(),
        },
        // The node's own kube-apiserver, over loopback (in every apiserver's SANs).
        KubeconfigSpec {
            path: "controller-manager.conf".into(),
            user_name: "system:kube-controller-manager".into(),
            user: KubeconfigUser::Certificate {
                common_name: "system:kube-controller-manager".into(),
                organizations: vec![],
            },
            server: local.clone(),
        },
        KubeconfigSpec {
            path: "scheduler.conf".into(),
            user_name: "system:kube-scheduler".into(),
            user: KubeconfigUser::Certificate {
                common_name: "system:kube-scheduler".into(),
                organizations: vec![],
            },
            server: local,
        },
        KubeconfigSpec {
            path: "bootstrap-kubelet.conf".into(),
            user_name: "kubelet-bootstrap".into(),
            user: KubeconfigUser::BootstrapToken,
            server: lb_url,
        },
    ];
    for n in &c.nodes {
        let needs = |id: &str| {
            n.roles
                .iter()
                .filter_map(|r| m.role(r))
                .any(|r| r.secrets.iter().any(|s| s.id == id))
        };
        let node = Some(n.name.as_str());
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
        if needs("pki/etcd/server.crt") {
            let (dns, ips) = etcd_sans(n);
            leaves.push(leaf(
                state_path("pki/etcd/server", node),
                "kube-etcd",
                &[],
                ServerAndClient,
                Ca::Etcd,
                dns,
                ips,
            ));
        }
        if needs("pki/etcd/peer.crt") {
            let (dns, ips) = etcd_sans(n);
            leaves.push(leaf(
                state_path("pki/etcd/peer", node),
                "kube-etcd-peer",
                &[],
                ServerAndClient,
                Ca::Etcd,
                dns,
                ips,
            ));
        }
    }
    PkiSpec {
        cluster: c.name.clone(),
        leaves,
        kubeconfigs,
    }
}

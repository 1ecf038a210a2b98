//! Values computed from the validated cluster, never typed by hand: the first
//! service IP, the etcd initial-cluster string, each control-plane node's
//! apiserver SANs, the haproxy backends and the keepalived MASTER/BACKUP
//! priorities.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::{Cluster, Node};

/// Role names with a meaning of their own to the derivations.
pub(crate) const ETCD: &str = "etcd";
pub(crate) const CONTROL_PLANE: &str = "control-plane";
pub(crate) const LB: &str = "lb";

pub(crate) const ETCD_PEER_PORT: u16 = 2380;
pub(crate) const ETCD_CLIENT_PORT: u16 = 2379;

/// keepalived priority of the first lb node; each next one is 10 lower.
const VRRP_TOP_PRIORITY: u8 = 120;

#[derive(Debug, Clone, Serialize)]
pub struct Derived {
    /// First host of the service CIDR: the `kubernetes` service's ClusterIP.
    pub(crate) kubernetes_service_ip: Ipv4Addr,
    pub(crate) cluster_dns: Ipv4Addr,
    /// `name=https://ip:2380,…` over the etcd members in inventory order.
    pub(crate) etcd_initial_cluster: String,
    /// `https://ip:2379,…`, what kube-apiserver's `--etcd-servers` takes.
    pub(crate) etcd_servers: String,
    /// Per control-plane node.
    pub(crate) apiserver_sans: BTreeMap<String, ApiserverSans>,
    pub(crate) haproxy_backends: Vec<HaproxyBackend>,
    pub(crate) vrrp: Vec<VrrpPeer>,
    /// `https://<dns name>:<lb port>`: what workers and kube-proxy talk to.
    pub(crate) api_server_url: String,
    /// What every node's `/etc/hosts` lists besides the API name: the nodes
    /// that serve the cluster (etcd, control-plane or lb roles). Workers are
    /// left out: nothing resolves them by name (the apiserver reaches
    /// kubelets by InternalIP), and a worker's address then changes no
    /// other node's image.
    pub(crate) hosts: Vec<HostEntry>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct HostEntry {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ApiserverSans {
    pub(crate) dns: Vec<String>,
    pub(crate) ips: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct HaproxyBackend {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum VrrpState {
    Master,
    Backup,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct VrrpPeer {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) state: VrrpState,
    pub(crate) priority: u8,
}

/// The `n`th address of a network (0 is the network address itself).
pub(crate) fn nth_address(net: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let addr = Ipv4Addr::from(base.checked_add(n)?);
    net.contains(&addr).then_some(addr)
}

pub(crate) fn derive(c: &Cluster) -> Derived {
    let svc = c.network.service_cidr;
    let kubernetes_service_ip = nth_address(svc, 1).unwrap_or(svc.network());
    let etcd: Vec<&Node> = c.nodes.iter().filter(|n| n.has_role(ETCD)).collect();
    Derived {
        kubernetes_service_ip,
        cluster_dns: c.network.cluster_dns,
        etcd_initial_cluster: etcd_initial_cluster(&etcd),
        etcd_servers: etcd_servers(&etcd),
        apiserver_sans: apiserver_sans(c, kubernetes_service_ip),
        haproxy_backends: haproxy_backends(c),
        vrrp: vrrp_peers(c),
        api_server_url: format!("https://{}:{}", c.api.dns_name, c.api.lb_port),
        hosts: hosts(c),
    }
}

/// `name=https://ip:2380,…`
fn etcd_initial_cluster(etcd: &[&Node]) -> String {
    etcd.iter()
        .map(|n| format!("{}=https://{}:{ETCD_PEER_PORT}", n.name, n.ip))
        .collect::<Vec<_>>()
        .join(",")
}

/// `https://ip:2379,…`
fn etcd_servers(etcd: &[&Node]) -> String {
    etcd.iter()
        .map(|n| format!("https://{}:{ETCD_CLIENT_PORT}", n.ip))
        .collect::<Vec<_>>()
        .join(",")
}

/// Each control-plane node's serving certificate names and addresses.
fn apiserver_sans(c: &Cluster, kubernetes_service_ip: Ipv4Addr) -> BTreeMap<String, ApiserverSans> {
    let domain = &c.network.cluster_domain;
    c.nodes
        .iter()
        .filter(|n| n.has_role(CONTROL_PLANE))
        .map(|n| {
            let mut dns = vec![
                n.name.clone(),
                c.api.dns_name.clone(),
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc".to_string(),
                format!("kubernetes.default.svc.{domain}"),
                "localhost".to_string(),
            ];
            dns.dedup();
            let mut ips = vec![n.ip, c.api.vip, kubernetes_service_ip, Ipv4Addr::LOCALHOST];
            ips.dedup();
            (n.name.clone(), ApiserverSans { dns, ips })
        })
        .collect()
}

/// One backend per control-plane node, on the apiserver port.
fn haproxy_backends(c: &Cluster) -> Vec<HaproxyBackend> {
    c.nodes
        .iter()
        .filter(|n| n.has_role(CONTROL_PLANE))
        .map(|n| HaproxyBackend {
            name: n.name.clone(),
            ip: n.ip,
            port: c.api.apiserver_port,
        })
        .collect()
}

/// The first lb node is MASTER, the rest BACKUP at falling priorities.
fn vrrp_peers(c: &Cluster) -> Vec<VrrpPeer> {
    c.nodes
        .iter()
        .filter(|n| n.has_role(LB))
        .enumerate()
        .map(|(i, n)| VrrpPeer {
            name: n.name.clone(),
            ip: n.ip,
            state: if i == 0 {
                VrrpState::Master
            } else {
                VrrpState::Backup
            },
            priority: VRRP_TOP_PRIORITY
                .saturating_sub(10 * i.min(11) as u8)
                .max(1),
        })
        .collect()
}

/// The nodes that serve the cluster; see [`Derived::hosts`].
fn hosts(c: &Cluster) -> Vec<HostEntry> {
    c.nodes
        .iter()
        .filter(|n| n.has_role(ETCD) || n.has_role(CONTROL_PLANE) || n.has_role(LB))
        .map(|n| HostEntry {
            name: n.name.clone(),
            ip: n.ip,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_address_of_the_guides_service_cidr() {
        let net: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        assert_eq!(nth_address(net, 1), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert_eq!(nth_address(net, 10), Some(Ipv4Addr::new(10, 96, 0, 10)));
        let tiny: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        assert_eq!(nth_address(tiny, 10), None);
    }
}

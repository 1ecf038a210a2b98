//! Cross-checks: what one manifest's values demand of another's. Each node
//! against the nodes before it (name, IP and MAC unique), the cluster's networks,
//! VIP and ports, and the roles it has (their pins exist for its arch; a CA
//! key only on a control-plane node); the inventory as a whole (an etcd
//! quorum, a control plane, a load balancer); the Kubernetes pins against
//! the cluster's version.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_saphyr::Spanned;

use super::{Known, at};
use crate::manifest::derive::{CONTROL_PLANE, ETCD, LB};
use crate::manifest::diag::{Diagnostics, Loc};
use crate::manifest::raw::{RawApi, RawCluster, RawNode};
use crate::manifest::{BASE_ROLE, KubeVersion, Node, Pins, Role};

/// What each node is checked against, and the names and IPs seen so far.
pub(super) struct NodeChecks<'a> {
    file: &'a Path,
    api: &'a RawApi,
    vip: Option<Ipv4Addr>,
    service: Option<Ipv4Net>,
    pod: Option<Ipv4Net>,
    known: &'a Known<'a>,
    /// The line of each name's first node.
    names: HashMap<String, u64>,
    /// The node first given each IP, and its line.
    ips: HashMap<Ipv4Addr, (String, u64)>,
    /// The node first given each MAC, and its line.
    macs: HashMap<String, (String, u64)>,
}

impl<'a> NodeChecks<'a> {
    pub(super) fn new(
        file: &'a Path,
        api: &'a RawApi,
        vip: Option<Ipv4Addr>,
        service: Option<Ipv4Net>,
        pod: Option<Ipv4Net>,
        known: &'a Known<'a>,
    ) -> Self {
        NodeChecks {
            file,
            api,
            vip,
            service,
            pod,
            known,
            names: HashMap::new(),
            ips: HashMap::new(),
            macs: HashMap::new(),
        }
    }

    /// Checks the valid `node`, read from `rn`, against all of it.
    pub(super) fn check(&mut self, rn: &RawNode, node: &Node, d: &mut Diagnostics) {
        self.check_unique_name(rn, node, d);
        let ip_loc = at(self.file, &rn.ip);
        self.check_unique_ip(&ip_loc, node, d);
        self.check_unique_mac(rn, node, d);
        self.check_outside_cluster_networks(&ip_loc, node, d);
        self.check_api_endpoint(node, d);
        check_node_needs(self.file, rn, node, self.known, d);
    }

    fn check_unique_name(&mut self, rn: &RawNode, node: &Node, d: &mut Diagnostics) {
        let name_loc = at(self.file, &rn.name);
        if let Some(line) = self.names.get(&node.name) {
            d.error(
                name_loc,
                format!(
                    "duplicate node name `{}` (first defined at line {line})",
                    node.name
                ),
            );
        } else {
            self.names.insert(node.name.clone(), name_loc.line);
        }
    }

    fn check_unique_ip(&mut self, ip_loc: &Loc, node: &Node, d: &mut Diagnostics) {
        if let Some((other, line)) = self.ips.get(&node.ip) {
            d.error(
                ip_loc.clone(),
                format!(
                    "node `{}` has IP {}, already used by `{other}` at line {line}",
                    node.name, node.ip
                ),
            );
        } else {
            self.ips.insert(node.ip, (node.name.clone(), ip_loc.line));
        }
    }

    fn check_unique_mac(&mut self, rn: &RawNode, node: &Node, d: &mut Diagnostics) {
        let (Some(mac), Some(raw)) = (&node.mac, &rn.mac) else {
            return;
        };
        let loc = at(self.file, raw);
        if let Some((other, line)) = self.macs.get(mac) {
            d.error(
                loc,
                format!(
                    "node `{}` has MAC {mac}, already used by `{other}` at line {line}",
                    node.name
                ),
            );
        } else {
            self.macs.insert(mac.clone(), (node.name.clone(), loc.line));
        }
    }

    /// A node's IP is neither a Service nor a Pod address.
    fn check_outside_cluster_networks(&self, ip_loc: &Loc, node: &Node, d: &mut Diagnostics) {
        for (net, what) in [(self.service, "service_cidr"), (self.pod, "pod_cidr")] {
            if let Some(net) = net
                && net.contains(&node.ip)
            {
                d.error(
                    ip_loc.clone(),
                    format!(
                        "node `{}` IP {} lies inside {what} {net}",
                        node.name, node.ip
                    ),
                );
            }
        }
    }

    /// The VIP is no node's own IP, and a node running both haproxy and
    /// kube-apiserver gives them different ports.
    fn check_api_endpoint(&self, node: &Node, d: &mut Diagnostics) {
        let api = self.api;
        if Some(node.ip) == self.vip {
            d.error(
                at(self.file, &api.vip),
                format!(
                    "api.vip {} is node `{}`'s own IP: the VIP must be a free address that keepalived moves",
                    node.ip, node.name
                ),
            );
        }
        if node.has_role(LB)
            && node.has_role(CONTROL_PLANE)
            && api.lb_port.value == api.apiserver_port.value
        {
            d.error(
                at(self.file, &api.lb_port),
                format!(
                    "api.lb_port {} equals apiserver_port on node `{}`, which runs both haproxy and kube-apiserver: they cannot bind the same port",
                    api.lb_port.value, node.name
                ),
            );
        }
    }
}

/// A node's roles must be satisfiable for its arch, and only control-plane
/// nodes may receive a CA private key.
fn check_node_needs(file: &Path, rn: &RawNode, node: &Node, known: &Known, d: &mut Diagnostics) {
    let role_names = std::iter::once(BASE_ROLE).chain(node.roles.iter().map(String::as_str));
    for role_name in role_names {
        let Some(role) = known.roles.get(role_name) else {
            continue;
        };
        // `base` is not listed: its problems point at the node's arch.
        let role_loc = rn
            .roles
            .value
            .iter()
            .find(|r| r.value == role_name)
            .map_or_else(|| at(file, &rn.arch), |r| at(file, r));
        if let Some(pins) = known.pins {
            check_role_pins(&role_loc, node, role_name, role, pins, d);
        }
        if !node.has_role(CONTROL_PLANE) {
            check_no_ca_keys(&role_loc, node, role_name, role, d);
        }
    }
}

/// Every artifact and image the role needs is pinned for the node's arch.
fn check_role_pins(
    role_loc: &Loc,
    node: &Node,
    role_name: &str,
    role: &Role,
    pins: &Pins,
    d: &mut Diagnostics,
) {
    let arch = node.arch;
    for a in &role.artifacts {
        let any = pins.artifacts.iter().any(|p| p.name == a.pin);
        if any && pins.artifact(&a.pin, arch).is_none() {
            d.error(
                role_loc.clone(),
                format!(
                    "node `{}` is {arch} but pins.toml has no {arch} pin for `{}`, which role `{role_name}` needs",
                    node.name, a.pin
                ),
            );
        }
    }
    for image in &role.images {
        if let Some(p) = pins.image(image)
            && !p.arches.contains(&arch)
        {
            d.error(
                role_loc.clone(),
                format!(
                    "node `{}` is {arch} but image pin `{image}` has no {arch} variant, which role `{role_name}` needs",
                    node.name
                ),
            );
        }
    }
}

/// The role gives the (non-control-plane) node no CA private key.
fn check_no_ca_keys(
    role_loc: &Loc,
    node: &Node,
    role_name: &str,
    role: &Role,
    d: &mut Diagnostics,
) {
    for s in role.secrets.iter().filter(|s| s.ca_key) {
        d.error(
            role_loc.clone(),
            format!(
                "role `{role_name}` would give CA private key {} to node `{}`, which is not a control-plane node",
                s.id, node.name
            ),
        );
    }
}

/// The inventory as a whole, of its valid `nodes`: it lists nodes, an odd
/// number of etcd members, a control plane and a load balancer.
pub(super) fn check_inventory(file: &Path, raw: &RawCluster, nodes: &[Node], d: &mut Diagnostics) {
    let loc = at(file, &raw.nodes);
    let listed = !raw.nodes.value.is_empty();
    if !listed {
        d.error(loc.clone(), "the inventory has no nodes");
    }
    check_etcd_members(&loc, listed, nodes, d);
    if !nodes.is_empty() && !nodes.iter().any(|n| n.has_role(CONTROL_PLANE)) {
        d.error(loc.clone(), "no node has the control-plane role");
    }
    if !nodes.is_empty() && !nodes.iter().any(|n| n.has_role(LB)) {
        d.warning(
            loc,
            format!(
                "no node has the lb role: nothing will hold the API VIP {}",
                raw.api.vip.value
            ),
        );
    }
}

/// At least one etcd member when nodes are `listed`; an even count warns.
fn check_etcd_members(loc: &Loc, listed: bool, nodes: &[Node], d: &mut Diagnostics) {
    let etcd = nodes.iter().filter(|n| n.has_role(ETCD)).count();
    if etcd == 0 && listed {
        d.error(
            loc.clone(),
            "no node has the etcd role: the cluster needs at least one etcd member",
        );
    } else if etcd > 0 && etcd % 2 == 0 {
        let quorum = etcd / 2 + 1;
        d.warning(
            loc.clone(),
            format!(
                "{etcd} etcd members: quorum is {quorum}, so the cluster survives only {} failure{}, no more than {} members would; use an odd count",
                etcd - quorum,
                if etcd - quorum == 1 { "" } else { "s" },
                etcd - 1
            ),
        );
    }
}

/// Pins of Kubernetes components must be the cluster's version.
pub(super) fn check_kubernetes_pins(
    file: &Path,
    raw_version: &Spanned<String>,
    version: Option<KubeVersion>,
    pins: Option<&Pins>,
    d: &mut Diagnostics,
) {
    let (Some(pins), Some(v)) = (pins, version) else {
        return;
    };
    let want = v.to_string();
    for p in &pins.artifacts {
        let kube = p.name.starts_with("kube") && p.name != "kube-vip";
        if kube && p.version != want {
            d.error(
                at(file, raw_version),
                format!(
                    "kubernetes_version is {want} but pin `{}` ({}) is {}: pin the same release",
                    p.name, p.arch, p.version
                ),
            );
        }
    }
}

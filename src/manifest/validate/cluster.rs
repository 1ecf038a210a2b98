//! cluster.yaml: the cluster-wide settings (name, Kubernetes version, API
//! endpoint, networks, PKI, host network), then the inventory node by node
//! ([`super::nodes`] for each entry, [`super::cross`] for what the entries
//! demand of each other, of the roles and of the pins), giving the typed
//! [`Cluster`] when none of it is in error.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_saphyr::Spanned;

use super::cross::{self, NodeChecks};
use super::syntax::is_interface_name;
use super::{Known, at, is_dns_label, is_dns_subdomain, nodes, parse_ipv4};
use crate::manifest::derive::nth_address;
use crate::manifest::diag::Diagnostics;
use crate::manifest::raw::{RawApi, RawCluster, RawHostNetwork, RawNetwork, RawPki};
use crate::manifest::{
    Api, Cluster, HostNetwork, KeyAlgorithm, KubeVersion, MIN_KUBERNETES_MINOR, Network, Node,
    PkiSettings, ProxyMode,
};

/// The settings checked so far, each `None` where its check failed.
struct Checked {
    version: Option<KubeVersion>,
    vip: Option<Ipv4Addr>,
    network: NetworkParts,
    key_algorithm: Option<KeyAlgorithm>,
    host: HostParts,
}

struct NetworkParts {
    service: Option<Ipv4Net>,
    pod: Option<Ipv4Net>,
    cluster_dns: Option<Ipv4Addr>,
    proxy_mode: Option<ProxyMode>,
}

struct HostParts {
    /// `None`: no gateway; `Some(None)`: a gateway in error.
    gateway: Option<Option<Ipv4Addr>>,
    nameservers: Vec<Option<Ipv4Addr>>,
}

/// The cluster, or `None` when anything checked here (or by the checks it
/// makes of the roles and pins) is in error.
pub(super) fn validate_cluster(
    file: &Path,
    raw: RawCluster,
    known: &Known,
    d: &mut Diagnostics,
) -> Option<Cluster> {
    let errors_before = d.errors().count();
    check_cluster_name(file, &raw.name, d);
    let checked = Checked {
        version: kubernetes_version(file, &raw.kubernetes_version, d),
        vip: validate_api(file, &raw.api, d),
        network: validate_network(file, &raw.network, d),
        key_algorithm: validate_pki(file, &raw.pki, d),
        host: validate_host_network(file, &raw.host_network, d),
    };
    let nodes = validate_nodes(file, &raw, &checked, known, d);
    cross::check_inventory(file, &raw, &nodes, d);
    cross::check_kubernetes_pins(
        file,
        &raw.kubernetes_version,
        checked.version,
        known.pins,
        d,
    );
    if d.errors().count() > errors_before {
        return None;
    }
    build(raw, checked, nodes)
}

fn check_cluster_name(file: &Path, name: &Spanned<String>, d: &mut Diagnostics) {
    if !is_dns_label(&name.value) {
        d.error(
            at(file, name),
            format!(
                "cluster name `{}` is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
                name.value
            ),
        );
    }
}

/// The release, also when it is too old (the pins are checked against it).
fn kubernetes_version(
    file: &Path,
    raw: &Spanned<String>,
    d: &mut Diagnostics,
) -> Option<KubeVersion> {
    let version = KubeVersion::parse(&raw.value);
    match version {
        None => d.error(
            at(file, raw),
            format!(
                "kubernetes_version `{}` is not a release such as v1.35.4",
                raw.value
            ),
        ),
        Some(v) if v.major != 1 || v.minor < MIN_KUBERNETES_MINOR => d.error(
            at(file, raw),
            format!(
                "Kubernetes {v} is older than v1.{MIN_KUBERNETES_MINOR}, the oldest version imgbuild renders configuration for"
            ),
        ),
        Some(_) => {}
    }
    version
}

/// The API endpoint; gives the VIP.
fn validate_api(file: &Path, api: &RawApi, d: &mut Diagnostics) -> Option<Ipv4Addr> {
    let vip = parse_ipv4(file, &api.vip, "api.vip", d);
    if !is_dns_subdomain(&api.dns_name.value) || !api.dns_name.value.contains('.') {
        d.error(
            at(file, &api.dns_name),
            format!(
                "api.dns_name `{}` is not a DNS name such as kubeapi.example.com",
                api.dns_name.value
            ),
        );
    }
    for port in [&api.lb_port, &api.apiserver_port] {
        if port.value == 0 {
            d.error(at(file, port), "port 0 is not a usable port");
        }
    }
    if api.vrrp_router_id.value == 0 {
        d.error(
            at(file, &api.vrrp_router_id),
            "vrrp_router_id must be 1 to 255",
        );
    }
    check_interface(file, &api.vrrp_interface, "api.vrrp_interface", d);
    vip
}

/// An interface name, as keepalived.conf and network-config take it.
fn check_interface(file: &Path, name: &Spanned<String>, what: &str, d: &mut Diagnostics) {
    if !is_interface_name(&name.value) {
        d.error(
            at(file, name),
            format!(
                "{what} `{}` is not a network interface name (1 to 15 of A-Z a-z 0-9 _ . : -, not `.` or `..`)",
                name.value
            ),
        );
    }
}

fn validate_network(file: &Path, n: &RawNetwork, d: &mut Diagnostics) -> NetworkParts {
    let service = parse_cidr(file, &n.service_cidr, "service_cidr", d);
    let pod = parse_cidr(file, &n.pod_cidr, "pod_cidr", d);
    check_pod_network(file, n, service, pod, d);
    if !is_dns_subdomain(&n.cluster_domain.value) {
        d.error(
            at(file, &n.cluster_domain),
            format!(
                "cluster_domain `{}` is not a DNS name",
                n.cluster_domain.value
            ),
        );
    }
    NetworkParts {
        service,
        pod,
        cluster_dns: cluster_dns(file, n, service, d),
        proxy_mode: proxy_mode(file, &n.kube_proxy_mode, d),
    }
}

/// The pod CIDR is apart from the service CIDR and holds node subnets.
fn check_pod_network(
    file: &Path,
    n: &RawNetwork,
    service: Option<Ipv4Net>,
    pod: Option<Ipv4Net>,
    d: &mut Diagnostics,
) {
    if let (Some(s), Some(p)) = (service, pod)
        && overlaps(s, p)
    {
        d.error(
            at(file, &n.service_cidr),
            format!(
                "service_cidr {s} overlaps pod_cidr {p}: Service and Pod addresses must not collide"
            ),
        );
    }
    let mask = n.node_cidr_mask.value;
    if let Some(p) = pod
        && (mask <= p.prefix_len() || mask > 30)
    {
        d.error(
            at(file, &n.node_cidr_mask),
            format!(
                "node_cidr_mask /{mask} must be longer than pod_cidr's /{} and at most /30",
                p.prefix_len()
            ),
        );
    }
}

/// CoreDNS's Service IP: as written, or the service CIDR's 10th address.
fn cluster_dns(
    file: &Path,
    n: &RawNetwork,
    service: Option<Ipv4Net>,
    d: &mut Diagnostics,
) -> Option<Ipv4Addr> {
    let svc = service?;
    if let Some(s) = &n.cluster_dns {
        return explicit_cluster_dns(file, s, svc, d);
    }
    let ip = nth_address(svc, 10);
    if ip.is_none() {
        d.error(
            at(file, &n.service_cidr),
            format!(
                "service_cidr {svc} is too small to hold the default cluster_dns (its 10th address)"
            ),
        );
    }
    ip
}

fn explicit_cluster_dns(
    file: &Path,
    s: &Spanned<String>,
    svc: Ipv4Net,
    d: &mut Diagnostics,
) -> Option<Ipv4Addr> {
    let ip = parse_ipv4(file, s, "cluster_dns", d)?;
    if !svc.contains(&ip) {
        d.error(
            at(file, s),
            format!(
                "cluster_dns {ip} is outside service_cidr {svc}: CoreDNS's Service IP must come from it"
            ),
        );
        None
    } else if Some(ip) == nth_address(svc, 1) {
        d.error(
            at(file, s),
            format!(
                "cluster_dns {ip} is the first service IP, which belongs to the `kubernetes` Service"
            ),
        );
        None
    } else {
        Some(ip)
    }
}

fn proxy_mode(file: &Path, mode: &Spanned<String>, d: &mut Diagnostics) -> Option<ProxyMode> {
    let parsed = ProxyMode::parse(&mode.value);
    if parsed.is_none() {
        d.error(
            at(file, mode),
            format!(
                "kube_proxy_mode `{}` is not one of ipvs, iptables, nftables",
                mode.value
            ),
        );
    }
    parsed
}

/// The longest certificate validity: with the build time at most in the year
/// 9000 (`context`), every notAfter stays inside X.509's four-digit years.
const MAX_VALIDITY_DAYS: u32 = 36_500;

/// The PKI settings; gives the key algorithm.
fn validate_pki(file: &Path, pki: &RawPki, d: &mut Diagnostics) -> Option<KeyAlgorithm> {
    let key_algorithm = key_algorithm(file, &pki.key_algorithm, d);
    for days in [&pki.ca_validity_days, &pki.leaf_validity_days] {
        if days.value == 0 {
            d.error(
                at(file, days),
                "a validity of 0 days would issue certificates that are already expired",
            );
        } else if days.value > MAX_VALIDITY_DAYS {
            d.error(
                at(file, days),
                format!(
                    "a validity of {} days is more than {MAX_VALIDITY_DAYS} (100 years), the longest imgbuild issues",
                    days.value
                ),
            );
        }
    }
    check_token_ttl(file, &pki.bootstrap_token_ttl_hours, d);
    let (ca, leaf) = (pki.ca_validity_days.value, pki.leaf_validity_days.value);
    if leaf > ca {
        d.error(
            at(file, &pki.leaf_validity_days),
            format!(
                "leaf_validity_days {leaf} outlasts ca_validity_days {ca}: a leaf cannot outlive its CA"
            ),
        );
    }
    key_algorithm
}

/// A bootstrap token expires (0, kubeadm's "never", is refused) and its
/// expiry stays inside the years certificates may end in.
fn check_token_ttl(file: &Path, ttl: &Spanned<u32>, d: &mut Diagnostics) {
    let max = MAX_VALIDITY_DAYS * 24;
    if ttl.value == 0 {
        d.error(
            at(file, ttl),
            "a bootstrap token TTL of 0 hours would make a token that never expires",
        );
    } else if ttl.value > max {
        d.error(
            at(file, ttl),
            format!(
                "a bootstrap token TTL of {} hours is more than {max} (100 years)",
                ttl.value
            ),
        );
    }
}

fn key_algorithm(file: &Path, alg: &Spanned<String>, d: &mut Diagnostics) -> Option<KeyAlgorithm> {
    match alg.value.as_str() {
        "ecdsa-p256" => Some(KeyAlgorithm::EcdsaP256),
        "rsa-2048" => Some(KeyAlgorithm::Rsa2048),
        "rsa-4096" => Some(KeyAlgorithm::Rsa4096),
        other => {
            d.error(
                at(file, alg),
                format!("key_algorithm `{other}` is not one of ecdsa-p256, rsa-2048, rsa-4096"),
            );
            None
        }
    }
}

fn validate_host_network(file: &Path, hn: &RawHostNetwork, d: &mut Diagnostics) -> HostParts {
    check_interface(file, &hn.interface, "host_network.interface", d);
    if !(1..=32).contains(&hn.prefix_length.value) {
        d.error(
            at(file, &hn.prefix_length),
            "host_network.prefix_length must be 1 to 32",
        );
    }
    HostParts {
        gateway: hn
            .gateway
            .as_ref()
            .map(|g| parse_ipv4(file, g, "host_network.gateway", d)),
        nameservers: hn
            .nameservers
            .iter()
            .map(|n| parse_ipv4(file, n, "host_network nameserver", d))
            .collect(),
    }
}

/// Each inventory entry, validated and checked against the cluster's
/// settings, the entries before it, the roles and the pins.
fn validate_nodes(
    file: &Path,
    raw: &RawCluster,
    checked: &Checked,
    known: &Known,
    d: &mut Diagnostics,
) -> Vec<Node> {
    let net = &checked.network;
    let mut checks = NodeChecks::new(file, &raw.api, checked.vip, net.service, net.pod, known);
    let mut nodes = Vec::with_capacity(raw.nodes.value.len());
    for rn in &raw.nodes.value {
        let vrrp_default = &raw.api.vrrp_interface.value;
        if let Some(node) = nodes::validate_node(file, rn, vrrp_default, known, d) {
            checks.check(rn, &node, d);
            nodes.push(node);
        }
    }
    nodes
}

/// The typed cluster; `None` if a checked value is missing.
fn build(raw: RawCluster, checked: Checked, nodes: Vec<Node>) -> Option<Cluster> {
    let Checked {
        version,
        vip,
        network,
        key_algorithm,
        host,
    } = checked;
    Some(Cluster {
        name: raw.name.value,
        kubernetes_version: version?,
        api: Api {
            vip: vip?,
            dns_name: raw.api.dns_name.value,
            lb_port: raw.api.lb_port.value,
            apiserver_port: raw.api.apiserver_port.value,
            vrrp_router_id: raw.api.vrrp_router_id.value,
            vrrp_interface: raw.api.vrrp_interface.value,
        },
        network: build_network(raw.network, network)?,
        pki: PkiSettings {
            key_algorithm: key_algorithm?,
            ca_validity_days: raw.pki.ca_validity_days.value,
            leaf_validity_days: raw.pki.leaf_validity_days.value,
            bootstrap_token_ttl_hours: raw.pki.bootstrap_token_ttl_hours.value,
        },
        host_network: build_host_network(raw.host_network, host)?,
        nodes,
    })
}

fn build_network(n: RawNetwork, parts: NetworkParts) -> Option<Network> {
    Some(Network {
        service_cidr: parts.service?,
        pod_cidr: parts.pod?,
        node_cidr_mask: n.node_cidr_mask.value,
        cluster_domain: n.cluster_domain.value,
        cluster_dns: parts.cluster_dns?,
        kube_proxy_mode: parts.proxy_mode?,
    })
}

fn build_host_network(hn: RawHostNetwork, parts: HostParts) -> Option<HostNetwork> {
    let gateway = match parts.gateway {
        Some(g) => Some(g?),
        None => None,
    };
    Some(HostNetwork {
        interface: hn.interface.value,
        prefix_length: hn.prefix_length.value,
        gateway,
        nameservers: parts.nameservers.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

/// A YAML string that must be a network address with its prefix length.
fn parse_cidr(
    file: &Path,
    s: &Spanned<String>,
    what: &str,
    d: &mut Diagnostics,
) -> Option<Ipv4Net> {
    match s.value.parse::<Ipv4Net>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            d.error(
                at(file, s),
                format!(
                    "{what} `{}` has host bits set; did you mean {}?",
                    s.value,
                    net.trunc()
                ),
            );
            None
        }
        Err(_) => {
            d.error(
                at(file, s),
                format!(
                    "{what} `{}` is not an IPv4 CIDR such as 10.96.0.0/12",
                    s.value
                ),
            );
            None
        }
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_overlap_both_ways() {
        let a: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let b: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let c: Ipv4Net = "172.16.0.0/12".parse().unwrap();
        assert!(overlaps(a, b) && overlaps(b, a));
        assert!(!overlaps(a, c));
    }
}

//! One inventory entry of cluster.yaml on its own: its name, IP, arch, roles
//! (each defined, none twice, not `base`), labels and taints (Kubernetes
//! syntax: they are pasted into the kubelet's EnvironmentFile; labels also
//! ones the kubelet may set on itself) and its own settings
//! ([`super::node_settings`]), giving the typed [`Node`]. What a node must
//! agree with elsewhere is in [`super::cross`].

use std::path::Path;

use serde_saphyr::Spanned;

use super::node_settings::node_settings;
use super::syntax::{
    KUBELET_LABEL_NAMESPACES, TAINT_EFFECTS, is_label_key, is_label_value, is_refused_by_kubelet,
    is_taint,
};
use super::{Known, at, is_dns_label, parse_ipv4};
use crate::manifest::diag::Diagnostics;
use crate::manifest::raw::RawNode;
use crate::manifest::{Arch, BASE_ROLE, Node};

/// The node, or `None` when any of its values is in error; `vrrp_default`
/// is `api.vrrp_interface`.
pub(super) fn validate_node(
    file: &Path,
    rn: &RawNode,
    vrrp_default: &str,
    known: &Known,
    d: &mut Diagnostics,
) -> Option<Node> {
    let mut ok = check_node_name(file, rn, d);
    let ip = parse_ipv4(file, &rn.ip, &format!("node `{}` ip", rn.name.value), d);
    let arch = node_arch(file, rn, d);
    let roles = node_roles(file, rn, known, d);
    ok &= check_labels(file, rn, d);
    ok &= check_taints(file, rn, d);
    let settings = node_settings(file, rn, vrrp_default, d);
    if !ok {
        return None;
    }
    let settings = settings?;
    Some(Node {
        name: rn.name.value.clone(),
        ip: ip?,
        arch: arch?,
        roles: roles?,
        labels: rn
            .labels
            .0
            .iter()
            .map(|(k, v)| (k.value.clone(), v.value.clone()))
            .collect(),
        taints: rn.taints.iter().map(|t| t.value.clone()).collect(),
        mac: settings.mac,
        vrrp_interface: settings.vrrp_interface,
        etcd_join: settings.etcd_join,
    })
}

fn check_node_name(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> bool {
    let ok = is_dns_label(&rn.name.value);
    if !ok {
        d.error(
            at(file, &rn.name),
            format!(
                "node name `{}` is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
                rn.name.value
            ),
        );
    }
    ok
}

fn node_arch(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> Option<Arch> {
    let arch = Arch::parse(&rn.arch.value);
    if arch.is_none() {
        d.error(
            at(file, &rn.arch),
            format!(
                "node `{}`: unknown arch `{}` (expected amd64 or arm64)",
                rn.name.value, rn.arch.value
            ),
        );
    }
    arch
}

/// The node's roles, in the order listed; `None` when there are none or
/// one of them is in error.
fn node_roles(
    file: &Path,
    rn: &RawNode,
    known: &Known,
    d: &mut Diagnostics,
) -> Option<Vec<String>> {
    let mut ok = true;
    if rn.roles.value.is_empty() {
        d.error(
            at(file, &rn.roles),
            format!("node `{}` has no roles", rn.name.value),
        );
        ok = false;
    }
    let mut roles: Vec<String> = Vec::new();
    for r in &rn.roles.value {
        ok &= check_node_role(file, rn, r, &roles, known, d);
        roles.push(r.value.clone());
    }
    ok.then_some(roles)
}

/// One listed role `r`: not listed `earlier`, not `base`, and defined.
fn check_node_role(
    file: &Path,
    rn: &RawNode,
    r: &Spanned<String>,
    earlier: &[String],
    known: &Known,
    d: &mut Diagnostics,
) -> bool {
    let node = &rn.name.value;
    let role = &r.value;
    let message = if earlier.contains(role) {
        format!("node `{node}` lists role `{role}` twice")
    } else if role == BASE_ROLE {
        format!("node `{node}` lists `base`, which every node has already: remove it")
    } else if !known.roles.contains_key(role) && !known.unparsed_roles.contains(role) {
        let defined: Vec<_> = known
            .roles
            .keys()
            .filter(|k| *k != BASE_ROLE)
            .cloned()
            .collect();
        format!(
            "node `{node}` has role `{role}`, which has no definition (no manifests/roles/{role}.yaml); defined roles: {}",
            defined.join(", ")
        )
    } else {
        return true;
    };
    d.error(at(file, r), message);
    false
}

/// Every label key and value in Kubernetes syntax, and a key the kubelet
/// may set on its own Node.
fn check_labels(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> bool {
    let mut ok = true;
    for (key, value) in &rn.labels.0 {
        if is_refused_by_kubelet(&key.value) {
            d.error(
                at(file, key),
                format!(
                    "node `{}`: the kubelet refuses to set label `{}` on its own Node (--node-labels takes a kubernetes.io or k8s.io key only under {} or from its short list such as topology.kubernetes.io/zone, and exits otherwise); apply it with `kubectl label node {} {}=<value>` once the node has joined",
                    rn.name.value,
                    key.value,
                    KUBELET_LABEL_NAMESPACES.join(" or "),
                    rn.name.value,
                    key.value
                ),
            );
            ok = false;
        } else if !is_label_key(&key.value) {
            d.error(
                at(file, key),
                format!(
                    "node `{}`: label key `{}` is not a Kubernetes label key ([prefix/]name: name at most 63 of A-Z a-z 0-9 - _ . starting and ending alphanumeric, prefix a DNS subdomain)",
                    rn.name.value, key.value
                ),
            );
            ok = false;
        }
        if !is_label_value(&value.value) {
            d.error(
                at(file, value),
                format!(
                    "node `{}`: label value `{}` is not a Kubernetes label value (empty, or at most 63 of A-Z a-z 0-9 - _ . starting and ending alphanumeric)",
                    rn.name.value, value.value
                ),
            );
            ok = false;
        }
    }
    ok
}

fn check_taints(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> bool {
    let mut ok = true;
    for t in rn.taints.iter().filter(|t| !is_taint(&t.value)) {
        d.error(
            at(file, t),
            format!(
                "taint `{}` must be `key[=value]:Effect` with a Kubernetes label key and value and Effect one of {}",
                t.value,
                TAINT_EFFECTS.join(", ")
            ),
        );
        ok = false;
    }
    ok
}

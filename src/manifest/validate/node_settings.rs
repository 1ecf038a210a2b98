//! A node's own settings beside its identity: the MAC of its NIC (what
//! network-config matches), keepalived's interface on it and how its etcd
//! member starts. Each is optional; a setting for a role the node lacks is an
//! error, as it would change nothing.

use std::path::Path;

use super::at;
use super::syntax::{is_interface_name, parse_mac};
use crate::manifest::EtcdJoin;
use crate::manifest::derive::{ETCD, LB};
use crate::manifest::diag::Diagnostics;
use crate::manifest::raw::RawNode;

/// The node's settings, each valid; `None` when any is in error.
pub(super) struct NodeSettings {
    pub(super) mac: Option<String>,
    pub(super) vrrp_interface: String,
    pub(super) etcd_join: EtcdJoin,
}

/// Checks the settings of `rn`; `vrrp_default` is `api.vrrp_interface`.
pub(super) fn node_settings(
    file: &Path,
    rn: &RawNode,
    vrrp_default: &str,
    d: &mut Diagnostics,
) -> Option<NodeSettings> {
    let mac = node_mac(file, rn, d);
    let vrrp_interface = node_vrrp_interface(file, rn, vrrp_default, d);
    let etcd_join = node_etcd_join(file, rn, d);
    Some(NodeSettings {
        mac: mac?,
        vrrp_interface: vrrp_interface?,
        etcd_join: etcd_join?,
    })
}

/// Whether `rn` lists `role`.
fn lists_role(rn: &RawNode, role: &str) -> bool {
    rn.roles.value.iter().any(|r| r.value == role)
}

/// `Some(None)`: no MAC; `None`: a MAC in error.
fn node_mac(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> Option<Option<String>> {
    let Some(raw) = &rn.mac else {
        return Some(None);
    };
    let problem = match parse_mac(&raw.value) {
        Some(mac) if mac == "00:00:00:00:00:00" => "is all zeros",
        Some(mac) if u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 1) => {
            "is a multicast address, which no NIC has"
        }
        Some(mac) => return Some(Some(mac)),
        None => {
            "is not a MAC address such as 52:54:00:12:34:56 (six pairs of hex digits joined by `:`)"
        }
    };
    d.error(
        at(file, raw),
        format!("node `{}`: mac `{}` {problem}", rn.name.value, raw.value),
    );
    None
}

fn node_vrrp_interface(
    file: &Path,
    rn: &RawNode,
    vrrp_default: &str,
    d: &mut Diagnostics,
) -> Option<String> {
    let Some(raw) = &rn.vrrp_interface else {
        return Some(vrrp_default.to_string());
    };
    let node = &rn.name.value;
    if !is_interface_name(&raw.value) {
        d.error(
            at(file, raw),
            format!(
                "node `{node}`: vrrp_interface `{}` is not a network interface name (1 to 15 of A-Z a-z 0-9 _ . : -, not `.` or `..`)",
                raw.value
            ),
        );
        return None;
    }
    if !lists_role(rn, LB) {
        d.error(
            at(file, raw),
            format!(
                "node `{node}` sets vrrp_interface but has no `{LB}` role: no keepalived runs there"
            ),
        );
        return None;
    }
    Some(raw.value.clone())
}

fn node_etcd_join(file: &Path, rn: &RawNode, d: &mut Diagnostics) -> Option<EtcdJoin> {
    let Some(raw) = &rn.etcd_join else {
        return Some(EtcdJoin::New);
    };
    let node = &rn.name.value;
    let Some(join) = EtcdJoin::parse(&raw.value) else {
        d.error(
            at(file, raw),
            format!(
                "node `{node}`: etcd_join `{}` is not `new` or `existing`",
                raw.value
            ),
        );
        return None;
    };
    if !lists_role(rn, ETCD) {
        d.error(
            at(file, raw),
            format!("node `{node}` sets etcd_join but has no `{ETCD}` role"),
        );
        return None;
    }
    Some(join)
}

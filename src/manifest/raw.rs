//! Raw shapes of the manifest files, exactly as written. Unknown fields are
//! rejected; values that later rules check keep their YAML/TOML location.
//! Nothing outside `manifest` sees these types.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// `manifests/cluster.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) name: Spanned<String>,
    pub(crate) kubernetes_version: Spanned<String>,
    pub(crate) api: RawApi,
    pub(crate) network: RawNetwork,
    #[serde(default)]
    pub(crate) pki: RawPki,
    /// How nodes reach their LAN: what cloud-init's network-config writes.
    #[serde(default)]
    pub(crate) host_network: RawHostNetwork,
    pub(crate) nodes: Spanned<Vec<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostNetwork {
    #[serde(default = "default_interface")]
    pub(crate) interface: Spanned<String>,
    #[serde(default = "default_prefix")]
    pub(crate) prefix_length: Spanned<u8>,
    #[serde(default)]
    pub(crate) gateway: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) nameservers: Vec<Spanned<String>>,
}

impl Default for RawHostNetwork {
    fn default() -> Self {
        RawHostNetwork {
            interface: default_interface(),
            prefix_length: default_prefix(),
            gateway: None,
            nameservers: Vec::new(),
        }
    }
}

fn default_prefix() -> Spanned<u8> {
    unspanned(24)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    /// The virtual IP that keepalived moves between the load-balancer nodes.
    pub(crate) vip: Spanned<String>,
    /// The DNS name clients use for the API; `/etc/hosts` maps it to the VIP.
    pub(crate) dns_name: Spanned<String>,
    /// The haproxy frontend port on the VIP.
    pub(crate) lb_port: Spanned<u16>,
    /// kube-apiserver's own secure port on every control-plane node.
    #[serde(default = "default_apiserver_port")]
    pub(crate) apiserver_port: Spanned<u16>,
    #[serde(default = "default_router_id")]
    pub(crate) vrrp_router_id: Spanned<u8>,
    #[serde(default = "default_interface")]
    pub(crate) vrrp_interface: Spanned<String>,
}

fn default_apiserver_port() -> Spanned<u16> {
    unspanned(6443)
}

fn default_router_id() -> Spanned<u8> {
    unspanned(51)
}

fn default_interface() -> Spanned<String> {
    unspanned("eth0".to_string())
}

/// A default value has no place in the file; it reports at line 0.
pub(crate) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub(crate) service_cidr: Spanned<String>,
    pub(crate) pod_cidr: Spanned<String>,
    #[serde(default = "default_node_cidr_mask")]
    pub(crate) node_cidr_mask: Spanned<u8>,
    #[serde(default = "default_cluster_domain")]
    pub(crate) cluster_domain: Spanned<String>,
    /// Defaults to the 10th address of the service CIDR.
    #[serde(default)]
    pub(crate) cluster_dns: Option<Spanned<String>>,
    #[serde(default = "default_proxy_mode")]
    pub(crate) kube_proxy_mode: Spanned<String>,
}

fn default_node_cidr_mask() -> Spanned<u8> {
    unspanned(24)
}

fn default_cluster_domain() -> Spanned<String> {
    unspanned("cluster.local".to_string())
}

fn default_proxy_mode() -> Spanned<String> {
    unspanned("nftables".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPki {
    #[serde(default = "default_key_algorithm")]
    pub(crate) key_algorithm: Spanned<String>,
    #[serde(default = "default_ca_days")]
    pub(crate) ca_validity_days: Spanned<u32>,
    #[serde(default = "default_leaf_days")]
    pub(crate) leaf_validity_days: Spanned<u32>,
    #[serde(default = "default_token_ttl_hours")]
    pub(crate) bootstrap_token_ttl_hours: Spanned<u32>,
}

impl Default for RawPki {
    fn default() -> Self {
        RawPki {
            key_algorithm: default_key_algorithm(),
            ca_validity_days: default_ca_days(),
            leaf_validity_days: default_leaf_days(),
            bootstrap_token_ttl_hours: default_token_ttl_hours(),
        }
    }
}

fn default_key_algorithm() -> Spanned<String> {
    unspanned("ecdsa-p256".to_string())
}

fn default_ca_days() -> Spanned<u32> {
    unspanned(3650)
}

fn default_leaf_days() -> Spanned<u32> {
    unspanned(365)
}

/// kubeadm's default TTL of a bootstrap token (cmd/kubeadm/app/constants:
/// `DefaultTokenDuration = 24 * time.Hour`).
fn default_token_ttl_hours() -> Spanned<u32> {
    unspanned(24)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub(crate) name: Spanned<String>,
    pub(crate) ip: Spanned<String>,
    #[serde(default = "default_arch")]
    pub(crate) arch: Spanned<String>,
    pub(crate) roles: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) labels: SpannedMap,
    #[serde(default)]
    pub(crate) taints: Vec<Spanned<String>>,
    /// The NIC's MAC address: network-config matches it and names the
    /// interface `host_network.interface`.
    #[serde(default)]
    pub(crate) mac: Option<Spanned<String>>,
    /// keepalived's interface on this node; `api.vrrp_interface` if absent.
    #[serde(default)]
    pub(crate) vrrp_interface: Option<Spanned<String>>,
    /// `new` (the default) or `existing`: etcd's initial cluster state.
    #[serde(default)]
    pub(crate) etcd_join: Option<Spanned<String>>,
}

/// A YAML mapping of strings in file order, each key and value keeping its
/// location (node labels: every key and value is checked where it stands).
#[derive(Debug, Default)]
pub(crate) struct SpannedMap(pub(crate) Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for SpannedMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = SpannedMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedMap, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(SpannedMap(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

fn default_arch() -> Spanned<String> {
    unspanned("amd64".to_string())
}

/// `manifests/roles/<role>.yaml`; the role's name is the file's stem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    /// For the reader of the file: accepted (a string) and otherwise unused.
    #[serde(default)]
    #[expect(dead_code, reason = "a comment for the file's reader")]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) artifacts: Vec<RawRoleArtifact>,
    #[serde(default)]
    pub(crate) images: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) layers: RawRoleLayers,
    #[serde(default)]
    pub(crate) services: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) secrets: Vec<Spanned<String>>,
    /// Debian packages the role needs installed on the node's OS.
    #[serde(default)]
    pub(crate) os_packages: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoleArtifact {
    /// The `name` of a pin in pins.toml.
    pub(crate) pin: Spanned<String>,
    pub(crate) install: Vec<RawInstall>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstall {
    /// The archive member to take (`{version}` and `{arch}` are substituted);
    /// absent when the download itself is the file (runc).
    #[serde(default)]
    pub(crate) from: Option<Spanned<String>>,
    pub(crate) to: Spanned<String>,
    #[serde(default = "default_exec_mode")]
    pub(crate) mode: Spanned<String>,
    #[serde(default = "default_owner")]
    pub(crate) owner: Spanned<String>,
}

fn default_exec_mode() -> Spanned<String> {
    unspanned("0755".to_string())
}

fn default_owner() -> Spanned<String> {
    unspanned("0:0".to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoleLayers {
    /// Directories under `layers/` baked into the role layer, shared by every
    /// node with the role: their templates see cluster values only.
    #[serde(default)]
    pub(crate) role: Vec<Spanned<String>>,
    /// Directories under `layers/` rendered per node into the node layer.
    #[serde(default)]
    pub(crate) node: Vec<Spanned<String>>,
}

/// `manifests/pins.toml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPins {
    #[serde(default)]
    pub(crate) artifact: Vec<RawArtifactPin>,
    #[serde(default)]
    pub(crate) image: Vec<RawImagePin>,
    /// The node OS: which `[[artifact]]` is its root filesystem archive.
    #[serde(default)]
    pub(crate) os: Option<RawOs>,
    /// Debian packages unpacked onto that root.
    #[serde(default)]
    pub(crate) deb: Vec<RawDebPin>,
}

/// `[os]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOs {
    /// The `name` of the `[[artifact]]` pins (one per arch) that are the
    /// root filesystem archive.
    pub(crate) base: toml::Spanned<String>,
    /// Packages every node gets on top of the base (a `[[deb]]` each), as
    /// a base without systemd or a kernel needs.
    #[serde(default)]
    pub(crate) packages: Vec<toml::Spanned<String>>,
    /// Paths the node OS leaves out, as dpkg's `path-exclude` does: glob
    /// patterns of absolute paths (`*` matches `/` too).
    #[serde(default)]
    pub(crate) exclude: Vec<toml::Spanned<String>>,
}

/// `[[deb]]`: one `.deb` file, pinned by its checksum.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDebPin {
    /// The Debian package name (the control file's `Package`).
    pub(crate) name: toml::Spanned<String>,
    /// The Debian version (`[epoch:]upstream[-revision]`).
    pub(crate) version: toml::Spanned<String>,
    /// `amd64`, `arm64` or `all`.
    pub(crate) arch: toml::Spanned<String>,
    pub(crate) url: toml::Spanned<String>,
    #[serde(default)]
    pub(crate) sha256: Option<toml::Spanned<String>>,
    #[serde(default)]
    pub(crate) sha512: Option<toml::Spanned<String>>,
    pub(crate) source: toml::Spanned<String>,
    /// sysusers.d(5) lines standing in for what the maintainer scripts
    /// would have done (`u haproxy - "HAProxy" /var/lib/haproxy`).
    #[serde(default)]
    pub(crate) users: Vec<toml::Spanned<String>>,
    #[serde(default)]
    pub(crate) note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawArtifactPin {
    pub(crate) name: toml::Spanned<String>,
    pub(crate) version: toml::Spanned<String>,
    pub(crate) arch: toml::Spanned<String>,
    pub(crate) url: toml::Spanned<String>,
    #[serde(default)]
    pub(crate) sha256: Option<toml::Spanned<String>>,
    #[serde(default)]
    pub(crate) sha512: Option<toml::Spanned<String>>,
    pub(crate) source: toml::Spanned<String>,
    #[serde(default)]
    pub(crate) note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImagePin {
    pub(crate) name: toml::Spanned<String>,
    pub(crate) version: toml::Spanned<String>,
    /// `registry/repository:tag`
    pub(crate) image: toml::Spanned<String>,
    /// The image index (manifest list) digest, `sha256:<hex>`.
    pub(crate) digest: toml::Spanned<String>,
    pub(crate) arch: toml::Spanned<Vec<String>>,
    pub(crate) source: toml::Spanned<String>,
    #[serde(default)]
    pub(crate) note: Option<String>,
}

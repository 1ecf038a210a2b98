//! Raw shapes of the manifest files, exactly as written. Unknown fields are
//! rejected; values that later rules check keep their YAML/TOML location.
//! Nothing outside `manifest` sees these types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// `manifests/cluster.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    pub kubernetes_version: Spanned<String>,
    pub api: RawApi,
    pub network: RawNetwork,
    #[serde(default)]
    pub pki: RawPki,
    /// How nodes reach their LAN: what cloud-init's network-config writes.
    #[serde(default)]
    pub host_network: RawHostNetwork,
    pub nodes: Spanned<Vec<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostNetwork {
    #[serde(default = "default_interface")]
    pub interface: Spanned<String>,
    #[serde(default = "default_prefix")]
    pub prefix_length: Spanned<u8>,
    #[serde(default)]
    pub gateway: Option<Spanned<String>>,
    #[serde(default)]
    pub nameservers: Vec<Spanned<String>>,
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
pub struct RawApi {
    /// The virtual IP that keepalived moves between the load-balancer nodes.
    pub vip: Spanned<String>,
    /// The DNS name clients use for the API; `/etc/hosts` maps it to the VIP.
    pub dns_name: Spanned<String>,
    /// The haproxy frontend port on the VIP.
    pub lb_port: Spanned<u16>,
    /// kube-apiserver's own secure port on every control-plane node.
    #[serde(default = "default_apiserver_port")]
    pub apiserver_port: Spanned<u16>,
    #[serde(default = "default_router_id")]
    pub vrrp_router_id: Spanned<u8>,
    #[serde(default = "default_interface")]
    pub vrrp_interface: Spanned<String>,
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
pub fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub service_cidr: Spanned<String>,
    pub pod_cidr: Spanned<String>,
    #[serde(default = "default_node_cidr_mask")]
    pub node_cidr_mask: Spanned<u8>,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: Spanned<String>,
    /// Defaults to the 10th address of the service CIDR.
    #[serde(default)]
    pub cluster_dns: Option<Spanned<String>>,
    #[serde(default = "default_proxy_mode")]
    pub kube_proxy_mode: Spanned<String>,
}

fn default_node_cidr_mask() -> Spanned<u8> {
    unspanned(24)
}

fn default_cluster_domain() -> Spanned<String> {
    unspanned("cluster.local".to_string())
}

fn default_proxy_mode() -> Spanned<String> {
    unspanned("ipvs".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    #[serde(default = "default_key_algorithm")]
    pub key_algorithm: Spanned<String>,
    #[serde(default = "default_ca_days")]
    pub ca_validity_days: Spanned<u32>,
    #[serde(default = "default_leaf_days")]
    pub leaf_validity_days: Spanned<u32>,
}

impl Default for RawPki {
    fn default() -> Self {
        RawPki {
            key_algorithm: default_key_algorithm(),
            ca_validity_days: default_ca_days(),
            leaf_validity_days: default_leaf_days(),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Spanned<String>,
    pub ip: Spanned<String>,
    #[serde(default = "default_arch")]
    pub arch: Spanned<String>,
    pub roles: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Spanned<String>>,
}

fn default_arch() -> Spanned<String> {
    unspanned("amd64".to_string())
}

/// `manifests/roles/<role>.yaml`; the role's name is the file's stem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub artifacts: Vec<RawRoleArtifact>,
    #[serde(default)]
    pub images: Vec<Spanned<String>>,
    #[serde(default)]
    pub layers: RawRoleLayers,
    #[serde(default)]
    pub services: Vec<Spanned<String>>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleArtifact {
    /// The `name` of a pin in pins.toml.
    pub pin: Spanned<String>,
    pub install: Vec<RawInstall>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstall {
    /// The archive member to take (`{version}` and `{arch}` are substituted);
    /// absent when the download itself is the file (runc).
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    pub to: Spanned<String>,
    #[serde(default = "default_exec_mode")]
    pub mode: Spanned<String>,
    #[serde(default = "default_owner")]
    pub owner: Spanned<String>,
}

fn default_exec_mode() -> Spanned<String> {
    unspanned("0755".to_string())
}

fn default_owner() -> Spanned<String> {
    unspanned("0:0".to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleLayers {
    /// Directories under `layers/` baked into the role layer, shared by every
    /// node with the role: their templates see cluster values only.
    #[serde(default)]
    pub role: Vec<Spanned<String>>,
    /// Directories under `layers/` rendered per node into the node layer.
    #[serde(default)]
    pub node: Vec<Spanned<String>>,
}

/// `manifests/pins.toml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPins {
    #[serde(default)]
    pub artifact: Vec<RawArtifactPin>,
    #[serde(default)]
    pub image: Vec<RawImagePin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArtifactPin {
    pub name: toml::Spanned<String>,
    pub version: toml::Spanned<String>,
    pub arch: toml::Spanned<String>,
    pub url: toml::Spanned<String>,
    #[serde(default)]
    pub sha256: Option<toml::Spanned<String>>,
    #[serde(default)]
    pub sha512: Option<toml::Spanned<String>>,
    pub source: toml::Spanned<String>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImagePin {
    pub name: toml::Spanned<String>,
    pub version: toml::Spanned<String>,
    /// `registry/repository:tag`
    pub image: toml::Spanned<String>,
    /// The image index (manifest list) digest, `sha256:<hex>`.
    pub digest: toml::Spanned<String>,
    pub arch: toml::Spanned<Vec<String>>,
    pub source: toml::Spanned<String>,
    #[serde(default)]
    pub note: Option<String>,
}

//! Stage 1, `manifest`: reads `manifests/` (cluster.yaml, roles/*.yaml,
//! pins.toml; regular files only, bounded: [`read`]), rejects unknown
//! fields, and validates everything into the typed [`Manifests`] model,
//! reporting every problem at once with its file, line and column; every
//! string rendered into a config is checked against that config's syntax. Derived values (first service IP, etcd initial-cluster, apiserver
//! SANs, haproxy backends, keepalived priorities) are computed here, never typed.

mod derive;
mod diag;
#[cfg(test)]
mod fuzz;
mod raw;
pub(crate) mod read;
pub(crate) mod secrets;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

pub use derive::Derived;
pub use diag::Diagnostics;
pub use read::FileRefusal;
use secrets::SecretSpec;

/// The oldest Kubernetes minor imgbuild renders configuration for.
pub(crate) const MIN_KUBERNETES_MINOR: u32 = 33;

/// Errors of the manifest stage.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read manifest {path}")]
    Refused {
        path: PathBuf,
        #[source]
        reason: FileRefusal,
    },
    #[error("cannot list the role manifests in {path}")]
    ListRoles {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// A CPU architecture a node can have and a pin can be for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub(crate) fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes release, `vMAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct KubeVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) patch: u32,
}

impl KubeVersion {
    pub(crate) fn parse(s: &str) -> Option<KubeVersion> {
        let mut it = s.strip_prefix('v')?.split('.');
        let v = KubeVersion {
            major: it.next()?.parse().ok()?,
            minor: it.next()?.parse().ok()?,
            patch: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProxyMode {
    Ipvs,
    Iptables,
    Nftables,
}

/// The systemd unit whose role needs the proxy mode's OS packages.
pub(crate) const KUBE_PROXY_UNIT: &str = "kube-proxy.service";

impl ProxyMode {
    pub(crate) fn parse(s: &str) -> Option<ProxyMode> {
        match s {
            "ipvs" => Some(ProxyMode::Ipvs),
            "iptables" => Some(ProxyMode::Iptables),
            "nftables" => Some(ProxyMode::Nftables),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }

    /// The Debian packages whose programs kube-proxy runs in this mode: `nft`
    /// (nftables, through sigs.k8s.io/knftables), `iptables-restore`
    /// (iptables), and for ipvs `ipset` and `iptables` (pkg/proxy/ipvs
    /// refuses to start without them). Since v1.32 kube-proxy clears
    /// conntrack entries over netlink, without the `conntrack` program.
    pub(crate) fn os_packages(self) -> &'static [&'static str] {
        match self {
            ProxyMode::Nftables => &["nftables"],
            ProxyMode::Iptables => &["iptables"],
            ProxyMode::Ipvs => &["ipset", "iptables"],
        }
    }
}

/// How an etcd member starts with an empty data directory: in a cluster
/// formed by the whole inventory (`new`), or joining a running one it has
/// been added to with `etcdctl member add` (`existing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EtcdJoin {
    New,
    Existing,
}

impl EtcdJoin {
    pub(crate) fn parse(s: &str) -> Option<EtcdJoin> {
        match s {
            "new" => Some(EtcdJoin::New),
            "existing" => Some(EtcdJoin::Existing),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    Rsa2048,
    Rsa4096,
}

/// The validated cluster: `manifests/cluster.yaml` with defaults applied.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cluster {
    pub(crate) name: String,
    pub(crate) kubernetes_version: KubeVersion,
    pub(crate) api: Api,
    pub(crate) network: Network,
    pub(crate) pki: PkiSettings,
    pub(crate) host_network: HostNetwork,
    pub(crate) nodes: Vec<Node>,
}

/// The nodes' own LAN, for cloud-init's network-config.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostNetwork {
    pub(crate) interface: String,
    pub(crate) prefix_length: u8,
    pub(crate) gateway: Option<Ipv4Addr>,
    pub(crate) nameservers: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Api {
    pub(crate) vip: Ipv4Addr,
    pub(crate) dns_name: String,
    pub(crate) lb_port: u16,
    pub(crate) apiserver_port: u16,
    pub(crate) vrrp_router_id: u8,
    pub(crate) vrrp_interface: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Network {
    pub(crate) service_cidr: Ipv4Net,
    pub(crate) pod_cidr: Ipv4Net,
    pub(crate) node_cidr_mask: u8,
    pub(crate) cluster_domain: String,
    pub(crate) cluster_dns: Ipv4Addr,
    pub(crate) kube_proxy_mode: ProxyMode,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PkiSettings {
    pub(crate) key_algorithm: KeyAlgorithm,
    pub(crate) ca_validity_days: u32,
    pub(crate) leaf_validity_days: u32,
    /// How long a bootstrap token is valid after `pki` makes it.
    pub(crate) bootstrap_token_ttl_hours: u32,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) arch: Arch,
    pub(crate) roles: Vec<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<String>,
    /// The MAC address of the NIC network-config configures (lowercase);
    /// `None`: matched by `host_network.interface`'s name.
    pub(crate) mac: Option<String>,
    /// The interface keepalived binds on this node (`api.vrrp_interface`
    /// unless the node names its own).
    pub(crate) vrrp_interface: String,
    /// etcd's initial cluster state on this node.
    pub(crate) etcd_join: EtcdJoin,
}

impl Node {
    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A validated role manifest. `base` is the role every node has.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    pub(crate) artifacts: Vec<RoleArtifact>,
    pub(crate) images: Vec<String>,
    /// Directories under `layers/` for the shared role layer.
    pub(crate) role_layers: Vec<String>,
    /// Directories under `layers/` rendered into each node's own layer.
    pub(crate) node_layers: Vec<String>,
    pub(crate) services: Vec<String>,
    pub(crate) secrets: Vec<&'static SecretSpec>,
    /// Debian packages the role's programs need from the node's OS.
    pub(crate) os_packages: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RoleArtifact {
    pub(crate) pin: String,
    pub(crate) install: Vec<Install>,
}

/// One file taken from a pinned download.
#[derive(Debug, Clone)]
pub(crate) struct Install {
    /// Archive member pattern (`{version}`, `{arch}`); `None`: the download itself.
    pub(crate) from: Option<String>,
    pub(crate) to: String,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "algorithm", content = "hex")]
pub enum Checksum {
    Sha256(String),
    Sha512(String),
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Sha256(h) => write!(f, "sha256:{h}"),
            Checksum::Sha512(h) => write!(f, "sha512:{h}"),
        }
    }
}

/// A pinned download: one name, version and arch.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactPin {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) arch: Arch,
    pub(crate) url: String,
    pub(crate) checksum: Checksum,
    pub(crate) source: String,
    pub(crate) note: Option<String>,
}

impl ArtifactPin {
    /// Whether the download is a gzip'd tarball whose members are taken.
    pub(crate) fn is_archive(&self) -> bool {
        self.url.ends_with(".tar.gz") || self.url.ends_with(".tgz")
    }

    /// Whether the download is a tar, plain or compressed with gzip, xz or
    /// zstd: what a root filesystem archive (`[os] base`) may be.
    pub(crate) fn is_root_archive(&self) -> bool {
        [
            ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tzst",
        ]
        .iter()
        .any(|suffix| self.url.ends_with(suffix))
    }
}

/// `[os]`: the node OS is the root filesystem archive pinned as the
/// `[[artifact]]`s named `base`, one per arch.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OsBase {
    pub(crate) base: String,
    /// `[os] packages`: every node's, beside its roles' `os_packages`.
    pub(crate) packages: Vec<String>,
    /// `[os] exclude`: what the `os` and `os-packages` layers leave out
    /// (files, links; never a directory), as dpkg's `path-exclude`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) exclude: Vec<String>,
}

impl OsBase {
    /// The `exclude` patterns as one matcher (validated when read; a pattern
    /// that does not compile, which validation refuses, matches nothing).
    pub(crate) fn excluded(&self) -> Option<globset::GlobSet> {
        if self.exclude.is_empty() {
            return None;
        }
        let mut b = globset::GlobSetBuilder::new();
        for p in &self.exclude {
            if let Ok(g) = globset::Glob::new(p) {
                b.add(g);
            }
        }
        b.build().ok()
    }
}

/// A pinned Debian package (`[[deb]]`): one `.deb` file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DebPin {
    pub(crate) package: String,
    /// The Debian version, epoch included (`1:2.2.7-1+b2`).
    pub(crate) version: String,
    /// `None`: `all`, the same file for every arch.
    pub(crate) arch: Option<Arch>,
    pub(crate) url: String,
    pub(crate) checksum: Checksum,
    pub(crate) source: String,
    /// sysusers.d(5) lines, written to
    /// `/usr/lib/sysusers.d/imgbuild-<package>.conf`.
    pub(crate) users: Vec<String>,
    pub(crate) note: Option<String>,
}

impl DebPin {
    /// Whether this file is the package for `arch`.
    pub(crate) fn is_for(&self, arch: Arch) -> bool {
        self.arch.is_none_or(|a| a == arch)
    }

    /// The download of this package for `arch`, fetched and cached like an
    /// artifact (the cache is keyed by checksum, the name only labels it).
    pub(crate) fn download(&self, arch: Arch) -> ArtifactPin {
        ArtifactPin {
            name: self.package.clone(),
            version: self.version.clone(),
            arch: self.arch.unwrap_or(arch),
            url: self.url.clone(),
            checksum: self.checksum.clone(),
            source: self.source.clone(),
            note: self.note.clone(),
        }
    }
}

/// A pinned container image: a multi-arch index by digest.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePin {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) image: String,
    pub(crate) digest: String,
    pub(crate) arches: Vec<Arch>,
    pub(crate) source: String,
    pub(crate) note: Option<String>,
}

impl ImagePin {
    /// `repository:tag@sha256:…`, the reference a runtime pulls.
    pub(crate) fn reference(&self) -> String {
        format!("{}@{}", self.image, self.digest)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Pins {
    pub(crate) artifacts: Vec<ArtifactPin>,
    pub(crate) images: Vec<ImagePin>,
    /// The node OS, when pins.toml has `[os]`.
    pub(crate) os: Option<OsBase>,
    pub(crate) debs: Vec<DebPin>,
}

impl Pins {
    pub(crate) fn artifact(&self, name: &str, arch: Arch) -> Option<&ArtifactPin> {
        self.artifacts
            .iter()
            .find(|p| p.name == name && p.arch == arch)
    }

    /// The `.deb` of `package` for `arch`.
    pub(crate) fn deb(&self, package: &str, arch: Arch) -> Option<&DebPin> {
        self.debs
            .iter()
            .find(|p| p.package == package && p.is_for(arch))
    }

    /// The root filesystem archive of the node OS for `arch`, when there is
    /// an `[os]`.
    pub(crate) fn os_base(&self, arch: Arch) -> Option<&ArtifactPin> {
        self.os
            .as_ref()
            .and_then(|os| self.artifact(&os.base, arch))
    }

    /// Every download pinned, artifacts and packages (a package for `all`
    /// arches labelled amd64): what a bundle may hold.
    pub(crate) fn downloads(&self) -> impl Iterator<Item = ArtifactPin> + '_ {
        self.artifacts.iter().cloned().chain(
            self.debs
                .iter()
                .map(|d| d.download(d.arch.unwrap_or(Arch::Amd64))),
        )
    }

    pub(crate) fn image(&self, name: &str) -> Option<&ImagePin> {
        self.images.iter().find(|p| p.name == name)
    }
}

/// Everything under `manifests/`, validated.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The `manifests/` directory they were read from.
    pub(crate) dir: PathBuf,
    /// The directory holding the layer trees named by the role manifests.
    pub(crate) layers_dir: PathBuf,
    pub(crate) cluster: Cluster,
    /// Every role, `base` included, by name.
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) pins: Pins,
    pub(crate) derived: Derived,
    /// Each node's place in `cluster.nodes`, by name: a node is found
    /// without a walk over the inventory.
    pub(crate) node_index: HashMap<String, usize>,
}

/// The role every node has; its manifest is `roles/base.yaml`.
pub(crate) const BASE_ROLE: &str = "base";

impl Manifests {
    pub(crate) fn node(&self, name: &str) -> Option<&Node> {
        self.node_index
            .get(name)
            .and_then(|&i| self.cluster.nodes.get(i))
    }

    pub(crate) fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }
}

/// Reads and validates the manifests in `dir`, whose role layers live in
/// `layers_dir`. On success, also returns the warnings found.
pub(crate) fn load(
    dir: &Path,
    layers_dir: &Path,
) -> Result<(Manifests, Diagnostics), ManifestError> {
    validate::load(dir, layers_dir)
}

/// The default layers directory: `layers/` beside the manifests directory.
pub(crate) fn default_layers_dir(manifests: &Path) -> PathBuf {
    match manifests.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("layers"),
        _ => PathBuf::from("layers"),
    }
}

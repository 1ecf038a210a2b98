//! Stage 2, `plan`: takes the validated [`Manifests`] and a target (a node
//! name, or a role name for that role's generic image) and produces a
//! [`Plan`]: the ordered layers (with an `[os]`: `os`, the base's root
//! filesystem archive, and `os-packages`, the pinned `.deb`s; then `base`,
//! one per role, `node`, `secrets`), each a sorted list of file entries
//! `{path, mode, uid, gid, source}`. Nothing is
//! fetched, generated or written here; every later stage executes a plan.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::secrets::Scope;
use crate::manifest::{Arch, BASE_ROLE, Derived, Manifests, Node};

/// Suffix of template files under `layers/`; it is dropped on the node.
pub const TEMPLATE_SUFFIX: &str = ".tera";

/// Where systemd looks for units enabled at boot.
const WANTS_DIR: &str = "/etc/systemd/system/multi-user.target.wants";
const UNIT_DIR: &str = "/etc/systemd/system";
/// Where the host OS's packages install their units.
const OS_UNIT_DIR: &str = "/usr/lib/systemd/system";
/// Where the baked-in container images live on a node.
pub const IMAGES_DIR: &str = "/var/lib/imgbuild/images";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("`{target}` is neither a node nor a role; nodes: {nodes}; roles: {roles}")]
    UnknownTarget {
        target: String,
        nodes: String,
        roles: String,
    },
    #[error("role `{role}` is held by nodes of several arches ({arches}); say which with --arch")]
    MixedArch { role: String, arches: String },
    #[error(
        "role `{role}` needs per-node secret `{secret}`, so it has no generic image; build one of its nodes instead ({nodes})"
    )]
    PerNodeSecret {
        role: String,
        secret: String,
        nodes: String,
    },
    #[error("{target}: {path} is written by both {first} and {second}")]
    Conflict {
        target: String,
        path: String,
        first: String,
        second: String,
    },
    #[error("cannot read layer directory {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file name is not UTF-8")]
    NonUtf8 { path: PathBuf },
    #[error(
        "cannot take {path} into a layer: it is a {kind}, and a layer tree holds only directories and regular files (a link or device a node needs is not shipped through layers/)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
}

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// A member of a pinned archive.
    Member {
        artifact: String,
        version: String,
        member: String,
    },
    /// A pinned download that is itself the file.
    Download { artifact: String, version: String },
    /// A template under `layers/`, rendered with the cluster (role layers) or
    /// node (node layer) values.
    Template { template: String },
    /// A file under `layers/` copied as it is.
    Static { file: String },
    /// A generated secret from the state dir; `node` for per-node ones.
    Secret {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// A pinned container image, as an OCI archive.
    Image { image: String, reference: String },
    /// A symbolic link (systemd enablement).
    Symlink { target: String },
    /// Every member of a pinned root filesystem archive (the `[os]` base),
    /// at its own path under the entry's `/`.
    Archive { artifact: String, version: String },
    /// A pinned `.deb` unpacked at `/` without its maintainer scripts, with
    /// dpkg's `/var/lib/dpkg/info/<package>.list` (and `.md5sums`).
    Deb { package: String, version: String },
    /// The sysusers.d lines pins.toml gives a `.deb` (`users`).
    Sysusers { package: String },
    /// dpkg's status database: the base's, with the layer's packages
    /// installed.
    DpkgStatus { base: String, version: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Member {
                artifact,
                version,
                member,
            } => write!(f, "member {artifact} {version}: {member}"),
            Source::Download { artifact, version } => write!(f, "download {artifact} {version}"),
            Source::Template { template } => write!(f, "template {template}"),
            Source::Static { file } => write!(f, "static {file}"),
            Source::Secret { id, node: Some(n) } => write!(f, "secret {id} ({n})"),
            Source::Secret { id, node: None } => write!(f, "secret {id}"),
            Source::Image { reference, .. } => write!(f, "image {reference}"),
            Source::Symlink { target } => write!(f, "symlink -> {target}"),
            Source::Archive { artifact, version } => {
                write!(f, "archive {artifact} {version}: every member")
            }
            Source::Deb { package, version } => write!(f, "deb {package} {version}"),
            Source::Sysusers { package } => write!(f, "sysusers.d lines of deb {package}"),
            Source::DpkgStatus { base, version } => {
                write!(
                    f,
                    "dpkg status of {base} {version}, these packages installed"
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Absolute path on the node.
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub source: Source,
}

fn octal<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    /// The `[os]` base: its root filesystem archive, whole.
    Os,
    /// The pinned `.deb`s the roles need, unpacked, and dpkg's records.
    OsPackages,
    Base,
    Role,
    Node,
    Secrets,
}

impl LayerKind {
    /// Whether layers of this kind are the same for every node that has
    /// them (the OS, base and roles), as opposed to one node's own.
    pub fn is_shared(self) -> bool {
        matches!(
            self,
            LayerKind::Os | LayerKind::OsPackages | LayerKind::Base | LayerKind::Role
        )
    }
}

/// The name (after `NN-`) of the `[os]` base's layer.
pub const OS_LAYER: &str = "os";
/// The name (after `NN-`) of the OS packages' layer.
pub const OS_PACKAGES_LAYER: &str = "os-packages";
/// dpkg's status database on the node.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Where the `users` lines of a `.deb` go: `imgbuild-<package>.conf` in it.
pub const SYSUSERS_DIR: &str = "/usr/lib/sysusers.d";

#[derive(Debug, Clone, Serialize)]
pub struct LayerPlan {
    /// `NN-<name>`, the layer's file stem.
    pub name: String,
    pub kind: LayerKind,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Node,
    Role,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// What was asked for: a node name or a role name.
    pub target: String,
    pub kind: TargetKind,
    pub cluster: String,
    pub kubernetes_version: String,
    pub arch: Arch,
    /// The node's roles in layer order (`base` first), or the one role.
    pub roles: Vec<String>,
    /// systemd units enabled at boot.
    pub services: Vec<String>,
    /// The Debian packages the roles need from the node's OS, sorted; the
    /// first-boot script checks them before it changes anything.
    pub os_packages: Vec<String>,
    pub layers: Vec<LayerPlan>,
    pub derived: Derived,
}

impl Plan {
    /// Canonical JSON: sorted keys, two-space indent, trailing newline.
    pub fn to_json(&self) -> String {
        crate::json::canonical(self)
    }

    /// Every entry of every layer, in layer order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.layers.iter().flat_map(|l| &l.entries)
    }

    /// The names of the pinned artifacts the plan installs files from (the
    /// `[os]` base included), each once, sorted.
    pub fn artifacts(&self) -> std::collections::BTreeSet<&str> {
        self.entries()
            .filter_map(|e| match &e.source {
                Source::Member { artifact, .. }
                | Source::Download { artifact, .. }
                | Source::Archive { artifact, .. } => Some(artifact.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The pinned Debian packages the plan unpacks, each once, sorted.
    pub fn debs(&self) -> std::collections::BTreeSet<&str> {
        self.entries()
            .filter_map(|e| match &e.source {
                Source::Deb { package, .. } => Some(package.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The names of the pinned images the plan bakes in, each once, sorted.
    pub fn images(&self) -> std::collections::BTreeSet<&str> {
        self.entries()
            .filter_map(|e| match &e.source {
                Source::Image { image, .. } => Some(image.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A readable table: per layer, one line per file.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {} ({}; {}; Kubernetes {}; roles: {})",
            match self.kind {
                TargetKind::Node => "node",
                TargetKind::Role => "generic image of role",
            },
            self.target,
            self.cluster,
            self.arch,
            self.kubernetes_version,
            self.roles.join(", ")
        );
        let _ = writeln!(
            out,
            "OS packages: {}",
            if self.os_packages.is_empty() {
                "none".to_string()
            } else {
                self.os_packages.join(", ")
            }
        );
        let width = self
            .layers
            .iter()
            .flat_map(|l| &l.entries)
            .map(|e| e.path.len())
            .max()
            .unwrap_or(4)
            .max(4);
        for layer in &self.layers {
            let _ = writeln!(out, "\n{} ({} files)", layer.name, layer.entries.len());
            let _ = writeln!(out, "  {:width$}  MODE  OWNER  SOURCE", "PATH");
            for e in &layer.entries {
                let _ = writeln!(
                    out,
                    "  {:width$}  {:04o}  {:<5}  {}",
                    e.path,
                    e.mode,
                    format!("{}:{}", e.uid, e.gid),
                    e.source
                );
            }
        }
        out
    }
}

/// Resolves `--role` into a plan. `arch` picks the arch of a role's generic
/// image when its nodes differ.
pub fn plan(m: &Manifests, target: &str, arch: Option<Arch>) -> Result<Plan, PlanError> {
    if let Some(node) = m.node(target) {
        return plan_node(m, node);
    }
    if target != BASE_ROLE && m.role(target).is_some() {
        return plan_role(m, target, arch);
    }
    Err(PlanError::UnknownTarget {
        target: target.to_string(),
        nodes: m
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        roles: m
            .roles
            .keys()
            .filter(|r| *r != BASE_ROLE)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Plans every node of the inventory, in inventory order.
pub fn plan_all(m: &Manifests) -> Result<Vec<Plan>, PlanError> {
    m.cluster.nodes.iter().map(|n| plan_node(m, n)).collect()
}

/// One plan per kind of node, in inventory order: the first node with each
/// list of roles and arch. A node's plan is its kind's but for its name
/// (the target, its per-node secrets), so these need the same inputs as
/// the whole inventory, and fail as [`plan_all`] would, naming the same
/// node, without holding a plan per node.
pub fn plan_kinds(m: &Manifests) -> Result<Vec<Plan>, PlanError> {
    let mut seen = std::collections::BTreeSet::new();
    m.cluster
        .nodes
        .iter()
        .filter(|n| seen.insert((n.arch, n.roles.as_slice())))
        .map(|n| plan_node(m, n))
        .collect()
}

/// Plans the node `node` of the inventory.
pub(crate) fn plan_node(m: &Manifests, node: &Node) -> Result<Plan, PlanError> {
    let roles: Vec<String> = std::iter::once(BASE_ROLE.to_string())
        .chain(node.roles.iter().cloned())
        .collect();
    build(
        m,
        &node.name,
        TargetKind::Node,
        node.arch,
        roles,
        Some(node),
    )
}

fn plan_role(m: &Manifests, role: &str, arch: Option<Arch>) -> Result<Plan, PlanError> {
    let holders: Vec<&Node> = m
        .cluster
        .nodes
        .iter()
        .filter(|n| n.has_role(role))
        .collect();
    let arch = match arch {
        Some(a) => a,
        None => {
            let mut arches: Vec<Arch> = holders.iter().map(|n| n.arch).collect();
            arches.sort();
            arches.dedup();
            match arches.as_slice() {
                [] => Arch::Amd64,
                [one] => *one,
                many => {
                    return Err(PlanError::MixedArch {
                        role: role.to_string(),
                        arches: many
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
    };
    let roles = vec![BASE_ROLE.to_string(), role.to_string()];
    for r in &roles {
        if let Some(spec) = m.roles[r]
            .secrets
            .iter()
            .find(|s| s.scope == Scope::PerNode)
        {
            return Err(PlanError::PerNodeSecret {
                role: role.to_string(),
                secret: spec.id.to_string(),
                nodes: holders
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    build(m, role, TargetKind::Role, arch, roles, None)
}

/// Collects entries for one layer, refusing a path written twice.
struct LayerBuilder<'a> {
    target: &'a str,
    entries: BTreeMap<String, (Entry, String)>,
}

impl LayerBuilder<'_> {
    fn new(target: &str) -> LayerBuilder<'_> {
        LayerBuilder {
            target,
            entries: BTreeMap::new(),
        }
    }

    fn add(
        &mut self,
        entry: Entry,
        origin: String,
        owners: &mut BTreeMap<String, String>,
    ) -> Result<(), PlanError> {
        if let Some(first) = owners.get(&entry.path) {
            return Err(PlanError::Conflict {
                target: self.target.to_string(),
                path: entry.path,
                first: first.clone(),
                second: origin,
            });
        }
        owners.insert(entry.path.clone(), origin.clone());
        self.entries.insert(entry.path.clone(), (entry, origin));
        Ok(())
    }

    fn finish(self) -> Vec<Entry> {
        self.entries.into_values().map(|(e, _)| e).collect()
    }
}

/// One target's layers in order: the OS and its packages (with an `[os]`),
/// one per role, then the node's own (for a node), then the secrets; empty
/// layers are dropped and the rest numbered.
fn build(
    m: &Manifests,
    target: &str,
    kind: TargetKind,
    arch: Arch,
    roles: Vec<String>,
    node: Option<&Node>,
) -> Result<Plan, PlanError> {
    // path -> what wrote it first, across all layers of this target
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut layers: Vec<(String, LayerKind, Vec<Entry>)> = Vec::new();
    let mut services = Vec::new();
    let os_packages = os_packages(m, &roles);
    if let Some(base) = m.pins.os_base(arch) {
        let os = os_entry(base);
        layers.push((OS_LAYER.to_string(), LayerKind::Os, vec![os]));
        // the layer holds `[os] packages` too: the base's additions
        let mut debs = os_packages.clone();
        debs.extend(m.pins.os.iter().flat_map(|os| os.packages.iter().cloned()));
        debs.sort();
        debs.dedup();
        let entries = os_packages_layer(m, target, arch, base, &debs, &mut owners)?;
        layers.push((
            OS_PACKAGES_LAYER.to_string(),
            LayerKind::OsPackages,
            entries,
        ));
    }
    for role_name in &roles {
        let entries = role_layer(m, target, arch, role_name, &mut owners, &mut services)?;
        let kind = if role_name == BASE_ROLE {
            LayerKind::Base
        } else {
            LayerKind::Role
        };
        layers.push((role_name.clone(), kind, entries));
    }
    if node.is_some() {
        let entries = node_layer(m, target, &roles, &mut owners)?;
        layers.push(("node".to_string(), LayerKind::Node, entries));
    }
    let entries = secrets_layer(target, m, &roles, node, &mut owners)?;
    layers.push(("secrets".to_string(), LayerKind::Secrets, entries));
    let layers = layers
        .into_iter()
        .filter(|(_, _, entries)| !entries.is_empty())
        .enumerate()
        .map(|(i, (name, kind, entries))| LayerPlan {
            name: format!("{i:02}-{name}"),
            kind,
            entries,
        })
        .collect();
    Ok(Plan {
        target: target.to_string(),
        kind,
        cluster: m.cluster.name.clone(),
        kubernetes_version: m.cluster.kubernetes_version.to_string(),
        arch,
        roles,
        services,
        os_packages,
        layers,
        derived: m.derived.clone(),
    })
}

/// Every OS package the roles name, each once, sorted.
fn os_packages(m: &Manifests, roles: &[String]) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> =
        roles.iter().flat_map(|r| &m.roles[r].os_packages).collect();
    all.into_iter().cloned().collect()
}

/// The `[os]` base's layer: one entry, the whole archive at `/`.
fn os_entry(base: &crate::manifest::ArtifactPin) -> Entry {
    Entry {
        path: "/".to_string(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        source: Source::Archive {
            artifact: base.name.clone(),
            version: base.version.clone(),
        },
    }
}

/// The OS packages' layer: one entry per pinned `.deb` (unpacked at `/`,
/// by package name), the sysusers.d file of each that has `users`, and
/// dpkg's status database; empty when the roles need no package. A
/// package without a pin for `arch` (a role's generic image of an arch no
/// node has) is left out.
fn os_packages_layer(
    m: &Manifests,
    target: &str,
    arch: Arch,
    base: &crate::manifest::ArtifactPin,
    packages: &[String],
    owners: &mut BTreeMap<String, String>,
) -> Result<Vec<Entry>, PlanError> {
    let debs: Vec<&crate::manifest::DebPin> = packages
        .iter()
        .filter_map(|p| m.pins.deb(p, arch))
        .collect();
    if debs.is_empty() {
        return Ok(Vec::new());
    }
    let root = |source| Entry {
        path: "/".to_string(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        source,
    };
    let file = |path: String, source| Entry {
        path,
        mode: 0o644,
        uid: 0,
        gid: 0,
        source,
    };
    let mut entries: Vec<Entry> = debs
        .iter()
        .map(|d| {
            root(Source::Deb {
                package: d.package.clone(),
                version: d.version.clone(),
            })
        })
        .collect();
    let mut lb = LayerBuilder::new(target);
    let origin = || OS_PACKAGES_LAYER.to_string();
    for d in debs.iter().filter(|d| !d.users.is_empty()) {
        let path = format!("{SYSUSERS_DIR}/imgbuild-{}.conf", d.package);
        let source = Source::Sysusers {
            package: d.package.clone(),
        };
        lb.add(file(path, source), origin(), owners)?;
    }
    let status = Source::DpkgStatus {
        base: base.name.clone(),
        version: base.version.clone(),
    };
    lb.add(file(DPKG_STATUS.to_string(), status), origin(), owners)?;
    entries.extend(lb.finish());
    Ok(entries)
}

/// A role's layer: its pinned artifacts' files, its images, its layer
/// directories and the enablement links of its services (added to `services`).
fn role_layer(
    m: &Manifests,
    target: &str,
    arch: Arch,
    role_name: &str,
    owners: &mut BTreeMap<String, String>,
    services: &mut Vec<String>,
) -> Result<Vec<Entry>, PlanError> {
    let role = &m.roles[role_name];
    let mut lb = LayerBuilder::new(target);
    let origin = format!("role `{role_name}`");
    for e in artifact_entries(m, role, arch) {
        lb.add(e, origin.clone(), owners)?;
    }
    for image in &role.images {
        if let Some(pin) = m.pins.image(image) {
            lb.add(image_entry(pin), origin.clone(), owners)?;
        }
    }
    for dir in &role.role_layers {
        for e in walk_layer_dir(&m.layers_dir, dir)? {
            lb.add(e, format!("{origin} (layers/{dir})"), owners)?;
        }
    }
    for svc in &role.services {
        // A unit some layer ships lives in /etc/systemd/system; one from
        // the host OS's package (haproxy, keepalived) in /usr/lib.
        let shipped = format!("{UNIT_DIR}/{svc}");
        let target = if owners.contains_key(&shipped) || lb.entries.contains_key(&shipped) {
            shipped
        } else {
            format!("{OS_UNIT_DIR}/{svc}")
        };
        let e = Entry {
            path: format!("{WANTS_DIR}/{svc}"),
            mode: 0o777,
            uid: 0,
            gid: 0,
            source: Source::Symlink { target },
        };
        lb.add(e, origin.clone(), owners)?;
        services.push(svc.clone());
    }
    Ok(lb.finish())
}

/// The files a role installs from its pinned artifacts for `arch`.
fn artifact_entries(m: &Manifests, role: &crate::manifest::Role, arch: Arch) -> Vec<Entry> {
    let mut out = Vec::new();
    for a in &role.artifacts {
        // Validation guarantees a pin for every arch a node has; a generic
        // image of an arch without one simply lacks the file.
        let Some(pin) = m.pins.artifact(&a.pin, arch) else {
            continue;
        };
        for i in &a.install {
            let source = match &i.from {
                Some(from) => Source::Member {
                    artifact: pin.name.clone(),
                    version: pin.version.clone(),
                    member: from
                        .replace("{version}", &pin.version)
                        .replace("{arch}", arch.as_str()),
                },
                None => Source::Download {
                    artifact: pin.name.clone(),
                    version: pin.version.clone(),
                },
            };
            out.push(Entry {
                path: i.to.clone(),
                mode: i.mode,
                uid: i.uid,
                gid: i.gid,
                source,
            });
        }
    }
    out
}

/// A pinned image, baked in as an OCI archive.
fn image_entry(pin: &crate::manifest::ImagePin) -> Entry {
    Entry {
        path: format!("{IMAGES_DIR}/{}.oci.tar", pin.name),
        mode: 0o644,
        uid: 0,
        gid: 0,
        source: Source::Image {
            image: pin.name.clone(),
            reference: pin.reference(),
        },
    }
}

/// The node's own layer: every role's node layer directories.
fn node_layer(
    m: &Manifests,
    target: &str,
    roles: &[String],
    owners: &mut BTreeMap<String, String>,
) -> Result<Vec<Entry>, PlanError> {
    let mut lb = LayerBuilder::new(target);
    for role_name in roles {
        for dir in &m.roles[role_name].node_layers {
            for e in walk_layer_dir(&m.layers_dir, dir)? {
                lb.add(e, format!("role `{role_name}` (layers/{dir})"), owners)?;
            }
        }
    }
    Ok(lb.finish())
}

/// The secrets every role needs, each once.
fn secrets_layer(
    target: &str,
    m: &Manifests,
    roles: &[String],
    node: Option<&Node>,
    owners: &mut BTreeMap<String, String>,
) -> Result<Vec<Entry>, PlanError> {
    let mut lb = LayerBuilder::new(target);
    for role_name in roles {
        for spec in &m.roles[role_name].secrets {
            if owners
                .get(&spec.node_path())
                .is_some_and(|o| o == "secrets")
            {
                continue; // two roles may both need, say, ca.crt
            }
            let node = match (spec.scope, node) {
                (Scope::PerNode | Scope::PerNodeOptional, Some(n)) => Some(n.name.clone()),
                (Scope::PerNodeOptional, None) => continue, // a generic image goes without
                _ => None,
            };
            let e = Entry {
                path: spec.node_path(),
                mode: spec.mode(),
                uid: 0,
                gid: 0,
                source: Source::Secret {
                    id: spec.id.to_string(),
                    node,
                },
            };
            lb.add(e, "secrets".to_string(), owners)?;
        }
    }
    Ok(lb.finish())
}

/// Every file under `layers/<dir>/`, as entries at the same path on the node.
/// `*.tera` files are templates (suffix dropped); an executable file keeps
/// 0755, everything else is 0644; owners are root. The tree is taken as it
/// is: a symbolic link (the root itself included), FIFO, socket or device in
/// it is an error, never followed and never dropped in silence.
fn walk_layer_dir(layers_dir: &Path, dir: &str) -> Result<Vec<Entry>, PlanError> {
    let root = layers_dir.join(dir);
    let root_type = std::fs::symlink_metadata(&root)
        .map_err(|source| PlanError::Walk {
            path: root.clone(),
            source,
        })?
        .file_type();
    if !root_type.is_dir() {
        return Err(PlanError::NotRegular {
            path: root,
            kind: crate::manifest::read::kind_of(root_type),
        });
    }
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    files.sort();
    let mut entries = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&root)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| PlanError::NonUtf8 { path: file.clone() })?
            .to_string();
        let meta = std::fs::symlink_metadata(&file).map_err(|source| PlanError::Walk {
            path: file.clone(),
            source,
        })?;
        let exec = meta.permissions().mode() & 0o111 != 0;
        let shown = format!("layers/{dir}/{rel}");
        let (path, source) = match rel.strip_suffix(TEMPLATE_SUFFIX) {
            Some(stem) => (format!("/{stem}"), Source::Template { template: shown }),
            None => (format!("/{rel}"), Source::Static { file: shown }),
        };
        entries.push(Entry {
            path,
            mode: if exec { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            source,
        });
    }
    Ok(entries)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PlanError> {
    let rd = std::fs::read_dir(dir).map_err(|source| PlanError::Walk {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in rd {
        let entry = entry.map_err(|source| PlanError::Walk {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|source| PlanError::Walk {
            path: path.clone(),
            source,
        })?;
        if ft.is_dir() {
            collect_files(&path, out)?;
        } else if !ft.is_file() {
            return Err(PlanError::NotRegular {
                kind: crate::manifest::read::kind_of(ft),
                path,
            });
        } else if path.file_name().is_some_and(|n| n != ".gitkeep") {
            // .gitkeep keeps an empty directory in git; it is not content.
            out.push(path);
        }
    }
    Ok(())
}

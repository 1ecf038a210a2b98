//! Parse, then validate: reads `cluster.yaml`, `pins.toml` and
//! `roles/*.yaml` and turns them into the typed [`Manifests`], collecting every
//! problem with its location before giving up. The rules live by file:
//! [`pins`] (pins.toml), [`roles`] (one role file), [`cluster`] (cluster.yaml's
//! settings), [`nodes`] (one inventory entry), [`debs`] (the node OS:
//! `[os]` and `[[deb]]`) and [`cross`] (what one manifest's values demand of
//! another's).

mod cluster;
mod cross;
mod debs;
mod node_settings;
mod nodes;
mod pins;
mod roles;
mod syntax;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::derive;
use super::diag::{Diagnostic, Diagnostics, Loc};
use super::raw::{RawCluster, RawPins, RawRole};
use super::read::{check_directory, read_manifest};
use super::{BASE_ROLE, ManifestError, Manifests, Pins, ProxyMode, Role};
use syntax::{is_dns_label, is_dns_subdomain};

/// What cluster.yaml is checked against: the roles and pins read before it.
struct Known<'a> {
    roles: &'a BTreeMap<String, Role>,
    /// Roles whose file exists but did not parse: naming one is no new error.
    unparsed_roles: &'a BTreeSet<String>,
    pins: Option<&'a Pins>,
}

/// The role files read: those that parsed by name, and the names of the rest.
#[derive(Default)]
struct RawRoles {
    parsed: BTreeMap<String, (PathBuf, RawRole)>,
    unparsed: BTreeSet<String>,
}

/// Reads and validates the manifests in `dir`; see [`super::load`].
pub(super) fn load(
    dir: &Path,
    layers_dir: &Path,
) -> Result<(Manifests, Diagnostics), ManifestError> {
    let mut d = Diagnostics::default();
    let cluster_path = dir.join("cluster.yaml");
    let raw_cluster = parse_cluster(&cluster_path, &mut d)?;
    let (pins, os_loc) = parse_pins(&dir.join("pins.toml"), &mut d)?.unzip();
    let RawRoles { parsed, unparsed } = parse_roles(&dir.join("roles"), &mut d)?;
    let role_packages = role_packages(&parsed);
    // the roles are checked against the proxy mode; cluster.yaml reports a bad one
    let proxy_mode = raw_cluster
        .as_ref()
        .and_then(|c| ProxyMode::parse(&c.network.kube_proxy_mode.value));
    let roles = validate_roles(parsed, pins.as_ref(), layers_dir, proxy_mode, &mut d);
    let known = Known {
        roles: &roles,
        unparsed_roles: &unparsed,
        pins: pins.as_ref(),
    };
    let cluster =
        raw_cluster.and_then(|raw| cluster::validate_cluster(&cluster_path, raw, &known, &mut d));
    if let (Some(c), Some(p)) = (&cluster, &pins) {
        debs::check_os(
            p,
            os_loc.flatten().as_ref(),
            &role_packages,
            &c.nodes,
            &mut d,
        );
    }
    d.sort();
    match (cluster, pins) {
        (Some(cluster), Some(pins)) if !d.has_errors() => {
            Ok((assemble(dir, layers_dir, cluster, roles, pins), d))
        }
        _ => Err(ManifestError::Invalid(d)),
    }
}

/// A manifest's text; `None` (and a diagnostic at the first bad byte) when
/// it is not UTF-8.
fn read(path: &Path, d: &mut Diagnostics) -> Result<Option<String>, ManifestError> {
    match String::from_utf8(read_manifest(path)?) {
        Ok(text) => Ok(Some(text)),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            d.error(
                Loc::offset(path, before, valid),
                "the file is not UTF-8 text",
            );
            Ok(None)
        }
    }
}

/// Parses YAML text; a syntax or shape error becomes a diagnostic.
fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str, d: &mut Diagnostics) -> Option<T> {
    match serde_saphyr::from_str::<T>(text) {
        Ok(value) => Some(value),
        Err(e) => {
            d.push(Diagnostic::from_yaml(path, e));
            None
        }
    }
}

fn parse_cluster(path: &Path, d: &mut Diagnostics) -> Result<Option<RawCluster>, ManifestError> {
    Ok(read(path, d)?.and_then(|text| parse_yaml(path, &text, d)))
}

/// Reads pins.toml and validates it at once: roles and cluster check
/// against it. With the pins, where `[os]`'s base stands.
fn parse_pins(
    path: &Path,
    d: &mut Diagnostics,
) -> Result<Option<(Pins, Option<debs::OsLocs>)>, ManifestError> {
    let Some(text) = read(path, d)? else {
        return Ok(None);
    };
    Ok(match toml::from_str::<RawPins>(&text) {
        Ok(raw) => Some(pins::validate_pins(path, &text, raw, d)),
        Err(e) => {
            d.push(Diagnostic::from_toml(path, &text, e));
            None
        }
    })
}

/// Reads every role file; the role's name is the file's stem.
fn parse_roles(roles_dir: &Path, d: &mut Diagnostics) -> Result<RawRoles, ManifestError> {
    let mut roles = RawRoles::default();
    for path in role_files(roles_dir)? {
        let name = role_name(&path, d);
        let text = read(&path, d)?;
        match text.and_then(|text| parse_yaml::<RawRole>(&path, &text, d)) {
            Some(raw) => {
                roles.parsed.insert(name, (path, raw));
            }
            None => {
                roles.unparsed.insert(name);
            }
        }
    }
    Ok(roles)
}

/// The `.yaml` and `.yml` files in `roles_dir`, sorted.
fn role_files(roles_dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let list_error = |source| ManifestError::ListRoles {
        path: roles_dir.to_path_buf(),
        source,
    };
    check_directory(roles_dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(roles_dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The OS packages of every parsed role, each where it stands in its file
/// (what the nodes' arches demand of `[[deb]]`, checked once they are known).
fn role_packages(parsed: &BTreeMap<String, (PathBuf, RawRole)>) -> debs::RolePackages {
    parsed
        .iter()
        .map(|(name, (path, raw))| {
            let packages = raw
                .os_packages
                .iter()
                .map(|p| (p.value.clone(), at(path, p)))
                .collect();
            (name.clone(), packages)
        })
        .collect()
}

/// Layer names imgbuild gives its own layers: no role may take one, so a
/// layer's name says its kind (image.json relies on it).
const RESERVED_LAYER_NAMES: [&str; 4] = ["node", "secrets", "os", "os-packages"];

/// A role file's stem, which must be a DNS-1123 label and no reserved name.
fn role_name(path: &Path, d: &mut Diagnostics) -> String {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !is_dns_label(&name) {
        d.error(
            Loc::new(path, 1, 1),
            format!(
                "role file name `{name}` is not a DNS-1123 label (lowercase letters, digits and '-')"
            ),
        );
    } else if RESERVED_LAYER_NAMES.contains(&name.as_str()) {
        d.error(
            Loc::new(path, 1, 1),
            format!("`{name}` is the name of a layer imgbuild makes itself; call the role something else"),
        );
    }
    name
}

fn validate_roles(
    parsed: BTreeMap<String, (PathBuf, RawRole)>,
    pins: Option<&Pins>,
    layers_dir: &Path,
    proxy_mode: Option<ProxyMode>,
    d: &mut Diagnostics,
) -> BTreeMap<String, Role> {
    parsed
        .into_iter()
        .map(|(name, (path, raw))| {
            let role = roles::validate_role(&name, &path, raw, pins, layers_dir, proxy_mode, d);
            (name, role)
        })
        .collect()
}

/// The validated whole, with its derived values; `base` is an empty role
/// when it has no file.
fn assemble(
    dir: &Path,
    layers_dir: &Path,
    cluster: super::Cluster,
    mut roles: BTreeMap<String, Role>,
    pins: Pins,
) -> Manifests {
    roles
        .entry(BASE_ROLE.to_string())
        .or_insert_with(roles::empty_role);
    let derived = derive::derive(&cluster);
    let mut node_index = std::collections::HashMap::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        node_index.entry(n.name.clone()).or_insert(i);
    }
    Manifests {
        dir: dir.to_path_buf(),
        layers_dir: layers_dir.to_path_buf(),
        cluster,
        roles,
        pins,
        derived,
        node_index,
    }
}

/// Where a YAML value stands; a defaulted value (not in the file) reports 1:1.
fn at<T>(file: &Path, s: &Spanned<T>) -> Loc {
    let l = s.referenced;
    if l.line() == 0 {
        Loc::new(file, 1, 1)
    } else {
        Loc::yaml(file, l)
    }
}

/// A YAML string that must be an IPv4 address; `what` names it in the error.
fn parse_ipv4(
    file: &Path,
    s: &Spanned<String>,
    what: &str,
    d: &mut Diagnostics,
) -> Option<Ipv4Addr> {
    match s.value.parse::<Ipv4Addr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            d.error(
                at(file, s),
                format!("{what} `{}` is not an IPv4 address", s.value),
            );
            None
        }
    }
}

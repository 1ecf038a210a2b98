//! One role file, `roles/<role>.yaml`: its artifacts (each naming a pin and
//! the files taken from it), images, layer directories, systemd units and
//! secrets, checked against pins.toml, `layers/` and the secret catalog,
//! giving the typed [`Role`]. A layer directory must be a real directory: a
//! symbolic link there could bake any directory of the build host (the state
//! dir with its CA keys) into a world-readable layer. The OS packages are
//! Debian package names, and a role running kube-proxy lists the packages
//! its mode needs (cluster.yaml's `kube_proxy_mode`).

use std::path::Path;

use serde_saphyr::Spanned;

use super::syntax::{has_control, is_debian_package, is_unit_name};
use super::{at, is_dns_label};
use crate::manifest::diag::Diagnostics;
use crate::manifest::raw::{RawInstall, RawRole, RawRoleArtifact};
use crate::manifest::secrets::{self, SecretSpec};
use crate::manifest::{Install, KUBE_PROXY_UNIT, Pins, ProxyMode, Role, RoleArtifact};

/// The endings of the systemd unit names a role may start.
const UNIT_SUFFIXES: [&str; 5] = [".service", ".timer", ".socket", ".path", ".target"];

/// A role with nothing in it, as `base` is when it has no file.
pub(super) fn empty_role() -> Role {
    Role {
        artifacts: Vec::new(),
        images: Vec::new(),
        role_layers: Vec::new(),
        node_layers: Vec::new(),
        services: Vec::new(),
        secrets: Vec::new(),
        os_packages: Vec::new(),
    }
}

/// Validates the role `name` read from `file`; `pins` is `None` when
/// pins.toml did not parse, and references to it are then not checked, as
/// the proxy mode's packages are not when `proxy_mode` is `None`.
pub(super) fn validate_role(
    name: &str,
    file: &Path,
    raw: RawRole,
    pins: Option<&Pins>,
    layers_dir: &Path,
    proxy_mode: Option<ProxyMode>,
    d: &mut Diagnostics,
) -> Role {
    let os_packages = role_os_packages(name, file, &raw.os_packages, d);
    if let Some(mode) = proxy_mode {
        check_proxy_packages(name, file, &raw.services, &os_packages, mode, d);
    }
    Role {
        artifacts: raw
            .artifacts
            .into_iter()
            .map(|art| validate_role_artifact(name, file, art, pins, d))
            .collect(),
        images: role_images(name, file, raw.images, pins, d),
        role_layers: layer_dirs(file, raw.layers.role, layers_dir, d),
        node_layers: layer_dirs(file, raw.layers.node, layers_dir, d),
        services: role_services(file, raw.services, d),
        secrets: role_secrets(file, raw.secrets, d),
        os_packages,
    }
}

/// The Debian packages the role needs from the OS: each a package name,
/// none twice.
fn role_os_packages(
    name: &str,
    file: &Path,
    packages: &[Spanned<String>],
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in packages {
        if !is_debian_package(&p.value) {
            d.error(
                at(file, p),
                format!(
                    "os_packages: `{}` is not a Debian package name (at least 2 of a-z 0-9 + . -, starting with a letter or digit, at most {})",
                    p.value,
                    super::syntax::MAX_PACKAGE_NAME
                ),
            );
        } else if names.contains(&p.value) {
            d.error(
                at(file, p),
                format!("role `{name}` lists OS package `{}` twice", p.value),
            );
            continue;
        }
        names.push(p.value.clone());
    }
    names
}

/// A role that runs kube-proxy lists the OS packages of the cluster's proxy
/// mode; the error stands at its `kube-proxy.service`.
fn check_proxy_packages(
    name: &str,
    file: &Path,
    services: &[Spanned<String>],
    os_packages: &[String],
    mode: ProxyMode,
    d: &mut Diagnostics,
) {
    let Some(unit) = services.iter().find(|s| s.value == KUBE_PROXY_UNIT) else {
        return;
    };
    let missing: Vec<&str> = mode
        .os_packages()
        .iter()
        .copied()
        .filter(|p| !os_packages.iter().any(|o| o == p))
        .collect();
    if !missing.is_empty() {
        d.error(
            at(file, unit),
            format!(
                "role `{name}` runs {KUBE_PROXY_UNIT}, and kube_proxy_mode {} (cluster.yaml) needs the OS packages {}: add {} to the role's os_packages",
                mode.as_str(),
                mode.os_packages().join(", "),
                missing.join(", ")
            ),
        );
    }
}

fn validate_role_artifact(
    name: &str,
    file: &Path,
    art: RawRoleArtifact,
    pins: Option<&Pins>,
    d: &mut Diagnostics,
) -> RoleArtifact {
    let pin_name = art.pin.value.clone();
    let first_pin = pins.map(|p| p.artifacts.iter().find(|a| a.name == pin_name));
    if let Some(None) = first_pin {
        d.error(
            at(file, &art.pin),
            format!(
                "role `{name}` needs artifact `{pin_name}`, but pins.toml has no pin with that name"
            ),
        );
    }
    let archive = first_pin.flatten().map(|p| p.is_archive());
    let install = art
        .install
        .into_iter()
        .map(|i| validate_install(file, &pin_name, archive, i, d))
        .collect();
    RoleArtifact {
        pin: pin_name,
        install,
    }
}

/// One file taken from the pin `pin_name`; `archive` says whether that
/// download is an archive (`None`: unknown, no pin).
fn validate_install(
    file: &Path,
    pin_name: &str,
    archive: Option<bool>,
    i: RawInstall,
    d: &mut Diagnostics,
) -> Install {
    let to = i.to.value.clone();
    if !is_clean_absolute(&to) {
        d.error(
            at(file, &i.to),
            format!(
                "`to: {to}` must be an absolute path without `.`, `..`, a trailing `/` or a control character"
            ),
        );
    }
    check_install_source(file, pin_name, archive, &i, d);
    let mode = install_mode(file, &i.mode, d);
    let (uid, gid) = install_owner(file, &i.owner, d);
    Install {
        from: i.from.map(|f| f.value),
        to,
        mode,
        uid,
        gid,
    }
}

/// `from` names an archive member, and only when the download is an archive.
fn check_install_source(
    file: &Path,
    pin_name: &str,
    archive: Option<bool>,
    i: &RawInstall,
    d: &mut Diagnostics,
) {
    let Some(from) = &i.from else {
        if archive == Some(true) {
            d.error(
                at(file, &i.to),
                format!(
                    "artifact `{pin_name}` is an archive: say which member goes to {} with `from`",
                    i.to.value
                ),
            );
        }
        return;
    };
    let probe = from.value.replace("{version}", "v").replace("{arch}", "a");
    if probe.contains(['{', '}']) {
        d.error(
            at(file, from),
            format!(
                "`from: {}`: only {{version}} and {{arch}} may be substituted",
                from.value
            ),
        );
    } else if !is_clean_relative(&from.value) {
        d.error(
            at(file, from),
            format!(
                "`from: {}` must be a relative archive member path without `..`",
                from.value
            ),
        );
    }
    if archive == Some(false) {
        d.error(
            at(file, from),
            format!("artifact `{pin_name}` is a single file, not an archive: drop `from`"),
        );
    }
}

/// The file mode; 0755 after an error.
fn install_mode(file: &Path, mode: &Spanned<String>, d: &mut Diagnostics) -> u32 {
    parse_mode(&mode.value).unwrap_or_else(|| {
        d.error(
            at(file, mode),
            format!(
                "mode `{}` is not an octal file mode such as \"0755\"",
                mode.value
            ),
        );
        0o755
    })
}

/// The numeric owner; 0:0 after an error.
fn install_owner(file: &Path, owner: &Spanned<String>, d: &mut Diagnostics) -> (u32, u32) {
    parse_owner(&owner.value).unwrap_or_else(|| {
        d.error(
            at(file, owner),
            format!(
                "owner `{}` must be numeric `uid:gid`, such as \"0:0\"",
                owner.value
            ),
        );
        (0, 0)
    })
}

/// The images the role needs, each of which must be pinned.
fn role_images(
    name: &str,
    file: &Path,
    images: Vec<Spanned<String>>,
    pins: Option<&Pins>,
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut names = Vec::new();
    for image in images {
        if let Some(p) = pins
            && p.image(&image.value).is_none()
        {
            d.error(
                at(file, &image),
                format!(
                    "role `{name}` needs image `{}`, but pins.toml has no [[image]] with that name",
                    image.value
                ),
            );
        }
        names.push(image.value);
    }
    names
}

/// Layer directories: plain names of directories under `layers_dir`.
fn layer_dirs(
    file: &Path,
    dirs: Vec<Spanned<String>>,
    layers_dir: &Path,
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut names = Vec::new();
    for dir in dirs {
        if !is_dns_label(&dir.value) {
            d.error(
                at(file, &dir),
                format!(
                    "layer directory `{}` must be a plain name under layers/",
                    dir.value
                ),
            );
        } else if let Some(problem) = layer_dir_problem(layers_dir, &dir.value) {
            d.error(at(file, &dir), problem);
        }
        names.push(dir.value);
    }
    names
}

/// What is wrong with `layers_dir/name` as a layer directory, if anything:
/// it must be a directory itself, not a symbolic link to one.
fn layer_dir_problem(layers_dir: &Path, name: &str) -> Option<String> {
    let path = layers_dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => None,
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(&path).unwrap_or_default();
            Some(format!(
                "layer directory `{name}` is a symbolic link ({} -> {}): imgbuild does not follow links out of layers/, so a layer holds only what the tree shows; make it a directory",
                path.display(),
                target.display()
            ))
        }
        Ok(m) => Some(format!(
            "layer directory `{name}` is a {}, not a directory ({})",
            crate::manifest::read::kind_of(m.file_type()),
            path.display()
        )),
        Err(_) => Some(format!(
            "layer directory `{name}` does not exist under {}",
            layers_dir.display()
        )),
    }
}

/// The systemd units the role enables.
fn role_services(file: &Path, services: Vec<Spanned<String>>, d: &mut Diagnostics) -> Vec<String> {
    let mut names = Vec::new();
    for svc in services {
        if !UNIT_SUFFIXES.iter().any(|s| is_unit_name(&svc.value, s)) {
            d.error(
                at(file, &svc),
                format!(
                    "service `{}` must be a systemd unit name such as `etcd.service` (A-Z a-z 0-9 : _ . @ -, ending in {})",
                    svc.value,
                    UNIT_SUFFIXES.join(", ")
                ),
            );
        }
        names.push(svc.value);
    }
    names
}

/// The role's secrets, each an entry of the catalog.
fn role_secrets(
    file: &Path,
    ids: Vec<Spanned<String>>,
    d: &mut Diagnostics,
) -> Vec<&'static SecretSpec> {
    let mut specs = Vec::new();
    for secret in ids {
        match secrets::lookup(&secret.value) {
            Some(spec) => specs.push(spec),
            None => d.error(
                at(file, &secret),
                format!(
                    "unknown secret `{}`; imgbuild generates: {}",
                    secret.value,
                    secrets::CATALOG
                        .iter()
                        .map(|s| s.id)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    specs
}

/// `0755` or `755` -> 0o755.
fn parse_mode(s: &str) -> Option<u32> {
    if !(3..=4).contains(&s.len()) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// `uid:gid`, both numeric.
fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// An absolute, normalised path: no `.`/`..`/empty components, no trailing
/// `/`, no control character.
fn is_clean_absolute(p: &str) -> bool {
    p.len() > 1
        && !has_control(p)
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_clean_relative(p: &str) -> bool {
    let p = p.strip_prefix("./").unwrap_or(p);
    !p.is_empty()
        && !has_control(p)
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_owners_paths() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("rwx"), None);
        assert_eq!(parse_owner("0:0"), Some((0, 0)));
        assert_eq!(parse_owner("root:root"), None);
        assert!(is_clean_absolute("/usr/local/bin/etcd"));
        assert!(!is_clean_absolute("/usr/../etc/passwd"));
        assert!(!is_clean_absolute("usr/bin"));
        assert!(!is_clean_absolute("/usr/bin/"));
        assert!(is_clean_relative("./bridge"));
        assert!(!is_clean_relative("../evil"));
        assert!(!is_clean_absolute("/etc/a\nb"));
        assert!(!is_clean_relative("bin/a\tb"));
    }
}

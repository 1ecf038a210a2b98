//! The node OS in pins.toml: `[os]` (which `[[artifact]]` is the root
//! filesystem archive) and each `[[deb]]` (a Debian package pinned by its
//! checksum, with the sysusers.d lines that stand in for its maintainer
//! scripts), checked on their own, giving [`OsBase`] and [`DebPin`]s; then,
//! once the inventory is known, what the nodes demand of them ([`check_os`]):
//! a base pin for every node's arch, and a `[[deb]]` for every OS package
//! a role lists, for every arch of the nodes holding the role.

use std::collections::{BTreeMap, BTreeSet};

use super::pins::{ChecksumFields, FirstSeen, PinsFile, download_checksum, first_definition};
use super::syntax::{has_control, is_debian_package, is_download_url};
use crate::manifest::diag::{Diagnostics, Loc};
use crate::manifest::raw::{RawDebPin, RawOs};
use crate::manifest::{Arch, ArtifactPin, BASE_ROLE, DebPin, Node, OsBase, Pins};

/// The OS packages each role lists, with where each stands in its role file.
pub(super) type RolePackages = BTreeMap<String, Vec<(String, Loc)>>;

/// `[os]`: its base names `[[artifact]]` pins that are tar archives. Returns
/// the validated table and where its `base` stands (for [`check_os`]).
pub(super) fn validate_os(
    f: &PinsFile,
    raw: Option<RawOs>,
    artifacts: &[ArtifactPin],
    d: &mut Diagnostics,
) -> (Option<OsBase>, Option<OsLocs>) {
    let Some(raw) = raw else {
        return (None, None);
    };
    let loc = f.at(&raw.base);
    let mut packages: Vec<(String, Loc)> = Vec::new();
    for p in &raw.packages {
        let name = p.get_ref();
        if !is_debian_package(name) {
            d.error(
                f.at(p),
                format!("[os] packages: `{name}` is not a Debian package name (at least 2 of a-z 0-9 + . -, starting with a letter or digit)"),
            );
        } else if packages.iter().any(|(n, _)| n == name) {
            d.error(f.at(p), format!("[os] packages lists `{name}` twice"));
        } else {
            packages.push((name.clone(), f.at(p)));
        }
    }
    let base = raw.base.into_inner();
    let pins: Vec<&ArtifactPin> = artifacts.iter().filter(|a| a.name == base).collect();
    if pins.is_empty() {
        d.error(
            loc.clone(),
            format!("[os] base `{base}` names no [[artifact]] of pins.toml; pin the root filesystem archive as an artifact of that name"),
        );
    }
    for p in pins.iter().filter(|p| !p.is_root_archive()) {
        d.error(
            loc.clone(),
            format!(
                "[os] base `{base}`: the {} pin's url {} is not a tar archive (.tar, .tar.gz, .tgz, .tar.xz or .tar.zst)",
                p.arch, p.url
            ),
        );
    }
    let os = OsBase {
        base,
        packages: packages.iter().map(|(n, _)| n.clone()).collect(),
        exclude: validate_exclude(f, &raw.exclude, d),
    };
    (
        Some(os),
        Some(OsLocs {
            base: loc,
            packages,
        }),
    )
}

/// `[os] exclude`: each an absolute glob pattern (dpkg's `path-exclude`)
/// that compiles, without `..` and not a directory's own path (`/x/`).
fn validate_exclude(
    f: &PinsFile,
    raw: &[toml::Spanned<String>],
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in raw {
        let pattern = p.get_ref();
        let problem = if !pattern.starts_with('/') || pattern.len() < 2 {
            Some("is not an absolute path pattern (`/usr/share/doc/*`)".to_string())
        } else if pattern.split('/').any(|c| c == "..") || pattern.ends_with('/') {
            Some("has a `..` component or ends with `/`".to_string())
        } else {
            globset::Glob::new(pattern)
                .err()
                .map(|e| format!("is not a glob pattern: {}", e.kind()))
        };
        match problem {
            Some(why) => d.error(f.at(p), format!("[os] exclude: `{pattern}` {why}")),
            None if out.contains(pattern) => {
                d.error(f.at(p), format!("[os] exclude lists `{pattern}` twice"));
            }
            None => out.push(pattern.clone()),
        }
    }
    out
}

/// Where `[os]`'s base and each of its packages stand in pins.toml.
#[derive(Debug, Clone)]
pub(super) struct OsLocs {
    base: Loc,
    packages: Vec<(String, Loc)>,
}

/// Every `[[deb]]`, each on its own and none twice for one arch.
pub(super) fn validate_debs(f: &PinsFile, raw: Vec<RawDebPin>, d: &mut Diagnostics) -> Vec<DebPin> {
    let mut seen = FirstSeen::new();
    raw.into_iter()
        .filter_map(|r| validate_deb(f, r, &mut seen, d))
        .collect()
}

fn validate_deb(
    f: &PinsFile,
    r: RawDebPin,
    seen: &mut FirstSeen<(String, Arch)>,
    d: &mut Diagnostics,
) -> Option<DebPin> {
    let loc = f.at(&r.name);
    let name = r.name.get_ref().clone();
    let mut ok = check_deb_name_and_version(f, &r, d);
    let arch = deb_arch(f, &r, d);
    if !is_download_url(r.url.get_ref()) {
        d.error(
            f.at(&r.url),
            format!(
                "deb `{name}`: url `{}` must be https://, http:// or file:// with a path of plain segments (no `.`, `..`, empty segment, space, quote, query or control character)",
                r.url.get_ref()
            ),
        );
        ok = false;
    }
    if r.source.get_ref().trim().is_empty() {
        d.error(
            f.at(&r.source),
            format!("deb `{name}`: `source` is empty; say where the checksum was read (the release's Packages index)"),
        );
    }
    let fields = ChecksumFields {
        name: &r.name,
        version: &r.version,
        sha256: &r.sha256,
        sha512: &r.sha512,
    };
    let checksum = download_checksum(f, &fields, &loc, d);
    let users = deb_users(f, &name, &r.users, d);
    if let Some(arch) = arch {
        for a in arch.map_or(vec![Arch::Amd64, Arch::Arm64], |a| vec![a]) {
            ok &= first_definition(seen, (name.clone(), a), &loc, d, |first| {
                format!("deb `{name}` for {a} is defined twice (first at line {first})")
            });
        }
    }
    let (true, Some(arch), Some(checksum), Some(users)) = (ok, arch, checksum, users) else {
        return None;
    };
    Some(DebPin {
        package: name,
        version: r.version.into_inner(),
        arch,
        url: r.url.into_inner(),
        checksum,
        source: r.source.into_inner(),
        users,
        note: r.note,
    })
}

/// The name is a Debian package name and the version a Debian version.
fn check_deb_name_and_version(f: &PinsFile, r: &RawDebPin, d: &mut Diagnostics) -> bool {
    let (name, version) = (r.name.get_ref(), r.version.get_ref());
    let mut ok = true;
    if !is_debian_package(name) {
        d.error(
            f.at(&r.name),
            format!("deb name `{name}` is not a Debian package name (at least 2 of a-z 0-9 + . -, starting with a letter or digit)"),
        );
        ok = false;
    }
    if !is_debian_version(version) {
        d.error(
            f.at(&r.version),
            format!("deb `{name}`: version `{version}` is not a Debian version ([epoch:]upstream[-revision]: an epoch of digits, then A-Z a-z 0-9 . + ~ -, starting with a digit)"),
        );
        ok = false;
    }
    ok
}

/// `Some(None)` for `all`, `Some(Some(arch))` for one arch, `None` after an error.
fn deb_arch(f: &PinsFile, r: &RawDebPin, d: &mut Diagnostics) -> Option<Option<Arch>> {
    let text = r.arch.get_ref();
    if text == "all" {
        return Some(None);
    }
    let arch = Arch::parse(text);
    if arch.is_none() {
        d.error(
            f.at(&r.arch),
            format!(
                "deb `{}`: unknown arch `{text}` (expected amd64, arm64 or all)",
                r.name.get_ref()
            ),
        );
    }
    arch.map(Some)
}

/// The sysusers.d lines; `None` after an error.
fn deb_users(
    f: &PinsFile,
    name: &str,
    users: &[toml::Spanned<String>],
    d: &mut Diagnostics,
) -> Option<Vec<String>> {
    let mut ok = true;
    for u in users {
        if let Some(why) = sysusers_line_problem(u.get_ref()) {
            d.error(
                f.at(u),
                format!(
                    "deb `{name}`: users line `{}` {why}",
                    crate::manifest::diag::escape_controls(u.get_ref())
                ),
            );
            ok = false;
        }
    }
    ok.then(|| users.iter().map(|u| u.get_ref().clone()).collect())
}

/// What is wrong with a sysusers.d(5) line, checked loosely: one line, a
/// type `u` (`u!`), `g`, `m` or `r`, and a user or group name (`-` for `r`).
fn sysusers_line_problem(line: &str) -> Option<&'static str> {
    if has_control(line) {
        return Some("holds a control character (one sysusers.d line each)");
    }
    let mut words = line.split_whitespace();
    let (Some(kind), Some(name)) = (words.next(), words.next()) else {
        return Some("must be a sysusers.d line: a type, a name, then the type's fields");
    };
    match kind {
        "u" | "u!" | "g" | "m" if is_sysusers_name(name) => None,
        "r" if name == "-" => None,
        "u" | "u!" | "g" | "m" => Some(
            "names no valid user or group (1 to 31 of a-z A-Z 0-9 _ -, not starting with a digit or -)",
        ),
        "r" => Some("is a range line: its name must be `-`"),
        _ => Some("has an unknown type (sysusers.d takes u, g, m and r)"),
    }
}

/// A user or group name as systemd-sysusers takes it (the portable subset).
fn is_sysusers_name(s: &str) -> bool {
    (1..=31).contains(&s.len())
        && s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A Debian version (Debian Policy 5.6.12): an optional epoch of digits and
/// `:`, an upstream version starting with a digit, an optional `-revision`.
pub(super) fn is_debian_version(s: &str) -> bool {
    let rest = match s.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        Some(_) => return false,
        None => s,
    };
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b'-');
    let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, "0"));
    s.len() <= 128
        && upstream.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && rest.bytes().all(ok_char)
        && !revision.is_empty()
}

/// With `[os]`: a base pin for every arch of the inventory (at `[os]`'s
/// base in pins.toml) and a `[[deb]]` for every OS package of every role,
/// for each arch of the nodes holding the role (at the package in the role
/// file), each problem once.
pub(super) fn check_os(
    pins: &Pins,
    locs: Option<&OsLocs>,
    role_packages: &RolePackages,
    nodes: &[Node],
    d: &mut Diagnostics,
) {
    let (Some(os), Some(locs)) = (&pins.os, locs) else {
        return;
    };
    let os_loc = &locs.base;
    let any = pins.artifacts.iter().any(|a| a.name == os.base);
    let mut arches: BTreeMap<Arch, &str> = BTreeMap::new();
    for n in nodes {
        arches.entry(n.arch).or_insert(&n.name);
    }
    for (arch, node) in &arches {
        if any && pins.artifact(&os.base, *arch).is_none() {
            d.error(
                os_loc.clone(),
                format!("[os] base `{}` has no {arch} pin, and node `{node}` is {arch}: pin the {arch} root filesystem archive too", os.base),
            );
        }
    }
    check_debs(pins, "[os] packages", &locs.packages, nodes, d);
    for (role, packages) in role_packages {
        let holders: Vec<Node> = nodes
            .iter()
            .filter(|n| role == BASE_ROLE || n.has_role(role))
            .cloned()
            .collect();
        check_debs(pins, &format!("role `{role}`"), packages, &holders, d);
    }
}

/// Every package `who` needs has a `[[deb]]` for each arch of `nodes`.
fn check_debs(
    pins: &Pins,
    who: &str,
    packages: &[(String, Loc)],
    nodes: &[Node],
    d: &mut Diagnostics,
) {
    let mut arches: BTreeMap<Arch, &str> = BTreeMap::new();
    for n in nodes {
        arches.entry(n.arch).or_insert(&n.name);
    }
    let mut reported = BTreeSet::new();
    for (package, loc) in packages {
        for (arch, node) in &arches {
            if pins.deb(package, *arch).is_none() && reported.insert((package, *arch)) {
                d.error(
                    loc.clone(),
                    format!(
                        "{who} needs OS package `{package}` on {arch} (node `{node}`), but pins.toml has no [[deb]] `{package}` for {arch}; with [os], every OS package is a pinned .deb"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions() {
        for ok in [
            "2.10-3",
            "1:2.2.7-1+b2",
            "2:4.0.2-3",
            "7.88.1-10+deb12u15",
            "1.0~rc1",
            "0",
        ] {
            assert!(is_debian_version(ok), "{ok}");
        }
        for bad in ["", "a1.0", ":1.0", "x:1.0", "1.0-", "1.0 1", "1.0_1", "1:"] {
            assert!(!is_debian_version(bad), "{bad}");
        }
    }

    #[test]
    fn sysusers_lines() {
        for ok in [
            r#"u haproxy - "HAProxy" /var/lib/haproxy"#,
            "g etcd -",
            "m etcd adm",
            "r - 500-900",
            "u! _chrony -",
        ] {
            assert_eq!(sysusers_line_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "u",
            "x haproxy",
            "u 1abc",
            "u ha\nu root 0",
            "r haproxy 1-2",
        ] {
            assert!(sysusers_line_problem(bad).is_some(), "{bad:?}");
        }
    }
}

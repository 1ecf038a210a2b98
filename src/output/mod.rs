//! Stage 7, `output`: takes a plan and its built layers and assembles
//! `out/<target>/` in the formats asked for: `layers/NN-<name>.tar.gz` (hard
//! links into the layer store where the filesystem allows), `image.json`,
//! `cloud-init/` (user-data, meta-data, network-config, seed.iso labelled
//! `cidata`), `pxe/` (overlay.cpio.gz, boot.ipxe) and `SHA256SUMS` over every
//! other file. Everything is written into a temporary directory beside the
//! target and renamed into place at the end, so no directory is ever left
//! half-written.

pub mod cloudinit;
pub mod iso;
pub mod oci;
pub mod push;
pub mod pxe;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::{BuiltLayer, Store};
use crate::manifest::Manifests;
use crate::plan::{Plan, TargetKind};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{target}: {path}")]
    Io {
        target: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--seed-layers `{0}` is neither `embed` nor `url=BASE` with an http(s) BASE")]
    SeedLayers(String),
}

/// Which artifacts to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub layers: bool,
    pub cloud_init: bool,
    pub pxe: bool,
    pub oci: bool,
}

/// How to build: formats, seed mode, and the one timestamp.
#[derive(Debug, Clone)]
pub struct Options {
    pub formats: Formats,
    pub seed: SeedLayers,
    pub source_date_epoch: i64,
    /// Threads for compression; the bytes never depend on it.
    pub jobs: usize,
}

/// Where cloud-init gets the shared layers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedLayers {
    /// Every layer is in seed.iso.
    Embed,
    /// Base and role layers come from `BASE/sha256/<digest>.tar.gz`; the
    /// node and secrets layers stay in the seed.
    Url(String),
}

impl SeedLayers {
    /// Whether a layer is fetched from BASE (a shared one, in url mode) or
    /// travels in the node's seed and overlay.
    pub fn remote(&self, l: &BuiltLayer) -> bool {
        matches!(self, SeedLayers::Url(_)) && l.kind.is_shared()
    }

    pub fn parse(s: &str) -> Result<SeedLayers, OutputError> {
        if s == "embed" {
            return Ok(SeedLayers::Embed);
        }
        match s.strip_prefix("url=") {
            Some(base) if base.starts_with("http://") || base.starts_with("https://") => {
                Ok(SeedLayers::Url(base.trim_end_matches('/').to_string()))
            }
            _ => Err(OutputError::SeedLayers(s.to_string())),
        }
    }
}

/// `image.json`: what the node image is and what it was built from.
#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub node: String,
    pub kind: TargetKind,
    pub cluster: String,
    pub roles: Vec<String>,
    pub arch: String,
    pub versions: BTreeMap<String, String>,
    pub source_date_epoch: i64,
    pub services: Vec<String>,
    pub layers: Vec<LayerJson>,
    pub inputs: Vec<InputJson>,
    /// How it was built, so `verify --rebuild` can do the same.
    pub build: BuildJson,
}

#[derive(Debug, Serialize)]
pub struct BuildJson {
    pub formats: Vec<String>,
    pub seed_layers: String,
    /// The version of imgbuild that wrote it.
    pub imgbuild: String,
}

#[derive(Debug, Serialize)]
pub struct LayerJson {
    pub name: String,
    pub file: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

#[derive(Debug, Serialize)]
pub struct InputJson {
    pub artifact: String,
    pub version: String,
    pub url: String,
    pub checksum: String,
}

fn io_err<'a>(target: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        target: target.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

pub fn image_json(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    sde: i64,
    formats: Formats,
    seed: &SeedLayers,
) -> ImageJson {
    let mut versions = BTreeMap::new();
    versions.insert(
        "kubernetes".to_string(),
        m.cluster.kubernetes_version.to_string(),
    );
    let mut inputs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in &plan.layers {
        for e in &l.entries {
            let name = match &e.source {
                crate::plan::Source::Member { artifact, .. }
                | crate::plan::Source::Download { artifact, .. } => artifact,
                _ => continue,
            };
            if let Some(pin) = m.pins.artifact(name, plan.arch)
                && seen.insert(pin.name.clone())
            {
                versions.insert(pin.name.clone(), pin.version.clone());
                inputs.push(InputJson {
                    artifact: pin.name.clone(),
                    version: pin.version.clone(),
                    url: pin.url.clone(),
                    checksum: pin.checksum.to_string(),
                });
            }
        }
    }
    inputs.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    ImageJson {
        node: plan.target.clone(),
        kind: plan.kind,
        cluster: m.cluster.name.clone(),
        roles: plan.roles.clone(),
        arch: plan.arch.to_string(),
        versions,
        source_date_epoch: sde,
        services: plan.services.clone(),
        layers: layers
            .iter()
            .map(|l| LayerJson {
                name: l.name.clone(),
                file: format!("layers/{}.tar.gz", l.name),
                digest: format!("sha256:{}", l.digest),
                size: l.size,
                diff_id: format!("sha256:{}", l.diff_id),
            })
            .collect(),
        inputs,
        build: BuildJson {
            formats: [
                (formats.layers, "layers"),
                (formats.cloud_init, "cloud-init"),
                (formats.pxe, "pxe"),
                (formats.oci, "oci"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_string())
            .collect(),
            seed_layers: match seed {
                SeedLayers::Embed => "embed".into(),
                SeedLayers::Url(b) => format!("url={b}"),
            },
            imgbuild: env!("CARGO_PKG_VERSION").to_string(),
        },
    }
}

/// Hard-links `from` to `to`, or copies it where links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(from, to).map(|_| ()),
    }
}

/// Every file below `dir`, relative, sorted.
pub fn files_below(dir: &Path) -> io::Result<Vec<String>> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for e in fs::read_dir(d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.push(
                    p.strip_prefix(root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// `sha256sum -c` lines for every file below `dir` but SHA256SUMS; `known`
/// digests (the layers, hashed while they were written) are not read again.
pub fn sha256sums(dir: &Path, known: &BTreeMap<String, String>) -> io::Result<String> {
    let mut s = String::new();
    for f in files_below(dir)? {
        if f == "SHA256SUMS" {
            continue;
        }
        let h = match known.get(&f) {
            Some(h) => h.clone(),
            None => crate::fsutil::sha256_file(&dir.join(&f))?,
        };
        s.push_str(&format!("{h}  {f}\n"));
    }
    Ok(s)
}

/// A private scratch directory beside `out_root/<target>`, for one build.
pub fn scratch(out_root: &Path, target: &str) -> Result<PathBuf, OutputError> {
    let tmp = out_root.join(format!(".{target}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fsutil::create_dir_all_mode(&tmp.join("layers"), 0o755).map_err(io_err(target, &tmp))?;
    Ok(tmp)
}

/// What [`assemble`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The directory was written.
    Built,
    /// The directory already held exactly this build; it was left as it was.
    UpToDate,
}

/// Whether `dest` already holds the build whose small files are in `tmp`:
/// the same image.json (layer digests, inputs, formats, imgbuild's
/// version), the same seed and boot files, and every file its SHA256SUMS
/// lists present. The big files (seed.iso, overlay.cpio.gz, OCI blobs) are
/// functions of those; `imgbuild verify` checks their bytes.
fn up_to_date(tmp: &Path, dest: &Path) -> io::Result<bool> {
    let Ok(sums) = fs::read_to_string(dest.join("SHA256SUMS")) else {
        return Ok(false);
    };
    let listed: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, f)| f))
        .collect();
    if !listed.iter().all(|f| dest.join(f).is_file()) {
        return Ok(false);
    }
    // layers (and the PXE segments made with them) are checked by their
    // digests in image.json (and by being listed)
    for f in files_below(tmp)?
        .iter()
        .filter(|f| !f.starts_with("layers/") && !f.starts_with("pxe/segments/"))
    {
        if !listed.contains(&f.as_str())
            || fs::read(dest.join(f)).ok() != Some(fs::read(tmp.join(f))?)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Assembles `out_root/<target>/` from `tmp` (made by [`scratch`], holding
/// the secrets layer already) and the built layers (and their PXE segments,
/// from `store`). When the directory
/// already holds this very build, it is left as it is.
pub fn assemble(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    store: &Store,
    opts: &Options,
    tmp: &Path,
    out_root: &Path,
) -> Result<(PathBuf, Outcome), OutputError> {
    let (formats, seed, sde) = (opts.formats, &opts.seed, opts.source_date_epoch);
    let target = plan.target.as_str();
    let mtime = u64::try_from(sde).unwrap_or(0);
    let dest = out_root.join(target);
    // the small files first: they decide whether anything changed
    for l in layers {
        let dest = tmp.join("layers").join(format!("{}.tar.gz", l.name));
        if l.file != dest {
            link_or_copy(&l.file, &dest).map_err(io_err(target, &dest))?;
        }
    }
    let mut known = BTreeMap::new();
    let image = image_json(m, plan, layers, sde, formats, seed);
    let json = crate::canonical_json(&image);
    let digest = hex::encode(Sha256::digest(json.as_bytes()));
    let p = tmp.join("image.json");
    fsutil::write_atomic(&p, json.as_bytes(), 0o644).map_err(io_err(target, &p))?;
    let seed_files = if formats.cloud_init {
        Some(cloudinit::files(m, plan, layers, &digest, seed, tmp).map_err(io_err(target, tmp))?)
    } else {
        None
    };
    // in url mode, the shared layers' PXE segments are loaded from BASE
    let (remote, local): (Vec<&BuiltLayer>, Vec<&BuiltLayer>) =
        layers.iter().partition(|l| seed.remote(l));
    let local: Vec<BuiltLayer> = local.into_iter().cloned().collect();
    if formats.pxe {
        let remote = pxe::segments(&remote, store, tmp).map_err(io_err(target, tmp))?;
        let base = match seed {
            SeedLayers::Url(b) => Some(b.as_str()),
            SeedLayers::Embed => None,
        };
        pxe::boot_script(plan, &remote, base, tmp).map_err(io_err(target, tmp))?;
        for s in &remote {
            known.insert(format!("pxe/segments/{}", s.file), s.digest.clone());
        }
    }
    let private_segments = || {
        for l in layers
            .iter()
            .filter(|l| l.kind == crate::plan::LayerKind::Secrets)
        {
            if let Some(seg) = &l.segment {
                let _ = fs::remove_file(seg);
            }
        }
    };
    if up_to_date(tmp, &dest).map_err(io_err(target, tmp))? {
        private_segments();
        fs::remove_dir_all(tmp).map_err(io_err(target, tmp))?;
        return Ok((dest, Outcome::UpToDate));
    }
    // the big files, each hashed while it is written, side by side
    let (iso, overlay) = std::thread::scope(|s| {
        let iso = s.spawn(|| {
            seed_files
                .as_ref()
                .map(|files| cloudinit::seed_iso(tmp, files, mtime))
                .transpose()
        });
        let overlay = formats
            .pxe
            .then(|| pxe::overlay(&local, store, tmp))
            .transpose();
        let iso = iso
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writing the seed ISO panicked")));
        (iso, overlay)
    });
    private_segments();
    if let Some(h) = iso.map_err(io_err(target, tmp))? {
        known.insert("cloud-init/seed.iso".to_string(), h);
    }
    if let Some(h) = overlay.map_err(io_err(target, tmp))? {
        known.insert("pxe/overlay.cpio.gz".to_string(), h);
    }
    if formats.oci {
        oci::write(tmp, &image, layers, sde).map_err(io_err(target, tmp))?;
        for l in layers {
            known.insert(format!("oci/blobs/sha256/{}", l.digest), l.digest.clone());
        }
    }
    if formats.layers {
        for l in layers {
            known.insert(format!("layers/{}.tar.gz", l.name), l.digest.clone());
        }
    } else {
        // layers were only the means to the other formats
        fs::remove_dir_all(tmp.join("layers")).map_err(io_err(target, tmp))?;
    }
    let sums = sha256sums(tmp, &known).map_err(io_err(target, tmp))?;
    let p = tmp.join("SHA256SUMS");
    fsutil::write_atomic(&p, sums.as_bytes(), 0o644).map_err(io_err(target, &p))?;
    if dest.exists() {
        let old = out_root.join(format!(".{target}.old.{}", std::process::id()));
        fs::rename(&dest, &old).map_err(io_err(target, &dest))?;
        fs::rename(tmp, &dest).map_err(io_err(target, &dest))?;
        fs::remove_dir_all(&old).map_err(io_err(target, &old))?;
    } else {
        fs::rename(tmp, &dest).map_err(io_err(target, &dest))?;
    }
    Ok((dest, Outcome::Built))
}

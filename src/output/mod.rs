//! Stage 7, `output`: takes a plan and its built layers and assembles
//! `out/<target>/` in the formats asked for: `layers/NN-<name>.tar.gz` (hard
//! links into the layer store where the filesystem allows), `image.json`,
//! `cloud-init/` (user-data, meta-data, network-config, seed.iso labelled
//! `cidata`), `pxe/` (overlay.cpio.gz, boot.ipxe) and `SHA256SUMS` over every
//! other file. Everything is written into a temporary directory beside the
//! target and renamed into place at the end, so no directory is ever left
//! half-written.

pub mod cloudinit;
pub mod image;
pub mod iso;
pub mod oci;
pub mod push;
pub mod pxe;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::{BuiltLayer, Store};
use crate::manifest::Manifests;
use crate::plan::{LayerKind, Plan};
use crate::sums::{self, Sums};

pub use image::{BuildJson, Format, Formats, ImageJson, InputJson, LayerJson, SeedLayers};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write the output of {target} at {path}")]
    Io {
        target: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How to build: formats, seed mode, and the one timestamp.
#[derive(Debug, Clone)]
pub struct Options {
    pub formats: Formats,
    pub seed: SeedLayers,
    pub source_date_epoch: i64,
}

fn io_err<'a>(target: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        target: target.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

/// The image.json of a plan built into `layers` with `opts`.
pub fn image_json(m: &Manifests, plan: &Plan, layers: &[BuiltLayer], opts: &Options) -> ImageJson {
    let mut versions = std::collections::BTreeMap::new();
    versions.insert(
        "kubernetes".to_string(),
        m.cluster.kubernetes_version.to_string(),
    );
    let mut inputs = Vec::new();
    for name in plan.artifacts() {
        if let Some(pin) = m.pins.artifact(name, plan.arch) {
            versions.insert(pin.name.clone(), pin.version.clone());
            inputs.push(InputJson {
                artifact: pin.name.clone(),
                version: pin.version.clone(),
                url: pin.url.clone(),
                checksum: pin.checksum.to_string(),
            });
        }
    }
    ImageJson {
        node: plan.target.clone(),
        kind: plan.kind,
        cluster: m.cluster.name.clone(),
        roles: plan.roles.clone(),
        arch: plan.arch,
        versions,
        source_date_epoch: opts.source_date_epoch,
        services: plan.services.clone(),
        layers: layers.iter().map(layer_json).collect(),
        inputs,
        build: BuildJson {
            formats: opts.formats.clone(),
            seed_layers: opts.seed.clone(),
            imgbuild: env!("CARGO_PKG_VERSION").to_string(),
        },
    }
}

fn layer_json(l: &BuiltLayer) -> LayerJson {
    LayerJson {
        name: l.name.clone(),
        file: format!("layers/{}.tar.gz", l.name),
        digest: format!("sha256:{}", l.digest),
        size: l.size,
        diff_id: format!("sha256:{}", l.diff_id),
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

/// SHA256SUMS of every file below `dir` but SHA256SUMS itself; digests in
/// `known` (files hashed while they were written) are not read again.
pub fn sha256sums(dir: &Path, known: &Sums) -> io::Result<Sums> {
    let mut out = Sums::default();
    for f in files_below(dir)? {
        if f == sums::FILE {
            continue;
        }
        let h = match known.get(&f) {
            Some(h) => h.to_string(),
            None => crate::fsutil::sha256_file(&dir.join(&f))?,
        };
        out.insert(f, h);
    }
    Ok(out)
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
    let Ok(text) = fs::read_to_string(dest.join(sums::FILE)) else {
        return Ok(false);
    };
    let (listed, bad) = Sums::parse(&text);
    if !bad.is_empty() || !listed.paths().all(|f| dest.join(f).is_file()) {
        return Ok(false);
    }
    // layers (and the PXE segments made with them) are checked by their
    // digests in image.json (and by being listed)
    for f in files_below(tmp)?
        .iter()
        .filter(|f| !f.starts_with("layers/") && !f.starts_with("pxe/segments/"))
    {
        if !listed.contains(f) || fs::read(dest.join(f)).ok() != Some(fs::read(tmp.join(f))?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One target's assembly in `tmp`, on its way to `out_root/<target>/`.
struct Assembly<'a> {
    m: &'a Manifests,
    plan: &'a Plan,
    layers: &'a [BuiltLayer],
    store: &'a Store,
    opts: &'a Options,
    tmp: &'a Path,
    /// Digests of files hashed while they were written.
    known: Sums,
    /// What image.json says, once written.
    image: Option<ImageJson>,
}

/// Assembles `out_root/<target>/` from `tmp` (made by [`scratch`], holding
/// the secrets layer already) and the built layers (and their PXE segments,
/// from `store`). When the directory already holds this very build, it is
/// left as it is.
pub fn assemble(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    store: &Store,
    opts: &Options,
    tmp: &Path,
    out_root: &Path,
) -> Result<(PathBuf, Outcome), OutputError> {
    let target = plan.target.as_str();
    let dest = out_root.join(target);
    let mut a = Assembly {
        m,
        plan,
        layers,
        store,
        opts,
        tmp,
        known: Sums::default(),
        image: None,
    };
    // the small files first: they decide whether anything changed
    let seed_files = a.small_files().map_err(io_err(target, tmp))?;
    if up_to_date(tmp, &dest).map_err(io_err(target, tmp))? {
        a.drop_private_segments();
        fs::remove_dir_all(tmp).map_err(io_err(target, tmp))?;
        return Ok((dest, Outcome::UpToDate));
    }
    a.big_files(seed_files.as_deref())
        .map_err(io_err(target, tmp))?;
    let sums = sha256sums(tmp, &a.known).map_err(io_err(target, tmp))?;
    let p = tmp.join(sums::FILE);
    fsutil::write_atomic(&p, sums.render().as_bytes(), 0o644).map_err(io_err(target, &p))?;
    replace_dir(
        tmp,
        &dest,
        &out_root.join(format!(".{target}.old.{}", std::process::id())),
    )
    .map_err(io_err(target, &dest))?;
    Ok((dest, Outcome::Built))
}

impl Assembly<'_> {
    /// Layer links, image.json, the cloud-init files (returned, for the
    /// seed ISO) and boot.ipxe with the shared segments it loads.
    fn small_files(&mut self) -> io::Result<Option<Vec<iso::IsoFile>>> {
        for l in self.layers {
            let dest = self.tmp.join("layers").join(format!("{}.tar.gz", l.name));
            if l.file != dest {
                link_or_copy(&l.file, &dest)?;
            }
        }
        let image = image_json(self.m, self.plan, self.layers, self.opts);
        let json = crate::json::canonical(&image);
        let digest = hex::encode(Sha256::digest(json.as_bytes()));
        fsutil::write_atomic(&self.tmp.join("image.json"), json.as_bytes(), 0o644)?;
        let formats = &self.opts.formats;
        let seed_files = if formats.has(Format::CloudInit) {
            let seed = &self.opts.seed;
            Some(cloudinit::files(
                self.m,
                self.plan,
                self.layers,
                &digest,
                seed,
                self.tmp,
            )?)
        } else {
            None
        };
        if formats.has(Format::Pxe) {
            // in url mode, the shared layers' PXE segments are loaded from BASE
            let remote: Vec<&BuiltLayer> = self
                .layers
                .iter()
                .filter(|l| self.opts.seed.remote(l))
                .collect();
            let remote = pxe::segments(&remote, self.store, self.tmp)?;
            pxe::boot_script(self.plan, &remote, self.opts.seed.base(), self.tmp)?;
            for s in &remote {
                self.known
                    .insert(format!("pxe/segments/{}", s.file), s.digest.clone());
            }
        }
        self.image = Some(image);
        Ok(seed_files)
    }

    /// seed.iso and overlay.cpio.gz, each hashed while it is written, side
    /// by side; then the layers kept or dropped.
    fn big_files(&mut self, seed_files: Option<&[iso::IsoFile]>) -> io::Result<()> {
        let mtime = u64::try_from(self.opts.source_date_epoch).unwrap_or(0);
        let local: Vec<BuiltLayer> = self
            .layers
            .iter()
            .filter(|l| !self.opts.seed.remote(l))
            .cloned()
            .collect();
        let (tmp, store, pxe) = (self.tmp, self.store, self.opts.formats.has(Format::Pxe));
        let (iso, overlay) = std::thread::scope(|s| {
            let iso = s.spawn(|| {
                seed_files
                    .map(|files| cloudinit::seed_iso(tmp, files, mtime))
                    .transpose()
            });
            let overlay = pxe.then(|| pxe::overlay(&local, store, tmp)).transpose();
            let iso = iso
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writing the seed ISO panicked")));
            (iso, overlay)
        });
        self.drop_private_segments();
        if let Some(image) = self
            .image
            .as_ref()
            .filter(|_| self.opts.formats.has(Format::Oci))
        {
            oci::write(self.tmp, image, self.layers, self.opts.source_date_epoch)?;
            for l in self.layers {
                self.known
                    .insert(format!("oci/blobs/sha256/{}", l.digest), l.digest.clone());
            }
        }
        if let Some(h) = iso? {
            self.known.insert("cloud-init/seed.iso", h);
        }
        if let Some(h) = overlay? {
            self.known.insert("pxe/overlay.cpio.gz", h);
        }
        if self.opts.formats.has(Format::Layers) {
            for l in self.layers {
                self.known
                    .insert(format!("layers/{}.tar.gz", l.name), l.digest.clone());
            }
            Ok(())
        } else {
            // layers were only the means to the other formats
            fs::remove_dir_all(self.tmp.join("layers"))
        }
    }

    /// The secrets layer's PXE segment is never kept once the overlay holds it.
    fn drop_private_segments(&self) {
        for l in self.layers.iter().filter(|l| l.kind == LayerKind::Secrets) {
            if let Some(seg) = &l.segment {
                let _ = fs::remove_file(seg);
            }
        }
    }
}

/// Puts `tmp` at `dest`, moving an old `dest` aside to `old` and removing it.
fn replace_dir(tmp: &Path, dest: &Path, old: &Path) -> io::Result<()> {
    if dest.exists() {
        fs::rename(dest, old)?;
        fs::rename(tmp, dest)?;
        fs::remove_dir_all(old)
    } else {
        fs::rename(tmp, dest)
    }
}

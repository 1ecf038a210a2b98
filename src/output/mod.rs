//! Stage 7, `output`: takes a plan and its built layers and assembles
//! `out/<target>/` in the formats asked for: `layers/NN-<name>.tar.gz` (hard
//! links into the layer store where the filesystem allows), `image.json`,
//! `cloud-init/` (user-data, meta-data, network-config, seed.iso labelled
//! `cidata`; in volume mode layers.iso, labelled `imglayers`, linked from
//! the store: [`seedvol`]), `pxe/` (the shared layers' segments linked into
//! `pxe/segments/`; for a whole node, one with a base OS: vmlinuz,
//! init.cpio.gz, initrd.cpio.gz, secrets.cpio.gz, cmdline and boot.ipxe;
//! else overlay.cpio.gz and boot.ipxe) and `SHA256SUMS` over every other
//! file. Everything is written into a temporary directory beside the
//! target (locked while a run writes it) and renamed into place at the end,
//! so no directory is ever left half-written; what a killed run left there
//! is removed by the next ([`clean_debris`]).

pub mod attach;
pub mod cloudinit;
pub mod disk;
pub mod image;
pub mod iso;
pub mod oci;
pub mod provenance;
pub mod push;
pub mod pxe;
pub mod sbom;
pub(crate) mod seedvol;
pub mod stock;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::{BuiltLayer, Store};
use crate::manifest::Manifests;
use crate::pgzip::Compression;
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
    #[error(
        "cannot create the scratch directory {path} for {target} in the output directory {out} (it must be writable)"
    )]
    Scratch {
        target: String,
        out: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the seed of {target} for a stock image")]
    Stock {
        target: String,
        #[source]
        source: Box<stock::StockError>,
    },
    #[error("cannot take the PXE kernel of {target}")]
    Kernel {
        target: String,
        #[source]
        source: pxe::KernelError,
    },
    #[error("cannot make the disk of {target}")]
    Disk {
        target: String,
        #[source]
        source: disk::DiskError,
    },
    #[error(
        "cannot make the disk of {target}: --format disk needs a base OS ([os] in pins.toml); without one the layers are overlays for an OS imgbuild does not build"
    )]
    DiskWithoutOs { target: String },
}

/// How to build: formats, seed mode, and the one timestamp.
#[derive(Debug, Clone)]
pub struct Options {
    pub formats: Formats,
    pub seed: SeedLayers,
    pub source_date_epoch: i64,
    /// Also write `<node>-with-secrets` (and the secrets layer's blob) into
    /// the OCI layout (`--oci-with-secrets`).
    pub oci_with_secrets: bool,
    /// A whole node's boot.ipxe also loads `pxe/secrets.cpio.gz`
    /// (`--pxe-secrets`).
    pub pxe_secrets: bool,
    /// How layers and PXE segments are compressed (`--compression`).
    pub compression: Compression,
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
    for package in plan.debs() {
        if let Some(pin) = m.pins.deb(package, plan.arch) {
            inputs.push(InputJson {
                artifact: format!("deb:{}", pin.package),
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
            compression: opts.compression,
            imgbuild: env!("CARGO_PKG_VERSION").to_string(),
        },
    }
}

fn layer_json(l: &BuiltLayer) -> LayerJson {
    LayerJson {
        name: l.name.clone(),
        file: format!("layers/{}", l.tar_name()),
        digest: format!("sha256:{}", l.digest),
        size: l.size,
        diff_id: format!("sha256:{}", l.diff_id),
    }
}

/// Hard-links `from` to `to`, or copies it where links are not possible.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
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

/// A target's scratch directory, `out_root/.<target>.tmp.<pid>/`, locked
/// (`flock`) while this run writes it, so that [`clean_debris`] in another
/// run leaves it alone.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    _lock: fs::File,
}

/// A private scratch directory beside `out_root/<target>`, for one build.
pub fn scratch(out_root: &Path, target: &str) -> Result<Scratch, OutputError> {
    let tmp = out_root.join(format!(".{target}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let lock = fsutil::create_dir_all_mode(&tmp.join("layers"), 0o755)
        .and_then(|()| fs::File::open(&tmp))
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|source| OutputError::Scratch {
            target: target.to_string(),
            out: out_root.to_path_buf(),
            path: tmp.clone(),
            source,
        })?;
    Ok(Scratch {
        path: tmp,
        _lock: lock,
    })
}

/// What a killed run can leave in an output root: its scratch directory,
/// or the old output on its way out (which may hold a secrets layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Debris {
    Scratch,
    Old,
}

/// The kind and pid of a name `.<target>.tmp.<pid>` or `.<target>.old.<pid>`.
fn debris(name: &str) -> Option<(Debris, u32)> {
    let rest = name.strip_prefix('.')?;
    let (rest, pid) = rest.rsplit_once('.')?;
    let pid = pid.parse().ok()?;
    let (target, kind) = rest.rsplit_once('.')?;
    let kind = match kind {
        "tmp" => Debris::Scratch,
        "old" => Debris::Old,
        _ => return None,
    };
    (!target.is_empty()).then_some((kind, pid))
}

/// Whether another run holds the lock of the scratch directory `dir`.
fn locked(dir: &Path) -> bool {
    fs::File::open(dir).is_ok_and(|f| f.try_lock().is_err())
}

/// Removes what killed runs left in `out_root` (called as a run starts):
/// scratch directories of runs that are gone and whose lock is free, and
/// old outputs of runs that are gone. Returns what it removed.
pub fn clean_debris(out_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(out_root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((kind, pid)) = debris(&name) else {
            continue;
        };
        let path = e.path();
        let dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !dir || !fsutil::left_by_dead_process(pid) {
            continue;
        }
        if kind == Debris::Scratch && locked(&path) {
            continue;
        }
        if fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
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
/// version), the same seed, boot and OCI index files, and every file its
/// SHA256SUMS lists present. The layer files, OCI layer blobs and PXE
/// segments are checked by [`Assembly::same_layers`]. The other big files
/// (seed.iso, overlay.cpio.gz) are functions of those; `imgbuild verify`
/// checks their bytes.
fn same_small_files(tmp: &Path, dest: &Path) -> io::Result<bool> {
    let Ok(text) = fs::read_to_string(dest.join(sums::FILE)) else {
        return Ok(false);
    };
    let (listed, bad) = Sums::parse(&text);
    if !bad.is_empty() || !listed.paths().all(|f| dest.join(f).is_file()) {
        return Ok(false);
    }
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

/// Whether `file` holds `size` bytes with the sha256 `digest`: the same
/// inode as `source` (a stored file this run checked, or wrote), or else
/// hashed.
fn holds(file: &Path, source: &Path, size: u64, digest: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(file) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    let same_inode =
        fs::metadata(source).is_ok_and(|s| (s.dev(), s.ino()) == (meta.dev(), meta.ino()));
    same_inode || fsutil::sha256_file(file).is_ok_and(|d| d == digest)
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
    /// What a seed for a stock image carries (`[os]` and cloud-init).
    stock: Option<stock::Stock>,
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
    let stock = if opts.formats.has(Format::CloudInit) {
        stock::prepare(m, plan, layers, &store.cache).map_err(|source| OutputError::Stock {
            target: target.to_string(),
            source: Box::new(source),
        })?
    } else {
        None
    };
    let mut a = Assembly {
        m,
        plan,
        layers,
        store,
        opts,
        tmp,
        known: Sums::default(),
        stock,
    };
    // the small files first: they decide whether anything changed
    let seed_files = a.small_files().map_err(io_err(target, tmp))?;
    if same_small_files(tmp, &dest).map_err(io_err(target, tmp))? && a.same_layers(&dest) {
        fs::remove_dir_all(tmp).map_err(io_err(target, tmp))?;
        return Ok((dest, Outcome::UpToDate));
    }
    a.big_files(seed_files.as_deref())?;
    let sums = sha256sums(tmp, &a.known).map_err(io_err(target, tmp))?;
    let p = tmp.join(sums::FILE);
    fsutil::write_unsynced(&p, sums.render().as_bytes(), 0o644).map_err(io_err(target, &p))?;
    // every file of the directory on disk (one syncfs, not one fsync per
    // file), then the directory renamed into place whole
    fsutil::sync_fs(tmp).map_err(io_err(target, tmp))?;
    let old = out_root.join(format!(".{target}.old.{}", std::process::id()));
    replace_dir(tmp, &dest, &old).map_err(io_err(target, &dest))?;
    Ok((dest, Outcome::Built))
}

impl Assembly<'_> {
    /// Layer links, image.json, the cloud-init files (returned, for the
    /// seed ISO) and boot.ipxe with the shared segments it loads.
    fn small_files(&mut self) -> io::Result<Option<Vec<iso::IsoFile>>> {
        for l in self.layers {
            let dest = self.tmp.join("layers").join(l.tar_name());
            if l.file != dest {
                link_or_copy(&l.file, &dest)?;
            }
        }
        let image = image_json(self.m, self.plan, self.layers, self.opts);
        let json = crate::json::canonical(&image);
        let digest = hex::encode(Sha256::digest(json.as_bytes()));
        fsutil::write_unsynced(&self.tmp.join("image.json"), json.as_bytes(), 0o644)?;
        let formats = &self.opts.formats;
        let seed_files = if formats.has(Format::CloudInit) {
            let seed = &self.opts.seed;
            Some(cloudinit::files(
                self.m,
                self.plan,
                self.layers,
                &digest,
                seed,
                self.stock.as_ref(),
                self.tmp,
            )?)
        } else {
            None
        };
        if formats.has(Format::Pxe) {
            self.boot_script()?;
        }
        let mut written = std::collections::BTreeMap::new();
        written.insert("image.json".to_string(), digest.clone());
        if formats.has(Format::Oci) {
            let (sde, with_secrets) = (self.opts.source_date_epoch, self.opts.oci_with_secrets);
            let manifest = oci::index(self.tmp, &image, self.layers, sde, with_secrets)?;
            let hex = manifest.trim_start_matches("sha256:").to_string();
            written.insert(format!("oci/blobs/sha256/{hex}"), hex);
        }
        self.attestations(&image, &digest, written)?;
        Ok(seed_files)
    }

    /// The SBOM, then the provenance whose subjects are `written` (the
    /// files made so far, by sha256), the SBOM and the layers.
    fn attestations(
        &mut self,
        image: &ImageJson,
        image_digest: &str,
        mut written: std::collections::BTreeMap<String, String>,
    ) -> io::Result<()> {
        let sbom = sbom::spdx(&sbom::Input {
            m: self.m,
            plan: self.plan,
            layers: self.layers,
            image,
            image_digest,
        });
        let sbom_digest = hex::encode(Sha256::digest(&sbom));
        fsutil::write_unsynced(&self.tmp.join(sbom::FILE), &sbom, 0o644)?;
        self.known.insert(sbom::FILE, sbom_digest.clone());
        written.insert(sbom::FILE.to_string(), sbom_digest);
        let statement = provenance::statement(&provenance::Input {
            m: self.m,
            plan: self.plan,
            image,
            opts: self.opts,
            files: &written,
        });
        fsutil::write_unsynced(
            &self.tmp.join(provenance::FILE),
            statement.as_bytes(),
            0o644,
        )
    }

    /// boot.ipxe (and a whole node's cmdline), and the shared layers'
    /// segments it loads (from BASE in url mode).
    fn boot_script(&mut self) -> io::Result<()> {
        let shared: Vec<&BuiltLayer> = self.layers.iter().filter(|l| l.kind.is_shared()).collect();
        let shared = pxe::segments(&shared, self.store, self.tmp)?;
        let (plan, base, tmp) = (self.plan, self.opts.seed.base(), self.tmp);
        if pxe::is_whole(self.layers) {
            let has_secrets = self.layers.iter().any(|l| l.kind == LayerKind::Secrets);
            let secrets = self.opts.pxe_secrets && has_secrets;
            let how = self.opts.compression;
            pxe::whole_boot_script(plan, &shared, base, (secrets, how), tmp)?;
        } else {
            pxe::boot_script(plan, &shared, base, self.opts.compression, tmp)?;
        }
        for s in &shared {
            self.known
                .insert(format!("pxe/segments/{}", s.file), s.digest.clone());
        }
        Ok(())
    }

    /// Whether `dest` holds this build's layer files, OCI layer blobs and
    /// PXE segments: each of the right size, and the very file of the store
    /// (checked by this run) or of the right sha256.
    fn same_layers(&self, dest: &Path) -> bool {
        let formats = &self.opts.formats;
        let mut want: Vec<(String, &Path, u64, &str)> = Vec::new();
        for l in self.layers {
            if formats.has(Format::Layers) {
                want.push((
                    format!("layers/{}", l.tar_name()),
                    &l.file,
                    l.size,
                    &l.digest,
                ));
            }
            let linked = formats.has(Format::Pxe) && l.kind.is_shared();
            if let (true, Some(seg), Some(size), Some(d)) =
                (linked, &l.segment, l.segment_size, &l.segment_digest)
            {
                want.push((format!("pxe/segments/{}", l.segment_name()), seg, size, d));
            }
        }
        if formats.has(Format::Oci) {
            for l in oci::included(self.layers, self.opts.oci_with_secrets) {
                let blob = format!("oci/blobs/sha256/{}", l.digest);
                want.push((blob, &l.file, l.size, &l.digest));
            }
        }
        want.iter()
            .all(|(rel, source, size, digest)| holds(&dest.join(rel), source, *size, digest))
            && self.same_layers_volume(dest)
    }

    /// Whether `dest` holds this build's layers volume (volume mode), the
    /// store's very file or of its sha256; true when it has none to hold.
    fn same_layers_volume(&self, dest: &Path) -> bool {
        if !self.opts.formats.has(Format::CloudInit) {
            return true;
        }
        let layers = cloudinit::volume_layers(self.layers, &self.opts.seed);
        if layers.is_empty() {
            return true;
        }
        let mtime = u64::try_from(self.opts.source_date_epoch).unwrap_or(0);
        seedvol::kept(&layers, mtime, &self.store.dir.join("seed")).is_some_and(|v| {
            holds(
                &dest.join(cloudinit::LAYERS_ISO),
                &v.path,
                v.size,
                &v.sha256,
            )
        })
    }

    /// seed.iso and the PXE files, each hashed while it is written, side by
    /// side (a whole node's kernel too); then the layers kept or dropped.
    fn big_files(&mut self, seed_files: Option<&[iso::IsoFile]>) -> Result<(), OutputError> {
        let target = self.plan.target.as_str();
        let mtime = u64::try_from(self.opts.source_date_epoch).unwrap_or(0);
        let (tmp, layers, pxe) = (self.tmp, self.layers, self.opts.formats.has(Format::Pxe));
        let this = &*self;
        let (iso, kernel, initrds) = std::thread::scope(|s| {
            let iso = s.spawn(|| {
                let seed = seed_files
                    .map(|files| cloudinit::seed_iso(tmp, files, mtime))
                    .transpose()?;
                let volume = match seed_files {
                    Some(_) => this.layers_volume(mtime)?,
                    None => None,
                };
                Ok::<_, io::Error>((seed, volume))
            });
            let kernel = s.spawn(|| {
                if pxe {
                    pxe::kernel(layers, this.store, tmp)
                } else {
                    Ok(None)
                }
            });
            let initrds = if pxe { this.initrds() } else { Ok(Vec::new()) };
            let iso = iso
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writing the seed ISO panicked")));
            let kernel = kernel.join().unwrap_or(Err(pxe::KernelError::Panicked));
            (iso, kernel, initrds)
        });
        let disk = if self.opts.formats.has(Format::Disk) || self.opts.formats.has(Format::DiskRaw)
        {
            self.disk()?
        } else {
            Vec::new()
        };
        for (file, h) in disk {
            self.known.insert(file, h);
        }
        let kernel = kernel.map_err(|source| OutputError::Kernel {
            target: target.to_string(),
            source,
        })?;
        if let Some(h) = kernel {
            self.known.insert(format!("pxe/{}", pxe::KERNEL), h);
        }
        let (seed, volume) = iso.map_err(io_err(target, tmp))?;
        if let Some(h) = seed {
            self.known.insert("cloud-init/seed.iso", h);
        }
        if let Some(h) = volume {
            self.known.insert(cloudinit::LAYERS_ISO, h);
        }
        for (file, h) in initrds.map_err(io_err(target, tmp))? {
            self.known.insert(file, h);
        }
        self.layers_kept().map_err(io_err(target, tmp))
    }

    /// `cloud-init/layers.iso` in volume mode: a link to the layers volume
    /// of the node's shared layers in the store (made unless kept); its
    /// sha256.
    fn layers_volume(&self, mtime: u64) -> io::Result<Option<String>> {
        let layers = cloudinit::volume_layers(self.layers, &self.opts.seed);
        if layers.is_empty() {
            return Ok(None);
        }
        let dir = self.store.dir.join("seed");
        let volume = seedvol::get(&layers, mtime, &dir)
            .map_err(|(path, e)| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        link_or_copy(&volume.path, &self.tmp.join(cloudinit::LAYERS_ISO))?;
        Ok(Some(volume.sha256))
    }

    /// The PXE initrds of the node's own layers (the shared layers' are
    /// linked into `pxe/segments/`): a whole node's, or the overlay for a
    /// distribution's initrd. Each with its sha256.
    fn initrds(&self) -> io::Result<Vec<(String, String)>> {
        let own: Vec<BuiltLayer> = self
            .layers
            .iter()
            .filter(|l| !l.kind.is_shared())
            .cloned()
            .collect();
        if pxe::is_whole(self.layers) {
            pxe::initrds(&own, self.opts.source_date_epoch, self.tmp)
        } else {
            let h = pxe::overlay(&own, self.tmp)?;
            let name = pxe::named(pxe::OVERLAY, self.opts.compression);
            Ok(vec![(format!("pxe/{name}"), h)])
        }
    }

    /// `disk/`: the node's root (a role's generic disk without the node's
    /// layers and secrets) with its kernel, from every layer (url mode or
    /// not: a disk boots alone).
    fn disk(&self) -> Result<Vec<(String, String)>, OutputError> {
        let target = self.plan.target.as_str();
        if !pxe::is_whole(self.layers) {
            return Err(OutputError::DiskWithoutOs {
                target: target.to_string(),
            });
        }
        let kernel = self.disk_kernel()?;
        // a role's generic disk takes its secrets from the seed, as its
        // identity: it carries none
        let node = self.plan.kind == crate::plan::TargetKind::Node;
        let private = node && self.layers.iter().any(|l| l.kind == LayerKind::Secrets);
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .filter(|l| private || l.kind != LayerKind::Secrets)
            .cloned()
            .collect();
        let input = disk::Input {
            plan: self.plan,
            layers: &layers,
            kernel: &kernel,
            // a role's generic disk takes the node's own layers from the
            // node's seed attached to it (docs/build.md)
            cmdline: if node {
                pxe::cmdline(self.plan.arch)
            } else {
                disk::generic_cmdline(self.plan.arch)
            },
            mtime: self.opts.source_date_epoch,
            private,
            qcow2: self.opts.formats.has(Format::Disk),
            raw: self.opts.formats.has(Format::DiskRaw),
            store_dir: &self.store.dir,
        };
        let written = disk::write(&input, self.tmp).map_err(|source| OutputError::Disk {
            target: target.to_string(),
            source,
        });
        let work = self.tmp.join(".disk-work");
        if work.exists() {
            fs::remove_dir_all(&work).map_err(io_err(target, &work))?;
        }
        written
    }

    /// The disk's kernel: this build's own `pxe/vmlinuz` when it wrote one,
    /// else taken from the layers into a scratch directory.
    fn disk_kernel(&self) -> Result<PathBuf, OutputError> {
        let target = self.plan.target.as_str();
        let own = self.tmp.join("pxe").join(pxe::KERNEL);
        if self.opts.formats.has(Format::Pxe) && own.is_file() {
            return Ok(own);
        }
        let work = self.tmp.join(".disk-work");
        pxe::kernel(self.layers, self.store, &work).map_err(|source| OutputError::Kernel {
            target: target.to_string(),
            source,
        })?;
        Ok(work.join("pxe").join(pxe::KERNEL))
    }

    /// The OCI layer blobs linked, and the layers kept (with their digests)
    /// or dropped.
    fn layers_kept(&mut self) -> io::Result<()> {
        if self.opts.formats.has(Format::Oci) {
            let with_secrets = self.opts.oci_with_secrets;
            oci::link_blobs(self.tmp, self.layers, with_secrets)?;
            for l in oci::included(self.layers, with_secrets) {
                self.known
                    .insert(format!("oci/blobs/sha256/{}", l.digest), l.digest.clone());
            }
        }
        if self.opts.formats.has(Format::Layers) {
            for l in self.layers {
                self.known
                    .insert(format!("layers/{}", l.tar_name()), l.digest.clone());
            }
            Ok(())
        } else {
            // layers were only the means to the other formats
            fs::remove_dir_all(self.tmp.join("layers"))
        }
    }
}

/// Puts `tmp` at `dest`, moving an old `dest` aside to `old` and removing
/// it (what is already gone of it is no error).
fn replace_dir(tmp: &Path, dest: &Path, old: &Path) -> io::Result<()> {
    if dest.exists() {
        let _ = fs::remove_dir_all(old);
        fs::rename(dest, old)?;
        fs::rename(tmp, dest)?;
        match fs::remove_dir_all(old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        fs::rename(tmp, dest)
    }
}

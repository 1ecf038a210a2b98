//! Stage 8, `verify`: takes an output directory (`out/<node>`) and the
//! manifests, and checks what CI and an operator would: every file against
//! SHA256SUMS (and nothing unlisted, nothing but directories and regular
//! files), image.json against the layer files, every input against its pin,
//! no private key or token outside the secrets layer (in the layers, the
//! published PXE segments and the public OCI image), no CA private key on a
//! node without the control-plane role, and the modes of secret files. The
//! directory is treated as hostile: nothing is followed out of it, nothing
//! but regular files is opened, and every problem is reported, not the
//! first. [`compare`] names the first file that differs from a rebuild.

mod needles;
mod scan;
mod tree;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::layer::rootfs;
use crate::manifest::Manifests;
use crate::manifest::secrets;
use crate::output::{Format, ImageJson, LayerJson, pxe};
use crate::plan::LayerKind;
use crate::sums::{self, Sums};
use tree::Tree;
pub use tree::is_inside;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir} failed verification:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Failed { dir: PathBuf, problems: Vec<String> },
    #[error("{dir} differs from a rebuild from the manifests and state: first at {file}")]
    Differs { dir: PathBuf, file: String },
}

/// Every problem found, in the order found.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        self.0.push(p);
    }

    /// An I/O failure on `rel` is a problem like any other: the check goes on.
    fn io(&mut self, rel: &str, e: &io::Error) {
        self.0.push(format!("{rel}: cannot read it: {e}"));
    }
}

/// Reads `dir/image.json` as the one type `output` writes; a problem if it
/// is missing, not a regular file or not what `output` writes.
fn read_image_json(dir: &Path, tree: &Tree) -> Result<ImageJson, String> {
    if !tree.has("image.json") {
        return Err("image.json is missing or not a regular file".into());
    }
    let text = fs::read_to_string(dir.join("image.json"))
        .map_err(|e| format!("image.json: cannot read it: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("image.json: {e}"))
}

/// Every check but the rebuild; all problems at once. With `state`, every
/// certificate of the secrets layer must chain to that state's CA.
pub fn check(m: &Manifests, dir: &Path, state: Option<&Path>) -> Result<ImageJson, VerifyError> {
    let tree = Tree::walk(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut p = Problems(tree.problems.clone());
    let image = read_image_json(dir, &tree);
    // every file hashed against SHA256SUMS, and beside it (the other core)
    // the layers and published files searched for private material: the
    // two passes read the same bytes, so side by side verify costs about
    // one `sha256sum -c` (`just bench`)
    let (mut sums_p, mut secrets_p) = (Problems::default(), Problems::default());
    let digests = std::thread::scope(|sc| {
        let sums = sc.spawn(|| {
            let mut q = Problems::default();
            let d = check_sums(dir, &tree, &mut q);
            (d, q)
        });
        if let Ok(image) = &image {
            check_all_secrets(dir, image, &tree, state, &mut secrets_p);
        }
        match sums.join() {
            Ok((d, q)) => {
                sums_p = q;
                d
            }
            Err(_) => {
                sums_p.push("hashing the files panicked".into());
                BTreeMap::new()
            }
        }
    });
    p.0.append(&mut sums_p.0);
    let image = match image {
        Ok(image) => Some(image),
        Err(e) => {
            p.push(e);
            None
        }
    };
    if let Some(image) = &image {
        check_layer_files(dir, image, &tree, &digests, &mut p);
        check_layers_volume(dir, image, &tree, &mut p);
        check_inputs(m, image, &mut p);
    }
    p.0.append(&mut secrets_p.0);
    check_private_modes(dir, &tree, image.as_ref(), &mut p);
    check_disk_backing(dir, &tree, &mut p);
    match image {
        Some(image) if p.0.is_empty() => Ok(image),
        _ => Err(VerifyError::Failed {
            dir: dir.to_path_buf(),
            problems: p.0,
        }),
    }
}

/// Private material where it must not be: every layer, the published
/// files; with the state's needles when the state is at hand.
fn check_all_secrets(
    dir: &Path,
    image: &ImageJson,
    tree: &Tree,
    state: Option<&Path>,
    p: &mut Problems,
) {
    let needles = state.map_or_else(Vec::new, |st| match needles::from_state(st) {
        Ok(n) => n,
        Err(e) => {
            p.push(format!("{}: cannot read the state: {e}", st.display()));
            Vec::new()
        }
    });
    let look = Look {
        state,
        needles: &needles,
    };
    for l in image.layers.iter().filter(|l| tree.has(&l.file)) {
        check_secrets(dir, image, l, &look, p);
    }
    check_published(dir, image, tree, &needles, p);
}

/// Reads `dir/SHA256SUMS`, a regular file inside `dir`.
fn read_sums(dir: &Path) -> Result<(Sums, Vec<sums::BadLine>), VerifyError> {
    let p = dir.join(sums::FILE);
    let io = |source| VerifyError::Io {
        path: p.clone(),
        source,
    };
    if !fs::symlink_metadata(&p).map_err(io)?.is_file() {
        return Err(io(io::Error::other("not a regular file")));
    }
    let text = fs::read_to_string(&p).map_err(io)?;
    Ok(Sums::parse(&text))
}

/// Every regular file against SHA256SUMS, and nothing unlisted or missing;
/// returns the digests it computed, each file read once.
fn check_sums(dir: &Path, tree: &Tree, p: &mut Problems) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    let listed = match read_sums(dir) {
        Ok((listed, bad)) => {
            bad.iter().for_each(|b| p.push(b.to_string()));
            listed
        }
        Err(e) => {
            p.push(format!("{e}: {}", e.source_text()));
            Sums::default()
        }
    };
    // signatures/ is `imgbuild sign`'s, after the build: not in SHA256SUMS
    // (`verify --key` checks it)
    let signed_later = |f: &str| f.starts_with("signatures/");
    for f in tree
        .files
        .iter()
        .filter(|f| *f != sums::FILE && !signed_later(f))
    {
        let actual = match crate::fsutil::sha256_file(&dir.join(f)) {
            Ok(h) => h,
            Err(e) => {
                p.io(f, &e);
                continue;
            }
        };
        match listed.get(f) {
            None => p.push(format!("{f} is not listed in SHA256SUMS")),
            Some(h) if h != actual => {
                p.push(format!("{f}: sha256 is {actual}, SHA256SUMS says {h}"));
            }
            Some(_) => {}
        }
        digests.insert(f.clone(), actual);
    }
    for f in listed.paths() {
        if !is_inside(f) {
            p.push(format!(
                "SHA256SUMS lists {f:?}, which is not a path inside the directory"
            ));
        } else if !tree.has(f) {
            p.push(format!("{f} is listed in SHA256SUMS but missing"));
        }
    }
    digests
}

impl VerifyError {
    fn source_text(&self) -> String {
        std::error::Error::source(self).map_or_else(String::new, ToString::to_string)
    }
}

/// image.json against the layer files.
fn check_layer_files(
    dir: &Path,
    image: &ImageJson,
    tree: &Tree,
    digests: &BTreeMap<String, String>,
    p: &mut Problems,
) {
    let ext = image.build.compression.ext();
    for l in &image.layers {
        if l.file != format!("layers/{}.tar.{ext}", l.name) || !is_inside(&l.file) {
            p.push(format!(
                "image.json names layer file {:?}, which is not layers/<name>.tar.{ext}",
                l.file
            ));
            continue;
        }
        let Some(actual) = digests.get(&l.file) else {
            if image.build.formats.has(Format::Layers) && !tree.has(&l.file) {
                p.push(format!("{}: listed in image.json but missing", l.file));
            }
            continue;
        };
        let size = fs::metadata(dir.join(&l.file))
            .map(|m| m.len())
            .unwrap_or(0);
        if format!("sha256:{actual}") != l.digest || size != l.size {
            p.push(format!(
                "{}: digest sha256:{actual} ({size} bytes), image.json says {} ({} bytes)",
                l.file, l.digest, l.size
            ));
        }
    }
}

/// Every input against its pin.
fn check_inputs(m: &Manifests, image: &ImageJson, p: &mut Problems) {
    for i in &image.inputs {
        // artifacts by name, the base OS's packages as `deb:<package>`
        let pin = match i.artifact.strip_prefix("deb:") {
            Some(package) => m
                .pins
                .debs
                .iter()
                .find(|d| d.package == package && d.url == i.url)
                .map(|d| (&d.version, &d.checksum)),
            None => m
                .pins
                .artifacts
                .iter()
                .find(|p| p.name == i.artifact && p.url == i.url)
                .map(|a| (&a.version, &a.checksum)),
        };
        match pin {
            None => p.push(format!(
                "input {} {} ({}) has no pin in {}",
                i.artifact,
                i.version,
                i.url,
                m.dir.display()
            )),
            Some((version, checksum))
                if checksum.to_string() != i.checksum || *version != i.version =>
            {
                p.push(format!(
                    "input {} {}: built from {}, but the pin says {version} {checksum}",
                    i.artifact, i.version, i.checksum
                ));
            }
            Some(_) => {}
        }
    }
}

/// What secrets are looked for with: the state (its CAs for the chain
/// check) and the needles of its secrets.
struct Look<'a> {
    state: Option<&'a Path>,
    needles: &'a [needles::Needle],
}

/// The scope of a layer's scan: what a pinned base OS brings holds generic
/// markers of its own (see [`scan::Scope::Os`]).
fn scope_of(kind: LayerKind) -> scan::Scope {
    match kind {
        LayerKind::Os | LayerKind::OsPackages => scan::Scope::Os,
        _ => scan::Scope::All,
    }
}

/// Secrets in one layer: where they are and their modes.
fn check_secrets(dir: &Path, image: &ImageJson, l: &LayerJson, look: &Look, p: &mut Problems) {
    let state = look.state;
    let path = dir.join(&l.file);
    let secret_layer = l.kind() == LayerKind::Secrets;
    if secret_layer
        && let Ok(meta) = fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        p.push(format!(
            "{}: mode {:04o}, a secrets layer must be 0600",
            l.file,
            meta.permissions().mode() & 0o777
        ));
    }
    let result = File::open(&path).and_then(|f| {
        let mut a = tar::Archive::new(rootfs::decompress(f)?);
        for e in a.entries()? {
            let mut e = e?;
            let name = e.path()?.to_string_lossy().into_owned();
            if !e.header().entry_type().is_file() {
                continue;
            }
            let mode = e.header().mode()? & 0o7777;
            if secret_layer {
                secret_file_problems(image, l, &name, mode, p);
                if let Some(state) = state.filter(|_| name.ends_with(".crt")) {
                    let mut pem = Vec::new();
                    e.read_to_end(&mut pem)?;
                    chain_problem(state, l, &name, &pem, p);
                }
            } else if let Some(what) = scan::scan_for(&mut e, scope_of(l.kind()), look.needles)? {
                p.push(format!(
                    "{}: /{name} holds {what} outside the secrets layer",
                    l.file
                ));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        p.io(&l.file, &e);
    }
}

/// A file of the secrets layer: private material 0600 (0640 for a service
/// group), and a CA key only on a control-plane node.
fn secret_file_problems(image: &ImageJson, l: &LayerJson, path: &str, mode: u32, p: &mut Problems) {
    let id = path.trim_start_matches("etc/kubernetes/");
    if let Some(spec) = secrets::lookup(id) {
        if spec.is_private() && mode & 0o037 != 0 {
            p.push(format!("{}: /{path} has mode {mode:04o}; private material must be 0600 (0640 for a service group)", l.file));
        }
        let control_plane = image.roles.iter().any(|r| r == "control-plane");
        if spec.ca_key && !control_plane {
            p.push(format!(
                "{}: /{path} is a CA private key on {}, which is not a control-plane node",
                l.file, image.node
            ));
        }
    }
}

/// A certificate of the secrets layer that does not chain to the state's CA.
fn chain_problem(state: &Path, l: &LayerJson, name: &str, pem: &[u8], p: &mut Problems) {
    match crate::pki::chains_to_state_ca(state, &format!("/{name}"), pem) {
        Ok(true) | Err(crate::pki::PkiError::NotACertificate { .. }) => {}
        Ok(false) => p.push(format!(
            "{}: /{name} does not chain to the CA in {}",
            l.file,
            state.display()
        )),
        Err(e) => p.push(format!("{}: /{name}: cannot check its chain: {e}", l.file)),
    }
}

/// What is published to many machines holds no private material: the PXE
/// segments served by digest, a whole node's initrd and `/init` segment
/// (served without its secrets), the shared disk and layers volume, and
/// every blob of the public OCI image.
/// What carries a pinned base OS is searched for the cluster's own secrets
/// and imgbuild's specific markers ([`scan::Scope::Os`]).
fn check_published(
    dir: &Path,
    image: &ImageJson,
    tree: &Tree,
    needles: &[needles::Needle],
    p: &mut Problems,
) {
    let public_blobs = match public_oci_blobs(dir, tree) {
        Ok(b) => b,
        Err(e) => {
            p.io("oci/index.json", &e);
            Vec::new()
        }
    };
    let how = image.build.compression;
    let (initrd, init) = (pxe::named(pxe::INITRD, how), pxe::named(pxe::INIT, how));
    let segments = tree.files.iter().filter(|f| {
        f.starts_with("pxe/segments/")
            || *f == crate::output::disk::BASE
            || *f == crate::output::cloudinit::LAYERS_ISO
            || f.strip_prefix("pxe/")
                .is_some_and(|n| n == initrd || n == init)
    });
    for f in segments.chain(public_blobs.iter()) {
        let found = File::open(dir.join(f)).and_then(|file| {
            // gzip members or zstd frames as their magic says; else as it is
            let scope = published_scope(image, f);
            scan::scan_for(rootfs::decompress(file)?, scope, needles)
        });
        match found {
            Ok(Some(what)) => p.push(format!(
                "{f} is published to many machines and holds {what}"
            )),
            Ok(None) => {}
            Err(e) => p.io(f, &e),
        }
    }
}

/// The scope of a published file: [`scan::Scope::Os`] for an OS layer's
/// PXE segment and its OCI blob (a whole node's initrd holds `/init` and
/// the node layer: every secret is looked for there).
fn published_scope(image: &ImageJson, file: &str) -> scan::Scope {
    let os = |l: &&LayerJson| scope_of(l.kind()) == scan::Scope::Os;
    let ext = image.build.compression.ext();
    let os_layer = image.layers.iter().filter(os).any(|l| {
        file == format!("pxe/segments/{}.cpio.{ext}", l.name)
            || file == format!("oci/blobs/{}", l.digest.replacen(':', "/", 1))
    });
    if os_layer {
        scan::Scope::Os
    } else {
        scan::Scope::All
    }
}

/// The blobs (config and layers) of the OCI layout's public image: every
/// manifest index.json names that is not annotated as the with-secrets one.
fn public_oci_blobs(dir: &Path, tree: &Tree) -> io::Result<Vec<String>> {
    if !tree.has("oci/index.json") {
        return Ok(Vec::new());
    }
    let blob = |digest: &str| -> Option<String> {
        let rel = format!("oci/blobs/{}", digest.replacen(':', "/", 1));
        (is_inside(&rel) && tree.has(&rel)).then_some(rel)
    };
    let json = |rel: &str| -> io::Result<serde_json::Value> {
        serde_json::from_slice(&fs::read(dir.join(rel))?).map_err(io::Error::other)
    };
    let index = json("oci/index.json")?;
    let mut out = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let name = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or("");
        let Some(rel) = m["digest"].as_str().and_then(blob) else {
            continue;
        };
        if name.ends_with("-with-secrets") {
            continue;
        }
        let manifest = json(&rel)?;
        let descs = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain([&manifest["config"]]);
        out.extend(descs.filter_map(|d| d["digest"].as_str().and_then(blob)));
        out.push(rel);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The files that carry the secrets layer are private (a node's disk
/// too; a role's generic disk carries no secret).
fn check_private_modes(dir: &Path, tree: &Tree, image: Option<&ImageJson>, p: &mut Problems) {
    let mut private_files = vec![
        "cloud-init/seed.iso",
        "pxe/overlay.cpio.gz",
        "pxe/secrets.cpio.gz",
        "pxe/overlay.cpio.zst",
        "pxe/secrets.cpio.zst",
    ];
    let node = image.is_some_and(|i| i.kind == crate::plan::TargetKind::Node);
    let secrets = image.is_some_and(|i| i.layers.iter().any(|l| l.kind() == LayerKind::Secrets));
    if node && secrets {
        private_files.extend([crate::output::disk::RAW, crate::output::disk::QCOW2]);
    }
    for private in private_files {
        if let Ok(meta) = fs::metadata(dir.join(private))
            && tree.has(private)
            && meta.permissions().mode() & 0o077 != 0
        {
            p.push(format!(
                "{private}: mode {:04o}; it carries the secrets layer and must be 0600",
                meta.permissions().mode() & 0o777
            ));
        }
    }
}

/// `cloud-init/layers.iso` is the layers volume of the image's seed
/// (`--seed-layers volume`) and nothing else: the volume imgbuild makes of
/// the shared layers image.json names (the seed's: no OS layer), each file
/// of its digest, so it holds no layer but those, which are checked as
/// layers. A directory built otherwise has none.
fn check_layers_volume(dir: &Path, image: &ImageJson, tree: &Tree, p: &mut Problems) {
    use crate::output::{SeedLayers, cloudinit, iso};
    let rel = cloudinit::LAYERS_ISO;
    if !tree.has(rel) {
        return;
    }
    if image.build.seed_layers != SeedLayers::Volume {
        p.push(format!(
            "{rel}: present, but image.json says the seed was built with --seed-layers {}",
            image.build.seed_layers
        ));
        return;
    }
    let names: Vec<(String, &LayerJson)> = image
        .layers
        .iter()
        .filter(|l| {
            l.kind().is_shared() && !matches!(l.kind(), LayerKind::Os | LayerKind::OsPackages)
        })
        .map(|l| {
            (
                format!("layers/{}", l.file.trim_start_matches("layers/")),
                l,
            )
        })
        .collect();
    let want: Vec<iso::Expected<'_>> = names
        .iter()
        .map(|(name, l)| iso::Expected {
            name,
            size: l.size,
            sha256: l.digest.trim_start_matches("sha256:"),
        })
        .collect();
    let mtime = u64::try_from(image.source_date_epoch).unwrap_or(0);
    let checked = File::open(dir.join(rel)).and_then(|f| {
        let mut r = io::BufReader::with_capacity(1 << 20, f);
        iso::check(&mut r, cloudinit::LAYERS_LABEL, &want, mtime)
    });
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(what)) => p.push(format!(
            "{rel}: not the layers volume of the seed's shared layers image.json names: {what}"
        )),
        Err(e) => p.io(rel, &e),
    }
}

/// A node's qcow2 names no backing file but its role's shared disk beside
/// it, which names none: a hostile image could name any file of the
/// machine that boots it (QEMU opens the backing file an image names).
fn check_disk_backing(dir: &Path, tree: &Tree, p: &mut Problems) {
    use crate::output::disk::{BASE, BASE_NAME, QCOW2, backing_file};
    for (file, allowed) in [(QCOW2, Some(BASE_NAME)), (BASE, None)] {
        if !tree.has(file) {
            continue;
        }
        match File::open(dir.join(file)).and_then(|mut f| backing_file(&mut f)) {
            Ok(named) if named.as_deref() == allowed => {}
            Ok(Some(name)) => p.push(format!(
                "{file} names {name:?} as its backing file; {}",
                match allowed {
                    Some(a) => format!("a node's disk may name only {a:?} beside it"),
                    None => "the shared disk names none".to_string(),
                }
            )),
            Ok(None) if !tree.has(BASE) => {}
            Ok(None) => p.push(format!(
                "{file} names no backing file, but {BASE} is beside it"
            )),
            Err(e) => p.push(format!("{file}: cannot read it as a qcow2 image: {e}")),
        }
    }
}

/// Compares two output directories byte for byte through their SHA256SUMS.
pub fn compare(dir: &Path, rebuilt: &Path) -> Result<(), VerifyError> {
    let (a, _) = read_sums(dir)?;
    let (b, _) = read_sums(rebuilt)?;
    match a.first_difference(&b) {
        Some(file) => Err(VerifyError::Differs {
            dir: dir.to_path_buf(),
            file: file.to_string(),
        }),
        None => Ok(()),
    }
}

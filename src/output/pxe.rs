//! `pxe/`: takes a node's built layers (each with its gzip'd newc cpio
//! segment, written by the layer stage together with the layer and kept in
//! the layer store for shared layers) and writes what a PXE server serves.
//! The kernel's initramfs format is a sequence of (compressed) cpio archives
//! whose trailers are optional, so segments concatenate, and
//! `zcat | cpio -t` reads them as one archive; the kernel unpacks them in
//! order, and iPXE lays several initrds one after the other. Two layers of a
//! node never hold the same file (the plan refuses it), so the result is
//! the flattened node.
//!
//! The shared layers' segments are hard links into the store in
//! `pxe/segments/` ([`segments`]), which boot.ipxe loads first, one initrd
//! each: from the node's directory, or by digest from BASE in url mode
//! (`--seed-layers url=BASE`). The node's own files hold the rest.
//!
//! A node whose first layer is a pinned base OS ([`LayerKind::Os`]) is
//! whole: `pxe/vmlinuz` (the base's kernel, [`kernel`], kept in the store
//! after the first node and linked from there), `pxe/init.cpio.gz` (the `/init` that copies the
//! node into a tmpfs and switch_roots to systemd, [`init`]),
//! `pxe/initrd.cpio.gz` (`/init`'s segment and the node layer's, after the
//! shared ones: served to the node and holding no private material),
//! `pxe/secrets.cpio.gz` (0600: the secrets layer's segment alone),
//! `pxe/cmdline` and `pxe/boot.ipxe`, which loads the secrets only when the
//! build was asked to (`--pxe-secrets`).
//!
//! Without a base OS, `pxe/overlay.cpio.gz` is the node's own layers
//! (secrets included, so 0600), and `pxe/boot.ipxe` loads the
//! distribution's kernel and initrd, then the segments, then it.
//!
//! With `--compression zstd` every file here is zstd (each layer's segment
//! one frame, as the kernel wants) and named `.cpio.zst` ([`named`]).

pub(crate) mod init;
mod kernel;

pub use kernel::KernelError;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::fsutil::{self, Sha256Writer};
use crate::layer::{BuiltLayer, Store};
use crate::manifest::Arch;
use crate::newc;
use crate::pgzip::Compression;
use crate::plan::{LayerKind, Plan, TargetKind};

/// A whole node's kernel, below `pxe/`.
pub(crate) const KERNEL: &str = "vmlinuz";
/// The `/init` segment alone (with a trailer), below `pxe/`.
pub(crate) const INIT: &str = "init.cpio.gz";
/// A whole node's initramfs but its secrets, below `pxe/`.
pub(crate) const INITRD: &str = "initrd.cpio.gz";
/// A whole node's secrets, below `pxe/`.
pub(crate) const SECRETS: &str = "secrets.cpio.gz";
/// The node's layers for a distribution's initrd, below `pxe/`.
pub(crate) const OVERLAY: &str = "overlay.cpio.gz";
// (each named for gzip: [`named`] gives the zstd build's name)
/// The kernel command line of a whole node, below `pxe/`.
pub(crate) const CMDLINE: &str = "cmdline";
/// The size of the tmpfs `/init` copies the node into.
pub(crate) const ROOTSIZE: &str = "75%";

/// Whether `layers` are a whole node: the first is a pinned base OS.
pub(crate) fn is_whole(layers: &[BuiltLayer]) -> bool {
    layers.first().is_some_and(|l| l.kind == LayerKind::Os)
}

/// Writes `file`: `middle`, then the segments of `layers`, then a
/// trailer; returns its sha256.
fn concatenate(
    file: File,
    how: Compression,
    middle: &[u8],
    layers: &[BuiltLayer],
) -> io::Result<String> {
    let mut w = Sha256Writer::new(BufWriter::with_capacity(fsutil::BLOCK, file));
    w.write_all(middle)?;
    for l in layers {
        l.append_segment(&mut w)?;
    }
    w.write_all(&how.whole(&newc::trailer())?)?;
    let (w, digest) = w.finish();
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(digest)
}

/// Writes `pxe/overlay.cpio.gz` below `out`, the node's `own` layers
/// (node and secrets: so 0600); returns its sha256. The shared layers'
/// segments are loaded from `pxe/segments/` before it ([`segments`]).
pub fn overlay(own: &[BuiltLayer], out: &Path) -> io::Result<String> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    // the overlay holds the secrets layer's files: private to its owner
    let how = compression_of(own);
    let file = fsutil::create_private(&dir.join(named(OVERLAY, how)))?;
    concatenate(file, how, &[], own)
}

/// Writes a whole node's `pxe/init.cpio.gz`, `pxe/initrd.cpio.gz` (the
/// `/init` segment and those of the node's `own` layers but the secrets:
/// loaded after the shared layers' segments, [`segments`]) and
/// `pxe/secrets.cpio.gz` (0600: the secrets layer's segment, when there is
/// one); returns each file (relative to `out`) with its sha256. Every mtime
/// in `/init`'s segment is `mtime`.
pub(crate) fn initrds(
    own: &[BuiltLayer],
    mtime: i64,
    out: &Path,
) -> io::Result<Vec<(String, String)>> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let how = compression_of(own);
    let (init_name, initrd, secrets_name) =
        (named(INIT, how), named(INITRD, how), named(SECRETS, how));
    let init = init::segment(mtime, how)?;
    let mut alone = init.clone();
    alone.extend(how.whole(&newc::trailer())?);
    // a plain write: the node's directory is made durable as a whole
    // (one syncfs) before it is renamed into place
    fsutil::create_mode(&dir.join(&init_name), 0o644)?.write_all(&alone)?;
    let mut written = vec![(format!("pxe/{init_name}"), sha256(&alone))];
    let (secrets, public): (Vec<BuiltLayer>, Vec<BuiltLayer>) = own
        .iter()
        .cloned()
        .partition(|l| l.kind == LayerKind::Secrets);
    let file = fsutil::create_mode(&dir.join(&initrd), 0o644)?;
    let digest = concatenate(file, how, &init, &public)?;
    written.push((format!("pxe/{initrd}"), digest));
    if !secrets.is_empty() {
        let file = fsutil::create_private(&dir.join(&secrets_name))?;
        let digest = concatenate(file, how, &[], &secrets)?;
        written.push((format!("pxe/{secrets_name}"), digest));
    }
    Ok(written)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes a whole node's `pxe/vmlinuz`, the kernel of its OS layers (the
/// `os` layer first of `layers`, then `os-packages`), kept in the layer
/// store `store` after the first node; returns its sha256.
pub(crate) fn kernel(
    layers: &[BuiltLayer],
    store: &Store,
    out: &Path,
) -> Result<Option<String>, KernelError> {
    if !is_whole(layers) {
        return Ok(None);
    }
    let os: Vec<&BuiltLayer> = layers
        .iter()
        .take_while(|l| matches!(l.kind, LayerKind::Os | LayerKind::OsPackages))
        .collect();
    kernel::write_kept(&os, &store.dir, &out.join("pxe").join(KERNEL)).map(Some)
}

/// A shared layer's PXE segment: a hard link in `pxe/segments/`, loaded
/// from there, or by digest from BASE in url mode.
#[derive(Debug, Clone)]
pub struct Segment {
    /// `NN-<name>.cpio.gz` (or `.cpio.zst`)
    pub file: String,
    /// sha256 of its bytes: in url mode it is served as
    /// `BASE/sha256/<digest>.cpio.gz`.
    pub digest: String,
}

impl Segment {
    /// The `initrd` line of `boot.ipxe` that loads it: from layers-url by
    /// digest in url mode (`base`), else from the node's `pxe/segments/`.
    fn initrd_line(&self, base: Option<&str>) -> String {
        let ext = self.file.rsplit('.').next().unwrap_or("gz");
        let url = match base {
            Some(_) => format!("${{layers-url}}/sha256/{}.cpio.{ext}", self.digest),
            None => format!("${{base-url}}/pxe/{SEGMENTS}/{}", self.file),
        };
        format!("initrd {url} {}\n", self.file)
    }
}

/// The directory below `pxe/` of the shared layers' segments.
pub(crate) const SEGMENTS: &str = "segments";

/// Links the segments of the `shared` layers into `out/pxe/segments/` and
/// returns them in layer order. Every node of the same roles has the same
/// ones: the layer store's files, not copies.
pub fn segments(shared: &[&BuiltLayer], store: &Store, out: &Path) -> io::Result<Vec<Segment>> {
    if shared.is_empty() {
        return Ok(Vec::new());
    }
    let dir = out.join("pxe").join(SEGMENTS);
    fs::create_dir_all(&dir)?;
    let mut list = Vec::new();
    for l in shared {
        let digest = store.segment_digest(l)?;
        let file = l.segment_name();
        super::link_or_copy(l.segment()?, &dir.join(&file))?;
        list.push(Segment { file, digest });
    }
    Ok(list)
}

/// The head of `boot.ipxe`: what to serve (`serve`), base-url and, in url
/// mode, layers-url.
fn script_head(
    target: &str,
    arch: Arch,
    shared: &[Segment],
    base: Option<&str>,
    serve: &str,
) -> String {
    let mut s = format!(
        "#!ipxe\n\
# imgbuild: {target} ({arch}). {serve}\n\
isset ${{base-url}} || set base-url http://${{next-server}}/{target}\n"
    );
    if let Some(base) = base.filter(|_| !shared.is_empty()) {
        s.push_str(&format!(
            "# The shared layers' segments are served by digest from layers-url\n\
# (publish pxe/segments/<file> as sha256/<digest>.cpio.gz).\n\
isset ${{layers-url}} || set layers-url {}\n",
            crate::quote::ipxe(base)
        ));
    }
    s
}

/// `boot.ipxe`'s `kernel` line: `kernel` with an `initrd=` per initrd in
/// `names`, then `args`.
fn kernel_line(kernel: &str, names: &[String], args: &str) -> String {
    let mut words = vec![format!("kernel {kernel}")];
    words.extend(names.iter().map(|n| format!("initrd={n}")));
    if !args.is_empty() {
        words.push(args.to_string());
    }
    format!("{}\n", words.join(" "))
}

/// Writes `pxe/boot.ipxe` below `out`: the distribution's kernel and initrd,
/// then the `shared` segments (from `base` in url mode), then the overlay.
pub fn boot_script(
    plan: &Plan,
    shared: &[Segment],
    base: Option<&str>,
    how: Compression,
    out: &Path,
) -> io::Result<()> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let serve = "Serve the distribution's kernel and initrd and this\n\
# directory over HTTP; set base-url to where they are.";
    let mut s = script_head(&plan.target, plan.arch, shared, base, serve);
    let mut names = vec!["initrd.img".to_string()];
    names.extend(shared.iter().map(|r| r.file.clone()));
    let overlay = named(OVERLAY, how);
    names.push(overlay.clone());
    s.push_str(&kernel_line("${base-url}/vmlinuz", &names, ""));
    s.push_str("initrd ${base-url}/initrd.img\n");
    for r in shared {
        s.push_str(&r.initrd_line(base));
    }
    s.push_str(&format!(
        "initrd ${{base-url}}/pxe/{overlay} {overlay}\nboot\n"
    ));
    fs::write(dir.join("boot.ipxe"), s)
}

/// The kernel command line of a whole node of `arch`: the serial console
/// last, so that it is `/dev/console`, and the size of the root's tmpfs.
pub(crate) fn cmdline(arch: Arch) -> String {
    let serial = match arch {
        Arch::Amd64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    };
    format!("console=tty0 console={serial},115200 imgbuild.rootsize={ROOTSIZE}")
}

/// Writes a whole node's `pxe/boot.ipxe` ([`whole_script`]) and
/// `pxe/cmdline` below `out`.
pub(crate) fn whole_boot_script(
    plan: &Plan,
    shared: &[Segment],
    base: Option<&str>,
    (secrets, how): (bool, Compression),
    out: &Path,
) -> io::Result<()> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(CMDLINE), format!("{}\n", cmdline(plan.arch)))?;
    let mut s = whole_script(&plan.target, plan.arch, shared, base, (secrets, how));
    if plan.kind == TargetKind::Role {
        s = generic_identity(&s);
    }
    fs::write(dir.join("boot.ipxe"), s)
}

/// What a role's generic image adds to its kernel line: the identity the
/// DHCP server gave iPXE (its host name and address), which `/init` writes
/// into the root (`imgbuild.hostname=`, `imgbuild.ip=` in the kernel's
/// `ip=` syntax; docs/build.md).
const GENERIC_IDENTITY: &str = "imgbuild.hostname=${hostname} \
imgbuild.ip=${net0/ip}::${net0/gateway}:${net0/netmask}:${hostname}::none";

/// `script` with [`GENERIC_IDENTITY`] on its kernel line and a comment
/// saying where the identity comes from.
fn generic_identity(script: &str) -> String {
    let mut out = String::new();
    for line in script.lines() {
        if line.starts_with("kernel ") {
            out.push_str(
                "# A role's generic image: its host name and address are the ones DHCP\n\
# gave iPXE (set hostname and net0/ip, net0/netmask, net0/gateway by hand\n\
# for a static one); /init writes them into the root.\n",
            );
            out.push_str(&format!("{line} {GENERIC_IDENTITY}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A whole node's `boot.ipxe`: the base's kernel with [`cmdline`], the
/// `shared` segments (from `base` in url mode), the node's initrd and, when
/// `secrets`, its secrets.
fn whole_script(
    target: &str,
    arch: Arch,
    shared: &[Segment],
    base: Option<&str>,
    (secrets, how): (bool, Compression),
) -> String {
    let serve = "The whole node, run from RAM: serve this directory\n\
# over HTTP; set base-url to where it is.";
    let mut s = script_head(target, arch, shared, base, serve);
    let (initrd, secrets_name) = (named(INITRD, how), named(SECRETS, how));
    let mut names: Vec<String> = shared.iter().map(|r| r.file.clone()).collect();
    names.push(initrd.clone());
    if secrets {
        names.push(secrets_name.clone());
        s.push_str(
            "# The node's private keys and tokens: whoever can fetch secrets.cpio.gz\n\
# owns the cluster. Serve it to this node only (TLS with client\n\
# authentication, or an isolated provisioning network).\n",
        );
    } else {
        s.push_str(
            "# The node's secrets (pxe/secrets.cpio.gz) are not loaded here (build\n\
# with --pxe-secrets to load them): the node gets them another way.\n",
        );
    }
    s.push_str(&kernel_line(
        "${base-url}/pxe/vmlinuz",
        &names,
        &cmdline(arch),
    ));
    for r in shared {
        s.push_str(&r.initrd_line(base));
    }
    s.push_str(&format!("initrd ${{base-url}}/pxe/{initrd} {initrd}\n"));
    if secrets {
        s.push_str(&format!(
            "initrd ${{base-url}}/pxe/{secrets_name} {secrets_name}\n"
        ));
    }
    s.push_str("boot\n");
    s
}

/// Whether the whole node's `boot.ipxe` in the output directory `dir` loads
/// its secrets (for `verify --rebuild`: it was built with `--pxe-secrets`).
pub fn loads_secrets(dir: &Path) -> bool {
    let lines = [Compression::Gzip, Compression::Zstd].map(|how| {
        let name = named(SECRETS, how);
        format!("initrd ${{base-url}}/pxe/{name} {name}")
    });
    fs::read_to_string(dir.join("pxe/boot.ipxe"))
        .is_ok_and(|s| s.lines().any(|l| lines.iter().any(|w| w == l)))
}

/// The file `gz` (a name ending `.gz`) for `how`: as it is for gzip,
/// ending `.zst` for zstd.
pub(crate) fn named(gz: &str, how: Compression) -> String {
    match gz.strip_suffix(".gz") {
        Some(stem) => format!("{stem}.{}", how.ext()),
        None => gz.to_string(),
    }
}

/// How `layers` are compressed (all alike, as one build wrote them).
fn compression_of(layers: &[BuiltLayer]) -> Compression {
    layers.first().map_or(Compression::Gzip, |l| l.compression)
}

#[cfg(test)]
mod tests;

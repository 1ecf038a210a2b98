//! One built layer as the root check sees it: takes the layer's `.tar.gz`
//! and gives every path it holds, in the order the layer writes them: a
//! directory, a symbolic link with its target, or a file with what it
//! needs when it is an ELF ([`super::elf`]) and its text when it is one of
//! the dynamic loader's configuration files. A file's bytes are read once,
//! as the layer streams by, and only an ELF's are kept (for the moment
//! they are parsed). A stored layer's index is kept in the layer store
//! beside it ([`kept`], [`keep`]): a base of hundreds of MB is read once,
//! not at every build.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::elf::{self, Needs};
use crate::fetch::archive::ArchiveError;
use crate::layer::rootfs::{self, Kind};
use crate::manifest::Arch;

/// The dynamic loader's configuration: `/etc/ld.so.conf` and the `*.conf`
/// files of `/etc/ld.so.conf.d/`.
pub(super) const LD_SO_CONF: &str = "etc/ld.so.conf";
const LD_SO_CONF_D: &str = "etc/ld.so.conf.d/";
/// The most bytes of a loader configuration file that are read.
const MAX_CONF: u64 = 64 << 10;

/// What a path of a layer is.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Node {
    Dir,
    Symlink(String),
    File {
        needs: Option<Needs>,
        /// The text of a loader configuration file.
        text: Option<String>,
    },
}

/// A built layer's paths, in layer order.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct LayerIndex {
    pub(super) entries: Vec<(String, Node)>,
}

/// Whether `path` is a loader configuration file.
pub(super) fn is_loader_conf(path: &str) -> bool {
    path == LD_SO_CONF || (path.starts_with(LD_SO_CONF_D) && path.ends_with(".conf"))
}

/// Indexes the built layer `name` at `path`, for `arch`.
pub(super) fn index(path: &Path, name: &str, arch: Arch) -> Result<LayerIndex, ArchiveError> {
    let read = |source| ArchiveError::Read {
        archive: format!("layer {name}"),
        path: path.to_path_buf(),
        source,
    };
    let tar = rootfs::decompress(File::open(path).map_err(read)?).map_err(read)?;
    let mut out = LayerIndex::default();
    rootfs::walk(tar, &format!("layer {name}"), path, |m, r| {
        let node = match &m.kind {
            Kind::Dir => Node::Dir,
            Kind::Symlink(target) => Node::Symlink(target.clone()),
            Kind::File | Kind::HardLink(_) => file(&m.path, r, arch)?,
            Kind::Device => return Ok(()),
        };
        out.entries.push((m.path.clone(), node));
        Ok(())
    })?;
    Ok(out)
}

/// A file: what it needs when it is an ELF, its text when it configures
/// the loader.
fn file(path: &str, r: &mut dyn Read, arch: Arch) -> io::Result<Node> {
    let mut head = Vec::with_capacity(4);
    r.take(4).read_to_end(&mut head)?;
    if elf::is_elf(&head) {
        let mut data = head;
        r.read_to_end(&mut data)?;
        return Ok(Node::File {
            needs: elf::needs(&data, arch),
            text: None,
        });
    }
    let text = if is_loader_conf(path) {
        let mut bytes = head;
        r.take(MAX_CONF).read_to_end(&mut bytes)?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        None
    };
    Ok(Node::File { needs: None, text })
}

/// The format of a kept index; a file of another is made again.
const KEPT_VERSION: u32 = 1;

/// A kept index: the layer's sha256 and arch it was made from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    version: u32,
    digest: String,
    arch: String,
    index: LayerIndex,
}

/// Where the index of the layer with sha256 `digest` for `arch` is kept,
/// below the layer store's directory `store`.
fn kept_path(store: &Path, digest: &str, arch: Arch) -> PathBuf {
    store
        .join("rootindex")
        .join(format!("{digest}.{}.json", arch.as_str()))
}

/// The index kept for the layer with sha256 `digest`, when there is one of
/// this format, made from that layer for `arch`.
pub(super) fn kept(store: &Path, digest: &str, arch: Arch) -> Option<LayerIndex> {
    let bytes = fs::read(kept_path(store, digest, arch)).ok()?;
    let k: Kept = serde_json::from_slice(&bytes).ok()?;
    (k.version == KEPT_VERSION && k.digest == digest && k.arch == arch.as_str()).then_some(k.index)
}

/// Keeps `index`, made from the layer with sha256 `digest` for `arch`
/// (best effort: an index not kept is made again next time).
pub(super) fn keep(store: &Path, digest: &str, arch: Arch, index: LayerIndex) -> LayerIndex {
    let k = Kept {
        version: KEPT_VERSION,
        digest: digest.to_string(),
        arch: arch.as_str().to_string(),
        index,
    };
    let path = kept_path(store, digest, arch);
    if let (Some(dir), Ok(json)) = (path.parent(), serde_json::to_vec(&k)) {
        let _ =
            fs::create_dir_all(dir).and_then(|()| crate::fsutil::write_atomic(&path, &json, 0o644));
    }
    k.index
}

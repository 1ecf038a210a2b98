//! One built layer as the root check sees it: takes the layer's `.tar.gz`
//! and gives every path it holds, in the order the layer writes them: a
//! directory, a symbolic link with its target, or a file with what it
//! needs when it is an ELF ([`super::elf`]) and its text when it is one of
//! the dynamic loader's configuration files. A file's bytes are read once,
//! as the layer streams by, and only an ELF's are kept (for the moment
//! they are parsed).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

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
#[derive(Debug)]
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
#[derive(Debug, Default)]
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

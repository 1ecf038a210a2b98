//! The two layers of the node OS. `NN-os` is the `[os]` base's root
//! filesystem archive repacked: every member in archive order (so the
//! bytes follow from the archive's bytes alone), with its own mode (setuid
//! bits included), numeric owner and mtime (none later than
//! SOURCE_DATE_EPOCH); a parent directory the archive lacks is made 0755
//! root:root; a hard link is materialised as a copy of its file (written
//! after the archive's members, from a second pass over it); device nodes
//! and fifos are skipped. `NN-os-packages` is the pinned `.deb`s unpacked
//! into that base as dpkg would, without their maintainer scripts
//! ([`super::packages`]). Also here: the kernels of a built `os` layer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::deb::DebError;
use super::listing::Origin;
use super::packages::Packages;
use super::resolve::Content;
use super::rootfs::{self, Kind, Member};
use super::write::{Emit, Resolved};
use crate::fetch::archive::ArchiveError;

/// Errors of making the OS layers.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("cannot unpack {path}: its control file lacks Package, Version or Architecture")]
    NoControl { path: PathBuf },
    #[error(
        "cannot unpack deb {package}: its control file says {field} `{found}`, but pins.toml pins `{pinned}`"
    )]
    Mismatch {
        package: String,
        field: &'static str,
        found: String,
        pinned: String,
    },
    #[error("cannot unpack deb {second}: it ships /{path}, which deb {first} ships too")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("cannot place /{path} of deb {package}: the base's symbolic links on its way loop")]
    Loop { package: String, path: String },
    #[error("cannot write /{path} into the layer")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub(super) fn write_err(path: &str) -> impl FnOnce(io::Error) -> OsError + use<> {
    let path = path.to_string();
    move |source| OsError::Write { path, source }
}

/// The tar of a cached root archive or `.deb` data, decompressed.
pub(super) fn open(blob: &Path) -> Result<Box<dyn Read + Send>, OsError> {
    let read = |source| OsError::Read {
        path: blob.to_path_buf(),
        source,
    };
    rootfs::decompress(std::fs::File::open(blob).map_err(read)?).map_err(read)
}

/// Writes the body of an `os` or `os-packages` layer (its directories
/// included: nothing else makes them).
pub(super) fn write(w: &mut Emit<'_>, resolved: Vec<Resolved<'_>>) -> Result<(), OsError> {
    let mut packages: Option<Packages> = None;
    for (e, content) in resolved {
        // what the base and each .deb bring is theirs (dpkg's records of a
        // .deb included)
        w.origin = Origin::of(&e.source);
        match content {
            Content::Root { blob, label } => write_base(w, &blob, &label)?,
            Content::DpkgStatus { .. } | Content::Deb { .. } | Content::Bytes(_) => {
                let p = match &mut packages {
                    Some(p) => p,
                    None => packages.insert(Packages::new(&base_of(&content))?),
                };
                p.write(w, e, content)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The base archive a `.deb`'s content is placed in (the dpkg status
/// entry's), when the content says.
fn base_of(c: &Content) -> Option<(PathBuf, String)> {
    match c {
        Content::DpkgStatus { blob, label }
        | Content::Deb {
            base: Some((blob, label)),
            ..
        } => Some((blob.clone(), label.clone())),
        _ => None,
    }
}

/// The paths written so far, to make each missing parent directory once.
#[derive(Default)]
pub(super) struct Made(pub(super) BTreeSet<String>);

impl Made {
    /// Makes every ancestor of `path` that neither `exists` nor was made.
    pub(super) fn parents(
        &mut self,
        w: &mut Emit<'_>,
        path: &str,
        exists: impl Fn(&str) -> bool,
    ) -> io::Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if !exists(dir) && self.0.insert(dir.to_string()) {
                w.member(dir, &generated(Kind::Dir, 0o755, 0), &mut io::empty())?;
            }
            at += i + 1;
        }
        Ok(())
    }
}

/// A member imgbuild makes, root's, at the layer's mtime.
pub(super) fn generated(kind: Kind, mode: u32, size: u64) -> Member {
    Member {
        path: String::new(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: u64::MAX,
        size,
    }
}

/// The base archive, every member in archive order, then its hard links.
fn write_base(w: &mut Emit<'_>, blob: &Path, label: &str) -> Result<(), OsError> {
    let mut made = Made::default();
    let mut links: Vec<HardLink> = Vec::new();
    rootfs::walk(open(blob)?, label, blob, |m, r| {
        made.parents(w, &m.path, |_| false)?;
        made.0.insert(m.path.clone());
        match &m.kind {
            Kind::HardLink(target) => links.push(HardLink {
                place: m.path.clone(),
                path: m.path.clone(),
                target: target.clone(),
            }),
            _ => w.member(&m.path, m, r)?,
        }
        Ok(())
    })?;
    materialise(w, || open(blob), label, blob, &links)
}

/// A hard link of an archive: where it goes, its own path in the archive,
/// and its target's.
pub(super) struct HardLink {
    pub(super) place: String,
    pub(super) path: String,
    pub(super) target: String,
}

/// Writes each hard link as a copy of its file (a link to a link is one to
/// the file), read in a second pass over the archive `reopen` gives.
pub(super) fn materialise(
    w: &mut Emit<'_>,
    reopen: impl FnOnce() -> Result<Box<dyn Read + Send>, OsError>,
    label: &str,
    blob: &Path,
    links: &[HardLink],
) -> Result<(), OsError> {
    if links.is_empty() {
        return Ok(());
    }
    let direct: BTreeMap<&str, &str> = links
        .iter()
        .map(|l| (l.path.as_str(), l.target.as_str()))
        .collect();
    let mut wanted: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for l in links {
        let mut t = l.target.as_str();
        for _ in 0..links.len() {
            match direct.get(t) {
                Some(next) => t = next,
                None => break,
            }
        }
        wanted.entry(t.to_string()).or_default().push(&l.place);
    }
    rootfs::walk(reopen()?, label, blob, |m, r| {
        let Some(paths) = wanted.get(&m.path) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)?;
        for path in paths {
            w.member(path, m, &mut bytes.as_slice())?;
        }
        Ok(())
    })?;
    Ok(())
}

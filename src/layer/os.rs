//! The two layers of the node OS. `NN-os` is the `[os]` base's root
//! filesystem archive repacked: every member in archive order (so the
//! bytes follow from the archive's bytes alone), with its own mode (setuid
//! bits included), numeric owner and mtime (none later than
//! SOURCE_DATE_EPOCH); a parent directory the archive lacks is made 0755
//! root:root; a hard link is materialised as a copy of its file (written
//! after the archive's members, from a second pass over it); device nodes
//! and fifos are skipped. `NN-os-packages` is the pinned `.deb`s unpacked
//! as dpkg would, without running their maintainer scripts: each data
//! member at its path in the base (through the base's symbolic links, so a
//! package's `/lib/...` lands in merged-usr's `/usr/lib/...` and never
//! replaces the link), a directory the base has left as it is, with
//! `/var/lib/dpkg/info/<package>.list` (and `.md5sums`), then the
//! sysusers.d files, then `/var/lib/dpkg/status`: the base's, with every
//! package `install ok installed`. Two packages shipping one file is an
//! error; a package's file replaces the base's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::deb::{self, DebError};
use super::dpkg::{self, Control};
use super::resolve::Content;
use super::rootfs::{self, Kind, Member, VisitError};
use super::write::{Emit, Resolved};
use crate::fetch::archive::ArchiveError;
use crate::manifest::DebPin;
use crate::plan::DPKG_STATUS;
use crate::rootpath;

/// Where a Debian root keeps its kernels: `boot/vmlinuz-<version>`.
#[cfg_attr(not(test), allow(dead_code, reason = "for the PXE output's kernel"))]
const KERNEL_PREFIX: &str = "boot/vmlinuz-";

/// The kernels of a built `os` layer (`file`, named `name` in errors):
/// every regular file `/boot/vmlinuz-*`, by path (without the leading `/`),
/// with its bytes, in the layer's order. (PXE boots the base's kernel.)
#[cfg_attr(not(test), allow(dead_code, reason = "for the PXE output's kernel"))]
pub(crate) fn kernels(file: &Path, name: &str) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let label = format!("layer {name}");
    let read = |source| ArchiveError::Read {
        archive: label.clone(),
        path: file.to_path_buf(),
        source,
    };
    let tar = rootfs::decompress(std::fs::File::open(file).map_err(read)?).map_err(read)?;
    let mut out = Vec::new();
    rootfs::walk(tar, &label, file, |m, r| {
        if m.kind == Kind::File && m.path.starts_with(KERNEL_PREFIX) {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes)?;
            out.push((m.path.clone(), bytes));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Where dpkg keeps a package's file list and md5sums.
const DPKG_INFO: &str = "var/lib/dpkg/info";

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
    #[error("{path}: its control file lacks Package, Version or Architecture")]
    NoControl { path: PathBuf },
    #[error(
        "deb {package}: the file's control says {field} `{found}`, but pins.toml pins `{pinned}`"
    )]
    Mismatch {
        package: String,
        field: &'static str,
        found: String,
        pinned: String,
    },
    #[error("both deb {first} and deb {second} ship /{path}")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("deb {package}: /{path} goes through symbolic links of the base that loop")]
    Loop { package: String, path: String },
    #[error("cannot write /{path} into the layer")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn write_err(path: &str) -> impl FnOnce(io::Error) -> OsError + use<> {
    let path = path.to_string();
    move |source| OsError::Write { path, source }
}

/// The tar of a cached root archive or `.deb` data, decompressed.
fn open(blob: &Path) -> Result<Box<dyn Read + Send>, OsError> {
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
struct Made(BTreeSet<String>);

impl Made {
    /// Makes every ancestor of `path` that neither `exists` nor was made.
    fn parents(
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
fn generated(kind: Kind, mode: u32, size: u64) -> Member {
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
struct HardLink {
    place: String,
    path: String,
    target: String,
}

/// Writes each hard link as a copy of its file (a link to a link is one to
/// the file), read in a second pass over the archive `reopen` gives.
fn materialise(
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

/// What the base holds that placing a package's files needs.
#[derive(Default)]
struct Base {
    /// Symbolic links by path: their targets.
    links: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
    /// `/var/lib/dpkg/status`, when the base has one.
    status: Option<String>,
}

/// Reads what [`Base`] keeps out of the base archive.
fn scan_base(blob: &Path, label: &str) -> Result<Base, OsError> {
    let mut base = Base::default();
    let status = DPKG_STATUS.trim_start_matches('/');
    rootfs::walk(open(blob)?, label, blob, |m, r| {
        match &m.kind {
            Kind::Dir => {
                base.dirs.insert(m.path.clone());
            }
            Kind::Symlink(t) => {
                base.links.insert(m.path.clone(), t.clone());
            }
            Kind::File if m.path == status => {
                let mut text = String::new();
                r.read_to_string(&mut text)?;
                base.status = Some(text);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(base)
}

/// The `os-packages` layer being written.
struct Packages {
    base: Base,
    /// Links and directories this layer made, by their place in the image.
    links: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
    /// Every other path a package wrote: the package.
    owners: BTreeMap<String, String>,
    installed: Vec<Control>,
}

/// One package's data being unpacked.
struct Unpack<'a> {
    package: &'a str,
    /// Its `.list` lines.
    list: Vec<String>,
    /// Its hard links.
    links: Vec<HardLink>,
}

impl Packages {
    fn new(base: &Option<(PathBuf, String)>) -> Result<Packages, OsError> {
        let base = match base {
            Some((blob, label)) => scan_base(blob, label)?,
            None => Base::default(),
        };
        Ok(Packages {
            base,
            links: BTreeMap::new(),
            dirs: BTreeSet::new(),
            owners: BTreeMap::new(),
            installed: Vec::new(),
        })
    }

    fn write(
        &mut self,
        w: &mut Emit<'_>,
        e: &crate::plan::Entry,
        c: Content,
    ) -> Result<(), OsError> {
        match c {
            Content::Deb { blob, pin, .. } => self.write_deb(w, &blob, &pin),
            Content::Bytes(bytes) => {
                let path = e.path.trim_start_matches('/');
                let mut m = generated(Kind::File, e.mode, bytes.len() as u64);
                (m.uid, m.gid) = (e.uid, e.gid);
                self.file(w, path, &m, &mut bytes.as_slice())
            }
            Content::DpkgStatus { .. } => {
                let text = dpkg::merge_status(
                    self.base.status.as_deref().unwrap_or_default(),
                    &self.installed,
                );
                let m = generated(Kind::File, e.mode, text.len() as u64);
                self.file(
                    w,
                    DPKG_STATUS.trim_start_matches('/'),
                    &m,
                    &mut text.as_bytes(),
                )
            }
            _ => Ok(()),
        }
    }

    /// Whether `path` (a place in the image) is a directory of the base or
    /// of this layer.
    fn is_dir(&self, path: &str) -> bool {
        self.base.dirs.contains(path) || self.dirs.contains(path)
    }

    /// A file imgbuild makes, its parents first.
    fn file(
        &mut self,
        w: &mut Emit<'_>,
        path: &str,
        m: &Member,
        data: &mut dyn Read,
    ) -> Result<(), OsError> {
        self.parents(w, path).map_err(write_err(path))?;
        w.member(path, m, data).map_err(write_err(path))
    }

    /// Makes every missing parent directory of the place `path`.
    fn parents(&mut self, w: &mut Emit<'_>, path: &str) -> io::Result<()> {
        let mut made = Made(std::mem::take(&mut self.dirs));
        let base = &self.base.dirs;
        let r = made.parents(w, path, |d| base.contains(d));
        self.dirs = made.0;
        r
    }

    /// Where a member of a package goes in the image: its parents through
    /// the image's links (the member itself too when it is a directory,
    /// which then merges with whatever directory is there).
    fn place(&self, package: &str, m: &Member) -> Result<String, OsError> {
        let link = |p: &str| {
            self.base
                .links
                .get(p)
                .or_else(|| self.links.get(p))
                .map(String::as_str)
        };
        rootpath::resolve(&m.path, m.kind == Kind::Dir, link).ok_or_else(|| OsError::Loop {
            package: package.to_string(),
            path: m.path.clone(),
        })
    }

    /// One `.deb`: checked against its pin, its data unpacked, its hard
    /// links materialised, dpkg's info files written.
    fn write_deb(&mut self, w: &mut Emit<'_>, blob: &Path, pin: &DebPin) -> Result<(), OsError> {
        let deb = deb::read(blob)?;
        let control = Control::parse(&deb.control).ok_or_else(|| OsError::NoControl {
            path: blob.to_path_buf(),
        })?;
        check_control(&control, pin)?;
        let label = format!("deb {} {}", pin.package, pin.version);
        let mut u = Unpack {
            package: &pin.package,
            list: vec![dpkg::list_line("")],
            links: Vec::new(),
        };
        rootfs::walk(deb.data()?, &label, blob, |m, r| {
            u.list.push(dpkg::list_line(&m.path));
            self.unpack(w, &mut u, m, r)
        })?;
        let links = std::mem::take(&mut u.links);
        materialise(w, || Ok(deb.data()?), &label, blob, &links)?;
        let info = control.info_name();
        let list = u.list.join("\n") + "\n";
        let info_file = |ext: &str, size| {
            (
                format!("{DPKG_INFO}/{info}.{ext}"),
                generated(Kind::File, 0o644, size),
            )
        };
        let (path, m) = info_file("list", list.len() as u64);
        self.file(w, &path, &m, &mut list.as_bytes())?;
        if let Some(sums) = &deb.md5sums {
            let (path, m) = info_file("md5sums", sums.len() as u64);
            self.file(w, &path, &m, &mut sums.as_slice())?;
        }
        self.installed.push(control);
        Ok(())
    }

    /// One data member of a package, at its place.
    fn unpack(
        &mut self,
        w: &mut Emit<'_>,
        u: &mut Unpack<'_>,
        m: &Member,
        r: &mut dyn Read,
    ) -> Result<(), VisitError> {
        let place = self.place(u.package, m)?;
        if m.kind == Kind::Dir {
            if !self.is_dir(&place) {
                self.parents(w, &place)?;
                w.member(&place, m, r)?;
                self.dirs.insert(place);
            }
            return Ok(());
        }
        if let Some(first) = self.owners.insert(place.clone(), u.package.to_string()) {
            return Err(Box::new(OsError::Conflict {
                path: place,
                first,
                second: u.package.to_string(),
            }));
        }
        self.parents(w, &place)?;
        match &m.kind {
            // materialised from its target, found by its path in the archive
            Kind::HardLink(target) => u.links.push(HardLink {
                place,
                path: m.path.clone(),
                target: target.clone(),
            }),
            Kind::Symlink(t) => {
                w.member(&place, m, r)?;
                self.links.insert(place, t.clone());
            }
            _ => w.member(&place, m, r)?,
        }
        Ok(())
    }
}

/// The package's control file names the pinned package, version and arch.
fn check_control(control: &Control, pin: &DebPin) -> Result<(), OsError> {
    let arch = pin.arch.map_or("all", |a| a.as_str());
    for (field, found, pinned) in [
        ("Package", &control.package, pin.package.as_str()),
        ("Version", &control.version, pin.version.as_str()),
        ("Architecture", &control.architecture, arch),
    ] {
        if found != pinned {
            return Err(OsError::Mismatch {
                package: pin.package.clone(),
                field,
                found: found.clone(),
                pinned: pinned.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_kernels_of_an_os_layer_are_its_boot_vmlinuz_files() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, t: tar::EntryType, body: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(t);
            h.set_size(body.len() as u64);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, body).unwrap(),
            }
        };
        add("boot/", tar::EntryType::Directory, b"", None);
        add(
            "boot/vmlinuz-6.1.0-test",
            tar::EntryType::Regular,
            b"kernel",
            None,
        );
        add(
            "boot/config-6.1.0-test",
            tar::EntryType::Regular,
            b"config",
            None,
        );
        add(
            "vmlinuz",
            tar::EntryType::Symlink,
            b"",
            Some("boot/vmlinuz-6.1.0-test"),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), gz.finish().unwrap()).unwrap();
        let k = kernels(f.path(), "00-os").unwrap();
        assert_eq!(
            k,
            [("boot/vmlinuz-6.1.0-test".to_string(), b"kernel".to_vec())]
        );
    }
}

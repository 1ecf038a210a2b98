//! The `os-packages` layer: takes the pinned `.deb`s and the base they go
//! on (read out of the built `os` layer, or the base archive) and unpacks
//! each as dpkg would, without running its maintainer scripts: each data
//! member at its path in the base (its parents followed through the base's
//! symbolic links, so a package's `/lib/...` lands in merged-usr's
//! `/usr/lib/...` and never replaces the link), a directory the base has
//! left as it is, then `/var/lib/dpkg/info/<package>.list` (and
//! `.md5sums`); then the sysusers.d files; then `/var/lib/dpkg/status`: the
//! base's, with every package `install ok installed`. Two packages shipping
//! one file is an error; a package's file replaces the base's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::deb;
use super::dpkg::{self, Control};
use super::os::{HardLink, Made, OsError, generated, materialise, open, write_err};
use super::resolve::Content;
use super::rootfs::{self, Kind, Member, VisitError};
use super::write::Emit;
use crate::manifest::DebPin;
use crate::plan::{DPKG_STATUS, Entry};
use crate::rootpath;

/// Where dpkg keeps a package's file list and md5sums.
const DPKG_INFO: &str = "var/lib/dpkg/info";

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
pub(super) struct Packages {
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
    pub(super) fn new(base: &Option<(PathBuf, String)>) -> Result<Packages, OsError> {
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

    pub(super) fn write(&mut self, w: &mut Emit<'_>, e: &Entry, c: Content) -> Result<(), OsError> {
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

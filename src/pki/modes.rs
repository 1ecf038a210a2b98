//! The state dir's modes and its lock: takes the state dir and finds every
//! directory (the dir itself included) and file that group or others may
//! use: directories must be 0700, files 0600 ([`loose`]); `init` sets them
//! back ([`tighten`]). [`lock`] takes the state dir's lock, held for the
//! whole PKI step, so that two runs never generate the PKI side by side.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{DIR_MODE, FILE_MODE, PkiError};
use crate::fsutil;

/// The lock file in the state dir.
const LOCK: &str = ".lock";

/// A file or directory of the state dir whose mode lets others in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Loose {
    /// Relative to the state dir; a directory ends in `/` (the dir itself
    /// is `./`).
    pub(super) rel: String,
    pub(super) mode: u32,
    /// What it must be: 0700 or 0600.
    pub(super) want: u32,
}

impl Loose {
    /// `mode 0644; must be 0600`
    pub(super) fn reason(&self) -> String {
        format!("mode {:04o}; must be {:04o}", self.mode, self.want)
    }
}

/// Every directory and file below `dir` (and `dir` itself) that group or
/// others may read, write or enter, in path order. Symlinks are not
/// followed. Nothing when `dir` does not exist.
pub(super) fn loose(dir: &Path) -> io::Result<Vec<Loose>> {
    let mut out = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => walk(dir, dir, &mut out)?,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(root: &Path, d: &Path, out: &mut Vec<Loose>) -> io::Result<()> {
    let meta = fs::symlink_metadata(d)?;
    let rel = match d.strip_prefix(root) {
        Ok(r) if !r.as_os_str().is_empty() => format!("{}/", r.display()),
        _ => "./".to_string(),
    };
    check(rel, meta.permissions().mode(), DIR_MODE, out);
    for e in fs::read_dir(d)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else if t.is_file() {
            let mode = e.metadata()?.permissions().mode();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap_or(&e.path())
                .display()
                .to_string();
            check(rel, mode, FILE_MODE, out);
        }
    }
    Ok(())
}

fn check(rel: String, mode: u32, want: u32, out: &mut Vec<Loose>) {
    let mode = mode & 0o7777;
    if mode & 0o077 != 0 {
        out.push(Loose { rel, mode, want });
    }
}

/// Sets every loose file and directory of `dir` back to its mode.
pub(super) fn tighten(dir: &Path, loose: &[Loose]) -> Result<(), PkiError> {
    for l in loose {
        let path = dir.join(l.rel.trim_end_matches('/'));
        fs::set_permissions(&path, fs::Permissions::from_mode(l.want))
            .map_err(|source| PkiError::Write { path, source })?;
    }
    Ok(())
}

/// Takes the state dir's lock (`<dir>/.lock`, 0600; the dir is made 0700
/// when it does not exist): the lock is held until the file is dropped.
/// Another run waits for it.
pub(super) fn lock(dir: &Path) -> Result<File, PkiError> {
    if !dir.is_dir() {
        fsutil::create_dir_all_mode(dir, DIR_MODE).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let path = dir.join(LOCK);
    let lock = |path: &Path| -> io::Result<File> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(path)?;
        f.lock()?;
        Ok(f)
    };
    lock(&path).map_err(|source| PkiError::Lock { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_modes_are_found_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        fsutil::create_dir_all_mode(&root.join("pki"), 0o700).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        fsutil::write_atomic(&root.join("pki/ca.key"), b"k", 0o644).unwrap();
        fsutil::write_atomic(&root.join("pki/ca.crt"), b"c", 0o600).unwrap();
        fs::set_permissions(root.join("pki"), fs::Permissions::from_mode(0o777)).unwrap();
        let found = loose(&root).unwrap();
        let rels: Vec<(&str, u32)> = found.iter().map(|l| (l.rel.as_str(), l.mode)).collect();
        assert_eq!(rels, [("pki/", 0o777), ("pki/ca.key", 0o644)]);
        assert_eq!(found[1].reason(), "mode 0644; must be 0600");
        tighten(&root, &found).unwrap();
        assert_eq!(loose(&root).unwrap(), []);
        assert_eq!(loose(&dir.path().join("absent")).unwrap(), []);
    }
}

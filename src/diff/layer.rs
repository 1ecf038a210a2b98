//! One layer file read as a listing: every entry of the gzip'd tar by path,
//! with its type, mode, owner, size, the sha256 of a regular file's content
//! and a link's target. The compressed bytes are hashed on the way and must
//! be the digest and size image.json records, so a listing is never of
//! some other file than the one the image names.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::DiffError;
use super::open::Dir;
use crate::output::LayerJson;

/// At most this many entries in one layer (the lab's largest holds a few
/// thousand; a base OS some tens of thousands).
const MAX_ENTRIES: usize = 1 << 20;

/// One entry of a layer, as diff reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `file`, `dir`, `symlink`, `hardlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Octal, four digits.
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// A regular file's content (left out for the secrets layer's files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// What differs between two entries of one path, by name.
    pub fn changes(&self, new: &Entry) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut check = |differs: bool, what| {
            if differs {
                v.push(what);
            }
        };
        check(self.kind != new.kind, "type");
        check(self.sha256 != new.sha256, "content");
        check(self.mode != new.mode, "mode");
        check(self.uid != new.uid || self.gid != new.gid, "owner");
        check(self.size != new.size, "size");
        check(self.target != new.target, "target");
        v
    }
}

/// A layer's entries by absolute path (`/etc/hostname`; a directory without
/// its trailing `/`).
pub type Listing = BTreeMap<String, Entry>;

/// Reads `l.file` below `dir` into a listing, checking its digest and size
/// against image.json's.
pub fn read(dir: &Dir, l: &LayerJson) -> Result<Listing, DiffError> {
    let path = dir.path.join(&l.file);
    let bad = |problem: String| DiffError::Layer {
        path: path.clone(),
        problem,
    };
    let file = dir.file(&l.file)?;
    let mut hashing = Hashing::new(file);
    let listing =
        entries(&mut hashing).map_err(|e| bad(format!("not a gzip'd or zstd'd tar: {e}")))?;
    // whatever follows the compressed stream is hashed too
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| DiffError::Io {
        path: path.clone(),
        source,
    })?;
    let (digest, size) = hashing.finish();
    if digest != l.digest || size != l.size {
        return Err(bad(format!(
            "it is {digest} ({size} bytes), but image.json names {} ({} bytes): \
             not the layer the image names (imgbuild verify says more)",
            l.digest, l.size
        )));
    }
    Ok(listing)
}

/// The entries of the tar inside the gzip or zstd stream `r`.
fn entries(r: &mut Hashing) -> io::Result<Listing> {
    let mut listing = Listing::new();
    let mut a = tar::Archive::new(crate::layer::rootfs::layer_reader(r)?);
    for e in a.entries()? {
        let mut e = e?;
        if listing.len() >= MAX_ENTRIES {
            return Err(io::Error::other(format!("more than {MAX_ENTRIES} entries")));
        }
        let name = e.path()?.to_string_lossy().into_owned();
        let entry = entry(&mut e)?;
        listing.insert(absolute(&name), entry);
    }
    // the compressed stream to its end, so its trailer is checked
    let mut gz = a.into_inner();
    io::copy(&mut gz, &mut io::sink())?;
    Ok(listing)
}

fn entry<R: Read>(e: &mut tar::Entry<R>) -> io::Result<Entry> {
    let h = e.header();
    let t = h.entry_type();
    let kind = if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_hard_link() {
        "hardlink"
    } else {
        "other"
    };
    let (mode, uid, gid, size) = (h.mode()? & 0o7777, h.uid()?, h.gid()?, h.size()?);
    let target = e
        .link_name()?
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|_| kind == "symlink" || kind == "hardlink");
    let sha256 = if kind == "file" {
        let mut h = Sha256::new();
        io::copy(e, &mut HashWriter(&mut h))?;
        Some(hex::encode(h.finalize()))
    } else {
        None
    };
    Ok(Entry {
        kind,
        mode: format!("{mode:04o}"),
        uid,
        gid,
        size,
        sha256,
        target,
    })
}

/// `etc/x`, `./etc/x/` -> `/etc/x`; the root itself is `/`.
fn absolute(name: &str) -> String {
    let trimmed = name.trim_start_matches("./").trim_matches('/');
    format!("/{trimmed}")
}

/// A reader that hashes and counts what passes through it.
struct Hashing {
    inner: File,
    sha: Sha256,
    size: u64,
}

impl Hashing {
    fn new(inner: File) -> Hashing {
        Hashing {
            inner,
            sha: Sha256::new(),
            size: 0,
        }
    }

    /// `sha256:<hex>` and the byte count.
    fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.sha.finalize())),
            self.size,
        )
    }
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_absolute_paths() {
        assert_eq!(absolute("etc/"), "/etc");
        assert_eq!(absolute("./etc/hostname"), "/etc/hostname");
        assert_eq!(absolute("./"), "/");
    }

    #[test]
    fn changes_are_named() {
        let a = Entry {
            kind: "file",
            mode: "0644".into(),
            uid: 0,
            gid: 0,
            size: 1,
            sha256: Some("a".into()),
            target: None,
        };
        let b = Entry {
            mode: "0600".into(),
            sha256: Some("b".into()),
            ..a.clone()
        };
        assert_eq!(a.changes(&b), vec!["content", "mode"]);
        assert!(a.changes(&a).is_empty());
    }
}

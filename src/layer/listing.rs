//! A layer's file listing: takes the digests of every regular file as the
//! layer is written (hashed beside the writer, [`crate::hashlane`]; a
//! [`CAPTURED`] file's by the [`Tee`] between its source and the streams,
//! which keeps its text) and produces [`Listing`]: each file's path, mode, owner, size, sha256 and
//! sha1 (SPDX wants one), and the input it came from where the plan or the
//! unpacking knows it (an artifact, a `.deb`, an image); and the text of the
//! few small files an SBOM reads from the image itself ([`CAPTURED`]:
//! dpkg's status, os-release). The layer store keeps it beside the layer
//! (`<key>.files.json`), so a reused layer is never read again for it.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hashlane::FileDigests;
use crate::plan::Source;

/// The files whose text a listing keeps (paths inside the layer).
pub const CAPTURED: [&str; 3] = [
    "var/lib/dpkg/status",
    "etc/os-release",
    "usr/lib/os-release",
];
/// A captured file larger than this is not kept (no dpkg status is).
const CAPTURE_MAX: u64 = 64 << 20;

/// Where a file's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Origin {
    /// A pinned artifact (a member of it, the download itself, or the base).
    Artifact(String),
    /// A pinned `.deb` (by package name).
    Deb(String),
    /// A pinned container image (by name), as an OCI archive.
    Image(String),
}

impl Origin {
    /// The origin of a planned entry's bytes, when they are a pinned input's.
    pub fn of(source: &Source) -> Option<Origin> {
        match source {
            Source::Member { artifact, .. }
            | Source::Download { artifact, .. }
            | Source::Archive { artifact, .. } => Some(Origin::Artifact(artifact.clone())),
            Source::Image { image, .. } => Some(Origin::Image(image.clone())),
            Source::Deb { package, .. } => Some(Origin::Deb(package.clone())),
            _ => None,
        }
    }
}

/// One regular file of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the image's root, no leading `/`.
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Every regular file of a layer, in the layer's order, and the text of
/// the [`CAPTURED`] files it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub files: Vec<FileRecord>,
    #[serde(default)]
    pub captured: BTreeMap<String, String>,
}

/// A reader that hashes what passes through it (and keeps it, for a
/// captured file).
pub(super) struct Tee<'r> {
    inner: &'r mut dyn Read,
    sha256: Sha256,
    sha1: aws_lc_rs::digest::Context,
    keep: Option<Vec<u8>>,
}

/// Whether the text of the file at `path` (relative) is kept.
pub(super) fn captured(path: &str, size: u64) -> bool {
    size <= CAPTURE_MAX && CAPTURED.contains(&path)
}

impl<'r> Tee<'r> {
    pub(super) fn new(inner: &'r mut dyn Read, path: &str, size: u64) -> Tee<'r> {
        let keep = captured(path, size).then(Vec::new);
        Tee {
            inner,
            sha256: Sha256::new(),
            sha1: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY),
            keep,
        }
    }

    /// The file's record, and its text when it is captured (and UTF-8).
    pub(super) fn finish(self, mut record: FileRecord) -> (FileRecord, Option<String>) {
        record.sha256 = hex::encode(self.sha256.finalize());
        record.sha1 = hex::encode(self.sha1.finish().as_ref());
        let text = self.keep.and_then(|k| String::from_utf8(k).ok());
        (record, text)
    }
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha1.update(&buf[..n]);
        if let Some(k) = &mut self.keep {
            k.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

impl Listing {
    /// Adds a file written to the layer: hashed by its [`Tee`], or with
    /// empty digests that [`Listing::fill`] fills in.
    pub(super) fn add(&mut self, (record, text): (FileRecord, Option<String>)) {
        if let Some(t) = text {
            self.captured.insert(record.path.clone(), t);
        }
        self.files.push(record);
    }

    /// Fills in, in order, the digests of the files added without them
    /// (hashed beside the writer).
    pub(super) fn fill(&mut self, digests: Vec<FileDigests>) -> Result<(), String> {
        let mut digests = digests.into_iter();
        for r in self.files.iter_mut().filter(|r| r.sha256.is_empty()) {
            let d = digests
                .next()
                .ok_or_else(|| format!("no digests were computed for {}", r.path))?;
            (r.sha256, r.sha1) = (d.sha256, d.sha1);
        }
        match digests.next() {
            None => Ok(()),
            Some(_) => Err("more digests were computed than files were written".into()),
        }
    }

    /// The listing's canonical JSON, as the store keeps it.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_passing_through_is_hashed_and_a_status_file_kept() {
        let mut listing = Listing::default();
        for path in ["usr/bin/x", "var/lib/dpkg/status"] {
            let mut bytes: &[u8] = b"abc";
            let mut tee = Tee::new(&mut bytes, path, 3);
            let mut out = Vec::new();
            tee.read_to_end(&mut out).unwrap();
            let record = FileRecord {
                path: path.into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 3,
                sha256: String::new(),
                sha1: String::new(),
                origin: None,
            };
            listing.add(tee.finish(record));
        }
        let f = &listing.files[0];
        // sha256sum and sha1sum of "abc"
        assert_eq!(
            f.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(f.sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            listing.captured.keys().collect::<Vec<_>>(),
            ["var/lib/dpkg/status"]
        );
    }
}

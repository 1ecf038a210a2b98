//! Reading a `.deb`: takes the cached file (an ar archive: `debian-binary`
//! `2.x`, then `control.tar[.gz|.xz|.zst]`, then `data.tar[.gz|.xz|.zst]`,
//! as dpkg-deb(1) writes them) and gives its control file, its md5sums and
//! its data tar, which [`super::rootfs`] walks under the same rules as the
//! base. Nothing of the package runs.

use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::rootfs::{self, Kind};
use crate::fetch::archive::ArchiveError;

/// The most bytes a `.deb`'s control archive may hold uncompressed.
const MAX_CONTROL: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a Debian package: {why}")]
    NotADeb { path: PathBuf, why: String },
    #[error("cannot read the data archive of {path}")]
    Data {
        path: PathBuf,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("cannot read the control archive of {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: ArchiveError,
    },
}

/// What the stock-image path needs of a `.deb` (see
/// `output::stock`): its control file and the systemd units it ships.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DebFacts {
    /// `control`, as the package has it.
    pub control: String,
    /// The names of the units below `/lib/systemd/system/` or
    /// `/usr/lib/systemd/system/`, sorted.
    pub units: Vec<String>,
}

/// Reads the control file and the units of the `.deb` at `path`.
pub fn facts(path: &Path) -> Result<DebFacts, DebError> {
    let deb = read(path)?;
    let mut units = Vec::new();
    let data = deb.data()?;
    rootfs::walk(data, "data.tar", path, |m, _| {
        let unit = ["lib/systemd/system/", "usr/lib/systemd/system/"]
            .iter()
            .find_map(|dir| m.path.strip_prefix(dir))
            .filter(|name| !name.is_empty() && !name.contains('/'));
        if let (Some(name), Kind::File | Kind::Symlink(_)) = (unit, &m.kind) {
            units.push(name.to_string());
        }
        Ok(())
    })
    .map_err(|source| DebError::Data {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    units.sort();
    units.dedup();
    Ok(DebFacts {
        control: deb.control,
        units,
    })
}

/// Bytes shared by every pass over a `.deb`'s data.
#[derive(Clone)]
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A `.deb`, read.
pub(super) struct Deb {
    pub(super) path: PathBuf,
    /// `control`, as the package has it.
    pub(super) control: String,
    /// `md5sums`, when the package has one.
    pub(super) md5sums: Option<Vec<u8>>,
    /// The data member, still compressed.
    data: Shared,
}

impl Deb {
    /// The data tar, decompressed (each call reads it from the start).
    pub(super) fn data(&self) -> Result<Box<dyn Read + Send>, DebError> {
        rootfs::decompress(Cursor::new(self.data.clone())).map_err(|source| DebError::Read {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads the `.deb` at `path`.
pub(super) fn read(path: &Path) -> Result<Deb, DebError> {
    let io = |source| DebError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not = |why: &str| DebError::NotADeb {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let mut ar = ar::Archive::new(std::fs::File::open(path).map_err(io)?);
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(io)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        members.push((name, bytes));
    }
    let mut it = members.into_iter();
    match it.next() {
        Some((name, v)) if name == "debian-binary" && v.starts_with(b"2.") => {}
        _ => return Err(not("its first member is not debian-binary 2.x")),
    }
    let (control_tar, data) = match (it.next(), it.next()) {
        (Some((c, control)), Some((d, data)))
            if c.starts_with("control.tar") && d.starts_with("data.tar") =>
        {
            (control, data)
        }
        _ => return Err(not("it lacks control.tar and data.tar after debian-binary")),
    };
    let (control, md5sums) = control_files(path, control_tar)?;
    let control = control.ok_or_else(|| not("its control archive has no control file"))?;
    Ok(Deb {
        path: path.to_path_buf(),
        control: String::from_utf8(control).map_err(|_| not("its control file is not UTF-8"))?,
        md5sums,
        data: Shared(Arc::new(data)),
    })
}

/// `control` and `md5sums` of a control archive.
type ControlFiles = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads `control` and `md5sums` out of the compressed control tar.
fn control_files(path: &Path, control_tar: Vec<u8>) -> Result<ControlFiles, DebError> {
    let err = |source| DebError::Control {
        path: path.to_path_buf(),
        source,
    };
    let tar = rootfs::decompress(Cursor::new(control_tar)).map_err(|source| DebError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files: ControlFiles = (None, None);
    rootfs::walk(tar.take(MAX_CONTROL), "control.tar", path, |m, r| {
        let slot = match m.path.as_str() {
            "control" => &mut files.0,
            "md5sums" => &mut files.1,
            _ => return Ok(()),
        };
        if m.kind == Kind::File {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes)?;
            *slot = Some(bytes);
        }
        Ok(())
    })
    .map_err(err)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tar of one regular file.
    fn tar_of(path: &str, body: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body).unwrap();
        b.into_inner().unwrap()
    }

    /// An ar archive of `members`, written to a temporary file.
    fn ar_of(members: &[(&str, Vec<u8>)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = ar::Builder::new(std::fs::File::create(f.path()).unwrap());
        for (name, bytes) in members {
            let h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            b.append(&h, bytes.as_slice()).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
        f
    }

    #[test]
    fn a_deb_gives_its_control_file_and_data() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_of(
            "./control",
            b"Package: hello\nVersion: 1\nArchitecture: all\n",
        ))
        .unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut tar_of("./usr/bin/hello", b"hi").as_slice(), &mut xz).unwrap();
        let f = ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", gz.finish().unwrap()),
            ("data.tar.xz", xz),
        ]);
        let deb = read(f.path()).unwrap();
        assert!(deb.control.starts_with("Package: hello\n"));
        assert!(deb.md5sums.is_none());
        let mut paths = Vec::new();
        rootfs::walk(deb.data().unwrap(), "t", f.path(), |m, _| {
            paths.push(m.path.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(paths, ["usr/bin/hello"]);
    }

    #[test]
    fn what_is_no_deb_is_named_so() {
        let wrong = ar_of(&[("data.tar", tar_of("a", b"")), ("control.tar", Vec::new())]);
        let e = read(wrong.path()).err().unwrap().to_string();
        assert!(
            e.contains("is not a Debian package: its first member is not debian-binary 2.x"),
            "{e}"
        );
        let short = ar_of(&[("debian-binary", b"2.0\n".to_vec())]);
        let e = read(short.path()).err().unwrap().to_string();
        assert!(e.contains("it lacks control.tar and data.tar"), "{e}");
        let plain = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(plain.path(), b"#!/bin/sh\n").unwrap();
        assert!(
            read(plain.path())
                .err()
                .unwrap()
                .to_string()
                .starts_with("cannot read")
        );
    }
}

//! Reading a manifest: only a regular file is read (not a symbolic link, a
//! FIFO, a device or a directory), opened without following a link and
//! without blocking, and at most [`MAX_MANIFEST_BYTES`] of it. What the
//! directory shows is what imgbuild reads, and a hostile path can neither
//! hang a run nor fill its memory.

use std::fs::{self, File, FileType, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ManifestError;

/// The largest manifest imgbuild reads: the shipped ones are a few KiB.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Why a path under the manifests directory is not read.
#[derive(Debug, thiserror::Error)]
pub enum FileRefusal {
    #[error(
        "it is a symbolic link (to {}): imgbuild reads manifests only from regular files, so that what it reads is what the directory shows; put the file itself there",
        target.display()
    )]
    Symlink { target: PathBuf },
    #[error("it is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is a {kind}, not a directory")]
    NotDirectory { kind: &'static str },
    #[error("it is larger than {} MiB, the most a manifest may be", MAX_MANIFEST_BYTES >> 20)]
    TooLarge,
}

/// A file type in words, for an error message.
pub(crate) fn kind_of(t: FileType) -> &'static str {
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

fn refused(path: &Path, reason: FileRefusal) -> ManifestError {
    ManifestError::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> ManifestError {
    ManifestError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn symlink(path: &Path) -> FileRefusal {
    FileRefusal::Symlink {
        target: fs::read_link(path).unwrap_or_default(),
    }
}

/// Refuses anything but a regular file of at most the limit.
fn check_regular(path: &Path, meta: &Metadata) -> Result<(), FileRefusal> {
    let t = meta.file_type();
    if t.is_symlink() {
        Err(symlink(path))
    } else if !t.is_file() {
        Err(FileRefusal::NotRegular { kind: kind_of(t) })
    } else if meta.len() > MAX_MANIFEST_BYTES {
        Err(FileRefusal::TooLarge)
    } else {
        Ok(())
    }
}

/// The bytes of the manifest at `path`, a regular file of at most
/// [`MAX_MANIFEST_BYTES`].
pub(crate) fn read_manifest(path: &Path) -> Result<Vec<u8>, ManifestError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    check_regular(path, &meta).map_err(|r| refused(path, r))?;
    // No link followed, no wait for a FIFO's writer: the path may have
    // changed since it was looked at, so what was opened is judged again.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(path, symlink(path)),
            _ => io_error(path, e),
        })?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    check_regular(path, &meta).map_err(|r| refused(path, r))?;
    read_bounded(path, file)
}

/// At most the limit from `file`; more is refused (the file grew).
fn read_bounded(path: &Path, file: File) -> Result<Vec<u8>, ManifestError> {
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(refused(path, FileRefusal::TooLarge));
    }
    Ok(bytes)
}

/// Refuses `path` when it is a symbolic link or anything but a directory; a
/// missing path is left for listing it to report.
pub(crate) fn check_directory(path: &Path) -> Result<(), ManifestError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let t = meta.file_type();
    if t.is_symlink() {
        Err(refused(path, symlink(path)))
    } else if !t.is_dir() {
        Err(refused(
            path,
            FileRefusal::NotDirectory { kind: kind_of(t) },
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.yaml");
        fs::write(&file, "name: x\n").unwrap();
        assert_eq!(read_manifest(&file).unwrap(), b"name: x\n");
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read_manifest(&link).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Refused {
                    reason: FileRefusal::Symlink { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        let err = read_manifest(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Refused {
                    reason: FileRefusal::NotRegular { kind: "directory" },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(check_directory(dir.path()).is_ok());
        assert!(check_directory(&link).is_err());
        assert!(check_directory(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn a_manifest_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pins.toml");
        let f = File::create(&file).unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        let err = read_manifest(&file).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Refused {
                    reason: FileRefusal::TooLarge,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

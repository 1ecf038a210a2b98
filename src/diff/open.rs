//! Opening what is inside a hostile output directory: every path is walked
//! component by component with `openat(O_NOFOLLOW)` from a directory
//! already open, so no symbolic link is followed (not even one in the
//! middle of a path), no FIFO is waited on, and what was opened is judged
//! by `fstat`, not by a name that may have changed meanwhile.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::DiffError;

/// A directory opened, with the path it is named by in messages.
#[derive(Debug)]
pub struct Dir {
    pub path: PathBuf,
    fd: File,
}

/// What one name in a directory is, read without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
    Missing,
}

impl Dir {
    /// The directory the user named (it may be reached through a link: the
    /// user chose it; what is inside is not followed).
    pub fn open_root(path: &Path) -> Result<Dir, DiffError> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| DiffError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Dir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// What `name` (one component) is, without following it.
    pub fn kind(&self, name: &str) -> Result<Kind, DiffError> {
        let c = cstring(&self.path, name)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd, a NUL-terminated name and a stat buffer
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &raw mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(Kind::Missing),
                _ => Err(self.io(name, e)),
            };
        }
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        })
    }

    /// The directory `rel` below this one (components joined by `/`).
    pub fn dir(&self, rel: &str) -> Result<Dir, DiffError> {
        let mut d = self.clone_fd()?;
        for c in components(&self.path, rel)? {
            let fd = d.openat(c, libc::O_DIRECTORY)?;
            d = Dir {
                path: d.path.join(c),
                fd,
            };
        }
        Ok(d)
    }

    /// The regular file `rel` below this one, opened for reading.
    pub fn file(&self, rel: &str) -> Result<File, DiffError> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let d = if parent.is_empty() {
            self.clone_fd()?
        } else {
            self.dir(parent)?
        };
        components(&d.path, name)?;
        let f = d.openat(name, libc::O_NONBLOCK)?;
        let meta = f.metadata().map_err(|e| d.io(name, e))?;
        if !meta.is_file() {
            return Err(DiffError::NotRegular {
                path: d.path.join(name),
            });
        }
        Ok(f)
    }

    /// The whole of the regular file `rel`, at most `limit` bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, DiffError> {
        let path = self.path.join(rel);
        let f = self.file(rel)?;
        let mut bytes = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| DiffError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(DiffError::TooLarge { path, limit });
        }
        Ok(bytes)
    }

    /// The names in this directory, sorted.
    pub fn names(&self) -> Result<Vec<String>, DiffError> {
        let io = |source| DiffError::Io {
            path: self.path.clone(),
            source,
        };
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let mut names = Vec::new();
        for e in std::fs::read_dir(proc).map_err(io)? {
            names.push(e.map_err(io)?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn clone_fd(&self) -> Result<Dir, DiffError> {
        let fd = self.fd.try_clone().map_err(|source| DiffError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(Dir {
            path: self.path.clone(),
            fd,
        })
    }

    /// `openat(name, O_RDONLY | O_NOFOLLOW | extra)`; a link is refused by name.
    fn openat(&self, name: &str, extra: libc::c_int) -> Result<File, DiffError> {
        let c = cstring(&self.path, name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra;
        // SAFETY: a valid fd and a NUL-terminated name; the result is checked
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match self.kind(name) {
                Ok(Kind::Symlink) => DiffError::Symlink {
                    path: self.path.join(name),
                },
                Ok(Kind::Other) | Ok(Kind::File) if extra & libc::O_DIRECTORY != 0 => {
                    DiffError::NotADirectory {
                        path: self.path.join(name),
                    }
                }
                _ => self.io(name, e),
            });
        }
        // SAFETY: fd is a file descriptor just opened and owned by no one else
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn io(&self, name: &str, source: io::Error) -> DiffError {
        DiffError::Io {
            path: self.path.join(name),
            source,
        }
    }
}

/// The components of a plain relative path: no `..`, `.`, empty part or
/// leading `/`.
fn components<'a>(base: &Path, rel: &'a str) -> Result<Vec<&'a str>, DiffError> {
    if crate::verify::is_inside(rel) {
        Ok(rel.split('/').collect())
    } else {
        Err(DiffError::Outside {
            dir: base.to_path_buf(),
            rel: rel.to_string(),
        })
    }
}

fn cstring(base: &Path, name: &str) -> Result<CString, DiffError> {
    CString::new(std::ffi::OsStr::new(name).as_bytes()).map_err(|_| DiffError::Outside {
        dir: base.to_path_buf(),
        rel: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_anywhere_in_a_path_and_fifos_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("layers")).unwrap();
        std::fs::write(d.path().join("layers/a"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("layers/p")).unwrap();
        let fifo = d.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let root = Dir::open_root(d.path()).unwrap();
        assert_eq!(root.read("layers/a", 10).unwrap(), b"x");
        assert!(matches!(
            root.read("layers/a", 0),
            Err(DiffError::TooLarge { .. })
        ));
        assert!(matches!(
            root.read("etc/passwd", 1 << 20),
            Err(DiffError::Symlink { .. })
        ));
        assert!(matches!(
            root.read("layers/p", 1 << 20),
            Err(DiffError::Symlink { .. })
        ));
        assert!(matches!(
            root.read("fifo", 10),
            Err(DiffError::NotRegular { .. })
        ));
        assert!(matches!(
            root.read("../x", 10),
            Err(DiffError::Outside { .. })
        ));
        assert_eq!(root.kind("etc").unwrap(), Kind::Symlink);
        assert_eq!(root.kind("nope").unwrap(), Kind::Missing);
        assert_eq!(root.names().unwrap(), vec!["etc", "fifo", "layers"]);
    }
}

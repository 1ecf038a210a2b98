//! The root a disk holds, as the layers make it: takes the node's built
//! layers in order (a later layer's path replaces an earlier one's and
//! whatever was below it, as extracting them in order would) and files of
//! imgbuild's own (`/init`), reads every layer once, and keeps each path's
//! kind and metadata with its content spooled into one scratch file. The
//! root filesystem ([`super::squash`]), the boot initramfs
//! ([`super::boot`]) and the boot loader are all taken from it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::fetch::archive::ArchiveError;
use crate::layer::BuiltLayer;
use crate::layer::rootfs::{self, Kind};

/// What a path of the root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Dir,
    /// Content at `offset` in the spool, `len` bytes.
    File {
        offset: u64,
        len: u64,
    },
    Symlink(String),
}

/// One path: its kind, permission bits (setuid, setgid, sticky
/// included), owner and mtime.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) item: Item,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: u64,
}

/// The union of the layers, every path relative to the root, in path order
/// (component by component: a directory before what is in it).
pub(crate) struct Tree {
    pub(crate) entries: BTreeMap<PathBuf, Entry>,
    spool: PathBuf,
    written: u64,
}

/// A file of imgbuild's own laid over the layers.
pub(crate) struct Own<'a> {
    pub(crate) path: &'a str,
    pub(crate) mode: u32,
    pub(crate) body: &'a [u8],
}

impl Tree {
    /// The union of `layers` and then `own`, spooled to `spool` (a scratch
    /// file the caller removes).
    pub(crate) fn read(
        layers: &[BuiltLayer],
        own: &[Own],
        mtime: u64,
        spool: &Path,
    ) -> Result<Tree, ArchiveError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArchiveError::Read {
                archive: "the disk's root".to_string(),
                path,
                source,
            }
        };
        let mut out = BufWriter::new(File::create(spool).map_err(read_err(spool))?);
        let mut tree = Tree {
            entries: BTreeMap::new(),
            spool: spool.to_path_buf(),
            written: 0,
        };
        for l in layers {
            tree.read_layer(l, &mut out)?;
        }
        for o in own {
            let item = tree
                .spool_file(&mut out, &mut &*o.body)
                .map_err(read_err(spool))?;
            let entry = Entry {
                item,
                mode: o.mode,
                uid: 0,
                gid: 0,
                mtime,
            };
            tree.lay(PathBuf::from(o.path), entry);
        }
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)
            .and_then(|f| f.sync_all())
            .map_err(read_err(spool))?;
        Ok(tree)
    }

    /// Lays the layer `l` over the tree, its files spooled to `out`.
    fn read_layer(&mut self, l: &BuiltLayer, out: &mut impl Write) -> Result<(), ArchiveError> {
        let read = |source| ArchiveError::Read {
            archive: format!("layer {}", l.name),
            path: l.file.clone(),
            source,
        };
        let label = format!("layer {}", l.name);
        let tar = rootfs::decompress(File::open(&l.file).map_err(read)?).map_err(read)?;
        rootfs::walk(tar, &label, &l.file, |m, r| {
            let item = match &m.kind {
                Kind::Dir => Item::Dir,
                Kind::Symlink(t) => Item::Symlink(t.clone()),
                Kind::File => self.spool_file(out, r)?,
                Kind::HardLink(to) => match self.entries.get(Path::new(to)) {
                    Some(Entry {
                        item: item @ Item::File { .. },
                        ..
                    }) => item.clone(),
                    _ => return Err(format!("a hard link to /{to}, which is no file").into()),
                },
                Kind::Device => return Ok(()),
            };
            let entry = Entry {
                item,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                mtime: m.mtime,
            };
            self.lay(PathBuf::from(&m.path), entry);
            Ok(())
        })?;
        Ok(())
    }

    /// Copies `r` to the end of the spool.
    fn spool_file(&mut self, out: &mut impl Write, r: &mut dyn Read) -> io::Result<Item> {
        let len = io::copy(r, out)?;
        let offset = self.written;
        self.written += len;
        Ok(Item::File { offset, len })
    }

    /// Lays `entry` at `path`: a directory over a directory takes the new
    /// metadata and keeps what is in it; anything else replaces the path
    /// and all below it.
    fn lay(&mut self, path: PathBuf, entry: Entry) {
        let was_dir = matches!(self.entries.get(&path), Some(e) if e.item == Item::Dir);
        if was_dir && entry.item != Item::Dir {
            let below: Vec<PathBuf> = self
                .entries
                .range(path.clone()..)
                .skip(1)
                .take_while(|(p, _)| p.starts_with(&path))
                .map(|(p, _)| p.clone())
                .collect();
            for p in below {
                self.entries.remove(&p);
            }
        }
        self.entries.insert(path, entry);
    }

    /// The content of the file at `path` (no link followed).
    pub(crate) fn content(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.entries.get(Path::new(path)) {
            Some(Entry {
                item: Item::File { offset, len },
                ..
            }) => {
                let mut body = Vec::new();
                self.reader(*offset, *len).read_to_end(&mut body)?;
                Ok(Some(body))
            }
            _ => Ok(None),
        }
    }

    /// A reader of `len` bytes at `offset` in the spool, opened on its
    /// first read and closed at its end.
    pub(crate) fn reader(&self, offset: u64, len: u64) -> Spooled {
        Spooled {
            spool: self.spool.clone(),
            offset,
            left: len,
            file: None,
        }
    }
}

/// A file's content in the spool (see [`Tree::reader`]).
pub(crate) struct Spooled {
    spool: PathBuf,
    offset: u64,
    left: u64,
    file: Option<File>,
}

impl Read for Spooled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.file = None;
            return Ok(0);
        }
        if self.file.is_none() {
            let mut f = File::open(&self.spool)?;
            f.seek(SeekFrom::Start(self.offset))?;
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(0);
        };
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends early", self.spool.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(item: Item) -> Entry {
        Entry {
            item,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    #[test]
    fn a_file_over_a_directory_replaces_what_was_below_it() {
        let mut t = Tree {
            entries: BTreeMap::new(),
            spool: PathBuf::new(),
            written: 0,
        };
        t.lay("a".into(), entry(Item::Dir));
        t.lay("a/b".into(), entry(Item::Dir));
        t.lay("a/b/c".into(), entry(Item::Symlink("x".into())));
        t.lay("a-b".into(), entry(Item::Dir));
        t.lay("a".into(), entry(Item::Dir));
        assert_eq!(
            t.entries.len(),
            4,
            "a directory over a directory keeps its content"
        );
        t.lay("a".into(), entry(Item::Symlink("y".into())));
        let left: Vec<_> = t.entries.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(left, ["a", "a-b"]);
    }
}

//! The content-addressed cache: takes bytes and the digest they must have,
//! produces verified blobs at `<cache>/blobs/<algo>/<hex>`. `tmp/` holds
//! bytes on their way in, `locks/` the per-artifact locks.
//!
//! Every write into `blobs/` goes through one [`BlobWriter`]: the bytes are
//! hashed while they are written to a file under `tmp/`, the digest is
//! compared with the expected one, the file is fsynced, then renamed into
//! `blobs/`. A mismatch deletes the file, so nothing unverified or torn ever
//! enters `blobs/`. HTTP downloads, OCI blob pulls and bundle imports all
//! use it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempPath;

use super::digest::{self, Hasher};
use crate::fsutil::BLOCK;
use crate::manifest::Checksum;

/// Why bytes did not enter the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Callers name the artifact: they turn this into their own error.
    #[error("{path} holds {algo}:{actual}, not the expected {algo}:{expected}; it was deleted")]
    Mismatch {
        path: PathBuf,
        algo: &'static str,
        expected: String,
        actual: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The content-addressed download cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `--cache`, else `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
    pub(crate) fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("imgbuild");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/imgbuild"),
            None => PathBuf::from(".imgbuild-cache"),
        }
    }

    pub(crate) fn open(root: &Path) -> Result<Cache, super::FetchError> {
        for sub in ["blobs/sha256", "blobs/sha512", "tmp", "locks"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn blob(&self, c: &Checksum) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest::algo(c))
            .join(digest::hex_of(c))
    }

    pub(crate) fn has(&self, c: &Checksum) -> bool {
        self.blob(c).is_file()
    }

    /// The size of a cached blob.
    pub(crate) fn size(&self, c: &Checksum) -> Result<u64, CacheError> {
        let blob = self.blob(c);
        Ok(fs::metadata(&blob).map_err(io_err("read", &blob))?.len())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A temporary path, unique to this process and call, that the caller
    /// removes (the layer stage spools OCI archives there).
    pub(crate) fn temp(&self, name: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{name}.{}.{n}.tmp", std::process::id()))
    }

    /// Waits for the lock of one artifact, held until the returned file is
    /// dropped: one run at a time downloads it; whoever waited finds it cached.
    pub(crate) async fn lock(&self, c: &Checksum) -> Result<File, CacheError> {
        let path =
            self.root
                .join("locks")
                .join(format!("{}-{}.lock", digest::algo(c), digest::hex_of(c)));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(lock),
                Err(fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
            }
        }
    }

    /// A writer of the blob `expected` into a fresh temp file (from the
    /// `tempfile` crate) under `tmp/`, deleted unless committed.
    pub(crate) fn writer(&self, expected: &Checksum) -> Result<BlobWriter, CacheError> {
        let dir = self.tmp_dir();
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!("{}-", digest::algo(expected)))
            .suffix(".tmp")
            // what File::create gives: 0666 less the umask, as blobs always had
            .permissions(fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(io_err("create a temporary file in", &dir))?
            .into_parts();
        Ok(BlobWriter::new(self, expected, file, Staged::Temp(path), 0))
    }

    /// The writer of a resumable download: the named partial file
    /// `tmp/<algo>-<hex>.part`, opened as it is. It is a known name, not a
    /// temp file, because resuming needs it: a transfer that broke off
    /// leaves it for the next attempt, or the next run (even one that was
    /// killed), to go on from with `Range`. Only a mismatch deletes it; the
    /// per-artifact [`lock`](Cache::lock) keeps two runs off it.
    pub(crate) fn partial(&self, expected: &Checksum) -> Result<BlobWriter, CacheError> {
        let path = self.tmp_dir().join(format!(
            "{}-{}.part",
            digest::algo(expected),
            digest::hex_of(expected)
        ));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("read", &path))?.len();
        Ok(BlobWriter::new(
            self,
            expected,
            file,
            Staged::Partial(path),
            len,
        ))
    }
}

/// Where a [`BlobWriter`]'s bytes wait.
enum Staged {
    /// A temp file: deleted when dropped uncommitted.
    Temp(TempPath),
    /// A resumable partial download: kept when dropped uncommitted.
    Partial(PathBuf),
}

impl Staged {
    fn path(&self) -> &Path {
        match self {
            Staged::Temp(p) => p,
            Staged::Partial(p) => p,
        }
    }
}

/// Bytes on their way into `blobs/`, hashed as they are written.
pub(crate) struct BlobWriter {
    file: File,
    staged: Staged,
    blob: PathBuf,
    expected: Checksum,
    hasher: Hasher,
    /// Bytes in the file, and how many of them the hasher has seen (fewer
    /// only while a partial file an earlier run left is not caught up).
    len: u64,
    hashed: u64,
}

impl BlobWriter {
    fn new(cache: &Cache, expected: &Checksum, file: File, staged: Staged, len: u64) -> Self {
        BlobWriter {
            file,
            staged,
            blob: cache.blob(expected),
            expected: expected.clone(),
            hasher: Hasher::for_checksum(expected),
            len,
            hashed: 0,
        }
    }

    /// The bytes in the file so far.
    pub(crate) fn written(&self) -> u64 {
        self.len
    }

    /// Empties the file: the next byte written is the first.
    pub(crate) fn restart(&mut self) -> Result<(), CacheError> {
        let path = self.staged.path();
        self.file.set_len(0).map_err(io_err("truncate", path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("write", path))?;
        self.hasher = Hasher::for_checksum(&self.expected);
        self.len = 0;
        self.hashed = 0;
        Ok(())
    }

    /// Hashes what a partial file already holds, and goes to its end.
    fn catch_up(&mut self) -> Result<(), CacheError> {
        if self.hashed == self.len {
            return Ok(());
        }
        let path = self.staged.path();
        self.hasher = Hasher::for_checksum(&self.expected);
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("read", path))?;
        let mut buf = vec![0u8; BLOCK];
        let mut left = self.len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self
                .file
                .read(&mut buf[..want])
                .map_err(io_err("read", path))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            left -= n as u64;
        }
        // a file shorter than it was: what is there counts
        self.len -= left;
        self.hashed = self.len;
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(io_err("read", path))?;
        Ok(())
    }

    /// Appends `bytes`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.catch_up()?;
        self.file
            .write_all(bytes)
            .map_err(io_err("write", self.staged.path()))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.hashed = self.len;
        Ok(())
    }

    /// Appends everything `src` (read from `src_path`) holds.
    pub(crate) fn fill_from(
        &mut self,
        src: &mut dyn Read,
        src_path: &Path,
    ) -> Result<(), CacheError> {
        let mut buf = vec![0u8; BLOCK];
        loop {
            let n = src.read(&mut buf).map_err(io_err("read", src_path))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
        }
    }

    /// Verifies the digest, then fsyncs and renames the file into `blobs/`.
    /// On a mismatch the file is deleted and the cache stays as it was.
    pub(crate) fn commit(mut self) -> Result<PathBuf, CacheError> {
        self.catch_up()?;
        let BlobWriter {
            file,
            staged,
            blob,
            expected,
            hasher,
            ..
        } = self;
        let actual = hasher.hex();
        if actual != digest::hex_of(&expected) {
            drop(file);
            let path = staged.path().to_path_buf();
            if let Staged::Partial(p) = &staged {
                let _ = fs::remove_file(p);
            }
            // a temp file is deleted when `staged` drops
            return Err(CacheError::Mismatch {
                path,
                algo: digest::algo(&expected),
                expected: digest::hex_of(&expected).to_string(),
                actual,
            });
        }
        file.sync_all().map_err(io_err("write", staged.path()))?;
        drop(file);
        match staged {
            Staged::Temp(p) => p
                .persist(&blob)
                .map_err(|e| io_err("write", &blob)(e.error))?,
            Staged::Partial(p) => fs::rename(&p, &blob).map_err(io_err("write", &blob))?,
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(bytes: &[u8]) -> Checksum {
        Checksum::Sha256(hex::encode(Sha256::digest(bytes)))
    }

    fn tmp_files(cache: &Cache) -> usize {
        fs::read_dir(cache.tmp_dir()).unwrap().count()
    }

    #[test]
    fn a_verified_write_enters_the_cache_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let c = sha(b"hello");
        let mut w = cache.writer(&c).unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        let blob = w.commit().unwrap();
        assert_eq!(blob, cache.blob(&c));
        assert_eq!(fs::read(&blob).unwrap(), b"hello");
        assert_eq!(tmp_files(&cache), 0);
    }

    #[test]
    fn a_mismatch_leaves_the_cache_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let c = sha(b"hello");
        let mut w = cache.writer(&c).unwrap();
        w.write(b"jello").unwrap();
        match w.commit() {
            Err(CacheError::Mismatch { actual, .. }) => {
                assert_eq!(Checksum::Sha256(actual), sha(b"jello"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!cache.has(&c));
        assert_eq!(tmp_files(&cache), 0);
        // a partial file with the wrong bytes is deleted too
        let mut p = cache.partial(&c).unwrap();
        p.write(b"jello").unwrap();
        assert!(p.commit().is_err());
        assert!(!cache.has(&c));
        assert_eq!(tmp_files(&cache), 0);
    }

    #[test]
    fn a_partial_file_is_kept_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let c = sha(b"hello world");
        let mut p = cache.partial(&c).unwrap();
        p.write(b"hello").unwrap();
        drop(p);
        assert_eq!(tmp_files(&cache), 1);
        let mut p = cache.partial(&c).unwrap();
        assert_eq!(p.written(), 5);
        p.write(b" world").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(cache.blob(&c)).unwrap(), b"hello world");
        assert_eq!(tmp_files(&cache), 0);
        // restarted, the old bytes are gone
        let c = sha(b"abc");
        let mut p = cache.partial(&c).unwrap();
        p.write(b"xyz").unwrap();
        p.restart().unwrap();
        p.write(b"abc").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(cache.blob(&c)).unwrap(), b"abc");
    }
}

//! Small file-system helpers every stage uses: atomic writes (temp file in the
//! same directory, fsync, rename) with an explicit mode, private dirs, and
//! telling the leftovers of a killed run (named after its pid) from those of
//! a live one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `dir` and its missing parents with `mode` (the parents too).
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// The block size of big reads and writes.
pub const BLOCK: usize = 1 << 20;

/// sha256 of a file, lowercase hex, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A writer that keeps the sha256 of the bytes written through it, so that
/// a big output is hashed while it is written, not read again.
pub struct Sha256Writer<W> {
    inner: W,
    sha: sha2::Sha256,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Sha256Writer<W> {
        Sha256Writer {
            inner,
            sha: sha2::Digest::new(),
        }
    }

    /// Appends the file at `path`, read in blocks of [`BLOCK`] (as large as
    /// the 1 MiB write buffers, which then pass it through uncopied).
    pub fn append_file(&mut self, path: &Path) -> io::Result<u64> {
        let mut f = File::open(path)?;
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0;
        loop {
            let n = io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            self.write_all(&buf[..n])?;
            total += n as u64;
        }
    }

    /// The writer and the lowercase hex sha256 of everything written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(sha2::Digest::finalize(self.sha)))
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.sha, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Creates (truncates) `path` with mode 0600, whatever the umask.
/// The lock file at `path`, opened for `flock` (made when missing, never
/// truncated): the one way the stores open the lock of an entry.
pub(crate) fn open_lock_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

pub fn create_private(path: &Path) -> io::Result<File> {
    create_mode(path, 0o600)
}

/// Creates (truncates) `path` with exactly `mode`, whatever the umask.
pub fn create_mode(path: &Path, mode: u32) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a torn one. The file gets exactly `mode`, whatever the umask.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    stage(path, bytes, mode)?.commit()
}

/// A file written and fsynced beside its destination (`.<name>.tmp.<pid>.<n>`),
/// put in place by [`Staged::commit`]; removed when dropped uncommitted. Two
/// files staged first and committed one after the other are both in place
/// within microseconds.
pub struct Staged {
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
    committed: bool,
}

/// Stages `bytes` for `path`, with exactly `mode`, whatever the umask.
pub fn stage(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
    stage_with(path, bytes, mode, true)
}

/// [`stage`], the file fsynced only when `sync`: many files staged at once
/// are made durable by one [`sync_fs`] before any is committed.
pub fn stage_with(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<Staged> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // unique to this process and call: two threads may write the same path
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let staged = Staged {
        tmp: dir.join(format!(".{name}.tmp.{}.{call}", std::process::id())),
        dest: path.to_path_buf(),
        committed: false,
    };
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&staged.tmp)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(staged)
}

/// Writes `bytes` to a new `path` with exactly `mode`, not fsynced: for a
/// file of a scratch directory that is made durable whole ([`sync_fs`])
/// and renamed into place as one.
pub fn write_unsynced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    create_mode(path, mode)?.write_all(bytes)
}

/// A file written from its start whose pages are sent to the disk as it
/// grows (sync_file_range(2) with `SYNC_FILE_RANGE_WRITE`, every
/// [`WriteBehind::STEP`] bytes): a big output's writeback overlaps the
/// work that follows it instead of all waiting in the one sync that makes
/// it durable (which it does not replace).
pub struct WriteBehind {
    file: File,
    written: u64,
    sent: u64,
}

impl WriteBehind {
    /// Bytes written between two writebacks started.
    pub const STEP: u64 = 8 << 20;

    pub fn new(file: File) -> WriteBehind {
        WriteBehind {
            file,
            written: 0,
            sent: 0,
        }
    }

    /// Starts writing back what was written since the last call.
    fn send(&mut self) {
        use std::os::fd::AsRawFd;
        let (from, len) = (self.sent, self.written - self.sent);
        self.sent = self.written;
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is `self.file`'s, open for the call. A
        // failure only means the pages wait for the sync that follows.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.sent >= Self::STEP {
            self.send();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes back every dirty page of the filesystem that holds `dir`
/// (syncfs(2)): what was staged there is durable once it returns.
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: syncfs takes an open descriptor, which `d` keeps open
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Staged {
    /// Renames the staged file into place.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The pid in the name of a [`write_atomic`] temporary,
/// `.<name>.tmp.<pid>.<n>`.
pub(crate) fn atomic_temp_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, n) = tail.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether the process `pid` runs on this machine (`/proc/<pid>` exists).
/// Without a `/proc`, every process counts as running.
pub(crate) fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Whether a leftover named after the process `pid`, found as a run starts
/// (before it made anything of its own), was left by a process that is
/// gone: one that no longer runs, or an earlier process that had this
/// run's pid.
pub(crate) fn left_by_dead_process(pid: u32) -> bool {
    pid == std::process::id() || !process_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_behind_holds_every_byte_across_its_writebacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..(2 * WriteBehind::STEP + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut w = io::BufWriter::new(WriteBehind::new(File::create(&path).unwrap()));
        // odd-sized writes, so writebacks start mid-write
        for chunk in data.chunks(1_000_003) {
            w.write_all(chunk).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn atomic_write_sets_the_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"secret", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"again", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"again");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn the_pid_of_an_atomic_temporary() {
        assert_eq!(atomic_temp_pid(".abc.json.tmp.4242.7"), Some(4242));
        assert_eq!(atomic_temp_pid(".abc.json"), None);
        assert_eq!(atomic_temp_pid("abc.json.tmp.4242.7"), None);
        assert_eq!(atomic_temp_pid(".abc.tmp.x.7"), None);
    }

    #[test]
    fn this_process_is_alive_and_its_own_leftovers_are_not() {
        assert!(process_alive(std::process::id()));
        // pid_max is at most 2^22 on Linux
        assert!(!process_alive(u32::MAX - 1));
        assert!(left_by_dead_process(std::process::id()));
    }
}

//! The layer store (`<cache>/layers/`): takes built layers and keeps them by
//! key, `<key>.tar.gz` (and `.cpio.gz`) with a `<key>.json` record; finds
//! them again for every node that has the same layer; keeps the sha256
//! states of their PXE segments for the overlays.
//!
//! A layer counts as stored once its `.json` record exists, and the record is
//! written only after the layer's bytes are on disk: a layer built by this
//! process is fsynced in the background while the build goes on
//! ([`Store::commit`] waits for it), and found meanwhile in memory by the
//! other nodes that have it.
//!
//! Every file of the store is read-only (0444): output directories
//! hard-link to the layers, and must not write through to the store by
//! accident. A stored layer is checked against its record before this run
//! first reuses it: its size, and its stamp (device, inode, size, mtime,
//! taken once its bytes were on disk); a file whose stamp changed is hashed
//! again, once per run. One that no longer matches is reported, removed and
//! built again, never reused. Files a killed run left (temporaries named
//! after its pid) are removed when the store is opened.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::write::STORED_MODE;
use super::{BuiltLayer, LayerError, Listing, io_err};
use crate::fetch::Cache;
use crate::fsutil;
use crate::pgzip::Compression;
use crate::report::Reporter;

/// Where built layers live, by key.
#[derive(Debug)]
pub struct Store {
    pub(crate) dir: PathBuf,
    /// The cache the store is in: where the pinned `.deb`s are.
    pub(crate) cache: Cache,
    reporter: Reporter,
    /// Layers built or checked by this run, by key: a shared layer (OS,
    /// base, role) for the whole run, a node's own until its record is on
    /// disk. So memory does not grow with the number of nodes.
    fresh: Arc<Mutex<BTreeMap<String, BuiltLayer>>>,
    syncing: Mutex<Syncing>,
}

/// The threads that put this run's layers on disk and record them.
#[derive(Debug, Default)]
struct Syncing {
    running: Vec<JoinHandle<Result<(), LayerError>>>,
    /// The first failure among the threads already joined.
    failed: Option<LayerError>,
}

impl Syncing {
    /// Joins the threads that are done (every thread when `all`, waiting
    /// for each), keeping the first failure. A thread that is done but not
    /// joined keeps its stack: one per node layer would grow with the fleet.
    fn reap(&mut self, dir: &Path, all: bool) {
        let (done, running) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|h| all || h.is_finished());
        self.running = running;
        for h in done {
            let r = h.join().unwrap_or_else(|_| {
                Err(io_err("", "sync the layers in", dir)(io::Error::other(
                    "the thread syncing a layer panicked",
                )))
            });
            if let (Err(e), None) = (r, &self.failed) {
                self.failed = Some(e);
            }
        }
    }
}

/// Where one layer's files go: its `.tar.gz` and its PXE segment.
pub(super) struct Files {
    pub(super) tar: PathBuf,
    pub(super) segment: PathBuf,
    /// Its listing (`<key>.files.json`; none for the secrets layer).
    pub(super) listing: PathBuf,
}

impl Files {
    /// The files of a layer that never enters the store (the secrets layer):
    /// `<dir>/<name>.tar.gz`, its segment hidden beside it.
    pub(super) fn private(dir: &Path, name: &str, how: Compression) -> Files {
        let ext = how.ext();
        Files {
            tar: dir.join(format!("{name}.tar.{ext}")),
            segment: dir.join(format!(".{name}.cpio.{ext}")),
            listing: PathBuf::new(),
        }
    }

    /// Where the layer `key` is written before it is renamed into `dir`:
    /// `.<key>.<pid>.tar.tmp` and `.<key>.<pid>.cpio.tmp`.
    pub(super) fn temporary(dir: &Path, key: &str) -> Files {
        let pid = std::process::id();
        Files {
            tar: dir.join(format!(".{key}.{pid}.tar.tmp")),
            segment: dir.join(format!(".{key}.{pid}.cpio.tmp")),
            listing: PathBuf::new(),
        }
    }
}

/// The key and pid of a [`Files::temporary`] name.
fn temporary_key_pid(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let rest = rest
        .strip_suffix(".tar.tmp")
        .or_else(|| rest.strip_suffix(".cpio.tmp"))?;
    let (key, pid) = rest.rsplit_once('.')?;
    Some((key, pid.parse().ok()?))
}

/// What a stored file was when its record was written: once the bytes were
/// on disk. Any write changes the mtime (a chmod or a hard link does not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A layer's record, `<key>.json`: the layer and the stamps of its files.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    layer: BuiltLayer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tar_stamp: Option<Stamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment_stamp: Option<Stamp>,
}

/// What the check of one stored file found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// It matches its record; `hashed` when its stamp had changed and it
    /// was hashed again (its stamp is then taken anew).
    Good {
        hashed: bool,
    },
    Missing,
    /// It does not match its record: why.
    Damaged(String),
}

/// Checks the stored file `path` against its record: its size, then its
/// stamp, and when the stamp changed, its sha256.
pub(crate) fn check_file(path: &Path, size: u64, digest: &str, stamp: Option<&Stamp>) -> Found {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Found::Damaged("it is not a regular file".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Found::Missing,
        Err(e) => return Found::Damaged(format!("cannot read it: {e}")),
    };
    if meta.len() != size {
        return Found::Damaged(format!("{} bytes, its record says {size}", meta.len()));
    }
    let read_only = meta.permissions().mode() & 0o777 == STORED_MODE;
    if read_only && stamp == Some(&Stamp::of(&meta)) {
        return Found::Good { hashed: false };
    }
    match fsutil::sha256_file(path) {
        Ok(d) if d == digest => Found::Good { hashed: true },
        Ok(d) => Found::Damaged(format!("sha256 {d}, its record says {digest}")),
        Err(e) => Found::Damaged(format!("cannot read it: {e}")),
    }
}

/// What reading a stored listing found.
enum Listed {
    Good(Listing),
    /// None, or a record from before listings (the layer is built again).
    Missing,
    Damaged(String),
}

/// The stored listing `path`, checked against the sha256 its record keeps.
fn read_listing(path: &Path, digest: Option<&str>) -> Listed {
    let Some(digest) = digest else {
        return Listed::Missing;
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Listed::Missing,
        Err(e) => return Listed::Damaged(format!("cannot read it: {e}")),
    };
    let found = hex::encode(Sha256::digest(&bytes));
    if found != digest {
        return Listed::Damaged(format!("sha256 {found}, its record says {digest}"));
    }
    match serde_json::from_slice(&bytes) {
        Ok(listing) => Listed::Good(listing),
        Err(e) => Listed::Damaged(format!("not a listing: {e}")),
    }
}

/// The stamp of the stored file `path`, made read-only first.
pub(crate) fn restamp(path: &Path) -> io::Result<Stamp> {
    fs::set_permissions(path, fs::Permissions::from_mode(STORED_MODE))?;
    Ok(Stamp::of(&fs::metadata(path)?))
}

impl Store {
    /// Opens `<cache>/layers/` (creating it), and removes what killed runs
    /// left there.
    pub(crate) fn open(cache: &Cache, reporter: Reporter) -> io::Result<Store> {
        let dir = cache.root.join("layers");
        fs::create_dir_all(&dir)?;
        let store = Store {
            dir,
            cache: cache.clone(),
            reporter,
            fresh: Arc::new(Mutex::new(BTreeMap::new())),
            syncing: Mutex::new(Syncing::default()),
        };
        let removed = store.clean_debris() + clean_spools(&cache.root.join("tmp"));
        if removed > 0 {
            reporter.info(&format!(
                "removed {removed} temporary file{} that killed runs left in {}",
                if removed == 1 { "" } else { "s" },
                cache.root.display()
            ));
        }
        Ok(store)
    }

    /// Removes the temporaries of runs that are gone: a layer on its way in
    /// (when its key is not locked) and a record on its way in. The count.
    fn clean_debris(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dead = match temporary_key_pid(&name) {
                Some((key, pid)) => fsutil::left_by_dead_process(pid) && self.unlocked(key),
                None => fsutil::atomic_temp_pid(&name).is_some_and(fsutil::left_by_dead_process),
            };
            if dead && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Whether nobody holds the lock of `key` now.
    fn unlocked(&self, key: &str) -> bool {
        File::open(self.dir.join(format!("{key}.lock")))
            .map(|f| f.try_lock().is_ok())
            .unwrap_or(true)
    }

    /// The files of the stored layer `key`.
    pub(super) fn files(&self, key: &str, how: Compression) -> Files {
        let ext = how.ext();
        Files {
            tar: self.dir.join(format!("{key}.tar.{ext}")),
            segment: self.dir.join(format!("{key}.cpio.{ext}")),
            listing: self.dir.join(format!("{key}.files.json")),
        }
    }

    /// The record of the stored layer `key`.
    pub(super) fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Takes the lock of `key`: one builder per key, across threads and
    /// processes; the others wait, then find the layer built.
    pub(super) fn lock(&self, key: &str, layer: &str) -> Result<File, LayerError> {
        let (f, path) = self.lock_file(key, layer)?;
        f.lock().map_err(io_err(layer, "lock", &path))?;
        Ok(f)
    }

    /// The lock file of `key`, opened (made when missing), and its path.
    fn lock_file(&self, key: &str, layer: &str) -> Result<(File, PathBuf), LayerError> {
        let path = self.dir.join(format!("{key}.lock"));
        let f = fsutil::open_lock_file(&path).map_err(io_err(layer, "open", &path))?;
        Ok((f, path))
    }

    /// The lock of `key` when no other builder holds it, else `None`.
    pub(super) fn try_lock(&self, key: &str, layer: &str) -> Result<Option<File>, LayerError> {
        let (f, path) = self.lock_file(key, layer)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err(layer, "lock", &path)(e)),
        }
    }

    /// The layer `key` under the name `name`, when this process built or
    /// checked it, or it is stored and matches its record (with its PXE
    /// segment when `cpio`). A stored layer that does not match is reported
    /// and removed: the caller builds it again. Called with `key` locked.
    pub(super) fn find(&self, key: &str, name: &str, cpio: bool) -> Option<BuiltLayer> {
        if let Some(mut built) = self.fresh(key) {
            built.name = name.to_string();
            return Some(built);
        }
        let text = fs::read_to_string(self.record_path(key)).ok()?;
        let mut record = serde_json::from_str::<Record>(&text).ok()?;
        let l = &record.layer;
        let files = self.files(key, l.compression);
        let tar = check_file(&files.tar, l.size, &l.digest, record.tar_stamp.as_ref());
        let segment = match (cpio, l.segment_size, &l.segment_digest) {
            (false, _, _) => Found::Good { hashed: false },
            (true, Some(size), Some(d)) => {
                check_file(&files.segment, size, d, record.segment_stamp.as_ref())
            }
            (true, _, _) => Found::Missing,
        };
        let hashed = match (tar, segment) {
            (Found::Damaged(why), _) => return self.discard(key, name, &files, &files.tar, &why),
            (_, Found::Damaged(why)) => {
                return self.discard(key, name, &files, &files.segment, &why);
            }
            (Found::Missing, _) | (_, Found::Missing) => return None,
            (Found::Good { hashed: t }, Found::Good { hashed: s }) => t || s,
        };
        let listing = match read_listing(&files.listing, l.files_digest.as_deref()) {
            Listed::Good(listing) => listing,
            Listed::Missing => return None,
            Listed::Damaged(why) => {
                return self.discard(key, name, &files, &files.listing, &why);
            }
        };
        if hashed {
            // best effort: without a new stamp, the next run hashes again
            let _ = self.restamp(key, &mut record, cpio);
        }
        let mut built = record.layer;
        built.files = Some(Arc::new(listing));
        built.file = files.tar;
        built.segment = cpio.then_some(files.segment);
        if built.kind.is_shared() {
            self.remember(&built);
        }
        built.name = name.to_string();
        Some(built)
    }

    /// Reports the stored file `path` of `key` that does not match its
    /// record, and removes the layer's files: it is built again.
    fn discard(
        &self,
        key: &str,
        name: &str,
        files: &Files,
        path: &Path,
        why: &str,
    ) -> Option<BuiltLayer> {
        self.reporter.warn(&format!(
            "warning: the layer store's {} does not match its record ({why}); building layer {name} again",
            path.display()
        ));
        for f in [
            &files.tar,
            &files.segment,
            &files.listing,
            &self.record_path(key),
        ] {
            let _ = fs::remove_file(f);
        }
        None
    }

    /// Takes the stamps of `key`'s checked files anew and writes its record.
    fn restamp(&self, key: &str, record: &mut Record, cpio: bool) -> io::Result<()> {
        let files = self.files(key, record.layer.compression);
        record.tar_stamp = Some(restamp(&files.tar)?);
        if cpio {
            record.segment_stamp = Some(restamp(&files.segment)?);
        }
        let json = serde_json::to_string(record).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.record_path(key), json.as_bytes(), STORED_MODE)
    }

    /// A layer this process built or checked, by key.
    fn fresh(&self, key: &str) -> Option<BuiltLayer> {
        self.fresh.lock().ok()?.get(key).cloned()
    }

    /// Keeps `built` for the other nodes that have it; a node's own layer
    /// found stored is not kept: its record is on disk already.
    fn remember(&self, built: &BuiltLayer) {
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.insert(built.key.clone(), built.clone());
        }
    }

    /// Records a layer just renamed into the store: fsyncs its files in the
    /// background, then writes its `.json` with their stamps; a node's own
    /// layer is then found by its record, no longer in memory.
    pub(super) fn record(&self, built: &BuiltLayer) {
        self.remember(built);
        let meta = self.record_path(&built.key);
        let built = built.clone();
        let fresh = Arc::clone(&self.fresh);
        let handle = std::thread::spawn(move || {
            let stamp = |f: &Path| -> io::Result<Stamp> {
                let file = File::open(f)?;
                file.sync_all()?;
                Ok(Stamp::of(&file.metadata()?))
            };
            let tar_stamp =
                Some(stamp(&built.file).map_err(io_err(&built.name, "sync", &built.file))?);
            let segment_stamp = match &built.segment {
                Some(s) => Some(stamp(s).map_err(io_err(&built.name, "sync", s))?),
                None => None,
            };
            let (name, key, shared) = (
                built.name.clone(),
                built.key.clone(),
                built.kind.is_shared(),
            );
            let record = Record {
                layer: built,
                tar_stamp,
                segment_stamp,
            };
            let json = serde_json::to_string(&record).unwrap_or_default();
            fsutil::write_atomic(&meta, json.as_bytes(), STORED_MODE)
                .map_err(io_err(&name, "write", &meta))?;
            if !shared && let Ok(mut fresh) = fresh.lock() {
                fresh.remove(&key);
            }
            Ok(())
        });
        if let Ok(mut syncing) = self.syncing.lock() {
            syncing.reap(&self.dir, false);
            syncing.running.push(handle);
        }
    }

    /// The sha256 of a stored layer's PXE segment: hashed while it was
    /// written (and checked against its record before it is reused).
    pub(crate) fn segment_digest(&self, l: &BuiltLayer) -> io::Result<String> {
        match &l.segment_digest {
            Some(d) => Ok(d.clone()),
            None => fsutil::sha256_file(l.segment()?),
        }
    }

    /// Waits until every layer built by this process is on disk and
    /// recorded; the first failure, if any.
    pub(crate) fn commit(&self) -> Result<(), LayerError> {
        let mut syncing = match self.syncing.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => Syncing::default(),
        };
        syncing.reap(&self.dir, true);
        syncing.failed.map_or(Ok(()), Err)
    }
}

/// Removes the OCI archives that killed runs were spooling in the cache's
/// `tmp/` (`oci-<hex>.<pid>.<n>.tmp`, see [`Cache::temp`]). The count.
fn clean_spools(tmp: &Path) -> usize {
    let Ok(entries) = fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("oci-")
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.split('.').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(fsutil::left_by_dead_process) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

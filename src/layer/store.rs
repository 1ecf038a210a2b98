//! The layer store (`<cache>/layers/`): takes built layers and keeps them by
//! key, `<key>.tar.gz` (and `.cpio.gz`) with a `<key>.json` record; finds
//! them again for every node that has the same layer; keeps the sha256
//! digests and states of their PXE segments for the overlays.
//!
//! A layer counts as stored once its `.json` record exists, and the record is
//! written only after the layer's bytes are on disk: a layer built by this
//! process is fsynced in the background while the build goes on
//! ([`Store::commit`] waits for it), and found meanwhile in memory by the
//! other nodes that have it.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::{BuiltLayer, LayerError, io_err};
use crate::fetch::Cache;

/// Where built layers live, by key.
#[derive(Debug)]
pub struct Store {
    pub(crate) dir: PathBuf,
    fresh: Mutex<BTreeMap<String, BuiltLayer>>,
    syncing: Mutex<Vec<JoinHandle<Result<(), LayerError>>>>,
}

/// Where one layer's files go: its `.tar.gz` and its PXE segment.
pub(super) struct Files {
    pub(super) tar: PathBuf,
    pub(super) segment: PathBuf,
}

impl Files {
    /// The files of a layer that never enters the store (the secrets layer):
    /// `<dir>/<name>.tar.gz`, its segment hidden beside it.
    pub(super) fn private(dir: &Path, name: &str) -> Files {
        Files {
            tar: dir.join(format!("{name}.tar.gz")),
            segment: dir.join(format!(".{name}.cpio.gz")),
        }
    }
}

impl Store {
    pub(crate) fn open(cache: &Cache) -> io::Result<Store> {
        let dir = cache.root.join("layers");
        fs::create_dir_all(&dir)?;
        Ok(Store {
            dir,
            fresh: Mutex::new(BTreeMap::new()),
            syncing: Mutex::new(Vec::new()),
        })
    }

    /// The files of the stored layer `key`.
    pub(super) fn files(&self, key: &str) -> Files {
        Files {
            tar: self.dir.join(format!("{key}.tar.gz")),
            segment: self.dir.join(format!("{key}.cpio.gz")),
        }
    }

    /// The record of the stored layer `key`.
    pub(super) fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Takes the lock of `key`: one builder per key, across threads and
    /// processes; the others wait, then find the layer built.
    pub(super) fn lock(&self, key: &str, layer: &str) -> Result<File, LayerError> {
        let path = self.dir.join(format!("{key}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(layer, "open", &path))?;
        f.lock().map_err(io_err(layer, "lock", &path))?;
        Ok(f)
    }

    /// The layer `key` under the name `name`, when this process built it or
    /// it is stored (with its PXE segment when `cpio`).
    pub(super) fn find(&self, key: &str, name: &str, cpio: bool) -> Option<BuiltLayer> {
        if let Some(mut built) = self.fresh(key) {
            built.name = name.to_string();
            return Some(built);
        }
        let Files { tar, segment } = self.files(key);
        if !tar.is_file() || (cpio && !segment.is_file()) {
            return None;
        }
        let text = fs::read_to_string(self.record_path(key)).ok()?;
        let mut built = serde_json::from_str::<BuiltLayer>(&text).ok()?;
        built.name = name.to_string();
        built.file = tar;
        built.segment = segment.is_file().then_some(segment);
        Some(built)
    }

    /// A layer this process built, by key.
    fn fresh(&self, key: &str) -> Option<BuiltLayer> {
        self.fresh.lock().ok()?.get(key).cloned()
    }

    /// Records a layer just renamed into the store: fsyncs its files in the
    /// background, then writes its `.json`.
    pub(super) fn record(&self, built: &BuiltLayer) {
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.insert(built.key.clone(), built.clone());
        }
        let meta = self.record_path(&built.key);
        let built = built.clone();
        let handle = std::thread::spawn(move || {
            for f in std::iter::once(&built.file).chain(built.segment.as_ref()) {
                File::open(f)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&built.name, "sync", f))?;
            }
            let json = serde_json::to_string(&built).unwrap_or_default();
            crate::fsutil::write_atomic(&meta, json.as_bytes(), 0o644).map_err(io_err(
                &built.name,
                "write",
                &meta,
            ))
        });
        if let Ok(mut syncing) = self.syncing.lock() {
            syncing.push(handle);
        }
    }

    /// Where the sha256 state after a run of stored layers' PXE segments is
    /// kept: by the layers' keys, in order.
    fn segments_state_path(&self, layers: &[BuiltLayer]) -> PathBuf {
        let mut key = Sha256::new();
        key.update(b"imgbuild-segments-sha256-v1\n");
        for l in layers {
            key.update(format!("{}\n", l.key).as_bytes());
        }
        self.dir
            .join(format!("{}.segments-sha256", hex::encode(key.finalize())))
    }

    /// The sha256 state after the PXE segments of `layers`, one after the
    /// other, when a build kept it ([`Store::keep_segments_state`]). A
    /// layer's bytes are a function of its key, so the state stays true.
    pub(crate) fn segments_state(&self, layers: &[BuiltLayer]) -> Option<Sha256> {
        use sha2::digest::common::hazmat::{SerializableState, SerializedState};
        let bytes = fs::read(self.segments_state_path(layers)).ok()?;
        let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
        Sha256::deserialize(&state).ok()
    }

    /// Keeps `state`, the sha256 state after the PXE segments of `layers`.
    pub(crate) fn keep_segments_state(
        &self,
        layers: &[BuiltLayer],
        state: &Sha256,
    ) -> io::Result<()> {
        use sha2::digest::common::hazmat::SerializableState;
        crate::fsutil::write_atomic(
            &self.segments_state_path(layers),
            state.serialize().as_slice(),
            0o644,
        )
    }

    /// The sha256 of a stored layer's PXE segment, kept beside it
    /// (`<key>.cpio.sha256`) once computed.
    pub(crate) fn segment_digest(&self, l: &BuiltLayer) -> io::Result<String> {
        let seg = l.segment()?;
        let kept = self.dir.join(format!("{}.cpio.sha256", l.key));
        if let Ok(d) = fs::read_to_string(&kept)
            && d.len() == 64
            && d.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(d);
        }
        let d = crate::fsutil::sha256_file(seg)?;
        crate::fsutil::write_atomic(&kept, d.as_bytes(), 0o644)?;
        Ok(d)
    }

    /// Waits until every layer built by this process is on disk and
    /// recorded; the first failure, if any.
    pub(crate) fn commit(&self) -> Result<(), LayerError> {
        let handles = match self.syncing.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => Vec::new(),
        };
        let mut first = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(io_err("", "sync the layers in", &self.dir)(
                    io::Error::other("the thread syncing a layer panicked"),
                ))
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

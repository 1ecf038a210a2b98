//! Stage 6, `layer`: takes a [`LayerPlan`] with its sources (the cache, the
//! state dir, the rendered templates) and writes a deterministic
//! `.tar.gz`: numeric owners and explicit modes from the plan, one mtime
//! (SOURCE_DATE_EPOCH), every parent directory first, then the archive
//! members streamed straight out of the cached tarballs (by artifact name,
//! in archive order), then every other file by path. For PXE it writes, in
//! the same pass, the layer's newc cpio segment: the same files, and the
//! same compressed bytes for every large content (see [`crate::pgzip`]).
//! gzip is pinned (pure-Rust deflate, pieces cut where the bytes say, header
//! mtime 0, no name), so the bytes do not depend on `--jobs`. A layer is
//! keyed by the hash of its inputs: the layer store (`<cache>/layers/`)
//! builds each distinct layer once and every node that has it reuses it.
//! Memory does not grow with artifact size.
//!
//! The recipe is [`build`]; [`resolve`] finds where every entry's bytes come
//! from, [`write`] writes them, [`store`] keeps what was built.

mod deb;
pub(crate) mod dpkg;
pub mod listing;
mod os;
mod packages;
mod resolve;
pub(crate) mod rootfs;
mod store;
mod write;

pub use deb::{DebError, DebFacts, facts as deb_facts};
pub use dpkg::depends as deb_depends;
pub use listing::{Listing, Origin};
pub use resolve::Inputs;
pub use store::Store;
pub(crate) use store::{Found, Stamp, check_file, restamp};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fetch::archive::ArchiveError;
use crate::plan::{LayerKind, LayerPlan};
use store::Files;
use write::Resolved;

/// Bump when the layer format changes: every key changes with it.
pub const FORMAT: &str = "imgbuild-layer-v2";
use crate::pgzip::Compression;
/// gzip level of every gzip layer (public for the `deflate_limit` example).
pub use crate::pgzip::GZIP_LEVEL;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {layer}: cannot {op} {path}")]
    Io {
        layer: String,
        /// What failed: `read`, `write`, `lock`, ...
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {artifact} is not in the cache; run `imgbuild fetch`")]
    NotFetched { layer: String, artifact: String },
    #[error(
        "layer {layer}: secret {id} is missing from the state dir ({path}); run `imgbuild pki init`"
    )]
    MissingSecret {
        layer: String,
        id: String,
        path: PathBuf,
    },
    #[error("layer {layer}: image {image} ({reference}) is not in the cache; pull it first")]
    ImageMissing {
        layer: String,
        image: String,
        reference: String,
    },
    #[error("layer {layer}: cannot copy the members of a cached archive")]
    Archive {
        layer: String,
        #[source]
        source: ArchiveError,
    },
    #[error("layer {layer}: cannot unpack the base OS or its packages")]
    Os {
        layer: String,
        #[source]
        source: Box<os::OsError>,
    },
}

/// Maps an I/O error of `op` (a verb: `read`, `write`, ...) on `path` while
/// making `layer`.
fn io_err(
    layer: &str,
    op: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let (layer, path) = (layer.to_string(), path.to_path_buf());
    move |source| LayerError::Io {
        layer,
        op,
        path,
        source,
    }
}

/// A built layer in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltLayer {
    /// `NN-<name>`
    pub(crate) name: String,
    pub(crate) kind: LayerKind,
    pub(crate) key: String,
    /// sha256 of the `.tar.gz` (or `.tar.zst`)
    pub(crate) digest: String,
    /// How the layer and its segment are compressed (absent: gzip).
    #[serde(default, skip_serializing_if = "Compression::is_gzip")]
    pub(crate) compression: Compression,
    pub(crate) size: u64,
    /// sha256 of the uncompressed tar (the OCI diff_id)
    pub(crate) diff_id: String,
    #[serde(skip)]
    pub(crate) file: PathBuf,
    /// The PXE segment (gzip'd newc cpio), when it was asked for.
    #[serde(skip)]
    pub(crate) segment: Option<PathBuf>,
    /// The secrets layer's PXE segment, held in memory instead.
    #[serde(skip)]
    pub(crate) segment_bytes: Option<Arc<[u8]>>,
    /// sha256 of the PXE segment, hashed while it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segment_digest: Option<String>,
    /// Size of the PXE segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segment_size: Option<u64>,
    /// sha256 of the layer's listing (`<key>.files.json` in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) files_digest: Option<String>,
    /// Every regular file of the layer with its digests and origin.
    #[serde(skip)]
    pub(crate) files: Option<Arc<Listing>>,
}

impl BuiltLayer {
    /// The layer's file name in an output: `NN-<name>.tar.gz` or `.tar.zst`.
    pub(crate) fn tar_name(&self) -> String {
        format!("{}.tar.{}", self.name, self.compression.ext())
    }

    /// Its PXE segment's file name: `NN-<name>.cpio.gz` or `.cpio.zst`.
    pub(crate) fn segment_name(&self) -> String {
        format!("{}.cpio.{}", self.name, self.compression.ext())
    }

    /// Appends its PXE segment to `w`, from memory or its file.
    pub(crate) fn append_segment<W: io::Write>(
        &self,
        w: &mut crate::fsutil::Sha256Writer<W>,
    ) -> io::Result<()> {
        match &self.segment_bytes {
            Some(bytes) => io::Write::write_all(w, bytes),
            None => w.append_file(self.segment()?).map(drop),
        }
    }

    /// The layer's PXE segment, or an error naming the layer when it was
    /// built without one.
    pub(crate) fn segment(&self) -> io::Result<&Path> {
        self.segment.as_deref().ok_or_else(|| {
            io::Error::other(format!(
                "layer {} was built without its PXE segment",
                self.name
            ))
        })
    }
}

/// Builds (or finds in the store) one layer: its `.tar.gz` and, when
/// `inputs.cpio`, its PXE segment (the same files as a gzip'd newc cpio
/// without a trailer), both from one pass over the sources. The secrets
/// layer never enters the shared store: it is written to `private_dir` with
/// mode 0600, its segment as a hidden file beside it. Waits while another
/// builder (thread or process) builds the same layer, then reuses it.
pub(crate) fn build(
    store: &Store,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    private_dir: &Path,
) -> Result<BuiltLayer, LayerError> {
    let (key, resolved) = resolve_all(inputs, layer)?;
    if layer.kind == LayerKind::Secrets {
        let files = Files::private(private_dir, &layer.name, inputs.compression);
        return write::write_layer(inputs, layer, resolved, &key, &files, true);
    }
    let lock = store.lock(&key, &layer.name)?;
    stored_or_written(store, inputs, layer, &key, resolved, lock)
}

/// As [`build`], but `None` at once when another builder holds the layer
/// (the caller builds something else meanwhile, and this layer later).
pub(crate) fn try_build(
    store: &Store,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    private_dir: &Path,
) -> Result<Option<BuiltLayer>, LayerError> {
    if layer.kind == LayerKind::Secrets {
        return build(store, inputs, layer, private_dir).map(Some);
    }
    let (key, resolved) = resolve_all(inputs, layer)?;
    let Some(lock) = store.try_lock(&key, &layer.name)? else {
        return Ok(None);
    };
    stored_or_written(store, inputs, layer, &key, resolved, lock).map(Some)
}

/// The stored layer `key` (checked against its record), or the layer
/// written and recorded; `_lock` is the key's, held until it is done.
fn stored_or_written(
    store: &Store,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    key: &str,
    resolved: Vec<Resolved<'_>>,
    _lock: std::fs::File,
) -> Result<BuiltLayer, LayerError> {
    if let Some(built) = store.find(key, &layer.name, inputs.cpio) {
        return Ok(built);
    }
    let files = store.files(key, inputs.compression);
    let built = write::write_layer(inputs, layer, resolved, key, &files, false)?;
    store.record(&built);
    Ok(built)
}

/// Every entry of `layer` resolved, and the layer's key: the hash of the
/// format, the mtime, the gzip level and every entry with its source's id.
fn resolve_all<'p>(
    inputs: &Inputs<'_>,
    layer: &'p LayerPlan,
) -> Result<(String, Vec<Resolved<'p>>), LayerError> {
    let mut resolved = Vec::new();
    let mut key = Sha256::new();
    // gzip's line is as it was before zstd: gzip layers keep their keys
    let how = inputs.compression;
    let level = how.level();
    key.update(format!("{FORMAT}\nmtime {}\n{} {level}\n", inputs.mtime, how.name()).as_bytes());
    // [os] exclude changes the OS layers only, and their keys only when set
    if matches!(layer.kind, LayerKind::Os | LayerKind::OsPackages)
        && let Some(os) = &inputs.m.pins.os
    {
        for p in &os.exclude {
            key.update(format!("exclude {p}\n").as_bytes());
        }
    }
    for e in &layer.entries {
        let (content, id) = inputs.resolve(layer, e)?;
        key.update(format!("{} {:o} {} {} {id}\n", e.path, e.mode, e.uid, e.gid).as_bytes());
        resolved.push((e, content));
    }
    Ok((hex::encode(key.finalize()), resolved))
}

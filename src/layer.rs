//! Stage 6, `layer`: takes a [`LayerPlan`] with its sources (the cache, the
//! state dir, the rendered templates) and writes a deterministic
//! `.tar.gz`: numeric root-owned entries with explicit modes, one mtime
//! (SOURCE_DATE_EPOCH), every parent directory first, then the archive
//! members streamed straight out of the cached tarballs (by artifact name,
//! in archive order), then every other file by path. gzip is pinned (pure-Rust
//! deflate via gzp, fixed block size, header mtime 0, no name), so the bytes do
//! not depend on `--jobs`. A layer is keyed by the hash of its inputs: the
//! layer store (`<cache>/layers/`) builds each distinct layer once and every
//! node that has it reuses it. Memory does not grow with artifact size.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{Compression, ZWriter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fetch::Cache;
use crate::fetch::archive::{self, ArchiveError};
use crate::fetch::oci::{self, PulledImage};
use crate::manifest::{Arch, Manifests};
use crate::pki::state_path;
use crate::plan::{Entry, LayerKind, LayerPlan, Source};
use crate::render::Rendered;
use crate::tarutil;

/// Bump when the layer format changes: every key changes with it.
const FORMAT: &str = "imgbuild-layer-v1";
/// gzip level of every layer.
pub const GZIP_LEVEL: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {layer}: {path}")]
    Io {
        layer: String,
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
    #[error("layer {layer}")]
    Archive {
        layer: String,
        #[source]
        source: ArchiveError,
    },
    #[error("layer {layer}: parallel gzip failed: {message}")]
    Gzip { layer: String, message: String },
}

/// A built layer in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltLayer {
    /// `NN-<name>`
    pub name: String,
    pub kind: LayerKind,
    pub key: String,
    /// sha256 of the `.tar.gz`
    pub digest: String,
    pub size: u64,
    /// sha256 of the uncompressed tar (the OCI diff_id)
    pub diff_id: String,
    #[serde(skip)]
    pub file: PathBuf,
}

/// Where built layers live, by key: `<cache>/layers/<key>.tar.gz` + `.json`.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn open(cache: &Cache) -> io::Result<Store> {
        let dir = cache.root.join("layers");
        fs::create_dir_all(&dir)?;
        Ok(Store { dir })
    }
}

/// Everything a layer's bytes come from.
pub struct Inputs<'a> {
    pub m: &'a Manifests,
    pub cache: &'a Cache,
    pub state: &'a Path,
    pub rendered: &'a Rendered,
    pub arch: Arch,
    /// The node whose per-node secrets go in (None for a role's generic image).
    pub node: Option<&'a str>,
    pub mtime: u64,
    pub jobs: usize,
    /// Pulled images by (name, arch).
    pub images: &'a BTreeMap<(String, Arch), PulledImage>,
}

/// Where one entry's bytes come from, resolved.
enum Content {
    Member {
        blob: PathBuf,
        label: String,
        member: String,
    },
    Blob(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
    Image(Box<PulledImage>),
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Inputs<'_> {
    fn resolve(&self, layer: &LayerPlan, e: &Entry) -> Result<(Content, String), LayerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            let layer = layer.name.clone();
            move |source| LayerError::Io {
                layer,
                path,
                source,
            }
        };
        Ok(match &e.source {
            Source::Member {
                artifact, member, ..
            } => {
                let (pin, blob) = self.fetched(layer, artifact)?;
                let id = format!("member {} {}", pin.checksum, member);
                let label = format!("{} {}", pin.name, pin.version);
                (
                    Content::Member {
                        blob,
                        label,
                        member: archive::normalize(member),
                    },
                    id,
                )
            }
            Source::Download { artifact, .. } => {
                let (pin, blob) = self.fetched(layer, artifact)?;
                (Content::Blob(blob), format!("blob {}", pin.checksum))
            }
            Source::Template { .. } => {
                let bytes = self
                    .rendered
                    .get(&(layer.name.clone(), e.path.clone()))
                    .cloned()
                    .unwrap_or_default();
                let id = format!("bytes {}", sha256_hex(&bytes));
                (Content::Bytes(bytes), id)
            }
            Source::Static { file } => {
                let path = self.m.layers_dir.join(file.trim_start_matches("layers/"));
                let bytes = fs::read(&path).map_err(io(&path))?;
                let id = format!("bytes {}", sha256_hex(&bytes));
                (Content::Bytes(bytes), id)
            }
            Source::Secret { id, node } => {
                let path = self.state.join(state_path(id, node.as_deref()));
                let bytes = fs::read(&path).map_err(|_| LayerError::MissingSecret {
                    layer: layer.name.clone(),
                    id: id.clone(),
                    path: path.clone(),
                })?;
                let h = sha256_hex(&bytes);
                (Content::Bytes(bytes), format!("bytes {h}"))
            }
            Source::Image { image, reference } => {
                let pulled = self
                    .images
                    .get(&(image.clone(), self.arch))
                    .ok_or_else(|| LayerError::ImageMissing {
                        layer: layer.name.clone(),
                        image: image.clone(),
                        reference: reference.clone(),
                    })?;
                let id = format!(
                    "image {} {} {}",
                    pulled.pin.digest, self.arch, pulled.manifest.digest
                );
                (Content::Image(Box::new(pulled.clone())), id)
            }
            Source::Symlink { target } => (
                Content::Symlink(target.clone()),
                format!("symlink {target}"),
            ),
        })
    }

    /// The pin of `artifact` for this arch and its blob, which must be cached.
    fn fetched(
        &self,
        layer: &LayerPlan,
        artifact: &str,
    ) -> Result<(&crate::manifest::ArtifactPin, PathBuf), LayerError> {
        let pin = self.pin(layer, artifact)?;
        let blob = self.cache.blob(&pin.checksum);
        if !blob.is_file() {
            return Err(LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("{} {} ({})", pin.name, pin.version, pin.arch),
            });
        }
        Ok((pin, blob))
    }

    fn pin(
        &self,
        layer: &LayerPlan,
        artifact: &str,
    ) -> Result<&crate::manifest::ArtifactPin, LayerError> {
        self.m
            .pins
            .artifact(artifact, self.arch)
            .ok_or_else(|| LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("{artifact} ({})", self.arch),
            })
    }
}

/// A writer that hashes what passes through it.
struct HashWriter<W> {
    inner: W,
    hash: Arc<Mutex<Sha256>>,
    count: Arc<Mutex<u64>>,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Ok(mut h) = self.hash.lock() {
            h.update(&buf[..n]);
        }
        if let Ok(mut c) = self.count.lock() {
            *c += n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Every ancestor directory of `path` (`/a/b/c` -> `a`, `a/b`).
fn ancestors(path: &str, out: &mut BTreeSet<String>) {
    let rel = path.trim_start_matches('/');
    let mut acc = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        out.insert(acc.clone());
    }
}

/// Builds (or finds in the store) one layer. The secrets layer never enters
/// the shared store: it is written to `private_dir` with mode 0600.
pub fn build(
    store: &Store,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    private_dir: &Path,
) -> Result<BuiltLayer, LayerError> {
    let mut resolved = Vec::new();
    let mut key = Sha256::new();
    key.update(format!("{FORMAT}\nmtime {}\ngzip {GZIP_LEVEL}\n", inputs.mtime).as_bytes());
    for e in &layer.entries {
        let (content, id) = inputs.resolve(layer, e)?;
        key.update(format!("{} {:o} {} {} {id}\n", e.path, e.mode, e.uid, e.gid).as_bytes());
        resolved.push((e, content));
    }
    let key = hex::encode(key.finalize());
    let private = layer.kind == LayerKind::Secrets;
    let dir = if private {
        private_dir
    } else {
        store.dir.as_path()
    };
    let file = if private {
        dir.join(format!("{}.tar.gz", layer.name))
    } else {
        dir.join(format!("{key}.tar.gz"))
    };
    let meta = store.dir.join(format!("{key}.json"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        let layer = layer.name.clone();
        move |source| LayerError::Io {
            layer,
            path,
            source,
        }
    };
    // one builder per key, across threads and processes; the others wait and reuse
    let _lock = if private {
        None
    } else {
        let lock_path = store.dir.join(format!("{key}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        f.lock().map_err(io(&lock_path))?;
        Some(f)
    };
    if !private
        && file.is_file()
        && let Ok(text) = fs::read_to_string(&meta)
        && let Ok(mut built) = serde_json::from_str::<BuiltLayer>(&text)
    {
        built.name = layer.name.clone();
        built.file = file;
        return Ok(built);
    }

    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let gz_hash = Arc::new(Mutex::new(Sha256::new()));
    let gz_count = Arc::new(Mutex::new(0u64));
    let mode = if private { 0o600 } else { 0o644 };
    let created = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|f| {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map(|()| f)
        })
        .map_err(io(&tmp))?;
    let out = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, created),
        hash: gz_hash.clone(),
        count: gz_count.clone(),
    };
    let gz: ParCompress<'static, Gzip, _> = ParCompressBuilder::<Gzip>::new()
        .num_threads(inputs.jobs.max(1))
        .map_err(|e| LayerError::Gzip {
            layer: layer.name.clone(),
            message: e.to_string(),
        })?
        .compression_level(Compression::new(GZIP_LEVEL))
        .from_writer(out);
    let tar_hash = Arc::new(Mutex::new(Sha256::new()));
    let tar_out = HashWriter {
        inner: gz,
        hash: tar_hash.clone(),
        count: Arc::new(Mutex::new(0u64)),
    };
    let mut b = tar::Builder::new(tar_out);
    let result = write_entries(&mut b, inputs, layer, resolved);
    let finished = result.and_then(|()| {
        let mut w = b.into_inner().map_err(io(&tmp))?;
        let mut out = w.inner.finish().map_err(|e| LayerError::Gzip {
            layer: layer.name.clone(),
            message: e.to_string(),
        })?;
        // flush explicitly: a BufWriter dropped unflushed hides its error
        out.flush().map_err(io(&tmp))
    });
    if let Err(e) = finished {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let take = |h: &Arc<Mutex<Sha256>>| {
        h.lock()
            .map(|h| hex::encode(h.clone().finalize()))
            .unwrap_or_default()
    };
    let built = BuiltLayer {
        name: layer.name.clone(),
        kind: layer.kind,
        key: key.clone(),
        digest: take(&gz_hash),
        size: gz_count.lock().map(|c| *c).unwrap_or(0),
        diff_id: take(&tar_hash),
        file: file.clone(),
    };
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, &file).map_err(io(&file))?;
    if !private {
        let json = serde_json::to_string(&built).unwrap_or_default();
        crate::fsutil::write_atomic(&meta, json.as_bytes(), 0o644).map_err(io(&meta))?;
    }
    Ok(built)
}

fn write_entries<W: Write>(
    b: &mut tar::Builder<W>,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    resolved: Vec<(&Entry, Content)>,
) -> Result<(), LayerError> {
    let mtime = inputs.mtime;
    let io = |path: &str| {
        let path = PathBuf::from(path);
        let layer = layer.name.clone();
        move |source| LayerError::Io {
            layer,
            path,
            source,
        }
    };
    let mut dirs = BTreeSet::new();
    for (e, _) in &resolved {
        ancestors(&e.path, &mut dirs);
    }
    for d in &dirs {
        tarutil::append_dir(b, d, 0o755, mtime).map_err(io(d))?;
    }
    // archive members, by archive, in archive order
    let mut by_archive: BTreeMap<(String, PathBuf), BTreeMap<String, Vec<&Entry>>> =
        BTreeMap::new();
    let mut rest: Vec<(&Entry, Content)> = Vec::new();
    for (e, c) in resolved {
        match c {
            Content::Member {
                blob,
                label,
                member,
            } => {
                by_archive
                    .entry((label, blob))
                    .or_default()
                    .entry(member)
                    .or_default()
                    .push(e);
            }
            other => rest.push((e, other)),
        }
    }
    for ((label, blob), members) in &by_archive {
        let wanted: BTreeSet<String> = members.keys().cloned().collect();
        archive::read_members(blob, label, &wanted, |member, _mode, size, reader| {
            let targets = &members[member];
            if targets.len() == 1 {
                let e = targets[0];
                tarutil::append_file(
                    b,
                    e.path.trim_start_matches('/'),
                    e.mode,
                    mtime,
                    size,
                    reader,
                )?;
            } else {
                // the same member at several paths: small, so buffer it once
                let mut buf = Vec::new();
                reader.read_to_end(&mut buf)?;
                for e in targets {
                    tarutil::append_file(
                        b,
                        e.path.trim_start_matches('/'),
                        e.mode,
                        mtime,
                        size,
                        buf.as_slice(),
                    )?;
                }
            }
            Ok(())
        })
        .map_err(|source| LayerError::Archive {
            layer: layer.name.clone(),
            source,
        })?;
    }
    rest.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    for (e, c) in rest {
        let path = e.path.trim_start_matches('/');
        match c {
            Content::Bytes(bytes) => {
                tarutil::append_file(b, path, e.mode, mtime, bytes.len() as u64, bytes.as_slice())
                    .map_err(io(path))?
            }
            Content::Blob(p) => {
                let f = File::open(&p).map_err(io(path))?;
                let size = f.metadata().map_err(io(path))?.len();
                tarutil::append_file(b, path, e.mode, mtime, size, io::BufReader::new(f))
                    .map_err(io(path))?
            }
            Content::Symlink(target) => {
                tarutil::append_symlink(b, path, &target, mtime).map_err(io(path))?
            }
            Content::Image(img) => {
                let spool = inputs
                    .cache
                    .temp(&format!("oci-{}", oci_hex(&img.pin.digest)));
                let result = write_oci_archive(inputs.cache, &img, &spool, mtime).and_then(|()| {
                    let f = File::open(&spool)?;
                    let size = f.metadata()?.len();
                    tarutil::append_file(b, path, e.mode, mtime, size, io::BufReader::new(f))
                });
                let _ = fs::remove_file(&spool);
                result.map_err(io(path))?
            }
            Content::Member { .. } => {}
        }
    }
    Ok(())
}

fn oci_hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

/// An OCI image-layout archive of one image for one arch: `oci-layout`,
/// `index.json` pointing at the pinned index (so `name@sha256:<index>` still
/// resolves after `ctr images import`), and the blobs of that arch. Sorted,
/// root-owned, one mtime.
fn write_oci_archive(cache: &Cache, img: &PulledImage, out: &Path, mtime: u64) -> io::Result<()> {
    let (_, _, tag) = oci::split_reference(&img.pin.image);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": img.index.media_type,
            "digest": img.index.digest,
            "size": img.index.size,
            "annotations": {
                "io.containerd.image.name": img.pin.image,
                "org.opencontainers.image.ref.name": tag,
            }
        }]
    });
    let index = crate::canonical_json(&index);
    let layout = "{\"imageLayoutVersion\":\"1.0.0\"}\n";
    let mut blobs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in img.blobs() {
        blobs.insert(
            format!("blobs/sha256/{}", oci_hex(&d.digest)),
            oci::blob_file(cache, &d.digest),
        );
    }
    let mut b = tar::Builder::new(BufWriter::new(fs::File::create(out)?));
    tarutil::append_dir(&mut b, "blobs", 0o755, mtime)?;
    tarutil::append_dir(&mut b, "blobs/sha256", 0o755, mtime)?;
    for (name, file) in &blobs {
        let f = File::open(file)?;
        let size = f.metadata()?.len();
        tarutil::append_file(&mut b, name, 0o644, mtime, size, io::BufReader::new(f))?;
    }
    tarutil::append_file(
        &mut b,
        "index.json",
        0o644,
        mtime,
        index.len() as u64,
        index.as_bytes(),
    )?;
    tarutil::append_file(
        &mut b,
        "oci-layout",
        0o644,
        mtime,
        layout.len() as u64,
        layout.as_bytes(),
    )?;
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_a_path() {
        let mut s = BTreeSet::new();
        ancestors("/etc/kubernetes/pki/ca.crt", &mut s);
        ancestors("/etc/hosts", &mut s);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            ["etc", "etc/kubernetes", "etc/kubernetes/pki"]
        );
    }
}

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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::fetch::Cache;
use crate::fetch::archive::{self, ArchiveError};
use crate::fetch::oci::{self, PulledImage};
use crate::manifest::{Arch, Manifests};
use crate::pki::state_path;
use crate::plan::{Entry, LayerKind, LayerPlan, Source};
use crate::render::Rendered;
use crate::{newc, pgzip, tarutil};

/// Bump when the layer format changes: every key changes with it.
const FORMAT: &str = "imgbuild-layer-v2";
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
}

/// Maps an I/O error on `path` while making `layer`.
fn io_err(layer: &str, path: &Path) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let (layer, path) = (layer.to_string(), path.to_path_buf());
    move |source| LayerError::Io {
        layer,
        path,
        source,
    }
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
    /// The PXE segment (gzip'd newc cpio), when it was asked for.
    #[serde(skip)]
    pub segment: Option<PathBuf>,
}

impl BuiltLayer {
    /// The layer's PXE segment, or an error naming the layer when it was
    /// built without one.
    pub fn segment(&self) -> io::Result<&Path> {
        self.segment.as_deref().ok_or_else(|| {
            io::Error::other(format!(
                "layer {} was built without its PXE segment",
                self.name
            ))
        })
    }
}

/// Where built layers live, by key: `<cache>/layers/<key>.tar.gz` (and
/// `.cpio.gz`) + `.json`. A layer counts as stored once its `.json` record
/// exists, and the record is written only after the layer's bytes are on
/// disk: a layer built by this process is fsynced in the background while
/// the build goes on ([`Store::commit`] waits for it), and found meanwhile in
/// memory by the other nodes that have it.
#[derive(Debug)]
pub struct Store {
    pub dir: PathBuf,
    fresh: Mutex<BTreeMap<String, BuiltLayer>>,
    syncing: Mutex<Vec<JoinHandle<Result<(), LayerError>>>>,
}

impl Store {
    pub fn open(cache: &Cache) -> io::Result<Store> {
        let dir = cache.root.join("layers");
        fs::create_dir_all(&dir)?;
        Ok(Store {
            dir,
            fresh: Mutex::new(BTreeMap::new()),
            syncing: Mutex::new(Vec::new()),
        })
    }

    /// A layer this process built, by key.
    fn fresh(&self, key: &str) -> Option<BuiltLayer> {
        self.fresh.lock().ok()?.get(key).cloned()
    }

    /// Records a layer just renamed into the store: fsyncs its files in the
    /// background, then writes its `.json`.
    fn record(&self, built: &BuiltLayer, meta: PathBuf) {
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.insert(built.key.clone(), built.clone());
        }
        let built = built.clone();
        let handle = std::thread::spawn(move || {
            let io = |path: &Path| io_err(&built.name, path);
            for f in std::iter::once(&built.file).chain(built.segment.as_ref()) {
                File::open(f).and_then(|f| f.sync_all()).map_err(io(f))?;
            }
            let json = serde_json::to_string(&built).unwrap_or_default();
            crate::fsutil::write_atomic(&meta, json.as_bytes(), 0o644).map_err(io(&meta))
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
    pub fn segments_state(&self, layers: &[BuiltLayer]) -> Option<Sha256> {
        use sha2::digest::common::hazmat::{SerializableState, SerializedState};
        let bytes = fs::read(self.segments_state_path(layers)).ok()?;
        let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
        Sha256::deserialize(&state).ok()
    }

    /// Keeps `state`, the sha256 state after the PXE segments of `layers`.
    pub fn keep_segments_state(&self, layers: &[BuiltLayer], state: &Sha256) -> io::Result<()> {
        use sha2::digest::common::hazmat::SerializableState;
        crate::fsutil::write_atomic(
            &self.segments_state_path(layers),
            state.serialize().as_slice(),
            0o644,
        )
    }

    /// The sha256 of a stored layer's PXE segment, kept beside it
    /// (`<key>.cpio.sha256`) once computed.
    pub fn segment_digest(&self, l: &BuiltLayer) -> io::Result<String> {
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
    pub fn commit(&self) -> Result<(), LayerError> {
        let handles = match self.syncing.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => Vec::new(),
        };
        let mut first = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(LayerError::Io {
                    layer: String::new(),
                    path: self.dir.clone(),
                    source: io::Error::other("the thread syncing a layer panicked"),
                })
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
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
    /// Write each layer's PXE segment too.
    pub cpio: bool,
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
        let io = |path: &Path| io_err(&layer.name, path);
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

/// Builds (or finds in the store) one layer: its `.tar.gz` and, when
/// `inputs.cpio`, its PXE segment (the same files as a gzip'd newc cpio
/// without a trailer), both from one pass over the sources. The secrets
/// layer never enters the shared store: it is written to `private_dir` with
/// mode 0600, its segment as a hidden file beside it.
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
    let (file, seg) = if private {
        (
            private_dir.join(format!("{}.tar.gz", layer.name)),
            private_dir.join(format!(".{}.cpio.gz", layer.name)),
        )
    } else {
        (
            store.dir.join(format!("{key}.tar.gz")),
            store.dir.join(format!("{key}.cpio.gz")),
        )
    };
    let meta = store.dir.join(format!("{key}.json"));
    let io = |path: &Path| io_err(&layer.name, path);
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
    if !private && let Some(mut built) = store.fresh(&key) {
        built.name = layer.name.clone();
        return Ok(built);
    }
    if !private
        && file.is_file()
        && (!inputs.cpio || seg.is_file())
        && let Ok(text) = fs::read_to_string(&meta)
        && let Ok(mut built) = serde_json::from_str::<BuiltLayer>(&text)
    {
        built.name = layer.name.clone();
        built.file = file;
        built.segment = seg.is_file().then_some(seg);
        return Ok(built);
    }

    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{key}.{}.tar.tmp", std::process::id()));
    let seg_tmp = dir.join(format!(".{key}.{}.cpio.tmp", std::process::id()));
    let mode = if private { 0o600 } else { 0o644 };
    let create = |path: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|f| {
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map(|()| BufWriter::with_capacity(1 << 20, f))
            })
            .map_err(io(path))
    };
    let cleanup = || {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&seg_tmp);
    };
    let written = create(&tmp)
        .and_then(|t| Ok((t, inputs.cpio.then(|| create(&seg_tmp)).transpose()?)))
        .and_then(|(t, c)| {
            pgzip::write(
                t,
                c,
                GZIP_LEVEL,
                inputs.jobs,
                |s| write_entries(s, inputs, layer, resolved),
                |e| io(&tmp)(e),
            )
        })
        .map(|out| (out.tar, out.diff_id, out.cpio));
    let (tar, diff_id, cpio) = match written {
        Ok(w) => w,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let built = BuiltLayer {
        name: layer.name.clone(),
        kind: layer.kind,
        key: key.clone(),
        digest: tar.digest,
        size: tar.size,
        diff_id,
        file: file.clone(),
        segment: cpio.is_some().then(|| seg.clone()),
    };
    if cpio.is_some() {
        fs::rename(&seg_tmp, &seg).map_err(io(&seg))?;
    }
    fs::rename(&tmp, &file).map_err(io(&file))?;
    if !private {
        store.record(&built, meta);
    }
    Ok(built)
}

/// Writes each entry of a layer to the tar stream and to the cpio stream
/// (inode numbers in order; directories with two links, files with one, so
/// the kernel never takes two files for hard links).
struct Emit<'s> {
    s: &'s mut pgzip::Streams,
    headers: tar::Builder<Vec<u8>>,
    ino: u32,
    mtime: u64,
}

impl Emit<'_> {
    /// The tar header block(s) just appended to `headers`.
    fn tar_header(&mut self) -> Vec<u8> {
        std::mem::take(self.headers.get_mut())
    }

    fn cpio_header(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u32, u32),
        size: u64,
    ) -> io::Result<Vec<u8>> {
        self.ino += 1;
        let size = if self.s.has_cpio() {
            u32::try_from(size).map_err(|_| {
                io::Error::other(format!("{path} is larger than a newc cpio allows (4 GiB)"))
            })?
        } else {
            0
        };
        Ok(newc::Header {
            name: path,
            ino: self.ino,
            mode,
            uid: owner.0,
            gid: owner.1,
            nlink: if mode & newc::S_IFDIR != 0 { 2 } else { 1 },
            mtime: u32::try_from(self.mtime).unwrap_or(0),
            size,
        }
        .to_bytes())
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        tarutil::append_dir(&mut self.headers, path, 0o755, self.mtime)?;
        let t = self.tar_header();
        let c = self.cpio_header(path, newc::S_IFDIR | 0o755, (0, 0), 0)?;
        self.s.meta(&t, &c)
    }

    fn file(&mut self, e: &Entry, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let path = e.path.trim_start_matches('/');
        let owner = (e.uid, e.gid);
        tarutil::append_file_as(
            &mut self.headers,
            path,
            e.mode,
            owner,
            self.mtime,
            size,
            io::empty(),
        )?;
        let t = self.tar_header();
        let c = self.cpio_header(path, newc::S_IFREG | (e.mode & 0o7777), owner, size)?;
        self.s.meta(&t, &c)?;
        self.s.content(data, size)?;
        let zeros = [0u8; 512];
        self.s.meta(
            &zeros[..tarutil::padding(size)],
            &zeros[..newc::padding(size)],
        )
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        tarutil::append_symlink(&mut self.headers, path, target, self.mtime)?;
        let t = self.tar_header();
        let len = target.len() as u64;
        let mut c = self.cpio_header(path, newc::S_IFLNK | 0o777, (0, 0), len)?;
        c.extend_from_slice(target.as_bytes());
        c.resize(c.len() + newc::padding(len), 0);
        self.s.meta(&t, &c)
    }

    /// The tar's end: two zero blocks. (A cpio segment has no trailer.)
    fn finish(self) -> io::Result<()> {
        self.s.meta(&[0u8; 1024], b"")
    }
}

fn write_entries(
    s: &mut pgzip::Streams,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    resolved: Vec<(&Entry, Content)>,
) -> Result<(), LayerError> {
    let mtime = inputs.mtime;
    let io = |path: &str| io_err(&layer.name, Path::new(path));
    let mut w = Emit {
        s,
        headers: tar::Builder::new(Vec::new()),
        ino: 0,
        mtime,
    };
    let mut dirs = BTreeSet::new();
    for (e, _) in &resolved {
        ancestors(&e.path, &mut dirs);
    }
    for d in &dirs {
        w.dir(d).map_err(io(d))?;
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
            if let [e] = targets.as_slice() {
                w.file(e, size, reader)?;
            } else {
                // the same member at several paths: small, so buffer it once
                let mut buf = Vec::new();
                reader.read_to_end(&mut buf)?;
                for e in targets {
                    w.file(e, size, &mut buf.as_slice())?;
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
            Content::Bytes(bytes) => w
                .file(e, bytes.len() as u64, &mut bytes.as_slice())
                .map_err(io(path))?,
            Content::Blob(p) => {
                let f = File::open(&p).map_err(io(path))?;
                let size = f.metadata().map_err(io(path))?.len();
                w.file(e, size, &mut io::BufReader::new(f))
                    .map_err(io(path))?
            }
            Content::Symlink(target) => w.symlink(path, &target).map_err(io(path))?,
            Content::Image(img) => {
                let spool = inputs
                    .cache
                    .temp(&format!("oci-{}", oci_hex(&img.pin.digest)));
                let result = write_oci_archive(inputs.cache, &img, &spool, mtime).and_then(|()| {
                    let f = File::open(&spool)?;
                    let size = f.metadata()?.len();
                    w.file(e, size, &mut io::BufReader::new(f))
                });
                let _ = fs::remove_file(&spool);
                result.map_err(io(path))?
            }
            Content::Member { .. } => {}
        }
    }
    w.finish().map_err(io(&layer.name))
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
    let index = crate::json::canonical(&index);
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

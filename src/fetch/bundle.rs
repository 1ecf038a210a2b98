//! Air-gap bundles. `export` takes the manifests, the layer trees and the
//! cached artifacts and image blobs, and writes one tar: `SHA256SUMS` first,
//! then the manifests, the layer trees, and every pinned artifact at
//! `HOST/PATH` (the mirror layout), so the unpacked bundle, served by any
//! static HTTP server or read through `file://`, is a `--mirror`. `import`
//! takes such a tar and adds its artifacts and image blobs to the cache, each
//! verified against the local pins (and SHA256SUMS) by the cache's verified
//! writer before it enters the cache. A bundle is hostile input: one whose
//! SHA256SUMS or entries name a path outside it (absolute, `..`, `.`, empty
//! components), that holds a name twice, or that holds anything but files
//! and directories, is refused whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Cache;
use super::cache::{BlobWriter, CacheError};
use super::http::mirror_path;
use crate::manifest::{ArtifactPin, Checksum, Manifests};
use crate::sums::{self, Sums};
use crate::tarutil;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "cannot export {path}: it is a symbolic link or a special file; a bundle carries regular files only"
    )]
    Unexportable { path: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an imgbuild bundle: its first entry must be SHA256SUMS")]
    NotABundle { path: PathBuf },
    #[error(
        "bundle {bundle}: {file} does not match {what}: expected {expected}, got {actual}; it was not added to the cache"
    )]
    Mismatch {
        bundle: PathBuf,
        file: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("bundle {bundle}: cannot read its SHA256SUMS: {problems}")]
    BadSums { bundle: PathBuf, problems: String },
    #[error("bundle {bundle}: {file} is not listed in its SHA256SUMS")]
    Unlisted { bundle: PathBuf, file: String },
    #[error(
        "bundle {bundle} is refused: {place} `{name}`, which is not a plain relative path inside the bundle"
    )]
    BadName {
        bundle: PathBuf,
        place: &'static str,
        name: String,
    },
    #[error("bundle {bundle} is refused: it holds `{name}` twice")]
    Duplicate { bundle: PathBuf, name: String },
    #[error(
        "bundle {bundle} is refused: `{name}` is a {kind}; a bundle holds only files and directories"
    )]
    NotAFile {
        bundle: PathBuf,
        name: String,
        kind: &'static str,
    },
    #[error("bundle {bundle}: artifact {artifact} is not in the cache; run `imgbuild fetch` first")]
    NotCached { bundle: PathBuf, artifact: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a bundle keeps image blobs.
const IMAGE_BLOBS: &str = "images/blobs/sha256/";

fn files_under(
    root: &Path,
    prefix: &str,
    out: &mut BTreeMap<String, PathBuf>,
) -> Result<(), BundleError> {
    let rd = fs::read_dir(root).map_err(io_err("read", root))?;
    for e in rd {
        let e = e.map_err(io_err("read", root))?;
        let p = e.path();
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        // the entry itself, never what a link points at: a link could carry
        // the state dir's keys into a bundle meant to travel
        let kind = e.file_type().map_err(io_err("read", &p))?;
        if kind.is_dir() {
            files_under(&p, &name, out)?;
        } else if kind.is_file() {
            out.insert(name, p);
        } else {
            return Err(BundleError::Unexportable { path: p });
        }
    }
    Ok(())
}

/// Writes the bundle for `pins` and the image blobs `images` (sha256
/// digests, all already in the cache) to `out`, atomically. Image blobs go
/// to `images/blobs/sha256/<hex>`.
pub(crate) fn export(
    m: &Manifests,
    cache: &Cache,
    pins: &[ArtifactPin],
    images: &[String],
    out: &Path,
    mtime: u64,
) -> Result<usize, BundleError> {
    let files = bundle_files(m, cache, pins, images, out)?;
    let sums = sha256sums(&files)?;
    write_tar(&files, &sums, out, mtime)?;
    Ok(files.len())
}

/// Every file of the bundle by its name in the tar.
fn bundle_files(
    m: &Manifests,
    cache: &Cache,
    pins: &[ArtifactPin],
    images: &[String],
    out: &Path,
) -> Result<BTreeMap<String, PathBuf>, BundleError> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    files_under(&m.dir, "manifests", &mut files)?;
    files_under(&m.layers_dir, "layers", &mut files)?;
    for pin in pins {
        let blob = cache.blob(&pin.checksum);
        if !blob.is_file() {
            return Err(BundleError::NotCached {
                bundle: out.to_path_buf(),
                artifact: format!("{} {} ({})", pin.name, pin.version, pin.arch),
            });
        }
        if let Some(p) = mirror_path(&pin.url) {
            files.insert(p.to_string(), blob);
        }
    }
    for digest in images {
        let hex = digest.trim_start_matches("sha256:");
        files.insert(
            format!("{IMAGE_BLOBS}{hex}"),
            super::oci::blob_file(cache, digest),
        );
    }
    Ok(files)
}

/// The SHA256SUMS text of `files`.
fn sha256sums(files: &BTreeMap<String, PathBuf>) -> Result<String, BundleError> {
    let mut sums = Sums::default();
    for (name, path) in files {
        let h = crate::fsutil::sha256_file(path).map_err(|source| BundleError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        sums.insert(name.clone(), h);
    }
    Ok(sums.render())
}

/// Writes the tar to a temp file next to `out`, fsyncs it, renames it.
fn write_tar(
    files: &BTreeMap<String, PathBuf>,
    sums: &str,
    out: &Path,
    mtime: u64,
) -> Result<(), BundleError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .suffix(".tmp")
        // what File::create gives: 0666 less the umask
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let write = |source| BundleError::Io {
        action: "write",
        path: tmp_path.clone(),
        source,
    };
    let mut b = tar::Builder::new(BufWriter::new(tmp));
    tarutil::append_file(
        &mut b,
        sums::FILE,
        0o644,
        mtime,
        sums.len() as u64,
        sums.as_bytes(),
    )
    .map_err(write)?;
    for (name, path) in files {
        append(&mut b, name, path, mtime, &tmp_path)?;
    }
    let tmp = b
        .into_inner()
        .map_err(write)?
        .into_inner()
        .map_err(|e| write(e.into_error()))?;
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(out)
        .map_err(|e| io_err("write", out)(e.error))?;
    Ok(())
}

/// Appends the file at `path` as `name`, 0755 if executable, else 0644,
/// to the tar being written to `tmp`.
fn append<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    mtime: u64,
    tmp: &Path,
) -> Result<(), BundleError> {
    let f = File::open(path).map_err(io_err("read", path))?;
    let meta = f.metadata().map_err(io_err("read", path))?;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    tarutil::append_file(b, name, mode, mtime, meta.len(), BufReader::new(f))
        .map_err(io_err("write", tmp))
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub added: Vec<String>,
    pub already: Vec<String>,
    /// Files in the mirror layout that no local pin names.
    pub unpinned: Vec<String>,
}

/// One file of the bundle being imported.
struct Member<'a> {
    bundle: &'a Path,
    name: String,
    /// Its SHA256SUMS line's hash.
    listed: &'a str,
}

impl Member<'_> {
    fn mismatch(&self, what: String, expected: String, actual: String) -> BundleError {
        BundleError::Mismatch {
            bundle: self.bundle.to_path_buf(),
            file: self.name.clone(),
            what,
            expected,
            actual,
        }
    }
}

/// Adds every pinned artifact of the bundle to the cache, each verified against
/// the bundle's SHA256SUMS and the local pin before it is renamed into place.
pub(crate) fn import(m: &Manifests, cache: &Cache, bundle: &Path) -> Result<Imported, BundleError> {
    let read = |source| BundleError::Io {
        action: "read",
        path: bundle.to_path_buf(),
        source,
    };
    let downloads: Vec<ArtifactPin> = m.pins.downloads().collect();
    let by_path: BTreeMap<&str, &ArtifactPin> = downloads
        .iter()
        .filter_map(|p| mirror_path(&p.url).map(|mp| (mp, p)))
        .collect();
    let f = File::open(bundle).map_err(io_err("open", bundle))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut entries = archive.entries().map_err(read)?;
    let sums = match entries.next() {
        Some(first) => read_sums(bundle, &mut first.map_err(read)?)?,
        None => None,
    }
    .ok_or_else(|| BundleError::NotABundle {
        path: bundle.to_path_buf(),
    })?;
    check_sums(bundle, &sums)?;
    let mut done = Imported::default();
    let mut seen = BTreeSet::from([sums::FILE.to_string()]);
    for entry in entries {
        let mut entry = entry.map_err(read)?;
        let name = entry.path().map_err(read)?.to_string_lossy().into_owned();
        if !check_entry(bundle, &entry, &name, &mut seen)? {
            continue;
        }
        let listed = sums.get(&name).ok_or_else(|| BundleError::Unlisted {
            bundle: bundle.to_path_buf(),
            file: name.clone(),
        })?;
        let member = Member {
            bundle,
            name,
            listed,
        };
        if let Some(hex) = member.name.strip_prefix(IMAGE_BLOBS) {
            import_image_blob(cache, &member, hex, &mut entry, &mut done)?;
        } else if let Some(pin) = by_path.get(member.name.as_str()) {
            import_artifact(cache, &member, pin, &mut entry, &mut done)?;
        } else if !(member.name.starts_with("manifests/") || member.name.starts_with("layers/")) {
            done.unpinned.push(member.name);
        }
    }
    Ok(done)
}

/// A name for an error message: escaped, and at most 100 characters.
fn shown(name: &str) -> String {
    let escaped: String = name.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// `a/b/c`: relative, with no empty, `.` or `..` component.
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Every path the SHA256SUMS lists must be a plain relative path.
fn check_sums(bundle: &Path, sums: &Sums) -> Result<(), BundleError> {
    match sums.paths().find(|p| !is_plain(p)) {
        Some(bad) => Err(BundleError::BadName {
            bundle: bundle.to_path_buf(),
            place: "its SHA256SUMS lists",
            name: shown(bad),
        }),
        None => Ok(()),
    }
}

/// Checks one entry after SHA256SUMS: a plain name, a file or directory,
/// no file twice. Whether it is a file (to import).
fn check_entry<R: Read>(
    bundle: &Path,
    entry: &tar::Entry<R>,
    name: &str,
    seen: &mut BTreeSet<String>,
) -> Result<bool, BundleError> {
    let kind = entry.header().entry_type();
    let plain = if kind.is_dir() {
        name.strip_suffix('/').unwrap_or(name)
    } else {
        name
    };
    if !is_plain(plain) {
        return Err(BundleError::BadName {
            bundle: bundle.to_path_buf(),
            place: "it holds",
            name: shown(name),
        });
    }
    let not_a_file = |kind| BundleError::NotAFile {
        bundle: bundle.to_path_buf(),
        name: shown(name),
        kind,
    };
    if kind.is_dir() {
        return Ok(false);
    } else if kind.is_symlink() || kind.is_hard_link() {
        return Err(not_a_file("link"));
    } else if !kind.is_file() {
        return Err(not_a_file("device node, fifo or special entry"));
    }
    if !seen.insert(name.to_string()) {
        return Err(BundleError::Duplicate {
            bundle: bundle.to_path_buf(),
            name: shown(name),
        });
    }
    Ok(true)
}

/// The SHA256SUMS of a bundle, its first entry: `None` if it is not.
fn read_sums(
    bundle: &Path,
    entry: &mut tar::Entry<impl Read>,
) -> Result<Option<Sums>, BundleError> {
    let io = io_err("read", bundle);
    let name = match entry.path() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => return Err(io(e)),
    };
    if name != sums::FILE {
        return Ok(None);
    }
    let mut text = String::new();
    entry.read_to_string(&mut text).map_err(io)?;
    match Sums::parse(&text) {
        (sums, bad) if bad.is_empty() => Ok(Some(sums)),
        (_, bad) => Err(BundleError::BadSums {
            bundle: bundle.to_path_buf(),
            problems: bad
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Hashes with sha256 what is read through it, for the SHA256SUMS check.
struct Sha256Reader<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes a member into the cache's verified writer for `expected`; the
/// writer, not yet committed, and the member's sha256.
fn stage(
    cache: &Cache,
    bundle: &Path,
    expected: &Checksum,
    entry: &mut dyn Read,
) -> Result<(BlobWriter, String), BundleError> {
    let mut writer = cache.writer(expected)?;
    let mut reader = Sha256Reader {
        inner: entry,
        sha: Sha256::new(),
    };
    writer.fill_from(&mut reader, bundle)?;
    Ok((writer, hex::encode(reader.sha.finalize())))
}

/// An image blob: its name is its digest.
fn import_image_blob(
    cache: &Cache,
    member: &Member,
    hex: &str,
    entry: &mut dyn Read,
    done: &mut Imported,
) -> Result<(), BundleError> {
    let digest = format!("sha256:{hex}");
    let expected = Checksum::Sha256(hex.to_string());
    if cache.has(&expected) {
        done.already.push(format!("image blob {digest}"));
        return Ok(());
    }
    let (writer, actual) = stage(cache, member.bundle, &expected, entry)?;
    if actual != hex || actual != member.listed {
        return Err(member.mismatch("its digest".into(), digest, format!("sha256:{actual}")));
    }
    match writer.commit() {
        Ok(_) => {}
        Err(CacheError::Mismatch { actual, .. }) => {
            return Err(member.mismatch("its digest".into(), digest, format!("sha256:{actual}")));
        }
        Err(e) => return Err(e.into()),
    }
    done.added.push(format!("image blob {digest}"));
    Ok(())
}

/// A pinned artifact: checked against its SHA256SUMS line, then its pin.
fn import_artifact(
    cache: &Cache,
    member: &Member,
    pin: &ArtifactPin,
    entry: &mut dyn Read,
    done: &mut Imported,
) -> Result<(), BundleError> {
    let label = format!("{} {} ({})", pin.name, pin.version, pin.arch);
    if cache.has(&pin.checksum) {
        done.already.push(label);
        return Ok(());
    }
    let (writer, sha) = stage(cache, member.bundle, &pin.checksum, entry)?;
    if sha != member.listed {
        return Err(member.mismatch("its SHA256SUMS line".into(), member.listed.to_string(), sha));
    }
    match writer.commit() {
        Ok(_) => {}
        Err(CacheError::Mismatch {
            algo,
            expected,
            actual,
            ..
        }) => {
            return Err(member.mismatch(
                format!("the pin of {label}"),
                format!("{algo}:{expected}"),
                format!("{algo}:{actual}"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    done.added.push(label);
    Ok(())
}

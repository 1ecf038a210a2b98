//! Air-gap bundles. `export` writes one tar: `SHA256SUMS` first, then the
//! manifests, the layer trees, and every pinned artifact at `HOST/PATH` (the
//! mirror layout), so the unpacked bundle, served by any static HTTP server or
//! read through `file://`, is a `--mirror`. `import` verifies every artifact
//! against the local pins (and SHA256SUMS) before it enters the cache.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::digest::{self, Hasher};
use super::{Cache, FetchError, io_err};
use crate::manifest::{ArtifactPin, Manifests};
use crate::tarutil;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}")]
    Io {
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
    #[error("bundle {bundle}: {file} is not listed in its SHA256SUMS")]
    Unlisted { bundle: PathBuf, file: String },
    #[error("bundle {bundle}: artifact {artifact} is not in the cache; run `imgbuild fetch` first")]
    NotCached { bundle: PathBuf, artifact: String },
    #[error(transparent)]
    Fetch(Box<FetchError>),
}

impl From<FetchError> for BundleError {
    fn from(e: FetchError) -> Self {
        BundleError::Fetch(Box::new(e))
    }
}

/// Where a bundle keeps image blobs.
const IMAGE_BLOBS: &str = "images/blobs/sha256/";

/// `https://HOST/PATH` -> `HOST/PATH`
pub fn mirror_path(url: &str) -> Option<&str> {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
}

fn files_under(
    root: &Path,
    prefix: &str,
    out: &mut BTreeMap<String, PathBuf>,
) -> Result<(), BundleError> {
    let rd = fs::read_dir(root).map_err(|source| BundleError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| BundleError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let p = e.path();
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if p.is_dir() {
            files_under(&p, &name, out)?;
        } else if p.is_file() {
            out.insert(name, p);
        }
    }
    Ok(())
}

/// Writes the bundle for `pins` and the image blobs `images` (sha256
/// digests, all already in the cache) to `out`, atomically. Image blobs go
/// to `images/blobs/sha256/<hex>`.
pub fn export(
    m: &Manifests,
    cache: &Cache,
    pins: &[ArtifactPin],
    images: &[String],
    out: &Path,
    mtime: u64,
) -> Result<usize, BundleError> {
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
    let mut sums = String::new();
    for (name, path) in &files {
        let h = crate::fsutil::sha256_file(path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        sums.push_str(&format!("{h}  {name}\n"));
    }
    let tmp = out.with_extension("tmp-bundle");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let mut b = tar::Builder::new(BufWriter::new(f));
    tarutil::append_file(
        &mut b,
        "SHA256SUMS",
        0o644,
        mtime,
        sums.len() as u64,
        sums.as_bytes(),
    )
    .map_err(io(&tmp))?;
    for (name, path) in &files {
        let f = File::open(path).map_err(io(path))?;
        let meta = f.metadata().map_err(io(path))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        tarutil::append_file(&mut b, name, mode, mtime, meta.len(), BufReader::new(f))
            .map_err(io(&tmp))?;
    }
    let w = b.into_inner().map_err(io(&tmp))?;
    let f = w.into_inner().map_err(|e| BundleError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, out).map_err(io(out))?;
    Ok(files.len())
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub added: Vec<String>,
    pub already: Vec<String>,
    /// Files in the mirror layout that no local pin names.
    pub unpinned: Vec<String>,
}

/// Adds every pinned artifact of the bundle to the cache, each verified against
/// the bundle's SHA256SUMS and the local pin before it is renamed into place.
pub fn import(m: &Manifests, cache: &Cache, bundle: &Path) -> Result<Imported, BundleError> {
    let io = |source| BundleError::Io {
        path: bundle.to_path_buf(),
        source,
    };
    let by_path: BTreeMap<&str, &ArtifactPin> = m
        .pins
        .artifacts
        .iter()
        .filter_map(|p| mirror_path(&p.url).map(|mp| (mp, p)))
        .collect();
    let f = File::open(bundle).map_err(io)?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut sums: Option<BTreeMap<String, String>> = None;
    let mut done = Imported::default();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let Some(sums) = sums.as_ref() else {
            if name != "SHA256SUMS" {
                return Err(BundleError::NotABundle {
                    path: bundle.to_path_buf(),
                });
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(io)?;
            sums = Some(
                text.lines()
                    .filter_map(|l| l.split_once("  "))
                    .map(|(h, p)| (p.to_string(), h.to_string()))
                    .collect(),
            );
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let listed = sums.get(&name).ok_or_else(|| BundleError::Unlisted {
            bundle: bundle.to_path_buf(),
            file: name.clone(),
        })?;
        if let Some(hex) = name.strip_prefix(IMAGE_BLOBS) {
            // an image blob: its name is its digest
            let digest = format!("sha256:{hex}");
            let dest = super::oci::blob_file(cache, &digest);
            if dest.is_file() {
                done.already.push(format!("image blob {digest}"));
                continue;
            }
            let tmp = cache.temp(hex);
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(io)?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != hex || &actual != listed {
                return Err(BundleError::Mismatch {
                    bundle: bundle.to_path_buf(),
                    file: name,
                    what: "its digest".into(),
                    expected: digest,
                    actual: format!("sha256:{actual}"),
                });
            }
            fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            done.added.push(format!("image blob {digest}"));
            continue;
        }
        let Some(pin) = by_path.get(name.as_str()) else {
            if !(name.starts_with("manifests/") || name.starts_with("layers/")) {
                done.unpinned.push(name);
            }
            continue;
        };
        let label = format!("{} {} ({})", pin.name, pin.version, pin.arch);
        if cache.has(&pin.checksum) {
            done.already.push(label);
            continue;
        }
        let tmp = cache.temp(&format!(
            "{}-{}",
            digest::algo(&pin.checksum),
            digest::hex_of(&pin.checksum)
        ));
        let result = (|| {
            let mut out = BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
            let mut sha = Sha256::new();
            let mut pinned = Hasher::for_checksum(&pin.checksum);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf).map_err(io_err(bundle))?;
                if n == 0 {
                    break;
                }
                sha.update(&buf[..n]);
                pinned.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
            }
            out.flush().map_err(io_err(&tmp))?;
            Ok::<_, FetchError>((hex::encode(sha.finalize()), pinned.hex()))
        })();
        let (sha, pinned) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let mismatch = if &sha != listed {
            Some(("its SHA256SUMS line".to_string(), listed.clone(), sha))
        } else if pinned != digest::hex_of(&pin.checksum) {
            Some((
                format!("the pin of {label}"),
                format!(
                    "{}:{}",
                    digest::algo(&pin.checksum),
                    digest::hex_of(&pin.checksum)
                ),
                format!("{}:{pinned}", digest::algo(&pin.checksum)),
            ))
        } else {
            None
        };
        if let Some((what, expected, actual)) = mismatch {
            let _ = fs::remove_file(&tmp);
            return Err(BundleError::Mismatch {
                bundle: bundle.to_path_buf(),
                file: name,
                what,
                expected,
                actual,
            });
        }
        cache.commit(&tmp, &pin.checksum)?;
        done.added.push(label);
    }
    if sums.is_none() {
        return Err(BundleError::NotABundle {
            path: bundle.to_path_buf(),
        });
    }
    Ok(done)
}

//! `cloud-init/layers.iso` (`--seed-layers volume`): the layers volume a
//! node's seed script reads its shared layers from, attached beside its
//! `seed.iso`. Takes the shared layers the seed leaves out (base, roles;
//! never the OS, a node's own layers or its secrets) and gives one ISO 9660
//! volume (label `imglayers`, `layers/<NN-name>.tar.*`, as in a seed), made
//! once per set of shared layers and kept in the layer store
//! (`<cache>/layers/seed/<key>.iso`, with its record `<key>.json`, written
//! last). A node's `layers.iso` is a hard link to it, read-only: it holds
//! no secret, and a fleet's seeds cost their own layers each, as url mode's
//! do, without a server. Before this run first uses an entry, its size and
//! stamp are checked against its record (hashed again when the stamp
//! changed, as the layer store does); one that does not match is made again.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cloudinit::LAYERS_LABEL;
use super::iso::{self, IsoFile};
use crate::fsutil;
use crate::layer::{BuiltLayer, Found, Stamp, check_file, restamp};

/// A stored layers volume.
pub(crate) struct Volume {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// What the store keeps of a volume beside it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    size: u64,
    sha256: String,
    stamp: Stamp,
    /// The layers' file names, in the volume's order (for a reader).
    layers: Vec<String>,
}

/// What changes the volume's bytes beside its layers: bump it with the
/// layout.
const VERSION: &str = "imgbuild layers volume 1 (layers/<name>)";

/// The entries this process checked against their records.
static CHECKED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A failure, with the file it concerns.
pub(crate) type Failed = (PathBuf, io::Error);

fn at(path: &Path) -> impl FnOnce(io::Error) -> Failed + '_ {
    move |e| (path.to_path_buf(), e)
}

/// The key of `layers` (their names and digests, in order) at `mtime`.
fn key(layers: &[BuiltLayer], mtime: u64) -> String {
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update(format!("{mtime}"));
    for l in layers {
        h.update(format!("\n{} {}", l.tar_name(), l.digest));
    }
    hex::encode(h.finalize())
}

/// The volume of `layers` (timestamps from `mtime`), made in `dir` unless
/// an entry matches.
pub(crate) fn get(layers: &[BuiltLayer], mtime: u64, dir: &Path) -> Result<Volume, Failed> {
    let key = key(layers, mtime);
    fs::create_dir_all(dir).map_err(at(dir))?;
    let _lock = lock(dir, &key)?;
    if let Some(found) = find(dir, &key) {
        return Ok(found);
    }
    clean_debris(dir, &key);
    make(layers, mtime, dir, &key)
}

/// The stored volume of `layers`, when `dir` keeps one that matches its
/// record; none is made.
pub(crate) fn kept(layers: &[BuiltLayer], mtime: u64, dir: &Path) -> Option<Volume> {
    let key = key(layers, mtime);
    let _lock = lock(dir, &key).ok()?;
    find(dir, &key)
}

/// The entry `key`'s lock, held until the file is closed.
fn lock(dir: &Path, key: &str) -> Result<File, Failed> {
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = fsutil::open_lock_file(&lock_path).map_err(at(&lock_path))?;
    lock.lock().map_err(at(&lock_path))?;
    Ok(lock)
}

fn iso_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.iso"))
}

fn record_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.json"))
}

/// Removes what a killed run left of the entry `key` (the volume's
/// temporary file): with `key`'s lock held, nobody else is making it.
fn clean_debris(dir: &Path, key: &str) {
    let _ = fs::remove_file(dir.join(format!("{key}.iso.tmp")));
}

/// The stored entry `key` when its record is there and its volume matches
/// it (checked once per process: size and stamp, and when the stamp
/// changed, its sha256).
fn find(dir: &Path, key: &str) -> Option<Volume> {
    let json = record_path(dir, key);
    let mut r: Record = serde_json::from_str(&fs::read_to_string(&json).ok()?).ok()?;
    let path = iso_path(dir, key);
    let mut checked = CHECKED.lock().ok()?;
    let seen = checked.get_or_insert_with(HashSet::new);
    if !seen.contains(key) {
        match check_file(&path, r.size, &r.sha256, Some(&r.stamp)) {
            Found::Good { hashed } => {
                if hashed {
                    // best effort: without a new stamp, the next run hashes again
                    let _ = restamp(&path).and_then(|stamp| {
                        r.stamp = stamp;
                        write_record(dir, key, &r)
                    });
                }
            }
            Found::Missing | Found::Damaged(_) => {
                let _ = fs::remove_file(&json);
                return None;
            }
        }
        seen.insert(key.to_string());
    }
    Some(Volume {
        path,
        size: r.size,
        sha256: r.sha256,
    })
}

fn write_record(dir: &Path, key: &str, r: &Record) -> io::Result<()> {
    let text = serde_json::to_string_pretty(r).unwrap_or_default();
    fsutil::write_atomic(&record_path(dir, key), text.as_bytes(), 0o444)
}

/// Makes the entry `key`: the volume (hashed while written, on disk before
/// its record), then the record.
fn make(layers: &[BuiltLayer], mtime: u64, dir: &Path, key: &str) -> Result<Volume, Failed> {
    let files: Vec<IsoFile> = layers
        .iter()
        .map(|l| IsoFile::path(&format!("layers/{}", l.tar_name()), &l.file))
        .collect();
    let path = iso_path(dir, key);
    let sha256 = iso::write(&path, LAYERS_LABEL, &files, mtime).map_err(at(&path))?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(at(&path))?;
    let stamp = restamp(&path).map_err(at(&path))?;
    let r = Record {
        size: fs::metadata(&path).map_err(at(&path))?.len(),
        sha256: sha256.clone(),
        stamp,
        layers: layers.iter().map(BuiltLayer::tar_name).collect(),
    };
    let json = record_path(dir, key);
    write_record(dir, key, &r).map_err(at(&json))?;
    let size = r.size;
    if let Ok(mut checked) = CHECKED.lock() {
        checked
            .get_or_insert_with(HashSet::new)
            .insert(key.to_string());
    }
    Ok(Volume { path, size, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::LayerKind;

    fn layer(dir: &Path, name: &str, body: &[u8]) -> BuiltLayer {
        let file = dir.join(format!("{name}.tar.gz"));
        fs::write(&file, body).unwrap();
        BuiltLayer {
            name: name.to_string(),
            kind: LayerKind::Role,
            key: name.to_string(),
            compression: crate::pgzip::Compression::Gzip,
            digest: hex::encode(Sha256::digest(body)),
            size: body.len() as u64,
            diff_id: "0".repeat(64),
            file,
            segment: None,
            segment_bytes: None,
            segment_digest: None,
            segment_size: None,
            files_digest: None,
            files: None,
        }
    }

    #[test]
    fn a_volume_is_made_once_and_made_again_when_damaged() {
        let t = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(t.path(), "10-base", b"base"),
            layer(t.path(), "20-role", b"role"),
        ];
        let dir = t.path().join("seed");
        let first = get(&layers, 1, &dir).unwrap();
        let bytes = fs::read(&first.path).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), first.sha256);
        assert_eq!(&bytes[0x8001..0x8006], b"CD001");
        // a second run finds it (and, the stamp the same, does not write it)
        *CHECKED.lock().unwrap() = None;
        let again = get(&layers, 1, &dir).unwrap();
        assert_eq!(
            (again.path.clone(), again.sha256.clone()),
            (first.path.clone(), first.sha256.clone())
        );
        // damaged in place: not found, made again with the same bytes
        let _ = fs::set_permissions(
            &first.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        );
        fs::write(&first.path, b"not a volume").unwrap();
        *CHECKED.lock().unwrap() = None;
        let remade = get(&layers, 1, &dir).unwrap();
        assert_eq!(fs::read(&remade.path).unwrap(), bytes);
        // other layers, another entry
        let other = get(&layers[..1], 1, &dir).unwrap();
        assert_ne!(other.path, first.path);
    }
}

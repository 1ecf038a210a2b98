//! What every disk of the same shared layers has in common, made once and
//! kept in the layer store (`<cache>/layers/disk/<key>.*`): takes the
//! node's shared layers (OS, base, roles; never a node's own or its
//! secrets) and imgbuild's own root files, and gives the root filesystem
//! with its dm-verity hash device after it (`.parts`: the two partitions'
//! bytes, each from a MiB boundary), the boot initramfs (`.boot`), the boot
//! loader (`.loader`) and a record of them (`.json`, written last: an entry
//! counts once its record exists). The key is the layers' digests and
//! everything else the bytes depend on, so a node of a role and the role's
//! generic disk share one root, and a fleet's disks cost a copy each. An
//! entry is hashed against its record before this run first uses it; one
//! that does not match is made again.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tree::{Own, Tree};
use super::{DiskError, Input, MIB, boot, boot_loader_path, io_err, squash, verity};
use crate::fsutil;
use crate::layer::BuiltLayer;
use crate::rootcheck::RootCheck;

/// The shared part of a disk.
pub(crate) struct Shared {
    /// The root, then its hash device at `hash_at`.
    pub(crate) parts: PathBuf,
    pub(crate) root_len: u64,
    pub(crate) hash_at: u64,
    pub(crate) hash_len: u64,
    pub(crate) root_hash: [u8; 32],
    pub(crate) boot: Vec<u8>,
    pub(crate) loader: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    root_len: u64,
    hash_at: u64,
    hash_len: u64,
    root_hash: String,
    parts_sha256: String,
    boot_sha256: String,
    loader_sha256: String,
}

/// What changes the bytes of the shared part beside the layers: bump it
/// with the format.
const VERSION: &str = "imgbuild disk root 1";

/// The entries this process checked against their records.
static CHECKED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The key of `layers` (the shared ones, in order) with `own` files.
fn key(input: &Input, layers: &[BuiltLayer], own: &[Own]) -> String {
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update(format!("{:?} {}", input.plan.arch, input.mtime));
    for l in layers {
        h.update(&l.digest);
    }
    for o in own {
        h.update(format!("{} {:o} {}", o.path, o.mode, o.body.len()));
        h.update(o.body);
    }
    h.update(boot::SCRIPT);
    h.update(boot::PROGRAMS.join(" "));
    h.update(boot::MODULE_DIRS.join(" "));
    hex::encode(h.finalize())
}

/// The shared part of `input`'s disk from `layers`, made (in `dir`) unless
/// an entry matches.
pub(crate) fn get(
    input: &Input,
    layers: &[BuiltLayer],
    own: &[Own],
    dir: &Path,
) -> Result<Shared, DiskError> {
    let target = input.plan.target.as_str();
    let key = key(input, layers, own);
    fs::create_dir_all(dir).map_err(io_err(target, dir))?;
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(target, &lock_path))?;
    lock.lock().map_err(io_err(target, &lock_path))?;
    if let Some(found) = find(dir, &key) {
        return Ok(found);
    }
    make(input, layers, own, dir, &key)
}

fn files(dir: &Path, key: &str) -> [PathBuf; 4] {
    ["parts", "boot", "loader", "json"].map(|x| dir.join(format!("{key}.{x}")))
}

/// The stored entry `key` when its record is there and its files match it
/// (hashed once per process).
fn find(dir: &Path, key: &str) -> Option<Shared> {
    let [parts, boot, loader, json] = files(dir, key);
    let r: Record = serde_json::from_str(&fs::read_to_string(&json).ok()?).ok()?;
    let boot_bytes = fs::read(&boot).ok()?;
    let loader_bytes = fs::read(&loader).ok()?;
    let mut checked = CHECKED.lock().ok()?;
    let seen = checked.get_or_insert_with(HashSet::new);
    if !seen.contains(key) {
        let ok = fsutil::sha256_file(&parts).ok()? == r.parts_sha256
            && hex::encode(Sha256::digest(&boot_bytes)) == r.boot_sha256
            && hex::encode(Sha256::digest(&loader_bytes)) == r.loader_sha256;
        if !ok {
            let _ = fs::remove_file(&json);
            return None;
        }
        seen.insert(key.to_string());
    }
    let mut root_hash = [0u8; 32];
    hex::decode_to_slice(&r.root_hash, &mut root_hash).ok()?;
    Some(Shared {
        parts,
        root_len: r.root_len,
        hash_at: r.hash_at,
        hash_len: r.hash_len,
        root_hash,
        boot: boot_bytes,
        loader: loader_bytes,
    })
}

/// Makes the entry `key`: the root's tree (spooled), its squashfs and hash
/// device, the boot initramfs and loader; the record last.
fn make(
    input: &Input,
    layers: &[BuiltLayer],
    own: &[Own],
    dir: &Path,
    key: &str,
) -> Result<Shared, DiskError> {
    let target = input.plan.target.as_str();
    let pid = std::process::id();
    let spool = dir.join(format!("{key}.spool.{pid}"));
    let mtime = u64::try_from(input.mtime).unwrap_or(0);
    let tree = Tree::read(layers, own, mtime, &spool).map_err(|e| DiskError::Layers {
        target: target.to_string(),
        source: Box::new(e),
    });
    let made = tree.and_then(|tree| write_parts(input, layers, &tree, dir, key));
    let _ = fs::remove_file(&spool);
    made
}

/// The entry's files from `tree`, each written beside its place and
/// renamed in, the record last.
fn write_parts(
    input: &Input,
    layers: &[BuiltLayer],
    tree: &Tree,
    dir: &Path,
    key: &str,
) -> Result<Shared, DiskError> {
    let target = input.plan.target.as_str();
    let (loader_path, _) = boot_loader_path(input.plan.arch);
    let loader = tree
        .content(loader_path)
        .map_err(io_err(target, dir))?
        .ok_or_else(|| DiskError::NoBootLoader {
            target: target.to_string(),
            path: loader_path.to_string(),
        })?;
    let programs = RootCheck::kept_in(input.store_dir)
        .closure(input.plan, layers, boot::PROGRAMS)
        .map_err(|e| DiskError::Boot {
            target: target.to_string(),
            source: Box::new(e),
        })?;
    let boot = boot::initramfs(tree, &programs, input.mtime).map_err(io_err(target, dir))?;
    let [parts, boot_path, loader_path, json] = files(dir, key);
    let tmp = |p: &Path| p.with_extension(format!("tmp.{}", std::process::id()));
    let (root_len, hash_at, v) = root_and_hashes(input, tree, key, &tmp(&parts))?;
    for (p, bytes) in [(&boot_path, &boot), (&loader_path, &loader)] {
        fsutil::write_atomic(p, bytes, 0o444).map_err(io_err(target, p))?;
    }
    fs::rename(tmp(&parts), &parts).map_err(io_err(target, &parts))?;
    let record = Record {
        root_len,
        hash_at,
        hash_len: v.size,
        root_hash: hex::encode(v.root_hash),
        parts_sha256: fsutil::sha256_file(&parts).map_err(io_err(target, &parts))?,
        boot_sha256: hex::encode(Sha256::digest(&boot)),
        loader_sha256: hex::encode(Sha256::digest(&loader)),
    };
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    fsutil::write_atomic(&json, text.as_bytes(), 0o444).map_err(io_err(target, &json))?;
    Ok(Shared {
        parts,
        root_len,
        hash_at,
        hash_len: v.size,
        root_hash: v.root_hash,
        boot,
        loader,
    })
}

/// The squashfs of `tree` at the start of `path`, its hash device from the
/// next MiB: (the squashfs's length, where the hash device starts, it).
fn root_and_hashes(
    input: &Input,
    tree: &Tree,
    key: &str,
    path: &Path,
) -> Result<(u64, u64, verity::Verity), DiskError> {
    let target = input.plan.target.as_str();
    let mtime = u64::try_from(input.mtime).unwrap_or(0);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(target, path))?;
    let root_len = squash::write(tree, mtime, &mut f, 0).map_err(|message| DiskError::Root {
        target: target.to_string(),
        path: path.to_path_buf(),
        message,
    })?;
    let hash_at = root_len.next_multiple_of(MIB);
    let salt: [u8; 32] = Sha256::new()
        .chain_update(key)
        .chain_update("verity-salt")
        .finalize()
        .into();
    let uuid = *super::derived_uuid(key.as_bytes(), "verity").as_bytes();
    let v =
        verity::write(&mut f, 0, root_len, hash_at, &salt, &uuid).map_err(io_err(target, path))?;
    f.set_len(hash_at + v.size.next_multiple_of(MIB))
        .map_err(io_err(target, path))?;
    f.flush().map_err(io_err(target, path))?;
    f.sync_all().map_err(io_err(target, path))?;
    read_only(path).map_err(io_err(target, path))?;
    Ok((root_len, hash_at, v))
}

/// Makes the stored file at `path` read-only (0444), as the layer store's.
fn read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
}

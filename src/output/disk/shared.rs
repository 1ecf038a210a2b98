//! What every disk of the same shared layers has in common, made once and
//! kept in the layer store (`<cache>/layers/disk/<key>.*`): takes the
//! node's shared layers (OS, base, roles; never a node's own or its
//! secrets) and imgbuild's own root files, and gives the root filesystem
//! with its dm-verity hash device after it (`.parts`: the two partitions'
//! bytes, each from a MiB boundary), the boot initramfs (`.boot`), the boot
//! loader (`.loader`), the shared disk (`.qcow2`: an ESP with those boot
//! files, the kernel, a loader entry that takes the node from a seed and
//! room for a node's own files, then the parts) with its ESP alone
//! (`.esp`), and a record of them (`.json`, written last: an entry counts
//! once its record exists). The key is the layers' digests and everything
//! else the bytes depend on, so a node of a role and the role's generic
//! disk share one root and one shared disk, and a fleet's disks cost their
//! own clusters each. Before this run first uses an entry, each file's size
//! and stamp are checked against its record (hashed again when the stamp
//! changed, as the layer store does); one that does not match is made again.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cow::CLUSTER;
use super::tree::{Own, Tree};
use super::{DiskError, Input, MIB, boot, boot_loader_path, io_err, squash, verity};
use crate::fsutil;
use crate::layer::{BuiltLayer, Found, Stamp, check_file, restamp};
use crate::rootcheck::RootCheck;

/// The shared part of a disk.
pub(crate) struct Shared {
    /// The root, then its hash device at `hash_at`, `parts_len` bytes.
    pub(crate) parts: PathBuf,
    pub(crate) parts_len: u64,
    pub(crate) root_len: u64,
    pub(crate) hash_at: u64,
    pub(crate) hash_len: u64,
    pub(crate) root_hash: [u8; 32],
    /// The boot initramfs.
    pub(crate) boot: PathBuf,
    pub(crate) boot_sha256: String,
    /// systemd-boot.
    pub(crate) loader: PathBuf,
    pub(crate) loader_sha256: String,
    pub(crate) kernel_sha256: String,
    pub(crate) base: Base,
}

/// The shared disk: these parts behind an ESP with the shared boot files
/// and room for a node's own.
#[derive(Default)]
pub(crate) struct Base {
    /// The ESP alone (its zeros sparse), `esp_len` bytes.
    pub(crate) esp: PathBuf,
    pub(crate) esp_len: u64,
    /// The bytes left on the ESP for a node's own files.
    pub(crate) room: u64,
    /// The whole disk, as qcow2.
    pub(crate) qcow2: PathBuf,
    pub(crate) qcow2_sha256: String,
}

/// The room the shared ESP leaves for a node's loader entry and its own
/// layers; a node whose own files do not fit gets a disk of its own.
const NODE_ROOM: u64 = 16 * MIB;

/// A stored file as its record knows it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    size: u64,
    sha256: String,
    stamp: Option<Stamp>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    root_len: u64,
    hash_at: u64,
    hash_len: u64,
    root_hash: String,
    kernel_sha256: String,
    esp_len: u64,
    room: u64,
    /// By [`FILES`] name.
    files: BTreeMap<String, Kept>,
}

/// What changes the bytes of the shared part beside the layers: bump it
/// with the format.
const VERSION: &str = "imgbuild disk root 2 (a shared disk, 16 MiB of room)";

/// The stored files of an entry, beside its record (`json`).
const FILES: [&str; 5] = ["parts", "boot", "loader", "esp", "qcow2"];

/// The entries this process checked against their records.
static CHECKED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The key of `layers` (the shared ones, in order) with `own` files.
fn key(input: &Input, layers: &[BuiltLayer], own: &[Own]) -> String {
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update(format!("{:?} {}", input.plan.arch, input.mtime));
    h.update(super::generic_cmdline(input.plan.arch));
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
    let lock = fsutil::open_lock_file(&lock_path).map_err(io_err(target, &lock_path))?;
    lock.lock().map_err(io_err(target, &lock_path))?;
    if let Some(found) = find(dir, &key) {
        return Ok(found);
    }
    clean_debris(dir, &key);
    make(input, layers, own, dir, &key)
}

fn path(dir: &Path, key: &str, file: &str) -> PathBuf {
    dir.join(format!("{key}.{file}"))
}

/// Where `path` is written before it is renamed into place.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

/// Removes what a killed run left of the entry `key` while making it (its
/// spool and temporary files): with `key`'s lock held, nobody else is
/// making it.
fn clean_debris(dir: &Path, key: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(key) else {
            continue;
        };
        if rest.contains(".tmp.") || rest.starts_with(".spool.") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The stored entry `key` when its record is there and its files match it
/// (checked once per process: their size and stamp, and when the stamp
/// changed, their sha256).
fn find(dir: &Path, key: &str) -> Option<Shared> {
    let json = path(dir, key, "json");
    let mut r: Record = serde_json::from_str(&fs::read_to_string(&json).ok()?).ok()?;
    let mut checked = CHECKED.lock().ok()?;
    let seen = checked.get_or_insert_with(HashSet::new);
    if !seen.contains(key) {
        let mut hashed = false;
        for name in FILES {
            let kept = r.files.get(name)?;
            match check_file(
                &path(dir, key, name),
                kept.size,
                &kept.sha256,
                kept.stamp.as_ref(),
            ) {
                Found::Good { hashed: h } => hashed |= h,
                Found::Missing | Found::Damaged(_) => {
                    let _ = fs::remove_file(&json);
                    return None;
                }
            }
        }
        if hashed {
            // best effort: without new stamps, the next run hashes again
            let _ = stamp_and_record(dir, key, &mut r);
        }
        seen.insert(key.to_string());
    }
    shared_of(dir, key, &r)
}

fn shared_of(dir: &Path, key: &str, r: &Record) -> Option<Shared> {
    let mut root_hash = [0u8; 32];
    hex::decode_to_slice(&r.root_hash, &mut root_hash).ok()?;
    let digest = |name: &str| r.files.get(name).map(|k| k.sha256.clone());
    let parts_len = r.files.get("parts")?.size;
    Some(Shared {
        parts: path(dir, key, "parts"),
        parts_len,
        root_len: r.root_len,
        hash_at: r.hash_at,
        hash_len: r.hash_len,
        root_hash,
        boot: path(dir, key, "boot"),
        boot_sha256: digest("boot")?,
        loader: path(dir, key, "loader"),
        loader_sha256: digest("loader")?,
        kernel_sha256: r.kernel_sha256.clone(),
        base: Base {
            esp: path(dir, key, "esp"),
            esp_len: r.esp_len,
            room: r.room,
            qcow2: path(dir, key, "qcow2"),
            // none yet while the shared disk is made ([`write_base`])
            qcow2_sha256: digest("qcow2").unwrap_or_default(),
        },
    })
}

/// Takes the stamps of `key`'s files (read-only first) and writes its
/// record.
fn stamp_and_record(dir: &Path, key: &str, r: &mut Record) -> io::Result<()> {
    for (name, kept) in &mut r.files {
        kept.stamp = Some(restamp(&path(dir, key, name))?);
    }
    let text = serde_json::to_string_pretty(r).unwrap_or_default();
    fsutil::write_atomic(&path(dir, key, "json"), text.as_bytes(), 0o444)
}

/// Makes the entry `key`: the root's tree (spooled), its squashfs and hash
/// device, the boot initramfs and loader, the shared disk; the record last.
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
    let mut record = made?;
    write_base(input, dir, key, &mut record)?;
    stamp_and_record(dir, key, &mut record).map_err(io_err(target, dir))?;
    shared_of(dir, key, &record).ok_or_else(|| DiskError::Io {
        target: target.to_string(),
        path: path(dir, key, "json"),
        source: io::Error::other("a record just written does not read back"),
    })
}

/// `bytes` as the stored file `path` (0444); what the record keeps of it.
fn keep(path: &Path, bytes: &[u8]) -> io::Result<Kept> {
    fsutil::write_atomic(path, bytes, 0o444)?;
    Ok(Kept {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        stamp: None,
    })
}

/// The entry's root, its hash device, boot initramfs and loader from
/// `tree`, each written beside its place and renamed in; their record.
fn write_parts(
    input: &Input,
    layers: &[BuiltLayer],
    tree: &Tree,
    dir: &Path,
    key: &str,
) -> Result<Record, DiskError> {
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
    let parts = path(dir, key, "parts");
    let tmp = temporary(&parts);
    let (root_len, hash_at, v) = root_and_hashes(input, tree, key, &tmp)?;
    let mut files = BTreeMap::new();
    for (name, bytes) in [("boot", &boot), ("loader", &loader)] {
        let p = path(dir, key, name);
        files.insert(
            name.to_string(),
            keep(&p, bytes).map_err(io_err(target, &p))?,
        );
    }
    fs::rename(&tmp, &parts).map_err(io_err(target, &parts))?;
    let parts_kept = Kept {
        size: fs::metadata(&parts).map_err(io_err(target, &parts))?.len(),
        sha256: fsutil::sha256_file(&parts).map_err(io_err(target, &parts))?,
        stamp: None,
    };
    files.insert("parts".to_string(), parts_kept);
    Ok(Record {
        root_len,
        hash_at,
        hash_len: v.size,
        root_hash: hex::encode(v.root_hash),
        kernel_sha256: fsutil::sha256_file(input.kernel).map_err(io_err(target, input.kernel))?,
        esp_len: 0,
        room: NODE_ROOM,
        files,
    })
}

/// The shared disk of the entry: its ESP (the boot loader, the kernel, the
/// boot initramfs and a loader entry that takes the node from a seed, as a
/// role's generic disk does) with [`NODE_ROOM`] to spare, the parts after
/// it; kept as the ESP alone and as the whole disk in qcow2.
fn write_base(input: &Input, dir: &Path, key: &str, r: &mut Record) -> Result<(), DiskError> {
    let target = input.plan.target.as_str();
    let shared = shared_of(dir, key, r).ok_or_else(|| DiskError::Io {
        target: target.to_string(),
        path: path(dir, key, "json"),
        source: io::Error::other("a record without its files"),
    })?;
    let name = format!("shared disk {}", &key[..12]);
    let cmdline = super::generic_cmdline(input.plan.arch);
    let seed = super::disk_seed(&name, &shared, None, &cmdline);
    let ids = super::Ids::derived(&seed, &shared.root_hash);
    let entry = super::entry(&name, false, &ids.cmdline(&cmdline, &shared.root_hash));
    let files = super::esp_files(input.plan.arch, &shared, input.kernel, entry, None);
    let (disk, esp_len) =
        super::standalone((input.plan, input.mtime), &shared, &files, NODE_ROOM, &ids)?;
    let esp = path(dir, key, "esp");
    let kept = keep_esp(&disk, esp_len, &esp).map_err(io_err(target, &esp))?;
    r.files.insert("esp".to_string(), kept);
    r.esp_len = esp_len;
    let qcow2 = path(dir, key, "qcow2");
    let tmp = temporary(&qcow2);
    let made = super::Made {
        cow: disk,
        over_base: false,
    };
    let sha256 = super::write_image(&made, &tmp, None).map_err(io_err(target, &tmp))?;
    let size = fs::metadata(&tmp).map_err(io_err(target, &tmp))?.len();
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::rename(&tmp, &qcow2))
        .map_err(io_err(target, &qcow2))?;
    r.files.insert(
        "qcow2".to_string(),
        Kept {
            size,
            sha256,
            stamp: None,
        },
    );
    Ok(())
}

/// The ESP of `disk` (at 1 MiB, `len` bytes) as the file `path`, its zero
/// clusters left as holes.
fn keep_esp(disk: &super::Cow, len: u64, path: &Path) -> io::Result<Kept> {
    let tmp = temporary(path);
    let file = File::create(&tmp)?;
    file.set_len(len)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CLUSTER as usize];
    for at in (0..len).step_by(CLUSTER as usize) {
        let n = CLUSTER.min(len - at) as usize;
        disk.read_at(MIB + at, &mut buf[..n])?;
        sha.update(&buf[..n]);
        if buf[..n].iter().any(|b| *b != 0) {
            file.write_all_at(&buf[..n], at)?;
        }
    }
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(Kept {
        size: len,
        sha256: hex::encode(sha.finalize()),
        stamp: None,
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
    Ok((root_len, hash_at, v))
}

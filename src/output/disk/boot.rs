//! The disk's boot initramfs: takes the node's [`Tree`], the files the
//! programs of [`SCRIPT`] need in it (the root check's loader closure of
//! [`PROGRAMS`]) and gives one gzip'd newc archive: those programs with
//! their interpreter, libraries and links, the kernel's storage, device
//! mapper and filesystem modules ([`MODULE_DIRS`]) with the module index,
//! and `/init` ([`SCRIPT`]). Nothing of the node's own (no layer of the
//! role or the node, no secret): the same for every node of a base OS.
//! Entries in path order, owners and modes as the layers have them, every
//! mtime SOURCE_DATE_EPOCH.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::Path;

use super::tree::{Item, Tree};
use crate::newc;

/// The boot `/init` (a POSIX shell script for the node's own `/bin/sh`).
pub(crate) const SCRIPT: &str = include_str!("boot.sh");

/// What [`SCRIPT`] runs, as Debian installs it (a usr-merged root's links
/// are followed).
pub(crate) const PROGRAMS: &[&str] = &[
    "bin/sh",
    "bin/cat",
    "bin/cp",
    "bin/mkdir",
    "bin/mount",
    "bin/sleep",
    "bin/uname",
    "bin/kmod",
    "sbin/depmod",
    "sbin/modprobe",
    "sbin/blkid",
    "sbin/switch_root",
    "lib/systemd/systemd-veritysetup",
];

/// The directories of a kernel's modules the initramfs holds (below
/// `lib/modules/<version>/kernel/`): disks, the device mapper, virtio,
/// and squashfs and overlayfs with what they need.
pub(crate) const MODULE_DIRS: &[&str] = &[
    "crypto",
    "drivers/ata",
    "drivers/block",
    "drivers/md",
    "drivers/nvme",
    "drivers/scsi",
    "drivers/virtio",
    "fs/overlayfs",
    "fs/squashfs",
    "lib",
];

/// Whether `path` (as the tree has it) is one of the modules or the
/// module index the initramfs holds.
fn is_boot_module(path: &str) -> bool {
    let p = path.strip_prefix("usr/").unwrap_or(path);
    let Some(rest) = p.strip_prefix("lib/modules/") else {
        return false;
    };
    let Some((_, rest)) = rest.split_once('/') else {
        return true; // the version's directory
    };
    rest.starts_with("modules.")
        || rest == "kernel"
        || rest.strip_prefix("kernel/").is_some_and(|k| {
            MODULE_DIRS
                .iter()
                .any(|d| k == *d || k.starts_with(&format!("{d}/")))
        })
}

/// An entry of an initramfs: mode bits, owner, and what it is (`None`:
/// the boot `/init`).
type Pick<'t> = (u32, u32, u32, Option<&'t Item>);

/// The gzip'd newc initramfs of `files` (from [`crate::rootcheck`]) and
/// the modules of `tree`, with `/init`; every mtime `mtime`.
pub(crate) fn initramfs(tree: &Tree, files: &BTreeSet<String>, mtime: i64) -> io::Result<Vec<u8>> {
    let mut picked: BTreeMap<String, Pick> = BTreeMap::new();
    for (path, e) in &tree.entries {
        let p = path.to_string_lossy();
        if files.contains(p.as_ref()) || is_boot_module(&p) {
            picked.insert(p.into_owned(), (e.mode, e.uid, e.gid, Some(&e.item)));
        }
    }
    for d in ["dev", "proc", "sys", "run", "newroot"] {
        picked.insert(d.to_string(), (0o755, 0, 0, Some(&Item::Dir)));
    }
    picked.insert("init".to_string(), (0o755, 0, 0, None));
    newc(tree, picked, mtime)
}

/// The gzip'd newc archive of every path of `tree` below `/prefix` (what a
/// disk's boot initramfs copies onto the root); every mtime `mtime`.
pub(crate) fn below(tree: &Tree, prefix: &str, mtime: i64) -> io::Result<Vec<u8>> {
    let mut picked: BTreeMap<String, Pick> = BTreeMap::new();
    for (path, e) in &tree.entries {
        let p = format!("{prefix}/{}", path.to_string_lossy());
        picked.insert(p, (e.mode, e.uid, e.gid, Some(&e.item)));
    }
    newc(tree, picked, mtime)
}

/// `picked` with every directory above its paths as one gzip'd newc
/// archive, in path order.
fn newc(tree: &Tree, mut picked: BTreeMap<String, Pick>, mtime: i64) -> io::Result<Vec<u8>> {
    let above: Vec<String> = picked
        .keys()
        .flat_map(|p| {
            Path::new(p)
                .ancestors()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
        })
        .filter(|a| !a.is_empty())
        .collect();
    for d in above {
        picked.entry(d).or_insert((0o755, 0, 0, Some(&Item::Dir)));
    }
    let mtime = u32::try_from(mtime).unwrap_or(0);
    let mut cpio = Vec::new();
    for (ino, (name, (mode, uid, gid, item))) in (1..).zip(&picked) {
        let (kind, body) = match item {
            None => (newc::S_IFREG, SCRIPT.as_bytes().to_vec()),
            Some(Item::Dir) => (newc::S_IFDIR, Vec::new()),
            Some(Item::Symlink(t)) => (newc::S_IFLNK, t.as_bytes().to_vec()),
            Some(Item::File { offset, len }) => {
                let mut b = Vec::new();
                tree.reader(*offset, *len).read_to_end(&mut b)?;
                (newc::S_IFREG, b)
            }
        };
        let header = newc::Header {
            name,
            ino,
            mode: kind
                | if kind == newc::S_IFLNK {
                    0o777
                } else {
                    mode & 0o7777
                },
            uid: *uid,
            gid: *gid,
            nlink: if kind == newc::S_IFDIR { 2 } else { 1 },
            mtime,
            size: u32::try_from(body.len()).map_err(io::Error::other)?,
        };
        cpio.extend_from_slice(&header.to_bytes());
        cpio.extend_from_slice(&body);
        cpio.resize(cpio.len() + newc::padding(body.len() as u64), 0);
    }
    cpio.extend_from_slice(&newc::trailer());
    crate::output::pxe::init::gzip(&cpio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_and_filesystem_modules_and_the_index_are_boot_modules() {
        for p in [
            "usr/lib/modules/6.1.0-57-cloud-amd64",
            "usr/lib/modules/6.1.0-57-cloud-amd64/modules.dep.bin",
            "lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/md/dm-verity.ko",
            "usr/lib/modules/6.1.0-57-cloud-amd64/kernel/fs/squashfs/squashfs.ko",
        ] {
            assert!(is_boot_module(p), "{p}");
        }
        for p in [
            "usr/lib/modules/6.1.0-57-cloud-amd64/kernel/net/ipv4/ip_vs.ko",
            "usr/lib/modules/6.1.0-57-cloud-amd64/kernel/fs/squashfs2/x.ko",
            "usr/lib/modulesx/a",
            "usr/bin/kmod",
        ] {
            assert!(!is_boot_module(p), "{p}");
        }
    }
}

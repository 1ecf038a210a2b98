//! The disk's root filesystem: takes the [`Tree`] of a node's root and
//! writes it as one read-only squashfs (version 4, gzip, 128 KiB blocks,
//! with the `backhand` crate) at an offset of the disk image: every path in
//! the tree's order, every owner, mode and mtime as the layers have them,
//! the superblock's time SOURCE_DATE_EPOCH and duplicate files stored once,
//! so the same tree gives the same bytes. Padded to whole 4 KiB blocks (the
//! dm-verity data blocks, [`super::verity`]).

use std::io::{Seek, Write};
use std::path::Path;

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use super::tree::{Item, Tree};

/// The filesystem's block: squashfs's default.
const BLOCK: u32 = 128 << 10;

/// A squashfs header for an entry's metadata.
fn header(mode: u32, uid: u32, gid: u32, mtime: u64) -> NodeHeader {
    NodeHeader::new(
        u16::try_from(mode & 0o7777).unwrap_or(0o755),
        uid,
        gid,
        u32::try_from(mtime).unwrap_or(u32::MAX),
    )
}

/// Writes `tree` as a squashfs at `offset` of `w`; returns its size (whole
/// 4 KiB blocks).
pub(crate) fn write<W: Write + Seek>(
    tree: &Tree,
    mtime: u64,
    w: W,
    offset: u64,
) -> Result<u64, String> {
    let mut fs = FilesystemWriter::default();
    fs.set_time(u32::try_from(mtime).unwrap_or(u32::MAX));
    fs.set_block_size(BLOCK);
    fs.set_compressor(
        FilesystemCompressor::new(Compressor::Gzip, None).map_err(|e| e.to_string())?,
    );
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    // the padding to 4 KiB blocks (dm-verity's)
    fs.set_kib_padding(4);
    let dir = header(0o755, 0, 0, mtime);
    for (path, e) in &tree.entries {
        let h = header(e.mode, e.uid, e.gid, e.mtime);
        if let Some(parent) = path.parent().filter(|p| *p != Path::new(""))
            && !tree.entries.contains_key(parent)
        {
            fs.push_dir_all(parent, dir).map_err(|x| named(path, &x))?;
        }
        let pushed = match &e.item {
            Item::Dir => fs.push_dir(path, h),
            Item::Symlink(t) => fs.push_symlink(t.as_str(), path, h),
            Item::File { offset, len } => fs.push_file(tree.reader(*offset, *len), path, h),
        };
        pushed.map_err(|x| named(path, &x))?;
    }
    let (_, size) = fs
        .write_with_offset(w, offset)
        .map_err(|e| format!("cannot write the squashfs: {e}"))?;
    Ok(size)
}

fn named(path: &Path, e: &backhand::BackhandError) -> String {
    format!("cannot add /{} to the squashfs: {e}", path.display())
}

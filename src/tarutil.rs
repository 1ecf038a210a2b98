//! Writing reproducible tar entries: numeric owners (root unless the manifest
//! says otherwise), explicit modes, one mtime (SOURCE_DATE_EPOCH), GNU long
//! names. Callers append in sorted order. Used by every stage that writes a tar.

use std::io::{self, Read, Write};

/// A regular file, owned by root.
pub(crate) fn append_file<W: Write, R: Read>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    mtime: u64,
    size: u64,
    data: R,
) -> io::Result<()> {
    append_file_as(b, path, mode, (0, 0), mtime, size, data)
}

/// A regular file owned by numeric `(uid, gid)`. With `io::empty()` as
/// `data`, only the header block(s) are written, for a caller that writes
/// the content and the padding to 512 bytes itself.
pub(crate) fn append_file_as<W: Write, R: Read>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    (uid, gid): (u32, u32),
    mtime: u64,
    size: u64,
    data: R,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime);
    h.set_size(size);
    b.append_data(&mut h, path, data)
}

/// Zero bytes that pad a content of `len` bytes to a 512-byte block.
pub(crate) fn padding(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// A directory (`path` without trailing slash).
pub(crate) fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(0);
    b.append_data(&mut h, format!("{path}/"), io::empty())
}

/// A symbolic link.
pub(crate) fn append_symlink<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    target: &str,
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(0);
    b.append_link(&mut h, path, target)
}

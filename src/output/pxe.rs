//! `pxe/overlay.cpio.gz`: the node's layers flattened (a later layer's file
//! wins) into one newc cpio, modes and owners kept, inode numbers assigned in
//! order, appendable to a distribution's initrd; and `pxe/boot.ipxe`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use flate2::GzBuilder;
use flate2::read::GzDecoder;

use crate::layer::BuiltLayer;
use crate::plan::Plan;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn entries(layer: &Path) -> io::Result<tar::Archive<GzDecoder<BufReader<File>>>> {
    Ok(tar::Archive::new(GzDecoder::new(BufReader::new(
        File::open(layer)?,
    ))))
}

/// Which layer has the final say on each path.
fn final_owners(layers: &[BuiltLayer]) -> io::Result<BTreeMap<String, usize>> {
    let mut owner = BTreeMap::new();
    for (i, l) in layers.iter().enumerate() {
        for e in entries(&l.file)?.entries()? {
            let e = e?;
            let path = e
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            if !e.header().entry_type().is_dir() || !owner.contains_key(&path) {
                owner.insert(path, i);
            }
        }
    }
    Ok(owner)
}

pub fn write(plan: &Plan, layers: &[BuiltLayer], out: &Path, mtime: u64) -> io::Result<()> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let owner = final_owners(layers)?;
    // the overlay holds the secrets layer's files: private to its owner
    let f = crate::fsutil::create_private(&dir.join("overlay.cpio.gz"))?;
    let gz = GzBuilder::new()
        .mtime(0)
        .write(BufWriter::new(f), flate2::Compression::new(6));
    let mut w = gz;
    let mut ino: u32 = 1;
    let mut dirs_done = BTreeSet::new();
    let mtime32 = u32::try_from(mtime).unwrap_or(0);
    for (i, l) in layers.iter().enumerate() {
        for e in entries(&l.file)?.entries()? {
            let mut e = e?;
            let path = e
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            if owner.get(&path) != Some(&i) {
                continue;
            }
            let h = e.header();
            let kind = h.entry_type();
            let mode = h.mode()? & 0o7777;
            let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
            let b = cpio::newc::Builder::new(&path)
                .ino(ino)
                .uid(uid)
                .gid(gid)
                .mtime(mtime32);
            ino += 1;
            if kind.is_dir() {
                if !dirs_done.insert(path.clone()) {
                    continue;
                }
                w = b.mode(S_IFDIR | mode).nlink(2).write(w, 0).finish()?;
            } else if kind.is_symlink() {
                let target = e
                    .link_name()?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut cw = b
                    .mode(S_IFLNK | 0o777)
                    .nlink(1)
                    .write(w, target.len() as u32);
                cw.write_all(target.as_bytes())?;
                w = cw.finish()?;
            } else {
                let size = u32::try_from(e.size()).map_err(|_| {
                    io::Error::other(format!("{path} is larger than newc cpio allows (4 GiB)"))
                })?;
                let mut cw = b.mode(S_IFREG | mode).nlink(1).write(w, size);
                io::copy(&mut e, &mut cw)?;
                w = cw.finish()?;
            }
        }
    }
    let w = cpio::newc::trailer(w)?;
    w.finish()?.flush()?;
    let ipxe = format!(
        "#!ipxe\n\
# imgbuild: {target} ({arch}). Serve the distribution's kernel and initrd and this\n\
# directory over HTTP; set base-url to where they are.\n\
isset ${{base-url}} || set base-url http://${{next-server}}/{target}\n\
kernel ${{base-url}}/vmlinuz initrd=initrd.img initrd=overlay.cpio.gz\n\
initrd ${{base-url}}/initrd.img\n\
initrd ${{base-url}}/pxe/overlay.cpio.gz overlay.cpio.gz\n\
boot\n",
        target = plan.target,
        arch = plan.arch
    );
    fs::write(dir.join("boot.ipxe"), ipxe)?;
    Ok(())
}

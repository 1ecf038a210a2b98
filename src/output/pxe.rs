//! `pxe/overlay.cpio.gz`: the node's layers as newc cpio (modes and owners
//! kept, inode numbers assigned in order), appendable to a distribution's
//! initrd; and `pxe/boot.ipxe`. Each layer's gzip'd cpio segment is written
//! by the layer stage together with the layer (kept in the layer store for
//! shared layers); a node's overlay is its segments in layer order and a
//! trailer. The kernel's initramfs format is a sequence of (compressed) cpio
//! archives whose trailers are optional, so segments concatenate, and
//! `zcat | cpio -t` reads them as one archive. Two layers of a node never hold
//! the same file (the plan refuses it), so the result is the flattened node.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use flate2::GzBuilder;

use crate::fsutil::{self, Sha256Writer};
use crate::layer::{BuiltLayer, Store};
use crate::newc;
use crate::plan::Plan;

/// Writes `pxe/overlay.cpio.gz` below `out`; returns its sha256.
///
/// The leading shared layers (base and roles) are the same for every node of
/// the same roles: the store keeps the sha256 state after their segments,
/// so that later nodes copy those bytes in the kernel (`copy_file_range`)
/// instead of reading and hashing them again.
pub fn overlay(layers: &[BuiltLayer], store: &Store, out: &Path) -> io::Result<String> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let shared = layers.iter().take_while(|l| l.kind.is_shared()).count();
    let (head, tail) = layers.split_at(shared);
    // the overlay holds the secrets layer's files: private to its owner
    let mut file = fsutil::create_private(&dir.join("overlay.cpio.gz"))?;
    let mut overlay = match store.segments_state(head) {
        Some(state) => {
            for l in head {
                io::copy(&mut File::open(l.segment()?)?, &mut file)?;
            }
            Sha256Writer::resume(state, BufWriter::with_capacity(fsutil::BLOCK, file))
        }
        None => {
            let mut w = Sha256Writer::new(BufWriter::with_capacity(fsutil::BLOCK, file));
            for l in head {
                w.append_file(l.segment()?)?;
            }
            if !head.is_empty() {
                store.keep_segments_state(head, w.state())?;
            }
            w
        }
    };
    for l in tail {
        overlay.append_file(l.segment()?)?;
    }
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&newc::trailer())?;
    overlay.write_all(&gz.finish()?)?;
    let (w, digest) = overlay.finish();
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(digest)
}

/// A shared layer's PXE segment, loaded from BASE in url mode.
#[derive(Debug, Clone)]
pub struct Segment {
    /// `NN-<name>.cpio.gz`
    pub file: String,
    /// sha256 of its bytes: it is served as `BASE/sha256/<digest>.cpio.gz`.
    pub digest: String,
}

/// Links the segments of the `remote` layers into `out/pxe/segments/` (to
/// publish under their digests) and returns them in layer order.
pub fn segments(remote: &[&BuiltLayer], store: &Store, out: &Path) -> io::Result<Vec<Segment>> {
    if remote.is_empty() {
        return Ok(Vec::new());
    }
    let dir = out.join("pxe").join("segments");
    fs::create_dir_all(&dir)?;
    let mut list = Vec::new();
    for l in remote {
        let digest = store.segment_digest(l)?;
        let file = format!("{}.cpio.gz", l.name);
        super::link_or_copy(l.segment()?, &dir.join(&file))?;
        list.push(Segment { file, digest });
    }
    Ok(list)
}

/// Writes `pxe/boot.ipxe` below `out`: the distribution's kernel and initrd,
/// then the `remote` segments from `base` (url mode), then the overlay.
pub fn boot_script(
    plan: &Plan,
    remote: &[Segment],
    base: Option<&str>,
    out: &Path,
) -> io::Result<()> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let mut s = format!(
        "#!ipxe\n\
# imgbuild: {target} ({arch}). Serve the distribution's kernel and initrd and this\n\
# directory over HTTP; set base-url to where they are.\n\
isset ${{base-url}} || set base-url http://${{next-server}}/{target}\n",
        target = plan.target,
        arch = plan.arch
    );
    if let Some(base) = base.filter(|_| !remote.is_empty()) {
        s.push_str(&format!(
            "# The shared layers' segments are served by digest from layers-url\n\
# (publish pxe/segments/<file> as sha256/<digest>.cpio.gz).\n\
isset ${{layers-url}} || set layers-url {}\n",
            crate::quote::ipxe(base)
        ));
    }
    let mut names = vec!["initrd.img".to_string()];
    names.extend(remote.iter().map(|r| r.file.clone()));
    names.push("overlay.cpio.gz".to_string());
    let cmdline: Vec<String> = names.iter().map(|n| format!("initrd={n}")).collect();
    s.push_str(&format!(
        "kernel ${{base-url}}/vmlinuz {}\ninitrd ${{base-url}}/initrd.img\n",
        cmdline.join(" ")
    ));
    for r in remote {
        s.push_str(&format!(
            "initrd ${{layers-url}}/sha256/{}.cpio.gz {}\n",
            r.digest, r.file
        ));
    }
    s.push_str("initrd ${base-url}/pxe/overlay.cpio.gz overlay.cpio.gz\nboot\n");
    fs::write(dir.join("boot.ipxe"), s)
}

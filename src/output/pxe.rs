//! `pxe/overlay.cpio.gz`: the node's layers as newc cpio (modes and owners
//! kept, inode numbers assigned in order), appendable to a distribution's
//! initrd; and `pxe/boot.ipxe`. Each layer is one gzip'd cpio segment, built
//! once per distinct layer and kept in the layer store; a node's overlay is
//! its segments in layer order and a trailer. Two layers of a node never hold
//! the same file (the plan refuses it), so the result is the flattened node.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use flate2::GzBuilder;
use flate2::read::GzDecoder;
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{Compression, ZWriter};

use crate::layer::BuiltLayer;
use crate::plan::{LayerKind, Plan};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn entries(layer: &Path) -> io::Result<tar::Archive<GzDecoder<BufReader<File>>>> {
    Ok(tar::Archive::new(GzDecoder::new(BufReader::new(
        File::open(layer)?,
    ))))
}

/// One layer as a gzip'd newc cpio segment without a trailer. The kernel's
/// initramfs format is a sequence of (compressed) cpio archives whose
/// trailers are optional, so segments concatenate into one overlay, and
/// `zcat | cpio -t` reads them as one archive. Inode numbers run in order
/// within a segment; regular files have one link, so the kernel never takes
/// two of them for hard links.
fn segment(layer: &Path, out: &Path, mtime: u32, jobs: usize) -> io::Result<()> {
    let f = crate::fsutil::create_private(out)?;
    let gz: ParCompress<'static, Gzip, _> = ParCompressBuilder::<Gzip>::new()
        .num_threads(jobs.max(1))
        .map_err(|e| io::Error::other(e.to_string()))?
        .compression_level(Compression::new(crate::layer::GZIP_LEVEL))
        .from_writer(BufWriter::with_capacity(1 << 20, f));
    let mut w = Segment(gz);
    for (ino, e) in (1u32..).zip(entries(layer)?.entries()?) {
        let mut e = e?;
        let path = e
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let h = e.header();
        let kind = h.entry_type();
        let mode = h.mode()? & 0o7777;
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        let b = cpio::newc::Builder::new(&path)
            .ino(ino)
            .uid(uid)
            .gid(gid)
            .mtime(mtime);
        if kind.is_dir() {
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
    let mut file = w.0.finish().map_err(|e| io::Error::other(e.to_string()))?;
    file.flush()
}

/// gzp's writer, owned so that cpio's builder can take and give it back.
struct Segment(ParCompress<'static, Gzip, BufWriter<File>>);

impl Write for Segment {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The segment of a shared layer lives in the layer store beside it, built once.
fn shared_segment(l: &BuiltLayer, mtime: u32, jobs: usize) -> io::Result<std::path::PathBuf> {
    let dir = l.file.parent().unwrap_or(Path::new("."));
    let seg = dir.join(format!("{}.cpio.gz", l.key));
    if !seg.is_file() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{n}.cpio.tmp", l.key, std::process::id()));
        segment(&l.file, &tmp, mtime, jobs)?;
        fs::rename(&tmp, &seg)?;
    }
    Ok(seg)
}

pub fn write(
    plan: &Plan,
    layers: &[BuiltLayer],
    out: &Path,
    mtime: u64,
    jobs: usize,
) -> io::Result<()> {
    let dir = out.join("pxe");
    fs::create_dir_all(&dir)?;
    let mtime32 = u32::try_from(mtime).unwrap_or(0);
    // the overlay holds the secrets layer's files: private to its owner
    let mut overlay = BufWriter::new(crate::fsutil::create_private(&dir.join("overlay.cpio.gz"))?);
    for l in layers {
        if l.kind == LayerKind::Secrets {
            let seg = dir.join(".secrets.cpio.gz");
            segment(&l.file, &seg, mtime32, jobs)?;
            io::copy(&mut File::open(&seg)?, &mut overlay)?;
            fs::remove_file(&seg)?;
        } else {
            io::copy(
                &mut File::open(shared_segment(l, mtime32, jobs)?)?,
                &mut overlay,
            )?;
        }
    }
    let trailer = cpio::newc::trailer(
        GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::new(6)),
    )?;
    overlay.write_all(&trailer.finish()?)?;
    overlay.flush()?;
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

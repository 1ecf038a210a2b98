//! The qcow2 file of a disk (QEMU's docs/interop/qcow2.txt, version 3):
//! takes the disk's size, its allocated clusters in order (bytes, a stored
//! file's bytes, or reads-as-zeros) and, for an overlay, the name of its
//! backing file, and writes the image in one pass: the header (64 KiB
//! clusters, 16-bit refcounts, no snapshots, no compression), the L1
//! table, the refcount table and blocks, the L2 tables, then the data in
//! the disk's order. A cluster not listed reads from the backing file (or
//! as zeros without one). Everything is laid out from the list before a
//! byte is written, so the same disk gives the same bytes and the file is
//! hashed as it is written.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::cow::CLUSTER;

/// A cluster of the disk as the image holds it.
pub(crate) enum Cluster<'a> {
    Bytes(&'a [u8]),
    /// `CLUSTER` bytes of a stored file from the offset.
    Stored(&'a File, u64),
    /// Reads as zeros, whatever the backing file holds (no data).
    Zero,
}

const MAGIC: &[u8; 4] = b"QFI\xfb";
const HEADER_LEN: u32 = 104;
/// The header extension naming the backing file's format.
const BACKING_FORMAT: u32 = 0xe279_2aca;
/// L1/L2 entries: the cluster's refcount is exactly one.
const COPIED: u64 = 1 << 63;
/// An L2 entry's "reads as zeros" bit.
const ZERO: u64 = 1;
/// Entries in an L2 table (8 bytes each).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts per refcount block.
const REFCOUNTS: u64 = CLUSTER / 2;

/// Where the image's parts are, in clusters of the file.
struct Plan {
    l1_size: u64,
    l1_at: u64,
    rt_at: u64,
    rt_clusters: u64,
    rb_at: u64,
    rb_count: u64,
    /// The L1 indexes that have an L2 table, in order.
    l2s: Vec<u64>,
    l2_at: u64,
    data_at: u64,
    total: u64,
}

fn plan(size: u64, clusters: &[(u64, Cluster)]) -> Plan {
    let l1_size = size.div_ceil(CLUSTER * L2_ENTRIES).max(1);
    let mut l2s: Vec<u64> = clusters.iter().map(|(i, _)| i / L2_ENTRIES).collect();
    l2s.dedup();
    let data = clusters
        .iter()
        .filter(|(_, c)| !matches!(c, Cluster::Zero))
        .count() as u64;
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    // the refcount blocks cover every cluster, themselves included
    let fixed = 1 + l1_clusters + l2s.len() as u64 + data;
    let (mut rb_count, mut rt_clusters) = (1, 1);
    loop {
        let total = fixed + rt_clusters + rb_count;
        let (rb, rt) = (
            total.div_ceil(REFCOUNTS),
            (total.div_ceil(REFCOUNTS) * 8).div_ceil(CLUSTER),
        );
        if (rb, rt) == (rb_count, rt_clusters) {
            break;
        }
        (rb_count, rt_clusters) = (rb.max(rb_count), rt.max(rt_clusters));
    }
    let l1_at = 1;
    let rt_at = l1_at + l1_clusters;
    let rb_at = rt_at + rt_clusters;
    let l2_at = rb_at + rb_count;
    let data_at = l2_at + l2s.len() as u64;
    Plan {
        l1_size,
        l1_at,
        rt_at,
        rt_clusters,
        rb_at,
        rb_count,
        total: data_at + data,
        l2s,
        l2_at,
        data_at,
    }
}

/// Writes the image of a disk of `size` bytes holding `clusters` (by
/// index, in order, each once) to `w`, over `backing` when it is given.
pub(crate) fn write<W: Write>(
    w: &mut W,
    size: u64,
    backing: Option<&str>,
    clusters: &[(u64, Cluster)],
) -> io::Result<()> {
    if clusters.windows(2).any(|p| p[0].0 >= p[1].0) {
        return Err(io::Error::other("a qcow2's clusters out of order"));
    }
    if clusters.last().is_some_and(|(i, _)| i * CLUSTER >= size) {
        return Err(io::Error::other("a qcow2's cluster past the disk's end"));
    }
    let p = plan(size, clusters);
    w.write_all(&header(size, backing, &p)?)?;
    write_tables(w, clusters, &p)?;
    let mut buf = vec![0u8; CLUSTER as usize];
    for (_, c) in clusters {
        match c {
            Cluster::Bytes(b) => {
                w.write_all(b)?;
                w.write_all(&buf[..(CLUSTER as usize).saturating_sub(b.len())])?;
            }
            Cluster::Stored(file, offset) => {
                let n = read_up_to(file, *offset, &mut buf)?;
                buf[n..].fill(0);
                w.write_all(&buf)?;
                buf.fill(0);
            }
            Cluster::Zero => {}
        }
    }
    Ok(())
}

/// Reads what `file` holds of `buf.len()` bytes from `offset`.
fn read_up_to(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The first cluster: the header, its extensions and the backing file's
/// name.
fn header(size: u64, backing: Option<&str>, p: &Plan) -> io::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(CLUSTER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&3u32.to_be_bytes());
    let name = backing.unwrap_or_default().as_bytes();
    if name.len() > 1023 {
        return Err(io::Error::other("a backing file's name over 1023 bytes"));
    }
    // the extensions: the backing format (8 + 8 bytes), the end (8)
    let name_at = if backing.is_some() {
        u64::from(HEADER_LEN) + 16 + 8
    } else {
        0
    };
    h.extend_from_slice(&name_at.to_be_bytes());
    h.extend_from_slice(&(name.len() as u32).to_be_bytes());
    h.extend_from_slice(&16u32.to_be_bytes()); // cluster_bits
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(p.l1_size as u32).to_be_bytes());
    h.extend_from_slice(&(p.l1_at * CLUSTER).to_be_bytes());
    h.extend_from_slice(&(p.rt_at * CLUSTER).to_be_bytes());
    h.extend_from_slice(&(p.rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no snapshots
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&[0u8; 24]); // no features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount_order: 16 bits
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    if backing.is_some() {
        h.extend_from_slice(&BACKING_FORMAT.to_be_bytes());
        h.extend_from_slice(&5u32.to_be_bytes());
        h.extend_from_slice(b"qcow2\0\0\0");
    }
    h.extend_from_slice(&[0u8; 8]);
    h.extend_from_slice(name);
    h.resize(CLUSTER as usize, 0);
    Ok(h)
}

/// The L1 table, the refcount table and blocks, the L2 tables.
fn write_tables<W: Write>(w: &mut W, clusters: &[(u64, Cluster)], p: &Plan) -> io::Result<()> {
    let mut l1 = vec![0u8; ((p.rt_at - p.l1_at) * CLUSTER) as usize];
    for (n, index) in p.l2s.iter().enumerate() {
        let at = (p.l2_at + n as u64) * CLUSTER;
        let e = *index as usize * 8;
        l1[e..e + 8].copy_from_slice(&(at | COPIED).to_be_bytes());
    }
    w.write_all(&l1)?;
    let mut rt = vec![0u8; (p.rt_clusters * CLUSTER) as usize];
    for b in 0..p.rb_count {
        let e = b as usize * 8;
        rt[e..e + 8].copy_from_slice(&((p.rb_at + b) * CLUSTER).to_be_bytes());
    }
    w.write_all(&rt)?;
    let mut rb = vec![0u8; (p.rb_count * CLUSTER) as usize];
    for c in 0..p.total as usize {
        rb[c * 2..c * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    w.write_all(&rb)?;
    let mut next = p.data_at;
    let mut at = 0;
    for index in &p.l2s {
        let mut l2 = vec![0u8; CLUSTER as usize];
        while let Some((i, c)) = clusters.get(at).filter(|(i, _)| i / L2_ENTRIES == *index) {
            let e = (i % L2_ENTRIES) as usize * 8;
            let entry = if matches!(c, Cluster::Zero) {
                ZERO
            } else {
                next += 1;
                ((next - 1) * CLUSTER) | COPIED
            };
            l2[e..e + 8].copy_from_slice(&entry.to_be_bytes());
            at += 1;
        }
        w.write_all(&l2)?;
    }
    Ok(())
}

/// The backing file a qcow2 image names, read from its first cluster
/// (`r` is not trusted: a name outside the first cluster, or not UTF-8,
/// is an error).
pub(crate) fn backing_file<R: Read>(r: &mut R) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(CLUSTER as usize);
    r.take(CLUSTER).read_to_end(&mut head)?;
    if head.len() < 72 || &head[..4] != MAGIC {
        return Err(io::Error::other("not a qcow2 image (no QFI\\xfb magic)"));
    }
    let be64 = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let offset = be64(8);
    let len = u64::from(u32::from_be_bytes(
        head[16..20].try_into().unwrap_or_default(),
    ));
    if offset == 0 {
        return Ok(None);
    }
    let name = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(offset + len).ok())
        .and_then(|(a, b)| head.get(a..b))
        .ok_or_else(|| io::Error::other("its backing file's name lies outside its header"))?;
    String::from_utf8(name.to_vec())
        .map(Some)
        .map_err(|_| io::Error::other("its backing file's name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_count_every_cluster_of_the_file_once() {
        let bytes = [5u8; 100];
        let clusters = [
            (0, Cluster::Bytes(&bytes)),
            (3, Cluster::Zero),
            (L2_ENTRIES + 1, Cluster::Bytes(&bytes)),
        ];
        let size = 2 * L2_ENTRIES * CLUSTER;
        let mut out = Vec::new();
        write(&mut out, size, Some("base.qcow2"), &clusters).unwrap();
        let p = plan(size, &clusters);
        // header, L1, refcount table, one block, two L2 tables, two data
        assert_eq!(p.total, 8);
        assert_eq!(out.len() as u64, p.total * CLUSTER);
        let be64 = |at: usize| u64::from_be_bytes(out[at..at + 8].try_into().unwrap());
        assert_eq!(&out[..4], MAGIC);
        let name_at = be64(8) as usize;
        assert_eq!(&out[name_at..name_at + 10], b"base.qcow2");
        // the second L2 table maps cluster L2_ENTRIES + 1 to the last data
        let l2 = (p.l2_at as usize + 1) * CLUSTER as usize;
        assert_eq!(be64(l2 + 8), (7 * CLUSTER) | COPIED);
        assert_eq!(out[7 * CLUSTER as usize..][..100], bytes);
        assert!(write(&mut Vec::new(), CLUSTER, None, &clusters).is_err());
        let name = backing_file(&mut &out[..]).unwrap();
        assert_eq!(name.as_deref(), Some("base.qcow2"));
        let mut plain = Vec::new();
        write(&mut plain, size, None, &clusters).unwrap();
        assert_eq!(backing_file(&mut &plain[..]).unwrap(), None);
        // a name said to lie past the header is refused, not read
        out[8..16].copy_from_slice(&(CLUSTER - 4).to_be_bytes());
        assert!(backing_file(&mut &out[..]).is_err());
        assert!(backing_file(&mut &b"QFI"[..]).is_err());
    }
}

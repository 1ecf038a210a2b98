//! A minimal, reproducible ISO 9660 writer for the NoCloud seed: a root
//! directory with files and one level of subdirectories, a primary tree
//! (uppercase names) and a Joliet tree (the names as given, e.g.
//! `user-data`), volume label as given (`cidata`), every timestamp from
//! SOURCE_DATE_EPOCH, entries sorted. Files are streamed from disk.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const SECTOR: usize = 2048;

pub(crate) enum Data {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// A file at `name` (`a` or `dir/a`).
pub struct IsoFile {
    pub(crate) name: String,
    pub(crate) data: Data,
}

impl IsoFile {
    pub(crate) fn bytes(name: &str, b: Vec<u8>) -> IsoFile {
        IsoFile {
            name: name.to_string(),
            data: Data::Bytes(b),
        }
    }

    pub(crate) fn path(name: &str, p: &Path) -> IsoFile {
        IsoFile {
            name: name.to_string(),
            data: Data::Path(p.to_path_buf()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        match &self.data {
            Data::Bytes(b) => Ok(b.len() as u64),
            Data::Path(p) => Ok(std::fs::metadata(p)?.len()),
        }
    }
}

fn sectors(bytes: u64) -> u32 {
    bytes.div_ceil(SECTOR as u64) as u32
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

/// Primary-tree identifier: uppercase d-characters, `;1` on files.
fn primary_id(name: &str, is_dir: bool) -> Vec<u8> {
    let mut s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !is_dir {
        if !s.contains('.') {
            s.push('.');
        }
        s.push_str(";1");
    }
    s.into_bytes()
}

/// Joliet identifier: UCS-2 big-endian, `;1` on files.
fn joliet_id(name: &str, is_dir: bool) -> Vec<u8> {
    let full = if is_dir {
        name.to_string()
    } else {
        format!("{name};1")
    };
    full.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// 7-byte directory-record time.
fn dr_time(t: &time::OffsetDateTime) -> [u8; 7] {
    [
        (t.year() - 1900).clamp(0, 255) as u8,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        0,
    ]
}

/// 17-byte volume-descriptor time.
fn vd_time(t: &time::OffsetDateTime) -> [u8; 17] {
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut b = [0u8; 17];
    b[..16].copy_from_slice(s.as_bytes());
    b
}

fn dir_record(id: &[u8], lba: u32, size: u32, is_dir: bool, t: &[u8; 7]) -> Vec<u8> {
    let pad = usize::from(id.len().is_multiple_of(2));
    let len = 33 + id.len() + pad;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(t);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

/// Lays records into sectors: a record never spans a sector boundary.
fn dir_bytes(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    let n = out.len().div_ceil(SECTOR).max(1) * SECTOR;
    out.resize(n, 0);
    out
}

struct Dir {
    /// name ("" for root)
    name: String,
    /// files: name -> index into the file list
    files: BTreeMap<String, usize>,
}

impl Dir {
    fn new(name: &str) -> Dir {
        Dir {
            name: name.to_string(),
            files: BTreeMap::new(),
        }
    }
}

/// The directories of `files`: the root first, then one level of
/// subdirectories by name.
fn dirs(files: &[IsoFile]) -> Vec<Dir> {
    let mut root = Dir::new("");
    let mut subs: BTreeMap<String, Dir> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        match f.name.split_once('/') {
            None => {
                root.files.insert(f.name.clone(), i);
            }
            Some((d, n)) => {
                subs.entry(d.to_string())
                    .or_insert_with(|| Dir::new(d))
                    .files
                    .insert(n.to_string(), i);
            }
        }
    }
    let mut dirs = vec![root];
    dirs.extend(subs.into_values());
    dirs
}

/// What both trees are made of: the directories, where the files lie, and
/// the one directory-record time.
struct Layout<'a> {
    dirs: &'a [Dir],
    file_lba: &'a [u32],
    file_size: &'a [u64],
    t: [u8; 7],
}

/// One tree (primary or Joliet): directory extents and their bytes.
struct Tree {
    dir_lba: Vec<u32>,
    dir_sizes: Vec<u32>,
    dir_data: Vec<Vec<u8>>,
    path_table_l: Vec<u8>,
    path_table_m: Vec<u8>,
}

/// The tree of `layout` named by `id`, its directories consecutive from
/// `first_lba` with the sizes `dir_sizes`; without path tables when
/// `sizes_only`.
fn build_tree(
    layout: &Layout<'_>,
    id: fn(&str, bool) -> Vec<u8>,
    first_lba: u32,
    dir_sizes: &[u32],
    sizes_only: bool,
) -> Tree {
    let mut dir_lba = Vec::new();
    let mut lba = first_lba;
    for s in dir_sizes {
        dir_lba.push(lba);
        lba += s / SECTOR as u32;
    }
    let extent = |i: usize| {
        (
            dir_lba.get(i).copied().unwrap_or(0),
            dir_sizes.get(i).copied().unwrap_or(0),
        )
    };
    let dir_data = (0..layout.dirs.len())
        .map(|i| dir_extent(layout, id, i, &extent))
        .collect();
    let (path_table_l, path_table_m) = if sizes_only {
        (Vec::new(), Vec::new())
    } else {
        path_tables(layout.dirs, id, &dir_lba)
    };
    Tree {
        dir_lba,
        dir_sizes: dir_sizes.to_vec(),
        dir_data,
        path_table_l,
        path_table_m,
    }
}

/// The bytes of directory `i`: `.`, `..`, then its subdirectories (the
/// root's) and files sorted by identifier. `extent` gives a directory's
/// LBA and size.
fn dir_extent(
    layout: &Layout<'_>,
    id: fn(&str, bool) -> Vec<u8>,
    i: usize,
    extent: &dyn Fn(usize) -> (u32, u32),
) -> Vec<u8> {
    let t = &layout.t;
    let me = extent(i);
    let parent = if i == 0 { me } else { extent(0) };
    let mut recs = vec![
        dir_record(&[0], me.0, me.1, true, t),
        dir_record(&[1], parent.0, parent.1, true, t),
    ];
    let mut children: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if i == 0 {
        for (j, sub) in layout.dirs.iter().enumerate().skip(1) {
            let sid = id(&sub.name, true);
            let (lba, size) = extent(j);
            let r = dir_record(&sid, lba, size, true, t);
            children.push((sid, r));
        }
    }
    for (name, &fi) in &layout.dirs[i].files {
        let fid = id(name, false);
        let lba = layout.file_lba.get(fi).copied().unwrap_or(0);
        let r = dir_record(&fid, lba, layout.file_size[fi] as u32, false, t);
        children.push((fid, r));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    recs.extend(children.into_iter().map(|(_, r)| r));
    dir_bytes(&recs)
}

/// The little- and big-endian path tables of a tree (every directory's
/// parent is the root).
fn path_tables(dirs: &[Dir], id: fn(&str, bool) -> Vec<u8>, dir_lba: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let mut l = Vec::new();
    let mut m = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let did = if i == 0 { vec![0u8] } else { id(&d.name, true) };
        for big in [false, true] {
            let t = if big { &mut m } else { &mut l };
            t.push(did.len() as u8);
            t.push(0);
            let lba = dir_lba[i];
            t.extend_from_slice(&if big {
                lba.to_be_bytes()
            } else {
                lba.to_le_bytes()
            });
            let parent: u16 = 1;
            t.extend_from_slice(&if big {
                parent.to_be_bytes()
            } else {
                parent.to_le_bytes()
            });
            t.extend_from_slice(&did);
            if did.len() % 2 == 1 {
                t.push(0);
            }
        }
    }
    (l, m)
}

fn text_field(b: &mut [u8], s: &str, joliet: bool) {
    if joliet {
        let mut u: Vec<u8> = s.encode_utf16().flat_map(|c| c.to_be_bytes()).collect();
        while u.len() < b.len() {
            u.extend_from_slice(&[0, b' ']);
        }
        b.copy_from_slice(&u[..b.len()]);
    } else {
        let mut v = s.as_bytes().to_vec();
        v.resize(b.len(), b' ');
        b.copy_from_slice(&v[..b.len()]);
    }
}

/// What both volume descriptors share.
struct Volume<'a> {
    label: &'a str,
    /// size of the image in sectors
    total: u32,
    when: time::OffsetDateTime,
}

/// The primary (`joliet` false) or Joliet supplementary volume descriptor
/// of `tree`, whose path tables are at the LBAs `pt` (little, big endian).
fn volume_descriptor(vol: &Volume<'_>, tree: &Tree, joliet: bool, pt: (u32, u32)) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    text_field(&mut d[8..40], "LINUX", joliet);
    text_field(&mut d[40..72], vol.label, joliet);
    d[80..88].copy_from_slice(&both32(vol.total));
    if joliet {
        d[88..91].copy_from_slice(b"%/E");
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(tree.path_table_l.len() as u32));
    d[140..144].copy_from_slice(&pt.0.to_le_bytes());
    d[148..152].copy_from_slice(&pt.1.to_be_bytes());
    let root = dir_record(
        &[0],
        tree.dir_lba[0],
        tree.dir_sizes[0],
        true,
        &dr_time(&vol.when),
    );
    d[156..190].copy_from_slice(&root);
    for (a, b) in [
        (190, 318),
        (318, 446),
        (446, 574),
        (702, 739),
        (739, 776),
        (776, 813),
    ] {
        text_field(&mut d[a..b], "", joliet);
    }
    text_field(&mut d[574..702], "IMGBUILD", joliet);
    let t = vd_time(&vol.when);
    d[813..830].copy_from_slice(&t);
    d[830..847].copy_from_slice(&t);
    d[847..863].copy_from_slice(b"0000000000000000");
    d[864..881].copy_from_slice(&t);
    d[881] = 1;
    d
}

/// Where everything of the image lies, and its metadata.
struct Image<'a> {
    vol: Volume<'a>,
    primary: Tree,
    joliet: Tree,
}

/// Path-table LBAs: primary (little, big endian), Joliet (little, big).
const PT_PRIMARY: (u32, u32) = (19, 20);
const PT_JOLIET: (u32, u32) = (21, 22);
/// The first directory extent's LBA.
const FIRST_DIR: u32 = 23;

impl<'a> Image<'a> {
    /// Lays out `files` (of `sizes`): 16 system sectors, PVD, SVD,
    /// terminator, 4 path tables, the directories of both trees, the files.
    fn lay_out(
        files: &[IsoFile],
        sizes: &[u64],
        label: &'a str,
        when: time::OffsetDateTime,
    ) -> Image<'a> {
        let dirs = dirs(files);
        let t = dr_time(&when);
        // directory sizes do not depend on LBAs
        let dummy = Layout {
            dirs: &dirs,
            file_lba: &vec![0u32; files.len()],
            file_size: sizes,
            t,
        };
        let measure = |id: fn(&str, bool) -> Vec<u8>| -> Vec<u32> {
            let tr = build_tree(&dummy, id, 0, &vec![SECTOR as u32; dirs.len()], true);
            tr.dir_data.iter().map(|d| d.len() as u32).collect()
        };
        let p_sizes = measure(primary_id);
        let j_sizes = measure(joliet_id);
        let extents = |sizes: &[u32]| sizes.iter().map(|s| s / SECTOR as u32).sum::<u32>();
        let j_first = FIRST_DIR + extents(&p_sizes);
        let mut lba = j_first + extents(&j_sizes);
        let mut file_lba = Vec::new();
        for s in sizes {
            file_lba.push(lba);
            lba += sectors(*s);
        }
        let layout = Layout {
            file_lba: &file_lba,
            ..dummy
        };
        Image {
            vol: Volume {
                label,
                total: lba,
                when,
            },
            primary: build_tree(&layout, primary_id, FIRST_DIR, &p_sizes, false),
            joliet: build_tree(&layout, joliet_id, j_first, &j_sizes, false),
        }
    }

    /// Everything before the files: system area, volume descriptors, path
    /// tables, directories.
    fn write_head(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&vec![0u8; 16 * SECTOR])?;
        w.write_all(&volume_descriptor(
            &self.vol,
            &self.primary,
            false,
            PT_PRIMARY,
        ))?;
        w.write_all(&volume_descriptor(&self.vol, &self.joliet, true, PT_JOLIET))?;
        let mut term = vec![0u8; SECTOR];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        w.write_all(&term)?;
        for pt in [
            &self.primary.path_table_l,
            &self.primary.path_table_m,
            &self.joliet.path_table_l,
            &self.joliet.path_table_m,
        ] {
            if pt.len() > SECTOR {
                return Err(io::Error::other("too many directories for the seed ISO"));
            }
            let mut s = pt.clone();
            s.resize(SECTOR, 0);
            w.write_all(&s)?;
        }
        for d in self
            .primary
            .dir_data
            .iter()
            .chain(self.joliet.dir_data.iter())
        {
            w.write_all(d)?;
        }
        Ok(())
    }
}

/// Writes `files` into an ISO at `out`; returns its sha256 (hex).
pub(crate) fn write(out: &Path, label: &str, files: &[IsoFile], mtime: u64) -> io::Result<String> {
    let when = time::OffsetDateTime::from_unix_timestamp(i64::try_from(mtime).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let sizes: Vec<u64> = files.iter().map(IsoFile::size).collect::<io::Result<_>>()?;
    let image = Image::lay_out(files, &sizes, label, when);
    let tmp = out.with_extension("iso.tmp");
    // the seed carries the secrets layer: private to its owner
    let mut w = crate::fsutil::Sha256Writer::new(BufWriter::with_capacity(
        crate::fsutil::BLOCK,
        crate::fsutil::WriteBehind::new(crate::fsutil::create_private(&tmp)?),
    ));
    image.write_head(&mut w)?;
    for (f, size) in files.iter().zip(&sizes) {
        match &f.data {
            Data::Bytes(b) => w.write_all(b)?,
            Data::Path(p) => {
                w.append_file(p)?;
            }
        }
        let pad = (sectors(*size) as usize * SECTOR) - *size as usize;
        w.write_all(&vec![0u8; pad])?;
    }
    let (w, digest) = w.finish();
    w.into_inner().map_err(|e| e.into_error())?;
    std::fs::rename(tmp, out)?;
    Ok(digest)
}

/// A file an ISO is to hold: its name (as for [`IsoFile`]), size and
/// sha256 (hex).
pub(crate) struct Expected<'a> {
    pub(crate) name: &'a str,
    pub(crate) size: u64,
    pub(crate) sha256: &'a str,
}

/// Whether `iso` is what [`write`] makes of `files` (by their names, sizes
/// and digests) with `label` at `mtime`: the same head byte for byte, each
/// file's bytes of its sha256, zeros after each, and nothing more. `Err`
/// says the first thing that differs; reading fails on an I/O error only.
pub(crate) fn check(
    iso: &mut impl Read,
    label: &str,
    files: &[Expected<'_>],
    mtime: u64,
) -> io::Result<Result<(), String>> {
    use sha2::{Digest, Sha256};
    // a volume of at most 2^32 sectors, as the layout counts them
    let total: u64 = files.iter().map(|f| f.size.div_ceil(SECTOR as u64)).sum();
    if total >= u64::from(u32::MAX / 2) {
        return Ok(Err(format!(
            "{total} sectors of files: more than a volume holds"
        )));
    }
    let when = time::OffsetDateTime::from_unix_timestamp(i64::try_from(mtime).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let placeholders: Vec<IsoFile> = files
        .iter()
        .map(|f| IsoFile::bytes(f.name, Vec::new()))
        .collect();
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let mut head = Vec::new();
    Image::lay_out(&placeholders, &sizes, label, when).write_head(&mut head)?;
    let mut got = Vec::with_capacity(head.len());
    iso.by_ref().take(head.len() as u64).read_to_end(&mut got)?;
    if got != head {
        return Ok(Err(
            "its volume descriptors, path tables or directories are not the ones its files make"
                .into(),
        ));
    }
    let mut buf = vec![0u8; 1 << 16];
    for f in files {
        let mut sha = Sha256::new();
        let mut data = iso.by_ref().take(f.size);
        let mut n = 0u64;
        loop {
            let k = data.read(&mut buf)?;
            if k == 0 {
                break;
            }
            sha.update(&buf[..k]);
            n += k as u64;
        }
        if n != f.size || hex::encode(sha.finalize()) != f.sha256 {
            return Ok(Err(format!(
                "{} is not the file of sha256 {}",
                f.name, f.sha256
            )));
        }
        let pad = (u64::from(sectors(f.size)) * SECTOR as u64 - f.size) as usize;
        let mut zeros = Vec::with_capacity(pad);
        iso.by_ref().take(pad as u64).read_to_end(&mut zeros)?;
        if zeros.len() != pad || zeros.iter().any(|b| *b != 0) {
            return Ok(Err(format!("the bytes after {} are not zeros", f.name)));
        }
    }
    if iso.read(&mut buf[..1])? != 0 {
        return Ok(Err("it holds bytes after its last file".into()));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    #[test]
    fn check_accepts_what_write_made_and_names_what_differs() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (b"first layer".to_vec(), vec![7u8; 5000]);
        let files = [
            IsoFile::bytes("layers/a.tar.gz", a.clone()),
            IsoFile::bytes("layers/b.tar.gz", b.clone()),
        ];
        let out = t.path().join("v.iso");
        write(&out, "imglayers", &files, 1).unwrap();
        let (sa, sb) = (sha(&a), sha(&b));
        let want = [
            Expected {
                name: "layers/a.tar.gz",
                size: a.len() as u64,
                sha256: &sa,
            },
            Expected {
                name: "layers/b.tar.gz",
                size: b.len() as u64,
                sha256: &sb,
            },
        ];
        let bytes = std::fs::read(&out).unwrap();
        let run = |bytes: &[u8], want: &[Expected<'_>], mtime| {
            check(&mut &bytes[..], "imglayers", want, mtime).unwrap()
        };
        assert_eq!(run(&bytes, &want, 1), Ok(()));
        // another time, label or order: another head
        assert!(run(&bytes, &want, 2).is_err());
        assert!(run(&bytes, &[Expected { ..want[1] }, Expected { ..want[0] }], 1).is_err());
        // a file's byte flipped
        let mut flipped = bytes.clone();
        let at = bytes.len() - 2048 * 3 + 10;
        flipped[at] ^= 1;
        let e = run(&flipped, &want, 1).unwrap_err();
        assert!(e.contains("layers/b.tar.gz is not the file"), "{e}");
        // a byte after the last file
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            run(&longer, &want, 1)
                .unwrap_err()
                .contains("after its last file")
        );
        // cut short
        assert!(run(&bytes[..bytes.len() - 1], &want, 1).is_err());
        // a size no volume holds is refused, not laid out
        let huge = [Expected {
            name: "layers/a",
            size: u64::MAX,
            sha256: &sa,
        }];
        assert!(
            run(&bytes, &huge, 1)
                .unwrap_err()
                .contains("more than a volume holds")
        );
    }
}

//! Reading a root filesystem archive: the `[os]` base, a `.deb`'s
//! `data.tar`, a built layer. Takes the archive's bytes (a tar, plain or
//! compressed with gzip, xz or zstd: [`decompress`] tells them by their magic
//! bytes) and hands every member, in archive order, to a visitor with its
//! real owner and mode (setuid bits included) and its mtime. The hostile-archive
//! rules of [`crate::fetch::archive`], adapted to a root: a leading `/` is
//! dropped (the archive is the root); a `..` component, a member below a
//! symbolic link of the archive, a hard link to anything but a member
//! before it, a member twice (but a directory) or an unknown member type
//! refuse the whole archive. A link may point anywhere, `/` being the root's
//! own: nothing here follows one. Device nodes and fifos are skipped and
//! counted (`/dev` is devtmpfs on a booted node).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path};

use crate::fetch::archive::{ArchiveError, normalize};
use crate::readahead::ReadAhead;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink(String),
    /// A hard link to the earlier member at this (normalised) path.
    HardLink(String),
    /// A device node or fifo: skipped.
    Device,
}

/// One member of a root archive: a normalised relative path (no leading
/// `/`, no `.` or empty component), its kind and metadata.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) path: String,
    pub(crate) kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`& 0o7777`).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: u64,
    /// The content's size (0 but for files).
    pub(crate) size: u64,
}

/// What a walk skipped.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Device nodes and fifos, by path.
    pub(crate) skipped: Vec<String>,
}

/// A visitor's error, kept as the cause of [`ArchiveError::Consumer`].
pub(crate) type VisitError = Box<dyn std::error::Error + Send + Sync>;

/// The xz magic: FD '7zXZ' 00.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// The zstd frame magic, little-endian 0xFD2FB528.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The tar inside `r`: gunzipped, unxz'd or unzstd'd as its first bytes
/// say, or `r` itself.
pub(crate) fn decompress(r: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    if r.fill_buf()?.starts_with(&XZ_MAGIC) {
        return Ok(Box::new(Unxz::start(r)?));
    }
    match decoder(r) {
        // decoded on a core of its own while the caller takes the members
        Ok(decoded) => Ok(Box::new(ReadAhead::new(decoded)?)),
        Err(plain) => Ok(Box::new(plain)),
    }
}

/// A layer imgbuild wrote, or any gzip'd or zstd'd stream: decoded as its
/// first bytes say (gzip members or zstd frames, to the end), else read as
/// it is. Unlike [`decompress`], `r` may borrow (and xz is not read).
pub(crate) fn layer_reader<'a>(r: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    r.fill_buf()?;
    Ok(decoder(r).unwrap_or_else(|plain| Box::new(plain)))
}

/// `r` (its buffer filled) gunzipped or unzstd'd as its first bytes say;
/// `r` itself back when it is neither.
fn decoder<'a, R: Read + Send + 'a>(
    r: BufReader<R>,
) -> Result<Box<dyn Read + Send + 'a>, BufReader<R>> {
    let head = r.buffer();
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&ZSTD_MAGIC) || is_skippable_frame(head) {
        Ok(Box::new(Unzstd::new(r)))
    } else {
        Err(r)
    }
}

/// Whether `head` starts a zstd skippable frame (magic 0x184D2A50 to
/// 0x184D2A5F, little-endian), which pzstd puts before each frame.
fn is_skippable_frame(head: &[u8]) -> bool {
    matches!(head, [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50)
}

/// An xz stream decoded by lzma-rs (which writes) on its own thread into
/// a pipe (which tar reads). The decoder's error comes out at the pipe's end.
struct Unxz {
    pipe: io::PipeReader,
    decoder: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Unxz {
    fn start(mut input: impl BufRead + Send + 'static) -> io::Result<Unxz> {
        let (pipe, mut w) = io::pipe()?;
        let decoder = std::thread::spawn(move || {
            lzma_rs::xz_decompress(&mut input, &mut w).map_err(|e| match e {
                lzma_rs::error::Error::IoError(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })
        });
        Ok(Unxz {
            pipe,
            decoder: Some(decoder),
        })
    }
}

impl Read for Unxz {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(decoder) = self.decoder.take()
        {
            decoder
                .join()
                .map_err(|_| io::Error::other("the xz decoder failed"))??;
        }
        Ok(n)
    }
}

/// A reader with a few bytes put back in front of it.
struct Rewind<R> {
    head: Vec<u8>,
    inner: R,
}

impl<R: Read> Read for Rewind<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head.is_empty() {
            return self.inner.read(buf);
        }
        let n = self.head.len().min(buf.len());
        buf[..n].copy_from_slice(&self.head[..n]);
        self.head.drain(..n);
        Ok(n)
    }
}

impl<R: Read> Rewind<R> {
    /// The next `n` bytes, put back; fewer at the end of the stream.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.head.len() < n {
            let mut b = [0u8; 16];
            let want = (n - self.head.len()).min(b.len());
            let got = self.inner.read(&mut b[..want])?;
            if got == 0 {
                break;
            }
            self.head.extend_from_slice(&b[..got]);
        }
        Ok(&self.head)
    }
}

type ZstdFrame<R> = ruzstd::decoding::StreamingDecoder<Rewind<R>, ruzstd::decoding::FrameDecoder>;

/// Every zstd frame of a stream, one after the other (skippable frames,
/// which pzstd writes, skipped): ruzstd's decoder reads one frame.
struct Unzstd<R: Read> {
    source: Option<Rewind<R>>,
    frame: Option<ZstdFrame<R>>,
}

impl<R: Read> Unzstd<R> {
    fn new(inner: R) -> Self {
        Unzstd {
            source: Some(Rewind {
                head: Vec::new(),
                inner,
            }),
            frame: None,
        }
    }

    /// Starts the next frame; `false` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        let Some(mut source) = self.source.take() else {
            return Ok(false);
        };
        loop {
            let head = source.peek(8)?;
            if head.is_empty() {
                return Ok(false);
            }
            let magic = head
                .get(..4)
                .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
            if !magic.is_some_and(|m| (0x184D_2A50..=0x184D_2A5F).contains(&m)) {
                break;
            }
            let len = match head.get(4..8) {
                Some(l) => u32::from_le_bytes([l[0], l[1], l[2], l[3]]),
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            };
            source.head.clear();
            io::copy(&mut (&mut source).take(u64::from(len)), &mut io::sink())?;
        }
        let frame = ruzstd::decoding::StreamingDecoder::new(source)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.frame = Some(frame);
        Ok(true)
    }
}

impl<R: Read> Read for Unzstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.source = self.frame.take().map(|f| f.into_inner());
            }
            if !self.next_frame()? {
                return Ok(0);
            }
        }
    }
}

/// Walks the tar `r` (already decompressed), checking every member and
/// handing the kept ones to `visit(member, content)` in archive order.
/// `label` names the archive in errors, `path` is where it is read from.
pub(crate) fn walk(
    r: impl Read,
    label: &str,
    path: &Path,
    mut visit: impl FnMut(&Member, &mut dyn Read) -> Result<(), VisitError>,
) -> Result<Walked, ArchiveError> {
    let io = |source| ArchiveError::Read {
        archive: label.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(r);
    // every member seen so far, by path: whether it is a directory
    let mut seen: BTreeMap<String, bool> = BTreeMap::new();
    let mut walked = Walked::default();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let m = member(&entry).map_err(|e| e.into_archive_error(label, path))?;
        if m.path.is_empty() {
            continue; // the root itself
        }
        if m.kind == Kind::Device {
            walked.skipped.push(m.path);
            continue;
        }
        check(&mut seen, &m, label)?;
        visit(&m, &mut entry).map_err(|source| ArchiveError::Consumer {
            archive: label.to_string(),
            member: m.path.clone(),
            source,
        })?;
    }
    Ok(walked)
}

/// Why a member could not be read.
enum MemberError {
    Io(io::Error),
    Unsafe(String, &'static str),
}

impl MemberError {
    fn into_archive_error(self, label: &str, path: &Path) -> ArchiveError {
        match self {
            MemberError::Io(source) => ArchiveError::Read {
                archive: label.to_string(),
                path: path.to_path_buf(),
                source,
            },
            MemberError::Unsafe(member, why) => ArchiveError::Unsafe {
                archive: label.to_string(),
                member,
                why,
            },
        }
    }
}

/// A path of the archive, normalised, relative; `..` refused.
fn root_path(raw: &str) -> Option<String> {
    let parent = Path::new(raw)
        .components()
        .any(|c| matches!(c, Component::ParentDir));
    (!parent).then(|| normalize(raw).trim_start_matches('/').to_string())
}

/// The member an entry is.
fn member<R: Read>(entry: &tar::Entry<R>) -> Result<Member, MemberError> {
    let h = entry.header();
    let raw = entry.path().map_err(MemberError::Io)?;
    let shown = raw.to_string_lossy().into_owned();
    // a name is written again as it is: never one mended on the way
    if raw.to_str().is_none() {
        return Err(MemberError::Unsafe(shown, "has a name that is not UTF-8"));
    }
    let path = root_path(&shown)
        .ok_or_else(|| MemberError::Unsafe(shown.clone(), "has a `..` component"))?;
    let link = || -> Result<String, MemberError> {
        let target = entry.link_name().map_err(MemberError::Io)?;
        match target.as_deref().map(Path::to_str) {
            None => Ok(String::new()),
            Some(Some(t)) => Ok(t.to_string()),
            Some(None) => Err(MemberError::Unsafe(
                shown.clone(),
                "is a link whose target is not UTF-8",
            )),
        }
    };
    let t = h.entry_type();
    let kind = if t.is_dir() {
        Kind::Dir
    } else if t.is_file() || t == tar::EntryType::Continuous || t.is_gnu_sparse() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink(link()?)
    } else if t.is_hard_link() {
        let target = root_path(&link()?).ok_or_else(|| {
            MemberError::Unsafe(shown.clone(), "is a hard link with a `..` component")
        })?;
        Kind::HardLink(target)
    } else if t.is_block_special() || t.is_character_special() || t.is_fifo() {
        Kind::Device
    } else {
        return Err(MemberError::Unsafe(
            shown,
            "is of a type a root filesystem does not hold",
        ));
    };
    let size = if kind == Kind::File { entry.size() } else { 0 };
    let id = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(Member {
        path,
        kind,
        mode: h.mode().map_err(MemberError::Io)? & 0o7777,
        uid: id(h.uid().map_err(MemberError::Io)?),
        gid: id(h.gid().map_err(MemberError::Io)?),
        mtime: h.mtime().map_err(MemberError::Io)?,
        size,
    })
}

/// The rules that span members: none below a link or file of the archive,
/// none twice (a directory may repeat), a hard link only to a non-directory
/// before it.
fn check(seen: &mut BTreeMap<String, bool>, m: &Member, label: &str) -> Result<(), ArchiveError> {
    let refuse = |why| ArchiveError::Unsafe {
        archive: label.to_string(),
        member: m.path.clone(),
        why,
    };
    let mut prefix = m.path.as_str();
    while let Some((parent, _)) = prefix.rsplit_once('/') {
        if seen.get(parent) == Some(&false) {
            return Err(refuse("lies below a symbolic link or file of the archive"));
        }
        prefix = parent;
    }
    if let Kind::HardLink(target) = &m.kind
        && seen.get(target) != Some(&false)
    {
        return Err(refuse(
            "is a hard link to something that is not a file before it",
        ));
    }
    let is_dir = m.kind == Kind::Dir;
    let what = |dir: bool| if dir { "a directory" } else { "a file or link" }.to_string();
    match seen.get(&m.path) {
        Some(true) if is_dir => Ok(()),
        Some(first) => Err(ArchiveError::Duplicate {
            archive: label.to_string(),
            member: m.path.clone(),
            first: what(*first),
            second: what(is_dir),
        }),
        None => {
            seen.insert(m.path.clone(), is_dir);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `(path, kind)`: `d` directory, `f` file, `l:target` symlink,
    /// `h:target` hard link, `c` character device.
    fn tar_of(members: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in members {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o4755);
            h.set_uid(7);
            h.set_gid(8);
            h.set_mtime(5);
            h.set_size(0);
            let (t, target) = match kind.split_once(':') {
                Some(("l", t)) => (tar::EntryType::Symlink, Some(t)),
                Some(("h", t)) => (tar::EntryType::Link, Some(t)),
                _ if *kind == "d" => (tar::EntryType::Directory, None),
                _ if *kind == "c" => (tar::EntryType::Char, None),
                _ => (tar::EntryType::Regular, None),
            };
            h.set_entry_type(t);
            // set_path refuses `..`; write the name bytes as they are
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(t) = target {
                h.set_link_name(t).unwrap();
            }
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn paths(members: &[(&str, &str)]) -> Result<(Vec<String>, Walked), ArchiveError> {
        let bytes = tar_of(members);
        let mut out = Vec::new();
        let walked = walk(bytes.as_slice(), "t", Path::new("t.tar"), |m, _| {
            assert_eq!((m.mode, m.uid, m.gid), (0o4755, 7, 8));
            out.push(m.path.clone());
            Ok(())
        })?;
        Ok((out, walked))
    }

    #[test]
    fn a_root_keeps_absolute_links_and_drops_devices() {
        let (p, w) = paths(&[
            ("./", "d"),
            ("./usr/", "d"),
            ("/usr/bin/", "d"),
            ("./usr/bin/dash", "f"),
            ("./bin", "l:usr/bin"),
            ("./usr/bin/sh", "l:/usr/bin/dash"),
            ("./usr/bin/dash2", "h:./usr/bin/dash"),
            ("./dev/null", "c"),
            ("./usr/", "d"),
        ])
        .unwrap();
        assert_eq!(
            p,
            [
                "usr",
                "usr/bin",
                "usr/bin/dash",
                "bin",
                "usr/bin/sh",
                "usr/bin/dash2",
                "usr"
            ]
        );
        assert_eq!(w.skipped, ["dev/null"]);
    }

    #[test]
    fn hostile_roots_are_refused() {
        for bad in [
            vec![("./../etc/passwd", "f")],
            vec![("./etc", "l:/etc"), ("./etc/passwd", "f")],
            vec![("./a", "f"), ("a", "f")],
            vec![("./a", "d"), ("./a", "f")],
            vec![("./a", "h:b")],
            vec![("./b", "d"), ("./a", "h:b")],
            vec![("./a", "h:../../etc/shadow")],
        ] {
            assert!(paths(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused_not_mended() {
        let mut bytes = tar_of(&[("./a-b", "f")]);
        bytes[3] = 0xff; // `./a\xffb`
        let mut h = tar::Header::from_byte_slice(&bytes[..512]).clone();
        h.set_cksum();
        bytes[..512].copy_from_slice(h.as_bytes());
        let e = walk(bytes.as_slice(), "t", Path::new("t.tar"), |_, _| Ok(()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("has a name that is not UTF-8"), "{e}");
    }

    #[test]
    fn compressed_tars_are_told_by_their_magic() {
        use std::io::Write;
        let tar = tar_of(&[("./a", "f")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut tar.as_slice(), &mut xz).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            tar.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // pzstd's shape: each frame after a skippable frame
        let skip = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        let frames = [&skip[..], &zst, &skip, &zst].concat();
        let twice = [tar.clone(), tar.clone()].concat();
        for (bytes, want) in [
            (tar.clone(), &tar),
            (gz, &tar),
            (xz, &tar),
            (frames, &twice),
        ] {
            let mut out = Vec::new();
            decompress(io::Cursor::new(bytes))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(
                &out == want,
                "{} bytes out, {} wanted",
                out.len(),
                want.len()
            );
        }
        let mut broken = Vec::new();
        lzma_rs::xz_compress(&mut tar.as_slice(), &mut broken).unwrap();
        broken.truncate(broken.len() / 2);
        let mut out = Vec::new();
        assert!(
            decompress(io::Cursor::new(broken))
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
    }
}

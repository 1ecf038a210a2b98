//! Parallel, reproducible gzip or zstd for layers: takes the bytes of one
//! archive stream (a tar) or of two archive streams of the same files (a
//! tar and the newc cpio of a PXE overlay) and writes each as one gzip
//! member or one zstd frame ([`Compression`]).
//!
//! Every stream is cut into pieces at places that depend only on the
//! stream's own bytes (archive metadata gathered up to [`PIECE`] bytes; a
//! large file's content cut every [`PIECE`] bytes), never on the number of
//! threads. Each piece is compressed on its own, with a fresh compressor:
//! for gzip, deflate with a sync flush at its end, so the pieces concatenate
//! into one valid deflate stream (the crc32 of each stream is combined from
//! its pieces'); for zstd, blocks that fit anywhere in one frame
//! ([`crate::zstdblocks`]). So the bytes do not depend on `--jobs`. A large
//! file's content is the same in both archives, so its pieces are compressed
//! once and written to both: the cpio of a layer costs no second
//! compression. The tar stream's sha256 (the diff_id) and the sha256 and
//! sha1 of each file given to [`Streams::file`] are computed in order
//! beside the producer ([`crate::hashlane`]), from the pieces' buffers.
//!
//! Memory is bounded: a few pieces per thread are in flight (and up to
//! 4 more waiting for the two hashing threads), whatever the size of the
//! archives. Their buffers and the deflate states are kept in a
//! process-wide pool ([`Kept`]) and reused by the next piece and the next
//! layer, so a fleet's thousands of layer writes do not churn (and
//! fragment) the heap with megabyte buffers.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use flate2::{Compress, FlushCompress};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::hashlane::FileDigests;
use crate::hashlane::{self, FileLane, Shared, StreamLane};

/// Size of a piece of input deflated on its own.
pub(crate) const PIECE: usize = 1 << 20;
/// File contents at least this large are compressed once for both streams.
pub(crate) const SHARED_MIN: u64 = 64 << 10;
/// A write whose hashing moves off the producer's thread: one with a file
/// this large, or once this many pieces are sent.
const OFFLOAD_FILE: u64 = 4 * PIECE as u64;
const OFFLOAD_PIECES: usize = 8;

/// gzip header: deflate, no flags, mtime 0, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// The last deflate block: empty, final, fixed Huffman codes.
const LAST_BLOCK: [u8; 2] = [0x03, 0x00];
/// gzip level of every gzip layer.
pub const GZIP_LEVEL: u32 = 6;

/// How a build's layers and PXE segments are compressed (`--compression`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, level 6 (every consumer reads it)
    #[default]
    Gzip,
    /// zstd, level 3 (containerd, the OCI spec, GNU tar with zstd, the kernel's initramfs)
    Zstd,
}

impl Compression {
    /// Its name: `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Whether it is gzip, the default (left out of records and image.json,
    /// which predate the choice).
    pub fn is_gzip(&self) -> bool {
        *self == Compression::Gzip
    }

    /// The suffix of a compressed file: `gz` or `zst`.
    pub fn ext(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
        }
    }

    /// The level every layer is compressed at.
    pub fn level(self) -> i32 {
        match self {
            Compression::Gzip => GZIP_LEVEL as i32,
            Compression::Zstd => crate::zstdblocks::LEVEL,
        }
    }

    /// The OCI media type of a layer compressed so.
    pub fn oci_layer_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// `data` as one gzip member (mtime 0, no name) or one zstd frame,
    /// written in one go: the small archives (PXE's `/init`, a trailer).
    pub fn whole(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::Gzip => {
                let level = flate2::Compression::new(GZIP_LEVEL);
                let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), level);
                gz.write_all(data)?;
                gz.finish()
            }
            Compression::Zstd => crate::zstdblocks::frame(data),
        }
    }

    fn header(self) -> &'static [u8] {
        match self {
            Compression::Gzip => &HEADER,
            Compression::Zstd => &crate::zstdblocks::HEADER,
        }
    }
}

/// What closes a stream: gzip's last block, crc32 and length, combined from
/// the pieces'; zstd's empty last block.
struct Tail {
    how: Compression,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Tail {
    fn new(how: Compression) -> Tail {
        Tail {
            how,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn add(&mut self, p: &Piece) {
        if let Some(crc) = &p.crc {
            self.crc.combine(crc);
        }
        self.len += p.len;
    }

    fn bytes(&self) -> Vec<u8> {
        match self.how {
            Compression::Gzip => {
                let mut tail = LAST_BLOCK.to_vec();
                tail.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
                // ISIZE is the input length modulo 2^32
                tail.extend_from_slice(&((self.len & 0xffff_ffff) as u32).to_le_bytes());
                tail
            }
            Compression::Zstd => crate::zstdblocks::END.to_vec(),
        }
    }
}

/// Things kept between uses (piece buffers, deflate states): at most
/// [`KEPT`], the last given back taken first.
struct Kept<T>(Mutex<Vec<T>>);

impl<T> Kept<T> {
    const fn new() -> Kept<T> {
        Kept(Mutex::new(Vec::new()))
    }

    fn take(&self) -> Option<T> {
        self.0.lock().ok().and_then(|mut v| v.pop())
    }

    fn give(&self, t: T) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < KEPT
        {
            v.push(t);
        }
    }

    /// Drops what is kept beyond `keep`; how many were dropped.
    fn shrink(&self, keep: usize) -> usize {
        match self.0.lock() {
            Ok(mut v) if v.len() > keep => v.drain(keep..).count(),
            _ => 0,
        }
    }
}

/// A piece's buffers come back once its bytes are written, a deflate state
/// once its piece is done.
static BUFS: Kept<Vec<u8>> = Kept::new();
static DEFLATERS: Kept<Compress> = Kept::new();

/// The capacity of a piece buffer: a piece and its deflated bytes (at
/// worst an eighth larger) fit without growing. Above
/// [`crate::mem::MMAP_THRESHOLD`]: each is a mapping of its own.
pub(crate) const BUF: usize = PIECE + PIECE / 8 + 1024;

/// How many buffers (and compressors) are kept: more than a write's
/// pieces in flight on two threads.
const KEPT: usize = 24;

/// An empty buffer that holds a piece and its deflated bytes without
/// growing.
fn take_buf() -> Vec<u8> {
    BUFS.take().unwrap_or_else(|| Vec::with_capacity(BUF))
}

/// Gives a piece-sized buffer back (smaller ones are dropped).
fn give_buf(mut buf: Vec<u8>) {
    if buf.capacity() >= PIECE {
        buf.clear();
        BUFS.give(buf);
    }
}

/// A deflate state at [`GZIP_LEVEL`], as new (a kept one is reset).
fn take_deflater() -> Compress {
    match DEFLATERS.take() {
        Some(mut c) => {
            c.reset();
            c
        }
        None => Compress::new(flate2::Compression::new(GZIP_LEVEL), false),
    }
}

/// Drops the buffers kept beyond `keep` (what small layers use) and gives
/// their memory back: after a large layer, so that its pieces in flight are
/// not held through a fleet's thousands of small layers.
fn shrink_pool(keep: usize) {
    if BUFS.shrink(keep) > 0 {
        crate::mem::trim_malloc();
    }
}

/// One compressed piece: its bytes, and the length (and for gzip the
/// crc32) of its input.
struct Piece {
    data: Vec<u8>,
    crc: Option<crc32fast::Hasher>,
    len: u64,
}

/// `input` compressed on its own as `how` says.
fn compress(input: &[u8], how: Compression) -> io::Result<Piece> {
    match how {
        Compression::Gzip => deflate(input),
        Compression::Zstd => Ok(Piece {
            data: crate::zstdblocks::blocks(input, crate::zstdblocks::LEVEL)?,
            crc: None,
            len: input.len() as u64,
        }),
    }
}

/// `input` deflated at [`GZIP_LEVEL`] by a fresh (or reset: the same)
/// deflate state, ending with a sync flush.
fn deflate(input: &[u8]) -> io::Result<Piece> {
    let mut c = take_deflater();
    let mut out = take_buf();
    out.reserve(input.len() + input.len() / 8 + 1024);
    loop {
        let done = usize::try_from(c.total_in()).unwrap_or(input.len());
        c.compress_vec(&input[done..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        if c.total_in() == input.len() as u64 && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    DEFLATERS.give(c);
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);
    Ok(Piece {
        data: out,
        crc: Some(crc),
        len: input.len() as u64,
    })
}

/// Which streams a piece goes to.
#[derive(Clone, Copy)]
enum To {
    Tar,
    Cpio,
    Both,
}

type Job = (Arc<Shared>, SyncSender<io::Result<Piece>>);

/// One compressed file being written.
struct Gz<W: Write> {
    w: W,
    tail: Tail,
    /// Only for the file whose digest is wanted (the tar).
    sha: Option<Sha256>,
    size: u64,
}

impl<W: Write> Gz<W> {
    fn new(mut w: W, how: Compression, hashed: bool) -> io::Result<Gz<W>> {
        let header = how.header();
        w.write_all(header)?;
        let sha = hashed.then(|| Sha256::new_with_prefix(header));
        Ok(Gz {
            w,
            tail: Tail::new(how),
            sha,
            size: header.len() as u64,
        })
    }

    fn put(&mut self, p: &Piece) -> io::Result<()> {
        self.w.write_all(&p.data)?;
        if let Some(sha) = &mut self.sha {
            sha.update(&p.data);
        }
        self.size += p.data.len() as u64;
        self.tail.add(p);
        Ok(())
    }

    /// The size and (when hashed) the sha256 of the file, and its writer.
    fn finish(mut self) -> io::Result<(Option<String>, u64, W)> {
        let tail = self.tail.bytes();
        self.w.write_all(&tail)?;
        self.w.flush()?;
        let digest = self.sha.map(|mut sha| {
            sha.update(&tail);
            hex::encode(sha.finalize())
        });
        Ok((digest, self.size + tail.len() as u64, self.w))
    }
}

/// A compressed file as written: sha256 of its bytes and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub digest: String,
    pub size: u64,
}

/// What [`write`] made.
#[derive(Debug)]
pub struct Output<W1, W2> {
    pub tar: Written,
    /// sha256 of the uncompressed tar stream (an OCI diff_id)
    pub diff_id: String,
    /// The digests of the files written by [`Streams::file`], in order.
    pub files: Vec<FileDigests>,
    /// The size of the cpio.gz, when there is one.
    pub cpio: Option<u64>,
    pub tar_writer: W1,
    pub cpio_writer: Option<W2>,
}

/// The producer's side: archive bytes go in, in order.
pub struct Streams {
    jobs: SyncSender<Job>,
    order: SyncSender<(Receiver<io::Result<Piece>>, To)>,
    /// Pieces sent so far.
    sent: usize,
    pending: [Vec<u8>; 2],
    cpio: bool,
    /// The tar stream's sha256 (the diff_id).
    diff: StreamLane,
    /// The sha256 and sha1 of each file given to [`Streams::file`].
    files: FileLane,
}

impl Streams {
    /// Whether there is a cpio stream.
    pub(crate) fn has_cpio(&self) -> bool {
        self.cpio
    }

    fn send(&mut self, data: Arc<Shared>, to: To) -> io::Result<()> {
        let stopped = || io::Error::other("the compressed file's writer stopped");
        if !matches!(to, To::Cpio) {
            self.diff.put(Arc::clone(&data))?;
        }
        if self.sent == OFFLOAD_PIECES {
            self.offload()?;
        }
        let (tx, rx) = sync_channel(1);
        self.jobs.send((data, tx)).map_err(|_| stopped())?;
        self.sent += 1;
        self.order.send((rx, to)).map_err(|_| stopped())
    }

    fn flush_pending(&mut self, i: usize) -> io::Result<()> {
        if !self.pending[i].is_empty() {
            let data = std::mem::replace(&mut self.pending[i], take_buf());
            let to = if i == 0 { To::Tar } else { To::Cpio };
            self.send(Shared::new(data, give_buf), to)?;
        }
        Ok(())
    }

    fn push(&mut self, i: usize, bytes: &[u8]) -> io::Result<()> {
        if i == 1 && !self.cpio {
            return Ok(());
        }
        // no piece grows past twice PIECE (zstd's window holds it)
        for chunk in bytes.chunks(PIECE) {
            self.pending[i].extend_from_slice(chunk);
            if self.pending[i].len() >= PIECE {
                self.flush_pending(i)?;
            }
        }
        Ok(())
    }

    /// Archive metadata (headers, padding, small contents): `tar` for the
    /// tar stream, `cpio` for the cpio stream (ignored without one).
    pub(crate) fn meta(&mut self, tar: &[u8], cpio: &[u8]) -> io::Result<()> {
        self.push(0, tar)?;
        self.push(1, cpio)
    }

    /// Hashing moves to threads of its own (both lanes, once).
    fn offload(&mut self) -> io::Result<()> {
        self.diff.offload()?;
        self.files.offload()
    }

    /// A file's content, as [`Streams::content`], its sha256 and sha1
    /// computed beside the producer: they are [`Output::files`]' next.
    pub(crate) fn file(&mut self, r: &mut dyn Read, len: u64) -> io::Result<()> {
        if len >= OFFLOAD_FILE {
            self.offload()?;
        }
        self.content_to(r, len, true)?;
        self.files.put(hashlane::File::End)
    }

    /// A file's content, `len` bytes from `r`: the same in both streams.
    pub fn content(&mut self, r: &mut dyn Read, len: u64) -> io::Result<()> {
        self.content_to(r, len, false)
    }

    /// A file's content, also to the file lane when `hashed`.
    fn content_to(&mut self, r: &mut dyn Read, len: u64, hashed: bool) -> io::Result<()> {
        let short = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the content ended before its declared {len} bytes"),
            )
        };
        if len < SHARED_MIN {
            let mut buf = Vec::with_capacity(len as usize);
            r.take(len).read_to_end(&mut buf)?;
            if buf.len() as u64 != len {
                return Err(short());
            }
            self.meta(&buf, &buf)?;
            if hashed {
                self.files
                    .put(hashlane::File::Bytes(Shared::new(buf, give_buf)))?;
            }
            return Ok(());
        }
        self.flush_pending(0)?;
        self.flush_pending(1)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(PIECE as u64) as usize;
            let mut buf = take_buf();
            buf.resize(n, 0);
            r.read_exact(&mut buf).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    short()
                } else {
                    e
                }
            })?;
            let piece = Shared::new(buf, give_buf);
            if hashed {
                self.files.put(hashlane::File::Bytes(Arc::clone(&piece)))?;
            }
            self.send(piece, if self.cpio { To::Both } else { To::Tar })?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// What the writer thread made: the tar.gz as written and its writer, the
/// cpio.gz's size and writer.
type Finished<W1, W2> = (Written, W1, Option<(u64, W2)>);

/// The compressing threads: each takes a job, compresses it, sends the
/// piece back.
fn spawn_workers<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    threads: usize,
    jobs: Receiver<Job>,
    how: Compression,
) {
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..threads {
        let rx = Arc::clone(&jobs);
        s.spawn(move || {
            loop {
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((data, reply)) = job else { return };
                let piece = compress(&data, how);
                // the buffer goes back to the pool when its hashing is done too
                drop(data);
                // the writer may have stopped; then nobody waits for it
                let _ = reply.send(piece);
            }
        });
    }
}

/// The writer thread's work: the pieces, in order, into the compressed
/// files.
fn write_pieces<W1: Write, W2: Write>(
    tar: W1,
    cpio: Option<W2>,
    how: Compression,
    order: Receiver<(Receiver<io::Result<Piece>>, To)>,
) -> io::Result<Finished<W1, W2>> {
    let mut t = Gz::new(tar, how, true)?;
    let mut c = cpio.map(|w| Gz::new(w, how, false)).transpose()?;
    for (rx, to) in order {
        let piece = rx
            .recv()
            .map_err(|_| io::Error::other("a compressing thread stopped"))??;
        if matches!(to, To::Tar | To::Both) {
            t.put(&piece)?;
        }
        if let (To::Cpio | To::Both, Some(c)) = (to, c.as_mut()) {
            c.put(&piece)?;
        }
        give_buf(piece.data);
    }
    let (digest, size, tar) = t.finish()?;
    let tw = Written {
        digest: digest.unwrap_or_default(),
        size,
    };
    let cw = c.map(Gz::finish).transpose()?.map(|(_, size, w)| (size, w));
    Ok((tw, tar, cw))
}

/// Writes the tar stream compressed as `how` says to `tar` and, when given,
/// the cpio stream to `cpio`, with `threads` compressors; `body` produces
/// the streams' bytes. Errors of the writers are turned into `E` by
/// `io_err`.
pub fn write<W1, W2, E>(
    tar: W1,
    cpio: Option<W2>,
    how: Compression,
    threads: usize,
    body: impl FnOnce(&mut Streams) -> Result<(), E>,
    io_err: impl Fn(io::Error) -> E,
) -> Result<Output<W1, W2>, E>
where
    W1: Write + Send,
    W2: Write + Send,
{
    let threads = threads.max(1);
    let (job_tx, job_rx) = sync_channel::<Job>(threads);
    let (order_tx, order_rx) = sync_channel::<(Receiver<io::Result<Piece>>, To)>(2 * threads);
    let with_cpio = cpio.is_some();
    // what a small layer's write uses, on each of two concurrent writes
    let keep = 2 * threads + 2;
    std::thread::scope(|s| {
        spawn_workers(s, threads, job_rx, how);
        let writer = s.spawn(move || write_pieces(tar, cpio, how, order_rx));
        let mut streams = Streams {
            jobs: job_tx,
            order: order_tx,
            sent: 0,
            pending: [take_buf(), if with_cpio { take_buf() } else { Vec::new() }],
            cpio: with_cpio,
            diff: hashlane::stream_lane(),
            files: hashlane::file_lane(),
        };
        let produced = body(&mut streams)
            .and_then(|()| streams.flush_pending(0).map_err(&io_err))
            .and_then(|()| streams.flush_pending(1).map_err(&io_err));
        let Streams {
            jobs,
            order,
            diff,
            files,
            pending,
            sent,
            ..
        } = streams;
        pending.into_iter().for_each(give_buf);
        // closing the channels lets the workers and the writer finish
        drop((jobs, order));
        let written = writer
            .join()
            .map_err(|_| io_err(io::Error::other("the compressed file's writer panicked")))?;
        let (diff, files) = (diff.finish(), files.finish());
        // every piece's buffers are back in the pool now
        if sent > keep {
            shrink_pool(keep);
        }
        // a writer error explains a producer's "writer stopped": report it first
        let (tw, tar_writer, cw) = written.map_err(&io_err)?;
        produced?;
        let diff = diff.map_err(&io_err)?;
        let files = files.map_err(&io_err)?.done;
        let (cpio, cpio_writer) = cw.unzip();
        Ok(Output {
            tar: tw,
            diff_id: hex::encode(diff.finalize()),
            files,
            cpio,
            tar_writer,
            cpio_writer,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // partly compressible, like a binary
                if i % 3 == 0 { 0 } else { x as u8 }
            })
            .collect()
    }

    fn run(threads: usize, with_cpio: bool, big: &[u8]) -> Output<Vec<u8>, Vec<u8>> {
        run_as(Compression::Gzip, threads, with_cpio, big)
    }

    fn run_as(
        how: Compression,
        threads: usize,
        with_cpio: bool,
        big: &[u8],
    ) -> Output<Vec<u8>, Vec<u8>> {
        let cpio = with_cpio.then(Vec::new);
        write(
            Vec::new(),
            cpio,
            how,
            threads,
            |s| {
                s.meta(b"tar-header-1", b"cpio-header-1")?;
                s.content(&mut &big[..], big.len() as u64)?;
                s.meta(b"tar-pad", b"cp")?;
                s.content(&mut &b"small file"[..], 10)?;
                s.meta(&[0u8; 1024], b"")
            },
            |e| e,
        )
        .expect("write")
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(b).read_to_end(&mut out).expect("gunzip");
        out
    }

    #[test]
    fn both_streams_decompress_to_their_bytes_and_share_content() {
        let big = pseudo_random(3 * PIECE + 12345, 7);
        let out = run(2, true, &big);
        let mut tar = b"tar-header-1".to_vec();
        tar.extend_from_slice(&big);
        tar.extend_from_slice(b"tar-pad");
        tar.extend_from_slice(b"small file");
        tar.extend_from_slice(&[0u8; 1024]);
        let mut cpio = b"cpio-header-1".to_vec();
        cpio.extend_from_slice(&big);
        cpio.extend_from_slice(b"cp");
        cpio.extend_from_slice(b"small file");
        assert_eq!(gunzip(&out.tar_writer), tar);
        let cpio_gz = out.cpio_writer.as_ref().expect("cpio");
        assert_eq!(gunzip(cpio_gz), cpio);
        assert_eq!(out.diff_id, hex::encode(Sha256::digest(&tar)));
        assert_eq!(out.tar.digest, hex::encode(Sha256::digest(&out.tar_writer)));
        assert_eq!(out.tar.size, out.tar_writer.len() as u64);
        // gzip(1) agrees
        let mut child = std::process::Command::new("gzip")
            .arg("-t")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(cpio_gz)
            .expect("pipe");
        assert!(child.wait().expect("gzip").success());
    }

    #[test]
    fn bytes_do_not_depend_on_threads_or_on_the_second_stream() {
        let big = pseudo_random(2 * PIECE + 99, 3);
        let one = run(1, false, &big);
        let two = run(2, true, &big);
        let four = run(4, true, &big);
        assert_eq!(one.tar_writer, two.tar_writer);
        assert_eq!(two.tar_writer, four.tar_writer);
        assert_eq!(two.cpio_writer, four.cpio_writer);
    }

    #[test]
    fn short_content_is_an_error() {
        let r = write(
            Vec::new(),
            None::<Vec<u8>>,
            Compression::Gzip,
            2,
            |s| s.content(&mut &[1u8; 100][..], SHARED_MIN * 2),
            |e| e,
        );
        let e = r.expect_err("an error");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// `zstd -d` (the real program) of `data`.
    fn unzstd(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.zst");
        std::fs::write(&path, data).expect("write");
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .arg(&path)
            .output()
            .expect("zstd (scripts/setup installs it)");
        assert!(out.status.success(), "zstd -d: {:?}", out);
        out.stdout
    }

    #[test]
    fn zstd_streams_decompress_to_their_bytes_and_share_content() {
        let big = pseudo_random(3 * PIECE + 4321, 11);
        let out = run_as(Compression::Zstd, 2, true, &big);
        let gz = run(2, true, &big);
        // the same archive bytes inside, whatever the compression
        assert_eq!(out.diff_id, gz.diff_id);
        let mut tar = b"tar-header-1".to_vec();
        tar.extend_from_slice(&big);
        tar.extend_from_slice(b"tar-pad");
        tar.extend_from_slice(b"small file");
        tar.extend_from_slice(&[0u8; 1024]);
        assert_eq!(unzstd(&out.tar_writer), tar);
        let cpio = out.cpio_writer.as_ref().expect("cpio");
        let mut want = b"cpio-header-1".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"cp");
        want.extend_from_slice(b"small file");
        assert_eq!(unzstd(cpio), want);
        assert_eq!(out.tar.digest, hex::encode(Sha256::digest(&out.tar_writer)));
        assert_eq!(out.tar.size, out.tar_writer.len() as u64);
        assert!(out.tar_writer.starts_with(&crate::zstdblocks::HEADER));
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_threads_or_on_the_second_stream() {
        let big = pseudo_random(2 * PIECE + 77, 5);
        let one = run_as(Compression::Zstd, 1, false, &big);
        let two = run_as(Compression::Zstd, 2, true, &big);
        let four = run_as(Compression::Zstd, 4, true, &big);
        assert_eq!(one.tar_writer, two.tar_writer);
        assert_eq!(two.tar_writer, four.tar_writer);
        assert_eq!(two.cpio_writer, four.cpio_writer);
    }

    #[test]
    fn a_large_metadata_write_is_cut_into_pieces_the_window_holds() {
        let huge = pseudo_random(5 * PIECE, 2);
        let out = write(
            Vec::new(),
            None::<Vec<u8>>,
            Compression::Zstd,
            2,
            |s| s.meta(&huge, b""),
            |e| e,
        )
        .expect("write");
        assert_eq!(unzstd(&out.tar_writer), huge);
    }

    #[test]
    fn a_reused_deflate_state_and_buffer_give_the_bytes_of_fresh_ones() {
        let a = pseudo_random(PIECE, 21);
        let b = pseudo_random(PIECE / 3, 22);
        let fresh = |input: &[u8]| {
            let mut c = Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
            let mut out = Vec::with_capacity(BUF);
            c.compress_vec(input, &mut out, FlushCompress::Sync)
                .unwrap();
            assert_eq!(c.total_in(), input.len() as u64);
            out
        };
        // each piece after the first takes what the one before left in the pool
        for input in [&a, &b, &a, &b] {
            let piece = deflate(input).unwrap();
            assert_eq!(piece.data, fresh(input));
            give_buf(piece.data);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b);
        assert_eq!(deflate(&b).unwrap().crc.unwrap().finalize(), crc.finalize());
    }

    /// What `sha1sum` (the real program) prints for `data`.
    fn sha1sum(data: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, data).expect("write");
        let out = std::process::Command::new("sha1sum")
            .arg(&path)
            .output()
            .expect("sha1sum");
        String::from_utf8_lossy(&out.stdout)[..40].to_string()
    }

    #[test]
    fn files_are_hashed_in_order_whether_on_the_producer_or_beside_it() {
        let small = b"a small file".to_vec();
        let mid = pseudo_random(SHARED_MIN as usize + 3, 14);
        // large enough to move the hashing to threads of its own
        let big = pseudo_random(OFFLOAD_FILE as usize + 7, 13);
        let out = write(
            Vec::new(),
            Some(Vec::new()),
            Compression::Zstd,
            2,
            |s| {
                s.file(&mut &small[..], small.len() as u64)?;
                s.file(&mut &mid[..], mid.len() as u64)?;
                s.file(&mut &big[..], big.len() as u64)?;
                // not a listed file: no digests
                s.content(&mut &mid[..], mid.len() as u64)?;
                s.file(&mut &small[..], small.len() as u64)
            },
            |e| e,
        )
        .expect("write");
        let want: Vec<FileDigests> = [&small, &mid, &big, &small]
            .iter()
            .map(|f| FileDigests {
                sha256: hex::encode(Sha256::digest(f)),
                sha1: sha1sum(f),
            })
            .collect();
        assert_eq!(out.files, want);
        let tar = [&small[..], &mid, &big, &mid, &small].concat();
        assert_eq!(out.diff_id, hex::encode(Sha256::digest(&tar)));
        assert_eq!(unzstd(&out.tar_writer), tar);
    }

    #[test]
    fn whole_writes_one_member_of_either_kind() {
        let data = pseudo_random(PIECE + 3, 9);
        assert_eq!(gunzip(&Compression::Gzip.whole(&data).expect("gz")), data);
        assert_eq!(unzstd(&Compression::Zstd.whole(&data).expect("zst")), data);
    }
}

//! zstd for [`crate::pgzip`]'s pieces: takes one piece of an archive stream
//! and gives it as zstd blocks that fit anywhere inside one zstd frame.
//!
//! A piece is compressed on its own (a fresh context, no history) by libzstd
//! (the `zstd-sys` crate), with the frame header its context writes dropped
//! and its repeat offsets invalidated before the first block: a block of the
//! piece never refers to a repeat offset the piece itself did not set, so
//! the offsets a decoder carries from the piece before do not matter. That
//! is how zstd's own multi-threaded compressor (`zstdmt_compress.c`) joins
//! the jobs after the first into one frame. No block is marked last; the
//! frame opens with [`HEADER`] and closes with [`END`]. One frame matters:
//! the kernel unpacks one zstd frame per compressed member of an initramfs
//! and wants the cpio at an entry's end there (`lib/decompress_unzstd.c`,
//! `init/initramfs.c`), so a layer's segment must be a single frame.

use std::cell::RefCell;
use std::io;

use zstd_sys as z;

/// The frame header: magic 0xFD2FB528; descriptor 0 (no content size, not
/// single-segment, no checksum, no dictionary id); window 4 MiB (exponent
/// 12, mantissa 0: 2^(10+12)).
pub(crate) const HEADER: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 12 << 3];
/// The window [`HEADER`] declares: a piece must be smaller, so that no
/// offset inside it reaches further.
pub(crate) const WINDOW: usize = 4 << 20;
/// The frame's end: an empty raw block marked last.
pub(crate) const END: [u8; 3] = [0x01, 0x00, 0x00];
/// The level of every zstd layer (`zstd -3`, zstd's default).
pub const LEVEL: i32 = 3;

unsafe extern "C" {
    /// libzstd's own (`lib/compress/zstd_compress.c`, declared in
    /// `lib/common/zstd_internal.h`): the next block uses no repeat offset
    /// from before. zstd-sys builds libzstd statically, so the symbol links.
    fn ZSTD_invalidateRepCodes(cctx: *mut z::ZSTD_CCtx);
}

/// A compression context, freed when dropped.
struct Ctx(*mut z::ZSTD_CCtx);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ZSTD_createCCtx and is freed once
        unsafe { z::ZSTD_freeCCtx(self.0) };
    }
}

thread_local! {
    /// One context per thread, reset for every piece.
    static CTX: RefCell<Option<Ctx>> = const { RefCell::new(None) };
}

/// `code` as a result: libzstd's error name when it is one.
fn check(code: usize) -> io::Result<usize> {
    // SAFETY: both take any value; the name is a static C string
    if unsafe { z::ZSTD_isError(code) } == 0 {
        return Ok(code);
    }
    let name = unsafe { std::ffi::CStr::from_ptr(z::ZSTD_getErrorName(code)) };
    Err(io::Error::other(format!(
        "zstd: {}",
        name.to_string_lossy()
    )))
}

/// `input` as zstd blocks at `level`, none marked last; nothing for an
/// empty input. The bytes depend only on `input` and `level`.
pub(crate) fn blocks(input: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if input.len() >= WINDOW {
        return Err(io::Error::other(format!(
            "zstd: a piece of {} bytes does not fit the frame's window of {WINDOW}",
            input.len()
        )));
    }
    CTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            // SAFETY: a new context or null, checked below
            let p = unsafe { z::ZSTD_createCCtx() };
            if p.is_null() {
                return Err(io::Error::other("zstd: cannot allocate a context"));
            }
            *slot = Some(Ctx(p));
        }
        let cctx = slot.as_ref().map_or(std::ptr::null_mut(), |c| c.0);
        compress_with(cctx, input, level)
    })
}

/// [`blocks`] with the context `cctx`.
fn compress_with(cctx: *mut z::ZSTD_CCtx, input: &[u8], level: i32) -> io::Result<Vec<u8>> {
    // SAFETY: the bound is a pure function of the length
    let cap = unsafe { z::ZSTD_compressBound(input.len()) } + 64;
    let mut out: Vec<u8> = Vec::with_capacity(cap);
    let dst = out.as_mut_ptr().cast::<std::ffi::c_void>();
    let src = input.as_ptr().cast::<std::ffi::c_void>();
    // SAFETY: `cctx` is a live context of this thread; `dst` has `cap`
    // writable bytes and `src` `input.len()` readable ones, both alive for
    // the calls; libzstd writes at most `cap` bytes and returns how many.
    let n = unsafe {
        check(z::ZSTD_compressBegin(cctx, level))?;
        // the first call writes the context's frame header: dropped, since
        // the pieces share HEADER (written over by the blocks below)
        check(z::ZSTD_compressContinue(cctx, dst, cap, src, 0))?;
        ZSTD_invalidateRepCodes(cctx);
        let n = check(z::ZSTD_compressContinue(cctx, dst, cap, src, input.len()))?;
        out.set_len(n.min(cap));
        n
    };
    debug_assert!(n <= cap);
    Ok(out)
}

/// `data` as one whole zstd frame (the small archives written in one go).
pub(crate) fn frame(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = HEADER.to_vec();
    for piece in data.chunks(crate::pgzip::PIECE) {
        out.extend(blocks(piece, LEVEL)?);
    }
    out.extend_from_slice(&END);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    /// `zstd -d` (the real program) of `data`.
    fn unzstd(data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("zstd (scripts/setup installs it)");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut out)
            .expect("read");
        feeder.join().expect("feeder").expect("write");
        assert!(child.wait().expect("zstd").success(), "zstd -d failed");
        out
    }

    /// Data whose matches sit at distances 1, 4 and 8: what a fresh
    /// context codes as repeat offsets, and a decoder mid-frame would take
    /// for the previous piece's offsets.
    fn repetitive(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| match (i / 4096) % 4 {
                0 => 0,
                1 => [seed, 1, 2, 3][i % 4],
                2 => (i % 8) as u8 ^ seed,
                _ => ((i * 7919) >> 3) as u8,
            })
            .collect()
    }

    #[test]
    fn pieces_compressed_apart_decode_as_one_frame() {
        let a = repetitive(300_000, 5);
        let b = repetitive(200_001, 9);
        let c = b"tar header".repeat(1000);
        let mut frame = HEADER.to_vec();
        for p in [&a, &b, &c] {
            frame.extend(blocks(p, LEVEL).expect("blocks"));
        }
        frame.extend_from_slice(&END);
        let want = [a, b, c].concat();
        assert!(unzstd(&frame) == want, "zstd -d gives other bytes");
        // and so does the decoder imgbuild reads layers with
        let mut got = Vec::new();
        crate::layer::rootfs::decompress(std::io::Cursor::new(frame))
            .expect("decoder")
            .read_to_end(&mut got)
            .expect("decode");
        assert!(got == want, "imgbuild's decoder gives other bytes");
    }

    #[test]
    fn a_piece_is_the_same_bytes_wherever_it_is_compressed() {
        let a = repetitive(150_000, 1);
        let first = blocks(&a, LEVEL).expect("blocks");
        let _ = blocks(&repetitive(70_000, 2), LEVEL).expect("other");
        let again = std::thread::spawn(move || blocks(&a, LEVEL).expect("blocks"));
        assert_eq!(again.join().expect("thread"), first);
        assert!(blocks(&[], LEVEL).expect("empty").is_empty());
    }

    #[test]
    fn a_piece_larger_than_the_window_is_an_error() {
        let e = blocks(&vec![0u8; WINDOW], LEVEL).expect_err("too large");
        assert!(e.to_string().contains("window"), "{e}");
    }

    #[test]
    fn a_whole_frame_is_one_frame() {
        let data = repetitive(3 * crate::pgzip::PIECE + 17, 3);
        let f = frame(&data).expect("frame");
        assert!(unzstd(&f) == data, "zstd -d gives other bytes");
        // the kernel unpacks one frame per member: zstd -l counts them
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.zst");
        std::fs::write(&path, &f).expect("write");
        let out = Command::new("zstd")
            .args(["-l", "-v"])
            .arg(&path)
            .output()
            .expect("zstd -l");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("# Zstandard Frames: 1"), "{text}");
    }
}

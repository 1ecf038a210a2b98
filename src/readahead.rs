//! Reading ahead on a thread of its own: takes a reader whose bytes cost
//! work to make (a decompressor of an upstream archive) and gives a reader
//! of the same bytes, made on another core while the caller frames,
//! compresses and hashes them. Chunks go over a bounded channel and their
//! buffers come back for the next ones, so memory stays at a few chunks.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

/// Bytes per chunk (below glibc's mmap threshold, [`crate::mem`]).
const CHUNK: usize = 256 << 10;
/// Chunks made ahead of the reader.
const DEPTH: usize = 4;

/// What the reading thread sends: bytes, then the end or an error. A
/// channel that closes without either means the thread died (a panic in
/// the decoder): an error, never a clean end that would cut an archive
/// short.
enum Chunk {
    Bytes(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The bytes of a reader read on a thread of its own.
pub(crate) struct ReadAhead {
    chunks: Receiver<Chunk>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// The reader's error, once met (every later read returns it again).
    failed: Option<(io::ErrorKind, String)>,
    /// The reader's end was sent.
    ended: bool,
}

impl ReadAhead {
    /// Starts reading `r` ahead.
    pub(crate) fn new(r: impl Read + Send + 'static) -> io::Result<ReadAhead> {
        let (tx, chunks) = sync_channel(DEPTH);
        let (back, spare) = channel();
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || fill(r, &tx, &spare))
            .map_err(|e| io::Error::other(format!("cannot start a reading thread: {e}")))?;
        Ok(ReadAhead {
            chunks,
            back,
            cur: Vec::new(),
            pos: 0,
            failed: None,
            ended: false,
        })
    }
}

/// The reading thread: chunks of `r` until its end, an error, or the
/// reader's going away.
fn fill(mut r: impl Read, tx: &SyncSender<Chunk>, spare: &Receiver<Vec<u8>>) {
    loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let result = loop {
            match r.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(n);
        if n > 0 && tx.send(Chunk::Bytes(buf)).is_err() {
            return;
        }
        match result {
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
            Ok(()) if n < CHUNK => {
                let _ = tx.send(Chunk::End);
                return;
            }
            Ok(()) => {}
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            let e = match self.chunks.recv() {
                Ok(Chunk::Bytes(next)) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    // the thread may be gone; then the buffer is dropped
                    let _ = self.back.send(done);
                    self.pos = 0;
                    continue;
                }
                Ok(Chunk::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(Chunk::Failed(e)) => e,
                Err(_) => io::Error::other("the reading thread stopped before the end"),
            };
            self.failed = Some((e.kind(), e.to_string()));
            return Err(e);
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_read_ahead_are_the_readers_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 1234).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        ReadAhead::new(io::Cursor::new(data.clone()))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    /// Gives `good` bytes, then an error.
    struct Failing(usize);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate",
                ));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }

    /// Panics after `good` bytes, as a broken decoder might.
    struct Panicking(usize);

    impl Read for Panicking {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.0 > 0, "the decoder broke");
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_reading_thread_that_dies_is_an_error_not_an_end() {
        let mut r = ReadAhead::new(Panicking(CHUNK)).unwrap();
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), CHUNK);
        assert!(e.to_string().contains("stopped before the end"), "{e}");
    }

    #[test]
    fn the_readers_error_comes_after_its_bytes_and_stays() {
        let mut r = ReadAhead::new(Failing(CHUNK + 10)).unwrap();
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), CHUNK + 10);
        assert_eq!(e.to_string(), "corrupt deflate");
        let again = r.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    }
}

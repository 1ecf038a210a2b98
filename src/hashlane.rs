//! Hashing beside the producer: takes a stream's bytes, in order, and
//! produces their digests (a layer's diff_id; each file's sha256 and sha1
//! for its listing) without holding up the thread that reads the inputs.
//!
//! A [`Lane`] applies each message where its state is: on the producer's
//! thread until [`Lane::offload`] moves the state to a thread of its own.
//! A write that stays small (a fleet's thousands of node layers) starts no
//! thread; a large one hashes on other cores while its producer inflates
//! the upstream archives and its compressors compress. A piece's bytes
//! arrive as a [`Shared`] buffer, which its compressor reads too (a small
//! file's, under a piece, as a copy of its own).

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Messages that may wait for a lane's thread.
const DEPTH: usize = 2;

/// A buffer read by several threads; `on_drop` gets it back when the last
/// of them is done (the piece pool).
pub(crate) struct Shared {
    bytes: Vec<u8>,
    on_drop: fn(Vec<u8>),
}

impl Shared {
    pub(crate) fn new(bytes: Vec<u8>, on_drop: fn(Vec<u8>)) -> Arc<Shared> {
        Arc::new(Shared { bytes, on_drop })
    }
}

impl std::ops::Deref for Shared {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        (self.on_drop)(std::mem::take(&mut self.bytes));
    }
}

/// Work done in order on messages `M` to a state `S`, here or on a thread.
pub(crate) struct Lane<M, S> {
    apply: fn(&mut S, M),
    here: Option<S>,
    there: Option<(SyncSender<M>, JoinHandle<S>)>,
}

fn stopped() -> io::Error {
    io::Error::other("a hashing thread stopped")
}

impl<M: Send + 'static, S: Send + 'static> Lane<M, S> {
    pub(crate) fn new(state: S, apply: fn(&mut S, M)) -> Lane<M, S> {
        Lane {
            apply,
            here: Some(state),
            there: None,
        }
    }

    /// Applies `m`, here or on the lane's thread.
    pub(crate) fn put(&mut self, m: M) -> io::Result<()> {
        match (&self.there, &mut self.here) {
            (Some((tx, _)), _) => tx.send(m).map_err(|_| stopped()),
            (None, Some(s)) => {
                (self.apply)(s, m);
                Ok(())
            }
            (None, None) => Err(stopped()),
        }
    }

    /// Moves the state to a thread of its own (once; later calls do
    /// nothing).
    pub(crate) fn offload(&mut self) -> io::Result<()> {
        let Some(mut state) = self.here.take() else {
            return Ok(());
        };
        let apply = self.apply;
        let (tx, rx) = sync_channel::<M>(DEPTH);
        let thread = std::thread::Builder::new()
            .name("hash".into())
            .spawn(move || {
                for m in rx {
                    apply(&mut state, m);
                }
                state
            })
            .map_err(|e| io::Error::other(format!("cannot start a hashing thread: {e}")))?;
        self.there = Some((tx, thread));
        Ok(())
    }

    /// The state once every message is applied.
    pub(crate) fn finish(self) -> io::Result<S> {
        match (self.here, self.there) {
            (Some(s), _) => Ok(s),
            (None, Some((tx, thread))) => {
                drop(tx);
                thread.join().map_err(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    io::Error::other(format!("a hashing thread failed: {why}"))
                })
            }
            (None, None) => Err(stopped()),
        }
    }
}

/// The sha256 of a whole stream (a tar's: the layer's diff_id).
pub(crate) type StreamLane = Lane<Arc<Shared>, Sha256>;

pub(crate) fn stream_lane() -> StreamLane {
    Lane::new(Sha256::new(), |sha, bytes| sha.update(&bytes[..]))
}

/// A file's digests, as a listing records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    pub sha256: String,
    /// SPDX's File elements must carry one
    pub sha1: String,
}

/// What a [`FileLane`] takes: a file's bytes, then its end.
pub(crate) enum File {
    Bytes(Arc<Shared>),
    End,
}

/// The files hashed so far, in order, and the one being hashed.
pub(crate) struct Files {
    sha256: Sha256,
    sha1: aws_lc_rs::digest::Context,
    pub(crate) done: Vec<FileDigests>,
}

fn new_sha1() -> aws_lc_rs::digest::Context {
    aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY)
}

/// The sha256 and sha1 of each of a stream's files.
pub(crate) type FileLane = Lane<File, Files>;

pub(crate) fn file_lane() -> FileLane {
    let files = Files {
        sha256: Sha256::new(),
        sha1: new_sha1(),
        done: Vec::new(),
    };
    Lane::new(files, |f, m| match m {
        File::Bytes(b) => {
            f.sha256.update(&b[..]);
            f.sha1.update(&b);
        }
        File::End => {
            let sha256 = hex::encode(f.sha256.finalize_reset());
            let sha1 = hex::encode(std::mem::replace(&mut f.sha1, new_sha1()).finish());
            f.done.push(FileDigests { sha256, sha1 });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_of(lane: &mut FileLane, files: &[&[u8]]) {
        for f in files {
            for chunk in f.chunks(3) {
                lane.put(File::Bytes(Shared::new(chunk.to_vec(), drop)))
                    .unwrap();
            }
            lane.put(File::End).unwrap();
        }
    }

    #[test]
    fn a_lane_gives_the_same_digests_here_as_on_its_thread() {
        let files: [&[u8]; 3] = [b"first file", b"", b"the third file, longer"];
        let mut here = file_lane();
        files_of(&mut here, &files);
        let mut there = file_lane();
        files_of(&mut there, &files[..1]);
        there.offload().unwrap();
        files_of(&mut there, &files[1..]);
        let (here, there) = (here.finish().unwrap(), there.finish().unwrap());
        assert_eq!(here.done, there.done);
        assert_eq!(here.done[1].sha256, hex::encode(Sha256::digest(b"")));
        // sha1 of "first file", as sha1sum prints it
        assert_eq!(
            here.done[0].sha1,
            "c9be619500b84cdc8391b9f00c3c532e2e5e0d33"
        );
    }

    #[test]
    fn a_shared_buffer_comes_back_once_its_last_reader_is_done() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static BACK: AtomicUsize = AtomicUsize::new(0);
        let b = Shared::new(vec![1, 2, 3], |v| {
            BACK.fetch_add(v.len(), Ordering::SeqCst);
        });
        let mut lane = stream_lane();
        lane.offload().unwrap();
        lane.put(Arc::clone(&b)).unwrap();
        let sha = lane.finish().unwrap().finalize();
        assert_eq!(BACK.load(Ordering::SeqCst), 0);
        drop(b);
        assert_eq!(BACK.load(Ordering::SeqCst), 3);
        assert_eq!(sha, Sha256::digest([1u8, 2, 3]));
    }
}

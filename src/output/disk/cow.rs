//! A disk being made, in memory where it changes: takes what the disk holds
//! before this build writes to it (extents of stored files, such as the
//! shared root and the shared ESP; zeros elsewhere) and gives a
//! `Read + Write + Seek` device (for fatfs and the GPT writer) that keeps
//! every 64 KiB cluster written to in memory, the qcow2 cluster of
//! [`super::qcow2`]. So a node's disk over its role's shared disk costs the
//! clusters it changes, not a copy of the disk.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The unit of change: qcow2's default cluster.
pub(crate) const CLUSTER: u64 = 64 << 10;

/// `len` bytes of `file` from `offset`, at `at` of the disk.
#[derive(Debug, Clone)]
pub(crate) struct Extent {
    pub at: u64,
    pub len: u64,
    pub file: Arc<File>,
    pub offset: u64,
}

/// The disk: its size, what it held before, and the clusters written since.
#[derive(Debug)]
pub(crate) struct Cow {
    len: u64,
    extents: Vec<Extent>,
    dirty: BTreeMap<u64, Box<[u8]>>,
    pos: u64,
}

impl Cow {
    /// A disk of `len` bytes holding `extents` (not overlapping), zeros
    /// elsewhere.
    pub(crate) fn new(len: u64, mut extents: Vec<Extent>) -> Cow {
        extents.sort_by_key(|e| e.at);
        Cow {
            len,
            extents,
            dirty: BTreeMap::new(),
            pos: 0,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The clusters written, by index, in order.
    pub(crate) fn dirty(&self) -> &BTreeMap<u64, Box<[u8]>> {
        &self.dirty
    }

    /// What the disk held at `at` before any write, into `buf`.
    fn read_base(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        read_extents(&self.extents, at, buf)
    }

    /// The cluster `index` as it is now, made writable.
    fn cluster_mut(&mut self, index: u64) -> io::Result<&mut [u8]> {
        let c = match self.dirty.entry(index) {
            Entry::Occupied(c) => c.into_mut(),
            Entry::Vacant(v) => {
                let mut c = vec![0u8; usize_of(CLUSTER)].into_boxed_slice();
                read_extents(&self.extents, index * CLUSTER, &mut c)?;
                v.insert(c)
            }
        };
        Ok(c)
    }

    /// Reads `buf.len()` bytes at `at` (zeros past the end).
    pub(crate) fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = at + done as u64;
            let (index, within) = (pos / CLUSTER, pos % CLUSTER);
            let n = (buf.len() - done).min(usize_of(CLUSTER - within));
            let out = &mut buf[done..done + n];
            match self.dirty.get(&index) {
                Some(c) => out.copy_from_slice(&c[usize_of(within)..usize_of(within) + n]),
                None => self.read_base(pos, out)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `at`; a write past the end is an error.
    pub(crate) fn write_at(&mut self, at: u64, buf: &[u8]) -> io::Result<()> {
        if at + buf.len() as u64 > self.len {
            return Err(io::Error::other(format!(
                "a write of {} bytes at {at} is past the disk's end ({})",
                buf.len(),
                self.len
            )));
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = at + done as u64;
            let (index, within) = (pos / CLUSTER, usize_of(pos % CLUSTER));
            let n = (buf.len() - done).min(usize_of(CLUSTER) - within);
            self.cluster_mut(index)?[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// A view of `len` bytes from `start`, as a device of its own (the ESP
    /// for fatfs).
    pub(crate) fn window(&mut self, start: u64, len: u64) -> Window<'_> {
        Window {
            cow: self,
            start,
            len,
            pos: 0,
        }
    }
}

/// What `extents` hold at `at` (zeros between them), into `buf`.
fn read_extents(extents: &[Extent], at: u64, buf: &mut [u8]) -> io::Result<()> {
    buf.fill(0);
    let end = at + buf.len() as u64;
    for e in extents {
        let (from, to) = (at.max(e.at), end.min(e.at + e.len));
        if from < to {
            let slice = &mut buf[usize_of(from - at)..usize_of(to - at)];
            e.file.read_exact_at(slice, e.offset + (from - e.at))?;
        }
    }
    Ok(())
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A new position from `from` in a device of `len` bytes at `pos`.
fn seek_to(pos: u64, len: u64, from: SeekFrom) -> io::Result<u64> {
    let to = match from {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    to.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start"))
}

/// Reads at `pos` of a device of `len` bytes (nothing past the end).
fn read_in(cow: &Cow, start: u64, len: u64, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
    let n = usize_of(len.saturating_sub(pos)).min(buf.len());
    cow.read_at(start + pos, &mut buf[..n])?;
    Ok(n)
}

impl Read for Cow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_in(self, 0, self.len, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cow {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cow {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.len, from)?;
        Ok(self.pos)
    }
}

/// `len` bytes of a [`Cow`] from `start`.
#[derive(Debug)]
pub(crate) struct Window<'a> {
    cow: &'a mut Cow,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_in(self.cow, self.start, self.len, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "a write past the partition's end",
            ));
        }
        self.cow.write_at(self.start + self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.len, from)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Arc::new(f)
    }

    #[test]
    fn reads_the_base_until_written_and_keeps_only_the_clusters_written() {
        let base = stored(&vec![7u8; 3 * CLUSTER as usize]);
        let extent = Extent {
            at: CLUSTER,
            len: 2 * CLUSTER,
            file: base,
            offset: CLUSTER,
        };
        let mut cow = Cow::new(4 * CLUSTER, vec![extent]);
        let mut b = [1u8; 4];
        cow.read_at(CLUSTER - 2, &mut b).unwrap();
        assert_eq!(b, [0, 0, 7, 7]);
        // a write across a cluster boundary, through a window
        let mut w = cow.window(CLUSTER, 3 * CLUSTER);
        w.seek(SeekFrom::Start(CLUSTER - 1)).unwrap();
        w.write_all(&[9, 9]).unwrap();
        assert_eq!(cow.dirty().keys().copied().collect::<Vec<_>>(), [1, 2]);
        cow.read_at(2 * CLUSTER - 2, &mut b).unwrap();
        assert_eq!(b, [7, 9, 9, 7]);
        // a written cluster holds the base's bytes around the write
        assert_eq!(cow.dirty()[&2][1..3], [7, 7]);
        assert!(cow.write_at(4 * CLUSTER - 1, &[1, 2]).is_err());
        assert_eq!(cow.seek(SeekFrom::End(0)).unwrap(), 4 * CLUSTER);
        assert_eq!(cow.read(&mut b).unwrap(), 0);
    }
}

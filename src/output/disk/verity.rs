//! The root's dm-verity hash device: takes the root filesystem (whole
//! 4 KiB data blocks at an offset of the disk image), a salt and a UUID
//! derived from the inputs, and writes the hash device as `veritysetup
//! format` lays it out (cryptsetup's lib/verity; the kernel's
//! Documentation/admin-guide/device-mapper/verity.rst): a 512-byte
//! superblock in the first 4 KiB hash block, then the hash tree's levels,
//! the one nearest the root first, each block 128 sha256 digests padded
//! with zeros; every digest is sha256(salt || block) (format 1). Gives the
//! root hash, which the kernel command line carries: the kernel then
//! refuses any block of the root that does not hash to it.

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

/// Data and hash block size.
pub(crate) const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: usize = BLOCK as usize / DIGEST;

/// What the hash device was made with, and the root hash.
#[derive(Debug, Clone)]
pub(crate) struct Verity {
    pub(crate) root_hash: [u8; 32],
    /// Bytes of the hash device (superblock included).
    pub(crate) size: u64,
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(block)
        .finalize()
        .into()
}

/// The levels of the tree over `leaves` (the data blocks' digests), the
/// level over the data first, each as its hash blocks' bytes; and the
/// root hash.
fn tree(salt: &[u8], leaves: Vec<[u8; 32]>) -> (Vec<Vec<u8>>, [u8; 32]) {
    let mut levels = Vec::new();
    let mut digests = leaves;
    // one data block: the root hash is its digest, there is no tree
    while digests.len() > 1 {
        let mut blocks = Vec::with_capacity(digests.len().div_ceil(PER_BLOCK) * BLOCK as usize);
        let mut next = Vec::new();
        for chunk in digests.chunks(PER_BLOCK) {
            let start = blocks.len();
            for d in chunk {
                blocks.extend_from_slice(d);
            }
            blocks.resize(start + BLOCK as usize, 0);
            next.push(digest(salt, &blocks[start..]));
        }
        levels.push(blocks);
        digests = next;
    }
    let root = digests.first().copied().unwrap_or([0; 32]);
    (levels, root)
}

/// veritysetup's superblock (`struct verity_sb`, little-endian, 512 bytes).
fn superblock(uuid: &[u8; 16], salt: &[u8], data_blocks: u64) -> Vec<u8> {
    let mut sb = Vec::with_capacity(512);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // superblock version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb.extend_from_slice(uuid);
    let mut alg = [0u8; 32];
    alg[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&alg);
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes()); // data block size
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes()); // hash block size
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    sb.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    sb.extend_from_slice(&[0; 6]);
    let mut s = [0u8; 256];
    s[..salt.len()].copy_from_slice(salt);
    sb.extend_from_slice(&s);
    sb.resize(512, 0);
    sb
}

/// Hashes the `len` bytes (whole blocks) at `data_at` of `disk` and writes
/// the hash device at `hash_at`.
pub(crate) fn write<F: Read + Write + Seek>(
    disk: &mut F,
    data_at: u64,
    len: u64,
    hash_at: u64,
    salt: &[u8; 32],
    uuid: &[u8; 16],
) -> io::Result<Verity> {
    if len == 0 || !len.is_multiple_of(BLOCK) {
        return Err(io::Error::other(format!(
            "the root filesystem is {len} bytes, not whole {BLOCK}-byte blocks"
        )));
    }
    let data_blocks = len / BLOCK;
    disk.seek(SeekFrom::Start(data_at))?;
    let mut r = io::BufReader::with_capacity(1 << 20, &mut *disk);
    let mut block = vec![0u8; BLOCK as usize];
    let mut leaves = Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0));
    for _ in 0..data_blocks {
        r.read_exact(&mut block)?;
        leaves.push(digest(salt, &block));
    }
    drop(r);
    let (levels, root_hash) = tree(salt, leaves);
    let mut out = superblock(uuid, salt, data_blocks);
    out.resize(BLOCK as usize, 0);
    for level in levels.iter().rev() {
        out.extend_from_slice(level);
    }
    disk.seek(SeekFrom::Start(hash_at))?;
    disk.write_all(&out)?;
    Ok(Verity {
        root_hash,
        size: out.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_has_a_level_per_128_fold_and_the_root_hashes_the_top_block() {
        let salt = [7u8; 32];
        let leaves: Vec<[u8; 32]> = (0..200u8).map(|i| [i; 32]).collect();
        let (levels, root) = tree(&salt, leaves);
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0].len(), 2 * BLOCK as usize);
        assert_eq!(levels[1].len(), BLOCK as usize);
        assert_eq!(root, digest(&salt, &levels[1]));
        assert_eq!(&levels[0][..32], &[0u8; 32]);
        assert_eq!(
            &levels[0][BLOCK as usize..BLOCK as usize + 32],
            &[128u8; 32]
        );
    }

    #[test]
    fn a_root_of_whole_blocks_only_is_taken() {
        let mut disk = io::Cursor::new(vec![0u8; 3 * BLOCK as usize]);
        let e = write(&mut disk, 0, 100, BLOCK, &[0; 32], &[0; 16]).unwrap_err();
        assert!(e.to_string().contains("not whole"), "{e}");
    }
}

//! The process's memory: glibc malloc's tuning (a leaf helper). Takes the
//! build's thread count; produces nothing but a smaller, steadier peak RSS
//! for fleets, whose thousands of short threads and layer writes would
//! otherwise leave freed memory spread over many arenas and holes.

/// Where glibc's malloc starts serving a request with its own mapping:
/// above the 1 MiB buffers of big reads and writes
/// ([`crate::fsutil::BLOCK`], made and dropped per file, reused from the
/// heap), below [`crate::pgzip`]'s piece buffers (kept in its pool, each
/// its own mapping: freed back to the system whole, never a hole in the
/// heap).
pub(crate) const MMAP_THRESHOLD: usize = crate::fsutil::BLOCK + 4096;

// the order above, checked when the crate is built
const _: () = assert!(crate::fsutil::BLOCK < MMAP_THRESHOLD && MMAP_THRESHOLD < crate::pgzip::BUF);

/// Tunes glibc's malloc for a build of `jobs` threads:
///
/// - its arenas capped at `jobs` (2 at least). A build starts short threads
///   for every layer (its compressors, its record); by default glibc gives
///   them up to eight arenas per CPU, and memory freed in each stays there:
///   a fleet's peak RSS then grew with its node count (5,000 nodes: 94 MiB,
///   against 56 MiB capped) though the live heap did not.
/// - a fixed [`MMAP_THRESHOLD`]. By default the threshold rises to the size
///   of the largest mapped block freed, so after the first large layer the
///   piece buffers came from the heap, and a fleet's PKI and small layers
///   left them no hole to reuse: its peak RSS went from 43-48 MiB at 1,000
///   nodes to 44-62 MiB at 10,000. Fixed, 34 and 39 MiB, as fast.
pub(crate) fn tune_malloc(jobs: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(jobs.max(2)).unwrap_or(i32::MAX);
        let mmap = i32::try_from(MMAP_THRESHOLD).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes plain integers and only tunes the allocator
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = jobs;
}

/// Gives the memory freed so far back to the system (glibc's malloc_trim):
/// a fleet's PKI (every node's leaves, issued before the first node is
/// built) left its high-water mark under the build's own peak, and a large
/// layer's piece buffers ([`crate::pgzip`]) under the next small ones'.
pub(crate) fn trim_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only releases free memory
    unsafe {
        libc::malloc_trim(0);
    }
}

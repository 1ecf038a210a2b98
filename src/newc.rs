//! Writing SVR4 "newc" cpio headers, the initramfs format the Linux kernel
//! unpacks: a header and name per entry, the content after it, each padded
//! to 4 bytes. Headers are written apart from contents so that a layer's
//! tar and cpio can share their contents' compressed bytes (see `pgzip`).
//! (The `cpio` crate writes a header only together with its content.)

pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFLNK: u32 = 0o120000;

/// One entry's metadata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header<'a> {
    pub(crate) name: &'a str,
    pub(crate) ino: u32,
    /// file type and permission bits
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u32,
    pub(crate) mtime: u32,
    pub(crate) size: u32,
}

impl Header<'_> {
    /// The header and the name, padded to 4 bytes: what precedes the content.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let namesize = self.name.len() + 1;
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.size,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        let mut b = Vec::with_capacity(110 + namesize + 3);
        b.extend_from_slice(b"070701");
        for f in fields {
            b.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        b.extend_from_slice(self.name.as_bytes());
        b.push(0);
        b.resize(b.len() + padding(b.len() as u64), 0);
        b
    }
}

/// Zero bytes that pad `len` to a multiple of 4.
pub(crate) fn padding(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

/// The entry that ends an archive.
pub(crate) fn trailer() -> Vec<u8> {
    Header {
        name: "TRAILER!!!",
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_cpio_crate_reads_what_we_write() {
        let mut archive = Header {
            name: "etc/hosts",
            ino: 7,
            mode: S_IFREG | 0o640,
            uid: 0,
            gid: 998,
            nlink: 1,
            mtime: 1_700_000_000,
            size: 5,
        }
        .to_bytes();
        archive.extend_from_slice(b"hello");
        archive.resize(archive.len() + padding(5), 0);
        archive.extend_from_slice(&trailer());
        let mut r = cpio::NewcReader::new(archive.as_slice()).expect("entry");
        let e = r.entry();
        assert_eq!(
            (
                e.name(),
                e.ino(),
                e.mode(),
                e.gid(),
                e.mtime(),
                e.file_size()
            ),
            ("etc/hosts", 7, S_IFREG | 0o640, 998, 1_700_000_000, 5)
        );
        let mut body = String::new();
        r.read_to_string(&mut body).expect("content");
        assert_eq!(body, "hello");
        let rest = r.finish().expect("finish");
        let t = cpio::NewcReader::new(rest).expect("trailer");
        assert!(t.entry().is_trailer());
    }
}

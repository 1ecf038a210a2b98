//! The `/init` segment of a whole node's initramfs: takes the build's one
//! timestamp and produces a gzip'd newc cpio (no trailer, like a layer's
//! segment) of `/init` ([`SCRIPT`], 0755) and the directories it needs:
//! `/dev` and `/proc` to mount on, the empty `/newroot` where it mounts
//! the tmpfs it copies the node into before it switch_roots to systemd,
//! and the repart.d(5) definition of a disk's state partition.
//! Owners are root, every mtime is SOURCE_DATE_EPOCH and the compression is
//! the layers' (gzip level 6, header mtime 0, no name; or one zstd frame),
//! so the bytes are reproducible.

use std::io;

use crate::newc;
use crate::pgzip::Compression;

/// The `/init` script (a POSIX shell script for the node's own `/bin/sh`).
pub(crate) const SCRIPT: &str = include_str!("init.sh");

/// Where `/init` keeps the state partition's repart.d(5) definition, in
/// the initial root only (not copied into the node's).
pub(crate) const REPART_DIR: &str = "imgbuild.repart.d";
pub(crate) const REPART_STATE: &str = "imgbuild.repart.d/50-imgbuild-state.conf";
/// The state partition of a disk (`--format disk`): made by systemd-repart
/// on the first boot from the disk in the space after the ESP, grown into
/// what is free on later boots, ext4.
pub(crate) const REPART: &str = "# imgbuild: the state partition of a node booted from its disk (docs/build.md)\n\
[Partition]\n\
Type=linux-generic\n\
Label=imgbuild-state\n\
Format=ext4\n\
SizeMinBytes=256M\n";

/// `data` as one gzip member, as the layers compress.
pub(crate) fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    Compression::Gzip.whole(data)
}

/// The newc segment of `/init`, compressed as `how` says, with `mtime` on
/// every entry.
pub(crate) fn segment(mtime: i64, how: Compression) -> io::Result<Vec<u8>> {
    let mtime = u32::try_from(mtime).unwrap_or(0);
    let script = SCRIPT.as_bytes();
    let entries: [(&str, u32, &[u8]); 6] = [
        ("dev", newc::S_IFDIR | 0o755, b""),
        (REPART_DIR, newc::S_IFDIR | 0o755, b""),
        (REPART_STATE, newc::S_IFREG | 0o644, REPART.as_bytes()),
        ("init", newc::S_IFREG | 0o755, script),
        ("newroot", newc::S_IFDIR | 0o755, b""),
        ("proc", newc::S_IFDIR | 0o555, b""),
    ];
    let mut cpio = Vec::new();
    for (ino, (name, mode, body)) in (1..).zip(entries) {
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let dir = mode & newc::S_IFDIR != 0;
        let header = newc::Header {
            name,
            ino,
            mode,
            uid: 0,
            gid: 0,
            nlink: if dir { 2 } else { 1 },
            mtime,
            size,
        };
        cpio.extend_from_slice(&header.to_bytes());
        cpio.extend_from_slice(body);
        cpio.resize(cpio.len() + newc::padding(body.len() as u64), 0);
    }
    how.whole(&cpio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (name, mode, mtime, content) of every entry of a newc archive.
    fn entries(mut archive: &[u8]) -> Vec<(String, u32, u32, String)> {
        let mut out = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(archive).expect("an entry");
            if r.entry().is_trailer() {
                return out;
            }
            let e = r.entry();
            let (name, mode, mtime) = (e.name().to_string(), e.mode(), e.mtime());
            assert_eq!((e.uid(), e.gid()), (0, 0), "{name}");
            let mut body = String::new();
            r.read_to_string(&mut body).expect("content");
            out.push((name, mode, mtime, body));
            archive = r.finish().expect("next");
        }
    }

    #[test]
    fn the_segment_holds_init_and_its_mount_points() {
        let seg = segment(1_700_000_000, Compression::Gzip).unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(seg.as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        cpio.extend_from_slice(&newc::trailer());
        let got = entries(&cpio);
        let names: Vec<(&str, u32)> = got.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("dev", 0o040755),
                ("imgbuild.repart.d", 0o040755),
                ("imgbuild.repart.d/50-imgbuild-state.conf", 0o100644),
                ("init", 0o100755),
                ("newroot", 0o040755),
                ("proc", 0o040555)
            ]
        );
        assert!(got.iter().all(|e| e.2 == 1_700_000_000));
        assert_eq!(got[3].3, SCRIPT);
        assert!(got[2].3.contains("Label=imgbuild-state\nFormat=ext4\n"));
        // the layers' gzip: header mtime 0, no name, OS unknown
        assert_eq!(&seg[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(seg, segment(1_700_000_000, Compression::Gzip).unwrap());
        assert_ne!(seg, segment(1_700_000_001, Compression::Gzip).unwrap());
    }

    #[test]
    fn the_script_reads_its_settings_from_the_kernel_command_line() {
        assert!(SCRIPT.starts_with("#!/bin/sh\n"));
        for needle in [
            "imgbuild.rootsize=*",
            "imgbuild.init=*",
            "size=75% init=/sbin/init hostname='' ip='' esp=''",
            "exec switch_root $R \"$init\"",
            "imgbuild.root=*) R='' ;;",
            "echo \"imgbuild-init: $*\" >/dev/kmsg",
            "exec /bin/sh",
        ] {
            assert!(SCRIPT.contains(needle), "{needle}");
        }
    }
}

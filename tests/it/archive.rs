//! Reading archive members: hostile tarballs are refused whole, with the
//! archive and member named; a missing member names both.

use std::collections::BTreeSet;

use flate2::Compression;
use flate2::write::GzEncoder;
use imgbuild::fetch::archive::{ArchiveError, read_members};

enum E<'a> {
    File(&'a str, &'a [u8]),
    /// A name written raw into the header, bypassing the tar crate's checks.
    RawFile(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    CharDevice(&'a str),
}

fn tarball(entries: &[E]) -> tempfile::NamedTempFile {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_mtime(0);
        match e {
            E::File(p, d) => {
                h.set_size(d.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::RawFile(p, d) => {
                h.set_size(d.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                let name = &mut h.as_gnu_mut().unwrap().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, *d).unwrap();
            }
            E::Symlink(p, t) => {
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::CharDevice(p) => {
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Char);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
        }
    }
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

fn read(
    f: &tempfile::NamedTempFile,
    wanted: &[&str],
) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let wanted: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    let mut got = Vec::new();
    read_members(
        f.path(),
        "etcd v3.6.14",
        &wanted,
        |name, _mode, _size, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            got.push((name.to_string(), v));
            Ok(())
        },
    )?;
    Ok(got)
}

#[test]
fn wanted_members_stream_out_of_the_archive() {
    let f = tarball(&[
        E::File("etcd-v3.6.14-linux-amd64/etcd", b"etcd!"),
        E::File("etcd-v3.6.14-linux-amd64/README.md", b"docs"),
        E::File("./bridge", b"bridge!"),
        E::Symlink("etcd-v3.6.14-linux-amd64/current", "etcd"),
    ]);
    let got = read(&f, &["etcd-v3.6.14-linux-amd64/etcd", "bridge"]).unwrap();
    assert_eq!(
        got,
        [
            (
                "etcd-v3.6.14-linux-amd64/etcd".to_string(),
                b"etcd!".to_vec()
            ),
            ("bridge".to_string(), b"bridge!".to_vec())
        ]
    );
}

fn refused(entries: &[E], member: &str, why: &str) {
    let f = tarball(entries);
    let err = read(&f, &["ok"]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("archive etcd v3.6.14 is refused: member `{member}` {why}")
    );
}

#[test]
fn a_dotdot_member_is_refused() {
    refused(
        &[E::File("ok", b"x"), E::RawFile("../evil", b"x")],
        "../evil",
        "has a `..` component",
    );
}

#[test]
fn an_absolute_member_is_refused() {
    refused(
        &[E::RawFile("/etc/cron.d/evil", b"x"), E::File("ok", b"x")],
        "/etc/cron.d/evil",
        "has an absolute path",
    );
}

#[test]
fn an_escaping_symlink_is_refused() {
    refused(
        &[
            E::File("ok", b"x"),
            E::Symlink("bin/evil", "../../etc/shadow"),
        ],
        "bin/evil",
        "is a link that points outside the archive",
    );
    refused(
        &[E::Symlink("evil", "/etc/shadow")],
        "evil",
        "is a link that points outside the archive",
    );
}

#[test]
fn a_device_node_is_refused() {
    refused(
        &[E::CharDevice("dev/kmem")],
        "dev/kmem",
        "is a device node or fifo",
    );
}

#[test]
fn a_missing_member_names_the_archive_and_the_member() {
    let f = tarball(&[E::File("etcd-v3.6.14-linux-amd64/etcd", b"x")]);
    let err = read(
        &f,
        &[
            "etcd-v3.6.14-linux-amd64/etcd",
            "etcd-v3.6.14-linux-amd64/etcdutl",
        ],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "archive etcd v3.6.14 has no member etcd-v3.6.14-linux-amd64/etcdutl"
    );
}

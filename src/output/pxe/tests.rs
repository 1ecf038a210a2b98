//! A whole node's PXE files from hand-made layers: each a `.tar.gz` and a
//! gzip'd newc segment, as the layer stage writes them.

use super::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::fetch::Cache;
use crate::report::Reporter;

const SDE: i64 = 1_700_000_000;

/// A file of a hand-made layer: path, mode (with its type), content.
type File3 = (&'static str, u32, &'static str);

/// Writes layer `name`'s `.tar.gz` and segment into `dir`.
fn layer(dir: &Path, name: &str, kind: LayerKind, files: &[File3]) -> BuiltLayer {
    let mut tar = tar::Builder::new(Vec::new());
    let mut cpio = Vec::new();
    for (ino, (path, mode, body)) in (1..).zip(files) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode & 0o7777);
        h.set_size(body.len() as u64);
        h.set_entry_type(if mode & newc::S_IFDIR != 0 {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        tar.append_data(&mut h, path, body.as_bytes()).unwrap();
        let header = newc::Header {
            name: path,
            ino,
            mode: *mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 1,
            size: body.len() as u32,
        };
        cpio.extend_from_slice(&header.to_bytes());
        cpio.extend_from_slice(body.as_bytes());
        cpio.resize(cpio.len() + newc::padding(body.len() as u64), 0);
    }
    let file = dir.join(format!("{name}.tar.gz"));
    let gz = init::gzip(&tar.into_inner().unwrap()).unwrap();
    fs::write(&file, &gz).unwrap();
    let seg = init::gzip(&cpio).unwrap();
    // the secrets layer's segment is held in memory, as the layer stage
    // holds it; the others are files
    let (segment, segment_bytes) = if kind == LayerKind::Secrets {
        (None, Some(std::sync::Arc::from(seg.as_slice())))
    } else {
        let segment = dir.join(format!("{name}.cpio.gz"));
        fs::write(&segment, &seg).unwrap();
        (Some(segment), None)
    };
    BuiltLayer {
        name: name.to_string(),
        kind,
        key: sha256(name.as_bytes()),
        compression: Compression::Gzip,
        digest: sha256(&gz),
        size: gz.len() as u64,
        diff_id: String::new(),
        file,
        segment,
        segment_bytes,
        segment_digest: Some(sha256(&seg)),
        segment_size: Some(seg.len() as u64),
        files_digest: None,
        files: None,
    }
}

const F: u32 = newc::S_IFREG | 0o644;
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n";

/// A whole worker: os, os-packages, base, a role, node and secrets layers.
fn node(dir: &Path) -> Vec<BuiltLayer> {
    vec![
        layer(
            dir,
            "00-os",
            LayerKind::Os,
            &[
                ("boot", newc::S_IFDIR | 0o755, ""),
                ("boot/vmlinuz-6.1.0-test", F, "KERNEL"),
                ("etc/os-release", F, "ID=debian\n"),
            ],
        ),
        layer(
            dir,
            "01-os-packages",
            LayerKind::OsPackages,
            &[("usr/sbin/haproxy", newc::S_IFREG | 0o755, "ELF")],
        ),
        layer(dir, "02-base", LayerKind::Base, &[("etc/hosts", F, "h")]),
        layer(dir, "03-worker", LayerKind::Role, &[("etc/worker", F, "w")]),
        layer(dir, "04-node", LayerKind::Node, &[("etc/hostname", F, "n")]),
        layer(
            dir,
            "05-secrets",
            LayerKind::Secrets,
            &[("etc/kubernetes/pki/apiserver.key", 0o100600, KEY)],
        ),
    ]
}

fn store(dir: &Path) -> Store {
    let cache = Cache::open(&dir.join("cache")).unwrap();
    Store::open(&cache, Reporter::new(true, 0)).unwrap()
}

/// The names and modes in a file of gzip'd newc segments, in order (to
/// its trailer, or its end).
fn listing(path: &Path) -> Vec<(String, u32)> {
    let mut bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    loop {
        if rest.is_empty() {
            // a layer's segment: no trailer of its own
            return out;
        }
        let mut r = cpio::NewcReader::new(rest).unwrap();
        if r.entry().is_trailer() {
            assert!(r.finish().unwrap().iter().all(|&b| b == 0));
            return out;
        }
        out.push((r.entry().name().to_string(), r.entry().mode()));
        io::copy(&mut r, &mut io::sink()).unwrap();
        rest = r.finish().unwrap();
    }
}

fn names(list: &[(String, u32)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// What the `/init` segment holds, in order.
const INIT_SEGMENT: [&str; 6] = [
    "dev",
    "imgbuild.repart.d",
    "imgbuild.repart.d/50-imgbuild-state.conf",
    "init",
    "newroot",
    "proc",
];

/// `out/pxe/<file>`.
fn pxe(out: &Path, file: &str) -> PathBuf {
    out.join("pxe").join(file)
}

/// The node's own layers (node, secrets) of [`node`].
fn own(layers: &[BuiltLayer]) -> &[BuiltLayer] {
    &layers[4..]
}

#[test]
fn the_initrd_is_init_and_the_node_layer_and_the_secrets_are_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, out) = (node(dir.path()), dir.path().join("out"));
    let written = initrds(own(&layers), SDE, &out).unwrap();
    let initrd = listing(&pxe(&out, INITRD));
    let mut want = INIT_SEGMENT.to_vec();
    want.push("etc/hostname");
    assert_eq!(names(&initrd), want);
    assert!(initrd.contains(&("init".to_string(), 0o100755)));
    assert_eq!(
        listing(&pxe(&out, SECRETS)),
        [("etc/kubernetes/pki/apiserver.key".to_string(), 0o100600)]
    );
    assert_eq!(names(&listing(&pxe(&out, INIT))), INIT_SEGMENT);
    let text = fs::read(pxe(&out, INITRD)).unwrap();
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(text.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    assert!(memchr::memmem::find(&plain, b"PRIVATE KEY").is_none());
    assert_eq!(
        (mode(&pxe(&out, INIT)), mode(&pxe(&out, INITRD))),
        (0o644, 0o644)
    );
    assert_eq!(mode(&pxe(&out, SECRETS)), 0o600);
    for (file, digest) in &written {
        assert_eq!(
            &fsutil::sha256_file(&out.join(file)).unwrap(),
            digest,
            "{file}"
        );
    }
    let files: Vec<&str> = written.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        [
            "pxe/init.cpio.gz",
            "pxe/initrd.cpio.gz",
            "pxe/secrets.cpio.gz"
        ]
    );
}

#[test]
fn the_shared_segments_are_linked_not_copied_and_init_comes_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, store, out) = (node(dir.path()), store(dir.path()), dir.path().join("out"));
    let shared: Vec<&BuiltLayer> = layers[..4].iter().collect();
    let segs = segments(&shared, &store, &out).unwrap();
    initrds(own(&layers), SDE, &out).unwrap();
    let files: Vec<&str> = segs.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "00-os.cpio.gz",
            "01-os-packages.cpio.gz",
            "02-base.cpio.gz",
            "03-worker.cpio.gz"
        ]
    );
    use std::os::unix::fs::MetadataExt;
    for (s, l) in segs.iter().zip(&layers) {
        let linked = fs::metadata(out.join("pxe/segments").join(&s.file)).unwrap();
        assert_eq!(
            linked.ino(),
            fs::metadata(l.segment().unwrap()).unwrap().ino()
        );
        assert_eq!(s.digest, fsutil::sha256_file(l.segment().unwrap()).unwrap());
    }
    // what the kernel unpacks, in boot.ipxe's order: the whole node, /init
    // after the shared layers (a base's own /init is overridden)
    let mut order: Vec<String> = Vec::new();
    let script = whole_script("n", Arch::Amd64, &segs, None, (true, Compression::Gzip));
    for line in script.lines().filter(|l| l.starts_with("initrd ")) {
        let rel = line.split(' ').nth(1).unwrap().replace("${base-url}/", "");
        order.extend(listing(&out.join(rel)).into_iter().map(|(n, _)| n));
    }
    let init = order.iter().position(|n| n == "init").unwrap();
    let worker = order.iter().position(|n| n == "etc/worker").unwrap();
    assert!(worker < init, "{order:?}");
    for path in [
        "boot/vmlinuz-6.1.0-test",
        "usr/sbin/haproxy",
        "etc/hostname",
    ] {
        assert!(order.iter().any(|n| n == path), "{path}: {order:?}");
    }
    assert!(
        order
            .iter()
            .any(|n| n == "etc/kubernetes/pki/apiserver.key")
    );
}

#[test]
fn a_second_build_writes_the_same_bytes_and_init_takes_the_builds_time() {
    let dir = tempfile::tempdir().unwrap();
    let layers = node(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let first = initrds(own(&layers), SDE, &a).unwrap();
    let second = initrds(own(&layers), SDE, &b).unwrap();
    assert_eq!(first, second);
    for f in [INIT, INITRD, SECRETS] {
        assert_eq!(
            fs::read(pxe(&a, f)).unwrap(),
            fs::read(pxe(&b, f)).unwrap(),
            "{f}"
        );
    }
    let later = initrds(own(&layers), SDE + 1, &dir.path().join("c")).unwrap();
    assert_ne!(first[1], later[1], "/init's mtime is the build's");
}

#[test]
fn a_node_without_secrets_has_no_secrets_file() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, out) = (node(dir.path()), dir.path().join("out"));
    let written = initrds(&layers[4..5], SDE, &out).unwrap();
    assert_eq!(written.len(), 2);
    assert!(!pxe(&out, SECRETS).exists());
}

#[test]
fn the_kernel_is_taken_from_the_os_layer_once_then_linked_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, store, out) = (node(dir.path()), store(dir.path()), dir.path().join("out"));
    let digest = kernel(&layers, &store, &out).unwrap().unwrap();
    assert_eq!(fs::read(pxe(&out, KERNEL)).unwrap(), b"KERNEL");
    assert_eq!(mode(&pxe(&out, KERNEL)), 0o444);
    assert_eq!(digest, sha256(b"KERNEL"));
    // the next node's is the store's copy, linked: the os layer is not read
    fs::write(&layers[0].file, b"not a layer any more").unwrap();
    let again = dir.path().join("again");
    assert_eq!(kernel(&layers, &store, &again).unwrap(), Some(digest));
    assert_eq!(fs::read(pxe(&again, KERNEL)).unwrap(), b"KERNEL");
    assert_eq!(mode(&pxe(&again, KERNEL)), 0o444);
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&pxe(&again, KERNEL)), ino(&pxe(&out, KERNEL)));
    // a store copy that no longer matches its record is not used
    let kept = fs::read_dir(store.dir.join("kernel"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "vmlinuz"))
        .unwrap();
    fs::set_permissions(&kept, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&kept, b"TAMPERED").unwrap();
    let err = kernel(&layers, &store, &dir.path().join("third")).unwrap_err();
    assert!(matches!(err, KernelError::Read { .. }), "{err}");
    // a node without a base OS has no kernel of its own
    assert_eq!(
        kernel(&layers[2..], &store, &dir.path().join("none")).unwrap(),
        None
    );
    assert!(is_whole(&layers) && !is_whole(&layers[2..]));
}

#[test]
fn boot_ipxe_loads_the_kernel_the_initrd_and_the_secrets_only_when_asked() {
    let s = whole_script("node01", Arch::Amd64, &[], None, (false, Compression::Gzip));
    let args = "console=tty0 console=ttyS0,115200 imgbuild.rootsize=75%";
    assert!(
        s.contains(&format!(
            "\nkernel ${{base-url}}/pxe/vmlinuz initrd=initrd.cpio.gz {args}\n\
initrd ${{base-url}}/pxe/initrd.cpio.gz initrd.cpio.gz\nboot\n"
        )),
        "{s}"
    );
    assert!(s.starts_with("#!ipxe\n# imgbuild: node01 (amd64). "), "{s}");
    assert!(!s.contains("initrd ${base-url}/pxe/secrets.cpio.gz"), "{s}");
    let with = whole_script("node01", Arch::Amd64, &[], None, (true, Compression::Gzip));
    assert!(
        with.contains(&format!(
            "kernel ${{base-url}}/pxe/vmlinuz initrd=initrd.cpio.gz initrd=secrets.cpio.gz {args}\n\
initrd ${{base-url}}/pxe/initrd.cpio.gz initrd.cpio.gz\n\
initrd ${{base-url}}/pxe/secrets.cpio.gz secrets.cpio.gz\nboot\n"
        )),
        "{with}"
    );
    assert!(with.contains("owns the cluster"), "{with}");
    assert!(cmdline(Arch::Arm64).contains("console=ttyAMA0,115200"));
}

#[test]
fn boot_ipxe_loads_the_shared_segments_first_from_the_node_or_by_digest_from_base() {
    let remote = [
        Segment {
            file: "00-os.cpio.gz".into(),
            digest: "aa".into(),
        },
        Segment {
            file: "01-base.cpio.gz".into(),
            digest: "bb".into(),
        },
    ];
    let s = whole_script(
        "w",
        Arch::Amd64,
        &remote,
        Some("http://10.0.0.5/l"),
        (false, Compression::Gzip),
    );
    assert!(
        s.contains("isset ${layers-url} || set layers-url http://10.0.0.5/l\n"),
        "{s}"
    );
    let loads: Vec<&str> = s.lines().filter(|l| l.starts_with("initrd ")).collect();
    assert_eq!(
        loads,
        [
            "initrd ${layers-url}/sha256/aa.cpio.gz 00-os.cpio.gz",
            "initrd ${layers-url}/sha256/bb.cpio.gz 01-base.cpio.gz",
            "initrd ${base-url}/pxe/initrd.cpio.gz initrd.cpio.gz"
        ]
    );
    assert!(
        s.contains("vmlinuz initrd=00-os.cpio.gz initrd=01-base.cpio.gz initrd=initrd.cpio.gz "),
        "{s}"
    );
    let embedded = whole_script("w", Arch::Amd64, &remote, None, (false, Compression::Gzip));
    assert!(!embedded.contains("layers-url"), "{embedded}");
    let loads: Vec<&str> = embedded
        .lines()
        .filter(|l| l.starts_with("initrd "))
        .collect();
    assert_eq!(
        loads,
        [
            "initrd ${base-url}/pxe/segments/00-os.cpio.gz 00-os.cpio.gz",
            "initrd ${base-url}/pxe/segments/01-base.cpio.gz 01-base.cpio.gz",
            "initrd ${base-url}/pxe/initrd.cpio.gz initrd.cpio.gz"
        ]
    );
}

#[test]
fn verify_reads_the_secrets_choice_back_from_boot_ipxe() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("pxe")).unwrap();
    for secrets in [false, true] {
        let s = whole_script("n", Arch::Amd64, &[], None, (secrets, Compression::Gzip));
        fs::write(dir.path().join("pxe/boot.ipxe"), s).unwrap();
        assert_eq!(loads_secrets(dir.path()), secrets);
    }
}

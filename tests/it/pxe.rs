//! A whole node's PXE files (issue 15): the `/init` script judged by dash
//! (its syntax, and a run in a chroot with `mount` and `switch_root`
//! stubbed), and, with a base OS pinned in `[os]`, the kernel, the initrd
//! without secrets, the secrets apart, boot.ipxe, verify and two builds of
//! the same bytes.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::build::{build, synthetic};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::{Lab, repo};

/// The script `imgbuild` writes as `/init` (`include_str!`'d verbatim).
fn init_script() -> PathBuf {
    repo().join("src/output/pxe/init.sh")
}

#[test]
fn the_init_script_passes_dash_syntax_check() {
    judge("dash").arg("-n").arg(init_script()).ok();
}

/// Copies `/usr/bin/dash` and the libraries it loads into `root`, at their
/// paths, as `/bin/sh`.
fn install_dash(root: &Path) {
    let ldd = judge("ldd").arg("/usr/bin/dash").ok();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(lib).unwrap(), &dest).unwrap();
    }
    std::fs::copy("/usr/bin/dash", root.join("bin/sh")).unwrap();
}

/// Writes an executable `path` below `root`.
fn script(root: &Path, path: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A root as the kernel unpacks a whole node: dash as `/bin/sh`, busybox's
/// cp, mkdir and cat, stubs of `mount` and `switch_root` that log to
/// `/run/log` (switch_root also lists the new root), `/init`, a command
/// line, and a few files of the node.
fn initramfs_root(dir: &Path, cmdline: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "dev", "newroot", "proc", "run", "sys", "etc", "sbin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    install_dash(&root);
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "cp", "mkdir", "cat", "find", "sort", "cut", "tr", "grep", "mv", "ln", "uname",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    script(
        &root,
        "usr/sbin/mount",
        "#!/bin/sh\necho \"mount $*\" >>/run/log\n\
         case \"$*\" in *tmpfs*) [ -e /fail-tmpfs ] && exit 32 ;; esac\nexit 0\n",
    );
    script(
        &root,
        "usr/sbin/switch_root",
        "#!/bin/sh\necho \"switch_root $*\" >>/run/log\n\
         cd \"$1\" && find . | sort >>/run/log\n",
    );
    script(&root, "sbin/myinit", "#!/bin/sh\n");
    std::fs::write(root.join("proc/cmdline"), format!("{cmdline}\n")).unwrap();
    std::fs::write(root.join("etc/hostname"), "node01\n").unwrap();
    std::fs::write(root.join(".hidden"), "x").unwrap();
    std::fs::copy(init_script(), root.join("init")).unwrap();
    root
}

/// Runs `/init` in `root` (a user namespace gives chroot to a non-root
/// user); its output and the stubs' log.
fn run_init(root: &Path) -> Option<(String, String)> {
    let out = judge("unshare")
        .args(["--map-root-user", "chroot"])
        .arg(root)
        .args(["/bin/sh", "/init"])
        .output();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let log = std::fs::read_to_string(root.join("run/log")).unwrap();
    Some((text, log))
}

#[test]
fn the_init_script_copies_the_root_into_a_tmpfs_and_switch_roots() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = "BOOT_IMAGE=x console=ttyS0 imgbuild.rootsize=512M imgbuild.init=/sbin/myinit";
    let root = initramfs_root(dir.path(), cmdline);
    let Some((out, log)) = run_init(&root) else {
        return;
    };
    assert!(
        out.contains("imgbuild-init: copying the root into a tmpfs (size=512M)")
            && out.contains("imgbuild-init: switch_root to /sbin/myinit"),
        "{out}"
    );
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "mount -t proc proc /proc",
            "mount -t devtmpfs devtmpfs /dev",
            "mount -t sysfs sysfs /sys",
            "mount -t tmpfs -o size=512M,mode=0755 root /newroot",
            "switch_root /newroot /sbin/myinit"
        ],
        "{log}"
    );
    // the node is in the new root; /init, the command line, the mount
    // points' contents and the new root itself are not
    for f in ["./etc/hostname", "./.hidden", "./sbin/myinit", "./bin/sh"] {
        assert!(lines.contains(&f), "{f} was not copied:\n{log}");
    }
    for d in ["./proc", "./dev", "./sys", "./run"] {
        assert!(lines.contains(&d), "no mount point {d}:\n{log}");
    }
    for f in ["./init", "./newroot", "./proc/cmdline", "./run/log"] {
        assert!(!lines.contains(&f), "{f} was copied:\n{log}");
    }
}

#[test]
fn the_init_script_defaults_to_75_percent_and_sbin_init() {
    let dir = tempfile::tempdir().unwrap();
    let root = initramfs_root(dir.path(), "console=ttyS0");
    script(&root, "sbin/init", "#!/bin/sh\n");
    let Some((_, log)) = run_init(&root) else {
        return;
    };
    assert!(
        log.contains("mount -t tmpfs -o size=75%,mode=0755 root /newroot\n")
            && log.contains("switch_root /newroot /sbin/init\n"),
        "{log}"
    );
}

#[test]
fn the_init_script_drops_to_a_shell_when_the_tmpfs_cannot_be_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let root = initramfs_root(dir.path(), "imgbuild.rootsize=512M");
    std::fs::write(root.join("fail-tmpfs"), "").unwrap();
    let Some((out, log)) = run_init(&root) else {
        return;
    };
    assert!(
        out.contains(
            "imgbuild-init: FAILED: cannot mount a tmpfs of size=512M on /newroot; starting a shell"
        ),
        "{out}"
    );
    assert!(!log.contains("switch_root"), "{log}");
}

#[test]
fn the_init_script_refuses_an_init_the_root_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let root = initramfs_root(dir.path(), "imgbuild.init=/sbin/nothere");
    let Some((out, log)) = run_init(&root) else {
        return;
    };
    assert!(
        out.contains("imgbuild-init: FAILED: no /sbin/nothere in the root"),
        "{out}"
    );
    assert!(!log.contains("switch_root"), "{log}");
}

#[test]
fn the_init_script_gives_a_generic_image_the_name_and_address_of_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = "console=ttyS0 imgbuild.hostname=worker-7 \
imgbuild.ip=10.88.0.31::10.88.0.1:255.255.255.0:ignored::none:10.88.0.2";
    let root = initramfs_root(dir.path(), cmdline);
    script(&root, "sbin/init", "#!/bin/sh\n");
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 old\n",
    )
    .unwrap();
    let unit = root.join("lib/systemd/system/systemd-networkd.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "[Unit]\n").unwrap();
    let (out, _) = run_init(&root).unwrap();
    assert!(out.contains("imgbuild-init: host name worker-7"), "{out}");
    let new = root.join("newroot");
    let read = |f: &str| std::fs::read_to_string(new.join(f)).unwrap();
    assert_eq!(read("etc/hostname"), "worker-7\n");
    assert_eq!(
        read("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 worker-7\n"
    );
    let network = read("etc/systemd/network/10-imgbuild-cmdline.network");
    assert!(
        network.contains("[Match]\nName=en* eth*\n")
            && network.contains("Address=10.88.0.31/24\nGateway=10.88.0.1\nDNS=10.88.0.2\n"),
        "{network}"
    );
    let wants = new.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        Path::new("/lib/systemd/system/systemd-networkd.service")
    );
}

#[test]
fn the_init_script_refuses_a_bad_host_name_and_dhcp_needs_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let root = initramfs_root(dir.path(), "imgbuild.hostname=-x;rm");
    script(&root, "sbin/init", "#!/bin/sh\n");
    let (out, log) = run_init(&root).unwrap();
    assert!(
        out.contains("FAILED: imgbuild.hostname=-x;rm is not a host name"),
        "{out}"
    );
    assert!(!log.contains("switch_root"), "{log}");
    let dir = tempfile::tempdir().unwrap();
    let root = initramfs_root(dir.path(), "imgbuild.ip=dhcp");
    script(&root, "sbin/init", "#!/bin/sh\n");
    script(&root, "usr/lib/systemd/system/systemd-networkd.service", "");
    let (_, log) = run_init(&root).unwrap();
    assert!(log.contains("switch_root /newroot /sbin/init"), "{log}");
    let network = std::fs::read_to_string(
        root.join("newroot/etc/systemd/network/10-imgbuild-cmdline.network"),
    )
    .unwrap();
    assert!(network.ends_with("[Network]\nDHCP=yes\n"), "{network}");
}

/// A root with a kernel's module directory (indexed or not) and a `depmod`
/// that logs; the kernel's release.
fn modules_root(dir: &Path, indexed: bool) -> (PathBuf, String) {
    let kver = judge("uname").arg("-r").ok().trim().to_string();
    let root = initramfs_root(dir, "console=ttyS0");
    script(&root, "sbin/init", "#!/bin/sh\n");
    let depmod = "#!/bin/sh\necho \"depmod $*\" >>/run/log\n";
    script(&root, "usr/sbin/depmod", depmod);
    let modules = root.join("lib/modules").join(&kver);
    std::fs::create_dir_all(&modules).unwrap();
    if indexed {
        std::fs::write(modules.join("modules.dep.bin"), b"").unwrap();
    }
    (root, kver)
}

#[test]
fn the_init_script_indexes_a_kernels_modules_that_no_depmod_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let (root, kver) = modules_root(dir.path(), false);
    let (out, log) = run_init(&root).unwrap();
    assert!(log.contains(&format!("depmod -a {kver}\n")), "{log}");
    let said = format!("imgbuild-init: indexed the modules of {kver} (depmod)");
    assert!(out.contains(&said), "{out}");
    // an indexed kernel is left alone
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = modules_root(dir.path(), true);
    let (_, log) = run_init(&root).unwrap();
    assert!(!log.contains("depmod -a"), "{log}");
}

/// A root whose `blkid` finds a seed volume and whose `mount -t iso9660`
/// shows `seed` (user-data naming `layers`' sha256, and the layers), with
/// `tar` done by busybox (which lacks --numeric-owner).
fn seeded_root(dir: &Path, layers: &[(&str, Vec<u8>)], named: &[(&str, Vec<u8>)]) -> PathBuf {
    let root = initramfs_root(dir, "console=ttyS0 imgbuild.seed=LABEL=cidata");
    script(&root, "sbin/init", "#!/bin/sh\n");
    for applet in ["sed", "head", "basename", "sha256sum"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    script(&root, "usr/sbin/blkid", "#!/bin/sh\necho /dev/fakeseed\n");
    script(&root, "usr/sbin/modprobe", "#!/bin/sh\n");
    script(
        &root,
        "usr/bin/umount",
        "#!/bin/sh\necho \"umount $*\" >>/run/log\n",
    );
    script(
        &root,
        "usr/bin/tar",
        "#!/bin/sh\necho \"tar $*\" >>/run/log\nexec busybox tar -xzf \"$2\" -C \"$4\"\n",
    );
    // mount: the seed's files appear where it is mounted
    script(
        &root,
        "usr/sbin/mount",
        "#!/bin/sh\necho \"mount $*\" >>/run/log\n\
         case \"$*\" in *iso9660*) eval last=\\${$#}; cp -a /seedsrc/. \"$last\" ;; esac\n",
    );
    let src = root.join("seedsrc/layers");
    std::fs::create_dir_all(&src).unwrap();
    let mut user_data = String::from("#cloud-config\n");
    for (name, bytes) in named {
        user_data.push_str(&format!(
            "      {}  {name}\n",
            hex::encode(sha2::Sha256::digest(bytes))
        ));
    }
    std::fs::write(root.join("seedsrc/user-data"), user_data).unwrap();
    for (name, bytes) in layers {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    root
}

#[test]
fn the_init_script_takes_a_generic_images_node_layers_from_its_seed_checked() {
    let node = root_targz(&[("etc/", b""), ("etc/hostname", b"node07\n")]);
    let secrets = root_targz(&[("etc/", b""), ("etc/token", b"t")]);
    let worker = root_targz(&[("etc/", b""), ("etc/worker", b"w")]);
    let layers = [
        ("03-worker.tar.gz", worker.clone()),
        ("05-node.tar.gz", node.clone()),
        ("06-secrets.tar.gz", secrets.clone()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let root = seeded_root(dir.path(), &layers, &layers);
    let (out, log) = run_init(&root).unwrap();
    assert!(
        out.contains("imgbuild-init: the node's layers from the seed /dev/fakeseed (2)"),
        "{out}"
    );
    let new = root.join("newroot");
    assert_eq!(
        std::fs::read_to_string(new.join("etc/hostname")).unwrap(),
        "node07\n"
    );
    assert!(
        new.join("etc/token").is_file() && !new.join("etc/worker").exists(),
        "{log}"
    );
    assert!(
        log.contains("mount -t iso9660 -o ro /dev/fakeseed /imgbuild.seed"),
        "{log}"
    );
    assert!(!log.contains("./imgbuild.seed"), "{log}");
    // a layer that is not what the seed's user-data names stops the boot
    let dir = tempfile::tempdir().unwrap();
    let forged = [(
        "05-node.tar.gz",
        root_targz(&[("etc/", b""), ("etc/hostname", b"evil\n")]),
    )];
    let root = seeded_root(dir.path(), &forged, &[("05-node.tar.gz", node)]);
    let (out, log) = run_init(&root).unwrap();
    assert!(
        out.contains("FAILED: the seed's 05-node.tar.gz is not what its user-data names"),
        "{out}"
    );
    assert!(!log.contains("switch_root"), "{log}");
}

// ---- a whole node: a lab with `[os] base` in pins.toml.

pub(crate) const KERNEL: &[u8] = b"imgbuild test kernel 6.1.0";
/// What Debian's libgnutls.so.30 holds among its constants: a self-test key
/// in PEM (a public test vector, not the cluster's).
const GNUTLS_SELF_TEST: &[u8] = b"\x7fELF\0\0-----BEGIN RSA PRIVATE KEY-----\n\
MIICXAIBAAKBgQC7ZkP18sXXtozMxd/1iDuxyUtqDqGtIFBACIChT1yj0Phsz+Y8\n\
-----END RSA PRIVATE KEY-----\n\0auth_pass 1111\n\0";
const BASE_URL: &str = "https://deb.example/imgbuild-test/debian-base-12-amd64.tar.gz";

/// A gzip'd tar as a root filesystem archive is: `./`-relative paths,
/// directories before their files, root owners. A path ending in `/` is a
/// directory; `PATH -> TARGET` a symbolic link.
pub(crate) fn root_targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        if let Some((path, target)) = path.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            b.append_link(&mut h, format!("./{path}"), target).unwrap();
            continue;
        }
        let dir = path.ends_with('/');
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("./{path}"), *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A root filesystem archive: a kernel below /boot (when `kernel`) and a
/// few files of a Debian root.
pub(crate) fn base_tar(kernel: bool) -> Vec<u8> {
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("boot/", b""),
        ("boot/config-6.1.0-test", b"CONFIG=y\n"),
        ("etc/", b""),
        ("etc/debian_version", b"12.0\n"),
        ("etc/os-release", b"ID=debian\n"),
        ("usr/", b""),
        ("usr/lib/", b""),
        ("usr/lib/os-release", b"ID=debian\n"),
        ("usr/lib/x86_64-linux-gnu/", b""),
        ("usr/lib/x86_64-linux-gnu/libgnutls.so.30", GNUTLS_SELF_TEST),
        ("var/", b""),
        ("var/lib/", b""),
        ("var/lib/dpkg/", b""),
        ("var/lib/dpkg/status", b""),
    ];
    if kernel {
        entries.insert(2, ("boot/vmlinuz-6.1.0-test", KERNEL));
    }
    root_targz(&entries)
}

/// An ar member: its header, its bytes, padded to an even length.
fn ar_member(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        1_700_000_000,
        0,
        0,
        "100644",
        bytes.len()
    )
    .into_bytes();
    m.extend_from_slice(bytes);
    if bytes.len() % 2 == 1 {
        m.push(b'\n');
    }
    m
}

/// A `.deb` of `package` as dpkg-deb lays it out: debian-binary, then a
/// control archive, then a data archive holding its copyright file.
fn deb(package: &str, version: &str) -> Vec<u8> {
    deb_with(package, version, &[])
}

/// [`deb`] whose data archive also holds `files` (directories end in `/`).
pub(crate) fn deb_with(package: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    deb_control(package, version, "", files)
}

/// [`deb_with`] with more control fields (`Depends: x\n`).
pub(crate) fn deb_control(
    package: &str,
    version: &str,
    fields: &str,
    files: &[(&str, &[u8])],
) -> Vec<u8> {
    let control = format!(
        "Package: {package}\nVersion: {version}\nArchitecture: amd64\n{fields}\
         Maintainer: imgbuild tests <tests@example.invalid>\n\
         Description: a stand-in for {package}\n"
    );
    let control = root_targz(&[("control", control.as_bytes())]);
    let doc = format!("usr/share/doc/{package}/");
    let copyright = format!("{doc}copyright");
    let mut entries: Vec<(&str, &[u8])> = files.to_vec();
    entries.extend_from_slice(&[
        ("usr/", b""),
        ("usr/share/", b""),
        ("usr/share/doc/", b""),
        (&doc, b""),
        (&copyright, b"test\n"),
    ]);
    let data = root_targz(&entries);
    let mut ar = b"!<arch>\n".to_vec();
    ar.extend(ar_member("debian-binary", b"2.0\n"));
    ar.extend(ar_member("control.tar.gz", &control));
    ar.extend(ar_member("data.tar.gz", &data));
    ar
}

/// Every package a role of the lab lists in `os_packages: [...]`.
fn os_packages(lab: &Lab) -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(lab.path("manifests/roles")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines() {
            if let Some(list) = l.strip_prefix("os_packages:") {
                let list = list.trim().trim_start_matches('[').trim_end_matches(']');
                all.extend(list.split(',').map(|p| p.trim().to_string()));
            }
        }
    }
    all.retain(|p| !p.is_empty());
    all
}

/// A pin of `pins.toml` served behind the mirror: name, version, url and
/// the file's sha256.
pub(crate) fn pin(
    server: &Server,
    source: &toml::Value,
    fields: &[(&str, &str)],
    bytes: &[u8],
) -> toml::Value {
    let mut t = toml::Table::new();
    for (k, v) in fields {
        t.insert((*k).into(), (*v).into());
    }
    t.insert(
        "sha256".into(),
        hex::encode(sha2::Sha256::digest(bytes)).into(),
    );
    t.insert("source".into(), source.clone());
    let url = t["url"].as_str().unwrap().to_string();
    server.put(
        &format!("mirror/{}", url.split_once("://").unwrap().1),
        bytes.to_vec(),
    );
    toml::Value::Table(t)
}

/// The lab with `base` pinned as its `[os] base` and a stand-in `.deb`
/// pinned for every OS package its roles list, all behind the mirror.
pub(crate) fn whole(lab: Lab, server: &Server, base: &[u8]) -> Lab {
    let pins = lab.path("manifests/pins.toml");
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&pins).unwrap()).unwrap();
    let source = doc["artifact"][0]["source"].clone();
    let base_pin = [
        ("name", "debian-base"),
        ("version", "12-test"),
        ("arch", "amd64"),
        ("url", BASE_URL),
    ];
    let base_pin = pin(server, &source, &base_pin, base);
    doc.get_mut("artifact")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(base_pin);
    let mut debs = Vec::new();
    for p in os_packages(&lab) {
        let url = format!("https://deb.example/imgbuild-test/pool/{p}_1.0-test_amd64.deb");
        let fields = [
            ("name", p.as_str()),
            ("version", "1.0-test"),
            ("arch", "amd64"),
            ("url", url.as_str()),
        ];
        debs.push(pin(server, &source, &fields, &deb(&p, "1.0-test")));
    }
    doc.insert("deb".into(), toml::Value::Array(debs));
    let mut os = toml::Table::new();
    os.insert("base".into(), "debian-base".into());
    doc.insert("os".into(), toml::Value::Table(os));
    std::fs::write(&pins, toml::to_string(&doc).unwrap()).unwrap();
    lab
}

/// `zcat FILES... | cpio -it`: the names the kernel would unpack, in order.
fn cpio_names(files: &[PathBuf]) -> Vec<String> {
    let files: Vec<String> = files.iter().map(|p| format!("'{}'", p.display())).collect();
    judge_sh(&format!(
        "cat {} | zcat | cpio -it --quiet",
        files.join(" ")
    ))
    .ok()
    .lines()
    .map(str::to_string)
    .collect()
}

/// The files of the node directory `dir` that its `pxe/boot.ipxe` loads as
/// initrds, in its order (`${base-url}/X` is `dir/X`, a segment loaded by
/// digest from layers-url is its link in `pxe/segments/`), but a
/// distribution's `initrd.img`: the initramfs the kernel unpacks.
pub(crate) fn loaded(dir: &Path) -> Vec<PathBuf> {
    let ipxe = std::fs::read_to_string(dir.join("pxe/boot.ipxe")).unwrap();
    ipxe.lines()
        .filter_map(|l| l.strip_prefix("initrd "))
        .filter_map(|l| {
            let (url, name) = l.split_once(' ').unwrap_or((l, ""));
            if let Some(rel) = url.strip_prefix("${base-url}/") {
                (rel != "initrd.img").then(|| dir.join(rel))
            } else {
                assert!(url.starts_with("${layers-url}/sha256/"), "{l}");
                Some(dir.join("pxe/segments").join(name))
            }
        })
        .collect()
}

/// The names in the node's secrets layer, as cpio names them, and the
/// names of its regular files.
fn secrets_layer_names(dir: &Path) -> (Vec<String>, Vec<String>) {
    let layer = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-secrets.tar.gz"))
        .unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(layer).unwrap(),
    ));
    let (mut all, mut files) = (Vec::new(), Vec::new());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let name = name
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if e.header().entry_type().is_file() {
            files.push(name.clone());
        }
        all.push(name);
    }
    (all, files)
}

pub(crate) fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Builds node01 into `out` with `extra` arguments.
pub(crate) fn build_node(lab: &Lab, server: &Server, out: &str, extra: &[&str]) {
    let mut args = vec!["node", "--role", "node01", "--out", out];
    args.extend_from_slice(extra);
    build(lab, server, &args, &[]).assert_ok();
}

/// What `dir`'s boot.ipxe loads: the shared layers' segments (hard links),
/// then the node's own initrd (`/init` and the node layer), unpacking to the
/// whole node with `/init` after the base; their names, as cpio gives them.
fn the_initrds_are_the_shared_segments_then_the_nodes(dir: &Path) -> Vec<String> {
    let pxe = dir.join("pxe");
    // what boot.ipxe loads: the shared layers' segments (hard links), then
    // the node's own initrd
    let files = loaded(dir);
    let segments: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.starts_with(pxe.join("segments")))
        .collect();
    assert_eq!(segments.len(), files.len() - 1, "{files:?}");
    assert_eq!(files.last(), Some(&pxe.join("initrd.cpio.gz")));
    assert!(
        segments[0].to_string_lossy().ends_with("/00-os.cpio.gz"),
        "{files:?}"
    );
    let initrd = cpio_names(&files);
    for f in [
        "init",
        "newroot",
        "boot/vmlinuz-6.1.0-test",
        "etc/os-release",
        "etc/hosts",
        "etc/hostname",
    ] {
        assert!(
            initrd.iter().any(|n| n == f),
            "{f} not in the initrd: {initrd:?}"
        );
    }
    // /init comes after the shared layers: the base's files are unpacked first
    let at = |f: &str| initrd.iter().position(|n| n == f).unwrap();
    assert!(at("etc/os-release") < at("init"), "{initrd:?}");
    // the node's own file holds /init and the node layer, a few KB
    let own = cpio_names(&[pxe.join("initrd.cpio.gz")]);
    assert!(
        own.iter().any(|n| n == "etc/hostname") && !own.iter().any(|n| n == "etc/os-release"),
        "{own:?}"
    );
    initrd
}

#[test]

fn a_whole_node_is_its_kernel_an_initrd_without_secrets_and_the_secrets_apart() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "a", &[]);
    let dir = lab.path("a/node01");
    let pxe = dir.join("pxe");
    assert_eq!(std::fs::read(pxe.join("vmlinuz")).unwrap(), KERNEL);
    assert_eq!(mode(&pxe.join("vmlinuz")), 0o444);
    assert!(!pxe.join("overlay.cpio.gz").exists());
    let initrd = the_initrds_are_the_shared_segments_then_the_nodes(&dir);
    let (secrets, secret_files) = secrets_layer_names(&dir);
    assert!(
        secret_files.iter().any(|n| n.ends_with(".key")),
        "{secrets:?}"
    );
    for n in &initrd {
        let private = n.starts_with("etc/kubernetes/pki/") && n.ends_with(".key");
        assert!(
            !private && !secret_files.contains(n),
            "{n} is in the initrd"
        );
    }
    // the secrets file holds the secrets layer and nothing else, privately
    assert_eq!(cpio_names(&[pxe.join("secrets.cpio.gz")]), secrets);
    assert_eq!(mode(&pxe.join("secrets.cpio.gz")), 0o600);
    assert_eq!(
        std::fs::read_to_string(pxe.join("cmdline")).unwrap(),
        "console=tty0 console=ttyS0,115200 imgbuild.rootsize=75%\n"
    );
    let ipxe = std::fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert!(
        ipxe.contains(" initrd=initrd.cpio.gz console=tty0 ")
            && ipxe.contains("\nkernel ${base-url}/pxe/vmlinuz initrd=00-os.cpio.gz ")
            && !ipxe.contains("initrd ${base-url}/pxe/secrets.cpio.gz"),
        "{ipxe}"
    );
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for f in [
        "vmlinuz",
        "init.cpio.gz",
        "initrd.cpio.gz",
        "secrets.cpio.gz",
        "cmdline",
        "segments/00-os.cpio.gz",
    ] {
        assert!(sums.contains(&format!("  pxe/{f}\n")), "{f}: {sums}");
    }
    lab.imgbuild(&["verify", "a/node01"]).assert_ok();
}

#[test]

fn a_whole_node_builds_to_the_same_bytes_and_verify_rebuilds_its_secrets_choice() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "a", &[]);
    build_node(&lab, &server, "b", &[]);
    build_node(&lab, &server, "s", &["--pxe-secrets"]);
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap();
    assert_eq!(read("a/node01/SHA256SUMS"), read("b/node01/SHA256SUMS"));
    let ipxe = read("s/node01/pxe/boot.ipxe");
    assert!(
        ipxe.contains("initrd=initrd.cpio.gz initrd=secrets.cpio.gz console=")
            && ipxe.contains("initrd ${base-url}/pxe/secrets.cpio.gz secrets.cpio.gz\nboot\n"),
        "{ipxe}"
    );
    build(&lab, &server, &["verify", "s/node01", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
    // a secrets file anyone can read fails verification
    let secrets = lab.path("a/node01/pxe/secrets.cpio.gz");
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    // and so does one of the cluster's own keys slipped into what is
    // served to everyone: the node's own initrd holds no base, so any PEM
    // key there is one, while the base's own PEM keys in its segment are
    // not flagged
    let key = std::fs::read(lab.path("state/lab/pki/ca.key")).unwrap();
    append_gzip_member(&lab.path("a/node01/pxe/initrd.cpio.gz"), &key);
    lab.imgbuild(&["verify", "a/node01"])
        .assert_failed()
        .assert_stderr_has("pxe/secrets.cpio.gz: mode 0644")
        .assert_stderr_has(
            "pxe/initrd.cpio.gz is published to many machines and holds a PEM private key",
        )
        .assert_stderr_lacks("pxe/segments/")
        .assert_stderr_lacks("BEGIN");
}

/// Appends `bytes` to the gzip file `path` as one more member.
fn append_gzip_member(path: &Path, bytes: &[u8]) {
    let mut all = std::fs::read(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    all.extend(gz.finish().unwrap());
    std::fs::write(path, all).unwrap();
}

#[test]
fn verify_tells_the_bases_own_pem_keys_from_the_clusters_in_the_os_layer() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "a", &["--format", "layers,pxe"]);
    // the base carries GnuTLS's self-test key: verify passes
    lab.imgbuild(&["verify", "a/node01"]).assert_ok();
    // the cluster's VRRP password in a file of the OS layer is found
    let auth = std::fs::read_to_string(lab.path("state/lab/keepalived-auth.conf")).unwrap();
    let layer = std::fs::read_dir(lab.path("a/node01/layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-os.tar.gz"))
        .unwrap();
    crate::build::append_to_layer(&layer, "usr/share/doc/x/sample.conf", auth.as_bytes());
    crate::build::reseal_layer(&lab.path("a/node01"), &layer);
    lab.imgbuild(&["verify", "a/node01"])
        .assert_failed()
        .assert_stderr_has("/usr/share/doc/x/sample.conf holds a secret of the cluster's state (")
        .assert_stderr_has("keepalived-auth.conf) outside the secrets layer");
}

#[test]

fn in_url_mode_a_whole_node_loads_its_shared_segments_by_digest() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "embed", &[]);
    build_node(
        &lab,
        &server,
        "url",
        &["--seed-layers", "url=http://10.0.0.5/layers"],
    );
    let dir = lab.path("url/node01");
    let ipxe = std::fs::read_to_string(dir.join("pxe/boot.ipxe")).unwrap();
    let by_digest = ipxe
        .lines()
        .filter(|l| l.starts_with("initrd ${layers-url}/sha256/"))
        .count();
    let served = loaded(&dir);
    assert!(
        by_digest == served.len() - 1 && served[0].to_string_lossy().ends_with("-os.cpio.gz"),
        "{ipxe}"
    );
    // the segments then the node's initrd unpack as the embedded node
    // does, with the same files
    let embed = lab.path("embed/node01");
    assert_eq!(cpio_names(&served), cpio_names(&loaded(&embed)));
    assert_eq!(
        std::fs::read(dir.join("pxe/initrd.cpio.gz")).unwrap(),
        std::fs::read(embed.join("pxe/initrd.cpio.gz")).unwrap()
    );
    lab.imgbuild(&["verify", "url/node01"]).assert_ok();
}

#[test]

fn a_base_without_a_kernel_is_an_error_naming_the_os_layer() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(false));
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--out", "o"],
        &[],
    )
    .assert_failed()
    .assert_stderr_has("the os layer 00-os (with 01-os-packages) has no kernel");
}

/// Adds `package` (pinned, behind the mirror) to `[os] packages`.
pub(crate) fn with_os_package(lab: &Lab, server: &Server, package: &str, bytes: &[u8]) {
    let pins = lab.path("manifests/pins.toml");
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&pins).unwrap()).unwrap();
    let source = doc["artifact"][0]["source"].clone();
    let url = format!("https://deb.example/imgbuild-test/pool/{package}_1.0-test_amd64.deb");
    let fields = [
        ("name", package),
        ("version", "1.0-test"),
        ("arch", "amd64"),
        ("url", url.as_str()),
    ];
    let deb = pin(server, &source, &fields, bytes);
    doc.get_mut("deb")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(deb);
    let os = doc.get_mut("os").unwrap().as_table_mut().unwrap();
    let mut packages = os
        .get("packages")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    packages.push(package.into());
    os.insert("packages".into(), toml::Value::Array(packages));
    std::fs::write(&pins, toml::to_string(&doc).unwrap()).unwrap();
}

#[test]
fn a_kernel_from_a_pinned_linux_image_package_boots_a_base_without_one() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(false));
    let image = deb_with(
        "linux-image-test",
        "1.0-test",
        &[("boot/", b""), ("boot/vmlinuz-6.1.0-test", KERNEL)],
    );
    with_os_package(&lab, &server, "linux-image-test", &image);
    build_node(&lab, &server, "a", &[]);
    let dir = lab.path("a/node01");
    assert_eq!(std::fs::read(dir.join("pxe/vmlinuz")).unwrap(), KERNEL);
    // every node has it, whatever its roles, and dpkg knows it
    let initrd = cpio_names(&loaded(&dir));
    assert!(
        initrd.iter().any(|n| n == "boot/vmlinuz-6.1.0-test"),
        "{initrd:?}"
    );
    let plan = lab.imgbuild(&["plan", "--role", "master01"]).assert_ok();
    assert!(
        plan.stdout().contains("linux-image-test"),
        "{}",
        plan.stdout()
    );
    lab.imgbuild(&["verify", "a/node01"]).assert_ok();
}

#[test]
fn an_os_package_without_a_pin_is_an_error_at_its_place_in_pins_toml() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    let pins = lab.path("manifests/pins.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    let text = text.replace(
        "[os]\n",
        "[os]\npackages = [\"systemd-sysv\", \"Bad_Name\"]\n",
    );
    std::fs::write(&pins, text).unwrap();
    lab.imgbuild(&["plan", "--role", "node01"])
        .assert_failed()
        .assert_stderr_has("pins.toml:")
        .assert_stderr_has("[os] packages needs OS package `systemd-sysv` on amd64 (node `")
        .assert_stderr_has("[os] packages: `Bad_Name` is not a Debian package name");
}

#[test]
fn a_generic_role_image_boots_with_the_identity_dhcp_gave_ipxe() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build(
        &lab,
        &server,
        &["node", "--role", "worker", "--out", "g"],
        &[],
    )
    .assert_ok();
    let ipxe = std::fs::read_to_string(lab.path("g/worker/pxe/boot.ipxe")).unwrap();
    assert!(
        ipxe.contains(
            " imgbuild.hostname=${hostname} imgbuild.ip=${net0/ip}::${net0/gateway}:${net0/netmask}:${hostname}::none\n"
        ),
        "{ipxe}"
    );
    build_node(&lab, &server, "n", &[]);
    let node = std::fs::read_to_string(lab.path("n/node01/pxe/boot.ipxe")).unwrap();
    assert!(!node.contains("imgbuild.hostname"), "{node}");
    lab.imgbuild(&["verify", "g/worker"]).assert_ok();
}

#[test]
fn a_seed_for_a_running_host_leaves_the_base_os_out() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "c", &["--format", "layers,cloud-init"]);
    let dir = lab.path("c/node01");
    assert!(dir.join("layers/00-os.tar.gz").is_file());
    let user_data = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    assert!(user_data.contains("-worker.tar.gz"), "{user_data}");
    assert!(
        !user_data.contains("-os.tar.gz") && !user_data.contains("-os-packages.tar.gz"),
        "{user_data}"
    );
    let names = judge("isoinfo")
        .args(["-J", "-f", "-i"])
        .arg(dir.join("cloud-init/seed.iso"))
        .ok();
    assert!(
        names.contains("/layers/") && !names.contains("-os"),
        "{names}"
    );
    lab.imgbuild(&["verify", "c/node01"]).assert_ok();
}

#[test]
fn the_stand_in_debs_are_what_dpkg_deb_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nftables_1.0-test_amd64.deb");
    std::fs::write(&file, deb("nftables", "1.0-test")).unwrap();
    let info = judge("dpkg-deb").args(["--field"]).arg(&file).ok();
    assert!(
        info.contains("Package: nftables\n") && info.contains("Version: 1.0-test\n"),
        "{info}"
    );
    let contents = judge("dpkg-deb").arg("--contents").arg(&file).ok();
    assert!(
        contents.contains(" usr/share/doc/nftables/copyright"),
        "{contents}"
    );
}

/// The lab's pins.toml with `lines` added to its `[os]` table.
fn with_os_lines(lab: &Lab, lines: &str) {
    let pins = lab.path("manifests/pins.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    std::fs::write(&pins, text.replace("[os]\n", &format!("[os]\n{lines}\n"))).unwrap();
}

#[test]
fn os_exclude_leaves_matching_files_out_of_the_os_layer_and_the_initrd() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "all", &[]);
    with_os_lines(
        &lab,
        "exclude = [\"/boot/config-*\", \"/usr/lib/x86_64-linux-gnu/*\"]",
    );
    build_node(&lab, &server, "trim", &[]);
    let names = |out: &str| cpio_names(&loaded(&lab.path(&format!("{out}/node01"))));
    let (all, trim) = (names("all"), names("trim"));
    for gone in [
        "boot/config-6.1.0-test",
        "usr/lib/x86_64-linux-gnu/libgnutls.so.30",
    ] {
        assert!(all.iter().any(|n| n == gone), "{all:?}");
        assert!(
            !trim.iter().any(|n| n == gone),
            "{gone} is still in {trim:?}"
        );
    }
    // the directories stay, as with dpkg's path-exclude; the rest is there
    for kept in [
        "usr/lib/x86_64-linux-gnu",
        "boot/vmlinuz-6.1.0-test",
        "etc/os-release",
    ] {
        assert!(
            trim.iter().any(|n| n == kept),
            "{kept} is missing: {trim:?}"
        );
    }
    let os = std::fs::read_dir(lab.path("trim/node01/layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-os.tar.gz"))
        .unwrap();
    let listed = judge("tar").arg("-tzf").arg(&os).ok();
    assert!(
        !listed.contains("config-6.1.0-test") && listed.contains("vmlinuz-6.1.0-test"),
        "{listed}"
    );
    lab.imgbuild(&["verify", "trim/node01"]).assert_ok();
}

#[test]
fn a_bad_os_exclude_pattern_is_an_error_at_its_place_in_pins_toml() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    with_os_lines(
        &lab,
        "exclude = [\"usr/share/doc/*\", \"/usr/../etc/*\", \"/usr/[x\", \"/a/*\", \"/a/*\"]",
    );
    lab.imgbuild(&["plan", "--role", "node01"])
        .assert_failed()
        .assert_stderr_has("pins.toml:")
        .assert_stderr_has("[os] exclude: `usr/share/doc/*` is not an absolute path pattern")
        .assert_stderr_has("[os] exclude: `/usr/../etc/*` has a `..` component")
        .assert_stderr_has("[os] exclude: `/usr/[x` is not a glob pattern")
        .assert_stderr_has("[os] exclude lists `/a/*` twice");
}

//! `--format disk`: a whole node as a GPT disk: an EFI system partition
//! with systemd-boot, its loader entry, the kernel and a small boot
//! initramfs; the read-only root (squashfs) and its dm-verity hash
//! partition, whose root hash the entry carries. Judged by sfdisk (the
//! partition table), fsck.vfat and mtools (the ESP), unsquashfs (the root),
//! veritysetup (the hash tree against the root hash), cpio (the boot
//! initramfs) and qemu-img (the qcow2 over its shared base, against the
//! raw disk); booted under OVMF by `just vm-test`.

use std::path::{Path, PathBuf};

use crate::build::{build, synthetic};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::Lab;
use crate::pxe::{KERNEL, base_tar, build_node, deb_with, mode, whole, with_os_package};

const LOADER: &[u8] = b"MZ imgbuild test stand-in for systemd-bootx64.efi";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const VERITY_TYPE: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
/// What the boot initramfs runs (stand-ins: the VM test boots the real
/// ones) and a module it holds and one it leaves out.
const BOOT_FILES: &[(&str, &[u8])] = &[
    ("bin -> usr/bin", b""),
    ("lib -> usr/lib", b""),
    ("sbin -> usr/sbin", b""),
    ("usr/", b""),
    ("usr/bin/", b""),
    ("usr/bin/sh", b"#!stand-in dash\n"),
    ("usr/bin/cat", b"stand-in\n"),
    ("usr/bin/cp", b"stand-in\n"),
    ("usr/bin/mkdir", b"stand-in\n"),
    ("usr/bin/mount", b"stand-in\n"),
    ("usr/bin/sleep", b"stand-in\n"),
    ("usr/bin/uname", b"stand-in\n"),
    ("usr/bin/kmod", b"stand-in\n"),
    ("usr/sbin/", b""),
    ("usr/sbin/depmod", b"stand-in\n"),
    ("usr/sbin/modprobe", b"stand-in\n"),
    ("usr/sbin/blkid", b"stand-in\n"),
    ("usr/sbin/switch_root", b"stand-in\n"),
    ("usr/lib/", b""),
    ("usr/lib/systemd/", b""),
    ("usr/lib/systemd/systemd-veritysetup", b"stand-in\n"),
    ("usr/lib/modules/", b""),
    ("usr/lib/modules/6.1.0-test/", b""),
    ("usr/lib/modules/6.1.0-test/modules.dep", b""),
    ("usr/lib/modules/6.1.0-test/kernel/", b""),
    ("usr/lib/modules/6.1.0-test/kernel/fs/", b""),
    ("usr/lib/modules/6.1.0-test/kernel/fs/squashfs/", b""),
    (
        "usr/lib/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko",
        b"stand-in\n",
    ),
    ("usr/lib/modules/6.1.0-test/kernel/net/", b""),
    (
        "usr/lib/modules/6.1.0-test/kernel/net/ip_vs.ko",
        b"stand-in\n",
    ),
];

/// The lab with a base OS, a systemd-boot-efi package and (when `tools`)
/// what the boot initramfs runs, in a usr-merged root.
fn disk_lab_with(tools: bool) -> (Lab, Server) {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    let efi = deb_with(
        "systemd-boot-efi",
        "1.0-test",
        &[
            ("usr/", b""),
            ("usr/lib/", b""),
            ("usr/lib/systemd/", b""),
            ("usr/lib/systemd/boot/", b""),
            ("usr/lib/systemd/boot/efi/", b""),
            ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", LOADER),
        ],
    );
    with_os_package(&lab, &server, "systemd-boot-efi", &efi);
    if tools {
        let tools = deb_with("boot-tools", "1.0-test", BOOT_FILES);
        with_os_package(&lab, &server, "boot-tools", &tools);
    }
    (lab, server)
}

fn disk_lab() -> (Lab, Server) {
    disk_lab_with(true)
}

/// `mtype` of a file of the ESP at 1 MiB into `raw`.
fn esp_file(raw: &Path, path: &str) -> Vec<u8> {
    judge("mtype")
        .arg("-i")
        .arg(format!("{}@@1M", raw.display()))
        .arg(format!("::/{path}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .ok_bytes()
}

/// The partitions of `raw` as sfdisk reads them.
fn partitions(raw: &Path) -> Vec<serde_json::Value> {
    let table: serde_json::Value =
        serde_json::from_str(&judge("sfdisk").arg("--json").arg(raw).ok()).unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt", "{table}");
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Partition `p` of `raw` copied out to `to`.
fn copy_out(raw: &Path, p: &serde_json::Value, to: &Path) -> PathBuf {
    judge_sh(&format!(
        "dd if='{}' bs=512 skip={} count={} status=none of='{}'",
        raw.display(),
        p["start"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        to.display()
    ))
    .ok();
    to.to_path_buf()
}

/// The value of `key=` on the loader entry's options line.
fn option<'a>(entry: &'a str, key: &str) -> &'a str {
    entry
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {entry}"))
}

#[test]
fn a_node_disk_boots_systemd_boot_with_its_kernel_a_boot_initramfs_and_a_verity_root() {
    let (lab, server) = disk_lab();
    build_node(&lab, &server, "d", &["--format", "disk,disk-raw"]);
    let dir = lab.path("d/node01/disk");
    let raw = dir.join("disk.raw");
    let parts = partitions(&raw);
    let kinds: Vec<_> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, [ESP_TYPE, ROOT_TYPE, VERITY_TYPE], "{parts:?}");
    assert_eq!(parts[0]["start"].as_u64(), Some(2048), "{parts:?}");
    let hash = esp_boots_the_root(&raw, &dir, &parts);
    root_matches_its_hash(&raw, &dir, &parts, &hash);
    boot_initramfs_holds_its_programs_and_nothing_of_the_node(&raw, &dir);
    node_initrd_holds_the_nodes_own_files(&raw, &dir);
    for f in ["esp", "root", "tree"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    qcow2_is_the_raw_disk_over_the_shared_one(&lab, &dir);
    lab.imgbuild(&["verify", "d/node01"]).assert_ok();
    // a qcow2 naming another backing file (qemu-img's own rebase) fails
    let qcow2 = dir.join("disk.qcow2");
    let kept = std::fs::read(&qcow2).unwrap();
    judge("qemu-img")
        .args([
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/passwd",
        ])
        .arg(&qcow2)
        .ok();
    lab.imgbuild(&["verify", "d/node01"])
        .assert_failed()
        .assert_stderr_has(
            "disk/disk.qcow2 names \"/etc/passwd\" as its backing file; a node's disk may name only \"base.qcow2\" beside it",
        );
    std::fs::write(&qcow2, kept).unwrap();
    std::fs::set_permissions(&qcow2, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // a node's disk anyone can read fails verification
    std::fs::set_permissions(&raw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    lab.imgbuild(&["verify", "d/node01"])
        .assert_failed()
        .assert_stderr_has(
            "disk/disk.raw: mode 0644; it carries the secrets layer and must be 0600",
        );
}

/// `disk.qcow2` is `disk.raw`, read through its backing file
/// `base.qcow2` beside it: the role's shared disk, a hard link into the
/// store that carries no secret; the node's own image holds only the
/// clusters it changed. Both of the node's files are private.
fn qcow2_is_the_raw_disk_over_the_shared_one(lab: &Lab, dir: &Path) {
    let (raw, qcow2, base) = (
        dir.join("disk.raw"),
        dir.join("disk.qcow2"),
        dir.join("base.qcow2"),
    );
    judge("qemu-img")
        .args(["compare", "-q"])
        .arg(&raw)
        .arg(&qcow2)
        .ok();
    for image in [&qcow2, &base] {
        judge("qemu-img").args(["check", "-q"]).arg(image).ok();
    }
    let info: serde_json::Value = serde_json::from_str(
        &judge("qemu-img")
            .args(["info", "--output=json"])
            .arg(&qcow2)
            .ok(),
    )
    .unwrap();
    assert_eq!(info["backing-filename"], "base.qcow2", "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(info["virtual-size"].as_u64(), Some(raw_len), "{info}");
    let own = std::fs::metadata(&qcow2).unwrap().len();
    assert!(own < 2 << 20, "the node's own image is {own} bytes");
    use std::os::unix::fs::MetadataExt;
    let stored = std::fs::read_dir(lab.path("cache/layers/disk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "qcow2"))
        .expect("no shared disk in the store");
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&base), ino(&stored), "base.qcow2 is not the store's");
    assert_eq!(mode(&base), 0o444);
    let strings = judge_sh(&format!("strings '{}'", base.display())).ok();
    assert!(
        !strings.contains("PRIVATE KEY"),
        "the shared disk holds a key"
    );
    assert_eq!((mode(&raw), mode(&qcow2)), (0o600, 0o600));
}

/// The ESP: a clean FAT with systemd-boot where firmware looks for it, the
/// kernel, and an entry naming the partitions; returns the root hash.
fn esp_boots_the_root(raw: &Path, dir: &Path, parts: &[serde_json::Value]) -> String {
    let uuid = |i: usize| parts[i]["uuid"].as_str().unwrap().to_lowercase();
    let esp = copy_out(raw, &parts[0], &dir.join("esp"));
    judge("fsck.vfat").arg("-n").arg(&esp).ok();
    assert_eq!(esp_file(raw, "EFI/BOOT/BOOTX64.EFI"), LOADER);
    assert_eq!(esp_file(raw, "imgbuild/vmlinuz"), KERNEL);
    let loader = String::from_utf8(esp_file(raw, "loader/loader.conf")).unwrap();
    assert!(
        loader.contains("default imgbuild.conf\ntimeout 0\n"),
        "{loader}"
    );
    let entry = String::from_utf8(esp_file(raw, "loader/entries/imgbuild.conf")).unwrap();
    assert!(
        entry.contains("linux /imgbuild/vmlinuz\ninitrd /imgbuild/boot.img\ninitrd /imgbuild/node.img\noptions console=tty0 console=ttyS0,115200 imgbuild.rootsize=75% "),
        "{entry}"
    );
    assert_eq!(
        option(&entry, "imgbuild.root"),
        format!("PARTUUID={}", uuid(1))
    );
    assert_eq!(
        option(&entry, "imgbuild.verity"),
        format!("PARTUUID={}", uuid(2))
    );
    assert_eq!(
        option(&entry, "imgbuild.esp"),
        format!("PARTUUID={}", uuid(0))
    );
    // the root hash: its halves are the partitions' GUIDs (as systemd-repart
    // makes them), and veritysetup finds the root's every block in the tree
    let hash = option(&entry, "imgbuild.roothash");
    assert_eq!(hash, format!("{}{}", uuid(1), uuid(2)).replace('-', ""));
    hash.to_string()
}

/// veritysetup finds the root's every block in the hash partition under
/// the root hash, and refuses the root once one byte of it changed.
fn root_matches_its_hash(raw: &Path, dir: &Path, parts: &[serde_json::Value], hash: &str) {
    let root = copy_out(raw, &parts[1], &dir.join("root"));
    let tree = copy_out(raw, &parts[2], &dir.join("tree"));
    judge("veritysetup")
        .arg("verify")
        .arg(&root)
        .arg(&tree)
        .arg(hash)
        .ok();
    root_holds_the_shared_layers(&root);
    judge_sh(&format!(
        "printf X | dd of='{}' bs=1 seek=70000 conv=notrunc status=none",
        root.display()
    ))
    .ok();
    let tampered = judge("veritysetup")
        .arg("verify")
        .arg(&root)
        .arg(&tree)
        .arg(hash)
        .output();
    assert!(
        !tampered.status.success(),
        "veritysetup took a changed root"
    );
}

/// The root filesystem: the base, the node's files and secrets, and the
/// The root filesystem: the base, the roles' files and the root's own
/// `/init` with the state partition's definition; nothing of the node's own
/// (those are on the ESP, `imgbuild/node.img`).
fn root_holds_the_shared_layers(root: &Path) {
    let list = judge("unsquashfs").args(["-lln", "-d", ""]).arg(root).ok();
    for want in [
        "-rwxr-xr-x 0/0 ",
        " /init\n",
        " /imgbuild.repart.d/50-imgbuild-state.conf\n",
        " /etc/debian_version\n",
        " /usr/lib/systemd/boot/efi/systemd-bootx64.efi\n",
        " /etc/containerd/config.toml\n",
    ] {
        assert!(list.contains(want), "lacks {want:?}:\n{list}");
    }
    for never in [".key\n", "/kube-proxy.conf\n", "/etc/hostname\n"] {
        assert!(!list.contains(never), "holds {never:?}:\n{list}");
    }
    let init = judge("unsquashfs")
        .args(["-cat"])
        .arg(root)
        .arg("init")
        .ok();
    assert!(init.contains("imgbuild's /init"), "{init}");
}

/// The ESP's `imgbuild/node.img`: the node's own layers, its secrets
/// private, below `/imgbuild.add`.
fn node_initrd_holds_the_nodes_own_files(raw: &Path, dir: &Path) {
    std::fs::write(dir.join("node.img"), esp_file(raw, "imgbuild/node.img")).unwrap();
    let list = judge_sh(&format!(
        "gzip -dc '{}/node.img' | cpio -tv --quiet --numeric-uid-gid",
        dir.display()
    ))
    .ok();
    std::fs::remove_file(dir.join("node.img")).unwrap();
    let line = |p: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!(" imgbuild.add/{p}")))
            .unwrap_or_else(|| panic!("no imgbuild.add/{p}:\n{list}"))
            .to_string()
    };
    assert!(line("etc/hostname").starts_with("-rw-r--r-- "), "{list}");
    assert!(
        line("etc/kubernetes/pki/kubelet.key").starts_with("-rw------- "),
        "{list}"
    );
    assert!(!list.contains(" imgbuild.add/etc/debian_version"), "{list}");
}

/// The boot initramfs: `/init`, the programs it runs and the storage and
/// filesystem modules; nothing of the node's own.
fn boot_initramfs_holds_its_programs_and_nothing_of_the_node(raw: &Path, dir: &Path) {
    std::fs::write(dir.join("boot.img"), esp_file(raw, "imgbuild/boot.img")).unwrap();
    let list = judge_sh(&format!(
        "gzip -dc '{}/boot.img' | cpio -t --quiet",
        dir.display()
    ))
    .ok();
    std::fs::remove_file(dir.join("boot.img")).unwrap();
    let names: Vec<&str> = list.lines().collect();
    for want in [
        "init",
        "usr/bin/sh",
        "usr/bin/kmod",
        "usr/sbin/switch_root",
        "usr/lib/systemd/systemd-veritysetup",
        "usr/lib/modules/6.1.0-test/modules.dep",
        "usr/lib/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko",
        "newroot",
    ] {
        assert!(names.contains(&want), "lacks {want}:\n{list}");
    }
    for never in [
        "kernel/net/ip_vs.ko",
        "etc/kubernetes",
        ".key",
        "etc/hostname",
    ] {
        assert!(!list.contains(never), "holds {never}:\n{list}");
    }
}

#[test]
fn two_disk_builds_are_the_same_bytes_and_a_generic_disk_holds_no_secret() {
    let (lab, server) = disk_lab();
    build_node(&lab, &server, "a", &["--format", "disk,disk-raw"]);
    // the root, its hashes and the boot initramfs made again, not reused
    let stored = lab.path("cache/layers/disk");
    assert!(
        std::fs::read_dir(&stored).unwrap().count() >= 4,
        "nothing kept in {}",
        stored.display()
    );
    std::fs::remove_dir_all(&stored).unwrap();
    build_node(&lab, &server, "b", &["--format", "disk,disk-raw"]);
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap();
    assert_eq!(read("a/node01/SHA256SUMS"), read("b/node01/SHA256SUMS"));
    for file in ["disk/disk.raw", "disk/disk.qcow2", "disk/base.qcow2"] {
        assert!(read("a/node01/SHA256SUMS").contains(&format!("  {file}\n")));
    }
    build(&lab, &server, &["verify", "a/node01", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
    generic_disk_shares_node01s_root_and_holds_no_secret(&lab, &server);
}

/// The worker role's generic disk (built into `g/`) is over the shared disk
/// node01's is over, has node01's root byte for byte and holds no secret.
fn generic_disk_shares_node01s_root_and_holds_no_secret(lab: &Lab, server: &Server) {
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap();
    build(
        lab,
        server,
        &[
            "node",
            "--role",
            "worker",
            "--out",
            "g",
            "--format",
            "disk,disk-raw",
        ],
        &[],
    )
    .assert_ok();
    let raw = lab.path("g/worker/disk/disk.raw");
    assert_eq!(mode(&raw), 0o644);
    assert_eq!(mode(&lab.path("g/worker/disk/disk.qcow2")), 0o644);
    // the role's generic disk and node01's are over one shared disk
    let base = |d: &str| {
        read(&format!("{d}/SHA256SUMS"))
            .lines()
            .find(|l| l.ends_with("  disk/base.qcow2"))
            .map(str::to_string)
    };
    assert!(base("g/worker").is_some());
    assert_eq!(base("g/worker"), base("a/node01"));
    let parts = partitions(&raw);
    let root = copy_out(&raw, &parts[1], &lab.path("g/root"));
    // node01, a worker, has the same root, byte for byte: one made, kept
    let node01 = lab.path("a/node01/disk/disk.raw");
    let theirs = copy_out(&node01, &partitions(&node01)[1], &lab.path("g/node01-root"));
    assert!(
        std::fs::read(&root).unwrap() == std::fs::read(&theirs).unwrap(),
        "the generic worker's root differs from node01's"
    );
    let list = judge("unsquashfs").args(["-lln", "-d", ""]).arg(&root).ok();
    assert!(list.contains(" /etc/debian_version\n"), "{list}");
    for never in [".key\n", "/kube-proxy.conf\n", "/etc/hostname\n"] {
        assert!(!list.contains(never), "holds {never:?}:\n{list}");
    }
    // it takes the node's own layers from the node's seed attached to it
    let entry = String::from_utf8(esp_file(&raw, "loader/entries/imgbuild.conf")).unwrap();
    assert!(
        entry.contains(" imgbuild.seed=LABEL=cidata imgbuild.root=PARTUUID="),
        "{entry}"
    );
}

#[test]
fn a_disk_needs_a_base_os_and_systemd_boot_and_says_so() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "disk"],
        &[],
    )
    .assert_failed()
    .assert_stderr_has("--format disk needs a base OS ([os] in pins.toml)");
    let lab = whole(lab, &server, &base_tar(true));
    build(&lab, &server, &["node", "--role", "node01", "--format", "disk"], &[])
        .assert_failed()
        .assert_stderr_has("have no /usr/lib/systemd/boot/efi/systemd-bootx64.efi (systemd-boot): add the `systemd-boot-efi` package");
    let (lab, server) = disk_lab_with(false);
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "disk"],
        &[],
    )
    .assert_failed()
    .assert_stderr_has("node01: the disk's boot initramfs needs /bin/sh, /bin/cat")
    .assert_stderr_has("add the packages that hold them");
}

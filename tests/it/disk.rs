//! `--format disk`: a whole node as a GPT disk whose EFI system partition
//! holds systemd-boot, its loader entry, the kernel and the initrds. Judged
//! by sfdisk (the partition table), fsck.vfat and mtools (the ESP), and
//! qemu-img (the qcow2); booted under OVMF by `just vm-test`.

use std::path::Path;

use crate::build::{build, synthetic};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::Lab;
use crate::pxe::{KERNEL, base_tar, build_node, deb_with, mode, whole, with_os_package};

const LOADER: &[u8] = b"MZ imgbuild test stand-in for systemd-bootx64.efi";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The lab with a base OS and a systemd-boot-efi package.
fn disk_lab() -> (Lab, Server) {
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
    (lab, server)
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

#[test]
fn a_node_disk_is_a_gpt_whose_esp_boots_systemd_boot_with_the_nodes_kernel_and_initrds() {
    let (lab, server) = disk_lab();
    build_node(&lab, &server, "d", &["--format", "disk"]);
    let dir = lab.path("d/node01/disk");
    let raw = dir.join("disk.raw");
    // the partition table: one ESP at 1 MiB
    let table: serde_json::Value =
        serde_json::from_str(&judge("sfdisk").arg("--json").arg(&raw).ok()).unwrap();
    let t = &table["partitiontable"];
    assert_eq!(t["label"], "gpt", "{table}");
    let esp = &t["partitions"][0];
    assert_eq!(
        (esp["type"].as_str(), esp["start"].as_u64()),
        (Some(ESP_TYPE), Some(2048)),
        "{table}"
    );
    let uuid = esp["uuid"].as_str().unwrap().to_lowercase();
    // the ESP: a clean FAT with systemd-boot where firmware looks for it
    judge_sh(&format!(
        "dd if='{}' bs=1M skip=1 count={} status=none of='{}/esp' && fsck.vfat -n '{}/esp'",
        raw.display(),
        esp["size"].as_u64().unwrap() / 2048,
        dir.display(),
        dir.display()
    ))
    .ok();
    assert_eq!(esp_file(&raw, "EFI/BOOT/BOOTX64.EFI"), LOADER);
    assert_eq!(esp_file(&raw, "imgbuild/vmlinuz"), KERNEL);
    let loader = String::from_utf8(esp_file(&raw, "loader/loader.conf")).unwrap();
    assert!(
        loader.contains("default imgbuild.conf\ntimeout 0\n"),
        "{loader}"
    );
    let entry = String::from_utf8(esp_file(&raw, "loader/entries/imgbuild.conf")).unwrap();
    for want in [
        "linux /imgbuild/vmlinuz\n",
        "initrd /imgbuild/initrd.img\ninitrd /imgbuild/secrets.img\n",
        "options console=tty0 console=ttyS0,115200 imgbuild.rootsize=75% ",
        &format!(" imgbuild.esp=PARTUUID={uuid}\n"),
    ] {
        assert!(entry.contains(want), "lacks {want:?}:\n{entry}");
    }
    // the initrd is the whole node's, the secrets apart
    let initrd = esp_file(&raw, "imgbuild/initrd.img");
    let pxe_dir = lab.path("p/node01/pxe");
    build_node(&lab, &server, "p", &["--format", "pxe"]);
    assert_eq!(
        initrd,
        std::fs::read(pxe_dir.join("initrd.cpio.gz")).unwrap()
    );
    // the qcow2 is the same disk; both private: the disk holds the secrets
    judge("qemu-img")
        .args(["compare", "-q"])
        .arg(&raw)
        .arg(dir.join("disk.qcow2"))
        .ok();
    assert_eq!((mode(&raw), mode(&dir.join("disk.qcow2"))), (0o600, 0o600));
    std::fs::remove_file(dir.join("esp")).unwrap();
    lab.imgbuild(&["verify", "d/node01"]).assert_ok();
    // a node's disk anyone can read fails verification
    std::fs::set_permissions(&raw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    lab.imgbuild(&["verify", "d/node01"])
        .assert_failed()
        .assert_stderr_has(
            "disk/disk.raw: mode 0644; it carries the secrets layer and must be 0600",
        );
}

#[test]
fn two_disk_builds_are_the_same_bytes_and_a_generic_disk_holds_no_secret() {
    let (lab, server) = disk_lab();
    build_node(&lab, &server, "a", &["--format", "disk"]);
    build_node(&lab, &server, "b", &["--format", "disk"]);
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap();
    assert_eq!(read("a/node01/SHA256SUMS"), read("b/node01/SHA256SUMS"));
    assert!(read("a/node01/SHA256SUMS").contains("  disk/disk.raw\n"));
    build(&lab, &server, &["verify", "a/node01", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
    build(
        &lab,
        &server,
        &["node", "--role", "worker", "--out", "g", "--format", "disk"],
        &[],
    )
    .assert_ok();
    let raw = lab.path("g/worker/disk/disk.raw");
    assert_eq!(mode(&raw), 0o644);
    let names = judge("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@1M", raw.display()))
        .arg("::/imgbuild")
        .env("MTOOLS_SKIP_CHECK", "1")
        .ok();
    assert!(
        names.contains("initrd.img") && !names.contains("secrets"),
        "{names}"
    );
    // it takes the node's own layers from the node's seed attached to it
    let entry = String::from_utf8(esp_file(&raw, "loader/entries/imgbuild.conf")).unwrap();
    assert!(
        entry.contains(" imgbuild.seed=LABEL=cidata imgbuild.esp=PARTUUID="),
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
}

//! `--compression zstd` (issue 18): the same node as with gzip, in zstd
//! layers and PXE files, judged by zstd, GNU tar, cpio and umoci; each
//! layer's PXE segment one zstd frame (the kernel unpacks one frame per
//! compressed member and wants the cpio at an entry's end there:
//! `lib/decompress_unzstd.c`, `init/initramfs.c`); the bytes the same
//! whatever `--jobs`; verify and `verify --rebuild` accept it.

use std::path::{Path, PathBuf};

use crate::build::{build, synthetic};
use crate::judge::{judge, judge_sh};
use crate::lab::Lab;
use crate::pxe::{base_tar, build_node, mode, whole};

/// The files of `dir` whose names end with `suffix`, sorted.
fn ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// `tar -tv` of `file` (GNU tar; `--zstd` runs zstd): every entry with its
/// mode, owner, size and time.
fn tar_listing(file: &Path, zstd: bool) -> String {
    let how = if zstd { "--zstd" } else { "-z" };
    judge("tar")
        .args([how, "--numeric-owner", "-tvf"])
        .arg(file)
        .ok()
}

/// What `cat FILES | <decompress> | cpio -it` lists.
fn cpio_names(files: &[PathBuf], decompress: &str) -> String {
    let files: Vec<String> = files.iter().map(|p| format!("'{}'", p.display())).collect();
    judge_sh(&format!(
        "cat {} | {decompress} | cpio -it --quiet",
        files.join(" ")
    ))
    .ok()
}

/// How many zstd frames `zstd -lv` counts in `file`.
fn zstd_frames(file: &Path) -> usize {
    let out = judge("zstd").args(["-l", "-v"]).arg(file).ok();
    out.lines()
        .find_map(|l| l.trim().strip_prefix("# Zstandard Frames:"))
        .unwrap_or_else(|| panic!("zstd -lv {}: {out}", file.display()))
        .trim()
        .parse()
        .unwrap()
}

fn whole_lab() -> (Lab, crate::http::Server) {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    (lab, server)
}

#[test]
fn a_zstd_node_holds_the_same_files_as_a_gzip_one() {
    let (lab, server) = whole_lab();
    let formats = ["--format", "layers,pxe,oci"];
    build_node(&lab, &server, "g", &formats);
    let mut z = vec!["--compression", "zstd"];
    z.extend_from_slice(&formats);
    build_node(&lab, &server, "z", &z);
    let (g, z) = (lab.path("g/node01"), lab.path("z/node01"));
    let (gz, zst) = (
        ending(&g.join("layers"), ".tar.gz"),
        ending(&z.join("layers"), ".tar.zst"),
    );
    assert!(ending(&z.join("layers"), ".tar.gz").is_empty());
    assert_eq!(gz.len(), zst.len(), "{zst:?}");
    for (a, b) in gz.iter().zip(&zst) {
        judge("zstd").arg("-t").arg(b).ok();
        assert_eq!(
            tar_listing(a, false),
            tar_listing(b, true),
            "{}",
            b.display()
        );
    }
    // the tar inside is the very same: image.json's diff_ids agree
    let diff_ids = |d: &Path| -> Vec<String> {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("image.json")).unwrap()).unwrap();
        let layers = j["layers"].as_array().unwrap().iter();
        layers
            .map(|l| l["diff_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(diff_ids(&g), diff_ids(&z));
    // the whole node as boot.ipxe loads it (the shared segments, then the
    // node's initrd) unpacks to the same names, in the same order
    let pxe = z.join("pxe");
    let (gz, zst) = (crate::pxe::loaded(&g), crate::pxe::loaded(&z));
    assert!(
        zst.iter()
            .all(|f| f.to_string_lossy().ends_with(".cpio.zst")),
        "{zst:?}"
    );
    assert_eq!(cpio_names(&gz, "zcat"), cpio_names(&zst, "zstdcat"));
    assert_eq!(
        cpio_names(&[g.join("pxe/secrets.cpio.gz")], "zcat"),
        cpio_names(&[pxe.join("secrets.cpio.zst")], "zstdcat")
    );
    assert_eq!(mode(&pxe.join("secrets.cpio.zst")), 0o600);
    let ipxe = std::fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert!(
        ipxe.contains("initrd=initrd.cpio.zst ") && ipxe.contains("pxe/initrd.cpio.zst"),
        "{ipxe}"
    );
    oci_layers_are_zstd_and_unpack(&lab, &z);
    lab.imgbuild(&["verify", "z/node01"]).assert_ok();
    build(&lab, &server, &["verify", "z/node01", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
}

/// The OCI manifest names every layer `tar+zstd`, and a real containerd
/// imports the image and unpacks its layers into its snapshotter.
fn oci_layers_are_zstd_and_unpack(lab: &Lab, dir: &Path) {
    let raw = judge("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:node01", dir.join("oci").display()))
        .ok_bytes();
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{m}"
        );
    }
    let archive = lab.path("node01-oci.tar");
    judge("tar")
        .arg("-C")
        .arg(dir.join("oci"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .ok();
    let c = crate::containerd::Containerd::start();
    let out = c
        .ctr()
        .args(["images", "import", "--index-name", "imgbuild/node01"])
        .arg(&archive)
        .ok();
    assert!(out.contains("unpacking"), "{out}");
    let check = c.ctr().args(["images", "check"]).ok();
    assert!(
        check
            .lines()
            .any(|l| l.contains("node01") && l.contains("complete")),
        "{check}"
    );
}

#[test]
fn zstd_bytes_do_not_depend_on_jobs_and_each_segment_is_one_frame() {
    let (lab, server) = whole_lab();
    let url = ["--seed-layers", "url=http://10.0.0.5/layers"];
    let zstd = ["--compression", "zstd", "--format", "layers,pxe"];
    for (jobs, out) in [("1", "one"), ("2", "two")] {
        let mut args = vec!["--jobs", jobs, "node", "--role", "node01", "--out", out];
        args.extend_from_slice(&zstd);
        args.extend_from_slice(&url);
        build(&lab, &server, &args, &[]).assert_ok();
    }
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap();
    assert_eq!(read("one/node01/SHA256SUMS"), read("two/node01/SHA256SUMS"));
    let segments = ending(&lab.path("one/node01/pxe/segments"), ".cpio.zst");
    assert!(!segments.is_empty());
    for s in &segments {
        assert_eq!(zstd_frames(s), 1, "{}", s.display());
    }
    let ipxe = read("one/node01/pxe/boot.ipxe");
    assert!(
        ipxe.contains("initrd ${layers-url}/sha256/") && ipxe.contains(".cpio.zst "),
        "{ipxe}"
    );
    lab.imgbuild(&["verify", "one/node01"]).assert_ok();
}

#[test]
fn a_zstd_seed_extracts_with_tar_zstd_and_stops_without_zstd() {
    let (lab, server) = synthetic();
    let args = ["--compression", "zstd", "--format", "layers,cloud-init"];
    build_node(&lab, &server, "z", &args);
    let dir = lab.path("z/node01");
    let user_data = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    // the seed carries the zstd layers: GNU tar lists each from the ISO
    let iso = dir.join("cloud-init/seed.iso");
    let names: Vec<String> = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".tar.zst")), "{names:?}");
    for name in &names {
        let layer = judge("isoinfo")
            .args(["-J", "-x", &format!("/layers/{name};1"), "-i"])
            .arg(&iso)
            .ok_bytes();
        let copy = lab.path("from-iso.tar.zst");
        std::fs::write(&copy, layer).unwrap();
        assert_eq!(
            tar_listing(&copy, true),
            tar_listing(&dir.join("layers").join(name), true)
        );
    }
    let extracts: Vec<&str> = user_data.lines().filter(|l| l.contains("tar ")).collect();
    assert!(
        !extracts.is_empty()
            && extracts
                .iter()
                .all(|l| l.contains("tar --zstd -xpf ") && l.contains(".tar.zst -C / ")),
        "{user_data}"
    );
    // the guard, run by dash: on a machine without zstd it stops and says
    // why; with zstd it lets the script go on
    let guard = user_data
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("command -v zstd >/dev/null || {")
        })
        .unwrap_or_else(|| panic!("no zstd guard in\n{user_data}"))
        .trim();
    let without = judge("env")
        .args(["PATH=/nonexistent", "/usr/bin/dash", "-c"])
        .arg(format!("{guard}\necho went on"))
        .output();
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success()
            && err.contains("this seed's layers are zstd")
            && !String::from_utf8_lossy(&without.stdout).contains("went on"),
        "{err}"
    );
    let with = judge("dash")
        .arg("-c")
        .arg(format!("{guard}\necho went on"))
        .ok();
    assert!(with.contains("went on"), "{with}");
    assert!(!user_data.contains(".tar.gz"), "{user_data}");
    lab.imgbuild(&["verify", "z/node01"]).assert_ok();
}

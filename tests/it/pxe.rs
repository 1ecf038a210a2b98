//! A whole node's PXE files (issue 15): the `/init` script judged by dash
//! (its syntax, and a run in a chroot with `mount` and `switch_root`
//! stubbed), and, with a base OS pinned in `[os]`, the kernel, the initrd
//! without secrets, the secrets apart, boot.ipxe, verify and two builds of
//! the same bytes.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::artifacts::targz;
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
    for applet in ["cp", "mkdir", "cat", "find", "sort"] {
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
/// user); its output and the stubs' log, or None when chroot is refused.
fn run_init(root: &Path) -> Option<(String, String)> {
    let out = judge("unshare")
        .args(["--map-root-user", "chroot"])
        .arg(root)
        .args(["/bin/sh", "/init"])
        .output();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && text.contains("unshare") {
        eprintln!("skipped: cannot chroot here: {text}");
        return None;
    }
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
        lines[..4],
        [
            "mount -t proc proc /proc",
            "mount -t devtmpfs devtmpfs /dev",
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

// ---- a whole node: needs `[os] base` in pins.toml (issue 15's base-OS
// layers, built on another branch). Run after the merge with
// `cargo test --test it pxe:: -- --include-ignored`.

const KERNEL: &[u8] = b"imgbuild test kernel 6.1.0";
const BASE_URL: &str = "https://deb.example/imgbuild-test/debian-base-12-amd64.tar.gz";

/// A root filesystem archive: a kernel below /boot (when `kernel`) and a
/// few files of a Debian root.
fn base_tar(kernel: bool) -> Vec<u8> {
    let mut entries = vec![
        ("etc/os-release".to_string(), b"ID=debian\n".to_vec()),
        ("usr/lib/os-release".to_string(), b"ID=debian\n".to_vec()),
        ("etc/debian_version".to_string(), b"12.0\n".to_vec()),
        ("boot/config-6.1.0-test".to_string(), b"CONFIG=y\n".to_vec()),
    ];
    if kernel {
        entries.push(("boot/vmlinuz-6.1.0-test".to_string(), KERNEL.to_vec()));
    }
    targz(&entries)
}

/// The lab with `base` pinned as its `[os] base` (served behind the
/// mirror) and no role's os_packages (they would need `[[deb]]` pins).
fn whole(lab: Lab, server: &Server, base: &[u8]) -> Lab {
    let pins = lab.path("manifests/pins.toml");
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&pins).unwrap()).unwrap();
    let artifacts = doc["artifact"].as_array_mut().unwrap();
    let source = artifacts[0]["source"].clone();
    let mut pin = toml::Table::new();
    pin.insert("name".into(), "debian-base".into());
    pin.insert("version".into(), "12-test".into());
    pin.insert("arch".into(), "amd64".into());
    pin.insert("url".into(), BASE_URL.into());
    pin.insert(
        "sha256".into(),
        hex::encode(sha2::Sha256::digest(base)).into(),
    );
    pin.insert("source".into(), source);
    artifacts.push(toml::Value::Table(pin));
    let mut os = toml::Table::new();
    os.insert("base".into(), "debian-base".into());
    doc.insert("os".into(), toml::Value::Table(os));
    std::fs::write(&pins, toml::to_string(&doc).unwrap()).unwrap();
    let host_path = BASE_URL.split_once("://").unwrap().1;
    server.put(&format!("mirror/{host_path}"), base.to_vec());
    let roles = lab.path("manifests/roles");
    for e in std::fs::read_dir(&roles).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("os_packages:"))
            .collect();
        std::fs::write(&p, kept.join("\n") + "\n").unwrap();
    }
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

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Builds node01 into `out` with `extra` arguments.
fn build_node(lab: &Lab, server: &Server, out: &str, extra: &[&str]) {
    let mut args = vec!["node", "--role", "node01", "--out", out];
    args.extend_from_slice(extra);
    build(lab, server, &args, &[]).assert_ok();
}

#[test]
#[ignore = "needs `[os] base` in pins.toml (the base-OS layers of issue 15)"]
fn a_whole_node_is_its_kernel_an_initrd_without_secrets_and_the_secrets_apart() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build_node(&lab, &server, "a", &[]);
    let dir = lab.path("a/node01");
    let pxe = dir.join("pxe");
    assert_eq!(std::fs::read(pxe.join("vmlinuz")).unwrap(), KERNEL);
    assert_eq!(mode(&pxe.join("vmlinuz")), 0o644);
    assert!(!pxe.join("overlay.cpio.gz").exists());
    let initrd = cpio_names(&[pxe.join("initrd.cpio.gz")]);
    for f in [
        "init",
        "newroot",
        "boot/vmlinuz-6.1.0-test",
        "etc/os-release",
        "etc/hosts",
    ] {
        assert!(
            initrd.iter().any(|n| n == f),
            "{f} not in the initrd: {initrd:?}"
        );
    }
    // /init comes after the shared layers: the base's files are unpacked first
    let at = |f: &str| initrd.iter().position(|n| n == f).unwrap();
    assert!(at("etc/os-release") < at("init"), "{initrd:?}");
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
        ipxe.contains("kernel ${base-url}/pxe/vmlinuz initrd=initrd.cpio.gz console=tty0 ")
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
    ] {
        assert!(sums.contains(&format!("  pxe/{f}\n")), "{f}: {sums}");
    }
    lab.imgbuild(&["verify", "a/node01"]).assert_ok();
}

#[test]
#[ignore = "needs `[os] base` in pins.toml (the base-OS layers of issue 15)"]
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
    lab.imgbuild(&["verify", "a/node01"])
        .assert_failed()
        .assert_stderr_has("pxe/secrets.cpio.gz: mode 0644");
}

#[test]
#[ignore = "needs `[os] base` in pins.toml (the base-OS layers of issue 15)"]
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
    let mut served: Vec<PathBuf> = ipxe
        .lines()
        .filter_map(|l| l.strip_prefix("initrd ${layers-url}/sha256/"))
        .map(|l| dir.join("pxe/segments").join(l.split_once(' ').unwrap().1))
        .collect();
    assert!(
        served[0].to_string_lossy().ends_with("-os.cpio.gz"),
        "{ipxe}"
    );
    served.push(dir.join("pxe/initrd.cpio.gz"));
    // the segments then the node's initrd unpack as the embedded initrd
    assert_eq!(
        cpio_names(&served),
        cpio_names(&[lab.path("embed/node01/pxe/initrd.cpio.gz")])
    );
    lab.imgbuild(&["verify", "url/node01"]).assert_ok();
}

#[test]
#[ignore = "needs `[os] base` in pins.toml (the base-OS layers of issue 15)"]
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
    .assert_stderr_has("the os layer 00-os has no kernel");
}

//! The stock-image path (issue 16): with an `[os]` pinned, node01's seed
//! carries its OS packages as the pinned `.deb`s (the roles' and the pinned
//! packages they depend on, not `[os] packages` nothing needs), and its
//! first-boot script, run in a chroot of a real Debian 12 root (mmdebstrap
//! `--variant=minbase`, made once and copied per test) with the root's own
//! dash, dpkg, sha256sum and tar, installs them with dpkg before any unit is
//! enabled; a second run changes nothing; a rebuilt seed installs the
//! changed package alone and restarts the services; another release and a
//! tampered `.deb` are refused before anything changes. The seed's files
//! are read out of seed.iso by isoinfo; `systemctl` and `sysctl` are stand-ins that log, with dpkg's
//! view of nftables at the moment they are called.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::build::{build, synthetic};
use crate::http::Server;
use crate::judge::judge;
use crate::lab::Lab;
use crate::pxe::{deb_control, deb_with, pin, root_targz, whole};
use crate::seed_script::apply_layers;

/// The real packages pinned: node01's `os_packages` (mount, procps,
/// nftables), then, in `[os] packages`, what they need that a minbase root
/// lacks and three it has at the same version (libc6, libmd0, and
/// libgmp10, whose version has an epoch), which the script leaves alone.
const PACKAGES: [&str; 15] = [
    "mount",
    "procps",
    "nftables",
    "libnftables1",
    "libedit2",
    "libjansson4",
    "libmnl0",
    "libnftnl11",
    "libxtables12",
    "libproc2-0",
    "libncursesw6",
    "libbsd0",
    "libc6",
    "libmd0",
    "libgmp10",
];
/// A stand-in in `[os] packages` that no role needs: never in the seed.
const EXTRA: &str = "imgbuild-test-extra";
/// A stand-in in the base role's `os_packages` whose version a rebuilt
/// seed changes.
const TOOL: &str = "imgbuild-test-tool";

fn tmpdir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// This machine's release codename and Debian apt sources (as
/// scripts/vm/base-root takes them).
fn apt_sources() -> (String, Vec<PathBuf>) {
    let rel = std::fs::read_to_string("/etc/os-release").unwrap();
    let suite = rel
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    for e in std::fs::read_dir("/etc/apt/sources.list.d").unwrap() {
        files.push(e.unwrap().path());
    }
    files.retain(|f| {
        let name = f.to_string_lossy();
        let text = std::fs::read_to_string(f).unwrap_or_default();
        (name.ends_with(".list") || name.ends_with(".sources"))
            && text.contains("debian")
            && text
                .lines()
                .any(|l| l.trim_start().starts_with("deb ") || l.starts_with("Types:"))
    });
    (suite, files)
}

/// A Debian minbase root made by mmdebstrap from this machine's apt
/// sources, once (cached under cargo's target tmpdir): its tar, the
/// pinned base, and its tree, copied per test as the stock machine.
fn minbase() -> &'static (PathBuf, PathBuf) {
    static ROOT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tmpdir().join("stock-minbase");
        let (tar, root) = (dir.join("root.tar"), dir.join("root"));
        if !root.join("etc/os-release").exists() {
            let tmp = tmpdir().join(format!("stock-minbase.tmp{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(tmp.join("root")).unwrap();
            let (suite, sources) = apt_sources();
            judge("mmdebstrap")
                .args(["--variant=minbase", "--mode=root", "--format=tar", "-q"])
                .arg(&suite)
                .arg(tmp.join("root.tar"))
                .args(&sources)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .ok();
            judge("tar")
                .args(["-xpf"])
                .arg(tmp.join("root.tar"))
                .arg("--numeric-owner")
                .arg("-C")
                .arg(tmp.join("root"))
                .ok();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        (tar, root)
    })
}

/// A package downloaded with apt: its pin's fields and its file.
struct Deb {
    package: String,
    version: String,
    arch: String,
    file: PathBuf,
}

/// Every package of [`PACKAGES`], downloaded once per test run.
fn debs() -> &'static [Deb] {
    static DEBS: OnceLock<Vec<Deb>> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir = tmpdir().join("stock-debs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        judge("apt-get")
            .arg("download")
            .args(PACKAGES)
            .current_dir(&dir)
            .ok();
        let mut debs: Vec<Deb> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let file = e.unwrap().path();
                let field = |f: &str| {
                    judge("dpkg-deb")
                        .arg("-f")
                        .arg(&file)
                        .arg(f)
                        .ok()
                        .trim()
                        .to_string()
                };
                Deb {
                    package: field("Package"),
                    version: field("Version"),
                    arch: field("Architecture"),
                    file,
                }
            })
            .collect();
        debs.sort_by(|a, b| a.package.cmp(&b.package));
        assert_eq!(debs.len(), PACKAGES.len());
        debs
    })
}

/// A `file://` pin table (the fetch reads the file where it lies).
fn file_pin(fields: &[(&str, &str)], file: &Path) -> toml::Value {
    let mut t = toml::Table::new();
    for (k, v) in fields {
        t.insert((*k).into(), (*v).into());
    }
    let sha = hex::encode(Sha256::digest(std::fs::read(file).unwrap()));
    t.insert("url".into(), format!("file://{}", file.display()).into());
    t.insert("sha256".into(), sha.into());
    t.insert("source".into(), "tests/it/stock.rs".into());
    toml::Value::Table(t)
}

/// A stand-in `.deb` of [`TOOL`] at `version`, holding its version in
/// `/usr/share/imgbuild-test-tool/version`; version 3 depends on a
/// package that is nowhere.
fn tool_deb(version: &str) -> Vec<u8> {
    let depends = if version.starts_with('3') {
        "Depends: imgbuild-test-missing\n"
    } else {
        ""
    };
    deb_control(
        TOOL,
        version,
        depends,
        &[
            ("usr/share/imgbuild-test-tool/", b""),
            ("usr/share/imgbuild-test-tool/version", version.as_bytes()),
        ],
    )
}

/// The lab with the minbase root as its `[os]` base, the real packages,
/// [`EXTRA`] in `[os] packages`, and [`TOOL`] at `tool` in the base role's
/// `os_packages`.
fn stock_lab(tool: &str) -> (Lab, Server) {
    let (lab, server) = synthetic();
    let lab = lab.edit(
        "roles/base.yaml",
        "os_packages: [mount, procps]",
        "os_packages: [mount, procps, imgbuild-test-tool]",
    );
    pin_tool(&lab, &server, tool);
    (lab, server)
}

/// Writes pins.toml: the lab's, `[os]`, the base, the real packages and
/// the stand-ins ([`TOOL`] at `tool`).
fn pin_tool(lab: &Lab, server: &Server, tool: &str) {
    let pins = lab.path("manifests/pins.toml");
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&pins).unwrap()).unwrap();
    doc.remove("deb");
    let artifacts = doc.get_mut("artifact").unwrap().as_array_mut().unwrap();
    artifacts.retain(|a| a["name"].as_str() != Some("debian-base"));
    let base = [
        ("name", "debian-base"),
        ("version", "12-minbase"),
        ("arch", "amd64"),
    ];
    let base = file_pin(&base, &minbase().0);
    doc.get_mut("artifact")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(base);
    let mut pinned: Vec<toml::Value> = debs()
        .iter()
        .map(|d| {
            let fields = [
                ("name", d.package.as_str()),
                ("version", d.version.as_str()),
                ("arch", d.arch.as_str()),
            ];
            file_pin(&fields, &d.file)
        })
        .collect();
    let source = toml::Value::from("tests/it/stock.rs: a stand-in");
    // the lb role's packages (master01 is not built here) and the stand-ins
    let mut stand_ins: Vec<(&str, &str, Vec<u8>)> = ["haproxy", "keepalived", "curl", EXTRA]
        .into_iter()
        .map(|p| (p, "1.0-test", deb_with(p, "1.0-test", &[])))
        .collect();
    stand_ins.push((TOOL, tool, tool_deb(tool)));
    for (package, version, bytes) in stand_ins {
        let url = format!("https://deb.example/stock/{package}_{version}_amd64.deb");
        let fields = [
            ("name", package),
            ("version", version),
            ("arch", "amd64"),
            ("url", url.as_str()),
        ];
        pinned.push(pin(server, &source, &fields, &bytes));
    }
    doc.insert("deb".into(), toml::Value::Array(pinned));
    let mut os = toml::Table::new();
    os.insert("base".into(), "debian-base".into());
    // the libraries are every node's (the immutable image holds the pins
    // alone); the seed takes them because the roles' packages depend on them
    let mut packages: Vec<toml::Value> = PACKAGES[3..].iter().map(|&p| p.into()).collect();
    packages.push(EXTRA.into());
    os.insert("packages".into(), toml::Value::Array(packages));
    doc.insert("os".into(), toml::Value::Table(os));
    std::fs::write(&pins, toml::to_string(&doc).unwrap()).unwrap();
}

/// Builds node01's seed into `out`; returns its directory.
fn build_seed(lab: &Lab, server: &Server, out: &str) -> PathBuf {
    let args = ["node", "--role", "node01", "--format", "cloud-init"];
    let mut args = args.to_vec();
    args.extend(["--out", out]);
    build(lab, server, &args, &[]).assert_ok();
    lab.path(&format!("{out}/node01"))
}

/// A copy of the minbase root, the stock machine: `/dev/console` a file
/// (the test reads what the script says on the console), the stand-ins
/// in `/usr/local/sbin`.
fn stock_machine(lab: &Lab, name: &str) -> PathBuf {
    let root = lab.path(name);
    judge("cp").arg("-a").arg(&minbase().1).arg(&root).ok();
    std::fs::remove_file(root.join("dev/console")).unwrap();
    std::fs::write(root.join("dev/console"), "").unwrap();
    let sbin = root.join("usr/local/sbin");
    for stub in ["systemctl", "sysctl"] {
        let body = format!(
            "#!/bin/sh\necho \"{stub} $* [nftables: $(dpkg-query -W -f='${{db:Status-Abbrev}}${{Version}}' nftables 2>/dev/null)]\" >>/calls\n"
        );
        std::fs::write(sbin.join(stub), body).unwrap();
        judge("chmod").arg("0755").arg(sbin.join(stub)).ok();
    }
    root
}

/// The seed's files as isoinfo reads seed.iso (by Joliet name), copied
/// into a directory the test may damage.
fn seed_files(lab: &Lab, dir: &Path, name: &str) -> PathBuf {
    let copy = lab.path(name);
    let iso = dir.join("cloud-init/seed.iso");
    let listing = judge("isoinfo").args(["-J", "-f", "-i"]).arg(&iso).ok();
    for path in listing.lines().filter(|p| p.contains('.')) {
        // the version suffix the kernel's isofs drops too
        let to = copy.join(path.trim_start_matches('/').trim_end_matches(";1"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let bytes = judge("isoinfo")
            .args(["-J", "-x", path, "-i"])
            .arg(&iso)
            .ok_bytes();
        std::fs::write(to, bytes).unwrap();
    }
    copy
}

/// What a run of the script did.
struct Boot {
    ok: bool,
    stderr: String,
    console: String,
    calls: String,
}

/// Runs node01's first-boot `script` in a chroot of `root` with `seed`
/// mounted where it mounts the seed, in namespaces of its own (mounts,
/// network, host name): the root's own dash, dpkg, sha256sum and tar.
fn boot(root: &Path, seed: &Path, script: &str) -> Boot {
    std::fs::write(root.join("apply-layers"), script).unwrap();
    let _ = std::fs::remove_file(root.join("calls"));
    std::fs::write(root.join("dev/console"), "").unwrap();
    let setup = format!(
        "set -e\nr='{r}'\nmount -t proc proc \"$r/proc\"\n\
         mkdir -p \"$r/run/imgbuild/seed\"\nmount --bind '{seed}' \"$r/run/imgbuild/seed\"\n\
         exec chroot \"$r\" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh /apply-layers\n",
        r = root.display(),
        seed = seed.display()
    );
    let o = judge("unshare")
        .args(["--mount", "--net", "--uts", "--propagation", "private"])
        .args(["sh", "-c", &setup])
        .output();
    Boot {
        ok: o.status.success(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        console: std::fs::read_to_string(root.join("dev/console")).unwrap_or_default(),
        calls: std::fs::read_to_string(root.join("calls")).unwrap_or_default(),
    }
}

/// dpkg's view of the root: `package version status` lines.
fn installed(root: &Path) -> String {
    judge("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"])
        .ok()
}

/// The `.deb` file names of a seed.
fn seed_debs(seed: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(seed.join("debs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_stock_image_installs_the_seeds_debs_with_dpkg_before_any_unit_and_a_second_boot_changes_nothing()
 {
    let (lab, server) = stock_lab("1.0-test");
    let dir = build_seed(&lab, &server, "out");
    let seed = seed_files(&lab, &dir, "seed");
    // the roles' packages and their pinned dependencies; not [os] packages
    let names = seed_debs(&seed);
    assert!(!names.iter().any(|n| n.starts_with(EXTRA)), "{names:?}");
    for d in debs() {
        let version = d.version.split_once(':').map_or(&*d.version, |v| v.1);
        let name = format!("{}_{version}_{}.deb", d.package, d.arch);
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let root = stock_machine(&lab, "root");
    let before = installed(&root);
    let script = apply_layers(&dir);
    let b = boot(&root, &seed, &script);
    assert!(b.ok, "{}\n{}", b.stderr, b.calls);
    let after = installed(&root);
    for d in debs() {
        let line = format!("{} {} ii \n", d.package, d.version);
        assert!(after.contains(&line), "{line} not in\n{after}");
    }
    assert!(after.contains(&format!("{TOOL} 1.0-test ii \n")), "{after}");
    assert!(!after.contains(EXTRA), "{after}");
    // one dpkg call, of the packages not installed at their version
    let log = std::fs::read_to_string(root.join("run/imgbuild/dpkg.log")).unwrap_or_default();
    for d in debs() {
        let had = before.contains(&format!("{} {} ii \n", d.package, d.version));
        let unpacked = [" (", ":"]
            .iter()
            .any(|after| log.contains(&format!("Unpacking {}{after}", d.package)));
        assert_eq!(unpacked, !had, "{}: {log}", d.package);
    }
    // every unit call came after nftables was installed, none started by dpkg
    assert!(b.calls.contains("systemctl enable "), "{}", b.calls);
    assert!(
        b.calls.lines().all(|l| l.ends_with(&format!(
            "[nftables: ii {}]",
            debs()
                .iter()
                .find(|d| d.package == "nftables")
                .unwrap()
                .version
        ))),
        "{}",
        b.calls
    );
    assert!(!root.join("usr/sbin/policy-rc.d").exists());
    assert!(root.join("etc/crictl.yaml").is_file(), "the layers");
    let status = std::fs::read(root.join("var/lib/dpkg/status")).unwrap();
    // a second boot with the same seed: nothing
    let b = boot(&root, &seed, &script);
    assert!(b.ok, "{}", b.stderr);
    assert_eq!(b.calls, "", "a second run must change nothing");
    assert_eq!(
        std::fs::read(root.join("var/lib/dpkg/status")).unwrap(),
        status
    );
}

#[test]
fn a_rebuilt_seed_installs_the_changed_package_alone_and_restarts_the_services() {
    let (lab, server) = stock_lab("1.0-test");
    let dir = build_seed(&lab, &server, "one");
    let root = stock_machine(&lab, "root");
    let b = boot(&root, &seed_files(&lab, &dir, "seed1"), &apply_layers(&dir));
    assert!(b.ok, "{}", b.stderr);
    // the tool at 2.0, a layer file changed
    pin_tool(&lab, &server, "2.0-test");
    let crictl = lab.path("layers/worker/etc/crictl.yaml");
    let text = std::fs::read_to_string(&crictl).unwrap() + "# changed\n";
    std::fs::write(&crictl, &text).unwrap();
    let dir = build_seed(&lab, &server, "two");
    let b = boot(&root, &seed_files(&lab, &dir, "seed2"), &apply_layers(&dir));
    assert!(b.ok, "{}\n{}", b.stderr, b.calls);
    let log = std::fs::read_to_string(root.join("run/imgbuild/dpkg.log")).unwrap();
    let unpacked: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("Unpacking "))
        .collect();
    assert_eq!(
        unpacked,
        [format!("Unpacking {TOOL} (2.0-test) over (1.0-test) ...")],
        "{log}"
    );
    let version = root.join("usr/share/imgbuild-test-tool/version");
    assert_eq!(std::fs::read_to_string(version).unwrap(), "2.0-test");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/crictl.yaml")).unwrap(),
        text
    );
    assert!(
        b.calls
            .contains("systemctl restart --no-block containerd.service"),
        "{}",
        b.calls
    );
}

#[test]
fn another_release_or_a_tampered_deb_is_refused_on_the_console_before_anything_changes() {
    let (lab, server) = stock_lab("1.0-test");
    let dir = build_seed(&lab, &server, "out");
    let seed = seed_files(&lab, &dir, "seed");
    let script = apply_layers(&dir);
    let root = stock_machine(&lab, "root");
    let status = std::fs::read(root.join("var/lib/dpkg/status")).unwrap();
    let nothing_changed = |b: &Boot| {
        assert!(!b.ok);
        assert_eq!(b.calls, "");
        assert_eq!(
            std::fs::read(root.join("var/lib/dpkg/status")).unwrap(),
            status
        );
        assert!(!root.join("var/lib/imgbuild").exists());
        assert!(!root.join("etc/crictl.yaml").exists());
    };
    // Debian 11 running
    let release = root.join("usr/lib/os-release");
    let twelve = std::fs::read_to_string(&release).unwrap();
    std::fs::write(
        &release,
        twelve.replace("VERSION_ID=\"12\"", "VERSION_ID=\"11\""),
    )
    .unwrap();
    let b = boot(&root, &seed, &script);
    let want = "imgbuild: node01: this machine runs debian 11 (ID and VERSION_ID of /etc/os-release), but the seed's packages are pinned for debian 12 (the base debian-base 12-minbase); boot node01 from a debian 12 image. Nothing was changed.";
    assert!(b.console.contains(want), "{}", b.console);
    assert!(b.stderr.contains(want), "{}", b.stderr);
    nothing_changed(&b);
    std::fs::write(&release, twelve).unwrap();
    // one byte of a deb flipped
    let nft = seed_debs(&seed)
        .into_iter()
        .find(|n| n.starts_with("nftables_"))
        .unwrap();
    let file = seed.join("debs").join(&nft);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let b = boot(&root, &seed, &script);
    let want = format!(
        "imgbuild: node01: the seed's files debs/{nft} do not match the sha256 its script names: a damaged or tampered seed. Nothing was changed."
    );
    assert!(b.console.contains(&want), "{}", b.console);
    nothing_changed(&b);
}

#[test]
fn a_dpkg_failure_stops_the_script_on_the_console_before_any_layer() {
    let (lab, server) = stock_lab("3.0-test");
    let dir = build_seed(&lab, &server, "out");
    let root = stock_machine(&lab, "root");
    let b = boot(&root, &seed_files(&lab, &dir, "seed"), &apply_layers(&dir));
    assert!(!b.ok);
    let want = format!(
        "imgbuild: node01: dpkg -i failed (exit 1) installing the seed's packages {TOOL}_3.0-test_amd64.deb libbsd0_"
    );
    assert!(b.console.contains(&want), "{}", b.console);
    assert!(
        b.console
            .contains("depends on imgbuild-test-missing; however:"),
        "{}\n{}",
        b.console,
        b.stderr
    );
    assert!(
        b.console
            .contains("None of the layers was applied; the next boot tries again."),
        "{}",
        b.console
    );
    assert_eq!(b.calls, "");
    assert!(!root.join("etc/crictl.yaml").exists());
    assert!(!root.join("var/lib/imgbuild").exists());
    assert!(!root.join("usr/sbin/policy-rc.d").exists());
}

#[test]
fn a_base_without_os_release_is_an_error_naming_it_when_a_seed_is_built() {
    let (lab, server) = synthetic();
    let base = root_targz(&[("etc/", b""), ("etc/debian_version", b"12.0\n")]);
    let lab = whole(lab, &server, &base);
    let args = ["node", "--role", "node01", "--format", "cloud-init"];
    build(&lab, &server, &args, &[])
        .assert_failed()
        .assert_stderr_has("cannot make the seed of node01 for a stock image")
        .assert_stderr_has(
            "the base debian-base 12-test has no /etc/os-release or /usr/lib/os-release with an ID",
        );
    // the immutable formats need no release check
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers"],
        &[],
    )
    .assert_ok();
}

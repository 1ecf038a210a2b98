//! The node OS (`[os]` and `[[deb]]`) on the lab cluster: a small Debian
//! root made of this machine's own files (dash, true, and every library
//! `ldd` names for them and for the packages' programs) as a `.tar.xz`, and
//! real packages fetched with `apt-get download` (their URLs and sha256 from
//! apt's index), all served by the test mirror. The plan shows the two OS
//! layers; the built `os` layer keeps the base's modes, owners and links,
//! materialises its hard link and drops its device; dpkg-query, judging the
//! unpacked root, reports the packages installed; systemd-sysusers reads
//! the users; the root check names a missing library and a missing unit
//! with their file and layer before anything is written; two builds give
//! the same bytes; verify passes. A failed download fails the test.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::build::{build, build_layers, synthetic};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::Lab;

/// The packages pinned: the lab roles' os_packages, and what nftables's
/// program needs that the base lacks (pinned as the worker's too).
const PACKAGES: [&str; 9] = [
    "mount",
    "procps",
    "haproxy",
    "keepalived",
    "curl",
    "nftables",
    "libnftables1",
    "libedit2",
    "libjansson4",
];
const MULTIARCH: &str = "x86_64-linux-gnu";
const BASE_URL: &str = "https://images.example.org/debian/bookworm/rootfs-amd64.tar.xz";
const SDE: u64 = 1_700_000_000;

/// One downloaded package: its pin and its bytes.
struct Deb {
    package: String,
    version: String,
    url: String,
    sha256: String,
    file: PathBuf,
}

/// Every package of [`PACKAGES`], downloaded once per test run.
fn debs() -> &'static [Deb] {
    static DEBS: OnceLock<Vec<Deb>> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("debs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uris = judge("apt-get")
            .args(["download", "--print-uris"])
            .args(PACKAGES)
            .current_dir(&dir)
            .ok();
        judge("apt-get")
            .arg("download")
            .args(PACKAGES)
            .current_dir(&dir)
            .ok();
        uris.lines().map(|l| deb_of(&dir, l)).collect()
    })
}

/// A `--print-uris` line: `'URL' FILE SIZE SHA256:HEX`.
fn deb_of(dir: &Path, line: &str) -> Deb {
    let mut words = line.split_whitespace();
    let url = words.next().unwrap().trim_matches('\'').to_string();
    let file = dir.join(words.next().unwrap());
    let sha256 = words
        .nth(1)
        .unwrap()
        .strip_prefix("SHA256:")
        .unwrap()
        .to_string();
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256, "{url}");
    let field = |f: &str| {
        judge("dpkg-deb")
            .args(["-f"])
            .arg(&file)
            .arg(f)
            .ok()
            .trim()
            .to_string()
    };
    Deb {
        package: field("Package"),
        version: field("Version"),
        url,
        sha256,
        file,
    }
}

/// A member of the test base.
enum Kind {
    Dir,
    File(Vec<u8>),
    Link(&'static str),
    Hard(&'static str),
    Char,
}

struct Member {
    path: String,
    kind: Kind,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
}

fn m(path: &str, kind: Kind, mode: u32) -> Member {
    Member {
        path: path.to_string(),
        kind,
        mode,
        owner: (0, 0),
        mtime: SDE - 100,
    }
}

/// The host's libraries that `ldd` names for `elf` (with the packages'
/// own libraries in `extracted` found there and left out), by name; and the
/// interpreter it names.
fn host_libraries(elf: &Path, extracted: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let own = format!(
        "{0}/usr/lib/{MULTIARCH}:{0}/lib/{MULTIARCH}",
        extracted.display()
    );
    let text = judge("ldd").arg(elf).env("LD_LIBRARY_PATH", own).ok();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            panic!(
                "{}: ldd: {line}; the host lacks a library the test base needs",
                elf.display()
            );
        }
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or_default(),
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') && !path.starts_with(&extracted.display().to_string()) {
            let real = std::fs::canonicalize(path).unwrap();
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(name, real);
        }
    }
}

/// Every ELF file below `dir`.
fn elves(dir: &Path) -> Vec<PathBuf> {
    crate::lab::files_below(dir)
        .into_iter()
        .filter(|p| {
            let meta = std::fs::symlink_metadata(p).unwrap();
            meta.is_file()
                && std::fs::File::open(p)
                    .and_then(|f| {
                        let mut head = [0u8; 4];
                        f.take(4).read_exact(&mut head)?;
                        Ok(head == *b"\x7fELF")
                    })
                    .unwrap_or(false)
        })
        .collect()
}

/// The libraries of the base: what dash, true and the packages' programs
/// need from this machine.
fn base_libraries() -> &'static BTreeMap<String, PathBuf> {
    static LIBS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    LIBS.get_or_init(|| {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let x = tmp.path().to_path_buf();
        for d in debs() {
            judge("dpkg-deb").arg("-x").arg(&d.file).arg(&x).ok();
        }
        let mut libs = BTreeMap::new();
        for elf in elves(&x)
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/usr/bin/dash"), Path::new("/usr/bin/true")])
        {
            host_libraries(elf, &x, &mut libs);
        }
        libs
    })
}

/// The test base's members, in archive order.
fn base_members(with_libc: bool) -> Vec<Member> {
    let mut v = base_tree();
    let host = |p: &str| Kind::File(std::fs::read(p).unwrap());
    v.push(m("./usr/bin/dash", host("/usr/bin/dash"), 0o755));
    v.push(m("./usr/bin/true", host("/usr/bin/true"), 0o755));
    v.push(m("./usr/bin/su-test", host("/usr/bin/true"), 0o4755));
    v.push(m("./usr/bin/true2", Kind::Hard("./usr/bin/true"), 0o755));
    v.push(m("./usr/bin/sh", Kind::Link("dash"), 0o777));
    for (name, path) in base_libraries() {
        if with_libc || name != "libc.so.6" {
            let file = Kind::File(std::fs::read(path).unwrap());
            v.push(m(&format!("./usr/lib/{MULTIARCH}/{name}"), file, 0o644));
        }
    }
    v.push(m(
        "./usr/lib64/ld-linux-x86-64.so.2",
        Kind::Link("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        0o777,
    ));
    v.extend(base_files());
    v
}

/// The base's directories (a sticky /tmp, a private /root) and its
/// merged-usr links.
fn base_tree() -> Vec<Member> {
    let mut v = Vec::new();
    for d in [
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
        "usr/lib/systemd",
        "usr/lib/systemd/system",
        "etc",
        "etc/ld.so.conf.d",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/multi-user.target.wants",
        "var",
        "var/lib",
        "var/lib/dpkg",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "boot",
        "dev",
    ] {
        v.push(m(&format!("./{d}/"), Kind::Dir, 0o755));
    }
    v.push(m("./tmp/", Kind::Dir, 0o1777));
    v.push(m("./root/", Kind::Dir, 0o700));
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        v.push(m(&format!("./{link}"), Kind::Link(target), 0o777));
    }
    v
}

/// The base's configuration, unit, kernel, dpkg status, device, and files
/// with an owner and mtimes of their own.
fn base_files() -> Vec<Member> {
    let text = |s: &str| Kind::File(s.as_bytes().to_vec());
    let mut v = vec![
        m(
            "./etc/ld.so.conf.d/x86_64-linux-gnu.conf",
            text(
                "/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
            ),
            0o644,
        ),
        m(
            "./usr/lib/systemd/system/base-test.service",
            text("[Service]\nExecStart=/usr/bin/true\n"),
            0o644,
        ),
        m(
            "./etc/systemd/system/multi-user.target.wants/base-test.service",
            Kind::Link("/usr/lib/systemd/system/base-test.service"),
            0o777,
        ),
        m("./boot/vmlinuz-test", text("not a kernel\n"), 0o644),
        m("./var/lib/dpkg/status", text(STATUS), 0o644),
        m("./dev/null", Kind::Char, 0o666),
    ];
    let mut owned = m("./var/lib/owned", text("owned\n"), 0o640);
    (owned.owner, owned.mtime) = ((100, 101), 1_000_000_000);
    v.push(owned);
    let mut late = m("./etc/late", text("after SOURCE_DATE_EPOCH\n"), 0o644);
    late.mtime = 2_000_000_000;
    v.push(late);
    v
}

const STATUS: &str = "Package: dash\nStatus: install ok installed\nPriority: required\nSection: shells\nInstalled-Size: 210\nMaintainer: Debian\nArchitecture: amd64\nVersion: 0.5.12-2\nDescription: POSIX-compliant shell\n\nPackage: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 12000\nMaintainer: Debian\nArchitecture: amd64\nMulti-Arch: same\nVersion: 2.36-9+deb12u10\nDescription: GNU C Library: Shared libraries\n";

/// The test base as a `.tar.xz`.
fn base_archive(with_libc: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for mem in base_members(with_libc) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mem.mode);
        h.set_uid(mem.owner.0);
        h.set_gid(mem.owner.1);
        h.set_mtime(mem.mtime);
        h.set_size(0);
        match mem.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, &mem.path, std::io::empty()).unwrap();
            }
            Kind::File(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, &mem.path, bytes.as_slice()).unwrap();
            }
            Kind::Link(t) | Kind::Hard(t) => {
                let hard = matches!(mem.kind, Kind::Hard(_));
                h.set_entry_type(if hard {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                b.append_link(&mut h, &mem.path, t).unwrap();
            }
            Kind::Char => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                b.append_data(&mut h, &mem.path, std::io::empty()).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), tar).unwrap();
    judge("xz")
        .args(["-0", "-T1", "-c"])
        .arg(tmp.path())
        .ok_bytes()
}

/// Where the mirror serves `url`.
fn mirror_path(url: &str) -> String {
    format!("mirror/{}", url.split_once("://").unwrap().1)
}

/// The lab cluster on the test base: `[os]`, the base's pin, a `[[deb]]`
/// for every package, the worker's nftables libraries in its os_packages.
pub(crate) fn os_lab(with_libc: bool) -> (Lab, Server) {
    let (lab, server) = synthetic();
    let base = base_archive(with_libc);
    let mut pins = format!(
        "\n[os]\nbase = \"debian-base\"\n\n[[artifact]]\nname = \"debian-base\"\nversion = \"12-test\"\narch = \"amd64\"\nurl = \"{BASE_URL}\"\nsha256 = \"{}\"\nsource = \"tests/it/base_os.rs: this machine's own files\"\n",
        hex::encode(Sha256::digest(&base))
    );
    server.put(&mirror_path(BASE_URL), base);
    for d in debs() {
        server.put(&mirror_path(&d.url), std::fs::read(&d.file).unwrap());
        let users = if d.package == "haproxy" {
            "users = ['u haproxy - \"haproxy\" /var/lib/haproxy']\n"
        } else {
            ""
        };
        pins.push_str(&format!(
            "\n[[deb]]\nname = \"{}\"\nversion = \"{}\"\narch = \"amd64\"\nurl = \"{}\"\nsha256 = \"{}\"\nsource = \"Debian bookworm Packages (apt-get download --print-uris)\"\n{users}",
            d.package, d.version, d.url, d.sha256
        ));
    }
    let text = lab.read("pins.toml") + &pins;
    std::fs::write(lab.path("manifests/pins.toml"), text).unwrap();
    let lab = lab.edit(
        "roles/worker.yaml",
        "os_packages: [nftables]",
        "os_packages: [nftables, libnftables1, libedit2, libjansson4]",
    );
    (lab, server)
}

/// Every member of a built layer: path -> (type, mode, uid, gid, mtime, size, link).
/// A member of a built layer: its type (`d`, `l`, `f`), mode, owner,
/// mtime, size and link target.
#[derive(Debug, Clone)]
struct Built {
    kind: char,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    size: u64,
    link: String,
}

fn members(layer: &Path) -> BTreeMap<String, Built> {
    let mut a = tar::Archive::new(GzDecoder::new(std::fs::File::open(layer).unwrap()));
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let t = match h.entry_type() {
            t if t.is_dir() => 'd',
            t if t.is_symlink() => 'l',
            t if t.is_file() => 'f',
            _ => '?',
        };
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let fields = Built {
            kind: t,
            mode: h.mode().unwrap(),
            owner: (h.uid().unwrap(), h.gid().unwrap()),
            mtime: h.mtime().unwrap(),
            size: h.size().unwrap(),
            link,
        };
        assert!(
            out.insert(path.clone(), fields).is_none(),
            "{path} twice in {}",
            layer.display()
        );
    }
    out
}

#[test]
fn the_plan_starts_with_the_os_and_its_packages() {
    let (lab, _server) = os_lab(true);
    let plan = lab.plan("master01").assert_ok().stdout();
    for want in [
        "00-os (1 files)",
        "archive debian-base 12-test: every member",
        "01-os-packages (",
        "deb haproxy ",
        "deb keepalived 1:",
        "/usr/lib/sysusers.d/imgbuild-haproxy.conf",
        "dpkg status of debian-base 12-test",
        "02-base (",
    ] {
        assert!(plan.contains(want), "the plan lacks `{want}`:\n{plan}");
    }
    let json = lab
        .imgbuild(&["plan", "--role", "node01", "--json"])
        .assert_ok()
        .stdout();
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    let kinds: Vec<&str> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..3], ["os", "os-packages", "base"], "{kinds:?}");
}

#[test]
fn a_node_on_the_base_os_builds_and_dpkg_knows_its_packages() {
    let (lab, server) = os_lab(true);
    build_layers(&lab, &server, "master01", "out");
    let dir = lab.path("out/master01");
    os_layer_keeps_the_base(&members(&dir.join("layers/00-os.tar.gz")));
    let packages = members(&dir.join("layers/01-os-packages.tar.gz"));
    for p in packages.keys() {
        assert!(
            !["bin/", "sbin/", "lib/", "lib64/"]
                .iter()
                .any(|l| p.starts_with(l)),
            "{p} bypasses the base's merged-usr link"
        );
    }
    for want in [
        "usr/sbin/haproxy",
        "usr/lib/systemd/system/haproxy.service",
        "var/lib/dpkg/info/haproxy.list",
        "var/lib/dpkg/status",
    ] {
        assert!(packages.contains_key(want), "01-os-packages lacks {want}");
    }
    let root = extract_os(&dir, &lab.path("root"));
    dpkg_reports_the_packages_installed(&root);
    let sysusers = judge("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg("--dry-run")
        .output();
    let said = String::from_utf8_lossy(&sysusers.stderr).into_owned()
        + &String::from_utf8_lossy(&sysusers.stdout);
    assert!(said.contains("Creating user 'haproxy'"), "{said}");
    build(&lab, &server, &["verify", "out/master01"], &[]).assert_ok();
}

/// 00-os: the base's members as they were (owners, setuid, sticky, links),
/// the hard link a file of its own, no device, mtimes clamped.
fn os_layer_keeps_the_base(os: &BTreeMap<String, Built>) {
    let get = |p: &str| {
        os.get(p)
            .unwrap_or_else(|| panic!("00-os lacks {p}"))
            .clone()
    };
    assert_eq!(get("usr/bin/su-test").mode, 0o4755);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(get("root").mode, 0o700);
    let owned = get("var/lib/owned");
    assert_eq!(
        (owned.mode, owned.owner, owned.mtime),
        (0o640, (100, 101), 1_000_000_000)
    );
    assert_eq!(
        get("etc/late").mtime,
        SDE,
        "an mtime after SOURCE_DATE_EPOCH is clamped"
    );
    assert_eq!(
        (get("lib").kind, get("lib").link.as_str()),
        ('l', "usr/lib")
    );
    let (true1, true2) = (get("usr/bin/true"), get("usr/bin/true2"));
    assert_eq!(
        (true2.kind, true2.size),
        ('f', true1.size),
        "the hard link is a copy of its file"
    );
    assert!(!os.contains_key("dev/null"), "the device node is skipped");
    assert!(os.contains_key("boot/vmlinuz-test"));
}

/// The OS layers extracted, in order, at `root`.
pub(crate) fn extract_os(dir: &Path, root: &Path) -> PathBuf {
    std::fs::create_dir_all(root).unwrap();
    for l in ["00-os", "01-os-packages"] {
        judge("tar")
            .arg("-xzf")
            .arg(dir.join(format!("layers/{l}.tar.gz")))
            .arg("-C")
            .arg(root)
            .args(["--no-same-owner", "--keep-directory-symlink"])
            .ok();
    }
    root.to_path_buf()
}

/// dpkg-query, reading the extracted root's database, knows every package
/// installed at its pinned version, the base's own still there.
fn dpkg_reports_the_packages_installed(root: &Path) {
    let admin = format!("--admindir={}", root.join("var/lib/dpkg").display());
    let query = |args: &[&str]| judge("dpkg-query").arg(&admin).args(args).ok();
    let shown = query(&["-W", "-f", "${Package} ${Status} ${Version}\\n"]);
    for d in debs().iter().filter(|d| {
        ["mount", "procps", "haproxy", "keepalived", "curl"].contains(&d.package.as_str())
    }) {
        let want = format!("{} install ok installed {}", d.package, d.version);
        assert!(
            shown.lines().any(|l| l == want),
            "dpkg-query lacks `{want}`:\n{shown}"
        );
    }
    assert!(
        shown.contains("dash install ok installed 0.5.12-2"),
        "{shown}"
    );
    let files = query(&["-L", "haproxy"]);
    assert!(files.lines().any(|l| l == "/usr/sbin/haproxy"), "{files}");
    // dpkg -l, the way an operator asks
    let listed = judge_sh(&format!("dpkg-query {admin} -l haproxy | tail -1")).ok();
    assert!(listed.starts_with("ii  haproxy"), "{listed}");
}

#[test]
fn two_builds_of_a_node_on_the_base_os_are_the_same_bytes() {
    let (lab, server) = os_lab(true);
    let mirror = server.url("mirror");
    for (out, cache) in [("out-a", "cache-a"), ("out-b", "cache-b")] {
        let args = [
            "--cache", cache, "--mirror", &mirror, "node", "--role", "node01",
        ];
        let more = ["--out", out, "--format", "layers,pxe"];
        let env = [
            ("SOURCE_DATE_EPOCH", "1700000000"),
            ("IMGBUILD_NOW", "2026-11-23T00:00:00Z"),
        ];
        lab.imgbuild_env(&[&args[..], &more[..]].concat(), &env)
            .assert_ok();
    }
    let sums =
        |out: &str| std::fs::read_to_string(lab.path(&format!("{out}/node01/SHA256SUMS"))).unwrap();
    assert_eq!(sums("out-a"), sums("out-b"));
    assert!(sums("out-a").contains("layers/00-os.tar.gz"));
}

#[test]
fn a_base_without_libc_fails_naming_the_program_the_library_and_the_layer() {
    let (lab, server) = os_lab(false);
    build(&lab, &server, &["node", "--role", "node01", "--format", "layers"], &[])
        .assert_failed()
        .assert_stderr_has("node01: the image would not boot")
        .assert_stderr_has("/usr/bin/dash (layer 00-os) needs libc.so.6, which is in none of the image's library paths")
        .assert_stderr_has("/usr/sbin/nft (layer 01-os-packages) needs libc.so.6");
    assert!(!lab.path("out/node01").exists(), "nothing is written");
}

#[test]
fn a_role_enabling_a_unit_that_exists_nowhere_fails_naming_it() {
    let (lab, server) = os_lab(true);
    let lab = lab.edit(
        "roles/lb.yaml",
        "services: [haproxy.service, keepalived.service]",
        "services: [haproxy.service, keepalived.service, nosuch.service]",
    );
    build(&lab, &server, &["node", "--role", "master01", "--format", "layers"], &[])
        .assert_failed()
        .assert_stderr_has("/etc/systemd/system/multi-user.target.wants/nosuch.service (layer 05-lb) enables nosuch.service, but its target /usr/lib/systemd/system/nosuch.service is no unit file of the image");
    assert!(!lab.path("out/master01").exists(), "nothing is written");
}

/// The shipped manifests with `pins` appended to pins.toml.
fn with_pins(pins: &str) -> Lab {
    let lab = Lab::new();
    let text = lab.read("pins.toml") + pins;
    std::fs::write(lab.path("manifests/pins.toml"), text).unwrap();
    lab
}

const OS_BASE: &str = r#"
[os]
base = "debian-base"

[[artifact]]
name = "debian-base"
version = "12"
arch = "amd64"
url = "https://images.example.org/debian/bookworm/rootfs-amd64.tar.xz"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
source = "a test"
"#;

#[test]
fn with_an_os_every_role_package_is_a_pinned_deb_checked_where_it_stands() {
    let lab = with_pins(&format!(
        "{OS_BASE}\n[[deb]]\nname = \"procps\"\nversion = \"x4.0\"\narch = \"amd64\"\nurl = \"https://deb.debian.org/debian/pool/main/p/procps/procps_4.0.2-3_amd64.deb\"\nsha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\nsource = \"a test\"\nusers = [\"x procps\"]\n"
    ));
    lab.plan("master01")
        .assert_error(
            &lab.at("roles/lb.yaml", "os_packages", "haproxy"),
            "role `lb` needs OS package `haproxy` on amd64 (node `master01`), but pins.toml has no [[deb]] `haproxy` for amd64",
        )
        .assert_error(
            &lab.at("roles/base.yaml", "os_packages", "mount"),
            "role `base` needs OS package `mount` on amd64",
        )
        .assert_error(
            &lab.at("pins.toml", "version = \"x4.0\"", "\"x4.0\""),
            "deb `procps`: version `x4.0` is not a Debian version",
        )
        .assert_error(
            &lab.at("pins.toml", "users = [", "\"x procps\""),
            "deb `procps`: users line `x procps` has an unknown type",
        );
}

#[test]
fn the_os_base_names_a_tar_artifact_and_os_names_no_role() {
    let lab = with_pins("\n[os]\nbase = \"runc\"\n");
    for name in ["os", "os-packages"] {
        std::fs::copy(
            lab.path("manifests/roles/lb.yaml"),
            lab.path(&format!("manifests/roles/{name}.yaml")),
        )
        .unwrap();
    }
    lab.plan("master01")
        .assert_error(
            &lab.at("pins.toml", "base = \"runc\"", "\"runc\""),
            "[os] base `runc`: the amd64 pin's url",
        )
        .assert_stderr_has("is not a tar archive (.tar, .tar.gz, .tgz, .tar.xz or .tar.zst)")
        .assert_error(
            "manifests/roles/os.yaml:1:1",
            "`os` is the name of a layer imgbuild makes itself",
        )
        .assert_error(
            "manifests/roles/os-packages.yaml:1:1",
            "`os-packages` is the name of a layer imgbuild makes itself",
        );
    with_pins("\n[os]\nbase = \"nope\"\n")
        .plan("master01")
        .assert_stderr_has("[os] base `nope` names no [[artifact]] of pins.toml");
}

#[test]
fn a_bundle_carries_the_base_and_the_debs_to_an_offline_build() {
    let (lab, server) = os_lab(true);
    let mirror = server.url("mirror");
    lab.imgbuild(&[
        "bundle", "export", "site.tar", "--cache", "cache", "--mirror", &mirror,
    ])
    .assert_ok();
    let imported = lab
        .imgbuild(&["bundle", "import", "site.tar", "--cache", "site-cache"])
        .assert_ok();
    assert!(
        !imported.stderr().contains("is not pinned"),
        "{}",
        imported.stderr()
    );
    let before = server.total_requests();
    let args = [
        "node",
        "--role",
        "master01",
        "--cache",
        "site-cache",
        "--offline",
        "--format",
        "layers",
    ];
    let env = [
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("IMGBUILD_NOW", "2026-11-23T00:00:00Z"),
    ];
    lab.imgbuild_env(&args, &env).assert_ok();
    assert_eq!(
        server.total_requests(),
        before,
        "the offline build reached the network"
    );
}

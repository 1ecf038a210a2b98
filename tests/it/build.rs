//! `imgbuild node` / `cluster` / `verify` on the lab cluster: golden digests
//! and listings, reproducibility, the real judges (cloud-init schema,
//! isoinfo, blkid, cpio, haproxy, keepalived) and etcd from the built layers.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::artifacts::{Serve, serve};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::{Lab, Run, golden, lab_mirror};

/// Inside the fixture certificates' validity: nothing is re-issued.
const NOW: &str = "2026-11-23T00:00:00Z";
const SDE: &str = "1700000000";

/// Every node of the lab cluster.
const NODES: [&str; 5] = ["master01", "master02", "master03", "node01", "node02"];

/// The lab cluster with deterministic test artifacts behind a mirror.
pub(crate) fn synthetic() -> (Lab, Server) {
    synthetic_sized(64 << 10)
}

/// The same, with archive members of `member_size` bytes.
fn synthetic_sized(member_size: usize) -> (Lab, Server) {
    let server = Server::start();
    let lab = Lab::lab_cluster();
    serve(&lab, &server, Serve::Mirror, member_size);
    (lab, server)
}

pub(crate) fn build(lab: &Lab, server: &Server, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
    let mirror = server.url("mirror");
    let mut all = vec!["--cache", "cache", "--mirror", mirror.as_str()];
    all.extend_from_slice(args);
    let mut env = vec![("SOURCE_DATE_EPOCH", SDE), ("IMGBUILD_NOW", NOW)];
    env.extend_from_slice(extra_env);
    lab.imgbuild_env(&all, &env)
}

/// `<out>/SHA256SUMS` in the lab.
fn sums(lab: &Lab, out: &str) -> String {
    std::fs::read_to_string(lab.path(&format!("{out}/SHA256SUMS"))).unwrap()
}

/// The `image.json` of an output directory.
fn image_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("image.json")).unwrap()).unwrap()
}

/// Per output kind, a sorted listing: every file of every layer (mode,
/// owner, size, sha256 of small files), the cloud-init files, the cpio.
fn listing(dir: &Path) -> String {
    let mut out = String::new();
    let image = image_json(dir);
    for l in image["layers"].as_array().unwrap() {
        let file = l["file"].as_str().unwrap();
        out.push_str(&format!("== {file}\n"));
        let mut a = tar::Archive::new(GzDecoder::new(std::fs::File::open(dir.join(file)).unwrap()));
        let mut lines = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let kind = if h.entry_type().is_dir() {
                "d"
            } else if h.entry_type().is_symlink() {
                "l"
            } else {
                "f"
            };
            let mut what = format!(
                "{} {kind} {:04o} {}:{} {}",
                path,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap()
            );
            if kind == "l" {
                what.push_str(&format!(
                    " -> {}",
                    e.link_name().unwrap().unwrap().display()
                ));
            }
            // text files are diffable; secrets are not printed, only hashed
            if kind == "f" && h.size().unwrap() < 4096 && !file.contains("secrets") {
                let mut s = String::new();
                if e.read_to_string(&mut s).is_ok() {
                    use sha2::Digest;
                    what.push_str(&format!(
                        " sha256:{}",
                        &hex::encode(sha2::Sha256::digest(s.as_bytes()))[..16]
                    ));
                }
            }
            lines.push(what);
        }
        lines.sort();
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out
}

#[test]
fn golden_digests_and_listings_of_master01_and_node01_hold() {
    let (lab, server) = synthetic();
    for node in ["master01", "node01"] {
        build(&lab, &server, &["node", "--role", node], &[]).assert_ok();
        let dir = lab.path(&format!("out/{node}"));
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        golden(&format!("build-{node}.SHA256SUMS"), &sums);
        golden(&format!("build-{node}.listing"), &listing(&dir));
    }
}

#[test]
fn a_cluster_build_writes_each_node_as_its_own_build_does() {
    // `cluster` plans each node as it builds it and renders every node
    // from one context: the bytes are those of `node --role`
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["--jobs", "2", "cluster", "--out", "out"],
        &[],
    )
    .assert_ok();
    for node in ["master01", "node01"] {
        let dir = lab.path(&format!("out/{node}"));
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        golden(&format!("build-{node}.SHA256SUMS"), &sums);
        golden(&format!("build-{node}.listing"), &listing(&dir));
    }
}

#[test]
fn a_role_template_never_sees_the_node_rendered_before_it() {
    // one job, inventory order: the masters' node layers are rendered
    // (with `node`) before the first worker's role layer
    let (lab, server) = synthetic();
    let f = lab.path("layers/worker/etc/crictl.yaml");
    std::fs::remove_file(&f).unwrap();
    std::fs::write(
        lab.path("layers/worker/etc/crictl.yaml.tera"),
        "a: 1\nb: {{ node.ip }}\n",
    )
    .unwrap();
    let run = build(
        &lab,
        &server,
        &["--jobs", "1", "cluster", "--out", "out"],
        &[],
    );
    run.assert_failed().assert_stderr_has(
        "layers/worker/etc/crictl.yaml.tera:2: Variable `node.ip` not found in context",
    );
    assert!(!lab.path("out/node01").exists());
}

#[test]
fn a_template_that_walks_the_inventory_sees_every_node() {
    // the context holds `cluster.nodes` only once a template reads it
    let (lab, server) = synthetic();
    std::fs::write(
        lab.path("layers/worker/etc/fleet.tera"),
        "{% for n in cluster.nodes %}{{ n.name }} {{ n.ip }}\n{% endfor %}",
    )
    .unwrap();
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--out", "out"],
        &[],
    )
    .assert_ok();
    let cluster = std::fs::read_to_string(lab.path("manifests/cluster.yaml")).unwrap();
    let want: String = cluster
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(|name| {
            let ip = cluster.split(&format!("- name: {name}\n")).nth(1).unwrap();
            let ip = ip
                .lines()
                .find_map(|l| l.trim().strip_prefix("ip: "))
                .unwrap();
            format!("{name} {ip}\n")
        })
        .collect();
    // GNU tar reads the file out of whichever layer holds it
    let got = judge_sh(
        "for l in layers/*.tar.gz; do tar -xzOf \"$l\" --wildcards '*etc/fleet' 2>/dev/null; done; true",
    )
    .current_dir(lab.path("out/node01"))
    .ok();
    assert_eq!(got, want);
}

#[test]
fn same_bytes_whatever_tz_umask_jobs_and_directory() {
    let (lab, server) = synthetic();
    let mirror = server.url("mirror");
    let run = |out: &str, cache: &str, tz: &str, umask: &str, jobs: &str| {
        let cmd = format!(
            "umask {umask}; exec '{}' --cache {cache} --mirror {mirror} --jobs {jobs} cluster --out {out}",
            env!("CARGO_BIN_EXE_imgbuild")
        );
        judge_sh(&cmd)
            .current_dir(lab.dir.path())
            .env("TZ", tz)
            .env("SOURCE_DATE_EPOCH", SDE)
            .env("IMGBUILD_NOW", NOW)
            .ok();
    };
    run("out-a", "cache-a", "UTC", "022", "1");
    run("deeper/out-b", "cache-b", "Asia/Shanghai", "077", "2");
    for node in NODES {
        let a = sums(&lab, &format!("out-a/{node}"));
        let b = sums(&lab, &format!("deeper/out-b/{node}"));
        assert_eq!(a, b, "{node} differs between the two builds");
    }
}

#[test]
fn cloud_init_isoinfo_blkid_cpio_haproxy_and_keepalived_accept_the_outputs() {
    // keepalived needs an interface that exists here
    let iface = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n != "lo")
        .expect("a network interface other than lo");
    let (lab, server) = synthetic();
    let lab = lab.edit(
        "cluster.yaml",
        "vrrp_interface: lo",
        &format!("vrrp_interface: {iface}"),
    );
    build(&lab, &server, &["cluster", "--out", "out"], &[]).assert_ok();
    for node in NODES {
        let dir = lab.path(&format!("out/{node}"));
        cloud_init_accepts(&dir.join("cloud-init/user-data"));
        isoinfo_and_blkid_read_the_seed(node, &dir);
        cpio_lists_the_overlay(node, &dir);
    }
    // haproxy and keepalived on an lb node
    let root = extract(&lab.path("out/master01"), &lab.path("root-master01"));
    judge("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(root.join("etc/haproxy/haproxy.cfg"))
        .ok();
    keepalived_accepts_the_master(&root);
    let cfg2 = std::fs::read_to_string(
        extract(&lab.path("out/master02"), &lab.path("root-master02"))
            .join("etc/keepalived/keepalived.conf"),
    )
    .unwrap();
    assert!(
        cfg2.contains("state BACKUP") && cfg2.contains("priority 110"),
        "{cfg2}"
    );
}

/// `cloud-init schema` accepts the user-data.
fn cloud_init_accepts(user_data: &Path) {
    judge("cloud-init")
        .args(["schema", "--config-file"])
        .arg(user_data)
        .ok();
}

/// The seed is an ISO 9660 volume labelled `cidata` that holds the
/// cloud-init files beside it and the base layer.
fn isoinfo_and_blkid_read_the_seed(node: &str, dir: &Path) {
    let iso = dir.join("cloud-init/seed.iso");
    let info = judge("isoinfo").args(["-d", "-i"]).arg(&iso).ok();
    assert!(info.contains("Volume id: cidata"), "{node}");
    let b = judge("blkid").arg(&iso).ok();
    assert!(
        b.contains("LABEL=\"cidata\"") && b.contains("TYPE=\"iso9660\""),
        "{node}: {b}"
    );
    // the seed's files are the ones beside it
    let member = |name: &str| {
        judge("isoinfo")
            .args(["-J", "-x", &format!("/{name};1"), "-i"])
            .arg(&iso)
            .ok_bytes()
    };
    for f in ["user-data", "meta-data", "network-config"] {
        assert_eq!(
            member(f),
            std::fs::read(dir.join("cloud-init").join(f)).unwrap(),
            "{node}: {f}"
        );
    }
    assert_eq!(
        member("layers/00-base.tar.gz"),
        std::fs::read(dir.join("layers/00-base.tar.gz")).unwrap(),
        "{node}: layer in seed"
    );
}

/// cpio lists the flattened node as boot.ipxe loads it (the shared
/// segments, then the overlay), its secrets with mode 0600.
fn cpio_lists_the_overlay(node: &str, dir: &Path) {
    let parts: Vec<String> = crate::pxe::loaded(dir)
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect();
    let list = judge_sh(&format!("cat {} | zcat | cpio -tv", parts.join(" "))).ok();
    assert!(list.contains("etc/hosts"), "{node}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rw-------") && l.contains("etc/kubernetes/")),
        "{node}: secrets keep 0600\n{list}"
    );
}

/// master01's keepalived.conf is the VRRP master's, its password lives only
/// in the secrets layer, and `keepalived -t` accepts it.
fn keepalived_accepts_the_master(root: &Path) {
    let cfg = std::fs::read_to_string(root.join("etc/keepalived/keepalived.conf")).unwrap();
    assert!(
        cfg.contains("state MASTER") && cfg.contains("priority 120"),
        "{cfg}"
    );
    assert!(
        cfg.contains("include /etc/kubernetes/keepalived-auth.conf"),
        "{cfg}"
    );
    let auth = std::fs::read_to_string(root.join("etc/kubernetes/keepalived-auth.conf")).unwrap();
    let pass = auth
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth_pass "))
        .unwrap();
    assert_eq!(pass.len(), 8, "{auth}");
    assert!(
        !cfg.contains(pass),
        "the VRRP password must live only in the secrets layer"
    );
    // the check script and the included file as extracted: their absolute
    // paths rebased onto the root
    let rebased = cfg
        .replace(
            "/etc/keepalived/",
            &format!("{}/etc/keepalived/", root.display()),
        )
        .replace(
            "/etc/kubernetes/",
            &format!("{}/etc/kubernetes/", root.display()),
        );
    let conf = root.join("keepalived-test.conf");
    std::fs::write(&conf, rebased).unwrap();
    judge("keepalived").arg("-t").arg("-f").arg(&conf).ok();
}

/// Extracts every layer of a node, in order, into `root`.
pub(crate) fn extract(dir: &Path, root: &Path) -> PathBuf {
    std::fs::create_dir_all(root).unwrap();
    let mut layers: Vec<PathBuf> = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    layers.sort();
    for l in layers {
        judge("tar")
            .arg("-xzf")
            .arg(&l)
            .arg("-C")
            .arg(root)
            .arg("--no-same-owner")
            .ok();
    }
    root.to_path_buf()
}

#[test]
fn shared_layers_are_hard_links_and_built_once() {
    use std::os::unix::fs::MetadataExt;
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--out", "out"], &[]).assert_ok();
    let ino = |p: &str| std::fs::metadata(lab.path(p)).unwrap().ino();
    assert_eq!(
        ino("out/node01/layers/01-worker.tar.gz"),
        ino("out/node02/layers/01-worker.tar.gz")
    );
    assert_eq!(
        ino("out/master01/layers/00-base.tar.gz"),
        ino("out/node02/layers/00-base.tar.gz")
    );
    assert_ne!(
        ino("out/node01/layers/03-secrets.tar.gz"),
        ino("out/node02/layers/03-secrets.tar.gz")
    );
    // the store has one file per distinct shared layer; no secrets layer in it
    let store: Vec<String> = std::fs::read_dir(lab.path("cache/layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    // base, etcd, control-plane, lb, worker + 5 node layers
    assert_eq!(store.len(), 10, "{store:?}");
}

#[test]
fn secret_files_are_private_and_only_in_the_secrets_layer() {
    use std::os::unix::fs::PermissionsExt;
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "node01"], &[]).assert_ok();
    let dir = lab.path("out/node01");
    for f in [
        "layers/03-secrets.tar.gz",
        "cloud-init/seed.iso",
        "pxe/overlay.cpio.gz",
    ] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let listing = listing(&dir);
    let secrets = listing
        .split("== ")
        .find(|s| s.starts_with("layers/03-secrets"))
        .unwrap();
    assert!(
        secrets.contains("etc/kubernetes/bootstrap-kubelet.conf f 0600"),
        "{secrets}"
    );
    assert!(!listing.contains("ca.key"), "a worker got a CA key");
}

#[test]
fn verify_passes_then_names_a_flipped_byte() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "out/master01"];
        args.extend_from_slice(extra);
        build(&lab, &server, &args, &[])
    };
    verify(&["--rebuild"])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
    let p = lab.path("out/master01/layers/01-etcd.tar.gz");
    // a hard link into the store: break it first, as an attacker's copy would
    let mut bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    verify(&[])
        .assert_failed()
        .assert_stderr_has("layers/01-etcd.tar.gz: sha256 is")
        .assert_stderr_has("layers/01-etcd.tar.gz: digest sha256:");
}

#[test]
fn verify_rebuild_names_the_first_differing_file() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    // the inventory changed since the build: master01's etcd.env would differ
    let lab = lab.edit("cluster.yaml", "ip: 127.0.10.3", "ip: 127.0.10.33");
    build(&lab, &server, &["verify", "out/master01", "--rebuild"], &[])
        .assert_failed()
        .assert_stderr_has(
            "differs from a rebuild from the manifests and state: first at cloud-init/meta-data",
        );
}

#[test]
fn verify_names_a_private_key_slipped_into_a_shared_layer() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "node01"], &[]).assert_ok();
    let dir = lab.path("out/node01");
    let key = std::fs::read(lab.path("state/lab/pki/etcd/healthcheck-client.key")).unwrap();
    // rewrite 00-base with the key in it, and make the sums agree, so only
    // the placement check can catch it
    append_to_layer(
        &dir.join("layers/00-base.tar.gz"),
        "etc/ssl/private/slipped.key",
        &key,
    );
    reseal_first_layer(&dir);
    let run = build(&lab, &server, &["verify", "out/node01"], &[]).assert_failed();
    let err = run.stderr();
    assert!(err.contains("layers/00-base.tar.gz: /etc/ssl/private/slipped.key holds a PEM private key outside the secrets layer"), "{err}");
    assert!(
        !err.contains("SHA256SUMS says"),
        "only the placement should fail:\n{err}"
    );
}

/// Rewrites the layer `layer` with one more file, `path` (mode 0644).
pub(crate) fn append_to_layer(layer: &Path, path: &str, data: &[u8]) {
    let mut entries = Vec::new();
    let mut a = tar::Archive::new(GzDecoder::new(std::fs::File::open(layer).unwrap()));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((e.header().clone(), data));
    }
    std::fs::remove_file(layer).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(layer).unwrap(),
        flate2::Compression::fast(),
    ));
    for (mut h, data) in entries {
        let path = h.path().unwrap().into_owned();
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, path, data).unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

/// Makes image.json (the first layer's digest and size) and SHA256SUMS agree
/// with the bytes now in the output directory.
pub(crate) fn reseal_first_layer(dir: &Path) {
    reseal_layer(dir, &dir.join("layers/00-base.tar.gz"));
}

/// After a layer file was changed: its digest and size in image.json, and
/// every line of SHA256SUMS, made to match again.
pub(crate) fn reseal_layer(dir: &Path, layer: &Path) {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(layer).unwrap()));
    let size = std::fs::metadata(layer).unwrap().len();
    let file = layer.strip_prefix(dir).unwrap().to_str().unwrap();
    let mut image = image_json(dir);
    let entry = image["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["file"] == file)
        .unwrap();
    entry["digest"] = format!("sha256:{digest}").into();
    entry["size"] = size.into();
    std::fs::write(
        dir.join("image.json"),
        serde_json::to_string_pretty(&image).unwrap(),
    )
    .unwrap();
    let sums: String = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| {
            let (_, f) = l.split_once("  ").unwrap();
            let h = hex::encode(sha2::Sha256::digest(std::fs::read(dir.join(f)).unwrap()));
            format!("{h}  {f}\n")
        })
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

#[test]
fn seed_layers_url_leaves_shared_layers_out_of_the_seed() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &[
            "node",
            "--role",
            "node02",
            "--seed-layers",
            "url=http://10.0.0.5/layers",
        ],
        &[],
    )
    .assert_ok();
    let dir = lab.path("out/node02");
    let ud = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    let image = image_json(&dir);
    let base = image["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert!(
        ud.contains(&format!("'http://10.0.0.5/layers/sha256/{base}.tar.gz'")),
        "{ud}"
    );
    assert!(ud.contains(&format!("{base}  00-base.tar.gz")), "{ud}");
    let iso = judge("isoinfo")
        .args(["-J", "-l", "-i"])
        .arg(dir.join("cloud-init/seed.iso"))
        .ok();
    assert!(
        !iso.contains("00-base.tar.gz") && !iso.contains("01-worker.tar.gz"),
        "{iso}"
    );
    assert!(
        iso.contains("02-node.tar.gz") && iso.contains("03-secrets.tar.gz"),
        "{iso}"
    );
    cloud_init_accepts(&dir.join("cloud-init/user-data"));
}

#[test]
fn seed_layers_volume_puts_the_shared_layers_in_one_stored_volume_beside_a_small_seed() {
    use std::os::unix::fs::MetadataExt;
    let (lab, server) = synthetic();
    for node in ["node01", "node02"] {
        build(
            &lab,
            &server,
            &["node", "--role", node, "--seed-layers", "volume"],
            &[],
        )
        .assert_ok();
    }
    let dir = lab.path("out/node01");
    let seed = judge("isoinfo")
        .args(["-J", "-l", "-i"])
        .arg(dir.join("cloud-init/seed.iso"))
        .ok();
    assert!(
        !seed.contains("00-base.tar.gz") && !seed.contains("01-worker.tar.gz"),
        "{seed}"
    );
    assert!(
        seed.contains("02-node.tar.gz") && seed.contains("03-secrets.tar.gz"),
        "{seed}"
    );
    layers_volume_holds(&dir, &["00-base.tar.gz", "01-worker.tar.gz"]);
    // one file in the store for both workers, read-only
    let meta =
        |n: &str| std::fs::metadata(lab.path(&format!("out/{n}/cloud-init/layers.iso"))).unwrap();
    assert_eq!(meta("node01").ino(), meta("node02").ino());
    assert_eq!(meta("node01").mode() & 0o777, 0o444);
    let ud = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    assert!(ud.contains("blkid -L imglayers"), "{ud}");
    cloud_init_accepts(&dir.join("cloud-init/user-data"));
    assert!(sums(&lab, "out/node01").contains("  cloud-init/layers.iso\n"));
    assert_eq!(image_json(&dir)["build"]["seed_layers"], "volume");
    build(&lab, &server, &["verify", "--rebuild", "out/node01"], &[])
        .assert_ok()
        .assert_stderr_has("--seed-layers volume");
    build(&lab, &server, &["verify", "out/node01"], &[]).assert_ok();
}

#[test]
fn verify_refuses_a_layers_volume_that_is_not_the_seeds_shared_layers() {
    let (lab, server) = synthetic();
    for node in ["node01", "node02"] {
        let args = ["node", "--role", node, "--seed-layers", "volume"];
        build(&lab, &server, &args, &[]).assert_ok();
    }
    // a damaged volume (a copy: the store's file stays as it is) is named
    let p = lab.path("out/node02/cloud-init/layers.iso");
    let mut bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    build(&lab, &server, &["verify", "out/node02"], &[])
        .assert_failed()
        .assert_stderr_has("cloud-init/layers.iso: sha256 is")
        .assert_stderr_has("cloud-init/layers.iso: not the layers volume");
    // a hostile directory, its SHA256SUMS made to agree: a volume that holds
    // the node's secrets (its seed) is not the volume of its shared layers
    let seed = std::fs::read(lab.path("out/node02/cloud-init/seed.iso")).unwrap();
    std::fs::write(&p, &seed).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&seed));
    let sums_path = lab.path("out/node02/SHA256SUMS");
    let text: String = sums(&lab, "out/node02")
        .lines()
        .map(|l| match l.strip_suffix("  cloud-init/layers.iso") {
            Some(_) => format!("{digest}  cloud-init/layers.iso\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&sums_path, text).unwrap();
    build(&lab, &server, &["verify", "out/node02"], &[])
        .assert_failed()
        .assert_stderr_has("cloud-init/layers.iso: not the layers volume of the seed's shared layers image.json names: its volume descriptors");
    // the store's volume, linked into node01, is as it was
    build(&lab, &server, &["verify", "out/node01"], &[]).assert_ok();
    // and node02, its volume not this build's, is built again, not left
    let args = ["node", "--role", "node02", "--seed-layers", "volume"];
    build(&lab, &server, &args, &[])
        .assert_ok()
        .assert_stderr_has("built node02");
    build(&lab, &server, &args, &[])
        .assert_ok()
        .assert_stderr_has("up to date node02");
    build(&lab, &server, &["verify", "out/node02"], &[]).assert_ok();
}

/// `dir`'s `cloud-init/layers.iso` is labelled `imglayers` and holds
/// `shared` (each as `layers/<name>`, the very bytes of `dir/layers/<name>`)
/// and no node or secrets layer.
fn layers_volume_holds(dir: &Path, shared: &[&str]) {
    let vol = dir.join("cloud-init/layers.iso");
    let listed = judge("isoinfo").args(["-J", "-f", "-i"]).arg(&vol).ok();
    let mut names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("/layers/"))
        .map(|l| l.trim_end_matches(";1"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, shared, "{listed}");
    let label = judge("blkid")
        .args(["-o", "value", "-s", "LABEL"])
        .arg(&vol)
        .ok();
    assert_eq!(label.trim(), "imglayers");
    for name in shared {
        let held = judge("isoinfo")
            .args(["-J", "-i"])
            .arg(&vol)
            .args(["-x", &format!("/layers/{name};1")])
            .ok_bytes();
        assert_eq!(
            held,
            std::fs::read(dir.join("layers").join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn the_generic_worker_image_has_no_node_layer_network_config_or_hostname() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "worker"], &[]).assert_ok();
    let dir = lab.path("out/worker");
    let layers: Vec<String> = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut layers = layers;
    layers.sort();
    assert_eq!(
        layers,
        ["00-base.tar.gz", "01-worker.tar.gz", "02-secrets.tar.gz"]
    );
    assert!(!dir.join("cloud-init/network-config").exists());
    let md = std::fs::read_to_string(dir.join("cloud-init/meta-data")).unwrap();
    assert!(
        md.starts_with("instance-id: worker-") && !md.contains("local-hostname"),
        "{md}"
    );
}

#[test]
fn an_undefined_template_variable_names_the_template_and_line() {
    let (lab, server) = synthetic();
    let f = lab.path("layers/worker/etc/crictl.yaml");
    std::fs::remove_file(&f).unwrap();
    std::fs::write(
        lab.path("layers/worker/etc/crictl.yaml.tera"),
        "a: 1\nb: {{ node.ip }}\n",
    )
    .unwrap();
    build(&lab, &server, &["node", "--role", "node01"], &[])
        .assert_failed()
        .assert_stderr_has(
            "layers/worker/etc/crictl.yaml.tera:2: Variable `node.ip` not found in context",
        );
}

#[test]
fn etcd_from_the_built_layers_forms_a_healthy_cluster() {
    // the real lab: Debian's etcd inside the layers
    let lab = Lab::lab_cluster();
    let mirror = format!("file://{}", lab_mirror().join("mirror").display());
    lab.imgbuild_env(
        &[
            "--cache", "cache", "--mirror", &mirror, "cluster", "--out", "out",
        ],
        &[("IMGBUILD_NOW", NOW)],
    )
    .assert_ok();
    let out = judge("bash")
        .arg(crate::lab::repo().join("scripts/demo-etcd"))
        .arg(lab.path("out"))
        .ok();
    assert_eq!(out.matches("is healthy").count(), 3, "{out}");
}

#[test]
fn jobs_1_and_2_give_identical_bytes() {
    // members of several compression pieces (1 MiB each), so that threads
    // really share the work
    let (lab, server) = synthetic_sized((2 << 20) + 12345);
    for (jobs, out) in [("1", "out-j1"), ("2", "out-j2")] {
        build(
            &lab,
            &server,
            &["--jobs", jobs, "cluster", "--out", out],
            &[],
        )
        .assert_ok();
    }
    for node in NODES {
        let a = sums(&lab, &format!("out-j1/{node}"));
        let b = sums(&lab, &format!("out-j2/{node}"));
        assert_eq!(a, b, "{node}: --jobs changed the bytes");
        assert!(a.contains("pxe/overlay.cpio.gz"), "{a}");
    }
}

#[test]
fn a_stored_layer_without_its_record_is_built_again() {
    let (lab, server) = synthetic();
    let node = |out: &str| {
        build(
            &lab,
            &server,
            &["node", "--role", "node01", "--out", out],
            &[],
        )
        .assert_ok();
    };
    node("first");
    // every stored layer has its record by the time the command exits
    let store = lab.path("cache/layers");
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let layers: Vec<&String> = names.iter().filter(|n| n.ends_with(".tar.gz")).collect();
    assert_eq!(layers.len(), 3, "{names:?}");
    for l in &layers {
        let json = l.replace(".tar.gz", ".json");
        assert!(names.contains(&json), "{l} has no record: {names:?}");
    }
    // a crash before the records: a layer's bytes lost, no record
    for n in names.iter().filter(|n| n.ends_with(".json")) {
        std::fs::remove_file(store.join(n)).unwrap();
    }
    std::fs::write(store.join(layers[0]), b"").unwrap();
    node("second");
    assert_eq!(sums(&lab, "first/node01"), sums(&lab, "second/node01"));
    lab.imgbuild(&["verify", "second/node01"]).assert_ok();
}

#[test]
fn every_node_links_the_shared_segments_of_the_store_and_sha256sum_agrees() {
    use std::os::unix::fs::MetadataExt;
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--out", "first"], &[]).assert_ok();
    build(&lab, &server, &["cluster", "--out", "second"], &[]).assert_ok();
    // the workers' shared segments are the same files (one inode each),
    // the store's, in every worker's directory and build
    let inode = |out: &str, n: &str, f: &str| {
        std::fs::metadata(lab.path(&format!("{out}/{n}/pxe/segments/{f}")))
            .unwrap()
            .ino()
    };
    for f in ["00-base.cpio.gz", "01-worker.cpio.gz"] {
        let one = inode("first", "node01", f);
        assert_eq!(inode("first", "node02", f), one, "{f}");
        assert_eq!(inode("second", "node01", f), one, "{f}");
    }
    for n in NODES {
        // the overlay holds only the node's own layers: a few KB, not MB
        let overlay = lab.path(&format!("second/{n}/pxe/overlay.cpio.gz"));
        assert!(std::fs::metadata(&overlay).unwrap().len() < 100_000, "{n}");
        judge("sha256sum")
            .args(["--check", "--quiet", "SHA256SUMS"])
            .current_dir(lab.path(&format!("second/{n}")))
            .ok();
    }
}

/// Every regular file, directory and symlink below `root`: path, kind, mode,
/// owner, and the sha256 of file contents and link targets.
fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for p in crate::lab::files_below(root) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let what = if md.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()))
        };
        out.push(format!(
            "{rel} {:o} {}:{} {what}",
            md.mode(),
            md.uid(),
            md.gid()
        ));
    }
    out.sort();
    out
}

#[test]
fn pxe_overlay_unpacks_to_the_same_files_as_the_layers() {
    // members larger than a compression piece: their compressed bytes are
    // shared between the tar layers and the cpio overlay
    let (lab, server) = synthetic_sized((1 << 20) + 777);
    // an owner other than root reaches both the tar and the cpio
    let lab = lab.edit(
        "roles/worker.yaml",
        "{ from: crictl, to: /usr/local/bin/crictl }",
        "{ from: crictl, to: /usr/local/bin/crictl, owner: \"0:998\", mode: \"0750\" }",
    );
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--out", "out"],
        &[],
    )
    .assert_ok();
    let dir = lab.path("out/node01");
    let from_tar = lab.path("root-tar");
    // the kernel's unpacker reads the initrds boot.ipxe loads (the shared
    // segments, then the overlay) as one archive; GNU cpio stops at the
    // first trailer, which is the overlay's last entry
    let from_cpio = lab.path("root-cpio");
    unpack_cpio(&from_cpio, &crate::pxe::loaded(&dir));
    // tar -x here keeps owners as root runs it (the test runs as root in CI)
    judge_sh(&format!(
        "mkdir '{t}' && for l in '{d}'/layers/*.tar.gz; do tar -xzf \"$l\" -C '{t}' --same-owner --numeric-owner || exit 1; done",
        t = from_tar.display(),
        d = dir.display()
    ))
    .ok();
    let (a, b) = (tree(&from_tar), tree(&from_cpio));
    assert_eq!(a, b, "the overlay and the layers differ");
    let crictl = a
        .iter()
        .find(|l| l.starts_with("usr/local/bin/crictl "))
        .unwrap();
    assert!(crictl.contains(" 100750 0:998 "), "{crictl}");
    assert!(
        a.iter().any(|l| l.starts_with("usr/local/bin/kubelet ")),
        "{a:?}"
    );
}

#[test]
fn pxe_url_mode_loads_the_shared_segments_from_base() {
    let (lab, server) = synthetic();
    let base = "http://10.0.0.5/layers";
    let url = format!("url={base}");
    for (out, seed) in [("out-url", url.as_str()), ("out-embed", "embed")] {
        build(
            &lab,
            &server,
            &[
                "node",
                "--role",
                "node01",
                "--out",
                out,
                "--seed-layers",
                seed,
            ],
            &[],
        )
        .assert_ok();
    }
    let dir = lab.path("out-url/node01");
    let ipxe = std::fs::read_to_string(dir.join("pxe/boot.ipxe")).unwrap();
    assert!(
        ipxe.contains(&format!("isset ${{layers-url}} || set layers-url {base}\n")),
        "{ipxe}"
    );
    assert!(
        ipxe.contains(
            "initrd=initrd.img initrd=00-base.cpio.gz initrd=01-worker.cpio.gz initrd=overlay.cpio.gz\n"
        ),
        "{ipxe}"
    );
    let mut served = segments_loaded_by_ipxe(&dir, &ipxe);
    assert_eq!(served.len(), 2, "{ipxe}");
    // the overlay holds the node's own layers only, in either mode ...
    let overlay = dir.join("pxe/overlay.cpio.gz");
    let embed = lab.path("out-embed/node01");
    assert_eq!(
        std::fs::read(&overlay).unwrap(),
        std::fs::read(embed.join("pxe/overlay.cpio.gz")).unwrap()
    );
    // ... and the segments as iPXE loads them by digest, then the overlay,
    // unpack to what the embedded node's boot.ipxe loads from base-url
    served.push(overlay);
    let embedded = crate::pxe::loaded(&embed);
    assert_eq!(embedded.len(), 3, "{embedded:?}");
    assert_eq!(
        unpack_cpio(&lab.path("root-url"), &served),
        unpack_cpio(&lab.path("root-embed"), &embedded)
    );
    lab.imgbuild(&["verify", "out-url/node01"]).assert_ok();
}

/// The shared segments `boot.ipxe` loads from `${layers-url}`: each is named
/// by its digest, and published beside the overlay.
fn segments_loaded_by_ipxe(dir: &Path, ipxe: &str) -> Vec<PathBuf> {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut served = Vec::new();
    for line in ipxe
        .lines()
        .filter(|l| l.starts_with("initrd ${layers-url}"))
    {
        let (url, file) = line
            .trim_start_matches("initrd ${layers-url}/sha256/")
            .split_once(".cpio.gz ")
            .unwrap();
        let seg = dir.join("pxe/segments").join(file);
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&seg).unwrap()));
        assert_eq!(url, digest, "{file}");
        assert!(
            sums.contains(&format!("{digest}  pxe/segments/{file}\n")),
            "{sums}"
        );
        served.push(seg);
    }
    served
}

/// Unpacks the concatenation of `parts` with `cpio -idm` into `root`, as the
/// kernel reads several initrds; returns the tree it made.
fn unpack_cpio(root: &Path, parts: &[PathBuf]) -> Vec<String> {
    std::fs::create_dir_all(root).unwrap();
    let files: Vec<String> = parts.iter().map(|p| format!("'{}'", p.display())).collect();
    judge_sh(&format!(
        "cat {} | zcat | cpio -idm --quiet",
        files.join(" ")
    ))
    .current_dir(root)
    .ok();
    tree(root)
}

/// The inode of every file below `dir`: unchanged when the directory was
/// left alone.
fn inodes(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = crate::lab::files_below(dir)
        .into_iter()
        .map(|p| {
            let ino = std::fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_workers_new_ip_rebuilds_that_worker_only() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--out", "out"], &[]).assert_ok();
    let before: Vec<_> = ["master01", "master02", "master03", "node01"]
        .iter()
        .map(|n| inodes(&lab.path(&format!("out/{n}"))))
        .collect();
    let lab = lab.edit("cluster.yaml", "ip: 127.0.10.12", "ip: 127.0.10.22");
    let run = build(&lab, &server, &["cluster", "--out", "out"], &[]).assert_ok();
    let err = run.stderr();
    for n in ["master01", "master02", "master03", "node01"] {
        assert!(err.contains(&format!("up to date {n}")), "{err}");
    }
    assert!(err.contains("built node02"), "{err}");
    let after: Vec<_> = ["master01", "master02", "master03", "node01"]
        .iter()
        .map(|n| inodes(&lab.path(&format!("out/{n}"))))
        .collect();
    assert_eq!(before, after, "a node that did not change was rewritten");
    // the worker's new address is in its image and seed ...
    let nc = std::fs::read_to_string(lab.path("out/node02/cloud-init/network-config")).unwrap();
    assert!(nc.contains("127.0.10.22"), "{nc}");
    // ... and what is there is what a clean build of the new inventory gives
    build(&lab, &server, &["cluster", "--out", "clean"], &[]).assert_ok();
    for n in NODES {
        let a = sums(&lab, &format!("out/{n}"));
        let b = sums(&lab, &format!("clean/{n}"));
        assert_eq!(a, b, "{n}");
    }
    lab.imgbuild(&["verify", "out/node02"]).assert_ok();
}

#[test]
fn an_up_to_date_directory_missing_a_file_is_rebuilt() {
    let (lab, server) = synthetic();
    let args = ["node", "--role", "node01", "--out", "out"];
    build(&lab, &server, &args, &[]).assert_ok();
    let before = sums(&lab, "out/node01");
    build(&lab, &server, &args, &[])
        .assert_ok()
        .assert_stderr_has("up to date node01");
    std::fs::remove_file(lab.path("out/node01/pxe/overlay.cpio.gz")).unwrap();
    build(&lab, &server, &args, &[])
        .assert_ok()
        .assert_stderr_has("built node01");
    assert_eq!(sums(&lab, "out/node01"), before);
    // another set of formats is another build
    build(
        &lab,
        &server,
        &[
            "node", "--role", "node01", "--out", "out", "--format", "layers",
        ],
        &[],
    )
    .assert_ok()
    .assert_stderr_has("built node01");
    lab.imgbuild(&["verify", "out/node01"]).assert_ok();
}

#[test]
fn verify_rebuild_of_an_arm64_role_image_rebuilds_it_for_arm64() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &[
            "node", "--role", "worker", "--arch", "arm64", "--out", "out",
        ],
        &[],
    )
    .assert_ok();
    let image = image_json(&lab.path("out/worker"));
    assert_eq!(image["arch"], "arm64");
    build(&lab, &server, &["verify", "out/worker", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has("identical to a rebuild");
    build(
        &lab,
        &server,
        &["verify", "out/worker", "--arch", "amd64"],
        &[],
    )
    .assert_failed()
    .assert_stderr_has("out/worker is an arm64 image; --arch asked for amd64");
}

/// Builds `node`'s layers alone into `out/` and extracts them into
/// `<out>-root-<node>`; the root.
pub(crate) fn built_root(lab: &Lab, server: &Server, node: &str, out: &str) -> PathBuf {
    build_layers(lab, server, node, out);
    extract(
        &lab.path(&format!("{out}/{node}")),
        &lab.path(&format!("{out}-root-{node}")),
    )
}

/// Builds `node`'s layers alone into `out/<node>`.
pub(crate) fn build_layers(lab: &Lab, server: &Server, node: &str, out: &str) {
    let args = ["node", "--role", node, "--format", "layers", "--out", out];
    build(lab, server, &args, &[]).assert_ok();
}

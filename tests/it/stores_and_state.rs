//! The shared layer store, the output directories and the state dir under
//! damage, crashes and concurrent runs: a damaged layer is never reused, a
//! killed run's leftovers are removed, two runs make one PKI, loose modes
//! are reported and fixed, and the OCI layout carries no secrets unless
//! asked.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::artifacts::{Serve, serve};
use crate::http::Server;
use crate::judge::{judge, judge_sh};
use crate::lab::{Lab, Run};

/// Inside the fixture certificates' validity: nothing is re-issued.
const NOW: &str = "2026-11-23T00:00:00Z";
const SDE: &str = "1700000000";
const NODES: [&str; 5] = ["master01", "master02", "master03", "node01", "node02"];

/// The lab cluster with deterministic test artifacts behind a mirror.
fn synthetic() -> (Lab, Server) {
    let server = Server::start();
    let lab = Lab::lab_cluster();
    serve(&lab, &server, Serve::Mirror, 64 << 10);
    (lab, server)
}

/// The full argument list of a build against the mirror.
fn build_args(server: &Server, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["--cache", "cache", "--mirror", &server.url("mirror")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

fn build(lab: &Lab, server: &Server, args: &[&str]) -> Run {
    let all = build_args(server, args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    lab.imgbuild_env(&refs, &[("SOURCE_DATE_EPOCH", SDE), ("IMGBUILD_NOW", NOW)])
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Flips one byte in the middle of `p` in place, as an editor that writes
/// through would: same inode, same size.
fn flip_a_byte(p: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", p.display()));
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

/// The stored file of the layer named `name` (`00-base`) with extension
/// `ext` (`tar.gz`, `cpio.gz`), found through its record.
fn stored(lab: &Lab, name: &str, ext: &str) -> PathBuf {
    let dir = lab.path("cache/layers");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let record: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            if record["name"] == name {
                let key = p.file_stem().unwrap().to_string_lossy().into_owned();
                return dir.join(format!("{key}.{ext}"));
            }
        }
    }
    panic!("no record of layer {name} in {}", dir.display());
}

#[test]
fn store_files_are_read_only_so_outputs_cannot_write_through() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "node01"]).assert_ok();
    let store = lab.path("cache/layers");
    for e in std::fs::read_dir(&store).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue;
        }
        assert_eq!(mode(&p), 0o444, "{name} is writable");
    }
    // the output's shared layers are the store's (read-only) files
    let out = lab.path("out/node01/layers/00-base.tar.gz");
    assert_eq!(mode(&out), 0o444);
    assert_eq!(
        std::fs::metadata(&out).unwrap().ino(),
        std::fs::metadata(stored(&lab, "00-base", "tar.gz"))
            .unwrap()
            .ino()
    );
    // the secrets layer never enters the store and stays private
    assert_eq!(
        mode(&lab.path("out/node01/layers/03-secrets.tar.gz")),
        0o600
    );
}

#[test]
fn a_layer_edited_through_one_output_is_rebuilt_everywhere_not_called_up_to_date() {
    let (lab, server) = synthetic();
    let cluster = ["cluster", "--out", "out"];
    build(&lab, &server, &cluster).assert_ok();
    let sums: Vec<String> = NODES
        .iter()
        .map(|n| std::fs::read_to_string(lab.path(&format!("out/{n}/SHA256SUMS"))).unwrap())
        .collect();
    // one node's base layer is edited in place: the store's file with it
    flip_a_byte(&lab.path("out/node01/layers/00-base.tar.gz"));
    let run = build(&lab, &server, &cluster).assert_ok();
    let err = run.stderr();
    assert!(
        err.contains("does not match its record") && err.contains("building layer 00-base again"),
        "the damaged store entry was not reported:\n{err}"
    );
    for (n, sums) in NODES.iter().zip(&sums) {
        assert!(err.contains(&format!("built {n}")), "{n}:\n{err}");
        let dir = format!("out/{n}");
        lab.imgbuild(&["verify", &dir]).assert_ok();
        let now = std::fs::read_to_string(lab.path(&format!("{dir}/SHA256SUMS"))).unwrap();
        assert_eq!(&now, sums, "{n} differs from its first build");
    }
    // the store holds the right bytes again, and a third run is a no-op
    let base = stored(&lab, "00-base", "tar.gz");
    let record = base.with_extension("").with_extension("json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    let actual = judge("sha256sum").arg(&base).ok();
    assert!(
        actual.starts_with(record["digest"].as_str().unwrap()),
        "{actual}"
    );
    let err = build(&lab, &server, &cluster).assert_ok().stderr();
    for n in NODES {
        assert!(err.contains(&format!("up to date {n}")), "{n}:\n{err}");
    }
}

#[test]
fn a_damaged_copy_of_a_layer_in_one_output_is_rebuilt() {
    let (lab, server) = synthetic();
    let args = ["node", "--role", "node01", "--out", "out"];
    build(&lab, &server, &args).assert_ok();
    let sums = std::fs::read_to_string(lab.path("out/node01/SHA256SUMS")).unwrap();
    // a copy (another filesystem, or an editor that writes a new file):
    // the store is untouched, the output is not what image.json says
    let layer = lab.path("out/node01/layers/01-worker.tar.gz");
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&layer, &bytes).unwrap();
    build(&lab, &server, &args)
        .assert_ok()
        .assert_stderr_has("built node01");
    assert_eq!(
        std::fs::read_to_string(lab.path("out/node01/SHA256SUMS")).unwrap(),
        sums
    );
    lab.imgbuild(&["verify", "out/node01"]).assert_ok();
}

#[test]
fn a_damaged_store_entry_is_reported_and_built_again_never_embedded() {
    let (lab, server) = synthetic();
    let node = |out: &str| build(&lab, &server, &["node", "--role", "node01", "--out", out]);
    node("first").assert_ok();
    let sums = std::fs::read_to_string(lab.path("first/node01/SHA256SUMS")).unwrap();
    // the store's base layer and the worker layer's PXE segment, damaged
    let base = stored(&lab, "00-base", "tar.gz");
    let segment = stored(&lab, "01-worker", "cpio.gz");
    flip_a_byte(&base);
    flip_a_byte(&segment);
    let err = node("second").assert_ok().stderr();
    for damaged in [&base, &segment] {
        let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains(&name) && err.contains("does not match its record"),
            "{name} was not reported:\n{err}"
        );
    }
    // the new output is the first build's bytes, seed and overlay included
    assert_eq!(
        std::fs::read_to_string(lab.path("second/node01/SHA256SUMS")).unwrap(),
        sums
    );
    lab.imgbuild(&["verify", "second/node01"]).assert_ok();
    judge_sh("zcat second/node01/pxe/overlay.cpio.gz | cpio -t --quiet >/dev/null")
        .current_dir(lab.dir.path())
        .ok();
}

/// The signing CA of a certificate file in a secrets layer, by its path.
fn ca_of(path: &str) -> &'static str {
    if path.contains("etcd") {
        "pki/etcd/ca.crt"
    } else if path.contains("front-proxy") {
        "pki/front-proxy-ca.crt"
    } else {
        "pki/ca.crt"
    }
}

/// Every `.crt` of the secrets layer of `dir`, unpacked into `root`.
fn certificates(dir: &Path, root: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(root).unwrap();
    let layer = crate::lab::files_below(&dir.join("layers"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("-secrets.tar.gz"))
        .expect("a secrets layer");
    judge("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(root)
        .ok();
    crate::lab::files_below(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect()
}

#[test]
fn two_builds_at_once_on_a_fresh_state_make_certificates_of_one_ca() {
    let (lab, server) = synthetic();
    // slow keys widen the window in which two runs could generate side by side
    let lab = lab.edit(
        "cluster.yaml",
        "key_algorithm: ecdsa-p256",
        "key_algorithm: rsa-2048",
    );
    std::fs::remove_dir_all(lab.path("state/lab")).unwrap();
    // the artifacts first, so that both runs reach the PKI step together
    build(&lab, &server, &["fetch"]).assert_ok();
    let spawn = |node: &str, out: &str| {
        let args = build_args(&server, &["node", "--role", node, "--out", out]);
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .current_dir(lab.dir.path())
            .args(&args)
            .env("SOURCE_DATE_EPOCH", SDE)
            .env("IMGBUILD_NOW", NOW)
            .env_remove("IMGBUILD_STATE")
            .env_remove("IMGBUILD_CACHE")
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("master01", "a"));
        let b = s.spawn(|| spawn("master02", "b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let state = lab.path("state/lab");
    for (out, node) in [("a", "master01"), ("b", "master02")] {
        let root = lab.path(&format!("root-{out}"));
        let certs = certificates(&lab.path(&format!("{out}/{node}")), &root);
        assert!(certs.len() > 5, "{certs:?}");
        for cert in certs {
            let rel = cert.strip_prefix(&root).unwrap().to_string_lossy();
            let ca = state.join(ca_of(&rel));
            let said = judge("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&ca)
                .arg(&cert)
                .ok();
            assert!(said.contains(": OK"), "{out}: {rel}: {said}");
        }
    }
}

#[test]
fn pki_status_reports_loose_modes_and_init_sets_them_back() {
    let lab = Lab::new();
    lab.imgbuild(&["pki", "init"]).assert_ok();
    let state = lab.path("state/ilinux");
    let set = |rel: &str, m: u32| {
        std::fs::set_permissions(state.join(rel), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set("pki/ca.key", 0o644);
    set("pki", 0o777);
    let status = lab.imgbuild(&["pki", "status"]).assert_failed();
    let table = status.stdout();
    for (file, was, want) in [("pki/ca.key", "0644", "0600"), ("pki/", "0777", "0700")] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{file} ")))
            .unwrap_or_else(|| panic!("no row for {file}:\n{table}"));
        assert!(
            row.contains(&format!("INSECURE (mode {was}; must be {want}")),
            "{row}"
        );
    }
    let init = lab.imgbuild(&["pki", "init"]).assert_ok();
    init.assert_stderr_has("fixed     pki/ca.key (mode 0644, now 0600)")
        .assert_stderr_has("fixed     pki/ (mode 0777, now 0700)");
    assert_eq!(mode(&state.join("pki/ca.key")), 0o600);
    assert_eq!(mode(&state.join("pki")), 0o700);
    lab.imgbuild(&["pki", "status"]).assert_ok();
}

/// A pid no process has: one that ran and exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn what_a_killed_run_left_is_removed_by_the_next_and_a_live_runs_is_kept() {
    let (lab, server) = synthetic();
    let args = ["node", "--role", "node01", "--out", "out"];
    build(&lab, &server, &args).assert_ok();
    let dead = dead_pid();
    let live = std::process::id();
    let debris = |rel: &str| {
        let p = lab.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"left behind").unwrap();
        p
    };
    let gone = [
        debris(&format!("out/.node01.tmp.{dead}/layers/03-secrets.tar.gz")),
        debris(&format!("out/.node01.old.{dead}/layers/03-secrets.tar.gz")),
        debris(&format!("cache/layers/.{}.{dead}.tar.tmp", "ab".repeat(32))),
        debris(&format!(
            "cache/layers/.{}.json.tmp.{dead}.3",
            "cd".repeat(32)
        )),
        debris(&format!("cache/tmp/oci-{}.{dead}.0.tmp", "ef".repeat(32))),
    ];
    let kept = [
        // a live process's, and a scratch directory whose lock is held
        debris(&format!("out/.node02.tmp.{live}/layers/x")),
        debris(&format!("out/.master01.tmp.{dead}/layers/x")),
        debris(&format!(
            "cache/layers/.{}.json.tmp.{live}.3",
            "cd".repeat(32)
        )),
    ];
    let held = std::fs::File::open(lab.path(&format!("out/.master01.tmp.{dead}"))).unwrap();
    held.lock().unwrap();
    let err = build(&lab, &server, &args).assert_ok().stderr();
    for p in &gone {
        let top = p
            .ancestors()
            .find(|a| a.parent() == Some(&lab.path("out")))
            .unwrap_or(p);
        assert!(!top.exists(), "{} was left:\n{err}", top.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
    assert!(err.contains("a killed run left it"), "{err}");
}

#[test]
fn an_existing_out_root_keeps_its_mode() {
    let (lab, server) = synthetic();
    let out = lab.path("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o750)).unwrap();
    build(&lab, &server, &["node", "--role", "node01"]).assert_ok();
    assert_eq!(mode(&out), 0o750);
    // a new one is 0755
    build(&lab, &server, &["node", "--role", "node01", "--out", "new"]).assert_ok();
    assert_eq!(mode(&lab.path("new")), 0o755);
}

/// Makes a directory read-only for this test, even for root (immutable),
/// until dropped.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: PathBuf) -> ReadOnly {
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            judge("chattr").arg("+i").arg(&dir).ok();
        } else {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        ReadOnly(dir)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_read_only_up_to_date_out_dir_fails_naming_it_and_what_failed() {
    let (lab, server) = synthetic();
    let args = ["node", "--role", "node01", "--out", "out"];
    build(&lab, &server, &args).assert_ok();
    let guard = ReadOnly::new(lab.path("out"));
    let err = build(&lab, &server, &args).assert_failed().stderr();
    drop(guard);
    assert!(
        err.contains("cannot create the scratch directory out/.node01.tmp.")
            && err.contains("in the output directory out (it must be writable)"),
        "{err}"
    );
    assert!(!err.contains("layer store"), "{err}");
}

#[test]
fn an_oci_layout_holds_no_secrets_unless_asked_and_push_include_secrets_says_so() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers,oci"],
    )
    .assert_ok();
    let layout = lab.path("out/node01/oci");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(tags, ["node01"]);
    // no blob of the secrets layer: a whole copy of the layout carries no key
    let image: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("out/node01/image.json")).unwrap())
            .unwrap();
    let secrets = image["layers"][3]["digest"].as_str().unwrap();
    assert!(
        image["layers"][3]["name"]
            .as_str()
            .unwrap()
            .ends_with("-secrets")
    );
    let blob = layout
        .join("blobs/sha256")
        .join(secrets.trim_start_matches("sha256:"));
    assert!(!blob.exists(), "the secrets layer's blob is in the layout");
    // the judges: skopeo copies the layout, umoci reads it
    let copy = lab.path("copy");
    judge("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:node01", layout.display()))
        .arg(format!("oci:{}:node01", copy.display()))
        .ok();
    judge("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:node01", layout.display()))
        .ok();
    lab.imgbuild(&["verify", "out/node01"]).assert_ok();
    // pushing with the secrets layer needs a layout built with it
    lab.imgbuild(&[
        "push",
        "out/node01",
        "127.0.0.1:9/nodes/node01:v1",
        "--include-secrets",
    ])
    .assert_failed()
    .assert_stderr_has("has no OCI image `node01-with-secrets`")
    .assert_stderr_has("rebuild it with --oci-with-secrets");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_reissued_or_refused_for_a_ca() {
    let lab = Lab::new();
    lab.imgbuild(&["pki", "init"]).assert_ok();
    let state = lab.path("state/ilinux");
    let copy = |from: &str, to: &str| std::fs::copy(state.join(from), state.join(to)).unwrap();
    // what a crash between writing a leaf's key and its certificate leaves
    copy(
        "pki/front-proxy-client.key",
        "pki/apiserver-kubelet-client.key",
    );
    lab.imgbuild(&["pki", "init"])
        .assert_ok()
        .assert_stderr_has(
            "re-issued pki/apiserver-kubelet-client.crt (the key does not match the certificate)",
        );
    let public = |args: &[&str]| judge("openssl").args(args).ok();
    let crt = state.join("pki/apiserver-kubelet-client.crt");
    let key = state.join("pki/apiserver-kubelet-client.key");
    assert_eq!(
        public(&["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()]),
        public(&["pkey", "-pubout", "-in", key.to_str().unwrap()])
    );
    // a CA's pair is never replaced silently
    copy("pki/etcd/ca.key", "pki/ca.key");
    lab.imgbuild(&["pki", "init"])
        .assert_failed()
        .assert_stderr_has("pki/ca.key is not the key of");
}

#[test]
fn a_layer_another_builder_holds_does_not_hold_up_the_nodes_other_layers() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "node01"]).assert_ok();
    let base = stored(&lab, "00-base", "tar.gz");
    let key = base
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".tar.gz", "");
    let store = lab.path("cache/layers");
    // an empty store but for the lock files: every layer is built again
    for e in std::fs::read_dir(&store).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".lock") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    // another builder (flock(1) here) holds 00-base for 5 s
    let held = lab.path("held");
    let mut other = Command::new("flock")
        .arg(store.join(format!("{key}.lock")))
        .args(["sh", "-c", "touch \"$0\"; sleep 5", held.to_str().unwrap()])
        .spawn()
        .expect("flock (util-linux)");
    while !held.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let run = build(
        &lab,
        &server,
        &["node", "--role", "node01", "--out", "again"],
    );
    other.wait().unwrap();
    run.assert_ok();
    let released =
        std::fs::metadata(&held).unwrap().modified().unwrap() + std::time::Duration::from_secs(3);
    let written = |name: &str| {
        std::fs::metadata(stored(&lab, name, "tar.gz"))
            .unwrap()
            .modified()
            .unwrap()
    };
    // the node's other shared layers were built while it waited, 00-base after
    assert!(written("00-base") >= released);
    let mut others = Vec::new();
    for e in std::fs::read_dir(lab.path("again/node01/layers")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(layer) = name.strip_suffix(".tar.gz")
            && layer != "00-base"
            && !layer.ends_with("-secrets")
        {
            others.push(layer.to_string());
        }
    }
    assert!(!others.is_empty());
    for name in &others {
        assert!(written(name) < released, "{name} waited for 00-base");
    }
    assert_eq!(
        std::fs::read(lab.path("again/node01/layers/00-base.tar.gz")).unwrap(),
        std::fs::read(lab.path("out/node01/layers/00-base.tar.gz")).unwrap()
    );
}

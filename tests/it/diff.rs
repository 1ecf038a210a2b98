//! `imgbuild diff OLD NEW` on real builds of the lab: a pin bumped, a node's
//! address changed, a node replaced in a cluster tree. What diff reports is
//! judged by tar and diff(1) run on the extracted layers; a hostile
//! directory is refused with exit 2.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::artifacts::{Serve, serve};
use crate::build::{build, build_layers, synthetic};
use crate::judge::judge;
use crate::lab::{Lab, Run};

/// `imgbuild diff` with `args` in the lab: its exit code and output.
fn diff(lab: &Lab, args: &[&str]) -> (Option<i32>, Run) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let run = lab.imgbuild(&all);
    (run.out.status.code(), run)
}

/// `diff --json OLD NEW`, which must say they differ.
fn diff_json(lab: &Lab, old: &str, new: &str) -> Value {
    let (code, run) = diff(lab, &["--json", old, new]);
    assert_eq!(code, Some(1), "{}", run.stderr());
    serde_json::from_str(&run.stdout()).expect("diff --json prints JSON")
}

/// The pin of crictl bumped to v1.35.1 (its version, URL and checksum), the
/// artifacts served again.
fn bump_crictl(lab: &Lab, server: &crate::http::Server) {
    let pins = lab.path("manifests/pins.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    assert_eq!(text.matches("v1.35.0").count(), 3, "crictl's pin: {text}");
    std::fs::write(&pins, text.replace("v1.35.0", "v1.35.1")).unwrap();
    serve(lab, server, Serve::Mirror, 64 << 10);
}

/// The paths whose content differs between two layer files, by GNU tar and
/// diff(1) on the extracted trees (`/etc/x`).
fn changed_by_tar(lab: &Lab, old: &Path, new: &Path) -> BTreeSet<String> {
    let scratch = tempfile::tempdir_in(lab.dir.path()).unwrap();
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    for (layer, root) in [(old, &a), (new, &b)] {
        std::fs::create_dir(root).unwrap();
        judge("tar").arg("-xzf").arg(layer).arg("-C").arg(root).ok();
    }
    let out = judge("diff")
        .args(["-rq", "--no-dereference"])
        .arg(&a)
        .arg(&b)
        .output();
    assert!(out.status.code() == Some(0) || out.status.code() == Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rel = |p: &str| {
        let p = p.strip_prefix(a.to_str().unwrap()).unwrap_or(p);
        p.strip_prefix(b.to_str().unwrap()).unwrap_or(p).to_string()
    };
    text.lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("Files ") {
                rel(rest.split(" and ").next().unwrap())
            } else {
                // "Only in DIR: NAME"
                let (dir, name) = l
                    .strip_prefix("Only in ")
                    .unwrap()
                    .split_once(": ")
                    .unwrap();
                format!("{}/{name}", rel(dir)).replacen("//", "/", 1)
            }
        })
        .collect()
}

/// The layer `stem` of a node's JSON diff.
fn layer<'a>(node: &'a Value, stem: &str) -> &'a Value {
    node["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == stem)
        .unwrap_or_else(|| panic!("no layer {stem} in {node}"))
}

fn paths(layer: &Value) -> BTreeSet<String> {
    layer["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// The one input changed: crictl's version, URL and checksum.
fn the_one_input_is_crictl(node: &Value) {
    let inputs = node["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    let i = &inputs[0];
    assert_eq!(
        (&i["artifact"], &i["change"]),
        (&"crictl".into(), &"changed".into())
    );
    assert_eq!(
        (&i["old"]["version"], &i["new"]["version"]),
        (&"v1.35.0".into(), &"v1.35.1".into())
    );
    assert!(
        i["new"]["url"]
            .as_str()
            .unwrap()
            .contains("/v1.35.1/crictl-v1.35.1-")
    );
    assert_ne!(i["old"]["checksum"], i["new"]["checksum"]);
    assert_eq!(
        node["versions"],
        serde_json::json!([{"name": "crictl", "old": "v1.35.0", "new": "v1.35.1"}])
    );
    assert_eq!(node["image"], serde_json::json!([]));
}

/// The table of the bump names the input, the layer and the file.
fn the_table_names_the_bump(lab: &Lab) {
    let (code, run) = diff(lab, &["old/node01", "new/node01"]);
    assert_eq!(code, Some(1));
    let t = run.stdout();
    for want in [
        "node01: changed",
        "~ crictl v1.35.0 -> v1.35.1",
        "~ worker (01-worker ",
        "~ /usr/local/bin/crictl  content sha256 ",
        "= base unchanged",
        "= secrets unchanged",
        "1 of 1 node(s) differ",
    ] {
        assert!(t.contains(want), "lacks `{want}`:\n{t}");
    }
}

#[test]
fn diff_of_two_identical_builds_says_no_difference_and_exits_0() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "out-a");
    build_layers(&lab, &server, "node01", "out-b");
    let (code, run) = diff(&lab, &["out-a/node01", "out-b/node01"]);
    assert_eq!(code, Some(0), "{}", run.stderr());
    assert_eq!(run.stdout(), "node01: no difference\nno difference\n");
    let (code, run) = diff(&lab, &["--json", "out-a", "out-b"]);
    assert_eq!(code, Some(0), "{}", run.stderr());
    let v: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(v["schema"], "imgbuild-diff/1");
    assert_eq!(v["identical"], true);
    assert_eq!(v["nodes"][0]["node"], "node01");
    assert_eq!(v["nodes"][0]["status"], "unchanged");
    for l in v["nodes"][0]["layers"].as_array().unwrap() {
        assert_eq!(l["status"], "unchanged", "{l}");
        assert_eq!(l["files_compared"], false, "{l}");
    }
}

#[test]
fn diff_of_a_bumped_pin_names_that_input_and_the_one_file_it_brings() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "old");
    bump_crictl(&lab, &server);
    build_layers(&lab, &server, "node01", "new");
    let v = diff_json(&lab, "old/node01", "new/node01");
    assert_eq!(v["identical"], false);
    let node = &v["nodes"][0];
    assert_eq!(node["status"], "changed");
    the_one_input_is_crictl(node);
    // the worker layer alone, and in it /usr/local/bin/crictl alone, as tar
    // and diff(1) see the extracted layers
    let worker = layer(node, "worker");
    assert_eq!(worker["status"], "changed");
    let file = |dir: &str| lab.path(&format!("{dir}/node01/layers/01-worker.tar.gz"));
    let truth = changed_by_tar(&lab, &file("old"), &file("new"));
    assert_eq!(truth, BTreeSet::from(["/usr/local/bin/crictl".to_string()]));
    assert_eq!(paths(worker), truth);
    let f = &worker["files"][0];
    assert_eq!(f["what"], serde_json::json!(["content"]));
    assert_eq!(f["new"]["mode"], "0755");
    let sha = |dir: &str| {
        let root = lab.path(&format!("{dir}-x"));
        std::fs::create_dir(&root).unwrap();
        judge("tar")
            .arg("-xzf")
            .arg(file(dir))
            .arg("-C")
            .arg(&root)
            .ok();
        let out = judge("sha256sum")
            .arg(root.join("usr/local/bin/crictl"))
            .ok();
        out.split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(f["old"]["sha256"], sha("old"));
    assert_eq!(f["new"]["sha256"], sha("new"));
    for stem in ["base", "node", "secrets"] {
        assert_eq!(layer(node, stem)["status"], "unchanged", "{stem}");
    }
    assert_eq!(
        node["pki"],
        serde_json::json!({"added": [], "removed": [], "changed": []})
    );
    the_table_names_the_bump(&lab);
}

#[test]
fn diff_of_a_changed_node_address_names_its_etc_files_and_reissued_certificates_only() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "old");
    let lab = lab.edit("cluster.yaml", "ip: 127.0.10.11", "ip: 127.0.10.21");
    build_layers(&lab, &server, "node01", "new");
    let v = diff_json(&lab, "old/node01", "new/node01");
    let node = &v["nodes"][0];
    assert_eq!(node["inputs"], serde_json::json!([]), "no input changed");
    let file = |dir: &str, l: &str| lab.path(&format!("{dir}/node01/layers/{l}.tar.gz"));
    for (stem, l) in [
        ("worker", "01-worker"),
        ("node", "02-node"),
        ("secrets", "03-secrets"),
    ] {
        let truth = changed_by_tar(&lab, &file("old", l), &file("new", l));
        let d = layer(node, stem);
        assert_eq!(paths(d), truth, "layer {stem}: {d}");
        if !truth.is_empty() {
            assert_eq!(d["status"], "changed");
        }
    }
    let node_layer = paths(layer(node, "node"));
    assert!(!node_layer.is_empty());
    assert!(
        node_layer.iter().all(|p| p.starts_with("/etc/")),
        "{node_layer:?}"
    );
    // the kubelet's serving certificate names the new address: re-issued
    let pki: BTreeSet<String> = node["pki"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(pki.contains("/etc/kubernetes/pki/kubelet.crt"), "{pki:?}");
    assert_eq!(pki, paths(layer(node, "secrets")));
    let root = lab.path("new-secrets");
    std::fs::create_dir(&root).unwrap();
    judge("tar")
        .arg("-xzf")
        .arg(file("new", "03-secrets"))
        .arg("-C")
        .arg(&root)
        .ok();
    let text = judge("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(root.join("etc/kubernetes/pki/kubelet.crt"))
        .ok();
    assert!(text.contains("IP Address:127.0.10.21"), "{text}");
    // names only: no digest of a secret file, in the JSON or the table
    for f in layer(node, "secrets")["files"].as_array().unwrap() {
        assert!(
            f["old"].get("sha256").is_none() && f["new"].get("sha256").is_none(),
            "{f}"
        );
    }
    let (_, run) = diff(&lab, &["old/node01", "new/node01"]);
    let t = run.stdout();
    assert!(t.contains("~ /etc/kubernetes/pki/kubelet.crt"), "{t}");
    assert!(t.contains("content (not shown)"), "{t}");
    assert!(!t.contains("BEGIN"), "{t}");
}

#[test]
fn diff_of_two_cluster_trees_pairs_nodes_by_name() {
    let (lab, server) = synthetic();
    let args = |out: &'static str| ["cluster", "--format", "layers", "--out", out];
    build(&lab, &server, &args("old"), &[]).assert_ok();
    // node01 moves to another address; node02 gives way to node03
    let lab = lab
        .edit("cluster.yaml", "ip: 127.0.10.11", "ip: 127.0.10.21")
        .edit("cluster.yaml", "name: node02", "name: node03");
    build(&lab, &server, &args("new"), &[]).assert_ok();
    let v = diff_json(&lab, "old", "new");
    let status: Vec<(String, String)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().into(),
                n["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("master01", "unchanged"),
        ("master02", "unchanged"),
        ("master03", "unchanged"),
        ("node01", "changed"),
        ("node02", "removed"),
        ("node03", "added"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(status, want);
    let (code, run) = diff(&lab, &["old", "new"]);
    assert_eq!(code, Some(1));
    let t = run.stdout();
    for want in [
        "master01: no difference",
        "node01: changed",
        "node02: removed (only in OLD)",
        "node03: added (only in NEW)",
        "3 of 6 node(s) differ",
    ] {
        assert!(t.contains(want), "lacks `{want}`:\n{t}");
    }
    // a tree against a node directory: refused
    let (code, run) = diff(&lab, &["old", "new/node01"]);
    assert_eq!(code, Some(2));
    assert!(
        run.stderr().contains("new/node01 is a node directory"),
        "{}",
        run.stderr()
    );
    // a node directory linked into a tree: refused, not followed
    std::os::unix::fs::symlink("../old/master01", lab.path("new/master04")).unwrap();
    let (code, run) = diff(&lab, &["old", "new"]);
    assert_eq!(code, Some(2));
    let err = run.stderr();
    assert!(err.contains("new/master04 is a symbolic link"), "{err}");
}

#[test]
fn diff_refuses_a_linked_image_json_a_truncated_layer_and_a_foreign_one_with_exit_2() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "old");
    bump_crictl(&lab, &server);
    build_layers(&lab, &server, "node01", "new");
    let refused = |what: &str, want: &str| {
        let (code, run) = diff(&lab, &["old/node01", "new/node01"]);
        assert_eq!(code, Some(2), "{what}: {}", run.stderr());
        assert!(
            run.stderr().contains(want),
            "{what}: lacks `{want}`:\n{}",
            run.stderr()
        );
        assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
    };
    let dir = lab.path("new/node01");
    let layer = dir.join("layers/01-worker.tar.gz");
    let good = std::fs::read(&layer).unwrap();
    // a layer cut short
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&layer, &good[..good.len() / 2]).unwrap();
    refused(
        "truncated",
        "new/node01/layers/01-worker.tar.gz: not a gzip'd or zstd'd tar",
    );
    // another build's layer, whole, under the name image.json gives
    std::fs::remove_file(&layer).unwrap();
    std::fs::copy(lab.path("old/node01/layers/01-worker.tar.gz"), &layer).unwrap();
    refused(
        "foreign",
        "new/node01/layers/01-worker.tar.gz: it is sha256:",
    );
    // the layer linked out of the directory
    std::fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink(lab.path("old/node01/layers/01-worker.tar.gz"), &layer).unwrap();
    refused(
        "linked layer",
        "new/node01/layers/01-worker.tar.gz is a symbolic link",
    );
    // image.json linked
    let image = dir.join("image.json");
    std::fs::rename(&image, dir.join("image.json.real")).unwrap();
    std::os::unix::fs::symlink("image.json.real", &image).unwrap();
    refused(
        "linked image.json",
        "new/node01/image.json is a symbolic link",
    );
    // image.json missing, then not JSON
    std::fs::remove_file(&image).unwrap();
    refused("missing", "new/node01/image.json is missing");
    std::fs::write(&image, "{\"node\": 1").unwrap();
    refused(
        "broken",
        "new/node01/image.json is not the image.json imgbuild writes",
    );
}

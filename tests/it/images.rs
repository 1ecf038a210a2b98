//! Container images by digest from a real registry, baked into the layers.

use crate::artifacts::{Serve, serve};
use crate::http::Server;
use crate::judge::judge;
use crate::lab::Lab;
use crate::registry::{Registry, mirrors, seed};

pub(crate) fn lab_with_images() -> (
    Lab,
    Server,
    Registry,
    Vec<(String, crate::registry::Pushed)>,
) {
    let server = Server::start();
    let lab = Lab::new().edit(
        "cluster.yaml",
        "ip: 172.16.0.106\n    arch: amd64",
        "ip: 172.16.0.106\n    arch: arm64",
    );
    serve(&lab, &server, Serve::Mirror, 4 << 10);
    let reg = Registry::start();
    let pushed = seed(&lab, &reg);
    (lab, server, reg, pushed)
}

pub(crate) fn run(lab: &Lab, server: &Server, reg: &Registry, args: &[&str]) -> crate::lab::Run {
    let mut all: Vec<String> = vec![
        "--cache".into(),
        "cache".into(),
        "--mirror".into(),
        server.url("mirror"),
    ];
    all.extend(mirrors(reg));
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    lab.imgbuild_env(&refs, &[("SOURCE_DATE_EPOCH", "1700000000")])
}

/// An image archive baked into a layer holds the pinned index byte for
/// byte, and resolves to `arch` with its layer.
fn judge_image_archive(
    archive: &std::path::Path,
    what: &str,
    arch: &str,
    p: &crate::registry::Pushed,
) {
    let raw = judge("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:{}", archive.display(), p.tag))
        .ok_bytes();
    use sha2::Digest;
    // the archive's image is the pinned index, byte for byte
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw))),
        p.index,
        "{what}"
    );
    let info = judge("skopeo")
        .args(["inspect", "--override-arch", arch])
        .arg(format!("oci-archive:{}:{}", archive.display(), p.tag))
        .ok();
    assert!(
        info.contains(&format!("\"Architecture\": \"{arch}\"")),
        "{what}: {info}"
    );
    let layer = &p.layers.iter().find(|(a, _)| a == arch).unwrap().1;
    assert!(
        info.contains(layer.as_str()),
        "{what} lacks its {arch} layer: {info}"
    );
}

#[test]
fn images_are_pulled_by_digest_per_arch_and_baked_into_the_layers() {
    let (lab, server, reg, pushed) = lab_with_images();
    run(&lab, &server, &reg, &["node", "--role", "node01"]).assert_ok();
    run(&lab, &server, &reg, &["node", "--role", "node03"]).assert_ok();
    for (node, arch) in [("node01", "amd64"), ("node03", "arm64")] {
        let root = lab.path(&format!("root-{node}"));
        std::fs::create_dir_all(&root).unwrap();
        judge("tar")
            .arg("-xzf")
            .arg(lab.path(&format!("out/{node}/layers/01-worker.tar.gz")))
            .arg("-C")
            .arg(&root)
            .ok();
        for (name, p) in &pushed {
            let archive = root.join(format!("var/lib/imgbuild/images/{name}.oci.tar"));
            judge_image_archive(&archive, &format!("{node} {name}"), arch, p);
        }
    }
    // the import unit runs before kubelet
    let unit =
        std::fs::read_to_string(lab.path("root-node01/etc/systemd/system/imgbuild-images.service"))
            .unwrap();
    assert!(unit.contains("Before=kubelet.service"), "{unit}");
    let containerd =
        std::fs::read_to_string(lab.path("root-node01/etc/containerd/config.toml")).unwrap();
    let pause = &pushed.iter().find(|(n, _)| n == "pause").unwrap().1.index;
    assert!(
        containerd.contains(&format!("sandbox = 'registry.k8s.io/pause:3.10.1@{pause}'")),
        "{containerd}"
    );
}

#[test]
fn a_tampered_image_blob_is_refused_naming_both_digests() {
    let (lab, server, reg, pushed) = lab_with_images();
    let (_, p) = pushed.iter().find(|(n, _)| n == "coredns").unwrap();
    let layer = &p.layers.iter().find(|(a, _)| a == "amd64").unwrap().1;
    let data = reg.blob_data(layer);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    use sha2::Digest;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    let run = run(&lab, &server, &reg, &["node", "--role", "node01"]).assert_failed();
    let err = run.stderr();
    assert!(err.contains(&format!("image registry.k8s.io/coredns/coredns:v1.13.1: blob {layer} does not match its digest: the registry served sha256:{actual}")), "{err}");
    assert!(
        !lab.path(&format!(
            "cache/blobs/sha256/{}",
            layer.trim_start_matches("sha256:")
        ))
        .exists()
    );
}

#[test]
fn a_node_builds_offline_from_the_cache_alone() {
    let (lab, server, reg, _) = lab_with_images();
    run(&lab, &server, &reg, &["fetch", "--role", "node01"]).assert_ok();
    drop(reg);
    run_offline(&lab, &["node", "--role", "node01"]).assert_ok();
}

fn run_offline(lab: &Lab, args: &[&str]) -> crate::lab::Run {
    let mut all = vec!["--cache", "cache", "--offline"];
    all.extend_from_slice(args);
    lab.imgbuild_env(&all, &[("SOURCE_DATE_EPOCH", "1700000000")])
}

#[test]
fn a_bundle_with_images_builds_a_node_offline_into_an_empty_cache() {
    let (lab, server, reg, _) = lab_with_images();
    run(&lab, &server, &reg, &["bundle", "export", "site.tar"]).assert_ok();
    drop(reg);
    lab.imgbuild(&["bundle", "import", "site.tar", "--cache", "site-cache"])
        .assert_ok();
    let run = lab.imgbuild_env(
        &[
            "--cache",
            "site-cache",
            "--offline",
            "node",
            "--role",
            "node01",
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    run.assert_ok();
    assert!(lab.path("out/node01/layers/01-worker.tar.gz").is_file());
}

/// The manifest of `tag` in the OCI layout, as skopeo reads it.
fn raw_manifest(layout: &std::path::Path, tag: &str) -> serde_json::Value {
    let raw = judge("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .ok_bytes();
    serde_json::from_slice(&raw).unwrap()
}

/// The tags of an OCI layout's index.
fn tags(index: &serde_json::Value) -> Vec<&str> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect()
}

/// What `skopeo inspect` says of the image `tag` of the layout.
fn inspect(layout: &std::path::Path, tag: &str) -> String {
    judge("skopeo")
        .args(["inspect"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .ok()
}

/// umoci accepts the image `tag` of the layout.
fn umoci_stat(layout: &std::path::Path, tag: &str) {
    judge("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .ok();
}

fn oci_index(lab: &Lab, out: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(lab.path(&format!("{out}/oci/index.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn the_node_image_is_a_reproducible_oci_layout_that_skopeo_and_umoci_accept() {
    let (lab, server, reg, _) = lab_with_images();
    for (jobs, formats, out) in [("2", "layers,oci", "a"), ("1", "oci", "b")] {
        let args = [
            "--jobs", jobs, "node", "--role", "node01", "--format", formats,
        ];
        let with = ["--oci-with-secrets", "--out", out];
        let all: Vec<&str> = args.iter().chain(with.iter()).copied().collect();
        run(&lab, &server, &reg, &all).assert_ok();
    }
    let (a, b) = (oci_index(&lab, "a/node01"), oci_index(&lab, "b/node01"));
    assert_eq!(a, b, "two builds gave different OCI manifests");
    assert_eq!(tags(&a), ["node01", "node01-with-secrets"]);
    let layout = lab.path("a/node01/oci");
    let info = inspect(&layout, "node01");
    assert!(info.contains("\"io.imgbuild.node\": \"node01\""), "{info}");
    assert!(
        info.contains("\"Created\": \"2023-11-14T22:13:20Z\""),
        "{info}"
    );
    // three public layers; the secrets layer only in the -with-secrets image
    assert_eq!(
        raw_manifest(&layout, "node01")["layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let m = raw_manifest(&layout, "node01-with-secrets");
    assert_eq!(m["layers"].as_array().unwrap().len(), 4);
    // the layer blobs are the layer files
    let image: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("a/node01/image.json")).unwrap())
            .unwrap();
    assert_eq!(m["layers"][0]["digest"], image["layers"][0]["digest"]);
    for tag in ["node01", "node01-with-secrets"] {
        umoci_stat(&layout, tag);
    }
    let tags = judge("umoci").args(["ls", "--layout"]).arg(&layout).ok();
    assert!(tags.contains("node01-with-secrets"), "{tags}");
}

#[test]
fn push_leaves_the_secrets_out_unless_asked_and_copies_back_to_the_same_digest() {
    let (lab, server, reg, _) = lab_with_images();
    run(
        &lab,
        &server,
        &reg,
        &[
            "node",
            "--role",
            "node01",
            "--format",
            "oci",
            "--oci-with-secrets",
        ],
    )
    .assert_ok();
    let index = oci_index(&lab, "out/node01");
    let public = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let dest = format!("127.0.0.1:{}/nodes/node01:v1", reg.port);
    let pushed = lab.imgbuild(&["push", "out/node01", &dest]).assert_ok();
    assert!(
        pushed.stderr().contains("the secrets layer is left out"),
        "{}",
        pushed.stderr()
    );
    assert_eq!(pushed.stdout().trim(), format!("{dest}@{public}"));
    let back = lab.path("back");
    judge("skopeo")
        .args(["copy", "--src-tls-verify=false", "--quiet"])
        .arg(format!("docker://{dest}"))
        .arg(format!("oci:{}:v1", back.display()))
        .ok();
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"][0]["digest"].as_str().unwrap(), public);
    // with --include-secrets, the other manifest, and a warning
    let dest2 = format!("127.0.0.1:{}/nodes/node01:v1-secrets", reg.port);
    let pushed = lab
        .imgbuild(&["push", "out/node01", &dest2, "--include-secrets"])
        .assert_ok();
    assert!(
        pushed
            .stderr()
            .contains("warning: pushing WITH the secrets layer"),
        "{}",
        pushed.stderr()
    );
    assert_eq!(
        pushed.stdout().trim(),
        format!(
            "{dest2}@{}",
            index["manifests"][1]["digest"].as_str().unwrap()
        )
    );
}

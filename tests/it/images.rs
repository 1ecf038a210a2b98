//! Container images by digest from a real registry, baked into the layers.

use std::process::Command;

use crate::artifacts::{Serve, serve};
use crate::http::Server;
use crate::lab::Lab;
use crate::registry::{Registry, mirrors, seed};

fn lab_with_images() -> (
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

fn run(lab: &Lab, server: &Server, reg: &Registry, args: &[&str]) -> crate::lab::Run {
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

#[test]
fn issue6_images_pulled_by_digest_per_arch_and_baked_in() {
    let (lab, server, reg, pushed) = lab_with_images();
    run(&lab, &server, &reg, &["node", "--role", "node01"]).assert_ok();
    run(&lab, &server, &reg, &["node", "--role", "node03"]).assert_ok();
    for (node, arch) in [("node01", "amd64"), ("node03", "arm64")] {
        let root = lab.path(&format!("root-{node}"));
        std::fs::create_dir_all(&root).unwrap();
        let ok = Command::new("tar")
            .arg("-xzf")
            .arg(lab.path(&format!("out/{node}/layers/01-worker.tar.gz")))
            .arg("-C")
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success());
        for (name, p) in &pushed {
            let archive = root.join(format!("var/lib/imgbuild/images/{name}.oci.tar"));
            let o = Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}", archive.display()))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{node} {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            use sha2::Digest;
            // the archive's image is the pinned index, byte for byte
            assert_eq!(
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(&o.stdout))),
                p.index,
                "{node} {name}"
            );
            let o = Command::new("skopeo")
                .args(["inspect", "--override-arch", arch])
                .arg(format!("oci-archive:{}", archive.display()))
                .output()
                .unwrap();
            let info = String::from_utf8_lossy(&o.stdout);
            assert!(
                info.contains(&format!("\"Architecture\": \"{arch}\"")),
                "{node} {name}: {info}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let layer = &p.layers.iter().find(|(a, _)| a == arch).unwrap().1;
            assert!(
                info.contains(layer.as_str()),
                "{node} {name} lacks its {arch} layer: {info}"
            );
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
fn issue6_a_tampered_blob_is_refused_naming_both_digests() {
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
    assert!(err.contains(&format!("image registry.k8s.io/coredns/coredns:v1.12.4: blob {layer} does not match its digest: the registry served sha256:{actual}")), "{err}");
    assert!(
        !lab.path(&format!(
            "cache/blobs/sha256/{}",
            layer.trim_start_matches("sha256:")
        ))
        .exists()
    );
}

#[test]
fn issue6_offline_build_from_the_cache_alone() {
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
fn issue6_bundle_with_images_then_offline_build_in_an_empty_cache() {
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

//! `imgbuild fetch` against a local HTTP server with injected faults, the
//! content-addressed cache, mirrors, and air-gap bundles.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::artifacts::{Serve, Served, serve};
use crate::http::{Fault, Server};
use crate::judge::judge;
use crate::lab::Lab;

/// The amd64 artifacts the six nodes of the example need.
const NEEDED: [&str; 7] = [
    "cni-plugins",
    "containerd",
    "crictl",
    "etcd",
    "kubernetes-node",
    "kubernetes-server",
    "runc",
];

fn blob(lab: &Lab, served: &Served, name: &str) -> std::path::PathBuf {
    lab.path("cache").join(served.blob(name))
}

fn assert_cache_complete(lab: &Lab, served: &Served) {
    for name in NEEDED {
        let (_, _, bytes) = &served.files[&(name.to_string(), "amd64".to_string())];
        let got =
            std::fs::read(blob(lab, served, name)).unwrap_or_else(|_| panic!("{name} not cached"));
        assert_eq!(&got, bytes, "{name}");
    }
    // the Kubernetes tarballs are pinned by sha512, the rest by sha256
    assert!(
        served
            .blob("kubernetes-server")
            .starts_with("blobs/sha512/")
    );
    assert!(served.blob("etcd").starts_with("blobs/sha256/"));
}

fn parts(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.path("cache/tmp"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn fetch(lab: &Lab, extra: &[&str]) -> crate::lab::Run {
    let mut args = vec!["fetch", "--cache", "cache"];
    args.extend_from_slice(extra);
    lab.imgbuild(&args)
}

#[test]
fn fetch_fills_the_cache_and_a_second_run_downloads_nothing() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Direct, 64 << 10);
    let run = fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
    let out = run.stdout();
    assert!(out.starts_with("ARTIFACT"), "{out}");
    for name in NEEDED {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: {out}"));
        assert!(line.contains("downloaded http://127.0.0.1"), "{line}");
    }
    assert!(parts(&lab).is_empty(), "{:?}", parts(&lab));
    let before = server.total_requests();
    let run = fetch(&lab, &[]).assert_ok();
    assert_eq!(
        server.total_requests(),
        before,
        "a cached artifact was downloaded again"
    );
    assert_eq!(
        run.stdout().matches(" cached").count(),
        NEEDED.len(),
        "{}",
        run.stdout()
    );
}

#[test]
fn fetch_for_one_role_takes_only_what_it_needs() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    serve(&lab, &server, Serve::Direct, 4 << 10);
    let out = fetch(&lab, &["--role", "worker"]).assert_ok().stdout();
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cni-plugins",
            "containerd",
            "crictl",
            "kubernetes-node",
            "runc"
        ]
    );
}

fn one_fault(fault: Fault) -> (Server, Lab, Served) {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Direct, 256 << 10);
    server.fault(served.path("etcd"), fault);
    (server, lab, served)
}

#[test]
fn a_truncated_body_is_resumed_with_a_range_request() {
    let (server, lab, served) = one_fault(Fault::Truncate(1));
    fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
    let reqs = server.requests(served.path("etcd"));
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    let half = served.files[&("etcd".into(), "amd64".into())].2.len() / 2;
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn a_connection_reset_mid_body_is_resumed() {
    let (server, lab, served) = one_fault(Fault::Reset(2));
    fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
    let reqs = server.requests(served.path("etcd"));
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert!(reqs[1..].iter().all(|r| r.range.is_some()), "{reqs:?}");
}

#[test]
fn server_errors_are_retried() {
    let (server, lab, served) = one_fault(Fault::Fail(2));
    fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
    assert_eq!(server.requests(served.path("etcd")).len(), 3);
}

#[test]
fn a_persistent_server_error_names_the_url_and_status() {
    let (_server, lab, served) = one_fault(Fault::Fail(100));
    let run = fetch(&lab, &[]).assert_failed();
    let (path, _, _) = &served.files[&("etcd".into(), "amd64".into())];
    assert!(run.stderr().contains("etcd v3.6.14"), "{}", run.stderr());
    assert!(
        run.stderr().contains(&format!("{path} answered HTTP 500")),
        "{}",
        run.stderr()
    );
    assert!(!blob(&lab, &served, "etcd").exists());
}

#[test]
fn a_slow_drip_completes() {
    let (_server, lab, served) = one_fault(Fault::Drip {
        chunk: 16 << 10,
        delay: Duration::from_millis(5),
    });
    fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
}

#[test]
fn wrong_bytes_are_refused_naming_everything_and_leave_the_cache_as_it_was() {
    let (_server, lab, served) = one_fault(Fault::WrongBytes);
    let run = fetch(&lab, &[]).assert_failed();
    let (path, sha, bytes) = &served.files[&("etcd".into(), "amd64".into())];
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let actual = hex::encode(Sha256::digest(&bad));
    let err = run.stderr();
    assert!(
        err.contains("checksum mismatch for etcd v3.6.14 from http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains(path.as_str()), "{err}");
    assert!(
        err.contains(&format!("expected sha256:{sha}, got sha256:{actual}")),
        "{err}"
    );
    assert!(
        !blob(&lab, &served, "etcd").exists(),
        "an unverified blob entered the cache"
    );
    assert!(
        !std::fs::read_dir(lab.path("cache/blobs/sha256"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy() == actual)
    );
    assert!(
        parts(&lab).is_empty(),
        "partial file left: {:?}",
        parts(&lab)
    );
}

#[test]
fn a_server_that_ignores_range_makes_the_download_restart_from_zero() {
    let (server, lab, served) = one_fault(Fault::Truncate(1));
    server.fault(served.path("etcd"), Fault::NoRange);
    fetch(&lab, &[]).assert_ok();
    assert_cache_complete(&lab, &served);
    let reqs = server.requests(served.path("etcd"));
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].range.is_some(),
        "the second request should ask for a range"
    );
}

#[test]
fn offline_fails_at_once_naming_every_missing_artifact() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    serve(&lab, &server, Serve::Direct, 1024);
    let run = fetch(&lab, &["--offline"]).assert_failed();
    assert_eq!(server.total_requests(), 0, "offline reached the network");
    let err = run.stderr();
    assert!(
        err.contains("offline, and 7 artifacts are missing from the cache"),
        "{err}"
    );
    for name in NEEDED {
        assert!(err.contains(&format!("  {name} ")), "{name}: {err}");
    }
}

#[test]
fn a_mirror_in_the_upstream_layout_serves_when_an_earlier_one_is_down() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Mirror, 4 << 10);
    let mirror = server.url("mirror");
    let run = fetch(
        &lab,
        &[
            "--mirror",
            "http://127.0.0.1:9/nothing-here",
            "--mirror",
            &mirror,
        ],
    )
    .assert_ok();
    assert_cache_complete(&lab, &served);
    assert!(
        run.stdout().contains(&format!(
            "mirror {mirror}/dl.k8s.io/v1.35.4/kubernetes-server-linux-amd64.tar.gz"
        )),
        "{}",
        run.stdout()
    );
}

#[test]
fn a_fetch_killed_mid_download_resumes_on_the_next_run_and_ends_verified() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Direct, 2 << 20);
    let path = served.path("kubernetes-server").to_string();
    server.fault(
        &path,
        Fault::Drip {
            chunk: 64 << 10,
            delay: Duration::from_millis(20),
        },
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(lab.dir.path())
        .args(["fetch", "--cache", "cache", "--role", "master01"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (_, sha, _) = &served.files[&("kubernetes-server".into(), "amd64".into())];
    let part = lab.path("cache/tmp").join(format!("sha512-{sha}.part"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 256 << 10 {
        assert!(Instant::now() < deadline, "no partial download appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no chance to clean up
    judge("kill").args(["-9", &child.id().to_string()]).ok();
    let _ = child.wait();
    assert!(
        !blob(&lab, &served, "kubernetes-server").exists(),
        "a partial download was committed"
    );
    fetch(&lab, &["--role", "master01"]).assert_ok();
    let got = std::fs::read(blob(&lab, &served, "kubernetes-server")).unwrap();
    assert_eq!(hex::encode(sha2::Sha512::digest(&got)), *sha);
    let reqs = server.requests(&path);
    assert!(
        reqs.last().unwrap().range.is_some(),
        "the second run did not resume: {reqs:?}"
    );
}

#[test]
fn two_concurrent_fetches_into_one_cache_both_succeed_downloading_each_artifact_once() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Direct, 512 << 10);
    for name in NEEDED {
        server.fault(
            served.path(name),
            Fault::Drip {
                chunk: 64 << 10,
                delay: Duration::from_millis(2),
            },
        );
    }
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .current_dir(lab.dir.path())
            .args(["fetch", "--cache", "cache"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_cache_complete(&lab, &served);
    for name in NEEDED {
        // the lock lets exactly one of them download each artifact
        assert_eq!(server.requests(served.path(name)).len(), 1, "{name}");
    }
}

fn untar(file: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    judge("tar").arg("-xf").arg(file).arg("-C").arg(into).ok();
}

#[test]
fn an_exported_bundle_imports_for_an_offline_fetch_and_serves_as_a_mirror() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Mirror, 8 << 10);
    let mirror = server.url("mirror");
    lab.imgbuild(&[
        "bundle", "export", "site.tar", "--cache", "cache", "--mirror", &mirror,
    ])
    .assert_ok();
    // the bundle lists every file in SHA256SUMS, which `sha256sum -c` accepts
    let unpacked = lab.path("unpacked");
    untar(&lab.path("site.tar"), &unpacked);
    judge("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&unpacked)
        .ok();
    assert!(unpacked.join("manifests/cluster.yaml").is_file());
    assert!(
        unpacked
            .join("dl.k8s.io/v1.35.4/kubernetes-server-linux-amd64.tar.gz")
            .is_file()
    );

    // an air-gapped site: empty cache, import, then --offline
    lab.imgbuild(&["bundle", "import", "site.tar", "--cache", "site-cache"])
        .assert_ok();
    let before = server.total_requests();
    let run = lab
        .imgbuild(&["fetch", "--cache", "site-cache", "--offline"])
        .assert_ok();
    assert_eq!(server.total_requests(), before);
    assert_eq!(run.stdout().matches(" cached").count(), NEEDED.len());

    // the unpacked bundle is a mirror, through file:// and over HTTP
    let file_mirror = format!("file://{}", unpacked.display());
    let run = lab
        .imgbuild(&["fetch", "--cache", "file-cache", "--mirror", &file_mirror])
        .assert_ok();
    assert!(run.stdout().contains("mirror file://"), "{}", run.stdout());
    for name in NEEDED {
        assert!(
            lab.path("file-cache").join(served.blob(name)).is_file(),
            "{name}"
        );
    }
    let bundle_server = Server::start();
    for entry in crate::lab::files_below(&unpacked) {
        let rel = entry
            .strip_prefix(&unpacked)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        bundle_server.put(&format!("b/{rel}"), std::fs::read(&entry).unwrap());
    }
    lab.imgbuild(&[
        "fetch",
        "--cache",
        "http-cache",
        "--mirror",
        &bundle_server.url("b"),
    ])
    .assert_ok();
}

#[test]
fn bundle_import_refuses_a_tampered_artifact() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Mirror, 8 << 10);
    lab.imgbuild(&[
        "bundle",
        "export",
        "site.tar",
        "--cache",
        "cache",
        "--mirror",
        &server.url("mirror"),
    ])
    .assert_ok();
    // flip one byte of the etcd tarball inside the bundle, keeping its SHA256SUMS line
    let mut bytes = std::fs::read(lab.path("site.tar")).unwrap();
    let (_, _, etcd) = &served.files[&("etcd".into(), "amd64".into())];
    let at = bytes.windows(64).position(|w| w == &etcd[..64]).unwrap() + 100;
    bytes[at] ^= 0xff;
    std::fs::write(lab.path("site.tar"), bytes).unwrap();
    let run = lab
        .imgbuild(&["bundle", "import", "site.tar", "--cache", "site-cache"])
        .assert_failed();
    assert!(
        run.stderr()
            .contains("etcd-v3.6.14-linux-amd64.tar.gz does not match its SHA256SUMS line"),
        "{}",
        run.stderr()
    );
    assert!(!lab.path("site-cache").join(served.blob("etcd")).exists());
}

#[test]
fn fetch_from_the_lab_mirror_fills_the_cache_with_a_real_etcd() {
    let lab_dir = crate::lab::lab_mirror();
    let work = tempfile::tempdir().unwrap();
    let mirror = format!("file://{}", lab_dir.join("mirror").display());
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(work.path())
        .arg("--manifests")
        .arg(lab_dir.join("manifests"))
        .args(["fetch", "--cache", "cache", "--mirror", &mirror])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table.matches(" mirror file://").count(),
        NEEDED.len(),
        "{table}"
    );

    // the etcd in the cache is a real etcd, in the upstream layout
    let pins: toml::Table =
        toml::from_str(&std::fs::read_to_string(lab_dir.join("manifests/pins.toml")).unwrap())
            .unwrap();
    let etcd = pins["artifact"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str() == Some("etcd"))
        .unwrap();
    let sha = etcd["sha256"].as_str().unwrap();
    let version = etcd["version"].as_str().unwrap();
    let arch = etcd["arch"].as_str().unwrap();
    let member = format!("etcd-{version}-linux-{arch}/etcd");
    let exe = work.path().join("etcd");
    imgbuild::fetch::archive::read_members(
        &work.path().join("cache/blobs/sha256").join(sha),
        "etcd",
        &[member.clone()].into_iter().collect(),
        |_, _, _, r| {
            let mut f = std::fs::File::create(&exe)?;
            std::io::copy(r, &mut f)?;
            Ok(())
        },
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = judge(exe.to_str().unwrap()).arg("--version").ok();
    assert!(v.contains("etcd Version: 3."), "{v}");
    // and a stand-in says what it is
    assert!(
        etcd["note"]
            .as_str()
            .unwrap()
            .contains("etcdutl is a stand-in")
    );
}

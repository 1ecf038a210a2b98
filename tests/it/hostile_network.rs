//! Hostile servers, mirrors, archives and bundles: a registry that sends an
//! upload or its token realm to another host gets no credentials there; a
//! tampered mirror is named as such even when a later source fails; a local
//! I/O error stops a fetch at once; an archive or bundle that holds a name
//! twice, or a bundle that lists a path outside itself, is refused.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::artifacts::{Serve, serve};
use crate::http::{Fault, Server};
use crate::lab::{Lab, Run};

// ---------------------------------------------------------------- push

/// One request a fake registry saw: method, path, `Authorization` header.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: String,
}

/// How a fake registry answers: the challenge of a 401 (none: anything
/// goes) and the `Location` of an upload.
#[derive(Clone, Default)]
struct Behaviour {
    challenge: Option<String>,
    location: String,
}

/// A fake OCI registry on `ip` that logs every request. With a challenge,
/// it wants `Basic user:secret` or the token `t0k` (which `/token` hands
/// out) and answers anything else with 401.
#[derive(Clone)]
struct Fake {
    addr: String,
    log: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

const USER: &str = "user:secret";
const TOKEN: &str = "t0k";

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(USER)
    )
}

impl Fake {
    fn start(ip: &str) -> Fake {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap().to_string(),
            log: Arc::default(),
            behaviour: Arc::default(),
        };
        let f = fake.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let f = f.clone();
                std::thread::spawn(move || f.serve(conn));
            }
        });
        fake
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, challenge: Option<String>, location: String) {
        *self.behaviour.lock().unwrap() = Behaviour {
            challenge,
            location,
        };
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Reads one request (its body too, so closing does not reset it).
    fn read(conn: &TcpStream) -> Option<Seen> {
        let mut reader = BufReader::new(conn.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut words = line.split_whitespace();
        let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
        let (mut auth, mut len) = (String::new(), 0usize);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).ok()?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            } else if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
        std::io::copy(&mut reader.take(len as u64), &mut std::io::sink()).ok()?;
        Some(Seen { method, path, auth })
    }

    fn serve(&self, mut conn: TcpStream) {
        let Some(req) = Fake::read(&conn) else { return };
        self.log.lock().unwrap().push(req.clone());
        let b = self.behaviour.lock().unwrap().clone();
        let authorized = req.auth == basic() || req.auth == format!("Bearer {TOKEN}");
        let (status, headers, body) = match (&b.challenge, req.method.as_str()) {
            (_, "GET") if req.path.starts_with("/token") => (
                "200 OK",
                String::new(),
                format!("{{\"token\":\"{TOKEN}\"}}"),
            ),
            (Some(c), _) if !authorized => (
                "401 Unauthorized",
                format!("WWW-Authenticate: {c}\r\n"),
                String::new(),
            ),
            (_, "HEAD") => ("404 Not Found", String::new(), String::new()),
            (_, "POST") => (
                "202 Accepted",
                format!("Location: {}\r\n", b.location),
                String::new(),
            ),
            _ => ("201 Created", String::new(), String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body.as_bytes());
    }
}

/// Writes a blob into an OCI layout; its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// `out/node01/oci`: a one-layer image tagged `node01`, as `node
/// --format oci` lays it out.
fn oci_node(lab: &Lab) -> PathBuf {
    let dir = lab.path("out/node01");
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = put_blob(&layout, b"not really a layer");
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_d = put_blob(&layout, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 18}]
    })
    .to_string();
    let manifest_d = put_blob(&layout, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_d, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "node01"}
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    dir
}

/// `imgbuild push out/node01 <registry>/nodes/node01:v1` with the docker
/// config holding `user:secret` for `registry`.
fn push_with_credentials(lab: &Lab, registry: &Fake) -> Run {
    oci_node(lab);
    let docker = lab.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(USER);
    let config = serde_json::json!({"auths": {registry.addr.clone(): {"auth": auth}}});
    std::fs::write(docker.join("config.json"), config.to_string()).unwrap();
    let reference = format!("{}/nodes/node01:v1", registry.addr);
    lab.imgbuild_env(
        &["push", "out/node01", &reference],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    )
}

/// The registry on 127.0.0.1, the other host on 127.0.0.2: they differ by
/// host name, not only by port.
fn registry_and_other_host() -> (Fake, Fake) {
    (Fake::start("127.0.0.1"), Fake::start("127.0.0.2"))
}

#[test]
fn push_sends_no_credentials_to_an_upload_location_on_another_host() {
    let (registry, other) = registry_and_other_host();
    registry.set(
        Some("Basic realm=\"registry\"".into()),
        other.url("/uploads/1?state=abc"),
    );
    let lab = Lab::new();
    push_with_credentials(&lab, &registry).assert_ok();
    // the registry itself had the credentials…
    assert!(
        registry.seen().iter().any(|s| s.auth == basic()),
        "{:?}",
        registry.seen()
    );
    // …the other host got the bytes without them
    let puts: Vec<Seen> = other.seen();
    assert_eq!(puts.len(), 2, "config and layer: {puts:?}");
    for s in &puts {
        assert_eq!(s.method, "PUT");
        assert!(s.path.starts_with("/uploads/1?state=abc&digest=sha256:"));
        assert_eq!(s.auth, "", "credentials went to another host: {s:?}");
    }
}

#[test]
fn push_sends_a_token_got_with_credentials_only_to_the_registry() {
    let (registry, other) = registry_and_other_host();
    registry.set(
        Some(format!(
            "Bearer realm=\"{}\",service=\"registry\"",
            registry.url("/token")
        )),
        other.url("/uploads/2"),
    );
    let lab = Lab::new();
    push_with_credentials(&lab, &registry).assert_ok();
    let seen = registry.seen();
    // a realm on the registry itself gets the credentials, over plain http too
    let token = seen.iter().find(|s| s.path.starts_with("/token")).unwrap();
    assert_eq!(token.auth, basic());
    assert!(seen.iter().any(|s| s.auth == format!("Bearer {TOKEN}")));
    assert!(other.seen().len() == 2 && other.seen().iter().all(|s| s.auth.is_empty()));
}

#[test]
fn push_refuses_to_send_credentials_to_a_plain_http_token_realm_on_another_host() {
    let (registry, other) = registry_and_other_host();
    let realm = other.url("/token");
    registry.set(
        Some(format!("Bearer realm=\"{realm}\",service=\"registry\"")),
        registry.url("/uploads/3"),
    );
    let lab = Lab::new();
    let run = push_with_credentials(&lab, &registry).assert_failed();
    assert!(
        run.stderr().contains(&format!(
            "asks for a token from {realm}, which is neither https nor the registry itself: the credentials are not sent there"
        )),
        "{}",
        run.stderr()
    );
    assert!(
        other.seen().iter().all(|s| s.auth.is_empty()),
        "credentials went to the realm: {:?}",
        other.seen()
    );
    assert!(!run.stderr().contains("c2VjcmV0"), "{}", run.stderr());
}

// ---------------------------------------------------------------- fetch

/// A name that never resolves (RFC 6761).
const NOWHERE: &str = "https://upstream.invalid/";

/// A lab whose pins point at an upstream that never resolves, with every
/// artifact in the mirror layout on a local server (`server.url("mirror")`).
/// Per artifact: its path in the mirror, checksum hex, bytes.
fn unreachable_upstream(member_size: usize) -> (Server, Lab, Vec<(String, String, String)>) {
    let server = Server::start();
    let lab = Lab::new().without_images();
    let served = serve(&lab, &server, Serve::Direct, member_size);
    let up = server.url("up/");
    let pins = lab.read("pins.toml").replace(&up, NOWHERE);
    std::fs::write(lab.path("manifests/pins.toml"), pins).unwrap();
    let mut files = Vec::new();
    for ((name, _), (path, sha, bytes)) in served.files {
        let host_path = path.strip_prefix("up/").unwrap();
        let mirrored = format!("mirror/upstream.invalid/{host_path}");
        server.put(&mirrored, bytes);
        files.push((name, mirrored, sha));
    }
    (server, lab, files)
}

#[test]
fn a_tampered_mirror_is_named_even_when_upstream_fails_after_it() {
    let (server, lab, files) = unreachable_upstream(4 << 10);
    let (_, etcd, sha) = files.iter().find(|(n, _, _)| n == "etcd").unwrap();
    server.fault(etcd, Fault::WrongBytes);
    let mirror = server.url("mirror");
    let run = lab
        .imgbuild(&["fetch", "--cache", "cache", "--mirror", &mirror])
        .assert_failed();
    let err = run.stderr();
    // the headline says a source served the wrong bytes…
    assert!(
        err.contains("etcd v3.6.14: no source worked, and 1 of 2 served bytes that do not match the pin (CHECKSUM MISMATCH"),
        "{err}"
    );
    // …each source is named with what went wrong there…
    assert!(
        err.contains(&format!(
            "  mirror {}: CHECKSUM MISMATCH: expected sha256:{sha}, got sha256:",
            server.url(etcd)
        )),
        "{err}"
    );
    let upstream = etcd.replace("mirror/upstream.invalid/", NOWHERE);
    assert!(
        err.contains(&format!("  upstream {upstream}: cannot download: ")),
        "{err}"
    );
    // …and the mismatch is the cause
    assert!(
        err.contains(&format!(
            "caused by: checksum mismatch for etcd v3.6.14 from {}",
            server.url(etcd)
        )),
        "{err}"
    );
}

/// A 1 MiB tmpfs mounted over a directory until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where mounting is not allowed (not root).
    fn mount(dir: PathBuf) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_fetch_stops_at_once_naming_the_cache() {
    let (server, lab, _) = unreachable_upstream(512 << 10);
    let Some(_disk) = Tmpfs::mount(lab.path("cache")) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mirror = server.url("mirror");
    let run = lab
        .imgbuild(&["fetch", "--cache", "cache", "--mirror", &mirror])
        .assert_failed();
    let err = run.stderr();
    assert!(
        err.contains("cannot store the download in the cache cache: stopped, this is a local problem, not a network one"),
        "{err}"
    );
    assert!(err.contains("caused by: cannot write cache/tmp/"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // upstream was not tried after the disk filled up
    assert!(!err.contains("upstream.invalid"), "{err}");
    assert!(!err.contains("no source worked"), "{err}");
}

// ---------------------------------------------------------------- archives

/// A `.tar.gz` of regular files whose names are written raw into the
/// header (the tar crate would tidy `./x` to `x`).
fn raw_targz(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, data) in entries {
        b.append(
            &raw_header(name, data.len(), tar::EntryType::Regular),
            *data,
        )
        .unwrap();
    }
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b.into_inner().unwrap().finish().unwrap()).unwrap();
    f
}

fn raw_header(name: &str, size: usize, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_size(size as u64);
    h.set_entry_type(kind);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    h
}

/// The members of `wanted` read out of `f`, or the error.
fn members(f: &tempfile::NamedTempFile, wanted: &[&str]) -> Result<Vec<String>, String> {
    let wanted: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    let mut got = Vec::new();
    imgbuild::fetch::archive::read_members(f.path(), "crictl v1.35.0", &wanted, |n, _, _, r| {
        std::io::copy(r, &mut std::io::sink())?;
        got.push(n.to_string());
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(got)
}

#[test]
fn an_archive_holding_a_member_twice_under_two_spellings_is_refused() {
    let f = raw_targz(&[("crictl", b"the real one"), ("./crictl", b"the other one")]);
    assert_eq!(
        members(&f, &["crictl"]),
        Err("archive crictl v1.35.0 is refused: it holds member `crictl` twice (as `crictl` and `./crictl`)".into())
    );
    // a member no manifest asks for counts too, and so do `//` and `/./`
    let f = raw_targz(&[("crictl", b"x"), ("bin/tool", b"x"), ("bin//./tool", b"y")]);
    assert_eq!(
        members(&f, &["crictl"]),
        Err("archive crictl v1.35.0 is refused: it holds member `bin/tool` twice (as `bin/tool` and `bin//./tool`)".into())
    );
    // one spelling alone is read under its normal name
    let f = raw_targz(&[("./bin//crictl", b"x")]);
    assert_eq!(members(&f, &["bin/crictl"]), Ok(vec!["bin/crictl".into()]));
}

// ---------------------------------------------------------------- bundles

/// A bundle: SHA256SUMS (listing `listed`) first, then `entries` with raw
/// names and types.
fn raw_bundle(lab: &Lab, listed: &[&str], entries: &[(&str, tar::EntryType)]) -> PathBuf {
    let sums: String = listed
        .iter()
        .map(|p| format!("{}  {p}\n", hex::encode(Sha256::digest(b"x"))))
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let h = raw_header("SHA256SUMS", sums.len(), tar::EntryType::Regular);
    b.append(&h, sums.as_bytes()).unwrap();
    for (name, kind) in entries {
        let data: &[u8] = if kind.is_file() { b"x" } else { b"" };
        b.append(&raw_header(name, data.len(), *kind), data)
            .unwrap();
    }
    let path = lab.path("hostile.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    path
}

fn import(lab: &Lab) -> Run {
    lab.imgbuild(&["bundle", "import", "hostile.tar", "--cache", "cache"])
}

const FILE: tar::EntryType = tar::EntryType::Regular;

#[test]
fn a_bundle_whose_sha256sums_lists_a_path_outside_it_is_refused() {
    let lab = Lab::new();
    for bad in ["../x", "/etc/passwd", "a/../../x", "./x", "a//b"] {
        raw_bundle(&lab, &["manifests/ok", bad], &[("manifests/ok", FILE)]);
        import(&lab).assert_failed().assert_stderr_has(&format!(
            "bundle hostile.tar is refused: its SHA256SUMS lists `{bad}`, which is not a plain relative path inside the bundle"
        ));
    }
}

#[test]
fn a_bundle_with_an_entry_outside_it_twice_or_not_a_file_is_refused() {
    let lab = Lab::new();
    raw_bundle(
        &lab,
        &["manifests/x"],
        &[("manifests/x", FILE), ("manifests/x", FILE)],
    );
    import(&lab)
        .assert_failed()
        .assert_stderr_has("bundle hostile.tar is refused: it holds `manifests/x` twice");
    raw_bundle(&lab, &["manifests/x"], &[("../x", FILE)]);
    import(&lab).assert_failed().assert_stderr_has(
        "bundle hostile.tar is refused: it holds `../x`, which is not a plain relative path inside the bundle",
    );
    raw_bundle(&lab, &[], &[("dl.k8s.io", tar::EntryType::Symlink)]);
    import(&lab).assert_failed().assert_stderr_has(
        "bundle hostile.tar is refused: `dl.k8s.io` is a link; a bundle holds only files and directories",
    );
    // directories are fine
    raw_bundle(
        &lab,
        &["manifests/x"],
        &[
            ("manifests/", tar::EntryType::Directory),
            ("manifests/x", FILE),
        ],
    );
    import(&lab).assert_ok();
}

#[test]
fn bundle_export_refuses_a_link_instead_of_carrying_what_it_points_at() {
    let server = Server::start();
    let lab = Lab::new().without_images();
    serve(&lab, &server, Serve::Mirror, 8 << 10);
    // a link in the manifests directory, to the state's CA key
    std::fs::create_dir_all(lab.path("state")).unwrap();
    std::fs::write(lab.path("state/ca.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::os::unix::fs::symlink(lab.path("state/ca.key"), lab.path("manifests/notes.txt")).unwrap();
    let mirror = server.url("mirror");
    lab.imgbuild(&[
        "bundle", "export", "site.tar", "--cache", "cache", "--mirror", &mirror,
    ])
    .assert_failed()
    .assert_stderr_has("notes.txt: it is a symbolic link or a special file");
    assert!(!lab.path("site.tar").exists(), "no bundle may be written");
}

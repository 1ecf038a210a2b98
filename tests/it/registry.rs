//! A real OCI registry (Debian's docker-registry) on 127.0.0.1, seeded with
//! synthetic multi-arch images by skopeo from OCI layouts made here.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::judge::judge;

pub struct Registry {
    pub port: u16,
    pub root: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "docker-registry (Debian docker-registry) must be installed: bash scripts/setup",
            );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            port,
            root,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry's own file for a blob.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A pushed synthetic image: its index digest and per-arch layer digests.
pub struct Pushed {
    /// The tag it was pushed as.
    pub tag: String,
    pub index: String,
    pub layers: Vec<(String, String)>,
}

/// An OCI layout being written: blobs stored by their digest.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        Layout { dir }
    }

    /// Stores a blob; its digest.
    fn put(&self, b: &[u8]) -> String {
        let d = sha(b);
        let path = self.dir.path().join("blobs/sha256");
        std::fs::write(path.join(d.trim_start_matches("sha256:")), b).unwrap();
        d
    }

    /// One arch's layer, config and manifest; the manifest's descriptor in
    /// the index and the layer digest.
    fn arch_image(&self, repo: &str, tag: &str, arch: &str) -> (serde_json::Value, String) {
        let body = format!("{repo}:{tag} for {arch}\n");
        let mut raw = one_file_tar(&format!("{}-{arch}", repo.replace('/', "-")), &body);
        if arch == "amd64" {
            // runnable here: Debian's static busybox (busybox-static)
            raw = with_busybox(&format!("{}-{arch}", repo.replace('/', "-")), &body);
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let layer = gz.finish().unwrap();
        let layer_d = self.put(&layer);
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "sleep", "3600"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(&raw)]}
        })
        .to_string();
        let config_d = self.put(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": layer.len()}]
        })
        .to_string();
        let manifest_d = self.put(manifest.as_bytes());
        let desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_d, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        });
        (desc, layer_d)
    }

    /// The index of `manifests`, tagged `tag` in `index.json`; its digest.
    fn finish(&self, tag: &str, manifests: Vec<serde_json::Value>) -> String {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests
        })
        .to_string();
        let index_d = self.put(index.as_bytes());
        let layout_index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_d, "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        });
        let dir = self.dir.path();
        std::fs::write(dir.join("index.json"), layout_index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
        index_d
    }
}

/// An uncompressed tar of one file.
fn one_file_tar(name: &str, body: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, name, body.as_bytes()).unwrap();
    tar.into_inner().unwrap()
}

/// An uncompressed tar of one file and `bin/busybox`.
fn with_busybox(name: &str, body: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    tar.append_data(&mut h, name, body.as_bytes()).unwrap();
    let bb = std::fs::read("/bin/busybox").expect("busybox-static: bash scripts/setup");
    let mut h = tar::Header::new_gnu();
    h.set_size(bb.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(0);
    tar.append_data(&mut h, "bin/busybox", bb.as_slice())
        .unwrap();
    tar.into_inner().unwrap()
}

/// Builds a two-arch OCI image `repo:tag` and pushes it with skopeo.
pub fn push_image(reg: &Registry, repo: &str, tag: &str) -> Pushed {
    let layout = Layout::new();
    let mut manifests = Vec::new();
    let mut layers = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (desc, layer_d) = layout.arch_image(repo, tag, arch);
        manifests.push(desc);
        layers.push((arch.to_string(), layer_d));
    }
    let index_d = layout.finish(tag, manifests);
    judge("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.dir.path().display()))
        .arg(format!("docker://127.0.0.1:{}/{repo}:{tag}", reg.port))
        .ok();
    Pushed {
        tag: tag.to_string(),
        index: index_d,
        layers,
    }
}

/// Pushes every image the lab's pins name and rewrites their digests.
pub fn seed(lab: &crate::lab::Lab, reg: &Registry) -> Vec<(String, Pushed)> {
    let text = lab.read("pins.toml");
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let mut out = Vec::new();
    if let Some(images) = doc.get_mut("image").and_then(|v| v.as_array_mut()) {
        for i in images {
            let t = i.as_table_mut().unwrap();
            let image = t["image"].as_str().unwrap().to_string();
            let (name, tag) = image.rsplit_once(':').unwrap();
            let repo = name.split_once('/').unwrap().1;
            let pushed = push_image(reg, repo, tag);
            t.insert("digest".into(), pushed.index.clone().into());
            out.push((t["name"].as_str().unwrap().to_string(), pushed));
        }
    }
    std::fs::write(
        lab.path("manifests/pins.toml"),
        toml::to_string(&doc).unwrap(),
    )
    .unwrap();
    out
}

pub fn mirrors(reg: &Registry) -> Vec<String> {
    ["registry.k8s.io", "ghcr.io"]
        .iter()
        .flat_map(|r| {
            [
                "--registry-mirror".to_string(),
                format!("{r}={}", reg.url()),
            ]
        })
        .collect()
}

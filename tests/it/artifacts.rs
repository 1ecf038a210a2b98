//! Upstream-shaped artifacts made by the tests: tarballs with the member
//! layout of the real releases (kubernetes/server/bin/…, etcd-vX-linux-ARCH/…,
//! bin/containerd, ./bridge), and plain files (runc). The lab's pins.toml is
//! rewritten to their checksums.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256, Sha512};

use crate::http::Server;
use crate::lab::Lab;

/// Members of each archive, as the real releases lay them out.
pub fn members(name: &str, version: &str, arch: &str) -> Option<Vec<String>> {
    let v: Vec<String> = match name {
        "kubernetes-server" => [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
            "kubelet",
            "kube-proxy",
        ]
        .iter()
        .map(|b| format!("kubernetes/server/bin/{b}"))
        .collect(),
        "kubernetes-node" => ["kubelet", "kube-proxy", "kubectl", "kubeadm"]
            .iter()
            .map(|b| format!("kubernetes/node/bin/{b}"))
            .collect(),
        "etcd" => ["etcd", "etcdctl", "etcdutl", "README.md"]
            .iter()
            .map(|b| format!("etcd-{version}-linux-{arch}/{b}"))
            .collect(),
        "containerd" => [
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "containerd-stress",
        ]
        .iter()
        .map(|b| format!("bin/{b}"))
        .collect(),
        "crictl" => vec!["crictl".into()],
        "cni-plugins" => [
            "bridge",
            "host-local",
            "loopback",
            "portmap",
            "flannel-ignored",
            "vlan",
        ]
        .iter()
        .map(|b| format!("./{b}"))
        .collect(),
        _ => return None,
    };
    Some(v)
}

/// A stand-in executable of `size` bytes (not compressible: it has a random tail).
pub fn program(name: &str, version: &str, size: usize) -> Vec<u8> {
    let mut v = format!("#!/bin/sh\necho '{name} {version} (imgbuild test stand-in)'\nexit 0\n")
        .into_bytes();
    let mut x: u64 = 0x9e3779b97f4a7c15 ^ (name.len() as u64 * 7919);
    for b in name.bytes() {
        x = x.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push((x >> 24) as u8);
    }
    v
}

pub fn targz(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// The bytes of one pinned artifact.
pub fn artifact(name: &str, version: &str, arch: &str, member_size: usize) -> Vec<u8> {
    match members(name, version, arch) {
        Some(ms) => {
            let entries: Vec<(String, Vec<u8>)> = ms
                .into_iter()
                .map(|m| {
                    let base = m.rsplit('/').next().unwrap().to_string();
                    let data = program(&format!("{base}-{arch}"), version, member_size);
                    (m, data)
                })
                .collect();
            targz(&entries)
        }
        None => program(&format!("{name}-{arch}"), version, member_size),
    }
}

/// Where the artifacts are served from.
pub enum Serve {
    /// The pins' URLs point at the test server (it is "upstream").
    Direct,
    /// The pins keep their real URLs; the server holds them in mirror layout
    /// under `/mirror/` and the tests pass `--mirror`.
    Mirror,
}

pub struct Served {
    /// artifact name + arch -> (url path on the server, checksum hex, bytes)
    pub files: BTreeMap<(String, String), (String, String, Vec<u8>)>,
    /// artifact name + arch -> "sha256" or "sha512", as the pin had it
    pub algos: BTreeMap<(String, String), &'static str>,
}

impl Served {
    pub fn path(&self, name: &str) -> &str {
        &self.files[&(name.to_string(), "amd64".to_string())].0
    }

    /// `blobs/<algo>/<hex>` of an amd64 artifact, relative to the cache.
    pub fn blob(&self, name: &str) -> String {
        let key = (name.to_string(), "amd64".to_string());
        format!("blobs/{}/{}", self.algos[&key], self.files[&key].1)
    }
}

/// Rewrites the lab's pins to test artifacts of `member_size`-byte members.
pub fn serve(lab: &Lab, server: &Server, how: Serve, member_size: usize) -> Served {
    let text = lab.read("pins.toml");
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let mut files = BTreeMap::new();
    let mut algos = BTreeMap::new();
    for a in doc["artifact"].as_array_mut().unwrap() {
        let t = a.as_table_mut().unwrap();
        let name = t["name"].as_str().unwrap().to_string();
        let version = t["version"].as_str().unwrap().to_string();
        let arch = t["arch"].as_str().unwrap().to_string();
        let url = t["url"].as_str().unwrap().to_string();
        let bytes = artifact(&name, &version, &arch, member_size);
        // keep the pin's algorithm: the Kubernetes tarballs are pinned by sha512
        let algo = if t.contains_key("sha512") {
            "sha512"
        } else {
            "sha256"
        };
        let sha = if algo == "sha512" {
            hex::encode(Sha512::digest(&bytes))
        } else {
            hex::encode(Sha256::digest(&bytes))
        };
        let host_path = url.split_once("://").unwrap().1.to_string();
        let path = match how {
            Serve::Direct => {
                t.insert("url".into(), server.url(&format!("up/{host_path}")).into());
                format!("up/{host_path}")
            }
            Serve::Mirror => format!("mirror/{host_path}"),
        };
        server.put(&path, bytes.clone());
        t.remove("sha256");
        t.remove("sha512");
        t.insert(algo.into(), sha.clone().into());
        algos.insert((name.clone(), arch.clone()), algo);
        files.insert((name, arch), (path, sha, bytes));
    }
    let mut f = std::fs::File::create(lab.path("manifests/pins.toml")).unwrap();
    f.write_all(toml::to_string(&doc).unwrap().as_bytes())
        .unwrap();
    Served { files, algos }
}

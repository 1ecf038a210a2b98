//! Container images by digest over the OCI distribution API: anonymous
//! bearer-token auth, registry mirrors (`--registry-mirror
//! registry.k8s.io=http://127.0.0.1:5000`), the node's arch resolved from the
//! image index, every manifest and blob digest verified, all of it stored in
//! the content-addressed cache (`blobs/sha256/<hex>`). Offline, an image is
//! walked from the cache alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Cache;
use crate::manifest::{Arch, Checksum, ImagePin};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {image}: {what} {digest} does not match its digest: the registry served sha256:{actual} ({url})"
    )]
    Digest {
        image: String,
        what: &'static str,
        digest: String,
        actual: String,
        url: String,
    },
    #[error("image {image}: {url} answered HTTP {status}")]
    Http {
        image: String,
        url: String,
        status: u16,
    },
    #[error("image {image}: cannot reach {url}")]
    Transport {
        image: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("image {image}: the index {digest} has no linux/{arch} manifest")]
    NoPlatform {
        image: String,
        digest: String,
        arch: Arch,
    },
    #[error("image {image}: {what} is not valid JSON")]
    Json {
        image: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "offline, and image {image} ({arch}) is not complete in the cache: {digest} is missing"
    )]
    Offline {
        image: String,
        arch: Arch,
        digest: String,
    },
    #[error("`{0}` is not REGISTRY=URL with an http(s) URL")]
    BadMirror(String),
    #[error("image {image}: {path}")]
    Io {
        image: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The parameters of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(challenge: &str) -> BTreeMap<String, String> {
    challenge
        .trim_start_matches("Bearer ")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// `registry.k8s.io/coredns/coredns:v1.12.4` -> (registry, repository, tag)
pub fn split_reference(image: &str) -> (String, String, String) {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    };
    let (registry, repo) = match name.split_once('/') {
        Some((r, rest)) if r.contains('.') || r.contains(':') || r == "localhost" => {
            (r.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let repo = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    (registry, repo, tag.to_string())
}

/// The API base URL of a registry, after mirrors.
fn base_url(registry: &str, mirrors: &BTreeMap<String, String>) -> String {
    if let Some(m) = mirrors.get(registry) {
        return m.trim_end_matches('/').to_string();
    }
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        r => format!("https://{r}"),
    }
}

pub fn parse_mirrors(list: &[String]) -> Result<BTreeMap<String, String>, ImageError> {
    let mut out = BTreeMap::new();
    for m in list {
        match m.split_once('=') {
            Some((reg, url))
                if !reg.is_empty()
                    && (url.starts_with("http://") || url.starts_with("https://")) =>
            {
                out.insert(reg.to_string(), url.to_string());
            }
            _ => return Err(ImageError::BadMirror(m.clone())),
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// An index's platform manifests.
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// One image for one arch, complete in the cache.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub pin: ImagePin,
    pub arch: Arch,
    /// The index (as pinned) and the platform manifest, media types included.
    pub index: Descriptor,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl PulledImage {
    /// Every blob of the image, index first.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        let mut v = vec![&self.index, &self.manifest, &self.config];
        v.extend(self.layers.iter());
        v
    }
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

pub fn blob_path(cache: &Cache, digest: &str) -> PathBuf {
    cache.blob(&Checksum::Sha256(hex(digest).to_string()))
}

struct Puller<'a> {
    client: reqwest::Client,
    cache: &'a Cache,
    mirrors: &'a BTreeMap<String, String>,
    offline: bool,
    token: Option<String>,
}

impl Puller<'_> {
    async fn get(&mut self, image: &str, url: &str, accept: &str) -> Result<Vec<u8>, ImageError> {
        let transport = |source| ImageError::Transport {
            image: image.to_string(),
            url: url.to_string(),
            source,
        };
        for _ in 0..2 {
            let mut req = self.client.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(transport)?;
            if resp.status().as_u16() == 401 && self.token.is_none() {
                let challenge = www_authenticate(&resp);
                self.token = Some(self.anonymous_token(image, &challenge).await?);
                continue;
            }
            if !resp.status().is_success() {
                return Err(ImageError::Http {
                    image: image.to_string(),
                    url: url.to_string(),
                    status: resp.status().as_u16(),
                });
            }
            return Ok(resp.bytes().await.map_err(transport)?.to_vec());
        }
        Err(ImageError::Http {
            image: image.to_string(),
            url: url.to_string(),
            status: 401,
        })
    }

    /// `Bearer realm="…",service="…",scope="…"` -> an anonymous pull token.
    async fn anonymous_token(&self, image: &str, challenge: &str) -> Result<String, ImageError> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut url = reqwest::Url::parse(&realm).map_err(|_| ImageError::Http {
            image: image.to_string(),
            url: realm.clone(),
            status: 401,
        })?;
        for k in ["service", "scope"] {
            if let Some(v) = params.get(k) {
                url.query_pairs_mut().append_pair(k, v);
            }
        }
        let body = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|source| ImageError::Transport {
                image: image.to_string(),
                url: url.to_string(),
                source,
            })?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = body.bytes().await.map_err(|source| ImageError::Transport {
            image: image.to_string(),
            url: url.to_string(),
            source,
        })?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            image: image.to_string(),
            what: format!("the token from {url}"),
            source,
        })?;
        Ok(t.token.or(t.access_token).unwrap_or_default())
    }

    /// A blob or manifest by digest: from the cache, or fetched, verified, stored.
    async fn content(
        &mut self,
        pin: &ImagePin,
        arch: Arch,
        kind: &'static str,
        digest: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let path = blob_path(self.cache, digest);
        let io = |source| ImageError::Io {
            image: pin.image.clone(),
            path: path.clone(),
            source,
        };
        if path.is_file() {
            return fs::read(&path).map_err(io);
        }
        if self.offline {
            return Err(ImageError::Offline {
                image: pin.image.clone(),
                arch,
                digest: digest.to_string(),
            });
        }
        let (registry, repo, _) = split_reference(&pin.image);
        let base = base_url(&registry, self.mirrors);
        let url = match kind {
            "blob" => format!("{base}/v2/{repo}/blobs/{digest}"),
            _ => format!("{base}/v2/{repo}/manifests/{digest}"),
        };
        let bytes = self.get(&pin.image, &url, ACCEPT).await?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != hex(digest) {
            return Err(ImageError::Digest {
                image: pin.image.clone(),
                what: kind,
                digest: digest.to_string(),
                actual,
                url,
            });
        }
        let tmp = self.cache.temp(hex(digest));
        fs::write(&tmp, &bytes).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(bytes)
    }

    async fn pull(&mut self, pin: &ImagePin, arch: Arch) -> Result<PulledImage, ImageError> {
        let json = |what: &str, b: &[u8]| -> Result<Manifest, ImageError> {
            serde_json::from_slice(b).map_err(|source| ImageError::Json {
                image: pin.image.clone(),
                what: what.to_string(),
                source,
            })
        };
        let index_bytes = self.content(pin, arch, "manifest", &pin.digest).await?;
        let index: Manifest = json("the index", &index_bytes)?;
        let index_desc = Descriptor {
            media_type: if index.media_type.is_empty() {
                "application/vnd.oci.image.index.v1+json".to_string()
            } else {
                index.media_type.clone()
            },
            digest: pin.digest.clone(),
            size: index_bytes.len() as u64,
            platform: None,
        };
        let child = index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch.as_str())
            })
            .cloned()
            .ok_or_else(|| ImageError::NoPlatform {
                image: pin.image.clone(),
                digest: pin.digest.clone(),
                arch,
            })?;
        let mbytes = self.content(pin, arch, "manifest", &child.digest).await?;
        let m: Manifest = json("the platform manifest", &mbytes)?;
        let config = m.config.clone().ok_or_else(|| ImageError::NoPlatform {
            image: pin.image.clone(),
            digest: child.digest.clone(),
            arch,
        })?;
        self.content(pin, arch, "blob", &config.digest).await?;
        for l in &m.layers {
            self.content(pin, arch, "blob", &l.digest).await?;
        }
        Ok(PulledImage {
            pin: pin.clone(),
            arch,
            index: index_desc,
            manifest: child,
            config,
            layers: m.layers,
        })
    }
}

/// Pulls (or finds in the cache) every image for its arch.
pub fn pull_all(
    cache: &Cache,
    images: &[(ImagePin, Arch)],
    mirrors: &BTreeMap<String, String>,
    offline: bool,
) -> Result<Vec<PulledImage>, ImageError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| ImageError::Transport {
            image: String::new(),
            url: String::new(),
            source,
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ImageError::Io {
            image: String::new(),
            path: cache.root.clone(),
            source,
        })?;
    rt.block_on(async {
        let mut out = Vec::new();
        for (pin, arch) in images {
            // a token is per repository
            let mut p = Puller {
                client: client.clone(),
                cache,
                mirrors,
                offline,
                token: None,
            };
            out.push(p.pull(pin, *arch).await?);
        }
        Ok(out)
    })
}

/// Reads a cached blob.
pub fn read_blob(cache: &Cache, digest: &str) -> std::io::Result<Vec<u8>> {
    fs::read(blob_path(cache, digest))
}

pub fn blob_file(cache: &Cache, digest: &str) -> PathBuf {
    blob_path(cache, digest)
}

/// The `WWW-Authenticate` challenge of a 401 answer (empty if none).
pub fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            split_reference("registry.k8s.io/coredns/coredns:v1.12.4"),
            (
                "registry.k8s.io".into(),
                "coredns/coredns".into(),
                "v1.12.4".into()
            )
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/pause:3.10"),
            ("127.0.0.1:5000".into(), "pause".into(), "3.10".into())
        );
        assert_eq!(
            split_reference("flannel/flannel:v0.28.4"),
            (
                "docker.io".into(),
                "flannel/flannel".into(),
                "v0.28.4".into()
            )
        );
        assert_eq!(
            split_reference("alpine:3"),
            ("docker.io".into(), "library/alpine".into(), "3".into())
        );
    }
}

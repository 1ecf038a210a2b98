//! Container images by digest: takes image pins and the arches they are for,
//! produces each image complete in the content-addressed cache
//! (`blobs/sha256/<hex>`). Pulled over the [`registry`](super::registry)
//! client (anonymous bearer tokens, registry mirrors: `--registry-mirror
//! registry.k8s.io=http://127.0.0.1:5000`), the node's arch resolved from the
//! image index, every manifest and blob written through the cache's verified
//! writer. Offline, an image is walked from the cache alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::Cache;
use super::cache::CacheError;
use super::registry::{self, ACCEPT, Manifest, Registry, RegistryError};
use crate::manifest::{Arch, Checksum, ImagePin};

pub use super::registry::{Descriptor, Platform, split_reference};

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
    #[error("image {image}: cannot {action} {path}")]
    Io {
        image: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image}: cannot sign in to the registry")]
    SignIn {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("cannot start the image download client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the image download runtime")]
    Runtime(#[source] std::io::Error),
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
    pub(crate) fn blobs(&self) -> Vec<&Descriptor> {
        let mut v = vec![&self.index, &self.manifest, &self.config];
        v.extend(self.layers.iter());
        v
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Where the cache keeps a blob named by its OCI digest (`sha256:<hex>`).
pub(crate) fn blob_file(cache: &Cache, digest: &str) -> PathBuf {
    cache.blob(&Checksum::Sha256(hex(digest).to_string()))
}

/// Pulls one image for one arch.
struct Puller<'a> {
    registry: Registry,
    cache: &'a Cache,
    offline: bool,
    pin: &'a ImagePin,
    arch: Arch,
}

impl Puller<'_> {
    async fn pull(&mut self) -> Result<PulledImage, ImageError> {
        let (index, size) = self.manifest("the index", &self.pin.digest).await?;
        let index_desc = Descriptor {
            media_type: if index.media_type.is_empty() {
                "application/vnd.oci.image.index.v1+json".to_string()
            } else {
                index.media_type.clone()
            },
            digest: self.pin.digest.clone(),
            size,
            ..Descriptor::default()
        };
        let child = self.platform_manifest(&index)?;
        let (m, _) = self
            .manifest("the platform manifest", &child.digest)
            .await?;
        let config = m.config.clone().ok_or_else(|| ImageError::NoPlatform {
            image: self.pin.image.clone(),
            digest: child.digest.clone(),
            arch: self.arch,
        })?;
        self.ensure("blob", &config.digest).await?;
        for l in &m.layers {
            self.ensure("blob", &l.digest).await?;
        }
        Ok(PulledImage {
            pin: self.pin.clone(),
            arch: self.arch,
            index: index_desc,
            manifest: child,
            config,
            layers: m.layers,
        })
    }

    /// The index's `linux/<arch>` manifest.
    fn platform_manifest(&self, index: &Manifest) -> Result<Descriptor, ImageError> {
        index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == self.arch.as_str())
            })
            .cloned()
            .ok_or_else(|| ImageError::NoPlatform {
                image: self.pin.image.clone(),
                digest: self.pin.digest.clone(),
                arch: self.arch,
            })
    }

    /// A manifest or index by digest, parsed, and its size.
    async fn manifest(&mut self, what: &str, digest: &str) -> Result<(Manifest, u64), ImageError> {
        let path = self.ensure("manifest", digest).await?;
        let bytes = fs::read(&path).map_err(|source| ImageError::Io {
            image: self.pin.image.clone(),
            action: "read",
            path,
            source,
        })?;
        let m = serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            image: self.pin.image.clone(),
            what: what.to_string(),
            source,
        })?;
        Ok((m, bytes.len() as u64))
    }

    /// A blob or manifest by digest: in the cache, or fetched into it.
    async fn ensure(&mut self, kind: &'static str, digest: &str) -> Result<PathBuf, ImageError> {
        let path = blob_file(self.cache, digest);
        if path.is_file() {
            return Ok(path);
        }
        if self.offline {
            return Err(ImageError::Offline {
                image: self.pin.image.clone(),
                arch: self.arch,
                digest: digest.to_string(),
            });
        }
        let url = match kind {
            "blob" => self.registry.blob_url(digest),
            _ => self.registry.manifest_url(digest),
        };
        self.download(kind, digest, &url).await
    }

    /// Streams `url` through the cache's verified writer.
    async fn download(
        &mut self,
        kind: &'static str,
        digest: &str,
        url: &str,
    ) -> Result<PathBuf, ImageError> {
        let resp = self
            .registry
            .send(&|c| c.get(url).header(reqwest::header::ACCEPT, ACCEPT), url)
            .await
            .map_err(|e| self.registry_error(e))?;
        let mut resp = registry::check(resp, url)
            .await
            .map_err(|e| self.registry_error(e))?;
        let mut blob = self
            .cache
            .writer(&Checksum::Sha256(hex(digest).to_string()))
            .map_err(|e| self.cache_error(e, kind, digest, url))?;
        while let Some(chunk) = resp.chunk().await.map_err(|source| ImageError::Transport {
            image: self.pin.image.clone(),
            url: url.to_string(),
            source,
        })? {
            blob.write(&chunk)
                .map_err(|e| self.cache_error(e, kind, digest, url))?;
        }
        blob.commit()
            .map_err(|e| self.cache_error(e, kind, digest, url))
    }

    fn registry_error(&self, e: RegistryError) -> ImageError {
        let image = self.pin.image.clone();
        match e {
            RegistryError::Transport { url, source } => {
                ImageError::Transport { image, url, source }
            }
            RegistryError::Http { url, status, .. } => ImageError::Http { image, url, status },
            RegistryError::Token { url, source } => ImageError::Json {
                image,
                what: format!("the token from {url}"),
                source,
            },
            source @ RegistryError::InsecureRealm { .. } => ImageError::SignIn { image, source },
        }
    }

    fn cache_error(
        &self,
        e: CacheError,
        what: &'static str,
        digest: &str,
        url: &str,
    ) -> ImageError {
        let image = self.pin.image.clone();
        match e {
            CacheError::Mismatch { actual, .. } => ImageError::Digest {
                image,
                what,
                digest: digest.to_string(),
                actual,
                url: url.to_string(),
            },
            CacheError::Io {
                action,
                path,
                source,
            } => ImageError::Io {
                image,
                action,
                path,
                source,
            },
        }
    }
}

/// Pulls (or finds in the cache) every image for its arch.
pub(crate) fn pull_all(
    cache: &Cache,
    images: &[(ImagePin, Arch)],
    mirrors: &BTreeMap<String, String>,
    offline: bool,
) -> Result<Vec<PulledImage>, ImageError> {
    let client = super::http_client(Duration::from_secs(60)).map_err(ImageError::Client)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImageError::Runtime)?;
    rt.block_on(async {
        let mut out = Vec::new();
        for (pin, arch) in images {
            let (registry, repo, _) = split_reference(&pin.image);
            // a token is per repository
            let mut p = Puller {
                registry: Registry::new(client.clone(), &registry, &repo, mirrors),
                cache,
                offline,
                pin,
                arch: *arch,
            };
            out.push(p.pull().await?);
        }
        Ok(out)
    })
}

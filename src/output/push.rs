//! `imgbuild push DIR REF`: takes a node's OCI image (`DIR/oci`) and uploads
//! it to a registry over the OCI distribution API, through the one
//! [`registry`](crate::fetch::registry) client. Credentials come from the
//! docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`,
//! `auths`), used for a bearer token or basic auth as the registry asks;
//! without them, anonymous. The client sends them to the registry's own
//! origin alone: an upload `Location` elsewhere gets the bytes without them.
//! The secrets layer stays out unless `include_secrets`, which needs a layout
//! built with `--oci-with-secrets`. What `imgbuild sign` wrote goes along
//! ([`super::attach`]). Produces the pushed manifest's digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fetch::registry::{
    self, Descriptor, Manifest, Registry, RegistryError, docker_credentials, split_reference,
};
use crate::plan::LayerKind;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir} has no OCI image `{tag}`; build it with --format oci")]
    NoImage { dir: PathBuf, tag: String },
    #[error(
        "{dir} has no OCI image `{tag}`: its layout was built without the secrets layer; rebuild it with --oci-with-secrets to push it with --include-secrets"
    )]
    NoSecretsImage { dir: PathBuf, tag: String },
    #[error("manifest {digest} names no config blob")]
    NoConfig { digest: String },
    #[error("{url} answered HTTP {status} {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} is not valid JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot sign in to the registry")]
    SignIn(#[source] RegistryError),
    #[error("cannot start the push client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the push runtime")]
    Runtime(#[source] std::io::Error),
}

impl From<RegistryError> for PushError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Transport { url, source } => PushError::Transport { url, source },
            RegistryError::Http { url, status, body } => PushError::Http { url, status, body },
            RegistryError::Token { url, source } => PushError::Json {
                what: format!("the token from {url}"),
                source,
            },
            e @ RegistryError::InsecureRealm { .. } => PushError::SignIn(e),
        }
    }
}

fn read(path: PathBuf) -> Result<Vec<u8>, PushError> {
    std::fs::read(&path).map_err(|source| PushError::Read { path, source })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: String) -> Result<T, PushError> {
    serde_json::from_slice(bytes).map_err(|source| PushError::Json { what, source })
}

/// A blob of the OCI layout `layout` by digest.
fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The node's manifest in `DIR/oci/index.json`: tagged `NODE`, or
/// `NODE-with-secrets` when asked for. A node without a secrets layer has
/// only `NODE`; one with a secrets layer whose layout was built without
/// `--oci-with-secrets` cannot be pushed with it.
fn choose(dir: &Path, include_secrets: bool) -> Result<Descriptor, PushError> {
    let index: Manifest = parse(&read(dir.join("oci/index.json"))?, "oci/index.json".into())?;
    let node = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tagged = |tag: &str| index.manifests.iter().find(|d| d.ref_name() == Some(tag));
    if include_secrets {
        let tag = super::oci::with_secrets_tag(&node);
        if let Some(d) = tagged(&tag) {
            return Ok(d.clone());
        }
        if has_secrets_layer(dir) {
            return Err(PushError::NoSecretsImage {
                dir: dir.to_path_buf(),
                tag,
            });
        }
    }
    tagged(&node).cloned().ok_or_else(|| PushError::NoImage {
        dir: dir.to_path_buf(),
        tag: node.clone(),
    })
}

/// Whether `DIR/image.json` names a secrets layer (when it cannot be read,
/// it counts as naming one).
fn has_secrets_layer(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("image.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<super::ImageJson>(&t).ok())
        .is_none_or(|i| i.layers.iter().any(|l| l.kind() == LayerKind::Secrets))
}

/// Pushes `DIR/oci` as `reference`, and what `imgbuild sign` signed of it
/// ([`super::attach`]).
pub fn push(dir: &Path, reference: &str, include_secrets: bool) -> Result<Pushed, PushError> {
    let layout = dir.join("oci");
    let chosen = choose(dir, include_secrets)?;
    let manifest_bytes = read(blob_path(&layout, &chosen.digest))?;
    let manifest: Manifest = parse(&manifest_bytes, format!("manifest {}", chosen.digest))?;
    let config = manifest.config.clone().ok_or_else(|| PushError::NoConfig {
        digest: chosen.digest.clone(),
    })?;
    let (registry, repo, tag) = split_reference(reference);
    let http = crate::fetch::http_client(Duration::from_secs(300)).map_err(PushError::Client)?;
    let mut client = Registry::new(http, &registry, &repo, &BTreeMap::new()).signed_in(
        docker_credentials(&registry),
        format!("repository:{repo}:pull,push"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PushError::Runtime)?;
    rt.block_on(async {
        for d in std::iter::once(&config).chain(&manifest.layers) {
            upload_blob(&mut client, &layout, &d.digest).await?;
        }
        put_manifest(&mut client, &tag, &chosen.media_type, &manifest_bytes).await?;
        // what `imgbuild sign` signed goes along, pointing at this image
        let subject = super::attach::Subject {
            media_type: chosen.media_type.clone(),
            digest: chosen.digest.clone(),
            size: manifest_bytes.len() as u64,
        };
        let tags = super::attach::attach(&mut client, dir, &subject).await?;
        Ok(Pushed {
            digest: chosen.digest.clone(),
            attached: tags,
        })
    })
}

/// What a push wrote: the image's manifest digest, and the tags of what
/// was attached to it (signatures, attestations, the referrers index).
#[derive(Debug)]
pub struct Pushed {
    pub digest: String,
    pub attached: Vec<String>,
}

/// PUTs `bytes` as the manifest `reference` (a tag or digest).
pub(crate) async fn put_manifest(
    client: &mut Registry,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<(), PushError> {
    let url = client.manifest_url(reference);
    let resp = client
        .send(
            &|c| {
                c.put(&url)
                    .header(reqwest::header::CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            },
            &url,
        )
        .await?;
    registry::check(resp, &url).await?;
    Ok(())
}

/// Uploads one blob of the layout unless the registry has it.
async fn upload_blob(client: &mut Registry, layout: &Path, digest: &str) -> Result<(), PushError> {
    let url = client.blob_url(digest);
    let head = client.send(&|c| c.head(&url), &url).await?;
    if head.status().is_success() {
        return Ok(());
    }
    let bytes = read(blob_path(layout, digest))?;
    upload_bytes(client, digest, &bytes).await
}

/// Uploads `bytes` as the blob `digest` (a monolithic upload).
pub(crate) async fn upload_bytes(
    client: &mut Registry,
    digest: &str,
    bytes: &[u8],
) -> Result<(), PushError> {
    let start = client.upload_url();
    let resp = client.send(&|c| c.post(&start), &start).await?;
    let resp = registry::check(resp, &start).await?;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let put = client.upload_put_url(&location, digest);
    let resp = client
        .send(
            &|c| {
                c.put(&put)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.to_vec())
            },
            &put,
        )
        .await?;
    registry::check(resp, &put).await?;
    Ok(())
}

//! `imgbuild push DIR REF`: uploads a node's OCI image (`DIR/oci`) to a
//! registry over the OCI distribution API. Credentials come from the docker
//! config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, `auths`),
//! used for a bearer token or basic auth as the registry asks; without them,
//! anonymous. The secrets layer stays out unless `include_secrets`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::fetch::oci::split_reference;

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
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Desc>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Desc {
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

/// `user:password` for a registry from the docker config, if any.
fn credentials(registry: &str) -> Option<String> {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
        })?;
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auth = v["auths"][registry]["auth"].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()?;
    String::from_utf8(raw).ok()
}

struct Client {
    http: reqwest::Client,
    auth: Option<String>,
    basic: Option<String>,
    scope: String,
}

impl Client {
    async fn send(
        &mut self,
        make: &dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, PushError> {
        for _ in 0..2 {
            let mut req = make(&self.http);
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|source| PushError::Transport {
                url: url.to_string(),
                source,
            })?;
            if resp.status().as_u16() == 401 && self.auth.is_none() {
                let challenge = crate::fetch::oci::www_authenticate(&resp);
                self.auth = Some(self.authorize(&challenge).await?);
                continue;
            }
            return Ok(resp);
        }
        Err(PushError::Http {
            url: url.to_string(),
            status: 401,
            body: "unauthorized".into(),
        })
    }

    async fn authorize(&self, challenge: &str) -> Result<String, PushError> {
        let basic = self.basic.as_ref().map(|b| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        if !challenge.starts_with("Bearer ") {
            return Ok(basic.unwrap_or_default());
        }
        let params = crate::fetch::oci::parse_challenge(challenge);
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut url = reqwest::Url::parse(&realm).map_err(|_| PushError::Http {
            url: realm.clone(),
            status: 401,
            body: "bad realm".into(),
        })?;
        if let Some(s) = params.get("service") {
            url.query_pairs_mut().append_pair("service", s);
        }
        url.query_pairs_mut().append_pair("scope", &self.scope);
        let mut req = self.http.get(url.clone());
        if let Some(b) = &basic {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|source| PushError::Transport {
            url: url.to_string(),
            source,
        })?;
        let bytes = resp.bytes().await.map_err(|source| PushError::Transport {
            url: url.to_string(),
            source,
        })?;
        #[derive(Deserialize)]
        struct T {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: T = serde_json::from_slice(&bytes).map_err(|source| PushError::Json {
            what: format!("the token from {url}"),
            source,
        })?;
        Ok(format!(
            "Bearer {}",
            t.token.or(t.access_token).unwrap_or_default()
        ))
    }
}

async fn check(resp: reqwest::Response, url: &str) -> Result<reqwest::Response, PushError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(PushError::Http {
        url: url.to_string(),
        status,
        body,
    })
}

/// Pushes `DIR/oci` as `reference`; returns the manifest digest.
pub fn push(dir: &Path, reference: &str, include_secrets: bool) -> Result<String, PushError> {
    let layout = dir.join("oci");
    let read = |p: PathBuf| std::fs::read(&p).map_err(|source| PushError::Read { path: p, source });
    let index: Index =
        serde_json::from_slice(&read(layout.join("index.json"))?).map_err(|source| {
            PushError::Json {
                what: "oci/index.json".into(),
                source,
            }
        })?;
    let node = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let want = if include_secrets {
        format!("{node}-with-secrets")
    } else {
        node.clone()
    };
    let chosen = index
        .manifests
        .iter()
        .find(|d| d.annotations.get("org.opencontainers.image.ref.name") == Some(&want))
        .or_else(|| {
            if include_secrets {
                index
                    .manifests
                    .iter()
                    .find(|d| d.annotations.get("org.opencontainers.image.ref.name") == Some(&node))
            } else {
                None
            }
        })
        .cloned()
        .ok_or_else(|| PushError::NoImage {
            dir: dir.to_path_buf(),
            tag: want.clone(),
        })?;
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest_bytes = read(blob(&chosen.digest))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| PushError::Json {
            what: format!("manifest {}", chosen.digest),
            source,
        })?;
    let (registry, repo, tag) = split_reference(reference);
    let loopback = registry.starts_with("127.")
        || registry.starts_with("localhost")
        || registry.starts_with("[::1]");
    let base = format!("{}://{registry}", if loopback { "http" } else { "https" });
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(300))
        .build()
        .map_err(|source| PushError::Transport {
            url: base.clone(),
            source,
        })?;
    let mut client = Client {
        http,
        auth: None,
        basic: credentials(&registry),
        scope: format!("repository:{repo}:pull,push"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PushError::Read {
            path: layout.clone(),
            source,
        })?;
    rt.block_on(async {
        let mut blobs = vec![manifest.config.clone()];
        blobs.extend(manifest.layers.iter().cloned());
        for d in &blobs {
            let url = format!("{base}/v2/{repo}/blobs/{}", d.digest);
            let head = client.send(&|c| c.head(&url), &url).await?;
            if head.status().is_success() {
                continue;
            }
            let start = format!("{base}/v2/{repo}/blobs/uploads/");
            let resp = check(client.send(&|c| c.post(&start), &start).await?, &start).await?;
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("{base}{location}")
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = format!("{location}{sep}digest={}", d.digest);
            let bytes = read(blob(&d.digest))?;
            let resp = client
                .send(
                    &|c| {
                        c.put(&put)
                            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                            .body(bytes.clone())
                    },
                    &put,
                )
                .await?;
            check(resp, &put).await?;
        }
        let url = format!("{base}/v2/{repo}/manifests/{tag}");
        let resp = client
            .send(
                &|c| {
                    c.put(&url)
                        .header(reqwest::header::CONTENT_TYPE, chosen.media_type.as_str())
                        .body(manifest_bytes.clone())
                },
                &url,
            )
            .await?;
        check(resp, &url).await?;
        Ok(chosen.digest.clone())
    })
}

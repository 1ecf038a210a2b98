//! One client for the OCI distribution API, for pulls ([`super::oci`]) and
//! pushes (`output::push`). Takes an image reference (or a registry and a
//! repository) and produces URLs, answers and the OCI types they carry:
//! image references split into registry, repository and tag; base URLs
//! (a `--registry-mirror` if one is set, `http://` only for a loopback
//! registry, else `https://`); descriptors, manifests and indexes; and the
//! auth flow: a 401's `WWW-Authenticate` challenge answered with a bearer
//! token (anonymous, or asked for with the docker config's credentials) or
//! basic auth, then the request sent again. No token or credential is ever
//! put in an error or a log line.
//!
//! Credentials stay with the registry: an `Authorization` header (basic
//! auth, or a token) goes only to the registry's own origin (scheme, host
//! and port), so an upload `Location` on another host gets the bytes
//! without it; a token realm gets the credentials only over https or on the
//! registry's own origin. Only a loopback registry (127.0.0.0/8, `[::1]`,
//! `localhost`, each with an optional port) is spoken to over plain http.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use base64::Engine;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status} {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the token from {url} is not valid JSON")]
    Token {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{registry} asks for a token from {realm}, which is neither https nor the registry itself: the credentials are not sent there"
    )]
    InsecureRealm { registry: String, realm: String },
}

/// A blob, manifest or index named by digest, as manifests and indexes list
/// them.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The `org.opencontainers.image.ref.name` annotation (an OCI layout's tag).
    pub(crate) fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get("org.opencontainers.image.ref.name")
            .map(String::as_str)
    }
}

#[derive(Debug, Deserialize, Clone)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An image manifest (`config`, `layers`) or an index (`manifests`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// An index's platform manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The manifest and index media types a pull accepts.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

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

/// `HOST[:PORT]` or `[IPV6][:PORT]` -> (host, whether bracketed); `None`
/// if the port is not a number.
fn split_host_port(registry: &str) -> Option<(&str, bool)> {
    let (host, port, bracketed) = match registry.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, None, true),
                p => (host, Some(p.strip_prefix(':')?), true),
            }
        }
        None => match registry.split_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (registry, None, false),
        },
    };
    let port_ok = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    };
    port.is_none_or(port_ok).then_some((host, bracketed))
}

/// Whether a registry name is a loopback address: an address in
/// 127.0.0.0/8, `[::1]` or the name `localhost`, each with an optional port.
fn is_loopback(registry: &str) -> bool {
    match split_host_port(registry) {
        Some((host, true)) => host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback()),
        Some((host, false)) => {
            host == "localhost" || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        }
        None => false,
    }
}

/// The API base URL of a registry: its mirror if one is set, plain HTTP for
/// a loopback registry, else HTTPS.
fn base_url(registry: &str, mirrors: &BTreeMap<String, String>) -> String {
    if let Some(m) = mirrors.get(registry) {
        return m.trim_end_matches('/').to_string();
    }
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        r if is_loopback(r) => format!("http://{r}"),
        r => format!("https://{r}"),
    }
}

/// Where a request to `url` goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn origin(url: &str) -> Option<Origin> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(Origin {
        scheme: u.scheme().to_string(),
        host: u.host_str()?.to_ascii_lowercase(),
        port: u.port_or_known_default(),
    })
}

/// The parameters of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(challenge: &str) -> BTreeMap<String, String> {
    challenge
        .trim_start_matches("Bearer ")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The `WWW-Authenticate` challenge of a 401 answer (empty if none).
fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `user:password` for a registry from the docker config
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, `auths`), if any.
pub(crate) fn docker_credentials(registry: &str) -> Option<String> {
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

/// How much of an error answer's body an error shows, in characters.
const SHOWN_BODY: usize = 200;

/// Turns an answer that is not a success into [`RegistryError::Http`],
/// with the start of its body (read no further, control characters
/// escaped): a server's answer is not trusted to be short or printable.
pub(crate) async fn check(
    mut resp: reqwest::Response,
    url: &str,
) -> Result<reqwest::Response, RegistryError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while bytes.len() < SHOWN_BODY * 4 {
        match resp.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let body = text
        .trim()
        .chars()
        .take(SHOWN_BODY)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    Err(RegistryError::Http {
        url: url.to_string(),
        status,
        body,
    })
}

/// A client for one repository of one registry. Deliberately not `Debug`:
/// it holds credentials and a token.
pub(crate) struct Registry {
    http: reqwest::Client,
    base: String,
    /// The origin of `base`: the one place an `Authorization` header goes.
    origin: Option<Origin>,
    repo: String,
    /// `user:password`, sent as basic auth or with the token request.
    credentials: Option<String>,
    /// The token scope to ask for; `None` asks for the challenge's.
    scope: Option<String>,
    /// The `Authorization` header, once the registry asked for one.
    authorization: Option<String>,
}

impl Registry {
    /// An anonymous client for `repo` on `registry` (or its mirror).
    pub(crate) fn new(
        http: reqwest::Client,
        registry: &str,
        repo: &str,
        mirrors: &BTreeMap<String, String>,
    ) -> Registry {
        let base = base_url(registry, mirrors);
        Registry {
            http,
            origin: origin(&base),
            base,
            repo: repo.to_string(),
            credentials: None,
            scope: None,
            authorization: None,
        }
    }

    /// Signs in with `credentials` (`user:password`, if any) and asks for
    /// tokens of `scope`.
    pub(crate) fn signed_in(mut self, credentials: Option<String>, scope: String) -> Registry {
        self.credentials = credentials;
        self.scope = Some(scope);
        self
    }

    pub(crate) fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base, self.repo)
    }

    pub(crate) fn manifest_url(&self, reference: &str) -> String {
        format!("{}/v2/{}/manifests/{reference}", self.base, self.repo)
    }

    pub(crate) fn upload_url(&self) -> String {
        format!("{}/v2/{}/blobs/uploads/", self.base, self.repo)
    }

    /// Whether `url` is on the registry's own origin (scheme, host, port).
    fn is_own(&self, url: &str) -> bool {
        self.origin.is_some() && origin(url) == self.origin
    }

    /// Where to `PUT` an upload's bytes: its `Location` (absolute, or a
    /// path on the registry) with `digest=` added.
    pub(crate) fn upload_put_url(&self, location: &str, digest: &str) -> String {
        let location = if reqwest::Url::parse(location).is_ok() {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    }

    /// Sends the request `make` builds; on a first 401, authorizes as the
    /// challenge asks and sends it again. The answer, whatever its status.
    /// A `url` on another origin (an upload `Location` elsewhere) is sent
    /// as it is: no `Authorization`, no challenge answered.
    pub(crate) async fn send(
        &mut self,
        make: &dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self.send_once(make, url).await?;
        if resp.status().as_u16() != 401 || self.authorization.is_some() || !self.is_own(url) {
            return Ok(resp);
        }
        match self.authorize(&www_authenticate(&resp)).await? {
            Some(authorization) => self.authorization = Some(authorization),
            None => return Ok(resp),
        }
        self.send_once(make, url).await
    }

    async fn send_once(
        &self,
        make: &dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = make(&self.http);
        if let Some(a) = self.authorization.as_ref().filter(|_| self.is_own(url)) {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req.send().await.map_err(|source| RegistryError::Transport {
            url: url.to_string(),
            source,
        })
    }

    /// The `Authorization` header a challenge asks for: a bearer token, or
    /// basic auth when there are credentials; `None` if there is nothing to
    /// answer with.
    async fn authorize(&self, challenge: &str) -> Result<Option<String>, RegistryError> {
        let basic = self.credentials.as_ref().map(|b| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        if !challenge.starts_with("Bearer ") {
            return Ok(basic);
        }
        let token = self.token(challenge, basic.as_deref()).await?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// `Bearer realm="…",service="…",scope="…"` -> a token from the realm.
    async fn token(&self, challenge: &str, basic: Option<&str>) -> Result<String, RegistryError> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut url = reqwest::Url::parse(&realm).map_err(|_| RegistryError::Http {
            url: realm.clone(),
            status: 401,
            body: "bad realm".into(),
        })?;
        if basic.is_some() && url.scheme() != "https" && !self.is_own(url.as_str()) {
            return Err(RegistryError::InsecureRealm {
                registry: self.base.clone(),
                realm: url.to_string(),
            });
        }
        if let Some(s) = params.get("service") {
            url.query_pairs_mut().append_pair("service", s);
        }
        if let Some(s) = self.scope.as_ref().or(params.get("scope")) {
            url.query_pairs_mut().append_pair("scope", s);
        }
        let mut req = self.http.get(url.clone());
        if let Some(b) = basic {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let transport = |source| RegistryError::Transport {
            url: url.to_string(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let bytes = resp.bytes().await.map_err(transport)?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&bytes).map_err(|source| RegistryError::Token {
            url: url.to_string(),
            source,
        })?;
        Ok(t.token.or(t.access_token).unwrap_or_default())
    }
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

    #[test]
    fn base_urls() {
        let mirrors = BTreeMap::from([(
            "registry.k8s.io".to_string(),
            "http://127.0.0.1:5000/".to_string(),
        )]);
        assert_eq!(
            base_url("registry.k8s.io", &mirrors),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            base_url("docker.io", &mirrors),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            base_url("127.0.0.1:5000", &mirrors),
            "http://127.0.0.1:5000"
        );
        assert_eq!(base_url("quay.io", &mirrors), "https://quay.io");
    }

    #[test]
    fn only_loopback_addresses_are_plain_http_registries() {
        let none = BTreeMap::new();
        for r in [
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:5000",
            "localhost",
            "localhost:5000",
            "[::1]",
            "[::1]:5000",
        ] {
            assert_eq!(base_url(r, &none), format!("http://{r}"), "{r}");
        }
        for r in [
            "127.evil.com",
            "127.evil.com:5000",
            "127.0.0.1.evil.com",
            "localhost.evil.com",
            "localhost.evil.com:5000",
            "localhostevil.com",
            "localhost:5000@evil.com",
            "localhost:+5000",
            "127.0.0.1:",
            "[::1].evil.com",
            "[::2]:5000",
            "10.0.0.1:5000",
        ] {
            assert_eq!(base_url(r, &none), format!("https://{r}"), "{r}");
        }
    }

    #[test]
    fn challenges() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "reg");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }

    /// The requests a test server saw: path, `Authorization` header.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

    /// A registry on 127.0.0.1 that wants a bearer token from its realm
    /// (`/token`) for `/v2/bearer/…` and basic auth for `/v2/basic/…`; it
    /// logs each request line with its `Authorization` header.
    fn auth_server() -> (String, Seen) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (realm, seen) = (format!("{base}/token"), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let (mut line, mut auth) = (String::new(), String::new());
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = v.trim().to_string();
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push((path.clone(), auth.clone()));
                let (status, extra, body) = if path.starts_with("/token") {
                    ("200 OK", String::new(), r#"{"token":"t0k"}"#)
                } else if auth == "Bearer t0k" || auth == "Basic dXNlcjpwdw==" {
                    ("200 OK", String::new(), "ok")
                } else if path.starts_with("/v2/bearer/") {
                    let c = format!(
                        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"svc\",scope=\"repository:bearer:pull\"\r\n"
                    );
                    ("401 Unauthorized", c, "")
                } else {
                    let c = "WWW-Authenticate: Basic realm=\"reg\"\r\n".to_string();
                    ("401 Unauthorized", c, "")
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body.as_bytes());
            }
        });
        (base, log)
    }

    fn get(reg: &mut Registry, digest: &str) -> u16 {
        let url = &reg.blob_url(digest);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(reg.send(&|c| c.get(url), url))
            .unwrap()
            .status()
            .as_u16()
    }

    #[test]
    fn a_bearer_challenge_is_answered_with_a_token_then_the_request_again() {
        let (base, log) = auth_server();
        let mirrors = BTreeMap::from([("r.example".to_string(), base.clone())]);
        let http = crate::fetch::http_client(std::time::Duration::from_secs(5)).unwrap();
        // anonymous, the challenge's scope
        let mut reg = Registry::new(http.clone(), "r.example", "bearer", &mirrors);
        assert_eq!(get(&mut reg, "sha256:1"), 200);
        assert_eq!(get(&mut reg, "sha256:2"), 200);
        let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], ("/v2/bearer/blobs/sha256:1".into(), String::new()));
        assert_eq!(
            seen[1],
            (
                "/token?service=svc&scope=repository%3Abearer%3Apull".into(),
                String::new()
            )
        );
        assert_eq!(seen[2].1, "Bearer t0k");
        // one token for the repository
        assert_eq!(
            seen[3],
            ("/v2/bearer/blobs/sha256:2".into(), "Bearer t0k".into())
        );
        // signed in: the credentials go to the realm, with the push scope
        let mut reg = Registry::new(http, "r.example", "bearer", &mirrors)
            .signed_in(Some("user:pw".into()), "repository:bearer:pull,push".into());
        assert_eq!(get(&mut reg, "sha256:1"), 200);
        let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
        assert_eq!(
            seen[1],
            (
                "/token?service=svc&scope=repository%3Abearer%3Apull%2Cpush".into(),
                "Basic dXNlcjpwdw==".into()
            )
        );
    }

    #[test]
    fn an_error_answer_shows_only_the_start_of_its_body_escaped() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v2/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut [0u8; 4096]);
            let body = format!("\x1b[2Jbad\n{}", "x".repeat(1 << 20));
            let head = format!(
                "HTTP/1.1 500 Oops\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        });
        let http = crate::fetch::http_client(std::time::Duration::from_secs(5)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { check(http.get(&url).send().await.unwrap(), &url).await })
            .err()
            .unwrap()
            .to_string();
        let want = format!(
            "{url} answered HTTP 500 \\u{{1b}}[2Jbad\\n{}",
            "x".repeat(192)
        );
        assert_eq!(err, want);
    }

    #[test]
    fn a_basic_challenge_takes_credentials_and_anonymous_gets_the_401() {
        let (base, log) = auth_server();
        let mirrors = BTreeMap::from([("r.example".to_string(), base)]);
        let http = crate::fetch::http_client(std::time::Duration::from_secs(5)).unwrap();
        let mut anonymous = Registry::new(http.clone(), "r.example", "basic", &mirrors);
        assert_eq!(get(&mut anonymous, "sha256:1"), 401);
        assert_eq!(log.lock().unwrap().drain(..).count(), 1);
        let mut reg = Registry::new(http, "r.example", "basic", &mirrors)
            .signed_in(Some("user:pw".into()), "repository:basic:pull,push".into());
        assert_eq!(get(&mut reg, "sha256:1"), 200);
        let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].1, "Basic dXNlcjpwdw==");
    }
}

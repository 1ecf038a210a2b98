//! The transfers of stage 3: takes one pin, produces its verified blob in
//! the cache. Mirrors are tried in order, then upstream (unless offline);
//! each HTTP source gets [`ATTEMPTS`] attempts with a doubling backoff, and a
//! body that broke off is resumed with `Range` from the partial file;
//! `file://` mirrors are copied. When every source fails, each one is
//! named with what went wrong there, a checksum mismatch first; a local I/O
//! error (a full disk, a read-only cache) stops at once, naming the cache.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;

use super::cache::{BlobWriter, Cache, CacheError};
use super::{FetchError, Fetched, Mismatch, Origin, SourceFailure};
use crate::manifest::ArtifactPin;

/// Attempts per source, and the first backoff (doubling, at most 4 s).
const ATTEMPTS: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(200);

/// The HTTP client of every download and registry request.
pub(crate) fn client(read_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(read_timeout)
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `https://HOST/PATH` -> `HOST/PATH`, the mirror layout.
pub(crate) fn mirror_path(url: &str) -> Option<&str> {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
}

/// Maps `scheme://HOST/PATH` to `MIRROR/HOST/PATH`.
fn mirror_url(mirror: &str, upstream: &str) -> Option<String> {
    let rest = mirror_path(upstream)?;
    Some(format!("{}/{rest}", mirror.trim_end_matches('/')))
}

/// `bytes START-END/TOTAL` -> START
fn content_range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `name version (arch) url`, how a missing artifact is listed.
pub(super) fn missing(pin: &ArtifactPin) -> String {
    format!("{} {} ({}) {}", pin.name, pin.version, pin.arch, pin.url)
}

/// What every download of one run shares.
pub(super) struct Fetcher {
    pub(super) client: reqwest::Client,
    pub(super) cache: Cache,
    pub(super) mirrors: Vec<String>,
    pub(super) offline: bool,
}

impl Fetcher {
    /// Makes one pin present and verified in the cache.
    pub(super) async fn fetch_one(
        &self,
        pin: &ArtifactPin,
        bar: &ProgressBar,
    ) -> Result<Fetched, FetchError> {
        if self.cache.has(&pin.checksum) {
            return self.fetched(pin, Origin::Cached);
        }
        let _lock = self.cache.lock(&pin.checksum).await?;
        if self.cache.has(&pin.checksum) {
            return self.fetched(pin, Origin::Cached);
        }
        let mut failed = Vec::new();
        for origin in self.sources(pin) {
            let (kind, url) = match &origin {
                Origin::Mirror(u) => ("mirror", u.clone()),
                Origin::Downloaded(u) => ("upstream", u.clone()),
                Origin::Cached => continue,
            };
            match self.fetch_from(pin, &url, bar).await {
                Ok(()) => return self.fetched(pin, origin),
                // the cache, not the source: no other source would do better
                Err(FetchError::Cache(source)) => {
                    return Err(FetchError::Local {
                        artifact: pin.name.clone(),
                        version: pin.version.clone(),
                        cache: self.cache.root.clone(),
                        source: Box::new(source),
                    });
                }
                Err(error) => failed.push((kind, url, error)),
            }
        }
        Err(self.all_failed(pin, failed))
    }

    fn fetched(&self, pin: &ArtifactPin, origin: Origin) -> Result<Fetched, FetchError> {
        Ok(Fetched {
            pin: pin.clone(),
            size: self.cache.size(&pin.checksum)?,
            origin,
        })
    }

    /// The mirrors in order, then upstream unless offline.
    fn sources(&self, pin: &ArtifactPin) -> Vec<Origin> {
        let mut sources: Vec<Origin> = self
            .mirrors
            .iter()
            .filter_map(|m| mirror_url(m, &pin.url).map(Origin::Mirror))
            .collect();
        if !self.offline {
            sources.push(Origin::Downloaded(pin.url.clone()));
        }
        sources
    }

    /// The error alone if there was one source, else every source with what
    /// went wrong there, the first checksum mismatch (else the last error)
    /// kept as the cause.
    fn all_failed(
        &self,
        pin: &ArtifactPin,
        mut failed: Vec<(&'static str, String, FetchError)>,
    ) -> FetchError {
        if failed.len() <= 1 {
            return match failed.pop() {
                Some((_, _, e)) => e,
                None => FetchError::Offline {
                    cache: self.cache.root.clone(),
                    missing: vec![missing(pin)],
                },
            };
        }
        let failures: Vec<SourceFailure> = failed
            .iter()
            .map(|(kind, url, e)| SourceFailure {
                kind,
                url: url.clone(),
                reason: reason(e),
                mismatch: matches!(e, FetchError::Checksum(_)),
            })
            .collect();
        let main = failures
            .iter()
            .position(|f| f.mismatch)
            .unwrap_or(failed.len() - 1);
        FetchError::AllSourcesFailed {
            artifact: pin.name.clone(),
            version: pin.version.clone(),
            failures,
            cause: Box::new(failed.swap_remove(main).2),
        }
    }

    async fn fetch_from(
        &self,
        pin: &ArtifactPin,
        url: &str,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let mut part = self.cache.partial(&pin.checksum)?;
        match url.strip_prefix("file://") {
            Some(path) => copy_local(Path::new(path), &mut part, pin, url)?,
            None => self.download(&mut part, pin, url, bar).await?,
        }
        match part.commit() {
            Ok(_) => Ok(()),
            Err(CacheError::Mismatch {
                algo,
                expected,
                actual,
                ..
            }) => Err(FetchError::Checksum(Box::new(Mismatch {
                artifact: pin.name.clone(),
                version: pin.version.clone(),
                url: url.to_string(),
                algo,
                expected,
                actual,
            }))),
            Err(e) => Err(e.into()),
        }
    }

    /// Attempts until one completes, backing off between them.
    async fn download(
        &self,
        part: &mut BlobWriter,
        pin: &ArtifactPin,
        url: &str,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let mut attempt = 1;
        loop {
            match http_attempt(&self.client, part, pin, url, bar).await? {
                Attempt::Done => return Ok(()),
                Attempt::Retry(e) if attempt >= ATTEMPTS => return Err(e),
                Attempt::Retry(_) => {}
            }
            let wait = BACKOFF * 2u32.pow(attempt - 1);
            tokio::time::sleep(wait.min(Duration::from_secs(4))).await;
            attempt += 1;
        }
    }
}

/// A `file://` source: copied whole into the partial file. Reading the
/// source is the source's problem; writing the partial file the cache's.
fn copy_local(
    src: &Path,
    part: &mut BlobWriter,
    pin: &ArtifactPin,
    url: &str,
) -> Result<(), FetchError> {
    let unreadable = |source| FetchError::ReadSource {
        artifact: pin.name.clone(),
        version: pin.version.clone(),
        url: url.to_string(),
        source,
    };
    let mut input = File::open(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => http_error(pin, url, 404),
        _ => unreadable(e),
    })?;
    part.restart()?;
    let mut buf = vec![0u8; crate::fsutil::BLOCK];
    loop {
        match input.read(&mut buf).map_err(unreadable)? {
            0 => return Ok(()),
            n => part.write(&buf[..n])?,
        }
    }
}

/// What went wrong at one source, in a line (its URL is named beside it).
fn reason(e: &FetchError) -> String {
    match e {
        FetchError::Checksum(m) => format!(
            "CHECKSUM MISMATCH: expected {algo}:{}, got {algo}:{}",
            m.expected,
            m.actual,
            algo = m.algo
        ),
        FetchError::Http { status, .. } => format!("answered HTTP {status}"),
        FetchError::Transport { source, .. } => format!("cannot download: {}", chain(source)),
        FetchError::ReadSource { source, .. } => format!("cannot read: {}", chain(source)),
        other => chain(other),
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn http_error(pin: &ArtifactPin, url: &str, status: u16) -> FetchError {
    FetchError::Http {
        artifact: pin.name.clone(),
        version: pin.version.clone(),
        url: url.to_string(),
        status,
    }
}

fn transport_error(pin: &ArtifactPin, url: &str, source: reqwest::Error) -> FetchError {
    FetchError::Transport {
        artifact: pin.name.clone(),
        version: pin.version.clone(),
        url: url.to_string(),
        source,
    }
}

/// Outcome of one attempt at one source.
enum Attempt {
    Done,
    /// Worth another try (connection failed, 5xx, body broke off).
    Retry(FetchError),
}

/// What an answer's status means for the partial file.
enum Answer {
    /// The range asked for: append to the partial file.
    Append,
    /// The whole body: start the partial file over.
    Restart,
    /// Try again, from zero if `restart`.
    Retry {
        status: u16,
        restart: bool,
    },
    Fail(u16),
}

fn answer(resp: &reqwest::Response, have: u64) -> Answer {
    match resp.status().as_u16() {
        206 => {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start == Some(have) {
                Answer::Append
            } else {
                // a range we did not ask for: start over from zero
                Answer::Retry {
                    status: 206,
                    restart: true,
                }
            }
        }
        200 => Answer::Restart,
        416 => Answer::Retry {
            status: 416,
            restart: true,
        },
        s @ (429 | 500..=599) => Answer::Retry {
            status: s,
            restart: false,
        },
        s => Answer::Fail(s),
    }
}

/// One request: asks for the rest of the partial file if there is one.
async fn http_attempt(
    client: &reqwest::Client,
    part: &mut BlobWriter,
    pin: &ArtifactPin,
    url: &str,
    bar: &ProgressBar,
) -> Result<Attempt, FetchError> {
    let have = part.written();
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Retry(transport_error(pin, url, e))),
    };
    match answer(&resp, have) {
        Answer::Append => {}
        Answer::Restart => part.restart()?,
        Answer::Retry { status, restart } => {
            if restart {
                part.restart()?;
            }
            return Ok(Attempt::Retry(http_error(pin, url, status)));
        }
        Answer::Fail(status) => return Err(http_error(pin, url, status)),
    }
    let before = part.written();
    bar.set_length(resp.content_length().map_or(0, |l| l + before));
    bar.set_position(before);
    Ok(match stream_body(resp, part, bar).await? {
        None => Attempt::Done,
        // the body broke off: keep what arrived and resume
        Some(e) => Attempt::Retry(transport_error(pin, url, e)),
    })
}

/// Appends the body to the partial file; `Some` if it broke off.
async fn stream_body(
    mut resp: reqwest::Response,
    part: &mut BlobWriter,
    bar: &ProgressBar,
) -> Result<Option<reqwest::Error>, CacheError> {
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                part.write(&bytes)?;
                bar.inc(bytes.len() as u64);
            }
            Ok(None) => return Ok(None),
            Err(e) => return Ok(Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_layout() {
        assert_eq!(
            mirror_url(
                "http://127.0.0.1:8080/m/",
                "https://dl.k8s.io/v1.35.4/x.tar.gz"
            )
            .as_deref(),
            Some("http://127.0.0.1:8080/m/dl.k8s.io/v1.35.4/x.tar.gz")
        );
        assert_eq!(
            mirror_url("file:///srv/bundle", "https://github.com/a/b").as_deref(),
            Some("file:///srv/bundle/github.com/a/b")
        );
        assert_eq!(mirror_url("http://m", "file:///x"), None);
    }

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }
}

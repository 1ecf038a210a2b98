//! Stage 3, `fetch`: takes the pins a set of plans needs and makes each one
//! present and verified in the content-addressed cache
//! (`<cache>/blobs/<algo>/<hex>`, [`cache`]). Downloads stream into a partial
//! file while being hashed, are verified, then renamed into place; nothing
//! unverified ever enters `blobs/`. Mirrors are tried in order, then upstream
//! (unless offline); transient failures are retried with backoff and resumed
//! with `Range` ([`http`]). A per-artifact lock makes runs sharing a cache
//! safe. Also here: container images ([`oci`]) over one registry client
//! ([`registry`]), reading archive members ([`archive`]) and air-gap bundles
//! ([`bundle`]).

pub mod archive;
pub mod bundle;
mod cache;
pub mod digest;
mod http;
pub mod oci;
mod progress;
pub(crate) mod registry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::manifest::{ArtifactPin, Manifests};
use crate::plan::Plan;

pub use cache::{Cache, CacheError};
pub(crate) use http::client as http_client;
pub(crate) use progress::summary;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("offline, and {} artifact{} missing from the cache {cache}:\n{}", missing.len(), if missing.len() == 1 { " is" } else { "s are" }, missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n"))]
    Offline {
        cache: PathBuf,
        missing: Vec<String>,
    },
    #[error(
        "checksum mismatch for {} {} from {}: expected {algo}:{}, got {algo}:{}; the download was deleted and the cache is unchanged",
        .0.artifact, .0.version, .0.url, .0.expected, .0.actual, algo = .0.algo
    )]
    Checksum(Box<Mismatch>),
    #[error("{artifact} {version}: {url} answered HTTP {status}")]
    Http {
        artifact: String,
        version: String,
        url: String,
        status: u16,
    },
    #[error("{artifact} {version}: cannot download {url}")]
    Transport {
        artifact: String,
        version: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{artifact} {version}: cannot read {url}")]
    ReadSource {
        artifact: String,
        version: String,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{artifact} {version}: no source worked{}:\n{}",
        headline(failures),
        lines(failures)
    )]
    AllSourcesFailed {
        artifact: String,
        version: String,
        /// Every source tried, in order, with what went wrong there.
        failures: Vec<SourceFailure>,
        /// The failure that matters most: a checksum mismatch if a source
        /// served the wrong bytes, else the last one.
        #[source]
        cause: Box<FetchError>,
    },
    #[error(
        "{artifact} {version}: cannot store the download in the cache {cache}: stopped, this is a local problem, not a network one"
    )]
    Local {
        artifact: String,
        version: String,
        cache: PathBuf,
        #[source]
        source: Box<CacheError>,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("mirror `{0}` is not an http://, https:// or file:// URL")]
    BadMirror(String),
    #[error("cannot start the download client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the download runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

/// One source that failed, as [`FetchError::AllSourcesFailed`] lists it.
#[derive(Debug)]
pub struct SourceFailure {
    /// `mirror` or `upstream`.
    pub kind: &'static str,
    pub url: String,
    /// What went wrong, in a line.
    pub reason: String,
    /// The source served bytes that do not match the pin.
    pub mismatch: bool,
}

/// Says so first when a source served the wrong bytes.
fn headline(failures: &[SourceFailure]) -> String {
    match failures.iter().filter(|f| f.mismatch).count() {
        0 => String::new(),
        n => format!(
            ", and {n} of {} served bytes that do not match the pin (CHECKSUM MISMATCH: a tampered or corrupt source)",
            failures.len()
        ),
    }
}

/// One indented line per source: kind, URL, what went wrong.
fn lines(failures: &[SourceFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("  {} {}: {}", f.kind, f.url, f.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a checksum mismatch names.
#[derive(Debug)]
pub struct Mismatch {
    pub artifact: String,
    pub version: String,
    pub url: String,
    pub algo: &'static str,
    pub expected: String,
    pub actual: String,
}

/// Where an artifact came from in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    Cached,
    Downloaded(String),
    Mirror(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub pin: ArtifactPin,
    pub size: u64,
    pub origin: Origin,
}

pub(crate) struct Options {
    pub mirrors: Vec<String>,
    pub offline: bool,
    pub jobs: usize,
    /// Show progress bars (on a terminal, not with -q).
    pub progress: bool,
}

/// The pins the plans need (artifacts, the `[os]` base, the `.deb`s), each
/// download once, in a stable order.
pub(crate) fn needed_pins(m: &Manifests, plans: &[Plan]) -> Vec<ArtifactPin> {
    let mut out: Vec<ArtifactPin> = Vec::new();
    for p in plans {
        let artifacts = p
            .artifacts()
            .into_iter()
            .filter_map(|name| m.pins.artifact(name, p.arch).cloned());
        let debs = p
            .debs()
            .into_iter()
            .filter_map(|name| m.pins.deb(name, p.arch).map(|d| d.download(p.arch)));
        for pin in artifacts.chain(debs) {
            if !out
                .iter()
                .any(|o| o.url == pin.url && o.checksum == pin.checksum)
            {
                out.push(pin);
            }
        }
    }
    out.sort_by(|a, b| (&a.name, a.arch, &a.url).cmp(&(&b.name, b.arch, &b.url)));
    out
}

/// Makes every pin present and verified in the cache.
pub(crate) fn fetch_all(
    cache: &Cache,
    pins: &[ArtifactPin],
    opts: &Options,
) -> Result<Vec<Fetched>, FetchError> {
    if let Some(bad) = opts.mirrors.iter().find(|m| {
        !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://"))
    }) {
        return Err(FetchError::BadMirror(bad.clone()));
    }
    if opts.offline {
        check_offline(cache, pins)?;
    }
    let fetcher = Arc::new(http::Fetcher {
        client: http::client(Duration::from_secs(60)).map_err(FetchError::Client)?,
        cache: cache.clone(),
        mirrors: opts.mirrors.clone(),
        offline: opts.offline,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.jobs.clamp(1, 16))
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)?;
    let progress = progress::Progress::new(opts.progress, pins.len());
    let results = runtime.block_on(fetch_each(&fetcher, pins, opts.jobs, &progress));
    progress.finish();
    results.into_iter().collect()
}

/// Offline, every pin must already be cached: else all the missing ones are named.
fn check_offline(cache: &Cache, pins: &[ArtifactPin]) -> Result<(), FetchError> {
    let missing: Vec<String> = pins
        .iter()
        .filter(|p| !cache.has(&p.checksum))
        .map(http::missing)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(FetchError::Offline {
        cache: cache.root.clone(),
        missing,
    })
}

/// Fetches the pins, `jobs` at a time; the results in the pins' order.
async fn fetch_each(
    fetcher: &Arc<http::Fetcher>,
    pins: &[ArtifactPin],
    jobs: usize,
    progress: &progress::Progress,
) -> Vec<Result<Fetched, FetchError>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, pin) in pins.iter().cloned().enumerate() {
        let (fetcher, sem, progress) = (fetcher.clone(), sem.clone(), progress.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let bar = progress.artifact(&pin.name);
            let r = fetcher.fetch_one(&pin, &bar).await;
            progress.done(&bar);
            (i, r)
        });
    }
    let mut out: Vec<Option<Result<Fetched, FetchError>>> = (0..pins.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, r)) = joined {
            out[i] = Some(r);
        }
    }
    out.into_iter().flatten().collect()
}

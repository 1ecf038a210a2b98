//! Stage 3, `fetch`: takes the pins a set of plans needs and makes each one
//! present and verified in the content-addressed cache
//! (`<cache>/blobs/<algo>/<hex>`). Downloads stream into
//! `<cache>/tmp/<algo>-<hex>.part` while being hashed, are verified, then
//! renamed into place; nothing unverified ever enters `blobs/`. Mirrors are
//! tried in order, then upstream (unless offline); transient failures are
//! retried with backoff and resumed with `Range`. A per-artifact lock makes
//! runs sharing a cache safe. Also here: reading archive members
//! ([`archive`]) and air-gap bundles ([`bundle`]).

pub mod archive;
pub mod bundle;
pub mod digest;
pub mod oci;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::manifest::{ArtifactPin, Checksum, Manifests};
use crate::plan::{Plan, Source};
use digest::Hasher;

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
    #[error("{artifact} {version}: no source worked (tried {})", tried.join(", "))]
    AllSourcesFailed {
        artifact: String,
        version: String,
        tried: Vec<String>,
        #[source]
        last: Box<FetchError>,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror `{0}` is not an http://, https:// or file:// URL")]
    BadMirror(String),
    #[error("cannot start the download client")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The content-addressed download cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `--cache`, else `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
    pub fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("imgbuild");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/imgbuild"),
            None => PathBuf::from(".imgbuild-cache"),
        }
    }

    pub fn open(root: &Path) -> Result<Cache, FetchError> {
        for sub in ["blobs/sha256", "blobs/sha512", "tmp", "locks"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn blob(&self, c: &Checksum) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest::algo(c))
            .join(digest::hex_of(c))
    }

    pub fn has(&self, c: &Checksum) -> bool {
        self.blob(c).is_file()
    }

    fn part(&self, c: &Checksum) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}-{}.part", digest::algo(c), digest::hex_of(c)))
    }

    fn lock_path(&self, c: &Checksum) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}-{}.lock", digest::algo(c), digest::hex_of(c)))
    }

    /// Moves a verified temporary file into `blobs/`.
    pub fn commit(&self, tmp: &Path, c: &Checksum) -> Result<PathBuf, FetchError> {
        let blob = self.blob(c);
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(tmp))?;
        fs::rename(tmp, &blob).map_err(io_err(&blob))?;
        Ok(blob)
    }

    /// A temporary file, unique to this process and call.
    pub fn temp(&self, name: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{name}.{}.{n}.tmp", std::process::id()))
    }
}

/// Maps `scheme://HOST/PATH` to `MIRROR/HOST/PATH`.
pub fn mirror_url(mirror: &str, upstream: &str) -> Option<String> {
    let rest = upstream
        .strip_prefix("https://")
        .or_else(|| upstream.strip_prefix("http://"))?;
    Some(format!("{}/{rest}", mirror.trim_end_matches('/')))
}

/// Where an artifact came from in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Cached,
    Downloaded(String),
    Mirror(String),
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub pin: ArtifactPin,
    pub size: u64,
    pub origin: Origin,
}

pub struct Options {
    pub mirrors: Vec<String>,
    pub offline: bool,
    pub jobs: usize,
    /// Show progress bars (on a terminal, not with -q).
    pub progress: bool,
}

/// Attempts per source, and the first backoff (doubling, at most 4 s).
const ATTEMPTS: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(200);

/// The pins the plans need, each once, in a stable order.
pub fn needed_pins(m: &Manifests, plans: &[Plan]) -> Vec<ArtifactPin> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in plans {
        for l in &p.layers {
            for e in &l.entries {
                let name = match &e.source {
                    Source::Member { artifact, .. } | Source::Download { artifact, .. } => artifact,
                    _ => continue,
                };
                if let Some(pin) = m.pins.artifact(name, p.arch)
                    && seen.insert((pin.name.clone(), pin.arch))
                {
                    out.push(pin.clone());
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.name, a.arch).cmp(&(&b.name, b.arch)));
    out
}

/// Makes every pin present and verified in the cache.
pub fn fetch_all(
    cache: &Cache,
    pins: &[ArtifactPin],
    opts: &Options,
) -> Result<Vec<Fetched>, FetchError> {
    for m in &opts.mirrors {
        if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://")) {
            return Err(FetchError::BadMirror(m.clone()));
        }
    }
    if opts.offline {
        let missing: Vec<String> = pins
            .iter()
            .filter(|p| !cache.has(&p.checksum))
            .map(|p| format!("{} {} ({}) {}", p.name, p.version, p.arch, p.url))
            .collect();
        if !missing.is_empty() {
            return Err(FetchError::Offline {
                cache: cache.root.clone(),
                missing,
            });
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(FetchError::Client)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.jobs.clamp(1, 16))
        .enable_all()
        .build()
        .map_err(io_err(&cache.root))?;
    let bars = if opts.progress && std::io::stderr().is_terminal() {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    };
    let total = bars.add(ProgressBar::new(pins.len() as u64));
    total.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} artifacts")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    total.set_prefix("fetch");
    let bars = Arc::new(bars);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let results: Vec<Result<Fetched, FetchError>> = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, pin) in pins.iter().cloned().enumerate() {
            let (client, cache, sem, bars, total) = (
                client.clone(),
                cache.clone(),
                sem.clone(),
                bars.clone(),
                total.clone(),
            );
            let mirrors = opts.mirrors.clone();
            let offline = opts.offline;
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(pin.name.clone());
                let r = fetch_one(&client, &cache, &pin, &mirrors, offline, &bar).await;
                bar.finish_and_clear();
                total.inc(1);
                (i, r)
            });
        }
        let mut out: Vec<Option<Result<Fetched, FetchError>>> =
            (0..pins.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined {
                out[i] = Some(r);
            }
        }
        out.into_iter().flatten().collect()
    });
    total.finish_and_clear();
    let mut fetched = Vec::new();
    for r in results {
        fetched.push(r?);
    }
    Ok(fetched)
}

async fn fetch_one(
    client: &reqwest::Client,
    cache: &Cache,
    pin: &ArtifactPin,
    mirrors: &[String],
    offline: bool,
    bar: &ProgressBar,
) -> Result<Fetched, FetchError> {
    let blob = cache.blob(&pin.checksum);
    let done = |origin| -> Result<Fetched, FetchError> {
        let size = fs::metadata(&blob).map_err(io_err(&blob))?.len();
        Ok(Fetched {
            pin: pin.clone(),
            size,
            origin,
        })
    };
    if blob.is_file() {
        return done(Origin::Cached);
    }
    // One run at a time per artifact; whoever waited finds it cached.
    let lock_path = cache.lock_path(&pin.checksum);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
    }
    if blob.is_file() {
        return done(Origin::Cached);
    }
    let mut sources: Vec<(String, bool)> = mirrors
        .iter()
        .filter_map(|m| mirror_url(m, &pin.url).map(|u| (u, true)))
        .collect();
    if !offline {
        sources.push((pin.url.clone(), false));
    }
    let mut errors = Vec::new();
    for (url, is_mirror) in &sources {
        match fetch_from(client, cache, pin, url, bar).await {
            Ok(()) => {
                return done(if *is_mirror {
                    Origin::Mirror(url.clone())
                } else {
                    Origin::Downloaded(url.clone())
                });
            }
            Err(e) => errors.push((url.clone(), e)),
        }
    }
    let tried: Vec<String> = errors.iter().map(|(u, _)| u.clone()).collect();
    match errors.pop() {
        Some((_, e)) if tried.len() == 1 => Err(e),
        Some((_, e)) => Err(FetchError::AllSourcesFailed {
            artifact: pin.name.clone(),
            version: pin.version.clone(),
            tried,
            last: Box::new(e),
        }),
        None => Err(FetchError::Offline {
            cache: cache.root.clone(),
            missing: vec![format!(
                "{} {} ({}) {}",
                pin.name, pin.version, pin.arch, pin.url
            )],
        }),
    }
}

/// Outcome of one attempt at one source.
enum Attempt {
    Done,
    /// Worth another try (connection failed, 5xx, body broke off).
    Retry(FetchError),
}

async fn fetch_from(
    client: &reqwest::Client,
    cache: &Cache,
    pin: &ArtifactPin,
    url: &str,
    bar: &ProgressBar,
) -> Result<(), FetchError> {
    let part = cache.part(&pin.checksum);
    let mut stream = Stream {
        hasher: Hasher::for_checksum(&pin.checksum),
        hashed: 0,
    };
    if let Some(path) = url.strip_prefix("file://") {
        copy_local(Path::new(path), &part, pin, url, &mut stream)?;
    } else {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let wait = BACKOFF * 2u32.pow(attempt - 1);
                tokio::time::sleep(wait.min(Duration::from_secs(4))).await;
            }
            match http_attempt(client, &part, pin, url, bar, &mut stream).await? {
                Attempt::Done => {
                    last = None;
                    break;
                }
                Attempt::Retry(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
    }
    verify_and_commit(cache, &part, pin, url, stream.hasher.hex())
}

/// The hash of the bytes written to the `.part` so far.
struct Stream {
    hasher: Hasher,
    hashed: u64,
}

impl Stream {
    fn restart(&mut self, c: &Checksum) {
        self.hasher = Hasher::for_checksum(c);
        self.hashed = 0;
    }

    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.hashed += bytes.len() as u64;
    }

    /// Resuming a `.part` an earlier run left: hash what is already there.
    fn catch_up(&mut self, part: &Path, have: u64, c: &Checksum) -> Result<(), FetchError> {
        if self.hashed == have {
            return Ok(());
        }
        self.restart(c);
        let mut f = File::open(part).map_err(io_err(part))?.take(have);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_err(part))?;
            if n == 0 {
                break;
            }
            self.update(&buf[..n]);
        }
        Ok(())
    }
}

fn copy_local(
    src: &Path,
    part: &Path,
    pin: &ArtifactPin,
    url: &str,
    stream: &mut Stream,
) -> Result<(), FetchError> {
    let mut input = File::open(src).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FetchError::Http {
            artifact: pin.name.clone(),
            version: pin.version.clone(),
            url: url.to_string(),
            status: 404,
        },
        _ => io_err(src)(source),
    })?;
    let mut out = File::create(part).map_err(io_err(part))?;
    stream.restart(&pin.checksum);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err(part))?;
        stream.update(&buf[..n]);
    }
    Ok(())
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

async fn http_attempt(
    client: &reqwest::Client,
    part: &Path,
    pin: &ArtifactPin,
    url: &str,
    bar: &ProgressBar,
    stream: &mut Stream,
) -> Result<Attempt, FetchError> {
    let transport = |source| FetchError::Transport {
        artifact: pin.name.clone(),
        version: pin.version.clone(),
        url: url.to_string(),
        source,
    };
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Retry(transport(e))),
    };
    let status = resp.status().as_u16();
    let http = |status| FetchError::Http {
        artifact: pin.name.clone(),
        version: pin.version.clone(),
        url: url.to_string(),
        status,
    };
    let append = match status {
        206 => {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(have) {
                // a range we did not ask for: start over from zero
                let _ = fs::remove_file(part);
                return Ok(Attempt::Retry(http(206)));
            }
            true
        }
        200 => false,
        416 => {
            let _ = fs::remove_file(part);
            return Ok(Attempt::Retry(http(416)));
        }
        429 | 500..=599 => return Ok(Attempt::Retry(http(status))),
        _ => return Err(http(status)),
    };
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(!append)
        .open(part)
        .map_err(io_err(part))?;
    if append {
        out.seek(SeekFrom::End(0)).map_err(io_err(part))?;
        stream.catch_up(part, have, &pin.checksum)?;
    } else {
        stream.restart(&pin.checksum);
    }
    let written_before = if append { have } else { 0 };
    bar.set_length(resp.content_length().map_or(0, |l| l + written_before));
    bar.set_position(written_before);
    let mut resp = resp;
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                out.write_all(&bytes).map_err(io_err(part))?;
                stream.update(&bytes);
                bar.inc(bytes.len() as u64);
            }
            Ok(None) => break,
            // the body broke off: keep what arrived and resume
            Err(e) => return Ok(Attempt::Retry(transport(e))),
        }
    }
    out.flush().map_err(io_err(part))?;
    Ok(Attempt::Done)
}

/// A `.part` whose streamed hash matches is renamed into `blobs/`; a
/// mismatch is deleted.
fn verify_and_commit(
    cache: &Cache,
    part: &Path,
    pin: &ArtifactPin,
    url: &str,
    actual: String,
) -> Result<(), FetchError> {
    if actual != digest::hex_of(&pin.checksum) {
        let _ = fs::remove_file(part);
        return Err(FetchError::Checksum(Box::new(Mismatch {
            artifact: pin.name.clone(),
            version: pin.version.clone(),
            url: url.to_string(),
            algo: digest::algo(&pin.checksum),
            expected: digest::hex_of(&pin.checksum).to_string(),
            actual,
        })));
    }
    cache.commit(part, &pin.checksum)?;
    Ok(())
}

/// Hex digest of a file with the algorithm of `c`.
pub fn hash_file(path: &Path, c: &Checksum) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Hasher::for_checksum(c);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.hex())
}

/// The summary table: artifact, version, arch, size, where from.
pub fn summary(fetched: &[Fetched]) -> String {
    let w = fetched
        .iter()
        .map(|f| f.pin.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!(
        "{:w$}  {:10}  {:5}  {:>10}  SOURCE\n",
        "ARTIFACT", "VERSION", "ARCH", "SIZE"
    );
    for f in fetched {
        let origin = match &f.origin {
            Origin::Cached => "cached".to_string(),
            Origin::Downloaded(u) => format!("downloaded {u}"),
            Origin::Mirror(u) => format!("mirror {u}"),
        };
        let _ = writeln!(
            out,
            "{:w$}  {:10}  {:5}  {:>10}  {origin}",
            f.pin.name,
            f.pin.version,
            f.pin.arch,
            human(f.size)
        );
    }
    out
}

fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
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

//! The build context: the one source of time and randomness, passed down to
//! every stage. No stage reads the clock or the OS's random source itself.
//! Every value is bounded here, so no later stage can overflow on it: the
//! time in the years 1970 to 9000, `SOURCE_DATE_EPOCH` in 32 bits, `--jobs`
//! at most four per CPU and 64.

use time::OffsetDateTime;

/// Default `SOURCE_DATE_EPOCH` when the environment sets none: 2024-01-01T00:00:00Z.
pub const DEFAULT_SOURCE_DATE_EPOCH: i64 = 1_704_067_200;

/// The years `IMGBUILD_NOW` may name: with certificates valid at most 100
/// years (the manifests' bound), every date stays a four-digit year.
const NOW_YEARS: std::ops::RangeInclusive<i32> = 1970..=9000;

/// The most `SOURCE_DATE_EPOCH` may be: cpio's and gzip's mtime fields are
/// 32-bit (2106-02-07T06:28:15Z).
const MAX_SOURCE_DATE_EPOCH: i64 = u32::MAX as i64;

/// `--jobs` is at most this many per CPU, and at most [`MAX_JOBS`]: each
/// layer's compressor starts `jobs` threads, and more than the CPUs can run
/// only costs memory.
const JOBS_PER_CPU: usize = 4;
const MAX_JOBS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a whole number of seconds since 1970")]
    SourceDateEpoch(String),
    #[error(
        "SOURCE_DATE_EPOCH=`{0}` is outside 0 to 4294967295 (1970 to 2106): cpio and gzip keep a file's time in 32 bits"
    )]
    SourceDateEpochRange(String),
    #[error("IMGBUILD_NOW=`{0}` is not an RFC 3339 time such as 2027-01-31T12:00:00Z")]
    Now(String),
    #[error(
        "IMGBUILD_NOW=`{0}` is outside the years 1970 to 9000, the times imgbuild issues and checks certificates at"
    )]
    NowRange(String),
    #[error("the operating system's random source failed")]
    Random(#[source] getrandom::Error),
}

#[derive(Debug, Clone)]
pub struct Context {
    /// Wall-clock time, for certificate validity and expiry checks only.
    pub now: OffsetDateTime,
    /// Every timestamp written into an output artifact.
    pub source_date_epoch: i64,
    /// Parallel jobs; output bytes never depend on it.
    pub jobs: usize,
}

impl Context {
    /// Reads the clock once (or `IMGBUILD_NOW`, to ask "what would `pki
    /// status` say on that day"), and `SOURCE_DATE_EPOCH`, from the environment.
    pub fn from_env(jobs: Option<usize>) -> Result<Context, ContextError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Context {
            now: now(std::env::var("IMGBUILD_NOW").ok())?,
            source_date_epoch: source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok())?,
            jobs: bounded_jobs(jobs, cpus),
        })
    }

    /// Fills `buf` from the OS's random source.
    pub fn random(&self, buf: &mut [u8]) -> Result<(), ContextError> {
        getrandom::fill(buf).map_err(ContextError::Random)
    }

    /// `n` random characters from `[a-z0-9]`, without modulo bias.
    pub fn random_token(&self, n: usize) -> Result<String, ContextError> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut out = String::with_capacity(n);
        let mut buf = [0u8; 64];
        while out.len() < n {
            self.random(&mut buf)?;
            for b in buf {
                // 252 = 7 * 36: reject the tail so every character is equally likely
                if b < 252 && out.len() < n {
                    out.push(ALPHABET[(b % 36) as usize] as char);
                }
            }
        }
        Ok(out)
    }
}

/// `IMGBUILD_NOW` when set, else the clock; in [`NOW_YEARS`] either way.
fn now(var: Option<String>) -> Result<OffsetDateTime, ContextError> {
    let now = match var {
        Some(s) => OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| ContextError::Now(s.clone()))
            .and_then(|t| {
                if NOW_YEARS.contains(&t.year()) {
                    Ok(t)
                } else {
                    Err(ContextError::NowRange(s))
                }
            })?,
        None => OffsetDateTime::now_utc(),
    };
    Ok(now)
}

/// `SOURCE_DATE_EPOCH` when set, else the default; 0 to 2^32-1.
fn source_date_epoch(var: Option<String>) -> Result<i64, ContextError> {
    let Some(s) = var else {
        return Ok(DEFAULT_SOURCE_DATE_EPOCH);
    };
    let sde: i64 = s
        .trim()
        .parse()
        .map_err(|_| ContextError::SourceDateEpoch(s.clone()))?;
    if (0..=MAX_SOURCE_DATE_EPOCH).contains(&sde) {
        Ok(sde)
    } else {
        Err(ContextError::SourceDateEpochRange(s))
    }
}

/// `--jobs` (0 or none: the CPUs), at most four per CPU and 64.
fn bounded_jobs(asked: Option<usize>, cpus: usize) -> usize {
    let cap = cpus.saturating_mul(JOBS_PER_CPU).clamp(1, MAX_JOBS);
    asked.filter(|j| *j > 0).unwrap_or(cpus).clamp(1, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_outside_1970_to_9000_is_refused() {
        for bad in [
            "9999-12-31T23:59:59Z",
            "9001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            let err = now(Some(bad.to_string())).unwrap_err();
            assert!(matches!(err, ContextError::NowRange(_)), "{bad}: {err}");
            assert!(err.to_string().contains("1970 to 9000"), "{err}");
        }
        assert!(matches!(
            now(Some("-0001-01-01T00:00:00Z".into())),
            Err(ContextError::Now(_))
        ));
        assert_eq!(
            now(Some("9000-12-31T23:59:59Z".into())).unwrap().year(),
            9000
        );
        assert_eq!(
            now(Some("1970-01-01T00:00:00Z".into())).unwrap().year(),
            1970
        );
    }

    #[test]
    fn source_date_epoch_must_fit_32_bits() {
        assert_eq!(source_date_epoch(None).unwrap(), DEFAULT_SOURCE_DATE_EPOCH);
        assert_eq!(source_date_epoch(Some("0".into())).unwrap(), 0);
        assert_eq!(
            source_date_epoch(Some("4294967295".into())).unwrap(),
            4_294_967_295
        );
        for bad in ["-1", "4294967296", "99999999999999"] {
            assert!(
                matches!(
                    source_date_epoch(Some(bad.into())),
                    Err(ContextError::SourceDateEpochRange(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            source_date_epoch(Some("soon".into())),
            Err(ContextError::SourceDateEpoch(_))
        ));
    }

    #[test]
    fn jobs_are_at_most_four_per_cpu_and_64() {
        assert_eq!(bounded_jobs(Some(10_000), 2), 8);
        assert_eq!(bounded_jobs(Some(10_000), 256), 64);
        assert_eq!(bounded_jobs(Some(3), 2), 3);
        assert_eq!(bounded_jobs(Some(0), 2), 2);
        assert_eq!(bounded_jobs(None, 6), 6);
        assert_eq!(bounded_jobs(None, 1000), 64);
        assert_eq!(bounded_jobs(Some(1), 1), 1);
    }

    #[test]
    fn tokens_use_the_bootstrap_alphabet() {
        let ctx = Context::from_env(Some(1)).unwrap();
        let t = ctx.random_token(16).unwrap();
        assert_eq!(t.len(), 16);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(t, ctx.random_token(16).unwrap());
    }
}

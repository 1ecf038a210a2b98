//! The build context: the one source of time and randomness, passed down to
//! every stage. No stage reads the clock or the OS's random source itself.

use time::OffsetDateTime;

/// Default `SOURCE_DATE_EPOCH` when the environment sets none: 2024-01-01T00:00:00Z.
pub const DEFAULT_SOURCE_DATE_EPOCH: i64 = 1_704_067_200;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a whole number of seconds since 1970")]
    SourceDateEpoch(String),
    #[error("IMGBUILD_NOW=`{0}` is not an RFC 3339 time such as 2027-01-31T12:00:00Z")]
    Now(String),
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
        let now = match std::env::var("IMGBUILD_NOW") {
            Ok(s) => {
                OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
                    .map_err(|_| ContextError::Now(s.clone()))?
            }
            Err(_) => OffsetDateTime::now_utc(),
        };
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| ContextError::SourceDateEpoch(s.clone()))?,
            Err(_) => DEFAULT_SOURCE_DATE_EPOCH,
        };
        let jobs = jobs
            .filter(|j| *j > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        Ok(Context {
            now,
            source_date_epoch,
            jobs,
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

#[cfg(test)]
mod tests {
    use super::*;

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

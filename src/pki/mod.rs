//! Stage 4, `pki`: takes the validated manifests and the state dir, and makes
//! every secret the plans need present there: the three CAs, the leaf
//! certificates (per node where they name a node), the kubeconfigs, the
//! service-account keypair, the bootstrap token (`token`: it expires, and is
//! renewed like a leaf) and the key that encrypts Secrets at rest
//! (`encryption`). An existing CA is never
//! replaced (unless `renew --ca`); an existing leaf is kept while it still
//! matches the manifests and is outside its renewal window. The state dir is
//! 0700 and every file in it 0600, written atomically.
//!
//! [`State::ensure`] (`pki init`, `pki renew`) is in `lifecycle`, and runs
//! holding the state dir's lock (`modes`): two runs on one state dir never
//! generate the PKI side by side. [`State::status`] (`pki status`) and the
//! verdicts on existing files are in `status`; a file or directory whose
//! mode lets others in is reported there and set back by `init` (`modes`).
//! The formats of the non-certificate files are in `files`; whether a
//! certificate chains to the state's CA ([`chains_to_state_ca`], for
//! `verify`) in `chain`.

mod chain;
mod encryption;
mod files;
mod issue;
mod kubeconfig;
mod lifecycle;
mod modes;
mod spec;
mod status;
mod token;

use std::path::{Path, PathBuf};

use serde::Serialize;
use time::Duration;

pub(crate) use chain::chains_to_state_ca;
pub use issue::IssueError;
pub(crate) use spec::state_path;
pub(crate) use status::status_table;

use crate::context::Context;
use crate::fsutil;
use crate::manifest::{KeyAlgorithm, Manifests};
use spec::PkiSpec;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot issue")]
    Issue {
        path: PathBuf,
        #[source]
        source: IssueError,
    },
    #[error(
        "{present} exists but {missing} does not: a CA is never replaced silently; restore {missing}, or run `imgbuild pki renew --ca` to replace the CA (every node must then be rebuilt)"
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
    #[error("{path} is not a PEM certificate")]
    Unreadable { path: PathBuf },
    #[error(
        "{key} is not the key of {crt}: a CA is never replaced silently; restore the pair, or run `imgbuild pki renew --ca` to replace the CA (every node must then be rebuilt)"
    )]
    CaKeyMismatch { crt: PathBuf, key: PathBuf },
    #[error("cannot lock the state dir with {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{id} is not a certificate of the cluster PKI")]
    NotACertificate { id: String },
    #[error(
        "{path} is not an EncryptionConfiguration with a secretbox or aescbc key of 32 bytes: imgbuild never replaces the key that Secrets at rest are encrypted with; restore the file"
    )]
    BadEncryptionConfig { path: PathBuf },
    #[error("cannot date a bootstrap token {hours} hours after {now}: past the year 9999")]
    TokenTtl {
        hours: u32,
        now: time::OffsetDateTime,
    },
    #[error(transparent)]
    Random(#[from] crate::context::ContextError),
}

/// Mode of every file in the state dir, and of the state dir itself.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A leaf is re-issued in its last third of validity, at most 30 days before expiry.
fn renewal_window(leaf_days: u32) -> Duration {
    Duration::days(i64::from((leaf_days / 3).min(30)))
}

/// What `init`/`renew` did to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "reason", rename_all = "lowercase")]
pub(crate) enum Action {
    Created,
    Kept,
    Reissued(String),
    /// A mode that let others in, set back: what it was.
    Fixed(String),
    /// A file no longer used, removed from the state dir: why.
    Removed(String),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Change {
    pub(crate) path: String,
    #[serde(flatten)]
    pub(crate) action: Action,
}

/// How `renew` chooses leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renew {
    /// `init` and `renew --expiring`: only what is missing, mismatched or
    /// inside the renewal window ([`renewal_window`]).
    Needed,
    /// `renew --all`: every leaf.
    All,
}

/// The state dir of one cluster.
pub(crate) struct State<'a> {
    ctx: &'a Context,
    m: &'a Manifests,
    dir: PathBuf,
    spec: PkiSpec,
    changes: Vec<Change>,
    /// Files written but not yet in place while the leaves are issued
    /// (see [`State::write_all`]); `None` writes each group at once.
    batch: Option<Vec<(PathBuf, fsutil::Staged)>>,
}

impl<'a> State<'a> {
    pub(crate) fn new(ctx: &'a Context, m: &'a Manifests, dir: &Path) -> State<'a> {
        State {
            ctx,
            m,
            dir: dir.to_path_buf(),
            spec: spec::spec(m),
            changes: Vec::new(),
            batch: None,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn read_opt(&self, rel: &str) -> Result<Option<String>, PkiError> {
        let path = self.path(rel);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PkiError::Read { path, source }),
        }
    }

    fn write(&mut self, rel: &str, text: &str) -> Result<(), PkiError> {
        self.write_all(&[(rel, text)])
    }

    /// Writes files that belong together (a key and its certificate): all
    /// staged (written and fsynced) before the first is renamed into place,
    /// so a crash between them is a matter of microseconds; a key that does
    /// not match its certificate is re-issued on the next run anyway. In a
    /// batch ([`State::begin_batch`]) they are staged unsynced and put in
    /// place by [`State::commit_batch`].
    fn write_all(&mut self, files: &[(&str, &str)]) -> Result<(), PkiError> {
        let sync = self.batch.is_none();
        let mut staged = Vec::new();
        for (rel, text) in files {
            let path = self.path(rel);
            let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
            fsutil::create_dir_all_mode(&parent, DIR_MODE).map_err(|source| PkiError::Write {
                path: parent.clone(),
                source,
            })?;
            let s =
                fsutil::stage_with(&path, text.as_bytes(), FILE_MODE, sync).map_err(|source| {
                    PkiError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
            staged.push((path, s));
        }
        match &mut self.batch {
            Some(batch) => batch.extend(staged),
            None => commit(staged)?,
        }
        Ok(())
    }

    /// From here files are staged unsynced (a fleet's leaves: one fsync
    /// each was most of a 10,000-node build), until [`State::commit_batch`].
    fn begin_batch(&mut self) {
        self.batch.get_or_insert_with(Vec::new);
    }

    /// Makes the batch durable with one syncfs of the state dir's
    /// filesystem, then renames every file into place.
    fn commit_batch(&mut self) -> Result<(), PkiError> {
        let Some(staged) = self.batch.take() else {
            return Ok(());
        };
        if staged.is_empty() {
            return Ok(());
        }
        fsutil::sync_fs(&self.dir).map_err(|source| PkiError::Write {
            path: self.dir.clone(),
            source,
        })?;
        commit(staged)
    }

    fn note(&mut self, path: &str, action: Action) {
        self.changes.push(Change {
            path: path.to_string(),
            action,
        });
    }

    fn alg(&self) -> KeyAlgorithm {
        self.m.cluster.pki.key_algorithm
    }
}

/// Renames staged files into place, in order.
fn commit(staged: Vec<(PathBuf, fsutil::Staged)>) -> Result<(), PkiError> {
    for (path, s) in staged {
        s.commit()
            .map_err(|source| PkiError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_window_is_a_third_at_most_30_days() {
        assert_eq!(renewal_window(365), Duration::days(30));
        assert_eq!(renewal_window(30), Duration::days(10));
    }
}

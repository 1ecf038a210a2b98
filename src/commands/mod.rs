//! One small file per command: each takes the resolved [`Settings`] (and the
//! loaded manifests, where it reads them) and runs the stages it needs. Data
//! goes to stdout, messages to stderr through the reporter.

pub mod bundle;
pub mod cluster;
pub mod diff;
pub mod fetch;
pub mod node;
pub mod pki;
pub mod plan;
pub mod push;
pub mod sign;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;

use crate::build::BuildError;
use crate::cli::BuildArgs;
use crate::context::ContextError;
use crate::manifest::{ManifestError, Manifests};
use crate::output::{self, Formats};
use crate::plan::{Plan, PlanError};
use crate::settings::Settings;

/// Every way a command can fail, by stage. Each keeps its cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Bundle(#[from] crate::fetch::bundle::BundleError),
    #[error(transparent)]
    Push(#[from] output::push::PushError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error("the signatures of {dir} do not verify with {key}:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Signatures {
        dir: PathBuf,
        key: PathBuf,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Diff(#[from] crate::diff::DiffError),
    #[error("{count} file{s} of the PKI in {dir} need attention (see the table)", s = if *.count == 1 { "" } else { "s" })]
    PkiUnhealthy { count: usize, dir: PathBuf },
    #[error("cannot make a scratch directory {path} for the rebuild")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir} is an {found} image; --arch asked for {wanted}")]
    ArchMismatch {
        dir: PathBuf,
        found: crate::manifest::Arch,
        wanted: crate::manifest::Arch,
    },
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
}

/// What a run that did not fail tells the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// `diff`: the two builds differ (exit 1, like diff(1)).
    Differ,
}

/// The build options of a command line.
fn options(s: &Settings, args: &BuildArgs) -> output::Options {
    output::Options {
        formats: Formats::new(&args.format),
        seed: args.seed_layers.clone(),
        source_date_epoch: s.ctx.source_date_epoch,
        oci_with_secrets: args.oci_with_secrets,
        pxe_secrets: args.pxe_secrets,
        compression: args.compression,
    }
}

/// The plans of one node or role, or of every node.
fn plans_for(m: &Manifests, target: Option<&str>) -> Result<Vec<Plan>, PlanError> {
    match target {
        Some(t) => Ok(vec![crate::plan::plan(m, t, None)?]),
        None => crate::plan::plan_all(m),
    }
}

/// The directories written, one a line: the data of `node` and `cluster`.
fn print_dirs(dirs: &[PathBuf]) -> Result<(), Error> {
    print(
        &dirs
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect::<String>(),
    )
}

fn print(text: &str) -> Result<(), Error> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Error::Stdout)
}

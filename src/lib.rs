//! imgbuild: cluster inventory + pinned upstream artifacts -> immutable,
//! reproducible, per-node OS artifacts for binary-installed HA Kubernetes.
//!
//! The pipeline runs one way, one module per stage:
//! `manifest -> plan -> fetch -> pki -> render -> layer -> output -> verify`.
//! [`run`] is the recipe: it reads the command line and calls the stages in order.

pub mod cli;
pub mod manifest;
pub mod plan;
pub mod report;

use std::io::Write;

use cli::{ArchArg, Cli, Command};
use manifest::{Arch, Diagnostics, Manifests};
use report::Reporter;

/// Every way a run can fail, by stage. Each keeps its cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
    #[error("'{0}' is not implemented yet")]
    NotImplemented(&'static str),
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Amd64 => Arch::Amd64,
            ArchArg::Arm64 => Arch::Arm64,
        }
    }
}

/// Runs one command line. Data goes to stdout, messages to stderr.
pub fn run(cli: Cli) -> Result<(), Error> {
    let reporter = Reporter::new(cli.global.quiet, cli.global.verbose);
    match &cli.command {
        Command::Plan(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let plan = plan::plan(&m, &args.role, args.arch.map(Arch::from))?;
            let text = if args.json {
                plan.to_json()
            } else {
                plan.to_table()
            };
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(Error::Stdout)
        }
        other => Err(Error::NotImplemented(other.name())),
    }
}

/// Stage 1: parse and validate the manifests; warnings go to stderr.
fn load_manifests(cli: &Cli, reporter: &Reporter) -> Result<Manifests, Error> {
    let dir = &cli.global.manifests;
    let layers = cli
        .global
        .layers
        .clone()
        .unwrap_or_else(|| manifest::default_layers_dir(dir));
    let (m, warnings): (Manifests, Diagnostics) = manifest::load(dir, &layers)?;
    for w in warnings.warnings() {
        reporter.warn(&w.to_string());
    }
    Ok(m)
}

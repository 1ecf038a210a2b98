//! imgbuild: cluster inventory + pinned upstream artifacts -> immutable,
//! reproducible, per-node OS artifacts for binary-installed HA Kubernetes.
//!
//! The pipeline runs one way, one module per stage:
//! `manifest -> plan -> fetch -> pki -> render -> layer -> output -> verify`
//! (and `diff`, which compares two outputs);
//! [`build::Build`] runs stages 3-7 for a set of plans. [`run`] is the recipe:
//! resolve the command line once into [`settings::Settings`], load the
//! manifests, hand both to the command.

mod build;
pub mod cli;
mod commands;
mod context;
mod diff;
pub mod fetch;
mod fsutil;
mod hashlane;
mod json;
mod layer;
mod manifest;
mod mem;
mod newc;
mod output;
pub mod pgzip;
mod pki;
mod plan;
mod quote;
mod readahead;
mod render;
mod report;
mod rootcheck;
mod rootpath;
mod settings;
mod sign;
mod sums;
mod tarutil;
mod verify;
mod zstdblocks;

pub use commands::{Error, Outcome};
/// The gzip level of every layer (for `just bench`'s own-deflate limit).
pub use layer::GZIP_LEVEL;

use cli::{BundleCommand, Cli, Command};
use commands::{bundle, cluster, fetch as fetch_cmd, node, pki as pki_cmd, plan as plan_cmd};
use commands::{diff as diff_cmd, push, sign as sign_cmd, verify as verify_cmd};
use settings::Settings;

/// Runs one command line. Data goes to stdout, messages to stderr.
pub fn run(cli: &Cli) -> Result<Outcome, Error> {
    let s = Settings::resolve(&cli.global)?;
    match &cli.command {
        // read no manifest
        Command::Push(args) => return push::run(&s, args).map(|()| Outcome::Done),
        Command::Sign(args) => return sign_cmd::run(&s, args).map(|()| Outcome::Done),
        Command::Diff(args) => return diff_cmd::run(args),
        _ => {}
    }
    let m = s.load_manifests()?;
    run_with(&s, &m, &cli.command).map(|()| Outcome::Done)
}

fn run_with(s: &Settings, m: &manifest::Manifests, command: &Command) -> Result<(), Error> {
    match command {
        Command::Plan(args) => plan_cmd::run(m, args),
        Command::Pki(cmd) => pki_cmd::run(s, m, cmd),
        Command::Fetch(args) => fetch_cmd::run(s, m, args),
        Command::Bundle(BundleCommand::Export(args)) => bundle::export(s, m, args),
        Command::Bundle(BundleCommand::Import(args)) => bundle::import(s, m, args),
        Command::Node(args) => node::run(s, m, args),
        Command::Cluster(args) => cluster::run(s, m, args),
        Command::Verify(args) => verify_cmd::run(s, m, args),
        Command::Push(args) => push::run(s, args),
        Command::Sign(args) => sign_cmd::run(s, args),
        Command::Diff(args) => diff_cmd::run(args).map(|_| ()),
    }
}

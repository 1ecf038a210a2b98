//! `imgbuild diff OLD NEW [--json]`: what changed between two builds of a
//! node (or two output trees of a cluster); reads no manifest. Exit 0 when
//! identical, 1 when they differ, 2 on error (like diff(1)).

use super::{Error, Outcome, print};
use crate::cli::DiffArgs;

pub fn run(args: &DiffArgs) -> Result<Outcome, Error> {
    let d = crate::diff::diff(&args.old, &args.new)?;
    print(&if args.json {
        crate::json::canonical(&d)
    } else {
        crate::diff::table(&d)
    })?;
    Ok(if d.identical {
        Outcome::Done
    } else {
        Outcome::Differ
    })
}

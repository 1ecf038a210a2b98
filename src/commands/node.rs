//! `imgbuild node --role X`: one node's image (or a role's generic image)
//! into `OUT/<target>/`.

use super::{Error, options, print_dirs};
use crate::build::Build;
use crate::cli::NodeArgs;
use crate::manifest::Manifests;
use crate::settings::Settings;

pub fn run(s: &Settings, m: &Manifests, args: &NodeArgs) -> Result<(), Error> {
    let plans = vec![crate::plan::plan(m, &args.role, args.arch)?];
    let opts = options(s, &args.build);
    let dirs = Build::prepare(s, m, &plans, opts)?.all(&plans, &args.out)?;
    print_dirs(&dirs)
}

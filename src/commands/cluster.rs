//! `imgbuild cluster`: every node of the inventory into `OUT/<node>/`.

use super::{Error, options, print_dirs};
use crate::build::Build;
use crate::cli::ClusterArgs;
use crate::manifest::Manifests;
use crate::settings::Settings;

pub fn run(s: &Settings, m: &Manifests, args: &ClusterArgs) -> Result<(), Error> {
    let plans = crate::plan::plan_all(m)?;
    let opts = options(s, &args.build);
    let dirs = Build::prepare(s, m, &plans, opts)?.all(&plans, &args.out)?;
    print_dirs(&dirs)
}

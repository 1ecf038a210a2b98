//! `imgbuild cluster`: every node of the inventory into `OUT/<node>/`.

use super::{Error, options, print_dirs};
use crate::build::Build;
use crate::cli::ClusterArgs;
use crate::manifest::Manifests;
use crate::settings::Settings;

pub fn run(s: &Settings, m: &Manifests, args: &ClusterArgs) -> Result<(), Error> {
    // what the build needs, from one plan per kind of node; each node is
    // planned when it is built, so memory does not grow with the fleet
    let kinds = crate::plan::plan_kinds(m)?;
    let opts = options(s, &args.build);
    let dirs = Build::prepare(s, m, &kinds, opts)?.all(&m.cluster.nodes, &args.out)?;
    print_dirs(&dirs)
}

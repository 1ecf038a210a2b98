//! `imgbuild plan --role X [--json] [--arch A]`: what goes where, from
//! which source; builds nothing.

use super::{Error, print};
use crate::cli::PlanArgs;
use crate::manifest::Manifests;

pub fn run(m: &Manifests, args: &PlanArgs) -> Result<(), Error> {
    let plan = crate::plan::plan(m, &args.role, args.arch)?;
    print(&if args.json {
        plan.to_json()
    } else {
        plan.to_table()
    })
}

//! `imgbuild fetch [--role X]`: every pinned artifact and image a node (or
//! every node) needs, present and verified in the cache; a table on stdout.

use super::{Error, plans_for, print};
use crate::build::{BuildError, fetch_inputs};
use crate::cli::FetchArgs;
use crate::fetch::{Cache, summary};
use crate::manifest::Manifests;
use crate::settings::Settings;

pub fn run(s: &Settings, m: &Manifests, args: &FetchArgs) -> Result<(), Error> {
    let plans = plans_for(m, args.role.as_deref())?;
    let cache = Cache::open(&s.cache).map_err(BuildError::from)?;
    let (fetched, images) = fetch_inputs(s, &cache, m, &plans)?;
    let mut table = summary(&fetched);
    for ((name, arch), img) in &images {
        table.push_str(&format!(
            "{name:17}  {:10}  {arch:5}  {:>10}  image {}\n",
            img.pin.version,
            img.layers.len().to_string() + " layers",
            img.pin.reference()
        ));
    }
    print(&table)
}

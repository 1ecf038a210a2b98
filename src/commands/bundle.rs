//! `imgbuild bundle export FILE` / `bundle import FILE`: pinned artifacts and
//! images to and from an air-gapped site.

use super::{Error, plans_for, print};
use crate::build::{BuildError, fetch_inputs};
use crate::cli::{BundleExportArgs, BundleImportArgs};
use crate::fetch::{Cache, bundle, needed_pins};
use crate::manifest::Manifests;
use crate::settings::Settings;

pub fn export(s: &Settings, m: &Manifests, args: &BundleExportArgs) -> Result<(), Error> {
    let plans = plans_for(m, args.role.as_deref())?;
    let cache = Cache::open(&s.cache).map_err(BuildError::from)?;
    let (_, images) = fetch_inputs(s, &cache, m, &plans)?;
    let pins = needed_pins(m, &plans);
    let mut blobs: Vec<String> = images
        .values()
        .flat_map(|i| i.blobs().into_iter().map(|d| d.digest.clone()))
        .collect();
    blobs.sort();
    blobs.dedup();
    let n = bundle::export(m, &cache, &pins, &blobs, &args.file, s.mtime())?;
    s.reporter
        .info(&format!("bundle: {} files, {} artifacts", n, pins.len()));
    print(&format!("{}\n", args.file.display()))
}

pub fn import(s: &Settings, m: &Manifests, args: &BundleImportArgs) -> Result<(), Error> {
    let cache = Cache::open(&s.cache).map_err(BuildError::from)?;
    let done = bundle::import(m, &cache, &args.file)?;
    let r = &s.reporter;
    for a in &done.added {
        r.info(&format!("added     {a}"));
    }
    for a in &done.already {
        r.debug(&format!("cached    {a}"));
    }
    for u in &done.unpinned {
        r.warn(&format!(
            "warning: {u} is not pinned in {}; skipped",
            m.dir.display()
        ));
    }
    r.info(&format!(
        "bundle: {} added, {} already cached",
        done.added.len(),
        done.already.len()
    ));
    Ok(())
}

//! `imgbuild verify DIR [--rebuild] [--arch A]`: checksums, pins, secret
//! placement and modes of an output directory; with `--rebuild`, a rebuild
//! from the manifests and state into a scratch directory, compared byte for
//! byte.

use super::Error;
use crate::build::{Build, BuildError};
use crate::cli::VerifyArgs;
use crate::manifest::Manifests;
use crate::output::{self, Formats, ImageJson};
use crate::settings::Settings;
use crate::verify;

pub fn run(s: &Settings, m: &Manifests, args: &VerifyArgs) -> Result<(), Error> {
    // certificates are checked against the state's CAs when the state is here
    let state = s.state_dir(m);
    let state = state.join("pki/ca.crt").is_file().then_some(state);
    let image = verify::check(m, &args.dir, state.as_deref())?;
    if let Some(st) = &state {
        s.reporter.debug(&format!(
            "{}: certificates checked against the CAs in {}",
            args.dir.display(),
            st.display()
        ));
    }
    if let Some(wanted) = args.arch.filter(|a| *a != image.arch) {
        return Err(Error::ArchMismatch {
            dir: args.dir.clone(),
            found: image.arch,
            wanted,
        });
    }
    if let Some(key) = &args.key {
        let point = crate::sign::public_key(key)?;
        let problems = crate::sign::check(&args.dir, &point);
        if !problems.is_empty() {
            return Err(Error::Signatures {
                dir: args.dir.clone(),
                key: key.clone(),
                problems,
            });
        }
        s.reporter.info(&format!(
            "{}: signatures verified with {}",
            args.dir.display(),
            key.display()
        ));
    }
    if args.rebuild {
        rebuild(s, m, args, &image)?;
        s.reporter
            .info(&format!("{}: identical to a rebuild", args.dir.display()));
    }
    s.reporter
        .info(&format!("{}: verified", args.dir.display()));
    Ok(())
}

/// Rebuilds the image's target, of the image's arch, with the options it
/// records, beside `args.dir` (same filesystem, for hard links); compares.
fn rebuild(s: &Settings, m: &Manifests, args: &VerifyArgs, image: &ImageJson) -> Result<(), Error> {
    let plans = vec![crate::plan::plan(m, &image.node, Some(image.arch))?];
    let opts = output::Options {
        formats: args
            .format
            .as_deref()
            .map_or_else(|| image.build.formats.clone(), Formats::new),
        seed: args
            .seed_layers
            .clone()
            .unwrap_or_else(|| image.build.seed_layers.clone()),
        source_date_epoch: s.ctx.source_date_epoch,
        oci_with_secrets: output::oci::has_with_secrets(&args.dir),
        pxe_secrets: output::pxe::loads_secrets(&args.dir),
        compression: image.build.compression,
    };
    // the options a directory records are its claim, not an order: show
    // what the rebuild uses (each was checked by the same parser as the
    // command line's)
    let formats: Vec<&str> = opts.formats.iter().map(|f| f.as_str()).collect();
    s.reporter.info(&format!(
        "rebuilding {} ({}) with --format {} --seed-layers {}",
        image.node,
        image.arch,
        formats.join(","),
        opts.seed
    ));
    let parent = match args.dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".verify-rebuild.")
        .tempdir_in(parent)
        .map_err(|source| Error::Scratch {
            path: parent.to_path_buf(),
            source,
        })?;
    let dirs = Build::prepare(s, m, &plans, opts)?.all(&plans, scratch.path())?;
    let rebuilt = dirs.first().ok_or_else(|| {
        BuildError::Output(output::OutputError::Io {
            target: image.node.clone(),
            path: scratch.path().to_path_buf(),
            source: std::io::Error::other("the rebuild wrote no directory"),
        })
    })?;
    Ok(verify::compare(&args.dir, rebuilt)?)
}

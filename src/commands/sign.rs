//! `imgbuild sign DIR --key KEY.pem [--reference REPO]`: signs a built
//! node's OCI image digest (cosign's simple signing), its provenance and its
//! SBOM (in-toto DSSE envelopes) into DIR/signatures/.

use super::{Error, print};
use crate::cli::SignArgs;
use crate::settings::Settings;

pub fn run(s: &Settings, args: &SignArgs) -> Result<(), Error> {
    let node = args
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reference = args.reference.clone().unwrap_or(node);
    let written = crate::sign::sign(&args.dir, &args.key, &reference)?;
    s.reporter.info(&format!(
        "{}: signed with {} ({})",
        args.dir.display(),
        args.key.display(),
        written.join(", ")
    ));
    print(&written.iter().map(|w| format!("{w}\n")).collect::<String>())
}

//! `imgbuild push DIR REF`: a node's OCI image to a registry, without its
//! secrets layer unless `--include-secrets`.

use super::{Error, print};
use crate::cli::PushArgs;
use crate::settings::Settings;

pub fn run(s: &Settings, args: &PushArgs) -> Result<(), Error> {
    // the warning only where there is something to warn of: a layout without
    // the with-secrets image makes the push refuse, saying how to build it
    if args.include_secrets && crate::output::oci::has_with_secrets(&args.dir) {
        s.reporter.warn("warning: pushing WITH the secrets layer (--include-secrets): every private key of the node goes to the registry");
    } else if !args.include_secrets {
        s.reporter
            .info("push: the secrets layer is left out (--include-secrets adds it)");
    }
    let pushed = crate::output::push::push(&args.dir, &args.reference, args.include_secrets)?;
    for tag in &pushed.attached {
        s.reporter
            .info(&format!("push: attached {}:{tag}", args.reference));
    }
    print(&format!("{}@{}\n", args.reference, pushed.digest))
}

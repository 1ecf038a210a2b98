//! The `imgbuild` binary: parse arguments, run, print the error chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = imgbuild::cli::Cli::parse();
    match imgbuild::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = anyhow::Error::from(err);
            eprint!("error: {err}");
            for cause in err.chain().skip(1) {
                eprint!("\n  caused by: {cause}");
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

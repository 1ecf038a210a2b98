//! The `imgbuild` binary: parse arguments, run, print the error chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = imgbuild::cli::Cli::parse();
    match imgbuild::run(&cli) {
        Ok(imgbuild::Outcome::Done) => ExitCode::SUCCESS,
        Ok(imgbuild::Outcome::Differ) => ExitCode::from(1),
        Err(err) => {
            let err = anyhow::Error::from(err);
            eprint!("error: {err}");
            for cause in err.chain().skip(1) {
                eprint!("\n  caused by: {cause}");
            }
            eprintln!();
            ExitCode::from(cli.command.error_exit_code())
        }
    }
}

//! `imgbuild pki init | status [--json] | renew [--expiring|--all] [--ca]`:
//! the cluster PKI in the state directory.

use super::{Error, print};
use crate::cli::{PkiCommand, PkiRenewArgs};
use crate::manifest::Manifests;
use crate::pki::{self, Action, Change, Renew, State};
use crate::report::Reporter;
use crate::settings::Settings;

pub fn run(s: &Settings, m: &Manifests, cmd: &PkiCommand) -> Result<(), Error> {
    let dir = s.state_dir(m);
    let state = State::new(&s.ctx, m, &dir);
    match cmd {
        PkiCommand::Init => report_changes(&s.reporter, &state.ensure(Renew::Needed, false)?),
        PkiCommand::Renew(args) => renew(s, state, args, &dir),
        PkiCommand::Status(args) => {
            let rows = state.status()?;
            print(&if args.json {
                crate::json::canonical(&rows)
            } else {
                pki::status_table(&rows)
            })?;
            match rows.iter().filter(|r| r.status != "OK").count() {
                0 => Ok(()),
                count => Err(Error::PkiUnhealthy { count, dir }),
            }
        }
    }
}

fn renew(
    s: &Settings,
    state: State<'_>,
    args: &PkiRenewArgs,
    dir: &std::path::Path,
) -> Result<(), Error> {
    if args.ca {
        s.reporter.warn(&format!(
            "warning: replacing the CAs in {}: every certificate is re-issued and every node must be rebuilt",
            dir.display()
        ));
    }
    let mode = if args.all { Renew::All } else { Renew::Needed };
    report_changes(&s.reporter, &state.ensure(mode, args.ca)?)
}

/// One line per file on stderr: created, re-issued (why), fixed and removed
/// (why), kept (with -v).
fn report_changes(reporter: &Reporter, changes: &[Change]) -> Result<(), Error> {
    let mut counts = [0usize; 3];
    for c in changes {
        match &c.action {
            Action::Created => {
                counts[0] += 1;
                reporter.info(&format!("created   {}", c.path));
            }
            Action::Reissued(why) => {
                counts[1] += 1;
                reporter.info(&format!("re-issued {} ({why})", c.path));
            }
            Action::Kept => {
                counts[2] += 1;
                reporter.debug(&format!("kept      {}", c.path));
            }
            Action::Fixed(why) => reporter.info(&format!("fixed     {} ({why})", c.path)),
            Action::Removed(why) => reporter.info(&format!("removed   {} ({why})", c.path)),
        }
    }
    reporter.info(&format!(
        "pki: {} created, {} re-issued, {} kept",
        counts[0], counts[1], counts[2]
    ));
    Ok(())
}

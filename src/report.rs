//! Messages to the user on stderr, at the verbosity asked for (`-q`, `-v`).
//! stdout is for data only.

#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    quiet: bool,
    verbose: u8,
}

impl Reporter {
    pub fn new(quiet: bool, verbose: u8) -> Self {
        Reporter { quiet, verbose }
    }

    /// A diagnostic that already names its level (`file:line:col: warning: …`).
    pub fn warn(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    pub fn info(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    pub fn debug(&self, line: &str) {
        if self.verbose > 0 {
            eprintln!("{line}");
        }
    }
}

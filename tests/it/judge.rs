//! The judge pattern: a real program that consumes imgbuild's output (openssl,
//! haproxy, cloud-init, skopeo, cpio, ...) runs on it and must succeed; when
//! it does not, the test fails showing the command line and what it printed.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// A program about to judge something.
pub struct Judge {
    cmd: Command,
}

/// `program` with no arguments yet.
pub fn judge(program: &str) -> Judge {
    Judge {
        cmd: Command::new(program),
    }
}

/// `sh -c script`, for pipelines such as `zcat X | cpio -t`.
pub fn judge_sh(script: &str) -> Judge {
    let mut j = judge("sh");
    j.cmd.arg("-c").arg(script);
    j
}

impl Judge {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Judge {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Judge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Judge {
        self.cmd.env(k, v);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Judge {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs it without judging: for a program that must refuse something.
    pub fn output(mut self) -> Output {
        self.cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {:?}: {e} (scripts/setup installs it)", self.cmd)
        })
    }

    /// Runs it; it must succeed. Returns its stdout.
    pub fn ok(self) -> String {
        let shown = format!("{:?}", self.cmd);
        let o = self.output();
        assert!(
            o.status.success(),
            "{shown} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs it; it must succeed. Returns its stdout as bytes.
    pub fn ok_bytes(self) -> Vec<u8> {
        let shown = format!("{:?}", self.cmd);
        let o = self.output();
        assert!(
            o.status.success(),
            "{shown} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }
}

/// A judge installed from PyPI by scripts/setup, in its own virtual
/// environment (`$IMGBUILD_JUDGES_VENV`, by default
/// `~/.cache/imgbuild/judges-venv`): `pyspdxtools`, or its `python3` with
/// in-toto-attestation.
pub fn py_judge(program: &str) -> Judge {
    let venv = std::env::var_os("IMGBUILD_JUDGES_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/imgbuild/judges-venv")
        });
    let path = venv.join("bin").join(program);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it installs the PyPI judges)",
        path.display()
    );
    judge(path.to_str().unwrap())
}

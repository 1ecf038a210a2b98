//! `Lab`: a scratch copy of the shipped manifests that a test edits, then runs
//! `imgbuild` against.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lab of `scripts/lab-mirror`, built once (kept under cargo's target
/// tmpdir, keyed by the scripts' and manifests' contents).
pub fn lab_mirror() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for f in [
            "scripts/lab-mirror",
            "scripts/lab_mirror.py",
            "manifests/pins.toml",
        ] {
            h.update(std::fs::read(repo().join(f)).unwrap());
        }
        let mut roles: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/roles"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        roles.sort();
        for r in roles {
            h.update(std::fs::read(r).unwrap());
        }
        let key = &hex::encode(h.finalize())[..16];
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lab-{key}"));
        if !dir.join("manifests/cluster.yaml").is_file() {
            let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
            crate::judge::judge("bash")
                .arg(repo().join("scripts/lab-mirror"))
                .arg(&tmp)
                .ok();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        // the layer trees are copied fresh: they change more often
        let _ = std::fs::remove_dir_all(dir.join("layers"));
        copy_tree(&repo().join("layers"), &dir.join("layers"));
        dir
    })
}

pub struct Lab {
    pub dir: tempfile::TempDir,
}

/// The line that opens the node OS part of the shipped pins.toml.
pub const SHIPPED_OS_MARKER: &str = "\n# The node OS (docs/base-os.md)";

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

impl Lab {
    /// A copy of `manifests/` and `layers/` of the repository, without the
    /// node OS (its `[os]`, base and `[[deb]]` pins: the last part of
    /// pins.toml): the layers as overlays, as most tests build them; the
    /// tests of the OS path pin their own base and packages.
    pub fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repo().join("manifests"), &dir.path().join("manifests"));
        copy_tree(&repo().join("layers"), &dir.path().join("layers"));
        let pins = dir.path().join("manifests/pins.toml");
        let text = std::fs::read_to_string(&pins).unwrap();
        let cut = text
            .find(SHIPPED_OS_MARKER)
            .expect("manifests/pins.toml ends with its node OS part");
        std::fs::write(&pins, &text[..cut]).unwrap();
        Lab { dir }
    }

    /// A copy of the lab cluster of `scripts/lab-mirror` (manifests and
    /// layers) with the test-only state fixture in `state/lab`.
    pub fn lab_cluster() -> Lab {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let lab = lab_mirror();
        copy_tree(&lab.join("manifests"), &dir.path().join("manifests"));
        copy_tree(&repo().join("layers"), &dir.path().join("layers"));
        copy_tree(
            &repo().join("tests/fixtures/lab-state"),
            &dir.path().join("state/lab"),
        );
        Lab { dir }
    }

    /// The roles without `images:` (tests of artifacts alone; no registry).
    pub fn without_images(self) -> Lab {
        let roles = self.path("manifests/roles");
        for e in std::fs::read_dir(&roles).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("images:")).collect();
            std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        }
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn manifest(&self, file: &str) -> PathBuf {
        self.path("manifests").join(file)
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.manifest(file)).unwrap()
    }

    /// Replaces the one occurrence of `from` in `manifests/<file>`.
    pub fn edit(self, file: &str, from: &str, to: &str) -> Lab {
        let text = self.read(file);
        assert_eq!(
            text.matches(from).count(),
            1,
            "fixture edit: `{from}` must occur exactly once in {file}"
        );
        std::fs::write(self.manifest(file), text.replacen(from, to, 1)).unwrap();
        self
    }

    /// `manifests/<file>:LINE:COL` of `needle` inside the first line that
    /// contains `line_with` (as the run, from the lab's root, names it): what
    /// a diagnostic must point at.
    pub fn at(&self, file: &str, line_with: &str, needle: &str) -> String {
        let text = self.read(file);
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(line_with))
            .unwrap_or_else(|| panic!("no line with `{line_with}` in {file}"));
        let col = line
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in line `{line}`"));
        format!(
            "manifests/{file}:{}:{}",
            n + 1,
            line[..col].chars().count() + 1
        )
    }

    pub fn imgbuild(&self, args: &[&str]) -> Run {
        self.imgbuild_env(args, &[])
    }

    /// Runs imgbuild in the lab with extra environment variables; the lab's
    /// own environment is cleared of imgbuild's.
    pub fn imgbuild_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        cmd.current_dir(self.dir.path()).args(args);
        for var in [
            "IMGBUILD_CACHE",
            "IMGBUILD_STATE",
            "IMGBUILD_NOW",
            "SOURCE_DATE_EPOCH",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run {
            out: cmd.output().unwrap(),
        }
    }

    pub fn plan(&self, target: &str) -> Run {
        self.imgbuild(&["plan", "--role", target])
    }
}

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    pub fn assert_ok(self) -> Run {
        assert!(
            self.out.status.success(),
            "imgbuild failed:\n{}",
            self.stderr()
        );
        self
    }

    pub fn assert_failed(self) -> Run {
        assert!(
            !self.out.status.success(),
            "imgbuild succeeded but should have failed:\n{}",
            self.stdout()
        );
        self
    }

    /// The run failed and stderr has `<loc>: error: <message…>`.
    pub fn assert_error(self, loc: &str, message: &str) -> Run {
        let run = self.assert_failed();
        let want = format!("{loc}: error: {message}");
        assert!(
            run.stderr().contains(&want),
            "stderr lacks\n  {want}\nstderr was:\n{}",
            run.stderr()
        );
        run
    }

    pub fn assert_stderr_has(self, text: &str) -> Run {
        assert!(
            self.stderr().contains(text),
            "stderr lacks `{text}`:\n{}",
            self.stderr()
        );
        self
    }

    pub fn assert_stderr_lacks(self, text: &str) -> Run {
        assert!(
            !self.stderr().contains(text),
            "stderr has `{text}`:\n{}",
            self.stderr()
        );
        self
    }
}

/// Compares `actual` with `tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
pub fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    if want != actual {
        let diff: Vec<String> = want
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  - {a}\n  + {b}", i + 1))
            .collect();
        panic!(
            "{} differs from the output ({} vs {} lines); UPDATE_GOLDEN=1 rewrites it\n{}",
            path.display(),
            want.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

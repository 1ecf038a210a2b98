//! The files of an output directory, walked without following anything:
//! an output directory holds directories and regular files only, so a
//! symlink (which could point out of it), a FIFO (which would hang a
//! reader) or a device (`/dev/zero`) is a problem, never opened.

use std::fs;
use std::io;
use std::path::Path;

/// What is below a directory: its regular files (relative, sorted), and a
/// problem for everything else.
#[derive(Debug, Default)]
pub struct Tree {
    pub files: Vec<String>,
    pub problems: Vec<String>,
}

impl Tree {
    pub fn walk(dir: &Path) -> io::Result<Tree> {
        let mut t = Tree::default();
        t.walk_in(dir, dir)?;
        t.files.sort();
        Ok(t)
    }

    fn walk_in(&mut self, root: &Path, d: &Path) -> io::Result<()> {
        let mut entries: Vec<fs::DirEntry> = fs::read_dir(d)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let ft = e.file_type()?; // of the entry itself: never followed
            if ft.is_dir() {
                self.walk_in(root, &p)?;
            } else if ft.is_file() {
                self.files.push(rel);
            } else {
                let what = if ft.is_symlink() {
                    "a symbolic link"
                } else {
                    "not a regular file (a FIFO, socket or device)"
                };
                self.problems.push(format!(
                    "{rel} is {what}; an output directory holds regular files only"
                ));
            }
        }
        Ok(())
    }

    pub fn has(&self, rel: &str) -> bool {
        self.files.binary_search_by(|f| f.as_str().cmp(rel)).is_ok()
    }
}

/// Whether `rel` is a plain relative path inside the directory: no `..`,
/// no leading `/`, no empty or `.` components.
pub fn is_inside(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_escaping_names_are_problems() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let fifo = d.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let t = Tree::walk(d.path()).unwrap();
        assert_eq!(t.files, vec!["a/f".to_string()]);
        assert_eq!(t.problems.len(), 2, "{:?}", t.problems);
        assert!(is_inside("layers/00-base.tar.gz"));
        for bad in ["../x", "/dev/zero", "a/../../b", "a//b", "./a", ""] {
            assert!(!is_inside(bad), "{bad}");
        }
    }
}

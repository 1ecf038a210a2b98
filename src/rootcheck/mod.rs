//! The root check, between stages 6 and 7: takes a plan with an `[os]` and
//! its built layers, and checks the root they make when extracted in order
//! (a later layer's path replaces an earlier one's) before anything is
//! written to `out/`: every dynamically linked ELF executable and library
//! of the node's machine finds its program interpreter and each
//! `DT_NEEDED` library in the image's own library paths (its `RUNPATH` or
//! `RPATH` with `$ORIGIN`, the directories of `/etc/ld.so.conf` and
//! `/etc/ld.so.conf.d/*.conf`, `/lib`, `/usr/lib`, `/lib64`, `/usr/lib64`
//! and the multiarch directories), and every unit enabled by a link in a
//! `*.wants` or `*.requires` directory is a unit file of the image; every
//! symbolic link is followed inside the image ([`crate::rootpath`]). A
//! layer that makes a directory where an earlier one has a symbolic link
//! is refused too: extracting the layers with tar would replace the link.
//! Every problem names the file, what it lacks and the layer the file came
//! from, all at once. A layer's index is made once per build (by digest),
//! however many nodes share it; only ELF headers and tables are parsed.

mod elf;
mod index;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::fetch::archive::ArchiveError;
use crate::layer::BuiltLayer;
use crate::manifest::Arch;
use crate::plan::{LayerKind, Plan};
use crate::rootpath;
use index::{LayerIndex, Node};

#[derive(Debug, thiserror::Error)]
pub enum RootCheckError {
    #[error("cannot read layer {layer} to check the image's root")]
    Read {
        layer: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error(
        "{target}: the image would not boot; {} problem{} in its root (nothing was written):\n{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Broken {
        target: String,
        problems: Vec<String>,
    },
}

/// The root check of a build: the layers indexed so far, by digest.
#[derive(Default)]
pub(crate) struct RootCheck {
    indexes: Mutex<HashMap<String, Arc<LayerIndex>>>,
}

impl RootCheck {
    /// Checks the root of `plan`'s `layers` (built in plan order). A plan
    /// without an `[os]` layer has no root to check.
    pub(crate) fn check(&self, plan: &Plan, layers: &[BuiltLayer]) -> Result<(), RootCheckError> {
        if !layers.iter().any(|l| l.kind == LayerKind::Os) {
            return Ok(());
        }
        let mut indexes = Vec::new();
        for l in layers.iter().filter(|l| l.kind != LayerKind::Secrets) {
            indexes.push((l.name.as_str(), self.index(l, plan.arch)?));
        }
        let mut root = Root::default();
        for (name, index) in &indexes {
            root.add(name, index);
        }
        let mut problems = std::mem::take(&mut root.problems);
        problems.extend(root.elf_problems(plan.arch));
        problems.extend(root.unit_problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RootCheckError::Broken {
                target: plan.target.clone(),
                problems,
            })
        }
    }

    /// The index of a built layer, made once per digest for a shared one.
    fn index(&self, l: &BuiltLayer, arch: Arch) -> Result<Arc<LayerIndex>, RootCheckError> {
        let shared = l.kind.is_shared();
        if shared
            && let Some(found) = self
                .indexes
                .lock()
                .ok()
                .and_then(|m| m.get(&l.digest).cloned())
        {
            return Ok(found);
        }
        let made = Arc::new(index::index(&l.file, &l.name, arch).map_err(|source| {
            RootCheckError::Read {
                layer: l.name.clone(),
                source: Box::new(source),
            }
        })?);
        if shared && let Ok(mut m) = self.indexes.lock() {
            m.insert(l.digest.clone(), made.clone());
        }
        Ok(made)
    }
}

/// The union of the layers: each path as the last layer to write it left
/// it, with that layer's name.
#[derive(Default)]
struct Root<'a> {
    paths: BTreeMap<&'a str, (&'a str, &'a Node)>,
    problems: Vec<String>,
}

/// The multiarch tuple of an arch (Debian's library directories).
fn multiarch(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

impl<'a> Root<'a> {
    /// Lays `index` (of the layer `name`) over what is there: a directory
    /// over a symbolic link keeps the link (as the kernel unpacks a cpio,
    /// and dpkg unpacks) and is a problem (tar would replace it).
    fn add(&mut self, name: &'a str, index: &'a LayerIndex) {
        for (path, node) in &index.entries {
            if let (Node::Dir, Some((first, Node::Symlink(target)))) =
                (node, self.paths.get(path.as_str()))
            {
                if *first != name {
                    self.problems.push(format!(
                        "/{path} (layer {name}) is a directory over the symbolic link /{path} -> {target} of layer {first}: extracting the layers in order would replace the link"
                    ));
                }
                continue;
            }
            self.paths.insert(path, (name, node));
        }
    }

    /// The target of the link at `path`, if it is one.
    fn link(&self, path: &str) -> Option<&'a str> {
        match self.paths.get(path) {
            Some((_, Node::Symlink(t))) => Some(t.as_str()),
            _ => None,
        }
    }

    /// Whether `path`, its links followed, is a file of the image.
    fn is_file(&self, path: &str) -> bool {
        rootpath::resolve(path, true, |p| self.link(p))
            .is_some_and(|p| matches!(self.paths.get(p.as_str()), Some((_, Node::File { .. }))))
    }

    /// The directories the dynamic loader searches after an object's own
    /// RUNPATH: those of its configuration files, then the defaults.
    fn library_dirs(&self, arch: Arch) -> Vec<String> {
        let mut dirs = Vec::new();
        for (path, (_, node)) in &self.paths {
            if let Node::File {
                text: Some(text), ..
            } = node
                && index::is_loader_conf(path)
            {
                dirs.extend(loader_dirs(text));
            }
        }
        let tuple = multiarch(arch);
        for d in [
            format!("lib/{tuple}"),
            format!("usr/lib/{tuple}"),
            "lib".into(),
            "usr/lib".into(),
            "lib64".into(),
            "usr/lib64".into(),
        ] {
            dirs.push(d);
        }
        dirs
    }

    /// Every ELF's interpreter and libraries, found or named as missing.
    fn elf_problems(&self, arch: Arch) -> Vec<String> {
        let dirs = self.library_dirs(arch);
        let mut problems = Vec::new();
        for (path, (layer, node)) in &self.paths {
            let Node::File {
                needs: Some(needs), ..
            } = node
            else {
                continue;
            };
            if let Some(interp) = &needs.interpreter
                && !self.is_file(interp)
            {
                problems.push(format!(
                    "/{path} (layer {layer}) needs its program interpreter {interp}, which is not a file of the image"
                ));
            }
            let own = own_dirs(path, &needs.runpath, arch);
            for lib in &needs.libraries {
                if !self.finds(lib, &own, &dirs) {
                    problems.push(format!(
                        "/{path} (layer {layer}) needs {lib}, which is in none of the image's library paths ({})",
                        shown_dirs(&own, &dirs)
                    ));
                }
            }
        }
        problems
    }

    /// Whether the library `lib` is a file in one of the directories.
    fn finds(&self, lib: &str, own: &[String], dirs: &[String]) -> bool {
        if lib.contains('/') {
            return !lib.starts_with('/') || self.is_file(lib);
        }
        own.iter()
            .chain(dirs)
            .any(|d| self.is_file(&format!("{d}/{lib}")))
    }

    /// Every unit a `.wants` or `.requires` link enables, found or named.
    fn unit_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, (layer, node)) in &self.paths {
            let Node::Symlink(target) = node else {
                continue;
            };
            let dir = rootpath::parent(path);
            let enables = path.contains("systemd/")
                && (dir.ends_with(".wants") || dir.ends_with(".requires"));
            if enables && !self.is_file(path) {
                let unit = path.rsplit('/').next().unwrap_or(path);
                problems.push(format!(
                    "/{path} (layer {layer}) enables {unit}, but its target {target} is no unit file of the image (its links followed inside the image)"
                ));
            }
        }
        problems
    }
}

/// The directories of a loader configuration file: one or more a line,
/// `#` comments and `include`/`hwcap` lines aside.
fn loader_dirs(text: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with("include") || line.starts_with("hwcap") {
            continue;
        }
        dirs.extend(
            line.split(|c: char| c.is_whitespace() || c == ':' || c == ',')
                .filter(|d| !d.is_empty())
                .map(|d| d.trim_start_matches('/').trim_end_matches('/').to_string()),
        );
    }
    dirs
}

/// An object's RUNPATH, `$ORIGIN` (its own directory), `$LIB` and
/// `$PLATFORM` expanded, relative to the root.
fn own_dirs(path: &str, runpath: &[String], arch: Arch) -> Vec<String> {
    let origin = rootpath::parent(path);
    let platform = match arch {
        Arch::Amd64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    let mut out = Vec::new();
    for d in runpath {
        let d = d
            .replace("${ORIGIN}", &format!("/{origin}"))
            .replace("$ORIGIN", &format!("/{origin}"))
            .replace("${PLATFORM}", platform)
            .replace("$PLATFORM", platform);
        for lib in ["lib", "lib64", &format!("lib/{}", multiarch(arch))] {
            out.push(
                d.replace("${LIB}", lib)
                    .replace("$LIB", lib)
                    .trim_start_matches('/')
                    .to_string(),
            );
            if !d.contains("LIB") {
                break;
            }
        }
    }
    out
}

/// The directories searched, as a problem shows them.
fn shown_dirs(own: &[String], dirs: &[String]) -> String {
    let mut shown: Vec<String> = Vec::new();
    for d in own.iter().chain(dirs) {
        let d = format!("/{d}");
        if !shown.contains(&d) {
            shown.push(d);
        }
    }
    shown.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use index::Node;

    fn file(needs: Option<elf::Needs>) -> Node {
        Node::File { needs, text: None }
    }

    fn needs(libs: &[&str], runpath: &[&str]) -> Option<elf::Needs> {
        Some(elf::Needs {
            libraries: libs.iter().map(|s| s.to_string()).collect(),
            runpath: runpath.iter().map(|s| s.to_string()).collect(),
            interpreter: Some("/lib64/ld-linux-x86-64.so.2".into()),
        })
    }

    #[test]
    fn libraries_and_units_are_found_through_the_images_links() {
        let os = LayerIndex {
            entries: vec![
                ("lib".into(), Node::Symlink("usr/lib".into())),
                ("lib64".into(), Node::Symlink("usr/lib64".into())),
                (
                    "usr/lib64/ld-linux-x86-64.so.2".into(),
                    Node::Symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
                ),
                (
                    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
                    file(None),
                ),
                ("usr/lib/x86_64-linux-gnu/libc.so.6".into(), file(None)),
                ("usr/lib/private/libp.so".into(), file(None)),
                ("opt/x/libx.so".into(), file(None)),
                (
                    "etc/ld.so.conf.d/x.conf".into(),
                    Node::File {
                        needs: None,
                        text: Some("# x\n/opt/x\n".into()),
                    },
                ),
                ("usr/bin/dash".into(), file(needs(&["libc.so.6"], &[]))),
                (
                    "usr/bin/p".into(),
                    file(needs(&["libp.so", "libx.so"], &["$ORIGIN/../lib/private"])),
                ),
                (
                    "usr/bin/broken".into(),
                    file(needs(&["libc.so.6", "libgone.so.1"], &[])),
                ),
                ("usr/lib/systemd/system/a.service".into(), file(None)),
            ],
        };
        let role = LayerIndex {
            entries: vec![
                ("lib".into(), Node::Dir),
                (
                    "etc/systemd/system/multi-user.target.wants/a.service".into(),
                    Node::Symlink("/usr/lib/systemd/system/a.service".into()),
                ),
                (
                    "etc/systemd/system/multi-user.target.wants/b.service".into(),
                    Node::Symlink("/usr/lib/systemd/system/b.service".into()),
                ),
            ],
        };
        let mut root = Root::default();
        root.add("00-os", &os);
        root.add("02-lb", &role);
        let mut problems = std::mem::take(&mut root.problems);
        problems.extend(root.elf_problems(Arch::Amd64));
        problems.extend(root.unit_problems());
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("/lib (layer 02-lb) is a directory over the symbolic link /lib -> usr/lib of layer 00-os"));
        assert!(problems[1].starts_with("/usr/bin/broken (layer 00-os) needs libgone.so.1, which is in none of the image's library paths (/opt/x /lib/x86_64-linux-gnu"), "{}", problems[1]);
        assert!(problems[2].starts_with("/etc/systemd/system/multi-user.target.wants/b.service (layer 02-lb) enables b.service, but its target /usr/lib/systemd/system/b.service is no unit file"));
    }
}

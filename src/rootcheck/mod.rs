//! The root check, between stages 6 and 7: takes a plan with an `[os]` and
//! its built layers, and checks the root they make when extracted in order
//! (a later layer's path replaces an earlier one's, [`root`]) before
//! anything is written to `out/`: every dynamically linked executable of
//! the node's machine finds its program interpreter and every library it
//! loads, transitively, as ld.so would find them in the image's own library
//! paths ([`libs`]: the needing object's `RUNPATH`/`RPATH` with `$ORIGIN`,
//! the directories of `/etc/ld.so.conf` and `/etc/ld.so.conf.d/*.conf`,
//! `/lib`, `/usr/lib`, `/lib64`, `/usr/lib64` and the multiarch
//! directories), and every unit enabled by a link in a `*.wants` or
//! `*.requires` directory is a unit file of the image; every symbolic link
//! is followed inside the image ([`crate::rootpath`]). A layer that makes a
//! directory where an earlier one has a symbolic link is refused too:
//! extracting the layers with tar would replace the link. Every problem
//! names the file, what it lacks and the layer the file came from, all at
//! once. A library no executable loads (a plugin) that lacks a library is
//! a warning, once per build. A layer's index is made once per build (by
//! digest), however many nodes share it; only ELF headers and tables are
//! parsed.

mod elf;
mod index;
mod libs;
mod root;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fetch::archive::ArchiveError;
use crate::layer::BuiltLayer;
use crate::manifest::Arch;
use crate::plan::{LayerKind, Plan};
use index::LayerIndex;
use root::Root;

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
    #[error(
        "{target}: the disk's boot initramfs needs {}, which the image does not have: add the packages that hold them (kmod, util-linux, mount, coreutils, dash, systemd) to [os] packages in pins.toml",
        missing.join(", ")
    )]
    Lacks {
        target: String,
        missing: Vec<String>,
    },
}

/// The root check of a build: the layers indexed so far, by digest, the
/// warnings given, and the layer store's directory where the shared
/// layers' indexes are kept between builds.
#[derive(Default)]
pub(crate) struct RootCheck {
    indexes: Mutex<HashMap<String, Arc<LayerIndex>>>,
    warned: Mutex<BTreeSet<String>>,
    store: Option<PathBuf>,
}

impl RootCheck {
    /// A root check that keeps the shared layers' indexes in the layer
    /// store's directory `store`, and takes them from there.
    pub(crate) fn kept_in(store: &Path) -> RootCheck {
        RootCheck {
            store: Some(store.to_path_buf()),
            ..RootCheck::default()
        }
    }

    /// Checks the root of `plan`'s `layers` (built in plan order); returns
    /// the warnings not given yet in this build. A plan without an `[os]`
    /// layer has no root to check.
    pub(crate) fn check(
        &self,
        plan: &Plan,
        layers: &[BuiltLayer],
    ) -> Result<Vec<String>, RootCheckError> {
        if !layers.iter().any(|l| l.kind == LayerKind::Os) {
            return Ok(Vec::new());
        }
        let indexes = self.indexes(plan, layers)?;
        let mut root = Root::of(&indexes);
        let findings = libs::Loader::new(&root, plan.arch).check();
        let mut problems = std::mem::take(&mut root.problems);
        problems.extend(findings.errors);
        problems.extend(root.unit_problems());
        if !problems.is_empty() {
            return Err(RootCheckError::Broken {
                target: plan.target.clone(),
                problems,
            });
        }
        Ok(self.new_warnings(findings.warnings))
    }

    /// What `programs` (paths in the root) need to run in the root of
    /// `plan`'s `layers`: each program, its interpreter and its libraries,
    /// transitively, with every symbolic link on the way, as paths relative
    /// to the root. What cannot be found is an error naming it.
    pub(crate) fn closure(
        &self,
        plan: &Plan,
        layers: &[BuiltLayer],
        programs: &[&str],
    ) -> Result<BTreeSet<String>, RootCheckError> {
        let indexes = self.indexes(plan, layers)?;
        let root = Root::of(&indexes);
        let (mut files, missing) = libs::Loader::new(&root, plan.arch).closure(programs);
        if !missing.is_empty() {
            return Err(RootCheckError::Lacks {
                target: plan.target.clone(),
                missing,
            });
        }
        // the top directories' links (usr-merged /bin, /lib, ...): a path
        // below one is found through it
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            if root.is_link(top) {
                files.insert(top.to_string());
            }
        }
        Ok(files)
    }

    /// The warnings not given before in this build.
    fn new_warnings(&self, warnings: Vec<String>) -> Vec<String> {
        let Ok(mut warned) = self.warned.lock() else {
            return warnings;
        };
        warnings
            .into_iter()
            .filter(|w| warned.insert(w.clone()))
            .collect()
    }

    /// The index of each of `layers` but the secrets, with the layer's name.
    fn indexes<'l>(
        &self,
        plan: &Plan,
        layers: &'l [BuiltLayer],
    ) -> Result<Vec<(&'l str, Arc<LayerIndex>)>, RootCheckError> {
        layers
            .iter()
            .filter(|l| l.kind != LayerKind::Secrets)
            .map(|l| Ok((l.name.as_str(), self.index(l, plan.arch)?)))
            .collect()
    }

    /// The index of a built layer, made once per digest for a shared one
    /// (and kept in the layer store, when there is one).
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
        let store = self.store.as_deref().filter(|_| shared);
        let kept = store.and_then(|dir| index::kept(dir, &l.digest, arch));
        let made = match kept {
            Some(found) => found,
            None => {
                let made = index::index(&l.file, &l.name, arch).map_err(|source| {
                    RootCheckError::Read {
                        layer: l.name.clone(),
                        source: Box::new(source),
                    }
                })?;
                match store {
                    Some(dir) => index::keep(dir, &l.digest, arch, made),
                    None => made,
                }
            }
        };
        let made = Arc::new(made);
        if shared && let Ok(mut m) = self.indexes.lock() {
            m.insert(l.digest.clone(), made.clone());
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use index::Node;

    fn file(needs: Option<elf::Needs>) -> Node {
        Node::File { needs, text: None }
    }

    fn elf(libs: &[&str], runpath: &[&str], exe: bool) -> Node {
        file(Some(elf::Needs {
            libraries: libs.iter().map(|s| s.to_string()).collect(),
            runpath: runpath.iter().map(|s| s.to_string()).collect(),
            interpreter: exe.then(|| "/lib64/ld-linux-x86-64.so.2".into()),
        }))
    }

    fn check(layers: &[(&str, LayerIndex)]) -> (Vec<String>, Vec<String>) {
        let mut root = Root::of(layers);
        let f = libs::Loader::new(&root, Arch::Amd64).check();
        let mut problems = std::mem::take(&mut root.problems);
        problems.extend(f.errors);
        problems.extend(root.unit_problems());
        (problems, f.warnings)
    }

    fn os() -> LayerIndex {
        let e = |p: &str, n: Node| (p.to_string(), n);
        LayerIndex {
            entries: vec![
                e("lib", Node::Symlink("usr/lib".into())),
                e("lib64", Node::Symlink("usr/lib64".into())),
                e(
                    "usr/lib64/ld-linux-x86-64.so.2",
                    Node::Symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
                ),
                e("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", file(None)),
                e(
                    "usr/lib/x86_64-linux-gnu/libc.so.6",
                    elf(&["ld-linux-x86-64.so.2"], &[], false),
                ),
                e(
                    "usr/lib/x86_64-linux-gnu/priv/libcore.so",
                    elf(&["libshared.so", "libc.so.6"], &[], false),
                ),
                e(
                    "usr/lib/x86_64-linux-gnu/priv/libshared.so",
                    elf(&["libc.so.6"], &[], false),
                ),
                e("opt/x/libx.so", file(None)),
                e(
                    "etc/ld.so.conf.d/x.conf",
                    Node::File {
                        needs: None,
                        text: Some("# x\n/opt/x\n".into()),
                    },
                ),
                e("usr/bin/dash", elf(&["libc.so.6"], &[], true)),
                e("usr/bin/x", elf(&["libx.so"], &[], true)),
                e(
                    "usr/lib/systemd/systemd",
                    elf(
                        &["libcore.so", "libshared.so"],
                        &["$ORIGIN/../x86_64-linux-gnu/priv"],
                        true,
                    ),
                ),
                e(
                    "usr/bin/broken",
                    elf(&["libc.so.6", "libgone.so.1"], &[], true),
                ),
                e(
                    "usr/lib/x86_64-linux-gnu/tc/q_atm.so",
                    elf(&["libatm.so.1"], &[], false),
                ),
                e("usr/lib/systemd/system/a.service", file(None)),
            ],
        }
    }

    #[test]
    fn a_kept_index_checks_as_the_one_it_was_made_as_and_only_for_its_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let digest = "ab".repeat(32);
        let before = check(&[("00-os", os())]);
        let kept = index::keep(store, &digest, Arch::Amd64, os());
        assert_eq!(format!("{kept:?}"), format!("{:?}", os()));
        let back = index::kept(store, &digest, Arch::Amd64).unwrap();
        assert_eq!(check(&[("00-os", back)]), before);
        // another layer, another machine: not this index
        assert!(index::kept(store, &"cd".repeat(32), Arch::Amd64).is_none());
        assert!(index::kept(store, &digest, Arch::Arm64).is_none());
        // a damaged file is made again, not trusted
        let path = store.join("rootindex").join(format!("{digest}.amd64.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(index::kept(store, &digest, Arch::Amd64).is_none());
        std::fs::write(&path, text.replace("\"version\":1", "\"version\":0")).unwrap();
        assert!(index::kept(store, &digest, Arch::Amd64).is_none());
    }

    #[test]
    fn a_programs_closure_holds_its_interpreter_libraries_and_the_links_on_the_way() {
        let os = os();
        let mut root = Root::default();
        root.add("00-os", &os);
        let loader = libs::Loader::new(&root, Arch::Amd64);
        let (files, missing) = loader.closure(&["lib/systemd/systemd"]);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [
                "lib",
                "lib64",
                "usr/lib/systemd/systemd",
                "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "usr/lib/x86_64-linux-gnu/libc.so.6",
                "usr/lib/x86_64-linux-gnu/priv/libcore.so",
                "usr/lib/x86_64-linux-gnu/priv/libshared.so",
                "usr/lib64/ld-linux-x86-64.so.2",
            ]
        );
        let (_, missing) = loader.closure(&["usr/bin/broken", "usr/bin/gone"]);
        assert_eq!(
            missing,
            [
                "libgone.so.1 (which /usr/bin/broken needs)",
                "/usr/bin/gone"
            ]
        );
    }

    #[test]
    fn executables_load_their_libraries_through_the_images_links() {
        let (problems, warnings) = check(&[("00-os", os())]);
        assert_eq!(
            problems,
            [
                "/usr/bin/broken (layer 00-os) needs libgone.so.1, which is in none of the image's library paths (/opt/x /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib /usr/lib /lib64 /usr/lib64)"
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "/usr/lib/x86_64-linux-gnu/tc/q_atm.so (layer 00-os) needs libatm.so.1"
            )
        );
    }

    #[test]
    fn a_directory_over_a_link_and_a_missing_unit_are_problems() {
        let e = |p: &str, n: Node| (p.to_string(), n);
        let role = LayerIndex {
            entries: vec![
                e("lib", Node::Dir),
                e(
                    "etc/systemd/system/multi-user.target.wants/a.service",
                    Node::Symlink("/usr/lib/systemd/system/a.service".into()),
                ),
                e(
                    "etc/systemd/system/multi-user.target.wants/b.service",
                    Node::Symlink("/lib/systemd/system/b.service".into()),
                ),
                e("usr/lib/x86_64-linux-gnu/libc.so.6", file(None)),
            ],
        };
        let (problems, _) = check(&[("00-os", os()), ("02-lb", role)]);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("/lib (layer 02-lb) is a directory over the symbolic link /lib -> usr/lib of layer 00-os"));
        assert!(problems[1].starts_with("/usr/bin/broken (layer 00-os) needs libgone.so.1"));
        assert!(problems[2].starts_with("/etc/systemd/system/multi-user.target.wants/b.service (layer 02-lb) enables b.service, but its target /lib/systemd/system/b.service is no unit file"));
    }

    #[test]
    fn a_library_that_lacks_a_library_names_the_program_that_loads_it() {
        let mut os = os();
        os.entries.retain(|(p, _)| !p.ends_with("libshared.so"));
        let (problems, _) = check(&[("00-os", os)]);
        assert!(
            problems.iter().any(|p| p.starts_with("/usr/lib/systemd/systemd (layer 00-os) needs libshared.so")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("/usr/lib/x86_64-linux-gnu/priv/libcore.so (layer 00-os), which /usr/lib/systemd/systemd loads, needs libshared.so")),
            "{problems:#?}"
        );
    }
}

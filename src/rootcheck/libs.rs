//! The dynamic loader's view of the root: takes the [`Root`] and, for
//! every executable (an ELF with a program interpreter), loads it as
//! ld.so would: its interpreter must be a file; each `DT_NEEDED` library
//! is looked up in the needing object's own `RUNPATH`/`RPATH` (`$ORIGIN`,
//! `$LIB`, `$PLATFORM` expanded), then in the loader's directories, and a
//! library already loaded for the program by that name is used again (how
//! systemd's private libraries find each other). What an executable cannot
//! load is an error. A shared library no executable loads (a plugin its
//! program opens at run time) is checked on its own, and what it lacks is
//! a warning: it breaks only the feature that opens it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use super::elf::Needs;
use super::root::{Root, multiarch};
use crate::manifest::Arch;
use crate::rootpath;

/// What the loader found wrong.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<String>,
}

/// The loader over one root.
pub(super) struct Loader<'r, 'a> {
    root: &'r Root<'a>,
    arch: Arch,
    /// The loader's own directories (configuration, then defaults).
    dirs: Vec<String>,
    /// Where each library name is in `dirs`.
    found: RefCell<HashMap<String, Option<String>>>,
}

/// A library an object needs and could not find: (the object, the library).
type Missing = BTreeMap<(String, String), String>;

impl<'r, 'a> Loader<'r, 'a> {
    pub(super) fn new(root: &'r Root<'a>, arch: Arch) -> Self {
        Loader {
            root,
            arch,
            dirs: root.library_dirs(arch),
            found: RefCell::new(HashMap::new()),
        }
    }

    /// Every executable loaded, every other library checked on its own.
    pub(super) fn check(&self) -> Findings {
        let mut f = Findings::default();
        let mut missing = Missing::new();
        let mut loaded_somewhere = BTreeSet::new();
        for (path, layer, needs) in self.root.elves() {
            let Some(interp) = &needs.interpreter else {
                continue;
            };
            if self.root.file(interp).is_none() {
                f.errors.push(format!(
                    "/{path} (layer {layer}) needs its program interpreter {interp}, which is not a file of the image"
                ));
            }
            self.load(path, needs, &mut loaded_somewhere, &mut missing);
        }
        for ((needer, lib), exe) in &missing {
            let layer = self.root.layer_of(needer);
            let by = if needer == exe {
                String::new()
            } else {
                format!(", which /{exe} loads,")
            };
            f.errors.push(format!(
                "/{needer} (layer {layer}){by} needs {lib}, which is in none of the image's library paths ({})",
                self.shown_dirs(needer, self.needs_of(needer))
            ));
        }
        f.warnings = self.plugins(&loaded_somewhere);
        f
    }

    /// What the object at `path` needs (it is an ELF of the index).
    fn needs_of(&self, path: &str) -> Option<&'a Needs> {
        self.root.file(path).and_then(|(_, n)| n)
    }

    /// Loads the executable `exe` and every library it needs, transitively;
    /// records each library it reaches and each it cannot find.
    fn load(
        &self,
        exe: &str,
        needs: &'a Needs,
        loaded_somewhere: &mut BTreeSet<String>,
        missing: &mut Missing,
    ) {
        let mut loaded: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::from([exe.to_string()]);
        let mut queue: VecDeque<(String, &'a Needs)> = VecDeque::from([(exe.to_string(), needs)]);
        let mut unresolved: Vec<(String, &str)> = Vec::new();
        while let Some((path, needs)) = queue.pop_front() {
            for lib in &needs.libraries {
                if loaded.contains(lib.as_str()) {
                    continue;
                }
                let Some(real) = self.find(&path, needs, lib) else {
                    unresolved.push((path.clone(), lib));
                    continue;
                };
                loaded.insert(lib);
                if seen.insert(real.clone()) {
                    loaded_somewhere.insert(real.clone());
                    if let Some(n) = self.needs_of(&real) {
                        queue.push_back((real, n));
                    }
                }
            }
        }
        for (path, lib) in unresolved {
            if !loaded.contains(lib) {
                missing
                    .entry((path, lib.to_string()))
                    .or_insert_with(|| exe.to_string());
            }
        }
    }

    /// Every library no executable loads, checked on its own: warnings.
    fn plugins(&self, loaded_somewhere: &BTreeSet<String>) -> Vec<String> {
        let mut warnings = Vec::new();
        for (path, layer, needs) in self.root.elves() {
            if needs.interpreter.is_some() || loaded_somewhere.contains(path) {
                continue;
            }
            for lib in &needs.libraries {
                if self.find(path, needs, lib).is_none() {
                    warnings.push(format!(
                        "/{path} (layer {layer}) needs {lib}, which is in none of the image's library paths ({}); no program of the image links it (a plugin, opened at run time?), so only what opens it would fail",
                        self.shown_dirs(path, Some(needs))
                    ));
                }
            }
        }
        warnings
    }

    /// Where `lib`, needed by the object at `path`, is found: its real path.
    fn find(&self, path: &str, needs: &Needs, lib: &str) -> Option<String> {
        if lib.contains('/') && !lib.starts_with('/') {
            // a relative path is the cwd's
            return Some(lib.to_string());
        }
        let at = self.locate(path, needs, lib)?;
        self.root.file(&at).map(|(p, _)| p)
    }

    /// The path the loader opens for `lib`, needed by the object at `path`
    /// (before links are followed), when it finds it.
    fn locate(&self, path: &str, needs: &Needs, lib: &str) -> Option<String> {
        if lib.contains('/') {
            let lib = lib.trim_start_matches('/');
            return self.root.file(lib).map(|_| lib.to_string());
        }
        for d in own_dirs(path, &needs.runpath, self.arch) {
            let at = format!("{d}/{lib}");
            if self.root.file(&at).is_some() {
                return Some(at);
            }
        }
        let mut found = self.found.borrow_mut();
        found
            .entry(lib.to_string())
            .or_insert_with(|| {
                self.dirs
                    .iter()
                    .map(|d| format!("{d}/{lib}"))
                    .find(|at| self.root.file(at).is_some())
            })
            .clone()
    }

    /// What `programs` need to run: each, its interpreter and every library
    /// it loads, transitively, with every symbolic link on the way (paths
    /// relative to the root); and what cannot be found.
    pub(super) fn closure(&self, programs: &[&str]) -> (BTreeSet<String>, Vec<String>) {
        let mut files = BTreeSet::new();
        let mut missing = Vec::new();
        for program in programs {
            self.program_closure(program, &mut files, &mut missing);
        }
        (files, missing)
    }

    /// [`Loader::closure`] of one program: a library already loaded for it
    /// by that name is used again, as ld.so does.
    fn program_closure(
        &self,
        program: &str,
        files: &mut BTreeSet<String>,
        missing: &mut Vec<String>,
    ) {
        let mut loaded: HashMap<String, String> = HashMap::new();
        let mut seen = HashSet::new();
        let mut queue: VecDeque<(String, String)> =
            VecDeque::from([(program.to_string(), String::new())]);
        while let Some((path, by)) = queue.pop_front() {
            let Some((real, needs, links)) = self.root.file_with_links(&path) else {
                let what = if by.is_empty() {
                    format!("/{path}")
                } else {
                    format!("{path} (which /{by} needs)")
                };
                if !missing.contains(&what) {
                    missing.push(what);
                }
                continue;
            };
            files.extend(links);
            files.insert(real.clone());
            if !seen.insert(real.clone()) {
                continue;
            }
            let Some(needs) = needs else { continue };
            if let Some(interp) = &needs.interpreter {
                queue.push_back((interp.trim_start_matches('/').to_string(), real.clone()));
            }
            for lib in &needs.libraries {
                let at = match loaded.get(lib) {
                    Some(at) => at.clone(),
                    None => self
                        .locate(&real, needs, lib)
                        .unwrap_or_else(|| lib.clone()),
                };
                loaded.insert(lib.clone(), at.clone());
                queue.push_back((at, real.clone()));
            }
        }
    }

    /// The directories searched for the object at `path`, as a problem
    /// shows them.
    fn shown_dirs(&self, path: &str, needs: Option<&Needs>) -> String {
        let own = needs.map_or_else(Vec::new, |n| own_dirs(path, &n.runpath, self.arch));
        let mut shown: Vec<String> = Vec::new();
        for d in own.iter().chain(&self.dirs) {
            let d = format!("/{d}");
            if !shown.contains(&d) {
                shown.push(d);
            }
        }
        shown.join(" ")
    }
}

/// An object's RUNPATH, `$ORIGIN` (its own directory), `$LIB` and
/// `$PLATFORM` expanded, relative to the root.
fn own_dirs(path: &str, runpath: &[String], arch: Arch) -> Vec<String> {
    let origin = format!("/{}", rootpath::parent(path));
    let platform = match arch {
        Arch::Amd64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    let libs = [
        "lib".to_string(),
        "lib64".into(),
        format!("lib/{}", multiarch(arch)),
    ];
    let mut out = Vec::new();
    for d in runpath {
        let d = d
            .replace("${ORIGIN}", &origin)
            .replace("$ORIGIN", &origin)
            .replace("${PLATFORM}", platform)
            .replace("$PLATFORM", platform);
        if d.contains("$LIB") || d.contains("${LIB}") {
            for lib in &libs {
                out.push(d.replace("${LIB}", lib).replace("$LIB", lib));
            }
        } else {
            out.push(d);
        }
    }
    out.into_iter()
        .map(|d| d.trim_matches('/').to_string())
        .collect()
}

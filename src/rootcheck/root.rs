//! The image's root as the layers make it: takes the layers' indexes in
//! order and lays each over the ones before (a later layer's path replaces
//! an earlier one's), keeping which layer each path came from; then
//! answers what a path is once the image's own links are followed, where
//! the dynamic loader looks, and whether every enabled unit exists.

use std::collections::BTreeMap;

use super::elf::Needs;
use super::index::{self, LayerIndex, Node};
use crate::manifest::Arch;
use crate::rootpath;

/// The union of the layers: each path as the last layer to write it left
/// it, with that layer's name; and the problems found laying them.
#[derive(Default)]
pub(super) struct Root<'a> {
    paths: BTreeMap<&'a str, (&'a str, &'a Node)>,
    pub(super) problems: Vec<String>,
}

/// The multiarch tuple of an arch (Debian's library directories).
pub(super) fn multiarch(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

impl<'a> Root<'a> {
    /// The root of `layers` (each layer's name and index) laid over each
    /// other in order.
    pub(super) fn of<I: std::borrow::Borrow<LayerIndex>>(layers: &'a [(&'a str, I)]) -> Root<'a> {
        let mut root = Root::default();
        for (name, index) in layers {
            root.add(name, index.borrow());
        }
        root
    }

    /// Lays `index` (of the layer `name`) over what is there: a directory
    /// over a symbolic link keeps the link (as the kernel unpacks a cpio,
    /// and dpkg unpacks) and is a problem (tar would replace it).
    pub(super) fn add(&mut self, name: &'a str, index: &'a LayerIndex) {
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

    /// The file at `path` once its links are followed: where it is, and
    /// what it needs when it is an ELF.
    pub(super) fn file(&self, path: &str) -> Option<(String, Option<&'a Needs>)> {
        let real = rootpath::resolve(path, true, |p| self.link(p))?;
        match self.paths.get(real.as_str()) {
            Some((_, Node::File { needs, .. })) => Some((real, needs.as_ref())),
            _ => None,
        }
    }

    /// Like [`Root::file`], with every symbolic link followed on the way
    /// (each path that is a link).
    pub(super) fn file_with_links(
        &self,
        path: &str,
    ) -> Option<(String, Option<&'a Needs>, Vec<String>)> {
        let links = std::cell::RefCell::new(Vec::new());
        let real = rootpath::resolve(path, true, |p| {
            let t = self.link(p);
            if t.is_some() {
                links.borrow_mut().push(p.to_string());
            }
            t
        })?;
        match self.paths.get(real.as_str()) {
            Some((_, Node::File { needs, .. })) => Some((real, needs.as_ref(), links.into_inner())),
            _ => None,
        }
    }

    /// Whether `path` is a symbolic link.
    pub(super) fn is_link(&self, path: &str) -> bool {
        self.link(path).is_some()
    }

    /// Every ELF with what it needs, and its layer.
    pub(super) fn elves(&self) -> impl Iterator<Item = (&'a str, &'a str, &'a Needs)> + '_ {
        self.paths
            .iter()
            .filter_map(|(path, (layer, node))| match node {
                Node::File { needs: Some(n), .. } => Some((*path, *layer, n)),
                _ => None,
            })
    }

    /// The layer a path came from.
    pub(super) fn layer_of(&self, path: &str) -> &'a str {
        self.paths.get(path).map_or("?", |(l, _)| l)
    }

    /// The directories the dynamic loader searches after an object's own
    /// RUNPATH: those of its configuration files, then the defaults.
    pub(super) fn library_dirs(&self, arch: Arch) -> Vec<String> {
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
        dirs.extend([
            format!("lib/{tuple}"),
            format!("usr/lib/{tuple}"),
            "lib".into(),
            "usr/lib".into(),
            "lib64".into(),
            "usr/lib64".into(),
        ]);
        dirs
    }

    /// Every unit a `.wants` or `.requires` link enables, found or named.
    pub(super) fn unit_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, (layer, node)) in &self.paths {
            let Node::Symlink(target) = node else {
                continue;
            };
            let dir = rootpath::parent(path);
            let enables = path.contains("systemd/")
                && (dir.ends_with(".wants") || dir.ends_with(".requires"));
            if enables && self.file(path).is_none() {
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
                .map(|d| d.trim_matches('/').to_string()),
        );
    }
    dirs
}

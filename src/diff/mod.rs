//! Stage 9, `diff`: takes two output directories of one node (`out/<node>`)
//! or two output trees of a cluster (`out/`, paired by node name) and
//! produces a [`Diff`]: per node, what changed in image.json (the build
//! options, `versions`, every input's version, URL and checksum), the PKI
//! (the secrets layer's files, by name only), each layer's files (added,
//! removed, changed: type, mode, owner, size, content sha256, link target;
//! layers matched by name without their `NN-` prefix, a layer of the same
//! digest not read at all), and the other output files by SHA256SUMS.
//! Both directories are hostile: nothing is followed out of them (see
//! [`open`]), reads are bounded, and a layer must be the digest image.json
//! names. [`report`] renders the table; `--json` is [`crate::json`]'s.

mod compare;
mod layer;
mod open;
mod report;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::output::{ImageJson, InputJson};
use crate::sums::{self, Sums};
use open::{Dir, Kind};

pub use report::table;

/// The version of the `--json` schema (docs/diff.md).
pub const SCHEMA: &str = "imgbuild-diff/1";
/// image.json and SHA256SUMS are read whole, up to this size.
const MAX_SMALL_FILE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link; diff follows no link inside an output directory")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file (a directory, FIFO, socket or device)")]
    NotRegular { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{rel:?} is not a plain path inside {dir}")]
    Outside { dir: PathBuf, rel: String },
    #[error("{path} is missing: {dir} is not an output directory of imgbuild")]
    Missing { path: PathBuf, dir: PathBuf },
    #[error("{path} is not the image.json imgbuild writes")]
    ImageJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {problem}")]
    Layer { path: PathBuf, problem: String },
    #[error("{path}: {problem}")]
    Sums { path: PathBuf, problem: String },
    #[error(
        "{node} is a node directory (it has image.json) and {tree} an output tree: diff two nodes or two trees"
    )]
    Mixed { node: PathBuf, tree: PathBuf },
    #[error("{path} holds no node directory (a directory with image.json)")]
    Empty { path: PathBuf },
}

/// What `diff` found: the `--json` document.
#[derive(Debug, Serialize)]
pub struct Diff {
    pub schema: &'static str,
    pub old: String,
    pub new: String,
    pub identical: bool,
    pub nodes: Vec<NodeDiff>,
}

/// The state of a node, a layer: `unchanged`, `changed`, `added`, `removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unchanged,
    Changed,
    Added,
    Removed,
}

/// One node's differences; every list sorted (layers in the new image's
/// order, then those only the old one has).
#[derive(Debug, Serialize)]
pub struct NodeDiff {
    pub node: String,
    pub status: Status,
    /// image.json's own fields (`arch`, `build.formats`, ...).
    pub image: Vec<Field>,
    /// image.json's `versions`.
    pub versions: Vec<Field>,
    pub inputs: Vec<InputChange>,
    pub pki: Pki,
    pub layers: Vec<LayerDiff>,
    /// Other output files (cloud-init, pxe, oci, disk) by SHA256SUMS.
    pub outputs: Vec<OutputChange>,
}

/// A value that differs; `null` on the side that lacks it.
#[derive(Debug, Serialize)]
pub struct Field {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// `added`, `removed` or `changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Serialize)]
pub struct InputChange {
    pub artifact: String,
    pub change: Change,
    pub old: Option<InputJson>,
    pub new: Option<InputJson>,
}

/// The secrets layer's files by path; never their content or digest.
#[derive(Debug, Default, Serialize)]
pub struct Pki {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LayerDiff {
    /// The layer's name without its `NN-` prefix (`worker`, `secrets`).
    pub layer: String,
    pub status: Status,
    pub old: Option<LayerRef>,
    pub new: Option<LayerRef>,
    /// Whether the files were read (both layer files are there and differ).
    pub files_compared: bool,
    pub files: Vec<FileChange>,
}

#[derive(Debug, Serialize)]
pub struct LayerRef {
    pub name: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct FileChange {
    pub path: String,
    pub change: Change,
    /// For `changed`: `type`, `content`, `mode`, `owner`, `size`, `target`.
    pub what: Vec<&'static str>,
    pub old: Option<layer::Entry>,
    pub new: Option<layer::Entry>,
}

#[derive(Debug, Serialize)]
pub struct OutputChange {
    pub file: String,
    pub change: Change,
}

/// One node's output directory, opened and its image.json and SHA256SUMS read.
struct NodeDir {
    dir: Dir,
    image: ImageJson,
    sums: Sums,
}

impl NodeDir {
    fn read(dir: Dir) -> Result<NodeDir, DiffError> {
        let missing = |name: &str| DiffError::Missing {
            path: dir.path.join(name),
            dir: dir.path.clone(),
        };
        if dir.kind("image.json")? == Kind::Missing {
            return Err(missing("image.json"));
        }
        let text = dir.read("image.json", MAX_SMALL_FILE)?;
        let image: ImageJson =
            serde_json::from_slice(&text).map_err(|source| DiffError::ImageJson {
                path: dir.path.join("image.json"),
                source,
            })?;
        if dir.kind(sums::FILE)? == Kind::Missing {
            return Err(missing(sums::FILE));
        }
        let mut stems: Vec<&str> = image.layers.iter().map(compare::stem).collect();
        stems.sort_unstable();
        if let Some(w) = stems.windows(2).find(|w| w[0] == w[1]) {
            return Err(DiffError::Layer {
                path: dir.path.join("image.json"),
                problem: format!("it names two layers `{}`", w[0]),
            });
        }
        let text = dir.read(sums::FILE, MAX_SMALL_FILE)?;
        let (sums, bad) = Sums::parse(&String::from_utf8_lossy(&text));
        if let Some(b) = bad.first() {
            return Err(DiffError::Sums {
                path: dir.path.join(sums::FILE),
                problem: b.to_string(),
            });
        }
        Ok(NodeDir { dir, image, sums })
    }
}

/// Compares `old` with `new`: two node directories or two output trees.
pub fn diff(old: &Path, new: &Path) -> Result<Diff, DiffError> {
    let (a, b) = (Dir::open_root(old)?, Dir::open_root(new)?);
    let (a_node, b_node) = (is_node(&a)?, is_node(&b)?);
    let nodes = match (a_node, b_node) {
        (true, true) => {
            let (a, b) = (NodeDir::read(a)?, NodeDir::read(b)?);
            let name = b.image.node.clone();
            vec![compare::node(name, &a, &b)?]
        }
        (false, false) => trees(&a, &b)?,
        (true, false) => return Err(mixed(old, new)),
        (false, true) => return Err(mixed(new, old)),
    };
    Ok(Diff {
        schema: SCHEMA,
        old: old.display().to_string(),
        new: new.display().to_string(),
        identical: nodes.iter().all(|n| n.status == Status::Unchanged),
        nodes,
    })
}

fn mixed(node: &Path, tree: &Path) -> DiffError {
    DiffError::Mixed {
        node: node.to_path_buf(),
        tree: tree.to_path_buf(),
    }
}

/// A node directory has image.json or SHA256SUMS (of any kind: a link
/// there is refused when read, not taken for a tree).
fn is_node(d: &Dir) -> Result<bool, DiffError> {
    Ok(d.kind("image.json")? != Kind::Missing || d.kind(sums::FILE)? != Kind::Missing)
}

/// Two output trees, paired by node name.
fn trees(a: &Dir, b: &Dir) -> Result<Vec<NodeDiff>, DiffError> {
    let (old, new) = (node_names(a)?, node_names(b)?);
    let mut names: Vec<&String> = old.iter().chain(new.iter()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let d = match (old.contains(name), new.contains(name)) {
            (true, true) => {
                let x = NodeDir::read(a.dir(name)?)?;
                let y = NodeDir::read(b.dir(name)?)?;
                compare::node(name.clone(), &x, &y)?
            }
            (false, _) => compare::alone(name, Status::Added),
            (_, false) => compare::alone(name, Status::Removed),
        };
        out.push(d);
    }
    Ok(out)
}

/// The node directories of a tree: every entry but hidden ones (a build's
/// scratch `.<node>.tmp.<pid>`) and regular files; a link is refused.
fn node_names(d: &Dir) -> Result<Vec<String>, DiffError> {
    let mut names = Vec::new();
    for name in d.names()? {
        if name.starts_with('.') {
            continue;
        }
        match d.kind(&name)? {
            Kind::Dir => names.push(name),
            Kind::Symlink => {
                return Err(DiffError::Symlink {
                    path: d.path.join(&name),
                });
            }
            Kind::File | Kind::Other | Kind::Missing => {}
        }
    }
    if names.is_empty() {
        return Err(DiffError::Empty {
            path: d.path.clone(),
        });
    }
    Ok(names)
}

//! The comparison of two node directories already opened: image.json's
//! fields, versions and inputs, the layers matched by name (read only when
//! their digests differ), the secrets layer's files by name, and the other
//! output files by SHA256SUMS.

use std::collections::BTreeMap;

use super::layer::{self, Listing};
use super::{
    Change, DiffError, Field, FileChange, InputChange, LayerDiff, LayerRef, NodeDiff, NodeDir,
    OutputChange, Pki, Status,
};
use crate::output::{Format, ImageJson, InputJson, LayerJson};
use crate::plan::LayerKind;

/// Two builds of one node.
pub fn node(name: String, a: &NodeDir, b: &NodeDir) -> Result<NodeDiff, DiffError> {
    let (layers, pki) = layers(a, b)?;
    let mut d = NodeDiff {
        node: name,
        status: Status::Unchanged,
        image: fields(&a.image, &b.image),
        versions: maps(&a.image.versions, &b.image.versions),
        inputs: inputs(&a.image.inputs, &b.image.inputs),
        pki,
        layers,
        outputs: outputs(a, b),
    };
    let changed = !d.image.is_empty()
        || !d.versions.is_empty()
        || !d.inputs.is_empty()
        || !d.outputs.is_empty()
        || d.layers.iter().any(|l| l.status != Status::Unchanged);
    if changed {
        d.status = Status::Changed;
    }
    Ok(d)
}

/// A node only one tree has.
pub fn alone(name: &str, status: Status) -> NodeDiff {
    NodeDiff {
        node: name.to_string(),
        status,
        image: Vec::new(),
        versions: Vec::new(),
        inputs: Vec::new(),
        pki: Pki::default(),
        layers: Vec::new(),
        outputs: Vec::new(),
    }
}

/// image.json's scalar fields and build options, as text.
fn fields(a: &ImageJson, b: &ImageJson) -> Vec<Field> {
    let text = |i: &ImageJson| -> BTreeMap<String, String> {
        let formats: Vec<&str> = i.build.formats.iter().map(Format::as_str).collect();
        [
            ("node", i.node.clone()),
            ("kind", format!("{:?}", i.kind).to_lowercase()),
            ("cluster", i.cluster.clone()),
            ("roles", i.roles.join(",")),
            ("arch", i.arch.to_string()),
            ("source_date_epoch", i.source_date_epoch.to_string()),
            ("services", i.services.join(",")),
            ("build.formats", formats.join(",")),
            ("build.seed_layers", i.build.seed_layers.to_string()),
            ("build.imgbuild", i.build.imgbuild.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    maps(&text(a), &text(b))
}

/// The keys whose values differ, sorted.
fn maps(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<Field> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Field {
            name: k.clone(),
            old: a.get(k).cloned(),
            new: b.get(k).cloned(),
        })
        .collect()
}

/// Inputs by artifact name (a name twice in one image: by name and URL).
fn inputs(a: &[InputJson], b: &[InputJson]) -> Vec<InputChange> {
    let (a, b) = (by_artifact(a), by_artifact(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (old, new) = (a.get(k), b.get(k));
        let change = match (old, new) {
            (Some(x), Some(y)) if same_input(x, y) => continue,
            (Some(_), Some(_)) => Change::Changed,
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
        };
        out.push(InputChange {
            artifact: old.or(new).map_or_else(String::new, |i| i.artifact.clone()),
            change,
            old: old.cloned(),
            new: new.cloned(),
        });
    }
    out
}

fn same_input(a: &InputJson, b: &InputJson) -> bool {
    a.artifact == b.artifact && a.version == b.version && a.url == b.url && a.checksum == b.checksum
}

fn by_artifact(list: &[InputJson]) -> BTreeMap<String, InputJson> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for i in list {
        *count.entry(&i.artifact).or_default() += 1;
    }
    list.iter()
        .map(|i| {
            let key = if count[i.artifact.as_str()] > 1 {
                format!("{} {}", i.artifact, i.url)
            } else {
                i.artifact.clone()
            };
            (key, i.clone())
        })
        .collect()
}

/// A layer's name without its `NN-` prefix.
pub fn stem(l: &LayerJson) -> &str {
    l.name.split_once('-').map_or(l.name.as_str(), |(_, s)| s)
}

/// The layers of both, matched by stem: the new image's order, then the
/// old one's layers it lacks.
fn layers(a: &NodeDir, b: &NodeDir) -> Result<(Vec<LayerDiff>, Pki), DiffError> {
    let mut out = Vec::new();
    let mut pki = Pki::default();
    for y in &b.image.layers {
        let x = a.image.layers.iter().find(|x| stem(x) == stem(y));
        let d = match x {
            Some(x) => pair(a, b, x, y, &mut pki)?,
            None => lone(y, Status::Added),
        };
        out.push(d);
    }
    for x in &a.image.layers {
        if !b.image.layers.iter().any(|y| stem(x) == stem(y)) {
            out.push(lone(x, Status::Removed));
        }
    }
    Ok((out, pki))
}

fn layer_ref(l: &LayerJson) -> LayerRef {
    LayerRef {
        name: l.name.clone(),
        digest: l.digest.clone(),
        size: l.size,
    }
}

fn lone(l: &LayerJson, status: Status) -> LayerDiff {
    LayerDiff {
        layer: stem(l).to_string(),
        status,
        old: (status == Status::Removed).then(|| layer_ref(l)),
        new: (status == Status::Added).then(|| layer_ref(l)),
        files_compared: false,
        files: Vec::new(),
    }
}

/// One layer in both: unchanged by digest, else its files compared (when
/// both directories hold layer files).
fn pair(
    a: &NodeDir,
    b: &NodeDir,
    x: &LayerJson,
    y: &LayerJson,
    pki: &mut Pki,
) -> Result<LayerDiff, DiffError> {
    let mut d = LayerDiff {
        layer: stem(y).to_string(),
        status: Status::Unchanged,
        old: Some(layer_ref(x)),
        new: Some(layer_ref(y)),
        files_compared: false,
        files: Vec::new(),
    };
    if x.digest == y.digest {
        return Ok(d);
    }
    d.status = Status::Changed;
    let has = |n: &NodeDir| n.image.build.formats.has(Format::Layers);
    if !has(a) || !has(b) {
        return Ok(d); // built without layer files: digests only
    }
    let (old, new) = (layer::read(&a.dir, x)?, layer::read(&b.dir, y)?);
    d.files_compared = true;
    d.files = files(&old, &new);
    if y.kind() == LayerKind::Secrets {
        for f in &mut d.files {
            let list = match f.change {
                Change::Added => &mut pki.added,
                Change::Removed => &mut pki.removed,
                Change::Changed => &mut pki.changed,
            };
            list.push(f.path.clone());
            redact(f);
        }
    }
    Ok(d)
}

/// A secret file's digest is never shown: a digest of a short secret (a
/// bootstrap token) lets whoever reads the diff test a guess.
fn redact(f: &mut FileChange) {
    for e in [&mut f.old, &mut f.new].into_iter().flatten() {
        e.sha256 = None;
    }
}

/// The entries added, removed and changed, by path.
fn files(old: &Listing, new: &Listing) -> Vec<FileChange> {
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for p in paths {
        let (x, y) = (old.get(p), new.get(p));
        let (change, what) = match (x, y) {
            (Some(x), Some(y)) => match x.changes(y) {
                w if w.is_empty() => continue,
                w => (Change::Changed, w),
            },
            (None, _) => (Change::Added, Vec::new()),
            (_, None) => (Change::Removed, Vec::new()),
        };
        out.push(FileChange {
            path: p.clone(),
            change,
            what,
            old: x.cloned(),
            new: y.cloned(),
        });
    }
    out
}

/// The other output files (not image.json, not the layers) by SHA256SUMS.
fn outputs(a: &NodeDir, b: &NodeDir) -> Vec<OutputChange> {
    let skip = |f: &str| f == "image.json" || f.starts_with("layers/");
    let mut paths: Vec<&str> = a.sums.paths().chain(b.sums.paths()).collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .into_iter()
        .filter(|f| !skip(f))
        .filter_map(|f| {
            let change = match (a.sums.get(f), b.sums.get(f)) {
                (Some(x), Some(y)) if x == y => return None,
                (Some(_), Some(_)) => Change::Changed,
                (None, _) => Change::Added,
                (_, None) => Change::Removed,
            };
            Some(OutputChange {
                file: f.to_string(),
                change,
            })
        })
        .collect()
}

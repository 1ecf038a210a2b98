//! The readable form of a [`Diff`]: per node, the image fields, versions,
//! inputs, PKI, layers with their files, and other outputs; `+` added, `-`
//! removed, `~` changed, `=` unchanged. Digests are cut to 16 hex digits
//! (the `--json` form has them whole); the secrets layer's files are named,
//! never hashed.

use std::fmt::Write as _;

use super::layer::Entry;
use super::{Change, Diff, Field, FileChange, InputChange, LayerDiff, NodeDiff, Status};

/// The table; ends with `no difference` or how many nodes differ.
pub fn table(d: &Diff) -> String {
    let mut s = String::new();
    for n in &d.nodes {
        node(&mut s, n);
    }
    let differ = d
        .nodes
        .iter()
        .filter(|n| n.status != Status::Unchanged)
        .count();
    if d.identical {
        let _ = writeln!(s, "no difference");
    } else {
        let _ = writeln!(s, "{differ} of {} node(s) differ", d.nodes.len());
    }
    s
}

fn node(s: &mut String, n: &NodeDiff) {
    match n.status {
        Status::Unchanged => {
            let _ = writeln!(s, "{}: no difference", n.node);
            return;
        }
        Status::Added => {
            let _ = writeln!(s, "{}: added (only in NEW)", n.node);
            return;
        }
        Status::Removed => {
            let _ = writeln!(s, "{}: removed (only in OLD)", n.node);
            return;
        }
        Status::Changed => {
            let _ = writeln!(s, "{}: changed", n.node);
        }
    }
    fields(s, "image.json", &n.image);
    fields(s, "versions", &n.versions);
    if !n.inputs.is_empty() {
        let _ = writeln!(s, "  inputs:");
        n.inputs.iter().for_each(|i| input(s, i));
    }
    let p = &n.pki;
    if !(p.added.is_empty() && p.removed.is_empty() && p.changed.is_empty()) {
        let _ = writeln!(
            s,
            "  pki (the secrets layer's files, by name only; never their content):"
        );
        for (mark, list) in [("+", &p.added), ("-", &p.removed), ("~", &p.changed)] {
            list.iter().for_each(|f| {
                let _ = writeln!(s, "    {mark} {f}");
            });
        }
    }
    if !n.layers.is_empty() {
        let _ = writeln!(s, "  layers:");
        n.layers.iter().for_each(|l| layer(s, l));
    }
    if !n.outputs.is_empty() {
        let _ = writeln!(s, "  other outputs (by SHA256SUMS):");
        for o in &n.outputs {
            let _ = writeln!(s, "    {} {}", mark(o.change), o.file);
        }
    }
}

fn mark(c: Change) -> &'static str {
    match c {
        Change::Added => "+",
        Change::Removed => "-",
        Change::Changed => "~",
    }
}

fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("(none)")
}

fn fields(s: &mut String, title: &str, list: &[Field]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(s, "  {title}:");
    for f in list {
        let _ = writeln!(
            s,
            "    {}: {} -> {}",
            f.name,
            opt(f.old.as_deref()),
            opt(f.new.as_deref())
        );
    }
}

fn input(s: &mut String, i: &InputChange) {
    match (&i.old, &i.new) {
        (Some(x), Some(y)) => {
            let _ = writeln!(s, "    ~ {} {} -> {}", i.artifact, x.version, y.version);
            for (what, a, b) in [
                ("url", &x.url, &y.url),
                ("checksum", &x.checksum, &y.checksum),
            ] {
                if a != b {
                    let _ = writeln!(s, "        {what}: {a} -> {b}");
                }
            }
        }
        (Some(x), None) | (None, Some(x)) => {
            let _ = writeln!(
                s,
                "    {} {} {} {} {}",
                mark(i.change),
                x.artifact,
                x.version,
                x.url,
                x.checksum
            );
        }
        (None, None) => {}
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..16).unwrap_or(hex)
}

fn layer(s: &mut String, l: &LayerDiff) {
    let name = |r: &Option<super::LayerRef>| {
        r.as_ref()
            .map_or_else(String::new, |r| format!("{} {}", r.name, short(&r.digest)))
    };
    let line = match l.status {
        Status::Unchanged => format!("= {} unchanged ({})", l.layer, name(&l.new)),
        Status::Added => format!("+ {} ({})", l.layer, name(&l.new)),
        Status::Removed => format!("- {} ({})", l.layer, name(&l.old)),
        Status::Changed if !l.files_compared => format!(
            "~ {} ({} -> {}; files not compared: a side was built without --format layers)",
            l.layer,
            name(&l.old),
            name(&l.new)
        ),
        Status::Changed => format!("~ {} ({} -> {})", l.layer, name(&l.old), name(&l.new)),
    };
    let _ = writeln!(s, "    {line}");
    if l.files_compared && l.files.is_empty() {
        let _ = writeln!(
            s,
            "        no file differs in type, content, mode, owner, size or target"
        );
    }
    l.files.iter().for_each(|f| file(s, f));
}

fn file(s: &mut String, f: &FileChange) {
    let detail = match (&f.old, &f.new) {
        (Some(x), Some(y)) => f
            .what
            .iter()
            .map(|w| {
                if *w == "content" && x.sha256.is_none() && y.sha256.is_none() {
                    "content (not shown)".to_string()
                } else {
                    format!("{w} {} -> {}", attribute(x, w), attribute(y, w))
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        (Some(e), None) | (None, Some(e)) => describe(e),
        (None, None) => String::new(),
    };
    let _ = writeln!(s, "        {} {}  {detail}", mark(f.change), f.path);
}

/// One attribute of an entry as text.
fn attribute(e: &Entry, what: &str) -> String {
    match what {
        "type" => e.kind.to_string(),
        "content" => e
            .sha256
            .as_deref()
            .map_or_else(|| "(none)".into(), |h| format!("sha256 {}", short(h))),
        "mode" => e.mode.clone(),
        "owner" => format!("{}:{}", e.uid, e.gid),
        "size" => e.size.to_string(),
        "target" => e.target.clone().unwrap_or_else(|| "(none)".into()),
        _ => String::new(),
    }
}

fn describe(e: &Entry) -> String {
    let mut d = format!("{} {} {}:{} {} bytes", e.kind, e.mode, e.uid, e.gid, e.size);
    if let Some(h) = &e.sha256 {
        let _ = write!(d, " sha256 {}", short(h));
    }
    if let Some(t) = &e.target {
        let _ = write!(d, " -> {t}");
    }
    d
}

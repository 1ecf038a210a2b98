//! Stage 5, `render`: takes a [`Plan`] and renders its template entries with
//! the cluster's values (role layers: `cluster`, `derived`, `images`, `arch`)
//! or the node's (node layer: the same plus `node`). Undefined variables are
//! errors naming the template and the line that uses them, so a role-layer
//! template cannot silently depend on a node. Templates get a small,
//! bounded language ([`guard`]): no function reads the host, and size,
//! nesting, loops and run time are capped.

#[cfg(test)]
mod fuzz;
mod guard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{Manifests, Node};
use crate::plan::{LayerKind, Plan, Source};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read template {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{template}:{line}: refused: {message}")]
    Refused {
        template: String,
        line: usize,
        message: String,
    },
    #[error("{template}:{line}: {message}")]
    Template {
        template: String,
        line: usize,
        message: String,
        #[source]
        source: Box<tera::Error>,
    },
}

/// Rendered bytes by (layer name, path on the node).
pub type Rendered = BTreeMap<(String, String), Vec<u8>>;

#[derive(Serialize)]
struct Vars<'a> {
    cluster: &'a crate::manifest::Cluster,
    derived: &'a crate::manifest::Derived,
    images: BTreeMap<&'a str, String>,
    arch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a Node>,
}

/// The innermost message of a tera error chain.
fn innermost(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        msg = c.to_string();
        cur = c.source();
    }
    msg
}

/// The first line of `text` that uses `name` inside `{{ }}` or `{% %}`.
fn line_of(text: &str, message: &str) -> usize {
    let var = message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default();
    if var.is_empty() {
        return 1;
    }
    text.lines()
        .position(|l| l.contains(&var) && (l.contains("{{") || l.contains("{%")))
        .map_or(1, |i| i + 1)
}

/// Renders every template of `plan`.
pub fn render(m: &Manifests, plan: &Plan) -> Result<Rendered, RenderError> {
    let node = m
        .node(&plan.target)
        .filter(|_| matches!(plan.kind, crate::plan::TargetKind::Node));
    let images: BTreeMap<&str, String> = m
        .pins
        .images
        .iter()
        .map(|i| (i.name.as_str(), i.reference()))
        .collect();
    let mut out = Rendered::new();
    let mut tera = guard::tera();
    for layer in &plan.layers {
        let vars = Vars {
            cluster: &m.cluster,
            derived: &m.derived,
            images: images.clone(),
            arch: plan.arch.as_str(),
            node: if layer.kind == LayerKind::Node {
                node
            } else {
                None
            },
        };
        let ctx = tera::Context::from_serialize(&vars).map_err(|source| RenderError::Template {
            template: layer.name.clone(),
            line: 0,
            message: innermost(&source),
            source: Box::new(source),
        })?;
        for e in &layer.entries {
            let Source::Template { template } = &e.source else {
                continue;
            };
            let bytes = render_one(m, &mut tera, template, &ctx)?;
            out.insert((layer.name.clone(), e.path.clone()), bytes);
        }
    }
    Ok(out)
}

/// One template (`layers/<dir>/…`), checked by [`guard`], then rendered.
fn render_one(
    m: &Manifests,
    tera: &mut tera::Tera,
    template: &str,
    ctx: &tera::Context,
) -> Result<Vec<u8>, RenderError> {
    let path = m.layers_dir.join(template.trim_start_matches("layers/"));
    let text = read_template(&path)?;
    let root = m.layers_dir.parent().unwrap_or(Path::new("."));
    let shown = path
        .strip_prefix(root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| template.to_string());
    let failed = |source: tera::Error| {
        let message = innermost(&source);
        RenderError::Template {
            template: shown.clone(),
            line: line_of(&text, &message),
            message,
            source: Box::new(source),
        }
    };
    guard::check(&text).map_err(|r| RenderError::Refused {
        template: shown.clone(),
        line: r.line,
        message: r.message,
    })?;
    tera.add_raw_template(&shown, &text).map_err(failed)?;
    let mut w = guard::Bounded::default();
    guard::with_deadline(&shown, || tera.render_to(&shown, ctx, &mut w)).map_err(failed)?;
    Ok(w.0)
}

/// A template's text: a regular file of at most [`guard::MAX_TEMPLATE`] bytes.
fn read_template(path: &Path) -> Result<String, RenderError> {
    use std::io::Read;
    let read = |source| RenderError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read)?;
    if !f.metadata().map_err(read)?.is_file() {
        return Err(read(std::io::Error::other("not a regular file")));
    }
    let mut text = String::new();
    f.take(guard::MAX_TEMPLATE as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_of_an_undefined_variable() {
        let text = "a\nb {{ node.ip }}\n";
        let msg = "Variable `node.ip` not found in context while rendering 'one_off'";
        assert_eq!(line_of(text, msg), 2);
    }
}

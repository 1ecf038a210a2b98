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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::manifest::{Cluster, Manifests};
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

/// What every template of a build sees whatever the node: `cluster`,
/// `derived` and `images`.
#[derive(Serialize)]
struct Shared<'a> {
    cluster: ClusterValues<'a>,
    derived: &'a crate::manifest::Derived,
    images: BTreeMap<&'a str, String>,
}

/// `cluster` as templates see it: every field of [`Cluster`], the
/// inventory (`nodes`) only once a template [`reads_inventory`], so the
/// context of a fleet that no template walks does not grow with it (a
/// node's own values are `node`).
#[derive(Serialize)]
struct ClusterValues<'a> {
    name: &'a str,
    kubernetes_version: &'a crate::manifest::KubeVersion,
    api: &'a crate::manifest::Api,
    network: &'a crate::manifest::Network,
    pki: &'a crate::manifest::PkiSettings,
    host_network: &'a crate::manifest::HostNetwork,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<&'a [crate::manifest::Node]>,
}

impl<'a> ClusterValues<'a> {
    fn of(c: &'a Cluster, with_nodes: bool) -> ClusterValues<'a> {
        ClusterValues {
            name: &c.name,
            kubernetes_version: &c.kubernetes_version,
            api: &c.api,
            network: &c.network,
            pki: &c.pki,
            host_network: &c.host_network,
            nodes: with_nodes.then_some(c.nodes.as_slice()),
        }
    }
}

/// Whether `text` may read the inventory: an expression or tag of it
/// names `nodes`, or uses `cluster` other than as `cluster.FIELD` (a loop
/// over it, a filter of it, an index into it). Text outside `{{ }}` and
/// `{% %}` reads nothing. Erring towards yes costs only memory.
fn reads_inventory(text: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bare_cluster = |code: &str| {
        code.match_indices("cluster").any(|(i, w)| {
            let before = code[..i].chars().next_back();
            let after = code[i + w.len()..].trim_start().chars().next();
            !before.is_some_and(ident) && !after.is_some_and(ident) && after != Some('.')
        })
    };
    let mut rest = text;
    while let Some(open) = rest.find("{{").into_iter().chain(rest.find("{%")).min() {
        let close = if rest[open..].starts_with("{{") {
            "}}"
        } else {
            "%}"
        };
        let body = &rest[open + 2..];
        let code = body.find(close).map_or(body, |end| &body[..end]);
        if code.contains("nodes") || bare_cluster(code) {
            return true;
        }
        rest = &body[code.len()..];
    }
    false
}

/// The renderer of one build. The cluster's values are made into a
/// template context once (the inventory added when a template first
/// [`reads_inventory`]), and each template is read, checked and parsed
/// once; a render adds only `arch` and, for the node layer, `node`. So a
/// node's render costs its own templates, not the size of the inventory.
/// Renders take turns: what they take is small beside a node's layers.
pub struct Renderer {
    state: Mutex<State>,
}

struct State {
    ctx: tera::Context,
    tera: tera::Tera,
    /// The text of every template parsed into `tera`, by its name.
    texts: HashMap<String, String>,
    /// Whether `ctx`'s `cluster` holds `nodes` (a template [`reads_inventory`]).
    inventory: bool,
}

impl Renderer {
    /// The renderer of the cluster of `m`.
    pub fn new(m: &Manifests) -> Result<Renderer, RenderError> {
        let shared = Shared {
            cluster: ClusterValues::of(&m.cluster, false),
            derived: &m.derived,
            images: m
                .pins
                .images
                .iter()
                .map(|i| (i.name.as_str(), i.reference()))
                .collect(),
        };
        let ctx =
            tera::Context::from_serialize(&shared).map_err(|source| RenderError::Template {
                template: "the cluster's values".to_string(),
                line: 0,
                message: innermost(&source),
                source: Box::new(source),
            })?;
        let state = State {
            ctx,
            tera: guard::tera(),
            texts: HashMap::new(),
            inventory: false,
        };
        Ok(Renderer {
            state: Mutex::new(state),
        })
    }

    /// Renders every template of `plan`.
    pub fn render(&self, m: &Manifests, plan: &Plan) -> Result<Rendered, RenderError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out = state.render(m, plan);
        // the context goes back as it came: the cluster's values alone
        state.ctx.remove("node");
        state.ctx.remove("arch");
        out
    }
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

impl State {
    /// Every template of `plan`, rendered with the cluster's values plus
    /// `arch`, and `node` for the node layer.
    fn render(&mut self, m: &Manifests, plan: &Plan) -> Result<Rendered, RenderError> {
        let node = m
            .node(&plan.target)
            .filter(|_| matches!(plan.kind, crate::plan::TargetKind::Node));
        self.ctx.insert("arch", plan.arch.as_str());
        let mut out = Rendered::new();
        for layer in &plan.layers {
            match (layer.kind == LayerKind::Node, node) {
                (true, Some(n)) => self.ctx.insert("node", n),
                _ => {
                    self.ctx.remove("node");
                }
            }
            for e in &layer.entries {
                let Source::Template { template } = &e.source else {
                    continue;
                };
                let bytes = self.render_one(m, template)?;
                out.insert((layer.name.clone(), e.path.clone()), bytes);
            }
        }
        Ok(out)
    }

    /// One template (`layers/<dir>/…`), read, checked by [`guard`] and
    /// parsed when it is first rendered, then rendered.
    fn render_one(&mut self, m: &Manifests, template: &str) -> Result<Vec<u8>, RenderError> {
        let path = m.layers_dir.join(template.trim_start_matches("layers/"));
        let root = m.layers_dir.parent().unwrap_or(Path::new("."));
        let shown = path
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| template.to_string());
        if !self.texts.contains_key(&shown) {
            let text = read_template(&path)?;
            guard::check(&text).map_err(|r| RenderError::Refused {
                template: shown.clone(),
                line: r.line,
                message: r.message,
            })?;
            self.tera
                .add_raw_template(&shown, &text)
                .map_err(failed(&shown, &text))?;
            if !self.inventory && reads_inventory(&text) {
                self.ctx
                    .insert("cluster", &ClusterValues::of(&m.cluster, true));
                self.inventory = true;
            }
            self.texts.insert(shown.clone(), text);
        }
        let text = &self.texts[&shown];
        let mut w = guard::Bounded::default();
        guard::with_deadline(&shown, || self.tera.render_to(&shown, &self.ctx, &mut w))
            .map_err(failed(&shown, text))?;
        Ok(w.0)
    }
}

/// The error of `template` (whose text is `text`) failing to parse or render.
fn failed<'a>(template: &'a str, text: &'a str) -> impl FnOnce(tera::Error) -> RenderError + 'a {
    move |source| {
        let message = innermost(&source);
        RenderError::Template {
            template: template.to_string(),
            line: line_of(text, &message),
            message,
            source: Box::new(source),
        }
    }
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
    fn the_cluster_values_with_nodes_are_the_whole_cluster() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (m, _) = crate::manifest::load(&repo.join("manifests"), &repo.join("layers")).unwrap();
        let whole = serde_json::to_value(&m.cluster).unwrap();
        let with = serde_json::to_value(ClusterValues::of(&m.cluster, true)).unwrap();
        assert_eq!(with, whole);
        let mut without = whole;
        without.as_object_mut().unwrap().remove("nodes");
        assert_eq!(
            serde_json::to_value(ClusterValues::of(&m.cluster, false)).unwrap(),
            without
        );
    }

    #[test]
    fn no_shipped_template_walks_the_inventory() {
        // so a fleet's template context does not grow with its nodes
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "tera") {
                    out.push(p);
                }
            }
        }
        let mut templates = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("layers"),
            &mut templates,
        );
        assert!(templates.len() > 10);
        for t in templates {
            let text = std::fs::read_to_string(&t).unwrap();
            assert!(!reads_inventory(&text), "{}", t.display());
        }
    }

    #[test]
    fn only_templates_that_may_walk_the_inventory_read_it() {
        for t in [
            "{% for n in cluster.nodes %}{{ n.ip }}{% endfor %}",
            "{{ cluster[\"nodes\"] | length }}",
            "{% for k, v in cluster %}{{ k }}{% endfor %}",
            "{{ cluster | json_encode() }}",
            "{{ cluster }}",
            "{{ cluster[k] }}",
        ] {
            assert!(reads_inventory(t), "{t}");
        }
        for t in [
            "{{ cluster.name }}.{{ cluster.api.vip }}",
            "{{ cluster . network.pod_cidr }}",
            "{{ node.name }} {{ my_cluster }} {{ clusters }}",
            "# the nodes of the cluster\n{{ cluster.name }}",
        ] {
            assert!(!reads_inventory(t), "{t}");
        }
    }

    #[test]
    fn finds_the_line_of_an_undefined_variable() {
        let text = "a\nb {{ node.ip }}\n";
        let msg = "Variable `node.ip` not found in context while rendering 'one_off'";
        assert_eq!(line_of(text, msg), 2);
    }
}

//! What a template may do. Templates come from the project tree, which a
//! reviewer may not read line by line, and they run on the build host, so
//! they get a small, bounded language: variables, `if`, `for` and filters,
//! over the plan's values only. Checked before Tera parses the text (deep
//! nesting would overflow the parser's stack), then bounded while it renders:
//! no function reads the environment, the clock or random numbers; `range`
//! is capped; the output goes through a writer that stops at a limit; and a
//! watchdog ends a render that runs too long.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest template accepted.
pub const MAX_TEMPLATE: usize = 1 << 20;
/// Largest rendered file.
pub const MAX_OUTPUT: usize = 16 << 20;
/// `if`/`for` blocks inside one another.
const MAX_NESTING: usize = 16;
/// `for` blocks inside one another.
const MAX_LOOPS: usize = 3;
/// Parentheses and brackets inside one another, in one expression.
const MAX_PARENS: usize = 16;
/// Filters applied in one expression, and `~` concatenations.
const MAX_FILTERS: usize = 4;
const MAX_CONCAT: usize = 16;
/// Items `range` may make.
pub const MAX_RANGE: usize = 10_000;
/// How long one template may render.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The tags a template may use.
const TAGS: [&str; 10] = [
    "if", "elif", "else", "endif", "for", "endfor", "raw", "endraw", "break", "continue",
];

/// A rule the template breaks, and the line (from 1) where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub message: String,
}

fn refuse(line: usize, message: String) -> Refusal {
    Refusal { line, message }
}

/// Checks `text` against the rules above, before Tera sees it.
pub fn check(text: &str) -> Result<(), Refusal> {
    if text.len() > MAX_TEMPLATE {
        return Err(refuse(
            1,
            format!(
                "the template is {} bytes; at most {MAX_TEMPLATE} are allowed",
                text.len()
            ),
        ));
    }
    let mut blocks: Vec<&str> = Vec::new();
    let mut rest = text;
    let mut in_raw = false;
    while let Some(at) = rest.find('{') {
        let line = line_at(text, text.len() - rest.len() + at);
        let tail = &rest[at..];
        let close = match tail.get(..2) {
            Some("{{") if !in_raw => "}}",
            Some("{%") => "%}",
            Some("{#") if !in_raw => "#}",
            _ => {
                rest = &tail[1..];
                continue;
            }
        };
        let Some(end) = tail.find(close) else {
            return Err(refuse(
                line,
                format!("`{}` is never closed by `{close}`", &tail[..2]),
            ));
        };
        let inner = tail[2..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        match close {
            "%}" => in_raw = tag(inner, line, &mut blocks, in_raw)?,
            "}}" => expression(inner, line)?,
            _ => {}
        }
        rest = &tail[end + 2..];
    }
    match blocks.last() {
        Some(open) => Err(refuse(
            line_at(text, text.len()),
            format!("`{open}` is never closed"),
        )),
        None => Ok(()),
    }
}

/// One `{% ... %}`: an allowed tag, nested within the limits. Returns
/// whether a raw block is open after it.
fn tag<'a>(
    inner: &'a str,
    line: usize,
    blocks: &mut Vec<&'a str>,
    in_raw: bool,
) -> Result<bool, Refusal> {
    let word = inner.split_whitespace().next().unwrap_or("");
    if in_raw {
        return Ok(word != "endraw");
    }
    if !TAGS.contains(&word) {
        return Err(refuse(
            line,
            format!(
                "tag `{word}` is not allowed in imgbuild templates (allowed: {}); compute values in the manifests instead",
                TAGS.join(", ")
            ),
        ));
    }
    match word {
        "if" | "for" => {
            blocks.push(word);
            let loops = blocks.iter().filter(|b| **b == "for").count();
            if blocks.len() > MAX_NESTING || loops > MAX_LOOPS {
                return Err(refuse(
                    line,
                    format!(
                        "blocks nest too deep (at most {MAX_NESTING} blocks and {MAX_LOOPS} loops inside one another)"
                    ),
                ));
            }
        }
        "endif" | "endfor" if blocks.pop() != Some(&word[3..]) => {
            return Err(refuse(line, format!("`{word}` closes no `{}`", &word[3..])));
        }
        _ => {}
    }
    expression(inner.get(word.len()..).unwrap_or(""), line)?;
    Ok(word == "raw")
}

/// One expression: parentheses, filters and concatenations within bounds.
fn expression(expr: &str, line: usize) -> Result<(), Refusal> {
    let (mut depth, mut deepest, mut quote) = (0usize, 0usize, None);
    let (mut filters, mut concat) = (0usize, 0usize);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ')' | ']') => depth = depth.saturating_sub(1),
            (None, '|') => filters += 1,
            (None, '~') => concat += 1,
            _ => {}
        }
    }
    if deepest > MAX_PARENS || filters > MAX_FILTERS || concat > MAX_CONCAT {
        return Err(refuse(
            line,
            format!(
                "the expression is too complex (at most {MAX_PARENS} nested brackets, {MAX_FILTERS} filters and {MAX_CONCAT} `~`)"
            ),
        ));
    }
    Ok(())
}

fn line_at(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// A Tera with only what templates may call: the functions that read the
/// environment, the clock or random numbers refuse, and `range` is capped.
pub fn tera() -> tera::Tera {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    for name in ["get_env", "now", "get_random"] {
        t.register_function(name, move |_: &HashMap<String, tera::Value>| {
            Err(tera::Error::msg(format!(
                "function `{name}` is disabled: a template sees only the plan's values"
            )))
        });
    }
    t.register_function("range", range);
    t
}

fn range(args: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    let num = |k: &str, default: Option<u64>| match (args.get(k), default) {
        (Some(v), _) => v
            .as_u64()
            .ok_or_else(|| tera::Error::msg(format!("`range`: {k} must be a whole number"))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(tera::Error::msg(format!("`range` needs {k}"))),
    };
    let (start, end, step) = (
        num("start", Some(0))?,
        num("end", None)?,
        num("step_by", Some(1))?,
    );
    if step == 0 {
        return Err(tera::Error::msg("`range`: step_by must not be 0"));
    }
    let count = end.saturating_sub(start).div_ceil(step);
    if count > MAX_RANGE as u64 {
        return Err(tera::Error::msg(format!(
            "`range` would make {count} items; at most {MAX_RANGE} are allowed"
        )));
    }
    Ok((start..end)
        .step_by(step as usize)
        .collect::<Vec<u64>>()
        .into())
}

/// A writer that refuses to grow past [`MAX_OUTPUT`].
#[derive(Default)]
pub struct Bounded(pub Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(io::Error::other(format!(
                "the rendered file would exceed {MAX_OUTPUT} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders running now, by thread: when it started and which template.
static RUNNING: Mutex<Vec<(std::thread::ThreadId, Instant, String)>> = Mutex::new(Vec::new());
static WATCHDOG: std::sync::Once = std::sync::Once::new();

/// Runs `f` (one template's render) under the deadline: past it, the
/// process stops with an error naming the template. Rendering cannot be
/// interrupted from outside, and a template that loops for minutes is an
/// attack or a bug, not a build.
pub fn with_deadline<T>(template: &str, f: impl FnOnce() -> T) -> T {
    WATCHDOG.call_once(|| {
        std::thread::spawn(watchdog);
    });
    let id = std::thread::current().id();
    if let Ok(mut r) = RUNNING.lock() {
        r.push((id, Instant::now(), template.to_string()));
    }
    let out = f();
    if let Ok(mut r) = RUNNING.lock() {
        r.retain(|(t, _, _)| *t != id);
    }
    out
}

fn watchdog() {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let late = RUNNING.lock().ok().and_then(|r| {
            r.iter()
                .find(|(_, started, _)| started.elapsed() > DEADLINE)
                .map(|(_, _, t)| t.clone())
        });
        if let Some(t) = late {
            eprintln!(
                "error: {t}: rendering took longer than {} s; stopped (a template must not loop without bound)",
                DEADLINE.as_secs()
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_kinds_of_template_pass() {
        let t = "{% for k, v in node.labels %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %}\n{{ node.taints | join(sep=\",\") }}\n{{ images[\"flannel-cni-plugin\"] }}";
        assert_eq!(check(t), Ok(()));
    }

    #[test]
    fn macros_includes_and_set_are_refused_at_their_line() {
        for (t, word) in [
            ("a\n{% macro m() %}{% endmacro %}", "macro"),
            ("a\nb\n{% include \"x\" %}", "include"),
            ("{% set s = \"a\" %}", "set"),
            ("{% set_global s = 1 %}", "set_global"),
            ("{% extends \"x\" %}", "extends"),
        ] {
            let r = check(t).unwrap_err();
            assert!(r.message.contains(&format!("tag `{word}`")), "{r:?}");
            assert_eq!(r.line, t.lines().count(), "{t}");
        }
    }

    #[test]
    fn deep_nesting_and_long_chains_are_refused() {
        let deep = "{% if a %}".repeat(5000) + &"{% endif %}".repeat(5000);
        assert!(check(&deep).unwrap_err().message.contains("nest too deep"));
        let loops = "{% for a in b %}".repeat(4) + &"{% endfor %}".repeat(4);
        assert!(check(&loops).is_err());
        let parens = format!("{{{{ {}a{} }}}}", "(".repeat(100), ")".repeat(100));
        assert!(check(&parens).unwrap_err().message.contains("too complex"));
        let filters = "{{ a | upper | upper | upper | upper | upper }}";
        assert!(check(filters).is_err());
        assert!(
            check("{% raw %}{% macro %}{{ ((((((((((((((((((a)))))))))))))))))) }}{% endraw %}")
                .is_ok()
        );
    }

    #[test]
    fn functions_that_read_the_host_refuse_and_range_is_capped() {
        let mut t = tera();
        let ctx = tera::Context::new();
        for f in ["get_env(name=\"HOME\")", "now()", "get_random(end=9)"] {
            let e = t.render_str(&format!("{{{{ {f} }}}}"), &ctx).unwrap_err();
            let chain = format!("{:?}", e);
            assert!(chain.contains("is disabled"), "{chain}");
        }
        assert!(
            t.render_str("{% for i in range(end=100000000) %}x{% endfor %}", &ctx)
                .is_err()
        );
        assert_eq!(
            t.render_str("{% for i in range(end=3) %}{{ i }}{% endfor %}", &ctx)
                .unwrap(),
            "012"
        );
    }

    #[test]
    fn output_stops_at_the_limit() {
        let mut w = Bounded::default();
        assert!(w.write_all(&vec![0; MAX_OUTPUT]).is_ok());
        assert!(w.write_all(b"x").is_err());
    }
}

//! A mutation harness for template rendering, on stable Rust (proptest):
//! templates built from random pieces of the template language and copies
//! of the shipped templates with pieces inserted, deleted and repeated must
//! be refused by [`guard::check`] or render without a panic, within the
//! output limit and in bounded time, over a context shaped like the plan's.
//! A stack overflow or an endless render ends the test process, which fails
//! the test run.
//!
//! The normal test run tries [`DEFAULT_CASES`] cases from a fixed seed;
//! `PROPTEST_CASES` and `IMGBUILD_FUZZ_SECONDS` widen it (`just fuzz`).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use super::guard;

const DEFAULT_CASES: u32 = 2000;
/// A render of these small templates that takes longer is a bound missing.
const SLOW: Duration = Duration::from_secs(5);

/// Pieces of the template language, hostile ones included.
const PIECES: &[&str] = &[
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{# ",
    " #}",
    "{%- ",
    " -%}",
    "if ",
    "elif ",
    "else",
    "endif",
    "for ",
    "endfor",
    " in ",
    "x",
    "node.name",
    "cluster.nodes",
    "derived.hosts",
    "loop.index",
    "range(end=9)",
    "range(end=100000000)",
    "range(start=5, end=1, step_by=0)",
    "get_env(name=\"HOME\")",
    "now()",
    "get_random(end=9)",
    "| upper",
    "| join(sep=\",\")",
    "| replace(from=\"a\", to=\"aaaaaaaa\")",
    "| length",
    "| first",
    "~",
    "(",
    ")",
    "[",
    "]",
    "\"",
    "'",
    "macro m() ",
    "endmacro",
    "include \"x\"",
    "set s = s ~ s",
    "set_global s = 1",
    "raw",
    "endraw",
    "break",
    "continue",
    " not ",
    " and ",
    " or ",
    "==",
    "!=",
    "1",
    "-1",
    "9999999999999999999",
    "\n",
    "text ",
];

fn piece_template() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..60).prop_map(|v| v.concat())
}

/// A shipped-template-like text with random pieces spliced in at random places.
fn spliced_template() -> impl Strategy<Value = String> {
    let base = "{% for h in derived.hosts -%}\n{{ h.ip }} {{ h.name }}\n{% endfor -%}\n\
                {% if node.labels %}{% for k, v in node.labels %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %}{% endif %}\n\
                {{ node.taints | join(sep=\",\") }} {{ images[\"pause\"] }}\n";
    (
        prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(PIECES)),
            0..8,
        ),
        any::<prop::sample::Index>(),
        0usize..4,
    )
        .prop_map(move |(inserts, cut, repeat)| {
            let mut t = base.repeat(repeat + 1);
            for (at, p) in inserts {
                let i = floor_char(&t, at.index(t.len() + 1));
                t.insert_str(i, p);
            }
            let end = floor_char(&t, cut.index(t.len() + 1).max(t.len() / 2));
            t.truncate(end);
            t
        })
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i.min(s.len())
}

/// The values a template sees, shaped like the plan's.
fn context() -> tera::Context {
    let hosts: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({"ip": format!("10.0.0.{i}"), "name": format!("n{i}")}))
        .collect();
    let v = serde_json::json!({
        "cluster": {"name": "c", "nodes": hosts.clone(), "api": {"lb_port": 8443}},
        "derived": {"hosts": hosts},
        "images": {"pause": "registry.k8s.io/pause:3.10.1@sha256:00"},
        "arch": "amd64",
        "node": {"name": "n1", "ip": "10.0.0.1", "labels": {"a": "b"}, "taints": ["k=v:NoSchedule"]},
    });
    tera::Context::from_value(v).unwrap_or_default()
}

/// How far the cases got: refused by the guard, by Tera's parser, rendered.
static REACHED: [std::sync::atomic::AtomicUsize; 3] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 3];

fn reached(stage: usize) {
    REACHED[stage].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Checks then renders `text`; any outcome but a panic, an over-long output
/// or a slow render is fine.
fn exercise(text: &str, ctx: &tera::Context) -> Result<(), TestCaseError> {
    if guard::check(text).is_err() {
        reached(0);
        return Ok(());
    }
    let mut tera = guard::tera();
    if tera.add_raw_template("t", text).is_err() {
        reached(1);
        return Ok(());
    }
    reached(2);
    let started = Instant::now();
    let mut w = guard::Bounded::default();
    let _ = guard::with_deadline("t", || tera.render_to("t", ctx, &mut w));
    prop_assert!(w.0.len() <= guard::MAX_OUTPUT, "output past the limit");
    prop_assert!(
        started.elapsed() < SLOW,
        "a render took {:?}: {text:?}",
        started.elapsed()
    );
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

#[test]
fn random_and_spliced_templates_are_refused_or_render_within_bounds() {
    let ctx = context();
    let deadline = std::env::var("IMGBUILD_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut round = 0u8;
    loop {
        let config = Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[round; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let strategy = prop_oneof![piece_template(), spliced_template()];
        if let Err(e) = runner.run(&strategy, |t| exercise(&t, &ctx)) {
            panic!("template fuzz, round {round}: {e}");
        }
        round = round.wrapping_add(1);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    let [refused, unparsed, rendered] = REACHED
        .each_ref()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!("template fuzz: {refused} refused, {unparsed} not parsed, {rendered} rendered");
    // a harness whose cases never reach the renderer proves nothing
    assert!(
        rendered * 10 >= refused + unparsed + rendered,
        "too few rendered: {rendered}"
    );
}

//! A mutation harness for the manifest loader, on stable Rust (proptest):
//! copies of the shipped manifests and of `tests/fuzz-corpus/manifests/`,
//! changed by byte flips, line deletions and duplications, inserted syntax,
//! truncation and random values in random fields, must load without a panic,
//! either `Ok` or with errors that each stand at a line and column of the
//! file they name, and print no control character.
//!
//! The normal test run tries [`DEFAULT_CASES`] cases from a fixed seed;
//! `PROPTEST_CASES` sets how many, `IMGBUILD_FUZZ_SECONDS` bounds the time
//! and draws a fresh seed (`just fuzz`), `IMGBUILD_FUZZ_SEED` replays one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use super::{ManifestError, load};

/// Cases in a normal test run: a few seconds in a debug build.
const DEFAULT_CASES: u32 = 3000;
/// Cases per runner; each runner has a seed of its own.
const CHUNK: u32 = 500;

/// A set of manifests: path under `manifests/` -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped manifests.
fn shipped() -> Files {
    let dir = repo().join("manifests");
    let mut files = Files::new();
    for rel in ["cluster.yaml", "pins.toml"] {
        files.insert(rel.to_string(), std::fs::read(dir.join(rel)).unwrap());
    }
    for e in std::fs::read_dir(dir.join("roles")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(format!("roles/{name}"), std::fs::read(&path).unwrap());
    }
    files
}

/// The manifest a corpus file replaces, from its name (the corpus README).
fn corpus_target(name: &str) -> Option<String> {
    let (prefix, _) = name.split_once("--")?;
    match prefix {
        "cluster" => Some("cluster.yaml".into()),
        "pins" => Some("pins.toml".into()),
        _ => Some(format!("roles/{}.yaml", prefix.strip_prefix("role-")?)),
    }
}

/// Every corpus entry: its file name, the manifest it replaces, its bytes.
fn corpus() -> Vec<(String, String, Vec<u8>)> {
    let dir = repo().join("tests/fuzz-corpus/manifests");
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(target) = corpus_target(&name) {
            entries.push((name, target, std::fs::read(&path).unwrap()));
        }
    }
    entries.sort();
    assert!(entries.len() >= 10, "the corpus is missing");
    entries
}

/// One change to one file of a set (indices are taken modulo the sizes).
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        file: Index,
        at: Index,
        bit: u8,
    },
    DeleteLine {
        file: Index,
        line: Index,
    },
    DuplicateLine {
        file: Index,
        line: Index,
    },
    SwapLines {
        file: Index,
        a: Index,
        b: Index,
    },
    Insert {
        file: Index,
        at: Index,
        text: String,
    },
    Truncate {
        file: Index,
        at: Index,
    },
    SetValue {
        file: Index,
        line: Index,
        value: String,
    },
}

/// Text that means something to YAML or TOML, or to a config it ends up in.
fn syntax_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            ": ",
            "- ",
            "\n",
            "\t",
            " ",
            "#",
            "&a ",
            "*a",
            "<<: *a\n",
            "!!binary ",
            "!!str ",
            "{",
            "}",
            "[",
            "]",
            ",",
            "\"",
            "'",
            "\\",
            "---\n",
            "...\n",
            "? ",
            "|\n",
            ">-\n",
            "=",
            "[[artifact]]\n",
            "[[image]]\n",
            "\"\"\"",
            "'''",
            "\u{0}",
            "\u{1b}[2J",
            "\u{202e}",
            "\u{feff}",
            "é",
            "\r\n",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
    ]
}

/// A value to put where a field's value stood.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}{n}")),
        any::<f64>().prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "~",
            "null",
            "true",
            "no",
            "[]",
            "{}",
            "\"\"",
            "''",
            ".inf",
            "-.nan",
            "0x1F",
            "0o17",
            "1e999",
            "-0",
            "2920000",
            "4294967296",
            "65536",
            "256",
            "-1",
            "0",
            "v1.35.4",
            "v0.0.0",
            "v1.33.0",
            "10.0.0.0/33",
            "300.1.1.1",
            "\"eth0\\nx\"",
            "\"a b\"",
            "\"rack-b\\\"\\nX=1\"",
            "'it''s'",
            "[a, b",
            "{a: 1",
            "*undefined",
            "&x 1",
            "'../../etc'",
            "\"/etc/passwd\"",
            "\"\\u0000\"",
            "1970-01-01",
            "\"\\e[31m\"",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,40}",
        "\\PC{0,20}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let file_at = || (any::<Index>(), any::<Index>());
    prop_oneof![
        2 => (file_at(), 0u8..8)
            .prop_map(|((file, at), bit)| Mutation::FlipBit { file, at, bit }),
        2 => file_at().prop_map(|(file, line)| Mutation::DeleteLine { file, line }),
        2 => file_at().prop_map(|(file, line)| Mutation::DuplicateLine { file, line }),
        1 => (file_at(), any::<Index>())
            .prop_map(|((file, a), b)| Mutation::SwapLines { file, a, b }),
        2 => (file_at(), syntax_piece())
            .prop_map(|((file, at), text)| Mutation::Insert { file, at, text }),
        1 => file_at().prop_map(|(file, at)| Mutation::Truncate { file, at }),
        6 => (file_at(), value())
            .prop_map(|((file, line), value)| Mutation::SetValue { file, line, value }),
    ]
}

/// The byte ranges of the lines of `b`, each with its newline.
fn lines(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in b.iter().enumerate() {
        if *c == b'\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push(start..b.len());
    }
    out
}

/// `line` with what follows its `key: ` (YAML), `key = ` (TOML) or `- `
/// replaced by `value`; the whole line when it has none of them.
fn set_value(line: &[u8], value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let body = text.trim_end_matches('\n');
    let cut = [": ", " = ", "- "]
        .iter()
        .filter_map(|sep| body.find(sep).map(|i| i + sep.len()))
        .min()
        .unwrap_or(0);
    format!("{}{value}\n", &body[..cut]).into_bytes()
}

impl Mutation {
    fn file(&self) -> &Index {
        match self {
            Mutation::FlipBit { file, .. }
            | Mutation::DeleteLine { file, .. }
            | Mutation::DuplicateLine { file, .. }
            | Mutation::SwapLines { file, .. }
            | Mutation::Insert { file, .. }
            | Mutation::Truncate { file, .. }
            | Mutation::SetValue { file, .. } => file,
        }
    }

    fn apply(&self, files: &mut Files) {
        let key = self
            .file()
            .get(&files.keys().cloned().collect::<Vec<_>>())
            .clone();
        let Some(bytes) = files.get_mut(&key) else {
            return;
        };
        let ls = lines(bytes);
        let line_at = |i: &Index| ls.get(i.index(ls.len().max(1))).cloned();
        let len = bytes.len();
        let at = |i: &Index| i.index(len + 1);
        match self {
            Mutation::FlipBit { at: i, bit, .. } => {
                if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes[i] ^= 1 << bit;
                }
            }
            Mutation::DeleteLine { line, .. } => {
                if let Some(r) = line_at(line) {
                    bytes.drain(r);
                }
            }
            Mutation::DuplicateLine { line, .. } => {
                if let Some(r) = line_at(line) {
                    let copy = bytes[r.clone()].to_vec();
                    bytes.splice(r.start..r.start, copy);
                }
            }
            Mutation::SwapLines { a, b, .. } => {
                if let (Some(a), Some(b)) = (line_at(a), line_at(b)) {
                    let mut text: Vec<Vec<u8>> =
                        ls.iter().map(|r| bytes[r.clone()].to_vec()).collect();
                    let (ia, ib) = (
                        ls.iter().position(|r| *r == a),
                        ls.iter().position(|r| *r == b),
                    );
                    if let (Some(ia), Some(ib)) = (ia, ib) {
                        text.swap(ia, ib);
                        *bytes = text.concat();
                    }
                }
            }
            Mutation::Insert { at: i, text, .. } => {
                let i = at(i);
                bytes.splice(i..i, text.bytes());
            }
            Mutation::Truncate { at: i, .. } => {
                let i = at(i);
                bytes.truncate(i);
            }
            Mutation::SetValue { line, value, .. } => {
                if let Some(r) = line_at(line) {
                    let new = set_value(&bytes[r.clone()], value);
                    bytes.splice(r, new);
                }
            }
        }
    }
}

/// A case: a starting set (the shipped one, or it with one corpus entry in
/// place) and the mutations made to it.
#[derive(Debug, Clone)]
struct Case {
    corpus_entry: Option<Index>,
    mutations: Vec<Mutation>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::weighted(0.3, any::<Index>()),
        prop::collection::vec(mutation(), 1..=4),
    )
        .prop_map(|(corpus_entry, mutations)| Case {
            corpus_entry,
            mutations,
        })
}

/// The shipped manifests, the corpus, the layers directory they name, and
/// a directory holding the shipped set, where a case writes the files it
/// changed (and puts them back after): a fresh directory per case costs more
/// than loading it.
struct Harness {
    shipped: Files,
    corpus: Vec<(String, String, Vec<u8>)>,
    layers: PathBuf,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let shipped = shipped();
        // tmpfs where there is one: rewriting a file on ext4 flushes it
        let dir = match Path::new("/dev/shm") {
            shm if shm.is_dir() => tempfile::tempdir_in(shm),
            _ => tempfile::tempdir(),
        }
        .unwrap();
        std::fs::create_dir_all(dir.path().join("manifests/roles")).unwrap();
        for (rel, bytes) in &shipped {
            std::fs::write(dir.path().join("manifests").join(rel), bytes).unwrap();
        }
        Harness {
            shipped,
            corpus: corpus(),
            layers: repo().join("layers"),
            dir,
        }
    }

    /// The shipped set with corpus entry `entry` in place.
    fn start(&self, entry: Option<usize>) -> Files {
        let mut files = self.shipped.clone();
        if let Some((_, target, bytes)) = entry.and_then(|i| self.corpus.get(i)) {
            files.insert(target.clone(), bytes.clone());
        }
        files
    }

    fn files(&self, case: &Case) -> Files {
        let entry = case.corpus_entry.map(|i| i.index(self.corpus.len()));
        let mut files = self.start(entry);
        for m in &case.mutations {
            m.apply(&mut files);
        }
        files
    }

    /// Writes the files of `files` that differ from the shipped set, loads
    /// the set (no panic, and `Ok` or errors that stand inside the files
    /// they name), and puts the shipped set back.
    fn check(&self, files: &Files) -> Result<(), TestCaseError> {
        let manifests = self.dir.path().join("manifests");
        let changed: Vec<&String> = files
            .iter()
            .filter(|(rel, bytes)| self.shipped.get(*rel) != Some(*bytes))
            .map(|(rel, _)| rel)
            .collect();
        for rel in &changed {
            std::fs::write(manifests.join(rel), &files[*rel]).unwrap();
        }
        let result = match load(&manifests, &self.layers) {
            Ok(_) => Ok(()),
            Err(ManifestError::Invalid(d)) => check_diagnostics(&manifests, files, &d),
            Err(other) => Err(TestCaseError::fail(format!(
                "not a diagnostic with a location: {other}"
            ))),
        };
        for rel in changed {
            match self.shipped.get(rel) {
                Some(bytes) => std::fs::write(manifests.join(rel), bytes).unwrap(),
                None => std::fs::remove_file(manifests.join(rel)).unwrap(),
            }
        }
        result
    }
}

/// Every diagnostic names a manifest, a line in it and a column from 1; the
/// whole report holds no control character but its newlines.
fn check_diagnostics(
    manifests: &Path,
    files: &Files,
    d: &super::Diagnostics,
) -> Result<(), TestCaseError> {
    prop_assert!(d.has_errors(), "failed without an error:\n{d}");
    for diag in &d.0 {
        let rel =
            diag.loc.file.strip_prefix(manifests).map_err(|_| {
                TestCaseError::fail(format!("{} is outside the manifests", diag.loc))
            })?;
        let rel = rel.to_string_lossy();
        let lines = files
            .get(rel.as_ref())
            .map(|b| line_count(b))
            .ok_or_else(|| TestCaseError::fail(format!("{} is no manifest", diag.loc)))?;
        prop_assert!(
            diag.loc.line >= 1 && diag.loc.column >= 1 && diag.loc.line <= lines as u64,
            "{} is outside {rel} ({lines} lines)",
            diag.loc
        );
        prop_assert!(!diag.message.is_empty(), "{}: an empty message", diag.loc);
    }
    let text = d.to_string();
    prop_assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the report: {text:?}"
    );
    Ok(())
}

/// Lines as YAML counts them: `\r\n`, a lone `\r` and `\n` each end one.
fn line_count(b: &[u8]) -> usize {
    let breaks = b
        .iter()
        .enumerate()
        .filter(|(i, c)| **c == b'\n' || (**c == b'\r' && b.get(i + 1) != Some(&b'\n')))
        .count();
    breaks + 1
}

/// The seed of chunk `n`: from `base`, so a run is replayed by its base.
fn chunk_seed(base: u64, n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&base.to_le_bytes());
    seed[8..16].copy_from_slice(&n.to_le_bytes());
    seed
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `CHUNK` cases at a time until the cases or the time run out.
fn run_cases(harness: &Harness) {
    let total =
        env_number("PROPTEST_CASES").map_or(DEFAULT_CASES, |n| n.min(u64::from(u32::MAX)) as u32);
    let seconds = env_number("IMGBUILD_FUZZ_SECONDS");
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let base = env_number("IMGBUILD_FUZZ_SEED").unwrap_or_else(|| match seconds {
        Some(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        None => 0,
    });
    let (mut done, mut n) = (0u32, 0u64);
    while done < total && deadline.is_none_or(|d| Instant::now() < d) {
        let cases = (total - done).min(CHUNK);
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &chunk_seed(base, n));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&case(), |case| harness.check(&harness.files(&case)));
        if let Err(e) = result {
            panic!("IMGBUILD_FUZZ_SEED={base} (chunk {n}): {e}");
        }
        done += cases;
        n += 1;
    }
    eprintln!("manifest fuzz: {done} cases, seed {base}");
}

#[test]
fn mutated_manifests_load_without_panic_and_every_error_has_a_location() {
    run_cases(&Harness::new());
}

#[test]
fn every_corpus_manifest_loads_without_panic_and_every_error_has_a_location() {
    let harness = Harness::new();
    for (i, (name, _, _)) in harness.corpus.iter().enumerate() {
        if let Err(e) = harness.check(&harness.start(Some(i))) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn the_shipped_manifests_load() {
    let harness = Harness::new();
    assert!(harness.check(&harness.shipped).is_ok());
    let d = load(&repo().join("manifests"), &harness.layers).unwrap().1;
    assert!(!d.has_errors());
}

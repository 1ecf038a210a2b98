//! `SHA256SUMS`, the one reader and writer: the `sha256sum -c` format
//! (`<64 hex>  <relative path>` a line, sorted by path) that every output
//! directory and every bundle carries. A leaf: it imports no stage.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The file name, in output directories and bundles alike.
pub const FILE: &str = "SHA256SUMS";

/// Relative path -> lowercase hex sha256, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums(BTreeMap<String, String>);

/// A line that is not `<64 hex>  <path>`: its number (from 1) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.text.chars().take(80).collect();
        write!(
            f,
            "{FILE}:{}: malformed line {:?} (want `<sha256>  <path>`)",
            self.line, shown
        )
    }
}

impl Sums {
    /// Parses the text; every malformed line is returned, none is dropped
    /// silently. A path listed twice is a malformed line too.
    pub fn parse(text: &str) -> (Sums, Vec<BadLine>) {
        let mut sums = Sums::default();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match line.split_once("  ") {
                Some((h, f)) if is_sha256_hex(h) && !f.is_empty() && !sums.0.contains_key(f) => {
                    sums.0.insert(f.to_string(), h.to_string());
                }
                _ => bad.push(BadLine {
                    line: i + 1,
                    text: line.to_string(),
                }),
            }
        }
        (sums, bad)
    }

    pub fn insert(&mut self, path: impl Into<String>, hex: impl Into<String>) {
        self.0.insert(path.into(), hex.into());
    }

    pub fn get(&self, path: &str) -> Option<&str> {
        self.0.get(path).map(String::as_str)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// The listed paths, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The text `sha256sum -c` reads.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (f, h) in &self.0 {
            let _ = writeln!(s, "{h}  {f}");
        }
        s
    }

    /// The first path (sorted) whose digest differs between the two, or that
    /// only one of them lists.
    pub fn first_difference<'a>(&'a self, other: &'a Sums) -> Option<&'a str> {
        let mut paths: Vec<&str> = self.paths().chain(other.paths()).collect();
        paths.sort_unstable();
        paths.dedup();
        paths.into_iter().find(|p| self.get(p) != other.get(p))
    }
}

fn is_sha256_hex(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn render_then_parse_gives_the_same_list_sorted_by_path() {
        let mut s = Sums::default();
        s.insert("z/file", A);
        s.insert("a file with spaces", B);
        let text = s.render();
        assert_eq!(text, format!("{B}  a file with spaces\n{A}  z/file\n"));
        assert_eq!(Sums::parse(&text), (s, vec![]));
    }

    #[test]
    fn every_malformed_line_is_reported_with_its_number() {
        let text = format!("{A}  ok\nnot a line\n{A} one-space\nXYZ  short\n{B}  ok\n");
        let (s, bad) = Sums::parse(&text);
        assert_eq!(s.get("ok"), Some(A));
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(
            bad[0]
                .to_string()
                .starts_with("SHA256SUMS:2: malformed line")
        );
    }

    #[test]
    fn the_first_difference_names_a_changed_or_missing_path() {
        let (a, _) = Sums::parse(&format!("{A}  x\n{A}  y\n"));
        let (b, _) = Sums::parse(&format!("{A}  x\n{B}  y\n"));
        let (c, _) = Sums::parse(&format!("{A}  x\n"));
        assert_eq!(a.first_difference(&a), None);
        assert_eq!(a.first_difference(&b), Some("y"));
        assert_eq!(c.first_difference(&a), Some("y"));
    }
}

//! Diagnostics: a problem found in the manifests, with its file, line and
//! column. A message never carries a control character (it is escaped), and a
//! parser's message quotes at most [`QUOTE_LIMIT`] characters of the file: a
//! parse error may stand at whatever file sits at a manifest path.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in which manifest file something stands (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Loc {
    pub(crate) file: PathBuf,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

impl Loc {
    pub(crate) fn new(file: &Path, line: u64, column: u64) -> Self {
        Loc {
            file: file.to_path_buf(),
            line,
            column,
        }
    }

    /// The location of a YAML value read with `serde_saphyr::Spanned`.
    pub(crate) fn yaml(file: &Path, at: serde_saphyr::Location) -> Self {
        Loc::new(file, at.line(), at.column())
    }

    /// The location of a byte offset in a text file.
    pub(crate) fn offset(file: &Path, text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() as u64 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() as u64 + 1;
        Loc::new(file, line, column)
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = escape_controls(&self.file.display().to_string());
        write!(f, "{file}:{}:{}", self.line, self.column)
    }
}

/// The most characters of a file's text a parser's message may quote.
pub(crate) const QUOTE_LIMIT: usize = 40;

/// Whether `c` would change what a terminal shows (a control character, or
/// a bidirectional override that reorders the text around it).
fn is_hidden_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character escaped (`\n`, `\u{1b}`).
pub(crate) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hidden_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether the character after a closing quote ends a quoted token.
fn ends_token(next: Option<&char>) -> bool {
    next.is_none_or(|c| matches!(c, ',' | ' ' | ':' | ';' | ')' | '.'))
}

/// The index of the quote `q` that closes the token starting at `from`
/// (`chars.len()` when none does); `\` escapes inside `"…"`, as serde
/// quotes a string.
fn closing_quote(chars: &[char], from: usize, q: char) -> usize {
    let mut j = from;
    while j < chars.len() {
        match chars[j] {
            '\\' if q == '"' => j += 2,
            c if c == q && ends_token(chars.get(j + 1)) => return j,
            _ => j += 1,
        }
    }
    chars.len()
}

/// A parser's message with each quoted token (`…` or "…") cut to
/// [`QUOTE_LIMIT`] characters, and control characters escaped.
pub(crate) fn cap_quoted(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '`' && c != '"' {
            out.push(c);
            i += 1;
            continue;
        }
        let end = closing_quote(&chars, i + 1, c);
        let inner = escape_controls(
            &chars[i + 1..end.min(chars.len())]
                .iter()
                .collect::<String>(),
        );
        out.push(c);
        out.extend(inner.chars().take(QUOTE_LIMIT));
        if inner.chars().count() > QUOTE_LIMIT {
            out.push('…');
        }
        if end < chars.len() {
            out.push(c);
        }
        i = end + 1;
    }
    escape_controls(&out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    Error,
    Warning,
}

/// One problem: where, how bad, and a sentence a user understands.
#[derive(Debug)]
pub(crate) struct Diagnostic {
    pub(crate) severity: Severity,
    pub(crate) loc: Loc,
    pub(crate) message: String,
}

impl Diagnostic {
    pub(crate) fn error(loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            loc,
            message: escape_controls(&message.into()),
        }
    }

    pub(crate) fn warning(loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            loc,
            message: escape_controls(&message.into()),
        }
    }

    /// A YAML syntax or shape error (unknown field, wrong type, bad indentation).
    pub(crate) fn from_yaml(file: &Path, err: serde_saphyr::Error) -> Self {
        let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        let text = err.without_snippet().to_string();
        let suffix = format!(" at line {line}, column {column}");
        let message = text
            .strip_suffix(&suffix)
            .unwrap_or(&text)
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        Diagnostic {
            severity: Severity::Error,
            loc: Loc::new(file, line.max(1), column.max(1)),
            message: cap_quoted(&message),
        }
    }

    /// A TOML syntax or shape error.
    pub(crate) fn from_toml(file: &Path, text: &str, err: toml::de::Error) -> Self {
        let offset = err.span().map_or(0, |s| s.start);
        Diagnostic {
            severity: Severity::Error,
            loc: Loc::offset(file, text, offset),
            message: cap_quoted(err.message()),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {level}: {}", self.loc, self.message)
    }
}

/// Every problem found in one pass, sorted by file and position.
#[derive(Debug, Default)]
pub struct Diagnostics(pub(crate) Vec<Diagnostic>);

impl Diagnostics {
    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub(crate) fn error(&mut self, loc: Loc, message: impl Into<String>) {
        self.push(Diagnostic::error(loc, message));
    }

    pub(crate) fn warning(&mut self, loc: Loc, message: impl Into<String>) {
        self.push(Diagnostic::warning(loc, message));
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub(crate) fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub(crate) fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub(crate) fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.loc, a.severity, &a.message).cmp(&(&b.loc, b.severity, &b.message))
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        writeln!(
            f,
            "the manifests have {n} error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        let lines: Vec<String> = self.0.iter().map(|d| format!("  {d}")).collect();
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_to_line_and_column() {
        let text = "a = 1\nbb = 2\n";
        let loc = Loc::offset(Path::new("p.toml"), text, 7);
        assert_eq!((loc.line, loc.column), (2, 2));
        assert_eq!(loc.to_string(), "p.toml:2:2");
    }

    #[test]
    fn yaml_error_keeps_location_and_drops_the_repeated_suffix() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u8,
        }
        let err = serde_saphyr::from_str::<S>("a: 1\nb: 2\n").unwrap_err();
        let d = Diagnostic::from_yaml(Path::new("c.yaml"), err);
        assert_eq!(d.loc.line, 2);
        assert!(d.message.starts_with("unknown field `b`"), "{}", d.message);
        assert!(!d.message.contains("at line"), "{}", d.message);
    }

    #[test]
    fn a_parse_error_quotes_a_short_escaped_token_only() {
        let hash = format!("root:$6$saltsalt${}:19000:0:99999:7:::", "A".repeat(86));
        let err =
            serde_saphyr::from_str::<std::collections::BTreeMap<String, u8>>(&format!("{hash}\n"))
                .unwrap_err();
        let d = Diagnostic::from_yaml(Path::new("c.yaml"), err);
        assert!(
            !d.message.contains(&"A".repeat(QUOTE_LIMIT)),
            "{}",
            d.message
        );
        let capped = cap_quoted("unknown field `a`b `c`, expected x");
        assert_eq!(capped, "unknown field `a`b `c`, expected x");
        let long = format!(
            "invalid type: string \"{}\\\"\", expected u8",
            "s".repeat(99)
        );
        assert_eq!(
            cap_quoted(&long),
            format!("invalid type: string \"{}…\", expected u8", "s".repeat(40))
        );
        assert_eq!(cap_quoted("field `\u{1b}[2J`"), "field `\\u{1b}[2J`");
        assert_eq!(cap_quoted("unclosed `abc"), "unclosed `abc");
    }

    #[test]
    fn every_message_and_path_has_its_controls_escaped() {
        let d = Diagnostic::error(
            Loc::new(Path::new("roles/\u{1b}[31m.yaml"), 1, 1),
            "name `a\nb\u{202e}`",
        );
        assert_eq!(
            d.to_string(),
            "roles/\\u{1b}[31m.yaml:1:1: error: name `a\\nb\\u{202e}`"
        );
    }
}

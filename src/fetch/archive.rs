//! Reading the members a role manifest names straight out of a cached
//! `.tar.gz`, without unpacking it to disk. An archive holding an absolute
//! path, a `..` component, a link that points outside the archive, a device
//! node, or the same member twice (`crictl` and `./crictl` are one name:
//! names are normalised) is refused whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

use crate::readahead::ReadAhead;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read archive {archive} ({path})")]
    Read {
        archive: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive {archive} is refused: member `{member}` {why}")]
    Unsafe {
        archive: String,
        member: String,
        why: &'static str,
    },
    #[error(
        "archive {archive} is refused: it holds member `{member}` twice (as `{first}` and `{second}`)"
    )]
    Duplicate {
        archive: String,
        member: String,
        first: String,
        second: String,
    },
    #[error("archive {archive} has no member {}", missing.join(", "))]
    Missing {
        archive: String,
        missing: Vec<String>,
    },
    #[error("archive {archive}: member `{member}` is not a regular file")]
    NotAFile { archive: String, member: String },
    #[error("archive {archive}: cannot use member `{member}`")]
    Consumer {
        archive: String,
        member: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `./a/b`, `a//b`, `a/./b/` and `a/b` name the same member: empty and `.`
/// components go (a leading `/` stays, for the caller to refuse).
pub fn normalize(name: &str) -> String {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let joined = parts.join("/");
    if name.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Every non-directory member seen so far, by normalised name, with the
/// name it had: a second one with the same name refuses the archive.
#[derive(Default)]
struct Seen(BTreeMap<String, String>);

impl Seen {
    fn check(&mut self, label: &str, norm: &str, raw: &str) -> Result<(), ArchiveError> {
        match self.0.get(norm) {
            Some(first) => Err(ArchiveError::Duplicate {
                archive: label.to_string(),
                member: norm.to_string(),
                first: first.clone(),
                second: raw.to_string(),
            }),
            None => {
                self.0.insert(norm.to_string(), raw.to_string());
                Ok(())
            }
        }
    }
}

/// Whether `target`, a link inside `member`'s directory, stays in the archive.
fn link_stays_inside(member: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = member.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Refuses a member with an absolute path, a `..` component, a link that
/// points outside the archive, or that is a device node or fifo.
fn check_member<R: Read>(
    entry: &tar::Entry<R>,
    raw: &Path,
    label: &str,
    io: impl FnOnce(std::io::Error) -> ArchiveError,
) -> Result<(), ArchiveError> {
    let unsafe_ = |why| ArchiveError::Unsafe {
        archive: label.to_string(),
        member: raw.to_string_lossy().into_owned(),
        why,
    };
    if raw.is_absolute() {
        return Err(unsafe_("has an absolute path"));
    }
    if raw.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(unsafe_("has a `..` component"));
    }
    let kind = entry.header().entry_type();
    if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
        return Err(unsafe_("is a device node or fifo"));
    }
    if kind.is_symlink() || kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(io)?
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let inside = if kind.is_hard_link() {
            !target.is_absolute()
                && !target
                    .components()
                    .any(|c| matches!(c, Component::ParentDir))
        } else {
            link_stays_inside(raw, &target)
        };
        if !inside {
            return Err(unsafe_("is a link that points outside the archive"));
        }
    }
    Ok(())
}

/// Streams every member of `wanted` to `consume(member, mode, size, reader)`,
/// in archive order. `label` names the archive in errors (`etcd v3.6.14`).
pub fn read_members<F>(
    path: &Path,
    label: &str,
    wanted: &BTreeSet<String>,
    mut consume: F,
) -> Result<(), ArchiveError>
where
    F: FnMut(&str, u32, u64, &mut dyn Read) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    let io = |source| ArchiveError::Read {
        archive: label.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // inflated on a core of its own while `consume` takes the members
    let gz = GzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut archive = tar::Archive::new(ReadAhead::new(gz).map_err(io)?);
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut seen = Seen::default();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let raw = entry.path().map_err(io)?.into_owned();
        check_member(&entry, &raw, label, io)?;
        let raw = raw.to_string_lossy();
        let norm = normalize(&raw);
        if !entry.header().entry_type().is_dir() {
            seen.check(label, &norm, &raw)?;
        }
        if !wanted.contains(&norm) {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(ArchiveError::NotAFile {
                archive: label.to_string(),
                member: norm,
            });
        }
        let mode = entry.header().mode().map_err(io)?;
        let size = entry.size();
        consume(&norm, mode, size, &mut entry).map_err(|source| ArchiveError::Consumer {
            archive: label.to_string(),
            member: norm.clone(),
            source,
        })?;
        found.insert(norm);
    }
    let missing: Vec<String> = wanted.difference(&found).cloned().collect();
    if !missing.is_empty() {
        return Err(ArchiveError::Missing {
            archive: label.to_string(),
            missing,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_climb_out_are_caught() {
        assert!(link_stays_inside(Path::new("a/b/link"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a/link"), Path::new("c/d")));
        assert!(!link_stays_inside(
            Path::new("a/link"),
            Path::new("../../etc/passwd")
        ));
        assert!(!link_stays_inside(
            Path::new("link"),
            Path::new("/etc/passwd")
        ));
        assert!(!link_stays_inside(Path::new("link"), Path::new("..")));
    }
}

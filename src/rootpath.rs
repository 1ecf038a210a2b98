//! Paths inside an image's root, not the build host's: takes a path and a
//! way to look up the symbolic links of the image, and resolves the path
//! the way the node's kernel will (an absolute link target starts again at
//! the image's `/`, `..` stops at it), without touching the host's files.
//! Paths are relative to the root, without a leading `/`.

/// How many links one resolution follows at most (the kernel's limit).
const MAX_LINKS: usize = 40;

/// `path` with every symbolic link among its components followed (the last
/// one too when `follow_last`) through `link` (a path of the image -> its
/// link's target, if it is a link). `None` when the links loop.
pub(crate) fn resolve<'a>(
    path: &str,
    follow_last: bool,
    link: impl Fn(&str) -> Option<&'a str>,
) -> Option<String> {
    let mut pending: Vec<String> = components(path).rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        done.push(c);
        if pending.is_empty() && !follow_last {
            break;
        }
        let Some(target) = link(&done.join("/")) else {
            continue;
        };
        hops += 1;
        if hops > MAX_LINKS {
            return None;
        }
        done.pop();
        if target.starts_with('/') {
            done.clear();
        }
        pending.extend(components(target).rev().map(str::to_string));
    }
    Some(done.join("/"))
}

/// The components of a path that mean something: no empty one, no `.`.
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// The directory holding `path` (`""` for the root's own entries).
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn links_resolve_inside_the_image() {
        let links: BTreeMap<&str, &str> = [
            ("lib", "usr/lib"),
            ("lib64", "/usr/lib64"),
            ("usr/lib64/ld.so", "../lib/x86_64-linux-gnu/ld.so"),
            ("etc/alternatives/awk", "/usr/bin/mawk"),
            ("usr/bin/awk", "/etc/alternatives/awk"),
            ("loop", "loop2"),
            ("loop2", "/loop"),
            ("up", "../../../.."),
        ]
        .into();
        let get = |p: &str| links.get(p).copied();
        assert_eq!(
            resolve("/lib/systemd/x", false, get).unwrap(),
            "usr/lib/systemd/x"
        );
        assert_eq!(
            resolve("lib64/ld.so", true, get).unwrap(),
            "usr/lib/x86_64-linux-gnu/ld.so"
        );
        assert_eq!(resolve("usr/bin/awk", true, get).unwrap(), "usr/bin/mawk");
        assert_eq!(resolve("usr/bin/awk", false, get).unwrap(), "usr/bin/awk");
        assert_eq!(resolve("up/etc/passwd", true, get).unwrap(), "etc/passwd");
        assert_eq!(resolve("loop", true, get), None);
        assert_eq!(resolve("./a//b/", true, get).unwrap(), "a/b");
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
    }
}

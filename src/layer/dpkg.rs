//! dpkg's records of packages unpacked without dpkg: takes a package's
//! control file and the base's `/var/lib/dpkg/status` and produces the
//! status stanza (`Status: install ok installed`, so `dpkg -l` tells the
//! truth), the merged status file, and the names and lines of
//! `/var/lib/dpkg/info/<package>.list` (dpkg-query(1) `-L` reads them).

/// One package's control file, with the fields dpkg names its files by.
#[derive(Debug, Clone)]
pub(super) struct Control {
    pub(super) package: String,
    pub(super) version: String,
    pub(super) architecture: String,
    /// `Multi-Arch: same`: dpkg's files are `<package>:<arch>.*`.
    pub(super) multi_arch_same: bool,
    /// The control file's text, without trailing blank lines.
    text: String,
}

/// The value of `field` in a control stanza (its first line).
fn field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (!l.starts_with([' ', '\t']) && k.eq_ignore_ascii_case(field)).then(|| v.trim())
    })
}

impl Control {
    /// Parses a control file; `None` when it lacks Package, Version or
    /// Architecture.
    pub(super) fn parse(text: &str) -> Option<Control> {
        let text = text.trim_end_matches(['\n', '\r', ' ', '\t']).to_string();
        Some(Control {
            package: field(&text, "Package")?.to_string(),
            version: field(&text, "Version")?.to_string(),
            architecture: field(&text, "Architecture")?.to_string(),
            multi_arch_same: field(&text, "Multi-Arch") == Some("same"),
            text,
        })
    }

    /// The stem of the package's files in `/var/lib/dpkg/info/`.
    pub(super) fn info_name(&self) -> String {
        if self.multi_arch_same && self.architecture != "all" {
            format!("{}:{}", self.package, self.architecture)
        } else {
            self.package.clone()
        }
    }

    /// The package's stanza in the status file: its control fields with
    /// `Status: install ok installed` after `Package`.
    fn status_stanza(&self) -> String {
        let mut out = String::new();
        for line in self.text.lines() {
            out.push_str(line);
            out.push('\n');
            if field(line, "Package").is_some() && !line.starts_with([' ', '\t']) {
                out.push_str("Status: install ok installed\n");
            }
        }
        out
    }

    /// Whether a stanza of the base's status file is this package (same
    /// name, and the same arch unless neither is `Multi-Arch: same`).
    fn replaces(&self, stanza: &str) -> bool {
        field(stanza, "Package") == Some(self.package.as_str())
            && (!self.multi_arch_same
                || field(stanza, "Multi-Arch") != Some("same")
                || field(stanza, "Architecture") == Some(self.architecture.as_str()))
    }
}

/// The status file: the base's stanzas in their order, a package's own in
/// place of the base's stanza for it, then the packages the base lacks in
/// the order given.
pub(super) fn merge_status(base: &str, packages: &[Control]) -> String {
    let mut placed = vec![false; packages.len()];
    let mut stanzas: Vec<String> = Vec::new();
    for stanza in base.split("\n\n").map(str::trim).filter(|s| !s.is_empty()) {
        match packages.iter().position(|p| p.replaces(stanza)) {
            Some(i) if !placed[i] => {
                placed[i] = true;
                stanzas.push(packages[i].status_stanza());
            }
            Some(_) => {}
            None => stanzas.push(format!("{stanza}\n")),
        }
    }
    for (p, placed) in packages.iter().zip(placed) {
        if !placed {
            stanzas.push(p.status_stanza());
        }
    }
    stanzas.join("\n")
}

/// The whole value of `field` in a control stanza, its continuation
/// lines joined.
fn folded(text: &str, field: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| {
        l.starts_with([' ', '\t'])
            || !l
                .split_once(':')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(field))
    });
    let (_, first) = lines.next()?.split_once(':')?;
    let mut value = first.trim().to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push(' ');
        value.push_str(l.trim());
    }
    Some(value)
}

/// The packages a control file's `Pre-Depends` and `Depends` name, one
/// list per clause with its alternatives (`a | b`) in order, each a bare
/// package name (no version, no `:arch`, no restriction).
pub fn depends(control: &str) -> Vec<Vec<String>> {
    let mut clauses = Vec::new();
    for f in ["Pre-Depends", "Depends"] {
        let Some(value) = folded(control, f) else {
            continue;
        };
        for clause in value.split(',') {
            let alternatives: Vec<String> = clause
                .split('|')
                .filter_map(|a| {
                    let name = a.trim().split([' ', '(', ':', '[', '<']).next()?;
                    (!name.is_empty()).then(|| name.to_string())
                })
                .collect();
            if !alternatives.is_empty() {
                clauses.push(alternatives);
            }
        }
    }
    clauses
}

/// A data member's line in the `.list` file: `/` and its path (dpkg's own
/// `/.` for the root).
pub(super) fn list_line(path: &str) -> String {
    if path.is_empty() {
        "/.".to_string()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: example\n GNU hello.\n .\n More.\n\n";

    #[test]
    fn a_package_is_installed_in_place_of_the_bases_stanza() {
        let hello = Control::parse(HELLO).unwrap();
        assert_eq!(hello.info_name(), "hello");
        let base = "Package: dash\nStatus: install ok installed\nVersion: 0.5\n\nPackage: hello\nStatus: install ok installed\nVersion: 2.9\n\n";
        let merged = merge_status(base, std::slice::from_ref(&hello));
        assert_eq!(
            merged,
            "Package: dash\nStatus: install ok installed\nVersion: 0.5\n\nPackage: hello\nStatus: install ok installed\nVersion: 2.10-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: example\n GNU hello.\n .\n More.\n"
        );
        let fresh = merge_status("", &[hello]);
        assert!(
            fresh.starts_with("Package: hello\nStatus: install ok installed\nVersion: 2.10-3\n")
        );
    }

    #[test]
    fn depends_lists_every_clause_with_its_alternatives_in_order() {
        let control = "Package: nftables\nVersion: 1.0.6\nPre-Depends: init-system-helpers (>= 1.54~)\n\
                       Depends: libc6 (>= 2.34), libnftables1 (= 1.0.6-2+deb12u2),\n libedit2 (>= 3.1) | libreadline8:any,\n\
                       \x20python3:any [amd64] <!nocheck>\nDescription: x\n Depends: not-a-field\n";
        assert_eq!(
            depends(control),
            [
                vec!["init-system-helpers"],
                vec!["libc6"],
                vec!["libnftables1"],
                vec!["libedit2", "libreadline8"],
                vec!["python3"],
            ]
        );
        assert!(depends(HELLO).iter().any(|c| c == &["libc6"]));
        assert!(depends("Package: a\nVersion: 1\n").is_empty());
    }

    #[test]
    fn multi_arch_same_packages_name_their_files_by_arch() {
        let lib = Control::parse(
            "Package: libnftables1\nVersion: 1.0.6\nArchitecture: amd64\nMulti-Arch: same\n",
        )
        .unwrap();
        assert_eq!(lib.info_name(), "libnftables1:amd64");
        let other_arch = "Package: libnftables1\nArchitecture: i386\nMulti-Arch: same\n";
        assert!(!lib.replaces(other_arch));
        assert!(Control::parse("Package: x\n").is_none());
        assert_eq!(list_line(""), "/.");
        assert_eq!(list_line("usr/bin"), "/usr/bin");
    }
}

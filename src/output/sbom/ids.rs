//! SPDX ids and package-URL text: ids made of `[A-Za-z0-9.-]` only (SPDX
//! 2.3 §3.2), derived from names (a name that needs mending gets a hash of
//! itself appended, so two names never share an id), and percent-encoding
//! for purl components.

use sha2::{Digest, Sha256};

/// `name` with every character SPDX ids do not allow made `-`.
pub(super) fn clean(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `SPDXRef-<kind>-<name>`, unique per (kind, name).
pub fn spdx_id(kind: &str, name: &str) -> String {
    let c = clean(name);
    if c == name {
        format!("SPDXRef-{kind}-{c}")
    } else {
        let h = hex::encode(Sha256::digest(name.as_bytes()));
        format!("SPDXRef-{kind}-{c}-{}", &h[..8])
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters (and `/`,
/// which purl keeps in a qualifier's URL).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_only_what_spdx_allows_and_stay_unique() {
        assert_eq!(spdx_id("Deb", "libc6"), "SPDXRef-Deb-libc6");
        let a = spdx_id("Deb", "libstdc++6");
        let b = spdx_id("Deb", "libstdc--6");
        assert!(a.starts_with("SPDXRef-Deb-libstdc--6-"));
        assert_ne!(a, b);
        assert_eq!(pct("1:2.2.7-1+b2"), "1%3A2.2.7-1%2Bb2");
        assert_eq!(pct("https://h/x y"), "https%3A//h/x%20y");
    }
}

//! The one way a value enters a script imgbuild writes: [`sh`] for the
//! POSIX shell (cloud-init's apply-layers), [`ipxe`] for iPXE (boot.ipxe).
//! A leaf: it imports no stage.

/// `s` as one shell word: single-quoted, each `'` written as `'\''`.
pub fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Bytes an iPXE word and a URL may hold as they are: iPXE has no quoting,
/// expands `${...}` everywhere and splits on white space, and `||`, `&&`
/// and `#` are its operators and comments.
fn ipxe_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~/:%@+=,-".contains(&b)
}

/// `s` (a URL or a file name) as one iPXE word: every byte outside the safe
/// set percent-encoded, which a URL means the same by and iPXE cannot
/// misread.
pub fn ipxe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if ipxe_safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether every byte of `s` passes through [`ipxe`] unchanged.
pub fn is_ipxe_safe(s: &str) -> bool {
    s.bytes().all(ipxe_safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_shell_word_survives_dash() {
        for s in [
            "plain",
            "it's",
            "$(reboot)",
            "a b\nc",
            "'; rm -rf / #",
            "`id`",
        ] {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), s);
        }
    }

    #[test]
    fn ipxe_words_hold_no_expansion_space_or_operator() {
        assert_eq!(
            ipxe("http://10.0.0.1:8080/a-b/c"),
            "http://10.0.0.1:8080/a-b/c"
        );
        let hostile = ipxe("http://x/${net0/ip} || shell\nchain x");
        assert!(!hostile.contains('$') && !hostile.contains(' ') && !hostile.contains('\n'));
        assert!(!hostile.contains("||") && !hostile.contains('{'));
        assert!(is_ipxe_safe(&hostile));
    }
}

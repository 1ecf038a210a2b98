//! Private material in bytes that are not the secrets layer: a streaming
//! search for the markers of a PEM private key, a kubeconfig's client key, a
//! bootstrap token, a token.csv line (imgbuild makes none any more; one is
//! still private), a VRRP password and an EncryptionConfiguration (its keys
//! decrypt every Secret at rest), through files of any size (a key appended
//! to a 100 MB binary is found too). In what a pinned base OS brings, the
//! generic PEM and VRRP markers give way to the cluster's own secrets
//! ([`Scope::Os`], [`super::needles`]).

use std::io::{self, Read};

use super::needles::Needle;

const MARKERS: [(&str, &str); 6] = [
    // a PEM block's BEGIN line and its first base64 character: every private
    // key's DER starts with a SEQUENCE (0x30), `M` in base64. The bare string
    // also stands in TLS libraries (GnuTLS, GLib, libssh2) as a constant.
    ("PRIVATE KEY-----\nM", "a PEM private key"),
    ("client-key-data:", "a kubeconfig with a client key"),
    ("token-secret:", "a bootstrap token"),
    ("system:bootstrapper,", "a token.csv line"),
    ("auth_pass ", "a VRRP password"),
    (
        "kind: EncryptionConfiguration",
        "an EncryptionConfiguration (the key to Secrets at rest)",
    ),
];

/// Which markers a scan looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every marker: imgbuild's own layers.
    All,
    /// What a pinned base OS brings (its layers, and the published files
    /// that carry them): without the generic PEM key and VRRP password
    /// markers, which a Debian base holds in its own files (GnuTLS's
    /// self-test keys, keepalived's samples); the cluster's own secrets are
    /// looked for by their needles instead ([`super::needles`]).
    Os,
}

/// Generic markers a pinned base OS holds in its own files.
const OS_OWN: [&str; 2] = ["PRIVATE KEY-----\nM", "auth_pass "];

/// What private material `r` holds, if any, reading it once in chunks.
#[cfg(test)]
pub fn scan(r: impl Read) -> io::Result<Option<String>> {
    scan_for(r, Scope::All, &[])
}

/// [`scan`] with the markers of `scope` and the cluster's own `needles`;
/// a needle found is named by the state file its secret came from, never
/// by its bytes.
pub fn scan_for(mut r: impl Read, scope: Scope, needles: &[Needle]) -> io::Result<Option<String>> {
    let markers = MARKERS
        .iter()
        .filter(|(m, _)| scope == Scope::All || !OS_OWN.contains(m))
        .map(|(m, what)| (m.as_bytes(), (*what).to_string()));
    let own = needles.iter().map(|n| {
        let what = format!("a secret of the cluster's state ({})", n.from.display());
        (n.bytes.as_slice(), what)
    });
    let finders: Vec<(memchr::memmem::Finder<'_>, String)> = markers
        .chain(own)
        .map(|(m, what)| (memchr::memmem::Finder::new(m), what))
        .collect();
    let keep = finders
        .iter()
        .map(|(f, _)| f.needle().len())
        .max()
        .unwrap_or(1)
        - 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0;
    loop {
        let n = r.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(None);
        }
        have += n;
        if let Some((_, what)) = finders.iter().find(|(f, _)| f.find(&buf[..have]).is_some()) {
            return Ok(Some(what.clone()));
        }
        // keep the tail, in case a marker spans two reads
        let tail = have.saturating_sub(keep);
        buf.copy_within(tail..have, 0);
        have -= tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out a few bytes at a time.
    struct Drip<'a>(&'a [u8]);

    impl Read for Drip<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(3).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_marker_is_found_across_reads_and_far_into_a_big_file() {
        let text = b"xx-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\nyy";
        // a TLS library's string constant is no key
        assert_eq!(
            scan(&b"-----BEGIN PRIVATE KEY-----\0-----END"[..]).unwrap(),
            None
        );
        assert_eq!(
            scan_for(&b"auth_pass 1111\n"[..], Scope::Os, &[]).unwrap(),
            None
        );
        // GnuTLS's self-test key in a base OS's library: not the cluster's
        let gnutls = b"\0-----BEGIN RSA PRIVATE KEY-----\nMIICXAIBAAKBgQC7\n";
        assert_eq!(scan_for(&gnutls[..], Scope::Os, &[]).unwrap(), None);
        let ours = Needle {
            bytes: b"MIICXAIBAAKBgQC7".to_vec(),
            from: "state/pki/ca.key".into(),
        };
        assert_eq!(
            scan_for(Drip(gnutls), Scope::Os, &[ours])
                .unwrap()
                .as_deref(),
            Some("a secret of the cluster's state (state/pki/ca.key)")
        );
        assert_eq!(scan(Drip(text)).unwrap(), Some("a PEM private key".into()));
        let mut big = vec![0u8; 5 << 20];
        big.extend_from_slice(b"token-secret: abc");
        assert_eq!(scan(&big[..]).unwrap(), Some("a bootstrap token".into()));
        let config = b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        assert_eq!(
            scan(Drip(config)).unwrap(),
            Some("an EncryptionConfiguration (the key to Secrets at rest)".into())
        );
        assert_eq!(scan(&b"nothing here"[..]).unwrap(), None);
    }
}

//! The cluster's own private material, read from its state directory: what
//! `verify` looks for in what a pinned base OS brings (the `os` and
//! `os-packages` layers, and the published files that carry them), where
//! the generic markers of [`super::scan`] cannot tell: a Debian base holds
//! PEM private keys of its own (GnuTLS's self-test vectors in
//! `libgnutls.so.30`, public) and keepalived's sample `auth_pass`.
//!
//! Each needle is a piece of one secret, long enough not to occur by
//! chance: the first base64 line of every PEM private key (also inside a
//! kubeconfig's `client-key-data`), the VRRP password, the bootstrap
//! token's secret and the encryption keys. Nothing here is ever printed:
//! a finding names the state file the secret came from.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;

/// Shortest secret value taken as a needle (a VRRP password is at most 8).
const MIN_VALUE: usize = 8;
/// A state directory is small: files above this are not secrets.
const MAX_FILE: u64 = 1 << 20;
const MAX_DEPTH: usize = 8;

/// One piece of one secret, and the state file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needle {
    pub bytes: Vec<u8>,
    pub from: PathBuf,
}

/// Every needle of the state directory `state` (files sorted, duplicates
/// dropped); symbolic links and other non-regular files are not followed.
pub fn from_state(state: &Path) -> io::Result<Vec<Needle>> {
    let mut files = Vec::new();
    walk(state, 0, &mut files)?;
    files.sort();
    let mut out: Vec<Needle> = Vec::new();
    for f in files {
        let text = fs::read(&f)?;
        let text = String::from_utf8_lossy(&text);
        for bytes in in_text(&text) {
            if !out.iter().any(|n| n.bytes == bytes) {
                out.push(Needle {
                    bytes,
                    from: f.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), depth + 1, out)?;
        } else if t.is_file() && e.metadata()?.len() <= MAX_FILE {
            out.push(e.path());
        }
    }
    Ok(())
}

/// The needles of one file's text.
fn in_text(text: &str) -> Vec<Vec<u8>> {
    let mut out = pem_key_lines(text);
    for line in text.lines() {
        let line = line.trim();
        let value = ["token-secret:", "secret:", "token:", "auth_pass "]
            .iter()
            .find_map(|k| line.strip_prefix(k))
            .map(|v| v.trim().trim_matches(['"', '\'']));
        if let Some(v) = value.filter(|v| v.len() >= MIN_VALUE) {
            out.push(v.as_bytes().to_vec());
            // a bootstrap token `id.secret`: its secret alone too
            if let Some((_, secret)) = v.split_once('.').filter(|(id, _)| id.len() == 6) {
                out.push(secret.as_bytes().to_vec());
            }
        }
        if let Some(b64) = line.strip_prefix("client-key-data:")
            && let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
        {
            out.extend(pem_key_lines(&String::from_utf8_lossy(&pem)));
        }
    }
    out
}

/// The first base64 line of every PEM private key block of `text`.
fn pem_key_lines(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("-----BEGIN") && line.ends_with("PRIVATE KEY-----") {
            match lines.next().map(str::trim) {
                Some(body) if body.len() >= 40 => out.push(body.as_bytes().to_vec()),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIDmBcN5Bff3nU0ZbJ0jCVcT4rSmHoV6VqvM7AzIRi8QfoAoGCCqGSM49\n\
AwEHoUQDQgAE\n-----END EC PRIVATE KEY-----\n";

    #[test]
    fn the_state_gives_each_secret_once_and_no_public_part() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("pki/etcd")).unwrap();
        fs::write(d.join("pki/ca.key"), KEY).unwrap();
        fs::write(d.join("pki/ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        fs::write(
            d.join("admin.conf"),
            format!("users:\n- user:\n    client-key-data: {b64}\n"),
        )
        .unwrap();
        fs::write(
            d.join("keepalived-auth.conf"),
            "    auth_type PASS\n    auth_pass 6htrqe36\n",
        )
        .unwrap();
        fs::write(
            d.join("kubelet.conf"),
            "    token: 0j3qcv.ae2tsfq2m7sslrok\n",
        )
        .unwrap();
        fs::write(
            d.join("enc.yaml"),
            "kind: EncryptionConfiguration\n  secret: c2VjcmV0\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/ssl", d.join("pki/etcd/link")).unwrap();
        let n = from_state(d).unwrap();
        let text: Vec<String> = n
            .iter()
            .map(|n| String::from_utf8_lossy(&n.bytes).into_owned())
            .collect();
        assert_eq!(
            text,
            [
                "MHcCAQEEIDmBcN5Bff3nU0ZbJ0jCVcT4rSmHoV6VqvM7AzIRi8QfoAoGCCqGSM49",
                "c2VjcmV0",
                "6htrqe36",
                "0j3qcv.ae2tsfq2m7sslrok",
                "ae2tsfq2m7sslrok",
            ]
        );
        // the key is named after the first file that holds it
        assert_eq!(n[0].from, d.join("admin.conf"));
    }
}

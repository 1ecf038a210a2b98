//! Stage 9, `sign`: takes a built output directory and an ECDSA P-256 key the
//! operator holds (PEM: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`) and
//! writes `signatures/`: for the node's OCI image, a cosign simple-signing
//! payload of its manifest digest and its signature (`cosign.payload.json`,
//! `cosign.sig`: base64 of the DER signature, as cosign stores it); for the
//! provenance and the SBOM, in-toto DSSE envelopes (`provenance.dsse.json`
//! of `provenance.intoto.json`; `sbom.dsse.json` of an in-toto statement
//! whose predicate is `sbom.spdx.json`). [`check`] verifies them with the
//! public key (`verify --key`). Signatures are not build outputs: they are
//! not in SHA256SUMS, and a rebuild does not make them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// The directory of an output directory that holds its signatures.
pub const DIR: &str = "signatures";
pub const COSIGN_PAYLOAD: &str = "signatures/cosign.payload.json";
pub const COSIGN_SIG: &str = "signatures/cosign.sig";
pub const PROVENANCE_DSSE: &str = "signatures/provenance.dsse.json";
pub const SBOM_DSSE: &str = "signatures/sbom.dsse.json";
pub const PROVENANCE: &str = "provenance.intoto.json";
pub const SBOM: &str = "sbom.spdx.json";
/// DSSE's payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
const KEY_LIMIT: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ECDSA P-256 {what} in PEM: {reason}")]
    BadKey {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(
        "nothing to sign in {dir}: build with --format oci (the image), or with the SBOM and provenance"
    )]
    Nothing { dir: PathBuf },
    #[error("cannot sign with {path}")]
    Sign { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir}: {problem}")]
    Oci { dir: PathBuf, problem: String },
}

/// A key file: a regular file of at most [`KEY_LIMIT`] bytes.
fn read(path: &Path) -> Result<Vec<u8>, SignError> {
    read_regular(path, KEY_LIMIT, "64 KiB")
}

/// The DER of the first PEM block of `text` whose label is one of `labels`.
fn pem_der(text: &str, labels: &[&str]) -> Option<Vec<u8>> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(a) = text.find(&begin) {
            let rest = &text[a + begin.len()..];
            let body: String = rest[..rest.find(&end)?]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            return B64.decode(body).ok();
        }
    }
    None
}

/// The operator's private key.
pub fn private_key(path: &Path) -> Result<EcdsaKeyPair, SignError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    let bad = |reason: &str| SignError::BadKey {
        path: path.to_path_buf(),
        what: "private key",
        reason: reason.to_string(),
    };
    let der = pem_der(&text, &["PRIVATE KEY", "EC PRIVATE KEY"])
        .ok_or_else(|| bad("no PRIVATE KEY or EC PRIVATE KEY block"))?;
    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
        .map_err(|e| bad(&e.to_string()))
}

/// The public key (`PUBLIC KEY`, SubjectPublicKeyInfo) as its EC point.
pub fn public_key(path: &Path) -> Result<Vec<u8>, SignError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    let bad = |reason: &str| SignError::BadKey {
        path: path.to_path_buf(),
        what: "public key",
        reason: reason.to_string(),
    };
    let der = pem_der(&text, &["PUBLIC KEY"]).ok_or_else(|| bad("no PUBLIC KEY block"))?;
    use x509_parser::prelude::FromDer;
    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).map_err(|e| bad(&e.to_string()))?;
    if spki.algorithm.algorithm.to_id_string() != "1.2.840.10045.2.1" {
        return Err(bad("not an EC key"));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// The key's id in DSSE envelopes: sha256 of its EC point.
fn key_id(point: &[u8]) -> String {
    hex::encode(Sha256::digest(point))
}

/// DSSE's pre-authentication encoding of `body` of `payload_type`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn sign_bytes(key: &EcdsaKeyPair, key_path: &Path, msg: &[u8]) -> Result<Vec<u8>, SignError> {
    key.sign(&SystemRandom::new(), msg)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| SignError::Sign {
            path: key_path.to_path_buf(),
        })
}

/// A DSSE envelope of the in-toto statement `statement`.
fn envelope(key: &EcdsaKeyPair, key_path: &Path, statement: &[u8]) -> Result<String, SignError> {
    let sig = sign_bytes(key, key_path, &pae(IN_TOTO, statement))?;
    let env = serde_json::json!({
        "payloadType": IN_TOTO,
        "payload": B64.encode(statement),
        "signatures": [{"keyid": key_id(key.public_key().as_ref()), "sig": B64.encode(sig)}],
    });
    Ok(format!("{}\n", crate::json::canonical(&env)))
}

/// The manifest digest of the node's own OCI image (not the one with the
/// secrets layer), when the directory has `oci/`.
pub fn image_digest(dir: &Path) -> Result<Option<String>, SignError> {
    let index = dir.join("oci/index.json");
    if !index.is_file() {
        return Ok(None);
    }
    let node = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let oci = |problem: String| SignError::Oci {
        dir: dir.to_path_buf(),
        problem,
    };
    let text = read_limited(&index)?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| oci(format!("oci/index.json: {e}")))?;
    let ms = v["manifests"].as_array().cloned().unwrap_or_default();
    ms.iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(&node))
        .and_then(|m| m["digest"].as_str().map(str::to_string))
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .map(Some)
        .ok_or_else(|| oci(format!("oci/index.json names no image `{node}`")))
}

/// A file of the output directory: a regular file of at most 256 MiB.
fn read_limited(path: &Path) -> Result<Vec<u8>, SignError> {
    read_regular(path, 256 << 20, "256 MiB")
}

/// `path`, when it is a regular file (no link followed) of at most `limit`
/// bytes (`shown` in the error).
fn read_regular(path: &Path, limit: u64, shown: &str) -> Result<Vec<u8>, SignError> {
    let err = |source| SignError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_file() || meta.len() > limit {
        return Err(err(io::Error::other(format!(
            "not a regular file of at most {shown}"
        ))));
    }
    fs::read(path).map_err(err)
}

/// cosign's simple-signing payload for `digest` as `reference`.
pub fn cosign_payload(reference: &str, digest: &str) -> String {
    let p = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    crate::json::canonical(&p)
}

/// The in-toto statement of the SBOM: the image's files as subjects.
fn sbom_statement(dir: &Path, sbom: &[u8]) -> Result<Vec<u8>, SignError> {
    let predicate: serde_json::Value =
        serde_json::from_slice(sbom).map_err(|e| SignError::Oci {
            dir: dir.to_path_buf(),
            problem: format!("{SBOM}: {e}"),
        })?;
    let st = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects(dir)?,
        "predicateType": "https://spdx.dev/Document",
        "predicate": predicate,
    });
    Ok(crate::json::canonical(&st).into_bytes())
}

/// Every file SHA256SUMS lists, as in-toto subjects.
fn subjects(dir: &Path) -> Result<serde_json::Value, SignError> {
    let text = String::from_utf8_lossy(&read_limited(&dir.join(crate::sums::FILE))?).into_owned();
    let (sums, _) = crate::sums::Sums::parse(&text);
    let list: Vec<serde_json::Value> = sums
        .paths()
        .map(|path| serde_json::json!({"name": path, "digest": {"sha256": sums.get(path)}}))
        .collect();
    Ok(serde_json::Value::Array(list))
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), SignError> {
    let path = dir.join(rel);
    crate::fsutil::write_atomic(&path, bytes, 0o644).map_err(|source| SignError::Write {
        path: path.clone(),
        source,
    })
}

/// Signs what `dir` holds (see the module header); returns the files
/// written, relative to `dir`.
pub fn sign(dir: &Path, key_path: &Path, reference: &str) -> Result<Vec<&'static str>, SignError> {
    let key = private_key(key_path)?;
    let out = dir.join(DIR);
    fs::create_dir_all(&out).map_err(|source| SignError::Write {
        path: out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    if let Some(digest) = image_digest(dir)? {
        let payload = cosign_payload(reference, &digest);
        let sig = sign_bytes(&key, key_path, payload.as_bytes())?;
        write(dir, COSIGN_PAYLOAD, payload.as_bytes())?;
        write(dir, COSIGN_SIG, B64.encode(sig).as_bytes())?;
        written.extend([COSIGN_PAYLOAD, COSIGN_SIG]);
    }
    if dir.join(PROVENANCE).is_file() {
        let statement = read_limited(&dir.join(PROVENANCE))?;
        write(
            dir,
            PROVENANCE_DSSE,
            envelope(&key, key_path, &statement)?.as_bytes(),
        )?;
        written.push(PROVENANCE_DSSE);
    }
    if dir.join(SBOM).is_file() {
        let statement = sbom_statement(dir, &read_limited(&dir.join(SBOM))?)?;
        write(
            dir,
            SBOM_DSSE,
            envelope(&key, key_path, &statement)?.as_bytes(),
        )?;
        written.push(SBOM_DSSE);
    }
    if written.is_empty() {
        return Err(SignError::Nothing {
            dir: dir.to_path_buf(),
        });
    }
    Ok(written)
}

/// Every problem of `dir`'s signatures checked with the public key `point`
/// (an EC point of P-256): each must be present for what it signs, valid,
/// and sign what the directory holds now.
pub fn check(dir: &Path, point: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point);
    match image_digest(dir) {
        Ok(Some(digest)) => check_cosign(dir, &key, &digest, &mut problems),
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    if dir.join(PROVENANCE).is_file() {
        let want = read_limited(&dir.join(PROVENANCE)).map_err(|e| e.to_string());
        check_dsse(dir, &key, PROVENANCE_DSSE, want, &mut problems);
    }
    if dir.join(SBOM).is_file() {
        let want = read_limited(&dir.join(SBOM))
            .and_then(|b| sbom_statement(dir, &b))
            .map_err(|e| e.to_string());
        check_dsse(dir, &key, SBOM_DSSE, want, &mut problems);
    }
    problems
}

fn check_cosign(
    dir: &Path,
    key: &UnparsedPublicKey<&[u8]>,
    digest: &str,
    problems: &mut Vec<String>,
) {
    let (payload, sig) = match (
        read_limited(&dir.join(COSIGN_PAYLOAD)),
        read_limited(&dir.join(COSIGN_SIG)),
    ) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return problems.push(format!("the image is not signed: {e}")),
    };
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
    let signed = v["critical"]["image"]["docker-manifest-digest"].as_str();
    if signed != Some(digest) {
        problems.push(format!(
            "{COSIGN_PAYLOAD} signs {}, but the image is {digest}",
            signed.unwrap_or("no digest")
        ));
    }
    let sig = B64
        .decode(String::from_utf8_lossy(&sig).trim())
        .unwrap_or_default();
    if key.verify(&payload, &sig).is_err() {
        problems.push(format!(
            "{COSIGN_SIG}: the signature does not verify with the key"
        ));
    }
}

fn check_dsse(
    dir: &Path,
    key: &UnparsedPublicKey<&[u8]>,
    rel: &str,
    want: Result<Vec<u8>, String>,
    problems: &mut Vec<String>,
) {
    let env = match read_limited(&dir.join(rel)) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default(),
        Err(e) => return problems.push(format!("not signed: {e}")),
    };
    let payload = env["payload"].as_str().and_then(|p| B64.decode(p).ok());
    let Some(payload) = payload.filter(|_| env["payloadType"] == IN_TOTO) else {
        return problems.push(format!(
            "{rel}: not a DSSE envelope of an in-toto statement"
        ));
    };
    match want {
        Ok(w) if w == payload => {}
        Ok(_) => problems.push(format!(
            "{rel} signs another statement than the directory holds"
        )),
        Err(e) => problems.push(e),
    }
    let pae = pae(IN_TOTO, &payload);
    let sigs = env["signatures"].as_array().cloned().unwrap_or_default();
    let ok = sigs.iter().any(|s| {
        let sig = s["sig"]
            .as_str()
            .and_then(|x| B64.decode(x).ok())
            .unwrap_or_default();
        key.verify(&pae, &sig).is_ok()
    });
    if !ok {
        problems.push(format!("{rel}: no signature verifies with the key"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsses_encoding() {
        assert_eq!(
            pae("application/vnd.in-toto+json", b"{}"),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
        );
    }
}

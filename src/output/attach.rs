//! What `push` attaches to the node image it pushed: takes `DIR/signatures/`
//! (`imgbuild sign`) and the pushed manifest, and uploads, each as a manifest
//! whose `subject` is the image (OCI 1.1 referrers):
//! - under cosign's tag `sha256-<hex>.sig`, the simple-signing payload as the
//!   one layer (`application/vnd.dev.cosign.simplesigning.v1+json`) with its
//!   signature in the `dev.cosignproject.cosign/signature` annotation;
//! - under `sha256-<hex>.att`, the DSSE envelopes of the provenance and the
//!   SBOM as layers (`application/vnd.dsse.envelope.v1+json`), each
//!   annotated with its `predicateType`;
//! - under `sha256-<hex>`, the image index OCI 1.1 defines as the referrers
//!   tag schema (for registries without the referrers API), listing both.
//!
//! Produces the tags written.

use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::push::{PushError, put_manifest, upload_bytes};
use crate::fetch::registry::Registry;
use crate::sign;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The image a referrer points at.
pub(crate) struct Subject {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn read(dir: &Path, rel: &str) -> Result<Option<Vec<u8>>, PushError> {
    let path = dir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => std::fs::read(&path)
            .map(Some)
            .map_err(|source| PushError::Read { path, source }),
        _ => Ok(None),
    }
}

/// A referrer manifest of `layers` (media type, bytes, annotations).
fn referrer(
    subject: &Subject,
    artifact_type: &str,
    layers: &[(&str, &[u8], serde_json::Value)],
) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media, bytes, ann)| {
            serde_json::json!({"mediaType": media, "digest": sha256(bytes), "size": bytes.len(), "annotations": ann})
        })
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2},
        "layers": layers,
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    });
    crate::json::canonical(&m).into_bytes()
}

/// A referrer manifest and the blobs its layers name.
type Referrer = (Vec<u8>, Vec<Vec<u8>>);

/// The cosign signature's manifest, when the directory is signed.
fn signature(dir: &Path, subject: &Subject) -> Result<Option<Referrer>, PushError> {
    let (Some(payload), Some(sig)) = (
        read(dir, sign::COSIGN_PAYLOAD)?,
        read(dir, sign::COSIGN_SIG)?,
    ) else {
        return Ok(None);
    };
    let sig = String::from_utf8_lossy(&sig).trim().to_string();
    let ann = serde_json::json!({"dev.cosignproject.cosign/signature": sig});
    let m = referrer(subject, SIG_ARTIFACT, &[(SIMPLESIGNING, &payload, ann)]);
    Ok(Some((m, vec![payload])))
}

/// The attestations' manifest and the envelopes, when there are any.
fn attestations(dir: &Path, subject: &Subject) -> Result<Option<Referrer>, PushError> {
    let mut envs = Vec::new();
    for rel in [sign::PROVENANCE_DSSE, sign::SBOM_DSSE] {
        if let Some(bytes) = read(dir, rel)? {
            envs.push(bytes);
        }
    }
    if envs.is_empty() {
        return Ok(None);
    }
    let layers: Vec<(&str, &[u8], serde_json::Value)> = envs
        .iter()
        .map(|e| {
            (
                DSSE,
                e.as_slice(),
                serde_json::json!({"predicateType": predicate_type(e)}),
            )
        })
        .collect();
    Ok(Some((referrer(subject, DSSE, &layers), envs)))
}

/// The predicate type of the statement a DSSE envelope holds.
fn predicate_type(envelope: &[u8]) -> String {
    let env: serde_json::Value = serde_json::from_slice(envelope).unwrap_or_default();
    let statement = env["payload"]
        .as_str()
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    statement["predicateType"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Uploads what `dir` signed for the image `subject`; returns the tags.
pub(crate) async fn attach(
    client: &mut Registry,
    dir: &Path,
    subject: &Subject,
) -> Result<Vec<String>, PushError> {
    let hex = subject.digest.trim_start_matches("sha256:");
    let mut tags = Vec::new();
    let mut referrers = Vec::new();
    let mut blobs: Vec<Vec<u8>> = vec![b"{}".to_vec()];
    let sig = signature(dir, subject)?;
    let att = attestations(dir, subject)?;
    let mut manifests: Vec<(String, Vec<u8>, &str)> = Vec::new();
    if let Some((m, payload)) = sig {
        blobs.extend(payload);
        manifests.push((format!("sha256-{hex}.sig"), m, SIG_ARTIFACT));
    }
    if let Some((m, envs)) = att {
        blobs.extend(envs);
        manifests.push((format!("sha256-{hex}.att"), m, DSSE));
    }
    if manifests.is_empty() {
        return Ok(tags);
    }
    for b in &blobs {
        upload_bytes(client, &sha256(b), b).await?;
    }
    for (tag, m, artifact) in manifests {
        put_manifest(client, &tag, MANIFEST, &m).await?;
        referrers.push(serde_json::json!({
            "mediaType": MANIFEST, "digest": sha256(&m), "size": m.len(), "artifactType": artifact,
        }));
        tags.push(tag);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": referrers});
    let index = crate::json::canonical(&index).into_bytes();
    let tag = format!("sha256-{hex}");
    put_manifest(client, &tag, INDEX, &index).await?;
    tags.push(tag);
    Ok(tags)
}

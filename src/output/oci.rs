//! `oci/`: the node image as an OCI image layout. One OCI layer per imgbuild
//! layer (the `.tar.gz` files are the layer blobs, hard-linked), a config with
//! their diff_ids, annotations for node, roles, versions and
//! `org.opencontainers.image.created` = SOURCE_DATE_EPOCH. `index.json` names
//! `<node>`, without the secrets layer (what may be published), and only
//! when asked (`--oci-with-secrets`), `<node>-with-secrets`: generic OCI
//! tools copy a layout whole, so the secrets layer's blob is not in it
//! unless asked for. Every byte is reproducible. [`index`] writes the small
//! files (config, manifests, index), [`link_blobs`] the layer blobs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageJson;
use crate::layer::BuiltLayer;
use crate::plan::LayerKind;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

fn put(blobs: &Path, bytes: &[u8]) -> io::Result<(String, usize)> {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(blobs.join(&hex), bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

pub(crate) fn rfc3339(sde: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(sde)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// One manifest over `layers`; returns its descriptor.
fn manifest(
    blobs: &Path,
    image: &ImageJson,
    layers: &[&BuiltLayer],
    sde: i64,
    tag: &str,
) -> io::Result<serde_json::Value> {
    let created = rfc3339(sde);
    let config = json!({
        "architecture": image.arch,
        "os": "linux",
        "created": created,
        "config": {"Labels": {"io.imgbuild.node": image.node, "io.imgbuild.cluster": image.cluster}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.diff_id)).collect::<Vec<_>>()},
        "history": layers.iter().map(|l| json!({"created": created, "created_by": format!("imgbuild layer {}", l.name)})).collect::<Vec<_>>(),
    });
    let config = crate::json::canonical(&config);
    let (config_digest, config_size) = put(blobs, config.as_bytes())?;
    let mut annotations = BTreeMap::new();
    annotations.insert("org.opencontainers.image.created".to_string(), created);
    annotations.insert(
        "org.opencontainers.image.title".to_string(),
        image.node.clone(),
    );
    annotations.insert("io.imgbuild.node".to_string(), image.node.clone());
    annotations.insert("io.imgbuild.cluster".to_string(), image.cluster.clone());
    annotations.insert("io.imgbuild.roles".to_string(), image.roles.join(","));
    for (k, v) in &image.versions {
        annotations.insert(format!("io.imgbuild.version.{k}"), v.clone());
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.compression.oci_layer_type(),
            "digest": format!("sha256:{}", l.digest),
            "size": l.size,
            "annotations": {"io.imgbuild.layer": l.name},
        })).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    let m = crate::json::canonical(&m);
    let (digest, size) = put(blobs, m.as_bytes())?;
    Ok(json!({
        "mediaType": MANIFEST_TYPE,
        "digest": digest,
        "size": size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }))
}

/// The layers the layout holds: all of them `with_secrets`, else all but
/// the secrets layer.
pub fn included(layers: &[BuiltLayer], with_secrets: bool) -> Vec<&BuiltLayer> {
    layers
        .iter()
        .filter(|l| with_secrets || l.kind != LayerKind::Secrets)
        .collect()
}

/// The tag of the image with the secrets layer.
pub fn with_secrets_tag(node: &str) -> String {
    format!("{node}-with-secrets")
}

/// Whether the OCI layout of the output directory `dir` has the image with
/// the secrets layer (for `verify --rebuild`: the layout was built with
/// `--oci-with-secrets`).
pub fn has_with_secrets(dir: &Path) -> bool {
    let tag = with_secrets_tag(&dir.file_name().unwrap_or_default().to_string_lossy());
    fs::read_to_string(dir.join("oci/index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .is_some_and(|ms| {
            ms.iter().any(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag.as_str())
            })
        })
}

/// The small files of `out/oci/`: the config and manifest blobs of
/// `<node>` (and of `<node>-with-secrets` when `with_secrets` and the node
/// has a secrets layer), `index.json` and `oci-layout`. Returns the digest
/// of `<node>`'s manifest (`sha256:<hex>`).
pub fn index(
    out: &Path,
    image: &ImageJson,
    layers: &[BuiltLayer],
    sde: i64,
    with_secrets: bool,
) -> io::Result<String> {
    let dir = out.join("oci");
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let public = included(layers, false);
    let node = &image.node;
    let mut manifests = vec![manifest(&blobs, image, &public, sde, node)?];
    let digest = manifests[0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if with_secrets && public.len() != layers.len() {
        let all = included(layers, true);
        let tag = with_secrets_tag(node);
        manifests.push(manifest(&blobs, image, &all, sde, &tag)?);
    }
    let index = crate::json::canonical(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
    );
    fs::write(dir.join("index.json"), index)?;
    fs::write(
        dir.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}\n",
    )?;
    Ok(digest)
}

/// The layer blobs of `out/oci/` (the secrets layer only `with_secrets`):
/// hard links to the layer files where the filesystem allows.
pub fn link_blobs(out: &Path, layers: &[BuiltLayer], with_secrets: bool) -> io::Result<()> {
    let blobs = out.join("oci/blobs/sha256");
    fs::create_dir_all(&blobs)?;
    for l in included(layers, with_secrets) {
        let dest = blobs.join(&l.digest);
        let src = out.join("layers").join(l.tar_name());
        let src = if src.is_file() { src } else { l.file.clone() };
        super::link_or_copy(&src, &dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn layer(name: &str, kind: LayerKind) -> BuiltLayer {
        BuiltLayer {
            name: name.into(),
            kind,
            key: name.into(),
            compression: crate::pgzip::Compression::Gzip,
            digest: format!("{:0>64}", name.len()),
            size: 1,
            diff_id: "0".repeat(64),
            file: PathBuf::new(),
            segment: None,
            segment_bytes: None,
            segment_digest: None,
            segment_size: None,
            files_digest: None,
            files: None,
        }
    }

    #[test]
    fn the_secrets_layer_is_in_the_layout_only_when_asked() {
        let layers = [
            layer("00-base", LayerKind::Base),
            layer("01-secrets", LayerKind::Secrets),
        ];
        let names = |v: Vec<&BuiltLayer>| v.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(included(&layers, false)), ["00-base"]);
        assert_eq!(names(included(&layers, true)), ["00-base", "01-secrets"]);
    }
}

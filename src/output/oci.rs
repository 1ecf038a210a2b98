//! `oci/`: the node image as an OCI image layout. One OCI layer per imgbuild
//! layer (the `.tar.gz` files are the layer blobs, hard-linked), a config with
//! their diff_ids, annotations for node, roles, versions and
//! `org.opencontainers.image.created` = SOURCE_DATE_EPOCH. `index.json` names
//! two manifests: `<node>` without the secrets layer (what may be published)
//! and `<node>-with-secrets`. Every byte is reproducible.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageJson;
use crate::layer::BuiltLayer;
use crate::plan::LayerKind;

pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

fn put(blobs: &Path, bytes: &[u8]) -> io::Result<(String, usize)> {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(blobs.join(&hex), bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

fn rfc3339(sde: i64) -> String {
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
            "mediaType": LAYER_TYPE,
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

pub fn write(out: &Path, image: &ImageJson, layers: &[BuiltLayer], sde: i64) -> io::Result<()> {
    let dir = out.join("oci");
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    for l in layers {
        let dest = blobs.join(&l.digest);
        let src = out.join("layers").join(format!("{}.tar.gz", l.name));
        let src = if src.is_file() { src } else { l.file.clone() };
        if fs::hard_link(&src, &dest).is_err() {
            fs::copy(&src, &dest)?;
        }
    }
    let public: Vec<&BuiltLayer> = layers
        .iter()
        .filter(|l| l.kind != LayerKind::Secrets)
        .collect();
    let all: Vec<&BuiltLayer> = layers.iter().collect();
    let node = &image.node;
    let mut manifests = vec![manifest(&blobs, image, &public, sde, node)?];
    if public.len() != all.len() {
        manifests.push(manifest(
            &blobs,
            image,
            &all,
            sde,
            &format!("{node}-with-secrets"),
        )?);
    }
    let index = crate::json::canonical(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
    );
    fs::write(dir.join("index.json"), index)?;
    fs::write(
        dir.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}\n",
    )?;
    Ok(())
}

//! `provenance.intoto.json`: takes a plan, image.json, the build options and
//! the digests of the files written before it, and produces an in-toto
//! Statement v1 whose predicate is SLSA provenance v1
//! (<https://slsa.dev/spec/v1.0/provenance>): the subjects are the node
//! image's files by sha256 (image.json, the SBOM, every layer, the OCI
//! manifest), the build definition names imgbuild's build type
//! ([`BUILD_TYPE`], docs/sbom.md), the external parameters (the target,
//! the sha256 of its plan as `imgbuild plan --json` prints it, the formats,
//! the seed mode, SOURCE_DATE_EPOCH) and every resolved dependency (each
//! pinned artifact, `.deb` and image with its digest); the run details name
//! imgbuild and its version, and the invocation id, start and finish are
//! functions of the inputs (SOURCE_DATE_EPOCH), so the bytes are the same
//! on every build.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ImageJson, Options};
use crate::manifest::{Checksum, Manifests};
use crate::plan::Plan;

/// The file's name in an output directory.
pub const FILE: &str = "provenance.intoto.json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// imgbuild's build type: what the external parameters mean (docs/sbom.md).
pub const BUILD_TYPE: &str = "https://imgbuild.invalid/build-types/node-image/v1";
/// The builder's id, with imgbuild's version appended.
pub const BUILDER: &str = "https://imgbuild.invalid/builder/imgbuild";

/// What the statement is made from.
pub struct Input<'a> {
    pub m: &'a Manifests,
    pub plan: &'a Plan,
    pub image: &'a ImageJson,
    pub opts: &'a Options,
    /// The files written before it (image.json, the SBOM, the OCI
    /// manifest blob): relative path -> sha256.
    pub files: &'a BTreeMap<String, String>,
}

fn digest_set(c: &Checksum) -> Value {
    match c {
        Checksum::Sha256(h) => json!({ "sha256": h }),
        Checksum::Sha512(h) => json!({ "sha512": h }),
    }
}

/// Every subject: the files given, and every layer of image.json.
fn subjects(input: &Input<'_>) -> Vec<Value> {
    let mut subjects: BTreeMap<String, String> = input.files.clone();
    for l in &input.image.layers {
        subjects.insert(
            l.file.clone(),
            l.digest.trim_start_matches("sha256:").into(),
        );
    }
    subjects
        .into_iter()
        .map(|(name, sha)| json!({ "name": name, "digest": { "sha256": sha } }))
        .collect()
}

/// Every pin the plan resolved: artifacts, `.deb`s and images.
fn resolved_dependencies(input: &Input<'_>) -> Vec<Value> {
    let (m, plan) = (input.m, input.plan);
    let mut out = Vec::new();
    for name in plan.artifacts() {
        if let Some(p) = m.pins.artifact(name, plan.arch) {
            out.push(json!({
                "uri": p.url, "digest": digest_set(&p.checksum), "name": p.name,
                "annotations": { "version": p.version, "kind": "artifact" },
            }));
        }
    }
    for package in plan.debs() {
        if let Some(p) = m.pins.deb(package, plan.arch) {
            out.push(json!({
                "uri": p.url, "digest": digest_set(&p.checksum), "name": p.package,
                "annotations": { "version": p.version, "kind": "deb" },
            }));
        }
    }
    for name in plan.images() {
        if let Some(p) = m.pins.image(name) {
            let hex = p.digest.trim_start_matches("sha256:");
            out.push(json!({
                "uri": format!("oci://{}", p.reference()), "digest": { "sha256": hex },
                "name": p.name,
                "annotations": { "version": p.version, "kind": "image", "arch": plan.arch.to_string() },
            }));
        }
    }
    out
}

/// The statement, as canonical JSON.
pub fn statement(input: &Input<'_>) -> String {
    let (image, opts) = (input.image, input.opts);
    let plan_digest = hex::encode(Sha256::digest(input.plan.to_json().as_bytes()));
    let time = super::oci::rfc3339(image.source_date_epoch);
    let subjects = subjects(input);
    let invocation = hex::encode(Sha256::digest(
        serde_json::to_string(&subjects)
            .unwrap_or_default()
            .as_bytes(),
    ));
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "target": image.node,
                    "kind": image.kind,
                    "cluster": image.cluster,
                    "arch": image.arch,
                    "plan": { "digest": { "sha256": plan_digest } },
                    "formats": image.build.formats,
                    "seedLayers": image.build.seed_layers,
                    "ociWithSecrets": opts.oci_with_secrets,
                    "pxeSecrets": opts.pxe_secrets,
                    "sourceDateEpoch": image.source_date_epoch,
                },
                "internalParameters": {
                    "layerFormat": crate::layer::FORMAT,
                    "gzipLevel": crate::layer::GZIP_LEVEL,
                },
                "resolvedDependencies": resolved_dependencies(input),
            },
            "runDetails": {
                "builder": {
                    "id": format!("{BUILDER}@{}", image.build.imgbuild),
                    "version": { "imgbuild": image.build.imgbuild },
                },
                "metadata": {
                    "invocationId": format!("urn:imgbuild:invocation:{}", &invocation[..32]),
                    "startedOn": time,
                    "finishedOn": time,
                },
            },
        },
    });
    crate::json::canonical(&statement)
}

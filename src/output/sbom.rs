//! `sbom.spdx.json`: takes a plan, its built layers (each with its file
//! listing, [`crate::layer::Listing`]) and image.json, and produces the
//! node image's SPDX 2.3 JSON document: a package for the node, one per
//! layer (CONTAINS every regular file of the layer, each with its sha1 and
//! sha256; the secrets layer's files are not listed), one per pinned
//! artifact (`pkg:generic`), per pinned image (`pkg:oci`) and per Debian
//! package the image's own dpkg status says is installed (`pkg:deb`, the
//! distro from the image's os-release). A file whose bytes are a pinned
//! input's is EXPANDED_FROM_ARCHIVE that input (GENERATED_FROM for an
//! image's OCI archive); a layer is GENERATED_FROM every input its files
//! came from. Every id, the namespace and `created` are functions of the
//! inputs (image.json's sha256, SOURCE_DATE_EPOCH): two builds give the
//! same bytes. docs/sbom.md says what is in it.

use std::collections::BTreeSet;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ImageJson;
use crate::layer::{BuiltLayer, Listing, Origin};
use crate::manifest::{Checksum, Manifests};
use crate::plan::{LayerKind, Plan};

mod deb;
mod ids;

pub use ids::{pct, spdx_id};

/// The file's name in an output directory.
pub const FILE: &str = "sbom.spdx.json";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<Package>,
    files: Vec<File>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Package {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_file_name: Option<String>,
    download_location: String,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_verification_code: Option<VerificationCode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Sum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerificationCode {
    package_verification_code_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    file_name: String,
    checksums: [Sum; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

fn rel(from: &str, kind: &'static str, to: &str) -> Relationship {
    Relationship {
        spdx_element_id: from.to_string(),
        relationship_type: kind,
        related_spdx_element: to.to_string(),
    }
}

fn purl(locator: String) -> Vec<ExternalRef> {
    vec![ExternalRef {
        reference_category: "PACKAGE-MANAGER",
        reference_type: "purl",
        reference_locator: locator,
    }]
}

fn checksum(c: &Checksum) -> Sum {
    match c {
        Checksum::Sha256(h) => Sum {
            algorithm: "SHA256",
            checksum_value: h.clone(),
        },
        Checksum::Sha512(h) => Sum {
            algorithm: "SHA512",
            checksum_value: h.clone(),
        },
    }
}

fn sha256_sum(hex: &str) -> Sum {
    Sum {
        algorithm: "SHA256",
        checksum_value: hex.trim_start_matches("sha256:").to_string(),
    }
}

/// What the SBOM is made from.
pub struct Input<'a> {
    pub m: &'a Manifests,
    pub plan: &'a Plan,
    pub layers: &'a [BuiltLayer],
    pub image: &'a ImageJson,
    /// sha256 of image.json.
    pub image_digest: &'a str,
}

/// The SPDX id of the package of an input.
fn origin_id(o: &Origin) -> String {
    match o {
        Origin::Artifact(n) => spdx_id("Artifact", n),
        Origin::Image(n) => spdx_id("Image", n),
        Origin::Deb(n) => spdx_id("Deb", n),
    }
}

/// The node image's SPDX 2.3 document, as canonical JSON bytes.
pub fn spdx(input: &Input<'_>) -> Vec<u8> {
    let image = input.image;
    let node_id = "SPDXRef-Node".to_string();
    let mut packages = vec![node_package(input, &node_id)];
    let mut rels = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", &node_id)];
    packages.extend(artifact_packages(input));
    packages.extend(image_packages(input));
    let (debs, deb_rels) = deb::packages(input);
    let mut files = Vec::new();
    for l in input.layers {
        let layer_id = spdx_id("Layer", &l.name);
        rels.push(rel(&node_id, "CONTAINS", &layer_id));
        let (p, mut f, r) = layer(l, &layer_id);
        packages.push(p);
        files.append(&mut f);
        rels.extend(r);
    }
    packages.extend(debs);
    rels.extend(deb_rels);
    let doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: format!("{}-{}", image.cluster, image.node),
        document_namespace: format!(
            "https://imgbuild.invalid/spdx/{}/{}-{}",
            pct(&image.cluster),
            pct(&image.node),
            input.image_digest
        ),
        creation_info: CreationInfo {
            created: super::oci::rfc3339(image.source_date_epoch),
            creators: vec![format!("Tool: imgbuild-{}", image.build.imgbuild)],
        },
        packages,
        files,
        relationships: rels,
    };
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

fn node_package(input: &Input<'_>, id: &str) -> Package {
    let image = input.image;
    Package {
        spdx_id: id.to_string(),
        name: image.node.clone(),
        version_info: Some(format!("sha256:{}", input.image_digest)),
        package_file_name: Some("image.json".into()),
        download_location: "NOASSERTION".into(),
        checksums: vec![sha256_sum(input.image_digest)],
        primary_package_purpose: Some(
            if input.plan.layers.iter().any(|l| l.kind == LayerKind::Os) {
                "OPERATING-SYSTEM"
            } else {
                "INSTALL"
            },
        ),
        comment: Some(format!(
            "imgbuild node image {} ({:?}) of cluster {}, roles {}, arch {}, Kubernetes {}",
            image.node,
            image.kind,
            image.cluster,
            image.roles.join(","),
            image.arch,
            input.m.cluster.kubernetes_version
        )),
        ..Package::default()
    }
}

fn artifact_packages(input: &Input<'_>) -> Vec<Package> {
    let mut out = Vec::new();
    for name in input.plan.artifacts() {
        let Some(pin) = input.m.pins.artifact(name, input.plan.arch) else {
            continue;
        };
        let locator = format!(
            "pkg:generic/{}@{}?download_url={}",
            pct(&pin.name),
            pct(&pin.version),
            pct(&pin.url)
        );
        out.push(Package {
            spdx_id: spdx_id("Artifact", &pin.name),
            name: pin.name.clone(),
            version_info: Some(pin.version.clone()),
            download_location: pin.url.clone(),
            checksums: vec![checksum(&pin.checksum)],
            primary_package_purpose: Some("ARCHIVE"),
            external_refs: purl(locator),
            comment: Some(format!("pinned in pins.toml; source {}", pin.source)),
            ..Package::default()
        });
    }
    out
}

fn image_packages(input: &Input<'_>) -> Vec<Package> {
    let mut out = Vec::new();
    for name in input.plan.images() {
        let Some(pin) = input.m.pins.image(name) else {
            continue;
        };
        let (registry, repo, tag) = crate::fetch::registry::split_reference(&pin.image);
        let last = repo.rsplit('/').next().unwrap_or(&repo).to_lowercase();
        let locator = format!(
            "pkg:oci/{}@{}?arch={}&repository_url={}&tag={}",
            pct(&last),
            pct(&pin.digest),
            input.plan.arch,
            pct(&format!("{registry}/{repo}")),
            pct(&tag)
        );
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry.as_str()
        };
        out.push(Package {
            spdx_id: spdx_id("Image", &pin.name),
            name: pin.name.clone(),
            version_info: Some(pin.version.clone()),
            download_location: format!("https://{host}/v2/{repo}/manifests/{}", pin.digest),
            checksums: vec![sha256_sum(&pin.digest)],
            primary_package_purpose: Some("CONTAINER"),
            external_refs: purl(locator),
            comment: Some(format!("{} (the multi-arch index)", pin.reference())),
            ..Package::default()
        });
    }
    out
}

/// A layer's package, its files and its relationships.
fn layer(l: &BuiltLayer, id: &str) -> (Package, Vec<File>, Vec<Relationship>) {
    let mut p = Package {
        spdx_id: id.to_string(),
        name: l.name.clone(),
        package_file_name: Some(format!("layers/{}", l.tar_name())),
        download_location: "NOASSERTION".into(),
        checksums: vec![sha256_sum(&l.digest)],
        primary_package_purpose: Some("ARCHIVE"),
        ..Package::default()
    };
    let empty = Listing::default();
    let listing = l.files.as_deref().unwrap_or(&empty);
    if l.kind == LayerKind::Secrets {
        p.comment = Some("the node's private keys and tokens: its files are not listed".into());
        return (p, Vec::new(), Vec::new());
    }
    let mut files = Vec::with_capacity(listing.files.len());
    let mut rels = Vec::with_capacity(listing.files.len() * 2);
    let mut sha1s = Vec::with_capacity(listing.files.len());
    let mut origins = BTreeSet::new();
    for f in &listing.files {
        let file_id = format!(
            "SPDXRef-File-{}-{}",
            ids::clean(&l.name),
            &hex::encode(Sha256::digest(f.path.as_bytes()))[..24]
        );
        rels.push(rel(id, "CONTAINS", &file_id));
        if let Some(o) = &f.origin {
            let kind = match o {
                Origin::Image(_) => "GENERATED_FROM",
                _ => "EXPANDED_FROM_ARCHIVE",
            };
            rels.push(rel(&file_id, kind, &origin_id(o)));
            origins.insert(o.clone());
        }
        sha1s.push(f.sha1.as_str());
        files.push(File {
            spdx_id: file_id,
            file_name: format!("./{}", f.path),
            checksums: [
                Sum {
                    algorithm: "SHA1",
                    checksum_value: f.sha1.clone(),
                },
                sha256_sum(&f.sha256),
            ],
        });
    }
    for o in &origins {
        rels.push(rel(id, "GENERATED_FROM", &origin_id(o)));
    }
    p.files_analyzed = true;
    p.package_verification_code = Some(verification_code(sha1s));
    (p, files, rels)
}

/// SPDX 2.3 §7.9: the sha1 of the files' sha1s, sorted and concatenated.
fn verification_code(mut sha1s: Vec<&str>) -> VerificationCode {
    sha1s.sort_unstable();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for s in sha1s {
        ctx.update(s.as_bytes());
    }
    VerificationCode {
        package_verification_code_value: hex::encode(ctx.finish().as_ref()),
    }
}

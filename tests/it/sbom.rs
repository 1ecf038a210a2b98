//! The SBOM (`sbom.spdx.json`, SPDX 2.3) and the provenance
//! (`provenance.intoto.json`, an in-toto Statement v1 with a SLSA
//! provenance v1 predicate) of real lab builds, with and without a base
//! OS: judged by `pyspdxtools` (spdx-tools from PyPI) and by the
//! in-toto-attestation package's protobuf schema and validator, and
//! checked against the layers themselves, `dpkg-query` on the extracted
//! root, `sha256sum` of the subjects and `imgbuild plan --json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::base_os::{extract_os, os_lab};
use crate::build::{build, synthetic};
use crate::images::{lab_with_images, run};
use crate::judge::{judge, py_judge};
use crate::pxe::{base_tar, whole};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `pyspdxtools -i FILE`: parses and validates SPDX 2.3; silent and 0 when
/// the document is valid.
fn spdx_is_valid(file: &Path) {
    let out = py_judge("pyspdxtools").arg("-i").arg(file).ok();
    assert!(!out.contains("Invalid"), "{out}");
}

/// Every regular file of a layer tar.gz: path -> sha256 (what `tar -xzf`
/// then `sha256sum` would say).
fn layer_files(layer: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let f = std::fs::File::open(layer).unwrap();
    let mut ar = tar::Archive::new(GzDecoder::new(f));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.insert(path, hex::encode(Sha256::digest(&bytes)));
    }
    out
}

/// The SBOM's files per layer: layer name -> path -> sha256.
fn sbom_files(doc: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for f in doc["files"].as_array().unwrap() {
        let sha = f["checksums"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["algorithm"] == "SHA256")
            .unwrap();
        let name = f["fileName"].as_str().unwrap().trim_start_matches("./");
        files.insert(
            f["SPDXID"].as_str().unwrap().to_string(),
            (
                name.to_string(),
                sha["checksumValue"].as_str().unwrap().to_string(),
            ),
        );
    }
    let names: BTreeMap<&str, &str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["SPDXID"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in relationships(doc, "CONTAINS") {
        if let Some((path, sha)) = files.get(&r.1) {
            out.entry(names[r.0.as_str()].to_string())
                .or_default()
                .insert(path.clone(), sha.clone());
        }
    }
    out
}

/// Every relationship of a type, (from, to).
fn relationships(doc: &serde_json::Value, kind: &str) -> Vec<(String, String)> {
    doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == kind)
        .map(|r| {
            (
                r["spdxElementId"].as_str().unwrap().to_string(),
                r["relatedSpdxElement"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The purls of the document's packages.
fn purls(doc: &serde_json::Value) -> BTreeSet<String> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["externalRefs"].as_array().cloned().unwrap_or_default())
        .map(|r| r["referenceLocator"].as_str().unwrap().to_string())
        .collect()
}

/// Every file of every layer but the secrets is in the SBOM with the sha256
/// its bytes have in the layer; the secrets layer lists none.
fn every_layer_file_is_listed(dir: &Path, doc: &serde_json::Value) {
    let listed = sbom_files(doc);
    let image = json(&dir.join("image.json"));
    for l in image["layers"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        let actual = layer_files(&dir.join(l["file"].as_str().unwrap()));
        if name.ends_with("-secrets") {
            assert!(!listed.contains_key(name), "{name}'s files are listed");
            continue;
        }
        assert!(!actual.is_empty(), "{name} has no file");
        assert_eq!(listed.get(name), Some(&actual), "layer {name}");
    }
}

#[test]
fn a_nodes_sbom_is_valid_spdx_naming_every_input_image_and_file() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "master01", "--format", "layers,oci"],
        &[],
    )
    .assert_ok();
    let dir = lab.path("out/master01");
    let file = dir.join("sbom.spdx.json");
    spdx_is_valid(&file);
    let doc = json(&file);
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    every_layer_file_is_listed(&dir, &doc);
    let purls = purls(&doc);
    let image = json(&dir.join("image.json"));
    for input in image["inputs"].as_array().unwrap() {
        let (name, version) = (
            input["artifact"].as_str().unwrap(),
            input["version"].as_str().unwrap(),
        );
        let url = input["url"].as_str().unwrap();
        let want = format!(
            "pkg:generic/{name}@{version}?download_url={}",
            url.replace(':', "%3A")
        );
        assert!(purls.contains(&want), "no {want} in {purls:?}");
        let p = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(p["downloadLocation"], url);
        let (algo, sum) = input["checksum"].as_str().unwrap().split_once(':').unwrap();
        assert_eq!(p["checksums"][0]["algorithm"], algo.to_uppercase());
        assert_eq!(p["checksums"][0]["checksumValue"], sum);
    }
    // node -> layers; a file from an artifact names it
    let contains = relationships(&doc, "CONTAINS");
    assert!(contains.contains(&("SPDXRef-Node".into(), "SPDXRef-Layer-00-base".into())));
    let expanded = relationships(&doc, "EXPANDED_FROM_ARCHIVE");
    assert!(
        expanded.iter().any(|(_, to)| to == "SPDXRef-Artifact-etcd"),
        "{expanded:?}"
    );
}

#[test]
fn an_sbom_names_each_baked_image_by_its_pinned_digest() {
    let (lab, server, reg, _) = lab_with_images();
    run(&lab, &server, &reg, &["node", "--role", "node01"]).assert_ok();
    let file = lab.path("out/node01/sbom.spdx.json");
    spdx_is_valid(&file);
    let doc = json(&file);
    let purls = purls(&doc);
    let pins = lab.read("pins.toml");
    for name in ["pause", "coredns", "flannel"] {
        let pin = pins
            .split("[[image]]")
            .find(|s| s.contains(&format!("name = \"{name}\"")))
            .unwrap();
        let digest = pin.split("digest = \"").nth(1).unwrap();
        let digest = digest.split('"').next().unwrap().replace(':', "%3A");
        let want = format!("pkg:oci/{name}@{digest}?arch=amd64&repository_url=");
        assert!(
            purls.iter().any(|p| p.starts_with(&want)),
            "no {want}* in {purls:?}"
        );
    }
    // the image's OCI archive in the worker layer was made from it
    let generated = relationships(&doc, "GENERATED_FROM");
    assert!(
        generated.iter().any(|(_, to)| to == "SPDXRef-Image-pause"),
        "{generated:?}"
    );
}

#[test]
fn a_whole_nodes_sbom_lists_the_debian_packages_dpkg_knows() {
    let (lab, server) = os_lab(true);
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers"],
        &[],
    )
    .assert_ok();
    let dir = lab.path("out/node01");
    let file = dir.join("sbom.spdx.json");
    spdx_is_valid(&file);
    let doc = json(&file);
    every_layer_file_is_listed(&dir, &doc);
    let root = extract_os(&dir, &lab.path("root"));
    let admin = format!("--admindir={}", root.join("var/lib/dpkg").display());
    let shown = judge("dpkg-query")
        .arg(&admin)
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\\n",
        ])
        .ok();
    let purls = purls(&doc);
    let debs: BTreeSet<&String> = purls.iter().filter(|p| p.starts_with("pkg:deb/")).collect();
    let mut want = BTreeSet::new();
    for l in shown.lines().filter(|l| l.starts_with("ii ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let version = f[2].replace(':', "%3A").replace('+', "%2B");
        want.insert(format!("pkg:deb/debian/{}@{version}?arch={}", f[1], f[3]));
    }
    assert!(want.len() > 5, "{shown}");
    let got: BTreeSet<String> = debs
        .iter()
        .map(|p| p.split("&distro").next().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    // a pinned .deb carries its pin's URL and checksum; its files name it
    let nft = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "nftables")
        .unwrap();
    assert!(
        nft["downloadLocation"].as_str().unwrap().ends_with(".deb"),
        "{nft}"
    );
    assert_eq!(nft["checksums"][0]["algorithm"], "SHA256");
    let expanded = relationships(&doc, "EXPANDED_FROM_ARCHIVE");
    assert!(expanded.iter().any(|(_, to)| to == "SPDXRef-Deb-nftables"));
    assert!(
        expanded
            .iter()
            .any(|(_, to)| to == "SPDXRef-Artifact-debian-base")
    );
}

#[test]
fn a_pxe_whole_nodes_sbom_with_stand_in_debs_is_valid_spdx() {
    let (lab, server) = synthetic();
    let lab = whole(lab, &server, &base_tar(true));
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers,pxe"],
        &[],
    )
    .assert_ok();
    let dir = lab.path("out/node01");
    spdx_is_valid(&dir.join("sbom.spdx.json"));
    let doc = json(&dir.join("sbom.spdx.json"));
    every_layer_file_is_listed(&dir, &doc);
    assert!(purls(&doc).iter().any(|p| p.starts_with("pkg:deb/")));
}

/// The in-toto-attestation package judges the statement: its protobuf
/// schema parses the Statement and the SLSA v1 Provenance predicate
/// (unknown fields and wrong types are refused), and its validators check
/// the statement and every resource descriptor.
const INTOTO_JUDGE: &str = r#"
import json, sys
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
text = open(sys.argv[1]).read()
st = json_format.Parse(text, statement_pb2.Statement())
Statement.copy_from_pb(st).validate()
pred = json_format.Parse(json.dumps(json.loads(text)["predicate"]), provenance_pb2.Provenance())
for rd in pred.build_definition.resolved_dependencies:
    ResourceDescriptor.copy_from_pb(rd).validate()
print("ok", len(st.subject), len(pred.build_definition.resolved_dependencies))
"#;

#[test]
fn provenance_is_an_in_toto_slsa_v1_statement_about_the_nodes_files() {
    let (lab, server, reg, _) = lab_with_images();
    let args = ["node", "--role", "node01", "--format", "layers,oci"];
    run(&lab, &server, &reg, &args).assert_ok();
    let dir = lab.path("out/node01");
    let file = dir.join("provenance.intoto.json");
    let said = py_judge("python3")
        .arg("-c")
        .arg(INTOTO_JUDGE)
        .arg(&file)
        .ok();
    assert!(said.starts_with("ok "), "{said}");
    let st = json(&file);
    slsa_v1_required_fields(&st);
    subjects_are_the_files_by_sha256(&dir, &st);
    // the plan digest is that of `imgbuild plan --json`
    let plan = lab
        .imgbuild(&["plan", "--role", "node01", "--json"])
        .assert_ok()
        .stdout();
    let ext = &st["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(
        ext["plan"]["digest"]["sha256"],
        hex::encode(Sha256::digest(plan.as_bytes()))
    );
    assert_eq!(ext["target"], "node01");
    assert_eq!(ext["formats"], serde_json::json!(["layers", "oci"]));
    // every input of image.json is a resolved dependency with its digest
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let image = json(&dir.join("image.json"));
    for input in image["inputs"].as_array().unwrap() {
        let (algo, sum) = input["checksum"].as_str().unwrap().split_once(':').unwrap();
        assert!(
            deps.iter()
                .any(|d| d["uri"] == input["url"] && d["digest"][algo] == sum),
            "{input} is not a resolved dependency"
        );
    }
    assert!(deps.iter().any(|d| {
        d["uri"]
            .as_str()
            .unwrap()
            .starts_with("oci://registry.k8s.io/pause")
    }));
}

/// Every subject is a file of the directory with that sha256: image.json,
/// the SBOM, the layers and the OCI manifest among them.
fn subjects_are_the_files_by_sha256(dir: &Path, st: &serde_json::Value) {
    let subjects = st["subject"].as_array().unwrap();
    let names: BTreeSet<&str> = subjects
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in ["image.json", "sbom.spdx.json", "layers/00-base.tar.gz"] {
        assert!(names.contains(want), "{want} not a subject: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("oci/blobs/sha256/")),
        "{names:?}"
    );
    for s in subjects {
        let bytes = std::fs::read(dir.join(s["name"].as_str().unwrap())).unwrap();
        assert_eq!(
            s["digest"]["sha256"],
            hex::encode(Sha256::digest(&bytes)),
            "{s}"
        );
    }
}

/// The fields https://slsa.dev/spec/v1.0/provenance requires, with their
/// types: the statement's `_type`, `subject` (each with a `digest` of hex
/// strings), `predicateType`; the predicate's `buildDefinition`
/// (`buildType` a URI, `externalParameters` an object,
/// `resolvedDependencies` ResourceDescriptors) and `runDetails`
/// (`builder.id` a URI; `metadata` timestamps in RFC 3339).
fn slsa_v1_required_fields(st: &serde_json::Value) {
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    let hex = |v: &serde_json::Value| {
        v.as_str()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for s in st["subject"].as_array().unwrap() {
        let d = s["digest"].as_object().unwrap();
        assert!(!d.is_empty() && d.values().all(hex), "{s}");
    }
    let def = &st["predicate"]["buildDefinition"];
    let uri = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.starts_with("https://"));
    assert!(uri(&def["buildType"]), "{def}");
    assert!(def["externalParameters"].is_object());
    for d in def["resolvedDependencies"].as_array().unwrap() {
        assert!(
            d["uri"].is_string() && d["digest"].as_object().unwrap().values().all(hex),
            "{d}"
        );
    }
    let run = &st["predicate"]["runDetails"];
    assert!(uri(&run["builder"]["id"]), "{run}");
    let meta = &run["metadata"];
    assert!(meta["invocationId"].is_string());
    for t in ["startedOn", "finishedOn"] {
        let s = meta[t].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok(),
            "{t} {s}"
        );
    }
}

#[test]
fn two_builds_give_the_same_sbom_and_provenance_bytes() {
    let (lab, server) = synthetic();
    for (out, jobs) in [("a", "1"), ("b", "2")] {
        let args = [
            "node",
            "--role",
            "master01",
            "--format",
            "layers,oci",
            "--out",
            out,
            "--jobs",
            jobs,
        ];
        build(&lab, &server, &args, &[]).assert_ok();
    }
    for f in ["sbom.spdx.json", "provenance.intoto.json"] {
        let a = std::fs::read(lab.path(&format!("a/master01/{f}"))).unwrap();
        let b = std::fs::read(lab.path(&format!("b/master01/{f}"))).unwrap();
        assert!(a == b, "{f} differs between two builds");
    }
    let sums = std::fs::read_to_string(lab.path("a/master01/SHA256SUMS")).unwrap();
    assert!(sums.contains("  sbom.spdx.json\n") && sums.contains("  provenance.intoto.json\n"));
}

#[test]
fn verify_flags_a_tampered_sbom_and_rebuild_reproduces_it() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers"],
        &[],
    )
    .assert_ok();
    build(&lab, &server, &["verify", "out/node01", "--rebuild"], &[]).assert_ok();
    let file = lab.path("out/node01/sbom.spdx.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("SHA256", "SHA384", 1)).unwrap();
    build(&lab, &server, &["verify", "out/node01"], &[])
        .assert_failed()
        .assert_stderr_has("sbom.spdx.json");
}

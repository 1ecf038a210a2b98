//! `imgbuild sign` and `verify --key`: the image digest in cosign's simple
//! signing payload, the provenance in a DSSE envelope, with an ECDSA P-256
//! key the operator holds. Judged by openssl, which verifies the signatures
//! over the bytes cosign and DSSE define.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::build::{build, synthetic};
use crate::judge::{judge, judge_sh};
use crate::lab::Lab;

/// A P-256 key pair made by openssl: (private, public), PKCS#8 or SEC1.
fn keys(dir: &Path, name: &str, sec1: bool) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    if sec1 {
        judge("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&key)
            .ok();
    } else {
        judge("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key)
            .ok();
    }
    judge("openssl")
        .args(["pkey", "-in"])
        .arg(&key)
        .args(["-pubout", "-out"])
        .arg(&public)
        .ok();
    (key, public)
}

/// `openssl dgst -sha256 -verify PUB -signature SIG DATA` on bytes.
fn openssl_verifies(dir: &Path, public: &Path, sig: &[u8], data: &[u8]) -> bool {
    std::fs::write(dir.join("sig.der"), sig).unwrap();
    std::fs::write(dir.join("data"), data).unwrap();
    judge("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(dir.join("sig.der"))
        .arg(dir.join("data"))
        .output()
        .status
        .success()
}

fn oci_lab() -> Lab {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "node01", "--format", "layers,oci"],
        &[],
    )
    .assert_ok();
    lab
}

#[test]
fn a_signed_image_digest_verifies_with_openssl_and_verify_key_and_nothing_else() {
    let lab = oci_lab();
    let keydir = tempfile::tempdir().unwrap();
    let (key, public) = keys(keydir.path(), "op", false);
    let k = key.to_str().unwrap();
    lab.imgbuild(&[
        "sign",
        "out/node01",
        "--key",
        k,
        "--reference",
        "registry.example/lab/node01",
    ])
    .assert_ok();
    let dir = lab.path("out/node01");
    let payload = std::fs::read(dir.join("signatures/cosign.payload.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci/index.json")).unwrap()).unwrap();
    let image = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "node01")
        .unwrap();
    assert_eq!(
        v["critical"]["image"]["docker-manifest-digest"],
        image["digest"]
    );
    assert_eq!(
        v["critical"]["identity"]["docker-reference"],
        "registry.example/lab/node01"
    );
    assert_eq!(v["critical"]["type"], "cosign container image signature");
    let sig = B64
        .decode(
            std::fs::read_to_string(dir.join("signatures/cosign.sig"))
                .unwrap()
                .trim(),
        )
        .unwrap();
    assert!(openssl_verifies(keydir.path(), &public, &sig, &payload));
    let p = public.to_str().unwrap();
    lab.imgbuild(&["verify", "out/node01", "--key", p])
        .assert_ok()
        .assert_stderr_has("signatures verified with");
    // another key, or a payload changed after signing, fails
    let (_, other) = keys(keydir.path(), "other", true);
    lab.imgbuild(&["verify", "out/node01", "--key", other.to_str().unwrap()])
        .assert_failed()
        .assert_stderr_has("signatures/cosign.sig: the signature does not verify with the key");
    let forged = String::from_utf8(payload)
        .unwrap()
        .replace("registry.example", "evil.example");
    std::fs::write(dir.join("signatures/cosign.payload.json"), forged).unwrap();
    lab.imgbuild(&["verify", "out/node01", "--key", p])
        .assert_failed()
        .assert_stderr_has("does not verify with the key");
}

/// Lists `file` (relative to `dir`) in `dir`'s SHA256SUMS with its sha256 now.
fn add_to_sums(dir: &Path, file: &str) {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(std::fs::read(dir.join(file)).unwrap()));
    let mut s: String = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with(&format!("  {file}")))
        .map(|l| format!("{l}\n"))
        .collect();
    s.push_str(&format!("{h}  {file}\n"));
    std::fs::write(dir.join("SHA256SUMS"), s).unwrap();
}

#[test]
fn the_provenance_is_signed_in_a_dsse_envelope_that_openssl_verifies() {
    let lab = oci_lab();
    let dir = lab.path("out/node01");
    let statement = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#;
    std::fs::write(dir.join("provenance.intoto.json"), statement).unwrap();
    add_to_sums(&dir, "provenance.intoto.json");
    let keydir = tempfile::tempdir().unwrap();
    let (key, public) = keys(keydir.path(), "op", true);
    lab.imgbuild(&["sign", "out/node01", "--key", key.to_str().unwrap()])
        .assert_ok();
    let env: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("signatures/provenance.dsse.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, statement);
    // DSSE signs PAE(type, payload): "DSSEv1 <len> <type> <len> <payload>"
    let mut pae = b"DSSEv1 28 application/vnd.in-toto+json ".to_vec();
    pae.extend(format!("{} ", statement.len()).as_bytes());
    pae.extend(statement);
    let sig = B64
        .decode(env["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    assert!(openssl_verifies(keydir.path(), &public, &sig, &pae));
    let p = public.to_str().unwrap();
    lab.imgbuild(&["verify", "out/node01", "--key", p])
        .assert_ok();
    // a provenance changed after signing no longer matches its envelope
    judge_sh(&format!(
        "sed -i 's/Statement/Statemant/' '{}'",
        dir.join("provenance.intoto.json").display()
    ))
    .ok();
    add_to_sums(&dir, "provenance.intoto.json");
    lab.imgbuild(&["verify", "out/node01", "--key", p])
        .assert_failed()
        .assert_stderr_has(
            "signatures/provenance.dsse.json signs another statement than the directory holds",
        );
}

#[test]
fn a_key_that_is_not_ecdsa_p256_is_refused_naming_it() {
    let lab = oci_lab();
    let keydir = tempfile::tempdir().unwrap();
    let rsa = keydir.path().join("rsa.key");
    judge("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa)
        .ok();
    lab.imgbuild(&["sign", "out/node01", "--key", rsa.to_str().unwrap()])
        .assert_failed()
        .assert_stderr_has("rsa.key is not an ECDSA P-256 private key in PEM");
    let none = keydir.path().join("none.key");
    lab.imgbuild(&["sign", "out/node01", "--key", none.to_str().unwrap()])
        .assert_failed()
        .assert_stderr_has("cannot read");
}

/// GET `url` from the test registry (127.0.0.1): (status, body).
fn get(url: &str, accept: &str) -> (u16, Vec<u8>) {
    let o = judge("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(url)
        .output();
    let mut body = o.stdout;
    let code_at = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code: u16 = String::from_utf8_lossy(&body[code_at + 1..])
        .parse()
        .unwrap();
    body.truncate(code_at);
    (code, body)
}

#[test]
fn push_attaches_the_signature_and_attestations_where_cosign_and_oci_referrers_look() {
    let (lab, server, reg, _) = crate::images::lab_with_images();
    crate::images::run(
        &lab,
        &server,
        &reg,
        &["node", "--role", "node01", "--format", "layers,oci"],
    )
    .assert_ok();
    let keydir = tempfile::tempdir().unwrap();
    let (key, public) = keys(keydir.path(), "op", false);
    let repo = format!("127.0.0.1:{}/nodes/node01", reg.port);
    lab.imgbuild(&[
        "sign",
        "out/node01",
        "--key",
        key.to_str().unwrap(),
        "--reference",
        &repo,
    ])
    .assert_ok();
    let pushed = lab
        .imgbuild(&["push", "out/node01", &format!("{repo}:v1")])
        .assert_ok();
    let digest = pushed
        .stdout()
        .trim()
        .rsplit_once('@')
        .unwrap()
        .1
        .to_string();
    let hex = digest.trim_start_matches("sha256:");
    let base = format!("{}/v2/nodes/node01", reg.url());
    let oci = "application/vnd.oci.image.manifest.v1+json";
    // cosign's tag: the payload as the layer, the signature as its annotation
    let (code, sig_m) = get(&format!("{base}/manifests/sha256-{hex}.sig"), oci);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&sig_m));
    let m: serde_json::Value = serde_json::from_slice(&sig_m).unwrap();
    assert_eq!(m["subject"]["digest"], digest.as_str());
    let layer = &m["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let (_, payload) = get(
        &format!("{base}/blobs/{}", layer["digest"].as_str().unwrap()),
        "*/*",
    );
    let p: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    let sig = B64
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert!(openssl_verifies(keydir.path(), &public, &sig, &payload));
    // the attestations: the provenance's and the SBOM's DSSE envelopes
    let (code, att_m) = get(&format!("{base}/manifests/sha256-{hex}.att"), oci);
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_slice(&att_m).unwrap();
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["annotations"]["predicateType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "https://slsa.dev/provenance/v1",
            "https://spdx.dev/Document"
        ]
    );
    // the referrers tag schema: an index naming both, by artifact type
    let (code, index) = get(
        &format!("{base}/manifests/sha256-{hex}"),
        "application/vnd.oci.image.index.v1+json",
    );
    assert_eq!(code, 200);
    let i: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let kinds: Vec<&str> = i["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["artifactType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.dsse.envelope.v1+json"
        ]
    );
    // skopeo, a registry client, reads the signature's manifest as one
    judge("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}:sha256-{hex}.sig"))
        .ok();
}

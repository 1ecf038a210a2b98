//! `imgbuild pki`: the certificate set judged by openssl, x509-parser,
//! kubectl and a real 3-member etcd cluster.

use std::collections::BTreeMap;
use std::path::Path;

use x509_parser::extensions::{
    ExtendedKeyUsage, KeyUsage, ParsedExtension, SubjectAlternativeName, X509Extension,
};
use x509_parser::prelude::*;

use crate::judge::judge;
use crate::lab::Lab;

fn state(lab: &Lab) -> std::path::PathBuf {
    lab.path("state/ilinux")
}

/// Every file of the state dir with its sha256.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    crate::lab::files_below(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            (rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())))
        })
        .collect()
}

fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn ca_of(path: &str) -> &'static str {
    if path.contains("etcd") {
        "pki/etcd/ca.crt"
    } else if path.contains("front-proxy") {
        "pki/front-proxy-ca.crt"
    } else {
        "pki/ca.crt"
    }
}

fn leaves(dir: &Path) -> Vec<String> {
    hashes(dir)
        .into_keys()
        .filter(|p| p.ends_with(".crt") && !p.ends_with("ca.crt"))
        .collect()
}

#[derive(Default)]
struct Parsed {
    cn: String,
    orgs: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    ku: Vec<&'static str>,
    eku: Vec<&'static str>,
    ca: Option<(bool, bool)>, // (critical, is_ca)
    ski: bool,
    aki: bool,
    serial_len: usize,
    days: i64,
    key_bits: usize,
}

/// The certificate at `pem_path`, as x509-parser reads it.
fn parse(pem_path: &Path) -> Parsed {
    let text = std::fs::read(pem_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let validity = cert.validity();
    let mut p = Parsed {
        cn: cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
        orgs: cert
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect(),
        serial_len: cert.raw_serial().len(),
        days: (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400,
        key_bits: cert.public_key().parsed().unwrap().key_size(),
        ..Parsed::default()
    };
    for ext in cert.extensions() {
        read_extension(ext, &mut p);
    }
    p
}

/// Records what one extension says into `p`.
fn read_extension(ext: &X509Extension, p: &mut Parsed) {
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => read_sans(san, p),
        ParsedExtension::KeyUsage(ku) => p.ku.extend(key_usages(ku)),
        ParsedExtension::ExtendedKeyUsage(e) => p.eku.extend(extended_key_usages(e)),
        ParsedExtension::BasicConstraints(bc) => p.ca = Some((ext.critical, bc.ca)),
        ParsedExtension::SubjectKeyIdentifier(_) => p.ski = true,
        ParsedExtension::AuthorityKeyIdentifier(_) => p.aki = true,
        _ => {}
    }
}

/// The DNS names and IPv4 addresses of a subjectAltName, in order.
fn read_sans(san: &SubjectAlternativeName, p: &mut Parsed) {
    for n in &san.general_names {
        match n {
            GeneralName::DNSName(d) => p.dns.push(d.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                p.ips.push(format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]));
            }
            _ => {}
        }
    }
}

fn key_usages(ku: &KeyUsage) -> Vec<&'static str> {
    [
        (ku.digital_signature(), "digitalSignature"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

fn extended_key_usages(e: &ExtendedKeyUsage) -> Vec<&'static str> {
    [(e.server_auth, "serverAuth"), (e.client_auth, "clientAuth")]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
}

fn pki_init(lab: &Lab) {
    lab.imgbuild(&["pki", "init"]).assert_ok();
}

#[test]
fn openssl_verifies_every_leaf_against_its_ca_and_no_other() {
    let lab = Lab::new();
    pki_init(&lab);
    let dir = state(&lab);
    let all = leaves(&dir);
    // 13 of the control plane and etcd, and a kubelet serving certificate per node
    assert_eq!(all.len(), 13 + 6, "{all:?}");
    for leaf in all {
        judge("openssl")
            .args(["verify", "-CAfile", ca_of(&leaf), &leaf])
            .current_dir(&dir)
            .ok();
        // and no other CA accepts it
        for other in ["pki/ca.crt", "pki/etcd/ca.crt", "pki/front-proxy-ca.crt"] {
            if other != ca_of(&leaf) {
                let out = judge("openssl")
                    .args(["verify", "-CAfile", other, &leaf])
                    .current_dir(&dir)
                    .output();
                assert!(!out.status.success(), "{leaf} verified against {other}");
            }
        }
    }
}

const SERVER: &[&str] = &["serverAuth"];
const CLIENT: &[&str] = &["clientAuth"];
const BOTH: &[&str] = &["serverAuth", "clientAuth"];

/// The leaves of the Kubernetes PKI table: file, CN, O, extended key usage.
const LEAF_TABLE: &[(&str, &str, &[&str], &[&str])] = &[
    (
        "pki/apiserver-kubelet-client.crt",
        "kube-apiserver-kubelet-client",
        &["system:masters"],
        CLIENT,
    ),
    (
        "pki/apiserver-etcd-client.crt",
        "kube-apiserver-etcd-client",
        &["system:masters"],
        CLIENT,
    ),
    (
        "pki/front-proxy-client.crt",
        "front-proxy-client",
        &[],
        CLIENT,
    ),
    (
        "pki/etcd/healthcheck-client.crt",
        "kube-etcd-healthcheck-client",
        &[],
        CLIENT,
    ),
    (
        "nodes/master02/pki/apiserver.crt",
        "kube-apiserver",
        &[],
        SERVER,
    ),
    ("nodes/master02/pki/etcd/server.crt", "kube-etcd", &[], BOTH),
    (
        "nodes/master02/pki/etcd/peer.crt",
        "kube-etcd-peer",
        &[],
        BOTH,
    ),
];

/// The CAs: file and CN.
const CA_TABLE: [(&str, &str); 3] = [
    ("pki/ca.crt", "kubernetes-ca"),
    ("pki/etcd/ca.crt", "etcd-ca"),
    ("pki/front-proxy-ca.crt", "kubernetes-front-proxy-ca"),
];

/// The DNS names of master02's apiserver certificate, sorted.
const APISERVER_DNS: [&str; 7] = [
    "kubeapi.ilinux.io",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
    "master02",
];

/// The IP addresses of master02's apiserver certificate, sorted.
const APISERVER_IPS: [&str; 4] = ["10.96.0.1", "127.0.0.1", "172.16.0.100", "172.16.0.102"];

/// A leaf of the table: its subject and usages, and what kubeadm gives
/// every leaf (critical CA:FALSE, key ids, a long serial, a year, P-256).
fn assert_leaf(dir: &Path, file: &str, cn: &str, orgs: &[&str], eku: &[&str]) {
    let p = parse(&dir.join(file));
    assert_eq!(p.cn, cn, "{file}");
    assert_eq!(p.orgs, orgs, "{file}");
    assert_eq!(p.eku, eku, "{file}");
    assert_eq!(p.ku, ["digitalSignature", "keyEncipherment"], "{file}");
    assert_eq!(
        p.ca,
        Some((true, false)),
        "{file}: basicConstraints critical CA:FALSE"
    );
    assert!(p.ski && p.aki, "{file}: key ids");
    assert!(
        p.serial_len >= 16,
        "{file}: serial of {} bytes",
        p.serial_len
    );
    assert_eq!(p.days, 365, "{file}");
    assert_eq!(p.key_bits, 256, "{file}: ecdsa-p256 by default");
}

/// A CA of the table: critical CA:TRUE, signs certificates and CRLs, ten years.
fn assert_ca(dir: &Path, file: &str, cn: &str) {
    let p = parse(&dir.join(file));
    assert_eq!(p.cn, cn);
    assert_eq!(p.ca, Some((true, true)), "{file}: critical CA:TRUE");
    assert!(
        p.ku.contains(&"keyCertSign") && p.ku.contains(&"cRLSign"),
        "{file}"
    );
    assert!(p.ski, "{file}");
    assert_eq!(p.days, 3650, "{file}");
}

/// The SANs of an apiserver and of an etcd peer certificate.
fn assert_sans(dir: &Path) {
    let api = parse(&dir.join("nodes/master02/pki/apiserver.crt"));
    let mut dns = api.dns.clone();
    dns.sort();
    assert_eq!(dns, APISERVER_DNS);
    let mut ips = api.ips.clone();
    ips.sort();
    assert_eq!(ips, APISERVER_IPS);
    let etcd = parse(&dir.join("nodes/master03/pki/etcd/peer.crt"));
    assert_eq!(etcd.dns, ["master03", "localhost"]);
    assert_eq!(etcd.ips, ["172.16.0.103", "127.0.0.1"]);
}

/// The service-account key is its own keypair, not the CA's.
fn assert_service_account_key(dir: &Path) {
    let sa = std::fs::read_to_string(dir.join("pki/sa.key")).unwrap();
    assert_ne!(sa, std::fs::read_to_string(dir.join("pki/ca.key")).unwrap());
    assert!(
        std::fs::read_to_string(dir.join("pki/sa.pub"))
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
}

#[test]
fn certificates_match_the_kubernetes_pki_table() {
    let lab = Lab::new();
    pki_init(&lab);
    let dir = state(&lab);
    let mut serials = std::collections::HashSet::new();
    for (file, cn, orgs, eku) in LEAF_TABLE {
        assert_leaf(&dir, file, cn, orgs, eku);
        assert!(
            serials.insert(std::fs::read(dir.join(file)).unwrap()),
            "{file}"
        );
    }
    for (file, cn) in CA_TABLE {
        assert_ca(&dir, file, cn);
    }
    assert_sans(&dir);
    assert_service_account_key(&dir);
}

#[test]
fn state_dir_and_every_file_in_it_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    pki_init(&lab);
    let dir = state(&lab);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in hashes(&dir).keys() {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

/// What kubectl reads at `jsonpath` in `kubeconfig`.
fn kubectl(kubeconfig: &Path, jsonpath: &str) -> String {
    judge("kubectl")
        .args(["config", "view", "--raw", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("-o")
        .arg(format!("jsonpath={jsonpath}"))
        .ok()
}

fn unbase64(text: String) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

const LB: &str = "https://kubeapi.ilinux.io:8443";
const LOCAL: &str = "https://127.0.0.1:6443";

/// Every kubeconfig: file, server, user, and the CN of its client
/// certificate (`None`: the user has a bootstrap token instead).
const KUBECONFIGS: [(&str, &str, &str, Option<&str>); 5] = [
    (
        "admin.conf",
        LB,
        "kubernetes-admin",
        Some("kubernetes-admin"),
    ),
    (
        "kube-proxy.conf",
        LB,
        "system:kube-proxy",
        Some("system:kube-proxy"),
    ),
    ("bootstrap-kubelet.conf", LB, "kubelet-bootstrap", None),
    (
        "controller-manager.conf",
        LOCAL,
        "system:kube-controller-manager",
        Some("system:kube-controller-manager"),
    ),
    (
        "scheduler.conf",
        LOCAL,
        "system:kube-scheduler",
        Some("system:kube-scheduler"),
    ),
];

/// The kubeconfig embeds the cluster CA byte for byte.
fn assert_embedded_ca(dir: &Path, file: &str) {
    let ca = kubectl(
        &dir.join(file),
        "{.clusters[0].cluster.certificate-authority-data}",
    );
    let ca_pem = std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    assert_eq!(
        String::from_utf8(unbase64(ca)).unwrap(),
        ca_pem,
        "{file}: embedded CA"
    );
}

/// The kubeconfig's client certificate is for `cn`, a client, signed by
/// the cluster CA (openssl agrees).
fn assert_client_cert(lab: &Lab, dir: &Path, file: &str, cn: &str) {
    let cert = kubectl(&dir.join(file), "{.users[0].user.client-certificate-data}");
    let tmp = lab.path("client.crt");
    std::fs::write(&tmp, unbase64(cert)).unwrap();
    let p = parse(&tmp);
    assert_eq!(p.cn, cn, "{file}");
    assert_eq!(p.eku, ["clientAuth"], "{file}");
    if file == "admin.conf" {
        assert_eq!(p.orgs, ["system:masters"]);
    }
    judge("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("pki/ca.crt"))
        .arg(&tmp)
        .ok();
}

/// The kubeconfig's bootstrap token is in the bootstrap-token secret (and
/// in no static token file), in kubeadm's `[a-z0-9]{6}.[a-z0-9]{16}` form.
fn assert_bootstrap_token(dir: &Path, file: &str) {
    let token = kubectl(&dir.join(file), "{.users[0].user.token}");
    assert!(!dir.join("token.csv").exists());
    let (id, secret) = token.split_once('.').unwrap();
    assert!(id.len() == 6 && secret.len() == 16, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    let s = std::fs::read_to_string(dir.join("addons/bootstrap-token.yaml")).unwrap();
    assert!(
        s.contains(&format!("token-id: {id}")) && s.contains(&format!("token-secret: {secret}")),
        "{s}"
    );
    assert!(s.contains("type: bootstrap.kubernetes.io/token"));
}

#[test]
fn kubectl_reads_every_kubeconfig() {
    let lab = Lab::new();
    pki_init(&lab);
    let dir = state(&lab);
    for (file, server, user, cn) in KUBECONFIGS {
        let path = dir.join(file);
        assert_eq!(
            kubectl(&path, "{.clusters[0].cluster.server}"),
            server,
            "{file}"
        );
        assert_eq!(kubectl(&path, "{.users[0].name}"), user, "{file}");
        assert_eq!(
            kubectl(&path, "{.current-context}"),
            format!("{user}@ilinux"),
            "{file}"
        );
        assert_embedded_ca(&dir, file);
        match cn {
            Some(cn) => assert_client_cert(&lab, &dir, file, cn),
            None => assert_bootstrap_token(&dir, file),
        }
    }
}

#[test]
fn init_again_changes_nothing() {
    let lab = Lab::new();
    pki_init(&lab);
    let before = hashes(&state(&lab));
    let run = lab.imgbuild(&["pki", "init"]).assert_ok();
    assert_eq!(
        changed(&before, &hashes(&state(&lab))),
        Vec::<String>::new()
    );
    assert!(
        run.stderr().contains("0 created, 0 re-issued"),
        "{}",
        run.stderr()
    );
}

#[test]
fn an_ip_change_reissues_exactly_that_masters_certs() {
    let lab = Lab::new();
    pki_init(&lab);
    let before = hashes(&state(&lab));
    let lab = lab.edit("cluster.yaml", "ip: 172.16.0.102", "ip: 172.16.0.112");
    let run = lab.imgbuild(&["pki", "init"]).assert_ok();
    let diff = changed(&before, &hashes(&state(&lab)));
    assert_eq!(
        diff,
        [
            "nodes/master02/pki/apiserver.crt",
            "nodes/master02/pki/apiserver.key",
            "nodes/master02/pki/etcd/peer.crt",
            "nodes/master02/pki/etcd/peer.key",
            "nodes/master02/pki/etcd/server.crt",
            "nodes/master02/pki/etcd/server.key",
            "nodes/master02/pki/kubelet.crt",
            "nodes/master02/pki/kubelet.key",
        ]
    );
    assert!(
        run.stderr()
            .contains("re-issued nodes/master02/pki/apiserver.crt (SANs changed"),
        "{}",
        run.stderr()
    );
    let p = parse(&state(&lab).join("nodes/master02/pki/apiserver.crt"));
    assert!(p.ips.contains(&"172.16.0.112".to_string()));
}

#[test]
fn rsa_keys_are_issued_when_the_manifests_ask_for_them() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "key_algorithm: ecdsa-p256",
        "key_algorithm: rsa-2048",
    );
    pki_init(&lab);
    for f in [
        "pki/ca.crt",
        "nodes/master01/pki/apiserver.crt",
        "pki/etcd/healthcheck-client.crt",
    ] {
        assert_eq!(parse(&state(&lab).join(f)).key_bits, 2048, "{f}");
    }
    judge("openssl")
        .args([
            "verify",
            "-CAfile",
            "pki/ca.crt",
            "nodes/master01/pki/apiserver.crt",
        ])
        .current_dir(state(&lab))
        .ok();
}

#[test]
fn a_key_algorithm_change_reissues_the_leaves_but_keeps_the_cas() {
    let lab = Lab::new();
    pki_init(&lab);
    let before = hashes(&state(&lab));
    let lab = lab.edit(
        "cluster.yaml",
        "key_algorithm: ecdsa-p256",
        "key_algorithm: rsa-2048",
    );
    pki_init(&lab);
    let diff = changed(&before, &hashes(&state(&lab)));
    assert!(
        !diff
            .iter()
            .any(|f| f.ends_with("ca.crt") || f.ends_with("ca.key")),
        "{diff:?}"
    );
    assert!(
        diff.contains(&"pki/apiserver-etcd-client.crt".to_string()),
        "{diff:?}"
    );
}

#[test]
fn status_prints_a_table_and_json_with_every_row_ok() {
    let lab = Lab::new();
    pki_init(&lab);
    let run = lab.imgbuild(&["pki", "status"]).assert_ok();
    let out = run.stdout();
    assert!(out.starts_with("FILE"), "{out}");
    assert!(out.contains("nodes/master01/pki/apiserver.crt"), "{out}");
    assert!(
        out.contains("CN=kube-apiserver-etcd-client, O=system:masters"),
        "{out}"
    );
    assert!(
        !out.contains("MISMATCH") && !out.contains("EXPIRING"),
        "{out}"
    );
    let json = lab
        .imgbuild(&["pki", "status", "--json"])
        .assert_ok()
        .stdout();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    // CAs, leaves (a kubelet serving certificate per node), kubeconfigs, the token
    assert_eq!(rows.len(), 3 + 13 + 6 + 5 + 1);
    for r in rows {
        assert_eq!(r["status"], "OK", "{r}");
        if r["file"] != "bootstrap-kubelet.conf" && r["file"] != "addons/bootstrap-token.yaml" {
            // every other row carries a certificate
            assert!(r["days_left"].as_i64().unwrap() >= 364, "{r}");
        }
    }
}

fn in_days(days: i64) -> String {
    let t = ::time::OffsetDateTime::now_utc() + ::time::Duration::days(days);
    t.format(&::time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn status_flags_expiring_and_mismatched_certs_and_renew_fixes_them() {
    let lab = Lab::new();
    pki_init(&lab);
    let later = in_days(345);
    let run = lab
        .imgbuild_env(&["pki", "status"], &[("IMGBUILD_NOW", &later)])
        .assert_failed();
    assert!(run.stdout().contains("EXPIRING"), "{}", run.stdout());
    assert!(run.stderr().contains("need attention"), "{}", run.stderr());
    let lab = lab.edit("cluster.yaml", "vip: 172.16.0.100", "vip: 172.16.0.99");
    let run = lab.imgbuild(&["pki", "status"]).assert_failed();
    let out = run.stdout();
    let bad: Vec<&str> = out.lines().filter(|l| l.contains("MISMATCH")).collect();
    assert_eq!(bad.len(), 3, "{out}");
    assert!(
        bad.iter()
            .all(|l| l.contains("/pki/apiserver.crt") && l.contains("SANs changed")),
        "{out}"
    );
    // renew as of that later day fixes both kinds
    let before = hashes(&state(&lab));
    lab.imgbuild_env(&["pki", "renew", "--expiring"], &[("IMGBUILD_NOW", &later)])
        .assert_ok();
    let diff = changed(&before, &hashes(&state(&lab)));
    assert!(
        !diff.iter().any(|f| f.contains("ca.")),
        "a CA was replaced: {diff:?}"
    );
    lab.imgbuild_env(&["pki", "status"], &[("IMGBUILD_NOW", &later)])
        .assert_ok();
}

#[test]
fn renew_all_keeps_the_cas_and_renew_ca_replaces_them_with_a_warning() {
    let lab = Lab::new();
    pki_init(&lab);
    let before = hashes(&state(&lab));
    lab.imgbuild(&["pki", "renew", "--all"]).assert_ok();
    let diff = changed(&before, &hashes(&state(&lab)));
    assert!(diff.contains(&"pki/front-proxy-client.crt".to_string()));
    assert!(diff.contains(&"admin.conf".to_string()));
    assert!(
        !diff
            .iter()
            .any(|f| f.ends_with("ca.crt") || f.ends_with("ca.key") || f.contains("token")),
        "{diff:?}"
    );
    let before = hashes(&state(&lab));
    let run = lab.imgbuild(&["pki", "renew", "--ca"]).assert_ok();
    assert!(
        run.stderr().contains("warning: replacing the CAs"),
        "{}",
        run.stderr()
    );
    let diff = changed(&before, &hashes(&state(&lab)));
    for f in [
        "pki/ca.crt",
        "pki/etcd/ca.crt",
        "pki/front-proxy-ca.crt",
        "nodes/master01/pki/apiserver.crt",
        "admin.conf",
    ] {
        assert!(diff.contains(&f.to_string()), "{f} not replaced: {diff:?}");
    }
    lab.imgbuild(&["pki", "status"]).assert_ok();
}

#[test]
fn a_ca_without_its_key_is_never_replaced_silently() {
    let lab = Lab::new();
    pki_init(&lab);
    std::fs::remove_file(state(&lab).join("pki/etcd/ca.key")).unwrap();
    let before = hashes(&state(&lab));
    lab.imgbuild(&["pki", "init"])
        .assert_failed()
        .assert_stderr_has("pki/etcd/ca.crt exists but")
        .assert_stderr_has("pki renew --ca");
    assert_eq!(
        changed(&before, &hashes(&state(&lab))),
        Vec::<String>::new()
    );
}

/// Whether openssl finds that the certificate at `pem` is still valid
/// `days` days from now (`x509 -checkend`).
fn valid_in_days(pem: &Path, days: i64) -> bool {
    judge("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(days * 86400).to_string(),
            "-in",
        ])
        .arg(pem)
        .output()
        .status
        .success()
}

#[test]
fn renew_expiring_reissues_only_the_leaves_inside_the_renewal_window() {
    let lab = Lab::new();
    pki_init(&lab);
    // one leaf made 200 days later: 220 days left when the others have 20
    let young = "pki/front-proxy-client.crt";
    for f in [young, "pki/front-proxy-client.key"] {
        std::fs::remove_file(state(&lab).join(f)).unwrap();
    }
    lab.imgbuild_env(&["pki", "init"], &[("IMGBUILD_NOW", &in_days(200))])
        .assert_ok();
    let leaves = leaves(&state(&lab));
    let before = hashes(&state(&lab));
    // 345 days on, inside the 30-day window of the first leaves (365 days)
    lab.imgbuild_env(
        &["pki", "renew", "--expiring"],
        &[("IMGBUILD_NOW", &in_days(345))],
    )
    .assert_ok();
    let diff = changed(&before, &hashes(&state(&lab)));
    for f in &leaves {
        let pem = state(&lab).join(f);
        if f == young {
            assert!(!diff.contains(f), "{f} re-issued outside its window");
            // valid until day 565, as before
            assert!(valid_in_days(&pem, 560) && !valid_in_days(&pem, 570), "{f}");
        } else {
            assert!(diff.contains(f), "{f} inside its window not re-issued");
            // re-issued as of day 345: valid until day 710
            assert!(valid_in_days(&pem, 705) && !valid_in_days(&pem, 715), "{f}");
        }
    }
    assert!(diff.contains(&"admin.conf".to_string()), "{diff:?}");
    assert!(!diff.iter().any(|f| f.contains("ca.")), "{diff:?}");
    // the bootstrap token of day 200 expired long before day 345
    assert!(
        diff.contains(&"addons/bootstrap-token.yaml".to_string()),
        "{diff:?}"
    );
}

//! What keeps a built cluster's credentials in bounds, judged by the
//! programs that read them: the bootstrap token expires (kubectl reads the
//! kubeconfig, the Secret's `expiration` is RFC 3339) and `pki renew`
//! replaces it; Secrets are encrypted at rest with a key only the
//! control-plane's secrets layer holds; every worker node's kubelet serves
//! a certificate that openssl verifies against the cluster CA.

use std::path::{Path, PathBuf};

use ::time::format_description::well_known::Rfc3339;
use ::time::{Duration, OffsetDateTime};

use crate::build::{append_to_layer, build, build_layers, extract, reseal_first_layer, synthetic};
use crate::judge::judge;
use crate::lab::{Lab, Run};

/// The build clock of these tests.
const T0: &str = "2027-03-01T10:00:00Z";

fn state(lab: &Lab) -> PathBuf {
    lab.path("state/ilinux")
}

fn at(t: &str, hours: i64) -> String {
    let t = OffsetDateTime::parse(t, &Rfc3339).unwrap() + Duration::hours(hours);
    t.format(&Rfc3339).unwrap()
}

fn pki_at(lab: &Lab, args: &[&str], now: &str) -> Run {
    let mut all = vec!["pki"];
    all.extend_from_slice(args);
    lab.imgbuild_env(&all, &[("IMGBUILD_NOW", now)])
}

/// A YAML file as JSON values.
fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The token kubectl reads from `bootstrap-kubelet.conf` of the state dir.
fn kubeconfig_token(lab: &Lab) -> String {
    judge("kubectl")
        .args(["config", "view", "--raw", "--kubeconfig"])
        .arg(state(lab).join("bootstrap-kubelet.conf"))
        .args(["-o", "jsonpath={.users[0].user.token}"])
        .ok()
}

/// The bootstrap-token Secret's stringData: `<id>.<secret>` and expiration.
fn secret_token(lab: &Lab) -> (String, String) {
    let s = yaml(&state(lab).join("addons/bootstrap-token.yaml"));
    assert_eq!(s["kind"], "Secret");
    assert_eq!(s["type"], "bootstrap.kubernetes.io/token");
    let d = &s["stringData"];
    let id = d["token-id"].as_str().unwrap();
    assert_eq!(s["metadata"]["name"], format!("bootstrap-token-{id}"));
    let token = format!("{id}.{}", d["token-secret"].as_str().unwrap());
    let expiration = d["expiration"]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret has no expiration: {s}"));
    (token, expiration.to_string())
}

/// The expiration is RFC 3339 and `hours` after `now`, and the kubeconfig
/// holds the Secret's token.
fn assert_token_valid_for(lab: &Lab, now: &str, hours: i64) -> String {
    let (token, expiration) = secret_token(lab);
    let exp = OffsetDateTime::parse(&expiration, &Rfc3339)
        .unwrap_or_else(|_| panic!("expiration `{expiration}` is not RFC 3339"));
    let want = OffsetDateTime::parse(now, &Rfc3339).unwrap() + Duration::hours(hours);
    assert_eq!(exp, want, "expiration {expiration}, made at {now}");
    assert_eq!(kubeconfig_token(lab), token);
    token
}

#[test]
fn the_bootstrap_token_expires_its_ttl_after_the_build_clock() {
    let lab = Lab::new();
    pki_at(&lab, &["init"], T0).assert_ok();
    assert_token_valid_for(&lab, T0, 24);
    // the manifests' TTL
    let lab = Lab::new().edit(
        "cluster.yaml",
        "bootstrap_token_ttl_hours: 24",
        "bootstrap_token_ttl_hours: 2",
    );
    pki_at(&lab, &["init"], T0).assert_ok();
    assert_token_valid_for(&lab, T0, 2);
}

#[test]
fn a_bootstrap_token_ttl_of_zero_never_expires_and_is_refused() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "bootstrap_token_ttl_hours: 24",
        "bootstrap_token_ttl_hours: 0",
    );
    let loc = lab.at("cluster.yaml", "bootstrap_token_ttl_hours", "0");
    lab.imgbuild(&["pki", "init"]).assert_error(
        &loc,
        "a bootstrap token TTL of 0 hours would make a token that never expires",
    );
}

/// The row of the token in `pki status --json` as of `now`, and whether
/// status exited 0.
fn token_status(lab: &Lab, now: &str) -> (serde_json::Value, bool) {
    let run = pki_at(lab, &["status", "--json"], now);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"] == "addons/bootstrap-token.yaml")
        .unwrap_or_else(|| panic!("no token row: {rows}"))
        .clone();
    (row, run.out.status.success())
}

#[test]
fn pki_status_shows_the_token_expiry_and_fails_once_it_nears_it() {
    let lab = Lab::new();
    pki_at(&lab, &["init"], T0).assert_ok();
    let (token, _) = secret_token(&lab);
    let id = token.split_once('.').unwrap().0;
    let (row, ok) = token_status(&lab, &at(T0, 1));
    assert!(ok, "{row}");
    assert_eq!(row["status"], "OK");
    assert_eq!(row["not_after"], at(T0, 24));
    assert_eq!(row["subject"], format!("bootstrap token {id}"));
    assert!(!row.to_string().contains(token.split_once('.').unwrap().1));
    // in the last third of its 24 hours
    let (row, ok) = token_status(&lab, &at(T0, 20));
    assert!(!ok && row["status"] == "EXPIRING", "{row}");
    let (row, ok) = token_status(&lab, &at(T0, 25));
    assert!(!ok && row["status"] == "EXPIRED", "{row}");
    let table = pki_at(&lab, &["status"], &at(T0, 25)).stdout();
    let line = table
        .lines()
        .find(|l| l.starts_with("addons/bootstrap-token.yaml"))
        .unwrap();
    assert!(
        line.contains(&at(T0, 24)) && line.ends_with("EXPIRED"),
        "{line}"
    );
}

#[test]
fn pki_renew_issues_a_fresh_token_once_the_old_one_nears_expiry() {
    let lab = Lab::new();
    pki_at(&lab, &["init"], T0).assert_ok();
    let first = assert_token_valid_for(&lab, T0, 24);
    // outside the renewal window: kept
    pki_at(&lab, &["renew"], &at(T0, 10)).assert_ok();
    assert_eq!(assert_token_valid_for(&lab, T0, 24), first);
    // inside it: a new token, valid for 24 hours from then, in both files
    let later = at(T0, 18);
    let run = pki_at(&lab, &["renew"], &later).assert_ok();
    assert!(
        run.stderr()
            .contains("re-issued addons/bootstrap-token.yaml (expires in 6 hours)"),
        "{}",
        run.stderr()
    );
    let second = assert_token_valid_for(&lab, &later, 24);
    assert_ne!(second, first);
    // expired: the same
    let much_later = at(T0, 60);
    pki_at(&lab, &["renew"], &much_later).assert_ok();
    assert_ne!(assert_token_valid_for(&lab, &much_later, 24), second);
    assert!(token_status(&lab, &much_later).1);
}

#[test]
fn the_static_token_file_is_gone_from_the_state_and_the_apiserver() {
    let lab = Lab::new();
    // a state dir of an older imgbuild: token.csv and a Secret without expiration
    std::fs::create_dir_all(state(&lab).join("addons")).unwrap();
    let old = "abcdef.0123456789abcdef";
    std::fs::write(
        state(&lab).join("token.csv"),
        format!("{old},system:bootstrapper,10001,\"system:bootstrappers\"\n"),
    )
    .unwrap();
    std::fs::write(
        state(&lab).join("addons/bootstrap-token.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n",
    )
    .unwrap();
    let run = pki_at(&lab, &["init"], T0).assert_ok();
    assert!(!state(&lab).join("token.csv").exists());
    assert!(
        run.stderr().contains(
            "re-issued addons/bootstrap-token.yaml (no expiration: the token would never expire)"
        ),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("removed   token.csv"),
        "{}",
        run.stderr()
    );
    assert_ne!(assert_token_valid_for(&lab, T0, 24), old);
    let plan = lab.plan("master01").assert_ok().stdout();
    assert!(!plan.contains("token.csv"), "{plan}");
    let env = std::fs::read_to_string(
        lab.path("layers/control-plane-node/etc/kubernetes/apiserver.env.tera"),
    )
    .unwrap();
    assert!(!env.contains("--token-auth-file"), "{env}");
    assert!(env.contains("--enable-bootstrap-token-auth=true"), "{env}");
}

/// The layer files of a built node, in order.
fn layers(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

/// `tar -tvzf` of a layer: one line per entry.
fn tar_list(layer: &Path) -> String {
    judge("tar").arg("-tvzf").arg(layer).ok()
}

/// The one line of `listing` for `path`, if any.
fn entry<'a>(listing: &'a str, path: &str) -> Option<&'a str> {
    listing.lines().find(|l| l.ends_with(&format!(" {path}")))
}

#[test]
fn secrets_are_encrypted_at_rest_with_a_generated_32_byte_key() {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    pki_at(&lab, &["init"], T0).assert_ok();
    let path = state(&lab).join("encryption-config.yaml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let c = yaml(&path);
    assert_eq!(c["apiVersion"], "apiserver.config.k8s.io/v1");
    assert_eq!(c["kind"], "EncryptionConfiguration");
    let r = &c["resources"][0];
    assert_eq!(r["resources"], serde_json::json!(["secrets"]));
    let key = r["providers"][0]["secretbox"]["keys"][0]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secretbox key first: {c}"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(r["providers"][1], serde_json::json!({"identity": {}}));
    // made once: init again keeps it
    let before = std::fs::read(&path).unwrap();
    pki_at(&lab, &["renew", "--all"], &at(T0, 1)).assert_ok();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // a damaged one is never replaced by a new key
    std::fs::write(&path, "kind: EncryptionConfiguration\n").unwrap();
    pki_at(&lab, &["init"], T0)
        .assert_failed()
        .assert_stderr_has("imgbuild never replaces the key");
}

/// Every layer of `dir` but the secrets layer holds no `what`.
fn assert_nowhere_but_secrets(dir: &Path, what: &str) {
    for l in layers(dir) {
        let name = l.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains("secrets") {
            let root = tempfile::tempdir().unwrap();
            judge("tar")
                .arg("-xzf")
                .arg(&l)
                .arg("-C")
                .arg(root.path())
                .ok();
            let found = judge("grep").args(["-rl", what]).arg(root.path()).output();
            assert!(
                !found.status.success(),
                "{name} holds `{what}`: {}",
                String::from_utf8_lossy(&found.stdout)
            );
        }
    }
}

#[test]
fn the_encryption_key_and_audit_policy_reach_only_the_control_plane() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--format", "layers"], &[]).assert_ok();
    let master = lab.path("out/master01");
    let secrets = tar_list(layers(&master).last().unwrap());
    let line = entry(&secrets, "etc/kubernetes/encryption-config.yaml").unwrap();
    assert!(line.starts_with("-rw-------"), "{line}");
    for node in ["master01", "node01"] {
        assert_nowhere_but_secrets(&lab.path(&format!("out/{node}")), "EncryptionConfiguration");
    }
    let node_secrets = tar_list(layers(&lab.path("out/node01")).last().unwrap());
    assert!(entry(&node_secrets, "etc/kubernetes/encryption-config.yaml").is_none());
    let root = extract(&master, &lab.path("root-master01"));
    let env = std::fs::read_to_string(root.join("etc/kubernetes/apiserver.env")).unwrap();
    for flag in [
        "--encryption-provider-config=/etc/kubernetes/encryption-config.yaml",
        "--audit-policy-file=/etc/kubernetes/audit-policy.yaml",
        "--audit-log-path=/var/log/kubernetes/audit.log",
        "--audit-log-maxage=",
        "--audit-log-maxbackup=",
        "--audit-log-maxsize=",
    ] {
        assert!(env.contains(flag), "{flag} missing:\n{env}");
    }
    assert_audit_policy(&root.join("etc/kubernetes/audit-policy.yaml"));
    // verify agrees, and names an EncryptionConfiguration slipped elsewhere
    build(&lab, &server, &["verify", "out/master01"], &[]).assert_ok();
    let key = std::fs::read(state_of_lab(&lab).join("encryption-config.yaml")).unwrap();
    append_to_layer(&layers(&master)[0], "etc/kubernetes/leaked.yaml", &key);
    reseal_first_layer(&master);
    build(&lab, &server, &["verify", "out/master01"], &[])
        .assert_failed()
        .assert_stderr_has("/etc/kubernetes/leaked.yaml holds an EncryptionConfiguration");
}

fn state_of_lab(lab: &Lab) -> PathBuf {
    lab.path("state/lab")
}

/// The audit policy: audit.k8s.io/v1, never a body (no Request or
/// RequestResponse level), Secrets, ConfigMaps and token reviews at
/// Metadata, the health endpoints at None.
fn assert_audit_policy(path: &Path) {
    let p = yaml(path);
    assert_eq!(p["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(p["kind"], "Policy");
    let rules = p["rules"].as_array().unwrap();
    for r in rules {
        let level = r["level"].as_str().unwrap();
        assert!(level == "None" || level == "Metadata", "{r}");
    }
    let level_of = |group: &str, resource: &str| {
        rules
            .iter()
            .find(|r| {
                r["resources"].as_array().is_some_and(|rs| {
                    rs.iter().any(|g| {
                        g["group"] == group
                            && g["resources"]
                                .as_array()
                                .is_some_and(|x| x.iter().any(|n| n == resource))
                    })
                })
            })
            .map(|r| r["level"].as_str().unwrap().to_string())
    };
    assert_eq!(level_of("", "secrets").as_deref(), Some("Metadata"));
    assert_eq!(level_of("", "configmaps").as_deref(), Some("Metadata"));
    assert_eq!(
        level_of("authentication.k8s.io", "tokenreviews").as_deref(),
        Some("Metadata")
    );
    let none = rules
        .iter()
        .find(|r| r["nonResourceURLs"].is_array())
        .unwrap();
    assert_eq!(none["level"], "None");
    assert!(none.to_string().contains("/healthz*"), "{none}");
}

/// `openssl x509 -noout -ext <ext> -subject` of `pem`.
fn openssl_x509(pem: &Path, ext: &str) -> String {
    judge("openssl")
        .args(["x509", "-noout", "-subject", "-ext", ext, "-in"])
        .arg(pem)
        .ok()
}

#[test]
fn every_worker_node_gets_a_kubelet_serving_certificate_from_the_cluster_ca() {
    let lab = Lab::new();
    lab.imgbuild(&["pki", "init"]).assert_ok(); // openssl checks on today's clock
    let dir = state(&lab);
    // every node of the shipped cluster is a worker (the masters too)
    for (node, ip) in [("master01", "172.16.0.101"), ("node03", "172.16.0.106")] {
        let crt = dir.join(format!("nodes/{node}/pki/kubelet.crt"));
        judge("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join("pki/ca.crt"))
            .arg(&crt)
            .ok();
        let sans = openssl_x509(&crt, "subjectAltName");
        assert!(
            sans.contains(&format!("DNS:{node}")) && sans.contains(&format!("IP Address:{ip}")),
            "{sans}"
        );
        assert!(
            sans.contains(&format!("CN = system:node:{node}")) && sans.contains("O = system:nodes"),
            "{sans}"
        );
        let eku = openssl_x509(&crt, "extendedKeyUsage");
        assert!(
            eku.contains("TLS Web Server Authentication") && !eku.contains("Client"),
            "{eku}"
        );
        // signed by the cluster CA, not the etcd one
        let other = judge("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join("pki/etcd/ca.crt"))
            .arg(&crt)
            .output();
        assert!(!other.status.success());
    }
    // an IP change re-issues that node's serving certificate
    let before = std::fs::read(dir.join("nodes/node03/pki/kubelet.crt")).unwrap();
    let lab = lab.edit("cluster.yaml", "ip: 172.16.0.106", "ip: 172.16.0.116");
    lab.imgbuild(&["pki", "init"]).assert_ok(); // openssl checks on today's clock
    let crt = state(&lab).join("nodes/node03/pki/kubelet.crt");
    assert_ne!(std::fs::read(&crt).unwrap(), before);
    assert!(openssl_x509(&crt, "subjectAltName").contains("IP Address:172.16.0.116"));
}

#[test]
fn a_node_image_serves_its_kubelet_certificate_and_the_apiserver_checks_it() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--format", "layers"], &[]).assert_ok();
    let node = lab.path("out/node01");
    let secrets = tar_list(layers(&node).last().unwrap());
    let crt = entry(&secrets, "etc/kubernetes/pki/kubelet.crt").unwrap();
    let key = entry(&secrets, "etc/kubernetes/pki/kubelet.key").unwrap();
    assert!(
        crt.starts_with("-rw-r--r--") && key.starts_with("-rw-------"),
        "{secrets}"
    );
    let root = extract(&node, &lab.path("root-node01"));
    let ca = state_of_lab(&lab).join("pki/ca.crt");
    let served = root.join("etc/kubernetes/pki/kubelet.crt");
    judge("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(&served)
        .ok();
    let sans = openssl_x509(&served, "subjectAltName");
    assert!(
        sans.contains("DNS:node01") && sans.contains("IP Address:127.0.10.11"),
        "{sans}"
    );
    // kubelet reads the drop-in over its config: the certificate, not a CSR
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();
    assert!(
        unit.contains("--config-dir=/etc/kubernetes/kubelet.conf.d"),
        "{unit}"
    );
    let dropin = yaml(&root.join("etc/kubernetes/kubelet.conf.d/10-serving-cert.conf"));
    assert_eq!(dropin["kind"], "KubeletConfiguration");
    assert_eq!(dropin["tlsCertFile"], "/etc/kubernetes/pki/kubelet.crt");
    assert_eq!(
        dropin["tlsPrivateKeyFile"],
        "/etc/kubernetes/pki/kubelet.key"
    );
    assert_eq!(dropin["serverTLSBootstrap"], false);
    let master = extract(&lab.path("out/master01"), &lab.path("root-master01"));
    let env = std::fs::read_to_string(master.join("etc/kubernetes/apiserver.env")).unwrap();
    assert!(
        env.contains("--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt"),
        "{env}"
    );
    build(&lab, &server, &["verify", "out/node01"], &[]).assert_ok();
}

#[test]
fn a_generic_worker_image_asks_the_cluster_ca_for_its_serving_certificate() {
    let (lab, server) = synthetic();
    let plan = lab.plan("worker").assert_ok().stdout();
    assert!(
        !plan.contains("kubelet.crt") && !plan.contains("kubelet.conf.d"),
        "{plan}"
    );
    build_layers(&lab, &server, "worker", "out");
    let root = extract(&lab.path("out/worker"), &lab.path("root-worker"));
    let config = yaml(&root.join("var/lib/kubelet/config.yaml"));
    assert_eq!(config["serverTLSBootstrap"], true, "{config}");
    assert!(config.get("tlsCertFile").is_none(), "{config}");
    assert!(!root.join("etc/kubernetes/pki/kubelet.crt").exists());
}

//! `imgbuild plan`: golden listings of the shipped example.

use crate::lab::{Lab, golden};

#[test]
fn plan_of_master01_matches_its_golden_table() {
    let run = Lab::new().plan("master01").assert_ok();
    golden("plan-master01.txt", &run.stdout());
}

#[test]
fn plan_of_node01_matches_its_golden_table() {
    let run = Lab::new().plan("node01").assert_ok();
    golden("plan-node01.txt", &run.stdout());
}

#[test]
fn plan_json_of_master01_is_canonical_and_matches_its_golden() {
    let run = Lab::new()
        .imgbuild(&["plan", "--role", "master01", "--json"])
        .assert_ok();
    let json: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    // canonical: re-serialising the parsed value gives the same bytes
    let mut again = serde_json::to_string_pretty(&json).unwrap();
    again.push('\n');
    assert_eq!(again, run.stdout(), "plan --json is not canonical");
    golden("plan-master01.json", &run.stdout());
}

#[test]
fn master01_plan_has_seven_layers_the_derived_values_and_0600_secrets() {
    let run = Lab::new()
        .imgbuild(&["plan", "--role", "master01", "--json"])
        .assert_ok();
    let p: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let layers: Vec<&str> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        [
            "00-base",
            "01-etcd",
            "02-control-plane",
            "03-lb",
            "04-worker",
            "05-node",
            "06-secrets"
        ]
    );
    derived_values_of_the_example(&p["derived"]);
    private_files_are_0600_in_the_secrets_layer(&p);
}

/// master01's derived values: service IPs, etcd peers, SANs, VRRP, backends.
fn derived_values_of_the_example(d: &serde_json::Value) {
    assert_eq!(d["kubernetes_service_ip"], "10.96.0.1");
    assert_eq!(d["cluster_dns"], "10.96.0.10");
    assert_eq!(
        d["etcd_initial_cluster"],
        "master01=https://172.16.0.101:2380,master02=https://172.16.0.102:2380,master03=https://172.16.0.103:2380"
    );
    let sans = &d["apiserver_sans"]["master02"];
    for ip in ["172.16.0.102", "172.16.0.100", "10.96.0.1", "127.0.0.1"] {
        assert!(
            sans["ips"].as_array().unwrap().iter().any(|v| v == ip),
            "{ip}"
        );
    }
    for dns in [
        "master02",
        "kubeapi.ilinux.io",
        "kubernetes.default.svc.cluster.local",
    ] {
        assert!(
            sans["dns"].as_array().unwrap().iter().any(|v| v == dns),
            "{dns}"
        );
    }
    let vrrp = d["vrrp"].as_array().unwrap();
    assert_eq!(vrrp[0]["state"], "MASTER");
    assert_eq!(vrrp[1]["state"], "BACKUP");
    assert!(vrrp[0]["priority"].as_u64() > vrrp[1]["priority"].as_u64());
    assert_eq!(d["haproxy_backends"].as_array().unwrap().len(), 3);
}

/// Every private file sits in the secrets layer with 0600.
fn private_files_are_0600_in_the_secrets_layer(p: &serde_json::Value) {
    for layer in p["layers"].as_array().unwrap() {
        for e in layer["entries"].as_array().unwrap() {
            let path = e["path"].as_str().unwrap();
            // a kubeconfig is a .conf right in /etc/kubernetes (kubelet's
            // drop-ins in kubelet.conf.d/ are settings, not secrets)
            let kubeconfig = path
                .strip_prefix("/etc/kubernetes/")
                .is_some_and(|rest| rest.ends_with(".conf") && !rest.contains('/'));
            if path.ends_with(".key") || kubeconfig {
                assert_eq!(layer["kind"], "secrets", "{path}");
                assert_eq!(e["mode"], "0600", "{path}");
            }
        }
    }
}

#[test]
fn a_worker_never_gets_a_ca_key() {
    for target in ["node01", "worker"] {
        let run = Lab::new().plan(target).assert_ok();
        let out = run.stdout();
        assert!(out.contains("/etc/kubernetes/pki/ca.crt"), "{target}");
        assert!(out.contains("bootstrap-kubelet.conf"), "{target}");
        assert!(!out.contains("ca.key"), "{target} gets a CA key:\n{out}");
    }
}

#[test]
fn a_role_target_plans_the_generic_image_without_a_node_layer() {
    let run = Lab::new().plan("worker").assert_ok();
    let out = run.stdout();
    assert!(out.starts_with("generic image of role worker"), "{out}");
    assert!(!out.contains("-node ("), "{out}");
    assert!(out.contains("01-worker"), "{out}");
    assert!(out.contains("02-secrets"), "{out}");
}

#[test]
fn a_role_with_per_node_secrets_has_no_generic_image() {
    Lab::new()
        .plan("etcd")
        .assert_failed()
        .assert_stderr_has("role `etcd` needs per-node secret `pki/etcd/server.crt`")
        .assert_stderr_has("master01, master02, master03");
}

#[test]
fn an_unknown_target_lists_the_nodes_and_roles() {
    Lab::new()
        .plan("master09")
        .assert_failed()
        .assert_stderr_has("`master09` is neither a node nor a role")
        .assert_stderr_has("nodes: master01, master02, master03, node01, node02, node03")
        .assert_stderr_has("roles: control-plane, etcd, lb, worker");
}

#[test]
fn two_roles_writing_one_path_is_an_error() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("layers/lb/etc/etcd")).unwrap();
    std::fs::write(lab.path("layers/lb/etc/etcd/etcd.env"), "x\n").unwrap();
    lab.plan("master01")
        .assert_failed()
        .assert_stderr_has("master01: /etc/etcd/etcd.env is written by both role `lb` (layers/lb) and role `etcd` (layers/etcd-node)");
}

#[test]
fn push_without_an_oci_image_names_the_missing_index_json() {
    let lab = Lab::new();
    lab.imgbuild(&["push", "out/master01", "127.0.0.1:5000/n:1"])
        .assert_failed()
        .assert_stderr_has("cannot read out/master01/oci/index.json");
}

#[test]
fn help_names_every_command_and_global_option() {
    let run = Lab::new().imgbuild(&["--help"]).assert_ok();
    for cmd in [
        "node", "cluster", "push", "plan", "fetch", "bundle", "pki", "verify",
    ] {
        assert!(run.stdout().contains(&format!("  {cmd} ")), "{cmd}");
    }
    for opt in [
        "--manifests",
        "--cache",
        "--state",
        "--mirror",
        "--offline",
        "--jobs",
        "--quiet",
        "--verbose",
    ] {
        assert!(run.stdout().contains(opt), "{opt}");
    }
}

//! Every manifest validation rule, each with a fixture (an edit of the
//! shipped example) whose error text and file:line:column are asserted.

use crate::lab::Lab;

const NODE02: &str = "  - name: node02\n    ip: 172.16.0.105\n";

#[test]
fn the_shipped_example_is_valid_and_quiet() {
    let run = Lab::new().plan("master01").assert_ok();
    assert_eq!(run.stderr(), "", "the shipped example must not warn");
}

#[test]
fn an_unknown_field_is_an_error_at_its_line_and_column() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        NODE02,
        "  - name: node02\n    colour: blue\n    ip: 172.16.0.105\n",
    );
    let loc = lab.at("cluster.yaml", "colour: blue", "colour");
    lab.plan("master01")
        .assert_error(&loc, "unknown field `colour`");
}

#[test]
fn unknown_fields_in_a_role_and_in_pins_are_errors_at_their_lines() {
    let lab = Lab::new()
        .edit("roles/lb.yaml", "services:", "servces:")
        .edit(
            "pins.toml",
            "url = \"https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64\"",
            "url = \"https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64\"\nchecksum = \"x\"",
        );
    let role_loc = lab.at("roles/lb.yaml", "servces:", "servces");
    let pin_loc = lab.at("pins.toml", "checksum = \"x\"", "checksum");
    lab.plan("master01")
        .assert_error(&role_loc, "unknown field `servces`")
        .assert_error(&pin_loc, "unknown field `checksum`");
}

#[test]
fn a_duplicate_node_name_names_both_lines() {
    let lab = Lab::new().edit("cluster.yaml", "- name: node02", "- name: node01");
    // the duplicate is the `name: node01` just above node02's old IP
    let ip = lab.at("cluster.yaml", "ip: 172.16.0.105", "ip");
    let line: usize = ip.split(':').nth(1).unwrap().parse().unwrap();
    let want = format!("manifests/cluster.yaml:{}:11", line - 1);
    let first = lab.at("cluster.yaml", "- name: node01", "node01");
    let first_line = first.split(':').nth(1).unwrap();
    lab.plan("master01").assert_error(
        &want,
        &format!("duplicate node name `node01` (first defined at line {first_line})"),
    );
}

#[test]
fn a_duplicate_node_ip_names_the_first_node_and_its_line() {
    let lab = Lab::new().edit("cluster.yaml", "ip: 172.16.0.105", "ip: 172.16.0.104");
    let loc = lab.at("cluster.yaml", "- name: node02", "");
    let line: usize = loc.split(':').nth(1).unwrap().parse().unwrap();
    let first_line = lab
        .at("cluster.yaml", "ip: 172.16.0.104", "")
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    let want = format!("manifests/cluster.yaml:{}:9", line + 1);
    lab.plan("master01").assert_error(
        &want,
        &format!(
            "node `node02` has IP 172.16.0.104, already used by `node01` at line {first_line}"
        ),
    );
}

#[test]
fn a_node_name_that_is_not_a_dns_label_is_an_error() {
    let lab = Lab::new().edit("cluster.yaml", "- name: node02", "- name: Node_02");
    let loc = lab.at("cluster.yaml", "Node_02", "Node_02");
    lab.plan("master01")
        .assert_error(&loc, "node name `Node_02` is not a DNS-1123 label");
}

#[test]
fn a_role_without_a_definition_lists_the_defined_roles() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "ip: 172.16.0.106\n    arch: amd64\n    roles: [worker]",
        "ip: 172.16.0.106\n    arch: amd64\n    roles: [worker, gpu]",
    );
    let loc = lab.at("cluster.yaml", "roles: [worker, gpu]", "gpu");
    lab.plan("master01").assert_error(
        &loc,
        "node `node03` has role `gpu`, which has no definition (no manifests/roles/gpu.yaml); defined roles: control-plane, etcd, lb, worker",
    );
}

#[test]
fn a_cluster_without_an_etcd_member_is_an_error() {
    let mut lab = Lab::new();
    for n in ["01", "02", "03"] {
        lab = lab.edit(
            "cluster.yaml",
            &format!(
                "ip: 172.16.0.1{n}\n    arch: amd64\n    roles: [etcd, control-plane, lb, worker]"
            ),
            &format!("ip: 172.16.0.1{n}\n    arch: amd64\n    roles: [control-plane, lb, worker]"),
        );
    }
    let loc = lab.at("cluster.yaml", "- name: master01", "-");
    lab.plan("master01").assert_error(
        &loc,
        "no node has the etcd role: the cluster needs at least one etcd member",
    );
}

#[test]
fn an_even_etcd_count_warns_and_still_plans() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "ip: 172.16.0.104\n    arch: amd64\n    roles: [worker]",
        "ip: 172.16.0.104\n    arch: amd64\n    roles: [etcd, worker]",
    );
    let loc = lab.at("cluster.yaml", "- name: master01", "-");
    let run = lab.plan("node01").assert_ok();
    let want = format!(
        "{loc}: warning: 4 etcd members: quorum is 3, so the cluster survives only 1 failure, no more than 3 members would; use an odd count"
    );
    assert!(run.stderr().contains(&want), "{}", run.stderr());
    assert!(run.stdout().contains("01-etcd"), "{}", run.stdout());
    assert!(run.stdout().contains("02-worker"), "{}", run.stdout());
}

#[test]
fn a_service_cidr_overlapping_the_pod_cidr_is_an_error() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "pod_cidr: 10.244.0.0/16",
        "pod_cidr: 10.96.0.0/16",
    );
    let loc = lab.at("cluster.yaml", "service_cidr:", "10.96");
    lab.plan("master01").assert_error(
        &loc,
        "service_cidr 10.96.0.0/12 overlaps pod_cidr 10.96.0.0/16",
    );
}

#[test]
fn a_node_ip_inside_the_service_cidr_is_an_error() {
    let lab = Lab::new().edit("cluster.yaml", "ip: 172.16.0.105", "ip: 10.96.7.5");
    let loc = lab.at("cluster.yaml", "ip: 10.96.7.5", "10.96");
    lab.plan("master01").assert_error(
        &loc,
        "node `node02` IP 10.96.7.5 lies inside service_cidr 10.96.0.0/12",
    );
}

#[test]
fn a_cluster_dns_outside_the_service_cidr_is_an_error() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "  node_cidr_mask: 24\n",
        "  node_cidr_mask: 24\n  cluster_dns: 10.244.0.10\n",
    );
    let loc = lab.at("cluster.yaml", "cluster_dns: 10.244.0.10", "10.244");
    lab.plan("master01").assert_error(
        &loc,
        "cluster_dns 10.244.0.10 is outside service_cidr 10.96.0.0/12",
    );
}

#[test]
fn a_vip_equal_to_a_node_ip_is_an_error() {
    let lab = Lab::new().edit("cluster.yaml", "vip: 172.16.0.100", "vip: 172.16.0.105");
    let loc = lab.at("cluster.yaml", "vip: 172.16.0.105", "172");
    lab.plan("master01")
        .assert_error(&loc, "api.vip 172.16.0.105 is node `node02`'s own IP");
}

#[test]
fn an_lb_port_equal_to_the_apiserver_port_is_an_error() {
    let lab = Lab::new().edit("cluster.yaml", "lb_port: 8443", "lb_port: 6443");
    let loc = lab.at("cluster.yaml", "lb_port: 6443", "6443");
    lab.plan("master01").assert_error(
        &loc,
        "api.lb_port 6443 equals apiserver_port on node `master01`, which runs both haproxy and kube-apiserver",
    );
}

#[test]
fn an_arch_without_a_pin_names_the_node_artifact_and_role() {
    // crictl keeps only its amd64 pin; node03 becomes arm64.
    let lab = Lab::new()
        .edit(
            "pins.toml",
            "name = \"crictl\"\nversion = \"v1.35.0\"\narch = \"arm64\"",
            "name = \"crictl-old\"\nversion = \"v1.35.0\"\narch = \"arm64\"",
        )
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.106\n    arch: amd64",
            "ip: 172.16.0.106\n    arch: arm64",
        );
    // node03's `roles: [worker]` is the last one in the file
    let text = lab.read("cluster.yaml");
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("roles: [worker]"))
        .last()
        .unwrap()
        .0
        + 1;
    let want = format!("manifests/cluster.yaml:{line}:13");
    lab.plan("master01").assert_error(
        &want,
        "node `node03` is arm64 but pins.toml has no arm64 pin for `crictl`, which role `worker` needs",
    );
}

#[test]
fn kubernetes_older_than_1_33_is_an_error() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "kubernetes_version: v1.35.4",
        "kubernetes_version: v1.32.8",
    );
    let loc = lab.at("cluster.yaml", "kubernetes_version", "v1.32.8");
    lab.plan("master01").assert_error(
        &loc,
        "Kubernetes v1.32.8 is older than v1.33, the oldest version imgbuild renders configuration for",
    );
}

#[test]
fn a_pin_without_a_checksum_is_an_error() {
    let lab = Lab::new();
    let text = lab.read("pins.toml");
    let runc_amd64 = text
        .split("[[artifact]]")
        .find(|b| b.contains("runc.amd64"))
        .unwrap()
        .to_string();
    let sha_line = runc_amd64
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_string();
    let lab = lab.edit("pins.toml", &format!("{sha_line}\n"), "");
    let loc = lab.at("pins.toml", "runc.amd64", "url");
    let name_line: usize = loc.split(':').nth(1).unwrap().parse::<usize>().unwrap() - 3;
    let want = format!("manifests/pins.toml:{name_line}:8");
    lab.plan("master01").assert_error(
        &want,
        "pin `runc` v1.4.3 has no checksum: add sha256 or sha512 as published upstream",
    );
}

#[test]
fn a_malformed_pin_checksum_is_an_error() {
    let lab = Lab::new().edit(
        "pins.toml",
        "sha256 = \"f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60\"",
        "sha256 = \"f6ae8efc0fa40079\"",
    );
    let loc = lab.at("pins.toml", "sha256 = \"f6ae8efc0fa40079\"", "\"");
    lab.plan("master01").assert_error(
        &loc,
        "pin `runc` v1.4.3: sha256 must be 64 lowercase hex digits, found 16 characters `f6ae8efc0fa40079`",
    );
}

#[test]
fn a_malformed_image_pin_digest_is_an_error() {
    let lab = Lab::new().edit(
        "pins.toml",
        "digest = \"sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c\"",
        "digest = \"278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c\"",
    );
    let loc = lab.at("pins.toml", "digest = \"278f", "\"");
    lab.plan("master01").assert_error(
        &loc,
        "image pin `pause`: digest `278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c` must be `sha256:` and 64 lowercase hex digits",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let lab = Lab::new()
        .edit("cluster.yaml", "- name: node02", "- name: Node_02")
        .edit("cluster.yaml", "lb_port: 8443", "lb_port: 6443")
        .edit("roles/lb.yaml", "services:", "servces:")
        .edit(
            "pins.toml",
            "sha256 = \"f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60\"",
            "sha256 = \"F6AE\"",
        );
    let run = lab.plan("master01").assert_failed();
    let err = run.stderr();
    for want in [
        "Node_02",
        "api.lb_port 6443",
        "unknown field `servces`",
        "`F6AE`",
    ] {
        assert!(err.contains(want), "missing {want}:\n{err}");
    }
    assert!(err.starts_with("error: the manifests have "), "{err}");
}

#[test]
fn an_unknown_secret_and_a_missing_layer_directory_are_errors() {
    let lab = Lab::new()
        .edit(
            "roles/worker.yaml",
            "  - kube-proxy.conf",
            "  - kube-proxy.cfg",
        )
        .edit("roles/lb.yaml", "node: [lb-node]", "node: [lb-nodes]");
    let s = lab.at("roles/worker.yaml", "kube-proxy.cfg", "kube-proxy.cfg");
    let l = lab.at("roles/lb.yaml", "lb-nodes", "lb-nodes");
    lab.plan("master01")
        .assert_error(&s, "unknown secret `kube-proxy.cfg`; imgbuild generates:")
        .assert_error(&l, "layer directory `lb-nodes` does not exist under");
}

#[test]
fn a_ca_key_on_a_non_control_plane_node_is_refused() {
    let lab = Lab::new().edit(
        "roles/worker.yaml",
        "  - pki/ca.crt\n",
        "  - pki/ca.crt\n  - pki/ca.key\n",
    );
    lab.plan("master01").assert_failed().assert_stderr_has(
        "error: role `worker` would give CA private key pki/ca.key to node `node01`, which is not a control-plane node",
    );
}

#[test]
fn a_yaml_syntax_error_names_file_line_and_column() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "roles: [worker]\n    labels:",
        "roles: [worker\n    labels:",
    );
    // the unclosed flow sequence runs into the next key: the parser stops at its `:`
    let loc = lab.at("cluster.yaml", "    labels:", ":");
    lab.plan("master01")
        .assert_error(&loc, "illegal placement of ':' indicator");
}

#[test]
fn a_role_named_like_an_imgbuild_layer_is_an_error() {
    let lab = Lab::new();
    for name in ["node", "secrets"] {
        std::fs::copy(
            lab.path("manifests/roles/lb.yaml"),
            lab.path(&format!("manifests/roles/{name}.yaml")),
        )
        .unwrap();
    }
    lab.plan("master01")
        .assert_error(
            "manifests/roles/node.yaml:1:1",
            "`node` is the name of a layer imgbuild makes itself",
        )
        .assert_error(
            "manifests/roles/secrets.yaml:1:1",
            "`secrets` is the name of a layer imgbuild makes itself",
        );
}

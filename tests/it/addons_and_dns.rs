//! The control plane's addons apply once per content and again after a
//! change; kubelet hands CoreDNS real upstreams; etcd serves local clients
//! on 127.0.0.1 where the node's address allows. Judged by dash running the
//! shipped scripts with stand-in `kubectl`/`systemctl`, and by the rendered
//! files.

use std::path::Path;

use crate::build::{build, build_layers, built_root, extract, synthetic};
use crate::judge::judge;

/// Runs `script` with dash in a mount namespace where /etc/kubernetes/addons
/// and /var/lib/imgbuild are `root`'s and `kubectl` logs its calls.
fn run_addons(root: &Path, scratch: &Path) -> String {
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(scratch.join("var")).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(&kubectl, "#!/bin/sh\necho \"kubectl $*\" >>\"$CALLS\"\n").unwrap();
    judge("chmod").arg("0755").arg(&kubectl).ok();
    let calls = scratch.join("calls");
    let _ = std::fs::remove_file(&calls);
    let setup = format!(
        "set -e\nmkdir -p /etc/kubernetes/addons /var/lib/imgbuild\n\
         mount --bind '{addons}' /etc/kubernetes/addons\n\
         mount --bind '{var}' /var/lib/imgbuild\n\
         PATH='{bin}':$PATH CALLS='{calls}' exec dash '{script}'\n",
        addons = root.join("etc/kubernetes/addons").display(),
        var = scratch.join("var").display(),
        bin = bin.display(),
        calls = calls.display(),
        script = root.join("usr/local/lib/imgbuild/apply-addons").display(),
    );
    judge("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &setup])
        .ok();
    std::fs::read_to_string(&calls).unwrap_or_default()
}

#[test]
fn addons_apply_once_per_content_and_again_when_it_changes() {
    let (lab, server) = synthetic();
    let root = built_root(&lab, &server, "master01", "out");
    let scratch = lab.path("addons-run");
    let first = run_addons(&root, &scratch);
    assert!(
        first.contains("kubectl apply --server-side --force-conflicts -f /etc/kubernetes/addons/"),
        "{first}"
    );
    assert_eq!(
        run_addons(&root, &scratch),
        "",
        "the same addons applied twice"
    );
    // a pin bump changes an addon: applied again
    std::fs::write(
        root.join("etc/kubernetes/addons/extra.yaml"),
        "kind: ConfigMap\n",
    )
    .unwrap();
    assert!(
        run_addons(&root, &scratch).contains("kubectl apply"),
        "a changed addon was not applied"
    );
}

/// Runs kubelet.service's ExecStartPre with `systemctl is-active` answering
/// `resolved`, in a namespace whose /run is the test's; the link's target.
fn resolv_link(root: &Path, scratch: &Path, resolved: bool) -> String {
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();
    let pre = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=/bin/sh -c '"))
        .filter(|l| l.contains("resolv.conf"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap()
        .to_string();
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let code = if resolved { 0 } else { 3 };
    std::fs::write(bin.join("systemctl"), format!("#!/bin/sh\nexit {code}\n")).unwrap();
    judge("chmod").arg("0755").arg(bin.join("systemctl")).ok();
    let setup = format!(
        "set -e\nmount -t tmpfs tmpfs /run\nmkdir -p /run/systemd/resolve\n\
         echo 'nameserver 192.0.2.53' >/run/systemd/resolve/resolv.conf\n\
         PATH='{bin}':$PATH dash -c '{pre}'\nreadlink /run/imgbuild/resolv.conf\n",
        bin = bin.display()
    );
    judge("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &setup])
        .ok()
        .trim()
        .to_string()
}

#[test]
fn kubelet_gives_pods_the_real_upstreams_when_systemd_resolved_runs() {
    let (lab, server) = synthetic();
    let root = built_root(&lab, &server, "node01", "out");
    let config = std::fs::read_to_string(root.join("var/lib/kubelet/config.yaml")).unwrap();
    assert!(
        config.contains("resolvConf: /run/imgbuild/resolv.conf"),
        "{config}"
    );
    let scratch = lab.path("resolv-run");
    assert_eq!(
        resolv_link(&root, &scratch, true),
        "/run/systemd/resolve/resolv.conf"
    );
    assert_eq!(resolv_link(&root, &scratch, false), "/etc/resolv.conf");
}

#[test]
fn coredns_forwards_to_the_manifests_nameservers_when_there_are_some() {
    let (lab, server) = synthetic();
    assert!(
        !lab.read("cluster.yaml").contains("host_network"),
        "the lab sets no host network"
    );
    build_layers(&lab, &server, "master01", "out");
    let corefile = |out: &str| {
        let root = extract(
            &lab.path(&format!("{out}/master01")),
            &lab.path(&format!("{out}-root")),
        );
        std::fs::read_to_string(root.join("etc/kubernetes/addons/coredns.yaml")).unwrap()
    };
    assert!(corefile("out").contains("forward . /etc/resolv.conf"));
    let text =
        lab.read("cluster.yaml") + "host_network:\n  nameservers: [192.0.2.53, 192.0.2.54]\n";
    std::fs::write(lab.path("manifests/cluster.yaml"), text).unwrap();
    build(
        &lab,
        &server,
        &[
            "node", "--role", "master01", "--format", "layers", "--out", "b",
        ],
        &[],
    )
    .assert_ok();
    let c = corefile("b");
    assert!(c.contains("forward . 192.0.2.53 192.0.2.54"), "{c}");
}

#[test]
fn etcd_listens_on_127_0_0_1_too_unless_the_node_address_is_a_loopback_one() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "master01", "out");
    let env = std::fs::read_to_string(
        extract(&lab.path("out/master01"), &lab.path("a")).join("etc/etcd/etcd.env"),
    )
    .unwrap();
    let listen = env
        .lines()
        .find(|l| l.starts_with("ETCD_LISTEN_CLIENT_URLS="))
        .unwrap();
    assert!(
        !listen.contains("127.0.0.1"),
        "the lab's loopback members would collide: {listen}"
    );
    let ip = listen
        .trim_start_matches("ETCD_LISTEN_CLIENT_URLS=https://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let lab = lab.edit("cluster.yaml", &format!("ip: {ip}\n"), "ip: 10.77.0.1\n");
    build(
        &lab,
        &server,
        &[
            "node", "--role", "master01", "--format", "layers", "--out", "b",
        ],
        &[],
    )
    .assert_ok();
    let env = std::fs::read_to_string(
        extract(&lab.path("b/master01"), &lab.path("b-root")).join("etc/etcd/etcd.env"),
    )
    .unwrap();
    assert!(
        env.contains("ETCD_LISTEN_CLIENT_URLS=https://10.77.0.1:2379,https://127.0.0.1:2379"),
        "{env}"
    );
}

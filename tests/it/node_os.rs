//! What a node needs of its OS and hardware: the Debian packages its roles
//! name (checked by the first-boot script before it changes anything), its
//! NIC matched by MAC and named in network-config (judged by cloud-init's
//! own converter), keepalived's interface per node (keepalived -t), how its
//! etcd member starts (a real etcd reads the rendered env), the kubelet's
//! rules for self-set labels, and the `127.0.1.1` line of /etc/hosts.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{build, extract, synthetic};
use crate::etcd::Members;
use crate::judge::judge;
use crate::lab::Lab;
use crate::seed_script::{Os, apply_layers, run};

/// `cloud-init schema` accepts the user-data of `out/<node>`.
fn cloud_init_accepts(lab: &Lab, node: &str) {
    judge("cloud-init")
        .args(["schema", "--config-file"])
        .arg(lab.path(&format!("out/{node}/cloud-init/user-data")))
        .ok();
}

// ---- #2: OS packages --------------------------------------------------

#[test]
fn plan_lists_the_os_packages_of_every_role_of_the_node() {
    let lab = Lab::new();
    let table = lab.plan("master01").assert_ok().stdout();
    assert!(
        table.contains("\nOS packages: curl, haproxy, keepalived, mount, nftables, procps\n"),
        "{table}"
    );
    let json = lab
        .imgbuild(&["plan", "--role", "node01", "--json"])
        .assert_ok()
        .stdout();
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        p["os_packages"],
        serde_json::json!(["mount", "nftables", "procps"])
    );
}

#[test]
fn an_os_package_that_is_no_debian_package_name_is_an_error_at_its_place() {
    let lab = Lab::new().edit(
        "roles/lb.yaml",
        "os_packages: [haproxy, keepalived, curl]",
        "os_packages: [haproxy, Keepalived, curl, \"curl;reboot\"]",
    );
    let at = lab.at("roles/lb.yaml", "os_packages:", "Keepalived");
    let semi = lab.at("roles/lb.yaml", "os_packages:", "\"curl;reboot");
    lab.plan("master01")
        .assert_error(
            &at,
            "os_packages: `Keepalived` is not a Debian package name",
        )
        .assert_stderr_has(&format!(
            "{semi}: error: os_packages: `curl;reboot` is not a Debian package name"
        ));
}

#[test]
fn ipvs_mode_needs_ipset_and_iptables_in_the_role_that_runs_kube_proxy() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "kube_proxy_mode: nftables",
        "kube_proxy_mode: ipvs",
    );
    let at = lab.at("roles/worker.yaml", "- kube-proxy.service", "kube-proxy");
    lab.plan("node01").assert_error(
        &at,
        "role `worker` runs kube-proxy.service, and kube_proxy_mode ipvs (cluster.yaml) needs the OS packages ipset, iptables: add ipset, iptables to the role's os_packages",
    );
    let lab = lab.edit(
        "roles/worker.yaml",
        "os_packages: [nftables]",
        "os_packages: [ipset, iptables]",
    );
    let table = lab.plan("node01").assert_ok().stdout();
    assert!(
        table.contains("OS packages: ipset, iptables, mount, procps"),
        "{table}"
    );
}

#[test]
fn first_boot_stops_before_changing_anything_when_an_os_package_is_missing() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    cloud_init_accepts(&lab, "master01");
    let script = apply_layers(&lab.path("out/master01"));
    let os = Os {
        removed: &["keepalived"],
        unknown: &["procps"],
        ..Os::default()
    };
    let b = run(&lab, "master01", &script, &os);
    assert!(!b.ok, "{}", b.calls);
    assert!(
        b.stderr.contains(
            "imgbuild: master01: the OS lacks the packages keepalived procps, which its roles need; install them first (apt-get install keepalived procps). Nothing was changed."
        ),
        "{}",
        b.stderr
    );
    assert_eq!(b.calls, "", "nothing may run before the check");
    // every package installed: it goes on
    let b = run(&lab, "master01", &script, &Os::default());
    assert!(b.ok, "{}", b.stderr);
    assert!(b.calls.contains("tar -xzpf"), "{}", b.calls);
}

#[test]
fn a_seed_that_downloads_its_layers_checks_for_curl_too() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &[
            "node",
            "--role",
            "worker",
            "--seed-layers",
            "url=https://layers.example/lab",
        ],
        &[],
    )
    .assert_ok();
    let script = apply_layers(&lab.path("out/worker"));
    assert!(
        script.contains("for p in curl mount nftables procps; do"),
        "{script}"
    );
    let os = Os {
        unknown: &["curl"],
        ..Os::default()
    };
    let b = run(&lab, "worker", &script, &os);
    assert!(
        !b.ok && b.stderr.contains("lacks the packages curl,"),
        "{}",
        b.stderr
    );
    assert_eq!(b.calls, "");
}

// ---- minor: 127.0.1.1 in /etc/hosts -------------------------------------

const HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n172.16.0.100\tkubeapi\n";

#[test]
fn first_boot_gives_the_node_its_127_0_1_1_line_in_etc_hosts() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    let os = Os {
        hosts: HOSTS,
        ..Os::default()
    };
    let b = run(&lab, "master01", &script, &os);
    assert!(b.ok, "{}", b.stderr);
    assert_eq!(
        b.hosts,
        "127.0.0.1\tlocalhost\n172.16.0.100\tkubeapi\n127.0.1.1\tmaster01\n"
    );
    // a generic image: the name its provisioning set
    build(&lab, &server, &["node", "--role", "worker"], &[]).assert_ok();
    let script = apply_layers(&lab.path("out/worker"));
    let os = Os {
        hosts: HOSTS,
        hostname: "worker-7",
        ..Os::default()
    };
    let b = run(&lab, "worker", &script, &os);
    assert!(b.ok, "{}", b.stderr);
    assert!(b.hosts.ends_with("\n127.0.1.1\tworker-7\n"), "{}", b.hosts);
    assert_eq!(b.hosts.matches("127.0.1.1").count(), 1, "{}", b.hosts);
}

// ---- minor: labels the kubelet refuses ----------------------------------

#[test]
fn a_node_role_label_is_refused_with_the_kubectl_way_to_set_it() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "      topology.kubernetes.io/zone: rack-b",
        "      topology.kubernetes.io/zone: rack-b\n      node-role.kubernetes.io/worker: \"\"",
    );
    let at = lab.at(
        "cluster.yaml",
        "node-role.kubernetes.io/worker",
        "node-role",
    );
    lab.plan("node03").assert_error(
        &at,
        "node `node03`: the kubelet refuses to set label `node-role.kubernetes.io/worker` on its own Node (--node-labels takes a kubernetes.io or k8s.io key only under kubelet.kubernetes.io or node.kubernetes.io or from its short list such as topology.kubernetes.io/zone, and exits otherwise); apply it with `kubectl label node node03 node-role.kubernetes.io/worker=<value>` once the node has joined",
    );
}

// ---- #9: the NIC by MAC, keepalived's interface per node ----------------

const MAC: &str = "52:54:00:12:34:56";

/// `cloud-init devel net-convert` of `out/<node>`'s network-config into
/// `kind` (eni, networkd); returns every file it wrote, path and text.
fn net_convert(lab: &Lab, node: &str, kind: &str) -> String {
    let out = lab.path(&format!("net-{node}-{kind}"));
    judge("cloud-init")
        .args([
            "devel",
            "net-convert",
            "-k",
            "yaml",
            "-D",
            "debian",
            "-O",
            kind,
        ])
        .arg("-p")
        .arg(lab.path(&format!("out/{node}/cloud-init/network-config")))
        .arg("-d")
        .arg(&out)
        .ok();
    let mut files = crate::lab::files_below(&out);
    files.sort();
    files
        .iter()
        .map(|f| {
            format!(
                "== {}\n{}",
                f.display(),
                std::fs::read_to_string(f).unwrap()
            )
        })
        .collect()
}

#[test]
fn a_nodes_mac_matches_its_nic_and_names_it_in_network_config() {
    let (lab, server) = synthetic();
    let lab = lab.edit(
        "cluster.yaml",
        "ip: 127.0.10.11\n",
        &format!("ip: 127.0.10.11\n    mac: \"{}\"\n", MAC.to_uppercase()),
    );
    for node in ["node01", "node02"] {
        build(&lab, &server, &["node", "--role", node], &[]).assert_ok();
        cloud_init_accepts(&lab, node);
    }
    // cloud-init's own renderers: networkd matches the MAC and the name it
    // gives; ENI renames the NIC with a udev rule
    let networkd = net_convert(&lab, "node01", "networkd");
    assert!(
        networkd.contains(&format!("MACAddress={MAC}\nName=eth0\n")),
        "{networkd}"
    );
    let eni = net_convert(&lab, "node01", "eni");
    assert!(
        eni.contains(&format!("ATTR{{address}}==\"{MAC}\", NAME=\"eth0\"")),
        "{eni}"
    );
    assert!(
        eni.contains("iface eth0 inet static\n    address 127.0.10.11/24"),
        "{eni}"
    );
    // without a MAC: matched by name, nothing renamed
    let eni = net_convert(&lab, "node02", "eni");
    assert!(!eni.contains("NAME="), "{eni}");
    assert!(eni.contains("iface eth0 inet static"), "{eni}");
}

#[test]
fn macs_are_checked_and_unique() {
    let lab = Lab::new()
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.104\n",
            "ip: 172.16.0.104\n    mac: \"52:54:00:ab:cd:01\"\n",
        )
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.105\n",
            "ip: 172.16.0.105\n    mac: \"52:54:00:AB:CD:01\"\n",
        )
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.106\n",
            "ip: 172.16.0.106\n    mac: \"01:00:5e:00:00:01\"\n",
        );
    let second = lab.at("cluster.yaml", "52:54:00:AB:CD:01", "\"52");
    let multicast = lab.at("cluster.yaml", "01:00:5e:00:00:01", "\"01");
    lab.plan("node01")
        .assert_error(
            &second,
            "node `node02` has MAC 52:54:00:ab:cd:01, already used by `node01` at line",
        )
        .assert_stderr_has(&format!(
            "{multicast}: error: node `node03`: mac `01:00:5e:00:00:01` is a multicast address"
        ));
}

/// A network interface of this host other than lo.
fn real_interface() -> String {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n != "lo")
        .expect("a network interface other than lo")
}

/// `keepalived -t` of `out/<node>`'s keepalived.conf, its absolute paths
/// rebased onto the extracted root; (accepted, config, output).
fn keepalived_t(lab: &Lab, node: &str) -> (bool, String, String) {
    let root = extract(
        &lab.path(&format!("out/{node}")),
        &lab.path(&format!("root-{node}")),
    );
    let cfg = std::fs::read_to_string(root.join("etc/keepalived/keepalived.conf")).unwrap();
    let rebased = cfg
        .replace(
            "/etc/keepalived/",
            &format!("{}/etc/keepalived/", root.display()),
        )
        .replace(
            "/etc/kubernetes/",
            &format!("{}/etc/kubernetes/", root.display()),
        );
    let conf = root.join("keepalived-test.conf");
    std::fs::write(&conf, rebased).unwrap();
    let o = judge("keepalived").arg("-t").arg("-f").arg(&conf).output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), cfg, text)
}

#[test]
fn keepalived_binds_the_interface_its_node_names() {
    let iface = real_interface();
    let (lab, server) = synthetic();
    // the lab's api.vrrp_interface is lo, which keepalived refuses for VRRP;
    // master02 names its own
    let lab = lab.edit(
        "cluster.yaml",
        "ip: 127.0.10.2\n",
        &format!("ip: 127.0.10.2\n    vrrp_interface: {iface}\n"),
    );
    for node in ["master01", "master02"] {
        build(&lab, &server, &["node", "--role", node], &[]).assert_ok();
    }
    let (ok, cfg, out) = keepalived_t(&lab, "master02");
    assert!(cfg.contains(&format!("    interface {iface}\n")), "{cfg}");
    assert!(ok, "keepalived -t refused master02's config:\n{out}\n{cfg}");
    let (ok, cfg, out) = keepalived_t(&lab, "master01");
    assert!(cfg.contains("    interface lo\n"), "{cfg}");
    assert!(!ok && out.contains("loopback"), "{out}");
}

#[test]
fn node_settings_for_a_role_the_node_lacks_are_errors() {
    let lab = Lab::new()
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.104\n",
            "ip: 172.16.0.104\n    vrrp_interface: ens3\n    etcd_join: existing\n",
        )
        .edit(
            "cluster.yaml",
            "ip: 172.16.0.101\n",
            "ip: 172.16.0.101\n    etcd_join: later\n    vrrp_interface: \"ens3\\n}\"\n",
        );
    let run = lab.plan("node01").assert_failed();
    for want in [
        "node `node01` sets vrrp_interface but has no `lb` role",
        "node `node01` sets etcd_join but has no `etcd` role",
        "node `master01`: etcd_join `later` is not `new` or `existing`",
        "node `master01`: vrrp_interface `ens3\\n}` is not a network interface name",
    ] {
        assert!(run.stderr().contains(want), "{want}\n{}", run.stderr());
    }
}

// ---- #11: etcd_join ----------------------------------------------------

/// The variables of an env file, its paths rebased onto `root`.
fn env_vars(root: &Path, file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let v = v
                .replace(
                    "/etc/kubernetes",
                    &format!("{}/etc/kubernetes", root.display()),
                )
                .replace("/var/lib/etcd", &format!("{}/var/lib/etcd", root.display()));
            (k.to_string(), v)
        })
        .collect()
}

/// Debian's etcd started with exactly the variables of `root`'s etcd.env.
fn start_etcd(root: &Path) -> std::process::Child {
    let log = std::fs::File::create(root.join("etcd.log")).unwrap();
    Command::new("etcd")
        .env_clear()
        .envs(env_vars(root, "etc/etcd/etcd.env"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("etcd (Debian etcd-server) must be installed: bash scripts/setup")
}

#[test]
fn etcd_join_existing_renders_existing_and_a_real_etcd_then_joins_instead_of_forming() {
    let (lab, server) = synthetic();
    // addresses of this test's own, apart from the other etcd tests'
    let cluster = lab.read("cluster.yaml").replace("127.0.10.", "127.0.14.");
    std::fs::write(lab.path("manifests/cluster.yaml"), cluster).unwrap();
    let lab = lab.edit(
        "cluster.yaml",
        "ip: 127.0.14.2\n",
        "ip: 127.0.14.2\n    etcd_join: existing\n",
    );
    let mut roots: Vec<PathBuf> = Vec::new();
    for node in ["master01", "master02"] {
        build(&lab, &server, &["node", "--role", node], &[]).assert_ok();
        roots.push(extract(
            &lab.path(&format!("out/{node}")),
            &lab.path(&format!("root-{node}")),
        ));
    }
    let state = |root: &Path| {
        env_vars(root, "etc/etcd/etcd.env")
            .into_iter()
            .find(|(k, _)| k == "ETCD_INITIAL_CLUSTER_STATE")
            .map(|(_, v)| v)
    };
    assert_eq!(state(&roots[0]).as_deref(), Some("new"));
    assert_eq!(state(&roots[1]).as_deref(), Some("existing"));

    // master02 asks its peers for the cluster it was added to: none answers
    let mut joining = Members(vec![start_etcd(&roots[1])]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = joining.0[0].try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the joining member did not give up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(roots[1].join("etcd.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("could not retrieve cluster information from the given URLs"),
        "{log}"
    );
    joining.0.clear();

    // master01 forms the cluster: it starts and serves its client port
    let mut forming = Members(vec![start_etcd(&roots[0])]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect("127.0.14.1:2379").is_err() {
        let log = std::fs::read_to_string(roots[0].join("etcd.log")).unwrap_or_default();
        assert!(
            forming.0[0].try_wait().unwrap().is_none(),
            "the forming member exited:\n{log}"
        );
        assert!(Instant::now() < deadline, "etcd did not listen:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(roots[0].join("etcd.log")).unwrap();
    assert!(
        !log.contains("could not retrieve cluster information"),
        "{log}"
    );
}

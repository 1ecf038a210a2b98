//! A real 3-member etcd cluster (Debian's etcd) on loopback addresses, with
//! the generated server and peer certificates and client-cert auth on.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::judge::judge;
use crate::lab::Lab;

/// Kills the members when the test ends, however it ends.
pub struct Members(pub Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts one member per (name, ip), with certs from `pki(name, file)`.
pub fn start_members(
    work: &Path,
    members: &[(&str, &str)],
    pki: impl Fn(&str, &str) -> PathBuf,
) -> Members {
    let initial: Vec<String> = members
        .iter()
        .map(|(n, ip)| format!("{n}=https://{ip}:2380"))
        .collect();
    let mut children = Members(Vec::new());
    for (name, ip) in members {
        let log = std::fs::File::create(work.join(format!("{name}.log"))).unwrap();
        let child = Command::new("etcd")
            .arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                work.join(format!("{name}.etcd")).display()
            ))
            .arg(format!("--listen-peer-urls=https://{ip}:2380"))
            .arg(format!("--listen-client-urls=https://{ip}:2379"))
            .arg(format!("--initial-advertise-peer-urls=https://{ip}:2380"))
            .arg(format!("--advertise-client-urls=https://{ip}:2379"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=imgbuild-test")
            .arg(format!("--cert-file={}", pki(name, "server.crt").display()))
            .arg(format!("--key-file={}", pki(name, "server.key").display()))
            .arg(format!(
                "--trusted-ca-file={}",
                pki(name, "ca.crt").display()
            ))
            .arg("--client-cert-auth=true")
            .arg(format!(
                "--peer-cert-file={}",
                pki(name, "peer.crt").display()
            ))
            .arg(format!(
                "--peer-key-file={}",
                pki(name, "peer.key").display()
            ))
            .arg(format!(
                "--peer-trusted-ca-file={}",
                pki(name, "ca.crt").display()
            ))
            .arg("--peer-client-cert-auth=true")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed: bash scripts/setup");
        children.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, ip) in members {
        while TcpStream::connect(format!("{ip}:2379")).is_err() {
            assert!(Instant::now() < deadline, "etcd on {ip} did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    children
}

/// `etcdctl endpoint health --cluster` with a client cert; (success, output).
/// Waits until every member of `endpoints` answers: `--cluster` only checks
/// members that have already published their client URLs.
pub fn health(endpoints: &str, ca: &Path, cert: &Path, key: &Path) -> (bool, String) {
    let want = endpoints.split(',').count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(endpoints, ca, cert, key)
            .args(["--command-timeout=5s", "endpoint", "health", "--cluster"])
            .output();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // a fresh cluster needs a moment to elect a leader and publish
        let all = out.status.success() && text.matches("is healthy").count() == want;
        if all || Instant::now() > deadline {
            return (all, text);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `etcdctl` (API 3) on `endpoints` with the CA `ca` and a client cert.
fn etcdctl(endpoints: &str, ca: &Path, cert: &Path, key: &Path) -> crate::judge::Judge {
    judge("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()))
}

/// The lab's three masters on loopback addresses.
const MEMBERS: [(&str, &str); 3] = [
    ("master01", "127.0.4.1"),
    ("master02", "127.0.4.2"),
    ("master03", "127.0.4.3"),
];
const ENDPOINTS: &str = "https://127.0.4.1:2379,https://127.0.4.2:2379,https://127.0.4.3:2379";

#[test]
fn etcd_with_the_generated_certs_is_healthy_and_refuses_a_foreign_client_cert() {
    let lab = Lab::new()
        .edit("cluster.yaml", "vip: 172.16.0.100", "vip: 127.0.4.100")
        .edit("cluster.yaml", "ip: 172.16.0.101", "ip: 127.0.4.1")
        .edit("cluster.yaml", "ip: 172.16.0.102", "ip: 127.0.4.2")
        .edit("cluster.yaml", "ip: 172.16.0.103", "ip: 127.0.4.3");
    lab.imgbuild(&["pki", "init"]).assert_ok();
    let state = lab.path("state/ilinux");
    let s = state.clone();
    let _etcd = start_members(lab.dir.path(), &MEMBERS, move |node, file| match file {
        "ca.crt" => s.join("pki/etcd/ca.crt"),
        f => s.join(format!("nodes/{node}/pki/etcd/{f}")),
    });
    let (ok, out) = health_as(&state, "pki/etcd/healthcheck-client");
    assert!(ok, "cluster not healthy:\n{out}");
    assert_eq!(out.matches("is healthy").count(), 3, "{out}");

    // the apiserver's etcd client certificate is accepted too
    let (ok, out) = health_as(&state, "pki/apiserver-etcd-client");
    assert!(ok, "{out}");

    // a client certificate from another cluster's CA is refused
    assert!(
        !foreign_client_is_accepted(&state),
        "a foreign client cert was accepted"
    );
    // the members' own logs say why: the client's certificate is not theirs
    let logs: String = MEMBERS
        .iter()
        .map(|(n, _)| std::fs::read_to_string(lab.path(&format!("{n}.log"))).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("certificate signed by unknown authority"),
        "refused for another reason than the certificate"
    );
}

/// `health` of the cluster, as the client `<client>.crt` of `state`.
fn health_as(state: &Path, client: &str) -> (bool, String) {
    health(
        ENDPOINTS,
        &state.join("pki/etcd/ca.crt"),
        &state.join(format!("{client}.crt")),
        &state.join(format!("{client}.key")),
    )
}

/// Whether the cluster of `state` answers a client whose certificate another
/// cluster's CA issued.
fn foreign_client_is_accepted(state: &Path) -> bool {
    let other = Lab::new().edit("cluster.yaml", "name: ilinux", "name: other");
    other.imgbuild(&["pki", "init"]).assert_ok();
    let o = other.path("state/other");
    etcdctl(
        ENDPOINTS,
        &state.join("pki/etcd/ca.crt"),
        &o.join("pki/etcd/healthcheck-client.crt"),
        &o.join("pki/etcd/healthcheck-client.key"),
    )
    .args([
        "--command-timeout=3s",
        "--dial-timeout=3s",
        "endpoint",
        "health",
    ])
    .output()
    .status
    .success()
}

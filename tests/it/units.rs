//! The rendered services, judged by the programs that run them: systemd's
//! own verifier for every unit a layer ships, dash for keepalived's check
//! script against a real TLS listener.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::build::{build, built_root, extract, synthetic};
use crate::judge::judge;

/// Every unit file under `root/etc/systemd/system`.
fn units(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root.join("etc/systemd/system"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "service"))
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

/// The parts of an OS the layers run on that systemd's verifier looks for:
/// the host's own unit tree (sysinit.target, ...) and /bin/sh. The base OS
/// layer will bring its own; until then the host stands in.
fn with_host_systemd(root: &Path) {
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    judge("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(root.join("usr/lib/systemd/"))
        .ok();
    judge("cp")
        .arg("-L")
        .arg("/bin/sh")
        .arg(root.join("bin/sh"))
        .ok();
}

#[test]
fn systemd_analyze_verify_accepts_every_unit_of_a_master_and_a_worker() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["cluster", "--format", "layers"], &[]).assert_ok();
    for node in ["master01", "node01"] {
        let root = extract(
            &lab.path(&format!("out/{node}")),
            &lab.path(&format!("root-{node}")),
        );
        let list = units(&root);
        with_host_systemd(&root);
        assert!(!list.is_empty(), "{node} ships no unit");
        judge("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(list.iter().map(|u| {
                u.trim_start_matches(&root.display().to_string())
                    .to_string()
            }))
            .ok();
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -www` on 127.0.0.1:port with the apiserver's
/// certificate: answers any GET (/readyz too) with 200.
fn tls_listener(state: &Path, port: u16) -> Server {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(state.join("nodes/master01/pki/apiserver.crt"))
        .arg("-key")
        .arg(state.join("nodes/master01/pki/apiserver.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Server(child)
}

#[test]
fn the_vip_check_passes_only_while_the_api_answers_through_haproxy() {
    let (lab, server) = synthetic();
    let root = built_root(&lab, &server, "master01", "out");
    let script = std::fs::read_to_string(root.join("etc/keepalived/check_haproxy.sh")).unwrap();
    let cfg = std::fs::read_to_string(root.join("etc/haproxy/haproxy.cfg")).unwrap();
    let lb_port = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("bind *:"))
        .unwrap();
    assert!(
        script.contains(&format!("https://127.0.0.1:{lb_port}/readyz")),
        "{script}"
    );
    // the same script, pointed at a port this test owns
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let check = lab.path("check_haproxy.sh");
    std::fs::write(
        &check,
        script.replace(&format!(":{lb_port}/"), &format!(":{port}/")),
    )
    .unwrap();
    let run = || judge("dash").arg(&check).output().status.success();
    assert!(!run(), "the check passed with nothing listening");
    let listener = tls_listener(&lab.path("state/lab"), port);
    assert!(run(), "the check failed with the API answering");
    drop(listener);
    assert!(!run(), "the check passed after the API went away");
}

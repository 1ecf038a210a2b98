//! `verify` treats the directory it checks as hostile: nothing followed out
//! of it, nothing but regular files opened, private material found wherever
//! it hides in what is shared, every problem reported.

use std::process::Command;

use crate::build::{append_to_layer, build, build_layers, reseal_first_layer, synthetic};
use crate::lab::Lab;

/// `imgbuild verify DIR` under `timeout`, so a hang fails instead of blocking.
fn verify_within(lab: &Lab, dir: &str, secs: u32) -> (bool, String) {
    let o = Command::new("timeout")
        .arg(secs.to_string())
        .arg(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["--cache", "cache", "verify", dir])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(124), "verify hung on {dir}");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn add_to_sums(lab: &Lab, dir: &str, line: &str) {
    let p = lab.path(&format!("{dir}/SHA256SUMS"));
    let mut s = std::fs::read_to_string(&p).unwrap();
    s.push_str(line);
    std::fs::write(p, s).unwrap();
}

#[test]
fn verify_opens_no_fifo_follows_no_link_and_reports_every_problem() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "out");
    let dir = lab.path("out/node01");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let fifo = dir.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let zeros = "0".repeat(64);
    add_to_sums(
        &lab,
        "out/node01",
        &format!("{zeros}  pipe\n{zeros}  ../../../dev/zero\n"),
    );
    let (ok, err) = verify_within(&lab, "out/node01", 60);
    assert!(!ok, "{err}");
    for want in [
        "passwd is a symbolic link",
        "pipe is not a regular file",
        "\"../../../dev/zero\", which is not a path inside the directory",
    ] {
        assert!(err.contains(want), "lacks `{want}`:\n{err}");
    }
}

#[test]
fn verify_finds_a_key_past_the_first_megabyte_of_a_shared_layer() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "node01", "out");
    let dir = lab.path("out/node01");
    let mut big = vec![b'x'; 3 << 20];
    big.extend_from_slice(
        b"\n-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n",
    );
    let layer = dir.join("layers/00-base.tar.gz");
    append_to_layer(&layer, "usr/local/bin/innocent", &big);
    reseal_first_layer(&dir);
    let (ok, err) = verify_within(&lab, "out/node01", 120);
    assert!(!ok);
    assert!(
        err.contains("/usr/local/bin/innocent holds a PEM private key outside the secrets layer"),
        "{err}"
    );
}

#[test]
fn verify_goes_on_past_an_unreadable_layer_and_checks_published_segments() {
    let (lab, server) = synthetic();
    let args = [
        "node",
        "--role",
        "node01",
        "--seed-layers",
        "url=http://boot/l",
    ];
    build(&lab, &server, &args, &[]).assert_ok();
    let dir = lab.path("out/node01");
    // a truncated layer: it cannot be read to its end
    let base = dir.join("layers/00-base.tar.gz");
    let bytes = std::fs::read(&base).unwrap();
    std::fs::remove_file(&base).unwrap();
    std::fs::write(&base, &bytes[..bytes.len() / 2]).unwrap();
    // a published PXE segment with a token appended as a gzip member
    let segment = std::fs::read_dir(dir.join("pxe/segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b"token-secret: 0123456789abcdef").unwrap();
    let mut seg = std::fs::read(&segment).unwrap();
    std::fs::remove_file(&segment).unwrap();
    seg.extend_from_slice(&gz.finish().unwrap());
    std::fs::write(&segment, seg).unwrap();
    let (ok, err) = verify_within(&lab, "out/node01", 60);
    assert!(!ok);
    assert!(
        err.contains("layers/00-base.tar.gz: cannot read it"),
        "{err}"
    );
    assert!(
        err.contains("is published to many machines and holds a bootstrap token"),
        "{err}"
    );
    assert!(err.contains("layers/00-base.tar.gz: sha256 is"), "{err}");
}

#[test]
fn verify_names_a_certificate_that_does_not_chain_to_the_states_ca() {
    let (lab, server) = synthetic();
    build_layers(&lab, &server, "master01", "out");
    build(&lab, &server, &["verify", "out/master01"], &[]).assert_ok();
    // the state's CAs replaced after the build: the node's certificates are
    // no longer the state's
    build(&lab, &server, &["pki", "renew", "--ca"], &[]).assert_ok();
    build(&lab, &server, &["verify", "out/master01"], &[])
        .assert_failed()
        .assert_stderr_has(
            "/etc/kubernetes/pki/apiserver.crt does not chain to the CA in state/lab",
        )
        .assert_stderr_has(
            "/etc/kubernetes/pki/etcd/server.crt does not chain to the CA in state/lab",
        );
}

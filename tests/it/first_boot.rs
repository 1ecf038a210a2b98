//! The first-boot script a seed carries (cloud-init's apply-layers), run by
//! dash in a mount namespace where /run/imgbuild, /var/lib/imgbuild and the
//! seed are the test's own, and `systemctl`, `tar`, `sysctl` and
//! `mountpoint` are stand-ins that log what they were asked: the script
//! checks the OS before it changes anything, applies once, and restarts the
//! services when the layers change.

use std::path::Path;

use crate::build::{build, synthetic};
use crate::judge::judge;
use crate::lab::Lab;

/// The apply-layers script inside a node's user-data.
fn apply_layers(dir: &Path) -> String {
    let ud = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    let body = ud.split("    content: |\n").nth(1).unwrap();
    body.lines()
        .take_while(|l| l.starts_with("      ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap_or(l)))
        .collect()
}

/// Runs `script` with dash in a private mount namespace; `hide_os_units`
/// hides the host's /usr/lib/systemd/system. Returns (success, calls, stderr).
fn run(lab: &Lab, node: &str, script: &str, hide_os_units: bool) -> (bool, String, String) {
    let t = lab.path("first-boot");
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::create_dir_all(t.join("var")).unwrap();
    std::fs::write(t.join("apply-layers"), script).unwrap();
    for stub in ["systemctl", "tar", "sysctl", "mountpoint", "blkid", "mount"] {
        let p = t.join("bin").join(stub);
        std::fs::write(&p, format!("#!/bin/sh\necho \"{stub} $*\" >>\"$CALLS\"\n")).unwrap();
        judge("chmod").arg("0755").arg(&p).ok();
    }
    let calls = t.join("calls");
    let _ = std::fs::remove_file(&calls);
    let seed = lab.path(&format!("out/{node}"));
    let hide = if hide_os_units {
        "mount -t tmpfs tmpfs /usr/lib/systemd/system\n"
    } else {
        ""
    };
    let setup = format!(
        "set -e\nmkdir -p /run/imgbuild /var/lib/imgbuild\n\
         mount -t tmpfs tmpfs /run/imgbuild\nmkdir -p /run/imgbuild/seed\n\
         mount --bind '{seed}' /run/imgbuild/seed\n\
         mount --bind '{var}' /var/lib/imgbuild\n{hide}\
         PATH='{bin}':$PATH CALLS='{calls}' exec dash '{script}'\n",
        seed = seed.display(),
        var = t.join("var").display(),
        bin = t.join("bin").display(),
        calls = calls.display(),
        script = t.join("apply-layers").display(),
    );
    let o = judge("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &setup])
        .output();
    let logged = std::fs::read_to_string(&calls).unwrap_or_default();
    (
        o.status.success(),
        logged,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn first_boot_applies_once_and_restarts_the_services_when_the_layers_change() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    let (ok, calls, err) = run(&lab, "master01", &script, false);
    assert!(ok, "{err}\n{calls}");
    assert!(calls.contains("tar -xzpf 00-base.tar.gz -C /"), "{calls}");
    assert!(calls.contains("systemctl enable etcd.service"), "{calls}");
    assert!(
        calls.contains("systemctl start --no-block etcd.service"),
        "{calls}"
    );
    assert!(!calls.contains("restart --no-block"), "{calls}");
    // the same seed again: nothing to do
    let (ok, calls, err) = run(&lab, "master01", &script, false);
    assert!(ok, "{err}");
    assert_eq!(calls, "", "a second run must change nothing");
    // a rebuilt seed (other layers): applied again, services restarted
    let changed = script.replacen("want='", "want='0", 1);
    let (ok, calls, err) = run(&lab, "master01", &changed, false);
    assert!(ok, "{err}");
    assert!(
        calls.contains("systemctl restart --no-block etcd.service"),
        "{calls}"
    );
}

#[test]
fn first_boot_stops_before_changing_anything_when_the_os_lacks_a_unit() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    let (ok, calls, err) = run(&lab, "master01", &script, true);
    assert!(!ok);
    assert!(
        err.contains("the OS lacks the units haproxy.service keepalived.service; install their packages first. Nothing was changed."),
        "{err}"
    );
    assert_eq!(calls, "", "nothing may run before the check");
}

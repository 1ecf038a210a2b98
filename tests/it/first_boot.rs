//! The first-boot script a seed carries (cloud-init's apply-layers), run by
//! dash in a mount namespace with stand-in commands ([`crate::seed_script`]):
//! the script checks the OS before it changes anything, applies once, and
//! restarts the services when the layers change.

use crate::build::{build, synthetic};
use crate::seed_script::{Os, apply_layers, run};

#[test]
fn first_boot_applies_once_and_restarts_the_services_when_the_layers_change() {
    let (lab, server) = synthetic();
    build(&lab, &server, &["node", "--role", "master01"], &[]).assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    let b = run(&lab, "master01", &script, &Os::default());
    let (ok, calls, err) = (b.ok, b.calls, b.stderr);
    assert!(ok, "{err}\n{calls}");
    assert!(calls.contains("tar -xzpf 00-base.tar.gz -C /"), "{calls}");
    assert!(calls.contains("systemctl enable etcd.service"), "{calls}");
    assert!(
        calls.contains("systemctl start --no-block etcd.service"),
        "{calls}"
    );
    assert!(!calls.contains("restart --no-block"), "{calls}");
    // it left its work directory before removing it
    assert!(!calls.contains("no working directory"), "{calls}");
    // the same seed again: nothing to do
    let b = run(&lab, "master01", &script, &Os::default());
    let (ok, calls, err) = (b.ok, b.calls, b.stderr);
    assert!(ok, "{err}");
    assert_eq!(calls, "", "a second run must change nothing");
    // a rebuilt seed (other layers): applied again, services restarted
    let changed = script.replacen("want='", "want='0", 1);
    let b = run(&lab, "master01", &changed, &Os::default());
    let (ok, calls, err) = (b.ok, b.calls, b.stderr);
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
    let os = Os {
        hide_os_units: true,
        ..Os::default()
    };
    let b = run(&lab, "master01", &script, &os);
    let (ok, calls, err) = (b.ok, b.calls, b.stderr);
    assert!(!ok);
    assert!(
        err.contains("the OS lacks the units haproxy.service keepalived.service; install their packages first. Nothing was changed."),
        "{err}"
    );
    assert_eq!(calls, "", "nothing may run before the check");
}

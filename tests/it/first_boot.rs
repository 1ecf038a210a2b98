//! The first-boot script a seed carries (cloud-init's apply-layers), run by
//! dash in a mount namespace with stand-in commands ([`crate::seed_script`]):
//! the script checks the OS before it changes anything, applies once, and
//! restarts the services when the layers change.

use crate::build::{build, synthetic};
use crate::judge::judge;
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

/// The files of `out/<node>/cloud-init/layers.iso`, as isoinfo reads them,
/// in `<lab>/volume/`.
fn volume_files(lab: &crate::lab::Lab, node: &str) -> std::path::PathBuf {
    let iso = lab.path(&format!("out/{node}/cloud-init/layers.iso"));
    let dir = lab.path("volume");
    std::fs::create_dir_all(dir.join("layers")).unwrap();
    let listed = judge("isoinfo").args(["-J", "-f", "-i"]).arg(&iso).ok();
    for f in listed.lines().filter(|f| f.ends_with(".tar.gz;1")) {
        let bytes = judge("isoinfo")
            .args(["-J", "-i"])
            .arg(&iso)
            .args(["-x", f])
            .ok_bytes();
        // the version suffix the kernel's isofs drops too
        let name = f.trim_start_matches('/').trim_end_matches(";1");
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn first_boot_takes_the_shared_layers_from_the_layers_volume_or_stops_without_it() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &["node", "--role", "master01", "--seed-layers", "volume"],
        &[],
    )
    .assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    // no volume attached: nothing changes, and the console says what to attach
    let b = run(&lab, "master01", &script, &Os::default());
    assert!(!b.ok);
    assert!(
        b.stderr.contains("master01: no volume labelled imglayers is attached; attach the node's cloud-init/layers.iso"),
        "{}",
        b.stderr
    );
    assert!(!b.calls.contains("tar "), "{}", b.calls);
    // attached: every layer checked against its sha256 (a real sha256sum)
    // and applied in order
    let shared = volume_files(&lab, "master01");
    let os = Os {
        shared: Some(&shared),
        ..Os::default()
    };
    let b = run(&lab, "master01", &script, &os);
    assert!(b.ok, "{}\n{}", b.stderr, b.calls);
    assert!(
        b.calls.contains("mountpoint -q /run/imgbuild/shared"),
        "{}",
        b.calls
    );
    let base = b
        .calls
        .find("tar -xzpf 00-base.tar.gz -C /")
        .expect(&b.calls);
    let secrets = b.calls.find("secrets.tar.gz -C /").expect(&b.calls);
    assert!(base < secrets, "{}", b.calls);
}

#[test]
fn first_boot_stops_on_a_layers_volume_of_another_build_or_a_damaged_layer() {
    let (lab, server) = synthetic();
    let args = ["node", "--role", "master01", "--seed-layers", "volume"];
    build(&lab, &server, &args, &[]).assert_ok();
    let script = apply_layers(&lab.path("out/master01"));
    let shared = volume_files(&lab, "master01");
    let os = Os {
        shared: Some(&shared),
        ..Os::default()
    };
    // another build's volume (a layer it lacks): named, nothing changed
    let f = shared.join("layers/00-base.tar.gz");
    let kept = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    let b = run(&lab, "master01", &script, &os);
    assert!(!b.ok);
    assert!(
        b.stderr.contains("master01: the volume labelled imglayers lacks the layers 00-base.tar.gz; attach this node's own cloud-init/layers.iso"),
        "{}",
        b.stderr
    );
    assert!(!b.calls.contains("tar "), "{}", b.calls);
    std::fs::write(&f, kept).unwrap();
    // a damaged shared layer on the volume stops it before any extraction
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let b = run(&lab, "master01", &script, &os);
    assert!(!b.ok);
    assert!(
        b.stderr.contains("1 computed checksum did NOT match"),
        "{}",
        b.stderr
    );
    assert!(!b.calls.contains("tar "), "{}", b.calls);
}

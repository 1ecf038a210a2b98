//! `scripts/os-pins` writes the `[os] packages` and `[[deb]]` pins from the
//! machine's real apt index. Judged by apt itself: the base plus the pinned
//! packages, recorded as a dpkg status, has every dependency met
//! (`apt-get check`), and by imgbuild, which takes the pins.

use std::path::Path;
use std::process::Output;

use crate::judge::judge;
use crate::lab::repo;

/// `scripts/os-pins ARGS`, its status file written to `status`.
fn os_pins(base: &Path, status: &Path, args: &[&str]) -> toml::Table {
    let out = judge("python3")
        .arg(repo().join("scripts/os-pins"))
        .arg("--base-manifest")
        .arg(base)
        .arg("--status")
        .arg(status)
        .args(args)
        .ok();
    toml::from_str(&out).unwrap_or_else(|e| panic!("os-pins wrote no TOML: {e}\n{out}"))
}

/// `package version` lines of the `[[deb]]`s.
fn manifest(pins: &toml::Table) -> String {
    pins["deb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}\t{}\n",
                d["name"].as_str().unwrap(),
                d["version"].as_str().unwrap()
            )
        })
        .collect()
}

/// `apt-get check` on the dpkg status `status`.
fn apt_check(status: &Path) -> Output {
    judge("apt-get")
        .arg("check")
        .arg(format!("-o=Dir::State::status={}", status.display()))
        .output()
}

#[test]
fn os_pins_closes_the_dependencies_of_systemd_a_kernel_and_the_role_packages_over_a_minbase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a minbase, as debootstrap makes it: the required packages, closed
    let base = os_pins(
        Path::new("/dev/null"),
        &d.join("base.status"),
        &["--priority", "required"],
    );
    std::fs::write(d.join("base.manifest"), manifest(&base)).unwrap();
    let roles = ["haproxy", "keepalived", "curl", "nftables", "procps"];
    let mut args = vec![
        "systemd-sysv",
        "udev",
        "linux-image-cloud-amd64",
        "kmod",
        "iproute2",
    ];
    for r in &roles {
        args.extend(["--role", r]);
    }
    let pins = os_pins(&d.join("base.manifest"), &d.join("added.status"), &args);
    let every_node: Vec<&str> = pins["os"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for want in ["systemd", "systemd-sysv", "udev", "libssl3"] {
        assert!(
            every_node.contains(&want),
            "{want} not in [os] packages: {every_node:?}"
        );
    }
    assert!(
        every_node.iter().any(|p| p.starts_with("linux-image-6.")),
        "{every_node:?}"
    );
    for r in &roles {
        assert!(
            !every_node.contains(r),
            "role package {r} is in [os] packages"
        );
    }
    for d in pins["deb"].as_array().unwrap() {
        let url = d["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://") && url.ends_with(".deb"),
            "{url}"
        );
        assert_eq!(d["sha256"].as_str().unwrap().len(), 64);
        assert!(
            d["source"]
                .as_str()
                .unwrap()
                .contains("Packages (Release of ")
        );
    }
    judge_the_closure(d);
}

/// The base and the pinned packages: apt finds every dependency met, and
/// without one of them (libssl3) it does not.
fn judge_the_closure(d: &Path) {
    let base_status = std::fs::read_to_string(d.join("base.status")).unwrap();
    let added = std::fs::read_to_string(d.join("added.status")).unwrap();
    let upgraded: Vec<&str> = added
        .lines()
        .filter_map(|l| l.strip_prefix("Package: "))
        .collect();
    let kept: Vec<&str> = base_status
        .split("\n\n")
        .filter(|s| {
            s.lines()
                .next()
                .and_then(|l| l.strip_prefix("Package: "))
                .is_some_and(|p| !upgraded.contains(&p))
        })
        .collect();
    let whole = d.join("whole.status");
    std::fs::write(&whole, format!("{}\n\n{added}", kept.join("\n\n"))).unwrap();
    let o = apt_check(&whole);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // and the judge can fail: without libssl3, haproxy's dependency is unmet
    let broken: String = std::fs::read_to_string(&whole)
        .unwrap()
        .split("\n\n")
        .filter(|s| !s.starts_with("Package: libssl3\n"))
        .collect::<Vec<_>>()
        .join("\n\n");
    std::fs::write(&whole, broken).unwrap();
    let o = apt_check(&whole);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("libssl3"));
}

#[test]
fn the_shipped_manifests_pin_a_public_base_and_every_node_package() {
    let pins: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("manifests/pins.toml")).unwrap())
            .unwrap();
    let base = pins["os"]["base"].as_str().unwrap();
    let art = pins["artifact"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str() == Some(base))
        .unwrap();
    assert!(art["url"].as_str().unwrap().starts_with("https://"));
    assert!(
        art["source"]
            .as_str()
            .unwrap()
            .contains("debuerreotype/docker-debian-artifacts")
    );
    let debs: Vec<&str> = pins["deb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for p in pins["os"]["packages"].as_array().unwrap() {
        assert!(debs.contains(&p.as_str().unwrap()), "{p} has no [[deb]]");
    }
    for want in ["systemd-sysv", "udev", "linux-image-cloud-amd64"] {
        assert!(debs.contains(&want), "{want}");
    }
    // imgbuild takes them: a node's plan starts with the base and its debs
    let plan = judge(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("--manifests")
        .arg(repo().join("manifests"))
        .args(["plan", "--role", "node01"])
        .ok();
    assert!(plan.contains("\n00-os (1 files)\n"), "{plan}");
    assert!(
        plan.contains("archive debian-rootfs 12.8-20241202: every member"),
        "{plan}"
    );
    assert!(plan.contains("deb systemd-sysv "), "{plan}");
    // and the part the other tests' copies leave out is the OS alone
    let text = std::fs::read_to_string(repo().join("manifests/pins.toml")).unwrap();
    let os_part = &text[text.find(crate::lab::SHIPPED_OS_MARKER).unwrap()..];
    assert!(
        !os_part.contains("[[artifact]]\nname = \"kube"),
        "{os_part}"
    );
    assert!(!os_part.contains("[[image]]"));
}

//! Runs the first-boot script a seed carries (cloud-init's apply-layers)
//! with dash in a mount namespace where /run/imgbuild, /var/lib/imgbuild,
//! /etc/hosts and the seed are the test's own, and `systemctl`, `tar`,
//! `sysctl`, `mountpoint`, `blkid` and `mount` are stand-ins that log what
//! they were asked; `dpkg-query` and `hostname` are stand-ins that answer as
//! the test says (and log nothing: they change nothing).

use std::path::Path;

use crate::judge::judge;
use crate::lab::Lab;

/// The apply-layers script inside a node's user-data.
pub fn apply_layers(dir: &Path) -> String {
    let ud = std::fs::read_to_string(dir.join("cloud-init/user-data")).unwrap();
    let body = ud.split("    content: |\n").nth(1).unwrap();
    body.lines()
        .take_while(|l| l.starts_with("      ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap_or(l)))
        .collect()
}

/// What the stand-in OS looks like.
#[derive(Default)]
pub struct Os<'a> {
    /// The host's /usr/lib/systemd/system is hidden (an empty tmpfs).
    pub hide_os_units: bool,
    /// Packages dpkg knows but has not installed (`deinstall ok config-files`).
    pub removed: &'a [&'a str],
    /// Packages dpkg has never heard of (`no packages found`, exit 1).
    pub unknown: &'a [&'a str],
    /// What `hostname` prints.
    pub hostname: &'a str,
    /// /etc/hosts before the run.
    pub hosts: &'a str,
    /// The layers volume's files (volume mode), mounted at
    /// /run/imgbuild/shared; without it, no such volume is attached.
    pub shared: Option<&'a Path>,
}

/// What a run did.
pub struct Boot {
    pub ok: bool,
    /// The stand-ins' log, one call a line.
    pub calls: String,
    pub stderr: String,
    /// /etc/hosts after the run.
    pub hosts: String,
}

/// The stand-ins: loggers, and the two that answer.
fn write_stubs(bin: &Path, os: &Os) {
    std::fs::create_dir_all(bin).unwrap();
    let mut stubs: Vec<(String, String)> =
        ["systemctl", "tar", "sysctl", "mountpoint", "blkid", "mount"]
            .iter()
            .map(|s| {
                // a script that removed its own working directory makes every
                // later program fail getcwd(): log that too
                let log = format!(
                    "echo \"{s} $*\" >>\"$CALLS\"\n\
                     pwd -P >/dev/null 2>&1 || echo \"{s}: no working directory\" >>\"$CALLS\"\n"
                );
                (s.to_string(), log)
            })
            .collect();
    stubs.push((
        "dpkg-query".into(),
        format!(
            "for p; do :; done\ncase \" {} \" in *\" $p \"*) printf 'deinstall ok config-files'; exit 0 ;; esac\n\
             case \" {} \" in *\" $p \"*) echo \"dpkg-query: no packages found matching $p\" >&2; exit 1 ;; esac\n\
             printf 'install ok installed'\n",
            os.removed.join(" "),
            os.unknown.join(" ")
        ),
    ));
    stubs.push(("hostname".into(), format!("echo '{}'\n", os.hostname)));
    // the seed is mounted; the layers volume only when the test attached it
    for (name, body) in &mut stubs {
        if name == "mountpoint" {
            body.push_str("case \"$2\" in */shared) [ -d \"$2/layers\" ] ;; esac\n");
        }
    }
    for (name, body) in stubs {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        judge("chmod").arg("0755").arg(&p).ok();
    }
}

/// Runs `script`, the first-boot script of `out/<node>`, in the stand-in OS.
pub fn run(lab: &Lab, node: &str, script: &str, os: &Os) -> Boot {
    let t = lab.path("first-boot");
    write_stubs(&t.join("bin"), os);
    std::fs::create_dir_all(t.join("var")).unwrap();
    std::fs::write(t.join("apply-layers"), script).unwrap();
    std::fs::write(t.join("hosts"), os.hosts).unwrap();
    let calls = t.join("calls");
    let _ = std::fs::remove_file(&calls);
    let seed = lab.path(&format!("out/{node}"));
    let hide = if os.hide_os_units {
        "mount -t tmpfs tmpfs /usr/lib/systemd/system\n"
    } else {
        ""
    };
    let shared = os.shared.map_or(String::new(), |d| {
        format!(
            "mkdir -p /run/imgbuild/shared\nmount --bind '{}' /run/imgbuild/shared\n",
            d.display()
        )
    });
    let setup = format!(
        "set -e\nmkdir -p /run/imgbuild /var/lib/imgbuild\n\
         mount -t tmpfs tmpfs /run/imgbuild\nmkdir -p /run/imgbuild/seed\n\
         mount --bind '{seed}' /run/imgbuild/seed\n{shared}\
         mount --bind '{var}' /var/lib/imgbuild\n\
         mount --bind '{hosts}' /etc/hosts\n{hide}\
         PATH='{bin}':$PATH CALLS='{calls}' exec dash '{script}'\n",
        seed = seed.display(),
        var = t.join("var").display(),
        hosts = t.join("hosts").display(),
        bin = t.join("bin").display(),
        calls = calls.display(),
        script = t.join("apply-layers").display(),
    );
    let o = judge("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &setup])
        .output();
    Boot {
        ok: o.status.success(),
        calls: std::fs::read_to_string(&calls).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        hosts: std::fs::read_to_string(t.join("hosts")).unwrap(),
    }
}

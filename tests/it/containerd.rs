//! A worker's baked images, imported into a real containerd exactly as the
//! node does it (the worker layer's import-images script), resolve by the
//! pinned digest reference with no registry in reach, the sandbox image is
//! pinned, and runc starts a container from it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::judge::judge;
use crate::lab::Lab;

/// containerd on a socket of its own, with its own root and state; the CRI
/// plugin off (the test speaks ctr).
pub(crate) struct Containerd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    pub(crate) fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd (Debian containerd): bash scripts/setup");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd {
            child,
            sock,
            _dir: dir,
        }
    }

    pub(crate) fn ctr(&self) -> crate::judge::Judge {
        judge("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "k8s.io"])
    }
}

/// Runs the worker layer's import-images with dash, its images directory
/// bound to the extracted one, `ctr` speaking to `c`.
fn import_as_the_node_does(root: &Path, c: &Containerd) {
    let script = format!(
        "set -e\nmkdir -p /var/lib/imgbuild/images\n\
         mount --bind '{images}' /var/lib/imgbuild/images\n\
         CONTAINERD_ADDRESS='{sock}' exec dash '{script}'\n",
        images = root.join("var/lib/imgbuild/images").display(),
        sock = c.sock.display(),
        script = root.join("usr/local/lib/imgbuild/import-images").display(),
    );
    judge("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .ok();
}

#[test]
fn baked_images_resolve_by_digest_in_containerd_and_runc_runs_the_pinned_sandbox() {
    let (lab, server, reg, pushed) = crate::images::lab_with_images();
    crate::images::run(
        &lab,
        &server,
        &reg,
        &["node", "--role", "node01", "--format", "layers"],
    )
    .assert_ok();
    drop(reg); // nothing to pull from from here on
    let root = extract_worker(&lab);
    let c = Containerd::start();
    import_as_the_node_does(&root, &c);
    let names = c.ctr().args(["images", "ls", "-q"]).ok();
    let pause = &pushed.iter().find(|(n, _)| n == "pause").unwrap().1;
    let by_digest = format!("registry.k8s.io/pause@{}", pause.index);
    for want in ["registry.k8s.io/pause:3.10.1", by_digest.as_str()] {
        assert!(names.lines().any(|l| l == want), "{want} not in\n{names}");
    }
    let listing = c.ctr().args(["images", "ls"]).ok();
    let pinned = listing
        .lines()
        .filter(|l| l.starts_with("registry.k8s.io/pause"))
        .all(|l| l.contains("io.cri-containerd.pinned=pinned"));
    assert!(pinned, "the sandbox image is not pinned:\n{listing}");
    // the container writes to a directory of the test's, not to ctr's
    // stdout: ctr can lose the output of a task that exits at once (its
    // copy from the task's FIFO races the task's deletion)
    let shared = lab.path("ran");
    std::fs::create_dir_all(&shared).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/ran,options=rbind:rw",
        shared.display()
    );
    c.ctr()
        .args([
            "run",
            "--rm",
            "--mount",
            &mount,
            &by_digest,
            "imgbuild-test",
        ])
        .args(["/bin/busybox", "sh", "-c", "echo ran by digest >/ran/out"])
        .ok();
    let out = std::fs::read_to_string(shared.join("out")).unwrap();
    assert_eq!(out.trim(), "ran by digest");
}

fn extract_worker(lab: &Lab) -> PathBuf {
    let root = lab.path("root-node01");
    std::fs::create_dir_all(&root).unwrap();
    judge("tar")
        .arg("-xzf")
        .arg(lab.path("out/node01/layers/01-worker.tar.gz"))
        .arg("-C")
        .arg(&root)
        .ok();
    root
}

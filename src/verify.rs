//! Stage 8, `verify`: takes an output directory (`out/<node>`) and the
//! manifests, and checks what CI and an operator would: every file against
//! SHA256SUMS (and nothing unlisted), image.json against the layer files,
//! every input against its pin, no private key or token outside the secrets
//! layer, no CA private key on a node without the control-plane role, and the
//! modes of secret files. [`compare`] names the first file that differs from
//! a rebuild.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::manifest::Manifests;
use crate::manifest::secrets;
use crate::output::{Format, ImageJson, LayerJson};
use crate::plan::LayerKind;
use crate::sums::{self, Sums};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir} failed verification:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Failed { dir: PathBuf, problems: Vec<String> },
    #[error("{dir} differs from a rebuild from the manifests and state: first at {file}")]
    Differs { dir: PathBuf, file: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `dir/image.json` as the one type `output` writes.
pub fn read_image_json(dir: &Path) -> Result<ImageJson, VerifyError> {
    let p = dir.join("image.json");
    let text = fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| VerifyError::Failed {
        dir: dir.to_path_buf(),
        problems: vec![format!("image.json: {e}")],
    })
}

/// What in a non-secrets file is private material.
fn secret_marker(text: &str) -> Option<&'static str> {
    [
        ("PRIVATE KEY-----", "a PEM private key"),
        ("client-key-data:", "a kubeconfig with a client key"),
        ("token-secret:", "a bootstrap token"),
        ("system:bootstrapper,", "a token.csv line"),
        ("auth_pass ", "a VRRP password"),
    ]
    .into_iter()
    .find(|(m, _)| text.contains(m))
    .map(|(_, what)| what)
}

/// Every check but the rebuild; all problems at once.
pub fn check(m: &Manifests, dir: &Path) -> Result<ImageJson, VerifyError> {
    let mut problems = check_sums(dir)?;
    let image = read_image_json(dir)?;
    problems.extend(check_layer_files(dir, &image)?);
    problems.extend(check_inputs(m, &image));
    for l in &image.layers {
        if dir.join(&l.file).is_file() {
            problems.extend(check_secrets(dir, &image, l)?);
        }
    }
    problems.extend(check_private_modes(dir));
    if problems.is_empty() {
        Ok(image)
    } else {
        Err(VerifyError::Failed {
            dir: dir.to_path_buf(),
            problems,
        })
    }
}

/// Reads `dir/SHA256SUMS`.
fn read_sums(dir: &Path) -> Result<(Sums, Vec<sums::BadLine>), VerifyError> {
    let p = dir.join(sums::FILE);
    let text = fs::read_to_string(&p).map_err(io_err(&p))?;
    Ok(Sums::parse(&text))
}

/// Every file against SHA256SUMS, and nothing unlisted or missing.
fn check_sums(dir: &Path) -> Result<Vec<String>, VerifyError> {
    let (listed, bad) = read_sums(dir)?;
    let mut problems: Vec<String> = bad.iter().map(ToString::to_string).collect();
    let present = crate::output::files_below(dir).map_err(io_err(dir))?;
    for f in present.iter().filter(|f| *f != sums::FILE) {
        match listed.get(f) {
            None => problems.push(format!("{f} is not listed in SHA256SUMS")),
            Some(h) => {
                let actual =
                    crate::fsutil::sha256_file(&dir.join(f)).map_err(io_err(&dir.join(f)))?;
                if actual != h {
                    problems.push(format!("{f}: sha256 is {actual}, SHA256SUMS says {h}"));
                }
            }
        }
    }
    for f in listed.paths() {
        if !present.iter().any(|p| p == f) {
            problems.push(format!("{f} is listed in SHA256SUMS but missing"));
        }
    }
    Ok(problems)
}

/// image.json against the layer files.
fn check_layer_files(dir: &Path, image: &ImageJson) -> Result<Vec<String>, VerifyError> {
    let mut problems = Vec::new();
    for l in &image.layers {
        let p = dir.join(&l.file);
        if !p.is_file() {
            if image.build.formats.has(Format::Layers) {
                problems.push(format!("{}: listed in image.json but missing", l.file));
            }
            continue;
        }
        let actual = format!(
            "sha256:{}",
            crate::fsutil::sha256_file(&p).map_err(io_err(&p))?
        );
        let size = fs::metadata(&p).map_err(io_err(&p))?.len();
        if actual != l.digest || size != l.size {
            problems.push(format!(
                "{}: digest {actual} ({size} bytes), image.json says {} ({} bytes)",
                l.file, l.digest, l.size
            ));
        }
    }
    Ok(problems)
}

/// Every input against its pin.
fn check_inputs(m: &Manifests, image: &ImageJson) -> Vec<String> {
    let mut problems = Vec::new();
    for i in &image.inputs {
        let pin = m
            .pins
            .artifacts
            .iter()
            .find(|p| p.name == i.artifact && p.url == i.url);
        match pin {
            None => problems.push(format!(
                "input {} {} ({}) has no pin in {}",
                i.artifact,
                i.version,
                i.url,
                m.dir.display()
            )),
            Some(p) if p.checksum.to_string() != i.checksum || p.version != i.version => problems
                .push(format!(
                    "input {} {}: built from {}, but the pin says {} {}",
                    i.artifact, i.version, i.checksum, p.version, p.checksum
                )),
            Some(_) => {}
        }
    }
    problems
}

/// Secrets in one layer: where they are and their modes.
fn check_secrets(dir: &Path, image: &ImageJson, l: &LayerJson) -> Result<Vec<String>, VerifyError> {
    let mut problems = Vec::new();
    let p = dir.join(&l.file);
    let secret_layer = l.kind() == LayerKind::Secrets;
    if secret_layer {
        let mode = fs::metadata(&p).map_err(io_err(&p))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "{}: mode {mode:04o}, a secrets layer must be 0600",
                l.file
            ));
        }
    }
    let f = File::open(&p).map_err(io_err(&p))?;
    let mut a = tar::Archive::new(GzDecoder::new(BufReader::new(f)));
    for e in a.entries().map_err(io_err(&p))? {
        let mut e = e.map_err(io_err(&p))?;
        let path = e.path().map_err(io_err(&p))?.to_string_lossy().into_owned();
        if !e.header().entry_type().is_file() {
            continue;
        }
        let mode = e.header().mode().map_err(io_err(&p))? & 0o7777;
        if secret_layer {
            problems.extend(secret_file_problem(image, l, &path, mode));
            continue;
        }
        if e.size() > 1 << 20 {
            continue; // binaries: a key would be a file of its own
        }
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).map_err(io_err(&p))?;
        if let Some(what) = secret_marker(&String::from_utf8_lossy(&buf)) {
            problems.push(format!(
                "{}: /{path} holds {what} outside the secrets layer",
                l.file
            ));
        }
    }
    Ok(problems)
}

/// A file of the secrets layer: private material 0600 (0640 for a service
/// group), and a CA key only on a control-plane node.
fn secret_file_problem(image: &ImageJson, l: &LayerJson, path: &str, mode: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let id = path.trim_start_matches("etc/kubernetes/");
    if let Some(spec) = secrets::lookup(id) {
        if spec.is_private() && mode & 0o037 != 0 {
            problems.push(format!("{}: /{path} has mode {mode:04o}; private material must be 0600 (0640 for a service group)", l.file));
        }
        let control_plane = image.roles.iter().any(|r| r == "control-plane");
        if spec.ca_key && !control_plane {
            problems.push(format!(
                "{}: /{path} is a CA private key on {}, which is not a control-plane node",
                l.file, image.node
            ));
        }
    }
    problems
}

/// The files that carry the secrets layer are private.
fn check_private_modes(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for private in ["cloud-init/seed.iso", "pxe/overlay.cpio.gz"] {
        let p = dir.join(private);
        if let Ok(meta) = fs::metadata(&p)
            && meta.permissions().mode() & 0o077 != 0
        {
            problems.push(format!(
                "{private}: mode {:04o}; it carries the secrets layer and must be 0600",
                meta.permissions().mode() & 0o777
            ));
        }
    }
    problems
}

/// Compares two output directories byte for byte through their SHA256SUMS.
pub fn compare(dir: &Path, rebuilt: &Path) -> Result<(), VerifyError> {
    let (a, _) = read_sums(dir)?;
    let (b, _) = read_sums(rebuilt)?;
    match a.first_difference(&b) {
        Some(file) => Err(VerifyError::Differs {
            dir: dir.to_path_buf(),
            file: file.to_string(),
        }),
        None => Ok(()),
    }
}

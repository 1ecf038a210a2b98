//! `pxe/vmlinuz`: takes the `os` layer (the pinned base's `.tar.gz`) and the
//! `os-packages` layer (the kernel may come as a pinned `linux-image` deb)
//! and copies out the kernel, in one pass over each: the one regular file
//! `boot/vmlinuz-*`, or, where the base holds several, the one its
//! `vmlinuz` link (at `/` or `/boot`, as Debian's linux-image makes them)
//! names. No kernel, or several and no link that picks one, is an error
//! naming the layer: a node without its kernel cannot boot.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::fsutil;
use crate::layer::BuiltLayer;

/// At most this many `boot/vmlinuz-*` files are held while the layer is read.
const MAX_KERNELS: usize = 8;
/// A kernel larger than this is not one.
const MAX_KERNEL_SIZE: u64 = 256 << 20;
/// Links followed from `vmlinuz` to a kernel.
const MAX_HOPS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the os layer {layer} at {path}")]
    Read {
        layer: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the os layer {layer} has no kernel: no regular file /boot/vmlinuz-*, nor a vmlinuz link at / or /boot to one"
    )]
    Missing { layer: String },
    #[error(
        "the os layer {layer} has several kernels ({}) and no vmlinuz link at / or /boot that names one of them",
        found.join(", ")
    )]
    Several { layer: String, found: Vec<String> },
    #[error("the os layer {layer}: /{file} is {size} bytes, larger than a kernel can be")]
    TooLarge {
        layer: String,
        file: String,
        size: u64,
    },
    #[error("taking the kernel of the os layer panicked")]
    Panicked,
    #[error("cannot write the kernel of the os layer {layer} to {path}")]
    Write {
        layer: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one pass over the layer found: every `boot/vmlinuz-*` regular file
/// (the contents of the first [`MAX_KERNELS`]), and every link.
#[derive(Debug, Default)]
struct Found {
    kernels: BTreeMap<String, Option<Vec<u8>>>,
    /// link path -> the path it names, relative to `/`
    links: BTreeMap<String, String>,
    /// A `boot/vmlinuz-*` too large to be a kernel, and its size.
    too_large: Option<(String, u64)>,
}

/// `p` relative to `/`, `.` and `..` resolved; `None` when it leaves `/`.
fn normal(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// Whether `path` (relative to `/`) is where a kernel is looked for.
fn is_kernel_name(path: &str) -> bool {
    path.strip_prefix("boot/vmlinuz-")
        .is_some_and(|v| !v.is_empty() && !v.contains('/'))
}

/// The path a link at `link` to `target` names: absolute, or relative to
/// the link's directory (a hard link's target is a path in the archive).
fn link_target(link: &str, target: &Path, hard: bool) -> Option<String> {
    if hard || target.is_absolute() {
        return normal(target);
    }
    let dir = Path::new(link).parent().unwrap_or(Path::new(""));
    normal(&dir.join(target))
}

/// One pass over the gzip'd or zstd'd tar `r`, the layer `layer` at `path`.
fn scan(layer: &str, path: &Path, r: impl Read + Send) -> Result<Found, KernelError> {
    let read_err = |source| KernelError::Read {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut found = Found::default();
    entries(&mut found, r).map_err(read_err)?;
    if let Some((file, size)) = found.too_large.take() {
        return Err(KernelError::TooLarge {
            layer: layer.to_string(),
            file,
            size,
        });
    }
    Ok(found)
}

/// Every entry of the gzip'd or zstd'd tar `r` that [`Found`] keeps.
fn entries(found: &mut Found, r: impl Read + Send) -> io::Result<()> {
    let mut archive = tar::Archive::new(crate::layer::rootfs::layer_reader(r)?);
    for e in archive.entries()? {
        let mut e = e?;
        let Some(path) = normal(&e.path()?) else {
            continue;
        };
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e.link_name()?.unwrap_or_default();
            if let Some(t) = link_target(&path, &target, kind.is_hard_link()) {
                found.links.insert(path, t);
            }
        } else if kind.is_file() && is_kernel_name(&path) {
            let size = e.size();
            if size > MAX_KERNEL_SIZE {
                found.too_large = Some((path, size));
                return Ok(());
            }
            let body = if found.kernels.len() < MAX_KERNELS {
                let mut b = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                e.read_to_end(&mut b)?;
                Some(b)
            } else {
                None
            };
            found.kernels.insert(path, body);
        }
    }
    Ok(())
}

/// The kernel a `vmlinuz` link names, following links.
fn linked(found: &Found) -> Option<&[u8]> {
    for start in ["vmlinuz", "boot/vmlinuz"] {
        let mut at = found.links.get(start);
        for _ in 0..MAX_HOPS {
            let Some(p) = at else { break };
            if let Some(Some(body)) = found.kernels.get(p.as_str()) {
                return Some(body.as_slice());
            }
            at = found.links.get(p);
        }
    }
    None
}

/// The one kernel of `found`.
fn choose<'f>(layer: &str, found: &'f Found) -> Result<&'f [u8], KernelError> {
    let mut kernels = found.kernels.iter();
    match (kernels.next(), kernels.next()) {
        (Some((_, Some(body))), None) => Ok(body),
        (None, _) => Err(KernelError::Missing {
            layer: layer.to_string(),
        }),
        _ => linked(found).ok_or_else(|| KernelError::Several {
            layer: layer.to_string(),
            found: found.kernels.keys().map(|k| format!("/{k}")).collect(),
        }),
    }
}

/// Writes the kernel of the OS layers to `dest` (mode 0644): the `os`
/// layer and, when it follows, the `os-packages` layer, whose pinned
/// `linux-image` package brings the kernel when the base has none (a file
/// or link of a later layer replaces the earlier's); returns its sha256.
pub(crate) fn write(layers: &[&BuiltLayer], dest: &Path) -> Result<String, KernelError> {
    let mut found = Found::default();
    for l in layers {
        let file = File::open(&l.file).map_err(|source| KernelError::Read {
            layer: l.name.clone(),
            path: l.file.clone(),
            source,
        })?;
        let one = scan(&l.name, &l.file, file)?;
        found.kernels.extend(one.kernels);
        found.links.extend(one.links);
    }
    let label = match layers {
        [os] => os.name.clone(),
        [os, rest @ ..] => {
            let rest: Vec<&str> = rest.iter().map(|l| l.name.as_str()).collect();
            format!("{} (with {})", os.name, rest.join(", "))
        }
        [] => String::new(),
    };
    let body = choose(&label, &found)?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .and_then(|()| fsutil::write_atomic(dest, body, 0o644))
        .map_err(|source| KernelError::Write {
            layer: label.clone(),
            path: dest.to_path_buf(),
            source,
        })?;
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(body)))
}

/// Where the layer store keeps the kernel of `layers` (below `store`, the
/// store's directory): by their keys, which fix their bytes.
fn kept_paths(layers: &[&BuiltLayer], store: &Path) -> (PathBuf, PathBuf) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"imgbuild-kernel-v1\n");
    for l in layers {
        h.update(format!("{}\n", l.key).as_bytes());
    }
    let key = hex::encode(h.finalize());
    let dir = store.join("kernel");
    (
        dir.join(format!("{key}.vmlinuz")),
        dir.join(format!("{key}.sha256")),
    )
}

/// [`write`], from the copy the layer store keeps after the first time
/// (one pass over a base's hundreds of MB, not one per node): `dest` is a
/// hard link to it (0444, as the layers and segments are), its sha256
/// checked against its record once per process and made again when it
/// does not match.
pub(crate) fn write_kept(
    layers: &[&BuiltLayer],
    store: &Path,
    dest: &Path,
) -> Result<String, KernelError> {
    let (kernel, record) = kept_paths(layers, store);
    let digest = match checked(&kernel, &record) {
        Some(digest) => digest,
        None => {
            // taken out of the layers into the store, then linked below
            let digest = write(layers, &kernel)?;
            fs::set_permissions(&kernel, fs::Permissions::from_mode(0o444))
                .and_then(|()| fsutil::write_atomic(&record, digest.as_bytes(), 0o444))
                .map_err(|e| write_error(layers, &kernel, e))?;
            digest
        }
    };
    let _ = fs::remove_file(dest);
    fs::create_dir_all(dest.parent().unwrap_or(Path::new(".")))
        .and_then(|()| crate::output::link_or_copy(&kernel, dest))
        .map_err(|e| write_error(layers, dest, e))?;
    Ok(digest)
}

/// Writing the kernel of `layers` to `path` failed.
fn write_error(layers: &[&BuiltLayer], path: &Path, source: io::Error) -> KernelError {
    KernelError::Write {
        layer: layers.first().map(|l| l.name.clone()).unwrap_or_default(),
        path: path.to_path_buf(),
        source,
    }
}

/// The kept kernel's recorded sha256 when the file matches it: hashed once
/// per process for each state of the file (path, inode, size, mtime).
fn checked(kernel: &Path, record: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    static CHECKED: std::sync::Mutex<BTreeMap<PathBuf, (u64, u64, i64, i64)>> =
        std::sync::Mutex::new(BTreeMap::new());
    let want = fs::read_to_string(record).ok()?.trim().to_string();
    let meta = fs::metadata(kernel).ok()?;
    let stamp = (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
    let mut seen = CHECKED.lock().ok()?;
    if seen.get(kernel) == Some(&stamp) {
        return Some(want);
    }
    if fsutil::sha256_file(kernel).ok()? != want {
        let _ = fs::remove_file(record);
        return None;
    }
    seen.insert(kernel.to_path_buf(), stamp);
    Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip'd tar of `entries`: (path, Some(content)) for a file,
    /// (path, None) with `link` for a symlink.
    fn layer(entries: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    h.set_size(body.len() as u64);
                    b.append_data(&mut h, path, body.as_bytes()).unwrap();
                }
            }
        }
        super::super::init::gzip(&b.into_inner().unwrap()).unwrap()
    }

    fn kernel(entries: &[(&str, &str, Option<&str>)]) -> Result<Vec<u8>, KernelError> {
        let found = scan("00-os", Path::new("os.tar.gz"), layer(entries).as_slice()).unwrap();
        choose("00-os", &found).map(<[u8]>::to_vec)
    }

    #[test]
    fn the_one_kernel_below_boot_is_taken() {
        let k = kernel(&[
            ("etc/hostname", "x", None),
            ("./boot/vmlinuz-6.1.0-test", "KERNEL", None),
            ("boot/config-6.1.0-test", "CONFIG", None),
        ]);
        assert_eq!(k.unwrap(), b"KERNEL");
    }

    #[test]
    fn a_vmlinuz_link_picks_one_of_several() {
        let two = [
            ("boot/vmlinuz-6.1.0-old", "OLD", None),
            ("vmlinuz", "", Some("boot/vmlinuz-6.1.0-new")),
            ("boot/vmlinuz-6.1.0-new", "NEW", None),
        ];
        assert_eq!(kernel(&two).unwrap(), b"NEW");
        let via_boot = [
            ("boot/vmlinuz-a", "A", None),
            ("boot/vmlinuz-b", "B", None),
            ("boot/vmlinuz", "", Some("vmlinuz-a")),
        ];
        assert_eq!(kernel(&via_boot).unwrap(), b"A");
        let chained = [
            ("boot/vmlinuz-a", "A", None),
            ("boot/vmlinuz-b", "B", None),
            ("vmlinuz", "", Some("/boot/vmlinuz")),
            ("boot/vmlinuz", "", Some("../boot/./vmlinuz-b")),
        ];
        assert_eq!(kernel(&chained).unwrap(), b"B");
    }

    #[test]
    fn no_kernel_or_an_unchosen_pair_is_an_error_naming_the_layer() {
        let none = kernel(&[
            ("boot/config-6.1.0", "C", None),
            ("boot/vmlinuz-", "", None),
        ]);
        let e = none.unwrap_err().to_string();
        assert!(e.contains("os layer 00-os has no kernel"), "{e}");
        let two = kernel(&[
            ("boot/vmlinuz-a", "A", None),
            ("boot/vmlinuz-b", "B", None),
            ("vmlinuz", "", Some("boot/vmlinuz-c")),
        ]);
        let e = two.unwrap_err().to_string();
        assert!(
            e.contains("00-os has several kernels (/boot/vmlinuz-a, /boot/vmlinuz-b)"),
            "{e}"
        );
        // a link out of the root names nothing
        assert_eq!(link_target("vmlinuz", Path::new("../../x"), false), None);
    }

    #[test]
    fn a_damaged_layer_is_a_read_error() {
        let mut bytes = layer(&[("boot/vmlinuz-a", "A", None)]);
        bytes.truncate(bytes.len() / 2);
        let e = scan("00-os", Path::new("os.tar.gz"), bytes.as_slice()).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the os layer 00-os at os.tar.gz"),
            "{e}"
        );
    }
}

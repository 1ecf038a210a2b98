//! `disk/` (`--format disk`): a whole node as a bootable disk. Takes the
//! node's kernel and initrds (the whole-node PXE files: the root runs from
//! RAM as a PXE boot runs it) and systemd-boot out of its OS layers, and
//! writes `disk/disk.raw`: a GPT whose disk and partition GUIDs are derived
//! from the node and those files, holding one EFI system partition (FAT,
//! every timestamp SOURCE_DATE_EPOCH, its volume id derived too) with
//! `EFI/BOOT/BOOTX64.EFI` (systemd-boot), `loader/loader.conf`, one loader
//! entry and the kernel and initrds below `imgbuild/`; the space after it
//! is where `/init`'s systemd-repart makes the state partition on the first
//! boot (and grows it into a larger disk). Then `disk/disk.qcow2`, the same
//! disk for virtual machines (`qemu-img convert`). A node's disk carries its
//! secrets (both files 0600); a role's generic disk carries none.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::BuiltLayer;
use crate::manifest::Arch;
use crate::plan::LayerKind;

pub const RAW: &str = "disk/disk.raw";
pub const QCOW2: &str = "disk/disk.qcow2";
const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "the OS layers of {target} have no /{path} (systemd-boot): add the `systemd-boot-efi` package to [os] packages in pins.toml"
    )]
    NoBootLoader { target: String, path: String },
    #[error("cannot write the disk of {target} at {path}")]
    Io {
        target: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the EFI system partition of {target}: {message}")]
    Fat { target: String, message: String },
    #[error("cannot write the partition table of {target} at {path}: {message}")]
    Gpt {
        target: String,
        path: PathBuf,
        message: String,
    },
    #[error("cannot make {path} with qemu-img (qemu-utils) for {target}: {message}")]
    Qcow2 {
        target: String,
        path: PathBuf,
        message: String,
    },
}

/// What a disk is made of.
pub(crate) struct Input<'a> {
    pub target: &'a str,
    pub arch: Arch,
    /// The whole node's layers (the OS layers first).
    pub layers: &'a [BuiltLayer],
    pub kernel: &'a Path,
    /// The initrds in the order the kernel unpacks them, each with its name
    /// on the ESP.
    pub initrds: Vec<(&'static str, PathBuf)>,
    /// The kernel command line but the ESP's PARTUUID.
    pub cmdline: String,
    pub mtime: i64,
    /// The disk carries private material (0600).
    pub private: bool,
}

/// systemd-boot's EFI binary in the OS layers, for `arch`.
fn boot_loader_path(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => (
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "EFI/BOOT/BOOTX64.EFI",
        ),
        Arch::Arm64 => (
            "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            "EFI/BOOT/BOOTAA64.EFI",
        ),
    }
}

/// The regular file at `path` in the OS layers (a later layer's wins).
fn from_os_layers(layers: &[BuiltLayer], path: &str) -> io::Result<Option<Vec<u8>>> {
    let mut found = None;
    let os = layers
        .iter()
        .take_while(|l| matches!(l.kind, LayerKind::Os | LayerKind::OsPackages));
    for l in os {
        let mut a = tar::Archive::new(GzDecoder::new(io::BufReader::new(File::open(&l.file)?)));
        for e in a.entries()? {
            let mut e = e?;
            let p = e.path()?.to_string_lossy().into_owned();
            if p.trim_start_matches("./").trim_start_matches('/') == path
                && e.header().entry_type().is_file()
            {
                let mut body = Vec::new();
                e.read_to_end(&mut body)?;
                found = Some(body);
            }
        }
    }
    Ok(found)
}

/// 16 bytes of `seed` and `label` as a version 4, variant 1 UUID.
fn derived_uuid(seed: &[u8], label: &str) -> uuid::Uuid {
    let h = Sha256::new()
        .chain_update(seed)
        .chain_update(label)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// The files of the ESP: (path, bytes or file).
enum Body {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn esp_files(input: &Input, loader: Vec<u8>, esp_uuid: uuid::Uuid) -> Vec<(String, Body)> {
    let (_, efi_path) = boot_loader_path(input.arch);
    let mut entry = format!(
        "# imgbuild: {} (docs/build.md, --format disk)\ntitle imgbuild {}\nlinux /imgbuild/vmlinuz\n",
        input.target, input.target
    );
    for (name, _) in &input.initrds {
        entry.push_str(&format!("initrd /imgbuild/{name}\n"));
    }
    entry.push_str(&format!(
        "options {} imgbuild.esp=PARTUUID={esp_uuid}\n",
        input.cmdline
    ));
    let mut files = vec![
        (efi_path.to_string(), Body::Bytes(loader)),
        (
            "loader/loader.conf".to_string(),
            Body::Bytes(b"default imgbuild.conf\ntimeout 0\neditor no\n".to_vec()),
        ),
        (
            "loader/entries/imgbuild.conf".to_string(),
            Body::Bytes(entry.into_bytes()),
        ),
        (
            "imgbuild/vmlinuz".to_string(),
            Body::File(input.kernel.to_path_buf()),
        ),
    ];
    for (name, path) in &input.initrds {
        files.push((format!("imgbuild/{name}"), Body::File(path.clone())));
    }
    files
}

/// SOURCE_DATE_EPOCH as FAT's date and time (FAT starts in 1980).
#[derive(Debug)]
struct Sde(fatfs::DateTime);

impl fatfs::TimeProvider for Sde {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn fat_time(mtime: i64) -> &'static Sde {
    let t = time::OffsetDateTime::from_unix_timestamp(mtime.max(315_532_800))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let dt = fatfs::DateTime {
        date: fatfs::Date {
            year: u16::try_from(t.year()).unwrap_or(1980).clamp(1980, 2107),
            month: u16::from(u8::from(t.month())),
            day: u16::from(t.day()),
        },
        time: fatfs::Time {
            hour: u16::from(t.hour()),
            min: u16::from(t.minute()),
            sec: u16::from(t.second()),
            millis: 0,
        },
    };
    // fatfs takes a &'static provider; one small value per disk written
    Box::leak(Box::new(Sde(dt)))
}

/// The ESP as a FAT image of `size` bytes.
fn esp_image(
    input: &Input,
    files: &[(String, Body)],
    size: u64,
    volume_id: u32,
) -> Result<Vec<u8>, DiskError> {
    let fat = |e: io::Error| DiskError::Fat {
        target: input.target.to_string(),
        message: e.to_string(),
    };
    let mut img = Cursor::new(vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)]);
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(*b"IMGBUILD   ");
    fatfs::format_volume(&mut img, opts).map_err(fat)?;
    img.seek(SeekFrom::Start(0)).map_err(fat)?;
    {
        let options = fatfs::FsOptions::new().time_provider(fat_time(input.mtime));
        let fs = fatfs::FileSystem::new(&mut img, options).map_err(fat)?;
        add_files(&fs.root_dir(), files).map_err(fat)?;
        fs.unmount().map_err(fat)?;
    }
    let mut img = img.into_inner();
    drop_dot_lfns(&mut img);
    Ok(img)
}

/// A FAT directory entry's size.
const ENTRY: usize = 32;

/// fatfs 0.3.6 writes a long-name entry before the `.` and `..` entries of
/// every directory it makes, which fsck.fat reports and firmware need not
/// accept (rafalh/rust-fatfs#117; fixed upstream after the last release,
/// docs/decisions.md): every `LFN(.) . LFN(..) ..` run at the start of a
/// directory becomes `. ..`, the directory's other entries moved up two
/// slots and the two freed at the end of the run zeroed (free, and the
/// end-of-directory mark when nothing follows).
fn drop_dot_lfns(img: &mut [u8]) {
    let sfn = |e: &[u8], name: &[u8; 11]| e[..11] == *name && e[11] & 0x10 != 0;
    let lfn = |e: &[u8]| e[11] == 0x0f;
    let (dot, dotdot) = (b".          ", b"..         ");
    let mut at = 0;
    while at + 4 * ENTRY <= img.len() {
        let e = |i: usize| &img[at + i * ENTRY..at + (i + 1) * ENTRY];
        if lfn(e(0)) && sfn(e(1), dot) && lfn(e(2)) && sfn(e(3), dotdot) {
            // the directory's entries up to its first free slot
            let mut end = at + 4 * ENTRY;
            while end + ENTRY <= img.len() && img[end] != 0 {
                end += ENTRY;
            }
            let (dot_e, dotdot_e) = (e(1).to_vec(), e(3).to_vec());
            img.copy_within(at + 4 * ENTRY..end, at + 2 * ENTRY);
            img[at..at + ENTRY].copy_from_slice(&dot_e);
            img[at + ENTRY..at + 2 * ENTRY].copy_from_slice(&dotdot_e);
            img[end - 2 * ENTRY..end].fill(0);
            at = end;
        } else {
            at += ENTRY;
        }
    }
}

/// Writes `files` below `root`, making their directories.
fn add_files<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<T>,
    files: &[(String, Body)],
) -> io::Result<()> {
    for (path, body) in files {
        let parts: Vec<&str> = path.split('/').collect();
        let mut dir = root.clone();
        for d in &parts[..parts.len() - 1] {
            dir = match dir.open_dir(d) {
                Ok(x) => x,
                Err(_) => dir.create_dir(d)?,
            };
        }
        let mut f = dir.create_file(parts[parts.len() - 1])?;
        f.truncate()?;
        match body {
            Body::Bytes(b) => f.write_all(b)?,
            Body::File(p) => {
                io::copy(&mut File::open(p)?, &mut f)?;
            }
        }
        f.flush()?;
    }
    Ok(())
}

/// Bytes the ESP's files take, and a FAT image with room for them.
fn esp_size(files: &[(String, Body)]) -> io::Result<u64> {
    let mut sum = 0u64;
    for (_, b) in files {
        sum += match b {
            Body::Bytes(v) => v.len() as u64,
            Body::File(p) => fs::metadata(p)?.len(),
        };
    }
    // FAT's tables and cluster slack, then whole MiB; FAT32 wants >= 33 MiB
    Ok(((sum + sum / 16 + 8 * MIB).div_ceil(MIB) * MIB).max(64 * MIB))
}

/// Writes `disk/disk.raw` and `disk/disk.qcow2` below `out`; returns each
/// (relative path, sha256).
pub(crate) fn write(input: &Input, out: &Path) -> Result<Vec<(String, String)>, DiskError> {
    let io_err = |path: &Path| {
        let (target, path) = (input.target.to_string(), path.to_path_buf());
        move |source| DiskError::Io {
            target,
            path,
            source,
        }
    };
    let (loader_path, _) = boot_loader_path(input.arch);
    let loader = from_os_layers(input.layers, loader_path)
        .map_err(io_err(out))?
        .ok_or_else(|| DiskError::NoBootLoader {
            target: input.target.to_string(),
            path: loader_path.to_string(),
        })?;
    let seed = identity(input, &loader).map_err(io_err(out))?;
    let esp_uuid = derived_uuid(&seed, "esp");
    let files = esp_files(input, loader, esp_uuid);
    let size = esp_size(&files).map_err(io_err(out))?;
    let volume_id = u32::from_le_bytes(
        derived_uuid(&seed, "fat").as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let esp = esp_image(input, &files, size, volume_id)?;
    let dir = out.join("disk");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let raw = out.join(RAW);
    let disk_uuid = derived_uuid(&seed, "disk");
    write_raw(input, &raw, &esp, disk_uuid, esp_uuid)?;
    let qcow2 = out.join(QCOW2);
    write_qcow2(input, &raw, &qcow2)?;
    let mut written = Vec::new();
    for (rel, path) in [(RAW, &raw), (QCOW2, &qcow2)] {
        let mode = if input.private { 0o600 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
        written.push((
            rel.to_string(),
            fsutil::sha256_file(path).map_err(io_err(path))?,
        ));
    }
    Ok(written)
}

/// What the disk's GUIDs are derived from: the node, the boot loader, the
/// kernel, the initrds and the command line.
fn identity(input: &Input, loader: &[u8]) -> io::Result<Vec<u8>> {
    let mut h = Sha256::new();
    h.update(input.target.as_bytes());
    h.update(Sha256::digest(loader));
    h.update(fsutil::sha256_file(input.kernel)?.as_bytes());
    for (name, path) in &input.initrds {
        h.update(name.as_bytes());
        h.update(fsutil::sha256_file(path)?.as_bytes());
    }
    h.update(input.cmdline.as_bytes());
    Ok(h.finalize().to_vec())
}

/// The raw disk: GPT with the ESP at 1 MiB, 1 MiB after it for the backup
/// table (the state partition is made on the first boot).
fn write_raw(
    input: &Input,
    raw: &Path,
    esp: &[u8],
    disk_uuid: uuid::Uuid,
    esp_uuid: uuid::Uuid,
) -> Result<(), DiskError> {
    let gpt_err = |message: String| DiskError::Gpt {
        target: input.target.to_string(),
        path: raw.to_path_buf(),
        message,
    };
    let io = |source| DiskError::Io {
        target: input.target.to_string(),
        path: raw.to_path_buf(),
        source,
    };
    let total = MIB + esp.len() as u64 + MIB;
    let _ = fs::remove_file(raw);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(raw)
        .map_err(io)?;
    file.set_len(total).map_err(io)?;
    file.seek(SeekFrom::Start(MIB)).map_err(io)?;
    file.write_all(esp).map_err(io)?;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut file)
        .map_err(|e| gpt_err(e.to_string()))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(disk_uuid))
        .map_err(|e| gpt_err(e.to_string()))?;
    let first = MIB / SECTOR;
    let partition = gpt::partition::Partition {
        part_type_guid: gpt::partition_types::EFI,
        part_guid: esp_uuid,
        first_lba: first,
        last_lba: first + esp.len() as u64 / SECTOR - 1,
        flags: 0,
        name: "ESP".to_string(),
    };
    disk.update_partitions(BTreeMap::from([(1, partition)]))
        .map_err(|e| gpt_err(e.to_string()))?;
    let file = disk.write().map_err(|e| gpt_err(e.to_string()))?;
    file.sync_all().map_err(io)
}

/// `qemu-img convert -O qcow2 raw qcow2`.
fn write_qcow2(input: &Input, raw: &Path, qcow2: &Path) -> Result<(), DiskError> {
    let err = |message: String| DiskError::Qcow2 {
        target: input.target.to_string(),
        path: qcow2.to_path_buf(),
        message,
    };
    let _ = fs::remove_file(qcow2);
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !o.status.success() {
        return Err(err(String::from_utf8_lossy(&o.stderr).trim().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_holds_its_files_in_their_directories() {
        let input = Input {
            target: "node01",
            arch: Arch::Amd64,
            layers: &[],
            kernel: Path::new("/nonexistent"),
            initrds: Vec::new(),
            cmdline: String::new(),
            mtime: 1_700_000_000,
            private: false,
        };
        let files = vec![
            (
                "EFI/BOOT/BOOTX64.EFI".to_string(),
                Body::Bytes(b"MZ".to_vec()),
            ),
            ("loader/loader.conf".to_string(), Body::Bytes(b"x".to_vec())),
            (
                "loader/entries/imgbuild.conf".to_string(),
                Body::Bytes(b"y".to_vec()),
            ),
        ];
        let img = esp_image(&input, &files, 64 * MIB, 7).unwrap();
        if let Ok(p) = std::env::var("IMGBUILD_ESP_DUMP") {
            fs::write(p, &img).unwrap();
        }
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let mut s = String::new();
        fs.root_dir()
            .open_file("loader/entries/imgbuild.conf")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "y");
        assert_eq!(fs.volume_id(), 7);
    }
}

//! `disk/` (`--format disk`): a whole node as a bootable disk. Takes the
//! node's layers (the OS layers first; a node's secrets layer too), its
//! kernel and the build's one timestamp, and writes `disk/disk.raw`: a GPT
//! holding an EFI system partition (FAT, every timestamp SOURCE_DATE_EPOCH)
//! with systemd-boot from the OS layers, one loader entry, the kernel and a
//! small boot initramfs ([`boot`]); the read-only root, every layer as one
//! squashfs ([`tree`], [`squash`]); and the root's dm-verity hash partition
//! ([`verity`]), whose root hash is on the entry's command line. The space
//! after them is where the root's `/init` has systemd-repart make the state
//! partition on the first boot (and grow it into a larger disk). Every GUID,
//! the salt and the FAT volume id are derived from the node and its inputs;
//! the root and hash partitions' GUIDs are the root hash's two halves (as
//! systemd-repart makes them). Then `disk/disk.qcow2`, the same disk for
//! virtual machines (`qemu-img convert`). A node's disk carries its secrets
//! (both files 0600); a role's generic disk carries none.

mod boot;
mod shared;
mod squash;
mod tree;
mod verity;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::BuiltLayer;
use crate::manifest::Arch;
use crate::plan::Plan;
use crate::rootcheck::RootCheckError;
use tree::{Own, Tree};

pub const RAW: &str = "disk/disk.raw";
pub const QCOW2: &str = "disk/disk.qcow2";
pub(crate) const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "the layers of {target} have no /{path} (systemd-boot): add the `systemd-boot-efi` package to [os] packages in pins.toml"
    )]
    NoBootLoader { target: String, path: String },
    #[error("cannot write the disk of {target} at {path}")]
    Io {
        target: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the layers of {target} into its disk's root")]
    Layers {
        target: String,
        #[source]
        source: Box<crate::fetch::archive::ArchiveError>,
    },
    #[error("cannot make the boot initramfs of {target}'s disk")]
    Boot {
        target: String,
        #[source]
        source: Box<RootCheckError>,
    },
    #[error("cannot write the root filesystem of {target} at {path}: {message}")]
    Root {
        target: String,
        path: PathBuf,
        message: String,
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
    pub plan: &'a Plan,
    /// The layers the root holds, in order (the OS layers first; a node's
    /// secrets layer when its disk carries them).
    pub layers: &'a [BuiltLayer],
    pub kernel: &'a Path,
    /// The kernel command line but the partitions and the root hash.
    pub cmdline: String,
    pub mtime: i64,
    /// The disk carries private material (0600).
    pub private: bool,
    /// The layer store's directory: the shared part of disks is kept below
    /// it (`disk/`).
    pub store_dir: &'a Path,
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

/// The Discoverable Partitions Specification's root and root verity
/// partition types of `arch`.
fn root_types(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => (
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        ),
        Arch::Arm64 => (
            "b921b045-1df0-41c3-af44-4c6f280d3fae",
            "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        ),
    }
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

/// The ESP's files: the boot loader, its configuration, one entry with
/// `cmdline`, the kernel, the boot initramfs and the node's own layers.
fn esp_files(
    input: &Input,
    root: &shared::Shared,
    node: Option<Vec<u8>>,
    cmdline: &str,
) -> Vec<(String, Body)> {
    let (_, efi_path) = boot_loader_path(input.plan.arch);
    let target = &input.plan.target;
    let node_line = if node.is_some() {
        "initrd /imgbuild/node.img\n"
    } else {
        ""
    };
    let entry = format!(
        "# imgbuild: {target} (docs/build.md, --format disk)\ntitle imgbuild {target}\nlinux /imgbuild/vmlinuz\ninitrd /imgbuild/boot.img\n{node_line}options {cmdline}\n"
    );
    let mut files = vec![
        (efi_path.to_string(), Body::Bytes(root.loader.clone())),
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
        (
            "imgbuild/boot.img".to_string(),
            Body::Bytes(root.boot.clone()),
        ),
    ];
    if let Some(node) = node {
        files.push(("imgbuild/node.img".to_string(), Body::Bytes(node)));
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
    (target, mtime): (&str, i64),
    files: &[(String, Body)],
    size: u64,
    volume_id: u32,
) -> Result<Vec<u8>, DiskError> {
    let fat = |e: io::Error| DiskError::Fat {
        target: target.to_string(),
        message: e.to_string(),
    };
    let mut img = Cursor::new(vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)]);
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(*b"IMGBUILD   ");
    fatfs::format_volume(&mut img, opts).map_err(fat)?;
    img.seek(SeekFrom::Start(0)).map_err(fat)?;
    {
        let options = fatfs::FsOptions::new().time_provider(fat_time(mtime));
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

/// Bytes the ESP's files take, and a FAT image with room for them (and
/// for a loader entry of up to 4 KiB).
fn esp_size(files: &[(String, Body)]) -> io::Result<u64> {
    let mut sum = 4096u64;
    for (_, b) in files {
        sum += match b {
            Body::Bytes(v) => v.len() as u64,
            Body::File(p) => fs::metadata(p)?.len(),
        };
    }
    // FAT's tables and cluster slack, then whole MiB; FAT32 wants >= 33 MiB
    Ok(((sum + sum / 16 + 8 * MIB).div_ceil(MIB) * MIB).max(64 * MIB))
}

fn io_err(target: &str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let (target, path) = (target.to_string(), path.to_path_buf());
    move |source| DiskError::Io {
        target,
        path,
        source,
    }
}

/// Where the partitions are on the disk, in bytes.
struct Layout {
    esp_len: u64,
    root_at: u64,
    root_len: u64,
    hash_at: u64,
}

/// imgbuild's own files in every disk's root: `/init` and the state
/// partition's definition.
fn own_files() -> [Own<'static>; 2] {
    [
        Own {
            path: "init",
            mode: 0o755,
            body: super::pxe::init::SCRIPT.as_bytes(),
        },
        Own {
            path: super::pxe::init::REPART_STATE,
            mode: 0o644,
            body: super::pxe::init::REPART.as_bytes(),
        },
    ]
}

/// Writes `disk/disk.raw` and `disk/disk.qcow2` below `out`; returns each
/// (relative path, sha256).
pub(crate) fn write(input: &Input, out: &Path) -> Result<Vec<(String, String)>, DiskError> {
    let target = input.plan.target.as_str();
    let dir = out.join("disk");
    fs::create_dir_all(&dir).map_err(io_err(target, &dir))?;
    let (common, own): (Vec<BuiltLayer>, Vec<BuiltLayer>) = input
        .layers
        .iter()
        .cloned()
        .partition(|l| l.kind.is_shared());
    let root = shared::get(input, &common, &own_files(), &input.store_dir.join("disk"))?;
    let node = node_initrd(input, &own, &dir)?;
    let raw = out.join(RAW);
    write_raw(input, &raw, &root, node)?;
    let qcow2 = out.join(QCOW2);
    // the raw disk hashed while qemu-img converts it (both from the page
    // cache, on the two cores)
    let (raw_digest, converted) = std::thread::scope(|s| {
        let digest = s.spawn(|| fsutil::sha256_file(&raw));
        let converted = write_qcow2(input, &raw, &qcow2);
        let digest = digest
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("hashing the disk panicked")));
        (digest, converted)
    });
    converted?;
    let raw_digest = raw_digest.map_err(io_err(target, &raw))?;
    let qcow2_digest = fsutil::sha256_file(&qcow2).map_err(io_err(target, &qcow2))?;
    let mode = if input.private { 0o600 } else { 0o644 };
    for path in [&raw, &qcow2] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err(target, path))?;
    }
    Ok(vec![
        (RAW.to_string(), raw_digest),
        (QCOW2.to_string(), qcow2_digest),
    ])
}

/// The node's own layers (its node layer, its secrets on a node's disk) as
/// the ESP's `imgbuild/node.img`, below `/imgbuild.add` (the boot
/// initramfs copies them onto the root); none on a role's generic disk.
fn node_initrd(
    input: &Input,
    layers: &[BuiltLayer],
    dir: &Path,
) -> Result<Option<Vec<u8>>, DiskError> {
    if layers.is_empty() {
        return Ok(None);
    }
    let target = input.plan.target.as_str();
    let spool = dir.join(".node.spool");
    let mtime = u64::try_from(input.mtime).unwrap_or(0);
    let tree = Tree::read(layers, &[], mtime, &spool).map_err(|e| DiskError::Layers {
        target: target.to_string(),
        source: Box::new(e),
    });
    let made = tree
        .and_then(|t| boot::below(&t, "imgbuild.add", input.mtime).map_err(io_err(target, &spool)));
    let _ = fs::remove_file(&spool);
    made.map(Some)
}

/// The disk: the ESP (its entry naming the partitions and the root hash),
/// the shared root and its hash partition copied in after it, the
/// partition table. Its own GUIDs are derived from the node, the boot
/// files, the kernel, the command line and the root hash.
fn write_raw(
    input: &Input,
    raw: &Path,
    root: &shared::Shared,
    node: Option<Vec<u8>>,
) -> Result<(), DiskError> {
    let target = input.plan.target.as_str();
    let mut h = Sha256::new();
    h.update(target.as_bytes());
    h.update(Sha256::digest(&root.loader));
    let kernel = fsutil::sha256_file(input.kernel).map_err(io_err(target, input.kernel))?;
    h.update(kernel.as_bytes());
    h.update(Sha256::digest(&root.boot));
    h.update(Sha256::digest(node.as_deref().unwrap_or_default()));
    h.update(input.cmdline.as_bytes());
    h.update(root.root_hash);
    let seed = h.finalize().to_vec();
    let mut halves = [[0u8; 16]; 2];
    halves[0].copy_from_slice(&root.root_hash[..16]);
    halves[1].copy_from_slice(&root.root_hash[16..]);
    let ids = Ids {
        disk: derived_uuid(&seed, "disk"),
        esp: derived_uuid(&seed, "esp"),
        root: uuid::Uuid::from_bytes(halves[0]),
        verity: uuid::Uuid::from_bytes(halves[1]),
    };
    let cmdline = format!(
        "{} imgbuild.root=PARTUUID={} imgbuild.verity=PARTUUID={} imgbuild.roothash={} imgbuild.esp=PARTUUID={}",
        input.cmdline,
        ids.root,
        ids.verity,
        hex::encode(root.root_hash),
        ids.esp
    );
    let files = esp_files(input, root, node, &cmdline);
    let esp_len = esp_size(&files).map_err(io_err(target, input.kernel))?;
    let volume_id = u32::from_le_bytes(
        derived_uuid(&seed, "fat").as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let esp = esp_image((target, input.mtime), &files, esp_len, volume_id)?;
    let layout = Layout {
        esp_len,
        root_at: MIB + esp_len,
        root_len: root.root_len,
        hash_at: MIB + esp_len + root.hash_at,
    };
    let file = place(raw, &esp, root, &layout).map_err(io_err(target, raw))?;
    write_gpt(input, file, raw, &layout, root.hash_len, &ids)
}

/// A new `raw` (0600) with `esp` at 1 MiB and the shared root and hash
/// partitions at `layout.root_at`, 1 MiB after them for the backup table.
fn place(raw: &Path, esp: &[u8], root: &shared::Shared, layout: &Layout) -> io::Result<File> {
    let _ = fs::remove_file(raw);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(raw)?;
    file.seek(SeekFrom::Start(MIB))?;
    file.write_all(esp)?;
    file.seek(SeekFrom::Start(layout.root_at))?;
    let copied = io::copy(&mut File::open(&root.parts)?, &mut file)?;
    file.set_len(layout.root_at + copied + MIB)?;
    Ok(file)
}

/// The disk's and its partitions' GUIDs.
struct Ids {
    disk: uuid::Uuid,
    esp: uuid::Uuid,
    root: uuid::Uuid,
    verity: uuid::Uuid,
}

/// The protective MBR and the GPT: the ESP at 1 MiB, the root after it,
/// its hash partition after that, each from a MiB boundary; 1 MiB at the
/// end for the backup table.
fn write_gpt(
    input: &Input,
    file: File,
    raw: &Path,
    layout: &Layout,
    hash_len: u64,
    ids: &Ids,
) -> Result<(), DiskError> {
    let target = input.plan.target.as_str();
    let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
        target: target.to_string(),
        path: raw.to_path_buf(),
        message: e.to_string(),
    };
    let total = file.metadata().map_err(io_err(target, raw))?.len();
    let mut file = file;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut file).map_err(|e| gpt_err(&e))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(ids.disk))
        .map_err(|e| gpt_err(&e))?;
    let partitions = partitions(input.plan.arch, layout, hash_len, ids);
    disk.update_partitions(partitions)
        .map_err(|e| gpt_err(&e))?;
    // on disk with the rest of the node's directory (one syncfs)
    disk.write().map(drop).map_err(|e| gpt_err(&e))
}

/// The ESP, the root and its hash partition, each from a MiB boundary and
/// a whole number of MiB.
fn partitions(
    arch: Arch,
    layout: &Layout,
    hash_len: u64,
    ids: &Ids,
) -> BTreeMap<u32, gpt::partition::Partition> {
    let (root_type, verity_type) = root_types(arch);
    let linux = |guid: &str| gpt::partition_types::Type {
        guid: uuid::Uuid::parse_str(guid).unwrap_or_default(),
        os: gpt::partition_types::OperatingSystem::Linux,
    };
    let part = |id: u32, kind, guid, at: u64, len: u64, name: &str| {
        (
            id,
            gpt::partition::Partition {
                part_type_guid: kind,
                part_guid: guid,
                first_lba: at / SECTOR,
                last_lba: (at + len.next_multiple_of(MIB)) / SECTOR - 1,
                flags: 0,
                name: name.to_string(),
            },
        )
    };
    BTreeMap::from([
        part(
            1,
            gpt::partition_types::EFI,
            ids.esp,
            MIB,
            layout.esp_len,
            "ESP",
        ),
        part(
            2,
            linux(root_type),
            ids.root,
            layout.root_at,
            layout.root_len,
            "imgbuild-root",
        ),
        part(
            3,
            linux(verity_type),
            ids.verity,
            layout.hash_at,
            hash_len,
            "imgbuild-root-verity",
        ),
    ])
}

/// `qemu-img convert -O qcow2 raw qcow2`.
fn write_qcow2(input: &Input, raw: &Path, qcow2: &Path) -> Result<(), DiskError> {
    let err = |message: String| DiskError::Qcow2 {
        target: input.plan.target.to_string(),
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
    use std::io::Read;

    #[test]
    fn the_esp_holds_its_files_in_their_directories() {
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
        let img = esp_image(("node01", 1_700_000_000), &files, 64 * MIB, 7).unwrap();
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

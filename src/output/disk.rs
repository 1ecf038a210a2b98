//! `disk/` (`--format disk`, `disk-raw`): a whole node as a bootable disk.
//! Takes the node's layers (the OS layers first; a node's secrets layer
//! too), its kernel and the build's one timestamp, and makes a GPT disk
//! holding an EFI system partition (FAT, every timestamp SOURCE_DATE_EPOCH)
//! with systemd-boot from the OS layers, one loader entry, the kernel and a
//! small boot initramfs ([`boot`]); the read-only root, every shared layer
//! as one squashfs ([`tree`], [`squash`]); and the root's dm-verity hash
//! partition ([`verity`]), whose root hash is on the entry's command line.
//! The space after them is where the root's `/init` has systemd-repart make
//! the state partition on the first boot (and grow it into a larger disk).
//! Every GUID and the FAT volume id are derived from the node and its
//! inputs; the root and hash partitions' GUIDs are the root hash's two
//! halves (as systemd-repart makes them).
//!
//! The root, its hash partition and an ESP with the shared boot files are
//! made once per set of shared layers, as a disk of their own kept in the
//! store ([`shared`]). A node's disk is that disk with its own clusters
//! written over it ([`cow`]): the partition table, the loader entry, the
//! node's own layers (`imgbuild/node.img`). It is written as
//! `disk/disk.qcow2`, an overlay of those clusters over `disk/base.qcow2`
//! (the shared disk, linked from the store: [`qcow2`]), and with `disk-raw`
//! as `disk/disk.raw`, the whole disk in one file. A node's disk carries
//! its secrets (0600); a role's generic disk and the shared one carry none.

mod boot;
mod cow;
mod qcow2;
mod shared;
mod squash;
mod tree;
mod verity;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::layer::BuiltLayer;
use crate::manifest::Arch;
use crate::plan::Plan;
use crate::rootcheck::RootCheckError;
use cow::{CLUSTER, Cow, Extent};
use tree::{Own, Tree};

pub const RAW: &str = "disk/disk.raw";
pub const QCOW2: &str = "disk/disk.qcow2";
/// The root's shared disk a node's qcow2 is over, and its name there.
pub const BASE: &str = "disk/base.qcow2";
pub const BASE_NAME: &str = "base.qcow2";
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
    #[error("cannot write the partition table of {target}'s disk: {message}")]
    Gpt { target: String, message: String },
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
    /// Write `disk/disk.qcow2` (`--format disk`).
    pub qcow2: bool,
    /// Write `disk/disk.raw` (`--format disk-raw`).
    pub raw: bool,
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

/// The ESP's files: the boot loader, its configuration, the kernel, the
/// boot initramfs, then what differs between disks of the same root (the
/// loader entry, the node's own layers), so that a node's ESP over the
/// shared one changes only its last files' clusters.
fn esp_files(
    arch: Arch,
    root: &shared::Shared,
    kernel: &Path,
    entry: String,
    node: Option<Vec<u8>>,
) -> Vec<(String, Body)> {
    let (_, efi_path) = boot_loader_path(arch);
    let mut files = vec![
        (efi_path.to_string(), Body::File(root.loader.clone())),
        (
            "loader/loader.conf".to_string(),
            Body::Bytes(b"default imgbuild.conf\ntimeout 0\neditor no\n".to_vec()),
        ),
        (
            "imgbuild/vmlinuz".to_string(),
            Body::File(kernel.to_path_buf()),
        ),
        (
            "imgbuild/boot.img".to_string(),
            Body::File(root.boot.clone()),
        ),
        (ENTRY_PATH.to_string(), Body::Bytes(entry.into_bytes())),
    ];
    if let Some(node) = node {
        files.push((NODE_IMG.to_string(), Body::Bytes(node)));
    }
    files
}

const ENTRY_PATH: &str = "loader/entries/imgbuild.conf";
const NODE_IMG: &str = "imgbuild/node.img";

/// The loader entry of `title`'s disk with `cmdline`, loading the node's
/// own layers when it has them.
fn entry(title: &str, node: bool, cmdline: &str) -> String {
    let node_line = if node {
        format!("initrd /{NODE_IMG}\n")
    } else {
        String::new()
    };
    format!(
        "# imgbuild: {title} (docs/build.md, --format disk)\ntitle imgbuild {title}\nlinux /imgbuild/vmlinuz\ninitrd /imgbuild/boot.img\n{node_line}options {cmdline}\n"
    )
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
    hash_len: u64,
    /// The disk's size: 1 MiB for the backup table after the parts.
    total: u64,
}

impl Layout {
    /// An ESP of `esp_len` at 1 MiB, the root's parts after it.
    fn new(esp_len: u64, root: &shared::Shared) -> Layout {
        let root_at = MIB + esp_len;
        Layout {
            esp_len,
            root_at,
            root_len: root.root_len,
            hash_at: root_at + root.hash_at,
            hash_len: root.hash_len,
            total: root_at + root.parts_len + MIB,
        }
    }

    /// The root's parts (the stored file) where this layout puts them.
    fn parts(&self, root: &shared::Shared) -> io::Result<Extent> {
        Ok(Extent {
            at: self.root_at,
            len: root.parts_len,
            file: Arc::new(File::open(&root.parts)?),
            offset: 0,
        })
    }
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

/// Writes the disk below `out` as `input` asks: `disk/disk.qcow2` (over
/// `disk/base.qcow2`, its root's shared disk linked from the store, when
/// the node's own files fit the shared ESP's room) and `disk/disk.raw`;
/// returns each file written or linked with its sha256.
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
    let disk = compose(input, &root, node)?;
    let mut sums = Vec::new();
    if input.qcow2 {
        sums.extend(write_qcow2(target, &disk, &root, out)?);
    }
    if input.raw {
        sums.push(write_raw(target, &disk, out)?);
    }
    let mode = if input.private { 0o600 } else { 0o644 };
    for file in [QCOW2, RAW] {
        let path = out.join(file);
        if sums.iter().any(|(f, _)| f == file) {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io_err(target, &path))?;
        }
    }
    Ok(sums)
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

/// A disk made: the whole disk, the clusters this node wrote over what it
/// started from, and whether that was its root's shared disk.
struct Made {
    cow: Cow,
    over_base: bool,
}

/// The seed of a disk's own GUIDs and FAT volume id: the disk's name, its
/// boot files, kernel, command line and root hash, and the node's own
/// layers.
fn disk_seed(name: &str, root: &shared::Shared, node: Option<&[u8]>, cmdline: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(root.loader_sha256.as_bytes());
    h.update(root.kernel_sha256.as_bytes());
    h.update(root.boot_sha256.as_bytes());
    h.update(Sha256::digest(node.unwrap_or_default()));
    h.update(cmdline.as_bytes());
    h.update(root.root_hash);
    h.finalize().to_vec()
}

impl Ids {
    fn derived(seed: &[u8], root_hash: &[u8; 32]) -> Ids {
        let mut halves = [[0u8; 16]; 2];
        halves[0].copy_from_slice(&root_hash[..16]);
        halves[1].copy_from_slice(&root_hash[16..]);
        Ids {
            disk: derived_uuid(seed, "disk"),
            esp: derived_uuid(seed, "esp"),
            root: uuid::Uuid::from_bytes(halves[0]),
            verity: uuid::Uuid::from_bytes(halves[1]),
            volume: u32::from_le_bytes(
                derived_uuid(seed, "fat").as_bytes()[..4]
                    .try_into()
                    .unwrap_or([0; 4]),
            ),
        }
    }

    /// `cmdline` with the partitions and the root hash.
    fn cmdline(&self, cmdline: &str, root_hash: &[u8; 32]) -> String {
        format!(
            "{cmdline} imgbuild.root=PARTUUID={} imgbuild.verity=PARTUUID={} imgbuild.roothash={} imgbuild.esp=PARTUUID={}",
            self.root,
            self.verity,
            hex::encode(root_hash),
            self.esp
        )
    }
}

/// The node's disk: over its root's shared disk (the node's own files
/// added to the shared ESP) when they fit its room, else a disk of its own.
fn compose(input: &Input, root: &shared::Shared, node: Option<Vec<u8>>) -> Result<Made, DiskError> {
    let target = input.plan.target.as_str();
    let seed = disk_seed(target, root, node.as_deref(), &input.cmdline);
    let ids = Ids::derived(&seed, &root.root_hash);
    let entry = entry(
        target,
        node.is_some(),
        &ids.cmdline(&input.cmdline, &root.root_hash),
    );
    let needs = (entry.len() + node.as_ref().map_or(0, Vec::len)) as u64;
    if !fits(needs, root.base.room) {
        let files = esp_files(input.plan.arch, root, input.kernel, entry, node);
        let (disk, _) = standalone((input.plan, input.mtime), root, &files, 0, &ids)?;
        return Ok(Made {
            cow: disk,
            over_base: false,
        });
    }
    let layout = Layout::new(root.base.esp_len, root);
    let esp = Extent {
        at: MIB,
        len: layout.esp_len,
        file: Arc::new(File::open(&root.base.esp).map_err(io_err(target, &root.base.esp))?),
        offset: 0,
    };
    let parts = layout.parts(root).map_err(io_err(target, &root.parts))?;
    let mut cow = Cow::new(layout.total, vec![esp, parts]);
    own_esp(
        (target, input.mtime),
        &mut cow.window(MIB, layout.esp_len),
        entry,
        node,
        ids.volume,
    )?;
    write_gpt(input.plan, &mut cow, &layout, &ids)?;
    Ok(Made {
        cow,
        over_base: true,
    })
}

/// The node's own files take `needs` bytes: whether they fit `room` on the
/// shared ESP (with FAT's slack).
fn fits(needs: u64, room: u64) -> bool {
    needs + needs / 16 + 256 * 1024 <= room
}

/// A disk of its own: `files` on an ESP with `room` to spare, the root and
/// its hash partition from the store.
fn standalone(
    (plan, mtime): (&Plan, i64),
    root: &shared::Shared,
    files: &[(String, Body)],
    room: u64,
    ids: &Ids,
) -> Result<(Cow, u64), DiskError> {
    let target = plan.target.as_str();
    let esp_len = esp_size(files).map_err(io_err(target, &root.parts))? + room;
    let esp = esp_image((target, mtime), files, esp_len, ids.volume)?;
    let layout = Layout::new(esp_len, root);
    let parts = layout.parts(root).map_err(io_err(target, &root.parts))?;
    let mut cow = Cow::new(layout.total, vec![parts]);
    // the ESP's zeros are the disk's already
    for (i, chunk) in esp.chunks(CLUSTER as usize).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            cow.write_at(MIB + i as u64 * CLUSTER, chunk)
                .map_err(io_err(target, &root.parts))?;
        }
    }
    write_gpt(plan, &mut cow, &layout, ids)?;
    Ok((cow, esp_len))
}

/// The node's own files on the shared ESP in `esp`: its loader entry
/// written anew, its layers added, its own volume id.
fn own_esp(
    (target, mtime): (&str, i64),
    esp: &mut cow::Window,
    entry: String,
    node: Option<Vec<u8>>,
    volume_id: u32,
) -> Result<(), DiskError> {
    let fat = |e: io::Error| DiskError::Fat {
        target: target.to_string(),
        message: e.to_string(),
    };
    {
        let options = fatfs::FsOptions::new().time_provider(fat_time(mtime));
        let fs = fatfs::FileSystem::new(&mut *esp, options).map_err(fat)?;
        let mut files = vec![(ENTRY_PATH.to_string(), Body::Bytes(entry.into_bytes()))];
        if let Some(node) = node {
            files.push((NODE_IMG.to_string(), Body::Bytes(node)));
        }
        add_files(&fs.root_dir(), &files).map_err(fat)?;
        fs.unmount().map_err(fat)?;
    }
    set_volume_id(esp, volume_id).map_err(fat)
}

/// Writes `id` into the FAT boot sector of `esp` (and into its backup on
/// FAT32).
fn set_volume_id<D: io::Read + Write + Seek>(esp: &mut D, id: u32) -> io::Result<()> {
    let mut bpb = [0u8; 512];
    esp.seek(SeekFrom::Start(0))?;
    esp.read_exact(&mut bpb)?;
    let fat32 = u16::from_le_bytes([bpb[22], bpb[23]]) == 0;
    let at = if fat32 { 67 } else { 39 };
    let mut sectors = vec![0u64];
    if fat32 {
        let backup = u16::from_le_bytes([bpb[50], bpb[51]]);
        if backup != 0 {
            sectors.push(u64::from(backup));
        }
    }
    let sector = u64::from(u16::from_le_bytes([bpb[11], bpb[12]]));
    for s in sectors {
        esp.seek(SeekFrom::Start(s * sector + at))?;
        esp.write_all(&id.to_le_bytes())?;
    }
    Ok(())
}

/// The disk's and its partitions' GUIDs.
struct Ids {
    disk: uuid::Uuid,
    esp: uuid::Uuid,
    root: uuid::Uuid,
    verity: uuid::Uuid,
    /// The ESP's FAT volume id.
    volume: u32,
}

/// The protective MBR and the GPT of `disk`: the ESP at 1 MiB, the root
/// after it, its hash partition after that, each from a MiB boundary; 1
/// MiB at the end for the backup table.
fn write_gpt(plan: &Plan, disk: &mut Cow, layout: &Layout, ids: &Ids) -> Result<(), DiskError> {
    let target = plan.target.as_str();
    let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
        target: target.to_string(),
        message: e.to_string(),
    };
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(disk.len() / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut *disk).map_err(|e| gpt_err(&e))?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *disk, Some(ids.disk))
        .map_err(|e| gpt_err(&e))?;
    gpt.update_partitions(partitions(plan.arch, layout, ids))
        .map_err(|e| gpt_err(&e))?;
    gpt.write().map(drop).map_err(|e| gpt_err(&e))
}

/// The ESP, the root and its hash partition, each from a MiB boundary and
/// a whole number of MiB.
fn partitions(arch: Arch, layout: &Layout, ids: &Ids) -> BTreeMap<u32, gpt::partition::Partition> {
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
            layout.hash_len,
            "imgbuild-root-verity",
        ),
    ])
}

/// `disk/disk.qcow2`: over `disk/base.qcow2` (the root's shared disk, a
/// link into the store) the clusters the node changed; else the whole disk.
fn write_qcow2(
    target: &str,
    disk: &Made,
    root: &shared::Shared,
    out: &Path,
) -> Result<Vec<(String, String)>, DiskError> {
    let mut sums = Vec::new();
    let backing = if disk.over_base {
        let base = out.join(BASE);
        let _ = fs::remove_file(&base);
        super::link_or_copy(&root.base.qcow2, &base).map_err(io_err(target, &base))?;
        sums.push((BASE.to_string(), root.base.qcow2_sha256.clone()));
        Some(BASE_NAME)
    } else {
        None
    };
    let path = out.join(QCOW2);
    let digest = write_image(disk, &path, backing).map_err(io_err(target, &path))?;
    sums.push((QCOW2.to_string(), digest));
    Ok(sums)
}

/// `disk` as the qcow2 `path` (0600), over `backing` when it is given;
/// returns its sha256.
fn write_image(disk: &Made, path: &Path, backing: Option<&str>) -> io::Result<String> {
    let mut clusters: BTreeMap<u64, qcow2::Cluster> = BTreeMap::new();
    for (i, c) in disk.cow.dirty() {
        let zero = c.iter().all(|b| *b == 0);
        match (zero, disk.over_base) {
            (true, true) => clusters.insert(*i, qcow2::Cluster::Zero),
            (true, false) => None,
            (false, _) => clusters.insert(*i, qcow2::Cluster::Bytes(c)),
        };
    }
    if !disk.over_base {
        for e in disk.cow.extents() {
            for i in e.at / CLUSTER..(e.at + e.len).div_ceil(CLUSTER) {
                let offset = e.offset + i * CLUSTER - e.at;
                clusters
                    .entry(i)
                    .or_insert(qcow2::Cluster::Stored(&e.file, offset));
            }
        }
    }
    let list: Vec<(u64, qcow2::Cluster)> = clusters.into_iter().collect();
    let file = fsutil::create_private(path)?;
    let mut w = fsutil::Sha256Writer::new(io::BufWriter::with_capacity(
        fsutil::BLOCK,
        fsutil::WriteBehind::new(file),
    ));
    qcow2::write(&mut w, disk.cow.len(), backing, &list)?;
    let (w, digest) = w.finish();
    w.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(digest)
}

/// The backing file the qcow2 image `r` names, if any.
pub fn backing_file<R: Read>(r: &mut R) -> io::Result<Option<String>> {
    qcow2::backing_file(r)
}

/// The command line of a role's generic disk (and of the shared disk):
/// the node's own layers come from the seed attached to it.
pub(crate) fn generic_cmdline(arch: Arch) -> String {
    format!("{} imgbuild.seed=LABEL=cidata", super::pxe::cmdline(arch))
}

/// `disk/disk.raw`: the whole disk, the stored parts copied in.
fn write_raw(target: &str, disk: &Made, out: &Path) -> Result<(String, String), DiskError> {
    let path = out.join(RAW);
    let err = io_err(target, &path);
    let made = (|| {
        let mut file = fsutil::create_private(&path)?;
        file.set_len(disk.cow.len())?;
        for e in disk.cow.extents() {
            let mut from = &*e.file;
            from.seek(SeekFrom::Start(e.offset))?;
            file.seek(SeekFrom::Start(e.at))?;
            io::copy(&mut from.take(e.len), &mut file)?;
        }
        for (i, c) in disk.cow.dirty() {
            file.write_all_at(c, i * CLUSTER)?;
        }
        fsutil::sha256_file(&path)
    })();
    made.map(|digest| (RAW.to_string(), digest)).map_err(err)
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

    #[test]
    fn a_nodes_volume_id_is_written_over_the_shared_one() {
        let files = vec![("loader/loader.conf".to_string(), Body::Bytes(b"x".to_vec()))];
        let img = esp_image(("shared", 1_700_000_000), &files, 64 * MIB, 7).unwrap();
        let mut dev = Cursor::new(img);
        set_volume_id(&mut dev, 0x1234_5678).unwrap();
        dev.set_position(0);
        let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_id(), 0x1234_5678);
    }

    #[test]
    fn a_node_whose_own_files_outgrow_the_room_gets_a_disk_of_its_own() {
        assert!(fits(1 << 20, 16 * MIB));
        assert!(!fits(16 * MIB, 16 * MIB));
        assert!(!fits(15 * MIB + 512 * 1024, 16 * MIB));
    }
}

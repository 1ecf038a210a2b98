//! Writing a layer: takes its resolved entries and writes the deterministic
//! `.tar.gz` (and, when asked, the PXE segment: the same files as a gzip'd
//! newc cpio without a trailer) through [`crate::pgzip`]: numeric owners and
//! explicit modes from the plan, one mtime, every parent directory first,
//! then the archive members streamed straight out of the cached tarballs (by
//! artifact name, in archive order), then every other file by path. An image
//! entry is an OCI image-layout archive of the pulled image, made on the fly.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use super::listing::{self, FileRecord, Listing, Origin, Tee};
use super::os;
use super::resolve::{Content, Inputs};
use super::rootfs::{Kind, Member};
use super::store::Files;
use super::{BuiltLayer, LayerError, io_err};
use crate::fetch::Cache;
use crate::fetch::archive;
use crate::fetch::oci::{self, PulledImage};
use crate::fsutil::{self, Sha256Writer, WriteBehind};
use crate::newc;
use crate::pgzip;
use crate::plan::{Entry, LayerKind, LayerPlan};
use crate::tarutil;

/// One entry with its content, resolved.
pub(super) type Resolved<'p> = (&'p Entry, Content);

/// Mode of a layer that enters the shared store: read-only, so that an
/// output directory hard-linked to it cannot write through by accident.
pub(super) const STORED_MODE: u32 = 0o444;
/// Mode of the secrets layer, which never enters the store.
const PRIVATE_MODE: u32 = 0o600;

/// Writes the layer `key` to `files` (file mode 0600 when `private`, else
/// read-only 0444) by way of temporary files renamed into place.
pub(super) fn write_layer(
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    resolved: Vec<Resolved<'_>>,
    key: &str,
    files: &Files,
    private: bool,
) -> Result<BuiltLayer, LayerError> {
    let dir = files.tar.parent().unwrap_or(Path::new("."));
    let tmp = Files::temporary(dir, key);
    let mode = if private { PRIVATE_MODE } else { STORED_MODE };
    let written = compress(inputs, layer, resolved, &tmp, mode);
    let w = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = fs::remove_file(&tmp.tar);
            let _ = fs::remove_file(&tmp.segment);
            return Err(e);
        }
    };
    let io = |op, path: &Path| io_err(&layer.name, op, path);
    let listing = w.listing.to_json();
    let files_digest = hex::encode(sha2::Sha256::digest(listing.as_bytes()));
    if !private {
        // in place before the layer: a stored layer always has its listing
        fsutil::write_atomic(&files.listing, listing.as_bytes(), STORED_MODE)
            .map_err(io("write", &files.listing))?;
    }
    let on_disk = w.segment.is_some() && w.segment_bytes.is_none();
    if on_disk {
        fs::rename(&tmp.segment, &files.segment).map_err(io("write", &files.segment))?;
    }
    fs::rename(&tmp.tar, &files.tar).map_err(io("write", &files.tar))?;
    Ok(BuiltLayer {
        name: layer.name.clone(),
        kind: layer.kind,
        key: key.to_string(),
        compression: inputs.compression,
        digest: w.tar.digest,
        size: w.tar.size,
        diff_id: w.diff_id,
        file: files.tar.clone(),
        segment: on_disk.then(|| files.segment.clone()),
        segment_bytes: w.segment_bytes.map(Arc::from),
        segment_size: w.segment.as_ref().map(|s| s.size),
        segment_digest: w.segment.map(|s| s.digest),
        files_digest: Some(files_digest),
        files: Some(Arc::new(w.listing)),
    })
}

/// What [`compress`] wrote.
struct Compressed {
    tar: pgzip::Written,
    diff_id: String,
    /// The PXE segment's digest and size, when there is one.
    segment: Option<pgzip::Written>,
    /// The secrets layer's segment, kept in memory.
    segment_bytes: Option<Vec<u8>>,
    /// Every regular file of the layer, hashed (filled in once written).
    listing: Listing,
}

/// Where a layer's PXE segment is written: a file, or memory for the
/// secrets layer's (a few KB that only the files carrying the secrets
/// hold; a file of its own would be made and deleted for every node, and
/// on ext4 without a journal every inode freed slows the next ones made).
enum Sink {
    File(BufWriter<WriteBehind>),
    Memory(Vec<u8>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Memory(v) => v.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Memory(_) => Ok(()),
        }
    }
}

/// The gzip'd tar written to `tmp.tar` (and the segment to `tmp.segment`,
/// or to memory when the layer is private, when `inputs.cpio`; hashed
/// while it is written).
fn compress(
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    resolved: Vec<Resolved<'_>>,
    tmp: &Files,
    mode: u32,
) -> Result<Compressed, LayerError> {
    let tar = create(&tmp.tar, mode).map_err(io_err(&layer.name, "create", &tmp.tar))?;
    let sink = || -> io::Result<Sink> {
        if mode == PRIVATE_MODE {
            Ok(Sink::Memory(Vec::new()))
        } else {
            create(&tmp.segment, mode).map(Sink::File)
        }
    };
    let cpio = inputs
        .cpio
        .then(|| sink().map(Sha256Writer::new))
        .transpose()
        .map_err(io_err(&layer.name, "create", &tmp.segment))?;
    let mut listing = Listing::default();
    let out = pgzip::write(
        tar,
        cpio,
        inputs.compression,
        inputs.jobs,
        |s| {
            listing = write_entries(s, inputs, layer, resolved)?;
            Ok(())
        },
        |e| io_err(&layer.name, "write", &tmp.tar)(e),
    )?;
    let (segment, segment_bytes) = match (out.cpio, out.cpio_writer) {
        (Some(size), Some(w)) => {
            let (w, digest) = w.finish();
            let bytes = match w {
                Sink::File(f) => f
                    .into_inner()
                    .map(|_| None)
                    .map_err(|e| io_err(&layer.name, "write", &tmp.segment)(e.into_error()))?,
                Sink::Memory(v) => Some(v),
            };
            (Some(pgzip::Written { digest, size }), bytes)
        }
        _ => (None, None),
    };
    out.tar_writer
        .into_inner()
        .map_err(|e| io_err(&layer.name, "write", &tmp.tar)(e.into_error()))?;
    listing
        .fill(out.files)
        .map_err(|e| io_err(&layer.name, "hash the files of", &tmp.tar)(io::Error::other(e)))?;
    Ok(Compressed {
        tar: out.tar,
        diff_id: out.diff_id,
        segment,
        segment_bytes,
        listing,
    })
}

/// A new file at `path` with exactly `mode`, buffered, its pages sent to
/// the disk as it grows (the store's sync finds them written).
fn create(path: &Path, mode: u32) -> io::Result<BufWriter<WriteBehind>> {
    // a read-only leftover of the same name cannot be opened for writing
    let _ = fs::remove_file(path);
    Ok(BufWriter::with_capacity(
        1 << 20,
        WriteBehind::new(fsutil::create_mode(path, mode)?),
    ))
}

/// Writes each entry of a layer to the tar stream and to the cpio stream
/// (inode numbers in order; directories with two links, files with one, so
/// the kernel never takes two files for hard links).
pub(super) struct Emit<'s> {
    s: &'s mut pgzip::Streams,
    headers: tar::Builder<Vec<u8>>,
    ino: u32,
    /// SOURCE_DATE_EPOCH: every entry's mtime, or the latest one a root
    /// archive's member keeps.
    mtime: u64,
    /// Every regular file written so far, hashed on its way.
    pub(super) listing: Listing,
    /// Where the members written by [`Emit::member`] come from (the base
    /// archive, a `.deb`), as its caller says.
    pub(super) origin: Option<Origin>,
    /// `[os] exclude`, for the OS layers: the members [`Emit::member`]
    /// leaves out (never a directory).
    exclude: Option<globset::GlobSet>,
}

impl Emit<'_> {
    /// The tar header block(s) just appended to `headers`.
    fn tar_header(&mut self) -> Vec<u8> {
        std::mem::take(self.headers.get_mut())
    }

    fn cpio_header(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u32, u32),
        size: u64,
    ) -> io::Result<Vec<u8>> {
        self.cpio_header_at(path, mode, owner, size, self.mtime)
    }

    fn cpio_header_at(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u32, u32),
        size: u64,
        mtime: u64,
    ) -> io::Result<Vec<u8>> {
        self.ino += 1;
        let size = if self.s.has_cpio() {
            u32::try_from(size).map_err(|_| {
                io::Error::other(format!("{path} is larger than a newc cpio allows (4 GiB)"))
            })?
        } else {
            0
        };
        Ok(newc::Header {
            name: path,
            ino: self.ino,
            mode,
            uid: owner.0,
            gid: owner.1,
            nlink: if mode & newc::S_IFDIR != 0 { 2 } else { 1 },
            mtime: u32::try_from(mtime).unwrap_or(0),
            size,
        }
        .to_bytes())
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        tarutil::append_dir(&mut self.headers, path, 0o755, self.mtime)?;
        let t = self.tar_header();
        let c = self.cpio_header(path, newc::S_IFDIR | 0o755, (0, 0), 0)?;
        self.s.meta(&t, &c)
    }

    fn file(&mut self, e: &Entry, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let path = e.path.trim_start_matches('/');
        let owner = (e.uid, e.gid);
        tarutil::append_file_as(
            &mut self.headers,
            path,
            e.mode,
            owner,
            self.mtime,
            size,
            io::empty(),
        )?;
        let t = self.tar_header();
        let c = self.cpio_header(path, newc::S_IFREG | (e.mode & 0o7777), owner, size)?;
        self.s.meta(&t, &c)?;
        let origin = Origin::of(&e.source);
        self.content(path, (e.mode, owner), size, origin, data)?;
        let zeros = [0u8; 512];
        self.s.meta(
            &zeros[..tarutil::padding(size)],
            &zeros[..newc::padding(size)],
        )
    }

    /// A file with the bytes of the file at `p`.
    fn file_from(&mut self, e: &Entry, p: &Path) -> io::Result<()> {
        let f = File::open(p)?;
        let size = f.metadata()?.len();
        self.file(e, size, &mut io::BufReader::new(f))
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        tarutil::append_symlink(&mut self.headers, path, target, self.mtime)?;
        let t = self.tar_header();
        let len = target.len() as u64;
        let mut c = self.cpio_header(path, newc::S_IFLNK | 0o777, (0, 0), len)?;
        c.extend_from_slice(target.as_bytes());
        c.resize(c.len() + newc::padding(len), 0);
        self.s.meta(&t, &c)
    }

    /// A directory, file or symbolic link of a root archive at `path` (its
    /// own or where it belongs in the image), with the member's mode, owner
    /// and mtime (none later than the layer's). A hard link or device is
    /// the caller's to materialise or skip.
    pub(super) fn member(&mut self, path: &str, m: &Member, data: &mut dyn Read) -> io::Result<()> {
        if let Some(ex) = &self.exclude
            && !matches!(m.kind, Kind::Dir)
            && ex.is_match(format!("/{path}"))
        {
            return Ok(());
        }
        let mtime = m.mtime.min(self.mtime);
        let owner = (m.uid, m.gid);
        let mut h = tar::Header::new_gnu();
        h.set_mode(m.mode);
        h.set_uid(m.uid.into());
        h.set_gid(m.gid.into());
        h.set_mtime(mtime);
        h.set_size(0);
        match &m.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                self.headers
                    .append_data(&mut h, format!("{path}/"), io::empty())?;
                let t = self.tar_header();
                let c = self.cpio_header_at(path, newc::S_IFDIR | m.mode, owner, 0, mtime)?;
                self.s.meta(&t, &c)
            }
            Kind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(m.size);
                self.headers.append_data(&mut h, path, io::empty())?;
                let t = self.tar_header();
                let c = self.cpio_header_at(path, newc::S_IFREG | m.mode, owner, m.size, mtime)?;
                self.s.meta(&t, &c)?;
                let origin = self.origin.clone();
                self.content(path, (m.mode, owner), m.size, origin, data)?;
                let zeros = [0u8; 512];
                self.s.meta(
                    &zeros[..tarutil::padding(m.size)],
                    &zeros[..newc::padding(m.size)],
                )
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                self.headers.append_link(&mut h, path, target)?;
                let t = self.tar_header();
                let len = target.len() as u64;
                let mut c = self.cpio_header_at(path, newc::S_IFLNK | 0o777, owner, len, mtime)?;
                c.extend_from_slice(target.as_bytes());
                c.resize(c.len() + newc::padding(len), 0);
                self.s.meta(&t, &c)
            }
            Kind::HardLink(_) | Kind::Device => Ok(()),
        }
    }

    /// A regular file's content, hashed into the listing on its way.
    fn content(
        &mut self,
        path: &str,
        (mode, (uid, gid)): (u32, (u32, u32)),
        size: u64,
        origin: Option<Origin>,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let record = FileRecord {
            path: path.to_string(),
            mode: mode & 0o7777,
            uid,
            gid,
            size,
            // filled in once the layer is written (Listing::fill)
            sha256: String::new(),
            sha1: String::new(),
            origin,
        };
        if listing::captured(path, size) {
            let mut tee = Tee::new(data, path, size);
            self.s.content(&mut tee, size)?;
            self.listing.add(tee.finish(record));
        } else {
            self.s.file(data, size)?;
            self.listing.add((record, None));
        }
        Ok(())
    }

    /// The tar's end: two zero blocks (a cpio segment has no trailer); the
    /// listing of what was written.
    fn finish(self) -> io::Result<Listing> {
        self.s.meta(&[0u8; 1024], b"")?;
        Ok(self.listing)
    }
}

/// Every ancestor directory of `path` (`/a/b/c` -> `a`, `a/b`).
fn ancestors(path: &str, out: &mut BTreeSet<String>) {
    let rel = path.trim_start_matches('/');
    let mut acc = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        out.insert(acc.clone());
    }
}

/// Archive members by (label, blob) of their archive, then by member name.
type ByArchive<'p> = BTreeMap<(String, PathBuf), BTreeMap<String, Vec<&'p Entry>>>;

/// Splits the entries into archive members, by archive, and the rest.
fn by_archive(resolved: Vec<Resolved<'_>>) -> (ByArchive<'_>, Vec<Resolved<'_>>) {
    let mut by_archive = ByArchive::new();
    let mut rest = Vec::new();
    for (e, c) in resolved {
        match c {
            Content::Member {
                blob,
                label,
                member,
            } => by_archive
                .entry((label, blob))
                .or_default()
                .entry(member)
                .or_default()
                .push(e),
            other => rest.push((e, other)),
        }
    }
    (by_archive, rest)
}

/// The body of a layer: directories, archive members, the other entries by
/// path, the tar's end.
fn write_entries(
    s: &mut pgzip::Streams,
    inputs: &Inputs<'_>,
    layer: &LayerPlan,
    resolved: Vec<Resolved<'_>>,
) -> Result<Listing, LayerError> {
    let os_layer = matches!(layer.kind, LayerKind::Os | LayerKind::OsPackages);
    let mut w = Emit {
        s,
        headers: tar::Builder::new(Vec::new()),
        ino: 0,
        mtime: inputs.mtime,
        listing: Listing::default(),
        origin: None,
        exclude: os_layer
            .then(|| inputs.m.pins.os.as_ref().and_then(|os| os.excluded()))
            .flatten(),
    };
    if os_layer {
        os::write(&mut w, resolved).map_err(|source| LayerError::Os {
            layer: layer.name.clone(),
            source: Box::new(source),
        })?;
        return w.finish().map_err(io_err(
            &layer.name,
            "end the archive",
            Path::new(&layer.name),
        ));
    }
    let mut dirs = BTreeSet::new();
    for (e, _) in &resolved {
        ancestors(&e.path, &mut dirs);
    }
    for d in &dirs {
        w.dir(d)
            .map_err(io_err(&layer.name, "write the entry", Path::new(d)))?;
    }
    let (by_archive, mut rest) = by_archive(resolved);
    for ((label, blob), members) in &by_archive {
        write_members(&mut w, blob, label, members).map_err(|source| LayerError::Archive {
            layer: layer.name.clone(),
            source,
        })?;
    }
    rest.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    for (e, c) in rest {
        let path = e.path.trim_start_matches('/');
        write_other(&mut w, inputs, e, c).map_err(io_err(
            &layer.name,
            "write the entry",
            Path::new(path),
        ))?;
    }
    w.finish().map_err(io_err(
        &layer.name,
        "end the archive",
        Path::new(&layer.name),
    ))
}

/// The wanted members of one cached archive, in archive order.
fn write_members(
    w: &mut Emit<'_>,
    blob: &Path,
    label: &str,
    members: &BTreeMap<String, Vec<&Entry>>,
) -> Result<(), archive::ArchiveError> {
    let wanted: BTreeSet<String> = members.keys().cloned().collect();
    archive::read_members(blob, label, &wanted, |member, _mode, size, reader| {
        let targets = &members[member];
        if let [e] = targets.as_slice() {
            w.file(e, size, reader)?;
        } else {
            // the same member at several paths: small, so buffer it once
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf)?;
            for e in targets {
                w.file(e, size, &mut buf.as_slice())?;
            }
        }
        Ok(())
    })
}

/// An entry that is not an archive member.
fn write_other(w: &mut Emit<'_>, inputs: &Inputs<'_>, e: &Entry, c: Content) -> io::Result<()> {
    match c {
        Content::Bytes(bytes) => w.file(e, bytes.len() as u64, &mut bytes.as_slice()),
        Content::Blob(p) => w.file_from(e, &p),
        Content::Symlink(target) => w.symlink(e.path.trim_start_matches('/'), &target),
        Content::Image(img) => {
            let spool = inputs
                .cache
                .temp(&format!("oci-{}", oci_hex(&img.pin.digest)));
            let result = write_oci_archive(inputs.cache, &img, &spool, inputs.mtime)
                .and_then(|()| w.file_from(e, &spool));
            let _ = fs::remove_file(&spool);
            result
        }
        Content::Member { .. }
        | Content::Root { .. }
        | Content::Deb { .. }
        | Content::DpkgStatus { .. } => Ok(()),
    }
}

fn oci_hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

/// The `index.json` of an image's OCI archive: the pinned index, named.
/// The archive's `index.json`: the pinned index twice, named `repo:tag`
/// and `repo@sha256:<index>`. `ctr images import` creates one image per
/// named descriptor, and containerd's CRI resolves `repo:tag@sha256:...`
/// (what the sandbox setting, flannel and CoreDNS use) by dropping the tag
/// and looking up `repo@sha256:...` (containerd's reference/docker
/// ParseDockerRef), an exact name that must therefore exist.
fn oci_index(img: &PulledImage) -> String {
    let (_, _, tag) = oci::split_reference(&img.pin.image);
    let repo = img
        .pin
        .image
        .strip_suffix(&format!(":{tag}"))
        .unwrap_or(&img.pin.image);
    let by_digest = format!("{repo}@{}", img.index.digest);
    let descriptor = |name: &str, ref_name: Option<&str>| {
        let mut annotations = serde_json::json!({ "io.containerd.image.name": name });
        if let Some(r) = ref_name {
            // the tag, for OCI tools (skopeo's `oci-archive:FILE:TAG`)
            annotations["org.opencontainers.image.ref.name"] = r.into();
        }
        serde_json::json!({
            "mediaType": img.index.media_type,
            "digest": img.index.digest,
            "size": img.index.size,
            "annotations": annotations,
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            descriptor(&img.pin.image, Some(&tag)),
            descriptor(&by_digest, None),
        ]
    });
    crate::json::canonical(&index)
}

/// An OCI image-layout archive of one image for one arch: `oci-layout`,
/// `index.json` pointing at the pinned index (so `name@sha256:<index>` still
/// resolves after `ctr images import`), and the blobs of that arch. Sorted,
/// root-owned, one mtime.
fn write_oci_archive(cache: &Cache, img: &PulledImage, out: &Path, mtime: u64) -> io::Result<()> {
    let index = oci_index(img);
    let layout = "{\"imageLayoutVersion\":\"1.0.0\"}\n";
    let mut blobs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in img.blobs() {
        blobs.insert(
            format!("blobs/sha256/{}", oci_hex(&d.digest)),
            oci::blob_file(cache, &d.digest),
        );
    }
    let mut b = tar::Builder::new(BufWriter::new(fs::File::create(out)?));
    tarutil::append_dir(&mut b, "blobs", 0o755, mtime)?;
    tarutil::append_dir(&mut b, "blobs/sha256", 0o755, mtime)?;
    for (name, file) in &blobs {
        let f = File::open(file)?;
        let size = f.metadata()?.len();
        tarutil::append_file(&mut b, name, 0o644, mtime, size, io::BufReader::new(f))?;
    }
    for (name, text) in [("index.json", index.as_str()), ("oci-layout", layout)] {
        let size = text.len() as u64;
        tarutil::append_file(&mut b, name, 0o644, mtime, size, text.as_bytes())?;
    }
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_a_path() {
        let mut s = BTreeSet::new();
        ancestors("/etc/kubernetes/pki/ca.crt", &mut s);
        ancestors("/etc/hosts", &mut s);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            ["etc", "etc/kubernetes", "etc/kubernetes/pki"]
        );
    }
}

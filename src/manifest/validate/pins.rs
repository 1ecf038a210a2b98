//! pins.toml: each `[[artifact]]` and `[[image]]` entry checked on its own
//! (`[os]` and `[[deb]]` in [`super::debs`])
//! (arch, URL or image reference, checksum or digest, source) and against the
//! entries before it (no pin defined twice), giving the typed [`Pins`]. An
//! entry with an error is left out of them. Names, versions, URLs and image
//! references end up in file names, bundles and rendered configs, so each
//! must be what its syntax allows ([`super::syntax`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;

use super::syntax::{is_download_url, is_image_reference, is_pin_name, is_version};
use crate::manifest::diag::{Diagnostics, Loc};
use crate::manifest::raw::{RawArtifactPin, RawImagePin, RawPins};
use crate::manifest::{Arch, ArtifactPin, Checksum, ImagePin, Pins};

/// pins.toml's path and text: a TOML value's location is a byte offset into it.
pub(super) struct PinsFile<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl PinsFile<'_> {
    pub(super) fn at<T>(&self, s: &toml::Spanned<T>) -> Loc {
        Loc::offset(self.path, self.text, s.span().start)
    }
}

/// Where each pin was first defined (its line), by what identifies it.
pub(super) type FirstSeen<K> = HashMap<K, u64>;

/// The validated pins, and where `[os]` stands when there is one.
pub(super) fn validate_pins(
    file: &Path,
    text: &str,
    raw: RawPins,
    d: &mut Diagnostics,
) -> (Pins, Option<super::debs::OsLocs>) {
    let f = PinsFile { path: file, text };
    let mut pins = Pins::default();
    let mut seen = FirstSeen::new();
    for a in raw.artifact {
        if let Some(pin) = validate_artifact_pin(&f, a, &mut seen, d) {
            pins.artifacts.push(pin);
        }
    }
    let mut seen_images = FirstSeen::new();
    for i in raw.image {
        if let Some(pin) = validate_image_pin(&f, i, &mut seen_images, d) {
            pins.images.push(pin);
        }
    }
    let (os, os_loc) = super::debs::validate_os(&f, raw.os, &pins.artifacts, d);
    pins.os = os;
    pins.debs = super::debs::validate_debs(&f, raw.deb, d);
    (pins, os_loc)
}

fn validate_artifact_pin(
    f: &PinsFile,
    a: RawArtifactPin,
    seen: &mut FirstSeen<(String, Arch)>,
    d: &mut Diagnostics,
) -> Option<ArtifactPin> {
    let loc = f.at(&a.name);
    let name = a.name.get_ref().clone();
    let mut ok = check_name_and_version(f, &a.name, &a.version, d);
    let arch = artifact_arch(f, &a, d);
    ok &= check_url(f, &a, d);
    if a.source.get_ref().trim().is_empty() {
        d.error(
            f.at(&a.source),
            format!("pin `{name}`: `source` is empty; say where the checksum was read"),
        );
    }
    let checksum = download_checksum(f, &(&a).into(), &loc, d);
    if let Some(arch) = arch {
        ok &= first_definition(seen, (name.clone(), arch), &loc, d, |first| {
            format!("pin `{name}` for {arch} is defined twice (first at line {first})")
        });
    }
    let (true, Some(arch), Some(checksum)) = (ok, arch, checksum) else {
        return None;
    };
    Some(ArtifactPin {
        name,
        version: a.version.into_inner(),
        arch,
        url: a.url.into_inner(),
        checksum,
        source: a.source.into_inner(),
        note: a.note,
    })
}

fn artifact_arch(f: &PinsFile, a: &RawArtifactPin, d: &mut Diagnostics) -> Option<Arch> {
    let arch_text = a.arch.get_ref();
    let arch = Arch::parse(arch_text);
    if arch.is_none() {
        d.error(
            f.at(&a.arch),
            format!(
                "pin `{}`: unknown arch `{arch_text}` (expected amd64 or arm64)",
                a.name.get_ref()
            ),
        );
    }
    arch
}

/// A pin's name and version, each in its syntax.
fn check_name_and_version(
    f: &PinsFile,
    name: &toml::Spanned<String>,
    version: &toml::Spanned<String>,
    d: &mut Diagnostics,
) -> bool {
    let mut ok = true;
    if !is_pin_name(name.get_ref()) {
        d.error(
            f.at(name),
            format!(
                "pin name `{}` must be 1 to 63 of a-z 0-9 . _ -, starting and ending with a letter or digit",
                name.get_ref()
            ),
        );
        ok = false;
    }
    if !is_version(version.get_ref()) {
        d.error(
            f.at(version),
            format!(
                "pin `{}`: version `{}` must be 1 to 128 of A-Z a-z 0-9 . _ + ~ -, starting with a letter or digit",
                name.get_ref(),
                version.get_ref()
            ),
        );
        ok = false;
    }
    ok
}

/// Whether the download's URL is one imgbuild fetches and a bundle can hold.
fn check_url(f: &PinsFile, a: &RawArtifactPin, d: &mut Diagnostics) -> bool {
    let url = a.url.get_ref();
    let ok = is_download_url(url);
    if !ok {
        d.error(
            f.at(&a.url),
            format!(
                "pin `{}`: url `{url}` must be https://, http:// or file:// with a path of plain segments (no `.`, `..`, empty segment, space, quote, query or control character)",
                a.name.get_ref()
            ),
        );
    }
    ok
}

/// What a download pin (`[[artifact]]` or `[[deb]]`) says of its checksum.
pub(super) struct ChecksumFields<'a> {
    pub(super) name: &'a toml::Spanned<String>,
    pub(super) version: &'a toml::Spanned<String>,
    pub(super) sha256: &'a Option<toml::Spanned<String>>,
    pub(super) sha512: &'a Option<toml::Spanned<String>>,
}

impl<'a> From<&'a RawArtifactPin> for ChecksumFields<'a> {
    fn from(a: &'a RawArtifactPin) -> Self {
        ChecksumFields {
            name: &a.name,
            version: &a.version,
            sha256: &a.sha256,
            sha512: &a.sha512,
        }
    }
}

/// The one well-formed checksum the pin must have.
pub(super) fn download_checksum(
    f: &PinsFile,
    a: &ChecksumFields,
    loc: &Loc,
    d: &mut Diagnostics,
) -> Option<Checksum> {
    let name = a.name.get_ref();
    match (a.sha256, a.sha512) {
        (Some(h), None) if is_lower_hex(h.get_ref(), 64) => {
            Some(Checksum::Sha256(h.get_ref().clone()))
        }
        (None, Some(h)) if is_lower_hex(h.get_ref(), 128) => {
            Some(Checksum::Sha512(h.get_ref().clone()))
        }
        (Some(h), None) => malformed_hex(f, a, "sha256", 64, h, d),
        (None, Some(h)) => malformed_hex(f, a, "sha512", 128, h, d),
        (None, None) => {
            d.error(
                loc.clone(),
                format!(
                    "pin `{name}` {} has no checksum: add sha256 or sha512 as published upstream",
                    a.version.get_ref()
                ),
            );
            None
        }
        (Some(_), Some(h)) => {
            d.error(
                f.at(h),
                format!("pin `{name}` has both sha256 and sha512: keep one"),
            );
            None
        }
    }
}

/// Reports a checksum that is not `digits` lowercase hex digits.
fn malformed_hex(
    f: &PinsFile,
    a: &ChecksumFields,
    algorithm: &str,
    digits: usize,
    h: &toml::Spanned<String>,
    d: &mut Diagnostics,
) -> Option<Checksum> {
    d.error(
        f.at(h),
        format!(
            "pin `{}` {}: {algorithm} must be {digits} lowercase hex digits, found {} characters `{}`",
            a.name.get_ref(),
            a.version.get_ref(),
            h.get_ref().len(),
            h.get_ref()
        ),
    );
    None
}

fn validate_image_pin(
    f: &PinsFile,
    i: RawImagePin,
    seen: &mut FirstSeen<String>,
    d: &mut Diagnostics,
) -> Option<ImagePin> {
    let loc = f.at(&i.name);
    let name = i.name.get_ref().clone();
    let mut ok = check_name_and_version(f, &i.name, &i.version, d);
    ok &= check_digest(f, &i, d);
    ok &= check_image_reference(f, &i, d);
    let arches = image_arches(f, &i, d);
    if i.source.get_ref().trim().is_empty() {
        d.error(
            f.at(&i.source),
            format!("image pin `{name}`: `source` is empty; say where the digest was read"),
        );
    }
    ok &= first_definition(seen, name.clone(), &loc, d, |first| {
        format!("image pin `{name}` is defined twice (first at line {first})")
    });
    let (true, Some(arches)) = (ok, arches) else {
        return None;
    };
    Some(ImagePin {
        name,
        version: i.version.into_inner(),
        image: i.image.into_inner(),
        digest: i.digest.into_inner(),
        arches,
        source: i.source.into_inner(),
        note: i.note,
    })
}

/// The index digest must be `sha256:` and 64 lowercase hex digits.
fn check_digest(f: &PinsFile, i: &RawImagePin, d: &mut Diagnostics) -> bool {
    let digest = i.digest.get_ref();
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| is_lower_hex(h, 64));
    if !ok {
        d.error(
            f.at(&i.digest),
            format!(
                "image pin `{}`: digest `{digest}` must be `sha256:` and 64 lowercase hex digits",
                i.name.get_ref()
            ),
        );
    }
    ok
}

/// The image must be `registry/repository:tag`, without a digest.
fn check_image_reference(f: &PinsFile, i: &RawImagePin, d: &mut Diagnostics) -> bool {
    let image = i.image.get_ref();
    let ok = is_image_reference(image);
    if !ok {
        d.error(
            f.at(&i.image),
            format!(
                "image pin `{}`: `{image}` must be `registry/repository:tag` (the digest goes in `digest`)",
                i.name.get_ref()
            ),
        );
    }
    ok
}

/// The platforms the index holds; `None` when one of them is unknown.
fn image_arches(f: &PinsFile, i: &RawImagePin, d: &mut Diagnostics) -> Option<Vec<Arch>> {
    let mut arches = Vec::new();
    let mut ok = true;
    for a in i.arch.get_ref() {
        match Arch::parse(a) {
            Some(arch) => arches.push(arch),
            None => {
                d.error(
                    f.at(&i.arch),
                    format!(
                        "image pin `{}`: unknown arch `{a}` (expected amd64 or arm64)",
                        i.name.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(arches)
}

/// Records the line where `key` is first defined; a second definition is an
/// error, worded by `message` from the first one's line.
pub(super) fn first_definition<K: Eq + Hash>(
    seen: &mut FirstSeen<K>,
    key: K,
    loc: &Loc,
    d: &mut Diagnostics,
    message: impl FnOnce(u64) -> String,
) -> bool {
    if let Some(first) = seen.get(&key) {
        d.error(loc.clone(), message(*first));
        false
    } else {
        seen.insert(key, loc.line);
        true
    }
}

pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

//! Resolving a layer's entries: takes a [`LayerPlan`] and its [`Inputs`]
//! (the cache, the state dir, the rendered templates, the pulled images) and
//! produces, for every entry, where its bytes come from ([`Content`]) and the
//! line it adds to the layer's key.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{LayerError, io_err};
use crate::fetch::Cache;
use crate::fetch::archive;
use crate::fetch::oci::PulledImage;
use crate::manifest::{Arch, ArtifactPin, DebPin, Manifests};
use crate::pki::state_path;
use crate::plan::{Entry, LayerPlan, Source};
use crate::render::Rendered;

/// Everything a layer's bytes come from. (Public, with every field, while
/// the recipe still sets `node`, which nothing reads.)
pub struct Inputs<'a> {
    pub m: &'a Manifests,
    pub cache: &'a Cache,
    pub state: &'a Path,
    pub rendered: &'a Rendered,
    pub arch: Arch,
    pub mtime: u64,
    pub jobs: usize,
    /// Write each layer's PXE segment too.
    pub cpio: bool,
    /// How the layer and its segment are compressed.
    pub compression: crate::pgzip::Compression,
    /// Pulled images by (name, arch).
    pub images: &'a BTreeMap<(String, Arch), PulledImage>,
    /// The target's `os` layer once built: what its packages are placed in,
    /// read faster than the base archive it repacks (which is read when
    /// this is `None`).
    pub os_layer: Option<PathBuf>,
}

/// Where one entry's bytes come from, resolved.
pub(super) enum Content {
    Member {
        blob: PathBuf,
        label: String,
        member: String,
    },
    Blob(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
    Image(Box<PulledImage>),
    /// Every member of a cached root archive (the `[os]` base).
    Root {
        blob: PathBuf,
        label: String,
    },
    /// A cached `.deb`, to be placed in the base (its blob and label).
    Deb {
        blob: PathBuf,
        pin: Box<DebPin>,
        base: Option<(PathBuf, String)>,
    },
    /// dpkg's status: the base's (its blob and label) and the layer's packages.
    DpkgStatus {
        blob: PathBuf,
        label: String,
    },
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Bytes as a content, with the id they add to the key.
fn bytes(bytes: Vec<u8>) -> (Content, String) {
    let id = format!("bytes {}", sha256_hex(&bytes));
    (Content::Bytes(bytes), id)
}

impl Inputs<'_> {
    /// Where the bytes of `e` come from, and its id in the layer's key.
    pub(super) fn resolve(
        &self,
        layer: &LayerPlan,
        e: &Entry,
    ) -> Result<(Content, String), LayerError> {
        Ok(match &e.source {
            Source::Member {
                artifact, member, ..
            } => self.member(layer, artifact, member)?,
            Source::Download { artifact, .. } => {
                let (pin, blob) = self.fetched(layer, artifact)?;
                (Content::Blob(blob), format!("blob {}", pin.checksum))
            }
            Source::Template { .. } => bytes(
                self.rendered
                    .get(&(layer.name.clone(), e.path.clone()))
                    .cloned()
                    .unwrap_or_default(),
            ),
            Source::Static { file } => {
                let path = self.m.layers_dir.join(file.trim_start_matches("layers/"));
                bytes(fs::read(&path).map_err(io_err(&layer.name, "read", &path))?)
            }
            Source::Secret { id, node } => bytes(self.secret(layer, id, node.as_deref())?),
            Source::Image { image, reference } => self.image(layer, image, reference)?,
            Source::Symlink { target } => (
                Content::Symlink(target.clone()),
                format!("symlink {target}"),
            ),
            Source::Archive { artifact, .. } => {
                let (pin, blob) = self.fetched(layer, artifact)?;
                let label = format!("{} {}", pin.name, pin.version);
                let id = format!("archive {}", pin.checksum);
                (Content::Root { blob, label }, id)
            }
            Source::Deb { package, .. } => self.deb(layer, package)?,
            Source::Sysusers { package } => bytes(self.sysusers(layer, package)?),
            Source::DpkgStatus { base, .. } => {
                let (pin, blob) = self.fetched(layer, base)?;
                let id = format!("dpkg-status {}", pin.checksum);
                let (blob, label) = self.base_view(blob, pin);
                (Content::DpkgStatus { blob, label }, id)
            }
        })
    }

    /// A pinned `.deb` of this arch, which must be cached, and the `[os]`
    /// base it is placed in.
    fn deb(&self, layer: &LayerPlan, package: &str) -> Result<(Content, String), LayerError> {
        let pin = self.deb_pin(layer, package)?;
        let blob = self.cache.blob(&pin.checksum);
        if !blob.is_file() {
            return Err(LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("deb {} {} ({})", pin.package, pin.version, self.arch),
            });
        }
        let base = self
            .m
            .pins
            .os_base(self.arch)
            .map(|b| self.base_view(self.cache.blob(&b.checksum), b));
        let id = format!("deb {} {}", pin.checksum, self.arch);
        let content = Content::Deb {
            blob,
            pin: Box::new(pin.clone()),
            base,
        };
        Ok((content, id))
    }

    /// Where the base's tree is read to place packages in it: the built
    /// `os` layer when there is one, else the base archive `blob` of `pin`.
    fn base_view(&self, blob: PathBuf, pin: &ArtifactPin) -> (PathBuf, String) {
        match &self.os_layer {
            Some(layer) => (
                layer.clone(),
                format!("the os layer of {} {}", pin.name, pin.version),
            ),
            None => (blob, format!("{} {}", pin.name, pin.version)),
        }
    }

    fn deb_pin(&self, layer: &LayerPlan, package: &str) -> Result<&DebPin, LayerError> {
        self.m
            .pins
            .deb(package, self.arch)
            .ok_or_else(|| LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("deb {package} ({})", self.arch),
            })
    }

    /// The sysusers.d file of a pinned `.deb`: its `users` lines.
    fn sysusers(&self, layer: &LayerPlan, package: &str) -> Result<Vec<u8>, LayerError> {
        let pin = self.deb_pin(layer, package)?;
        let mut text = format!(
            "# imgbuild: the users and groups of deb {} {} (pins.toml `users`),\n# which its maintainer scripts would have made; they are not run.\n",
            pin.package, pin.version
        );
        for line in &pin.users {
            text.push_str(line);
            text.push('\n');
        }
        Ok(text.into_bytes())
    }

    /// A member of a cached archive.
    fn member(
        &self,
        layer: &LayerPlan,
        artifact: &str,
        member: &str,
    ) -> Result<(Content, String), LayerError> {
        let (pin, blob) = self.fetched(layer, artifact)?;
        let id = format!("member {} {}", pin.checksum, member);
        let label = format!("{} {}", pin.name, pin.version);
        let content = Content::Member {
            blob,
            label,
            member: archive::normalize(member),
        };
        Ok((content, id))
    }

    /// A secret of the state dir, which `pki init` must have made.
    fn secret(
        &self,
        layer: &LayerPlan,
        id: &str,
        node: Option<&str>,
    ) -> Result<Vec<u8>, LayerError> {
        let path = self.state.join(state_path(id, node));
        fs::read(&path).map_err(|_| LayerError::MissingSecret {
            layer: layer.name.clone(),
            id: id.to_string(),
            path,
        })
    }

    /// A pulled image of this arch, to be written as an OCI archive.
    fn image(
        &self,
        layer: &LayerPlan,
        image: &str,
        reference: &str,
    ) -> Result<(Content, String), LayerError> {
        let pulled = self
            .images
            .get(&(image.to_string(), self.arch))
            .ok_or_else(|| LayerError::ImageMissing {
                layer: layer.name.clone(),
                image: image.to_string(),
                reference: reference.to_string(),
            })?;
        let id = format!(
            "image {} {} {}",
            pulled.pin.digest, self.arch, pulled.manifest.digest
        );
        Ok((Content::Image(Box::new(pulled.clone())), id))
    }

    /// The pin of `artifact` for this arch and its blob, which must be cached.
    fn fetched(
        &self,
        layer: &LayerPlan,
        artifact: &str,
    ) -> Result<(&ArtifactPin, PathBuf), LayerError> {
        let pin = self.pin(layer, artifact)?;
        let blob = self.cache.blob(&pin.checksum);
        if !blob.is_file() {
            return Err(LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("{} {} ({})", pin.name, pin.version, pin.arch),
            });
        }
        Ok((pin, blob))
    }

    fn pin(&self, layer: &LayerPlan, artifact: &str) -> Result<&ArtifactPin, LayerError> {
        self.m
            .pins
            .artifact(artifact, self.arch)
            .ok_or_else(|| LayerError::NotFetched {
                layer: layer.name.clone(),
                artifact: format!("{artifact} ({})", self.arch),
            })
    }
}

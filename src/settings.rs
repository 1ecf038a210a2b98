//! The command line's global options resolved once into the values every
//! command reads (ripgrep's low-args to high-args): where the manifests,
//! layers, cache and state are, the mirrors, the build context (time,
//! randomness, jobs) and the reporter. Nothing below this reads the
//! command line again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::Global;
use crate::context::{Context, ContextError};
use crate::fetch;
use crate::manifest::{self, ManifestError, Manifests};
use crate::report::Reporter;

#[derive(Debug, Clone)]
pub struct Settings {
    /// cluster.yaml, roles/, pins.toml.
    pub manifests: PathBuf,
    /// The layer trees the role manifests name.
    pub layers: PathBuf,
    /// The content-addressed cache (downloads, images, the layer store).
    pub cache: PathBuf,
    /// `--state`, if given; else `state/<cluster>/` (see [`Settings::state_dir`]).
    state: Option<PathBuf>,
    /// Download mirrors, in order.
    pub mirrors: Vec<String>,
    /// Registry -> mirror URL.
    pub registry_mirrors: BTreeMap<String, String>,
    pub offline: bool,
    /// Progress bars wanted (not with `-q`).
    pub progress: bool,
    pub ctx: Context,
    pub reporter: Reporter,
}

impl Settings {
    /// Resolves the global options, reading the environment once (clock,
    /// `SOURCE_DATE_EPOCH`, CPUs).
    pub fn resolve(g: &Global) -> Result<Settings, ContextError> {
        Ok(Settings {
            layers: g
                .layers
                .clone()
                .unwrap_or_else(|| manifest::default_layers_dir(&g.manifests)),
            manifests: g.manifests.clone(),
            cache: g.cache.clone().unwrap_or_else(fetch::Cache::default_dir),
            state: g.state.clone(),
            mirrors: g.mirrors.clone(),
            registry_mirrors: g.registry_mirrors.iter().cloned().collect(),
            offline: g.offline,
            progress: !g.quiet,
            ctx: Context::from_env(g.jobs)?,
            reporter: Reporter::new(g.quiet, g.verbose),
        })
    }

    /// Stage 1: parse and validate the manifests; warnings go to stderr.
    pub fn load_manifests(&self) -> Result<Manifests, ManifestError> {
        let (m, warnings) = manifest::load(&self.manifests, &self.layers)?;
        for w in warnings.warnings() {
            self.reporter.warn(&w.to_string());
        }
        Ok(m)
    }

    /// `--state`, or `state/<cluster>/`.
    pub fn state_dir(&self, m: &Manifests) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| PathBuf::from("state").join(&m.cluster.name))
    }

    /// The options of stage 3's downloads.
    pub fn fetch_options(&self) -> fetch::Options {
        fetch::Options {
            mirrors: self.mirrors.clone(),
            offline: self.offline,
            jobs: self.ctx.jobs,
            progress: self.progress,
        }
    }

    /// `SOURCE_DATE_EPOCH` as a file time (0 before 1970).
    pub fn mtime(&self) -> u64 {
        u64::try_from(self.ctx.source_date_epoch).unwrap_or(0)
    }
}

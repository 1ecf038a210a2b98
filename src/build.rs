//! The build, stages 3 to 7 as one value (apko's build context): [`Build::prepare`]
//! takes the settings, the manifests and the plans to build, makes every
//! pinned input present (fetch, images), the PKI current, and opens the
//! cache and the layer store once; [`Build::target`] then renders, layers,
//! checks the root (with an `[os]`: [`crate::rootcheck`]) and assembles one
//! plan into `out/<target>/`, and [`Build::all`] does every target (a plan,
//! or a node planned when a worker takes it), `--jobs` at a time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fetch::oci::{ImageError, PulledImage};
use crate::fetch::{self, Cache, FetchError, Fetched};
use crate::fsutil;
use crate::layer::{self, BuiltLayer, LayerError};
use crate::manifest::{Arch, ImagePin, Manifests, Node};
use crate::mem;
use crate::output::{self, Outcome, OutputError};
use crate::pki::{self, PkiError};
use crate::plan::{LayerKind, Plan, PlanError};
use crate::render::{self, RenderError};
use crate::rootcheck::{RootCheck, RootCheckError};
use crate::settings::Settings;

/// Every way a build can fail, by the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    RootCheck(#[from] RootCheckError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot open the layer store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the output directory {path}")]
    OutDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`Build::all`] builds: a plan made beforehand, or a node of the
/// inventory, planned when a worker takes it, so that a fleet's plans are
/// never all held at once.
pub trait Target: Sync {
    /// Its name: its directory under `out/`.
    fn name(&self) -> &str;
    fn plan(&self, m: &Manifests) -> Result<Cow<'_, Plan>, PlanError>;
}

impl Target for Plan {
    fn name(&self) -> &str {
        &self.target
    }

    fn plan(&self, _: &Manifests) -> Result<Cow<'_, Plan>, PlanError> {
        Ok(Cow::Borrowed(self))
    }
}

impl Target for Node {
    fn name(&self) -> &str {
        &self.name
    }

    fn plan(&self, m: &Manifests) -> Result<Cow<'_, Plan>, PlanError> {
        crate::plan::plan_node(m, self).map(Cow::Owned)
    }
}

/// The pulled images of a build, by (name, arch).
pub type Images = BTreeMap<(String, Arch), PulledImage>;

/// Stage 3: every pin the plans need present and verified, and every image
/// they bake in pulled; `cache` is opened once by the caller.
pub fn fetch_inputs(
    s: &Settings,
    cache: &Cache,
    m: &Manifests,
    plans: &[Plan],
) -> Result<(Vec<Fetched>, Images), BuildError> {
    let fetched = fetch::fetch_all(cache, &fetch::needed_pins(m, plans), &s.fetch_options())?;
    let downloaded = fetched
        .iter()
        .filter(|f| f.origin != fetch::Origin::Cached)
        .count();
    s.reporter.debug(&format!(
        "fetch: {} artifacts, {downloaded} downloaded, {} cached",
        fetched.len(),
        fetched.len() - downloaded
    ));
    let mut wanted: BTreeMap<(String, Arch), ImagePin> = BTreeMap::new();
    for p in plans {
        for image in p.images() {
            if let Some(pin) = m.pins.image(image) {
                wanted.insert((image.to_string(), p.arch), pin.clone());
            }
        }
    }
    let list: Vec<(ImagePin, Arch)> = wanted.into_iter().map(|((_, a), p)| (p, a)).collect();
    let pulled = fetch::oci::pull_all(cache, &list, &s.registry_mirrors, s.offline)?;
    let images = pulled
        .into_iter()
        .map(|p| ((p.pin.name.clone(), p.arch), p))
        .collect();
    Ok((fetched, images))
}

/// A prepared build: inputs present, PKI current, stores open.
pub struct Build<'a> {
    settings: &'a Settings,
    m: &'a Manifests,
    cache: Cache,
    store: layer::Store,
    state: PathBuf,
    images: Images,
    opts: output::Options,
    /// The check of each plan's root (with an `[os]`), its layer indexes
    /// shared by every plan.
    rootcheck: RootCheck,
    /// The cluster's values as a template context, made once.
    renderer: render::Renderer,
}

impl<'a> Build<'a> {
    /// Stages 3 and 4 for `plans`, and the cache and layer store opened once.
    pub fn prepare(
        settings: &'a Settings,
        m: &'a Manifests,
        plans: &[Plan],
        opts: output::Options,
    ) -> Result<Build<'a>, BuildError> {
        mem::tune_malloc(settings.ctx.jobs);
        let cache = Cache::open(&settings.cache)?;
        let (_, images) = fetch_inputs(settings, &cache, m, plans)?;
        let state = settings.state_dir(m);
        let changes =
            pki::State::new(&settings.ctx, m, &state).ensure(pki::Renew::Needed, false)?;
        for c in changes.iter().filter(|c| c.action != pki::Action::Kept) {
            match &c.action {
                pki::Action::Fixed(why) => settings.reporter.warn(&format!(
                    "warning: {}: {why} (the state dir must be private)",
                    state.join(&c.path).display()
                )),
                action => settings
                    .reporter
                    .debug(&format!("pki: {} {action:?}", c.path)),
            }
        }
        drop(changes);
        mem::trim_malloc();
        let store =
            layer::Store::open(&cache, settings.reporter).map_err(|source| BuildError::Store {
                path: cache.root.join("layers"),
                source,
            })?;
        Ok(Build {
            settings,
            m,
            cache,
            rootcheck: RootCheck::kept_in(&store.dir),
            store,
            state,
            images,
            opts,
            renderer: render::Renderer::new(m)?,
        })
    }

    /// Stages 5-7 for one plan: render, layer, assemble `out/<target>/`.
    pub fn target(&self, plan: &Plan, out: &Path) -> Result<(PathBuf, Outcome), BuildError> {
        let rendered = self.renderer.render(self.m, plan)?;
        let scratch = output::scratch(out, &plan.target)?;
        let result = self.layers_and_output(plan, &rendered, &scratch.path, out);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&scratch.path);
        }
        result
    }

    fn layers_and_output(
        &self,
        plan: &Plan,
        rendered: &render::Rendered,
        tmp: &Path,
        out: &Path,
    ) -> Result<(PathBuf, Outcome), BuildError> {
        let mut inputs = layer::Inputs {
            m: self.m,
            cache: &self.cache,
            state: &self.state,
            rendered,
            arch: plan.arch,
            mtime: self.settings.mtime(),
            jobs: self.settings.ctx.jobs,
            cpio: self.opts.formats.has(output::Format::Pxe),
            compression: self.opts.compression,
            images: &self.images,
            os_layer: None,
        };
        let built = self.layers(plan, &mut inputs, &tmp.join("layers"))?;
        // nothing reaches out/ from a root that would not boot
        for w in self.rootcheck.check(plan, &built)? {
            self.settings.reporter.warn(&format!("warning: {w}"));
        }
        let done = output::assemble(self.m, plan, &built, &self.store, &self.opts, tmp, out)?;
        Ok(done)
    }

    /// The layers of `plan`, in its order. A layer another builder is
    /// building (another node's, here or in another process) is left for
    /// later and the next one built meanwhile, so that builders of nodes
    /// with the same layers work side by side rather than wait in turn.
    /// The OS layer is waited for: the package layers after it read it.
    fn layers(
        &self,
        plan: &Plan,
        inputs: &mut layer::Inputs<'_>,
        private_dir: &Path,
    ) -> Result<Vec<BuiltLayer>, BuildError> {
        let mut built = Vec::with_capacity(plan.layers.len());
        let mut later = Vec::new();
        for (i, l) in plan.layers.iter().enumerate() {
            let b = if l.kind == LayerKind::Os {
                Some(layer::build(&self.store, inputs, l, private_dir)?)
            } else {
                layer::try_build(&self.store, inputs, l, private_dir)?
            };
            match b {
                Some(b) => {
                    if b.kind == LayerKind::Os {
                        inputs.os_layer = Some(b.file.clone());
                    }
                    built.push(Some(b));
                }
                None => {
                    later.push((i, inputs.os_layer.clone()));
                    built.push(None);
                }
            }
        }
        for (i, os_layer) in later {
            let inputs = layer::Inputs {
                os_layer,
                ..*inputs
            };
            built[i] = Some(layer::build(
                &self.store,
                &inputs,
                &plan.layers[i],
                private_dir,
            )?);
        }
        Ok(built.into_iter().flatten().collect())
    }

    /// Every target into `out/`, `--jobs` at a time; reports each target
    /// and returns the directories in target order. Output bytes never
    /// depend on the order the targets finish in. What became of each
    /// target is kept in a byte (a failure in full): a fleet's bookkeeping
    /// does not grow with its nodes' paths and errors.
    pub fn all<T: Target>(&self, targets: &[T], out: &Path) -> Result<Vec<PathBuf>, BuildError> {
        self.out_root(out)?;
        let next = Mutex::new(targets.iter().enumerate());
        let outcomes = Mutex::new(vec![None::<Outcome>; targets.len()]);
        let failures = Mutex::new(BTreeMap::new());
        let workers = self.settings.ctx.jobs.clamp(1, targets.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while let Some((i, t)) = next.lock().ok().and_then(|mut it| it.next()) {
                        let r = t
                            .plan(self.m)
                            .map_err(BuildError::from)
                            .and_then(|plan| self.target(&plan, out));
                        match r {
                            Ok((_, outcome)) => {
                                if let Ok(mut o) = outcomes.lock() {
                                    o[i] = Some(outcome);
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failures.lock() {
                                    f.insert(i, e);
                                }
                            }
                        }
                    }
                });
            }
        });
        // the layers built here, on disk and recorded in the store
        let committed = self.store.commit();
        let outcomes = outcomes.into_inner().unwrap_or_default();
        let mut failures = failures.into_inner().unwrap_or_default();
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| targets[a].name().cmp(targets[b].name()));
        let mut dirs = Vec::with_capacity(targets.len());
        for i in order {
            if let Some(e) = failures.remove(&i) {
                return Err(e);
            }
            let Some(outcome) = outcomes.get(i).copied().flatten() else {
                continue;
            };
            let verb = match outcome {
                Outcome::Built => "built",
                Outcome::UpToDate => "up to date",
            };
            let name = targets[i].name();
            self.settings.reporter.info(&format!("{verb} {name}"));
            dirs.push(out.join(name));
        }
        committed?;
        Ok(dirs)
    }

    /// Makes the output root (0755) unless it exists, whose mode is then
    /// left as it is; removes what killed runs left in it.
    fn out_root(&self, out: &Path) -> Result<(), BuildError> {
        if !out.is_dir() {
            fsutil::create_dir_all_mode(out, 0o755).map_err(|source| BuildError::OutDir {
                path: out.to_path_buf(),
                source,
            })?;
        }
        for p in output::clean_debris(out) {
            self.settings
                .reporter
                .info(&format!("removed {}: a killed run left it", p.display()));
        }
        Ok(())
    }
}

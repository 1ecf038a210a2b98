//! imgbuild: cluster inventory + pinned upstream artifacts -> immutable,
//! reproducible, per-node OS artifacts for binary-installed HA Kubernetes.
//!
//! The pipeline runs one way, one module per stage:
//! `manifest -> plan -> fetch -> pki -> render -> layer -> output -> verify`.
//! [`run`] is the recipe: it reads the command line and calls the stages in order.

pub mod cli;
pub mod context;
pub mod fetch;
pub mod fsutil;
pub mod layer;
pub mod manifest;
pub mod newc;
pub mod output;
pub mod pgzip;
pub mod pki;
pub mod plan;
pub mod render;
pub mod report;
pub mod tarutil;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;

use cli::{ArchArg, BundleCommand, Cli, Command, PkiCommand};
use context::Context;
use manifest::{Arch, Diagnostics, Manifests};
use report::Reporter;

/// Every way a run can fail, by stage. Each keeps its cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Bundle(#[from] fetch::bundle::BundleError),
    #[error(transparent)]
    Image(#[from] fetch::oci::ImageError),
    #[error(transparent)]
    Push(#[from] output::push::PushError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("cannot open the layer store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{count} file{s} of the PKI in {dir} need attention (see the table)", s = if *.count == 1 { "" } else { "s" })]
    PkiUnhealthy { count: usize, dir: PathBuf },
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Amd64 => Arch::Amd64,
            ArchArg::Arm64 => Arch::Arm64,
        }
    }
}

/// Runs one command line. Data goes to stdout, messages to stderr.
pub fn run(cli: Cli) -> Result<(), Error> {
    let reporter = Reporter::new(cli.global.quiet, cli.global.verbose);
    let ctx = Context::from_env(cli.global.jobs)?;
    match &cli.command {
        Command::Plan(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let plan = plan::plan(&m, &args.role, args.arch.map(Arch::from))?;
            let text = if args.json {
                plan.to_json()
            } else {
                plan.to_table()
            };
            print(&text)
        }
        Command::Pki(cmd) => {
            let m = load_manifests(&cli, &reporter)?;
            let dir = state_dir(&cli, &m);
            let state = pki::State::new(&ctx, &m, &dir);
            match cmd {
                PkiCommand::Init => {
                    report_changes(&reporter, state.ensure(pki::Renew::Needed, false)?)
                }
                PkiCommand::Renew(args) => {
                    if args.ca {
                        reporter.warn(&format!(
                            "warning: replacing the CAs in {}: every certificate is re-issued and every node must be rebuilt",
                            dir.display()
                        ));
                    }
                    let mode = if args.all {
                        pki::Renew::All
                    } else {
                        pki::Renew::Needed
                    };
                    report_changes(&reporter, state.ensure(mode, args.ca)?)
                }
                PkiCommand::Status(args) => {
                    let rows = state.status()?;
                    let text = if args.json {
                        canonical_json(&rows)
                    } else {
                        pki::status_table(&rows)
                    };
                    print(&text)?;
                    let count = rows.iter().filter(|r| r.status != "OK").count();
                    if count > 0 {
                        return Err(Error::PkiUnhealthy { count, dir });
                    }
                    Ok(())
                }
            }
        }
        Command::Node(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let plan = plan::plan(&m, &args.role, args.arch.map(Arch::from))?;
            let opts = options(&ctx, &args.format, &args.seed_layers)?;
            let dirs = build(&cli, &ctx, &reporter, &m, vec![plan], &args.out, &opts)?;
            print_dirs(&dirs)
        }
        Command::Cluster(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let plans = plan::plan_all(&m)?;
            let opts = options(&ctx, &args.format, &args.seed_layers)?;
            let dirs = build(&cli, &ctx, &reporter, &m, plans, &args.out, &opts)?;
            print_dirs(&dirs)
        }
        Command::Verify(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let image = verify::check(&m, &args.dir)?;
            if args.rebuild {
                let plan = plan::plan(&m, &image.node, None)?;
                let list: Vec<cli::Format> = image
                    .build
                    .formats
                    .iter()
                    .filter_map(|f| <cli::Format as clap::ValueEnum>::from_str(f, false).ok())
                    .collect();
                let opts = options(&ctx, &list, &image.build.seed_layers)?;
                let scratch = tempfile_dir(&args.dir)?;
                let result = build(&cli, &ctx, &reporter, &m, vec![plan], &scratch, &opts)
                    .and_then(|dirs| {
                        let rebuilt = dirs.first().cloned().unwrap_or_default();
                        Ok(verify::compare(&args.dir, &rebuilt)?)
                    });
                let _ = std::fs::remove_dir_all(&scratch);
                result?;
                reporter.info(&format!("{}: identical to a rebuild", args.dir.display()));
            }
            reporter.info(&format!("{}: verified", args.dir.display()));
            Ok(())
        }
        Command::Push(args) => {
            if args.include_secrets {
                reporter.warn("warning: pushing WITH the secrets layer (--include-secrets): every private key of the node goes to the registry");
            } else {
                reporter.info("push: the secrets layer is left out (--include-secrets adds it)");
            }
            let digest = output::push::push(&args.dir, &args.reference, args.include_secrets)?;
            print(&format!("{}@{digest}\n", args.reference))
        }
        Command::Fetch(args) => {
            let m = load_manifests(&cli, &reporter)?;
            let plans = plans_for(&m, args.role.as_deref())?;
            let fetched = fetch_pins(&cli, &ctx, &reporter, &fetch::needed_pins(&m, &plans))?;
            let cache = fetch::Cache::open(&cache_dir(&cli))?;
            let images = pull_images(&cli, &cache, &m, &plans)?;
            let mut table = fetch::summary(&fetched);
            for ((name, arch), img) in &images {
                table.push_str(&format!(
                    "{name:17}  {:10}  {arch:5}  {:>10}  image {}\n",
                    img.pin.version,
                    img.layers.len().to_string() + " layers",
                    img.pin.reference()
                ));
            }
            print(&table)
        }
        Command::Bundle(BundleCommand::Export(args)) => {
            let m = load_manifests(&cli, &reporter)?;
            let plans = plans_for(&m, args.role.as_deref())?;
            let pins = fetch::needed_pins(&m, &plans);
            fetch_pins(&cli, &ctx, &reporter, &pins)?;
            let cache = fetch::Cache::open(&cache_dir(&cli))?;
            let images = pull_images(&cli, &cache, &m, &plans)?;
            let mut blobs: Vec<String> = images
                .values()
                .flat_map(|i| i.blobs().into_iter().map(|d| d.digest.clone()))
                .collect();
            blobs.sort();
            blobs.dedup();
            let mtime = u64::try_from(ctx.source_date_epoch).unwrap_or(0);
            let n = fetch::bundle::export(&m, &cache, &pins, &blobs, &args.file, mtime)?;
            reporter.info(&format!("bundle: {} files, {} artifacts", n, pins.len()));
            print(&format!("{}\n", args.file.display()))
        }
        Command::Bundle(BundleCommand::Import(args)) => {
            let m = load_manifests(&cli, &reporter)?;
            let cache = fetch::Cache::open(&cache_dir(&cli))?;
            let done = fetch::bundle::import(&m, &cache, &args.file)?;
            for a in &done.added {
                reporter.info(&format!("added     {a}"));
            }
            for a in &done.already {
                reporter.debug(&format!("cached    {a}"));
            }
            for u in &done.unpinned {
                reporter.warn(&format!(
                    "warning: {u} is not pinned in {}; skipped",
                    m.dir.display()
                ));
            }
            reporter.info(&format!(
                "bundle: {} added, {} already cached",
                done.added.len(),
                done.already.len()
            ));
            Ok(())
        }
    }
}

/// A scratch directory beside `dir` (same filesystem, for hard links).
fn tempfile_dir(dir: &std::path::Path) -> Result<PathBuf, Error> {
    let parent = dir.parent().unwrap_or(std::path::Path::new("."));
    let p = parent.join(format!(".verify-rebuild.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(|source| Error::Store {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

fn formats(list: &[cli::Format]) -> output::Formats {
    output::Formats {
        layers: list.contains(&cli::Format::Layers),
        cloud_init: list.contains(&cli::Format::CloudInit),
        pxe: list.contains(&cli::Format::Pxe),
        oci: list.contains(&cli::Format::Oci),
    }
}

/// The build recipe for a set of plans: fetch, pki, then per target render,
/// layer and output (targets in parallel, `--jobs` at a time).
fn build(
    cli: &Cli,
    ctx: &Context,
    reporter: &Reporter,
    m: &Manifests,
    plans: Vec<plan::Plan>,
    out: &std::path::Path,
    opts: &output::Options,
) -> Result<Vec<PathBuf>, Error> {
    // stage 3: every pinned download and image present and verified
    fetch_pins(cli, ctx, reporter, &fetch::needed_pins(m, &plans))?;
    let cache = fetch::Cache::open(&cache_dir(cli))?;
    let images = pull_images(cli, &cache, m, &plans)?;
    // stage 4: the PKI, created or kept
    let state = state_dir(cli, m);
    let changes = pki::State::new(ctx, m, &state).ensure(pki::Renew::Needed, false)?;
    for c in changes.iter().filter(|c| c.action != pki::Action::Kept) {
        reporter.debug(&format!("pki: {} {:?}", c.path, c.action));
    }
    let store = layer::Store::open(&cache).map_err(|source| Error::Store {
        path: cache.root.join("layers"),
        source,
    })?;
    fsutil::create_dir_all_mode(out, 0o755).map_err(|source| Error::Store {
        path: out.to_path_buf(),
        source,
    })?;
    let next = std::sync::Mutex::new(plans.iter());
    let results = std::sync::Mutex::new(Vec::new());
    let workers = ctx.jobs.clamp(1, plans.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(plan) = next.lock().ok().and_then(|mut it| it.next()) {
                    let r = build_one(ctx, m, &cache, &store, &state, &images, plan, out, opts);
                    if let Ok(mut res) = results.lock() {
                        res.push((plan.target.clone(), r));
                    }
                }
            });
        }
    });
    // the layers built here, on disk and recorded in the store
    let committed = store.commit();
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dirs = Vec::new();
    for (target, r) in results {
        let (dir, outcome) = r?;
        match outcome {
            output::Outcome::Built => reporter.info(&format!("built {target}")),
            output::Outcome::UpToDate => reporter.info(&format!("up to date {target}")),
        }
        dirs.push(dir);
    }
    committed?;
    Ok(dirs)
}

/// Stage 3 for images: each (image, arch) the plans bake in.
fn pull_images(
    cli: &Cli,
    cache: &fetch::Cache,
    m: &Manifests,
    plans: &[plan::Plan],
) -> Result<std::collections::BTreeMap<(String, Arch), fetch::oci::PulledImage>, Error> {
    let mut wanted = std::collections::BTreeMap::new();
    for p in plans {
        for l in &p.layers {
            for e in &l.entries {
                if let plan::Source::Image { image, .. } = &e.source
                    && let Some(pin) = m.pins.image(image)
                {
                    wanted.insert((image.clone(), p.arch), pin.clone());
                }
            }
        }
    }
    let list: Vec<(manifest::ImagePin, Arch)> =
        wanted.iter().map(|((_, a), p)| (p.clone(), *a)).collect();
    let mirrors = fetch::oci::parse_mirrors(&cli.global.registry_mirrors)?;
    let pulled = fetch::oci::pull_all(cache, &list, &mirrors, cli.global.offline)?;
    Ok(pulled
        .into_iter()
        .map(|p| ((p.pin.name.clone(), p.arch), p))
        .collect())
}

/// Stages 5-7 for one target.
#[allow(clippy::too_many_arguments)]
fn build_one(
    ctx: &Context,
    m: &Manifests,
    cache: &fetch::Cache,
    store: &layer::Store,
    state: &std::path::Path,
    images: &std::collections::BTreeMap<(String, Arch), fetch::oci::PulledImage>,
    plan: &plan::Plan,
    out: &std::path::Path,
    opts: &output::Options,
) -> Result<(PathBuf, output::Outcome), Error> {
    let rendered = render::render(m, plan)?;
    let tmp = output::scratch(out, &plan.target)?;
    let result = (|| {
        let inputs = layer::Inputs {
            m,
            cache,
            state,
            rendered: &rendered,
            arch: plan.arch,
            node: Some(plan.target.as_str()),
            mtime: u64::try_from(ctx.source_date_epoch).unwrap_or(0),
            jobs: ctx.jobs,
            cpio: opts.formats.pxe,
            images,
        };
        let mut built = Vec::new();
        for l in &plan.layers {
            built.push(layer::build(store, &inputs, l, &tmp.join("layers"))?);
        }
        Ok::<_, Error>(output::assemble(m, plan, &built, store, opts, &tmp, out)?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The plans of one node or role, or of every node.
fn plans_for(m: &Manifests, target: Option<&str>) -> Result<Vec<plan::Plan>, Error> {
    Ok(match target {
        Some(t) => vec![plan::plan(m, t, None)?],
        None => plan::plan_all(m)?,
    })
}

fn cache_dir(cli: &Cli) -> PathBuf {
    cli.global
        .cache
        .clone()
        .unwrap_or_else(fetch::Cache::default_dir)
}

/// Stage 3: every pin present and verified in the cache.
fn fetch_pins(
    cli: &Cli,
    ctx: &Context,
    reporter: &Reporter,
    pins: &[manifest::ArtifactPin],
) -> Result<Vec<fetch::Fetched>, Error> {
    let cache = fetch::Cache::open(&cache_dir(cli))?;
    let opts = fetch::Options {
        mirrors: cli.global.mirrors.clone(),
        offline: cli.global.offline,
        jobs: ctx.jobs,
        progress: !cli.global.quiet,
    };
    let fetched = fetch::fetch_all(&cache, pins, &opts)?;
    let downloaded = fetched
        .iter()
        .filter(|f| f.origin != fetch::Origin::Cached)
        .count();
    reporter.debug(&format!(
        "fetch: {} artifacts, {} downloaded, {} cached",
        fetched.len(),
        downloaded,
        fetched.len() - downloaded
    ));
    Ok(fetched)
}

/// The build options of a command line (or of an output being rebuilt).
fn options(
    ctx: &Context,
    list: &[cli::Format],
    seed_layers: &str,
) -> Result<output::Options, Error> {
    Ok(output::Options {
        formats: formats(list),
        seed: output::SeedLayers::parse(seed_layers)?,
        source_date_epoch: ctx.source_date_epoch,
        jobs: ctx.jobs,
    })
}

/// The directories written, one a line: the data of `node` and `cluster`.
fn print_dirs(dirs: &[PathBuf]) -> Result<(), Error> {
    print(
        &dirs
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect::<String>(),
    )
}

fn print(text: &str) -> Result<(), Error> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Error::Stdout)
}

/// Canonical JSON: sorted keys, two-space indent, trailing newline.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> String {
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
    s.push('\n');
    s
}

/// `--state`, or `state/<cluster>/`.
fn state_dir(cli: &Cli, m: &Manifests) -> PathBuf {
    cli.global
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from("state").join(&m.cluster.name))
}

/// One line per file on stderr: created, re-issued (why), kept (with -v).
fn report_changes(reporter: &Reporter, changes: Vec<pki::Change>) -> Result<(), Error> {
    let mut counts = [0usize; 3];
    for c in &changes {
        match &c.action {
            pki::Action::Created => {
                counts[0] += 1;
                reporter.info(&format!("created   {}", c.path));
            }
            pki::Action::Reissued(why) => {
                counts[1] += 1;
                reporter.info(&format!("re-issued {} ({why})", c.path));
            }
            pki::Action::Kept => {
                counts[2] += 1;
                reporter.debug(&format!("kept      {}", c.path));
            }
        }
    }
    reporter.info(&format!(
        "pki: {} created, {} re-issued, {} kept",
        counts[0], counts[1], counts[2]
    ));
    Ok(())
}

/// Stage 1: parse and validate the manifests; warnings go to stderr.
fn load_manifests(cli: &Cli, reporter: &Reporter) -> Result<Manifests, Error> {
    let dir = &cli.global.manifests;
    let layers = cli
        .global
        .layers
        .clone()
        .unwrap_or_else(|| manifest::default_layers_dir(dir));
    let (m, warnings): (Manifests, Diagnostics) = manifest::load(dir, &layers)?;
    for w in warnings.warnings() {
        reporter.warn(&w.to_string());
    }
    Ok(m)
}

//! The command line, parsed by clap (docs/building.md and README.md describe
//! it). Every value that has a type of its own is parsed here, by a clap value
//! parser, so a typo fails before any manifest is read; `settings` then
//! resolves the global options once.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::manifest::Arch;
use crate::output::{Format, SeedLayers};
use crate::pgzip::Compression;

/// Build immutable, reproducible node images for binary-installed, highly
/// available Kubernetes clusters: a pinned base OS, pinned binaries and
/// images, the cluster PKI, every rendered config, as layered tarballs, a
/// cloud-init seed, a PXE kernel and initramfs, a bootable disk and an OCI
/// image, each with its SBOM and provenance.
#[derive(Debug, Parser)]
#[command(
    name = "imgbuild",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Directory holding cluster.yaml, roles/ and pins.toml.
    #[arg(long, global = true, value_name = "DIR", default_value = "manifests")]
    pub manifests: PathBuf,
    /// Directory holding the layer trees the role manifests name
    /// [default: layers/ beside the manifests directory].
    #[arg(long, global = true, value_name = "DIR")]
    pub layers: Option<PathBuf>,
    /// Content-addressed download cache [default: $XDG_CACHE_HOME/imgbuild or ~/.cache/imgbuild].
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_CACHE")]
    pub cache: Option<PathBuf>,
    /// State directory holding the cluster PKI [default: state/<cluster>/].
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_STATE")]
    pub state: Option<PathBuf>,
    /// Mirror for downloads: https://HOST/PATH is fetched from URL/HOST/PATH.
    /// Repeatable; tried in order, then upstream unless --offline.
    #[arg(long = "mirror", global = true, value_name = "URL", value_parser = mirror)]
    pub mirrors: Vec<String>,
    /// Registry mirror, REGISTRY=URL (e.g. registry.k8s.io=http://127.0.0.1:5000). Repeatable.
    #[arg(
        long = "registry-mirror",
        global = true,
        value_name = "REGISTRY=URL",
        value_parser = registry_mirror
    )]
    pub registry_mirrors: Vec<(String, String)>,
    /// Use only the cache; fail at once, naming every missing artifact.
    #[arg(long, global = true)]
    pub offline: bool,
    /// Parallel jobs [default: the number of CPUs]. Output bytes never depend on it.
    #[arg(long, short = 'j', global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print less (errors only).
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more; repeat for more still.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build one node's artifacts (or a role's generic image) into OUT/<target>/;
    /// a directory that already holds this very build is left as it is.
    Node(NodeArgs),
    /// Build every node of the inventory, in parallel, into OUT/<node>/;
    /// directories already up to date are left as they are.
    Cluster(ClusterArgs),
    /// Push a node's OCI image (OUT/<node>/oci) to a registry.
    Push(PushArgs),
    /// Show what goes where, from which source, for a node or role; builds nothing.
    Plan(PlanArgs),
    /// Download and verify every pinned artifact a node (or every node) needs.
    Fetch(FetchArgs),
    /// Move pinned artifacts to an air-gapped site.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Generate, inspect and renew the cluster PKI in the state directory.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Check an output directory: checksums, pins, secret placement and modes.
    Verify(VerifyArgs),
    /// Sign a node's image, SBOM and provenance with an ECDSA P-256 key
    /// (writes DIR/signatures/; `verify --key` checks them).
    Sign(SignArgs),
    /// What changed between two builds of a node (OUT/<node>) or of a cluster
    /// (OUT): inputs, PKI, each layer's files. Exit 0 identical, 1 different, 2 error.
    Diff(DiffArgs),
}

impl Command {
    /// The exit code of a failed run: 2 for `diff` (1 means "they differ"), 1 else.
    pub fn error_exit_code(&self) -> u8 {
        match self {
            Command::Diff(_) => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// A node output directory (OUT/<node>).
    pub dir: PathBuf,
    /// The private key, PEM (PKCS#8 or SEC1), ECDSA P-256.
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// The image's repository in cosign's payload (docker-reference)
    /// [default: the node's name].
    #[arg(long, value_name = "REPO")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A node name (master01) or a role name (worker) for that role's generic image.
    #[arg(long, value_name = "NODE|ROLE")]
    pub role: String,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Arch of a role's generic image when its nodes differ.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
}

/// How `node` and `cluster` build.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output formats, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "layers,cloud-init,pxe")]
    pub format: Vec<Format>,
    /// How layers and PXE segments are compressed: gzip (`.tar.gz`, `.cpio.gz`) or zstd
    /// (`.tar.zst`, `.cpio.zst`; OCI `tar+zstd`; a stock image needs zstd for the seed).
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: Compression,
    /// `embed` puts every layer in seed.iso, and boot.ipxe loads the shared layers' segments
    /// from the node's pxe/segments/; `volume` leaves the shared ones out of seed.iso and
    /// puts them in cloud-init/layers.iso (label imglayers, attached beside the seed; one
    /// file in the layer store for every node of the same shared layers); `url=BASE` leaves
    /// them out too: cloud-init fetches them and boot.ipxe loads their segments from BASE.
    #[arg(long, value_name = "embed|volume|url=BASE", default_value = "embed")]
    pub seed_layers: SeedLayers,
    /// With --format oci: also write `<node>-with-secrets`, the image with the
    /// secrets layer (never written otherwise; `push --include-secrets` needs it).
    #[arg(long)]
    pub oci_with_secrets: bool,
    /// With a base OS: boot.ipxe also loads pxe/secrets.cpio.gz (.zst), the node's private
    /// keys and tokens (whoever can fetch it owns the cluster; see docs/build.md).
    #[arg(long)]
    pub pxe_secrets: bool,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// A node output directory (OUT/<node>) holding oci/.
    pub dir: PathBuf,
    /// Destination, registry/repository:tag.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Also push the secrets layer (left out by default).
    #[arg(long)]
    pub include_secrets: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A node name (master01) or a role name (worker) for that role's generic image.
    #[arg(long, value_name = "NODE|ROLE")]
    pub role: String,
    /// Print canonical JSON (sorted keys) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Arch of a role's generic image when its nodes differ.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Only what this node or role needs [default: every node].
    #[arg(long, value_name = "NODE|ROLE")]
    pub role: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write one tar with the manifests, pins and every artifact in mirror layout, plus SHA256SUMS.
    Export(BundleExportArgs),
    /// Verify a bundle against the pins and add its artifacts to the cache.
    Import(BundleImportArgs),
}

#[derive(Debug, Args)]
pub struct BundleExportArgs {
    pub file: PathBuf,
    /// Only what this node or role needs [default: every node].
    #[arg(long, value_name = "NODE|ROLE")]
    pub role: Option<String>,
}

#[derive(Debug, Args)]
pub struct BundleImportArgs {
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create what is missing; keep what still matches the manifests (never replaces a CA).
    Init,
    /// Table of every certificate and the bootstrap token: subject, SANs, issuer, expiry,
    /// OK / EXPIRING / EXPIRED / MISMATCH / MISSING.
    Status(PkiStatusArgs),
    /// Re-issue leaf certificates and the bootstrap token (and CAs with --ca).
    Renew(PkiRenewArgs),
}

#[derive(Debug, Args)]
pub struct PkiStatusArgs {
    /// Print canonical JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PkiRenewArgs {
    /// Re-issue only what is missing, mismatched or inside the renewal window (a
    /// third of a leaf's validity, at most 30 days; the last third of the
    /// bootstrap token's TTL): the default, said explicitly.
    #[arg(long, conflicts_with = "all")]
    pub expiring: bool,
    /// Every leaf.
    #[arg(long)]
    pub all: bool,
    /// Also replace the CAs: every node must then be rebuilt.
    #[arg(long)]
    pub ca: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A node output directory (OUT/<node>).
    pub dir: PathBuf,
    /// Rebuild from manifests and state into a temporary directory and compare bytes.
    #[arg(long)]
    pub rebuild: bool,
    /// The arch the image must be of [default: the one its image.json names].
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// With --rebuild: the formats to rebuild [default: those image.json records,
    /// checked and shown].
    #[arg(long, value_delimiter = ',', requires = "rebuild")]
    pub format: Option<Vec<Format>>,
    /// With --rebuild: the seed mode to rebuild with [default: image.json's,
    /// checked and shown].
    #[arg(long, value_name = "embed|volume|url=BASE", requires = "rebuild")]
    pub seed_layers: Option<SeedLayers>,
    /// Also check DIR/signatures/ (`imgbuild sign`) with this public key (PEM).
    #[arg(long, value_name = "PUB.pem")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old build: a node output directory (OUT/<node>) or an output tree (OUT).
    pub old: PathBuf,
    /// The new build, of the same kind as OLD.
    pub new: PathBuf,
    /// Print canonical JSON (docs/diff.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--mirror`: an http(s):// or file:// URL.
fn mirror(s: &str) -> Result<String, String> {
    if ["http://", "https://", "file://"]
        .iter()
        .any(|p| s.len() > p.len() && s.starts_with(p))
    {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is not an http://, https:// or file:// URL"))
    }
}

/// `--registry-mirror`: `REGISTRY=URL` with an http(s) URL.
fn registry_mirror(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((reg, url))
            if !reg.is_empty() && (url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Ok((reg.to_string(), url.to_string()))
        }
        _ => Err(format!(
            "`{s}` is not REGISTRY=URL with an http(s) URL (e.g. registry.k8s.io=http://127.0.0.1:5000)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("imgbuild").chain(args.iter().copied()))
    }

    #[test]
    fn typed_values_are_refused_before_anything_is_read() {
        for bad in [
            &["--mirror", "ftp://x", "plan", "--role", "a"][..],
            &[
                "--registry-mirror",
                "registry.k8s.io",
                "plan",
                "--role",
                "a",
            ],
            &["node", "--role", "a", "--seed-layers", "url=ftp://x"],
            &["node", "--role", "a", "--format", "layers,iso"],
            &["plan", "--role", "a", "--arch", "riscv64"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn typed_values_parse_into_their_types() {
        let cli = parse(&[
            "--registry-mirror",
            "registry.k8s.io=http://127.0.0.1:5000",
            "node",
            "--role",
            "worker",
            "--format",
            "oci,layers",
            "--seed-layers",
            "url=http://10.0.0.1/l",
            "--arch",
            "arm64",
        ])
        .unwrap();
        assert_eq!(
            cli.global.registry_mirrors,
            vec![("registry.k8s.io".into(), "http://127.0.0.1:5000".into())]
        );
        let Command::Node(n) = cli.command else {
            panic!("not node")
        };
        assert_eq!(n.build.format, vec![Format::Oci, Format::Layers]);
        assert_eq!(
            n.build.seed_layers,
            SeedLayers::Url("http://10.0.0.1/l".into())
        );
        assert!(!n.build.pxe_secrets);
        assert_eq!(n.arch, Some(Arch::Arm64));
    }
}

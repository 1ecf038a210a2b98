//! `cloud-init/`: a NoCloud seed. `user-data` (`#cloud-config`) writes and
//! runs a script that checks the OS has the plan's packages and units, finds
//! the seed volume (label `cidata`), checks every layer's sha256 against the
//! values written into the script, extracts the layers in order at `/`, adds
//! the node's `127.0.1.1` line to `/etc/hosts`, reloads systemd and starts
//! the role's services.
//! With `--seed-layers url=BASE` the shared layers are fetched from
//! `BASE/sha256/<digest>.tar.gz` (same checks) and the seed holds only the
//! node's own layers; with `--seed-layers volume` they are read from a
//! second volume (label `imglayers`, `layers.iso`: [`super::seedvol`]). With an `[os]` (the stock-image path, [`Stock`]) the
//! seed carries the node's pinned `.deb`s in `debs/`, and the script first
//! checks the running release, then every sha256, then installs the
//! packages not installed at their version with one `dpkg -i`, before any
//! layer is extracted or unit enabled. `meta-data` and `network-config` (v2, static; the NIC
//! matched by MAC and renamed when the node has one) carry the node's
//! identity; `seed.iso` holds them all.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use super::SeedLayers;
use super::iso::{self, IsoFile};
use super::stock::Stock;
use crate::layer::BuiltLayer;
use crate::manifest::Manifests;
use crate::pgzip::Compression;
use crate::plan::{LayerKind, Plan, Source, TargetKind};
use crate::quote;

/// The units the plan enables that the host OS must provide (haproxy,
/// keepalived): enablement links into `/usr/lib/systemd/system`.
fn os_units(plan: &Plan) -> Vec<&str> {
    let mut units: Vec<&str> = plan
        .entries()
        .filter_map(|e| match &e.source {
            Source::Symlink { target } => target.strip_prefix("/usr/lib/systemd/system/"),
            _ => None,
        })
        .collect();
    units.sort_unstable();
    units.dedup();
    units
}

/// The first-boot script: checks the OS before it changes anything, applies
/// the verified layers once per set of layer digests (and, on a stock
/// image, of the seed's `.deb`s, installed first), and starts (first time)
/// or restarts (the seed changed) the role's services.
fn script(plan: &Plan, layers: &[BuiltLayer], seed: &SeedLayers, stock: Option<&Stock>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh");
    let _ = writeln!(
        s,
        "# imgbuild: apply the layers of {} ({}), verified; run again, it applies\n\
         # only what changed and restarts the services, or does nothing.",
        plan.target, plan.arch
    );
    let _ = writeln!(s, "set -eu");
    let mut digests: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    digests.extend(
        stock
            .iter()
            .flat_map(|st| st.debs.iter().map(|d| d.sha256.as_str())),
    );
    let _ = writeln!(s, "want={}", quote::sh(&digests.join(" ")));
    let _ = writeln!(s, "applied=/var/lib/imgbuild/applied-layers");
    let _ = writeln!(
        s,
        "if [ -f \"$applied\" ] && [ \"$(cat \"$applied\")\" = \"$want\" ]; then\n  \
         echo \"imgbuild: the layers of {} are applied already\"\n  exit 0\nfi",
        plan.target
    );
    if let Some(st) = stock {
        release_check(&mut s, plan, st);
    }
    package_check(&mut s, plan, layers, seed, stock);
    os_check(&mut s, plan, stock);
    fetch_layers(&mut s, plan, layers, seed);
    if let Some(st) = stock {
        fetch_debs(&mut s, st);
        verify_seed(&mut s, plan, layers, st);
        install_debs(&mut s, plan, st);
    }
    apply_layers(&mut s, layers, stock.is_none());
    hosts_line(&mut s, plan);
    start_services(&mut s, plan);
    s
}

/// The Debian packages the script checks: the plan's, and curl when it
/// downloads layers.
fn packages<'a>(
    plan: &'a Plan,
    layers: &[BuiltLayer],
    seed: &SeedLayers,
    stock: Option<&Stock>,
) -> Vec<&'a str> {
    // what the seed installs is no longer the OS's to have
    let in_seed = |p: &&str| stock.is_some_and(|st| st.debs.iter().any(|d| d.package == *p));
    let mut packages: Vec<&str> = plan
        .os_packages
        .iter()
        .map(String::as_str)
        .filter(|p| !in_seed(p))
        .collect();
    if seed.base().is_some() && layers.iter().any(|l| seed.remote(l)) {
        packages.push("curl");
    }
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Fails on the console, before anything changes, when a package the roles
/// need, and the seed does not carry, is not installed (dpkg's status is
/// `<want> ok installed`; a held package is installed too). The names are
/// Debian package names, plain words to the shell.
fn package_check(
    s: &mut String,
    plan: &Plan,
    layers: &[BuiltLayer],
    seed: &SeedLayers,
    stock: Option<&Stock>,
) {
    let packages = packages(plan, layers, seed, stock);
    if packages.is_empty() {
        return;
    }
    let _ = writeln!(s, "missing=");
    let _ = writeln!(s, "for p in {}; do", packages.join(" "));
    let _ = writeln!(
        s,
        "  case \"$(dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null || true)\" in\n    \
         *' ok installed') ;;\n    *) missing=\"$missing $p\" ;;\n  esac"
    );
    let _ = writeln!(s, "done");
    fail_if_missing(
        s,
        &format!(
            "{}: the OS lacks the packages$missing, which its roles need; install them first (apt-get install$missing).",
            plan.target
        ),
    );
}

/// Prints `imgbuild: <what> Nothing was changed.` on stderr and the console
/// and exits 1 when `$missing` is not empty.
fn fail_if_missing(s: &mut String, what: &str) {
    let _ = writeln!(s, "if [ -n \"$missing\" ]; then");
    let _ = writeln!(s, "  msg=\"imgbuild: {what} Nothing was changed.\"");
    let _ = writeln!(s, "  echo \"$msg\" >&2");
    let _ = writeln!(s, "  echo \"$msg\" >/dev/console 2>/dev/null || true");
    let _ = writeln!(s, "  exit 1");
    let _ = writeln!(s, "fi");
}

/// Fails on the console, before anything changes, when a unit the OS must
/// provide (and no package of the seed ships) is not there: no unit is
/// ever enabled that does not exist.
fn os_check(s: &mut String, plan: &Plan, stock: Option<&Stock>) {
    let shipped = stock.map(Stock::units).unwrap_or_default();
    let units: Vec<&str> = os_units(plan)
        .into_iter()
        .filter(|u| !shipped.contains(u))
        .collect();
    if units.is_empty() {
        return;
    }
    let _ = writeln!(s, "missing=");
    let _ = writeln!(s, "for u in {}; do", units.join(" "));
    let _ = writeln!(
        s,
        "  [ -e \"/usr/lib/systemd/system/$u\" ] || [ -e \"/lib/systemd/system/$u\" ] || missing=\"$missing $u\""
    );
    let _ = writeln!(s, "done");
    fail_if_missing(
        s,
        &format!(
            "{}: the OS lacks the units$missing; install their packages first.",
            plan.target
        ),
    );
}

/// Prints `imgbuild: <what>` on stderr and the console (appended: what the
/// script printed there before stays when the console is a file) and exits
/// 1; `pad` is the indent of the lines.
fn fail(s: &mut String, pad: &str, what: &str) {
    let _ = writeln!(s, "{pad}msg=\"imgbuild: {what}\"");
    let _ = writeln!(s, "{pad}echo \"$msg\" >&2");
    let _ = writeln!(s, "{pad}echo \"$msg\" >>/dev/console 2>/dev/null || true");
    let _ = writeln!(s, "{pad}exit 1");
}

/// Fails on the console, before anything changes, unless the machine runs
/// the release the seed's packages are pinned for (`ID` and `VERSION_ID`
/// of its os-release, os-release(5)'s way: `/etc`, else `/usr/lib`) and
/// dpkg's architecture is the node's.
fn release_check(s: &mut String, plan: &Plan, st: &Stock) {
    let r = &st.release;
    let want = r.words();
    let _ = writeln!(
        s,
        "if [ -f /etc/os-release ]; then release=/etc/os-release; else release=/usr/lib/os-release; fi"
    );
    let _ = writeln!(
        s,
        "running=$(ID= VERSION_ID=; . \"$release\" >/dev/null 2>&1; printf '%s %s' \"$ID\" \"$VERSION_ID\") || running="
    );
    let _ = writeln!(s, "if [ \"$running\" != {} ]; then", quote::sh(&want));
    let what = format!(
        "{t}: this machine runs ${{running:-a release without ID}} (ID and VERSION_ID of $release), but the seed's packages are pinned for {want} (the base {base}); boot {t} from a {want} image. Nothing was changed.",
        t = plan.target,
        want = want.trim_end(),
        base = r.base,
    );
    fail(s, "  ", &what);
    let _ = writeln!(s, "fi");
    let _ = writeln!(s, "arch=$(dpkg --print-architecture 2>/dev/null || true)");
    let _ = writeln!(s, "if [ \"$arch\" != {} ]; then", plan.arch);
    let what = format!(
        "{}: this machine's dpkg architecture is ${{arch:-unknown}}, but the seed's packages are for {}. Nothing was changed.",
        plan.target, plan.arch
    );
    fail(s, "  ", &what);
    let _ = writeln!(s, "fi");
}

/// Copies the seed's `.deb`s into `$work/debs`.
fn fetch_debs(s: &mut String, st: &Stock) {
    let _ = writeln!(s, "mkdir -p \"$work/debs\"");
    for d in &st.debs {
        let f = d.file_name();
        let _ = writeln!(s, "cp \"$seed/debs/{f}\" \"$work/debs/{f}\"");
    }
}

/// Checks every layer and `.deb` against the sha256 written here, before
/// anything changes; names the files that differ on the console.
fn verify_seed(s: &mut String, plan: &Plan, layers: &[BuiltLayer], st: &Stock) {
    need_zstd(s, layers);
    let _ = writeln!(s, "cd \"$work\"");
    let _ = writeln!(s, "log=/run/imgbuild/sha256sum.log");
    let _ = writeln!(
        s,
        "if ! sha256sum -c --strict --quiet <<'SUMS' >\"$log\" 2>&1"
    );
    for l in layers {
        let _ = writeln!(s, "{}  {}", l.digest, l.tar_name());
    }
    for d in &st.debs {
        let _ = writeln!(s, "{}  debs/{}", d.sha256, d.file_name());
    }
    let _ = writeln!(s, "SUMS");
    let _ = writeln!(s, "then");
    let _ = writeln!(
        s,
        "  bad=$(sed -n 's/: FAILED.*$//p' \"$log\" | tr '\\n' ' ')"
    );
    let what = format!(
        "{}: the seed's files ${{bad:-(see $log)}}do not match the sha256 its script names: a damaged or tampered seed. Nothing was changed.",
        plan.target
    );
    fail(s, "  ", &what);
    let _ = writeln!(s, "fi");
    let _ = writeln!(s, "cd /");
}

/// Installs, with dpkg alone (no apt, no network), the seed's packages
/// not installed at their pinned version, in one call, before any layer
/// is applied or unit enabled; a `policy-rc.d` (unless the machine has
/// one) keeps the maintainer scripts from starting services with their
/// packaged configuration. A failure stops the script, the layers not
/// applied and nothing recorded, so the next boot tries again.
fn install_debs(s: &mut String, plan: &Plan, st: &Stock) {
    let _ = writeln!(s, "install=");
    let _ = writeln!(s, "want_deb() {{");
    let _ = writeln!(
        s,
        "  case \"$(dpkg-query -W -f='${{Version}} ${{Status}}' \"$1\" 2>/dev/null || true)\" in\n    \
         \"$2 \"*' ok installed') ;;\n    *) install=\"$install $work/debs/$3\" ;;\n  esac"
    );
    let _ = writeln!(s, "}}");
    for d in &st.debs {
        let _ = writeln!(
            s,
            "want_deb {} {} {}",
            quote::sh(&d.query()),
            quote::sh(&d.version),
            quote::sh(&d.file_name())
        );
    }
    let _ = writeln!(s, "if [ -n \"$install\" ]; then");
    let _ = writeln!(s, "  policy=/usr/sbin/policy-rc.d");
    let _ = writeln!(s, "  ours=");
    let _ = writeln!(s, "  if [ ! -e \"$policy\" ] && [ ! -L \"$policy\" ]; then");
    let _ = writeln!(
        s,
        "    printf '#!/bin/sh\\n# imgbuild: no service starts while the seed installs its packages\\nexit 101\\n' >\"$policy\""
    );
    let _ = writeln!(s, "    chmod 0755 \"$policy\"");
    let _ = writeln!(s, "    ours=1");
    let _ = writeln!(s, "  fi");
    let _ = writeln!(s, "  log=/run/imgbuild/dpkg.log");
    let _ = writeln!(s, "  rc=0");
    let _ = writeln!(
        s,
        "  DEBIAN_FRONTEND=noninteractive dpkg -i --force-confdef --force-confold $install </dev/null >\"$log\" 2>&1 || rc=$?"
    );
    let _ = writeln!(s, "  [ -z \"$ours\" ] || rm -f \"$policy\"");
    let _ = writeln!(s, "  if [ \"$rc\" != 0 ]; then");
    let _ = writeln!(s, "    tail -n 20 \"$log\" >&2");
    let _ = writeln!(
        s,
        "    tail -n 20 \"$log\" >>/dev/console 2>/dev/null || true"
    );
    let what = format!(
        "{}: dpkg -i failed (exit $rc) installing the seed's packages$(echo \"$install\" | sed 's|[^ ]*/||g'); its output is in $log. None of the layers was applied; the next boot tries again.",
        plan.target
    );
    fail(s, "    ", &what);
    let _ = writeln!(s, "  fi");
    let _ = writeln!(s, "fi");
}

/// Debian's `127.0.1.1 <hostname>` line, added to the base layer's shared
/// /etc/hosts once it is extracted: a node's own name (a generic image's:
/// the host name its provisioning set), replacing any such line.
fn hosts_line(s: &mut String, plan: &Plan) {
    let name = match plan.kind {
        TargetKind::Node => quote::sh(&plan.target),
        TargetKind::Role => "\"$(hostname 2>/dev/null || true)\"".to_string(),
    };
    let _ = writeln!(s, "host={name}");
    let _ = writeln!(s, "if [ -n \"$host\" ]; then");
    // rewritten in place (no rename): /etc/hosts may be a mount point
    let _ = writeln!(
        s,
        "  hosts=$(grep -v '^127\\.0\\.1\\.1[[:space:]]' /etc/hosts || true)"
    );
    let _ = writeln!(
        s,
        "  printf '%s\\n127.0.1.1\\t%s\\n' \"$hosts\" \"$host\" >/etc/hosts"
    );
    let _ = writeln!(s, "fi");
}

/// Copies (from the seed, or in volume mode the shared ones from the
/// layers volume) or downloads (url mode) every layer into `$work`.
fn fetch_layers(s: &mut String, plan: &Plan, layers: &[BuiltLayer], seed: &SeedLayers) {
    let _ = writeln!(s, "seed=/run/imgbuild/seed");
    let _ = writeln!(s, "work=/run/imgbuild/layers");
    let _ = writeln!(s, "rm -rf \"$work\"");
    let _ = writeln!(s, "mkdir -p \"$seed\" \"$work\"");
    let _ = writeln!(s, "if ! mountpoint -q \"$seed\"; then");
    let _ = writeln!(s, "  dev=$(blkid -L cidata || blkid -L CIDATA)");
    let _ = writeln!(s, "  mount -o ro \"$dev\" \"$seed\"");
    let _ = writeln!(s, "fi");
    let on_volume: Vec<String> = layers
        .iter()
        .filter(|l| matches!(seed, SeedLayers::Volume) && seed.remote(l))
        .map(BuiltLayer::tar_name)
        .collect();
    if !on_volume.is_empty() {
        mount_volume(s, plan, &on_volume);
    }
    for l in layers {
        let file = l.tar_name();
        match (seed, seed.remote(l)) {
            (SeedLayers::Url(base), true) => {
                let url = format!("{base}/sha256/{}.tar.{}", l.digest, l.compression.ext());
                let _ = writeln!(
                    s,
                    "curl -fsSL --retry 5 -o \"$work/{file}\" {}",
                    quote::sh(&url)
                );
            }
            (_, true) => {
                let _ = writeln!(s, "cp \"$shared/layers/{file}\" \"$work/{file}\"");
            }
            (_, false) => {
                let _ = writeln!(s, "cp \"$seed/layers/{file}\" \"$work/{file}\"");
            }
        }
    }
}

/// Mounts the layers volume (volume mode: label [`LAYERS_LABEL`], the
/// node's `cloud-init/layers.iso`) read-only at `$shared`; fails on the
/// console, before anything changes, when no such volume is attached or
/// the one attached lacks a layer of `files` (another build's).
fn mount_volume(s: &mut String, plan: &Plan, files: &[String]) {
    let _ = writeln!(s, "shared=/run/imgbuild/shared");
    let _ = writeln!(s, "mkdir -p \"$shared\"");
    let _ = writeln!(s, "if ! mountpoint -q \"$shared\"; then");
    let _ = writeln!(s, "  dev=$(blkid -L {LAYERS_LABEL} || true)");
    let _ = writeln!(s, "  if [ -z \"$dev\" ]; then");
    let what = format!(
        "{}: no volume labelled {LAYERS_LABEL} is attached; attach the node's cloud-init/layers.iso beside its seed.iso (built with --seed-layers volume). Nothing was changed.",
        plan.target
    );
    fail(s, "    ", &what);
    let _ = writeln!(s, "  fi");
    let _ = writeln!(s, "  mount -o ro \"$dev\" \"$shared\"");
    let _ = writeln!(s, "fi");
    // the names are the layers' own: NN-<name>.tar.*, plain words
    let _ = writeln!(s, "missing=");
    let _ = writeln!(s, "for f in {}; do", files.join(" "));
    let _ = writeln!(
        s,
        "  [ -f \"$shared/layers/$f\" ] || missing=\"$missing $f\""
    );
    let _ = writeln!(s, "done");
    fail_if_missing(
        s,
        &format!(
            "{}: the volume labelled {LAYERS_LABEL} lacks the layers$missing; attach this node's own cloud-init/layers.iso, of the build of its seed.iso.",
            plan.target
        ),
    );
}

/// Verifies every layer (unless `verify_seed` did), then extracts them in
/// order at `/`; leaves the work directory before removing it.
fn apply_layers(s: &mut String, layers: &[BuiltLayer], verify: bool) {
    let _ = writeln!(s, "cd \"$work\"");
    if verify {
        let _ = writeln!(s, "sha256sum -c --strict <<'SUMS'");
        for l in layers {
            let _ = writeln!(s, "{}  {}", l.digest, l.tar_name());
        }
        let _ = writeln!(s, "SUMS");
        // (the stock path checked for zstd before it installed anything)
        need_zstd(s, layers);
    }
    for l in layers {
        let z = match l.compression {
            Compression::Gzip => "z",
            Compression::Zstd => "",
        };
        let zstd = if z.is_empty() { "--zstd " } else { "" };
        let _ = writeln!(
            s,
            "tar {zstd}-x{z}pf {} -C / --numeric-owner --no-overwrite-dir",
            l.tar_name()
        );
    }
    let _ = writeln!(s, "cd /");
    let _ = writeln!(s, "rm -rf \"$work\"");
}

/// Kernel settings, then the services: started the first time, restarted
/// when the layers changed (a rebuilt seed), so new configs take effect.
fn start_services(s: &mut String, plan: &Plan) {
    // modules first: br_netfilter's sysctls exist only once it is loaded
    let _ = writeln!(s, "systemctl restart systemd-modules-load.service || true");
    let _ = writeln!(s, "sysctl --system >/dev/null || true");
    let _ = writeln!(s, "systemctl daemon-reload");
    if !plan.services.is_empty() {
        let units = plan.services.join(" ");
        let _ = writeln!(s, "systemctl enable {units}");
        let _ = writeln!(s, "if [ -f \"$applied\" ]; then");
        let _ = writeln!(s, "  systemctl restart --no-block {units}");
        let _ = writeln!(s, "else");
        let _ = writeln!(s, "  systemctl start --no-block {units}");
        let _ = writeln!(s, "fi");
    }
    let _ = writeln!(s, "mkdir -p /var/lib/imgbuild");
    let _ = writeln!(s, "printf '%s\\n' \"$want\" >\"$applied.new\"");
    let _ = writeln!(s, "mv \"$applied.new\" \"$applied\"");
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

pub fn user_data(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    digest: &str,
    seed: &SeedLayers,
    stock: Option<&Stock>,
) -> String {
    let mut s = String::from("#cloud-config\n");
    let _ = writeln!(
        s,
        "# imgbuild: {} {} of cluster {}, image sha256:{digest}",
        match plan.kind {
            TargetKind::Node => "node",
            TargetKind::Role => "generic image of role",
        },
        plan.target,
        m.cluster.name
    );
    if plan.kind == TargetKind::Node {
        let _ = writeln!(s, "hostname: {}", plan.target);
        let _ = writeln!(s, "preserve_hostname: false");
    }
    let _ = writeln!(s, "write_files:");
    let _ = writeln!(s, "  - path: /usr/local/lib/imgbuild/apply-layers");
    let _ = writeln!(s, "    owner: root:root");
    let _ = writeln!(s, "    permissions: '0700'");
    let _ = writeln!(s, "    content: |");
    s.push_str(&indent(&script(plan, layers, seed, stock), "      "));
    let _ = writeln!(s, "runcmd:");
    let _ = writeln!(s, "  - [/usr/local/lib/imgbuild/apply-layers]");
    s
}

pub fn meta_data(plan: &Plan, digest: &str) -> String {
    let mut s = format!("instance-id: {}-{}\n", plan.target, &digest[..16]);
    if plan.kind == TargetKind::Node {
        s.push_str(&format!("local-hostname: {}\n", plan.target));
    }
    s
}

pub fn network_config(m: &Manifests, plan: &Plan) -> Option<String> {
    let node = m
        .node(&plan.target)
        .filter(|_| plan.kind == TargetKind::Node)?;
    let hn = &m.cluster.host_network;
    let mut s = String::from("version: 2\nethernets:\n");
    // quoted: a name such as `1` or `on` would be a number or a boolean key
    let iface = serde_json::to_string(&hn.interface).unwrap_or_default();
    let _ = writeln!(s, "  {iface}:");
    if let Some(mac) = &node.mac {
        // quoted: YAML 1.1 (cloud-init's PyYAML) reads 52:54:00:12:34:56
        // unquoted as a base-60 number
        let _ = writeln!(s, "    match:\n      macaddress: \"{mac}\"");
        let _ = writeln!(s, "    set-name: {iface}");
    }
    let _ = writeln!(s, "    dhcp4: false");
    let _ = writeln!(s, "    addresses: [{}/{}]", node.ip, hn.prefix_length);
    if let Some(gw) = hn.gateway {
        let _ = writeln!(s, "    routes:\n      - to: default\n        via: {gw}");
    }
    if !hn.nameservers.is_empty() {
        let ns: Vec<String> = hn.nameservers.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(s, "    nameservers:\n      addresses: [{}]", ns.join(", "));
    }
    Some(s)
}

/// Writes the seed's own files below `out/cloud-init/`; returns every file
/// `seed.iso` holds (those, the layers that travel in the seed and, for a
/// stock image, the `.deb`s in `debs/`).
pub fn files(
    m: &Manifests,
    plan: &Plan,
    layers: &[BuiltLayer],
    digest: &str,
    seed: &SeedLayers,
    stock: Option<&Stock>,
    out: &Path,
) -> io::Result<Vec<IsoFile>> {
    let dir = out.join("cloud-init");
    fs::create_dir_all(&dir)?;
    let layers = applied(layers);
    let layers = layers.as_slice();
    let mut files = vec![
        IsoFile::bytes(
            "user-data",
            user_data(m, plan, layers, digest, seed, stock).into_bytes(),
        ),
        IsoFile::bytes("meta-data", meta_data(plan, digest).into_bytes()),
    ];
    if let Some(nc) = network_config(m, plan) {
        files.push(IsoFile::bytes("network-config", nc.into_bytes()));
    }
    for f in &files {
        if let iso::Data::Bytes(b) = &f.data {
            fs::write(dir.join(&f.name), b)?;
        }
    }
    for l in layers {
        if !seed.remote(l) {
            files.push(IsoFile::path(
                &format!("layers/{}", l.tar_name()),
                &out.join("layers").join(l.tar_name()),
            ));
        }
    }
    for d in stock.iter().flat_map(|st| &st.debs) {
        files.push(IsoFile::path(&format!("debs/{}", d.file_name()), &d.file));
    }
    Ok(files)
}

/// The layers a seed's script applies: a seed is for a machine that runs
/// its OS already, so the pinned base OS and its packages (the image's) are
/// never extracted over a running host.
fn applied(layers: &[BuiltLayer]) -> Vec<BuiltLayer> {
    layers
        .iter()
        .filter(|l| !matches!(l.kind, LayerKind::Os | LayerKind::OsPackages))
        .cloned()
        .collect()
}

/// What the layers volume of a node's seed holds (volume mode): the shared
/// layers its script applies; none in the other modes.
pub fn volume_layers(layers: &[BuiltLayer], seed: &SeedLayers) -> Vec<BuiltLayer> {
    if !matches!(seed, SeedLayers::Volume) {
        return Vec::new();
    }
    applied(layers)
        .into_iter()
        .filter(|l| seed.remote(l))
        .collect()
}

/// The label of the layers volume (`--seed-layers volume`).
pub const LAYERS_LABEL: &str = "imglayers";

/// The layers volume's own name in a node's directory.
pub const LAYERS_ISO: &str = "cloud-init/layers.iso";

/// Writes `out/cloud-init/seed.iso` (label `cidata`) holding `files`;
/// returns its sha256.
pub fn seed_iso(out: &Path, files: &[IsoFile], mtime: u64) -> io::Result<String> {
    iso::write(
        &out.join("cloud-init").join("seed.iso"),
        "cidata",
        files,
        mtime,
    )
}

/// With zstd layers (`--compression zstd`): stops, before anything is
/// extracted, on a machine without zstd (GNU tar runs it for `--zstd`).
fn need_zstd(s: &mut String, layers: &[BuiltLayer]) {
    if layers.iter().all(|l| l.compression == Compression::Gzip) {
        return;
    }
    let _ = writeln!(
        s,
        "command -v zstd >/dev/null || {{ echo \"imgbuild: this seed's layers are zstd (built with --compression zstd) and this machine has no zstd: install it, or build with --compression gzip\" >&2; exit 1; }}"
    );
}

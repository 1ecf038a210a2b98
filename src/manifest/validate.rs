//! Parse, then validate: reads the raw files and turns them into the typed
//! model, collecting every problem with its location before giving up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_saphyr::Spanned;

use super::derive::{self, CONTROL_PLANE, ETCD, LB, nth_address};
use super::diag::{Diagnostic, Diagnostics, Loc};
use super::raw::{RawCluster, RawNode, RawPins, RawRole};
use super::{
    Api, Arch, ArtifactPin, BASE_ROLE, Checksum, Cluster, HostNetwork, ImagePin, Install,
    KeyAlgorithm, KubeVersion, MIN_KUBERNETES_MINOR, ManifestError, Manifests, Network, Node, Pins,
    PkiSettings, ProxyMode, Role, RoleArtifact, secrets,
};

/// Where a YAML value stands; a defaulted value (not in the file) reports 1:1.
fn at<T>(file: &Path, s: &Spanned<T>) -> Loc {
    let l = s.referenced;
    if l.line() == 0 {
        Loc::new(file, 1, 1)
    } else {
        Loc::yaml(file, l)
    }
}

fn at_toml<T>(file: &Path, text: &str, s: &toml::Spanned<T>) -> Loc {
    Loc::offset(file, text, s.span().start)
}

/// RFC 1123 label, as Kubernetes requires for node names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load(dir: &Path, layers_dir: &Path) -> Result<(Manifests, Diagnostics), ManifestError> {
    let mut d = Diagnostics::default();

    let cluster_path = dir.join("cluster.yaml");
    let cluster_text = read(&cluster_path)?;
    let raw_cluster = match serde_saphyr::from_str::<RawCluster>(&cluster_text) {
        Ok(c) => Some(c),
        Err(e) => {
            d.push(Diagnostic::from_yaml(&cluster_path, e));
            None
        }
    };

    let pins_path = dir.join("pins.toml");
    let pins_text = read(&pins_path)?;
    let pins = match toml::from_str::<RawPins>(&pins_text) {
        Ok(raw) => Some(validate_pins(&pins_path, &pins_text, raw, &mut d)),
        Err(e) => {
            d.push(Diagnostic::from_toml(&pins_path, &pins_text, e));
            None
        }
    };

    let roles_dir = dir.join("roles");
    let mut role_files = Vec::new();
    let entries = std::fs::read_dir(&roles_dir).map_err(|source| ManifestError::Read {
        path: roles_dir.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ManifestError::Read {
            path: roles_dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            role_files.push(path);
        }
    }
    role_files.sort();
    let mut raw_roles = BTreeMap::new();
    let mut unparsed_roles = BTreeSet::new();
    for path in role_files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_dns_label(&name) {
            d.error(
                Loc::new(&path, 1, 1),
                format!("role file name `{name}` is not a DNS-1123 label (lowercase letters, digits and '-')"),
            );
        }
        let text = read(&path)?;
        match serde_saphyr::from_str::<RawRole>(&text) {
            Ok(r) => {
                raw_roles.insert(name, (path, r));
            }
            Err(e) => {
                d.push(Diagnostic::from_yaml(&path, e));
                unparsed_roles.insert(name);
            }
        }
    }

    let roles: BTreeMap<String, Role> = raw_roles
        .into_iter()
        .map(|(name, (path, raw))| {
            let role = validate_role(&name, &path, raw, pins.as_ref(), layers_dir, &mut d);
            (name, (path, role))
        })
        .map(|(name, (_, role))| (name, role))
        .collect();

    let cluster = raw_cluster.and_then(|raw| {
        validate_cluster(
            &cluster_path,
            raw,
            &roles,
            &unparsed_roles,
            pins.as_ref(),
            &mut d,
        )
    });

    d.sort();
    match (cluster, pins) {
        (Some(cluster), Some(pins)) if !d.has_errors() => {
            let mut roles = roles;
            roles
                .entry(BASE_ROLE.to_string())
                .or_insert_with(|| empty_role(BASE_ROLE));
            let derived = derive::derive(&cluster);
            let m = Manifests {
                dir: dir.to_path_buf(),
                layers_dir: layers_dir.to_path_buf(),
                cluster,
                roles,
                pins,
                derived,
            };
            Ok((m, d))
        }
        _ => Err(ManifestError::Invalid(d)),
    }
}

fn empty_role(name: &str) -> Role {
    Role {
        name: name.to_string(),
        description: String::new(),
        artifacts: Vec::new(),
        images: Vec::new(),
        role_layers: Vec::new(),
        node_layers: Vec::new(),
        services: Vec::new(),
        secrets: Vec::new(),
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_pins(file: &Path, text: &str, raw: RawPins, d: &mut Diagnostics) -> Pins {
    let mut pins = Pins::default();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for a in raw.artifact {
        let loc = at_toml(file, text, &a.name);
        let name = a.name.get_ref().clone();
        let mut ok = true;
        if name.is_empty() {
            d.error(loc.clone(), "artifact pin has an empty name");
            ok = false;
        }
        let arch_text = a.arch.get_ref();
        let arch = Arch::parse(arch_text);
        if arch.is_none() {
            d.error(
                at_toml(file, text, &a.arch),
                format!("pin `{name}`: unknown arch `{arch_text}` (expected amd64 or arm64)"),
            );
            ok = false;
        }
        let url = a.url.get_ref();
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file://"))
        {
            d.error(
                at_toml(file, text, &a.url),
                format!("pin `{name}`: url `{url}` must start with https://, http:// or file://"),
            );
            ok = false;
        }
        if a.source.get_ref().trim().is_empty() {
            d.error(
                at_toml(file, text, &a.source),
                format!("pin `{name}`: `source` is empty; say where the checksum was read"),
            );
        }
        let checksum = match (&a.sha256, &a.sha512) {
            (Some(h), None) if is_lower_hex(h.get_ref(), 64) => {
                Some(Checksum::Sha256(h.get_ref().clone()))
            }
            (None, Some(h)) if is_lower_hex(h.get_ref(), 128) => {
                Some(Checksum::Sha512(h.get_ref().clone()))
            }
            (Some(h), None) => {
                d.error(
                    at_toml(file, text, h),
                    format!(
                        "pin `{name}` {}: sha256 must be 64 lowercase hex digits, found {} characters `{}`",
                        a.version.get_ref(),
                        h.get_ref().len(),
                        h.get_ref()
                    ),
                );
                None
            }
            (None, Some(h)) => {
                d.error(
                    at_toml(file, text, h),
                    format!(
                        "pin `{name}` {}: sha512 must be 128 lowercase hex digits, found {} characters `{}`",
                        a.version.get_ref(),
                        h.get_ref().len(),
                        h.get_ref()
                    ),
                );
                None
            }
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
                    at_toml(file, text, h),
                    format!("pin `{name}` has both sha256 and sha512: keep one"),
                );
                None
            }
        };
        if let Some(arch) = arch {
            let key = (name.clone(), arch.to_string());
            if let Some(first) = seen.get(&key) {
                d.error(
                    loc.clone(),
                    format!("pin `{name}` for {arch} is defined twice (first at line {first})"),
                );
                ok = false;
            } else {
                seen.insert(key, loc.line);
            }
        }
        if let (true, Some(arch), Some(checksum)) = (ok, arch, checksum) {
            pins.artifacts.push(ArtifactPin {
                name,
                version: a.version.into_inner(),
                arch,
                url: a.url.into_inner(),
                checksum,
                source: a.source.into_inner(),
                note: a.note,
            });
        }
    }
    let mut seen_images: HashMap<String, u64> = HashMap::new();
    for i in raw.image {
        let loc = at_toml(file, text, &i.name);
        let name = i.name.get_ref().clone();
        let mut ok = true;
        let digest = i.digest.get_ref();
        if !digest
            .strip_prefix("sha256:")
            .is_some_and(|h| is_lower_hex(h, 64))
        {
            d.error(
                at_toml(file, text, &i.digest),
                format!("image pin `{name}`: digest `{digest}` must be `sha256:` and 64 lowercase hex digits"),
            );
            ok = false;
        }
        let image = i.image.get_ref();
        let last = image.rsplit('/').next().unwrap_or_default();
        if !image.contains('/') || !last.contains(':') || image.contains('@') {
            d.error(
                at_toml(file, text, &i.image),
                format!("image pin `{name}`: `{image}` must be `registry/repository:tag` (the digest goes in `digest`)"),
            );
            ok = false;
        }
        let mut arches = Vec::new();
        for a in i.arch.get_ref() {
            match Arch::parse(a) {
                Some(arch) => arches.push(arch),
                None => {
                    d.error(
                        at_toml(file, text, &i.arch),
                        format!("image pin `{name}`: unknown arch `{a}` (expected amd64 or arm64)"),
                    );
                    ok = false;
                }
            }
        }
        if i.source.get_ref().trim().is_empty() {
            d.error(
                at_toml(file, text, &i.source),
                format!("image pin `{name}`: `source` is empty; say where the digest was read"),
            );
        }
        if let Some(first) = seen_images.get(&name) {
            d.error(
                loc.clone(),
                format!("image pin `{name}` is defined twice (first at line {first})"),
            );
            ok = false;
        } else {
            seen_images.insert(name.clone(), loc.line);
        }
        if ok {
            pins.images.push(ImagePin {
                name,
                version: i.version.into_inner(),
                image: i.image.into_inner(),
                digest: i.digest.into_inner(),
                arches,
                source: i.source.into_inner(),
                note: i.note,
            });
        }
    }
    pins
}

/// `0755` or `755` -> 0o755.
fn parse_mode(s: &str) -> Option<u32> {
    if !(3..=4).contains(&s.len()) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// `uid:gid`, both numeric.
fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// An absolute, normalised path: no `.`/`..`/empty components, no trailing `/`.
pub fn is_clean_absolute(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_clean_relative(p: &str) -> bool {
    let p = p.strip_prefix("./").unwrap_or(p);
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn validate_role(
    name: &str,
    file: &Path,
    raw: RawRole,
    pins: Option<&Pins>,
    layers_dir: &Path,
    d: &mut Diagnostics,
) -> Role {
    let mut role = empty_role(name);
    role.description = raw.description;
    for art in raw.artifacts {
        let pin_name = art.pin.value.clone();
        let matching: Vec<&ArtifactPin> = pins
            .map(|p| p.artifacts.iter().filter(|a| a.name == pin_name).collect())
            .unwrap_or_default();
        if pins.is_some() && matching.is_empty() {
            d.error(
                at(file, &art.pin),
                format!("role `{name}` needs artifact `{pin_name}`, but pins.toml has no pin with that name"),
            );
        }
        let archive = matching.first().map(|p| p.is_archive());
        let mut install = Vec::new();
        for i in art.install {
            let to = i.to.value.clone();
            if !is_clean_absolute(&to) {
                d.error(
                    at(file, &i.to),
                    format!(
                        "`to: {to}` must be an absolute path without `.`, `..` or a trailing `/`"
                    ),
                );
            }
            if let Some(from) = &i.from {
                let probe = from.value.replace("{version}", "v").replace("{arch}", "a");
                if probe.contains(['{', '}']) {
                    d.error(
                        at(file, from),
                        format!(
                            "`from: {}`: only {{version}} and {{arch}} may be substituted",
                            from.value
                        ),
                    );
                } else if !is_clean_relative(&from.value) {
                    d.error(
                        at(file, from),
                        format!(
                            "`from: {}` must be a relative archive member path without `..`",
                            from.value
                        ),
                    );
                }
                if archive == Some(false) {
                    d.error(
                        at(file, from),
                        format!(
                            "artifact `{pin_name}` is a single file, not an archive: drop `from`"
                        ),
                    );
                }
            } else if archive == Some(true) {
                d.error(
                    at(file, &i.to),
                    format!("artifact `{pin_name}` is an archive: say which member goes to {to} with `from`"),
                );
            }
            let mode = parse_mode(&i.mode.value);
            if mode.is_none() {
                d.error(
                    at(file, &i.mode),
                    format!(
                        "mode `{}` is not an octal file mode such as \"0755\"",
                        i.mode.value
                    ),
                );
            }
            let owner = parse_owner(&i.owner.value);
            if owner.is_none() {
                d.error(
                    at(file, &i.owner),
                    format!(
                        "owner `{}` must be numeric `uid:gid`, such as \"0:0\"",
                        i.owner.value
                    ),
                );
            }
            let (uid, gid) = owner.unwrap_or((0, 0));
            install.push(Install {
                from: i.from.map(|f| f.value),
                to,
                mode: mode.unwrap_or(0o755),
                uid,
                gid,
            });
        }
        role.artifacts.push(RoleArtifact {
            pin: pin_name,
            install,
        });
    }
    for image in raw.images {
        if let Some(p) = pins
            && p.image(&image.value).is_none()
        {
            d.error(
                at(file, &image),
                format!(
                    "role `{name}` needs image `{}`, but pins.toml has no [[image]] with that name",
                    image.value
                ),
            );
        }
        role.images.push(image.value);
    }
    for (dirs, out) in [
        (raw.layers.role, &mut role.role_layers),
        (raw.layers.node, &mut role.node_layers),
    ] {
        for dir in dirs {
            if !is_dns_label(&dir.value) {
                d.error(
                    at(file, &dir),
                    format!(
                        "layer directory `{}` must be a plain name under layers/",
                        dir.value
                    ),
                );
            } else if !layers_dir.join(&dir.value).is_dir() {
                d.error(
                    at(file, &dir),
                    format!(
                        "layer directory `{}` does not exist under {}",
                        dir.value,
                        layers_dir.display()
                    ),
                );
            }
            out.push(dir.value);
        }
    }
    for svc in raw.services {
        let ok = [".service", ".timer", ".socket", ".path", ".target"]
            .iter()
            .any(|s| svc.value.ends_with(s));
        if !ok {
            d.error(
                at(file, &svc),
                format!(
                    "service `{}` must be a systemd unit name such as `etcd.service`",
                    svc.value
                ),
            );
        }
        role.services.push(svc.value);
    }
    for secret in raw.secrets {
        match secrets::lookup(&secret.value) {
            Some(spec) => role.secrets.push(spec),
            None => d.error(
                at(file, &secret),
                format!(
                    "unknown secret `{}`; imgbuild generates: {}",
                    secret.value,
                    secrets::CATALOG
                        .iter()
                        .map(|s| s.id)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    role
}

fn parse_ipv4(
    file: &Path,
    s: &Spanned<String>,
    what: &str,
    d: &mut Diagnostics,
) -> Option<Ipv4Addr> {
    match s.value.parse::<Ipv4Addr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            d.error(
                at(file, s),
                format!("{what} `{}` is not an IPv4 address", s.value),
            );
            None
        }
    }
}

fn parse_cidr(
    file: &Path,
    s: &Spanned<String>,
    what: &str,
    d: &mut Diagnostics,
) -> Option<Ipv4Net> {
    match s.value.parse::<Ipv4Net>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            d.error(
                at(file, s),
                format!(
                    "{what} `{}` has host bits set; did you mean {}?",
                    s.value,
                    net.trunc()
                ),
            );
            None
        }
        Err(_) => {
            d.error(
                at(file, s),
                format!(
                    "{what} `{}` is not an IPv4 CIDR such as 10.96.0.0/12",
                    s.value
                ),
            );
            None
        }
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn valid_taint(t: &str) -> bool {
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return false;
    };
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    !key.is_empty() && TAINT_EFFECTS.contains(&effect)
}

fn validate_cluster(
    file: &Path,
    raw: RawCluster,
    roles: &BTreeMap<String, Role>,
    unparsed_roles: &BTreeSet<String>,
    pins: Option<&Pins>,
    d: &mut Diagnostics,
) -> Option<Cluster> {
    let errors_before = d.errors().count();
    if !is_dns_label(&raw.name.value) {
        d.error(
            at(file, &raw.name),
            format!("cluster name `{}` is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)", raw.name.value),
        );
    }
    let version = KubeVersion::parse(&raw.kubernetes_version.value);
    match version {
        None => d.error(
            at(file, &raw.kubernetes_version),
            format!("kubernetes_version `{}` is not a release such as v1.35.4", raw.kubernetes_version.value),
        ),
        Some(v) if v.major != 1 || v.minor < MIN_KUBERNETES_MINOR => d.error(
            at(file, &raw.kubernetes_version),
            format!("Kubernetes {v} is older than v1.{MIN_KUBERNETES_MINOR}, the oldest version imgbuild renders configuration for"),
        ),
        Some(_) => {}
    }

    // API endpoint
    let vip = parse_ipv4(file, &raw.api.vip, "api.vip", d);
    if !is_dns_subdomain(&raw.api.dns_name.value) || !raw.api.dns_name.value.contains('.') {
        d.error(
            at(file, &raw.api.dns_name),
            format!(
                "api.dns_name `{}` is not a DNS name such as kubeapi.example.com",
                raw.api.dns_name.value
            ),
        );
    }
    for port in [&raw.api.lb_port, &raw.api.apiserver_port] {
        if port.value == 0 {
            d.error(at(file, port), "port 0 is not a usable port");
        }
    }
    if raw.api.vrrp_router_id.value == 0 {
        d.error(
            at(file, &raw.api.vrrp_router_id),
            "vrrp_router_id must be 1 to 255",
        );
    }

    // Network
    let n = &raw.network;
    let service = parse_cidr(file, &n.service_cidr, "service_cidr", d);
    let pod = parse_cidr(file, &n.pod_cidr, "pod_cidr", d);
    if let (Some(s), Some(p)) = (service, pod)
        && overlaps(s, p)
    {
        d.error(
            at(file, &n.service_cidr),
            format!(
                "service_cidr {s} overlaps pod_cidr {p}: Service and Pod addresses must not collide"
            ),
        );
    }
    if let Some(p) = pod
        && (n.node_cidr_mask.value <= p.prefix_len() || n.node_cidr_mask.value > 30)
    {
        d.error(
            at(file, &n.node_cidr_mask),
            format!(
                "node_cidr_mask /{} must be longer than pod_cidr's /{} and at most /30",
                n.node_cidr_mask.value,
                p.prefix_len()
            ),
        );
    }
    if !is_dns_subdomain(&n.cluster_domain.value) {
        d.error(
            at(file, &n.cluster_domain),
            format!(
                "cluster_domain `{}` is not a DNS name",
                n.cluster_domain.value
            ),
        );
    }
    let cluster_dns = match (&n.cluster_dns, service) {
        (Some(s), Some(svc)) => parse_ipv4(file, s, "cluster_dns", d).and_then(|ip| {
            if !svc.contains(&ip) {
                d.error(
                    at(file, s),
                    format!("cluster_dns {ip} is outside service_cidr {svc}: CoreDNS's Service IP must come from it"),
                );
                None
            } else if Some(ip) == nth_address(svc, 1) {
                d.error(
                    at(file, s),
                    format!("cluster_dns {ip} is the first service IP, which belongs to the `kubernetes` Service"),
                );
                None
            } else {
                Some(ip)
            }
        }),
        (None, Some(svc)) => {
            let ip = nth_address(svc, 10);
            if ip.is_none() {
                d.error(
                    at(file, &n.service_cidr),
                    format!("service_cidr {svc} is too small to hold the default cluster_dns (its 10th address)"),
                );
            }
            ip
        }
        (_, None) => None,
    };
    let proxy_mode = match n.kube_proxy_mode.value.as_str() {
        "ipvs" => Some(ProxyMode::Ipvs),
        "iptables" => Some(ProxyMode::Iptables),
        "nftables" => Some(ProxyMode::Nftables),
        other => {
            d.error(
                at(file, &n.kube_proxy_mode),
                format!("kube_proxy_mode `{other}` is not one of ipvs, iptables, nftables"),
            );
            None
        }
    };

    // PKI
    let key_algorithm = match raw.pki.key_algorithm.value.as_str() {
        "ecdsa-p256" => Some(KeyAlgorithm::EcdsaP256),
        "rsa-2048" => Some(KeyAlgorithm::Rsa2048),
        "rsa-4096" => Some(KeyAlgorithm::Rsa4096),
        other => {
            d.error(
                at(file, &raw.pki.key_algorithm),
                format!("key_algorithm `{other}` is not one of ecdsa-p256, rsa-2048, rsa-4096"),
            );
            None
        }
    };
    for days in [&raw.pki.ca_validity_days, &raw.pki.leaf_validity_days] {
        if days.value == 0 {
            d.error(
                at(file, days),
                "a validity of 0 days would issue certificates that are already expired",
            );
        }
    }
    if raw.pki.leaf_validity_days.value > raw.pki.ca_validity_days.value {
        d.error(
            at(file, &raw.pki.leaf_validity_days),
            format!(
                "leaf_validity_days {} outlasts ca_validity_days {}: a leaf cannot outlive its CA",
                raw.pki.leaf_validity_days.value, raw.pki.ca_validity_days.value
            ),
        );
    }

    // Host network
    let hn = &raw.host_network;
    if !(1..=32).contains(&hn.prefix_length.value) {
        d.error(
            at(file, &hn.prefix_length),
            "host_network.prefix_length must be 1 to 32",
        );
    }
    let gateway = hn
        .gateway
        .as_ref()
        .map(|g| parse_ipv4(file, g, "host_network.gateway", d));
    let nameservers: Vec<Option<Ipv4Addr>> = hn
        .nameservers
        .iter()
        .map(|n| parse_ipv4(file, n, "host_network nameserver", d))
        .collect();

    // Nodes
    let mut nodes = Vec::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, (String, u64)> = HashMap::new();
    for rn in &raw.nodes.value {
        if let Some(node) = validate_node(file, rn, roles, unparsed_roles, d) {
            let name_loc = at(file, &rn.name);
            if let Some(line) = names.get(&node.name) {
                d.error(
                    name_loc.clone(),
                    format!(
                        "duplicate node name `{}` (first defined at line {line})",
                        node.name
                    ),
                );
            } else {
                names.insert(node.name.clone(), name_loc.line);
            }
            let ip_loc = at(file, &rn.ip);
            if let Some((other, line)) = ips.get(&node.ip) {
                d.error(
                    ip_loc.clone(),
                    format!(
                        "node `{}` has IP {}, already used by `{other}` at line {line}",
                        node.name, node.ip
                    ),
                );
            } else {
                ips.insert(node.ip, (node.name.clone(), ip_loc.line));
            }
            if let Some(s) = service
                && s.contains(&node.ip)
            {
                d.error(
                    ip_loc.clone(),
                    format!(
                        "node `{}` IP {} lies inside service_cidr {s}",
                        node.name, node.ip
                    ),
                );
            }
            if let Some(p) = pod
                && p.contains(&node.ip)
            {
                d.error(
                    ip_loc.clone(),
                    format!(
                        "node `{}` IP {} lies inside pod_cidr {p}",
                        node.name, node.ip
                    ),
                );
            }
            if Some(node.ip) == vip {
                d.error(
                    at(file, &raw.api.vip),
                    format!("api.vip {} is node `{}`'s own IP: the VIP must be a free address that keepalived moves", node.ip, node.name),
                );
            }
            if node.has_role(LB)
                && node.has_role(CONTROL_PLANE)
                && raw.api.lb_port.value == raw.api.apiserver_port.value
            {
                d.error(
                    at(file, &raw.api.lb_port),
                    format!(
                        "api.lb_port {} equals apiserver_port on node `{}`, which runs both haproxy and kube-apiserver: they cannot bind the same port",
                        raw.api.lb_port.value, node.name
                    ),
                );
            }
            check_node_needs(file, rn, &node, roles, pins, d);
            nodes.push(node);
        }
    }
    let nodes_loc = at(file, &raw.nodes);
    if raw.nodes.value.is_empty() {
        d.error(nodes_loc.clone(), "the inventory has no nodes");
    }
    let etcd = nodes.iter().filter(|n| n.has_role(ETCD)).count();
    if etcd == 0 && !raw.nodes.value.is_empty() {
        d.error(
            nodes_loc.clone(),
            "no node has the etcd role: the cluster needs at least one etcd member",
        );
    } else if etcd > 0 && etcd % 2 == 0 {
        let quorum = etcd / 2 + 1;
        d.warning(
            nodes_loc.clone(),
            format!(
                "{etcd} etcd members: quorum is {quorum}, so the cluster survives only {} failure{}, no more than {} members would; use an odd count",
                etcd - quorum,
                if etcd - quorum == 1 { "" } else { "s" },
                etcd - 1
            ),
        );
    }
    if !nodes.is_empty() && !nodes.iter().any(|n| n.has_role(CONTROL_PLANE)) {
        d.error(nodes_loc.clone(), "no node has the control-plane role");
    }
    if !nodes.is_empty() && !nodes.iter().any(|n| n.has_role(LB)) {
        d.warning(
            nodes_loc,
            format!(
                "no node has the lb role: nothing will hold the API VIP {}",
                raw.api.vip.value
            ),
        );
    }
    // Pins of Kubernetes components must be the cluster's version.
    if let (Some(pins), Some(v)) = (pins, version) {
        let want = v.to_string();
        for p in &pins.artifacts {
            let kube = p.name.starts_with("kube") && p.name != "kube-vip";
            if kube && p.version != want {
                d.error(
                    at(file, &raw.kubernetes_version),
                    format!(
                        "kubernetes_version is {want} but pin `{}` ({}) is {}: pin the same release",
                        p.name, p.arch, p.version
                    ),
                );
            }
        }
    }

    if d.errors().count() > errors_before {
        return None;
    }
    Some(Cluster {
        name: raw.name.value,
        kubernetes_version: version?,
        api: Api {
            vip: vip?,
            dns_name: raw.api.dns_name.value,
            lb_port: raw.api.lb_port.value,
            apiserver_port: raw.api.apiserver_port.value,
            vrrp_router_id: raw.api.vrrp_router_id.value,
            vrrp_interface: raw.api.vrrp_interface.value,
        },
        network: Network {
            service_cidr: service?,
            pod_cidr: pod?,
            node_cidr_mask: n.node_cidr_mask.value,
            cluster_domain: n.cluster_domain.value.clone(),
            cluster_dns: cluster_dns?,
            kube_proxy_mode: proxy_mode?,
        },
        pki: PkiSettings {
            key_algorithm: key_algorithm?,
            ca_validity_days: raw.pki.ca_validity_days.value,
            leaf_validity_days: raw.pki.leaf_validity_days.value,
        },
        host_network: HostNetwork {
            interface: hn.interface.value.clone(),
            prefix_length: hn.prefix_length.value,
            gateway: match gateway {
                Some(g) => Some(g?),
                None => None,
            },
            nameservers: nameservers.into_iter().collect::<Option<Vec<_>>>()?,
        },
        nodes,
    })
}

fn validate_node(
    file: &Path,
    rn: &RawNode,
    roles: &BTreeMap<String, Role>,
    unparsed_roles: &BTreeSet<String>,
    d: &mut Diagnostics,
) -> Option<Node> {
    let mut ok = true;
    if !is_dns_label(&rn.name.value) {
        d.error(
            at(file, &rn.name),
            format!(
                "node name `{}` is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
                rn.name.value
            ),
        );
        ok = false;
    }
    let ip = parse_ipv4(file, &rn.ip, &format!("node `{}` ip", rn.name.value), d);
    let arch = Arch::parse(&rn.arch.value);
    if arch.is_none() {
        d.error(
            at(file, &rn.arch),
            format!(
                "node `{}`: unknown arch `{}` (expected amd64 or arm64)",
                rn.name.value, rn.arch.value
            ),
        );
    }
    let mut node_roles: Vec<String> = Vec::new();
    if rn.roles.value.is_empty() {
        d.error(
            at(file, &rn.roles),
            format!("node `{}` has no roles", rn.name.value),
        );
        ok = false;
    }
    for r in &rn.roles.value {
        if node_roles.contains(&r.value) {
            d.error(
                at(file, r),
                format!("node `{}` lists role `{}` twice", rn.name.value, r.value),
            );
            ok = false;
        } else if r.value == BASE_ROLE {
            d.error(
                at(file, r),
                format!(
                    "node `{}` lists `base`, which every node has already: remove it",
                    rn.name.value
                ),
            );
            ok = false;
        } else if !roles.contains_key(&r.value) && !unparsed_roles.contains(&r.value) {
            let known: Vec<_> = roles.keys().filter(|k| *k != BASE_ROLE).cloned().collect();
            d.error(
                at(file, r),
                format!(
                    "node `{}` has role `{}`, which has no definition (no manifests/roles/{}.yaml); defined roles: {}",
                    rn.name.value,
                    r.value,
                    r.value,
                    known.join(", ")
                ),
            );
            ok = false;
        }
        node_roles.push(r.value.clone());
    }
    for t in &rn.taints {
        if !valid_taint(&t.value) {
            d.error(
                at(file, t),
                format!(
                    "taint `{}` must be `key[=value]:Effect` with Effect one of {}",
                    t.value,
                    TAINT_EFFECTS.join(", ")
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Node {
        name: rn.name.value.clone(),
        ip: ip?,
        arch: arch?,
        roles: node_roles,
        labels: rn.labels.clone(),
        taints: rn.taints.iter().map(|t| t.value.clone()).collect(),
    })
}

/// A node's roles must be satisfiable for its arch, and only control-plane
/// nodes may receive a CA private key.
fn check_node_needs(
    file: &Path,
    rn: &RawNode,
    node: &Node,
    roles: &BTreeMap<String, Role>,
    pins: Option<&Pins>,
    d: &mut Diagnostics,
) {
    let role_names = std::iter::once(BASE_ROLE).chain(node.roles.iter().map(String::as_str));
    for role_name in role_names {
        let Some(role) = roles.get(role_name) else {
            continue;
        };
        let role_loc = rn
            .roles
            .value
            .iter()
            .find(|r| r.value == role_name)
            .map_or_else(|| at(file, &rn.arch), |r| at(file, r));
        if let Some(pins) = pins {
            for a in &role.artifacts {
                let any = pins.artifacts.iter().any(|p| p.name == a.pin);
                if any && pins.artifact(&a.pin, node.arch).is_none() {
                    d.error(
                        role_loc.clone(),
                        format!(
                            "node `{}` is {} but pins.toml has no {} pin for `{}`, which role `{role_name}` needs",
                            node.name, node.arch, node.arch, a.pin
                        ),
                    );
                }
            }
            for image in &role.images {
                if let Some(p) = pins.image(image)
                    && !p.arches.contains(&node.arch)
                {
                    d.error(
                        role_loc.clone(),
                        format!(
                            "node `{}` is {} but image pin `{image}` has no {} variant, which role `{role_name}` needs",
                            node.name, node.arch, node.arch
                        ),
                    );
                }
            }
        }
        if !node.has_role(CONTROL_PLANE) {
            for s in role.secrets.iter().filter(|s| s.ca_key) {
                d.error(
                    role_loc.clone(),
                    format!(
                        "role `{role_name}` would give CA private key {} to node `{}`, which is not a control-plane node",
                        s.id, node.name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("master01"));
        assert!(is_dns_label("a-b"));
        assert!(!is_dns_label("Master01"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a_b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("kubeapi.ilinux.io"));
        assert!(!is_dns_subdomain("kubeapi..io"));
    }

    #[test]
    fn modes_owners_paths_taints() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("rwx"), None);
        assert_eq!(parse_owner("0:0"), Some((0, 0)));
        assert_eq!(parse_owner("root:root"), None);
        assert!(is_clean_absolute("/usr/local/bin/etcd"));
        assert!(!is_clean_absolute("/usr/../etc/passwd"));
        assert!(!is_clean_absolute("usr/bin"));
        assert!(!is_clean_absolute("/usr/bin/"));
        assert!(is_clean_relative("./bridge"));
        assert!(!is_clean_relative("../evil"));
        assert!(valid_taint(
            "node-role.kubernetes.io/control-plane:NoSchedule"
        ));
        assert!(valid_taint("dedicated=infra:NoExecute"));
        assert!(!valid_taint("dedicated=infra"));
        assert!(!valid_taint("x:Sometimes"));
    }

    #[test]
    fn cidrs_overlap_both_ways() {
        let a: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let b: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let c: Ipv4Net = "172.16.0.0/12".parse().unwrap();
        assert!(overlaps(a, b) && overlaps(b, a));
        assert!(!overlaps(a, c));
    }
}

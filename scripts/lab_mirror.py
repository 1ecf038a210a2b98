"""The work of scripts/lab-mirror: pack upstream-shaped archives, write the lab
manifests. Run through scripts/lab-mirror, which installs what it needs.

    lab_mirror.py REPO OUT ARCH KUBECTL [--vm BASE.tar DEBS-DIR]

With --vm the lab is the VM lab of `just vm-test` (docs/vm-test.md): a
pinned base OS (`[os]`, the Debian root scripts/vm/base-root built, packed
as an upstream-shaped .tar.gz), the roles' OS packages as pinned .debs in a
pool-shaped mirror path, one container image (pause, from busybox-static) as
an OCI layout to push to a local registry at build time, and an inventory
on a private subnet that exists only inside the VMs' switch."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib

repo, out, arch, kubectl = sys.argv[1:5]
vm = sys.argv[5:8] if len(sys.argv) >= 8 and sys.argv[5] == "--vm" else None
mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "1704067200"))

STAND_IN_NOTE = "imgbuild lab stand-in, not the real binary"


def stand_in(name, version):
    """A command-line tool's stand-in: says what it is."""
    return (
        "#!/bin/sh\n"
        f"# imgbuild lab stand-in for {name} {version}: not the real program.\n"
        f'echo "{name} {version} ({STAND_IN_NOTE})"\n'
    ).encode()


def daemon_stand_in(name, version):
    """A daemon's stand-in: checks that the files its flags name can be
    read (the real one reads them at start) and runs until stopped, as the
    service it replaces does."""
    # kubelet writes its --kubeconfig itself (TLS bootstrap)
    kubeconfig = "" if name == "kubelet" else "--kubeconfig=/*|"
    return f"""#!/bin/sh
# imgbuild lab stand-in for {name} {version}: not the real program. With
# --version it says what it is; otherwise it checks that every file its
# flags name (--*-file=, --config=, --*-kubeconfig=) can be read, as the real
# one reads them at start, then runs until stopped, as the service it
# replaces does.
me="{name} {version} ({STAND_IN_NOTE})"
for a in "$@"; do
  case $a in --version | version) echo "$me"; exit 0 ;; esac
done
bad=0 n=0
for a in "$@"; do
  case $a in
    {kubeconfig}--*-file=/* | --config=/* | --*-kubeconfig=/*)
      n=$((n + 1))
      [ -r "${{a#*=}}" ] || {{ echo "$me: cannot read ${{a#*=}} ($a)" >&2; bad=1; }} ;;
  esac
done
[ "$bad" = 0 ] || exit 1
echo "$me: running; the $n files its flags name are readable"
exec sleep infinity
""".encode()


def apiserver_stand_in(version):
    """kube-apiserver's stand-in: HTTPS from its own flags (openssl s_server)."""
    major, minor = version.lstrip("v").split(".")[:2]
    ver = json.dumps(
        {
            "major": major,
            "minor": minor,
            "gitVersion": version,
            "gitCommit": "imgbuild-lab-stand-in",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "none",
            "compiler": "none",
            "platform": f"linux/{arch}",
        },
        separators=(",", ":"),
    )
    return f"""#!/bin/sh
# imgbuild lab stand-in for kube-apiserver {version}: not the real program.
# It serves HTTPS on --bind-address:--secure-port with the certificate and key
# of --tls-cert-file and --tls-private-key-file (openssl s_server -HTTP), asks
# every client for a certificate and refuses one that --client-ca-file's CA
# did not sign (a client without one is let in: the real apiserver serves
# these paths to anonymous clients, system:public-info-viewer, which
# haproxy's and keepalived's health checks rely on), and answers GET
# /healthz, /livez, /readyz and /version (other paths get s_server's error
# text, not a 404). /readyz is 200 "ok" while etcd (--etcd-servers, with the
# --etcd-* client certificate) answers, 500 otherwise: checked every 5 s
# until it answers, then every 30 s.
set -eu
me="kube-apiserver {version} ({STAND_IN_NOTE})"
port=6443 bind=0.0.0.0 cert='' key='' ca='' etcd='' eca='' ecert='' ekey=''
for a in "$@"; do
  case $a in
    --version | version) echo "$me"; exit 0 ;;
    --secure-port=*) port=${{a#*=}} ;;
    --bind-address=*) bind=${{a#*=}} ;;
    --tls-cert-file=*) cert=${{a#*=}} ;;
    --tls-private-key-file=*) key=${{a#*=}} ;;
    --client-ca-file=*) ca=${{a#*=}} ;;
    --etcd-servers=*) etcd=${{a#*=}} ;;
    --etcd-cafile=*) eca=${{a#*=}} ;;
    --etcd-certfile=*) ecert=${{a#*=}} ;;
    --etcd-keyfile=*) ekey=${{a#*=}} ;;
  esac
done
for f in "$cert" "$key" "$ca"; do
  [ -r "$f" ] || {{ echo "$me: cannot read '$f' (--tls-cert-file, --tls-private-key-file, --client-ca-file)" >&2; exit 1; }}
done
www=/run/kube-apiserver-stand-in
rm -rf "$www"
mkdir -p "$www"
# reply PATH STATUS TYPE BODY: the whole HTTP response s_server -HTTP sends
reply() {{
  printf 'HTTP/1.1 %s\\r\\nContent-Type: %s\\r\\nContent-Length: %s\\r\\nConnection: close\\r\\n\\r\\n%s' \\
    "$2" "$3" "${{#4}}" "$4" >"$www/$1.new"
  mv "$www/$1.new" "$www/$1"
}}
etcd_ok() {{
  [ -n "$etcd" ] || return 0
  etcdctl --endpoints="$etcd" --cacert="$eca" --cert="$ecert" --key="$ekey" \\
    --dial-timeout=3s --command-timeout=5s endpoint health 2>&1 | grep -q 'is healthy'
}}
reply healthz '200 OK' text/plain ok
reply livez '200 OK' text/plain ok
reply version '200 OK' application/json '{ver}'
reply readyz '500 Internal Server Error' text/plain '[-]etcd failed: not checked yet'
(
  while :; do
    if etcd_ok; then
      reply readyz '200 OK' text/plain ok
      sleep 30
    else
      reply readyz '500 Internal Server Error' text/plain '[-]etcd failed: reason withheld'
      sleep 5
    fi
  done
) &
cd "$www"
echo "$me: serving https://$bind:$port (certificate $cert, clients of $ca)"
# s_server takes one connection at a time and waits on it without a timeout:
# a peer that stops mid-handshake (haproxy's backend connection when the VIP
# moves, held for its `timeout server`) would stall it for everyone. So it
# runs in a loop, and a watchdog that cannot GET /livez from it within 5 s
# twice in a row restarts it. (The real apiserver serves connections
# concurrently.)
case $bind in
  0.0.0.0) probe=127.0.0.1 ;;
  ::) probe='[::1]' ;;
  *:*) probe="[$bind]" ;;
  *) probe=$bind ;;
esac
(
  misses=0
  while sleep 10; do
    if printf 'GET /livez HTTP/1.0\\r\\n\\r\\n' |
      timeout 5 openssl s_client -quiet -connect "$probe:$port" 2>/dev/null | grep -q '200 OK'; then
      misses=0
    else
      misses=$((misses + 1))
      [ "$misses" -lt 2 ] || {{ echo "$me: no answer within 5 s twice: restarting s_server" >&2
        : >"$www/.restart"; kill "$(cat "$www/.pid")" 2>/dev/null || true; misses=0; }}
    fi
  done
) &
# s_server ends only when the watchdog stops it (then it starts again) or
# when it cannot start (then neither can the stand-in)
while :; do
  openssl s_server -HTTP -quiet -accept "$bind:$port" -cert "$cert" -key "$key" \\
    -CAfile "$ca" -verify 1 -verify_return_error &
  echo $! >"$www/.pid"
  wait $! || [ -e "$www/.restart" ] || exit 1
  rm -f "$www/.restart"
done
""".encode()


def real(path):
    with open(path, "rb") as f:
        return f.read()


def tar_bytes(entries, mode=0o755):
    """entries: {member: bytes}. Sorted, root-owned, one mtime."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as g:
        g.write(data)
    return buf.getvalue()


def targz(entries):
    """Sorted, root-owned, one mtime, gzip mtime 0."""
    return gz(tar_bytes(entries))


SERVER_DAEMONS = ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]


def build(name, version):
    """(bytes, note) for one artifact, or None if the lab has no such thing."""
    v = version
    if name == "kubernetes-server":
        bins = {b: daemon_stand_in(b, v) for b in SERVER_DAEMONS}
        bins["kube-apiserver"] = apiserver_stand_in(v)
        bins["kubectl"] = real(kubectl)
        entries = {f"kubernetes/server/bin/{b}": d for b, d in bins.items()}
        return targz(entries), (
            "LAB: kubectl is Debian's; kube-apiserver is a stand-in serving HTTPS with its flags' "
            "certificates (openssl s_server); kube-controller-manager, kube-scheduler, kubelet and "
            "kube-proxy are stand-ins that check their files and run"
        )
    if name == "kubernetes-node":
        bins = {b: daemon_stand_in(b, v) for b in ["kubelet", "kube-proxy"]}
        bins["kubeadm"] = stand_in("kubeadm", v)
        bins["kubectl"] = real(kubectl)
        entries = {f"kubernetes/node/bin/{b}": d for b, d in bins.items()}
        return targz(entries), "LAB: kubectl is Debian's; kubelet, kube-proxy and kubeadm are stand-ins"
    if name == "etcd":
        top = f"etcd-{v}-linux-{arch}"
        entries = {
            f"{top}/etcd": real("/usr/bin/etcd"),
            f"{top}/etcdctl": real("/usr/bin/etcdctl"),
            f"{top}/etcdutl": stand_in("etcdutl", v),
            f"{top}/README-imgbuild-lab.md": b"etcd and etcdctl are Debian's etcd 3.4 binaries, packed in the upstream layout.\n",
        }
        return targz(entries), "LAB: etcd and etcdctl are Debian's (etcd-server, etcd-client); etcdutl is a stand-in"
    if name == "containerd":
        entries = {f"bin/{b}": real(f"/usr/bin/{b}") for b in ["containerd", "containerd-shim-runc-v2", "ctr"]}
        return targz(entries), "LAB: Debian's containerd binaries in the upstream layout"
    if name == "runc":
        return real("/usr/sbin/runc"), "LAB: Debian's runc"
    if name == "crictl":
        return targz({"crictl": stand_in("crictl", v)}), "LAB: crictl is a stand-in"
    if name == "cni-plugins":
        entries = {f"./{p}": real(f"/usr/lib/cni/{p}") for p in sorted(os.listdir("/usr/lib/cni")) if os.path.isfile(f"/usr/lib/cni/{p}")}
        return targz(entries), "LAB: Debian's containernetworking-plugins in the upstream layout"
    return None


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def publish(url, data=None, src=None):
    """Writes the bytes (or links/copies the file) the mirror serves for url."""
    dest = os.path.join(out, "mirror", url.split("://", 1)[1])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        os.remove(dest)
    if data is not None:
        with open(dest, "wb") as f:
            f.write(data)
    else:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


with open(os.path.join(repo, "manifests/pins.toml"), "rb") as f:
    pins = tomllib.load(f)

lines = [
    "# LAB pins written by scripts/lab-mirror: the URLs are the real upstream ones",
    "# (so --mirror maps them into the lab mirror), the checksums are of the lab's",
    "# own archives, packed from Debian binaries and stand-ins as each `note` says.",
    "",
]
written = 0
for a in pins.get("artifact", []):
    if a["arch"] != arch:
        continue
    built = build(a["name"], a["version"])
    if built is None:
        continue
    data, note = built
    publish(a["url"], data=data)
    written += 1
    lines += [
        "[[artifact]]",
        f"name = {q(a['name'])}",
        f"version = {q(a['version'])}",
        f"arch = {q(arch)}",
        f"url = {q(a['url'])}",
        f"sha256 = {q(hashlib.sha256(data).hexdigest())}",
        f"source = {q('scripts/lab-mirror')}",
        f"note = {q(note)}",
        "",
    ]


def image_lines(i, digest=None, arches=None, source=None, note=None):
    out_lines = ["[[image]]"]
    for k in ["name", "version", "image"]:
        out_lines.append(f"{k} = {q(i[k])}")
    out_lines.append(f"digest = {q(digest or i['digest'])}")
    out_lines.append("arch = [" + ", ".join(q(x) for x in (arches or i["arch"])) + "]")
    out_lines.append(f"source = {q(source or i['source'])}")
    if note or "note" in i:
        out_lines.append(f"note = {q(note or i['note'])}")
    out_lines.append("")
    return out_lines


# --- the VM lab: base OS, .debs, one image ----------------------------------

# sysusers.d(5) lines for what a package's maintainer scripts would have
# made (they never run): haproxy's postinst runs `adduser --system --group
# --home /var/lib/haproxy haproxy`; keepalived, curl, nftables, mount and
# procps make no user or group.
DEB_USERS = {"haproxy": ['u haproxy - "haproxy" /var/lib/haproxy']}
BASE_URL = f"https://lab.example/debian/rootfs/bookworm-{arch}.tar.gz"


def base_archive(base_tar):
    """The base root as an upstream-shaped .tar.gz beside the tar (cached);
    (path, debian_version)."""
    targz_path = base_tar + ".gz"
    if not os.path.exists(targz_path) or os.path.getmtime(targz_path) < os.path.getmtime(base_tar):
        tmp = f"{targz_path}.tmp{os.getpid()}"
        with open(base_tar, "rb") as src, open(tmp, "wb") as dst:
            subprocess.run(["gzip", "-n", "-6", "-c"], stdin=src, stdout=dst, check=True)
        os.replace(tmp, targz_path)
    with tarfile.open(base_tar) as t:
        version = t.extractfile("./etc/debian_version").read().decode().strip()
    return targz_path, version


# What the VM lab's nodes leave out of the base and the .debs (`[os] exclude`,
# docs/base-os.md): the packages' documentation, perl's C headers and its
# East Asian encodings, and kernel modules of what a node never mounts, serves
# or runs (NFS and its RPC, SCTP, TIPC, SMC, DRBD, bcache, an NVMe target,
# Surface laptops, nested KVM). base-root's mmdebstrap already leaves out the
# base's own documentation, locales, firmware and more modules.
OS_EXCLUDE = [
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/lib/x86_64-linux-gnu/perl/*/CORE/*",
    "/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/JP/*",
    "/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/KR/*",
    "/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/CN/*",
    "/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/TW/*",
] + [f"/usr/lib/modules/*/kernel/{m}/*" for m in [
    "fs/nfs", "fs/nfs_common", "fs/nfsd", "fs/lockd", "net/sunrpc", "net/sctp", "net/tipc",
    "net/smc", "drivers/block/drbd", "drivers/md/bcache", "drivers/nvme/target",
    "drivers/platform/surface", "arch/x86/kvm",
]]


def os_lines(base_tar, debs_dir):
    path, version = base_archive(base_tar)
    publish(BASE_URL, src=path)
    out_lines = [
        "# The node OS: a Debian root made by scripts/vm/base-root (mmdebstrap, this",
        "# machine's apt sources) without the roles' packages, which come as .debs.",
        "[os]",
        'base = "debian-rootfs"',
        "exclude = [" + ", ".join(q(p) for p in OS_EXCLUDE) + "]",
        "",
        "[[artifact]]",
        'name = "debian-rootfs"',
        f"version = {q(version)}",
        f"arch = {q(arch)}",
        f"url = {q(BASE_URL)}",
        f"sha256 = {q(sha256_file(path))}",
        f"source = {q('scripts/vm/base-root')}",
        'note = "LAB: Debian 12 minbase + systemd, udev, linux-image-cloud-amd64 and the roles\' packages\' dependencies, built here; not a published image"',
        "",
    ]
    with open(os.path.join(debs_dir, "debs.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for name, version, deb_arch, url, sha, file in rows:
        url = "https://" + url.split("://", 1)[1]
        publish(url, src=os.path.join(debs_dir, file))
        out_lines += [
            "[[deb]]",
            f"name = {q(name)}",
            f"version = {q(version)}",
            f"arch = {q(deb_arch)}",
            f"url = {q(url)}",
            f"sha256 = {q(sha)}",
        ]
        users = DEB_USERS.get(name, [])
        if users:
            out_lines.append("users = [" + ", ".join(q(u) for u in users) + "]")
        out_lines += [
            f"source = {q('Debian bookworm Packages index, via apt-get download (scripts/vm/base-debs)')}",
            "",
        ]
    return out_lines


def oci_put(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", d), "wb") as f:
        f.write(data)
    return f"sha256:{d}", len(data)


def pause_image(tag):
    """An OCI layout of a one-arch `pause` image in OUT/images/pause: /pause,
    a busybox sh script that sleeps until SIGTERM, as the real pause does.
    Returns the index digest."""
    layout = os.path.join(out, "images", "pause")
    if os.path.isdir(layout):
        shutil.rmtree(layout)
    os.makedirs(os.path.join(layout, "blobs/sha256"))
    pause = b"#!/bin/busybox sh\n# imgbuild lab pause: sleeps until SIGTERM or SIGINT\ntrap 'exit 0' TERM INT\nwhile :; do /bin/busybox sleep 3600 & wait; done\n"
    raw = tar_bytes({"bin/busybox": real("/bin/busybox"), "pause": pause})
    layer, layer_size = oci_put(layout, gz(raw))
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }, sort_keys=True).encode()
    config_d, config_size = oci_put(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_d, manifest_size = oci_put(layout, manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d,
                       "size": manifest_size, "platform": {"architecture": arch, "os": "linux"}}],
    }, sort_keys=True).encode()
    index_d, index_size = oci_put(layout, index)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_d, "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return index_d


for i in pins.get("image", []):
    if vm and i["name"] == "pause":
        lines += image_lines(
            i, digest=pause_image(i["version"]), arches=[arch], source="scripts/lab-mirror",
            note="LAB: /pause is a busybox sh script that sleeps (busybox-static); pushed to a local registry for the build",
        )
    else:
        lines += image_lines(i)
if vm:
    lines += os_lines(vm[1], vm[2])


# --- manifests ----------------------------------------------------------------

man = os.path.join(out, "manifests")
if os.path.isdir(man):
    shutil.rmtree(man)
shutil.copytree(os.path.join(repo, "manifests/roles"), os.path.join(man, "roles"))


def edit_role(role, edit):
    p = os.path.join(man, "roles", f"{role}.yaml")
    with open(p) as fh:
        text = fh.read()
    new = edit(text)
    with open(p, "w") as fh:
        fh.write(new)


def replace_once(text, old, new):
    assert text.count(old) == 1, f"lab-mirror: `{old}` must occur once in a role file"
    return text.replace(old, new)


# The lab roles are the shipped ones, their os_packages included (the lab
# cluster keeps kube_proxy_mode nftables, which the worker's list matches).
# The lab has no registry: its roles bake in no container images; the VM lab
# bakes pause into the worker, from a registry on 127.0.0.1 during the build.
for f in sorted(os.listdir(os.path.join(man, "roles"))):
    p = os.path.join(man, "roles", f)
    with open(p) as fh:
        text = fh.read()
    kept = [l for l in text.splitlines() if not l.startswith("images:")]
    if len(kept) != len(text.splitlines()):
        if vm and f == "worker.yaml":
            kept.append("images: [pause]   # LAB: the only image (busybox-static), see pins.toml")
        kept.insert(0, "# LAB: container images are left out (the lab has no registry)." if not vm else
                    "# LAB: the VM lab bakes one image, pause (docs/vm-test.md).")
    with open(p, "w") as fh:
        fh.write("\n".join(kept) + "\n")

if vm:
    # The stand-in apiserver cannot take the addons' server-side apply: the VM
    # lab does not enable imgbuild-addons.service (its files stay in the layer).
    edit_role("control-plane", lambda t: replace_once(t, "  - imgbuild-addons.service\n", ""))
    with open(os.path.join(man, "roles", "vm-net.yaml"), "w") as fh:
        fh.write(
            "# LAB (VM lab only): the node's address on the VMs' private segment.\n"
            "description: systemd-networkd names the NIC with the node's MAC host_network.interface and gives it the node's IP (PXE has no cloud-init to do it).\n"
            "layers:\n"
            "  node: [vm-net-node]\n"
            "services: [systemd-networkd.service, systemd-networkd-wait-online.service]\n"
        )

with open(os.path.join(man, "pins.toml"), "w") as f:
    f.write("\n".join(lines))

kube_version = next(a["version"] for a in pins["artifact"] if a["name"] == "kubernetes-server")
if vm:
    nodes = [("master01", "10.88.0.11", "etcd, control-plane, lb, vm-net"),
             ("master02", "10.88.0.12", "etcd, control-plane, lb, vm-net"),
             ("master03", "10.88.0.13", "etcd, control-plane, lb, vm-net"),
             ("node01", "10.88.0.21", "worker, vm-net")]
    head = "# The imgbuild VM lab cluster (scripts/lab-mirror --vm): 10.88.0.0/24 exists only\n# inside the VMs' switch (scripts/vm/switch); nothing routes it anywhere."
    vip, iface = "10.88.0.10", "lan0"
    host_network = "host_network:\n  interface: lan0\n  prefix_length: 24\n"
else:
    nodes = [("master01", "127.0.10.1", "etcd, control-plane, lb"),
             ("master02", "127.0.10.2", "etcd, control-plane, lb"),
             ("master03", "127.0.10.3", "etcd, control-plane, lb"),
             ("node01", "127.0.10.11", "worker"),
             ("node02", "127.0.10.12", "worker")]
    head = "# The imgbuild lab cluster (scripts/lab-mirror): every address is on loopback."
    vip, iface = "127.0.10.100", "lo"
    host_network = ""
cluster = f"""{head}
name: lab
kubernetes_version: {kube_version}
api:
  vip: {vip}
  dns_name: kubeapi.lab.internal
  lb_port: 8443
  apiserver_port: 6443
  vrrp_router_id: 51
  vrrp_interface: {iface}
network:
  service_cidr: 10.96.0.0/12
  pod_cidr: 10.244.0.0/16
  node_cidr_mask: 24
  cluster_domain: cluster.local
  kube_proxy_mode: nftables
{host_network}pki:
  key_algorithm: ecdsa-p256
  ca_validity_days: 3650
  leaf_validity_days: 365
nodes:
"""
for name, ip, roles in nodes:
    cluster += f"  - name: {name}\n    ip: {ip}\n    arch: {arch}\n    roles: [{roles}]\n"
    if vm:
        # QEMU's NIC of the VM (scripts/vm-test): 52:54:00:88:00:<last octet, hex>
        cluster += f"    mac: 52:54:00:88:00:{int(ip.rsplit('.', 1)[1]):02x}\n"
with open(os.path.join(man, "cluster.yaml"), "w") as f:
    f.write(cluster)

layers = os.path.join(out, "layers")
if os.path.isdir(layers):
    shutil.rmtree(layers)
shutil.copytree(os.path.join(repo, "layers"), layers)
if vm:
    net = os.path.join(layers, "vm-net-node", "etc", "systemd", "network")
    os.makedirs(net)
    with open(os.path.join(net, "10-imgbuild-lan.link.tera"), "w") as f:
        f.write(
            "# LAB: the NIC with {{ node.name }}'s MAC is {{ cluster.host_network.interface }} (udev, at boot).\n"
            "[Match]\nMACAddress={{ node.mac }}\n\n[Link]\nName={{ cluster.host_network.interface }}\n"
        )
    with open(os.path.join(net, "10-imgbuild-lan.network.tera"), "w") as f:
        f.write(
            "# LAB: {{ node.name }}'s address on the VMs' private segment; no gateway, no DNS.\n"
            "[Match]\nMACAddress={{ node.mac }}\n\n[Network]\n"
            "Address={{ node.ip }}/{{ cluster.host_network.prefix_length }}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )

what = "the VM lab" if vm else "the lab"
print(f"lab-mirror: {written} artifacts in {out}/mirror, {what}'s manifests in {out}/manifests", file=sys.stderr)

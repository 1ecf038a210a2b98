"""The work of scripts/lab-mirror: pack upstream-shaped archives, write the lab
manifests. Run through scripts/lab-mirror, which installs what it needs."""

import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tomllib

repo, out, arch, kubectl = sys.argv[1:5]
mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "1704067200"))


def stand_in(name, version):
    return (
        "#!/bin/sh\n"
        f"# imgbuild lab stand-in for {name} {version}: not the real program.\n"
        f'echo "{name} {version} (imgbuild lab stand-in, not the real binary)"\n'
    ).encode()


def real(path):
    with open(path, "rb") as f:
        return f.read()


def targz(entries):
    """entries: {member: bytes}. Sorted, root-owned, one mtime, gzip mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as g:
        g.write(raw.getvalue())
    return buf.getvalue()


def build(name, version):
    """(bytes, note) for one artifact, or None if the lab has no such thing."""
    v = version
    if name == "kubernetes-server":
        bins = {b: stand_in(b, v) for b in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]}
        bins["kubectl"] = real(kubectl)
        entries = {f"kubernetes/server/bin/{b}": d for b, d in bins.items()}
        return targz(entries), "LAB: kubectl is Debian's; kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy are stand-ins"
    if name == "kubernetes-node":
        bins = {b: stand_in(b, v) for b in ["kubelet", "kube-proxy", "kubeadm"]}
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
    host_path = a["url"].split("://", 1)[1]
    dest = os.path.join(out, "mirror", host_path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)
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
for i in pins.get("image", []):
    lines += ["[[image]]"]
    for k in ["name", "version", "image", "digest"]:
        lines.append(f"{k} = {q(i[k])}")
    lines.append("arch = [" + ", ".join(q(x) for x in i["arch"]) + "]")
    lines.append(f"source = {q(i['source'])}")
    if "note" in i:
        lines.append(f"note = {q(i['note'])}")
    lines.append("")

man = os.path.join(out, "manifests")
if os.path.isdir(man):
    shutil.rmtree(man)
shutil.copytree(os.path.join(repo, "manifests/roles"), os.path.join(man, "roles"))
# The lab roles are the shipped ones, their os_packages included (the lab
# cluster keeps kube_proxy_mode nftables, which the worker's list matches).
# The lab has no registry: its roles bake in no container images.
for f in sorted(os.listdir(os.path.join(man, "roles"))):
    p = os.path.join(man, "roles", f)
    with open(p) as fh:
        text = fh.read()
    kept = [l for l in text.splitlines() if not l.startswith("images:")]
    if len(kept) != len(text.splitlines()):
        kept.insert(0, "# LAB: container images are left out (the lab has no registry).")
    with open(p, "w") as fh:
        fh.write("\n".join(kept) + "\n")
with open(os.path.join(man, "pins.toml"), "w") as f:
    f.write("\n".join(lines))

nodes = [("master01", "127.0.10.1", "etcd, control-plane, lb"),
         ("master02", "127.0.10.2", "etcd, control-plane, lb"),
         ("master03", "127.0.10.3", "etcd, control-plane, lb"),
         ("node01", "127.0.10.11", "worker"),
         ("node02", "127.0.10.12", "worker")]
kube_version = next(a["version"] for a in pins["artifact"] if a["name"] == "kubernetes-server")
cluster = f"""# The imgbuild lab cluster (scripts/lab-mirror): every address is on loopback.
name: lab
kubernetes_version: {kube_version}
api:
  vip: 127.0.10.100
  dns_name: kubeapi.lab.internal
  lb_port: 8443
  apiserver_port: 6443
  vrrp_router_id: 51
  vrrp_interface: lo
network:
  service_cidr: 10.96.0.0/12
  pod_cidr: 10.244.0.0/16
  node_cidr_mask: 24
  cluster_domain: cluster.local
  kube_proxy_mode: nftables
pki:
  key_algorithm: ecdsa-p256
  ca_validity_days: 3650
  leaf_validity_days: 365
nodes:
"""
for name, ip, roles in nodes:
    cluster += f"  - name: {name}\n    ip: {ip}\n    arch: {arch}\n    roles: [{roles}]\n"
with open(os.path.join(man, "cluster.yaml"), "w") as f:
    f.write(cluster)

layers = os.path.join(out, "layers")
if os.path.isdir(layers):
    shutil.rmtree(layers)
shutil.copytree(os.path.join(repo, "layers"), layers)

print(f"lab-mirror: {written} artifacts in {out}/mirror, lab manifests in {out}/manifests", file=sys.stderr)

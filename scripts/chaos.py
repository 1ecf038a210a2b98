"""`just chaos`: kill imgbuild at random points and check that nothing it
leaves is corrupt and that the next run recovers.

Runs against the offline lab of scripts/lab-mirror (built under the work
dir on first use). Each trial takes the next kind of run (fetch, build,
pki, build, fetch, ...), prepares work for it,
starts it, and sends SIGKILL at a random moment between 2% and 70% of the
time an uninterrupted cold run of that kind takes (a trial's run has less
to do than a cold one):

  fetch    a random part of the download cache removed, then `imgbuild fetch`
  build    a random part of the layer store and of the outputs removed, then
           `imgbuild cluster`
  pki      the state dir removed as well, then `imgbuild cluster` (killed
           while it generates the PKI, or later)

After the kill it counts what the killed run left corrupt: cache blobs whose
bytes do not hash to their name, stored layers (with their record) whose
files do not match it. Then it runs the same command again, uninterrupted,
and `imgbuild verify` on every node directory: a run that fails, or an
output that does not verify, is an unrecovered run. Leftovers of the killed
run still there after the recovery (scratch directories, temporaries) are
counted too. The figures go to stdout and to docs/chaos.md.

usage: python3 scripts/chaos.py [--trials N] [--seed S] [--imgbuild PATH]
                                [--work DIR] [--report FILE]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDE = "1700000000"


def sha(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Lab:
    """The lab directory: manifests, layers, mirror; cache, state and out."""

    def __init__(self, work, imgbuild):
        self.dir = os.path.join(work, "lab")
        self.imgbuild = imgbuild
        if not os.path.isfile(os.path.join(self.dir, "manifests/cluster.yaml")):
            subprocess.run(["bash", os.path.join(REPO, "scripts/lab-mirror"), self.dir], check=True)
        shutil.rmtree(os.path.join(self.dir, "layers"), ignore_errors=True)
        shutil.copytree(os.path.join(REPO, "layers"), os.path.join(self.dir, "layers"))
        for d in ["cache", "state", "out"]:
            shutil.rmtree(os.path.join(self.dir, d), ignore_errors=True)

    def path(self, *rel):
        return os.path.join(self.dir, *rel)

    def argv(self, *args):
        mirror = "file://" + self.path("mirror")
        return [self.imgbuild, "--cache", "cache", "--mirror", mirror, *args]

    def start(self, args):
        env = dict(os.environ, SOURCE_DATE_EPOCH=SDE)
        for var in ["IMGBUILD_CACHE", "IMGBUILD_STATE", "IMGBUILD_NOW"]:
            env.pop(var, None)
        return subprocess.Popen(self.argv(*args), cwd=self.dir, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def run(self, args):
        p = self.start(args)
        _, err = p.communicate()
        return p.returncode, err.decode(errors="replace")

    def nodes(self):
        out = self.path("out")
        if not os.path.isdir(out):
            return []
        return sorted(n for n in os.listdir(out) if not n.startswith("."))


def remove_some(paths, rng, share):
    for p in paths:
        if rng.random() < share:
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)


def listdir(d):
    return [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []


def prepare(lab, kind, rng):
    """Work for the run to do; returns its arguments."""
    if kind == "fetch":
        for algo in ["sha256", "sha512"]:
            remove_some(listdir(lab.path("cache/blobs", algo)), rng, 0.6)
        return ["fetch"]
    if kind == "pki":
        shutil.rmtree(lab.path("state"), ignore_errors=True)
    records = [p for p in listdir(lab.path("cache/layers")) if p.endswith(".json")]
    for r in records:
        if rng.random() < 0.5:
            stem = r[: -len(".json")]
            for ext in [".json", ".tar.gz", ".cpio.gz"]:
                if os.path.exists(stem + ext):
                    os.remove(stem + ext)
    remove_some(listdir(lab.path("out")), rng, 0.5)
    return ["cluster", "--out", "out"]


def corrupt_cache(lab):
    bad = []
    for algo in ["sha256", "sha512"]:
        for p in listdir(lab.path("cache/blobs", algo)):
            if sha(p, algo) != os.path.basename(p):
                bad.append(p)
    return bad


def corrupt_store(lab):
    """Stored layers whose record exists but whose files do not match it."""
    bad = []
    for r in listdir(lab.path("cache/layers")):
        if not r.endswith(".json"):
            continue
        rec = json.load(open(r))
        stem = r[: -len(".json")]
        for ext, digest, size in [(".tar.gz", rec.get("digest"), rec.get("size")),
                                  (".cpio.gz", rec.get("segment_digest"), rec.get("segment_size"))]:
            f = stem + ext
            if digest and os.path.exists(f):
                if os.path.getsize(f) != size or sha(f, "sha256") != digest:
                    bad.append(f)
    return bad


def debris(lab, pid):
    """What the killed run (pid) left that is still there."""
    found = [p for p in listdir(lab.path("out")) if os.path.basename(p).endswith(f".{pid}")]
    found += [p for p in listdir(lab.path("cache/layers")) if f".{pid}." in os.path.basename(p)]
    found += [p for p in listdir(lab.path("cache/tmp")) if f".{pid}." in os.path.basename(p)]
    return found


def unverified(lab):
    bad = []
    for n in lab.nodes():
        code, err = lab.run(["--manifests", "manifests", "verify", f"out/{n}"])
        if code != 0:
            bad.append(f"{n}: {err.strip().splitlines()[0] if err.strip() else code}")
    return bad


def baseline(lab):
    """Seconds an uninterrupted cold run of each kind takes."""
    t = {}
    start = time.monotonic()
    code, err = lab.run(["fetch"])
    t["fetch"] = time.monotonic() - start
    if code != 0:
        sys.exit(f"chaos: the baseline fetch failed:\n{err}")
    start = time.monotonic()
    code, err = lab.run(["cluster", "--out", "out"])
    t["build"] = t["pki"] = time.monotonic() - start
    if code != 0:
        sys.exit(f"chaos: the baseline build failed:\n{err}")
    return t


def trial(lab, kind, limit, rng):
    args = prepare(lab, kind, rng)
    p = lab.start(args)
    time.sleep(rng.uniform(0.02, 0.7) * limit)
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    found = {"killed": killed, "cache": corrupt_cache(lab), "store": corrupt_store(lab),
             "left": len(debris(lab, p.pid))}
    code, err = lab.run(args)
    found["recovery"] = None if code == 0 else err.strip()
    if kind == "fetch" and code == 0:
        code, err = lab.run(["cluster", "--out", "out"])
        found["recovery"] = None if code == 0 else err.strip()
    found["outputs"] = unverified(lab)
    found["debris"] = debris(lab, p.pid)
    return found


def report(results, seconds, trials_wall, seed, imgbuild):
    kinds = sorted({k for k, _ in results})
    rows = []
    for kind in kinds + ["all"]:
        rs = [r for k, r in results if kind in (k, "all")]
        rows.append((kind, len(rs), sum(r["killed"] for r in rs),
                     sum(len(r["cache"]) for r in rs), sum(len(r["store"]) for r in rs),
                     sum(1 for r in rs if r["recovery"] or r["outputs"]),
                     sum(r["left"] for r in rs), sum(len(r["debris"]) for r in rs)))
    lines = [
        "# Chaos trials",
        "",
        "Written by `just chaos` (scripts/chaos.py): imgbuild is killed with",
        "SIGKILL at a random moment of a run against the offline lab of",
        "scripts/lab-mirror, then run again and every node directory checked",
        "with `imgbuild verify`. See the script's header for what each kind",
        "of trial removes first.",
        "",
        f"Seed {seed}; {len(results)} trials in {trials_wall:.0f} s; an uninterrupted cold",
        f"fetch takes {seconds['fetch']:.1f} s and a cold `cluster` {seconds['build']:.1f} s here",
        f"(`{os.path.relpath(imgbuild, REPO) if imgbuild.startswith(REPO) else imgbuild}`).",
        "",
        "| kind | trials | killed | corrupt cache blobs | corrupt stored layers | unrecovered runs | leftovers after the kill | leftovers after the next run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    lines += [
        "",
        "- killed: the run was still going when SIGKILL came (the others had",
        "  finished first and count as trials of an uninterrupted run).",
        "- corrupt: a cache blob whose bytes do not hash to its name, or a",
        "  stored layer whose files do not match its record, found right after",
        "  the kill.",
        "- unrecovered: the same command run again failed, or an output",
        "  directory did not pass `imgbuild verify`.",
        "- leftovers: what the killed run had named after its pid (scratch",
        "  directories, old outputs, temporaries), right after the kill and",
        "  still there after the next run.",
    ]
    problems = [(k, r) for k, r in results
                if r["cache"] or r["store"] or r["recovery"] or r["outputs"] or r["debris"]]
    if problems:
        lines += ["", "## Problems", ""]
        for k, r in problems:
            detail = {x: r[x] for x in ["cache", "store", "recovery", "outputs", "debris"] if r[x]}
            lines.append(f"- {k}: `{json.dumps(detail)[:400]}`")
    return "\n".join(lines) + "\n", bool(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--imgbuild", default=os.path.join(REPO, "target/release/imgbuild"))
    ap.add_argument("--work", default=os.path.join(REPO, "target/chaos"))
    ap.add_argument("--report", default=os.path.join(REPO, "docs/chaos.md"))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 16)
    rng = random.Random(seed)
    lab = Lab(a.work, os.path.abspath(a.imgbuild))
    seconds = baseline(lab)
    results = []
    start = time.monotonic()
    for i in range(a.trials):
        kind = ["fetch", "build", "pki", "build"][i % 4]
        r = trial(lab, kind, seconds[kind], rng)
        results.append((kind, r))
        bad = r["cache"] or r["store"] or r["recovery"] or r["outputs"] or r["debris"]
        print(f"chaos: trial {i + 1}/{a.trials} {kind}: "
              f"{'killed' if r['killed'] else 'finished first'}{', PROBLEM' if bad else ''}",
              file=sys.stderr)
    text, bad = report(results, seconds, time.monotonic() - start, seed, os.path.abspath(a.imgbuild))
    sys.stdout.write(text)
    with open(a.report, "w") as f:
        f.write(text)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

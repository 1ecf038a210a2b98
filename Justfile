# imgbuild's recipes. `just check` is the gate CI runs.

# list recipes
default:
    @just --list

# build the release binary
build:
    cargo build --release --locked

# run every test (the full suite; CI's gate through `just check`)
test:
    cargo test --locked --all-targets

# the fast tier: unit tests, plus the integration tests that need no system
# package (no judge program, no lab mirror): manifests, plans, archives, fetch
test-fast:
    cargo test --locked --lib --bins
    cargo test --locked --test it -- archive:: artifacts:: fetch:: plan:: validate:: --skip lab_mirror

# fmt --check, clippy -D warnings (too_many_lines at 60: clippy.toml), no
# dbg!/todo!, no stage importing the crate root, then the tests
check:
    cargo fmt --check
    cargo clippy --locked --all-targets -- -D warnings
    ! grep -rnE '(dbg|todo|unimplemented)!' src tests
    ! grep -rnE 'crate::canonical_json|use crate::\{' src
    cargo test --locked --all-targets

# the mutation harnesses of the manifest loader (src/manifest/fuzz.rs) and of
# template rendering (src/render/fuzz.rs), each for SECONDS or CASES,
# whichever ends first, from a fresh seed (printed; a failure says how to
# replay it with IMGBUILD_FUZZ_SEED); the normal test run tries a few thousand
fuzz SECONDS="300" CASES="10000000":
    PROPTEST_CASES={{CASES}} IMGBUILD_FUZZ_SECONDS={{SECONDS}} cargo test --locked --release --lib manifest::fuzz -- --nocapture
    PROPTEST_CASES=2000 IMGBUILD_FUZZ_SECONDS={{SECONDS}} cargo test --locked --release --lib render::fuzz -- --nocapture

# the main job, offline: build the lab mirror, build every lab node, verify
# each, then start etcd on the three etcd nodes from their built layers
demo: build
    #!/usr/bin/env bash
    set -euo pipefail
    lab=target/demo
    bash scripts/lab-mirror "$lab"
    rm -rf "$lab/layers" && cp -r layers "$lab/layers"
    cd "$lab"
    imgbuild=../release/imgbuild
    "$imgbuild" --manifests manifests --cache cache --mirror "file://$PWD/mirror" cluster --out out
    for node in out/*/; do
      "$imgbuild" --manifests manifests --cache cache verify "$node"
    done
    "$imgbuild" --manifests manifests pki status >/dev/null && echo "pki: every certificate OK"
    bash ../../scripts/demo-etcd out

# boot the VM lab's cluster (master01-03, node01) as QEMU VMs from the PXE
# files imgbuild builds and check it from inside: etcd over TLS, the VIP and
# its failover, kubectl through it, pause in containerd, every unit active;
# about 3-7 minutes on 2 cores under TCG (docs/vm-test.md)
vm-test: build
    bash scripts/vm-test

# the plan of the shipped example (the guides' cluster)
plan:
    cargo run --quiet -- plan --role master01
    cargo run --quiet -- plan --role worker

# kill `cluster` and `fetch` runs with SIGKILL at random points (N trials,
# against the offline lab), re-run them and check the cache, the layer store
# and every output with `imgbuild verify`; writes docs/chaos.md. Not in CI.
chaos trials="30": build
    python3 scripts/chaos.py --trials {{trials}}

# measure against the guides' way and the limit; writes BENCHMARKS.md
bench: build
    cargo build --release --locked --example deflate_limit
    python3 scripts/bench.py

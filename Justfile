# imgbuild's recipes. `just check` is the gate CI runs.

# list recipes
default:
    @just --list

# build the release binary
build:
    cargo build --release --locked

# run every test
test:
    cargo test --locked --all-targets

# fmt --check, clippy -D warnings, no dbg!/todo!, then the tests
check:
    cargo fmt --check
    cargo clippy --locked --all-targets -- -D warnings
    ! grep -rnE '(dbg|todo|unimplemented)!' src tests
    cargo test --locked --all-targets

# the main job on the shipped example: plan master01 and node01
demo: build
    ./target/release/imgbuild plan --role master01
    ./target/release/imgbuild plan --role node01
    ./target/release/imgbuild plan --role worker

//! One integration test binary: every test drives the real `imgbuild` binary.

mod lab;
mod plan;
mod validate;

//! One integration test binary: every test drives the real `imgbuild` binary.

mod archive;
mod artifacts;
mod build;
mod etcd;
mod fetch;
mod hostile_inputs;
mod http;
mod images;
mod judge;
mod lab;
mod pki;
mod plan;
mod registry;
mod validate;

//! One integration test binary: every test drives the real `imgbuild` binary.

mod etcd;
mod lab;
mod pki;
mod plan;
mod validate;

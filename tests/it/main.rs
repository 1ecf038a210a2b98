//! One integration test binary: every test drives the real `imgbuild` binary.

mod addons_and_dns;
mod archive;
mod artifacts;
mod base_os;
mod build;
mod cluster_security;
mod containerd;
mod etcd;
mod fetch;
mod first_boot;
mod hostile_inputs;
mod hostile_network;
mod http;
mod images;
mod judge;
mod lab;
mod node_os;
mod pki;
mod plan;
mod registry;
mod scripts;
mod seed_script;
mod stores_and_state;
mod units;
mod validate;
mod verify;

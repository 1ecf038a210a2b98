//! What enters the scripts a node runs as root (cloud-init's apply-layers,
//! boot.ipxe) and what `verify --rebuild` takes from the directory it checks.

use crate::build::{build, synthetic};

#[test]
fn a_seed_layers_base_with_shell_or_ipxe_syntax_is_refused_before_anything_is_read() {
    let (lab, server) = synthetic();
    for hostile in [
        "url=http://boot/x';reboot;'",
        "url=http://boot/$(id)",
        "url=http://boot/${net0/ip}",
        "url=http://boot/a b",
    ] {
        build(
            &lab,
            &server,
            &["node", "--role", "node01", "--seed-layers", hostile],
            &[],
        )
        .assert_failed()
        .assert_stderr_has("invalid value")
        .assert_stderr_has("--seed-layers");
    }
    assert!(!lab.path("out").exists(), "nothing may be written");
}

#[test]
fn a_forged_image_json_with_a_hostile_base_fails_verification() {
    let (lab, server) = synthetic();
    build(
        &lab,
        &server,
        &[
            "node",
            "--role",
            "node01",
            "--seed-layers",
            "url=http://boot/l",
        ],
        &[],
    )
    .assert_ok();
    let p = lab.path("out/node01/image.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let forged = text.replace("url=http://boot/l", "url=http://boot/l';reboot;'");
    assert_ne!(text, forged);
    std::fs::write(&p, forged).unwrap();
    build(&lab, &server, &["verify", "out/node01", "--rebuild"], &[])
        .assert_failed()
        .assert_stderr_has("image.json")
        .assert_stderr_has("is neither `embed`, `volume` nor `url=BASE`");
}

#[test]
fn verify_rebuild_shows_its_options_and_takes_them_from_the_command_line() {
    let (lab, server) = synthetic();
    let url = [
        "node",
        "--role",
        "node01",
        "--seed-layers",
        "url=http://boot/l",
    ];
    build(&lab, &server, &url, &[]).assert_ok();
    build(&lab, &server, &["verify", "out/node01", "--rebuild"], &[])
        .assert_ok()
        .assert_stderr_has(
            "rebuilding node01 (amd64) with --format layers,cloud-init,pxe --seed-layers url=http://boot/l",
        );
    // told to rebuild in embed mode, the url-mode directory is not what it gets
    build(
        &lab,
        &server,
        &[
            "verify",
            "out/node01",
            "--rebuild",
            "--seed-layers",
            "embed",
        ],
        &[],
    )
    .assert_failed()
    .assert_stderr_has("differs from a rebuild");
}

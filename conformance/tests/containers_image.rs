//! The relay image the scenarios run is the production one: it runs as a numeric non-root
//! user, starts the relay binary directly (no shell in between), carries the crate version,
//! and holds none of the mail software of the test rootfs.

use std::process::Command;

use conformance::docker;

fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Whether `path` exists in `image` (asked with the image's own `test`, as its user).
fn exists(image: &str, path: &str) -> bool {
    docker_cli(&[
        "run",
        "--rm",
        "--entrypoint",
        "/usr/bin/test",
        image,
        "-e",
        path,
    ])
    .0
}

#[test]
fn relay_image_is_the_production_image() {
    if docker::skip_without_docker() {
        return;
    }
    let image = &docker::images().unwrap().relay;
    let (ok, config) = docker_cli(&["image", "inspect", "--format", "{{json .Config}}", image]);
    assert!(ok, "cannot inspect {image}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/relay"])
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        image.starts_with(&format!("smtprelay-relay:{}-", env!("CARGO_PKG_VERSION"))),
        "{image} is not tagged with the crate version and a content hash"
    );

    assert!(exists(image, "/usr/local/bin/relay"));
    for absent in [
        "/usr/sbin/postfix",
        "/usr/sbin/sendmail",
        "/usr/bin/swaks",
        "/usr/sbin/dnsmasq",
        "/usr/bin/openssl",
        "/var/lib/apt/lists/lock",
        "/usr/share/man/man1",
    ] {
        assert!(!exists(image, absent), "{absent} is in the relay image");
    }
}

//! `relayctl dkim-record`: the DNS TXT record of a DKIM private key file, as a zone-file
//! line with the value split into strings of at most 255 bytes (RFC 1035 §3.3.14).

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use relay::delivery::testing::dkim_keys;

fn relayctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .args(args)
        .output()
        .unwrap()
}

fn record(key: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "dkim-record",
        "--key",
        key.to_str().unwrap(),
        "--selector",
        "mail2026",
        "--domain",
        "Acme.Example",
    ];
    args.extend_from_slice(extra);
    let out = relayctl(&args);
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The quoted strings of a `NAME. IN TXT "..." "..."` line.
fn strings(line: &str) -> Vec<String> {
    let rest = line
        .strip_prefix("mail2026._domainkey.acme.example. IN TXT ")
        .unwrap_or_else(|| panic!("{line}"));
    let parts: Vec<&str> = rest.split('"').collect();
    // "a" "b" splits into ["", a, " ", b, ""].
    assert_eq!(parts.first(), Some(&""));
    assert_eq!(parts.last(), Some(&""));
    parts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

#[test]
fn an_rsa_key_prints_a_record_split_into_255_byte_strings() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    std::fs::write(&key, dkim_keys::RSA_2048_PKCS8).unwrap();

    let (ok, out, err) = record(&key, &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let strings = strings(out.trim_end());
    assert_eq!(strings.len(), 2, "{out}");
    assert_eq!(strings[0].len(), 255);
    assert!(strings[1].len() <= 255);
    let value = strings.concat();
    let p = value.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
    // p= is the SubjectPublicKeyInfo of the key's public half, byte for byte as
    // `openssl pkey -pubout -outform DER` writes it.
    assert_eq!(p, dkim_keys::RSA_2048_SPKI_BASE64.trim());
    assert!(base64::engine::general_purpose::STANDARD.decode(p).is_ok());

    // Naming the algorithm gives the same; naming the wrong one fails.
    assert_eq!(record(&key, &["--algorithm", "rsa-sha256"]).1, out);
    let (ok, _, err) = record(&key, &["--algorithm", "ed25519-sha256"]);
    assert!(!ok);
    assert!(err.contains("is not a usable DKIM private key"), "{err}");
}

#[test]
fn an_ed25519_key_prints_its_raw_public_key() {
    let dir = tempfile::tempdir().unwrap();
    // PKCS#8 v1 of the seed 0..32 (as `openssl genpkey -algorithm ed25519` writes it).
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend(0u8..32);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let key = dir.path().join("private.key");
    std::fs::write(
        &key,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let (ok, out, err) = record(&key, &[]);
    assert!(ok, "{err}");
    let strings = strings(out.trim_end());
    assert_eq!(strings.len(), 1);
    let p = strings[0].strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
    // The public key of seed 00..1f, as an independent Ed25519 implementation computes it.
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(p).unwrap(),
        hex_bytes("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    );
}

#[test]
fn a_file_that_is_not_a_key_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    std::fs::write(&key, "not a key").unwrap();
    let (ok, out, err) = record(&key, &[]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("is not a usable DKIM private key"), "{err}");
    let (ok, _, err) = record(&dir.path().join("missing"), &[]);
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn a_1024_bit_rsa_key_is_refused_as_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    std::fs::write(&key, dkim_keys::RSA_1024_PKCS8).unwrap();
    let out = relayctl(&[
        "dkim-record",
        "--key",
        key.to_str().unwrap(),
        "--selector",
        "s1",
        "--domain",
        "acme.example",
        "--algorithm",
        "rsa-sha256",
    ]);
    assert_eq!(out.status.code(), Some(2), "invalid input");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smaller than 2048 bits"), "{err}");
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

//! Must show — DKIM signing per Organization domain and a route's `rateLimit`, checked by
//! real peers (README "DKIM signing", "In front of a mail provider"): mail from
//! acme.example (RSA key) and beta.example (Ed25519 key) reaches the downstream Postfix
//! with a signature that an independent verifier (python3-dkim, run in the sink's
//! container, the public key being the value `relayctl dkim-record` prints) accepts, and
//! rejects once the body is changed; 50 messages submitted at once on a route with
//! `rateLimit.messagesPerSecond: 5` all arrive, spread over at least 9 seconds.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use conformance::docker::{self, Container, Scenario, host};
use conformance::manifests::{
    DkimKeySpec, HostSpec, LimitOverrides, RateLimitSpec, RouteHostsSpec, RouteMatch, RouteSpec,
};
use relay::config::DkimAlgorithm;

/// Messages on the rate-limited route, and its rate.
const BURST: usize = 50;
const PER_SECOND: u32 = 5;

/// Verifies `message` with python3-dkim inside `sink`, the selector's TXT record being
/// `record` (no DNS); the verifier's verdict, `valid` or `invalid`.
fn verify(sink: &Container, message: &str, record: &str) -> String {
    const SCRIPT: &str = "import dkim, os\n\
        record = os.environ['RECORD'].encode()\n\
        ok = dkim.verify(os.environ['MESSAGE'].encode(), dnsfunc=lambda name, timeout=5: record)\n\
        print('valid' if ok else 'invalid')\n";
    sink.exec_env(
        &["python3", "-c", SCRIPT],
        &[("MESSAGE", message), ("RECORD", record)],
    )
    .unwrap_or_else(|e| panic!("the verifier did not run: {e}"))
    .trim()
    .to_string()
}

/// A fresh private key (PEM PKCS#8) made by openssl in `c`: `RSA` or `ed25519`.
fn genpkey(c: &Container, algorithm: &str) -> String {
    let mut args = vec!["openssl", "genpkey", "-algorithm", algorithm];
    if algorithm == "RSA" {
        args.extend(["-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    c.exec(&args).unwrap()
}

/// The TXT record value for `pem`, as `relayctl dkim-record` prints it with its quoted
/// strings joined.
fn record(pem: &str, algorithm: DkimAlgorithm, selector: &str, domain: &str) -> String {
    let line =
        relay::delivery::dkim::dns_record(pem.as_bytes(), algorithm, selector, domain).unwrap();
    line.split('"').skip(1).step_by(2).collect()
}

/// The first `name:` header field of `message` with its folded lines joined (empty if
/// there is none).
fn unfolded(message: &str, name: &str) -> String {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = message.lines().take_while(|l| !l.is_empty());
    let Some(first) = lines.find(|l| l.to_ascii_lowercase().starts_with(&prefix)) else {
        return String::new();
    };
    let mut field = first[prefix.len()..].to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        field.push_str(l.trim());
    }
    field
}

/// Seconds since the epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Arrival times (seconds since the epoch) of the sink's messages whose Subject starts
/// with `prefix`.
fn arrivals(sink: &Container, prefix: &str) -> Vec<f64> {
    let script = format!(
        "grep -l '^Subject: {prefix}' /var/mail/vhosts/sink/new/* 2>/dev/null | while read -r f; do find \"$f\" -printf '%T@\\n'; done; true"
    );
    sink.exec(&["sh", "-c", &script])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn dkim_signatures_verify_independently_and_a_rate_limited_route_spaces_its_deliveries() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("dkim-rate").unwrap();
    scn.postfix_server("sink", host::SERVER, None).unwrap();
    let sink = scn.get("sink");
    let rsa = genpkey(sink, "RSA");
    let ed = genpkey(sink, "ed25519");

    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    m.org.domains.push("beta.example".into());
    // The burst stays far below every sending limit.
    m.org.limits = LimitOverrides {
        user_messages_per_day: Some(10_000),
        user_recipients_per_day: Some(10_000),
        customer_recipients_per_day: Some(10_000),
        customer_recipients_per10_minutes: Some(10_000),
        recipients_per_message: None,
    };
    m.org.dkim = vec![
        DkimKeySpec {
            domain: "acme.example".into(),
            selector: "mail2026".into(),
            secret: "dkim-acme".into(),
            algorithm: "rsa-sha256",
        },
        DkimKeySpec {
            domain: "beta.example".into(),
            selector: "ed2026".into(),
            secret: "dkim-beta".into(),
            algorithm: "ed25519-sha256",
        },
    ];
    let mut limited = RouteSpec::relaxed(
        "provider",
        RouteMatch::Domains(vec!["rate.example".into()]),
        RouteHostsSpec::Single(HostSpec {
            host: SINK.into(),
            port: 25,
            load_percent: 100,
        }),
    );
    limited.rate_limit = Some(RateLimitSpec {
        messages_per_second: PER_SECOND,
        max_connections: 2,
    });
    m.routes.insert(0, limited);

    let env = docker::container_env(docker::quick_delivery(&overrides(&scn)));
    let keys = [
        (env.dkim_key_file("dkim-acme"), rsa.clone().into_bytes()),
        (env.dkim_key_file("dkim-beta"), ed.clone().into_bytes()),
    ];
    scn.relay_with_files(
        &m,
        Some(&relay_cert()),
        &[],
        &keys,
        docker::quick_delivery(&overrides(&scn)),
    )
    .unwrap();
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    let client = scn.get("client");
    docker::sendmail(
        client,
        "sender@acme.example",
        &["a@partner.example"],
        "signed-rsa",
    )
    .unwrap();
    docker::sendmail(
        client,
        "sender@beta.example",
        &["b@partner.example"],
        "signed-ed25519",
    )
    .unwrap();
    // The burst: BURST separate messages queued on the client at once, so only the
    // relay's limit spaces their delivery.
    let burst = format!(
        "for i in $(seq 1 {BURST}); do printf 'From: <sender@acme.example>\\nTo: r@rate.example\\nSubject: rate-%s\\n\\nbody %s\\n' $i $i | sendmail -f sender@acme.example r@rate.example; done"
    );
    client.exec(&["sh", "-c", &burst]).unwrap();
    // When the client has handed everything to the relay (its queue is empty).
    let handed = docker::poll(OUTCOME, || docker::queue(client).is_empty().then(now))
        .unwrap_or_else(|| panic!("the client kept {:?}", docker::queue(client)));

    // (1) DKIM: each signature verifies with the published key, and not after tampering.
    let sink = scn.get("sink");
    for (subject, pem, algorithm, selector, domain) in [
        (
            "signed-rsa",
            &rsa,
            DkimAlgorithm::RsaSha256,
            "mail2026",
            "acme.example",
        ),
        (
            "signed-ed25519",
            &ed,
            DkimAlgorithm::Ed25519Sha256,
            "ed2026",
            "beta.example",
        ),
    ] {
        let msg = delivered(&scn, "sink", subject);
        let sig = unfolded(&msg, "DKIM-Signature");
        assert!(
            sig.contains(&format!("d={domain}")) && sig.contains(&format!("s={selector}")),
            "{subject} is signed for {domain} with selector {selector}:\n{msg}"
        );
        let txt = record(pem, algorithm, selector, domain);
        assert_eq!(verify(sink, &msg, &txt), "valid", "{subject}:\n{msg}");
        let tampered = msg.replace(&format!("body of {subject}"), "body changed on the way");
        assert_ne!(tampered, msg);
        assert_eq!(
            verify(sink, &tampered, &txt),
            "invalid",
            "{subject} tampered"
        );
    }

    // (2) Rate: all BURST arrive, no faster than PER_SECOND a second.
    let times = docker::poll(OUTCOME, || {
        let t = arrivals(sink, "rate-");
        (t.len() >= BURST).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {BURST} rate-limited messages arrived; relay log:\n{}",
            arrivals(sink, "rate-").len(),
            scn.get("relay").logs()
        )
    });
    assert_eq!(times.len(), BURST, "each message once");
    let first = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let last = times.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "first arrival {:.1} s, last {:.1} s after the client's queue was empty",
        first - handed,
        last - handed
    );
    assert!(
        last - handed >= 2.0,
        "the relay, not the client, spaces the burst: the last message arrived {:.1} s after the client had handed over all",
        last - handed
    );
    let floor = (BURST as f64 - 1.0) / PER_SECOND as f64 - 0.8;
    assert!(
        last - first >= floor,
        "{BURST} messages at {PER_SECOND}/s took {:.1} s from first to last arrival (at least {floor:.1} s expected)",
        last - first
    );
}

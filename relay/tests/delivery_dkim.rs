//! DKIM signing at delivery (SPEC §2.1 `dkim`): what reaches the next hop carries a
//! signature that an independent verifier (mail-auth's, fed the TXT record that
//! `relay::delivery::dkim::dns_record` prints) accepts, for RSA and Ed25519 keys; a key that cannot be
//! read defers the message and nothing reaches the sink unsigned; a rotated key file is
//! used without a reload.

mod delivery_common;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::Mutex;

use delivery_common::*;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use relay::config::{DkimAlgorithm, DkimConfig, RouteMatcher};
use relay::delivery::dkim::{DEFAULT_HEADERS, dns_record};
use relay::delivery::queue::MessageStore;
use relay::delivery::testing::{SinkConfig, TestSink};

/// A TXT "cache" that answers every DKIM key lookup the verifier makes.
struct Records(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// Publishes a zone-file line as `dns_record` prints it: `NAME. IN TXT "..." "..."`.
fn publish(records: &Records, line: &str) {
    let (name, rest) = line.split_once(" IN TXT ").unwrap();
    let value: String = rest
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    let key = DomainKey::parse(value.as_bytes()).unwrap();
    let txt = Txt::from(key);
    records.insert(name.into(), txt.clone(), std::time::Instant::now());
    records.insert(
        name.trim_end_matches('.').into(),
        txt,
        std::time::Instant::now(),
    );
}

fn rsa_pem() -> String {
    relay::delivery::testing::dkim_keys::RSA_2048_PKCS8.to_string()
}

fn ed25519_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem()
}

fn dkim_key(domain: &str, selector: &str, algorithm: DkimAlgorithm, file: &Path) -> DkimConfig {
    DkimConfig {
        domain: domain.to_string(),
        selector: selector.to_string(),
        algorithm,
        key_file: file.display().to_string(),
        headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
    }
}

fn harness(sink: &TestSink) -> Harness {
    let routes = vec![route(
        "all",
        RouteMatcher::Default,
        "127.0.0.1",
        sink.port(),
        no_tls(),
    )];
    Harness::new(routes, delivery_config(&[]))
}

/// Verifies every DKIM signature of `data` against `records`; the results.
async fn verify(records: &Records, data: &[u8]) -> Vec<(DkimResult, String, String)> {
    let authenticator = MessageAuthenticator::new_cloudflare().unwrap();
    let message = AuthenticatedMessage::parse(data).unwrap();
    let params = Parameters::new(&message).with_txt_cache(records);
    authenticator
        .verify_dkim(params)
        .await
        .into_iter()
        .map(|o| {
            let s = o.signature().unwrap();
            (o.result().clone(), s.d.clone(), s.s.clone())
        })
        .collect()
}

fn body(from: &str, subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <{from}>\r\nTo: <bob@dest.test>\r\nSubject: {subject}\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@acme.test>\r\n\r\n"
    )
    .into_bytes();
    // A body larger than one read block, with a leading dot line and trailing blank lines.
    for i in 0..3000 {
        m.extend_from_slice(format!("line {i} of a long body   with  spaces \r\n").as_bytes());
    }
    m.extend_from_slice(b".leading dot\r\n\r\n\r\n");
    m
}

#[tokio::test]
async fn rsa_and_ed25519_signatures_verify_at_the_next_hop() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let h = harness(&sink);
    let keys = h.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let rsa = rsa_pem();
    let ed = ed25519_pem();
    std::fs::write(keys.join("rsa.key"), &rsa).unwrap();
    std::fs::write(keys.join("ed.key"), &ed).unwrap();
    // acme.test signs with RSA; its subdomain eu.acme.test has its own Ed25519 key (the
    // most specific domain wins); other.test has no key.
    h.manager.set_dkim(vec![
        dkim_key(
            "acme.test",
            "rsa1",
            DkimAlgorithm::RsaSha256,
            &keys.join("rsa.key"),
        ),
        dkim_key(
            "eu.acme.test",
            "ed1",
            DkimAlgorithm::Ed25519Sha256,
            &keys.join("ed.key"),
        ),
    ]);
    let records = Records(Mutex::new(HashMap::new()));
    publish(
        &records,
        &dns_record(
            rsa.as_bytes(),
            DkimAlgorithm::RsaSha256,
            "rsa1",
            "acme.test",
        )
        .unwrap(),
    );
    publish(
        &records,
        &dns_record(
            ed.as_bytes(),
            DkimAlgorithm::Ed25519Sha256,
            "ed1",
            "eu.acme.test",
        )
        .unwrap(),
    );

    let m_rsa = body("alice@acme.test", "rsa");
    let m_sub = body("alice@mail.acme.test", "sub");
    let m_ed = body("alice@eu.acme.test", "ed");
    let m_none = body("carol@other.test", "none");
    for (from, m) in [
        ("alice@acme.test", &m_rsa),
        ("alice@mail.acme.test", &m_sub),
        ("alice@eu.acme.test", &m_ed),
        ("carol@other.test", &m_none),
    ] {
        h.send(from, &["bob@dest.test"], m);
    }
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 4);

    let got = sink.messages();
    let by_subject = |s: &str| {
        got.iter()
            .find(|m| {
                let text = String::from_utf8_lossy(&m.data);
                text.contains(&format!("Subject: {s}\r\n"))
            })
            .unwrap()
            .data
            .clone()
    };
    for (subject, original, domain, selector) in [
        ("rsa", &m_rsa, "acme.test", "rsa1"),
        ("sub", &m_sub, "acme.test", "rsa1"),
        ("ed", &m_ed, "eu.acme.test", "ed1"),
    ] {
        let data = by_subject(subject);
        assert!(
            data.starts_with(b"DKIM-Signature: "),
            "{subject}: signature first"
        );
        assert!(
            data.ends_with(original),
            "{subject}: the original text follows unchanged"
        );
        let results = verify(&records, &data).await;
        assert_eq!(
            results,
            vec![(DkimResult::Pass, domain.to_string(), selector.to_string())],
            "{subject}"
        );
    }
    let unsigned = by_subject("none");
    assert_eq!(unsigned, m_none, "a domain without a key is sent as is");

    // A tampered body fails verification: the check above is not vacuous.
    let mut tampered = by_subject("rsa");
    let at = tampered.len() - 20;
    tampered[at] ^= 1;
    let results = verify(&records, &tampered).await;
    assert!(
        matches!(
            results[0].0,
            DkimResult::Neutral(mail_auth::Error::Dkim(
                mail_auth::dkim::DkimError::FailedBodyHashMatch
            ))
        ),
        "{results:?}"
    );

    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_dkim_signed_total{domain=\"acme.test\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtprelay_dkim_signed_total{domain=\"eu.acme.test\"} 1"),
        "{metrics}"
    );
}

/// ring signs with RSA keys of 2048 bits or more: a 1024-bit key (RFC 8301 still allows
/// it) is an unreadable key that says why, and the mail waits for a new one.
#[tokio::test]
async fn a_1024_bit_rsa_key_defers_the_message_saying_the_key_is_too_small() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let h = harness(&sink);
    let key_file = h.dir.path().join("dkim.key");
    std::fs::write(
        &key_file,
        relay::delivery::testing::dkim_keys::RSA_1024_PKCS8,
    )
    .unwrap();
    h.manager.set_dkim(vec![dkim_key(
        "acme.test",
        "s1",
        DkimAlgorithm::RsaSha256,
        &key_file,
    )]);
    let id = h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &body("alice@acme.test", "m1"),
    );
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert!(sink.messages().is_empty(), "nothing is sent unsigned");
    let state = format!("{:?}", h.manager.state(&id));
    assert!(
        state.contains("4.7.0 DKIM signing for acme.test failed"),
        "{state}"
    );
    assert!(state.contains("smaller than 2048 bits"), "{state}");
    assert!(
        h.metrics_text()
            .contains("smtprelay_dkim_key_unreadable{domain=\"acme.test\"} 1")
    );
}

#[tokio::test]
async fn an_unreadable_key_defers_the_message_and_a_fixed_key_file_is_used_on_the_next_attempt() {
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let h = harness(&sink);
    let key_file = h.dir.path().join("dkim.key");
    h.manager.set_dkim(vec![dkim_key(
        "acme.test",
        "s1",
        DkimAlgorithm::Ed25519Sha256,
        &key_file,
    )]);
    let data = body("alice@acme.test", "m1");
    let id = h.send("alice@acme.test", &["bob@dest.test"], &data);

    // No key file: deferred, nothing sent.
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert!(
        sink.messages().is_empty(),
        "nothing reaches the sink unsigned"
    );
    assert_eq!(h.store.list().unwrap(), vec![id.clone()], "still queued");
    let state = format!("{:?}", h.manager.state(&id));
    assert!(
        state.contains("4.7.0 DKIM signing for acme.test failed"),
        "{state}"
    );
    assert!(state.contains("cannot read key file"), "{state}");

    // A file that is not a key: deferred again, counted again.
    std::fs::write(&key_file, "not a key").unwrap();
    h.clock.advance(std::time::Duration::from_secs(3600));
    let report = bounded(h.manager.run_due()).await;
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert!(sink.messages().is_empty());
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("smtprelay_dkim_key_errors_total{domain=\"acme.test\"} 2"),
        "{metrics}"
    );
    // What the operator reads for the Organization's DkimKeyUnreadable problem.
    assert!(
        metrics.contains("smtprelay_dkim_key_unreadable{domain=\"acme.test\"} 1"),
        "{metrics}"
    );

    // The Secret is fixed (the mounted file changes): the next attempt signs, no reload.
    let ed = ed25519_pem();
    std::fs::write(&key_file, &ed).unwrap();
    h.clock.advance(std::time::Duration::from_secs(3600));
    let report = bounded(h.manager.run_due()).await;
    assert_eq!(report.delivered, 1);
    assert!(
        h.metrics_text()
            .contains("smtprelay_dkim_key_unreadable{domain=\"acme.test\"} 0"),
        "a key that signs again"
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let records = Records(Mutex::new(HashMap::new()));
    publish(
        &records,
        &dns_record(
            ed.as_bytes(),
            DkimAlgorithm::Ed25519Sha256,
            "s1",
            "acme.test",
        )
        .unwrap(),
    );
    let results = verify(&records, &got[0].data).await;
    assert_eq!(results[0].0, DkimResult::Pass);

    // Rotated to another key: the next message is signed with the new one.
    let ed2 = ed25519_pem();
    std::fs::write(&key_file, &ed2).unwrap();
    h.send(
        "alice@acme.test",
        &["bob@dest.test"],
        &body("alice@acme.test", "m2"),
    );
    bounded(h.manager.run_due()).await;
    let got = sink.messages();
    assert_eq!(got.len(), 2);
    let results = verify(&records, &got[1].data).await;
    assert!(
        matches!(results[0].0, DkimResult::Fail(_)),
        "old record no longer verifies: {results:?}"
    );
    let rotated = Records(Mutex::new(HashMap::new()));
    publish(
        &rotated,
        &dns_record(
            ed2.as_bytes(),
            DkimAlgorithm::Ed25519Sha256,
            "s1",
            "acme.test",
        )
        .unwrap(),
    );
    assert_eq!(verify(&rotated, &got[1].data).await[0].0, DkimResult::Pass);
}

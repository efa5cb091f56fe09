//! Must show — limits (SPEC §3.6) with small `Organization.spec.limits` overrides and the
//! licence/billing defaults, as a real Postfix client experiences them: `550` replies
//! (per-user messages and unique recipients, customer daily total) bounce the message back
//! to the sender with the exact text, while the `450` of the 10-minute peak leaves it
//! deferred in Postfix's queue with the exact text as the delay reason.

mod common;

use common::*;
use conformance::docker::{self, Container, Scenario, host};
use conformance::manifests::{LimitOverrides, Manifests};

const USER: &str = "550 5.4.5 Daily SMTP relay limit exceeded for user.";
const DAILY: &str = "550 5.7.1 Daily SMTP relay limit exceeded for customer.";
const PEAK: &str = "450 4.2.1 Peak SMTP relay limit exceeded for customer.";

/// A scenario whose relay has `limits` and billing `paid` with `licenses`.
fn scenario(label: &str, paid: bool, licenses: u64, limits: LimitOverrides) -> Scenario {
    let mut scn = Scenario::new(label).unwrap();
    let mut m: Manifests = base_manifests();
    m.org.paid = paid;
    m.org.licenses = licenses;
    m.org.limits = limits;
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
        .unwrap();
    scn
}

fn rcpts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.net")).collect()
}

fn send(client: &Container, rcpts: &[String], subject: &str) {
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    docker::sendmail(client, "sender@acme.example", &refs, subject).unwrap();
}

/// Waits until the sink holds `n` deliveries of `subject` (the sink stores one file per
/// recipient).
fn wait_delivered(scn: &Scenario, subject: &str, n: usize) {
    let ok = docker::poll(OUTCOME, || {
        (count_subject(scn, "sink", subject) >= n).then_some(())
    });
    assert!(
        ok.is_some(),
        "{subject}: {} of {n} delivered; relay log:\n{}",
        count_subject(scn, "sink", subject),
        scn.get("relay").logs()
    );
}

/// Waits until Postfix's queue holds a recipient deferred with `reason`.
fn deferred(client: &Container, reason: &str) -> Vec<docker::Queued> {
    docker::poll(OUTCOME, || {
        let q = docker::queue(client);
        q.iter()
            .any(|e| squash(&e.delay_reason).contains(reason))
            .then_some(q)
    })
    .unwrap_or_else(|| {
        panic!(
            "nothing deferred with {reason:?}; queue: {:?}\nlog:\n{}",
            docker::queue(client),
            client.logs()
        )
    })
}

#[test]
fn per_user_messages_per_day_bounces_the_next_message_with_5_4_5() {
    if docker::skip_without_docker() {
        return;
    }
    let scn = scenario(
        "lim-usermsg",
        true,
        10,
        LimitOverrides {
            user_messages_per_day: Some(1),
            ..Default::default()
        },
    );
    let client = scn.get("client");
    send(client, &rcpts("a", 1), "first");
    wait_delivered(&scn, "first", 1);
    send(client, &rcpts("b", 1), "second");
    bounced(client, USER);
    assert_eq!(count_subject(&scn, "sink", "second"), 0);
}

#[test]
fn per_user_unique_recipients_per_day_bounce_a_new_recipient_but_not_a_known_one() {
    if docker::skip_without_docker() {
        return;
    }
    let scn = scenario(
        "lim-userrcpt",
        true,
        10,
        LimitOverrides {
            user_recipients_per_day: Some(2),
            ..Default::default()
        },
    );
    let client = scn.get("client");
    send(client, &rcpts("a", 2), "two");
    wait_delivered(&scn, "two", 2);
    send(client, &["a0@example.net".to_string()], "known");
    wait_delivered(&scn, "known", 1);
    send(client, &rcpts("new", 1), "third");
    bounced(client, USER);
    assert_eq!(count_subject(&scn, "sink", "third"), 0);
}

#[test]
fn paid_customer_daily_total_bounces_with_5_7_1_and_peak_from_licences_defers_with_450() {
    if docker::skip_without_docker() {
        return;
    }
    // Daily: an override of 3 recipients.
    let scn = scenario(
        "lim-paid-day",
        true,
        10,
        LimitOverrides {
            customer_recipients_per_day: Some(3),
            ..Default::default()
        },
    );
    let client = scn.get("client");
    send(client, &rcpts("a", 3), "three");
    wait_delivered(&scn, "three", 3);
    send(client, &rcpts("b", 1), "fourth");
    bounced(client, DAILY);
    assert!(docker::queue(client).is_empty(), "a 550 is not retried");
    drop(scn);

    // Peak: 1 licence gives 9 recipients per 10 minutes (no override).
    let scn = scenario("lim-paid-peak", true, 1, LimitOverrides::default());
    let client = scn.get("client");
    send(client, &rcpts("p", 10), "ten");
    wait_delivered(&scn, "ten", 9);
    let q = deferred(client, PEAK);
    assert_eq!(q.len(), 1, "exactly the tenth recipient waits: {q:?}");
    assert!(
        !docker::mailbox(client).contains("Peak"),
        "a 450 does not bounce"
    );
}

#[test]
fn unpaid_customer_peak_is_50_and_daily_is_100() {
    if docker::skip_without_docker() {
        return;
    }
    // Unpaid defaults: 50 recipients per 10 minutes. Limits count a message when it is
    // accepted, so the 51st recipient is sent after the first 50 are.
    let scn = scenario("lim-unpaid-peak", false, 100, LimitOverrides::default());
    let client = scn.get("client");
    send(client, &rcpts("u", 50), "fifty");
    wait_delivered(&scn, "fifty", 50);
    send(client, &rcpts("v", 1), "fifty-first");
    let q = deferred(client, PEAK);
    assert_eq!(q.len(), 1, "{q:?}");
    drop(scn);

    // With the peak raised, the unpaid daily total of 100 recipients applies.
    let scn = scenario(
        "lim-unpaid-day",
        false,
        100,
        LimitOverrides {
            customer_recipients_per10_minutes: Some(1000),
            ..Default::default()
        },
    );
    let client = scn.get("client");
    send(client, &rcpts("d", 100), "hundred");
    wait_delivered(&scn, "hundred", 100);
    send(client, &rcpts("e", 1), "one-more");
    bounced(client, DAILY);
    assert_eq!(count_subject(&scn, "sink", "one-more"), 0);
}

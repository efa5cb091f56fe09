//! Strict addresses over a real socket (SPEC §3.4): RFC 5321 mailboxes, `553 5.6.7` for a
//! UTF-8 address without SMTPUTF8, no recipient domains that are IP addresses, the
//! local part's case kept into the spool, and a HELO name that cannot forge trace fields.

use std::time::Duration;

mod common;

use common::{Client, config, connect, queue_id};
use relay::{RelayHandle, StartOptions};
use tokio::net::TcpStream;

/// A relay whose downstream is down, so accepted mail stays in the spool.
async fn relay() -> (tempfile::TempDir, RelayHandle) {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let relay = relay::start(config(dir.path(), closed_port), StartOptions::default())
        .await
        .unwrap();
    (dir, relay)
}

async fn greeted(relay: &RelayHandle, helo: &str) -> Client<TcpStream> {
    let mut c = connect(relay.smtp_addr()).await;
    let r = c.cmd(&format!("EHLO {helo}")).await;
    assert!(r.starts_with("250-relay.acme.example"), "{r}");
    c
}

#[tokio::test]
async fn an_unquoted_at_in_the_local_part_gets_501_5_1_3() {
    let (_dir, relay) = relay().await;
    let mut c = greeted(&relay, "client.acme.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<x@evil.example@acme.example>").await,
        "501 5.1.3 Bad sender address syntax"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@acme.example>").await, "250 2.1.0 OK");
    assert_eq!(
        c.cmd("RCPT TO:<x@evil.example@dest.example>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bell\x07@dest.example>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_recipient_domain_that_is_an_ip_address_gets_501_5_1_3() {
    let (_dir, relay) = relay().await;
    let mut c = greeted(&relay, "client.acme.example").await;
    assert_eq!(c.cmd("MAIL FROM:<a@acme.example>").await, "250 2.1.0 OK");
    for rcpt in ["u@[10.0.0.5]", "u@10.0.0.5"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
            "501 5.1.3 Recipient domain must be a domain name, not an IP address"
        );
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_utf8_recipient_without_smtputf8_gets_553_5_6_7() {
    let (_dir, relay) = relay().await;
    let mut c = greeted(&relay, "client.acme.example").await;
    assert_eq!(c.cmd("MAIL FROM:<a@acme.example>").await, "250 2.1.0 OK");
    assert_eq!(
        c.cmd("RCPT TO:<jörg@bücher.example>").await,
        "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("MAIL FROM:<a@acme.example> SMTPUTF8").await,
        "250 2.1.0 OK"
    );
    assert_eq!(c.cmd("RCPT TO:<jörg@bücher.example>").await, "250 2.1.5 OK");
    relay.shutdown().await;
}

#[tokio::test]
async fn the_local_part_reaches_the_spool_with_its_case_and_the_helo_cannot_forge_a_trace() {
    let (_dir, relay) = relay().await;
    let mut accepted = relay.accepted_messages();
    let mut c = greeted(&relay, "evil.example(by;trusted.example)").await;
    assert_eq!(
        c.cmd("MAIL FROM:<App.Sender@ACME.example>").await,
        "250 2.1.0 OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<Bob.Smith@Dest.EXAMPLE>").await,
        "250 2.1.5 OK"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    let id = queue_id(&c.cmd("Subject: case\r\n\r\nbody\r\n.").await);
    let env = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.queue_id.to_string(), id);
    assert_eq!(env.mail_from, "App.Sender@acme.example");
    assert_eq!(env.rcpts, ["Bob.Smith@dest.example"]);
    let (_, data) = relay.spool().read(env.queue_id).unwrap();
    let data = String::from_utf8(data).unwrap();
    assert!(
        data.starts_with("Received: from unknown ([127.0.0.1])\r\n"),
        "{data}"
    );
    assert!(!data.contains("trusted.example"), "{data}");
    relay.shutdown().await;
}

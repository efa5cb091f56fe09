//! International mail through the whole relay (session, spool, delivery) to in-process
//! sinks on loopback: an IDN recipient takes the route written for its A-label (with that
//! route's TLS policy), SMTPUTF8 and `BODY=8BITMIME` reach a downstream that offers them,
//! and a UTF-8 address to a downstream without SMTPUTF8 bounces `5.6.7`.

use std::time::Duration;

mod common;

use common::{Client, config, connect};
use relay::config::{
    HostConfig, RelayConfig, RouteConfig, RouteHosts, RouteMatcher, RouteTlsConfig,
};
use relay::delivery::testing::{ReceivedMessage, SinkConfig, TestSink};
use relay::{RelayHandle, StartOptions};
use tokio::net::TcpStream;

fn tls(require_tls: bool) -> RouteTlsConfig {
    RouteTlsConfig {
        require_tls,
        require_ca_signed: false,
        validate_hostname: false,
        extra_ca_file: None,
        implicit: false,
    }
}

fn route(name: &str, domains: &[&str], port: u16, tls: RouteTlsConfig) -> RouteConfig {
    RouteConfig {
        rate_limit: None,
        name: format!("acme/{name}"),
        description: format!("test route {name}"),
        matcher: RouteMatcher::Domains(domains.iter().map(|d| d.to_string()).collect()),
        hosts: RouteHosts::Single(HostConfig {
            host: "127.0.0.1".into(),
            port,
        }),
        mx_lookup: false,
        tls,
        auth: None,
    }
}

/// A relay whose default route (and so the DSNs to `app@acme.example`) goes to `home`,
/// with `routes` in front of it.
async fn relay_with(
    dir: &std::path::Path,
    home: &TestSink,
    routes: Vec<RouteConfig>,
) -> RelayHandle {
    let mut cfg: RelayConfig = config(dir, home.port());
    let default = cfg.routes.remove(0);
    cfg.routes = routes;
    cfg.routes.push(default);
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

/// One message: `mail` is the whole MAIL command (with its parameters).
async fn send(c: &mut Client<TcpStream>, mail: &str, rcpts: &[&str], body: &str) -> String {
    assert_eq!(c.cmd(mail).await, "250 2.1.0 OK", "{mail}");
    for rcpt in rcpts {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
            "250 2.1.5 OK",
            "{rcpt}"
        );
    }
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.cmd(&format!("{body}\r\n.")).await
}

async fn client(relay: &RelayHandle) -> Client<TcpStream> {
    let mut c = connect(relay.smtp_addr()).await;
    let ehlo = c.cmd("EHLO client.acme.example").await;
    assert!(
        ehlo.lines().any(|l| l.get(4..) == Some("SMTPUTF8")),
        "{ehlo}"
    );
    c
}

async fn received(sink: &TestSink, n: usize) -> Vec<ReceivedMessage> {
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(n))
        .await
        .expect("the sink received the messages in time");
    sink.messages()
}

const UTF8_BODY: &str = "From: <app@acme.example>\r\nSubject: Grüße\r\n\r\nSchöne Grüße.";

#[tokio::test]
async fn an_idn_recipient_takes_the_route_written_for_its_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let books = TestSink::start(SinkConfig::default()).await.unwrap();
    let munich = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay_with(
        dir.path(),
        &home,
        vec![
            route(
                "books",
                &["xn--bcher-kva.example"],
                books.port(),
                tls(false),
            ),
            // Written with a U-label: matches the A-label form a client may send.
            route("munich", &["*.münchen.example"], munich.port(), tls(false)),
        ],
    )
    .await;
    let mut c = client(&relay).await;
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> SMTPUTF8",
        &["leser@Bücher.example"],
        "Subject: books",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example>",
        &["x@mail.xn--mnchen-3ya.example"],
        "Subject: munich",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");

    let got = received(&books, 1).await;
    assert_eq!(got[0].rcpt_to, ["leser@xn--bcher-kva.example"]);
    let got = received(&munich, 1).await;
    assert_eq!(got[0].rcpt_to, ["x@mail.xn--mnchen-3ya.example"]);
    assert!(
        home.messages().is_empty(),
        "nothing went by the default route"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn an_idn_recipient_gets_the_tls_policy_of_its_a_label_route() {
    let dir = tempfile::tempdir().unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    // The route requires TLS; its host offers none.
    let books = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay_with(
        dir.path(),
        &home,
        vec![route(
            "books",
            &["xn--bcher-kva.example"],
            books.port(),
            tls(true),
        )],
    )
    .await;
    let mut c = client(&relay).await;
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> SMTPUTF8",
        &["leser@bücher.example"],
        "Subject: must be encrypted",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");

    // Not sent in clear (neither to the route's host nor by the default route): bounced.
    let dsns = received(&home, 1).await;
    assert_eq!(dsns[0].mail_from, "");
    assert_eq!(dsns[0].rcpt_to, ["app@acme.example"]);
    let dsn = String::from_utf8_lossy(&dsns[0].data);
    assert!(dsn.contains("Status: 5.7.10"), "{dsn}");
    assert!(dsn.contains("leser@xn--bcher-kva.example"), "{dsn}");
    assert!(books.messages().is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn smtputf8_and_8bitmime_are_carried_to_a_downstream_that_offers_them() {
    let dir = tempfile::tempdir().unwrap();
    let home = TestSink::start(SinkConfig {
        smtputf8: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let relay = relay_with(dir.path(), &home, vec![]).await;
    let mut c = client(&relay).await;
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> SMTPUTF8 BODY=8BITMIME",
        &["jörg@dest.example"],
        UTF8_BODY,
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    let got = received(&home, 1).await;
    assert_eq!(got[0].rcpt_to, ["jörg@dest.example"]);
    assert!(
        got[0].mail_params.contains(&"SMTPUTF8".to_string()),
        "{:?}",
        got[0].mail_params
    );
    assert!(
        got[0].mail_params.contains(&"BODY=8BITMIME".to_string()),
        "{:?}",
        got[0].mail_params
    );
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("Subject: Grüße"));
    // RFC 6531 §4.3: our trace header names the SMTPUTF8 transaction.
    assert!(text.contains(" with UTF8SMTP id "), "{text}");

    // Only BODY=8BITMIME declared: only that is carried.
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> BODY=8BITMIME",
        &["bob@dest.example"],
        "Subject: 8bit\r\n\r\nSch\u{f6}n.",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    let got = received(&home, 2).await;
    assert_eq!(got[1].mail_params, ["BODY=8BITMIME"]);
    assert!(String::from_utf8_lossy(&got[1].data).contains(" with ESMTP id "));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_utf8_address_to_a_downstream_without_smtputf8_bounces_5_6_7() {
    let dir = tempfile::tempdir().unwrap();
    let home = TestSink::start(SinkConfig::default()).await.unwrap();
    let plain = TestSink::start(SinkConfig::default()).await.unwrap();
    let relay = relay_with(
        dir.path(),
        &home,
        vec![route(
            "plain",
            &["dest.example", "xn--bcher-kva.example"],
            plain.port(),
            tls(false),
        )],
    )
    .await;
    let mut c = client(&relay).await;
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> SMTPUTF8 BODY=8BITMIME",
        &["jörg@dest.example"],
        UTF8_BODY,
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    let dsns = received(&home, 1).await;
    assert_eq!(dsns[0].rcpt_to, ["app@acme.example"]);
    let dsn = String::from_utf8_lossy(&dsns[0].data);
    assert!(dsn.contains("Status: 5.6.7"), "{dsn}");
    assert!(dsn.contains("SMTPUTF8"), "the DSN says why: {dsn}");
    assert!(plain.messages().is_empty(), "nothing was sent downstream");

    // An IDN domain with an ASCII local part needs no SMTPUTF8 once it is an A-label.
    let reply = send(
        &mut c,
        "MAIL FROM:<app@acme.example> SMTPUTF8",
        &["leser@bücher.example"],
        "Subject: ascii address",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    let got = received(&plain, 1).await;
    assert_eq!(got[0].rcpt_to, ["leser@xn--bcher-kva.example"]);
    assert!(
        !got[0].mail_params.contains(&"SMTPUTF8".to_string()),
        "not offered, not sent: {:?}",
        got[0].mail_params
    );
    assert_eq!(home.messages().len(), 1, "no second bounce");
    relay.shutdown().await;
}

//! Must show — hot reload (SPEC §3.7): the relay container watches its config file;
//! disabling the client's range in the manifests and copying the rewritten file in makes
//! new sessions from that client fail with `550 5.7.1` within seconds, while a session
//! opened before the change finishes its message and is delivered.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use conformance::docker::{self, Scenario, host};

/// A raw SMTP session from the test host (the network's gateway address).
struct Held {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Held {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut held = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        held.reply();
        held
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        write!(self.writer, "{line}\r\n").unwrap();
        self.reply()
    }
}

#[test]
fn disabling_a_range_takes_effect_within_seconds_without_dropping_open_sessions() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("reload").unwrap();
    let mut m = base_manifests();
    m.ranges = vec![range("office", &scn.subnet4(), true)];
    let files = start_relay_and_sink(&mut scn, &m);
    scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "none"))
        .unwrap();
    let client = scn.get("client");
    docker::sendmail(
        client,
        "sender@acme.example",
        &["bob@example.net"],
        "before",
    )
    .unwrap();
    delivered(&scn, "sink", "before");

    // A session opened under the old configuration, mid-transaction.
    let relay_addr = SocketAddr::new(scn.ip4(host::RELAY).into(), 2525);
    let mut held = Held::open(relay_addr);
    assert!(held.command("EHLO held.acme.example").starts_with("250"));
    assert!(
        held.command("MAIL FROM:<sender@acme.example>")
            .starts_with("250 ")
    );
    assert!(
        held.command("RCPT TO:<carol@example.net>")
            .starts_with("250 ")
    );

    m.ranges[0].enabled = false;
    files.write(&m).unwrap();
    let reloaded = docker::poll(Duration::from_secs(15), || {
        scn.get("relay")
            .logs()
            .contains("configuration reloaded")
            .then_some(())
    });
    assert!(
        reloaded.is_some(),
        "relay did not reload:\n{}",
        scn.get("relay").logs()
    );

    docker::sendmail(client, "sender@acme.example", &["bob@example.net"], "after").unwrap();
    bounced(
        client,
        &format!(
            "550 5.7.1 Client host [{}] is not allowed",
            scn.ip4(host::CLIENT)
        ),
    );

    // The held session is still open and its message is accepted and delivered.
    assert!(held.command("DATA").starts_with("354"));
    let end = held.command(
        "Subject: held\r\nFrom: <sender@acme.example>\r\n\r\nopened before the reload\r\n.",
    );
    assert!(end.starts_with("250 "), "{end}");
    held.command("QUIT");
    delivered(&scn, "sink", "held");
    assert_eq!(count_subject(&scn, "sink", "after"), 0);
}

//! Must show — PROXY protocol behind HAProxy (SPEC §3.2): HAProxy in TCP mode sends a v2
//! header (`send-proxy-v2`) and the relay judges the client it names, not HAProxy, although
//! HAProxy's own address lies in an enabled range: a client inside a range relays and the
//! `Received:` header names it; a client outside every range gets `550 5.7.1` naming its own
//! address. With `required: true`, a v1 or v2 header from a peer outside `trustedProxies`
//! (one that claims an allowed client), a connection without a header from that peer, and a
//! silent connection from the trusted proxy itself are all closed before any greeting, and
//! nothing they sent is relayed. With `required: false` (copied in, hot reload) a peer
//! outside `trustedProxies` is a direct client judged by its own address, and a header it
//! sends after the greeting closes the connection.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use conformance::docker::{self, ClientOptions, Container, Scenario, host};

/// A client in no range: only the address HAProxy reports decides.
const OUTSIDER: u8 = 60;
/// The relay's plain SMTP port in its container.
const RELAY_SMTP: u16 = 2525;

/// HAProxy in front of the relay's port 25 (2525 in the container), as the README shows it.
fn haproxy_cfg(relay: Ipv4Addr) -> String {
    format!(
        "global
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 10s
    timeout client  5m
    timeout server  5m

frontend smtp
    bind :25
    default_backend relay_smtp
backend relay_smtp
    server relay {relay}:{RELAY_SMTP} send-proxy-v2 check
"
    )
}

/// A PROXY v2 header (PROXY command, TCP over IPv4), written out byte by byte from the
/// protocol's specification.
fn v2_header(source: Ipv4Addr, dest: Ipv4Addr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&source.octets());
    h.extend_from_slice(&dest.octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&RELAY_SMTP.to_be_bytes());
    h
}

fn v1_header(source: Ipv4Addr, dest: Ipv4Addr) -> Vec<u8> {
    format!("PROXY TCP4 {source} {dest} 40000 {RELAY_SMTP}\r\n").into_bytes()
}

/// Connects from the test host (the network's gateway, outside `trustedProxies`), sends
/// `preamble` followed by a whole pipelined mail transaction with Subject `subject`, and
/// returns everything the relay sent before it closed the connection.
fn raw_session(relay: SocketAddr, preamble: &[u8], subject: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&relay, Duration::from_secs(10)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut out = preamble.to_vec();
    out.extend_from_slice(
        format!(
            "EHLO client.acme.example\r\nMAIL FROM:<sender@acme.example>\r\n\
             RCPT TO:<bob@example.net>\r\nDATA\r\nSubject: {subject}\r\n\r\nforged\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    );
    // The relay may already have closed when this arrives; what it sent is what counts.
    let _ = stream.write_all(&out);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the relay neither answered nor closed ({e}); got {got:?}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Opens a connection to the relay from inside `from` and sends nothing; returns what the
/// relay sent, and after how many seconds it closed (the shell's `timeout` ends it at 20).
fn silent_session(from: &Container, relay: Ipv4Addr) -> (String, u64) {
    let out = from
        .exec(&[
            "bash",
            "-c",
            "exec 3<>\"/dev/tcp/$0/$1\" || exit 9; start=$(date +%s); \
             timeout 20 cat <&3; echo; echo \"closed after $(( $(date +%s) - start ))\"",
            &relay.to_string(),
            &RELAY_SMTP.to_string(),
        ])
        .unwrap();
    let (sent, closed) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
    let seconds = closed
        .trim()
        .strip_prefix("closed after ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    (sent.trim().to_string(), seconds)
}

#[test]
fn haproxy_names_the_client_and_forged_or_missing_headers_are_closed_without_greeting() {
    if docker::skip_without_docker() {
        return;
    }
    let mut scn = Scenario::new("proxy").unwrap();
    let relay_ip = scn.ip4(host::RELAY);
    let proxy_ip = scn.ip4(host::PROXY);
    let inside_ip = scn.ip4(host::CLIENT); // .20, in the enabled 10.a.b.16/28
    let outside_ip = scn.ip4(OUTSIDER);
    let mut m = base_manifests();
    m.ranges = vec![
        range("office", &format!("{}/28", scn.ip4(16)), true),
        // HAProxy's own address may relay: if the relay judged the peer instead of the
        // client the header names, the outsider would get through.
        range("load-balancer", &format!("{proxy_ip}/32"), true),
    ];
    m.org.proxy_protocol = Some(crds::ProxyProtocolSpec {
        trusted_proxies: vec![format!("{proxy_ip}/32")],
        required: true,
    });
    let files = start_relay_and_sink(&mut scn, &m);
    scn.haproxy("haproxy", host::PROXY, &haproxy_cfg(relay_ip))
        .unwrap();
    let via_haproxy = ClientOptions {
        relay: IpAddr::V4(proxy_ip),
        port: 25,
        ..client_opts(&scn, "may")
    };
    scn.postfix_client("client", host::CLIENT, &via_haproxy)
        .unwrap();
    scn.postfix_client("outsider", OUTSIDER, &via_haproxy)
        .unwrap();
    for role in ["client", "outsider"] {
        docker::sendmail(
            scn.get(role),
            "sender@acme.example",
            &["bob@example.net"],
            &format!("from-{role}"),
        )
        .unwrap();
    }

    // Forged headers straight to the relay, each claiming the allowed client's address.
    let relay = SocketAddr::new(IpAddr::V4(relay_ip), RELAY_SMTP);
    let forged = [
        ("forged-v2", v2_header(inside_ip, relay_ip)),
        ("forged-v1", v1_header(inside_ip, relay_ip)),
        ("no-header", Vec::new()),
    ];
    for (subject, preamble) in &forged {
        let got = raw_session(relay, preamble, subject);
        assert!(
            got.is_empty(),
            "{subject}: a peer outside trustedProxies is closed before any greeting, got {got:?}"
        );
    }
    // The trusted proxy itself must send a header when one is required (5 s to start it).
    let (got, seconds) = silent_session(scn.get("haproxy"), relay_ip);
    assert!(
        got.is_empty() && seconds <= 10,
        "a silent connection from the trusted proxy is closed without a greeting \
         (got {got:?}, closed after {seconds} s)"
    );

    let msg = delivered(&scn, "sink", "from-client");
    assert!(
        msg.contains(&format!(
            "Received: from client.acme.example ([{inside_ip}])"
        )),
        "the relay's Received header names the client HAProxy reported:\n{msg}"
    );
    assert!(
        !msg.contains(&format!("[{proxy_ip}]")),
        "HAProxy's address appears nowhere in the message:\n{msg}"
    );
    let expected = format!("550 5.7.1 Client host [{outside_ip}] is not allowed to relay");
    bounced(scn.get("outsider"), &expected);
    assert_eq!(count_subject(&scn, "sink", "from-outsider"), 0);

    // Headers optional: a peer outside trustedProxies is a direct client, known by its
    // own address, and a header from it shows up as its first line and closes the session.
    let mut optional = m.clone();
    if let Some(p) = optional.org.proxy_protocol.as_mut() {
        p.required = false;
    }
    files.write(&optional).unwrap();
    let direct = docker::poll(OUTCOME, || {
        let got = raw_session(relay, b"", "direct");
        got.starts_with("220 ").then_some(got)
    })
    .expect("with required: false a direct client without a header is greeted");
    // The test host's address on the network is in no range (nor is it `inside_ip`).
    assert!(
        direct.contains("550 5.7.1 Client host [") && !direct.contains(&format!("[{inside_ip}]")),
        "the direct client is judged by its own address:\n{direct}"
    );
    let forged_late = [
        ("forged-v2-optional", v2_header(inside_ip, relay_ip)),
        ("forged-v1-optional", v1_header(inside_ip, relay_ip)),
    ];
    for (subject, preamble) in &forged_late {
        let got = raw_session(relay, preamble, subject);
        assert!(
            got.starts_with("220 ") && got.lines().count() == 1,
            "{subject}: after the greeting a header from outside trustedProxies closes the \
             connection without another reply, got {got:?}"
        );
    }

    for subject in forged.iter().chain(&forged_late).map(|(s, _)| s) {
        assert_eq!(
            count_subject(&scn, "sink", subject),
            0,
            "{subject} was relayed"
        );
    }
}

//! The relay behind a load balancer (SPEC §3.2), over real TCP on loopback: a trusted
//! proxy's PROXY header (v1 or v2) names the client that allow ranges, per-IP caps and
//! `Received:` see; a header from an untrusted address, or none where one is required,
//! closes the connection; on the implicit-TLS port the header comes before the handshake.
//!
//! The "proxy" is the test itself, connecting from 127.0.0.2 (Linux routes all of 127/8 to
//! the loopback interface); 127.0.0.3 plays an untrusted client.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, config, connector, queue_id, tls_files};
use ipnet::IpNet;
use relay::config::*;
use relay::ingress::proxy::{v1_header, v2_header};
use relay::{RelayHandle, StartOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const PROXY: &str = "127.0.0.2";
const INSIDE: &str = "192.0.2.10";
const OUTSIDE: &str = "198.51.100.7";

/// Loopback (so the proxy's own address) and 192.0.2.0/24 may relay; 127.0.0.2 is the
/// one trusted proxy. Mail is held (the default route goes to a closed port).
fn behind_proxy(dir: &Path, required: bool) -> RelayConfig {
    let mut cfg = config(&dir.join("spool"), 9);
    if let Some(ranges) = cfg.settings[0].ip_ranges.as_mut() {
        ranges.push(RangeConfig {
            name: "acme/office".into(),
            network: "192.0.2.0/24".parse().unwrap(),
        });
    }
    cfg.proxy_protocol = Some(ProxyProtocolConfig {
        trusted_proxies: vec![format!("{PROXY}/32").parse::<IpNet>().unwrap()],
        required,
    });
    cfg
}

async fn start(cfg: RelayConfig) -> RelayHandle {
    relay::start(cfg, StartOptions::default()).await.unwrap()
}

async fn tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

fn client_at(ip: &str) -> SocketAddr {
    format!("{ip}:40000").parse().unwrap()
}

/// A connection from `src` that starts with `header`, greeted.
async fn through_proxy(src: &str, addr: SocketAddr, header: &[u8]) -> Client<TcpStream> {
    let mut tcp = tcp_from(src, addr).await;
    tcp.write_all(header).await.unwrap();
    let mut c = Client {
        io: BufReader::new(tcp),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    c
}

/// True when the server closes `tcp` without sending anything (within 10 s).
async fn closed_without_a_word(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Sends one message and returns the `Received:` header the relay wrote before it.
async fn received_of_one_message(relay: &RelayHandle, c: &mut Client<TcpStream>) -> String {
    assert!(c.cmd("EHLO client.acme.example").await.starts_with("250"));
    let (_, refused, done) = c
        .transaction(
            "app@acme.example",
            &["bob@dest.example".to_string()],
            "Subject: x\r\n\r\nx",
        )
        .await;
    assert!(refused.is_empty(), "{refused:?}");
    let id: relay::QueueId = queue_id(&done.unwrap()).parse().unwrap();
    let (_, data) = relay.spool().read(id).unwrap();
    let data = String::from_utf8(data).unwrap();
    let end = data.find(";\r\n").unwrap();
    data[..end].to_string()
}

#[tokio::test]
async fn a_client_inside_a_range_behind_a_trusted_proxy_relays_and_received_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), true)).await;
    let addr = relay.smtp_addr();
    let header = v2_header(client_at(INSIDE), addr, &[]);
    let mut c = through_proxy(PROXY, addr, &header).await;
    let received = received_of_one_message(&relay, &mut c).await;
    assert!(
        received.starts_with(&format!("Received: from client.acme.example ([{INSIDE}])")),
        "{received}"
    );
    assert!(!received.contains(PROXY), "{received}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_outside_every_range_is_refused_by_its_own_address_although_the_proxy_is_inside() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), true)).await;
    let addr = relay.smtp_addr();
    let header = v2_header(client_at(OUTSIDE), addr, &[]);
    let mut c = through_proxy(PROXY, addr, &header).await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<app@acme.example>").await,
        format!("550 5.7.1 Client host [{OUTSIDE}] is not allowed to relay through this server")
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_v1_header_names_the_client_too() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), true)).await;
    let addr = relay.submission_addr();
    let header = v1_header(client_at(INSIDE), addr);
    let mut c = through_proxy(PROXY, addr, header.as_bytes()).await;
    let received = received_of_one_message(&relay, &mut c).await;
    assert!(received.contains(&format!("([{INSIDE}])")), "{received}");
    let header = v1_header(client_at(OUTSIDE), addr);
    let mut c = through_proxy(PROXY, addr, header.as_bytes()).await;
    c.cmd("EHLO client.example").await;
    assert!(
        c.cmd("MAIL FROM:<app@acme.example>")
            .await
            .starts_with(&format!("550 5.7.1 Client host [{OUTSIDE}]"))
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_header_from_an_address_that_is_not_a_trusted_proxy_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Not required: the untrusted address may still connect directly, but not pose as a
    // proxy.
    let relay = start(behind_proxy(dir.path(), false)).await;
    let addr = relay.smtp_addr();
    for header in [
        v2_header(client_at(INSIDE), addr, &[]),
        v1_header(client_at(INSIDE), addr).into_bytes(),
    ] {
        let mut tcp = tcp_from("127.0.0.3", addr).await;
        tcp.write_all(&header).await.unwrap();
        let mut c = Client {
            io: BufReader::new(tcp),
        };
        assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
        assert!(c.closed().await, "a forged header must end the connection");
    }
    // The same address without a header is an ordinary client, known by its own address.
    let mut c = through_proxy("127.0.0.3", addr, b"").await;
    let received = received_of_one_message(&relay, &mut c).await;
    assert!(received.contains("([127.0.0.3])"), "{received}");
    relay.shutdown().await;
}

#[tokio::test]
async fn when_required_a_connection_without_a_header_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), true)).await;
    let addr = relay.smtp_addr();
    // From the trusted proxy, silent: closed once the header's time is up, never greeted.
    let started = Instant::now();
    let mut silent = tcp_from(PROXY, addr).await;
    assert!(closed_without_a_word(&mut silent).await);
    assert!(started.elapsed() >= Duration::from_secs(4));
    // From the trusted proxy, speaking SMTP at once: closed.
    let mut talking = tcp_from(PROXY, addr).await;
    talking.write_all(b"EHLO client.example\r\n").await.unwrap();
    assert!(closed_without_a_word(&mut talking).await);
    // From anywhere else: closed at once.
    let mut direct = tcp_from("127.0.0.3", addr).await;
    assert!(closed_without_a_word(&mut direct).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn when_not_required_the_trusted_proxy_may_connect_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), false)).await;
    let addr = relay.smtp_addr();
    let mut c = through_proxy(PROXY, addr, b"").await;
    let received = received_of_one_message(&relay, &mut c).await;
    assert!(received.contains(&format!("([{PROXY}])")), "{received}");
    relay.shutdown().await;
}

#[tokio::test]
async fn an_invalid_header_from_the_trusted_proxy_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(behind_proxy(dir.path(), false)).await;
    let addr = relay.smtp_addr();
    let mut tcp = tcp_from(PROXY, addr).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.10 nonsense 1 25\r\n")
        .await
        .unwrap();
    assert!(closed_without_a_word(&mut tcp).await);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_per_ip_cap_counts_the_clients_behind_the_proxy_not_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = behind_proxy(dir.path(), true);
    cfg.limits.connections_per_ip = 1;
    let relay = start(cfg).await;
    let addr = relay.smtp_addr();
    let mut first = through_proxy(PROXY, addr, &v2_header(client_at(INSIDE), addr, &[])).await;
    // Another client through the same proxy has its own slot.
    let mut other = through_proxy(PROXY, addr, &v2_header(client_at(OUTSIDE), addr, &[])).await;
    assert!(other.cmd("NOOP").await.starts_with("250"));
    // A second connection of the first client is over its cap.
    let mut again = tcp_from(PROXY, addr).await;
    again
        .write_all(&v2_header(client_at(INSIDE), addr, &[]))
        .await
        .unwrap();
    let mut again = Client {
        io: BufReader::new(again),
    };
    assert_eq!(
        again.reply().await,
        format!("421 4.7.0 Too many connections from {INSIDE}")
    );
    assert!(first.cmd("NOOP").await.starts_with("250"));
    relay.shutdown().await;
}

/// An IPv6 client usually holds a whole /64 (SLAAC, privacy addresses): the per-IP cap
/// counts the /64, so one /64 cannot take every slot by using a new address for each
/// connection; another /64 has its own.
#[tokio::test]
async fn the_per_ip_cap_counts_an_ipv6_client_by_its_64() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = behind_proxy(dir.path(), true);
    cfg.limits.connections_per_ip = 2;
    let relay = start(cfg).await;
    let addr = relay.smtp_addr();
    let v6 = |ip: &str| -> SocketAddr { format!("[{ip}]:40000").parse().unwrap() };
    let mut first = through_proxy(PROXY, addr, &v2_header(v6("2001:db8:1:2::1"), addr, &[])).await;
    let _second = through_proxy(PROXY, addr, &v2_header(v6("2001:db8:1:2::abcd"), addr, &[])).await;
    let mut third = tcp_from(PROXY, addr).await;
    third
        .write_all(&v2_header(v6("2001:db8:1:2:ffff::3"), addr, &[]))
        .await
        .unwrap();
    let mut third = Client {
        io: BufReader::new(third),
    };
    assert_eq!(
        third.reply().await,
        "421 4.7.0 Too many connections from 2001:db8:1:2::/64"
    );
    let mut elsewhere =
        through_proxy(PROXY, addr, &v2_header(v6("2001:db8:1:3::1"), addr, &[])).await;
    assert!(elsewhere.cmd("NOOP").await.starts_with("250"));
    assert!(first.cmd("NOOP").await.starts_with("250"));
    relay.shutdown().await;
}

#[tokio::test]
async fn on_the_implicit_tls_port_the_header_comes_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_der) = tls_files(dir.path());
    let mut cfg = behind_proxy(dir.path(), true);
    cfg.tls = Some(tls.clone());
    let relay = start(cfg).await;
    let addr = relay.smtps_addr();
    let name = || ServerName::try_from("localhost").unwrap();
    for (client, allowed) in [(INSIDE, true), (OUTSIDE, false)] {
        let mut tcp = tcp_from(PROXY, addr).await;
        tcp.write_all(&v2_header(client_at(client), addr, &[]))
            .await
            .unwrap();
        let tls = connector(&cert_der).connect(name(), tcp).await.unwrap();
        let mut c = Client {
            io: BufReader::new(tls),
        };
        assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
        c.cmd("EHLO client.example").await;
        let reply = c.cmd("MAIL FROM:<app@acme.example>").await;
        if allowed {
            assert_eq!(reply, "250 2.1.0 OK");
        } else {
            assert_eq!(
                reply,
                format!(
                    "550 5.7.1 Client host [{client}] is not allowed to relay through this server"
                )
            );
        }
    }
    // A header from an untrusted address on 465 ends the connection before any TLS.
    let mut cfg = behind_proxy(&dir.path().join("second"), false);
    cfg.tls = Some(tls);
    let second = start(cfg).await;
    let mut forged = tcp_from("127.0.0.3", second.smtps_addr()).await;
    forged
        .write_all(&v2_header(client_at(INSIDE), second.smtps_addr(), &[]))
        .await
        .unwrap();
    assert!(closed_without_a_word(&mut forged).await);
    // While the same address's TLS client is served, as itself.
    let tcp = tcp_from("127.0.0.3", second.smtps_addr()).await;
    let tls = connector(&cert_der).connect(name(), tcp).await.unwrap();
    let mut c = Client {
        io: BufReader::new(tls),
    };
    assert_eq!(c.reply().await, "220 relay.acme.example ESMTP");
    relay.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn turning_the_proxy_protocol_on_applies_to_the_next_connection_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let behind = behind_proxy(dir.path(), true);
    let mut direct_cfg = behind.clone();
    direct_cfg.proxy_protocol = None;
    let relay = start(direct_cfg).await;
    let addr = relay.smtp_addr();
    // Without it, a direct client is greeted.
    let _open = through_proxy("127.0.0.3", addr, b"").await;
    relay.reload(behind).unwrap();
    let mut direct = tcp_from("127.0.0.3", addr).await;
    assert!(closed_without_a_word(&mut direct).await);
    let header = v2_header(client_at(OUTSIDE), addr, &[]);
    let mut c = through_proxy(PROXY, addr, &header).await;
    c.cmd("EHLO client.example").await;
    assert!(
        c.cmd("MAIL FROM:<app@acme.example>")
            .await
            .starts_with(&format!("550 5.7.1 Client host [{OUTSIDE}]"))
    );
    relay.shutdown().await;
}

//! An in-process authoritative DNS server (hickory-server, in-memory zone `test.` on
//! 127.0.0.1, UDP and TCP) for the delivery tests that resolve MX hosts.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

pub fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A DNS record of the zone `test.`.
pub enum Rec<'a> {
    Mx(&'a str, u16, &'a str),
    Addr(&'a str, IpAddr),
}

/// An authoritative server for the zone `test.` with `records`; names outside them are
/// NXDOMAIN.
pub async fn dns(records: &[Rec<'_>]) -> (SocketAddr, Server<Catalog>) {
    let origin = name("test.");
    let mut zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        60,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for rec in records {
        let (owner, rdata) = match rec {
            Rec::Mx(owner, pref, exchange) => {
                let exchange = if *exchange == "." {
                    Name::root()
                } else {
                    name(exchange)
                };
                (*owner, RData::MX(MX::new(*pref, exchange)))
            }
            Rec::Addr(owner, IpAddr::V4(v4)) => (*owner, RData::A(A::from(*v4))),
            Rec::Addr(owner, IpAddr::V6(v6)) => (*owner, RData::AAAA(AAAA::from(*v6))),
        };
        zone.upsert_mut(Record::from_rdata(name(owner), 60, rdata), 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);
    // The UDP port is free; the same TCP port may not be (another test's connection): try
    // another port, a bounded number of times.
    let mut bound = None;
    for _ in 0..64 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            bound = Some((udp, addr, tcp));
            break;
        }
    }
    let (udp, addr, tcp) = bound.expect("a loopback port free for both UDP and TCP");
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 4096);
    (addr, server)
}

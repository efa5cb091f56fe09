//! Listening sockets on every address family the host (the pod) has (SPEC §3.9).
//!
//! [`listen`] binds a TCP listener. For the IPv6 wildcard `[::]` it makes a dual-stack
//! socket (`IPV6_V6ONLY` off, whatever the host's `net.ipv6.bindv6only` says), which takes
//! IPv4 clients too, as IPv4-mapped addresses; where the host has no IPv6 at all (a
//! kernel booted with `ipv6.disable=1`, a pod of an IPv4-only cluster) it falls back to
//! `0.0.0.0` on the same port and says so in the log. Any other address is bound as given.
//!
//! Not here: what is served on the socket (`ingress`, `admin`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections a listener queues before the kernel refuses more.
const BACKLOG: i32 = 1024;

/// A listener on `addr`; `[::]` is dual-stack, or `0.0.0.0` without IPv6 (see the
/// module's doc).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_with(addr, dual_stack)
}

/// [`listen`] with the way the dual-stack socket is made given (tests give one that
/// fails as a host without IPv6 does).
pub fn listen_with(
    addr: SocketAddr,
    dual: impl FnOnce(SocketAddr) -> io::Result<std::net::TcpListener>,
) -> io::Result<TcpListener> {
    let listener = match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => match dual(addr) {
            Ok(l) => l,
            // The port is taken, or may not be bound: IPv4 would say the same.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
                tracing::warn!(%addr, fallback = %v4, error = %e, "no IPv6 here: listening on IPv4 only");
                plain(v4)?
            }
        },
        _ => plain(addr)?,
    };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A dual-stack IPv6 listener: `IPV6_V6ONLY` off.
pub fn dual_stack(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn plain(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use tokio::net::TcpStream;

    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    #[tokio::test]
    async fn the_ipv6_wildcard_takes_ipv4_and_ipv6_clients() {
        if !has_ipv6_loopback() {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        }
        let listener = listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listener.local_addr().unwrap().is_ipv6());
        for client in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = client.parse().unwrap();
            let (connected, accepted) = tokio::join!(
                TcpStream::connect(SocketAddr::new(ip, port)),
                listener.accept()
            );
            connected.unwrap();
            let (_, peer) = accepted.unwrap();
            // IPv4 clients arrive as IPv4-mapped addresses on the dual-stack socket.
            let seen = match peer.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(std::net::IpAddr::V4)
                    .unwrap_or(std::net::IpAddr::V6(v6)),
                v4 => v4,
            };
            assert_eq!(seen, ip, "{client}");
        }
    }

    #[tokio::test]
    async fn without_ipv6_the_wildcard_falls_back_to_ipv4() {
        let no_ipv6 = |_| Err(io::Error::from_raw_os_error(97)); // EAFNOSUPPORT
        let listener = listen_with(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), no_ipv6).unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(local.ip(), std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let (connected, accepted) = tokio::join!(
            TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, local.port()))),
            listener.accept()
        );
        connected.unwrap();
        accepted.unwrap();
        // A port already taken is an error, not a fallback.
        let taken = |_| Err(io::Error::from(io::ErrorKind::AddrInUse));
        assert!(listen_with(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), taken).is_err());
    }

    #[tokio::test]
    async fn other_addresses_are_bound_as_given() {
        let listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        assert_eq!(
            listener.local_addr().unwrap().ip(),
            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }
}

//! Which unit a client is counted by, for the per-client connection cap and the AUTH
//! throttle.

use std::net::IpAddr;

/// The unit one client is counted by, for connection caps and AUTH throttling: an IPv4
/// address, or the /64 of an IPv6 one (a host usually holds a whole /64: SLAAC, privacy
/// addresses). IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

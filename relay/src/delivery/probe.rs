//! The "Test TLS connection" of a route (SPEC §2.4 status `TlsConnectionVerified`), used by
//! `relayctl test-tls` and the operator.
//!
//! [`probe_route`] connects to each host of a route (after MX lookup when the route says
//! so), says EHLO, starts TLS (or, for `tls.implicit`, starts with the TLS handshake),
//! verifies the certificate with the route's [`TlsPolicy`] and says QUIT. It never sends
//! the route's credentials. It sits above [`super::client`], [`super::mx`] and [`super::tls`] and uses
//! them as a delivery attempt does; MX-expanded addresses pass the same
//! [`DestinationGuard`]. It does not deliver mail.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{DeliveryConfig, HostConfig, RouteConfig, RouteHosts};

use super::client::{SessionError, SessionParams, SmtpConnection, StageTimeouts};
use super::guard::DestinationGuard;
use super::mx::MxResolver;
use super::tls::{TlsPolicy, TlsRequirement};

/// The result of probing one host of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// Host name (the MX host for MX routes) or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS was established and the certificate passed the route's checks.
    pub verified: bool,
    /// `Verified` details, or why not (the verifier's message for a certificate failure).
    pub message: String,
}

/// Every configured host of a route, primaries first.
fn route_hosts(route: &RouteConfig) -> Vec<HostConfig> {
    match &route.hosts {
        RouteHosts::Single(h) => vec![h.clone()],
        RouteHosts::Pool { primary, secondary } => primary
            .iter()
            .chain(secondary.iter())
            .map(|w| HostConfig {
                host: w.host.clone(),
                port: w.port,
            })
            .collect(),
    }
}

/// Probes each host of a route with its TLS policy.
///
/// A host verifies only when TLS was established and its certificate passed; a server
/// without STARTTLS does not verify, whatever `requireTls` says (the probe tests TLS).
pub async fn probe_route(route: &RouteConfig, delivery: &DeliveryConfig) -> Vec<HostProbe> {
    let hosts = route_hosts(route);
    let failed_all = |message: String| {
        hosts
            .iter()
            .map(|h| HostProbe {
                host: h.host.clone(),
                port: h.port,
                verified: false,
                message: message.clone(),
            })
            .collect::<Vec<_>>()
    };
    let resolver = match MxResolver::new(delivery) {
        Ok(r) => r,
        Err(e) => return failed_all(e.to_string()),
    };
    let guard = DestinationGuard::new(delivery, "");
    // The probe tests TLS: plaintext never verifies.
    let mut policy = TlsPolicy::from_route(&route.tls);
    policy.requirement = TlsRequirement::Required;
    let tls_config = match policy.client_config() {
        Ok(c) => c,
        Err(e) => return failed_all(e.to_string()),
    };
    // A probe answers a person waiting: every step gets the connect timeout, not the
    // minutes a delivery may wait.
    let timeouts =
        StageTimeouts::uniform(Duration::from_secs(delivery.connect_timeout_seconds.max(1)));
    let max_mx = delivery.max_mx_hosts.max(1) as usize;
    let mut probes = Vec::new();
    for pool_host in &hosts {
        let targets = if route.mx_lookup {
            match resolver.mx_hosts(&pool_host.host).await {
                Ok(mut t) => {
                    t.truncate(max_mx);
                    t
                }
                Err(e) => {
                    probes.push(HostProbe {
                        host: pool_host.host.clone(),
                        port: pool_host.port,
                        verified: false,
                        message: e.to_string(),
                    });
                    continue;
                }
            }
        } else {
            vec![pool_host.host.clone()]
        };
        for target in targets {
            let probe = |verified: bool, message: String| HostProbe {
                host: target.clone(),
                port: pool_host.port,
                verified,
                message,
            };
            let ip = match resolver.addresses(&target).await {
                Ok(a) => match a.first() {
                    Some(ip) => *ip,
                    None => continue,
                },
                Err(e) => {
                    probes.push(probe(false, e.to_string()));
                    continue;
                }
            };
            if route.mx_lookup && !guard.may_dial(ip) {
                probes.push(probe(
                    false,
                    "not probed: the MX host is in a network MX delivery does not go to".into(),
                ));
                continue;
            }
            let params = SessionParams {
                host: target.clone(),
                addr: SocketAddr::new(ip, pool_host.port),
                helo_name: "probe.invalid".to_string(),
                policy: policy.clone(),
                tls_config: tls_config.clone(),
                timeouts,
                plaintext: false,
                // The probe checks TLS only; it never sends the route's credentials.
                auth: None,
            };
            match SmtpConnection::open(&params).await {
                Ok(conn) => {
                    conn.quit().await;
                    probes.push(probe(true, "Verified".to_string()));
                }
                Err(SessionError::Temporary(m)) | Err(SessionError::TlsHandshake(m)) => {
                    probes.push(probe(false, m))
                }
                Err(SessionError::Permanent { diagnostic, .. })
                | Err(SessionError::AuthRejected { diagnostic, .. }) => {
                    probes.push(probe(false, diagnostic))
                }
            }
        }
    }
    probes
}

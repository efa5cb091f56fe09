//! The "Test TLS connection" of a MailRoute, as the operator runs it periodically.
//!
//! [`TlsProber`] is the seam between the controller and the delivery engine: the
//! controller decides *when* to probe and turns results into the `TlsConnectionVerified`
//! condition; a prober decides *how* (connect, STARTTLS, verify with the route's policy).
//! This module owns only the trait and the prober used when probing is switched off.

use std::future::Future;

use relay::config::{DeliveryConfig, RouteConfig};

/// Probes the hosts of one route with the route's TLS policy.
pub trait TlsProber: Send + Sync + 'static {
    /// One entry per host probed: `host:port` and `Ok(())` when the TLS handshake and
    /// certificate checks the route asks for passed, else the verifier's message.
    /// An empty result means "not probed" and leaves the route's condition unchanged.
    fn probe(
        &self,
        route: &RouteConfig,
        delivery: &DeliveryConfig,
    ) -> impl Future<Output = Vec<(String, Result<(), String>)>> + Send;
}

/// A prober that probes nothing: routes keep whatever `TlsConnectionVerified` they had.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbingDisabled;

impl TlsProber for ProbingDisabled {
    async fn probe(
        &self,
        _route: &RouteConfig,
        _delivery: &DeliveryConfig,
    ) -> Vec<(String, Result<(), String>)> {
        Vec::new()
    }
}

/// The real prober: the delivery engine's own TLS check (`relayctl test-tls` uses the same),
/// so a route shown as verified is one delivery will accept.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryProber;

impl TlsProber for DeliveryProber {
    async fn probe(
        &self,
        route: &RouteConfig,
        delivery: &DeliveryConfig,
    ) -> Vec<(String, Result<(), String>)> {
        relay::delivery::tls::probe_route(route, delivery)
            .await
            .into_iter()
            .map(|h| {
                let verdict = if h.verified { Ok(()) } else { Err(h.message) };
                (format!("{}:{}", h.host, h.port), verdict)
            })
            .collect()
    }
}

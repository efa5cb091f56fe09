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
        relay::delivery::probe::probe_route(route, delivery)
            .await
            .into_iter()
            .map(|h| {
                let verdict = if h.verified { Ok(()) } else { Err(h.message) };
                (format!("{}:{}", h.host, h.port), verdict)
            })
            .collect()
    }
}

/// The verdict on one host as status and Events show it.
///
/// Only what the TLS check concluded is reported: a connection or name-resolution failure
/// becomes one fixed sentence, so that a route cannot be used to learn which hosts and
/// ports of the cluster's network answer. Verifier messages that embed the time of
/// verification (rustls' "expired" and "not valid yet" errors) lose it, so an unchanged
/// failure reads the same at every probe and is not a new Event each time.
pub fn verdict(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if !(lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")) {
        return "no TLS verdict: the host could not be reached or did not answer".into();
    }
    without_verification_time(message)
}

/// Removes rustls' "verification time N (UNIX), but " and " (N seconds ago)" / " (N seconds
/// in future)", and shows the certificate's own bound as a date.
fn without_verification_time(message: &str) -> String {
    let mut out = message.to_string();
    if let Some(start) = out.find("verification time ")
        && let Some(len) = out[start..].find("but ")
    {
        out.replace_range(start..start + len + "but ".len(), "");
    }
    for tail in [" seconds ago)", " seconds in future)"] {
        if let Some(end) = out.find(tail)
            && let Some(open) = out[..end].rfind(" (")
            && out[open + 2..end].bytes().all(|b| b.is_ascii_digit())
        {
            out.replace_range(open..end + tail.len(), "");
        }
    }
    for bound in ["not valid after ", "not valid before "] {
        if let Some(at) = out.find(bound) {
            let from = at + bound.len();
            let digits = out[from..].bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(secs) = out[from..from + digits].parse::<i64>()
                && let Ok(t) = k8s_openapi::jiff::Timestamp::from_second(secs)
            {
                out.replace_range(from..from + digits, &t.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn an_expired_certificate_reads_the_same_at_every_probe() {
        let at = |now: u64| {
            format!(
                "invalid peer certificate: certificate expired: verification time {now} (UNIX), but certificate is not valid after 1700000000 ({} seconds ago)",
                now - 1_700_000_000
            )
        };
        assert_eq!(verdict(&at(1_700_000_100)), verdict(&at(1_700_000_700)));
        assert_eq!(
            verdict(&at(1_700_000_100)),
            "invalid peer certificate: certificate expired: certificate is not valid after 2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn connection_failures_tell_nothing_about_the_network() {
        for message in [
            "connect to 10.0.0.7:6379: Connection refused (os error 111)",
            "connect to 10.0.0.7:22: timed out after 10s",
            "no address for internal.example",
        ] {
            assert_eq!(
                verdict(message),
                "no TLS verdict: the host could not be reached or did not answer"
            );
        }
        assert_eq!(
            verdict("invalid peer certificate: UnknownIssuer"),
            "invalid peer certificate: UnknownIssuer"
        );
    }
}

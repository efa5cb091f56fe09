//! Delivery metrics (SPEC §3.8): deliveries by route, host and result, queue depth, the
//! age of the oldest queued message and plaintext retries after failed TLS handshakes.
//!
//! Labels are bounded by the configuration: `route` is a configured route name or
//! `direct`, `host` a configured pool host (`host:port`), `mx` for direct MX delivery, or
//! `none`; never a recipient or MX domain, which an outsider could vary without end.
//!
//! [`DeliveryMetrics::register`] registers them into a `prometheus_client` registry that the
//! caller owns and serves on `/metrics`. This module does not serve HTTP.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of one delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Route name (`direct` for MX delivery without a route).
    pub route: String,
    /// The configured pool host (`host:port`) that took the message or failed last; `mx`
    /// for direct delivery; `none` when no host was tried.
    pub host: String,
    /// `delivered`, `deferred` or `bounced`.
    pub result: String,
}

/// The delivery metrics handles; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DeliveryMetrics {
    /// Recipients by route, host and result.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Messages in the queue.
    pub queue_depth: Gauge,
    /// Seconds since the oldest queued message was received.
    pub oldest_message_age_seconds: Gauge,
    /// Sessions retried in plaintext after a failed STARTTLS handshake (routes that do not
    /// require TLS only).
    pub tls_plaintext_fallbacks: Counter,
}

impl DeliveryMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "deliveries",
            "Recipients handled by delivery, by route, host and result",
            m.deliveries.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting in the delivery queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the delivery queue",
            m.oldest_message_age_seconds.clone(),
        );
        registry.register(
            "tls_plaintext_fallbacks",
            "Sessions retried in plaintext after a failed STARTTLS handshake",
            m.tls_plaintext_fallbacks.clone(),
        );
        m
    }

    /// Counts one recipient outcome.
    pub fn count(&self, route: &str, host: &str, result: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                route: route.to_string(),
                host: host.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}

//! Delivery metrics (SPEC §3.8): deliveries by route, host and result, queue depth, the
//! age of the oldest queued message, plaintext retries after failed TLS handshakes,
//! upstreams refusing a route's credentials (`delivery_auth_failures`), archive copies
//! (`archive_*`), and
//! histograms of delivery attempt duration (by route) and time in queue (by final result).
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
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

/// Labels of a delivery attempt's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name (`direct` for MX delivery without a route).
    pub route: String,
}

/// Labels of a message's time in queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinalLabels {
    /// `delivered` or `bounced`: how the recipient left the queue.
    pub result: String,
}

/// Attempt durations: 10 ms to about 11 minutes (an attempt is bounded by the attempt
/// timeout).
fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 17))
}

/// Time in queue: 100 ms to about 9 days (longer than any message lifetime).
fn queue_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 4.0, 14))
}

type HistogramCtor = fn() -> Histogram;

/// The delivery metrics handles; cheap to clone.
#[derive(Clone, Debug)]
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
    /// Seconds one delivery attempt of one route group took (connect to QUIT, or timeout).
    pub attempt_seconds: Family<RouteLabels, Histogram, HistogramCtor>,
    /// Seconds from receipt to the recipient's delivery or bounce.
    pub queue_time_seconds: Family<FinalLabels, Histogram, HistogramCtor>,
    /// Attempts whose credentials an upstream refused (5xx to AUTH), by route.
    pub auth_failures: Family<RouteLabels, Counter>,
    /// 1 while the last login to a route's hosts was refused, 0 once one succeeded: what
    /// the operator turns into the route's `CredentialsAccepted` condition.
    pub auth_refused: Family<RouteLabels, Gauge>,
    /// Saves of a message's per-recipient state that failed (a full disk): the process
    /// keeps the state in memory and tries again at the message's next turn.
    pub state_save_failures: Counter,
    /// Archive copies delivered to the archive.
    pub archive_delivered: Counter,
    /// Archive copies the archive refused or that outlived the queue lifetime (each
    /// reported to the postmaster).
    pub archive_failed: Counter,
    /// Archive copies attempted and put off (the archive host down or refusing for now).
    pub archive_deferred: Counter,
    /// Archive copies owed now.
    pub archive_pending: Gauge,
    /// Seconds since the oldest message whose archive copy is still owed was received.
    pub archive_oldest_age_seconds: Gauge,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self {
            deliveries: Family::default(),
            queue_depth: Gauge::default(),
            oldest_message_age_seconds: Gauge::default(),
            tls_plaintext_fallbacks: Counter::default(),
            attempt_seconds: Family::new_with_constructor(attempt_histogram),
            queue_time_seconds: Family::new_with_constructor(queue_time_histogram),
            auth_failures: Family::default(),
            auth_refused: Family::default(),
            state_save_failures: Counter::default(),
            archive_delivered: Counter::default(),
            archive_failed: Counter::default(),
            archive_deferred: Counter::default(),
            archive_pending: Gauge::default(),
            archive_oldest_age_seconds: Gauge::default(),
        }
    }
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
        registry.register(
            "delivery_attempt_seconds",
            "Seconds one delivery attempt of a route took, by route",
            m.attempt_seconds.clone(),
        );
        registry.register(
            "queue_time_seconds",
            "Seconds from receipt to delivery or bounce, per recipient, by result",
            m.queue_time_seconds.clone(),
        );
        registry.register(
            "delivery_auth_failures",
            "Delivery attempts whose credentials the upstream refused (5xx to AUTH), by route",
            m.auth_failures.clone(),
        );
        registry.register(
            "route_auth_refused",
            "1 while the last login to the route's hosts was refused (5xx to AUTH), 0 once one succeeded",
            m.auth_refused.clone(),
        );
        registry.register(
            "delivery_state_save_failures",
            "Saves of a message's per-recipient delivery state that failed (kept in memory, tried again)",
            m.state_save_failures.clone(),
        );
        registry.register(
            "archive_delivered",
            "Archive (journal) copies delivered to the archive",
            m.archive_delivered.clone(),
        );
        registry.register(
            "archive_failed",
            "Archive copies refused by the archive or expired, each reported to the postmaster",
            m.archive_failed.clone(),
        );
        registry.register(
            "archive_deferred",
            "Archive copy attempts put off for later (archive host down or refusing for now)",
            m.archive_deferred.clone(),
        );
        registry.register(
            "archive_pending",
            "Archive copies owed now",
            m.archive_pending.clone(),
        );
        registry.register(
            "archive_oldest_age_seconds",
            "Age of the oldest message whose archive copy is still owed",
            m.archive_oldest_age_seconds.clone(),
        );
        m
    }

    /// Counts an upstream refusing the credentials of `route`.
    pub fn auth_failed(&self, route: &str) {
        let labels = RouteLabels {
            route: route.to_string(),
        };
        self.auth_failures.get_or_create(&labels).inc();
        self.auth_refused.get_or_create(&labels).set(1);
    }

    /// An upstream accepted the credentials of `route` (a transaction went through on an
    /// authenticated session).
    pub fn auth_accepted(&self, route: &str) {
        self.auth_refused
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .set(0);
    }

    /// Records how long one attempt on `route` took.
    pub fn attempt_took(&self, route: &str, seconds: f64) {
        self.attempt_seconds
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Records a recipient leaving the queue (`delivered` or `bounced`) after `seconds`.
    pub fn left_queue(&self, result: &str, seconds: f64) {
        self.queue_time_seconds
            .get_or_create(&FinalLabels {
                result: result.to_string(),
            })
            .observe(seconds);
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

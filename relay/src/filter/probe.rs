//! Whether each configured content filter can be reached, known without waiting for mail:
//! every [`PROBE_EVERY`], the relay opens a milter connection to each filter, negotiates
//! options and says goodbye, and sets `smtprelay_filter_reachable{filter}` (the operator
//! reads it into the Organization's status, an alert watches it).
//!
//! A probe is a connection of its own, never one a session uses, and is bounded by
//! [`PROBE_TIMEOUT`]. Messages set the same gauge as they pass (`ingress::filtering`).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ContentFilterConfig;
use crate::filter::metrics::FilterMetrics;
use crate::filter::milter::{ClientOptions, MilterClient, MilterEndpoint};

/// Time between two probes of every filter.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Longest a probe waits for the connection and the option negotiation.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes `filter` once: true when it connected and negotiated within [`PROBE_TIMEOUT`].
pub async fn probe(filter: &ContentFilterConfig) -> bool {
    let endpoint = MilterEndpoint {
        host: filter.host.clone(),
        port: filter.port,
    };
    let options = ClientOptions {
        connect_timeout: PROBE_TIMEOUT,
        ..ClientOptions::default()
    };
    match MilterClient::connect(endpoint, options, Instant::now() + PROBE_TIMEOUT).await {
        Ok(mut client) => {
            client.quit().await;
            true
        }
        Err(e) => {
            tracing::warn!(filter = %filter.name, error = %e, "content filter unreachable");
            false
        }
    }
}

/// Probes the filters `current` names (read anew each round, so a reload is followed)
/// until `shutdown` turns true.
pub async fn probe_loop(
    current: impl Fn() -> Vec<ContentFilterConfig>,
    metrics: FilterMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let filters = current();
        metrics.declare(filters.iter().map(|f| f.name.as_str()));
        for filter in &filters {
            let reachable = tokio::select! {
                r = probe(filter) => r,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            metrics.set_reachable(&filter.name, reachable);
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

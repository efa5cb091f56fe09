//! The content filters' metrics: verdicts per filter, time per message, how often a filter
//! could not be consulted, and whether it answered the last time it was asked.
//!
//! Labels are bounded: the filter's name (at most 8 per organization, from the
//! configuration) and a verdict from a fixed set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A filter and what it decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub filter: String,
    /// `accept`, `reject`, `tempfail`, `discard`, `quarantine`, `unavailable` or
    /// `skipped` (the message was larger than the filter's `maxMessageBytes`).
    pub verdict: String,
}

/// One filter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub filter: String,
}

/// Seconds a filter took for one message: 1 ms to about 65 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// Every content-filter metric. Clones share the same series.
#[derive(Clone, Debug)]
pub struct FilterMetrics {
    pub verdicts: Family<VerdictLabels, Counter>,
    pub seconds: Family<FilterLabels, Histogram>,
    pub unavailable: Family<FilterLabels, Counter>,
    pub reachable: Family<FilterLabels, Gauge>,
}

impl Default for FilterMetrics {
    fn default() -> Self {
        Self {
            verdicts: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            unavailable: Family::default(),
            reachable: Family::default(),
        }
    }
}

impl FilterMetrics {
    /// Registers every metric under `registry` (the relay's, prefix `smtprelay_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "filter_verdicts",
            "Messages a content filter judged, by filter and verdict (accept, reject, \
             tempfail, discard, quarantine, unavailable, skipped)",
            self.verdicts.clone(),
        );
        registry.register(
            "filter_seconds",
            "Seconds a content filter took for one message, connecting included",
            self.seconds.clone(),
        );
        registry.register(
            "filter_unavailable",
            "Messages a content filter could not judge (unreachable, timed out, protocol \
             error); onUnavailable applied",
            self.unavailable.clone(),
        );
        registry.register(
            "filter_reachable",
            "1 when the content filter answered its last probe or message, 0 when it could \
             not be reached or did not answer in time",
            self.reachable.clone(),
        );
    }

    /// Creates the series of every configured filter, so they are exported (at zero)
    /// before its first message.
    pub fn declare<'a>(&self, filters: impl IntoIterator<Item = &'a str>) {
        for filter in filters {
            let labels = FilterLabels {
                filter: filter.to_string(),
            };
            let _ = self.unavailable.get_or_create(&labels);
            let _ = self.seconds.get_or_create(&labels);
            for verdict in ["accept", "reject", "tempfail", "discard", "quarantine"] {
                let _ = self.verdicts.get_or_create(&VerdictLabels {
                    filter: filter.to_string(),
                    verdict: verdict.to_string(),
                });
            }
        }
    }

    /// Sets whether `filter` was reachable when last probed or shown a message.
    pub fn set_reachable(&self, filter: &str, reachable: bool) {
        self.reachable
            .get_or_create(&FilterLabels {
                filter: filter.to_string(),
            })
            .set(i64::from(reachable));
    }

    /// Counts one verdict of `filter`.
    pub fn verdict(&self, filter: &str, verdict: &str) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                filter: filter.to_string(),
                verdict: verdict.to_string(),
            })
            .inc();
    }

    /// Records how long `filter` took for one message, and whether it was reachable
    /// (connected and answered in time, whatever it said).
    pub fn observe(&self, filter: &str, seconds: f64, reachable: bool) {
        let labels = FilterLabels {
            filter: filter.to_string(),
        };
        self.seconds.get_or_create(&labels).observe(seconds);
        self.set_reachable(filter, reachable);
    }

    /// Counts a message `filter` could not judge.
    pub fn unavailable(&self, filter: &str) {
        self.unavailable
            .get_or_create(&FilterLabels {
                filter: filter.to_string(),
            })
            .inc();
        self.verdict(filter, "unavailable");
    }
}

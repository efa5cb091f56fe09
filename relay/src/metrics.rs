//! The relay's Prometheus metrics (SPEC §3.8): one registry, every name under the
//! `smtprelay_` prefix, counters, gauges and the end-of-DATA latency histogram.
//!
//! Owns metric names and labels; it does not serve HTTP (that is `admin`) or decide what
//! happened (callers in `server` report events). Labels are bounded: reply codes, limit
//! kinds, AUTH reasons and the config hash in force, never an address or a domain.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::limits::LimitHit;

type Labels = Vec<(String, String)>;

/// Prefix of every relay metric name.
pub const PREFIX: &str = "smtprelay";

/// Buckets of the end-of-DATA to 250 latency: 1 ms to about 16 s.
fn reply_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// All ingress metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub sessions: Counter,
    pub sessions_active: Gauge,
    pub accepted: Counter,
    pub accepted_recipients: Counter,
    pub rejected: Family<Labels, Counter>,
    pub limit_hits: Family<Labels, Counter>,
    pub config_generation: Gauge,
    config_info: Family<Labels, Gauge>,
    config_refused: Family<Labels, Gauge>,
    pub spool_depth: Gauge,
    pub spool_quarantined: Gauge,
    pub spool_torn_tails: Gauge,
    pub spool_damaged_records: Gauge,
    pub auth_failures: Family<Labels, Counter>,
    pub auth_lockouts: Family<Labels, Counter>,
    pub auth_busy: Counter,
    /// Seconds from the end of DATA to the reply that the message is queued (spool commit
    /// and limit accounting included).
    pub data_reply_seconds: Histogram,
    /// Content filters (`crate::filter`).
    pub filters: crate::filter::metrics::FilterMetrics,
    /// Messages accepted with an archive copy owed.
    pub archive_queued: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            registry: Registry::default(),
            sessions: Counter::default(),
            sessions_active: Gauge::default(),
            accepted: Counter::default(),
            accepted_recipients: Counter::default(),
            rejected: Family::default(),
            limit_hits: Family::default(),
            config_generation: Gauge::default(),
            config_info: Family::default(),
            config_refused: Family::default(),
            spool_depth: Gauge::default(),
            spool_quarantined: Gauge::default(),
            spool_torn_tails: Gauge::default(),
            spool_damaged_records: Gauge::default(),
            auth_failures: Family::default(),
            auth_lockouts: Family::default(),
            auth_busy: Counter::default(),
            data_reply_seconds: Histogram::new(reply_buckets()),
            filters: crate::filter::metrics::FilterMetrics::default(),
            archive_queued: Counter::default(),
        };
        registry.register(
            "archive_queued",
            "Archive (journal) copies queued: one per accepted message while archiving is on",
            m.archive_queued.clone(),
        );
        m.filters.register(&mut registry);
        registry.register("sessions", "SMTP sessions opened", m.sessions.clone());
        registry.register(
            "sessions_active",
            "SMTP sessions open now",
            m.sessions_active.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted and spooled",
            m.accepted.clone(),
        );
        registry.register(
            "recipients_accepted",
            "Recipients of accepted messages",
            m.accepted_recipients.clone(),
        );
        registry.register(
            "replies_rejected",
            "4xx/5xx replies sent, by reply code and enhanced status",
            m.rejected.clone(),
        );
        registry.register(
            "limit_hits",
            "Recipients refused by a relay limit, by kind of limit",
            m.limit_hits.clone(),
        );
        registry.register(
            "config_generation",
            "Config generation in force",
            m.config_generation.clone(),
        );
        registry.register(
            "config_info",
            "Hash of the config in force (value 1)",
            m.config_info.clone(),
        );
        registry.register(
            "config_refused",
            "The last config this relay refused, with why (value 1; none once a later one is in force)",
            m.config_refused.clone(),
        );
        registry.register(
            "spool_depth",
            "Messages in the spool",
            m.spool_depth.clone(),
        );
        registry.register(
            "spool_quarantined",
            "Spool files found torn or unparsable at start and moved to quarantine/",
            m.spool_quarantined.clone(),
        );
        registry.register(
            "spool_torn_tails",
            "Spool segments whose torn tail (a batch never acknowledged) was skipped at start",
            m.spool_torn_tails.clone(),
        );
        registry.register(
            "spool_damaged_records",
            "Damaged stretches found in the middle of spool segments at start (checksum or header \
             failed, valid records after them): copied to quarantine/, the records around them kept",
            m.spool_damaged_records.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed SMTP AUTH attempts, by reason (invalid: wrong credentials; locked_out: \
             refused during a lockout without checking)",
            m.auth_failures.clone(),
        );
        registry.register(
            "auth_lockouts",
            "AUTH lockouts started, by scope (ip: a source for any users; user_ip: a user from \
             one source; user: a user from the sources it has not logged in from recently)",
            m.auth_lockouts.clone(),
        );
        registry.register(
            "auth_busy",
            "AUTH attempts answered 454 4.3.0 because the password check pool was full",
            m.auth_busy.clone(),
        );
        registry.register(
            "data_reply_seconds",
            "Seconds from the end of DATA to the 250 reply that the message is queued",
            m.data_reply_seconds.clone(),
        );
        // Every series of a bounded label set starts at 0, so that it is exported before
        // the first event and `rate()` sees the first increment.
        for hit in [
            LimitHit::UserMessagesPerDay,
            LimitHit::UserRecipientsPerDay,
            LimitHit::CustomerRecipientsPerDay,
            LimitHit::CustomerRecipientsPer10Minutes,
        ] {
            let _ = m
                .limit_hits
                .get_or_create(&vec![("limit".to_string(), hit.label().to_string())]);
        }
        for reason in ["invalid", "locked_out"] {
            let _ = m
                .auth_failures
                .get_or_create(&vec![("reason".to_string(), reason.to_string())]);
        }
        for scope in ["ip", "user"] {
            let _ = m
                .auth_lockouts
                .get_or_create(&vec![("scope".to_string(), scope.to_string())]);
        }
        Self { registry, ..m }
    }

    /// The registry, for other parts (delivery) to register their metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The generation in force, its document hash and its content hash (document plus
    /// the files it names).
    pub fn set_config(&self, generation: u64, hash: &str, content_hash: &str) {
        self.config_generation.set(generation as i64);
        self.config_refused.clear();
        self.config_info.clear();
        self.config_info
            .get_or_create(&vec![
                ("hash".to_string(), hash.to_string()),
                ("content_hash".to_string(), content_hash.to_string()),
            ])
            .set(1);
    }

    /// Publishes that the config document `hash` (empty when it could not even be
    /// parsed) was refused, and why: `smtprelay_config_refused{hash,reason} 1`, read by
    /// the operator. The reason is kept to one line of at most 300 characters, without
    /// quotes or backslashes, so any reader of the text format can take it.
    pub fn set_config_refused(&self, hash: &str, reason: &str) {
        let reason: String = reason
            .chars()
            .map(|c| match c {
                '"' => '\'',
                '\\' => '/',
                c if c.is_control() => ' ',
                c => c,
            })
            .take(300)
            .collect();
        self.config_refused.clear();
        self.config_refused
            .get_or_create(&vec![
                ("hash".to_string(), hash.to_string()),
                ("reason".to_string(), reason),
            ])
            .set(1);
    }

    /// Counts a refusal reply, labelled by its code and enhanced status (`550 5.7.1`).
    pub fn rejected(&self, code: u16, first_line: &str) {
        let status = first_line.split(' ').next().unwrap_or("");
        self.rejected
            .get_or_create(&vec![("reason".to_string(), format!("{code} {status}"))])
            .inc();
    }

    /// Counts a limit hit.
    pub fn limit_hit(&self, limit: &str) {
        self.limit_hits
            .get_or_create(&vec![("limit".to_string(), limit.to_string())])
            .inc();
    }

    /// Counts a failed AUTH attempt: `invalid` (wrong credentials; unknown users are not
    /// told apart, so the metric holds no list of valid names) or `locked_out`.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Counts a lockout started on `scope` (`ip`, `user_ip` or `user`, see
    /// `auth_throttle::Scope`).
    pub fn auth_lockout(&self, scope: &str) {
        self.auth_lockouts
            .get_or_create(&vec![("scope".to_string(), scope.to_string())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_lockouts_and_busy_are_exported() {
        let m = Metrics::new();
        m.auth_failure("invalid");
        m.auth_failure("invalid");
        m.auth_lockout("user");
        m.auth_busy.inc();
        let text = m.render();
        assert!(text.contains("smtprelay_auth_failures_total{reason=\"invalid\"} 2"));
        assert!(text.contains("smtprelay_auth_failures_total{reason=\"locked_out\"} 0"));
        assert!(text.contains("smtprelay_auth_lockouts_total{scope=\"ip\"} 0"));
        assert!(text.contains("smtprelay_auth_lockouts_total{scope=\"user\"} 1"));
        assert!(text.contains("smtprelay_auth_busy_total 1"));
    }

    #[test]
    fn every_limit_kind_is_exported_before_its_first_hit() {
        let m = Metrics::new();
        m.limit_hit("user_recipients_per_day");
        let text = m.render();
        assert!(
            text.contains("smtprelay_limit_hits_total{limit=\"user_recipients_per_day\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "smtprelay_limit_hits_total{limit=\"customer_recipients_per_10_minutes\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE smtprelay_data_reply_seconds histogram"));
    }
}

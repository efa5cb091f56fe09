//! What each ready relay pod says about the config it has in force, and what a drain pod
//! says about its progress. Only pods the relay's StatefulSet (or the drain's Job) owns
//! are asked (the controller picks them), and no answer is read past
//! [`MAX_METRICS_BYTES`]: a tenant's own pod cannot steer or exhaust the operator.
//!
//! The relay's admin endpoint publishes `smtprelay_config_info{hash="…",content_hash="…"} 1`
//! on `/metrics`: the document hash, and the hash of the document and the files it names.
//! [`PodReports`] asks one pod for that line; [`HttpPodReports`] does so
//! over HTTP straight to the pod's address (the relay's NetworkPolicy admits the
//! operator's namespace to the admin port; no API server proxy and no extra RBAC), and
//! tests answer with a mock. [`running`] is the pure parser of the metrics text.
//!
//! This module decides nothing: [`status::in_force`](super::status::in_force) turns the
//! answers into the `InForce` condition.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// Name of the relay's config metric.
pub const CONFIG_INFO_METRIC: &str = "smtprelay_config_info";

/// The name relays published before the `smtprelay_` prefix, still read so that an
/// upgraded operator sees what not yet restarted relays run.
const LEGACY_CONFIG_INFO_METRIC: &str = "relay_config_info";

/// The config a relay has in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Running {
    /// Hash of the RelayConfig document.
    pub hash: String,
    /// Hash of the document and of the files it names (certificates, credentials, CA
    /// roots), when the relay publishes it.
    pub content_hash: Option<String>,
    /// The last document the relay refused (its hash, empty when unreadable) and why,
    /// when it refused one after the config in force.
    pub refused: Option<(String, String)>,
    /// Routes (`namespace/name`) whose hosts refused the relay's last login
    /// (`smtprelay_route_auth_refused{route} 1`).
    pub auth_refused: Vec<String>,
    /// DKIM signing domains whose key the relay's last signing could not read
    /// (`smtprelay_dkim_key_unreadable{domain} 1`).
    pub dkim_unreadable: Vec<String>,
    /// Content filters (by name) the relay could not reach at its last probe or message
    /// (`smtprelay_filter_reachable{filter} 0`).
    pub filters_unreachable: Vec<String>,
}

/// Name of the relay's per-filter reachability gauge.
pub const FILTER_REACHABLE_METRIC: &str = "smtprelay_filter_reachable";

/// Name of the relay's per-domain DKIM key metric.
pub const DKIM_KEY_UNREADABLE_METRIC: &str = "smtprelay_dkim_key_unreadable";

/// Name of the relay's per-route login metric.
pub const ROUTE_AUTH_REFUSED_METRIC: &str = "smtprelay_route_auth_refused";

/// Name of the relay's refusal metric.
pub const CONFIG_REFUSED_METRIC: &str = "smtprelay_config_refused";

/// The labels of one sample line of the Prometheus text format: `name{a="x",b="y, z"} 1`.
/// Values are unescaped (`\"`, `\\`, `\n`); commas inside quotes belong to the value.
fn sample_labels<'a>(line: &'a str, name: &str) -> Option<Vec<(&'a str, String)>> {
    let rest = line.strip_prefix(name)?.strip_prefix('{')?;
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        // `key="value"` then `,` or `}`.
        let start = chars.peek()?.0;
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim();
        while chars.peek().is_some_and(|(i, _)| *i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.next()?.1 {
            ',' => {
                if chars.peek().is_some_and(|(_, c)| *c == '}') {
                    return Some(labels);
                }
            }
            '}' => return Some(labels),
            _ => return None,
        }
    }
}

/// Asks one relay pod which config it has in force.
pub trait PodReports: Send + Sync + 'static {
    /// What the relay at `ip` (admin port `port`) runs, or why it could not be learned.
    fn running(&self, ip: IpAddr, port: u16) -> BoxFuture<'_, Result<Running, String>>;

    /// How many messages the drain pod at `ip` (status port `port`) still has to drain;
    /// `token` is the Organization's admin token, which the status port asks for.
    fn drain_remaining(
        &self,
        ip: IpAddr,
        port: u16,
        token: Option<String>,
    ) -> BoxFuture<'_, Result<u64, String>>;
}

/// Name of the drain's progress metric (`relay --drain --drain-status-listen`).
pub const DRAIN_REMAINING_METRIC: &str = "smtprelay_drain_remaining";

/// The value of the drain's progress metric in Prometheus text, if present.
pub fn drain_remaining(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(DRAIN_REMAINING_METRIC)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The labels of the config metric in Prometheus text, if present, and the refusal
/// metric's.
pub fn running(metrics: &str) -> Option<Running> {
    let label = |labels: &[(&str, String)], name: &str| {
        labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let info = metrics.lines().find_map(|line| {
        sample_labels(line, CONFIG_INFO_METRIC)
            .or_else(|| sample_labels(line, LEGACY_CONFIG_INFO_METRIC))
    })?;
    let refused = metrics
        .lines()
        .find_map(|line| sample_labels(line, CONFIG_REFUSED_METRIC))
        .and_then(|l| Some((label(&l, "hash")?, label(&l, "reason").unwrap_or_default())));
    // The values of `key` of the samples of 0/1 gauge `metric` whose value is `value`.
    let at = |metric: &str, key: &str, value: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|line| line.trim_end().ends_with(value))
            .filter_map(|line| sample_labels(line, metric))
            .filter_map(|l| label(&l, key))
            .collect()
    };
    let raised = |metric: &str, key: &str| at(metric, key, " 1");
    Some(Running {
        hash: label(&info, "hash")?,
        content_hash: label(&info, "content_hash"),
        refused,
        auth_refused: raised(ROUTE_AUTH_REFUSED_METRIC, "route"),
        dkim_unreadable: raised(DKIM_KEY_UNREADABLE_METRIC, "domain"),
        filters_unreachable: at(FILTER_REACHABLE_METRIC, "filter", " 0"),
    })
}

/// Reads `/metrics` from the pod's admin port over HTTP/1.1, within a timeout.
#[derive(Clone, Debug)]
pub struct HttpPodReports {
    pub timeout: Duration,
}

impl Default for HttpPodReports {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
        }
    }
}

/// The most of a `/metrics` answer that is read: a relay's is a few kilobytes; a pod
/// that answers without end (or a tenant's pod posing as a relay) costs the operator,
/// which serves every tenant, no more than this.
pub const MAX_METRICS_BYTES: usize = 1024 * 1024;

async fn fetch_metrics(addr: SocketAddr, token: Option<&str>) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
    let connection = tokio::spawn(connection);
    let mut request = http::Request::get("/metrics").header(http::header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_METRICS_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!(
                    "GET http://{addr}/metrics: the answer is longer than {MAX_METRICS_BYTES} bytes"
                )
            } else {
                format!("GET http://{addr}/metrics: {e}")
            }
        })?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(format!("GET http://{addr}/metrics answered {status}"));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl PodReports for HttpPodReports {
    fn running(&self, ip: IpAddr, port: u16) -> BoxFuture<'_, Result<Running, String>> {
        Box::pin(async move {
            let addr = SocketAddr::new(ip, port);
            let text = tokio::time::timeout(self.timeout, fetch_metrics(addr, None))
                .await
                .map_err(|_| format!("GET http://{addr}/metrics timed out"))??;
            running(&text).ok_or_else(|| format!("{addr} publishes no {CONFIG_INFO_METRIC}"))
        })
    }

    fn drain_remaining(
        &self,
        ip: IpAddr,
        port: u16,
        token: Option<String>,
    ) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            let addr = SocketAddr::new(ip, port);
            let text = tokio::time::timeout(self.timeout, fetch_metrics(addr, token.as_deref()))
                .await
                .map_err(|_| format!("GET http://{addr}/metrics timed out"))??;
            drain_remaining(&text)
                .ok_or_else(|| format!("{addr} publishes no {DRAIN_REMAINING_METRIC}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP smtprelay_config_info Hash of the config in force (value 1).\n\
# TYPE smtprelay_config_info gauge\n\
smtprelay_config_info{hash=\"abc123\",content_hash=\"def456\"} 1\n\
smtprelay_config_generation 3\n";

    #[test]
    fn the_labels_of_the_config_metric_are_read() {
        let abc = Running {
            hash: "abc123".into(),
            content_hash: Some("def456".into()),
            ..Default::default()
        };
        assert_eq!(running(METRICS), Some(abc));
        assert_eq!(running("smtprelay_config_generation 3\n"), None);
        // `content_hash` is not `hash`, whichever comes first.
        let swapped = "smtprelay_config_info{content_hash=\"x\",hash=\"y\"} 1";
        assert_eq!(running(swapped).map(|r| r.hash).as_deref(), Some("y"));
        let old = "smtprelay_config_info{hash=\"y\"} 1";
        assert_eq!(running(old).unwrap().content_hash, None);
        // A relay from before the `smtprelay_` prefix.
        let legacy = "relay_config_info{hash=\"z\",content_hash=\"w\"} 1";
        assert_eq!(running(legacy).map(|r| r.hash).as_deref(), Some("z"));
    }

    #[test]
    fn a_refused_config_is_read_with_its_reason_commas_and_quotes_included() {
        let text = format!(
            "{METRICS}smtprelay_config_refused{{hash=\"f00\",reason=\"cannot read /etc/tls/tls.crt: No such file, or \\\"directory\\\"\"}} 1\n"
        );
        let r = running(&text).unwrap();
        assert_eq!(r.hash, "abc123");
        assert_eq!(
            r.refused,
            Some((
                "f00".to_string(),
                "cannot read /etc/tls/tls.crt: No such file, or \"directory\"".to_string()
            ))
        );
        assert_eq!(running(METRICS).unwrap().refused, None);
        let logins = format!(
            "{METRICS}smtprelay_route_auth_refused{{route=\"acme/ses\"}} 1\nsmtprelay_route_auth_refused{{route=\"acme/m365\"}} 0\n"
        );
        assert_eq!(running(&logins).unwrap().auth_refused, vec!["acme/ses"]);
        let keys = format!(
            "{METRICS}smtprelay_dkim_key_unreadable{{domain=\"acme.example\"}} 1\nsmtprelay_dkim_key_unreadable{{domain=\"beta.example\"}} 0\n"
        );
        assert_eq!(
            running(&keys).unwrap().dkim_unreadable,
            vec!["acme.example"]
        );
        let filters = format!(
            "{METRICS}smtprelay_filter_reachable{{filter=\"rspamd\"}} 0\nsmtprelay_filter_reachable{{filter=\"clamav\"}} 1\n"
        );
        assert_eq!(
            running(&filters).unwrap().filters_unreachable,
            vec!["rspamd"]
        );
        assert!(running(METRICS).unwrap().filters_unreachable.is_empty());
        assert_eq!(sample_labels("x{a=\"1\"", "x"), None, "unterminated");
        assert_eq!(sample_labels("x{a=\"1\",} 1", "x").unwrap().len(), 1);
    }

    #[test]
    fn the_drain_progress_is_read() {
        let text = "# TYPE smtprelay_drain_remaining gauge\nsmtprelay_drain_remaining 17\n# EOF\n";
        assert_eq!(drain_remaining(text), Some(17));
        assert_eq!(drain_remaining(METRICS), None);
    }

    #[tokio::test]
    async fn a_pod_is_asked_over_http_and_a_silent_one_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{METRICS}",
                METRICS.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let reports = HttpPodReports::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = reports.running(ip, port).await.unwrap();
        assert_eq!(first.hash, "abc123");
        // Nothing listens there any more.
        let err = reports.running(ip, port).await.unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
    }

    #[tokio::test]
    async fn a_pod_that_answers_without_end_is_cut_off_at_a_mebibyte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let junk = "# padding\n".repeat(200_000);
            let body = format!("{junk}{METRICS}");
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            s.write_all(reply.as_bytes()).await.unwrap();
            let _ = s.write_all(body.as_bytes()).await;
        });
        let reports = HttpPodReports::default();
        let err = reports
            .running("127.0.0.1".parse().unwrap(), port)
            .await
            .unwrap_err();
        assert!(err.contains("1048576"), "{err}");
    }
}

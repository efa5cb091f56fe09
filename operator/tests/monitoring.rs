//! The monitoring kit in `deploy/monitoring/`: every metric its alerts and its dashboard
//! read is one the relay or the operator exports. Names outside `smtprelay_*` come only
//! from a short documented list (the kubelet's volume metrics, for the spool disk alert).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use relay::config::RelayConfig;
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{RelayHandle, StartOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const RULES: &str = include_str!("../../deploy/monitoring/prometheusrule.yaml");
const DASHBOARD: &str = include_str!("../../deploy/monitoring/dashboard.json");

/// Metrics the kit may read that neither the relay nor the operator exports (README,
/// "Observe"): the kubelet's volume statistics of the spool claims.
const EXTERNAL: &[&str] = &[
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// Words of PromQL that are not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    // Aggregations, which may be followed by `by (…)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// The metric names a PromQL expression reads: identifiers outside label matchers,
/// ranges, string literals and grouping lists, that are not functions or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut bare = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace -= 1,
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket -= 1,
            (None, c) if depth_brace == 0 && depth_bracket == 0 => bare.push(c),
            _ => bare.push(' '),
        }
    }
    let chars: Vec<char> = bare.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // The label list that follows is not a metric.
                skip_list = true;
            } else if skip_list || next == Some(&'(') || KEYWORDS.contains(&word.as_str()) {
            } else {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`5m`, `1e3`): skip the whole token.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            if c == ')' {
                skip_list = false;
            }
            i += 1;
        }
    }
    names
}

fn rule_exprs() -> Vec<String> {
    let doc: yaml_serde::Value = yaml_serde::from_str(RULES).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"));
    let mut out = Vec::new();
    for group in doc["spec"]["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no expr"));
            out.push(expr.to_string());
        }
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    // Template variables: `label_values(METRIC, label)` reads METRIC.
    for var in doc["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str()
            && let Some(args) = q.strip_prefix("label_values(")
        {
            out.push(args.split(',').next().unwrap().to_string());
        }
    }
    out
}

/// Every sample name an exposition holds, and the names its `# TYPE` lines declare
/// (a family that has no series yet, such as a limit never hit, is still exported).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if !name.is_empty() {
                names.insert(name.to_string());
            }
        }
    }
    names
}

async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        reply.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return reply.trim_end().to_string();
        }
    }
}

/// Sends one message and returns the final reply.
async fn send_one(addr: SocketAddr) -> String {
    let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    read_reply(&mut r).await;
    // One refused command, so that the refusals are counted by reason too.
    w.write_all(b"NOSUCH\r\n").await.unwrap();
    let refused = read_reply(&mut r).await;
    assert!(refused.starts_with('5'), "{refused}");
    for cmd in [
        "EHLO client.acme.example",
        "MAIL FROM:<app@acme.example>",
        "RCPT TO:<bob@example.net>",
        "DATA",
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        let reply = read_reply(&mut r).await;
        assert!(
            reply.starts_with('2') || reply.starts_with('3'),
            "{cmd}: {reply}"
        );
    }
    w.write_all(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        .await
        .unwrap();
    read_reply(&mut r).await
}

async fn relay_metrics(relay: &RelayHandle) -> String {
    let mut s = TcpStream::connect(relay.admin_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn the_promql_reader_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"sum by (namespace, route) (rate(a_total{result="x", route=~"b.+"}[15m])) > 0
           unless histogram_quantile(0.95, sum without (pod) (rate(b_bucket[5m]))) > 4 * 3600
           and c / d{x="e"} offset 1d"#,
    );
    let want: BTreeSet<String> = ["a_total", "b_bucket", "c", "d"].map(String::from).into();
    assert_eq!(names, want);
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_read_is_exported() {
    let rules: BTreeSet<String> = rule_exprs().iter().flat_map(|e| metric_names(e)).collect();
    let dashboard: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    // The kit reads what matters: the issue's list of alerts, and the dashboard's panels.
    for name in [
        "smtprelay_queue_oldest_message_age_seconds",
        "smtprelay_deliveries_total",
        "smtprelay_operator_route_tls_verified",
        "smtprelay_operator_config_in_force",
        "smtprelay_limit_hits_total",
        "smtprelay_filter_unavailable_total",
        "smtprelay_filter_reachable",
        "smtprelay_archive_oldest_age_seconds",
        "smtprelay_archive_failed_total",
        "kubelet_volume_stats_available_bytes",
    ] {
        assert!(rules.contains(name), "no alert reads {name}: {rules:?}");
    }
    for name in [
        "smtprelay_data_reply_seconds_bucket",
        "smtprelay_delivery_attempt_seconds_bucket",
        "smtprelay_queue_time_seconds_bucket",
        "smtprelay_queue_depth",
        "smtprelay_config_info",
    ] {
        assert!(
            dashboard.contains(name),
            "no panel reads {name}: {dashboard:?}"
        );
    }

    // A relay after one delivered message, so that the per-route series exist too.
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig::default()).await.unwrap();
    let mut cfg = RelayConfig::loopback(&dir.path().to_string_lossy(), sink.port());
    // A content filter nothing answers for (the message goes on, counted), so that the
    // filter series exist too.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cfg.content_filters = vec![relay::config::ContentFilterConfig {
        name: "rspamd".into(),
        host: "127.0.0.1".into(),
        port: down.port(),
        timeout_seconds: 2,
        on_unavailable: relay::config::OnUnavailable::Accept,
        max_message_bytes: None,
    }];
    let relay = relay::start(cfg, StartOptions::default()).await.unwrap();
    let reply = send_one(relay.smtp_addr()).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    tokio::time::timeout(Duration::from_secs(10), sink.wait_for_messages(1))
        .await
        .unwrap();
    let mut text = relay_metrics(&relay).await;
    for _ in 0..100 {
        if text.contains("smtprelay_queue_time_seconds_count{result=\"delivered\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = relay_metrics(&relay).await;
    }
    relay.stop(Duration::ZERO).await;
    assert!(
        text.contains("Content-Type: application/openmetrics-text")
            || text.contains("content-type: application/openmetrics-text"),
        "{text}"
    );
    assert!(
        text.contains("smtprelay_data_reply_seconds_count 1\n"),
        "{text}"
    );
    assert!(
        text.contains("smtprelay_queue_time_seconds_count{result=\"delivered\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("smtprelay_delivery_attempt_seconds_count{route="),
        "{text}"
    );
    assert!(
        !text.contains("\nrelay_"),
        "a metric outside the smtprelay_ prefix: {text}"
    );

    // The operator after one reconcile and one TLS probe (its per-object series appear then).
    let operator = operator::controller::metrics::Metrics::default();
    operator.config_in_force("shop", "acme", true);
    operator.route_tls("shop", "shop/relay", true);
    let operator = operator.render();
    let mut have = exported(&text);
    have.extend(exported(&operator));
    let missing: Vec<&String> = rules
        .union(&dashboard)
        .filter(|n| !have.contains(*n) && !EXTERNAL.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the kit but not exported: {missing:?}"
    );
}

/// mdBook's id of a heading: lower case, alphanumerics, `-` and `_` kept, spaces turned into
/// `-`, everything else dropped.
fn mdbook_id(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_to_its_runbook_in_the_book() {
    const BOOK_URL: &str = "https://smtprelay.dev/book/";
    let doc: yaml_serde::Value = yaml_serde::from_str(RULES).unwrap();
    let mut alerts = 0;
    for group in doc["spec"]["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no runbook_url annotation"));
            let rest = url
                .strip_prefix(BOOK_URL)
                .unwrap_or_else(|| panic!("{alert}: {url} is not in the book ({BOOK_URL})"));
            let (page, anchor) = rest
                .split_once('#')
                .unwrap_or_else(|| panic!("{alert}: {url} names no heading"));
            let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docs/src")
                .join(page.replace(".html", ".md"));
            let text = std::fs::read_to_string(&source)
                .unwrap_or_else(|e| panic!("{alert}: {url}: {}: {e}", source.display()));
            let ids: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with('#'))
                .map(|l| mdbook_id(l.trim_start_matches('#')))
                .collect();
            assert!(
                ids.iter().any(|id| id == anchor),
                "{alert}: {url}: no heading with id `{anchor}` in {}",
                source.display()
            );
            assert_eq!(
                anchor,
                mdbook_id(alert),
                "{alert}: the runbook heading is the alert's name"
            );
        }
    }
    assert!(alerts >= 12, "{alerts} alerts read");
}

//! The client side of queue administration (`relayctl queue`): HTTP/1.1 requests to a
//! relay's admin endpoint with the bearer token, and the answers as tables for people.
//!
//! [`AdminConnection`] speaks to one endpoint over any byte stream: a TCP connection to
//! `--url` ([`request`]), or a port-forward through the Kubernetes API server
//! ([`crate::queue_cluster`]). Every request is bounded: [`REQUEST_TIMEOUT`] for the
//! answer, [`MAX_ANSWER_BYTES`] for its size.
//!
//! The relay side (what each request does, who may ask) is `relay::admin::queue`.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long one request may take, from sending it to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (a list of `relay::admin::queue::LIST_LIMIT` messages with
/// long recipient lists stays well below it); a larger one is an error, not a table.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why a queue request failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueClientError {
    #[error("bad admin URL {0:?} (expected http://HOST:PORT)")]
    Url(String),
    #[error("cannot reach the admin endpoint {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the relay refused the token (401): check --token-file or SMTPRELAY_ADMIN_TOKEN")]
    Unauthorized,
    #[error("the relay answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the relay's answer is not JSON: {0}")]
    Json(String),
    #[error("no answer from the admin endpoint {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("the answer of the admin endpoint {url} is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
}

/// One HTTP/1.1 connection to a relay's admin endpoint; requests on it reuse it
/// (keep-alive), one after the other.
pub struct AdminConnection {
    sender: SendRequest<Empty<Bytes>>,
    /// How long a request may take ([`REQUEST_TIMEOUT`] unless [`Self::bounded`]).
    timeout: Duration,
    /// The largest answer read ([`MAX_ANSWER_BYTES`] unless [`Self::bounded`]).
    max_answer: usize,
    /// Where it leads, for errors (`http://host:port`, or a pod's name).
    url: String,
    /// The `Host` header.
    host: String,
    token: String,
}

impl AdminConnection {
    /// Starts HTTP/1.1 on `stream`, which leads to the admin endpoint `url` (named in
    /// errors); `host` is the `Host` header sent.
    pub async fn handshake<S>(
        stream: S,
        url: &str,
        host: &str,
        token: &str,
    ) -> Result<Self, QueueClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| QueueClientError::Connect {
                url: url.into(),
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            timeout: REQUEST_TIMEOUT,
            max_answer: MAX_ANSWER_BYTES,
            url: url.into(),
            host: host.into(),
            token: token.into(),
        })
    }

    /// The same connection with other bounds: `timeout` per request, `max_answer` bytes
    /// per answer.
    pub fn bounded(self, timeout: Duration, max_answer: usize) -> Self {
        Self {
            timeout,
            max_answer,
            ..self
        }
    }

    /// Sends `method path` and returns the JSON answer of a 2xx reply, within the
    /// connection's time and size bounds.
    pub async fn request(&mut self, method: &str, path: &str) -> Result<Value, QueueClientError> {
        let (url, timeout) = (self.url.clone(), self.timeout);
        tokio::time::timeout(timeout, self.exchange(method, path))
            .await
            .unwrap_or(Err(QueueClientError::Timeout { url, timeout }))
    }

    async fn exchange(&mut self, method: &str, path: &str) -> Result<Value, QueueClientError> {
        let connect = |reason: String| QueueClientError::Connect {
            url: self.url.clone(),
            reason,
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| QueueClientError::Url(e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| connect(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = match Limited::new(resp.into_body(), self.max_answer)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(QueueClientError::TooLarge {
                    url: self.url.clone(),
                    max: self.max_answer,
                });
            }
            Err(e) => return Err(connect(e.to_string())),
        };
        if status == 401 {
            return Err(QueueClientError::Unauthorized);
        }
        let value: Result<Value, _> = serde_json::from_slice(&body);
        if !(200..300).contains(&status) {
            let message = value
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(QueueClientError::Status { status, message });
        }
        value.map_err(|e| QueueClientError::Json(e.to_string()))
    }
}

/// Sends `method path` to the admin endpoint at `base` (`http://host:port`) and returns
/// the JSON answer of a 2xx reply.
pub async fn request(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
) -> Result<Value, QueueClientError> {
    let uri: hyper::Uri = base
        .trim_end_matches('/')
        .parse()
        .map_err(|_| QueueClientError::Url(base.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(QueueClientError::Url(base.into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| QueueClientError::Url(base.into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let stream = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| QueueClientError::Timeout {
        url: base.into(),
        timeout: REQUEST_TIMEOUT,
    })?
    .map_err(|e| QueueClientError::Connect {
        url: base.into(),
        reason: e.to_string(),
    })?;
    let mut conn = AdminConnection::handshake(stream, base, authority.as_str(), token).await?;
    conn.request(method, path).await
}

/// The request `relayctl queue ACTION` sends: method and path (with query).
pub fn action_request(action: &QueueAction) -> (&'static str, String) {
    match action {
        QueueAction::List => ("GET", "/queue".to_string()),
        QueueAction::Show { id } => ("GET", format!("/queue/{}", escape(id))),
        QueueAction::Hold { id } => ("POST", format!("/queue/{}/hold", escape(id))),
        QueueAction::Release { id } => ("POST", format!("/queue/{}/release", escape(id))),
        QueueAction::Flush { route: None } => ("POST", "/queue/flush".to_string()),
        QueueAction::Flush { route: Some(r) } => {
            ("POST", format!("/queue/flush?route={}", escape(r)))
        }
        QueueAction::Delete { id } => ("DELETE", format!("/queue/{}", escape(id))),
    }
}

/// What `relayctl queue` asks a relay (its subcommands).
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum QueueAction {
    /// Every queued message: id, state, attempts, age, next attempt, size, sender,
    /// recipients, last error.
    List,
    /// One message: envelope, state per recipient and header section (never the body).
    Show { id: String },
    /// Keep a message from being attempted until released (survives restarts).
    Hold { id: String },
    /// Let a held message be attempted again on its schedule.
    Release { id: String },
    /// Attempt queued messages now instead of on their retry schedule (held ones stay held).
    Flush {
        /// Only messages waiting for this MailRoute (`namespace/name`).
        #[arg(long)]
        route: Option<String>,
    },
    /// Remove a message from the queue and the spool without delivering it (no bounce).
    Delete { id: String },
}

impl QueueAction {
    /// The queue id the action is about, if it is about one message.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Show { id } | Self::Hold { id } | Self::Release { id } | Self::Delete { id } => {
                Some(id)
            }
            Self::List | Self::Flush { .. } => None,
        }
    }
}

/// `%XX`-escapes a path segment or query value.
pub fn escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn next(next_unix: u64, now_unix: u64) -> String {
    if next_unix <= now_unix {
        "now".into()
    } else {
        format!("in {}", age(next_unix - now_unix))
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const LIST_HEADER: [&str; 9] = [
    "QUEUE ID",
    "STATE",
    "ATTEMPTS",
    "AGE",
    "NEXT",
    "SIZE",
    "SENDER",
    "RECIPIENTS",
    "LAST ERROR",
];

/// One message of `GET /queue`, as the cells of [`LIST_HEADER`].
fn list_row(m: &Value, now: u64) -> Vec<String> {
    let recipients: Vec<String> = m["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let state = match m["quarantine"].as_str() {
        Some(_) => "quarantined".to_string(),
        None => text(&m["state"]),
    };
    let last = match m["quarantine"].as_str() {
        Some(why) => format!("quarantine: {why}"),
        None => text(&m["lastError"]),
    };
    vec![
        text(&m["queueId"]),
        state,
        text(&m["attempts"]),
        age(m["ageSeconds"].as_u64().unwrap_or(0)),
        next(m["nextAttemptUnix"].as_u64().unwrap_or(0), now),
        text(&m["size"]),
        match text(&m["sender"]).as_str() {
            "" => "<>".into(),
            s => s.to_string(),
        },
        cut(
            &match m["archive"]["state"].as_str() {
                Some(state) => format!("{} +archive ({state})", recipients.join(",")),
                None => recipients.join(","),
            },
            60,
        ),
        cut(&last, 60),
    ]
}

/// Rows as columns padded to their widest cell, the last one not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The last line of a list, without its line feed: how many messages, and how many of
/// them are shown.
fn count_line(total: u64, shown: usize) -> String {
    if total as usize > shown {
        format!("{shown} of {total} messages shown")
    } else {
        format!(
            "{total} message{} queued",
            if total == 1 { "" } else { "s" }
        )
    }
}

/// `GET /queue` as a table.
pub fn list_table(list: &Value) -> String {
    let now = now_unix();
    let mut rows: Vec<Vec<String>> = vec![LIST_HEADER.iter().map(|s| s.to_string()).collect()];
    for m in list["messages"].as_array().into_iter().flatten() {
        rows.push(list_row(m, now));
    }
    let shown = rows.len() - 1;
    format!(
        "{}{}\n",
        columns(&rows),
        count_line(list["total"].as_u64().unwrap_or(0), shown)
    )
}

/// The `GET /queue` answers of several relay pods (pod name, answer) as one table whose
/// first column names the pod that holds each message.
pub fn pods_list_table(lists: &[(String, Value)]) -> String {
    let now = now_unix();
    let mut header = vec!["POD".to_string()];
    header.extend(LIST_HEADER.iter().map(|s| s.to_string()));
    let mut rows = vec![header];
    let mut total = 0;
    for (pod, list) in lists {
        total += list["total"].as_u64().unwrap_or(0);
        for m in list["messages"].as_array().into_iter().flatten() {
            let mut row = vec![pod.clone()];
            row.extend(list_row(m, now));
            rows.push(row);
        }
    }
    let shown = rows.len() - 1;
    let pods = lists.len();
    format!(
        "{}{} on {pods} pod{}\n",
        columns(&rows),
        count_line(total, shown),
        if pods == 1 { "" } else { "s" }
    )
}

/// `GET /queue/ID` for people.
pub fn show_text(m: &Value) -> String {
    let now = now_unix();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("queue id", text(&m["queueId"]));
    line("state", text(&m["state"]));
    if let Some(why) = m["quarantine"].as_str() {
        line("quarantine", format!("{why} (release it to deliver it)"));
    }
    line("sender", text(&m["sender"]));
    line("client", text(&m["clientIp"]));
    line("helo", text(&m["helo"]));
    line("auth", text(&m["authIdentity"]));
    line("tls", text(&m["tls"]));
    line("size", text(&m["size"]));
    line("age", age(m["ageSeconds"].as_u64().unwrap_or(0)));
    line("attempts", text(&m["attempts"]));
    line(
        "next",
        next(m["nextAttemptUnix"].as_u64().unwrap_or(0), now),
    );
    out.push_str("recipients\n");
    for r in m["recipientStates"].as_array().into_iter().flatten() {
        let detail = match r["state"].as_str() {
            Some("delivered") => format!("delivered to {}", text(&r["host"])),
            Some("bounced") => format!("bounced {} {}", text(&r["status"]), text(&r["diagnostic"])),
            _ => match r["lastError"].as_str() {
                Some(e) => format!("pending, last error: {e}"),
                None => "pending".into(),
            },
        };
        out.push_str(&format!("  {}  {detail}\n", text(&r["recipient"])));
    }
    if let Some(address) = m["archive"]["address"].as_str() {
        let detail = match m["archive"]["lastError"].as_str() {
            Some(e) => format!("{}, {e}", text(&m["archive"]["state"])),
            None => text(&m["archive"]["state"]),
        };
        out.push_str(&format!("archive copy\n  {address}  {detail}\n"));
    }
    out.push_str("headers\n");
    for h in m["headers"].as_str().unwrap_or("").lines() {
        out.push_str(&format!("  {h}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_shows_one_row_per_message_and_the_count() {
        let list = serde_json::json!({
            "total": 1,
            "messages": [{
                "queueId": "1a2b", "state": "held", "attempts": 2, "ageSeconds": 300,
                "nextAttemptUnix": 0, "size": 1234, "sender": "", "recipients": ["a@b.example"],
                "lastError": "connect refused"
            }]
        });
        let t = list_table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("QUEUE ID"), "{t}");
        assert!(lines[1].starts_with("1a2b"), "{t}");
        assert!(lines[1].contains("held") && lines[1].contains("<>"), "{t}");
        assert!(
            lines[1].contains("5m") && lines[1].contains("connect refused"),
            "{t}"
        );
        assert_eq!(lines[2], "1 message queued");
    }

    #[test]
    fn the_lists_of_several_pods_are_one_table_with_the_pod_of_each_message() {
        let message = |id: &str, to: &str| {
            serde_json::json!({"queueId": id, "state": "pending", "attempts": 1,
                "ageSeconds": 10, "nextAttemptUnix": 0, "size": 10, "sender": "a@acme.example",
                "recipients": [to], "lastError": null})
        };
        let lists = vec![
            (
                "acme-relay-0".to_string(),
                serde_json::json!({"total": 1, "messages": [message("AA", "x@example.net")]}),
            ),
            (
                "acme-relay-1".to_string(),
                serde_json::json!({"total": 1, "messages": [message("BB", "y@example.net")]}),
            ),
        ];
        let t = pods_list_table(&lists);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("POD           QUEUE ID  STATE"), "{t}");
        assert!(
            lines[1].starts_with("acme-relay-0  AA        pending"),
            "{t}"
        );
        assert!(lines[1].contains("x@example.net"), "{t}");
        assert!(
            lines[2].starts_with("acme-relay-1  BB        pending"),
            "{t}"
        );
        assert_eq!(lines[3], "2 messages queued on 2 pods");
    }

    /// An HTTP server on one end of an in-memory stream answering every request with
    /// `answer` (or, when `None`, never).
    fn served(answer: Option<&'static [u8]>) -> tokio::io::DuplexStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = server.read(&mut buf).await;
            match answer {
                Some(a) => {
                    let _ = server.write_all(a).await;
                }
                None => tokio::time::sleep(Duration::from_secs(3600)).await,
            }
        });
        client
    }

    #[tokio::test]
    async fn any_stream_carries_requests_and_answers_are_bounded() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{\"total\": 0}\n";
        let mut c = AdminConnection::handshake(served(Some(ok)), "test", "localhost", "t")
            .await
            .unwrap();
        assert_eq!(c.request("GET", "/queue").await.unwrap()["total"], 0);

        let mut c = AdminConnection::handshake(served(Some(ok)), "test", "localhost", "t")
            .await
            .unwrap()
            .bounded(REQUEST_TIMEOUT, 12);
        let e = c.request("GET", "/queue").await.unwrap_err();
        assert!(
            matches!(e, QueueClientError::TooLarge { max: 12, .. }),
            "{e}"
        );

        let mut c = AdminConnection::handshake(served(None), "pod p", "localhost", "t")
            .await
            .unwrap()
            .bounded(Duration::from_millis(100), MAX_ANSWER_BYTES);
        let e = c.request("GET", "/queue").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no answer from the admin endpoint pod p within 100ms"
        );
    }

    #[test]
    fn route_names_are_escaped() {
        assert_eq!(escape("acme/default"), "acme%2Fdefault");
    }
}

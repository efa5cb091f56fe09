//! The client side of queue administration (`relayctl queue`): one HTTP request to a
//! relay's admin endpoint with the bearer token, and the answers as tables for people.
//!
//! The relay side (what each request does, who may ask) is `relay::admin::queue`.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

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
    let connect = |reason: String| QueueClientError::Connect {
        url: base.into(),
        reason,
    };
    let stream = tokio::net::TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
        .await
        .map_err(|e| connect(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| QueueClientError::Url(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| connect(e.to_string()))?
        .to_bytes();
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

/// `GET /queue` as a table.
pub fn list_table(list: &Value) -> String {
    let now = now_unix();
    let header = [
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
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for m in list["messages"].as_array().into_iter().flatten() {
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
        rows.push(vec![
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
        ]);
    }
    let mut widths = vec![0; header.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let total = list["total"].as_u64().unwrap_or(0);
    let shown = rows.len() - 1;
    if total as usize > shown {
        out.push_str(&format!("{shown} of {total} messages shown\n"));
    } else {
        out.push_str(&format!(
            "{total} message{} queued\n",
            if total == 1 { "" } else { "s" }
        ));
    }
    out
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
    fn route_names_are_escaped() {
        assert_eq!(escape("acme/default"), "acme%2Fdefault");
    }
}

//! Queue administration on the admin endpoint (SPEC §3.8): list, show, hold, release,
//! flush and delete queued messages, as JSON over HTTP.
//!
//! | request                          | what                                              |
//! |----------------------------------|---------------------------------------------------|
//! | `GET /queue`                     | every queued message, one summary each            |
//! | `GET /queue/ID`                  | envelope, per-recipient state, header section     |
//! | `POST /queue/ID/hold`            | not attempted until released (survives restarts)  |
//! | `POST /queue/ID/release`         | attempted on its schedule again                   |
//! | `POST /queue/flush[?route=R]`    | due now (held messages stay held)                 |
//! | `DELETE /queue/ID`               | removed from queue and spool, no DSN              |
//! | `POST /queue/import`             | takes over a message drained from another spool   |
//!
//! An import's body is one line of JSON ([`ImportHead`]: the original envelope, its
//! delivery state and hold), a line feed, then exactly `envelope.size` bytes of message
//! text as that spool held it. The text is streamed into this relay's spool (memory stays
//! bounded) and made durable before the `200`; a body shorter or longer than announced
//! queues nothing. The envelope is checked as ingress would ([`check_import_envelope`]):
//! sender and recipients must parse as RFC 5321 paths (no CR, LF or other control
//! character can reach a log line or a downstream command), and `receivedAt` must lie
//! between the queue lifetime (plus [`IMPORT_AGE_SLACK`]) ago and [`IMPORT_CLOCK_SKEW`]
//! ahead: a message older than that was due to bounce where it came from, and one from
//! the future would never expire; both are refused with `400` and the reason. The `200`
//! names the new queue id, the source's queue id and the size taken
//! (`{"queueId", "sourceQueueId", "size"}`): the drain deletes its copy only when they
//! are the ones it sent. See [`crate::admin::drain`] for the other end.
//!
//! Every request needs `Authorization: Bearer TOKEN`, the token being the content of the
//! file [`crate::config::RelayConfig::admin_token_file`] names (read on every request, so
//! a rotated Secret is in force at once; compared in constant time). Without a token file
//! queue administration is disabled (403); a missing or wrong token is refused with 401
//! and no detail. Every operation is logged with the client address, what was asked and
//! the result. The message body is never shown, only its header section.
//!
//! Owns only this HTTP surface; the queue itself is [`crate::delivery::queue::QueueManager`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::delivery::queue::{AdminError, MessageState, QueueManager, RecipientState};
use crate::ingress::server::Shared;
use crate::spool::Spool;

/// Most messages one `GET /queue` lists (the total is always given).
pub const LIST_LIMIT: usize = 10_000;

/// What queue administration works on.
pub struct QueueAdmin {
    pub queue: Arc<QueueManager<Spool>>,
    /// The configuration in force (for the token file it names).
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for QueueAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueAdmin").finish()
    }
}

/// Whether `path` is one of queue administration's.
pub fn is_queue_path(path: &str) -> bool {
    path == "/queue" || path.starts_with("/queue/")
}

/// One message in `GET /queue`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSummary {
    pub queue_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// `pending`, `held` or `delivering`.
    pub state: &'static str,
    pub attempts: u32,
    /// Unix seconds.
    pub next_attempt_unix: u64,
    pub last_error: Option<String>,
    pub size: u64,
    pub age_seconds: u64,
    /// Held because a content filter quarantined it: `filter: reason`. Release it to
    /// deliver it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// The message's archive (journal) copy, when one is owed or was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSummary>,
}

/// The archive copy of a queued message.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSummary {
    /// The archive address.
    pub address: String,
    /// `pending`, `delivered` or `bounced` (reported to the postmaster).
    pub state: &'static str,
    /// Pending: the last temporary failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The answer to `GET /queue`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueList {
    pub total: usize,
    pub messages: Vec<QueueSummary>,
}

/// One recipient in `GET /queue/ID`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientDetail {
    pub recipient: String,
    /// `pending`, `delivered` or `bounced`.
    pub state: &'static str,
    /// Pending: the last temporary failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Delivered: the host that took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Bounced: the status and what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<String>,
}

impl RecipientDetail {
    fn new(recipient: &str, state: RecipientState) -> Self {
        let mut d = Self {
            recipient: recipient.to_string(),
            state: "pending",
            last_error: None,
            host: None,
            status: None,
            diagnostic: None,
        };
        match state {
            RecipientState::Pending { last_error } => d.last_error = last_error,
            RecipientState::Delivered { host } => {
                d.state = "delivered";
                d.host = Some(host);
            }
            RecipientState::Bounced { status, diagnostic } => {
                d.state = "bounced";
                d.status = Some(status);
                d.diagnostic = Some(diagnostic);
            }
        }
        d
    }
}

/// The answer to `GET /queue/ID`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDetail {
    #[serde(flatten)]
    pub summary: QueueSummary,
    pub client_ip: String,
    pub helo: String,
    pub auth_identity: Option<String>,
    pub tls: Option<String>,
    pub received_at_unix: u64,
    pub destinations: Vec<String>,
    pub recipient_states: Vec<RecipientDetail>,
    /// The header section as received (never the body).
    pub headers: String,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &'static str, body: Vec<u8>) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => reply(status, "application/json", body),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"cannot encode the answer\n".to_vec(),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// The request's token against the configured one.
enum Auth {
    Ok,
    Disabled,
    Refused,
    Unavailable(String),
}

fn authorize(admin: &QueueAdmin, authorization: Option<&[u8]>) -> Auth {
    let file = admin.shared.current.load().config.admin_token_file.clone();
    let Some(file) = file else {
        return Auth::Disabled;
    };
    let expected = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) => return Auth::Unavailable(format!("cannot read the admin token file: {e}")),
    };
    let expected = expected.trim_ascii();
    if expected.is_empty() {
        return Auth::Unavailable("the admin token file is empty".into());
    }
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    let Some(presented) = presented else {
        return Auth::Refused;
    };
    // Digests of equal length compared in constant time: neither the content nor the
    // length of the token leaks through timing.
    let same: bool = Sha256::digest(presented)
        .ct_eq(&Sha256::digest(expected))
        .into();
    if same { Auth::Ok } else { Auth::Refused }
}

/// The first line of an import.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportHead {
    /// The envelope as the draining spool held it (its queue id is that spool's).
    pub envelope: crate::envelope::Envelope,
    /// Its delivery state there; none when no attempt was made yet.
    #[serde(default)]
    pub state: Option<crate::delivery::queue::MessageState>,
    /// Held by an operator there: stays held here.
    #[serde(default)]
    pub held: bool,
    /// Where it came from (`spool/QUEUE-ID`), for the log.
    #[serde(default)]
    pub source: String,
}

/// The most an import's first line may hold.
pub const IMPORT_HEAD_LIMIT: usize = 8 * 1024 * 1024;

/// How far in the future an imported `receivedAt` may be (clocks of two pods differ).
pub const IMPORT_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How much older than the maximum queue lifetime an imported `receivedAt` may be (a
/// drain takes a while; older mail was due to bounce at its source).
pub const IMPORT_AGE_SLACK: Duration = Duration::from_secs(24 * 3600);

/// The answer to an import: what the importing relay made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportAnswer {
    /// The message's queue id here.
    pub queue_id: String,
    /// Its queue id in the spool it came from (the envelope's as sent).
    pub source_queue_id: String,
    /// Bytes of text taken.
    pub size: u64,
}

/// Checks an imported envelope as ingress would have: sender and recipients are RFC 5321
/// paths that parse back to themselves, there is a recipient, and `received_at` is
/// neither more than [`IMPORT_CLOCK_SKEW`] ahead of `now` nor older than `lifetime` plus
/// [`IMPORT_AGE_SLACK`]. The error says which field and why.
pub fn check_import_envelope(
    envelope: &crate::envelope::Envelope,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), String> {
    use crate::smtp::{Command, parse_command};
    if envelope.rcpts.is_empty() {
        return Err("the envelope has no recipient".into());
    }
    let params = if envelope.smtputf8 { " SMTPUTF8" } else { "" };
    let sender = &envelope.mail_from;
    match parse_command(format!("MAIL FROM:<{sender}>{params}").as_bytes()) {
        Ok(Command::Mail { from, .. }) if from.as_str() == sender => {}
        _ => {
            return Err(format!(
                "the sender {sender:?} is not an RFC 5321 reverse-path"
            ));
        }
    }
    for rcpt in &envelope.rcpts {
        match parse_command(format!("RCPT TO:<{rcpt}>").as_bytes()) {
            Ok(Command::Rcpt { to }) if to.as_str() == rcpt && !rcpt.is_empty() => {}
            _ => {
                return Err(format!(
                    "the recipient {rcpt:?} is not an RFC 5321 forward-path"
                ));
            }
        }
    }
    let at = envelope.received_at;
    if at > now + IMPORT_CLOCK_SKEW {
        return Err(format!(
            "receivedAt {} is in the future (more than {} s ahead of this relay's clock)",
            unix(at),
            IMPORT_CLOCK_SKEW.as_secs()
        ));
    }
    let oldest = lifetime.saturating_add(IMPORT_AGE_SLACK);
    if now.duration_since(at).is_ok_and(|age| age > oldest) {
        return Err(format!(
            "receivedAt {} is older than the queue lifetime ({} s) allows",
            unix(at),
            lifetime.as_secs()
        ));
    }
    Ok(())
}

/// Import path.
pub const IMPORT_PATH: &str = "/queue/import";

/// Serves `POST /queue/import` from `peer`: streams the message into the spool, then
/// queues it with its state.
pub async fn import(
    admin: Arc<QueueAdmin>,
    authorization: Option<&[u8]>,
    body: hyper::body::Incoming,
    peer: SocketAddr,
) -> Reply {
    if let Some(refused) = refuse(&admin, authorization, peer, "POST /queue/import") {
        return refused;
    }
    let (status, result, resp) = match receive(&admin, body).await {
        Ok((id, source_id, head)) => {
            tracing::info!(
                client = %peer,
                queue_id = %id,
                source = %head.source,
                sender = %head.envelope.mail_from,
                recipients = %head.envelope.rcpts.join(","),
                size = head.envelope.size,
                result = "imported",
                "message"
            );
            (
                StatusCode::OK,
                format!("imported {} as {id}", head.source),
                json(
                    StatusCode::OK,
                    &ImportAnswer {
                        queue_id: id.to_string(),
                        source_queue_id: source_id.to_string(),
                        size: head.envelope.size,
                    },
                ),
            )
        }
        Err((status, why)) => (status, why.clone(), error(status, &why)),
    };
    tracing::info!(client = %peer, operation = "POST /queue/import", status = status.as_u16(), result, "queue administration");
    resp
}

async fn receive(
    admin: &QueueAdmin,
    mut body: hyper::body::Incoming,
) -> Result<
    (
        crate::envelope::QueueId,
        crate::envelope::QueueId,
        ImportHead,
    ),
    (StatusCode, String),
> {
    use http_body_util::BodyExt;
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let spool = admin.shared.spool.clone();
    let mut head_bytes: Vec<u8> = Vec::new();
    let mut incoming: Option<(crate::spool::Incoming, ImportHead)> = None;
    let outcome: Result<(), (StatusCode, String)> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad(format!("the body ended early: {e}")))?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if incoming.is_none() {
                let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                    head_bytes.extend_from_slice(&data);
                    if head_bytes.len() > IMPORT_HEAD_LIMIT {
                        return Err(bad("the first line is over the limit".into()));
                    }
                    continue;
                };
                head_bytes.extend_from_slice(&data.split_to(nl + 1)[..nl]);
                let head: ImportHead = serde_json::from_slice(&head_bytes)
                    .map_err(|e| bad(format!("the first line is not an import head: {e}")))?;
                let lifetime = Duration::from_secs(
                    admin
                        .shared
                        .current
                        .load()
                        .config
                        .delivery
                        .max_queue_lifetime_seconds,
                );
                check_import_envelope(&head.envelope, admin.shared.clock.now(), lifetime)
                    .map_err(bad)?;
                incoming = Some((spool.begin(spool.new_id()), head));
            }
            if let Some((inc, head)) = &mut incoming {
                if inc.len() + data.len() as u64 > head.envelope.size {
                    return Err(bad(format!(
                        "the text is longer than the {} bytes announced",
                        head.envelope.size
                    )));
                }
                inc.buffer().extend_from_slice(&data);
                inc.settle(&spool)
                    .await
                    .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
            }
        }
        Ok(())
    }
    .await;
    let Some((inc, mut head)) = incoming else {
        return Err(outcome
            .err()
            .unwrap_or_else(|| bad("the body has no first line".into())));
    };
    if let Err(e) = outcome {
        spool.discard(inc).await;
        return Err(e);
    }
    if inc.len() != head.envelope.size {
        let why = format!(
            "the text has {} bytes, {} were announced",
            inc.len(),
            head.envelope.size
        );
        spool.discard(inc).await;
        return Err(bad(why));
    }
    let id = inc.id();
    let source_id = head.envelope.queue_id;
    head.envelope.queue_id = id;
    if head.source.is_empty() {
        head.source = source_id.to_string();
    }
    spool
        .commit(&head.envelope, inc)
        .await
        .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
    if let Err(e) = admin
        .queue
        .adopt(&id.to_string(), head.state.as_ref(), head.held)
    {
        // The text is queued and will be delivered to every recipient (the state could
        // not be kept): at least once, never lost.
        tracing::error!(queue_id = %id, error = %e, "imported message queued without its delivery state");
        admin.queue.submit(&id.to_string());
    }
    Ok((id, source_id, head))
}

/// The answer to a request that may not proceed (no token configured, a wrong token),
/// logged; `None` when it may.
fn refuse(
    admin: &QueueAdmin,
    authorization: Option<&[u8]>,
    peer: SocketAddr,
    operation: &str,
) -> Option<Reply> {
    match authorize(admin, authorization) {
        Auth::Ok => None,
        Auth::Disabled => {
            tracing::warn!(client = %peer, operation, result = "disabled", "queue administration refused: no admin token is configured");
            Some(error(
                StatusCode::FORBIDDEN,
                "queue administration is disabled: no admin token is configured",
            ))
        }
        Auth::Refused => {
            tracing::warn!(client = %peer, operation, result = "unauthorized", "queue administration refused");
            let mut resp = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                b"unauthorized\n".to_vec(),
            );
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            Some(resp)
        }
        Auth::Unavailable(why) => {
            tracing::error!(client = %peer, operation, result = "unavailable", "queue administration refused: {why}");
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token cannot be read",
            ))
        }
    }
}

/// Serves one queue administration request from `peer`.
pub async fn handle(
    admin: Arc<QueueAdmin>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    authorization: Option<&[u8]>,
    peer: SocketAddr,
) -> Reply {
    let operation = format!("{method} {path}");
    if let Some(refused) = refuse(&admin, authorization, peer, &operation) {
        return refused;
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let (status, result, resp) = match (method, parts.as_slice()) {
        (&Method::GET, []) => {
            let a = admin.clone();
            match tokio::task::spawn_blocking(move || list(&a)).await {
                Ok(l) => (
                    StatusCode::OK,
                    format!("{} listed", l.messages.len()),
                    json(StatusCode::OK, &l),
                ),
                Err(e) => internal(e.to_string()),
            }
        }
        (&Method::POST, ["flush"]) => {
            let route = query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "route")
                    .map(|(_, v)| v.into_owned())
            });
            let n = admin.queue.flush(route.as_deref());
            (
                StatusCode::OK,
                format!("{n} due now"),
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "flushed": n, "route": route }),
                ),
            )
        }
        (&Method::GET, [id]) => match show(&admin, id).await {
            Ok(d) => (StatusCode::OK, "shown".into(), json(StatusCode::OK, &d)),
            Err(e) => admin_error(e),
        },
        (&Method::POST, [id, "hold"]) => done(admin.queue.hold(id), id, "held"),
        (&Method::POST, [id, "release"]) => done(admin.queue.release(id), id, "released"),
        (&Method::DELETE, [id]) => {
            let (queue, owned) = (admin.queue.clone(), id.to_string());
            match tokio::task::spawn_blocking(move || queue.delete(&owned)).await {
                Ok(r) => done(r, id, "deleted"),
                Err(e) => internal(e.to_string()),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "no such operation".into(),
            error(StatusCode::NOT_FOUND, "no such queue operation"),
        ),
    };
    tracing::info!(client = %peer, operation, status = status.as_u16(), result, "queue administration");
    resp
}

fn internal(why: String) -> (StatusCode, String, Reply) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        why,
        error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    )
}

fn admin_error(e: AdminError) -> (StatusCode, String, Reply) {
    let status = match e {
        AdminError::NotFound => StatusCode::NOT_FOUND,
        AdminError::InFlight => StatusCode::CONFLICT,
        AdminError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string(), error(status, &e.to_string()))
}

fn done(r: Result<(), AdminError>, id: &str, what: &str) -> (StatusCode, String, Reply) {
    match r {
        Ok(()) => (
            StatusCode::OK,
            what.to_string(),
            json(
                StatusCode::OK,
                &serde_json::json!({ "queueId": id, "result": what }),
            ),
        ),
        Err(e) => admin_error(e),
    }
}

fn summary(
    admin: &QueueAdmin,
    m: &crate::delivery::queue::QueuedMessage,
) -> Option<(
    QueueSummary,
    crate::envelope::Envelope,
    Option<MessageState>,
)> {
    let stored = admin.queue.stored(&m.queue_id).ok()?;
    let env = stored.envelope;
    let state = admin.queue.state(&m.queue_id);
    let last_error = state.as_ref().and_then(|s| {
        s.recipients.values().find_map(|r| match r {
            RecipientState::Pending {
                last_error: Some(e),
            } => Some(e.clone()),
            _ => None,
        })
    });
    let now = admin.shared.clock.now();
    let summary = QueueSummary {
        queue_id: m.queue_id.clone(),
        sender: env.mail_from.clone(),
        recipients: env.rcpts.clone(),
        state: if m.held {
            "held"
        } else if m.in_flight {
            "delivering"
        } else {
            "pending"
        },
        attempts: state.as_ref().map(|s| s.attempts).unwrap_or(0),
        next_attempt_unix: unix(m.next_attempt),
        last_error,
        size: env.size,
        age_seconds: now
            .duration_since(env.received_at)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        quarantine: env.quarantine.clone(),
        archive: archive_summary(&env, state.as_ref()),
    };
    Some((summary, env, state))
}

fn list(admin: &QueueAdmin) -> QueueList {
    let all = admin.queue.messages();
    let total = all.len();
    let messages = all
        .iter()
        .take(LIST_LIMIT)
        .filter_map(|m| summary(admin, m).map(|(s, _, _)| s))
        .collect();
    QueueList { total, messages }
}

async fn show(admin: &Arc<QueueAdmin>, id: &str) -> Result<QueueDetail, AdminError> {
    let m = admin.queue.message(id).ok_or(AdminError::NotFound)?;
    let a = admin.clone();
    let (found, text) = tokio::task::spawn_blocking(move || {
        let text = a.queue.stored(&m.queue_id).ok().map(|s| s.text);
        (summary(&a, &m).map(|s| (s, m.destinations.clone())), text)
    })
    .await
    .map_err(|e| AdminError::Io(std::io::Error::other(e.to_string())))?;
    let (((summary, env, state), destinations), text) =
        found.zip(text).ok_or(AdminError::NotFound)?;
    let headers = text.header_section().await?;
    let recipient_states = env
        .rcpts
        .iter()
        .map(|r| {
            let s = state
                .as_ref()
                .and_then(|s| s.recipients.get(r).cloned())
                .unwrap_or(RecipientState::Pending { last_error: None });
            RecipientDetail::new(r, s)
        })
        .collect();
    Ok(QueueDetail {
        summary,
        client_ip: env.client_ip.to_string(),
        helo: env.helo.clone(),
        auth_identity: env.auth_identity.clone(),
        tls: env.tls.clone(),
        received_at_unix: unix(env.received_at),
        destinations,
        recipient_states,
        headers: String::from_utf8_lossy(&headers).into_owned(),
    })
}

/// What the queue says of a message's archive copy: its state once a turn recorded one,
/// else owed and not tried yet.
fn archive_summary(
    env: &crate::envelope::Envelope,
    state: Option<&crate::delivery::queue::MessageState>,
) -> Option<ArchiveSummary> {
    if let Some(a) = state.and_then(|s| s.archive.as_ref()) {
        let (label, last_error) = match &a.state {
            RecipientState::Pending { last_error } => ("pending", last_error.clone()),
            RecipientState::Delivered { .. } => ("delivered", None),
            RecipientState::Bounced { diagnostic, .. } => ("bounced", Some(diagnostic.clone())),
        };
        return Some(ArchiveSummary {
            address: a.address.clone(),
            state: label,
            last_error,
        });
    }
    env.archive.as_ref().map(|address| ArchiveSummary {
        address: address.clone(),
        state: "pending",
        last_error: None,
    })
}

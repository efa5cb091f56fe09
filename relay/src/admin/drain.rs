//! Draining a spool that no relay will serve again: the claim of a replica that was scaled
//! away, the claim of a relay from before StatefulSets, or every claim of an Organization
//! being deleted (SPEC §3.4). `relay --drain` runs this instead of the relay.
//!
//! Two ways out, chosen by whether targets are given:
//!
//! - **Hand-over** (`--drain-to URL`…): every queued message goes, with its original
//!   envelope, its delivery state (recipients already delivered or bounced are not tried
//!   again, DSNs still owed are still sent, failed attempts keep counting toward the
//!   queue lifetime) and its hold, to a running relay's `POST /queue/import`
//!   ([`crate::admin::queue`]). It leaves this spool only after the receiving relay has
//!   made it durable and answered `200` naming it: the answer must echo this spool's
//!   queue id and the size sent, and give the new queue id; any other `200` (a proxy, a
//!   relay of another version, a stray server) stops the drain with the message kept
//!   ([`DrainError::Unconfirmed`]). A drain that stops between the two hands the
//!   message over again when it is run again: at least once, as SMTP itself, never lost.
//!   Targets are tried in turn; when none answers the drain waits and tries again, and
//!   gives up (exit status 1, the spool as it was for what is left) after
//!   [`HANDOVER_ROUNDS`] rounds.
//! - **Delivery** (no target): the relay's own delivery engine runs on the spool, with
//!   the configuration's routes and retry schedule, until the spool is empty (delivered,
//!   or bounced with a DSN that is then delivered too). Used when no relay remains.
//!   Every message is due at once when it starts, and held messages are released (with a
//!   warning in the log): nobody is left to release them.
//!
//! Either way the spool is opened like the relay opens it, so its lock keeps a drain off
//! a spool a relay still runs on, and unreadable files go to quarantine as they would.
//! With `--drain-status-listen` the number of messages still to drain is served as
//! `smtprelay_drain_remaining` on `/metrics`, for the operator's status, to whoever
//! presents the admin token (when the configuration names one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::admin::queue::{IMPORT_PATH, ImportAnswer, ImportHead};
use crate::clock::SystemClock;
use crate::config::RelayConfig;
use crate::delivery::queue::{QueueManager, QueueOptions, forget_state, stored_state};
use crate::envelope::QueueId;
use crate::spool::{Spool, SpoolError};

/// Rounds over every target before a hand-over gives up (about ten minutes).
pub const HANDOVER_ROUNDS: u32 = 20;

/// What a drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages handed over to another relay.
    pub handed_over: u64,
    /// Messages that left by delivery (delivered or bounced).
    pub delivered: u64,
    /// Messages already finished (no recipient pending, no DSN owed) and removed.
    pub finished: u64,
}

/// Why a drain stopped before the spool was empty.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot read the admin token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("{target} refused the hand-over ({status}): {body}")]
    Refused {
        target: String,
        status: u16,
        body: String,
    },
    #[error(
        "{target} answered 200 to the hand-over of {id} without confirming it ({answer}); the message stays here"
    )]
    Unconfirmed {
        target: String,
        id: QueueId,
        answer: String,
    },
    #[error("no target took message {id} after {rounds} rounds; last error: {last}")]
    Unreachable {
        id: QueueId,
        rounds: u32,
        last: String,
    },
    #[error("{0}")]
    Delivery(String),
    #[error("{left} messages are still in the spool: {why}")]
    Left { left: usize, why: String },
}

/// Where to hand messages over, and with which token.
#[derive(Debug, Clone)]
pub struct Handover {
    /// `http://HOST:PORT` of relays' admin endpoints.
    pub targets: Vec<String>,
    /// File holding the bearer token of the receiving relays' queue administration.
    pub token_file: PathBuf,
}

/// Drains the spool of `config`: hands every message over when `handover` is given,
/// delivers them otherwise. Returns when the spool is empty.
pub async fn drain(
    config: &RelayConfig,
    handover: Option<&Handover>,
    status_listen: Option<SocketAddr>,
) -> Result<DrainReport, DrainError> {
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let remaining = Arc::new(AtomicU64::new(spool.depth() as u64));
    if let Some(addr) = status_listen {
        match crate::net::listen(addr) {
            Ok(listener) => {
                let token = config.admin_token_file.as_ref().map(PathBuf::from);
                tokio::spawn(serve_status(listener, remaining.clone(), token));
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot serve the drain's progress"),
        }
    }
    tracing::info!(
        spool = %config.spool_dir,
        messages = spool.depth(),
        mode = if handover.is_some() { "hand-over" } else { "delivery" },
        "drain starting"
    );
    let state_dir = Path::new(&config.spool_dir).join("delivery");
    let report = match handover {
        Some(h) => hand_over(&spool, &state_dir, h, &remaining).await?,
        None => deliver(config, spool.clone(), &state_dir, &remaining).await?,
    };
    tracing::info!(
        handed_over = report.handed_over,
        delivered = report.delivered,
        finished = report.finished,
        "drain done: the spool is empty"
    );
    Ok(report)
}

async fn hand_over(
    spool: &Spool,
    state_dir: &Path,
    handover: &Handover,
    remaining: &AtomicU64,
) -> Result<DrainReport, DrainError> {
    let mut report = DrainReport::default();
    let mut next_target = 0usize;
    for id in spool.list() {
        let (envelope, text) = match spool.read(id) {
            Ok(m) => m,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let id_text = id.to_string();
        let (state, held) = stored_state(state_dir, &id_text).map_err(|e| SpoolError::Io {
            path: state_dir.join(&id_text),
            source: e,
        })?;
        if let Some(s) = &state
            && s.pending_recipients().is_empty()
            && s.dsn_pending.is_empty()
        {
            remove(spool, state_dir, id)?;
            report.finished += 1;
            remaining.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let head = ImportHead {
            envelope,
            state,
            held,
            source: format!("{}/{id}", config_name(state_dir)),
        };
        let mut body = serde_json::to_vec(&head).map_err(|e| SpoolError::Corrupt {
            path: state_dir.join(&id_text),
            reason: e.to_string(),
        })?;
        body.push(b'\n');
        body.extend_from_slice(&text);
        let body = Bytes::from(body);
        let new_id =
            send_with_retries(handover, &body, id, head.envelope.size, &mut next_target).await?;
        remove(spool, state_dir, id)?;
        report.handed_over += 1;
        remaining.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(queue_id = %id, new_queue_id = %new_id, "message handed over");
    }
    Ok(report)
}

/// The name of the spool for the log: its directory.
fn config_name(state_dir: &Path) -> String {
    state_dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "spool".into())
}

fn remove(spool: &Spool, state_dir: &Path, id: QueueId) -> Result<(), DrainError> {
    match spool.remove(id) {
        Ok(()) | Err(SpoolError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    forget_state(state_dir, &id.to_string()).map_err(|e| SpoolError::Io {
        path: state_dir.join(id.to_string()),
        source: e,
    })?;
    Ok(())
}

async fn send_with_retries(
    handover: &Handover,
    body: &Bytes,
    id: QueueId,
    size: u64,
    next_target: &mut usize,
) -> Result<String, DrainError> {
    let mut last = String::from("no target given");
    let mut backoff = Duration::from_secs(1);
    for round in 1..=HANDOVER_ROUNDS {
        // Read every round: a rotated Secret is in force at once.
        let token =
            std::fs::read_to_string(&handover.token_file).map_err(|source| DrainError::Token {
                path: handover.token_file.display().to_string(),
                source,
            })?;
        for _ in 0..handover.targets.len() {
            let target = &handover.targets[*next_target % handover.targets.len()];
            *next_target = next_target.wrapping_add(1);
            match post(target, token.trim(), body.clone()).await {
                // Deleted here only when the answer names this message, its size, and a
                // queue id it now has there.
                Ok((StatusCode::OK, answer)) => {
                    return match serde_json::from_slice::<ImportAnswer>(&answer) {
                        Ok(a)
                            if a.source_queue_id == id.to_string()
                                && a.size == size
                                && a.queue_id.parse::<QueueId>().is_ok() =>
                        {
                            Ok(a.queue_id)
                        }
                        _ => Err(DrainError::Unconfirmed {
                            target: target.clone(),
                            id,
                            answer: String::from_utf8_lossy(&answer)
                                .trim()
                                .chars()
                                .take(500)
                                .collect(),
                        }),
                    };
                }
                // The relay is there but will not take it: say so and stop; retrying
                // would not change its answer.
                Ok((status, answer))
                    if matches!(
                        status,
                        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ) =>
                {
                    return Err(DrainError::Refused {
                        target: target.clone(),
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&answer)
                            .trim()
                            .chars()
                            .take(500)
                            .collect(),
                    });
                }
                Ok((status, answer)) => {
                    last = format!(
                        "{target} answered {status}: {}",
                        String::from_utf8_lossy(&answer).trim()
                    );
                }
                Err(e) => last = format!("{target}: {e}"),
            }
            tracing::warn!(queue_id = %id, round, error = %last, "hand-over failed; trying the next target");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    Err(DrainError::Unreachable {
        id,
        rounds: HANDOVER_ROUNDS,
        last,
    })
}

/// `POST /queue/import` to `target` (`http://HOST:PORT`).
async fn post(target: &str, token: &str, body: Bytes) -> Result<(StatusCode, Bytes), String> {
    let authority = target
        .strip_prefix("http://")
        .ok_or_else(|| format!("{target} is not an http:// URL"))?
        .trim_end_matches('/');
    let timeout = Duration::from_secs(60 + body.len() as u64 / (1024 * 1024));
    let exchange = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::post(IMPORT_PATH)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-smtprelay-import",
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, answer))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn deliver(
    config: &RelayConfig,
    spool: Arc<Spool>,
    state_dir: &Path,
    remaining: &AtomicU64,
) -> Result<DrainReport, DrainError> {
    let start = spool.depth() as u64;
    let mut registry = prometheus_client::registry::Registry::default();
    let queue = QueueManager::new(
        spool.clone(),
        config.routes.clone(),
        &config.delivery,
        QueueOptions {
            hostname: config.hostname.clone(),
            state_dir: state_dir.to_path_buf(),
        },
        Arc::new(SystemClock),
        &mut registry,
    )
    .map_err(|e| DrainError::Delivery(e.to_string()))?;
    // No relay will come back for what waits: everything is due now, held mail included
    // (a hold would keep the drain, and the Organization's deletion, waiting forever).
    for m in queue.messages() {
        if m.held {
            tracing::warn!(queue_id = %m.queue_id, "held message released: the spool is being drained by delivery");
            if let Err(e) = queue.release(&m.queue_id) {
                tracing::warn!(queue_id = %m.queue_id, error = %e, "cannot release a held message");
            }
        }
    }
    queue.flush(None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = queue.clone();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_log = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let left = spool.depth();
        remaining.store(left as u64, Ordering::Relaxed);
        if left == 0 {
            break;
        }
        if task.is_finished() {
            return Err(DrainError::Left {
                left,
                why: "delivery stopped".into(),
            });
        }
        if last_log.elapsed() >= Duration::from_secs(60) {
            last_log = tokio::time::Instant::now();
            tracing::info!(messages = left, "drain: messages still to deliver");
        }
    }
    let _ = stop.send(());
    let _ = task.await;
    Ok(DrainReport {
        delivered: start,
        ..DrainReport::default()
    })
}

/// True when `authorization` carries the admin token of `token_file` (compared in
/// constant time); with no token file configured, anyone may read the progress.
fn status_allowed(token_file: Option<&Path>, authorization: Option<&[u8]>) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(file) = token_file else {
        return true;
    };
    let Ok(expected) = std::fs::read(file) else {
        return false;
    };
    let expected = expected.trim_ascii();
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match presented {
        Some(p) if !expected.is_empty() => {
            Sha256::digest(p).ct_eq(&Sha256::digest(expected)).into()
        }
        _ => false,
    }
}

/// Serves the progress on `/metrics`, to those who present the admin token when the
/// configuration names one (the operator does; the drain pod's port is not open to the
/// Organization's other pods either, by its NetworkPolicy).
async fn serve_status(listener: TcpListener, remaining: Arc<AtomicU64>, token: Option<PathBuf>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let remaining = remaining.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let n = remaining.load(Ordering::Relaxed);
                let allowed = status_allowed(
                    token.as_deref(),
                    req.headers()
                        .get(hyper::header::AUTHORIZATION)
                        .map(|v| v.as_bytes()),
                );
                async move {
                    if !allowed {
                        let mut refused = hyper::Response::new(Full::new(Bytes::from_static(
                            b"the admin token is required\n",
                        )));
                        *refused.status_mut() = StatusCode::UNAUTHORIZED;
                        return Ok::<_, std::convert::Infallible>(refused);
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!(
                            "# TYPE smtprelay_drain_remaining gauge\nsmtprelay_drain_remaining {n}\n# EOF\n"
                        ),
                    ))))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod status_tests {
    use super::status_allowed;

    #[test]
    fn the_progress_is_shown_only_to_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = Some(file.as_path());
        assert!(status_allowed(file, Some(b"Bearer s3cret")));
        assert!(!status_allowed(file, Some(b"Bearer guess")));
        assert!(!status_allowed(file, None));
        // Unreadable token: nobody.
        assert!(!status_allowed(
            Some(dir.path().join("gone").as_path()),
            Some(b"Bearer s3cret")
        ));
        // No token configured (a drain run by hand): anyone.
        assert!(status_allowed(None, None));
    }
}

//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (listeners are up and the relay is not stopping). On a graceful
//! stop `/readyz` answers 503 first, while the SMTP listeners still serve for the drain
//! delay; the endpoint closes with them.
//!
//! Owns only HTTP plumbing; the numbers come from [`crate::metrics::Metrics`]. Paths under
//! `/queue` are queue administration ([`crate::admin::queue`]), which needs a token; the
//! others stay open.
//!
//! Bounded like the SMTP listeners ([`AdminLimits`]): a client has
//! `header_read_timeout` to send a request's headers (also the next request's, on a kept-
//! alive connection), so a slowloris or a silent socket holds a connection for seconds, not
//! for ever; at most `max_connections` are served at once and one more is closed as soon
//! as it is accepted; an accept error (out of file descriptors) waits before the next
//! accept, doubling from 50 ms to 1 s, instead of spinning.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use crate::spool::Spool;

/// Bounds on the admin endpoint's clients; `Default` gives the production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// How long a client has to send a request's headers (on a kept-alive connection, the
    /// next request's too) before its connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most connections served at once; one more is closed as soon as it is accepted.
    /// Default 64.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// What the admin endpoint reads.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub ready: AtomicBool,
    pub queue: Arc<crate::admin::queue::QueueAdmin>,
}

fn respond(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => {
            state.metrics.spool_depth.set(state.spool.depth() as i64);
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.render(),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// The first wait after an accept error; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves until `shutdown` turns true, within `limits`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
    limits: AdminLimits,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Over the cap: closed at once (dropping the stream), before any byte is read.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer, "admin endpoint: connection cap reached, closed");
            continue;
        };
        let state = state.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path();
                    let resp = if path == crate::admin::queue::IMPORT_PATH
                        && req.method() == hyper::Method::POST
                    {
                        let (parts, body) = req.into_parts();
                        let auth = parts
                            .headers
                            .get(hyper::header::AUTHORIZATION)
                            .map(|v| v.as_bytes());
                        crate::admin::queue::import(state.queue.clone(), auth, body, peer).await
                    } else if crate::admin::queue::is_queue_path(path) {
                        let auth = req
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .map(|v| v.as_bytes());
                        let queue = state.queue.clone();
                        crate::admin::queue::handle(
                            queue,
                            req.method(),
                            path,
                            req.uri().query(),
                            auth,
                            peer,
                        )
                        .await
                    } else {
                        respond(&state, path)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

//! The operator's own Prometheus metrics and the small HTTP endpoint that serves them.
//!
//! Counts reconciles and their failures by kind of error, times them, and holds the last
//! TLS probe verdict of each MailRoute and whether each Organization's config is in force. `serve` answers `GET /metrics` (OpenMetrics text,
//! names under `smtprelay_operator_`) and `GET /healthz` over hyper, as the relay's admin
//! endpoint does; other paths are 404, other methods 405. It does not serve the relay's
//! metrics: relay pods have their own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

/// One Organization.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrganizationLabels {
    namespace: String,
    organization: String,
}

/// One MailRoute: bounded by the routes that exist, never a host or a recipient.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    namespace: String,
    /// `namespace/name`, as the relay names the route in its own metrics.
    route: String,
}

/// Reconcile counters and durations.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    route_tls: Family<RouteLabels, Gauge>,
    in_force: Family<OrganizationLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smtprelay_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "reconciles",
            "Reconciles of Organizations",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by kind of error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let route_tls = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "route_tls_verified",
            "Last TLS probe of a MailRoute: 1 when every host passed the route's TLS policy, \
             0 when one failed",
            route_tls.clone(),
        );
        let in_force = Family::<OrganizationLabels, Gauge>::default();
        registry.register(
            "config_in_force",
            "1 when every ready relay pod of the Organization runs its latest config \
             (condition InForce True), else 0",
            in_force.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            route_tls,
            in_force,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records one failed reconcile.
    pub fn failed(&self, error: &'static str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.into(),
            })
            .inc();
    }

    /// Records the verdict of a MailRoute's TLS probe (`route` is `namespace/name`).
    pub fn route_tls(&self, namespace: &str, route: &str, verified: bool) {
        self.route_tls
            .get_or_create(&RouteLabels {
                namespace: namespace.into(),
                route: route.into(),
            })
            .set(i64::from(verified));
    }

    /// Records whether an Organization's latest config is in force on its relays.
    pub fn config_in_force(&self, namespace: &str, organization: &str, in_force: bool) {
        self.in_force
            .get_or_create(&OrganizationLabels {
                namespace: namespace.into(),
                organization: organization.into(),
            })
            .set(i64::from(in_force));
    }

    /// Forgets a MailRoute that no longer exists, so its last verdict does not linger.
    pub fn forget_route(&self, namespace: &str, route: &str) {
        self.route_tls.remove(&RouteLabels {
            namespace: namespace.into(),
            route: route.into(),
        });
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of `render`'s output (prometheus-client writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` and `/healthz` on `listener` over HTTP/1.1 (hyper, as the relay's
/// admin endpoint) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.method(), req.uri().path(), &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .header_read_timeout(Duration::from_secs(5))
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to one request.
fn respond(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (method, path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(ctype));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    /// One request to the served endpoint: status, content type and body.
    async fn get(addr: std::net::SocketAddr, method: Method, path: &str) -> (u16, String, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp.headers()[CONTENT_TYPE_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_endpoint_reports_reconciles_failures_and_probes() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled(Duration::from_millis(3));
        metrics.failed("apply");
        metrics.route_tls("shop", "shop/relay", true);
        metrics.route_tls("shop", "shop/broken", false);
        metrics.config_in_force("shop", "acme", false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, metrics));
        let (status, ctype, text) = get(addr, Method::GET, "/metrics").await;
        let (health, _, ok) = get(addr, Method::GET, "/healthz").await;
        let (missing, _, _) = get(addr, Method::GET, "/nope").await;
        let (post, _, _) = get(addr, Method::POST, "/metrics").await;
        server.abort();
        assert_eq!(status, 200, "{text}");
        assert_eq!(ctype, CONTENT_TYPE);
        assert!(
            text.contains("smtprelay_operator_reconciles_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("smtprelay_operator_reconcile_failures_total{error=\"apply\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("smtprelay_operator_reconcile_duration_seconds_count 1\n"));
        assert!(
            text.contains(
                "smtprelay_operator_route_tls_verified{namespace=\"shop\",route=\"shop/relay\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "smtprelay_operator_route_tls_verified{namespace=\"shop\",route=\"shop/broken\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "smtprelay_operator_config_in_force{namespace=\"shop\",organization=\"acme\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!((health, ok.as_str()), (200, "ok\n"));
        assert_eq!(missing, 404);
        assert_eq!(post, 405);
    }
}

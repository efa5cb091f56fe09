//! Shared set-up of the delivery integration tests: a directory store, a manual clock, a
//! queue manager and route builders.
#![allow(dead_code)]

pub mod dns;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use relay::config::{
    DeliveryConfig, HostConfig, RouteConfig, RouteHosts, RouteMatcher, RouteTlsConfig,
};
use relay::delivery::FakeClock;
use relay::delivery::queue::{DirectoryStore, MessageStore, QueueManager, QueueOptions};

/// 2025-06-15 15:06:40 UTC.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

pub fn no_tls() -> RouteTlsConfig {
    RouteTlsConfig {
        require_tls: false,
        require_ca_signed: false,
        validate_hostname: false,
        extra_ca_file: None,
        implicit: false,
    }
}

pub fn route(
    name: &str,
    matcher: RouteMatcher,
    host: &str,
    port: u16,
    tls: RouteTlsConfig,
) -> RouteConfig {
    RouteConfig {
        rate_limit: None,
        name: name.to_string(),
        description: format!("test route {name}"),
        matcher,
        hosts: RouteHosts::Single(HostConfig {
            host: host.to_string(),
            port,
        }),
        mx_lookup: false,
        tls,
        auth: None,
    }
}

pub fn domains(list: &[&str]) -> RouteMatcher {
    RouteMatcher::Domains(list.iter().map(|s| s.to_string()).collect())
}

pub fn delivery_config(overrides: &[(&str, IpAddr)]) -> DeliveryConfig {
    DeliveryConfig {
        connect_timeout_seconds: 10,
        host_overrides: overrides
            .iter()
            .map(|(h, ip)| (h.to_string(), *ip))
            .collect::<BTreeMap<_, _>>(),
        ..DeliveryConfig::default()
    }
}

/// MX delivery may dial loopback: the in-test DNS servers point MX hosts at 127.0.0.1 and
/// ::1, which the destination guard refuses by default.
pub fn allow_loopback_mx(cfg: &mut DeliveryConfig) {
    cfg.allowed_internal_networks =
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
}

pub fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@acme.test>\r\n\r\nHello.\r\n.leading dot\r\n"
    )
    .into_bytes()
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<DirectoryStore>,
    pub clock: Arc<FakeClock>,
    pub registry: Registry,
    pub manager: QueueManager<DirectoryStore>,
}

impl Harness {
    pub fn new(routes: Vec<RouteConfig>, delivery: DeliveryConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new(t0()));
        let store = Arc::new(DirectoryStore::open(dir.path().join("spool")).unwrap());
        let mut registry = Registry::with_prefix(relay::metrics::PREFIX);
        let manager = Self::manager(&dir, &store, &clock, routes, delivery, &mut registry);
        Self {
            dir,
            store,
            clock,
            registry,
            manager,
        }
    }

    pub fn manager(
        dir: &tempfile::TempDir,
        store: &Arc<DirectoryStore>,
        clock: &Arc<FakeClock>,
        routes: Vec<RouteConfig>,
        delivery: DeliveryConfig,
        registry: &mut Registry,
    ) -> QueueManager<DirectoryStore> {
        QueueManager::new(
            store.clone(),
            routes,
            &delivery,
            QueueOptions {
                hostname: "relay.acme.test".into(),
                state_dir: dir.path().join("state"),
            },
            clock.clone(),
            registry,
        )
        .unwrap()
    }

    /// Spools a message and hands it to the queue manager.
    pub fn send(&self, from: &str, rcpts: &[&str], data: &[u8]) -> String {
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        let id = self
            .store
            .enqueue(from, &rcpts, data, self.clock.now_time())
            .unwrap();
        self.manager.submit(&id);
        id
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

pub trait NowTime {
    fn now_time(&self) -> SystemTime;
}

impl NowTime for FakeClock {
    fn now_time(&self) -> SystemTime {
        relay::delivery::Clock::now(self)
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs a future with a generous upper bound so a broken test fails instead of hanging.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step did not finish")
}

//! One delivery attempt of one recipient group over one route.
//!
//! [`Transport::deliver`] walks the hosts in the order the [`super::pool::HostPool`] gave,
//! expands each into its MX hosts when the route says so (preference order), resolves
//! addresses, and sends the message over a cached or new session, moving on to the next
//! address, MX host and pool host when a session fails. It reports one outcome per
//! recipient and which pool hosts failed, so the caller can mark them down. Whether and
//! when to retry is the queue manager's business, not this module's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;

use crate::config::{DeliveryConfig, HostConfig, RouteConfig, RouteHosts};

use super::Clock;
use super::client::{
    CacheKey, ConnectionCache, RecipientOutcome, SessionError, SessionParams, SmtpConnection,
    StageTimeouts,
};
use super::mx::{MxResolver, ResolveError};
use super::text::MessageText;
use super::tls::{HostProbe, TlsPolicy, TlsRequirement};

/// The result of delivering one group.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// One outcome per recipient, in the order given.
    pub outcomes: Vec<(String, RecipientOutcome)>,
    /// `host:port` of the session that answered last (for logs and metrics), if any.
    pub host: Option<String>,
    /// Pool hosts that failed as a whole (connect, timeout, 4xx, …).
    pub failed_hosts: Vec<HostConfig>,
    /// The pool host that took the transaction.
    pub succeeded_host: Option<HostConfig>,
}

/// Sessions, resolution and TLS configurations shared by all deliveries.
pub struct Transport {
    resolver: MxResolver,
    cache: ConnectionCache,
    helo_name: String,
    timeouts: StageTimeouts,
    tls_configs: Mutex<HashMap<TlsPolicy, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("helo_name", &self.helo_name)
            .finish()
    }
}

impl Transport {
    /// A transport announcing itself as `helo_name`.
    pub fn new(
        delivery: &DeliveryConfig,
        helo_name: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ResolveError> {
        Ok(Self {
            resolver: MxResolver::new(delivery)?,
            cache: ConnectionCache::new(
                Duration::from_secs(delivery.connection_idle_seconds),
                clock,
            ),
            helo_name: helo_name.to_string(),
            timeouts: StageTimeouts::from_config(delivery),
            tls_configs: Mutex::new(HashMap::new()),
        })
    }

    /// The connection cache (to sweep idle sessions).
    pub fn cache(&self) -> &ConnectionCache {
        &self.cache
    }

    fn tls_config(&self, policy: &TlsPolicy) -> Result<Arc<ClientConfig>, String> {
        let mut configs = self.tls_configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(policy) {
            return Ok(c.clone());
        }
        let config = policy.client_config().map_err(|e| e.to_string())?;
        configs.insert(policy.clone(), config.clone());
        Ok(config)
    }

    /// Delivers `data` to `rcpt_to` over `route`, trying `hosts` in order.
    pub async fn deliver(
        &self,
        route: &RouteConfig,
        hosts: &[HostConfig],
        mail_from: &str,
        rcpt_to: &[String],
        data: &MessageText,
    ) -> GroupResult {
        let policy = TlsPolicy::from_route(&route.tls);
        let mut result = GroupResult {
            outcomes: Vec::new(),
            host: None,
            failed_hosts: Vec::new(),
            succeeded_host: None,
        };
        let tls_config = match self.tls_config(&policy) {
            Ok(c) => c,
            Err(e) => {
                result.outcomes = defer_all(rcpt_to, &format!("route {}: {e}", route.name));
                return result;
            }
        };
        let mut last_temporary = String::from("no host to deliver to");
        let mut permanent: Option<(String, String)> = None;
        for pool_host in hosts {
            let targets = if route.mx_lookup {
                match self.resolver.mx_hosts(&pool_host.host).await {
                    Ok(t) => t,
                    Err(e) => {
                        last_temporary = e.to_string();
                        result.failed_hosts.push(pool_host.clone());
                        continue;
                    }
                }
            } else {
                vec![pool_host.host.clone()]
            };
            for target in targets {
                let addrs = match self.resolver.addresses(&target).await {
                    Ok(a) => a,
                    Err(e) => {
                        last_temporary = e.to_string();
                        continue;
                    }
                };
                for ip in addrs {
                    let addr = SocketAddr::new(ip, pool_host.port);
                    let params = SessionParams {
                        host: target.clone(),
                        addr,
                        helo_name: self.helo_name.clone(),
                        policy: policy.clone(),
                        tls_config: tls_config.clone(),
                        timeouts: self.timeouts,
                    };
                    let key = CacheKey {
                        host: target.clone(),
                        addr,
                        policy: policy.clone(),
                    };
                    result.host = Some(format!("{target}:{}", pool_host.port));
                    let sent = match self.cache.checkout(&key, &params).await {
                        Ok(mut conn) => match conn.send(mail_from, rcpt_to, data).await {
                            Ok(outcomes) => Ok((conn, outcomes)),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok((conn, outcomes)) => {
                            self.cache.checkin(key, conn);
                            result.outcomes = rcpt_to.iter().cloned().zip(outcomes).collect();
                            result.succeeded_host = Some(pool_host.clone());
                            return result;
                        }
                        Err(SessionError::Temporary(msg)) => {
                            tracing::info!(route = %route.name, host = %target, "delivery attempt failed: {msg}");
                            last_temporary = msg;
                        }
                        Err(SessionError::Permanent { status, diagnostic }) => {
                            tracing::info!(route = %route.name, host = %target, "delivery refused: {diagnostic}");
                            permanent.get_or_insert((status, diagnostic));
                        }
                    }
                }
            }
            result.failed_hosts.push(pool_host.clone());
        }
        result.outcomes = match permanent {
            Some((status, diagnostic)) => rcpt_to
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        RecipientOutcome::Failed {
                            status: status.clone(),
                            diagnostic: diagnostic.clone(),
                        },
                    )
                })
                .collect(),
            None => defer_all(rcpt_to, &last_temporary),
        };
        result
    }
}

fn defer_all(rcpt_to: &[String], reason: &str) -> Vec<(String, RecipientOutcome)> {
    rcpt_to
        .iter()
        .map(|r| {
            (
                r.clone(),
                RecipientOutcome::Deferred {
                    reason: reason.to_string(),
                },
            )
        })
        .collect()
}

/// Every configured host of a route, primaries first.
fn route_hosts(route: &RouteConfig) -> Vec<HostConfig> {
    match &route.hosts {
        RouteHosts::Single(h) => vec![h.clone()],
        RouteHosts::Pool { primary, secondary } => primary
            .iter()
            .chain(secondary.iter())
            .map(|w| HostConfig {
                host: w.host.clone(),
                port: w.port,
            })
            .collect(),
    }
}

/// See [`super::tls::probe_route`].
pub(crate) async fn probe_route_hosts(
    route: &RouteConfig,
    delivery: &DeliveryConfig,
) -> Vec<HostProbe> {
    let hosts = route_hosts(route);
    let failed_all = |message: String| {
        hosts
            .iter()
            .map(|h| HostProbe {
                host: h.host.clone(),
                port: h.port,
                verified: false,
                message: message.clone(),
            })
            .collect::<Vec<_>>()
    };
    let resolver = match MxResolver::new(delivery) {
        Ok(r) => r,
        Err(e) => return failed_all(e.to_string()),
    };
    // The probe tests TLS: plaintext never verifies.
    let mut policy = TlsPolicy::from_route(&route.tls);
    policy.requirement = TlsRequirement::Required;
    let tls_config = match policy.client_config() {
        Ok(c) => c,
        Err(e) => return failed_all(e.to_string()),
    };
    // A probe answers a person waiting: every step gets the connect timeout, not the
    // minutes a delivery may wait.
    let timeouts =
        StageTimeouts::uniform(Duration::from_secs(delivery.connect_timeout_seconds.max(1)));
    let mut probes = Vec::new();
    for pool_host in &hosts {
        let targets = if route.mx_lookup {
            match resolver.mx_hosts(&pool_host.host).await {
                Ok(t) => t,
                Err(e) => {
                    probes.push(HostProbe {
                        host: pool_host.host.clone(),
                        port: pool_host.port,
                        verified: false,
                        message: e.to_string(),
                    });
                    continue;
                }
            }
        } else {
            vec![pool_host.host.clone()]
        };
        for target in targets {
            let probe = |verified: bool, message: String| HostProbe {
                host: target.clone(),
                port: pool_host.port,
                verified,
                message,
            };
            let ip = match resolver.addresses(&target).await {
                Ok(a) => match a.first() {
                    Some(ip) => *ip,
                    None => continue,
                },
                Err(e) => {
                    probes.push(probe(false, e.to_string()));
                    continue;
                }
            };
            let params = SessionParams {
                host: target.clone(),
                addr: SocketAddr::new(ip, pool_host.port),
                helo_name: "probe.invalid".to_string(),
                policy: policy.clone(),
                tls_config: tls_config.clone(),
                timeouts,
            };
            match SmtpConnection::open(&params).await {
                Ok(conn) => {
                    conn.quit().await;
                    probes.push(probe(true, "Verified".to_string()));
                }
                Err(SessionError::Temporary(m)) => probes.push(probe(false, m)),
                Err(SessionError::Permanent { diagnostic, .. }) => {
                    probes.push(probe(false, diagnostic))
                }
            }
        }
    }
    probes
}

//! One delivery attempt of one recipient group over one route.
//!
//! [`Transport::deliver`] walks the hosts in the order the [`super::pool::HostPool`] gave,
//! expands each into its MX hosts when the route says so (preference order), resolves
//! addresses, and sends the message over a cached or new session, moving on to the next
//! address, MX host and pool host when a session fails. It reports one outcome per
//! recipient and which pool hosts failed, so the caller can mark them down. Whether and
//! when to retry is the queue manager's business, not this module's.
//!
//! Within one attempt (SPEC §3.5):
//! - Permanent is permanent. A 5xx to MAIL, DATA or the final dot ends the message for the
//!   group, and a 5xx to RCPT ends that recipient: no other host is asked (a backup MX
//!   must not take what the primary refused), and the host is not marked down (a user
//!   cannot drain a smarthost from rotation by provoking 5xx). NXDOMAIN (`5.1.2`) and a
//!   null MX (`5.1.10`) bounce at once.
//! - At most `maxMxHosts` MX hosts and `maxAddresses` addresses are tried per pool host.
//! - MX-expanded hosts (direct delivery and `mxLookup` routes) pass the
//!   [`DestinationGuard`]: addresses in internal networks are not dialled (`5.4.4` when
//!   nothing is left), and an MX host that is this relay is a loop (`5.4.6`). The hosts a
//!   route names itself are dialled as configured.
//! - When a route does not require TLS and the STARTTLS handshake fails for a reason other
//!   than the certificate, the same address is tried once more in plaintext (counted in
//!   `tls_plaintext_fallbacks`). See [`super::tls`] for why a certificate failure differs.
//! - A route with `auth` reads its credential files (the mounted Secret) at each attempt,
//!   so a rotated Secret takes effect without a restart; a file that cannot be read
//!   defers the group. A 5xx to AUTH bounces the group at once with the host's text
//!   (`5.7.8`): the other hosts of the route share the credentials, so asking them would
//!   only repeat the refusal. It is counted in `delivery_auth_failures` by route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::ClientConfig;

use crate::config::{DeliveryConfig, HostConfig, RouteAuthConfig, RouteConfig};
use crate::envelope::MailParams;

use super::client::{
    AuthCredentials, CacheKey, ConnectionCache, RecipientOutcome, SessionError, SessionParams,
    SmtpConnection, StageTimeouts,
};
use super::guard::{DestinationGuard, Refusal, hop_refusal};
use super::metrics::DeliveryMetrics;
use super::mx::{MxResolver, ResolveError};
use super::oauth::TokenCache;
use super::text::MessageText;
use super::tls::{TlsPolicy, TlsRequirement};
use crate::clock::Clock;

/// The result of delivering one group.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// One outcome per recipient, in the order given.
    pub outcomes: Vec<(String, RecipientOutcome)>,
    /// `host:port` of the session that answered last (for logs and metrics), if any.
    pub host: Option<String>,
    /// Pool hosts that failed as a whole (connect, timeout, 4xx, TLS, …); never a host
    /// that answered a transaction, even with a 5xx.
    pub failed_hosts: Vec<HostConfig>,
    /// The pool host that answered the transaction: took it, or refused it for good.
    pub succeeded_host: Option<HostConfig>,
}

impl GroupResult {
    /// Every recipient of the group bounces with `refusal`, nothing is sent.
    pub fn refused(rcpt_to: &[String], refusal: &Refusal) -> Self {
        Self {
            outcomes: fail_all(rcpt_to, refusal),
            host: None,
            failed_hosts: Vec::new(),
            succeeded_host: None,
        }
    }
}

/// Sessions, resolution and TLS configurations shared by all deliveries.
pub struct Transport {
    resolver: MxResolver,
    cache: ConnectionCache,
    helo_name: String,
    timeouts: StageTimeouts,
    /// TLS settings by route policy, with the digest of the CA file content they were
    /// built from: a CA rotated in place (same path, new content) builds new ones.
    tls_configs: Mutex<HashMap<TlsPolicy, RouteTls>>,
    guard: DestinationGuard,
    max_mx_hosts: usize,
    max_addresses: usize,
    max_received_headers: u32,
    tls_fallbacks: Counter,
    metrics: DeliveryMetrics,
    tokens: TokenCache,
    /// Send rates of the routes that have one, by route name.
    rates: Mutex<HashMap<String, Arc<super::rate::RouteRate>>>,
    /// Turns shared with the other replicas (the Redis limit store), when there is one.
    shared_turns: std::sync::RwLock<Option<Arc<dyn super::rate::SharedTurns>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("helo_name", &self.helo_name)
            .finish()
    }
}

/// The TLS settings of a route's sessions.
#[derive(Clone)]
struct RouteTls {
    config: Arc<ClientConfig>,
    /// SHA-256 of the CA file content the roots came from (`None`: no CA file).
    roots: Option<[u8; 32]>,
}

/// One host to dial, as the route named it or as an MX record did.
struct Target {
    host: String,
    /// Found through MX lookup: the destination guard applies.
    guarded: bool,
}

/// How a pool host's host names came out.
enum Targets {
    Hosts(Vec<Target>),
    /// A DNS answer that will not change (NXDOMAIN, null MX) or a loop.
    Permanent(Refusal),
    /// Worth another pool host or a later retry.
    Temporary(String),
}

/// How one address came out.
enum AddressOutcome {
    /// The transaction was answered: outcomes per recipient (delivered, deferred or failed).
    Answered(Vec<RecipientOutcome>),
    /// The host refused the message for good (5xx to MAIL, DATA or the final dot).
    Refused(Refusal),
    /// The session could not be used at all, for good (5xx greeting, certificate, …).
    HostPermanent(Refusal),
    /// The session failed; another address or a later retry may work.
    Temporary(String),
    /// The host refused the route's credentials (5xx to AUTH).
    AuthRejected(Refusal),
}

impl Transport {
    /// A transport announcing itself as `helo_name` (also the name an MX host must not
    /// have: that would be a loop). Plaintext retries are counted in `metrics`.
    pub fn new(
        delivery: &DeliveryConfig,
        helo_name: &str,
        clock: Arc<dyn Clock>,
        metrics: &DeliveryMetrics,
    ) -> Result<Self, ResolveError> {
        Ok(Self {
            resolver: MxResolver::new(delivery)?,
            cache: ConnectionCache::new(
                Duration::from_secs(delivery.connection_idle_seconds),
                clock.clone(),
            ),
            tokens: TokenCache::new(clock),
            rates: Mutex::new(HashMap::new()),
            shared_turns: std::sync::RwLock::new(None),
            helo_name: helo_name.to_string(),
            timeouts: StageTimeouts::from_config(delivery),
            tls_configs: Mutex::new(HashMap::new()),
            guard: DestinationGuard::new(delivery, helo_name),
            max_mx_hosts: delivery.max_mx_hosts.max(1) as usize,
            max_addresses: delivery.max_addresses.max(1) as usize,
            max_received_headers: delivery.max_received_headers,
            tls_fallbacks: metrics.tls_plaintext_fallbacks.clone(),
            metrics: metrics.clone(),
        })
    }

    /// The connection cache (to sweep idle sessions).
    pub fn cache(&self) -> &ConnectionCache {
        &self.cache
    }

    /// The loop refusal for a message that carries too many `Received:` headers
    /// (`maxReceivedHeaders`), checked once per message before any delivery.
    pub fn loop_refusal(&self, message: &[u8]) -> Option<Refusal> {
        hop_refusal(message, self.max_received_headers)
    }

    /// The TLS settings of `policy` with its CA file as it is now: cached by policy and
    /// the digest of the CA file's content (read at each delivery: a small file, so a
    /// rotated CA applies at once, as a rotated AUTH secret does).
    fn tls_config(&self, policy: &TlsPolicy) -> Result<RouteTls, String> {
        use sha2::{Digest, Sha256};
        let ca = policy.read_ca().map_err(|e| e.to_string())?;
        let roots: Option<[u8; 32]> = ca.as_deref().map(|pem| Sha256::digest(pem).into());
        let mut configs = self.tls_configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(policy)
            && c.roots == roots
        {
            return Ok(c.clone());
        }
        let config = policy
            .client_config_with_ca(ca.as_deref())
            .map_err(|e| e.to_string())?;
        let tls = RouteTls { config, roots };
        configs.insert(policy.clone(), tls.clone());
        Ok(tls)
    }

    /// The host names to dial for one pool host: itself, or its MX hosts (at most
    /// `maxMxHosts`, cut before the first one that is this relay).
    async fn targets(&self, route: &RouteConfig, pool_host: &HostConfig) -> Targets {
        if !route.mx_lookup {
            return Targets::Hosts(vec![Target {
                host: pool_host.host.clone(),
                guarded: false,
            }]);
        }
        let domain = &pool_host.host;
        // An address literal (`[192.0.2.1]`, a sender's domain a bounce goes back to) has
        // no MX: it is the host itself, and the guard applies.
        if domain.starts_with('[') && domain.ends_with(']') {
            return Targets::Hosts(vec![Target {
                host: domain.clone(),
                guarded: true,
            }]);
        }
        let mut hosts = match self.resolver.mx_hosts(domain).await {
            Ok(hosts) => hosts,
            Err(e) => {
                return match e.permanent_status() {
                    Some(status) => Targets::Permanent(Refusal {
                        status: status.to_string(),
                        diagnostic: e.to_string(),
                    }),
                    None => Targets::Temporary(e.to_string()),
                };
            }
        };
        // RFC 5321 §5.1: hosts as preferred as this relay, or less, are not used; when
        // this relay is the best MX, the mail is looping.
        if let Some(me) = hosts.iter().position(|h| self.guard.is_self(h)) {
            if me == 0 {
                return Targets::Permanent(DestinationGuard::loops_back(domain));
            }
            hosts.truncate(me);
        }
        if hosts.len() > self.max_mx_hosts {
            tracing::info!(
                route = %route.name,
                domain = %domain,
                "{} MX hosts, trying the first {}",
                hosts.len(),
                self.max_mx_hosts
            );
            hosts.truncate(self.max_mx_hosts);
        }
        Targets::Hosts(
            hosts
                .into_iter()
                .map(|host| Target {
                    host,
                    guarded: true,
                })
                .collect(),
        )
    }

    /// Takes the turns of rate-limited routes from `shared` (every replica's budget).
    pub fn set_shared_turns(&self, shared: Arc<dyn super::rate::SharedTurns>) {
        *self.shared_turns.write().unwrap_or_else(|e| e.into_inner()) = Some(shared);
    }

    /// The send rate of `route`, when it has one (made on first use, its rate following
    /// the route's config).
    fn rate_of(&self, route: &RouteConfig) -> Option<Arc<super::rate::RouteRate>> {
        let per_second = route.rate_limit?.messages_per_second?;
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let rate = rates
            .entry(route.name.clone())
            .or_insert_with(|| Arc::new(super::rate::RouteRate::new(f64::from(per_second))))
            .clone();
        rate.set_rate(f64::from(per_second));
        Some(rate)
    }

    /// Delivers `data` to `rcpt_to` over `route`, trying `hosts` in order; `mail_params`
    /// are the MAIL parameters the client declared.
    pub async fn deliver(
        &self,
        route: &RouteConfig,
        hosts: &[HostConfig],
        mail_from: &str,
        rcpt_to: &[String],
        data: &MessageText,
        mail_params: MailParams,
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
                // 4.7.0: a security matter on this side, to be retried (RFC 3463).
                result.outcomes = defer_all(rcpt_to, &format!("4.7.0 route {}: {e}", route.name));
                return result;
            }
        };
        let auth = match route.auth.as_ref() {
            None => Ok(None),
            Some(a) => read_credentials(a, &self.tokens).await.map(Some),
        };
        let auth = match auth {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(route = %route.name, "{e}");
                // 4.7.0: a security matter on this side, to be retried (RFC 3463).
                result.outcomes = defer_all(rcpt_to, &format!("4.7.0 route {}: {e}", route.name));
                return result;
            }
        };
        let mut last_temporary = String::from("no host to deliver to");
        let mut permanent: Option<Refusal> = None;
        for pool_host in hosts {
            let targets = match self.targets(route, pool_host).await {
                Targets::Hosts(t) => t,
                Targets::Permanent(refusal) => {
                    tracing::info!(route = %route.name, host = %pool_host.host, "not delivered: {}", refusal.diagnostic);
                    permanent.get_or_insert(refusal);
                    continue;
                }
                Targets::Temporary(msg) => {
                    last_temporary = msg;
                    result.failed_hosts.push(pool_host.clone());
                    continue;
                }
            };
            let mut budget = self.max_addresses;
            let mut guarded_out = 0usize;
            let mut session_failed = false;
            'targets: for target in targets {
                let addrs = match self.resolver.addresses(&target.host).await {
                    Ok(a) => a,
                    Err(e) => {
                        last_temporary = e.to_string();
                        session_failed = true;
                        continue;
                    }
                };
                for ip in addrs {
                    if budget == 0 {
                        tracing::info!(route = %route.name, host = %pool_host.host, "address limit of {} reached", self.max_addresses);
                        break 'targets;
                    }
                    if target.guarded && !self.guard.may_dial(ip) {
                        tracing::warn!(route = %route.name, host = %target.host, address = %ip, "not dialled: the address is in a network MX delivery does not go to");
                        guarded_out += 1;
                        continue;
                    }
                    budget -= 1;
                    let addr = SocketAddr::new(ip, pool_host.port);
                    result.host = Some(format!("{}:{}", target.host, pool_host.port));
                    let outcome = self
                        .try_address(
                            route,
                            &target.host,
                            addr,
                            &policy,
                            &tls_config,
                            auth.as_ref(),
                            mail_from,
                            rcpt_to,
                            data,
                            mail_params,
                        )
                        .await;
                    match outcome {
                        AddressOutcome::Answered(outcomes) => {
                            if route.auth.is_some() {
                                self.metrics.auth_accepted(&route.name);
                            }
                            result.outcomes = rcpt_to.iter().cloned().zip(outcomes).collect();
                            result.succeeded_host = Some(pool_host.clone());
                            return result;
                        }
                        AddressOutcome::AuthRejected(refusal) => {
                            tracing::warn!(route = %route.name, host = %target.host, "credentials refused: {}", refusal.diagnostic);
                            self.metrics.auth_failed(&route.name);
                            result.outcomes = fail_all(rcpt_to, &refusal);
                            result.succeeded_host = Some(pool_host.clone());
                            return result;
                        }
                        AddressOutcome::Refused(refusal) => {
                            tracing::info!(route = %route.name, host = %target.host, "message refused: {}", refusal.diagnostic);
                            result.outcomes = fail_all(rcpt_to, &refusal);
                            result.succeeded_host = Some(pool_host.clone());
                            return result;
                        }
                        AddressOutcome::HostPermanent(refusal) => {
                            tracing::info!(route = %route.name, host = %target.host, "delivery refused: {}", refusal.diagnostic);
                            permanent.get_or_insert(refusal);
                            session_failed = true;
                        }
                        AddressOutcome::Temporary(msg) => {
                            tracing::info!(route = %route.name, host = %target.host, "delivery attempt failed: {msg}");
                            last_temporary = msg;
                            session_failed = true;
                        }
                    }
                }
            }
            if session_failed {
                result.failed_hosts.push(pool_host.clone());
            } else if guarded_out > 0 {
                // Every address found was in a network MX delivery does not go to.
                permanent.get_or_insert(DestinationGuard::refused_network(&pool_host.host));
            } else {
                last_temporary = format!("no usable address for {}", pool_host.host);
                result.failed_hosts.push(pool_host.clone());
            }
        }
        result.outcomes = match permanent {
            Some(refusal) => fail_all(rcpt_to, &refusal),
            None => defer_all(rcpt_to, &last_temporary),
        };
        result
    }

    /// Sends over one address: a cached or new session, and once more in plaintext when
    /// the STARTTLS handshake failed and the route allows plaintext.
    #[allow(clippy::too_many_arguments)]
    async fn try_address(
        &self,
        route: &RouteConfig,
        host: &str,
        addr: SocketAddr,
        policy: &TlsPolicy,
        tls: &RouteTls,
        auth: Option<&AuthCredentials>,
        mail_from: &str,
        rcpt_to: &[String],
        data: &MessageText,
        mail_params: MailParams,
    ) -> AddressOutcome {
        let mut params = SessionParams {
            host: host.to_string(),
            addr,
            helo_name: self.helo_name.clone(),
            policy: policy.clone(),
            tls_config: tls.config.clone(),
            timeouts: self.timeouts,
            plaintext: false,
            auth: auth.cloned(),
        };
        let key = CacheKey {
            host: host.to_string(),
            addr,
            policy: policy.clone(),
            roots: tls.roots,
            auth: route.auth.as_ref().map(|a| a.secret_file.clone()),
        };
        let opened = match self.cache.checkout(&key, &params).await {
            Err(SessionError::TlsHandshake(msg))
                if policy.requirement == TlsRequirement::Opportunistic =>
            {
                tracing::warn!(route = %route.name, host = %host, "{msg}; retrying once in plaintext");
                self.tls_fallbacks.inc();
                params.plaintext = true;
                SmtpConnection::open(&params).await
            }
            other => other,
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(SessionError::Temporary(msg)) | Err(SessionError::TlsHandshake(msg)) => {
                return AddressOutcome::Temporary(msg);
            }
            Err(SessionError::Permanent { status, diagnostic }) => {
                return AddressOutcome::HostPermanent(Refusal { status, diagnostic });
            }
            Err(SessionError::AuthRejected { status, diagnostic }) => {
                return AddressOutcome::AuthRejected(Refusal { status, diagnostic });
            }
        };
        let rate = self.rate_of(route);
        if let Some(rate) = &rate {
            let shared = self
                .shared_turns
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            rate.acquire_for(&route.name, shared.as_deref()).await;
        }
        let mut sent = conn.send(mail_from, rcpt_to, data, mail_params).await;
        if sent.is_err() && conn.is_stale() {
            // A cached session the server had closed (idle timeout, a per-session limit):
            // nothing of this transaction reached it, so a new session gets it.
            sent = match SmtpConnection::open(&params).await {
                Ok(fresh) => {
                    conn = fresh;
                    conn.send(mail_from, rcpt_to, data, mail_params).await
                }
                Err(e) => Err(e),
            };
        }
        if let Some(rate) = &rate {
            // A 4xx to the transaction is how providers throttle: slow the route down.
            let throttled = match &sent {
                Ok(outcomes) => outcomes
                    .iter()
                    .any(|o| matches!(o, RecipientOutcome::Deferred { .. })),
                Err(SessionError::Temporary(_)) => true,
                Err(_) => false,
            };
            if throttled {
                rate.throttled();
                tracing::info!(route = %route.name, rate = rate.current(), "temporary refusal: the route sends slower");
            } else {
                rate.answered();
            }
        }
        match sent {
            Ok(outcomes) => {
                self.cache.checkin(key, conn);
                AddressOutcome::Answered(outcomes)
            }
            // The session may be mid-transaction: it is closed, not cached.
            Err(SessionError::Permanent { status, diagnostic })
            | Err(SessionError::AuthRejected { status, diagnostic }) => {
                AddressOutcome::Refused(Refusal { status, diagnostic })
            }
            Err(SessionError::Temporary(msg)) | Err(SessionError::TlsHandshake(msg)) => {
                AddressOutcome::Temporary(msg)
            }
        }
    }
}

/// The route's credentials, read from the mounted Secret's files now, the access token of an
/// OAuth grant from the cache or its endpoint. The error names the file or the endpoint's
/// answer, never a secret.
async fn read_credentials(
    auth: &RouteAuthConfig,
    tokens: &TokenCache,
) -> Result<AuthCredentials, String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| {
                format!(
                    "cannot read the credentials of Secret {} ({path}): {e}",
                    auth.secret_name
                )
            })
    };
    let username = read(&auth.username_file)?;
    let secret = match auth.grant() {
        Some(grant) => tokens
            .token(grant, &username)
            .await
            .map_err(|e| format!("no XOAUTH2 access token: {e}"))?,
        None => read(&auth.secret_file)?,
    };
    Ok(AuthCredentials {
        mechanism: auth.mechanism,
        username,
        secret,
    })
}

fn fail_all(rcpt_to: &[String], refusal: &Refusal) -> Vec<(String, RecipientOutcome)> {
    rcpt_to
        .iter()
        .map(|r| {
            (
                r.clone(),
                RecipientOutcome::Failed {
                    status: refusal.status.clone(),
                    diagnostic: refusal.diagnostic.clone(),
                },
            )
        })
        .collect()
}

/// Every recipient deferred with one reason.
pub(crate) fn defer_all(rcpt_to: &[String], reason: &str) -> Vec<(String, RecipientOutcome)> {
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

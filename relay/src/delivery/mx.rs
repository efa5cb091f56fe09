//! Name resolution for delivery: MX lookup and host addresses (SPEC §2.4, §3.5).
//!
//! [`MxResolver`] asks the nameservers of [`DeliveryConfig::nameservers`] (the system
//! resolver configuration when empty) through hickory-resolver. `host_overrides` are
//! consulted first for a host name's address. MX hosts come back in preference order; a
//! domain without MX records is its own mail host (RFC 5321 §5.1). Answers that will not
//! change on a retry are errors of their own: a domain that does not exist (NXDOMAIN,
//! [`ResolveError::NoSuchDomain`]) and a null MX (RFC 7505, [`ResolveError::NullMx`]).
//! Trying the next MX when one fails, how many to try and which addresses may be dialled
//! are the caller's business; this module only answers questions.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::DeliveryConfig;

/// A name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the resolver could not be set up: {0}")]
    Setup(String),
    #[error("MX lookup of {domain} failed: {message}")]
    Mx { domain: String, message: String },
    #[error("address lookup of {host} failed: {message}")]
    Address { host: String, message: String },
    /// The name does not exist (NXDOMAIN): no mail can ever reach it.
    #[error("the domain {domain} does not exist")]
    NoSuchDomain { domain: String },
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("the domain {domain} accepts no mail (null MX)")]
    NullMx { domain: String },
}

impl ResolveError {
    /// The enhanced status of an answer that will not change on a retry: NXDOMAIN is
    /// `5.1.2` (bad destination system), a null MX `5.1.10` (RFC 7505). `None` for
    /// failures worth a retry (timeouts, SERVFAIL, no answer).
    pub fn permanent_status(&self) -> Option<&'static str> {
        match self {
            ResolveError::NoSuchDomain { .. } => Some("5.1.2"),
            ResolveError::NullMx { .. } => Some("5.1.10"),
            _ => None,
        }
    }
}

/// MX and address lookups with static overrides.
pub struct MxResolver {
    resolver: TokioResolver,
    overrides: BTreeMap<String, IpAddr>,
}

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxResolver")
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl MxResolver {
    /// A resolver for the configured nameservers (system configuration when none).
    pub fn new(delivery: &DeliveryConfig) -> Result<Self, ResolveError> {
        let builder = if delivery.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Setup(e.to_string()))?
        } else {
            let servers = delivery
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        let overrides = delivery
            .host_overrides
            .iter()
            .map(|(k, v)| (normalize(k), *v))
            .collect();
        Ok(Self {
            resolver,
            overrides,
        })
    }

    /// The mail hosts of `domain`, most preferred first. No MX records: the domain itself.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, ResolveError> {
        let domain = normalize(domain);
        let fqdn = format!("{domain}.");
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, normalize(&mx.exchange.to_ascii()))),
                        _ => None,
                    })
                    .collect();
                // Stable: equal preferences keep the order the server gave.
                mx.sort_by_key(|(pref, _)| *pref);
                // A single "." exchange is a null MX (RFC 7505): the domain takes no mail.
                if mx.len() == 1 && mx[0].1.is_empty() {
                    return Err(ResolveError::NullMx { domain });
                }
                // A "." among real exchanges is a misconfiguration: skip it.
                mx.retain(|(_, host)| !host.is_empty());
                if mx.is_empty() {
                    return Ok(vec![domain]);
                }
                Ok(mx.into_iter().map(|(_, host)| host).collect())
            }
            // NXDOMAIN: the domain does not exist, so it has no implicit MX either.
            Err(e) if e.is_nx_domain() => Err(ResolveError::NoSuchDomain { domain }),
            // NOERROR without MX records: the domain is its own mail host (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => Ok(vec![domain]),
            Err(e) => Err(ResolveError::Mx {
                domain,
                message: e.to_string(),
            }),
        }
    }

    /// The addresses of a host: an IP literal is itself, then the overrides, then DNS.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let literal = match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &literal[5..],
            _ => literal,
        };
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = normalize(host);
        if let Some(ip) = self.overrides.get(&name) {
            return Ok(vec![*ip]);
        }
        let fqdn = format!("{name}.");
        let found =
            self.resolver
                .lookup_ip(fqdn.as_str())
                .await
                .map_err(|e| ResolveError::Address {
                    host: name.clone(),
                    message: e.to_string(),
                })?;
        let ips: Vec<IpAddr> = found.iter().collect();
        if ips.is_empty() {
            return Err(ResolveError::Address {
                host: name,
                message: "no A or AAAA records".into(),
            });
        }
        Ok(ips)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

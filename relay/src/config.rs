//! `RelayConfig`: the one document that fully describes a relay's behaviour.
//!
//! `render` (in the operator crate) produces it from the CRD objects; the operator writes
//! it to a ConfigMap; relay pods and `relayctl run` load it. It is deterministic: lists are
//! sorted by `render`, maps are `BTreeMap`s, and [`RelayConfig::compute_hash`] hashes the
//! canonical JSON form (with `hash` left empty), so equal behaviour gives an equal hash.
//! Secrets (TLS key, password hashes, CA roots) are not inlined: the document names files,
//! which in a pod are Secret volume mounts and under `relayctl run` are written by the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the document format. Bumped on incompatible changes.
pub const CONFIG_FORMAT: u32 = 1;

/// Everything a relay needs to know to behave as the organization declared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// Document format, [`CONFIG_FORMAT`].
    pub format: u32,
    /// SHA-256 (hex) of the canonical document with this field empty.
    #[serde(default)]
    pub hash: String,
    /// The organization this relay serves.
    pub organization: OrganizationConfig,
    /// Name announced in the greeting, EHLO reply and `Received:` headers.
    pub hostname: String,
    /// Where the relay listens.
    pub listeners: ListenerConfig,
    /// TLS material for STARTTLS and implicit TLS; `None` disables both (and so every
    /// setting that requires TLS refuses mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Who may relay. A message is accepted when at least one setting accepts it.
    pub settings: Vec<SettingConfig>,
    /// Where mail goes.
    pub routes: Vec<RouteConfig>,
    /// Limits and protocol bounds.
    pub limits: LimitsConfig,
    /// Where limit counters live.
    pub limit_store: LimitStoreConfig,
    /// Delivery behaviour.
    pub delivery: DeliveryConfig,
    /// Spool directory.
    pub spool_dir: String,
    /// Address of the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
    pub admin_listen: SocketAddr,
    /// File holding the bearer token that queue administration on the admin endpoint
    /// requires (read on every request, so a rotated token is in force at once); `None`
    /// disables queue administration (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<String>,
    /// PROXY protocol on every SMTP listener (behind a load balancer); `None`: the
    /// connection's peer is the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Leave the client's address out of `Received:` (see [`crate::ingress::received`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_client_address: bool,
    /// DKIM signing keys (SPEC §2.1 `dkim`): mail whose header From domain is a listed
    /// domain or a subdomain of one is signed before delivery with the most specific
    /// domain's key. Sorted by domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimConfig>,
    /// Content filters every message passes before the `250`, in order (SPEC §3.4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_filters: Vec<ContentFilterConfig>,
    /// Comprehensive mail storage: a journal copy of every accepted message (SPEC §3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveConfig>,
}

/// Where the journal copies of accepted messages go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The archive's address (domain lower case).
    pub address: String,
    /// The route (`namespace/name`) copies go through; `None`: routed like any recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Archive what a content filter discarded or quarantined too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_filtered_out: bool,
    /// The organization's postmaster: envelope sender of the copies, and who is told
    /// when one cannot be delivered.
    pub postmaster: String,
}

/// One content filter spoken to over the milter protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentFilterConfig {
    /// Name in metrics, logs and status.
    pub name: String,
    /// Host name or IP address of the filter's milter socket.
    pub host: String,
    pub port: u16,
    /// Most seconds the filter may take for one message, connecting included.
    pub timeout_seconds: u64,
    /// What a message gets when the filter cannot answer.
    pub on_unavailable: OnUnavailable,
    /// Messages larger than this skip the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

/// What a message gets when its content filter cannot be consulted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnUnavailable {
    /// `451 4.7.1`: the client retries later.
    TempFail,
    /// Accepted without this filter's verdict, and counted.
    Accept,
}

/// One DKIM signing key. The key is not inlined: `key_file` names a file (a mounted
/// Secret key) that the relay reads when it signs, so a rotated Secret is used without a
/// restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimConfig {
    /// Lower-case signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`): the key's DNS record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// Signature algorithm (`a=`).
    pub algorithm: DkimAlgorithm,
    /// PEM file of the private key (PKCS#8; PKCS#1 `RSA PRIVATE KEY` is accepted too for RSA).
    pub key_file: String,
    /// Header fields to sign (`h=`), in order; always includes `From`.
    pub headers: Vec<String>,
}

/// DKIM signature algorithms (RFC 6376 §3.3, RFC 8463).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DkimAlgorithm {
    /// RSA with SHA-256.
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name used in manifests and in the `a=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// Who may tell the relay, with a PROXY protocol (v1 or v2) header, which client a
/// connection is for (SPEC §3.2). A reload applies it to the next connection accepted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// Load balancers allowed to send a header. A header from any other peer closes the
    /// connection.
    pub trusted_proxies: Vec<IpNet>,
    /// Every connection must come from a trusted proxy and start with a header; without
    /// it the connection is closed. Off: a connection without a header (from a trusted
    /// proxy or not) is a direct client.
    pub required: bool,
}

/// The organization (customer) a relay serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrganizationConfig {
    /// `namespace/name` of the Organization object.
    pub name: String,
    /// Lower-case mail domains; subdomains belong to the organization too.
    pub domains: Vec<String>,
    /// Lower-case registered user addresses.
    pub users: Vec<String>,
    /// File of SMTP AUTH credentials (the `credentials` key of a mounted Secret): one
    /// `address:PHC` line per user, the PHC string an argon2id hash
    /// (`alice@example.com:$argon2id$v=19$...`); blank lines and `#` comments are ignored.
    /// Secret keys cannot hold `@`, hence one file rather than one key per user.
    /// `None`: AUTH always fails with 535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
}

/// Listening sockets. Port 0 means "pick a free port" (tests, `relayctl run`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// Plain SMTP with STARTTLS (25 in a pod).
    pub smtp: SocketAddr,
    /// Submission with STARTTLS (587 in a pod).
    pub submission: SocketAddr,
    /// Implicit TLS (465 in a pod).
    pub smtps: SocketAddr,
}

/// PEM files of the relay's own certificate chain and key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM (`tls.crt` of a `kubernetes.io/tls` Secret).
    pub cert_file: String,
    /// Private key, PEM (`tls.key`).
    pub key_file: String,
}

/// One SmtpRelaySetting, resolved: its IP ranges are the enabled ranges its selector chose.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingConfig {
    /// `namespace/name` of the SmtpRelaySetting.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Which envelope senders it allows.
    pub allowed_senders: AllowedSenders,
    /// `Some(ranges)` when the IP allow list is on: the client IP must lie in one of them
    /// (an empty list then matches nobody). `None` when the IP check is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<RangeConfig>>,
    /// The client must have authenticated with SMTP AUTH.
    pub require_smtp_auth: bool,
    /// The client must have started TLS before MAIL FROM.
    pub require_tls: bool,
}

/// Sender modes of SPEC §3.3.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllowedSenders {
    RegisteredUsers,
    OrganizationDomains,
    AnyAddress,
}

/// The API's name of the mode (`OrganizationDomains`), as messages print it.
impl std::fmt::Display for AllowedSenders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AllowedSenders::RegisteredUsers => "RegisteredUsers",
            AllowedSenders::OrganizationDomains => "OrganizationDomains",
            AllowedSenders::AnyAddress => "AnyAddress",
        })
    }
}

/// One enabled IpAllowRange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeConfig {
    /// `namespace/name` of the IpAllowRange.
    pub name: String,
    /// Canonical network (a single address is a /32 or /128).
    pub network: IpNet,
}

/// One MailRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// `namespace/name` of the MailRoute.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Which recipients take it.
    pub matcher: RouteMatcher,
    /// Where the mail goes.
    pub hosts: RouteHosts,
    /// Hosts are domains whose MX records give the real hosts.
    pub mx_lookup: bool,
    /// TLS checks of delivery.
    pub tls: RouteTlsConfig,
    /// Outbound SMTP AUTH to the route's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuthConfig>,
    /// Send rate and connections toward the route's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRateLimit>,
}

/// Delivery on a route never exceeds these; mail waits in the queue instead.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRateLimit {
    /// Message transactions started per second, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<u32>,
    /// Connections to the route's hosts at once, at most (also below the delivery's
    /// per-destination concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// Outbound SMTP AUTH of a route. The credentials are files of a mounted Secret, read at
/// each delivery (a rotated Secret takes effect without a restart); the configuration
/// never holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteAuthConfig {
    /// SASL mechanism.
    pub mechanism: AuthMechanism,
    /// Name of the Secret the files come from (for messages; never its content).
    pub secret_name: String,
    /// File holding the user name (the Secret's `username` key).
    pub username_file: String,
    /// File holding the password (`Plain`, `Login`) or the access token (`XOAuth2`).
    pub secret_file: String,
    /// `XOAuth2` only: fetch the access token from a token endpoint (OAuth 2.0 client
    /// credentials) instead of reading `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<ClientCredentialsConfig>,
    /// `XOAuth2` only: trade a refresh token for access tokens (OAuth 2.0 refresh-token
    /// grant, Gmail) instead of reading `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshTokenConfig>,
    /// `XOAuth2` only: sign a JWT with a service account's key and trade it for an access
    /// token for the user in `username_file` (JWT bearer grant, Google service accounts)
    /// instead of reading `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountConfig>,
}

/// How an XOAUTH2 route gets its access token, when the relay fetches it: at most one
/// grant per route (the CRD admits one; [`RouteAuthConfig::grant`] takes the first set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthGrant<'a> {
    /// OAuth 2.0 client credentials (RFC 6749 §4.4).
    ClientCredentials(&'a ClientCredentialsConfig),
    /// OAuth 2.0 refresh token (RFC 6749 §6).
    RefreshToken(&'a RefreshTokenConfig),
    /// JWT bearer assertion signed with a service account's key (RFC 7523).
    ServiceAccount(&'a ServiceAccountConfig),
}

impl RouteAuthConfig {
    /// The OAuth 2.0 grant the relay fetches this route's access token with, if any.
    pub fn grant(&self) -> Option<OAuthGrant<'_>> {
        self.client_credentials
            .as_ref()
            .map(OAuthGrant::ClientCredentials)
            .or_else(|| self.refresh_token.as_ref().map(OAuthGrant::RefreshToken))
            .or_else(|| {
                self.service_account
                    .as_ref()
                    .map(OAuthGrant::ServiceAccount)
            })
    }

    /// The Secret files the route's credentials come from besides the user name: the
    /// password or token, or those of its OAuth grant, each with what it holds.
    pub fn secret_files(&self) -> Vec<(&'static str, &str)> {
        match self.grant() {
            None => vec![("route AUTH secret", self.secret_file.as_str())],
            Some(OAuthGrant::ClientCredentials(cc)) => {
                vec![("route OAuth client secret", cc.client_secret_file.as_str())]
            }
            Some(OAuthGrant::RefreshToken(rt)) => vec![
                ("route OAuth client secret", rt.client_secret_file.as_str()),
                ("route OAuth refresh token", rt.refresh_token_file.as_str()),
            ],
            Some(OAuthGrant::ServiceAccount(sa)) => {
                vec![("route service account key", sa.key_file.as_str())]
            }
        }
    }
}

/// OAuth 2.0 refresh-token settings of an XOAUTH2 route (Gmail): the relay trades the
/// refresh token for access tokens and fetches a new one before each expires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshTokenConfig {
    /// `https://` URL of the token endpoint.
    pub token_endpoint: String,
    /// OAuth client id.
    pub client_id: String,
    /// File holding the client secret (the Secret's `clientSecret` key).
    pub client_secret_file: String,
    /// File holding the refresh token (the Secret's `refreshToken` key).
    pub refresh_token_file: String,
    /// PEM file of extra CA roots for the endpoint's certificate (the route's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// Google service-account settings of an XOAUTH2 route: the relay signs a JWT (RS256) with
/// the key, for the user in the route's `username_file`, and posts it to the key's
/// `token_uri`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountConfig {
    /// File holding the service account's JSON key (the Secret's `serviceAccountKey` key).
    pub key_file: String,
    /// Scope requested (`https://mail.google.com/` for Gmail).
    pub scope: String,
    /// PEM file of extra CA roots for the endpoint's certificate (the route's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// OAuth 2.0 client-credentials settings of an XOAUTH2 route; the relay fetches the token
/// and refreshes it before it expires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCredentialsConfig {
    /// `https://` URL of the token endpoint.
    pub token_endpoint: String,
    /// OAuth client id.
    pub client_id: String,
    /// Requested scope, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// File holding the client secret (a mounted Secret's `clientSecret` key).
    pub client_secret_file: String,
    /// PEM file of extra CA roots for the endpoint's certificate (the route's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// SASL mechanism of outbound AUTH.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// RFC 4616 PLAIN.
    Plain,
    /// LOGIN (user name and password, each in a 334 round).
    Login,
    /// XOAUTH2: user name and an OAuth 2.0 access token.
    XOAuth2,
}

impl AuthMechanism {
    /// The SASL name as in `AUTH <name>`.
    pub fn sasl_name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::XOAuth2 => "XOAUTH2",
        }
    }
}

/// Which recipients take a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteMatcher {
    /// Recipient domains: lower-case, exact or `*.`-wildcard.
    Domains(Vec<String>),
    /// Envelope sender domains, likewise: mail from them (for recipients no
    /// recipient-domain route matches).
    SenderDomains(Vec<String>),
    /// Everything no other route matches.
    Default,
}

/// The hosts of a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteHosts {
    /// One host.
    Single(HostConfig),
    /// Weighted primaries, then weighted secondaries.
    Pool {
        primary: Vec<WeightedHostConfig>,
        secondary: Vec<WeightedHostConfig>,
    },
}

/// A destination host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostConfig {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A host with its share of a pool's traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedHostConfig {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Share in percent; the shares of a pool total 100.
    pub load_percent: u8,
}

/// TLS checks of a route (SPEC §3.5).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTlsConfig {
    /// No TLS, no delivery. Off: opportunistic STARTTLS.
    pub require_tls: bool,
    /// Chain must verify against webpki roots plus `extra_ca_file`.
    pub require_ca_signed: bool,
    /// Certificate must name the host connected to.
    pub validate_hostname: bool,
    /// PEM file of extra CA roots (a mounted Secret's `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<String>,
    /// TLS from the first byte (SMTPS, port 465) instead of STARTTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
}

/// Limits of SPEC §3.4 and §3.6, resolved from licences, billing and overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Messages per user per rolling 24 h.
    pub user_messages_per_day: u64,
    /// Unique recipients per user per rolling 24 h.
    pub user_recipients_per_day: u64,
    /// Recipients per organization per rolling 24 h.
    pub customer_recipients_per_day: u64,
    /// Recipients per organization per rolling 10 min.
    pub customer_recipients_per10_minutes: u64,
    /// RCPT commands accepted per message.
    pub recipients_per_message: u32,
    /// Largest message accepted, in bytes (SIZE).
    pub max_message_bytes: u64,
    /// Concurrent connections per client IP (Postfix's default is 50 too).
    pub connections_per_ip: u32,
    /// Concurrent connections in all, on every listener; beyond it new connections are
    /// refused before any TLS handshake.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Seconds to wait for the next command or data line.
    pub idle_timeout_seconds: u64,
    /// Seconds a session may last in all.
    pub session_timeout_seconds: u64,
    /// Bad commands before `421` and close.
    pub max_errors: u32,
}

impl LimitsConfig {
    /// The limits for an organization with `licenses` licences, before overrides.
    pub fn for_customer(licenses: u64, paid: bool) -> Self {
        let (day, peak) = if paid {
            ((130 * licenses).min(4_600_000), (9 * licenses).min(319_444))
        } else {
            (100, 50)
        };
        Self {
            user_messages_per_day: 10_000,
            user_recipients_per_day: 10_000,
            customer_recipients_per_day: day,
            customer_recipients_per10_minutes: peak,
            recipients_per_message: 100,
            max_message_bytes: 35 * 1024 * 1024,
            connections_per_ip: 50,
            max_connections: default_max_connections(),
            idle_timeout_seconds: 300,
            session_timeout_seconds: 1800,
            max_errors: 10,
        }
    }
}

fn default_max_connections() -> u32 {
    20_000
}

/// Where limit counters live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum LimitStoreConfig {
    /// In this process (one replica).
    Memory,
    /// Shared by all replicas. The password, if any, is read from `password_file` (a
    /// mounted Secret) and is never part of the config.
    Redis {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<String>,
    },
}

/// Delivery behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Delays before the first retries, in seconds; after the last one the delay doubles.
    pub retry_schedule_seconds: Vec<u64>,
    /// Largest delay between retries, in seconds.
    pub max_retry_delay_seconds: u64,
    /// After this many seconds in the queue a message bounces.
    pub max_queue_lifetime_seconds: u64,
    /// Concurrent outbound deliveries.
    pub concurrency: u32,
    /// Seconds to wait for a TCP connect, and for the reply to RSET and QUIT.
    pub connect_timeout_seconds: u64,
    /// Seconds an idle cached connection is kept.
    pub connection_idle_seconds: u64,
    /// Concurrent deliveries to one destination (a configured route, or one recipient
    /// domain for direct MX delivery); a slow destination ties up at most this many of
    /// the `concurrency` slots.
    #[serde(
        default = "default_destination_concurrency",
        skip_serializing_if = "is_default_destination_concurrency"
    )]
    pub destination_concurrency: u32,
    /// Per-stage reply deadlines of the outbound SMTP client (RFC 5321 §4.5.3.2).
    #[serde(default, skip_serializing_if = "StageTimeoutsConfig::is_default")]
    pub stage_timeouts: StageTimeoutsConfig,
    /// Longest one delivery attempt of one recipient group may take, every host and
    /// stage included; when it runs out the group is deferred and retried.
    #[serde(
        default = "default_attempt_timeout_seconds",
        skip_serializing_if = "is_default_attempt_timeout_seconds"
    )]
    pub attempt_timeout_seconds: u64,
    /// DNS servers for MX lookup; empty means the system resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<SocketAddr>,
    /// Static host-name → address overrides consulted before DNS (tests, split horizon).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_overrides: BTreeMap<String, std::net::IpAddr>,
    /// MX hosts tried per attempt of one destination, most preferred first (Postfix: 5).
    #[serde(
        default = "default_max_mx_hosts",
        skip_serializing_if = "is_default_max_mx_hosts"
    )]
    pub max_mx_hosts: u32,
    /// Addresses dialled per attempt of one destination, over all its MX hosts (Postfix's
    /// `smtp_mx_address_limit`: 5).
    #[serde(
        default = "default_max_addresses",
        skip_serializing_if = "is_default_max_addresses"
    )]
    pub max_addresses: u32,
    /// A message with more `Received:` headers than this is looping and bounces `5.4.6`.
    #[serde(
        default = "default_max_received_headers",
        skip_serializing_if = "is_default_max_received_headers"
    )]
    pub max_received_headers: u32,
    /// Networks that MX and direct delivery never dial, on top of the built-in ones
    /// (loopback, RFC 1918, CGNAT, link-local, unique-local, multicast, unspecified).
    /// Routes that name a host are not affected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_networks: Vec<IpNet>,
    /// The cluster's own ranges (pod and service networks): never dialled for MX and
    /// direct delivery, like [`Self::denied_networks`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_networks: Vec<IpNet>,
    /// Exceptions to the built-in ranges: MX hosts in these networks may be dialled (an
    /// internal MX zone or split-horizon `hostOverrides` for MX hosts; tests on loopback). `deniedNetworks` and `clusterNetworks` still
    /// win over this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_internal_networks: Vec<IpNet>,
}

fn default_max_mx_hosts() -> u32 {
    5
}

fn is_default_max_mx_hosts(v: &u32) -> bool {
    *v == default_max_mx_hosts()
}

fn default_max_addresses() -> u32 {
    5
}

fn is_default_max_addresses(v: &u32) -> bool {
    *v == default_max_addresses()
}

fn default_max_received_headers() -> u32 {
    50
}

fn is_default_max_received_headers(v: &u32) -> bool {
    *v == default_max_received_headers()
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_schedule_seconds: vec![60, 60, 180, 300],
            max_retry_delay_seconds: 4 * 3600,
            max_queue_lifetime_seconds: 5 * 24 * 3600,
            concurrency: 64,
            connect_timeout_seconds: 30,
            connection_idle_seconds: 30,
            destination_concurrency: default_destination_concurrency(),
            stage_timeouts: StageTimeoutsConfig::default(),
            attempt_timeout_seconds: default_attempt_timeout_seconds(),
            nameservers: Vec::new(),
            host_overrides: BTreeMap::new(),
            max_mx_hosts: default_max_mx_hosts(),
            max_addresses: default_max_addresses(),
            max_received_headers: default_max_received_headers(),
            denied_networks: Vec::new(),
            cluster_networks: Vec::new(),
            allowed_internal_networks: Vec::new(),
        }
    }
}

fn default_destination_concurrency() -> u32 {
    10
}

fn is_default_destination_concurrency(n: &u32) -> bool {
    *n == default_destination_concurrency()
}

fn default_attempt_timeout_seconds() -> u64 {
    30 * 60
}

fn is_default_attempt_timeout_seconds(n: &u64) -> bool {
    *n == default_attempt_timeout_seconds()
}

/// How long the outbound SMTP client waits for each stage of a transaction, in seconds:
/// the defaults of RFC 5321 §4.5.3.2. Each is a total for its stage (from the command, or
/// the connect, to the complete reply), not a limit per read, so a server dripping one
/// byte at a time cannot stretch a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StageTimeoutsConfig {
    /// The greeting after connect; also each of EHLO/HELO, STARTTLS and the TLS
    /// handshake. 5 minutes.
    pub greeting_seconds: u64,
    /// The reply to MAIL. 5 minutes.
    pub mail_seconds: u64,
    /// The reply to each RCPT. 5 minutes.
    pub rcpt_seconds: u64,
    /// The `354` reply to DATA. 2 minutes.
    pub data_seconds: u64,
    /// Writing each block of the message text. 3 minutes.
    pub data_block_seconds: u64,
    /// The reply to the final dot. 10 minutes.
    pub final_dot_seconds: u64,
}

impl Default for StageTimeoutsConfig {
    fn default() -> Self {
        Self {
            greeting_seconds: 5 * 60,
            mail_seconds: 5 * 60,
            rcpt_seconds: 5 * 60,
            data_seconds: 2 * 60,
            data_block_seconds: 3 * 60,
            final_dot_seconds: 10 * 60,
        }
    }
}

impl StageTimeoutsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Errors loading a RelayConfig document.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("config format {found} is not supported (this relay reads format {CONFIG_FORMAT})")]
    Format { found: u32 },
    #[error(
        "config hash {stated} does not match its content (computed {computed}); the file was edited by hand or truncated"
    )]
    Hash { stated: String, computed: String },
}

impl RelayConfig {
    /// A relay on one machine: every listener on `127.0.0.1` port 0 (free ports), the
    /// admin endpoint likewise, no TLS, organization `acme/acme` with domain
    /// `acme.example`, one setting letting `127.0.0.0/16` relay mail from the
    /// organization's domains, one default route to `127.0.0.1:route_port`, the limits of
    /// a paid 10,000-licence organization and the spool in `spool_dir`. The starting point
    /// of the tests, benchmarks and fuzz targets; change fields as needed.
    pub fn loopback(spool_dir: &str, route_port: u16) -> RelayConfig {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        RelayConfig {
            format: CONFIG_FORMAT,
            hash: String::new(),
            organization: OrganizationConfig {
                name: "acme/acme".into(),
                domains: vec!["acme.example".into()],
                users: vec![],
                credentials_file: None,
            },
            hostname: "relay.acme.example".into(),
            listeners: ListenerConfig {
                smtp: any,
                submission: any,
                smtps: any,
            },
            tls: None,
            settings: vec![SettingConfig {
                name: "acme/loopback".into(),
                description: "loopback".into(),
                allowed_senders: AllowedSenders::OrganizationDomains,
                ip_ranges: Some(vec![RangeConfig {
                    name: "acme/lo".into(),
                    network: IpNet::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0).into(), 16),
                }]),
                require_smtp_auth: false,
                require_tls: false,
            }],
            routes: vec![RouteConfig {
                rate_limit: None,
                name: "acme/default".into(),
                description: "downstream".into(),
                matcher: RouteMatcher::Default,
                hosts: RouteHosts::Single(HostConfig {
                    host: "127.0.0.1".into(),
                    port: route_port,
                }),
                mx_lookup: false,
                tls: RouteTlsConfig {
                    require_tls: false,
                    require_ca_signed: false,
                    validate_hostname: false,
                    extra_ca_file: None,
                    implicit: false,
                },
                auth: None,
            }],
            limits: LimitsConfig::for_customer(10_000, true),
            limit_store: LimitStoreConfig::Memory,
            delivery: DeliveryConfig::default(),
            spool_dir: spool_dir.to_string(),
            admin_listen: any,
            admin_token_file: None,
            proxy_protocol: None,
            hide_client_address: false,
            dkim: Vec::new(),
            content_filters: Vec::new(),
            archive: None,
        }
    }

    /// SHA-256 of the canonical JSON form with `hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        // Serializing plain structs, Vecs and BTreeMaps cannot fail.
        let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// Sets `hash` from the content.
    pub fn seal(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }

    /// Canonical pretty JSON, as written to the ConfigMap.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a document and checks its format and hash (an empty hash is accepted and
    /// filled in, for hand-written test configs).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let cfg: RelayConfig = serde_json::from_str(text)?;
        if cfg.format != CONFIG_FORMAT {
            return Err(ConfigError::Format { found: cfg.format });
        }
        let computed = cfg.compute_hash();
        if cfg.hash.is_empty() {
            return Ok(cfg.seal());
        }
        if cfg.hash != computed {
            return Err(ConfigError::Hash {
                stated: cfg.hash,
                computed,
            });
        }
        Ok(cfg)
    }
}

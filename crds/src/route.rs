//! `MailRoute`: where accepted mail goes: one host, or weighted primary and secondary
//! pools, optionally through MX lookup, with the TLS checks delivery must pass.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretRef};

/// Where mail for some recipient domains (or all others, for the default route) goes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "MailRoute",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "MailRouteStatus",
    shortname = "mailroute",
    category = "smtprelay",
    doc = "Where relayed mail goes: one host or weighted primary/secondary hosts, MX lookup and TLS checks",
    printcolumn(name = "Default", type_ = "boolean", json_path = ".spec.match.default"),
    printcolumn(name = "MX", type_ = "boolean", json_path = ".spec.mxLookup"),
    printcolumn(
        name = "TLS",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"TlsConnectionVerified\")].status"
    ),
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.singleHost) != has(self.multipleHosts)").message("set exactly one of singleHost and multipleHosts"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.tls) && has(self.tls.implicit) && self.tls.implicit) || ((!has(self.singleHost) || self.singleHost.port != 465) && (!has(self.multipleHosts) || (self.multipleHosts.primary.all(h, h.port != 465) && (!has(self.multipleHosts.secondary) || self.multipleHosts.secondary.all(h, h.port != 465)))))").message("port 465 expects TLS from the first byte: set tls.implicit: true on the route (or use 587 with STARTTLS)"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.auth) || !has(self.tls) || ((!has(self.tls.requireTls) || self.tls.requireTls) && (!has(self.tls.requireCaSigned) || self.tls.requireCaSigned) && (!has(self.tls.validateHostname) || self.tls.validateHostname))").message("auth sends credentials, so it needs every TLS check of the route on: tls.requireTls, tls.requireCaSigned and tls.validateHostname must be true (otherwise the password could go in clear text or to an impostor)"))]
pub struct MailRouteSpec {
    /// What the route is for. Required; at most 1,024 characters.
    #[schemars(length(max = crate::bounds::DESCRIPTION_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.trim() != ''").message("description must not be empty"))]
    pub description: String,
    /// Which recipients take this route.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// One destination host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_host: Option<HostSpec>,
    /// Weighted primary hosts and optional secondary (fallback) hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiple_hosts: Option<MultipleHosts>,
    /// Treat each host as a domain and deliver to its MX hosts in preference order.
    #[serde(default)]
    pub mx_lookup: bool,
    /// TLS checks for delivery on this route.
    #[serde(default)]
    pub tls: RouteTls,
    /// Outbound SMTP AUTH to the route's hosts (a smarthost such as SES, SendGrid,
    /// Microsoft 365 or Gmail). Sent only over TLS that passed every check of `tls`, which
    /// must therefore all be on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
    /// The provider's quota: delivery on this route never exceeds it, and mail waits in
    /// the queue instead of being refused (SES allows 14 messages per second by default).
    /// A temporary refusal (`454 Throttling failure`) slows the route down further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Send rate and connections of a route, per relay pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("has(self.messagesPerSecond) || has(self.maxConnections)").message("rateLimit needs messagesPerSecond, maxConnections or both"))]
pub struct RateLimit {
    /// Message transactions started per second, at most (1 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 100000").message("rateLimit.messagesPerSecond must be between 1 and 100000"))]
    pub messages_per_second: Option<i32>,
    /// Connections to the route's hosts at once, at most (1 or more; the relay's
    /// per-destination concurrency, 10, is the ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 1000").message("rateLimit.maxConnections must be between 1 and 1000"))]
    pub max_connections: Option<i32>,
}

/// Outbound SMTP AUTH of a route: which mechanism, and the Secret holding the credentials.
/// An `XOAuth2` route either reads a ready access token (`token` key) or has the relay fetch
/// one with exactly one OAuth 2.0 grant: `clientCredentials`, `refreshToken` or
/// `serviceAccount`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("(!has(self.clientCredentials) && !has(self.refreshToken) && !has(self.serviceAccount)) || self.mechanism == 'XOAuth2'").message(GRANT_NEEDS_XOAUTH2))]
#[x_kube(validation = kube::core::Rule::new("(has(self.clientCredentials) ? 1 : 0) + (has(self.refreshToken) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) <= 1").message(ONE_GRANT))]
pub struct RouteAuth {
    /// Secret in the route's namespace. `Plain` and `Login` read the keys `username` and
    /// `password`. `XOAuth2` reads `username` and: `token` (an OAuth 2.0 access token kept
    /// fresh by something else); with `clientCredentials`, `clientSecret`; with
    /// `refreshToken`, `clientSecret` and `refreshToken`; with `serviceAccount`,
    /// `serviceAccountKey` (the service account's JSON key file).
    /// The relay reads the mounted keys at each delivery (the OAuth keys at each token
    /// refresh), so a rotated Secret takes effect without a restart.
    pub secret_ref: SecretRef,
    /// SASL mechanism: `Plain`, `Login` or `XOAuth2`. The upstream must offer it in its EHLO
    /// reply, or delivery fails with that reason.
    pub mechanism: AuthMechanism,
    /// `XOAuth2` only: the relay fetches the access token itself with the OAuth 2.0
    /// client-credentials grant (Microsoft 365 / Exchange Online app registrations with
    /// `SMTP.SendAsApp`) and refreshes it before it expires, instead of reading the `token`
    /// key. Google does not offer this grant for Gmail: use `refreshToken` or
    /// `serviceAccount` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<ClientCredentials>,
    /// `XOAuth2` only: the relay trades a long-lived refresh token (Secret keys
    /// `clientSecret` and `refreshToken`) for access tokens with the OAuth 2.0
    /// refresh-token grant: Gmail and Google Workspace mailboxes through an OAuth client
    /// the mailbox owner consented to once (scope `https://mail.google.com/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshTokenGrant>,
    /// `XOAuth2` only: the relay signs a JWT with a Google service account's key (Secret
    /// key `serviceAccountKey`) and trades it for an access token (JWT bearer grant,
    /// RFC 7523), impersonating the mailbox in the `username` key: Google Workspace with
    /// domain-wide delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountGrant>,
}

/// OAuth 2.0 client-credentials settings (Microsoft 365); the client secret is the
/// `clientSecret` key of the auth Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCredentials {
    /// `https://` URL of the token endpoint, e.g.
    /// `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`. Its certificate is
    /// checked like the route's (public roots plus `tls.trustedCaSecretRef`). At most 2,048
    /// characters.
    #[schemars(length(max = crate::bounds::URL_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') && size(self) > 8").message("tokenEndpoint must be an https:// URL"))]
    pub token_endpoint: String,
    /// OAuth client (application) id.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("clientId must not be empty"))]
    pub client_id: String,
    /// Scope to request, e.g. `https://outlook.office365.com/.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Google's OAuth 2.0 token endpoint, the default of `refreshToken.tokenEndpoint`.
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";

/// The scope Gmail's SMTP server asks of an XOAUTH2 token, the default of
/// `serviceAccount.scope`.
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";

/// OAuth 2.0 refresh-token settings (Gmail with an OAuth client); the client secret and
/// the refresh token are the `clientSecret` and `refreshToken` keys of the auth Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshTokenGrant {
    /// `https://` URL of the token endpoint; Google's, `https://oauth2.googleapis.com/token`,
    /// when left out. Its certificate is checked like the route's (public roots plus
    /// `tls.trustedCaSecretRef`). At most 2,048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::URL_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') && size(self) > 8").message("tokenEndpoint must be an https:// URL"))]
    pub token_endpoint: Option<String>,
    /// OAuth client id (Google Cloud console: APIs & Services, Credentials, OAuth client
    /// ID), e.g. `1234-abc.apps.googleusercontent.com`.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("clientId must not be empty"))]
    pub client_id: String,
}

impl RefreshTokenGrant {
    /// The token endpoint used: the one given, else Google's.
    pub fn endpoint(&self) -> &str {
        self.token_endpoint
            .as_deref()
            .unwrap_or(GOOGLE_TOKEN_ENDPOINT)
    }
}

/// Google service-account settings (JWT bearer grant with domain-wide delegation). The
/// key is the `serviceAccountKey` key of the auth Secret (the JSON file Google's console
/// downloads); the token endpoint is the key's `token_uri`; the mailbox impersonated is the
/// Secret's `username`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountGrant {
    /// Scope to request; `https://mail.google.com/` (what Gmail's SMTP server needs) when
    /// left out. The service account's client id must be granted it in the Workspace
    /// admin console (domain-wide delegation). At most 2,048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::URL_MAX))]
    pub scope: Option<String>,
}

impl ServiceAccountGrant {
    /// The scope requested: the one given, else Gmail's.
    pub fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(GMAIL_SCOPE)
    }
}

/// SASL mechanism for outbound AUTH.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMechanism {
    /// `AUTH PLAIN` (RFC 4616) with `username` and `password`.
    Plain,
    /// `AUTH LOGIN` with `username` and `password`.
    Login,
    /// `AUTH XOAUTH2` (Gmail, Microsoft 365) with `username` and an OAuth 2.0 access token:
    /// the Secret's `token`, or one the relay fetches (`clientCredentials`, `refreshToken`,
    /// `serviceAccount`).
    XOAuth2,
}

/// Message of the CEL rule on an OAuth grant with a mechanism other than `XOAuth2`.
pub const GRANT_NEEDS_XOAUTH2: &str = "auth.clientCredentials, auth.refreshToken and auth.serviceAccount fetch an OAuth 2.0 token, which only mechanism XOAuth2 uses";
/// Message of the CEL rule on more than one OAuth grant.
pub const ONE_GRANT: &str = "choose one OAuth 2.0 grant: set at most one of auth.clientCredentials, auth.refreshToken and auth.serviceAccount";

impl RouteAuth {
    /// The rules of `auth` in Rust, mirroring its CEL rules (a test proves both refuse the
    /// same objects): the messages of the rules this `auth` breaks.
    pub fn rule_violations(&self) -> Vec<&'static str> {
        let grants = [
            self.client_credentials.is_some(),
            self.refresh_token.is_some(),
            self.service_account.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        let mut out = Vec::new();
        if grants > 0 && self.mechanism != AuthMechanism::XOAuth2 {
            out.push(GRANT_NEEDS_XOAUTH2);
        }
        if grants > 1 {
            out.push(ONE_GRANT);
        }
        out
    }
}

/// Message of the CEL rule on port 465 without `tls.implicit`.
pub const PORT_465_NEEDS_IMPLICIT: &str = "port 465 expects TLS from the first byte: set tls.implicit: true on the route (or use 587 with STARTTLS)";
/// Message of the CEL rule on `auth` with a TLS check off.
pub const AUTH_NEEDS_TLS_CHECKS: &str = "auth sends credentials, so it needs every TLS check of the route on: tls.requireTls, tls.requireCaSigned and tls.validateHostname must be true (otherwise the password could go in clear text or to an impostor)";

impl MailRouteSpec {
    /// The route-level TLS rules in Rust, mirroring the CEL rules of the schema (a test
    /// proves both refuse the same objects): the messages of the rules this spec breaks.
    pub fn tls_rule_violations(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let ports: Vec<i32> = match (&self.single_host, &self.multiple_hosts) {
            (Some(h), _) => vec![h.port],
            (None, Some(m)) => m
                .primary
                .iter()
                .chain(&m.secondary)
                .map(|h| h.port)
                .collect(),
            (None, None) => Vec::new(),
        };
        if !self.tls.implicit && ports.contains(&465) {
            out.push(PORT_465_NEEDS_IMPLICIT);
        }
        if self.auth.is_some()
            && !(self.tls.require_tls && self.tls.require_ca_signed && self.tls.validate_hostname)
        {
            out.push(AUTH_NEEDS_TLS_CHECKS);
        }
        out
    }
}

/// Which recipients take a route: listed domains, or everything else (`default: true`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("((has(self.recipientDomains) && size(self.recipientDomains) > 0) ? 1 : 0) + ((has(self.senderDomains) && size(self.senderDomains) > 0) ? 1 : 0) + ((has(self.default) && self.default) ? 1 : 0) == 1").message("match needs exactly one of: a non-empty recipientDomains list, a non-empty senderDomains list, or default: true"))]
pub struct RouteMatch {
    /// Recipient domains, exact (`example.com`) or wildcard (`*.example.com`): at most
    /// 1,000 domains of at most 253 characters each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ROUTE_DOMAINS_MAX), inner(length(max = crate::bounds::DNS_NAME_MAX)))]
    #[schemars(transform = crate::bounds::item_rule(r"self.matches('^(\\*\\.)?([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$') && size(self) <= 253", "every entry of recipientDomains must be a domain such as example.com or a wildcard such as *.example.com"))]
    pub recipient_domains: Option<Vec<String>>,
    /// Envelope sender domains, exact (`example.com`) or wildcard (`*.example.com`): mail
    /// from them takes this route, for recipients that no `recipientDomains` route
    /// matches. Precedence per recipient: recipientDomains, then senderDomains, then the
    /// default route, then the recipient domain's MX hosts; within a kind an exact domain
    /// beats a wildcard and a longer wildcard beats a shorter one. At most 1,000 domains of
    /// at most 253 characters each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ROUTE_DOMAINS_MAX), inner(length(max = crate::bounds::DNS_NAME_MAX)))]
    #[schemars(transform = crate::bounds::item_rule(r"self.matches('^(\\*\\.)?([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$') && size(self) <= 253", "every entry of senderDomains must be a domain such as example.com or a wildcard such as *.example.com"))]
    pub sender_domains: Option<Vec<String>>,
    /// The route for recipients no other route matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// One destination host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSpec {
    /// Host name (recommended) or IP literal, at most 253 characters.
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"isIP(self) || self.matches('^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("host must be a host name such as smtp.example.com or an IP address"))]
    pub host: String,
    /// 25, 587, 465 (only with `tls.implicit: true`) or 1024–65535.
    #[serde(default = "default_port")]
    #[x_kube(validation = kube::core::Rule::new("self == 25 || self == 587 || self == 465 || (self >= 1024 && self <= 65535)").message("port must be 25, 587, 465 (with tls.implicit: true) or 1024–65535"))]
    pub port: i32,
}

/// A host of a weighted pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedHost {
    /// Host name (recommended) or IP literal, at most 253 characters.
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"isIP(self) || self.matches('^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("host must be a host name such as smtp.example.com or an IP address"))]
    pub host: String,
    /// 25, 587, 465 (only with `tls.implicit: true`) or 1024–65535.
    #[serde(default = "default_port")]
    #[x_kube(validation = kube::core::Rule::new("self == 25 || self == 587 || self == 465 || (self >= 1024 && self <= 65535)").message("port must be 25, 587, 465 (with tls.implicit: true) or 1024–65535"))]
    pub port: i32,
    /// Share of the pool's traffic, in percent.
    #[x_kube(validation = kube::core::Rule::new("self >= 0 && self <= 100").message("loadPercent must be between 0 and 100"))]
    pub load_percent: i32,
}

fn default_port() -> i32 {
    25
}

/// Primary hosts share traffic by `loadPercent`; secondary hosts take it when every
/// primary fails.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("size(self.primary) > 0").message("multipleHosts.primary must list at least one host"))]
#[x_kube(validation = kube::core::Rule::new("size(self.primary) == 0 || self.primary.map(h, h.loadPercent).sum() == 100").message("the loadPercent values of multipleHosts.primary must total exactly 100"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.secondary) || size(self.secondary) == 0 || self.secondary.map(h, h.loadPercent).sum() == 100").message("the loadPercent values of multipleHosts.secondary must total exactly 100"))]
pub struct MultipleHosts {
    /// Hosts that share traffic (at most 100).
    #[schemars(length(max = crate::bounds::POOL_HOSTS_MAX))]
    pub primary: Vec<WeightedHost>,
    /// Fallback hosts (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::POOL_HOSTS_MAX))]
    pub secondary: Vec<WeightedHost>,
}

/// TLS checks of a route; each defaults to on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTls {
    /// Deliver only over TLS; off means opportunistic STARTTLS.
    #[serde(default = "yes")]
    pub require_tls: bool,
    /// The certificate chain must verify against public roots plus `trustedCaSecretRef`.
    #[serde(default = "yes")]
    pub require_ca_signed: bool,
    /// The certificate must name the host connected to (the MX host for MX lookup).
    #[serde(default = "yes")]
    pub validate_hostname: bool,
    /// Secret with extra CA roots (key `ca.crt`), for private CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_secret_ref: Option<SecretRef>,
    /// TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS. The checks
    /// above apply to that handshake; there is no plain-text fallback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
}

fn yes() -> bool {
    true
}

impl Default for RouteTls {
    fn default() -> Self {
        Self {
            require_tls: true,
            require_ca_signed: true,
            validate_hostname: true,
            trusted_ca_secret_ref: None,
            implicit: false,
        }
    }
}

/// Observed state of a route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MailRouteStatus {
    /// `Accepted`, `TlsConnectionVerified`, and for a route with `auth`, `CredentialsAccepted`
    /// (False while a relay pod's last login to the route's hosts was refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the hosts were last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Result of the last probe, per host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostProbe>,
}

/// The TLS probe result of one host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostProbe {
    /// Host and port probed.
    pub host: String,
    /// Whether the host passed the route's TLS checks.
    pub verified: bool,
    /// `Verified`, or the verifier's message.
    pub message: String,
}

impl MailRoute {
    /// The size bounds of the MailRoute schema, checked in Rust (see
    /// `Organization::bound_violations`).
    pub fn bound_violations(&self) -> Vec<crate::structural::FieldError> {
        use crate::bounds::{self, Violations};
        let mut v = Violations::default();
        let s = &self.spec;
        v.len("spec.description", &s.description, bounds::DESCRIPTION_MAX);
        for (path, domains) in [
            ("spec.match.recipientDomains", &s.matcher.recipient_domains),
            ("spec.match.senderDomains", &s.matcher.sender_domains),
        ] {
            if let Some(domains) = domains {
                v.items(path, domains, bounds::ROUTE_DOMAINS_MAX);
                v.each_len(path, domains, bounds::DNS_NAME_MAX);
            }
        }
        if let Some(host) = &s.single_host {
            v.len("spec.singleHost.host", &host.host, bounds::DNS_NAME_MAX);
        }
        if let Some(pools) = &s.multiple_hosts {
            for (path, pool) in [
                ("spec.multipleHosts.primary", &pools.primary),
                ("spec.multipleHosts.secondary", &pools.secondary),
            ] {
                v.items(path, pool, bounds::POOL_HOSTS_MAX);
                for (i, host) in pool.iter().enumerate() {
                    v.len(
                        &format!("{path}[{i}].host"),
                        &host.host,
                        bounds::DNS_NAME_MAX,
                    );
                }
            }
        }
        if let Some(ca) = &s.tls.trusted_ca_secret_ref {
            ca.bounds(&mut v, "spec.tls.trustedCaSecretRef");
        }
        if let Some(auth) = &s.auth {
            auth.secret_ref.bounds(&mut v, "spec.auth.secretRef");
            if let Some(cc) = &auth.client_credentials {
                v.len(
                    "spec.auth.clientCredentials.tokenEndpoint",
                    &cc.token_endpoint,
                    bounds::URL_MAX,
                );
            }
            if let Some(endpoint) = auth
                .refresh_token
                .as_ref()
                .and_then(|rt| rt.token_endpoint.as_ref())
            {
                v.len(
                    "spec.auth.refreshToken.tokenEndpoint",
                    endpoint,
                    bounds::URL_MAX,
                );
            }
            if let Some(scope) = auth
                .service_account
                .as_ref()
                .and_then(|sa| sa.scope.as_ref())
            {
                v.len("spec.auth.serviceAccount.scope", scope, bounds::URL_MAX);
            }
        }
        v.0
    }
}

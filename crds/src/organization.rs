//! `Organization`: the relay instance of one namespace: its domains, users, licences and
//! the shape of the relay workload the operator runs for it.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::bounds::{self, Violations};
use crate::common::{Condition, SecretRef};
use crate::structural::FieldError;

/// One organization (the "customer"): mail domains, registered users, licences, billing
/// state, optional limit overrides and the relay deployment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "Organization",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "OrganizationStatus",
    validation = kube::core::Rule::new(r"size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("an Organization's name must be a DNS label (at most 63 lowercase letters, digits and '-', no dots): it names the relay's Service and labels its pods"),
    shortname = "smtporg",
    category = "smtprelay",
    doc = "An organization's SMTP relay instance: domains, users, licences and relay workload",
    printcolumn(name = "Licenses", type_ = "integer", json_path = ".spec.licenses"),
    printcolumn(name = "Billing", type_ = "string", json_path = ".spec.billing"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Config", type_ = "string", json_path = ".status.configHash"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrganizationSpec {
    /// Mail domains of the organization. A domain belongs to the organization when it
    /// equals one of these or is a subdomain of one. At most 1,000 domains, each a DNS name
    /// of at most 253 characters.
    #[schemars(length(max = crate::bounds::DOMAINS_MAX), inner(length(max = crate::bounds::DNS_NAME_MAX)))]
    #[schemars(transform = crate::bounds::item_rule(r"self.matches('^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$') && size(self) <= 253", "every entry of domains must be a valid domain name such as example.com (letters, digits and hyphens, dot-separated, no wildcard)"))]
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1").message("domains must list at least one mail domain of the organization"))]
    pub domains: Vec<String>,

    /// Registered user addresses (the `RegisteredUsers` sender mode and per-user limits):
    /// at most 10,000 addresses, each a mail address (`local@domain.example`) of at most 254
    /// characters (the RFC 5321 limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::USERS_MAX), inner(length(max = crate::bounds::ADDRESS_MAX), regex(pattern = crate::bounds::USER_PATTERN)))]
    pub users: Vec<String>,

    /// Secret holding the SMTP AUTH credentials of the users: its key `credentials` is a
    /// file of one `address:PHC` line per user, the PHC string an argon2id hash
    /// (`alice@example.com:$argon2id$v=19$...`; blank lines and `#` comments are ignored).
    /// Never plain-text passwords. The relay pods mount that key; a user without a line
    /// cannot log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretRef>,

    /// Number of licences; sets the customer limits.
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("licenses must be at least 1"))]
    pub licenses: i64,

    /// Billing state; unpaid organizations get the small trial limits.
    #[serde(default)]
    pub billing: Billing,

    /// Overrides of the relay limits (tests and small deployments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,

    /// The relay workload.
    #[serde(default)]
    pub relay: RelaySpec,

    /// DKIM signing keys. Mail whose header From domain equals a listed domain or is a
    /// subdomain of one is signed before delivery, with the key of the most specific
    /// listed domain. A key that cannot be read defers that mail (it is never sent
    /// unsigned); a missing Secret shows as the `DkimKeySecretMissing` condition.
    /// `relayctl dkim-record` prints the DNS TXT record to publish for a key. At most 32
    /// keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::DKIM_KEYS_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b.domain == a.domain))").message("every dkim domain must be listed once: a domain signs with one key (use a subdomain entry for another key)"))]
    pub dkim: Vec<DkimSpec>,

    /// Content filters (spam and virus checks) every message passes before the relay
    /// answers `250`, in this order, over the milter protocol: rspamd's proxy worker,
    /// clamav-milter, spamass-milter. A filter's reject is the client's `550 5.7.1` with
    /// the filter's text; its tempfail a `451 4.7.1`; discard and quarantine answer `250`
    /// (a quarantined message is held in the queue with the filter's reason, for `relayctl
    /// queue`). Header and recipient changes apply to what is delivered, before DKIM
    /// signing. At most 8 filters, names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::CONTENT_FILTERS_MAX))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("every content filter name must be listed once"))]
    pub content_filters: Vec<ContentFilterSpec>,

    /// Comprehensive mail storage: a journal copy of every accepted message (null sender
    /// included) goes to this archive address, with its envelope (sender, every recipient,
    /// Bcc included, client, identity, queue id, time) in headers on that copy only. The
    /// copy is durable from the `250` on and delivered on its own: its failures never
    /// delay or bounce the main recipients, theirs never drop it, and a copy that cannot
    /// be delivered is reported to the organization's postmaster, never to the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,
}

/// Where the journal copies go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveSpec {
    /// The archive's mail address (`journal@archive.example`), at most 254 characters.
    #[schemars(length(max = crate::bounds::ADDRESS_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"self.matches('^[^@\\t\\n\\f\\r ]+@([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("archive.address must be a mail address such as journal@archive.example"))]
    pub address: String,
    /// A MailRoute of this namespace to send the copies through (its hosts, TLS checks and
    /// AUTH); unset, the archive address is routed like any recipient. At most 253
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    pub route: Option<String>,
    /// Archive messages a content filter discarded or quarantined too (default false:
    /// only mail that was relayed).
    #[serde(default)]
    pub include_filtered_out: bool,
}

/// One content filter: where its milter listens and what happens when it cannot answer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentFilterSpec {
    /// Name of the filter in metrics, logs and status (for example `rspamd`): one DNS label
    /// of lower-case letters, digits and '-', at most 63 characters.
    #[schemars(length(max = crate::bounds::DNS_LABEL_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("contentFilters.name must be a DNS label such as rspamd (lower-case letters, digits and '-')"))]
    pub name: String,
    /// Where the filter's milter socket listens.
    pub milter: MilterSpec,
    /// Most seconds the filter may take for one message, connecting included (default
    /// 30, 1 to 600). A filter that takes longer counts as unavailable for that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 600").message("contentFilters.timeoutSeconds must be between 1 and 600"))]
    pub timeout_seconds: Option<i32>,
    /// What a message gets when the filter cannot be reached, times out or answers
    /// garbage: `TempFail` (default: `451 4.7.1`, the client retries later) or `Accept`
    /// (the message goes on unfiltered, and is counted).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Messages larger than this many bytes skip this filter (counted as `skipped`), as
    /// filters often refuse large mail. Unset: every message is filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("contentFilters.maxMessageBytes must be at least 1"))]
    pub max_message_bytes: Option<i64>,
}

/// A filter's milter endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MilterSpec {
    /// Host name (for example `rspamd.mail-filters.svc`) or IP address, at most 253
    /// characters.
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"isIP(self) || self.matches('^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("milter.host must be a host name such as rspamd.filters.svc or an IP address"))]
    pub host: String,
    /// TCP port (rspamd's proxy worker listens on 11332; clamav-milter where its
    /// `MilterSocket` says).
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("milter.port must be between 1 and 65535"))]
    pub port: i32,
}

/// What a message gets when its content filter is unavailable.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum OnUnavailable {
    /// `451 4.7.1`: the client keeps the message and retries later.
    #[default]
    TempFail,
    /// The message goes on without this filter's verdict (counted).
    Accept,
}

/// One DKIM signing key: the signing domain (`d=`), the selector (`s=`) under which the
/// public key is published, and the Secret holding the private key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimSpec {
    /// Signing domain, lower case (for example example.com), at most 253 characters. Mail
    /// whose header From is in this domain or one of its subdomains is signed with this key.
    #[x_kube(validation = kube::core::Rule::new(r"size(self) <= 253 && self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')").message("dkim.domain must be a lower-case domain name such as example.com"))]
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    pub domain: String,
    /// Selector: the public key is published at `SELECTOR._domainkey.DOMAIN`. One DNS label
    /// (at most 63 characters).
    #[schemars(length(max = crate::bounds::DNS_LABEL_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"self.matches('^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("dkim.selector must be a single DNS label such as mail2025 (letters, digits and '-', no dots)"))]
    pub selector: String,
    /// Secret whose key `private.key` holds the private key as PEM PKCS#8
    /// (`-----BEGIN PRIVATE KEY-----`; for RSA a PKCS#1 `RSA PRIVATE KEY` works too). It is
    /// mounted into the relay pods; a rotated Secret is used without a restart.
    pub secret_ref: crate::common::SecretRef,
    /// `rsa-sha256` (default; 2048-bit keys recommended) or `ed25519-sha256` (RFC 8463).
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign, in order. Default: From, To, Cc, Subject, Date, Message-ID,
    /// Reply-To, In-Reply-To, References, MIME-Version, Content-Type,
    /// Content-Transfer-Encoding. Must include From. At most 64 names of at most 64
    /// characters each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::DKIM_HEADERS_MAX), inner(length(max = crate::bounds::HEADER_NAME_MAX)))]
    #[x_kube(validation = kube::core::Rule::new(r"self.all(h, h.matches('^[A-Za-z0-9][-A-Za-z0-9]*$'))").message("every entry of dkim.headers must be a header field name such as Subject"))]
    #[x_kube(validation = kube::core::Rule::new(r"self.exists(h, h.matches('^(?i)from$'))").message("dkim.headers must include From: DKIM requires the From header field to be signed (RFC 6376 §5.4)"))]
    pub headers: Option<Vec<String>>,
}

/// DKIM signature algorithm.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum DkimAlgorithm {
    /// RSA with SHA-256 (RFC 6376).
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// Billing state of an organization.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Billing {
    #[default]
    Paid,
    Unpaid,
}

/// Overrides of the limits of SPEC §3.4 and §3.6. Every field is optional; unset fields
/// keep the defaults derived from licences and billing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitOverrides {
    /// Messages per user per rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("userMessagesPerDay must not be negative"))]
    pub user_messages_per_day: Option<i64>,
    /// Unique recipients per user per rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("userRecipientsPerDay must not be negative"))]
    pub user_recipients_per_day: Option<i64>,
    /// Recipients per organization per rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("customerRecipientsPerDay must not be negative"))]
    pub customer_recipients_per_day: Option<i64>,
    /// Recipients per organization per rolling 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("customerRecipientsPer10Minutes must not be negative"))]
    pub customer_recipients_per10_minutes: Option<i64>,
    /// Recipients accepted in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("recipientsPerMessage must be at least 1"))]
    pub recipients_per_message: Option<i64>,
    /// Largest message in bytes (advertised with SIZE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1024").message("maxMessageBytes must be at least 1024"))]
    pub max_message_bytes: Option<i64>,
    /// Concurrent connections from one client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("connectionsPerIp must be at least 1"))]
    pub connections_per_ip: Option<i64>,
    /// Seconds a session may wait for the next command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("idleTimeoutSeconds must be at least 1"))]
    pub idle_timeout_seconds: Option<i64>,
    /// Seconds a whole session may last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("sessionTimeoutSeconds must be at least 1"))]
    pub session_timeout_seconds: Option<i64>,
    /// Bad commands tolerated before `421` and close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("maxErrors must be at least 1"))]
    pub max_errors: Option<i64>,
}

/// The relay workload of an organization.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("!has(self.replicas) || self.replicas <= 1 || (has(self.limitStore) && self.limitStore.type == 'Redis')").message("relay.replicas above 1 needs relay.limitStore of type Redis: with the Memory store each replica would count limits on its own, multiplying them by the replica count"))]
pub struct RelaySpec {
    /// Number of relay pods (default 1). More than one needs a Redis limit store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("relay.replicas must be at least 1"))]
    pub replicas: Option<i32>,
    /// Relay container image (default: the operator's own version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Listener ports of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<ListenerPorts>,
    /// A `kubernetes.io/tls` Secret (as cert-manager writes it) for STARTTLS and port 465.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
    /// Host name the relay announces in its greeting and `Received:` headers (at most 253
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::DNS_NAME_MAX))]
    #[x_kube(validation = kube::core::Rule::new(r"self.matches('^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$')").message("relay.hostname must be a host name such as relay.example.com"))]
    pub hostname: Option<String>,
    /// Service type (default ClusterIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// Resource requests and limits of the relay container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Spool volume: a PersistentVolumeClaim per pod by default; `ephemeral: true` for an
    /// emptyDir (acknowledged mail is lost when the pod goes away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolSpec>,
    /// Networks (CIDRs) allowed to reach the SMTP ports; empty means anywhere. The admin
    /// port is only ever open to the operator's and the monitoring namespaces. At most 1,000
    /// networks of at most 49 characters each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::NETWORKS_MAX), inner(length(max = crate::bounds::CIDR_MAX)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c))").message("every entry of relay.allowedClientCidrs must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub allowed_client_cidrs: Vec<String>,
    /// Where rate-limit counters live (default Memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_store: Option<LimitStoreSpec>,
    /// PROXY protocol (v1 or v2) from load balancers in front of the relay, so allow
    /// ranges, per-IP caps, limits and `Received:` see the real client (SPEC §3.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolSpec>,
    /// Leave the client's address out of the `Received:` header the relay adds (and its
    /// HELO name too when that is an address literal); the relay's own hop (its host
    /// name, protocol, queue id, date) stays. For mail relayed from laptops and internal
    /// hosts whose addresses should not travel with the message. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_client_address: bool,
    /// Seconds a stopping relay pod keeps its listeners open after it turned unready, so
    /// that endpoints and load balancers stop sending it new connections first (default
    /// 10; 0 to 300). A load balancer whose health checks are slower needs more. Part of
    /// the pod template: changing it replaces the relay pods one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub drain_delay_seconds: Option<i64>,
}

/// Load balancers allowed to name the client with a PROXY protocol header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocolSpec {
    /// Addresses or CIDRs of the proxies (for example the load balancer's subnet). A
    /// header from any other address closes the connection. At most 1,000 entries of at most
    /// 49 characters each.
    #[schemars(length(max = crate::bounds::NETWORKS_MAX), inner(length(max = crate::bounds::CIDR_MAX)))]
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1").message("proxyProtocol.trustedProxies must list at least one address or CIDR of the load balancers"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("every entry of proxyProtocol.trustedProxies must be an IPv4 or IPv6 address or CIDR, such as 10.0.0.0/8 or 2001:db8::/64"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, !isCIDR(c) || cidr(c) == cidr(c).masked())").message("an entry of proxyProtocol.trustedProxies has host bits set below its prefix; write the network address, such as 10.0.0.0/8"))]
    pub trusted_proxies: Vec<String>,
    /// Every connection must come from a trusted proxy with a header (default false: a
    /// connection without one is a direct client).
    #[serde(default)]
    pub required: bool,
}

/// Listener ports of the relay Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerPorts {
    /// Plain SMTP with STARTTLS (default 25).
    #[serde(default = "default_smtp")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("ports.smtp must be 1–65535"))]
    pub smtp: i32,
    /// Submission with STARTTLS (default 587).
    #[serde(default = "default_submission")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("ports.submission must be 1–65535"))]
    pub submission: i32,
    /// Implicit TLS (default 465).
    #[serde(default = "default_smtps")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("ports.smtps must be 1–65535"))]
    pub smtps: i32,
}

fn default_smtp() -> i32 {
    25
}
fn default_submission() -> i32 {
    587
}
fn default_smtps() -> i32 {
    465
}

impl Default for ListenerPorts {
    fn default() -> Self {
        Self {
            smtp: 25,
            submission: 587,
            smtps: 465,
        }
    }
}

/// Kubernetes Service type of the relay.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Spool volume of the relay pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("!has(self.ephemeral) || !self.ephemeral || !has(self.storageClassName)").message("relay.spool.storageClassName needs a persistent spool; an ephemeral spool is an emptyDir"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.size) || isQuantity(self.size)").message("relay.spool.size must be a Kubernetes quantity such as 1Gi, 500Mi or 10G"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.size) || !isQuantity(self.size) || quantity(self.size).isGreaterThan(quantity('0'))").message("relay.spool.size must be larger than zero"))]
pub struct SpoolSpec {
    /// Size of each pod's spool claim (default 1Gi), or the size limit of the emptyDir
    /// of an ephemeral spool: a Kubernetes quantity (`1Gi`, `500Mi`, `10G`) of at most 64
    /// characters, larger than zero. Fixed once the relay exists: a StatefulSet's claim
    /// templates cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::QUANTITY_MAX))]
    pub size: Option<String>,
    /// StorageClass of the claims (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// An emptyDir instead of a claim per pod: mail acknowledged but not yet delivered is
    /// lost whenever a pod goes away (rollout, node drain, eviction). Shown as a Warning
    /// condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Where rate-limit counters live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::Rule::new("self.type != 'Redis' || (has(self.url) && self.url.startsWith('redis'))").message("limitStore type Redis needs a url such as redis://redis:6379"))]
#[x_kube(validation = kube::core::Rule::new("self.type != 'Memory' || !has(self.url)").message("limitStore type Memory takes no url"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.url) || !self.url.contains('@')").message("limitStore.url must not carry credentials (it ends up in the relay's ConfigMap); put the Redis password in a Secret and name it in limitStore.passwordSecretRef"))]
#[x_kube(validation = kube::core::Rule::new("self.type == 'Redis' || !has(self.passwordSecretRef)").message("limitStore.passwordSecretRef is only for type Redis"))]
pub struct LimitStoreSpec {
    /// `Memory` (one replica) or `Redis` (shared by replicas).
    #[serde(rename = "type")]
    pub kind: LimitStoreKind,
    /// Redis URL, for `type: Redis`, without credentials (`redis://host:6379/0`); at most
    /// 2,048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::URL_MAX))]
    pub url: Option<String>,
    /// A Secret whose key `password` holds the Redis password. It is mounted into the
    /// relay pods; it never appears in the spec, the ConfigMap or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretRef>,
}

/// Kind of limit store.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitStoreKind {
    Memory,
    Redis,
}

/// Observed state of an Organization.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash of the RelayConfig in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Ready relay replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Spool claims of relay pods that are gone (a scale-down, the Deployment of an
    /// earlier version, the Organization's deletion) whose queue is still being drained.
    /// A claim is deleted, and leaves this list, once its spool is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingClaim>,
}

/// One spool claim being drained.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrainingClaim {
    /// The PersistentVolumeClaim.
    pub claim: String,
    /// The Job draining it.
    pub job: String,
    /// `Pending` (Job created, not running yet), `Running` or `Failed` (see `message`;
    /// delete the Job to try again).
    pub phase: String,
    /// Messages still in the spool, as the drain last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Why the drain failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Organization {
    /// The size bounds and patterns of the Organization schema, checked in Rust: the
    /// problems of this object in the API server's words (`spec.users: Too many: 10001:
    /// must have at most 10000 items`). `tests/bounds.rs` proves that the schema, as
    /// `relayctl validate` applies it, refuses the same objects with the same messages.
    pub fn bound_violations(&self) -> Vec<FieldError> {
        let mut v = Violations::default();
        let name_max = bounds::ORGANIZATION_NAME_MAX;
        v.opt_len("metadata.name", self.metadata.name.as_deref(), name_max);
        v.opt_len(
            "metadata.generateName",
            self.metadata.generate_name.as_deref(),
            name_max,
        );
        let s = &self.spec;
        v.items("spec.domains", &s.domains, bounds::DOMAINS_MAX);
        v.each_len("spec.domains", &s.domains, bounds::DNS_NAME_MAX);
        v.items("spec.users", &s.users, bounds::USERS_MAX);
        for (i, user) in s.users.iter().enumerate() {
            let path = format!("spec.users[{i}]");
            v.len(&path, user, bounds::ADDRESS_MAX);
            v.pattern(&path, user, bounds::USER_PATTERN);
        }
        if let Some(secret) = &s.auth_secret_ref {
            secret.bounds(&mut v, "spec.authSecretRef");
        }
        v.items("spec.dkim", &s.dkim, bounds::DKIM_KEYS_MAX);
        for (i, key) in s.dkim.iter().enumerate() {
            let path = format!("spec.dkim[{i}]");
            v.len(&format!("{path}.domain"), &key.domain, bounds::DNS_NAME_MAX);
            v.len(
                &format!("{path}.selector"),
                &key.selector,
                bounds::DNS_LABEL_MAX,
            );
            key.secret_ref.bounds(&mut v, &format!("{path}.secretRef"));
            if let Some(headers) = &key.headers {
                let hpath = format!("{path}.headers");
                v.items(&hpath, headers, bounds::DKIM_HEADERS_MAX);
                v.each_len(&hpath, headers, bounds::HEADER_NAME_MAX);
            }
        }
        if let Some(spool) = &s.relay.spool {
            v.opt_len(
                "spec.relay.spool.size",
                spool.size.as_deref(),
                bounds::QUANTITY_MAX,
            );
        }
        v.items(
            "spec.contentFilters",
            &s.content_filters,
            bounds::CONTENT_FILTERS_MAX,
        );
        for (i, filter) in s.content_filters.iter().enumerate() {
            let path = format!("spec.contentFilters[{i}]");
            v.len(&format!("{path}.name"), &filter.name, bounds::DNS_LABEL_MAX);
            v.len(
                &format!("{path}.milter.host"),
                &filter.milter.host,
                bounds::DNS_NAME_MAX,
            );
        }
        if let Some(archive) = &s.archive {
            v.len(
                "spec.archive.address",
                &archive.address,
                bounds::ADDRESS_MAX,
            );
            v.opt_len(
                "spec.archive.route",
                archive.route.as_deref(),
                bounds::DNS_NAME_MAX,
            );
        }
        let r = &s.relay;
        v.opt_len(
            "spec.relay.hostname",
            r.hostname.as_deref(),
            bounds::DNS_NAME_MAX,
        );
        if let Some(secret) = &r.tls_secret_ref {
            secret.bounds(&mut v, "spec.relay.tlsSecretRef");
        }
        let cidrs = "spec.relay.allowedClientCidrs";
        v.items(cidrs, &r.allowed_client_cidrs, bounds::NETWORKS_MAX);
        v.each_len(cidrs, &r.allowed_client_cidrs, bounds::CIDR_MAX);
        if let Some(store) = &r.limit_store {
            v.opt_len(
                "spec.relay.limitStore.url",
                store.url.as_deref(),
                bounds::URL_MAX,
            );
            if let Some(secret) = &store.password_secret_ref {
                secret.bounds(&mut v, "spec.relay.limitStore.passwordSecretRef");
            }
        }
        if let Some(proxy) = &r.proxy_protocol {
            let path = "spec.relay.proxyProtocol.trustedProxies";
            v.items(path, &proxy.trusted_proxies, bounds::NETWORKS_MAX);
            v.each_len(path, &proxy.trusted_proxies, bounds::CIDR_MAX);
        }
        if let Some(delay) = r.drain_delay_seconds {
            // The schema's `minimum`/`maximum`, in the API server's words.
            let field = "spec.relay.drainDelaySeconds";
            let (words, limit) = match delay {
                ..0 => ("greater than or equal to", 0),
                301.. => ("less than or equal to", 300),
                _ => ("", 0),
            };
            if !words.is_empty() {
                v.0.push(FieldError {
                    field: field.into(),
                    detail: format!(
                        "Invalid value: {delay}: {field} in body should be {words} {limit}"
                    ),
                });
            }
        }
        v.0
    }
}

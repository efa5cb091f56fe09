//! Every size bound of the CRDs: an object exactly at the bound validates, one past it is
//! refused with the field's message in the API server's words, both by the offline loader
//! (`relayctl validate`: the CRD schema applied by `crds::structural`, then the CEL rules)
//! and by the Rust mirror (`bound_violations()` of each kind), and the two always report
//! the same problems.

use crds::manifest::load_sources;
use crds::{IpAllowRange, MailRoute, Organization, RelayExpectation, SmtpRelaySetting};
use serde_json::{Value, json};

fn org() -> Value {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "Organization",
        "metadata": {"name": "acme", "namespace": "acme"},
        "spec": {"domains": ["acme.example"], "licenses": 1},
    })
}

fn setting() -> Value {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "SmtpRelaySetting",
        "metadata": {"name": "apps", "namespace": "acme"},
        "spec": {
            "description": "applications",
            "allowedSenders": "OrganizationDomains",
            "authentication": {"requireSmtpAuth": true},
            "encryption": {"requireTls": true},
        },
    })
}

fn range() -> Value {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "IpAllowRange",
        "metadata": {"name": "office", "namespace": "acme"},
        "spec": {"description": "office", "cidr": "10.0.0.0/16"},
    })
}

fn route() -> Value {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "MailRoute",
        "metadata": {"name": "smarthost", "namespace": "acme"},
        "spec": {
            "description": "provider",
            "match": {"default": true},
            "singleHost": {"host": "smtp.example.com", "port": 587},
        },
    })
}

/// A route with weighted pools instead of one host.
fn pool_route() -> Value {
    let mut r = route();
    if let Some(spec) = r["spec"].as_object_mut() {
        spec.remove("singleHost");
    }
    r
}

fn case(i: usize) -> Value {
    json!({
        "name": format!("case {i}"),
        "client": {"ip": "192.0.2.10"},
        "from": "app@acme.example",
        "to": ["bob@example.com"],
        "expect": {"accepted": true},
    })
}

fn expectation() -> Value {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "RelayExpectation",
        "metadata": {"name": "policy", "namespace": "acme"},
        "spec": {"cases": [case(0)]},
    })
}

/// A domain name of exactly `len` characters (labels of at most 63, ending `.example`).
fn domain(len: usize) -> String {
    let mut name = "example".to_string();
    while name.len() < len {
        let room = len - name.len() - 1;
        let label = room.clamp(1, 63);
        name = format!("{}.{name}", "a".repeat(label));
    }
    assert_eq!(name.len(), len, "cannot build a domain of {len}");
    name
}

/// A wildcard-free list of `n` distinct domains.
fn domains(n: usize) -> Value {
    json!((0..n).map(|i| format!("d{i}.example")).collect::<Vec<_>>())
}

/// A list of `n` distinct networks.
fn networks(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect::<Vec<_>>()
    )
}

/// An IPv6 address with an IPv4 tail: 45 characters, the longest textual IP.
const LONGEST_IP: &str = "2001:0db8:0000:0000:0000:0000:255.255.255.255";

fn dkim_key(domain: &str) -> Value {
    json!({"domain": domain, "selector": "s1", "secretRef": {"name": "dkim"}})
}

fn content_filter(name: &str) -> Value {
    json!({"name": name, "milter": {"host": "rspamd.filters.svc", "port": 11332}})
}

fn weighted(n: usize) -> Value {
    json!((0..n)
        .map(|i| json!({"host": format!("h{i}.example.com"), "port": 587, "loadPercent": if i == 0 { 100 - (n as i64 - 1) } else { 1 }}))
        .collect::<Vec<_>>())
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set(object: &mut Value, pointer: &str, value: Value) {
    let mut node = object;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        node = match node {
            Value::Array(items) => {
                let idx: usize = part.parse().expect("index");
                &mut items[idx]
            }
            other => {
                let map = other.as_object_mut().expect("object");
                if last {
                    map.insert(part.to_string(), value);
                    return;
                }
                map.entry(part.to_string())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
        };
        if last {
            *node = value;
            return;
        }
    }
}

/// The Rust mirror's messages for an object.
fn mirror(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let errors =
        match kind {
            "Organization" => {
                serde_json::from_value::<Organization>(object.clone()).map(|o| o.bound_violations())
            }
            "SmtpRelaySetting" => serde_json::from_value::<SmtpRelaySetting>(object.clone())
                .map(|o| o.bound_violations()),
            "IpAllowRange" => {
                serde_json::from_value::<IpAllowRange>(object.clone()).map(|o| o.bound_violations())
            }
            "MailRoute" => {
                serde_json::from_value::<MailRoute>(object.clone()).map(|o| o.bound_violations())
            }
            "RelayExpectation" => serde_json::from_value::<RelayExpectation>(object.clone())
                .map(|o| o.bound_violations()),
            other => panic!("kind {other}"),
        }
        .expect("the object deserializes");
    let mut out: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    out.sort();
    out
}

/// The schema's messages for an object, as the loader applies the schema.
fn schema(object: &Value) -> Vec<String> {
    // The loader validates the typed object as it serializes (defaults filled in).
    let kind = object["kind"].as_str().unwrap_or_default();
    let typed = match kind {
        "Organization" => serde_json::to_value(
            serde_json::from_value::<Organization>(object.clone()).expect("typed"),
        ),
        "SmtpRelaySetting" => serde_json::to_value(
            serde_json::from_value::<SmtpRelaySetting>(object.clone()).expect("typed"),
        ),
        "IpAllowRange" => serde_json::to_value(
            serde_json::from_value::<IpAllowRange>(object.clone()).expect("typed"),
        ),
        "MailRoute" => serde_json::to_value(
            serde_json::from_value::<MailRoute>(object.clone()).expect("typed"),
        ),
        _ => serde_json::to_value(
            serde_json::from_value::<RelayExpectation>(object.clone()).expect("typed"),
        ),
    }
    .expect("serializes");
    let mut out: Vec<String> = crds::validate_object(kind, &typed)
        .iter()
        .map(|e| e.to_string())
        .collect();
    out.sort();
    out
}

fn load(object: &Value) -> Result<(), String> {
    let text = yaml_serde::to_string(object).expect("yaml");
    load_sources(&[("bound.yaml".to_string(), text)])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

struct Bound {
    /// The object at the bound.
    at: Value,
    /// The object one past it.
    past: Value,
    /// The message of the field past its bound.
    message: String,
}

fn bound(base: fn() -> Value, pointer: &str, at: Value, past: Value, message: &str) -> Bound {
    let (mut a, mut p) = (base(), base());
    set(&mut a, pointer, at);
    set(&mut p, pointer, past);
    Bound {
        at: a,
        past: p,
        message: message.to_string(),
    }
}

fn too_long(field: &str, max: usize) -> String {
    format!("{field}: Too long: may not be more than {max} bytes")
}

fn too_many(field: &str, max: usize) -> String {
    format!(
        "{field}: Too many: {}: must have at most {max} items",
        max + 1
    )
}

fn s(n: usize) -> String {
    "a".repeat(n)
}

fn bounds() -> Vec<Bound> {
    use crds::bounds::{
        ADDRESS_MAX, CASE_NAME_MAX, CASES_MAX, CIDR_MAX, CONTENT_FILTERS_MAX, DESCRIPTION_MAX,
        DKIM_HEADERS_MAX, DKIM_KEYS_MAX, DNS_LABEL_MAX, DNS_NAME_MAX, DOMAINS_MAX, HEADER_NAME_MAX,
        IP_MAX, NETWORKS_MAX, ORGANIZATION_NAME_MAX, POOL_HOSTS_MAX, ROUTE_DOMAINS_MAX, URL_MAX,
        USER_PATTERN, USERS_MAX,
    };
    let users = |n: usize| {
        json!(
            (0..n)
                .map(|i| format!("u{i}@acme.example"))
                .collect::<Vec<_>>()
        )
    };
    let secret = |n: usize| json!({"name": s(n)});
    let longest_cidr = format!("{LONGEST_IP}/128");
    assert_eq!(longest_cidr.len(), CIDR_MAX);
    assert_eq!(LONGEST_IP.len(), IP_MAX);
    let cidr_list = |c: &str| json!([c]);
    let headers = |n: usize| {
        json!(
            std::iter::once("From".to_string())
                .chain((1..n).map(|i| format!("X-H{i}")))
                .collect::<Vec<_>>()
        )
    };
    vec![
        // Organization
        bound(
            org,
            "/spec/relay/drainDelaySeconds",
            json!(300),
            json!(301),
            "spec.relay.drainDelaySeconds: Invalid value: 301: spec.relay.drainDelaySeconds in body should be less than or equal to 300",
        ),
        bound(
            org,
            "/spec/relay/drainDelaySeconds",
            json!(0),
            json!(-1),
            "spec.relay.drainDelaySeconds: Invalid value: -1: spec.relay.drainDelaySeconds in body should be greater than or equal to 0",
        ),
        bound(
            org,
            "/metadata/name",
            json!(s(63)),
            json!(s(64)),
            &too_long("metadata.name", ORGANIZATION_NAME_MAX),
        ),
        bound(
            org,
            "/spec/domains",
            domains(DOMAINS_MAX),
            domains(DOMAINS_MAX + 1),
            &too_many("spec.domains", DOMAINS_MAX),
        ),
        bound(
            org,
            "/spec/domains",
            json!([domain(253)]),
            json!([domain(254)]),
            &too_long("spec.domains[0]", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/users",
            users(USERS_MAX),
            users(USERS_MAX + 1),
            &too_many("spec.users", USERS_MAX),
        ),
        bound(
            org,
            "/spec/users",
            json!([format!("{}@acme.example", s(254 - 13))]),
            json!([format!("{}@acme.example", s(255 - 13))]),
            &too_long("spec.users[0]", ADDRESS_MAX),
        ),
        bound(
            org,
            "/spec/users",
            json!(["alice@acme.example"]),
            json!(["alice"]),
            &format!(
                "spec.users[0]: Invalid value: \"alice\": spec.users[0] in body should match '{USER_PATTERN}'"
            ),
        ),
        bound(
            org,
            "/spec/authSecretRef",
            secret(253),
            secret(254),
            &too_long("spec.authSecretRef.name", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!(
                (0..DKIM_KEYS_MAX)
                    .map(|i| dkim_key(&format!("d{i}.example")))
                    .collect::<Vec<_>>()
            ),
            json!(
                (0..=DKIM_KEYS_MAX)
                    .map(|i| dkim_key(&format!("d{i}.example")))
                    .collect::<Vec<_>>()
            ),
            &too_many("spec.dkim", DKIM_KEYS_MAX),
        ),
        bound(
            org,
            "/spec/contentFilters",
            json!(
                (0..CONTENT_FILTERS_MAX)
                    .map(|i| content_filter(&format!("f{i}")))
                    .collect::<Vec<_>>()
            ),
            json!(
                (0..=CONTENT_FILTERS_MAX)
                    .map(|i| content_filter(&format!("f{i}")))
                    .collect::<Vec<_>>()
            ),
            &too_many("spec.contentFilters", CONTENT_FILTERS_MAX),
        ),
        bound(
            org,
            "/spec/archive",
            json!({"address": format!("{}@{}", s(64), domain(189))}),
            json!({"address": format!("{}@{}", s(64), domain(190))}),
            &too_long("spec.archive.address", ADDRESS_MAX),
        ),
        bound(
            org,
            "/spec/archive",
            json!({"address": "journal@archive.example", "route": domain(253)}),
            json!({"address": "journal@archive.example", "route": domain(254)}),
            &too_long("spec.archive.route", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/contentFilters",
            json!([content_filter(&s(63))]),
            json!([content_filter(&s(64))]),
            &too_long("spec.contentFilters[0].name", DNS_LABEL_MAX),
        ),
        bound(
            org,
            "/spec/contentFilters",
            json!([{"name": "rspamd", "milter": {"host": domain(253), "port": 11332}}]),
            json!([{"name": "rspamd", "milter": {"host": domain(254), "port": 11332}}]),
            &too_long("spec.contentFilters[0].milter.host", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!([dkim_key(&domain(253))]),
            json!([dkim_key(&domain(254))]),
            &too_long("spec.dkim[0].domain", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!([{"domain": "acme.example", "selector": s(63), "secretRef": {"name": "dkim"}}]),
            json!([{"domain": "acme.example", "selector": s(64), "secretRef": {"name": "dkim"}}]),
            &too_long("spec.dkim[0].selector", DNS_LABEL_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": secret(253)}]),
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": secret(254)}]),
            &too_long("spec.dkim[0].secretRef.name", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": {"name": "dkim"}, "headers": headers(DKIM_HEADERS_MAX)}]),
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": {"name": "dkim"}, "headers": headers(DKIM_HEADERS_MAX + 1)}]),
            &too_many("spec.dkim[0].headers", DKIM_HEADERS_MAX),
        ),
        bound(
            org,
            "/spec/dkim",
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": {"name": "dkim"}, "headers": ["From", s(64)]}]),
            json!([{"domain": "acme.example", "selector": "s1", "secretRef": {"name": "dkim"}, "headers": ["From", s(65)]}]),
            &too_long("spec.dkim[0].headers[1]", HEADER_NAME_MAX),
        ),
        bound(
            org,
            "/spec/relay/hostname",
            json!(domain(253)),
            json!(domain(254)),
            &too_long("spec.relay.hostname", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/relay/tlsSecretRef",
            secret(253),
            secret(254),
            &too_long("spec.relay.tlsSecretRef.name", DNS_NAME_MAX),
        ),
        bound(
            org,
            "/spec/relay/allowedClientCidrs",
            networks(NETWORKS_MAX),
            networks(NETWORKS_MAX + 1),
            &too_many("spec.relay.allowedClientCidrs", NETWORKS_MAX),
        ),
        bound(
            org,
            "/spec/relay/allowedClientCidrs",
            cidr_list(&longest_cidr),
            cidr_list(&format!("{longest_cidr}0")),
            &too_long("spec.relay.allowedClientCidrs[0]", CIDR_MAX),
        ),
        bound(
            org,
            "/spec/relay/proxyProtocol",
            json!({"trustedProxies": networks(NETWORKS_MAX)}),
            json!({"trustedProxies": networks(NETWORKS_MAX + 1)}),
            &too_many("spec.relay.proxyProtocol.trustedProxies", NETWORKS_MAX),
        ),
        bound(
            org,
            "/spec/relay/proxyProtocol",
            json!({"trustedProxies": [longest_cidr.clone()]}),
            json!({"trustedProxies": [format!("{longest_cidr}0")]}),
            &too_long("spec.relay.proxyProtocol.trustedProxies[0]", CIDR_MAX),
        ),
        bound(
            org,
            "/spec/relay/limitStore",
            json!({"type": "Redis", "url": format!("redis://{}", s(URL_MAX - 8))}),
            json!({"type": "Redis", "url": format!("redis://{}", s(URL_MAX - 7))}),
            &too_long("spec.relay.limitStore.url", URL_MAX),
        ),
        bound(
            org,
            "/spec/relay/limitStore",
            json!({"type": "Redis", "url": "redis://r:6379", "passwordSecretRef": secret(253)}),
            json!({"type": "Redis", "url": "redis://r:6379", "passwordSecretRef": secret(254)}),
            &too_long("spec.relay.limitStore.passwordSecretRef.name", DNS_NAME_MAX),
        ),
        // SmtpRelaySetting
        bound(
            setting,
            "/spec/description",
            json!(s(1024)),
            json!(s(1025)),
            &too_long("spec.description", DESCRIPTION_MAX),
        ),
        // IpAllowRange
        bound(
            range,
            "/spec/description",
            json!(s(1024)),
            json!(s(1025)),
            &too_long("spec.description", DESCRIPTION_MAX),
        ),
        bound(
            range,
            "/spec/cidr",
            json!(longest_cidr),
            json!(format!("{longest_cidr}0")),
            &too_long("spec.cidr", CIDR_MAX),
        ),
        // MailRoute
        bound(
            route,
            "/spec/description",
            json!(s(1024)),
            json!(s(1025)),
            &too_long("spec.description", DESCRIPTION_MAX),
        ),
        bound(
            route,
            "/spec/match",
            json!({"recipientDomains": domains(ROUTE_DOMAINS_MAX)}),
            json!({"recipientDomains": domains(ROUTE_DOMAINS_MAX + 1)}),
            &too_many("spec.match.recipientDomains", ROUTE_DOMAINS_MAX),
        ),
        bound(
            route,
            "/spec/match",
            json!({"recipientDomains": [domain(253)]}),
            json!({"recipientDomains": [domain(254)]}),
            &too_long("spec.match.recipientDomains[0]", DNS_NAME_MAX),
        ),
        bound(
            route,
            "/spec/match",
            json!({"senderDomains": domains(ROUTE_DOMAINS_MAX)}),
            json!({"senderDomains": domains(ROUTE_DOMAINS_MAX + 1)}),
            &too_many("spec.match.senderDomains", ROUTE_DOMAINS_MAX),
        ),
        bound(
            route,
            "/spec/match",
            json!({"senderDomains": [domain(253)]}),
            json!({"senderDomains": [domain(254)]}),
            &too_long("spec.match.senderDomains[0]", DNS_NAME_MAX),
        ),
        bound(
            route,
            "/spec/singleHost/host",
            json!(domain(253)),
            json!(domain(254)),
            &too_long("spec.singleHost.host", DNS_NAME_MAX),
        ),
        bound(
            pool_route,
            "/spec/multipleHosts",
            json!({"primary": weighted(POOL_HOSTS_MAX)}),
            json!({"primary": weighted(POOL_HOSTS_MAX + 1)}),
            &too_many("spec.multipleHosts.primary", POOL_HOSTS_MAX),
        ),
        bound(
            pool_route,
            "/spec/multipleHosts",
            json!({"primary": weighted(1), "secondary": weighted(POOL_HOSTS_MAX)}),
            json!({"primary": weighted(1), "secondary": weighted(POOL_HOSTS_MAX + 1)}),
            &too_many("spec.multipleHosts.secondary", POOL_HOSTS_MAX),
        ),
        bound(
            pool_route,
            "/spec/multipleHosts",
            json!({"primary": [{"host": domain(253), "port": 587, "loadPercent": 100}]}),
            json!({"primary": [{"host": domain(254), "port": 587, "loadPercent": 100}]}),
            &too_long("spec.multipleHosts.primary[0].host", DNS_NAME_MAX),
        ),
        bound(
            route,
            "/spec/tls",
            json!({"trustedCaSecretRef": secret(253)}),
            json!({"trustedCaSecretRef": secret(254)}),
            &too_long("spec.tls.trustedCaSecretRef.name", DNS_NAME_MAX),
        ),
        bound(
            route,
            "/spec/auth",
            json!({"mechanism": "Plain", "secretRef": secret(253)}),
            json!({"mechanism": "Plain", "secretRef": secret(254)}),
            &too_long("spec.auth.secretRef.name", DNS_NAME_MAX),
        ),
        bound(
            route,
            "/spec/auth",
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "m365"}, "clientCredentials": {"clientId": "app", "tokenEndpoint": format!("https://{}", s(URL_MAX - 8))}}),
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "m365"}, "clientCredentials": {"clientId": "app", "tokenEndpoint": format!("https://{}", s(URL_MAX - 7))}}),
            &too_long("spec.auth.clientCredentials.tokenEndpoint", URL_MAX),
        ),
        bound(
            route,
            "/spec/auth",
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "gmail"}, "refreshToken": {"clientId": "app", "tokenEndpoint": format!("https://{}", s(URL_MAX - 8))}}),
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "gmail"}, "refreshToken": {"clientId": "app", "tokenEndpoint": format!("https://{}", s(URL_MAX - 7))}}),
            &too_long("spec.auth.refreshToken.tokenEndpoint", URL_MAX),
        ),
        bound(
            route,
            "/spec/auth",
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "gmail"}, "serviceAccount": {"scope": s(URL_MAX)}}),
            json!({"mechanism": "XOAuth2", "secretRef": {"name": "gmail"}, "serviceAccount": {"scope": s(URL_MAX + 1)}}),
            &too_long("spec.auth.serviceAccount.scope", URL_MAX),
        ),
        // RelayExpectation
        bound(
            expectation,
            "/spec/cases",
            json!((0..CASES_MAX).map(case).collect::<Vec<_>>()),
            json!((0..=CASES_MAX).map(case).collect::<Vec<_>>()),
            &too_many("spec.cases", CASES_MAX),
        ),
        bound(
            expectation,
            "/spec/cases/0/name",
            json!(s(256)),
            json!(s(257)),
            &too_long("spec.cases[0].name", CASE_NAME_MAX),
        ),
        bound(
            expectation,
            "/spec/cases/0/client/ip",
            json!(LONGEST_IP),
            json!(format!("{LONGEST_IP}0")),
            &too_long("spec.cases[0].client.ip", IP_MAX),
        ),
    ]
}

#[test]
fn at_the_bound_validates_and_past_it_is_refused_with_the_fields_message() {
    let bounds = bounds();
    let mut failures = Vec::new();
    for b in &bounds {
        if let Err(e) = load(&b.at) {
            failures.push(format!("at the bound, refused: {e}"));
        }
        if !mirror(&b.at).is_empty() {
            failures.push(format!(
                "at the bound, the mirror refuses: {:?}",
                mirror(&b.at)
            ));
        }
        match load(&b.past) {
            Ok(()) => failures.push(format!("past the bound, accepted: {}", b.message)),
            Err(e) => {
                let (field, detail) = b.message.split_once(": ").expect("field: detail");
                if !(e.contains(detail) && e.contains(field)) {
                    failures.push(format!("past the bound: expected {}\n  got {e}", b.message));
                }
            }
        }
        let mirrored = mirror(&b.past);
        if !mirrored.contains(&b.message) {
            failures.push(format!(
                "past the bound, the mirror: expected {}\n  got {mirrored:?}",
                b.message
            ));
        }
        for object in [&b.at, &b.past] {
            let (m, sch) = (mirror(object), schema(object));
            if m != sch {
                failures.push(format!("mirror {m:?} != schema {sch:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(bounds.len(), 48);
}

#[test]
fn a_loaded_bound_error_names_file_line_and_field() {
    let mut o = org();
    set(
        &mut o,
        "/spec/domains",
        json!(["acme.example", domain(254)]),
    );
    let text = yaml_serde::to_string(&o).expect("yaml");
    let err = load_sources(&[("org.yaml".to_string(), text.clone())])
        .expect_err("refused")
        .0
        .remove(0);
    assert_eq!(err.field.as_deref(), Some("spec.domains[1]"));
    let domains_line = text
        .lines()
        .position(|l| l.trim_start().starts_with("domains:"))
        .map(|i| i + 1);
    assert_eq!(Some(err.line), domains_line);
    assert!(
        err.to_string()
            .starts_with(&format!("org.yaml:{}: document 1 (Organization acme/acme): spec.domains[1]: Too long: may not be more than 253 bytes", err.line)),
        "{err}"
    );
}

/// `1000` as `1,000`.
fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Collects `path: problem` for every bound whose number the description does not state
/// (an array's items are described by the array).
fn undocumented(node: &Value, path: &str, inherited: &str, out: &mut Vec<String>) {
    let own = node
        .get("description")
        .and_then(Value::as_str)
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "));
    let description = own.as_deref().unwrap_or(inherited);
    for key in ["maxLength", "maxItems", "maxProperties"] {
        if let Some(n) = node.get(key).and_then(Value::as_u64) {
            let number = with_commas(n);
            if !description.contains(&number) {
                out.push(format!("{path}: {key} {n} not in {description:?}"));
            }
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            undocumented(v, &format!("{path}.{k}"), "", out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(items, &format!("{path}[]"), description, out);
    }
}

#[test]
fn every_bound_is_stated_in_its_fields_description() {
    let mut problems = Vec::new();
    for crd in crds::all_crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json");
        undocumented(&schema, &crd.spec.names.kind, "", &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn kube_cel_validation_alone_does_not_check_bounds() {
    // Why `crds::structural` exists: kube's offline validation evaluates only the CEL rules,
    // so 1,001 domains pass it while the API server (and the loader) refuse them.
    let mut o = org();
    set(
        &mut o,
        "/spec/domains",
        domains(crds::bounds::DOMAINS_MAX + 1),
    );
    let typed: Organization = serde_json::from_value(o.clone()).expect("typed");
    assert!(kube::core::cel::validate_cel(&typed).is_ok());
    let refused = load(&o).expect_err("the loader applies maxItems");
    assert!(
        refused.contains("spec.domains: Too many: 1001: must have at most 1000 items"),
        "{refused}"
    );
}

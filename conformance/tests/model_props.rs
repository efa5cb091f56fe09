//! In-process tier: proptest generates an organization's manifests (domains, users,
//! settings, ranges with selectors, routes, limit overrides) and client traffic (sessions
//! from different loopback addresses, EHLO names, STARTTLS, AUTH, senders, recipients),
//! renders the manifests as `relayctl render` does, starts the relay in this process on
//! loopback with OS-chosen ports and one test sink per route, and checks every reply and
//! every delivered envelope against [`conformance::model`]. The relay's clock is a fake
//! that sessions move by 11 minutes or 25 hours, so the rolling limit windows are
//! exercised without waiting. A failing case shrinks and
//! prints its manifests and the SMTP transcript.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conformance::manifests::*;
use conformance::model::{Delivery, Destination, Model, Step};
use conformance::pki;
use conformance::smtp::{Client, trusting};
use operator::render::RenderEnv;
use proptest::prelude::*;
use relay::config::{DeliveryConfig, ListenerConfig};
use relay::delivery::testing::{SinkConfig, TestSink};
use relay::{FakeClock, StartOptions};

const RELAY_NAME: &str = "relay.acme.example";

/// One session of generated traffic.
#[derive(Clone, Debug)]
struct SessionPlan {
    /// Seconds the clock moves before this session (0, 11 minutes or 25 hours).
    advance: u64,
    /// Last octet of a 127.0.0.x client (IPv4 cases); IPv6 cases use ::1.
    octet: u8,
    ehlo: String,
    starttls: bool,
    auth: Option<(String, String)>,
    transactions: Vec<(String, Vec<String>, bool)>,
}

#[derive(Clone, Debug)]
struct Case {
    ipv6: bool,
    manifests: Manifests,
    sessions: Vec<SessionPlan>,
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![1 => Just(None), 1 => s.prop_map(Some)].boxed()
}

fn org() -> impl Strategy<Value = OrgSpec> {
    let users = proptest::sample::subsequence(
        vec![
            "alice@acme.example".to_string(),
            "ticketing@acme.example".to_string(),
            "bob@acme.example".to_string(),
            "carol@acme.test".to_string(),
        ],
        0..=4,
    );
    let limits = (
        opt(1u64..6),
        opt(1u64..8),
        opt(1u64..12),
        opt(1u64..10),
        opt(1u64..5),
    )
        .prop_map(|(m, r, d, p, per)| LimitOverrides {
            user_messages_per_day: m,
            user_recipients_per_day: r,
            customer_recipients_per_day: d,
            customer_recipients_per10_minutes: p,
            recipients_per_message: per,
        });
    (
        any::<bool>(),
        users,
        prop::bool::weighted(0.8),
        any::<bool>(),
        1u64..20,
        any::<bool>(),
        limits,
    )
        .prop_map(|(two, users, tls, auth, licenses, paid, limits)| {
            let mut domains = vec!["acme.example".to_string()];
            if two {
                domains.push("acme.test".into());
            }
            OrgSpec {
                domains,
                users,
                tls,
                auth,
                licenses,
                paid,
                limits,
                proxy_protocol: None,
                dkim: vec![],
                content_filters: vec![],
                archive: None,
            }
        })
}

fn v4_range() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![0u8, 1, 2, 4, 8, 16, 32, 200]),
        24u8..=32,
    )
        .prop_map(|(base, prefix)| {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, base), prefix)
                .map(|n| n.trunc())
                .unwrap();
            if prefix == 32 {
                net.addr().to_string()
            } else {
                net.to_string()
            }
        })
}

fn v6_range() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "::1".to_string(),
        "0:0:0:0:0:0:0:1".to_string(),
        "0000:0000:0000:0000:0000:0000:0000:0001/128".to_string(),
        "::/112".to_string(),
        "::2/127".to_string(),
        "fd00::/112".to_string(),
    ])
}

fn ranges(ipv6: bool) -> BoxedStrategy<Vec<RangeSpec>> {
    let cidr = if ipv6 {
        v6_range().boxed()
    } else {
        v4_range().boxed()
    };
    prop::collection::vec(
        (
            cidr,
            prop::bool::weighted(0.75),
            prop::sample::select(vec!["a", "b"]),
        ),
        0..4,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cidr, enabled, label))| RangeSpec {
                name: format!("range-{i}"),
                cidr,
                enabled,
                label: label.into(),
            })
            .collect()
    })
    .boxed()
}

fn settings() -> impl Strategy<Value = Vec<SettingSpec>> {
    let senders = prop::sample::select(vec![
        Senders::RegisteredUsers,
        Senders::OrganizationDomains,
        Senders::AnyAddress,
    ]);
    let ip = prop_oneof![
        Just(None),
        Just(Some(None)),
        Just(Some(Some("a".to_string()))),
        Just(Some(Some("b".to_string()))),
    ];
    let auth = prop::bool::weighted(0.3);
    let tls = prop::bool::weighted(0.3);
    prop::collection::vec((senders, ip, auth, tls), 1..4).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (senders, ip_ranges, auth, tls))| {
                // The API insists on one authentication box, and AUTH implies TLS.
                let require_auth = auth || ip_ranges.is_none();
                SettingSpec {
                    name: format!("setting-{i}"),
                    senders,
                    ip_ranges,
                    require_auth,
                    require_tls: tls || require_auth,
                }
            })
            .collect()
    })
}

const ROUTE_DOMAINS: [&str; 5] = [
    "partner.test",
    "*.partner.test",
    "eu.partner.test",
    "*.eu.partner.test",
    "example.net",
];

fn routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    // Each pattern goes to route 0, route 1 or no route; a default route takes the rest.
    prop::collection::vec(0u8..3, ROUTE_DOMAINS.len()).prop_map(|owners| {
        let mut routes = Vec::new();
        for r in 0..2u8 {
            let domains: Vec<String> = ROUTE_DOMAINS
                .iter()
                .zip(&owners)
                .filter(|(_, o)| **o == r)
                .map(|(d, _)| d.to_string())
                .collect();
            if !domains.is_empty() {
                routes.push(route(&format!("route-{r}"), RouteMatch::Domains(domains)));
            }
        }
        routes.push(route("default", RouteMatch::Default));
        routes
    })
}

fn route(name: &str, matcher: RouteMatch) -> RouteSpec {
    // The port is filled in with the sink's once it listens.
    RouteSpec::relaxed(
        name,
        matcher,
        RouteHostsSpec::Single(HostSpec {
            host: "127.0.0.1".into(),
            port: 2525,
            load_percent: 100,
        }),
    )
}

fn session() -> impl Strategy<Value = SessionPlan> {
    let ehlo = prop::sample::select(vec![
        "client.acme.example",
        "acme.example",
        "mx.acme.test",
        "stranger.example",
    ]);
    let auth = opt((
        prop::sample::select(vec![
            "alice@acme.example",
            "ticketing@acme.example",
            "bob@acme.example",
        ]),
        any::<bool>(),
    ));
    let sender = prop::sample::select(vec![
        "alice@acme.example",
        "Ticketing@acme.example",
        "bob@acme.example",
        "carol@acme.test",
        "x@sub.acme.example",
        "noreply@vendor.example",
        "",
    ]);
    let rcpt = prop::sample::select(vec![
        "r1@partner.test",
        "r2@eu.partner.test",
        "r3@x.eu.partner.test",
        "r4@example.net",
        "r5@other.org",
        "R1@Partner.test",
    ]);
    let tx = (
        sender,
        prop::collection::vec(rcpt, 1..5),
        prop::bool::weighted(0.85),
    );
    let advance = prop_oneof![6 => Just(0u64), 1 => Just(11 * 60), 1 => Just(25 * 3600)];
    (
        advance,
        prop::sample::select(vec![1u8, 2, 5, 9, 17, 33, 200]),
        ehlo,
        prop::bool::weighted(0.7),
        auth,
        prop::collection::vec(tx, 1..4),
    )
        .prop_map(|(advance, octet, ehlo, starttls, auth, txs)| SessionPlan {
            advance,
            octet,
            ehlo: ehlo.into(),
            starttls,
            auth: auth.map(|(user, right)| {
                let password = PASSWORDS
                    .iter()
                    .find(|(u, _)| *u == user)
                    .filter(|_| right)
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_else(|| "wrong password".into());
                (user.to_string(), password)
            }),
            transactions: txs
                .into_iter()
                .map(|(s, r, data)| {
                    (
                        s.to_string(),
                        r.into_iter().map(str::to_string).collect(),
                        data,
                    )
                })
                .collect(),
        })
}

fn case() -> impl Strategy<Value = Case> {
    prop::bool::weighted(0.25).prop_flat_map(|ipv6| {
        (
            org(),
            settings(),
            ranges(ipv6),
            routes(),
            prop::collection::vec(session(), 1..5),
        )
            .prop_map(move |(org, settings, ranges, routes, sessions)| Case {
                ipv6,
                manifests: Manifests {
                    org,
                    settings,
                    ranges,
                    routes,
                },
                sessions,
            })
    })
}

/// What went wrong in a case, with everything needed to reproduce it by hand.
fn failure(case: &Manifests, transcript: &[String], what: String) -> TestCaseError {
    TestCaseError::fail(format!(
        "{what}\n--- manifests ---\n{}\n--- SMTP transcript ---\n{}",
        case.to_yaml(),
        transcript.join("\n")
    ))
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cert = pki::self_signed(&[RELAY_NAME]).unwrap();
    cert.write_to(&dir.path().join("tls")).unwrap();
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    std::fs::write(dir.path().join("auth/credentials"), CREDENTIALS).unwrap();
    let host: IpAddr = if case.ipv6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let any = SocketAddr::new(host, 0);
    let env = RenderEnv {
        listeners: ListenerConfig {
            smtp: any,
            submission: any,
            smtps: any,
        },
        admin_listen: any,
        spool_dir: dir.path().join("spool").to_string_lossy().into_owned(),
        tls_dir: dir.path().join("tls").to_string_lossy().into_owned(),
        credentials_dir: dir.path().join("auth").to_string_lossy().into_owned(),
        ca_dir: dir.path().join("ca").to_string_lossy().into_owned(),
        delivery: DeliveryConfig {
            connect_timeout_seconds: 5,
            retry_schedule_seconds: vec![1],
            ..DeliveryConfig::default()
        },
    };

    // One sink per route, on the route's port.
    let mut manifests = case.manifests.clone();
    let mut sinks: BTreeMap<String, TestSink> = BTreeMap::new();
    for r in &mut manifests.routes {
        let sink = TestSink::start(SinkConfig::default()).await.unwrap();
        r.hosts = RouteHostsSpec::Single(HostSpec {
            host: "127.0.0.1".into(),
            port: sink.port(),
            load_percent: 100,
        });
        sinks.insert(r.name.clone(), sink);
    }
    let config = manifests
        .render(&env)
        .map_err(|e| failure(&manifests, &[], format!("render failed: {e}")))?;
    // Limits read this clock; sessions move it to roll the 10-minute and 24-hour windows.
    let clock = Arc::new(FakeClock::new(SystemTime::now()));
    let relay = relay::start(
        config,
        StartOptions {
            clock: clock.clone(),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let tls = trusting(cert.der.clone()).unwrap();

    let mut model = Model::new(&manifests);
    let mut transcript = Vec::new();
    for plan in &case.sessions {
        if plan.advance > 0 {
            clock.advance(Duration::from_secs(plan.advance));
            model.advance(plan.advance);
            transcript.push(format!("-- clock moves {} s", plan.advance));
        }
        let ip: IpAddr = if case.ipv6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::new(127, 0, 0, plan.octet).into()
        };
        let result = run_session(&mut model, plan, ip, relay.smtp_addr(), &tls).await;
        match result {
            Ok(lines) => transcript.extend(lines),
            Err((lines, what)) => {
                transcript.extend(lines);
                relay.shutdown().await;
                return Err(failure(&manifests, &transcript, what));
            }
        }
    }

    // Every accepted message is delivered; the spool empties once all have been.
    let spool = relay.spool();
    let mut drained = false;
    for _ in 0..400 {
        if spool.depth() == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.shutdown().await;
    if !drained {
        return Err(failure(
            &manifests,
            &transcript,
            "accepted mail was not delivered within 20 s".into(),
        ));
    }
    // Recipient order inside one delivery is not part of the contract.
    let normalize = |mut d: Delivery| {
        d.rcpts.sort();
        d
    };
    let mut expected: Vec<Delivery> = model.deliveries.iter().cloned().map(normalize).collect();
    expected.sort();
    let mut got: Vec<Delivery> = sinks
        .iter()
        .flat_map(|(name, sink)| {
            sink.messages().into_iter().map(move |m| Delivery {
                destination: Destination::Route(name.clone()),
                mail_from: m.mail_from,
                rcpts: m.rcpt_to.clone(),
            })
        })
        .map(normalize)
        .collect();
    got.sort();
    if got != expected {
        return Err(failure(
            &manifests,
            &transcript,
            format!("deliveries differ\n expected: {expected:#?}\n got: {got:#?}"),
        ));
    }
    Ok(())
}

type SessionResult = Result<Vec<String>, (Vec<String>, String)>;

async fn run_session(
    model: &mut Model,
    plan: &SessionPlan,
    ip: IpAddr,
    server: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> SessionResult {
    let (mut client, greeting) = match Client::connect(ip, server).await {
        Ok(c) => c,
        Err(e) => return Err((vec![], format!("connect from {ip}: {e}"))),
    };
    if !greeting.starts_with("220 ") {
        return Err((client.transcript, format!("greeting {greeting:?}")));
    }
    let mut s = model.connect(ip);
    let mut steps = vec![Step::Ehlo(plan.ehlo.clone())];
    if plan.starttls && model.tls_available() {
        steps.push(Step::StartTls);
        steps.push(Step::Ehlo(plan.ehlo.clone()));
    }
    if let Some((user, password)) = &plan.auth {
        steps.push(Step::Auth {
            user: user.clone(),
            password: password.clone(),
        });
    }
    let mut script: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    for (from, rcpts, data) in &plan.transactions {
        script.push(Some(Step::Mail(from.clone())));
        script.extend(rcpts.iter().map(|r| Some(Step::Rcpt(r.clone()))));
        // `None` marks the end of a transaction: DATA or RSET, decided below.
        script.push(if *data { None } else { Some(Step::Rset) });
    }
    for planned in script {
        let step = match planned {
            Some(Step::Rcpt(_)) | Some(Step::Rset) | None if !s.has_transaction() => {
                // MAIL was refused: nothing to add recipients to.
                continue;
            }
            None if s.accepted_rcpts() == 0 => Step::Rset,
            None => Step::Data,
            Some(step) => step,
        };
        let expected = model.step(&mut s, &step);
        let reply = match &step {
            Step::Ehlo(name) => client.command(&format!("EHLO {name}")).await,
            Step::StartTls => client.starttls(tls.clone(), RELAY_NAME).await,
            Step::Auth { user, password } => client.auth_plain(user, password).await,
            Step::Mail(from) => client.command(&format!("MAIL FROM:<{from}>")).await,
            Step::Rcpt(to) => client.command(&format!("RCPT TO:<{to}>")).await,
            Step::Data => {
                client
                    .data("Subject: conformance\r\nFrom: <app@acme.example>\r\n\r\nbody\r\n")
                    .await
            }
            Step::Rset => client.command("RSET").await,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    client.transcript,
                    format!("{step:?}: expected {expected:?}, got error {e}"),
                ));
            }
        };
        if !expected.matches(&reply) {
            return Err((
                client.transcript,
                format!("{step:?}: expected {expected:?}, got {reply:?}"),
            ));
        }
        if Model::closed(&s) {
            return Ok(client.transcript);
        }
    }
    let _ = client.command("QUIT").await;
    Ok(client.transcript)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn relay_replies_and_deliveries_match_the_model(case in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(case))?;
    }
}

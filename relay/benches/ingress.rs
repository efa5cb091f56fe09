//! Ingress micro benchmarks (`cargo bench -p relay --bench ingress`), plain harness:
//! - the policy decision with 10,000 IP ranges, spread over 1,000 settings, over 10, and
//!   interleaved over 1,000 settings of mixed kinds (with the size of the policy index,
//!   and `explain_mail`, which evaluates every setting, for comparison);
//! - the route choice among 1,000 MailRoutes (exact and `*.` domains, and a default), by
//!   the reference scan (`choose_route`) and by the compiled `RouteTable` delivery uses;
//! - one whole decision: MAIL FROM policy plus the route of one recipient, in each shape;
//! - spool group commit: durable accepts per second with 1 and 64 concurrent writers;
//! - SMTP AUTH: the cost of one password check (argon2 with the hashes' parameters), the
//!   checks per second of the bounded pool under a flood of 256 concurrent attempts (and
//!   how many were turned away `busy`), and what the throttle lets one attacker try.
//!
//! Prints one line per measurement; bounded in iterations, no assertions.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use relay::config::*;
use relay::delivery::route::{RouteChoice, RouteTable, choose_route};
use relay::policy::{ClientFacts, Policy};
use relay::spool::{Envelope, Spool};

fn config(settings: Vec<SettingConfig>) -> RelayConfig {
    let mut cfg = RelayConfig::loopback("", 25);
    cfg.organization.users = vec!["alice@acme.example".into()];
    cfg.settings = settings;
    cfg.routes.clear();
    cfg.limits = LimitsConfig::for_customer(100, true);
    cfg
}

/// How the benchmark's 10,000 /24 ranges are dealt to settings.
#[derive(Clone, Copy)]
enum Shape {
    /// `settings` settings of the same kind, each of `per_setting` adjacent ranges.
    Blocks { settings: u32, per_setting: u32 },
    /// 1,000 settings of mixed sender modes and AUTH/TLS boxes; range `n` belongs to
    /// setting `n % 1,000`, so neighbouring ranges belong to different settings.
    Interleaved,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Blocks {
                settings,
                per_setting,
            } => write!(f, "{settings} settings x {per_setting} ranges"),
            Shape::Interleaved => write!(f, "1000 interleaved mixed settings x 10 ranges"),
        }
    }
}

fn range(n: u32) -> RangeConfig {
    RangeConfig {
        name: format!("acme/r{n}"),
        network: format!("10.{}.{}.0/24", n / 256, n % 256).parse().unwrap(),
    }
}

/// The policy of a shape, over 10.0.0.0/8.
fn policy(shape: Shape) -> Policy {
    let modes = [
        AllowedSenders::OrganizationDomains,
        AllowedSenders::AnyAddress,
        AllowedSenders::RegisteredUsers,
    ];
    let settings: Vec<SettingConfig> = match shape {
        Shape::Blocks {
            settings,
            per_setting,
        } => (0..settings)
            .map(|s| SettingConfig {
                name: format!("acme/s{s}"),
                description: String::new(),
                allowed_senders: AllowedSenders::OrganizationDomains,
                ip_ranges: Some(
                    (0..per_setting)
                        .map(|r| range(s * per_setting + r))
                        .collect(),
                ),
                require_smtp_auth: false,
                require_tls: false,
            })
            .collect(),
        Shape::Interleaved => (0..1000)
            .map(|s| SettingConfig {
                name: format!("acme/s{s}"),
                description: String::new(),
                allowed_senders: modes[(s % 3) as usize],
                ip_ranges: Some((0..10).map(|r| range(s + 1000 * r)).collect()),
                require_smtp_auth: s % 7 == 1,
                require_tls: s % 5 == 1,
            })
            .collect(),
    };
    Policy::new(&config(settings))
}

fn clients() -> Vec<IpAddr> {
    (0..1024u32)
        .map(|i| {
            format!("10.{}.{}.7", (i * 37) % 64, (i * 11) % 256)
                .parse()
                .unwrap()
        })
        .collect()
}

const SHAPES: [Shape; 3] = [
    Shape::Blocks {
        settings: 1000,
        per_setting: 10,
    },
    Shape::Blocks {
        settings: 10,
        per_setting: 1000,
    },
    Shape::Interleaved,
];

fn bench_policy(shape: Shape) {
    let built = Instant::now();
    let policy = policy(shape);
    println!(
        "policy: compiled {shape} in {:?}, index {:?}",
        built.elapsed(),
        policy.index_size()
    );
    let clients = clients();
    let rounds = 200_000;
    let t = Instant::now();
    let mut accepted = 0u32;
    for i in 0..rounds {
        let facts = ClientFacts {
            ip: clients[i % clients.len()],
            tls: false,
            auth: None,
            helo: Some("mx.acme.example"),
        };
        if matches!(
            policy.decide_mail(&facts, "bob@acme.example"),
            relay::policy::MailDecision::Accept { .. }
        ) {
            accepted += 1;
        }
    }
    let per = t.elapsed() / rounds as u32;
    println!(
        "policy: decide_mail with {shape}: {per:?} per decision ({accepted}/{rounds} accepted)"
    );
    let rounds = 2_000;
    let t = Instant::now();
    for i in 0..rounds {
        let facts = ClientFacts {
            ip: clients[i % clients.len()],
            tls: false,
            auth: None,
            helo: Some("mx.acme.example"),
        };
        std::hint::black_box(policy.explain_mail(&facts, "bob@acme.example"));
    }
    let per = t.elapsed() / rounds as u32;
    println!("policy: explain_mail (every setting) with {shape}: {per:?} per explanation");
}

fn routes(n: usize) -> Vec<RouteConfig> {
    let tls = RouteTlsConfig {
        require_tls: false,
        require_ca_signed: false,
        validate_hostname: false,
        extra_ca_file: None,
        implicit: false,
    };
    let mut routes: Vec<RouteConfig> = (0..n)
        .map(|i| RouteConfig {
            rate_limit: None,
            name: format!("acme/route{i}"),
            description: String::new(),
            matcher: RouteMatcher::Domains(vec![
                format!("d{i}.example"),
                format!("*.d{i}.example"),
            ]),
            hosts: RouteHosts::Single(HostConfig {
                host: format!("mx{i}.example"),
                port: 25,
            }),
            mx_lookup: false,
            tls: tls.clone(),
            auth: None,
        })
        .collect();
    routes.push(RouteConfig {
        rate_limit: None,
        name: "acme/default".into(),
        description: String::new(),
        matcher: RouteMatcher::Default,
        hosts: RouteHosts::Single(HostConfig {
            host: "smarthost.example".into(),
            port: 25,
        }),
        mx_lookup: false,
        tls,
        auth: None,
    });
    routes
}

fn recipient_domains() -> Vec<String> {
    (0..1024usize)
        .map(|i| match i % 3 {
            0 => format!("d{}.example", (i * 7) % 1000),
            1 => format!("mail.d{}.example", (i * 13) % 1000),
            _ => format!("elsewhere{i}.example"),
        })
        .collect()
}

fn bench_routes() {
    let routes = routes(1000);
    let domains = recipient_domains();
    let table = RouteTable::new(&routes);
    let rounds = 20_000;
    let t = Instant::now();
    let mut configured = 0u32;
    for i in 0..rounds {
        if let RouteChoice::Configured(index) = choose_route(&routes, &domains[i % domains.len()])
            && index < 1000
        {
            configured += 1;
        }
    }
    let per = t.elapsed() / rounds as u32;
    println!(
        "routes: choose_route (scan) among 1,000 routes: {per:?} per recipient ({configured}/{rounds} matched a domain route)"
    );
    let rounds = 200_000;
    let t = Instant::now();
    let mut configured = 0u32;
    for i in 0..rounds {
        if let RouteChoice::Configured(index) = table.choose(&domains[i % domains.len()])
            && index < 1000
        {
            configured += 1;
        }
    }
    let per = t.elapsed() / rounds as u32;
    println!(
        "routes: RouteTable::choose among 1,000 routes: {per:?} per recipient ({configured}/{rounds} matched a domain route)"
    );
}

/// MAIL FROM decision with 10,000 ranges in a shape, plus the route of one recipient
/// among 1,000 routes.
fn bench_decision(shape: Shape) {
    let policy = policy(shape);
    let table = RouteTable::new(&routes(1000));
    let clients = clients();
    let domains = recipient_domains();
    let rounds = 200_000;
    let t = Instant::now();
    let mut both = 0u32;
    for i in 0..rounds {
        let facts = ClientFacts {
            ip: clients[i % clients.len()],
            tls: false,
            auth: None,
            helo: Some("mx.acme.example"),
        };
        let accepted = matches!(
            policy.decide_mail(&facts, "bob@acme.example"),
            relay::policy::MailDecision::Accept { .. }
        );
        if accepted
            && matches!(
                table.choose(&domains[i % domains.len()]),
                RouteChoice::Configured(_)
            )
        {
            both += 1;
        }
    }
    let per = t.elapsed() / rounds as u32;
    println!(
        "decision: decide_mail ({shape}) + route of one recipient (1,000 routes): {per:?} ({both}/{rounds} accepted and routed)"
    );
}

fn bench_spool() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for concurrency in [1usize, 64, 256] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let per_task = 4096 / concurrency;
        let body = vec![b'x'; 4096];
        let t = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let spool = spool.clone();
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..per_task {
                        let env = Envelope {
                            queue_id: spool.new_id(),
                            mail_from: "bob@acme.example".into(),
                            original_mail_from: None,
                            rcpts: vec!["a@dest.example".into()],
                            client_ip: "127.0.0.1".parse().unwrap(),
                            helo: "client".into(),
                            auth_identity: None,
                            tls: None,
                            received_at: UNIX_EPOCH,
                            size: body.len() as u64,
                            smtputf8: false,
                            eight_bit_mime: false,
                            quarantine: None,
                            discarded: None,
                            archive: None,
                        };
                        spool.accept(&env, &body).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let n = per_task * concurrency;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "spool: {n} durable 4 KiB accepts with {concurrency} concurrent writers: {:.0} msgs/s",
            n as f64 / secs
        );
    }
}

fn bench_auth() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use relay::ingress::auth::{Argon2Pool, Credentials, Verdict};
    use relay::ingress::auth_throttle::{AuthThrottle, Decision, ThrottleConfig};
    use std::time::{Duration, SystemTime};
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let phc = argon2::Argon2::default()
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let credentials = Credentials::parse("bench", &format!("alice@acme.example:{phc}\n")).unwrap();
    // One check at a time: the cost an attempt (or an unknown user) adds.
    let n = 20;
    let t = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let v = credentials
                .verify("alice@acme.example", "wrong".into())
                .await;
            assert_eq!(v, Verdict::Invalid);
        }
    });
    let one = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "auth: one argon2id check (default parameters): {:.1} ms",
        one * 1e3
    );
    // A flood: 256 attempts at once against a pool like the shared one (all CPUs but one).
    let workers = relay::ingress::auth::default_workers(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let credentials = credentials.with_pool(Argon2Pool::new(workers, 4 * workers));
    let t = Instant::now();
    let (checked, busy) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..256 {
            let c = credentials.clone();
            tasks.push(tokio::spawn(async move {
                c.verify(&format!("u{i}@acme.example"), "x".into()).await
            }));
        }
        let (mut checked, mut busy) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Verdict::Busy => busy += 1,
                _ => checked += 1,
            }
        }
        (checked, busy)
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "auth: 256 simultaneous attempts, pool of {workers} workers + {} waiting: {checked} checked in {secs:.2} s ({:.0} checks/s), {busy} answered 454 4.3.0 at once",
        4 * workers,
        checked as f64 / secs
    );
    // What the default throttle lets one client address and one user try: simulated time.
    let cfg = ThrottleConfig::default();
    let throttle = AuthThrottle::new(cfg.clone());
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let end = now + Duration::from_secs(3600);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let (mut tried, mut waited) = (0u32, Duration::ZERO);
    let mut i = 0u32;
    while now < end {
        let attempt = match throttle.check(ip, &format!("guess{}@acme.example", i % 1000), now) {
            Decision::Verify { delay, attempt } => {
                waited += delay;
                now += delay;
                attempt
            }
            Decision::LockedOut { until, .. } => {
                now = until.max(now + Duration::from_secs(1));
                continue;
            }
        };
        attempt.failed(now);
        tried += 1;
        i += 1;
        now += Duration::from_millis(100);
    }
    println!(
        "auth: one client address guessing for an hour under the default throttle: {tried} password checks ({:.0} s of delays, locked out after every {} failures for {} min)",
        waited.as_secs_f64(),
        cfg.ip_lockout_failures,
        cfg.lockout.as_secs() / 60
    );
}

fn main() {
    bench_auth();
    for shape in SHAPES {
        bench_policy(shape);
    }
    bench_routes();
    for shape in SHAPES {
        bench_decision(shape);
    }
    bench_spool();
}

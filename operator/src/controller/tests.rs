//! Reconcile against the mocked API server: each test checks what a user or the cluster
//! would notice: the requests made, the children and status the cluster then holds, and
//! the Events posted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use relay::config::{RelayConfig, RouteHosts};
use serde_json::{Value, json};

use super::fixtures::{FakeProber, NOW, Recorded, Refusal, World};
use super::probe::ProbingDisabled;
use crate::render::{Objects, RenderEnv, render};

pub(super) const API: &str = "/apis/smtprelay.dev/v1alpha1/namespaces/acme";
pub(super) const EVENTS: &str = "POST /apis/events.k8s.io/v1/namespaces/acme/events";
const CHILD_APPLIES: [&str; 7] = [
    "PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config",
    "PATCH /api/v1/namespaces/acme/services/acme-relay-pods",
    "PATCH /apis/apps/v1/namespaces/acme/statefulsets/acme-relay",
    "PATCH /api/v1/namespaces/acme/services/acme-relay",
    "PATCH /apis/policy/v1/namespaces/acme/poddisruptionbudgets/acme-relay",
    "PATCH /apis/networking.k8s.io/v1/namespaces/acme/networkpolicies/acme-relay",
    "PATCH /apis/networking.k8s.io/v1/namespaces/acme/networkpolicies/acme-relay-drain",
];

pub(super) fn lines(log: &[Recorded]) -> Vec<String> {
    log.iter().map(Recorded::line).collect()
}

pub(super) fn writes(log: &[Recorded]) -> Vec<String> {
    log.iter()
        .filter(|r| r.is_write())
        .map(Recorded::line)
        .collect()
}

/// Requests the API server refused.
pub(super) fn refused(log: &[Recorded]) -> Vec<String> {
    log.iter()
        .filter(|r| r.code >= 400 && r.code != 404)
        .map(|r| format!("{} -> {}", r.line(), r.code))
        .collect()
}

/// `(type, reason, note, regarding kind/name)` of every Event the API server accepted.
pub(super) fn events(log: &[Recorded]) -> Vec<(String, String, String, String)> {
    log.iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events") && r.code < 300)
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&r.body["type"]),
                s(&r.body["reason"]),
                s(&r.body["note"]),
                format!(
                    "{}/{}",
                    s(&r.body["regarding"]["kind"]),
                    s(&r.body["regarding"]["name"])
                ),
            )
        })
        .collect()
}

pub(super) fn request<'a>(log: &'a [Recorded], method: &str, path: &str) -> &'a Recorded {
    log.iter()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:#?}", lines(log)))
}

pub(super) fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

pub(super) fn org_status(world: &World) -> Value {
    serde_json::to_value(world.organizations[0].status.clone()).unwrap()
}

pub(super) fn rendered(world: &World) -> RelayConfig {
    let secrets: BTreeSet<String> = world.secrets.iter().map(|s| s.name_any()).collect();
    render(
        "acme",
        Objects {
            organizations: &world.organizations,
            settings: &world.settings,
            ranges: &world.ranges,
            routes: &world.routes,
            secrets: &secrets,
        },
        &RenderEnv::pod(),
    )
    .unwrap()
    .config
}

/// The world after its first reconcile and the Deployment controller's rollout.
pub(super) async fn settled(example: &str) -> World {
    let mut world = World::example(example);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    world.settle();
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    world
}

#[tokio::test]
async fn new_organization_gets_all_children_then_status_then_events() {
    let mut world = World::example("quickstart");
    let (result, log) = world.reconcile(ProbingDisabled).await;
    // The StatefulSet controller has not seen the new StatefulSet yet: requeue soon.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(15)));
    assert_eq!(refused(&log), Vec::<String>::new());

    // No LIST and no Secret read but the admin token's (quickstart names none): inputs
    // come from the caches. The admin token Secret is made first, so the pods mount it.
    // The drain finalizer first: from now on its deletion waits for its spools.
    let mut expected: Vec<String> = vec![
        format!("PATCH {API}/organizations/acme"),
        "GET /api/v1/namespaces/acme/secrets/acme-relay-admin".into(),
        "POST /api/v1/namespaces/acme/secrets".into(),
    ];
    expected.extend(CHILD_APPLIES.map(String::from));
    expected.extend([
        format!("PATCH {API}/organizations/acme/status"),
        EVENTS.into(),
        EVENTS.into(),
        // Each object joining the relay configuration is announced.
        format!("PATCH {API}/smtprelaysettings/loopback-clients/status"),
        EVENTS.into(),
        format!("PATCH {API}/ipallowranges/loopback-v4/status"),
        EVENTS.into(),
        format!("PATCH {API}/ipallowranges/loopback-v6/status"),
        EVENTS.into(),
        format!("PATCH {API}/mailroutes/default/status"),
        EVENTS.into(),
    ]);
    assert_eq!(lines(&log), expected);

    for path in CHILD_APPLIES {
        let r = log.iter().find(|r| r.line() == path).unwrap();
        assert!(r.is_forced_apply(), "{path}?{}", r.query);
        let owner = &r.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Organization");
        assert_eq!(owner["uid"], "uid-acme");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
    }
    // Status is a server-side apply too.
    let status_write = request(&log, "PATCH", &format!("{API}/organizations/acme/status"));
    assert!(status_write.is_forced_apply());
    assert_eq!(status_write.body["kind"], "Organization");

    let config = rendered(&world);
    let cm = world
        .child::<ConfigMap>("acme", "acme-relay-config")
        .unwrap();
    assert_eq!(cm["data"]["config.json"], config.to_json());
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let container = &stateful_set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["command"],
        json!([
            "relay",
            "--log-format",
            "json",
            "--config",
            "/etc/smtprelay/config/config.json",
            "--drain-delay-seconds",
            "10"
        ])
    );
    assert!(
        !stateful_set["spec"]["template"]
            .to_string()
            .contains(&config.hash)
    );
    assert_eq!(
        condition(&org_status(&world), "InForce")["reason"],
        "Pending"
    );

    // Not Ready yet, and saying why; no Warning for a relay that is starting.
    let status = org_status(&world);
    assert_eq!(status["configHash"], config.hash.as_str());
    let ready = condition(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("Unknown"), &json!("RolloutPending"))
    );
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    let ev = events(&log);
    assert_eq!(
        ev[0],
        (
            "Normal".into(),
            "ConfigUpdated".into(),
            format!(
                "relay config {} applied (first version)",
                &config.hash[..12]
            ),
            "Organization/acme".into()
        )
    );
    assert_eq!(
        ev[1],
        (
            "Normal".into(),
            "RelayCreated".into(),
            "created StatefulSet acme-relay with 1 replica(s), each with its own spool".into(),
            "Organization/acme".into()
        )
    );
    assert_eq!(
        (ev[5].0.as_str(), ev[5].1.as_str(), ev[5].3.as_str()),
        ("Normal", "TlsChecksRelaxed", "MailRoute/default")
    );
    assert_eq!(ev.len(), 6, "{ev:?}");
    let setting = serde_json::to_value(&world.settings[0].status).unwrap();
    assert_eq!(setting["matchedRanges"], 2);
    assert_eq!(
        world.ranges[1].status.as_ref().unwrap().network.as_deref(),
        Some("::1/128")
    );

    // The StatefulSet controller rolls it out and the pod reports the config: Ready and
    // InForce, two Normal Events, nothing else.
    world.settle();
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        writes(&log),
        [
            format!("PATCH {API}/organizations/acme/status"),
            EVENTS.into(),
            EVENTS.into()
        ]
    );
    let ready = condition(&org_status(&world), "Ready").clone();
    assert_eq!(ready["status"], "True");
    assert_eq!(
        ready["message"],
        format!("relay available; config {} applied", &config.hash[..12])
    );
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(
        (&in_force["status"], &in_force["reason"]),
        (&json!("True"), &json!("AllPodsReport"))
    );
    assert_eq!(
        events(&log),
        [
            (
                "Normal".into(),
                "RelayAvailable".into(),
                format!("relay available; config {} applied", &config.hash[..12]),
                "Organization/acme".into()
            ),
            (
                "Normal".into(),
                "ConfigInForce".into(),
                format!(
                    "every ready relay pod reports config {}",
                    &config.hash[..12]
                ),
                "Organization/acme".into()
            )
        ]
    );
}

#[tokio::test]
async fn reconcile_without_changes_makes_no_request_at_all() {
    let mut world = settled("quickstart").await;
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(lines(&log), Vec::<String>::new());
}

#[tokio::test]
async fn reconcile_without_changes_only_reads_the_named_secrets() {
    let mut world = settled("applications-smtp-auth").await;
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    // The credentials exist; relay-tls does not (a GET that finds nothing).
    assert_eq!(
        lines(&log),
        [
            "GET /api/v1/namespaces/acme/secrets/relay-tls",
            "GET /api/v1/namespaces/acme/secrets/smtp-credentials"
        ]
    );
}

#[tokio::test]
async fn changed_mail_route_writes_only_the_config_map_and_the_statuses_that_changed() {
    let mut world = settled("quickstart").await;
    let old = rendered(&world);
    let route = &mut world.routes[0];
    route.spec.single_host.as_mut().unwrap().port = 2526;
    route.metadata.generation = Some(2);
    let new = rendered(&world);
    assert_ne!(old.hash, new.hash);

    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    // The pod still runs the old config: an annotation makes its kubelet refresh the
    // mounted ConfigMap now rather than at its next periodic sync.
    assert_eq!(
        writes(&log),
        [
            "PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config".to_string(),
            "PATCH /api/v1/namespaces/acme/pods/acme-relay-0".to_string(),
            format!("PATCH {API}/organizations/acme/status"),
            EVENTS.into(),
            EVENTS.into(),
            format!("PATCH {API}/mailroutes/default/status"),
        ]
    );
    let nudge = request(&log, "PATCH", "/api/v1/namespaces/acme/pods/acme-relay-0");
    assert!(nudge.is_forced_apply());
    let wanted = nudge.body["metadata"]["annotations"]["smtprelay.dev/wants-content-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let cm = world
        .child::<ConfigMap>("acme", "acme-relay-config")
        .unwrap();
    let applied = RelayConfig::from_json(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(applied, new);
    let RouteHosts::Single(host) = &applied.routes[0].hosts else {
        panic!("single host expected")
    };
    assert_eq!((host.host.as_str(), host.port), ("127.0.0.1", 2526));
    let ev = events(&log);
    assert_eq!(
        ev[0].2,
        format!(
            "relay config changed from {} to {}; relays reload it without restarting",
            &old.hash[..12],
            &new.hash[..12]
        )
    );
    assert_eq!(
        (ev[1].0.as_str(), ev[1].1.as_str()),
        ("Normal", "RelayAvailable")
    );
    assert_eq!(
        world.routes[0].status.as_ref().unwrap().observed_generation,
        Some(2)
    );
    // Asked once per content: the pod still lags, but it was already told.
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert!(
        !writes(&log).iter().any(|w| w.contains("/pods/")),
        "{:?}",
        writes(&log)
    );
    assert_eq!(
        world.children["/api/v1/namespaces/acme/pods/acme-relay-0"]["metadata"]["annotations"]["smtprelay.dev/wants-content-hash"],
        wanted.as_str()
    );
}

#[tokio::test]
async fn a_field_the_operator_stops_setting_is_removed_from_the_child() {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.resources =
        Some(serde_json::from_value(json!({"limits": {"memory": "256Mi"}})).unwrap());
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    let resources = |w: &World| {
        w.child::<StatefulSet>("acme", "acme-relay").unwrap()["spec"]["template"]["spec"]
            ["containers"][0]["securityContext"]["runAsUser"]
            .clone()
    };
    assert_eq!(resources(&world), json!(65532));
    // A field the operator stops setting: here the security context, taken out of the
    // applied object by hand as a newer operator version would.
    let path = "/apis/apps/v1/namespaces/acme/statefulsets/acme-relay";
    world.children.get_mut(path).unwrap()["metadata"]["annotations"]["smtprelay.dev/applied-hash"] =
        json!("an older apply");
    world.organizations[0].spec.relay.resources = None;
    world.organizations[0].metadata.generation = Some(2);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        writes(&log)
            .contains(&"PATCH /apis/apps/v1/namespaces/acme/statefulsets/acme-relay".to_string()),
        "{:#?}",
        writes(&log)
    );
    // The limits set before are gone; the default requests take their place.
    let resources = world.child::<StatefulSet>("acme", "acme-relay").unwrap()["spec"]["template"]
        ["spec"]["containers"][0]["resources"]
        .clone();
    assert_eq!(
        resources,
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}})
    );
}

#[tokio::test]
async fn a_child_changed_by_someone_else_is_put_back() {
    let mut world = settled("quickstart").await;
    let path = "/apis/apps/v1/namespaces/acme/statefulsets/acme-relay";
    world.children.get_mut(path).unwrap()["spec"]["replicas"] = json!(5);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    // The StatefulSet, and the Organization's status: a new generation is rolling out.
    assert_eq!(
        writes(&log),
        [
            format!("PATCH {path}"),
            format!("PATCH {API}/organizations/acme/status")
        ]
    );
    assert_eq!(world.children[path]["spec"]["replicas"], 1);
    assert_eq!(
        condition(&org_status(&world), "Progressing")["reason"],
        "RolloutPending"
    );
}

// --- Names the API server accepts -------------------------------------------------------

#[tokio::test]
async fn organizations_named_with_a_leading_digit_or_at_length_63_get_valid_children() {
    for name in ["1acme".to_string(), format!("acme-{}", "x".repeat(58))] {
        let mut world = World::example("quickstart");
        world.organizations[0].metadata.name = Some(name.clone());
        let (result, log) = world.reconcile(ProbingDisabled).await;
        assert_eq!(refused(&log), Vec::<String>::new(), "{name}");
        result.unwrap();
        let services: Vec<&String> = world
            .children
            .keys()
            .filter(|k| k.contains("/services/"))
            .collect();
        assert_eq!(services.len(), 2, "{name}: {services:?}");
    }
}

#[tokio::test]
async fn a_ca_secret_with_a_dot_in_its_name_is_mounted() {
    let mut world = World::example("tls-relaxed-route");
    world.routes[0].spec.tls.trusted_ca_secret_ref = Some(crds::SecretRef {
        name: "partner.example-ca".into(),
    });
    let mut ca = k8s_openapi::api::core::v1::Secret::default();
    ca.metadata.name = Some("partner.example-ca".into());
    ca.metadata.namespace = Some("acme".into());
    ca.data = Some(
        [(
            "ca.crt".to_string(),
            k8s_openapi::ByteString(b"root".to_vec()),
        )]
        .into(),
    );
    world.secrets.push(ca);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(refused(&log), Vec::<String>::new());
    result.unwrap();
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let mounts =
        stateful_set["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].to_string();
    assert!(
        mounts.contains("/etc/smtprelay/ca/partner.example-ca"),
        "{mounts}"
    );
}

// --- Events within limits, after status -------------------------------------------------

#[tokio::test]
async fn a_long_probe_message_is_one_event_within_limits_and_the_probe_is_not_repeated() {
    let mut world = World::example("tls-relaxed-route");
    let long = format!("invalid peer certificate: {}", "é".repeat(1500));
    let prober = Arc::new(FakeProber {
        answers: vec![("10.20.0.15:25".into(), Err(long))],
        ..Default::default()
    });
    let (result, log) = world.reconcile(prober.clone()).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    let status = world.routes[0].status.clone().unwrap();
    let tls = super::status::condition(&status.conditions, "TlsConnectionVerified").unwrap();
    assert_eq!(tls.status, "False");
    let warning = events(&log)
        .into_iter()
        .find(|e| e.1 == "CertificateValidationFailed")
        .unwrap();
    assert!(
        warning.2.len() <= 1024 && warning.2.ends_with('…'),
        "{}",
        warning.2.len()
    );
    assert!(
        warning
            .2
            .starts_with("10.20.0.15:25: invalid peer certificate: éé")
    );

    let (result, again) = world.reconcile(prober.clone()).await;
    result.unwrap();
    assert_eq!(prober.probed.lock().unwrap().len(), 1, "probed again");
    assert!(
        !lines(&again)
            .iter()
            .any(|l| l.contains("mailroutes/archive/status"))
    );
}

#[tokio::test]
async fn a_refused_event_neither_fails_the_reconcile_nor_loses_the_status() {
    let mut world = World::example("quickstart");
    world.refusals.push(Refusal {
        method: "POST",
        path_suffix: "/events".into(),
        code: 403,
        reason: "Forbidden",
        message: "events is forbidden".into(),
    });
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(lines(&log).contains(&format!("PATCH {API}/mailroutes/default/status")));
    assert!(world.organizations[0].status.is_some());
}

#[tokio::test]
async fn an_unchanged_expired_certificate_is_not_a_new_event_at_every_probe() {
    let expired = |now: u64| {
        Arc::new(FakeProber {
            answers: vec![(
                "10.20.0.15:25".into(),
                Err(format!(
                    "invalid peer certificate: certificate expired: verification time {now} (UNIX), but certificate is not valid after 1699990000 ({} seconds ago)",
                    now - 1_699_990_000
                )),
            )],
            ..Default::default()
        })
    };
    let mut world = World::example("tls-relaxed-route");
    let (_, first) = world.reconcile(expired(1_700_000_000)).await;
    assert_eq!(
        events(&first)
            .iter()
            .filter(|e| e.1 == "CertificateValidationFailed")
            .count(),
        1
    );
    // Due again (a new generation), probed again ten minutes later: same verdict.
    world.routes[0].metadata.generation = Some(2);
    let prober = expired(1_700_000_600);
    let (result, second) = world.reconcile(prober.clone()).await;
    result.unwrap();
    assert_eq!(prober.probed.lock().unwrap().len(), 1);
    assert_eq!(events(&second), vec![], "{:#?}", lines(&second));
}

#[tokio::test]
async fn a_connection_failure_reports_no_more_than_the_tls_verdict() {
    let mut world = World::example("tls-relaxed-route");
    let prober = Arc::new(FakeProber {
        answers: vec![(
            "10.20.0.15:25".into(),
            Err("connect to 10.20.0.15:25: Connection refused (os error 111)".into()),
        )],
        ..Default::default()
    });
    world.reconcile(prober).await.0.unwrap();
    let status = serde_json::to_value(world.routes[0].status.clone()).unwrap();
    assert_eq!(
        condition(&status, "TlsConnectionVerified")["message"],
        "10.20.0.15:25: no TLS verdict: the host could not be reached or did not answer"
    );
    assert!(!status.to_string().contains("refused"), "{status}");
}

// --- Status that clears -----------------------------------------------------------------

#[tokio::test]
async fn a_status_field_that_becomes_empty_is_removed_and_then_left_alone() {
    let mut world = settled("quickstart").await;
    assert_eq!(
        world.settings[0].status.as_ref().unwrap().matched_ranges,
        Some(2)
    );
    let setting = &mut world.settings[0];
    setting.spec.authentication.ip_allow_ranges.enabled = false;
    setting.spec.authentication.require_smtp_auth = true;
    setting.spec.encryption.require_tls = true;
    setting.metadata.generation = Some(2);
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(
        world.settings[0].status.as_ref().unwrap().matched_ranges,
        None
    );

    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(writes(&log), Vec::<String>::new());
}

// --- Ready tells the truth during rollouts ----------------------------------------------

#[tokio::test]
async fn a_rollout_the_stateful_set_controller_has_not_seen_is_not_complete() {
    let mut world = settled("applications-smtp-auth").await;
    assert_eq!(
        condition(&org_status(&world), "Progressing")["status"],
        "False"
    );
    // New resources change the pod template: a new StatefulSet generation whose status
    // still describes the old one.
    world.organizations[0].spec.relay.resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "1"}})).unwrap());
    world.organizations[0].metadata.generation = Some(2);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(15)));
    let status = org_status(&world);
    let progressing = condition(&status, "Progressing");
    assert_eq!(
        (&progressing["status"], &progressing["reason"]),
        (&json!("True"), &json!("RolloutPending"))
    );
    // The old pods still serve: Ready stays, and no Warning.
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(events(&log), vec![]);

    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(
        condition(&org_status(&world), "Progressing")["status"],
        "False"
    );
}

#[tokio::test]
async fn a_rotated_secret_restarts_no_pod_and_is_in_force_once_pods_load_it() {
    let mut world = settled("applications-smtp-auth").await;
    let credentials = world
        .secrets
        .iter()
        .position(|s| s.name_any() == "smtp-credentials")
        .unwrap();
    world.secrets[credentials].data.as_mut().unwrap().insert(
        "credentials".into(),
        k8s_openapi::ByteString(b"a:$argon2id$new".to_vec()),
    );
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    // Only the ConfigMap's annotation (the audit trail) and the Organization's status
    // change: the pod template, and so the pods, stay; the relays reload the file the
    // kubelet refreshes.
    assert_eq!(
        writes(&log),
        [
            "PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config".to_string(),
            "PATCH /api/v1/namespaces/acme/pods/acme-relay-0".to_string(),
            format!("PATCH {API}/organizations/acme/status"),
            EVENTS.into()
        ]
    );
    let ev = events(&log);
    assert_eq!(ev[0].1, "SecretsChanged");
    assert!(
        ev[0]
            .2
            .starts_with("mounted Secrets [smtp-credentials] changed"),
        "{ev:?}"
    );
    assert!(ev[0].2.contains("without restarting"));
    // The pods still report the old files: the rotation is not in force yet.
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(
        (&in_force["status"], &in_force["reason"]),
        (&json!("False"), &json!("Rollout"))
    );
    assert!(
        in_force["message"]
            .as_str()
            .unwrap()
            .ends_with("acme-relay-0 has not yet loaded the current Secret files")
    );
    // The kubelet writes the new file and the relay reloads it.
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(condition(&org_status(&world), "InForce")["status"], "True");
}

/// A relay's answer that names its document hash only (as relays before content hashes).
pub(super) fn running(hash: &str) -> Result<super::pod_reports::Running, String> {
    Ok(super::pod_reports::Running {
        hash: hash.into(),
        content_hash: None,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_config_is_in_force_only_once_every_ready_pod_reports_it() {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.replicas = Some(2);
    world.organizations[0].spec.relay.limit_store = Some(crds::LimitStoreSpec {
        kind: crds::LimitStoreKind::Redis,
        url: Some("redis://redis:6379/0".into()),
        password_secret_ref: None,
    });
    world.stateful_set_status =
        json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(in_force["status"], "True", "{in_force}");
    let old_hash = org_status(&world)["configHash"]
        .as_str()
        .unwrap()
        .to_string();

    // A new config: the ConfigMap is applied at once, but pod 1's kubelet has not yet
    // refreshed its volume, so that relay still runs the old config.
    world.organizations[0].spec.licenses = 20;
    world.organizations[0].metadata.generation = Some(2);
    world
        .pod_answers
        .insert("10.0.0.1".into(), running("not yet"));
    let (result, _) = world.reconcile(ProbingDisabled).await;
    let new_hash = org_status(&world)["configHash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old_hash, new_hash);
    world
        .pod_answers
        .insert("10.0.0.1".into(), running(&new_hash));
    world
        .pod_answers
        .insert("10.0.0.2".into(), running(&old_hash));
    let (again, _) = world.reconcile(ProbingDisabled).await;
    // Not settled: come back soon.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(15)));
    assert_eq!(again.unwrap(), Action::requeue(Duration::from_secs(15)));
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(
        (&in_force["status"], &in_force["reason"]),
        (&json!("False"), &json!("Rollout"))
    );
    assert!(
        in_force["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("acme-relay-1 runs {}", &old_hash[..12])),
        "{in_force}"
    );
    // A ready pod that does not answer is not counted as running the new config.
    world.pod_answers.remove("10.0.0.2");
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(
        condition(&org_status(&world), "InForce")["reason"],
        "Pending"
    );

    // The kubelet catches up: every ready pod reports the new hash, and the audit log
    // says so.
    world.settle();
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(
        events(&log)
            .into_iter()
            .map(|e| (e.0, e.1))
            .collect::<Vec<_>>(),
        [("Normal".to_string(), "ConfigInForce".to_string())]
    );
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(
        (&in_force["status"], &in_force["reason"]),
        (&json!("True"), &json!("AllPodsReport"))
    );
}

#[tokio::test]
async fn the_deployment_of_an_earlier_version_goes_only_once_the_stateful_set_is_ready() {
    let mut world = World::example("quickstart");
    let old = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "acme-relay", "namespace": "acme", "generation": 3,
            "labels": {"app.kubernetes.io/managed-by": "smtprelay-operator"},
            "ownerReferences": [{"apiVersion": "smtprelay.dev/v1alpha1", "kind": "Organization",
                "name": "acme", "uid": "uid-acme", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "smtprelay"}},
            "template": {"spec": {"containers": [{"name": "relay"}],
                "volumes": [{"name": "spool", "persistentVolumeClaim": {"claimName": "acme-relay-spool"}}]}}},
    });
    let deployment = "/apis/apps/v1/namespaces/acme/deployments/acme-relay";
    let claim = "/api/v1/namespaces/acme/persistentvolumeclaims/acme-relay-spool";
    world.children.insert(deployment.into(), old);
    world.children.insert(
        claim.into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "acme-relay-spool", "namespace": "acme"}}),
    );

    // The StatefulSet starts next to the Deployment, which keeps serving.
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(!lines(&log).iter().any(|l| l.starts_with("DELETE")));
    assert!(world.children.contains_key(deployment));

    // Its pods are ready: the Deployment goes, with a Warning naming the kept claim.
    world.settle();
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    assert!(lines(&log).contains(&format!("DELETE {deployment}")));
    assert!(!world.children.contains_key(deployment));
    assert!(
        world.children.contains_key(claim),
        "the old claim may hold mail"
    );
    let replaced = events(&log)
        .into_iter()
        .find(|e| e.1 == "DeploymentReplaced")
        .unwrap();
    assert_eq!(replaced.0, "Warning");
    assert!(
        replaced.2.contains("acme-relay-spool is kept"),
        "{replaced:?}"
    );

    // A Deployment of that name that the Organization does not control is left alone.
    let mut world = World::example("quickstart");
    world.children.insert(
        deployment.into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "acme-relay", "namespace": "acme",
                "labels": {"app.kubernetes.io/managed-by": "smtprelay-operator"}},
            "spec": {"selector": {}, "template": {}}}),
    );
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert!(!lines(&log).iter().any(|l| l.starts_with("DELETE")));
}

#[tokio::test]
async fn the_shipped_role_deletes_only_replaced_deployments_drained_claims_and_their_jobs() {
    let rules = super::fixtures::shipped_rules();
    let mut deletable: Vec<String> = rules
        .iter()
        .filter(|r| r.verbs.iter().any(|v| v == "delete" || v == "*"))
        .flat_map(|r| r.resources.clone())
        .collect();
    deletable.sort();
    assert_eq!(deletable, ["deployments", "jobs", "persistentvolumeclaims"]);
}

#[tokio::test]
async fn more_replicas_available_than_desired_is_ready() {
    let mut world = World::example("quickstart");
    world.stateful_set_status =
        json!({"replicas": 2, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(condition(&org_status(&world), "Ready")["status"], "True");
}

#[tokio::test]
async fn a_spool_change_after_creation_keeps_the_spool_and_says_why() {
    let mut world = settled("quickstart").await;
    world.organizations[0].spec.relay.spool = Some(crds::SpoolSpec {
        size: Some("10Gi".into()),
        storage_class_name: Some("fast".into()),
        ephemeral: false,
    });
    world.organizations[0].spec.licenses = 20;
    world.organizations[0].metadata.generation = Some(2);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    // Nothing the API server would refuse is sent; the rest of the change goes out.
    assert_eq!(refused(&log), Vec::<String>::new());
    assert!(
        writes(&log)
            .contains(&"PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config".to_string())
    );
    let claim = &world.child::<StatefulSet>("acme", "acme-relay").unwrap()["spec"]["volumeClaimTemplates"]
        [0]["spec"];
    assert_eq!(claim["resources"]["requests"]["storage"], "1Gi");
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "SpoolUnchangeable");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("asks for a 10Gi claim of class fast per pod but the relay's StatefulSet was created with a 1Gi claim per pod"),
        "{degraded}"
    );
}

#[tokio::test]
async fn an_ephemeral_spool_is_a_warning_with_an_event() {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.spool = Some(crds::SpoolSpec {
        ephemeral: true,
        ..Default::default()
    });
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    let warning = condition(&org_status(&world), "SpoolEphemeral").clone();
    assert_eq!(warning["status"], "True");
    assert!(
        events(&log)
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "EmptyDirSpool")
    );
    let set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    assert!(set["spec"]["volumeClaimTemplates"].is_null());
}

#[tokio::test]
async fn a_rollout_step_is_neither_a_new_ready_message_nor_an_event() {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.replicas = Some(3);
    world.stateful_set_status =
        json!({"replicas": 3, "updatedReplicas": 3, "readyReplicas": 1, "availableReplicas": 1});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let before = condition(&org_status(&world), "Ready").clone();
    assert_eq!(before["status"], "False");
    world.stateful_set_status =
        json!({"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2});
    world.settle();
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(events(&log), vec![]);
    assert_eq!(condition(&org_status(&world), "Ready"), &before);
    assert_eq!(
        world.organizations[0]
            .status
            .as_ref()
            .unwrap()
            .ready_replicas,
        Some(2)
    );
}

#[tokio::test]
async fn a_refused_child_is_a_condition_with_the_servers_message_and_the_rest_is_applied() {
    let mut world = settled("quickstart").await;
    // An admission webhook refuses the PodDisruptionBudget; the ConfigMap change still
    // goes out.
    world.refusals.push(Refusal {
        method: "PATCH",
        path_suffix: "/poddisruptionbudgets/acme-relay".into(),
        code: 403,
        reason: "Forbidden",
        message: "admission webhook \"pdb.example\" denied the request: no PDBs here".into(),
    });
    world
        .children
        .remove("/apis/policy/v1/namespaces/acme/poddisruptionbudgets/acme-relay");
    world.organizations[0].spec.licenses = 20;
    world.organizations[0].metadata.generation = Some(2);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "apply");
    assert!(
        error
            .to_string()
            .starts_with("applying PodDisruptionBudget acme/acme-relay")
    );
    assert!(
        lines(&log)
            .contains(&"PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config".to_string())
    );
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert_eq!(
        degraded["message"],
        "ApplyFailed: the API server refused PodDisruptionBudget acme-relay: admission webhook \"pdb.example\" denied the request: no PDBs here"
    );
    assert!(
        events(&log)
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "ApplyFailed")
    );
}

#[tokio::test]
async fn an_unreadable_secret_fails_the_reconcile_with_context_and_changes_nothing() {
    let mut world = settled("applications-smtp-auth").await;
    world.refusals.push(Refusal {
        method: "GET",
        path_suffix: "/secrets/smtp-credentials".into(),
        code: 500,
        reason: "InternalError",
        message: "etcdserver: request timed out".into(),
    });
    let (result, log) = world.reconcile(ProbingDisabled).await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "get");
    assert!(
        error
            .to_string()
            .starts_with("reading Secret acme/smtp-credentials: "),
        "{error}"
    );
    assert_eq!(writes(&log), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_status_write_fails_the_reconcile_naming_the_object() {
    let mut world = World::example("quickstart");
    world.refusals.push(Refusal {
        method: "PATCH",
        path_suffix: "/mailroutes/default/status".into(),
        code: 409,
        reason: "Conflict",
        message: "the object has been modified".into(),
    });
    let (result, _) = world.reconcile(ProbingDisabled).await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "status");
    assert!(
        error
            .to_string()
            .starts_with("writing the status of MailRoute acme/default: "),
        "{error}"
    );
    // What was written before stays written.
    assert!(world.organizations[0].status.is_some());
}

#[tokio::test]
async fn nothing_is_applied_before_the_caches_hold_the_initial_lists() {
    let world = World::example("quickstart");
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    // Fresh stores, as at start-up: no watch has listed yet.
    let ctx = Arc::new(super::Context::new(
        kube::Client::new(service, "default"),
        world.operator.clone(),
        ProbingDisabled,
        Arc::new(super::metrics::Metrics::default()),
        None,
    ));
    // The mock never answers: a request would make the reconcile wait until the timeout.
    let action = tokio::time::timeout(
        Duration::from_secs(10),
        super::reconcile(Arc::new(world.org()), ctx),
    )
    .await
    .expect("the reconcile called the API server")
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    drop(handle);
}

#[test]
fn failed_reconciles_back_off_exponentially_with_jitter_up_to_a_cap() {
    use super::backoff;
    let (base, cap) = (Duration::from_secs(5), Duration::from_secs(300));
    // Without jitter (unit 0) the lower bound doubles: 2.5 s, 5 s, 10 s, ...
    let low: Vec<u64> = (1..=9)
        .map(|n| backoff(n, base, cap, 0.0).as_millis() as u64)
        .collect();
    assert_eq!(
        low,
        [
            2500, 5000, 10000, 20000, 40000, 80000, 150000, 150000, 150000
        ]
    );
    assert_eq!(backoff(3, base, cap, 0.999_999).as_secs(), 19);
    assert_eq!(backoff(u32::MAX, base, cap, 1.0), cap);
}

#[tokio::test]
async fn error_policy_waits_longer_after_each_failure_and_forgets_after_a_success() {
    let world = World::example("quickstart");
    let settings = super::Settings {
        error_backoff: Duration::from_secs(4),
        ..world.operator.clone()
    };
    let (service, _handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let mut ctx = super::Context::with_stores(
        kube::Client::new(service, "default"),
        settings,
        ProbingDisabled,
        Arc::new(super::metrics::Metrics::default()),
        None,
        super::Stores::new().0,
    );
    ctx.jitter = Arc::new(|| 0.5);
    let ctx = Arc::new(ctx);
    let org = Arc::new(world.org());
    let error = super::Error::NoNamespace("acme".into());
    let fail = || super::error_policy(org.clone(), &error, ctx.clone());
    // 4 s, 8 s, 16 s, each at three quarters (half fixed, half jittered).
    let waits = [fail(), fail(), fail()];
    assert_eq!(
        waits,
        [3000, 6000, 12000].map(|ms| Action::requeue(Duration::from_millis(ms)))
    );
    // A successful reconcile (here of a deleted Organization: no request) starts over.
    let mut deleted = world.org();
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
    super::reconcile(Arc::new(deleted), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        super::error_policy(org.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_millis(3000))
    );
}

// --- RBAC, NetworkPolicy and tenant boundaries --------------------------------------------

#[tokio::test]
async fn without_the_finalizers_rule_no_child_can_be_created() {
    let mut world = World::example("quickstart");
    world
        .rules
        .as_mut()
        .unwrap()
        .retain(|r| !r.resources.iter().any(|x| x == "organizations/finalizers"));
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert!(result.is_err());
    assert!(refused(&log).iter().all(|l| l.ends_with("-> 403")));
    // Every child, and the admin token Secret (owned by the Organization too).
    assert_eq!(
        refused(&log).len(),
        CHILD_APPLIES.len() + 1,
        "{:#?}",
        refused(&log)
    );
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("blockOwnerDeletion")
    );
}

#[tokio::test]
async fn secrets_are_read_one_by_one_and_never_listed() {
    let rules = super::fixtures::shipped_rules();
    let secrets: Vec<_> = rules
        .iter()
        .filter(|r| r.resources.iter().any(|x| x == "secrets"))
        .collect();
    assert_eq!(secrets.len(), 1);
    // create: only for the admin token Secret the operator makes (below); it never
    // changes a Secret.
    assert_eq!(secrets[0].verbs, ["get", "create"]);
    assert!(secrets[0].resource_names.is_empty());
    let mut world = World::example("applications-smtp-auth");
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    let secret_reads: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| l.contains("/secrets"))
        .collect();
    assert_eq!(
        secret_reads,
        [
            "GET /api/v1/namespaces/acme/secrets/relay-tls",
            "GET /api/v1/namespaces/acme/secrets/smtp-credentials",
            "GET /api/v1/namespaces/acme/secrets/acme-relay-admin",
            "POST /api/v1/namespaces/acme/secrets",
        ]
    );
}

#[tokio::test]
async fn the_admin_token_secret_is_made_once_never_overwritten_and_mounted() {
    // Missing: made with a random token, owned by the Organization, mounted in the pods.
    let mut world = World::example("quickstart");
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let made = world
        .secrets
        .iter()
        .find(|s| s.name_any() == "acme-relay-admin")
        .cloned()
        .expect("no admin token Secret");
    let token = crate::secrets::secret_value(&made, "token").unwrap();
    assert_eq!(token.len(), 64, "256 bits as hex");
    assert_eq!(
        made.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Organization"
    );
    let sts = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let admin = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "admin")
        .expect("admin token not mounted");
    assert_eq!(admin["secret"]["secretName"], "acme-relay-admin");
    assert_eq!(admin["secret"]["optional"], true);
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "admin")
        .unwrap();
    assert_eq!(mount["mountPath"], "/etc/smtprelay/admin");
    assert_eq!(
        rendered(&world).admin_token_file.as_deref(),
        Some("/etc/smtprelay/admin/token")
    );

    // Present (an operator set their own token): read, never written.
    let mut world = World::example("quickstart");
    let mut own = made.clone();
    own.data = None;
    own.string_data = Some([("token".to_string(), "my-own-token".to_string())].into());
    world.secrets.push(own);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        !writes(&log).iter().any(|w| w.contains("/secrets/")),
        "{:?}",
        writes(&log)
    );
    let kept = world
        .secrets
        .iter()
        .find(|s| s.name_any() == "acme-relay-admin")
        .unwrap();
    assert_eq!(
        crate::secrets::secret_value(kept, "token").unwrap(),
        b"my-own-token"
    );
}

#[tokio::test]
async fn the_network_policy_opens_smtp_as_the_organization_says_and_admin_to_operators() {
    let mut world = World::example("quickstart");
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let policy = world
        .child::<NetworkPolicy>("acme", "acme-relay")
        .unwrap()
        .clone();
    let ingress = &policy["spec"]["ingress"];
    assert_eq!(
        ingress[0]["from"],
        Value::Null,
        "SMTP from anywhere by default"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], 2525);
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": 9090, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "smtprelay-system"
    );

    world.organizations[0].spec.relay.allowed_client_cidrs = vec!["10.0.0.0/8".into()];
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let policy = world.child::<NetworkPolicy>("acme", "acme-relay").unwrap();
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        json!([{"ipBlock": {"cidr": "10.0.0.0/8"}}])
    );
}

#[tokio::test]
async fn an_image_outside_the_allow_list_is_not_deployed_but_the_rest_of_the_spec_is() {
    let mut world = settled("quickstart").await;
    world.organizations[0].spec.relay.image = Some("evil.example/miner:latest".into());
    world.organizations[0].spec.relay.replicas = Some(2);
    world.organizations[0].spec.relay.limit_store = Some(crds::LimitStoreSpec {
        kind: crds::LimitStoreKind::Redis,
        url: Some("redis://redis:6379/0".into()),
        password_secret_ref: None,
    });
    world.organizations[0].metadata.generation = Some(2);
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let image = |d: &Value| d["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image(stateful_set), super::children::DEFAULT_RELAY_IMAGE);
    assert_eq!(stateful_set["spec"]["replicas"], 2);
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "ImageNotAllowed");

    world.operator.allowed_images = vec!["evil.example/miner:latest".into()];
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    assert_eq!(image(stateful_set), "evil.example/miner:latest");
    assert_eq!(
        condition(&org_status(&world), "Degraded")["status"],
        "False"
    );
}

#[tokio::test]
async fn a_forbidden_load_balancer_is_not_created() {
    let mut world = World::example("quickstart");
    world.operator.forbid_load_balancer = true;
    world.organizations[0].spec.relay.service_type = Some(crds::ServiceType::LoadBalancer);
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let service = world.child::<Service>("acme", "acme-relay").unwrap();
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        condition(&org_status(&world), "Degraded")["reason"],
        "LoadBalancerForbidden"
    );
}

// --- Several Organizations, deletion, render errors ---------------------------------------

#[tokio::test]
async fn two_organizations_in_one_namespace_are_both_degraded_and_get_no_relay() {
    let mut world = World::example("quickstart");
    let mut second = world.org();
    second.metadata.name = Some("globex".into());
    second.metadata.uid = Some("uid-globex".into());
    world.organizations.push(second.clone());
    let orgs = world.organizations.clone();
    let (results, log) = world.reconcile_all(orgs, ProbingDisabled).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(world.children.is_empty(), "{:?}", world.children.keys());
    for org in &world.organizations {
        let status = serde_json::to_value(&org.status).unwrap();
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["reason"], "RenderFailed", "{}", org.name_any());
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .contains("acme, globex"),
            "{degraded}"
        );
    }
    assert_eq!(events(&log).len(), 2);
}

#[tokio::test]
async fn render_error_degrades_the_organization_and_leaves_children_alone() {
    let mut world = settled("quickstart").await;
    let mut second = world.routes[0].clone();
    second.metadata.name = Some("another-default".into());
    world.routes.push(second);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(
        writes(&log),
        [
            format!("PATCH {API}/organizations/acme/status"),
            EVENTS.into()
        ]
    );
    let status = org_status(&world);
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "RenderFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .starts_with("MailRoute another-default and MailRoute default are both default routes")
    );
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "the old config keeps serving"
    );
    assert_eq!(
        (events(&log)[0].0.as_str(), events(&log)[0].1.as_str()),
        ("Warning", "RenderFailed")
    );
}

#[tokio::test]
async fn an_organization_deleted_before_it_had_the_finalizer_is_left_to_the_garbage_collector() {
    let mut world = World::example("quickstart");
    let mut org = world.org();
    org.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
    let (result, log) = world.reconcile_object(org, ProbingDisabled).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(lines(&log), Vec::<String>::new());
}

#[tokio::test]
async fn dkim_secrets_are_read_and_mounted_and_missing_or_unusable_keys_degrade_with_a_warning_event()
 {
    use k8s_openapi::api::core::v1::Secret;
    let mut world = World::example("quickstart");
    world.organizations[0].spec.dkim = yaml_serde::from_str(
        "[{domain: acme.example, selector: s1, secretRef: {name: dkim-acme}},
          {domain: eu.acme.example, selector: s2, secretRef: {name: dkim-eu}}]",
    )
    .unwrap();
    world.secrets.push(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("dkim-acme".into()),
            namespace: Some("acme".into()),
            ..Default::default()
        },
        string_data: Some(
            [(
                "private.key".to_string(),
                "-----BEGIN PRIVATE KEY-----".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    });
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let lines = lines(&log);
    for name in ["dkim-acme", "dkim-eu"] {
        let get = format!("GET /api/v1/namespaces/acme/secrets/{name}");
        assert!(lines.iter().any(|l| l.starts_with(&get)), "{lines:#?}");
    }
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "DkimKeySecretMissing");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("dkim for eu.acme.example names Secret dkim-eu which does not exist"),
        "{degraded}"
    );
    // dkim-acme exists but its key is not a key.
    assert!(
        message.contains("DkimKeyUnreadable: dkim for acme.example: Secret dkim-acme key private.key is not a usable rsa-sha256 private key"),
        "{degraded}"
    );
    let warning = events(&log)
        .into_iter()
        .find(|e| e.0 == "Warning" && e.1 == "DkimKeySecretMissing")
        .unwrap();
    assert!(warning.2.contains("DkimKeyUnreadable"), "{warning:?}");
    assert!(!warning.2.contains("BEGIN"), "never the key");
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let pod = &stateful_set["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "dkim-acme")
        .unwrap_or_else(|| panic!("{pod}"));
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "private.key", "path": "private.key"}])
    );
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    assert_eq!(mount["mountPath"], "/etc/smtprelay/dkim/dkim-acme");
    assert!(
        !pod["volumes"].to_string().contains("dkim-eu"),
        "a missing Secret is not mounted (pods would not start)"
    );
}

#[tokio::test]
async fn missing_tls_secret_degrades_the_organization_with_a_warning_event() {
    let mut world = World::example("applications-smtp-auth");
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "TlsSecretMissing");
    assert_eq!(
        degraded["message"],
        "TlsSecretMissing: relay.tlsSecretRef names Secret relay-tls which does not exist: STARTTLS is not offered and settings that require TLS refuse mail"
    );
    let warning = events(&log)
        .into_iter()
        .find(|e| e.1 == "TlsSecretMissing")
        .unwrap();
    assert_eq!(
        (warning.0.as_str(), warning.3.as_str()),
        ("Warning", "Organization/acme")
    );
    let setting = serde_json::to_value(&world.settings[0].status).unwrap();
    let accepted = condition(&setting, "Accepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("False"), &json!("NoRelayCertificate"))
    );
    let stateful_set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    let volumes: Vec<&str> = stateful_set["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["config", "auth", "admin"]);
}

#[tokio::test]
async fn private_ca_of_a_route_is_used_when_probing() {
    let mut world = World::example("tls-relaxed-route");
    world.routes[0].spec.tls.trusted_ca_secret_ref = Some(crds::SecretRef {
        name: "archive-ca".into(),
    });
    let mut ca = k8s_openapi::api::core::v1::Secret::default();
    ca.metadata.name = Some("archive-ca".into());
    ca.metadata.namespace = Some("acme".into());
    ca.data = Some(
        [(
            "ca.crt".to_string(),
            k8s_openapi::ByteString(b"-----BEGIN CERTIFICATE-----\nprivate root\n".to_vec()),
        )]
        .into(),
    );
    world.secrets.push(ca);
    let prober = Arc::new(FakeProber {
        answers: vec![("10.20.0.15:25".into(), Ok(()))],
        ..Default::default()
    });
    world.reconcile(prober.clone()).await.0.unwrap();
    assert_eq!(
        *prober.ca_seen.lock().unwrap(),
        ["-----BEGIN CERTIFICATE-----\nprivate root\n"]
    );
    let status = serde_json::to_value(world.routes[0].status.clone()).unwrap();
    let tls = condition(&status, "TlsConnectionVerified");
    assert_eq!(tls["message"], "TLS verified for 10.20.0.15:25");
}

#[test]
fn a_change_in_a_namespace_reconciles_the_organization_of_that_namespace_only() {
    use kube::runtime::reflector::{ObjectRef, store};
    use kube::runtime::watcher;
    let (reader, mut writer) = store::<crds::Organization>();
    let acme = World::example("quickstart").org();
    let mut other = acme.clone();
    other.metadata.namespace = Some("globex".into());
    other.metadata.name = Some("globex".into());
    writer.apply_watcher_event(&watcher::Event::Apply(acme.clone()));
    writer.apply_watcher_event(&watcher::Event::Apply(other));
    assert_eq!(
        super::organizations_in(&reader, Some("acme".into())),
        [ObjectRef::from_obj(&acme)]
    );
    assert_eq!(super::organizations_in(&reader, Some("initech".into())), []);
}

#[test]
fn status_writes_do_not_trigger_a_reconcile_but_spec_and_label_changes_do() {
    let org = World::example("quickstart").org();
    let base = super::input_changed(&org);
    let mut status_only = org.clone();
    status_only.status = Some(Default::default());
    status_only.metadata.resource_version = Some("99".into());
    assert_eq!(super::input_changed(&status_only), base);
    let mut spec = org.clone();
    spec.metadata.generation = Some(2);
    assert_ne!(super::input_changed(&spec), base);
    let mut labels = org;
    labels.metadata.labels = Some([("smtprelay.dev/allow".to_string(), "x".to_string())].into());
    assert_ne!(super::input_changed(&labels), base);
}

/// Starts the real controller against a mock API server that answers every list with
/// nothing and leaves watches open, and checks what it watches (and so what RBAC needs).
#[tokio::test]
async fn controller_watches_organizations_inputs_and_children_but_no_secrets() {
    use http::{Request, Response};
    use kube::client::Body;
    use std::collections::BTreeMap;

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (seen_all, all_seen) = tokio::sync::oneshot::channel::<BTreeMap<String, String>>();
    let server = tokio::spawn(async move {
        let mut lists: BTreeMap<String, String> = BTreeMap::new();
        let mut open_watches = Vec::new();
        let mut seen_all = Some(seen_all);
        while let Some((request, send)) = handle.next_request().await {
            let query = request.uri().query().unwrap_or_default().to_string();
            if query.contains("watch=true") {
                open_watches.push(send);
                continue;
            }
            lists.insert(
                request.uri().path().to_string(),
                query
                    .split('&')
                    .find(|q| q.starts_with("labelSelector="))
                    .unwrap_or_default()
                    .to_string(),
            );
            let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&list).unwrap()))
                    .unwrap(),
            );
            if lists.len() == 13
                && let Some(tx) = seen_all.take()
            {
                let _ = tx.send(lists.clone());
            }
        }
    });
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(super::Context::new(
        client,
        super::Settings::default(),
        ProbingDisabled,
        Arc::new(super::metrics::Metrics::default()),
        Some("test".into()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(super::run(ctx, async move {
        let _ = stopped.await;
    }));
    let lists = tokio::time::timeout(Duration::from_secs(60), all_seen)
        .await
        .expect("the controller did not list its thirteen kinds")
        .unwrap();
    let _ = stop.send(());
    controller.await.unwrap();
    server.abort();

    let owned = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsmtprelay-operator";
    let expected: BTreeMap<String, String> = [
        ("/apis/smtprelay.dev/v1alpha1/organizations", ""),
        ("/apis/smtprelay.dev/v1alpha1/smtprelaysettings", ""),
        ("/apis/smtprelay.dev/v1alpha1/ipallowranges", ""),
        ("/apis/smtprelay.dev/v1alpha1/mailroutes", ""),
        ("/api/v1/configmaps", owned),
        ("/apis/apps/v1/deployments", owned),
        ("/apis/apps/v1/statefulsets", owned),
        ("/api/v1/services", owned),
        ("/api/v1/pods", owned),
        ("/apis/policy/v1/poddisruptionbudgets", owned),
        ("/apis/networking.k8s.io/v1/networkpolicies", owned),
        ("/api/v1/persistentvolumeclaims", owned),
        ("/apis/batch/v1/jobs", owned),
    ]
    .into_iter()
    .map(|(p, q)| (p.to_string(), q.to_string()))
    .collect();
    assert_eq!(lists, expected);
    // Everything watched is allowed by the shipped ClusterRole.
    let rules = super::fixtures::shipped_rules();
    for path in lists.keys() {
        let resource = path.rsplit('/').next().unwrap();
        for verb in ["list", "watch"] {
            assert!(
                rules
                    .iter()
                    .any(|r| r.resources.iter().any(|x| x == resource)
                        && r.verbs.iter().any(|v| v == verb)),
                "{verb} {resource}"
            );
        }
    }
}

// --- Cost per reconcile --------------------------------------------------------------------

/// `n` copies of the `applications-smtp-auth` example (with its TLS Secret), one per
/// namespace `org-0000`, `org-0001`, ...
fn many(n: usize) -> World {
    let template = World::example("applications-smtp-auth");
    let mut tls = template.secrets[0].clone();
    tls.metadata.name = Some("relay-tls".into());
    tls.data = Some(
        [
            (
                "tls.crt".to_string(),
                k8s_openapi::ByteString(b"cert".to_vec()),
            ),
            (
                "tls.key".to_string(),
                k8s_openapi::ByteString(b"key".to_vec()),
            ),
        ]
        .into(),
    );
    let mut world = World {
        organizations: Vec::new(),
        settings: Vec::new(),
        ranges: Vec::new(),
        routes: Vec::new(),
        secrets: Vec::new(),
        ..template.clone()
    };
    fn moved<K: kube::Resource + Clone>(k: &K, ns: &str) -> K {
        let mut k = k.clone();
        k.meta_mut().namespace = Some(ns.into());
        k.meta_mut().uid = Some(format!(
            "uid-{ns}-{}",
            k.meta().name.clone().unwrap_or_default()
        ));
        k
    }
    for i in 0..n {
        let ns = format!("org-{i:04}");
        world
            .organizations
            .extend(template.organizations.iter().map(|o| moved(o, &ns)));
        world
            .settings
            .extend(template.settings.iter().map(|o| moved(o, &ns)));
        world
            .routes
            .extend(template.routes.iter().map(|o| moved(o, &ns)));
        world
            .secrets
            .extend(template.secrets.iter().map(|o| moved(o, &ns)));
        world.secrets.push(moved(&tls, &ns));
    }
    world
}

/// Requests of one pass over every Organization: `(reads, writes, events)`, where events
/// are counted apart from writes (they are the audit log, not state).
#[derive(Debug, PartialEq, Eq)]
struct Cost {
    reads: usize,
    writes: usize,
    events: usize,
}

async fn pass(world: &mut World) -> (Cost, Vec<Recorded>, Duration) {
    let orgs = world.organizations.clone();
    let started = std::time::Instant::now();
    let (results, log) = world.reconcile_all(orgs, ProbingDisabled).await;
    let took = started.elapsed();
    for r in results {
        r.unwrap();
    }
    assert_eq!(refused(&log), Vec::<String>::new());
    let is_event = |r: &&Recorded| r.path.ends_with("/events");
    let cost = Cost {
        reads: log.iter().filter(|r| r.method == "GET").count(),
        writes: log.iter().filter(|r| r.is_write() && !is_event(r)).count(),
        events: log.iter().filter(is_event).count(),
    };
    (cost, log, took)
}

/// Creates, rolls out, settles and then changes a route of every tenth of `n`
/// Organizations, and returns the cost of each pass.
async fn reconcile_cost(n: usize) -> Vec<(&'static str, Cost, Duration)> {
    let mut world = many(n);
    let mut out = Vec::new();
    let (c, _, t) = pass(&mut world).await;
    out.push(("create", c, t));
    world.settle();
    let (c, _, t) = pass(&mut world).await;
    out.push(("rolled out", c, t));
    let (c, _, t) = pass(&mut world).await;
    out.push(("steady state", c, t));
    for route in world.routes.iter_mut().step_by(10) {
        route.spec.single_host.as_mut().unwrap().port = 2587;
        route.metadata.generation = Some(2);
    }
    let (c, log, t) = pass(&mut world).await;
    // Each changed Organization: its ConfigMap, its status, its route's status ...
    let changed = n.div_ceil(10);
    let per_object: std::collections::BTreeMap<String, usize> = log
        .iter()
        .filter(|r| r.is_write() && !r.path.ends_with("/events"))
        .fold(Default::default(), |mut m, r| {
            *m.entry(r.path.clone()).or_default() += 1;
            m
        });
    assert!(per_object.values().all(|&w| w == 1), "{per_object:?}");
    // ... and the annotation that makes its relay pod's kubelet refresh the files now.
    assert_eq!(c.writes, 4 * changed);
    out.push(("one route changed in every tenth", c, t));
    out
}

#[tokio::test]
async fn at_steady_state_reconciles_write_nothing_and_changes_write_each_object_once() {
    let costs = reconcile_cost(20).await;
    let steady = &costs[2];
    assert_eq!(
        steady.1,
        Cost {
            reads: 40,
            writes: 0,
            events: 0
        }
    );
}

/// The benchmark of `docs/src/benchmarks.md`:
/// `cargo test -p operator --lib reconcile_cost_at_1000 -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "benchmark: run explicitly"]
async fn reconcile_cost_at_1000_organizations() {
    let n = 1000;
    println!("| pass ({n} Organizations) | reconciles | GET | writes | Events | wall time |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, c, t) in reconcile_cost(n).await {
        println!(
            "| {name} | {n} | {} | {} | {} | {:.0} ms |",
            c.reads,
            c.writes,
            c.events,
            t.as_secs_f64() * 1000.0
        );
    }
}

#[tokio::test]
async fn the_cluster_networks_reach_the_relays_delivery_guard() {
    let mut world = World::example("quickstart");
    world.operator.env.delivery.cluster_networks = vec![
        "198.18.0.0/15".parse().unwrap(),
        "2001:db8:10::/48".parse().unwrap(),
    ];
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let cm = world
        .child::<ConfigMap>("acme", "acme-relay-config")
        .unwrap();
    let applied = RelayConfig::from_json(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        applied.delivery.cluster_networks,
        world.operator.env.delivery.cluster_networks
    );
    // Addresses outside the built-in private ranges: refused only because of the flag.
    let unconfigured = relay::delivery::guard::DestinationGuard::new(&Default::default(), "relay");
    let guard = relay::delivery::guard::DestinationGuard::new(&applied.delivery, "relay");
    for ip in ["198.18.0.10", "2001:db8:10::5"] {
        assert!(unconfigured.may_dial(ip.parse().unwrap()), "{ip}");
        assert!(!guard.may_dial(ip.parse().unwrap()), "{ip}");
    }
}

// --- Draining the spools of relay pods that are gone ------------------------------------

pub(super) const JOBS: &str = "/apis/batch/v1/namespaces/acme/jobs";
pub(super) const CLAIMS: &str = "/api/v1/namespaces/acme/persistentvolumeclaims";

/// The quickstart with `replicas` relays (and the Redis limit store more than one needs),
/// rolled out: every pod ready, every claim made.
pub(super) async fn with_replicas(replicas: i32) -> World {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.replicas = Some(replicas);
    world.organizations[0].spec.relay.limit_store = Some(crds::LimitStoreSpec {
        kind: crds::LimitStoreKind::Redis,
        url: Some("redis://redis:6379/0".into()),
        password_secret_ref: None,
    });
    world.stateful_set_status = json!({"replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world
}

pub(super) fn claims(world: &World) -> Vec<String> {
    world
        .children
        .keys()
        .filter_map(|p| p.strip_prefix(&format!("{CLAIMS}/")))
        .map(str::to_string)
        .collect()
}

pub(super) fn jobs(world: &World) -> Vec<String> {
    world
        .children
        .keys()
        .filter_map(|p| p.strip_prefix(&format!("{JOBS}/")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_scale_down_hands_the_queues_of_removed_pods_over_then_deletes_their_claims() {
    let mut world = with_replicas(3).await;
    assert_eq!(
        claims(&world),
        [
            "spool-acme-relay-0",
            "spool-acme-relay-1",
            "spool-acme-relay-2"
        ]
    );
    world.organizations[0].spec.relay.replicas = Some(1);
    world.organizations[0].metadata.generation = Some(2);
    world.stateful_set_status = json!({"replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1});

    // Pods 1 and 2 are still stopping (they mount their claims): nothing to drain yet.
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(jobs(&world), Vec::<String>::new());

    // They are gone: one Job per claim hands its queue over to the relay that remains.
    world.settle();
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    assert_eq!(jobs(&world), ["acme-relay-drain-1", "acme-relay-drain-2"]);
    let job = &world.children[&format!("{JOBS}/acme-relay-drain-1")];
    let pod = &job["spec"]["template"]["spec"];
    let command: Vec<&str> = pod["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"--drain"), "{command:?}");
    let to = command.iter().position(|c| *c == "--drain-to").unwrap();
    assert_eq!(command[to + 1], "http://acme-relay-pods.acme.svc:9090");
    let spool = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "spool")
        .unwrap();
    assert_eq!(
        spool["persistentVolumeClaim"]["claimName"],
        "spool-acme-relay-1"
    );
    assert!(pod["containers"][0]["readinessProbe"].is_null());
    // Not a relay pod: the relay's Service, PDB and StatefulSet do not select it.
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "smtprelay-drain");
    // The relays' NetworkPolicy lets it reach their admin port.
    let policy = world.child::<NetworkPolicy>("acme", "acme-relay").unwrap();
    let admin_from = &policy["spec"]["ingress"][1]["from"];
    assert!(
        admin_from.as_array().unwrap().iter().any(
            |p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "smtprelay-drain"
        ),
        "{admin_from}"
    );
    let started: Vec<_> = events(&log)
        .into_iter()
        .filter(|e| e.1 == "DrainStarted")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0]
            .2
            .contains("spool-acme-relay-1 (Job acme-relay-drain-1)")
            && started[0]
                .2
                .contains("spool-acme-relay-2 (Job acme-relay-drain-2)"),
        "{started:?}"
    );
    let draining = &org_status(&world)["draining"];
    assert_eq!(draining[0]["phase"], "Pending");

    // Running: status says how many messages are left.
    world.run_drains(7);
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let draining = org_status(&world)["draining"].clone();
    assert_eq!(
        draining,
        json!([
            {"claim": "spool-acme-relay-1", "job": "acme-relay-drain-1", "phase": "Running", "messages": 7},
            {"claim": "spool-acme-relay-2", "job": "acme-relay-drain-2", "phase": "Running", "messages": 7},
        ])
    );

    // The spools are empty: the claims go, then the Jobs.
    world.finish_drains(true);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(lines(&log).contains(&format!("DELETE {CLAIMS}/spool-acme-relay-1")));
    assert!(lines(&log).contains(&format!("DELETE {CLAIMS}/spool-acme-relay-2")));
    assert_eq!(claims(&world), ["spool-acme-relay-0"]);
    assert!(org_status(&world)["draining"].is_null());
    let drained: Vec<_> = events(&log)
        .into_iter()
        .filter(|e| e.1 == "SpoolDrained")
        .collect();
    assert_eq!(drained.len(), 1);
    assert!(
        drained[0]
            .2
            .ends_with("spool-acme-relay-1, spool-acme-relay-2"),
        "{drained:?}"
    );
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(jobs(&world), Vec::<String>::new());
    // Settled: nothing more to do.
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(writes(&log), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_drain_keeps_the_claim_and_says_so_until_its_job_is_deleted() {
    let mut world = with_replicas(2).await;
    world.organizations[0].spec.relay.replicas = Some(1);
    world.organizations[0].metadata.generation = Some(2);
    world.stateful_set_status = json!({"replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.finish_drains(false);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        !lines(&log).iter().any(|l| l.starts_with("DELETE")),
        "{log:?}"
    );
    assert_eq!(claims(&world), ["spool-acme-relay-0", "spool-acme-relay-1"]);
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "DrainFailed");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("acme-relay-drain-1") && message.contains("spool-acme-relay-1"),
        "{message}"
    );
    assert_eq!(org_status(&world)["draining"][0]["phase"], "Failed");

    // Deleting the Job tries again.
    world.children.remove(&format!("{JOBS}/acme-relay-drain-1"));
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(jobs(&world), ["acme-relay-drain-1"]);
    assert_eq!(org_status(&world)["draining"][0]["phase"], "Pending");
}

#[tokio::test]
async fn scaling_up_again_takes_a_claim_back_from_its_finished_drain() {
    let mut world = with_replicas(2).await;
    world.organizations[0].spec.relay.replicas = Some(1);
    world.stateful_set_status = json!({"replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(jobs(&world), ["acme-relay-drain-1"]);
    // Scaled back to two before the claim went: the claim is the pod's again.
    world.organizations[0].spec.relay.replicas = Some(2);
    world.finish_drains(true);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        !lines(&log)
            .iter()
            .any(|l| l.starts_with(&format!("DELETE {CLAIMS}"))),
        "a claim a pod wants back is never deleted"
    );
    assert!(lines(&log).contains(&format!("DELETE {JOBS}/acme-relay-drain-1")));
}

#[tokio::test]
async fn deleting_an_organization_waits_until_its_relay_stopped_and_its_spools_were_delivered() {
    let mut world = with_replicas(2).await;
    let org = world.org();
    assert_eq!(
        org.metadata.finalizers,
        Some(vec!["smtprelay.dev/drain".to_string()])
    );
    world.organizations[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(super::fixtures::NOW).unwrap(),
        ));

    // The relay stops taking mail first.
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let scale = request(
        &log,
        "PATCH",
        "/apis/apps/v1/namespaces/acme/statefulsets/acme-relay/scale",
    );
    assert_eq!(scale.body, json!({"spec": {"replicas": 0}}));
    assert_eq!(jobs(&world), Vec::<String>::new(), "pods still stopping");
    assert_eq!(world.organizations.len(), 1);

    // Its pods are gone: each claim is delivered by a Job of its own (no relay to hand
    // over to).
    world.settle();
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(jobs(&world), ["acme-relay-drain-0", "acme-relay-drain-1"]);
    let command = world.children[&format!("{JOBS}/acme-relay-drain-0")]["spec"]["template"]["spec"]
        ["containers"][0]["command"]
        .clone();
    assert!(command.as_array().unwrap().contains(&json!("--drain")));
    assert!(
        !command.as_array().unwrap().contains(&json!("--drain-to")),
        "{command}"
    );
    assert_eq!(org_status(&world)["draining"].as_array().unwrap().len(), 2);
    assert_eq!(world.organizations.len(), 1, "deletion waits");

    // Delivered: the claims go, and so does the finalizer (the Organization with it).
    world.finish_drains(true);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(claims(&world), Vec::<String>::new());
    assert!(lines(&log).contains(&format!("PATCH {API}/organizations/acme")));
    assert!(world.organizations.is_empty(), "the Organization is gone");
}

#[tokio::test]
async fn an_organization_deleted_with_the_discard_annotation_goes_at_once() {
    let mut world = with_replicas(1).await;
    world.organizations[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "smtprelay.dev/discard-queue-on-delete".into(),
            "true".into(),
        );
    world.organizations[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(super::fixtures::NOW).unwrap(),
        ));
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(world.organizations.is_empty());
    assert_eq!(jobs(&world), Vec::<String>::new());
    let discarded = events(&log)
        .into_iter()
        .find(|e| e.1 == "QueueDiscarded")
        .unwrap();
    assert_eq!(discarded.0, "Warning");
}

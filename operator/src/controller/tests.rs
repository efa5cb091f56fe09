//! Reconcile against the mocked API server: each test lists the requests reconcile makes
//! and checks the bodies a user would see (children, status, Events).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use relay::config::{RelayConfig, RouteHosts};
use serde_json::Value;

use super::fixtures::{FakeProber, NOW, Recorded, World};
use super::probe::ProbingDisabled;
use crate::render::{Objects, RenderEnv, render};

const API: &str = "/apis/smtprelay.dev/v1alpha1/namespaces/acme";

fn lines(log: &[Recorded]) -> Vec<String> {
    log.iter().map(Recorded::line).collect()
}

/// `(type, reason, note, regarding kind/name)` of every Event posted.
fn events(log: &[Recorded]) -> Vec<(String, String, String, String)> {
    log.iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
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

fn request<'a>(log: &'a [Recorded], method: &str, path: &str) -> &'a Recorded {
    log.iter()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:#?}", lines(log)))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn rendered(world: &World) -> RelayConfig {
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

const CHILD_APPLIES: [&str; 4] = [
    "PATCH /api/v1/namespaces/acme/configmaps/acme-relay-config",
    "PATCH /apis/apps/v1/namespaces/acme/deployments/acme-relay",
    "PATCH /api/v1/namespaces/acme/services/acme-relay",
    "PATCH /apis/policy/v1/namespaces/acme/poddisruptionbudgets/acme-relay",
];

fn reads() -> Vec<String> {
    vec![
        format!("GET {API}/organizations"),
        format!("GET {API}/smtprelaysettings"),
        format!("GET {API}/ipallowranges"),
        format!("GET {API}/mailroutes"),
        "GET /api/v1/namespaces/acme/secrets".into(),
        "GET /apis/apps/v1/namespaces/acme/deployments/acme-relay".into(),
    ]
}

const EVENTS: &str = "POST /apis/events.k8s.io/v1/namespaces/acme/events";

#[tokio::test]
async fn new_organization_gets_all_children_status_and_events() {
    let world = World::example("quickstart");
    let (result, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(std::time::Duration::from_secs(300))
    );

    let mut expected = reads();
    expected.extend(CHILD_APPLIES.map(String::from));
    // Events first, then the status write they describe.
    expected.extend([
        EVENTS.to_string(),
        EVENTS.into(),
        EVENTS.into(),
        format!("PATCH {API}/organizations/acme/status"),
        EVENTS.into(),
        format!("PATCH {API}/smtprelaysettings/loopback-clients/status"),
        EVENTS.into(),
        format!("PATCH {API}/ipallowranges/loopback-v4/status"),
        EVENTS.into(),
        format!("PATCH {API}/ipallowranges/loopback-v6/status"),
        EVENTS.into(),
        format!("PATCH {API}/mailroutes/default/status"),
    ]);
    assert_eq!(lines(&log), expected);

    // Every child: server-side apply, one field manager, forced, owned by the Organization.
    for path in CHILD_APPLIES {
        let r = log.iter().find(|r| r.line() == path).unwrap();
        assert!(r.is_forced_apply(), "{path}?{}", r.query);
        assert_eq!(
            r.query, "&force=true&fieldManager=smtprelay-operator",
            "{path}"
        );
        let owner = &r.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Organization");
        assert_eq!(owner["uid"], "uid-acme");
        assert_eq!(owner["controller"], true);
    }

    // The ConfigMap carries exactly what render produced.
    let config = rendered(&world);
    let cm = request(
        &log,
        "PATCH",
        "/api/v1/namespaces/acme/configmaps/acme-relay-config",
    );
    assert_eq!(cm.body["kind"], "ConfigMap");
    assert_eq!(cm.body["data"]["config.json"], config.to_json());

    let deployment = &request(
        &log,
        "PATCH",
        "/apis/apps/v1/namespaces/acme/deployments/acme-relay",
    )
    .body;
    assert_eq!(deployment["spec"]["replicas"], 1);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["command"],
        serde_json::json!(["relay", "--config", "/etc/smtprelay/config/config.json"])
    );
    let ports: Vec<i64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [2525, 5587, 4465, 9090]);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    // The pod template never carries the config hash: config changes hot-reload.
    assert!(
        !deployment["spec"]["template"]
            .to_string()
            .contains(&config.hash)
    );

    let service = &request(&log, "PATCH", "/api/v1/namespaces/acme/services/acme-relay").body;
    let service_ports: Vec<(i64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        service_ports,
        [(25, "smtp"), (587, "submission"), (465, "smtps")]
    );
    let pdb = &request(
        &log,
        "PATCH",
        "/apis/policy/v1/namespaces/acme/poddisruptionbudgets/acme-relay",
    )
    .body;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // Status: Ready with the hash in force.
    let status =
        &request(&log, "PATCH", &format!("{API}/organizations/acme/status")).body["status"];
    assert_eq!(status["configHash"], config.hash.as_str());
    assert_eq!(status["observedGeneration"], 1);
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(
        ready["message"],
        format!(
            "1/1 relay replicas available; config {} in force",
            &config.hash[..12]
        )
    );
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(condition(status, "Progressing")["status"], "False");

    let setting = &request(
        &log,
        "PATCH",
        &format!("{API}/smtprelaysettings/loopback-clients/status"),
    )
    .body["status"];
    assert_eq!(setting["matchedRanges"], 2);
    assert_eq!(condition(setting, "Accepted")["status"], "True");
    let range = &request(
        &log,
        "PATCH",
        &format!("{API}/ipallowranges/loopback-v6/status"),
    )
    .body["status"];
    assert_eq!(range["network"], "::1/128");
    let route = &request(&log, "PATCH", &format!("{API}/mailroutes/default/status")).body["status"];
    let accepted = condition(route, "Accepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&"True".into(), &"TlsChecksRelaxed".into())
    );

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
            "created Deployment acme-relay with 1 replica(s)".into(),
            "Organization/acme".into()
        )
    );
    assert_eq!(
        (ev[2].1.as_str(), ev[2].3.as_str()),
        ("RelayAvailable", "Organization/acme")
    );
    assert_eq!(
        (ev[6].1.as_str(), ev[6].3.as_str()),
        ("TlsChecksRelaxed", "MailRoute/default")
    );
}

#[tokio::test]
async fn reconcile_without_changes_writes_no_status_and_no_event() {
    let mut world = World::example("quickstart");
    let (_, first) = world.reconcile(ProbingDisabled).await;
    world.absorb(&first);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let mut expected = reads();
    expected.extend(CHILD_APPLIES.map(String::from));
    assert_eq!(lines(&log), expected);
}

#[tokio::test]
async fn changed_mail_route_reapplies_the_config_map_and_records_old_and_new_hash() {
    let mut world = World::example("quickstart");
    let (_, first) = world.reconcile(ProbingDisabled).await;
    world.absorb(&first);
    let old = rendered(&world);

    let route = &mut world.routes[0];
    route.spec.single_host.as_mut().unwrap().port = 2526;
    route.metadata.generation = Some(2);
    let new = rendered(&world);
    assert_ne!(old.hash, new.hash);

    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let mut expected = reads();
    expected.extend(CHILD_APPLIES.map(String::from));
    expected.extend([
        EVENTS.to_string(),
        EVENTS.into(),
        format!("PATCH {API}/organizations/acme/status"),
        format!("PATCH {API}/mailroutes/default/status"),
    ]);
    assert_eq!(lines(&log), expected);

    let cm = request(
        &log,
        "PATCH",
        "/api/v1/namespaces/acme/configmaps/acme-relay-config",
    );
    let applied = RelayConfig::from_json(cm.body["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(applied, new);
    let RouteHosts::Single(host) = &applied.routes[0].hosts else {
        panic!("single host expected")
    };
    assert_eq!((host.host.as_str(), host.port), ("127.0.0.1", 2526));
    assert_eq!(
        cm.body["metadata"]["annotations"]["smtprelay.dev/config-hash"],
        new.hash.as_str()
    );

    let ev = events(&log);
    assert_eq!(
        ev[0],
        (
            "Normal".into(),
            "ConfigUpdated".into(),
            format!(
                "relay config changed from {} to {}; relays reload it without restarting",
                &old.hash[..12],
                &new.hash[..12]
            ),
            "Organization/acme".into()
        )
    );
    // Ready's message names the new hash, so it is a (Normal) change too.
    assert_eq!(
        (ev[1].0.as_str(), ev[1].1.as_str()),
        ("Normal", "RelayAvailable")
    );
    assert_eq!(ev.len(), 2);
    let status =
        &request(&log, "PATCH", &format!("{API}/organizations/acme/status")).body["status"];
    assert_eq!(status["configHash"], new.hash.as_str());
    let route_status =
        &request(&log, "PATCH", &format!("{API}/mailroutes/default/status")).body["status"];
    assert_eq!(route_status["observedGeneration"], 2);
}

#[tokio::test]
async fn missing_tls_secret_degrades_the_organization_with_a_warning_event() {
    // The example names relay-tls but ships only the credentials Secret.
    let world = World::example("applications-smtp-auth");
    assert_eq!(world.secrets.len(), 1);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();

    let status =
        &request(&log, "PATCH", &format!("{API}/organizations/acme/status")).body["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "TlsSecretMissing");
    assert_eq!(
        degraded["message"],
        "TlsSecretMissing: relay.tlsSecretRef names Secret relay-tls which does not exist: STARTTLS is not offered and settings that require TLS refuse mail"
    );
    let warning = events(&log)
        .into_iter()
        .find(|e| e.1 == "TlsSecretMissing")
        .unwrap();
    assert_eq!(warning.0, "Warning");
    assert_eq!(warning.3, "Organization/acme");
    assert!(warning.2.contains("Secret relay-tls which does not exist"));

    // The setting that needs TLS is not accepted, and says why.
    let setting = &request(
        &log,
        "PATCH",
        &format!("{API}/smtprelaysettings/applications/status"),
    )
    .body["status"];
    let accepted = condition(setting, "Accepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&"False".into(), &"NoRelayCertificate".into())
    );
    let setting_event = events(&log)
        .into_iter()
        .find(|e| e.3 == "SmtpRelaySetting/applications")
        .unwrap();
    assert_eq!(
        (setting_event.0.as_str(), setting_event.1.as_str()),
        ("Warning", "NoRelayCertificate")
    );

    // The pods mount the credentials but not the missing TLS Secret (they would not start).
    let deployment = &request(
        &log,
        "PATCH",
        "/apis/apps/v1/namespaces/acme/deployments/acme-relay",
    )
    .body;
    let volumes: Vec<&str> = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["config", "auth", "spool"]);
}

#[tokio::test]
async fn render_error_degrades_the_organization_and_leaves_children_alone() {
    let mut world = World::example("quickstart");
    let mut second = world.routes[0].clone();
    second.metadata.name = Some("another-default".into());
    world.routes.push(second);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let mut expected = reads();
    expected.truncate(5); // no Deployment read, no apply
    expected.extend([
        EVENTS.to_string(),
        format!("PATCH {API}/organizations/acme/status"),
    ]);
    assert_eq!(lines(&log), expected);
    let status = &log[6].body["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "RenderFailed");
    assert_eq!(
        degraded["message"],
        "MailRoute another-default and MailRoute default are both default routes; keep one `default: true`; no config has been applied yet"
    );
    assert_eq!(events(&log)[0].0, "Warning");
    assert_eq!(events(&log)[0].1, "RenderFailed");
}

#[tokio::test]
async fn deleted_organization_is_left_to_the_garbage_collector() {
    let world = World::example("quickstart");
    let mut org = world.org();
    org.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
    let (result, log) = world.reconcile_object(org, ProbingDisabled).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(lines(&log), Vec::<String>::new());
}

#[tokio::test]
async fn failed_tls_probe_marks_the_route_and_warns() {
    let world = World::example("tls-relaxed-route");
    let prober = Arc::new(FakeProber {
        answers: vec![(
            "10.20.0.15:25".into(),
            Err("invalid peer certificate: Expired".into()),
        )],
        ..Default::default()
    });
    let (result, log) = world.reconcile(prober.clone()).await;
    result.unwrap();
    assert_eq!(*prober.probed.lock().unwrap(), ["acme/archive"]);
    let status =
        &request(&log, "PATCH", &format!("{API}/mailroutes/archive/status")).body["status"];
    let tls = condition(status, "TlsConnectionVerified");
    assert_eq!(tls["status"], "False");
    assert_eq!(tls["reason"], "CertificateValidationFailed");
    assert_eq!(
        tls["message"],
        "10.20.0.15:25: invalid peer certificate: Expired"
    );
    assert_eq!(status["lastProbeTime"], "2023-11-14T22:13:20Z");
    let warning = events(&log)
        .into_iter()
        .find(|e| e.1 == "CertificateValidationFailed")
        .unwrap();
    assert_eq!(
        warning,
        (
            "Warning".into(),
            "CertificateValidationFailed".into(),
            "10.20.0.15:25: invalid peer certificate: Expired".into(),
            "MailRoute/archive".into()
        )
    );

    // Probed again only when due: the next reconcile (same time, same generation) does not.
    let mut world = world;
    world.absorb(&log);
    let (_, again) = world.reconcile(prober.clone()).await;
    assert_eq!(prober.probed.lock().unwrap().len(), 1);
    assert!(
        !lines(&again)
            .iter()
            .any(|l| l.contains("mailroutes/archive/status"))
    );
}

#[tokio::test]
async fn rotated_secret_restarts_relays_with_an_event() {
    let mut world = World::example("applications-smtp-auth");
    let (_, first) = world.reconcile(ProbingDisabled).await;
    world.absorb(&first);
    let old_hash = world.deployment.as_ref().unwrap()["spec"]["template"]["metadata"]["annotations"]
        ["smtprelay.dev/secrets-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let creds = world.secrets[0].string_data.as_mut().unwrap();
    creds.insert(
        "credentials".into(),
        "alice@acme.example:$argon2id$v=19$new".into(),
    );
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    let deployment = &request(
        &log,
        "PATCH",
        "/apis/apps/v1/namespaces/acme/deployments/acme-relay",
    )
    .body;
    let new_hash =
        deployment["spec"]["template"]["metadata"]["annotations"]["smtprelay.dev/secrets-hash"]
            .as_str()
            .unwrap();
    assert_ne!(new_hash, old_hash);
    let ev = events(&log);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].2,
        format!(
            "mounted Secrets [smtp-credentials] changed (hash {} to {}): relay pods restart to load them",
            &old_hash[..12],
            &new_hash[..12]
        )
    );
    // The config itself did not change: no ConfigUpdated.
    assert_eq!(ev[0].1, "SecretsChanged");
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
    let (result, log) = world.reconcile(prober.clone()).await;
    result.unwrap();
    assert_eq!(
        *prober.ca_seen.lock().unwrap(),
        ["-----BEGIN CERTIFICATE-----\nprivate root\n"]
    );
    let status =
        &request(&log, "PATCH", &format!("{API}/mailroutes/archive/status")).body["status"];
    let tls = condition(status, "TlsConnectionVerified");
    assert_eq!(
        (&tls["status"], &tls["reason"]),
        (&"True".into(), &"Verified".into())
    );
    assert_eq!(tls["message"], "TLS verified for 10.20.0.15:25");
    // Relay pods get the same CA as a Secret volume.
    let deployment = &request(
        &log,
        "PATCH",
        "/apis/apps/v1/namespaces/acme/deployments/acme-relay",
    )
    .body;
    let mounts =
        deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].to_string();
    assert!(mounts.contains("/etc/smtprelay/ca/archive-ca"), "{mounts}");
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

/// Starts the real controller against a mock API server that answers every list with
/// nothing and leaves watches open, and checks what it watches (and so what RBAC needs).
#[tokio::test]
async fn controller_watches_organizations_children_inputs_and_secret_metadata() {
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
            let accept = request
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let metadata_only = accept.contains("PartialObjectMetadataList");
            lists.insert(
                request.uri().path().to_string(),
                format!(
                    "{}{}",
                    query
                        .split('&')
                        .find(|q| q.starts_with("labelSelector="))
                        .unwrap_or_default(),
                    if metadata_only { " metadata-only" } else { "" }
                ),
            );
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": if metadata_only { "PartialObjectMetadataList" } else { "List" },
                "metadata": {"resourceVersion": "1"}, "items": []
            });
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&list).unwrap()))
                    .unwrap(),
            );
            if lists.len() == 9
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
    let lists = tokio::time::timeout(std::time::Duration::from_secs(60), all_seen)
        .await
        .expect("the controller did not list its nine kinds")
        .unwrap();
    let _ = stop.send(());
    controller.await.unwrap();
    server.abort();

    // Children and Secrets are watched by metadata only (kube's `owns` does so by itself).
    let owned = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsmtprelay-operator metadata-only";
    let expected: BTreeMap<String, String> = [
        ("/apis/smtprelay.dev/v1alpha1/organizations", ""),
        ("/apis/smtprelay.dev/v1alpha1/smtprelaysettings", ""),
        ("/apis/smtprelay.dev/v1alpha1/ipallowranges", ""),
        ("/apis/smtprelay.dev/v1alpha1/mailroutes", ""),
        ("/api/v1/configmaps", owned),
        ("/apis/apps/v1/deployments", owned),
        ("/api/v1/services", owned),
        ("/apis/policy/v1/poddisruptionbudgets", owned),
        ("/api/v1/secrets", " metadata-only"),
    ]
    .into_iter()
    .map(|(p, q)| (p.to_string(), q.to_string()))
    .collect();
    assert_eq!(lists, expected);
}

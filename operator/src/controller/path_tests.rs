//! Every path a cluster takes that issue #27 found wrong, against the mocked API server
//! grown as strict as the kubelet and kube-apiserver are there: Secrets mounted key by key,
//! watches that report deletes, deletion during a move from the Deployment, foreground
//! cascades and terminating namespaces, Events folded into series, canonical quantities,
//! and one tenant's objects never steering another's.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use relay::config::RelayConfig;
use serde_json::{Value, json};

use super::fixtures::{NOW, World};
use super::live::Cluster;
use super::probe::ProbingDisabled;
use super::tests::{
    API, CLAIMS, JOBS, claims, condition, events, jobs, lines, org_status, refused, settled,
    with_replicas, writes,
};

const PODS: &str = "/api/v1/namespaces/acme/pods";
const CONFIG_MAP: &str = "/api/v1/namespaces/acme/configmaps/acme-relay-config";

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}")},
    }))
    .unwrap();
    s.data = Some(
        data.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect(),
    );
    s
}

fn pod(world: &World, name: &str) -> Value {
    world.children[&format!("{PODS}/{name}")].clone()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn template(world: &World) -> Value {
    world.child::<StatefulSet>("acme", "acme-relay").unwrap()["spec"]["template"].clone()
}

fn deleted(world: &mut World) {
    world.organizations[0].metadata.deletion_timestamp =
        Some(Time(Timestamp::from_second(NOW).unwrap()));
}

fn has_condition(world: &World, type_: &str) -> Option<Value> {
    org_status(world)["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

// --- Secrets as the kubelet sees them ------------------------------------------------------

#[tokio::test]
async fn a_dkim_secret_without_its_key_does_not_replace_pod_0_with_one_that_cannot_start() {
    let mut world = settled("quickstart").await;
    world.settle();
    assert!(ready(&pod(&world, "acme-relay-0")));
    let before = template(&world);
    // The key Secret of a TLS certificate, not a DKIM one: `tls.key`, no `private.key`.
    world.secrets.push(secret(
        "dkim-acme",
        &[("tls.key", "-----BEGIN PRIVATE KEY-----")],
    ));
    world.organizations[0].spec.dkim = yaml_serde::from_str(
        "[{domain: acme.example, selector: s1, secretRef: {name: dkim-acme}}]",
    )
    .unwrap();
    world.organizations[0].metadata.generation = Some(2);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();

    // Pod 0 still runs, as it ran before: the relay stays up.
    let pod0 = pod(&world, "acme-relay-0");
    assert!(ready(&pod0), "{}", pod0["status"]);
    assert_eq!(template(&world), before, "no template that cannot start");
    assert_eq!(condition(&org_status(&world), "Ready")["status"], "True");
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "SecretKeyMissing", "{degraded}");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("dkim-acme") && message.contains("private.key"),
        "{message}"
    );
    assert!(
        events(&log)
            .iter()
            .any(|e| e.0 == "Warning" && e.2.contains("dkim-acme") && e.2.contains("private.key")),
        "{:#?}",
        events(&log)
    );
}

#[tokio::test]
async fn a_secret_deleted_to_revoke_it_changes_no_template_and_new_pods_still_start() {
    let mut world = settled("applications-smtp-auth").await;
    world.settle();
    let before = template(&world);
    assert!(before.to_string().contains("smtp-credentials"));
    // Revoked: the credentials Secret is deleted.
    world
        .secrets
        .retain(|s| s.metadata.name.as_deref() != Some("smtp-credentials"));
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(template(&world), before, "the volume stays");
    world.settle();
    assert!(ready(&pod(&world, "acme-relay-0")));
    // A pod made now (a node drain, a restart) starts too: the relay reports the file.
    assert_eq!(world.cannot_mount("acme", &template(&world)["spec"]), None);
}

// --- Watches see deletes ---------------------------------------------------------------------

/// A live cluster of `example` whose controller requeues only after five minutes, once it
/// has applied a first config and gone quiet.
async fn quiet_cluster(example: &str) -> Cluster {
    let mut world = World::example(example);
    world.operator.rollout_requeue = Duration::from_secs(300);
    world.operator.settled_requeue = Duration::from_secs(300);
    let cluster = Cluster::start(&world);
    cluster
        .until(Duration::from_secs(60), |c| c.get(CONFIG_MAP).is_some())
        .await
        .expect("the controller applied no ConfigMap");
    cluster.settled(Duration::from_secs(5)).await;
    cluster
}

fn ranges_in_force(cluster: &Cluster) -> usize {
    cluster
        .get(CONFIG_MAP)
        .and_then(|c| RelayConfig::from_json(c["data"]["config.json"].as_str()?).ok())
        .map(|c| {
            c.settings
                .iter()
                .flat_map(|s| s.ip_ranges.iter().flatten())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn deleting_an_ip_allow_range_changes_the_config_within_two_seconds() {
    let cluster = quiet_cluster("quickstart").await;
    assert_eq!(ranges_in_force(&cluster), 2);
    cluster.delete(&format!("{API}/ipallowranges/loopback-v6"));
    let took = cluster
        .until(Duration::from_secs(600), |c| ranges_in_force(c) == 1)
        .await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(2)),
        "the range stayed in force for {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_service_or_network_policy_is_restored_within_two_seconds() {
    let cluster = quiet_cluster("quickstart").await;
    for path in [
        "/api/v1/namespaces/acme/services/acme-relay",
        "/apis/networking.k8s.io/v1/namespaces/acme/networkpolicies/acme-relay",
    ] {
        assert!(cluster.get(path).is_some(), "{path}");
        cluster.delete(path);
        let took = cluster
            .until(Duration::from_secs(600), |c| c.get(path).is_some())
            .await;
        assert!(
            took.is_some_and(|t| t <= Duration::from_secs(2)),
            "{path} was missing for {took:?}"
        );
    }
}

// --- Events and quantities as the API server does them -------------------------------------

#[tokio::test(start_paused = true)]
async fn each_change_is_its_own_event_though_the_recorder_folds_repeats_into_series() {
    let mut world = World::example("quickstart");
    world.operator.rollout_requeue = Duration::from_secs(30);
    world.operator.settled_requeue = Duration::from_secs(30);
    world.organizations[0].spec.relay.tls_secret_ref = Some(crds::SecretRef {
        name: "relay-tls".into(),
    });
    world.secrets.push(secret(
        "relay-tls",
        &[("tls.crt", "cert-1"), ("tls.key", "key-1")],
    ));
    let cluster = Cluster::start(&world);
    cluster
        .until(Duration::from_secs(60), |c| c.get(CONFIG_MAP).is_some())
        .await
        .unwrap();
    cluster.settled(Duration::from_secs(5)).await;
    let secrets_hash = |c: &Cluster| {
        c.get(CONFIG_MAP).unwrap()["metadata"]["annotations"]["smtprelay.dev/secrets-hash"].clone()
    };
    // Two rotations of the certificate within a minute: two SecretsChanged Events.
    for n in 2..=3 {
        let before = secrets_hash(&cluster);
        let path = "/api/v1/namespaces/acme/secrets/relay-tls";
        let mut s = cluster.get(path).unwrap();
        s["data"]["tls.crt"] = json!(base64_of(&format!("cert-{n}")));
        cluster.put(path, s);
        cluster
            .until(Duration::from_secs(120), |c| secrets_hash(c) != before)
            .await
            .expect("the rotation was not noticed");
        cluster.settled(Duration::from_secs(2)).await;
    }
    let changed: Vec<Value> = cluster
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "SecretsChanged")
        .collect();
    assert_eq!(changed.len(), 2, "{changed:#?}");
    assert_ne!(changed[0]["note"], changed[1]["note"]);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn a_spool_and_resources_written_in_other_units_are_the_same_and_not_applied_again() {
    let mut world = World::example("quickstart");
    world.organizations[0].spec.relay.spool = Some(crds::SpoolSpec {
        size: Some("1024Mi".into()),
        ..Default::default()
    });
    world.organizations[0].spec.relay.resources =
        serde_json::from_value(json!({"requests": {"cpu": "1000m", "memory": "0.5Gi"}})).unwrap();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    // The API server holds `1Gi`, `1` and `512Mi`: the same amounts.
    let set = world.child::<StatefulSet>("acme", "acme-relay").unwrap();
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(writes(&log), Vec::<String>::new());
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["status"], "False", "{degraded}");
}

// --- Deletion and migration paths --------------------------------------------------------

/// The quickstart relay still running as the Deployment of an earlier version: one ready
/// pod on its claim, next to the StatefulSet that is to replace it.
fn mid_migration() -> World {
    let mut world = World::example("quickstart");
    let labels = json!({"app.kubernetes.io/name": "smtprelay", "app.kubernetes.io/instance": "acme",
        "app.kubernetes.io/managed-by": "smtprelay-operator"});
    world.children.insert(
        "/apis/apps/v1/namespaces/acme/deployments/acme-relay".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "acme-relay", "namespace": "acme", "generation": 3, "uid": "uid-deployment",
                "labels": labels,
                "ownerReferences": [{"apiVersion": "smtprelay.dev/v1alpha1", "kind": "Organization",
                    "name": "acme", "uid": "uid-acme", "controller": true}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "smtprelay"}},
                "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "relay", "image": "smtprelay-relay:0.0.9"}],
                        "volumes": [{"name": "spool", "persistentVolumeClaim": {"claimName": "acme-relay-spool"}}]}}}}),
    );
    world.children.insert(
        format!("{CLAIMS}/acme-relay-spool"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "acme-relay-spool", "namespace": "acme", "uid": "uid-legacy-claim",
                "labels": labels}}),
    );
    let mut pod_labels = labels.clone();
    pod_labels["pod-template-hash"] = json!("5d9f");
    world.children.insert(
        format!("{PODS}/acme-relay-5d9f-x2x"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "acme-relay-5d9f-x2x", "namespace": "acme", "labels": pod_labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "acme-relay-5d9f", "uid": "uid-rs", "controller": true}]},
            "spec": {"containers": [{"name": "relay"}],
                "volumes": [{"name": "spool", "persistentVolumeClaim": {"claimName": "acme-relay-spool"}}]},
            "status": {"podIP": "10.8.0.1", "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    world
}

#[tokio::test]
async fn deleting_an_organization_mid_migration_stops_the_old_deployment_and_finishes() {
    let mut world = mid_migration();
    // The StatefulSet is made; its pod is not ready yet, so the Deployment still serves.
    world.stateful_set_status =
        json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 0, "availableReplicas": 0});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert!(
        world
            .children
            .contains_key("/apis/apps/v1/namespaces/acme/deployments/acme-relay")
    );

    deleted(&mut world);
    let mut finished = false;
    for _ in 0..8 {
        let (result, log) = world.reconcile(ProbingDisabled).await;
        result.unwrap();
        assert_eq!(refused(&log), Vec::<String>::new());
        if world.organizations.is_empty() {
            finished = true;
            break;
        }
        world.settle();
        world.run_drains(0);
        world.finish_drains(true);
    }
    assert!(finished, "deletion hangs: {}", org_status(&world));
    assert!(
        !world
            .children
            .keys()
            .any(|p| p.starts_with(&format!("{PODS}/acme-relay-5d9f"))),
        "the old Deployment's pod still runs"
    );
    assert!(
        !claims(&world).contains(&"acme-relay-spool".to_string()),
        "the old Deployment's claim was delivered and deleted"
    );
}

#[tokio::test]
async fn a_pending_spool_claim_is_a_condition() {
    let mut world = with_replicas(2).await;
    world.organizations[0].spec.relay.replicas = Some(1);
    world.organizations[0].metadata.generation = Some(2);
    world.stateful_set_status = json!({"replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let pending = has_condition(&world, "SpoolClaimPending").expect("no SpoolClaimPending");
    assert_eq!(pending["status"], "True", "{pending}");
    assert!(
        pending["message"]
            .as_str()
            .unwrap()
            .contains("spool-acme-relay-1"),
        "{pending}"
    );
    world.finish_drains(true);
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let pending = has_condition(&world, "SpoolClaimPending").unwrap();
    assert_eq!(pending["status"], "False", "{pending}");
}

#[tokio::test]
async fn every_wait_of_the_finalizer_is_an_event_and_a_condition() {
    let mut world = with_replicas(2).await;
    deleted(&mut world);
    let (_, log) = world.reconcile(ProbingDisabled).await;
    let deleting = has_condition(&world, "Deleting").expect("no Deleting condition");
    assert_eq!(deleting["reason"], "WaitingForRelayToStop", "{deleting}");
    assert!(
        deleting["message"]
            .as_str()
            .unwrap()
            .contains("acme-relay-0"),
        "{deleting}"
    );
    assert!(
        events(&log).iter().any(|e| e.1 == "WaitingForRelayToStop"),
        "{:#?}",
        events(&log)
    );

    world.settle();
    let (_, log) = world.reconcile(ProbingDisabled).await;
    let deleting = has_condition(&world, "Deleting").unwrap();
    assert_eq!(deleting["reason"], "DrainingSpools", "{deleting}");
    assert!(
        deleting["message"]
            .as_str()
            .unwrap()
            .contains("spool-acme-relay-1"),
        "{deleting}"
    );
    assert!(events(&log).iter().any(|e| e.1 == "DrainingSpools"));
    // Nothing new to wait for: no new Event.
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert!(!events(&log).iter().any(|e| e.1 == "DrainingSpools"));

    world.finish_drains(false);
    let (_, log) = world.reconcile(ProbingDisabled).await;
    let deleting = has_condition(&world, "Deleting").unwrap();
    assert_eq!(deleting["reason"], "DrainFailed", "{deleting}");
    assert!(
        events(&log)
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "DrainFailed")
    );
    assert_eq!(
        world.organizations.len(),
        1,
        "a failed drain keeps the mail"
    );
}

#[tokio::test]
async fn the_discard_annotation_deletes_the_claims_it_discards() {
    let mut world = with_replicas(2).await;
    world.organizations[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "smtprelay.dev/discard-queue-on-delete".into(),
            "true".into(),
        );
    deleted(&mut world);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(world.organizations.is_empty());
    for claim in ["spool-acme-relay-0", "spool-acme-relay-1"] {
        assert!(
            lines(&log).contains(&format!("DELETE {CLAIMS}/{claim}")),
            "{:#?}",
            lines(&log)
        );
    }
    assert_eq!(claims(&world), Vec::<String>::new());
    let discarded = events(&log)
        .into_iter()
        .find(|e| e.1 == "QueueDiscarded")
        .unwrap();
    assert!(discarded.2.contains("spool-acme-relay-1"), "{discarded:?}");
}

/// The claims left and the status written before the finalizer went.
fn said_before_release(log: &[super::fixtures::Recorded], claim: &str) -> bool {
    let status = log.iter().any(|r| {
        r.path.ends_with("/organizations/acme/status") && r.body.to_string().contains(claim)
    });
    let event = log.iter().any(|r| {
        r.method == "POST" && r.path.ends_with("/events") && r.body.to_string().contains(claim)
    });
    status && event
}

#[tokio::test]
async fn a_foreground_cascade_never_releases_the_finalizer_silently() {
    let mut world = with_replicas(1).await;
    deleted(&mut world);
    world.organizations[0]
        .metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .insert(0, "foregroundDeletion".into());
    // The garbage collector deletes the dependents first: the relay and its config go,
    // the claim (no owner) stays with its mail.
    world.children.retain(|p, v| {
        p.contains("/persistentvolumeclaims/")
            || !v["metadata"]["ownerReferences"]
                .to_string()
                .contains("uid-acme")
    });
    world.children.retain(|p, _| !p.starts_with(PODS));
    let mut log = Vec::new();
    for _ in 0..4 {
        let (result, l) = world.reconcile(ProbingDisabled).await;
        result.unwrap();
        log.extend(l);
        if world.organizations.is_empty() {
            break;
        }
        world.settle();
    }
    assert!(
        world.organizations.is_empty(),
        "a foreground cascade must not hang"
    );
    assert!(
        said_before_release(&log, "spool-acme-relay-0"),
        "released without naming the claim left with mail: {:#?}",
        lines(&log)
    );
}

#[tokio::test]
async fn a_terminating_namespace_never_releases_the_finalizer_silently() {
    let mut world = with_replicas(1).await;
    deleted(&mut world);
    world.terminating.insert("acme".into());
    let mut log = Vec::new();
    for _ in 0..4 {
        let (result, l) = world.reconcile(ProbingDisabled).await;
        result.unwrap();
        log.extend(l);
        if world.organizations.is_empty() {
            break;
        }
        world.settle();
    }
    assert!(
        world.organizations.is_empty(),
        "a terminating namespace must not hang"
    );
    assert!(
        said_before_release(&log, "spool-acme-relay-0"),
        "released without naming the claim left with mail: {:#?}",
        lines(&log)
    );
}

/// A claim of an earlier Organization of the same name, left with its mail.
fn earlier_claim(world: &mut World, ordinal: u32) {
    let name = format!("spool-acme-relay-{ordinal}");
    world.children.insert(
        format!("{CLAIMS}/{name}"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-earlier-{ordinal}"),
                "labels": {"app.kubernetes.io/name": "smtprelay", "app.kubernetes.io/instance": "acme",
                    "app.kubernetes.io/component": "relay",
                    "app.kubernetes.io/managed-by": "smtprelay-operator",
                    "smtprelay.dev/organization-uid": "uid-an-earlier-acme"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    );
}

#[tokio::test]
async fn a_recreated_organization_never_adopts_the_claims_of_the_one_before() {
    let mut world = World::example("quickstart");
    earlier_claim(&mut world, 0);
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    let (result, _) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        !world.children.contains_key(&format!("{PODS}/acme-relay-0")),
        "a relay pod runs on the claim of the Organization before"
    );
    let degraded = condition(&org_status(&world), "Degraded").clone();
    assert_eq!(degraded["reason"], "ForeignSpoolClaim", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spool-acme-relay-0")
    );

    // Nor does a scale-down drain it into this Organization's relays.
    let mut world = with_replicas(1).await;
    earlier_claim(&mut world, 3);
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(jobs(&world), Vec::<String>::new());
}

// --- One tenant cannot hurt another ---------------------------------------------------------

#[tokio::test]
async fn only_pods_the_stateful_set_owns_are_asked_for_their_config() {
    let mut world = settled("quickstart").await;
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(condition(&org_status(&world), "InForce")["status"], "True");
    // A pod of the tenant's own, labelled as a relay, at an address of its choosing.
    let mut forged = pod(&world, "acme-relay-0");
    forged["metadata"]["name"] = json!("acme-relay-7");
    forged["metadata"]["ownerReferences"] = json!([]);
    forged["status"]["podIP"] = json!("10.66.0.1");
    world
        .children
        .insert(format!("{PODS}/acme-relay-7"), forged);
    world
        .pod_answers
        .insert("10.66.0.1".into(), super::tests::running("forged"));
    world.reconcile(ProbingDisabled).await.0.unwrap();
    let in_force = condition(&org_status(&world), "InForce").clone();
    assert_eq!(in_force["status"], "True", "{in_force}");
}

/// Scales the quickstart from 2 to 1 and starts the drain of claim 1.
async fn draining_one() -> World {
    let mut world = with_replicas(2).await;
    world.organizations[0].spec.relay.replicas = Some(1);
    world.organizations[0].metadata.generation = Some(2);
    world.stateful_set_status = json!({"replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1});
    world.reconcile(ProbingDisabled).await.0.unwrap();
    world.settle();
    world.reconcile(ProbingDisabled).await.0.unwrap();
    assert_eq!(jobs(&world), ["acme-relay-drain-1"]);
    world
}

#[tokio::test]
async fn drain_pods_have_a_network_policy_of_their_own() {
    let world = draining_one().await;
    let policies: Vec<Value> = world
        .children
        .iter()
        .filter(|(p, _)| p.contains("/networkpolicies/"))
        .map(|(_, v)| v.clone())
        .collect();
    let drain = policies
        .iter()
        .find(|p| {
            p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "smtprelay-drain"
        })
        .unwrap_or_else(|| panic!("no NetworkPolicy selects drain pods: {policies:#?}"));
    let policy: NetworkPolicy = serde_json::from_value(drain.clone()).unwrap();
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    // Only the operator's namespace reaches the status port.
    let from = ingress[0].from.clone().unwrap();
    assert_eq!(from.len(), 1, "{from:?}");
    assert!(from[0].namespace_selector.is_some());
}

#[tokio::test]
async fn a_drain_job_counts_only_for_the_claim_it_was_made_for() {
    let mut world = draining_one().await;
    // The claim goes and another of the same name takes its place (a pod scaled back up
    // and down again, or someone's restore) before the Job reports.
    let path = format!("{CLAIMS}/spool-acme-relay-1");
    let mut claim = world.children[&path].clone();
    claim["metadata"]["uid"] = json!("uid-another-claim");
    world.children.insert(path.clone(), claim);
    world.finish_drains(true);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert!(
        !lines(&log).contains(&format!("DELETE {path}")),
        "a claim the Job never drained was deleted"
    );
    assert!(world.children.contains_key(&path));
}

// --- Dual stack -------------------------------------------------------------------------------

#[tokio::test]
async fn relays_and_drains_listen_on_every_address_family() {
    let world = draining_one().await;
    let cm = &world.children[CONFIG_MAP];
    let config = RelayConfig::from_json(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    for addr in [
        config.listeners.smtp,
        config.listeners.submission,
        config.listeners.smtps,
        config.admin_listen,
    ] {
        assert_eq!(addr.ip().to_string(), "::", "{addr}");
    }
    let job = &world.children[&format!("{JOBS}/acme-relay-drain-1")];
    let command = job["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
    assert!(command.contains("\"[::]:9090\""), "{command}");
}

// --- RBAC ------------------------------------------------------------------------------------

#[test]
fn the_operator_may_not_patch_secrets() {
    let rules = super::fixtures::shipped_rules();
    let secret_verbs: Vec<String> = rules
        .iter()
        .filter(|r| r.resources.iter().any(|x| x == "secrets"))
        .flat_map(|r| r.verbs.clone())
        .collect();
    assert!(
        !secret_verbs
            .iter()
            .any(|v| v == "patch" || v == "update" || v == "*"),
        "{secret_verbs:?}"
    );
}

#[tokio::test]
async fn a_stateful_set_made_before_claims_carried_the_uid_keeps_its_claim_templates() {
    let mut world = settled("quickstart").await;
    let path = "/apis/apps/v1/namespaces/acme/statefulsets/acme-relay";
    let mut set = world.children[path].clone();
    set["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("smtprelay.dev/organization-uid");
    world.children.insert(path.into(), set);
    let (result, log) = world.reconcile(ProbingDisabled).await;
    result.unwrap();
    assert_eq!(refused(&log), Vec::<String>::new());
    let (_, log) = world.reconcile(ProbingDisabled).await;
    assert_eq!(writes(&log), Vec::<String>::new());
}

// --- Watches and Events, piece by piece ---------------------------------------------------

#[test]
fn input_changes_report_creates_changes_and_deletes_even_across_a_relist() {
    use kube::runtime::watcher::Event;
    let range = World::example("quickstart").ranges[0].clone();
    let mut changes = super::watch::InputChanges::new(true);
    assert_eq!(changes.on_event(&Event::Apply(range.clone())).len(), 1);
    // A status write (a new resource version, same generation and labels): nothing.
    let mut status_only = range.clone();
    status_only.metadata.resource_version = Some("9".into());
    assert!(changes.on_event(&Event::Apply(status_only)).is_empty());
    let mut relabelled = range.clone();
    relabelled.metadata.labels =
        Some([("smtprelay.dev/allow".to_string(), "x".to_string())].into());
    assert_eq!(changes.on_event(&Event::Apply(relabelled.clone())).len(), 1);
    // Deleted: its generation and labels are those it had, and it still counts.
    assert_eq!(
        changes.on_event(&Event::Delete(relabelled.clone())),
        vec![relabelled]
    );
    // Deleted while the watch was broken: the re-list leaves it out, and that counts.
    changes.on_event(&Event::Apply(range.clone()));
    assert!(changes.on_event(&Event::Init).is_empty());
    assert!(changes.on_event(&Event::InitDone).len() == 1);
    // Re-listed unchanged: nothing.
    changes.on_event(&Event::Apply(range.clone()));
    changes.on_event(&Event::Init);
    assert!(
        changes
            .on_event(&Event::InitApply(range.clone()))
            .is_empty()
    );
    assert!(changes.on_event(&Event::InitDone).is_empty());
    // Organizations go by their deletion timestamp, not by their disappearance.
    let mut orgs = super::watch::InputChanges::new(false);
    let org = World::example("quickstart").org();
    orgs.on_event(&Event::Apply(org.clone()));
    assert!(orgs.on_event(&Event::Delete(org)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_repeat_within_six_minutes_is_a_series_and_anything_else_a_new_event() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::EventType;
    let cluster = Cluster::start(&World::empty());
    let recorder = super::events::Recorder::new("smtprelay-operator", Some("test".into()));
    let regarding = ObjectReference {
        api_version: Some("smtprelay.dev/v1alpha1".into()),
        kind: Some("Organization".into()),
        namespace: Some("acme".into()),
        name: Some("acme".into()),
        uid: Some("uid-acme".into()),
        ..Default::default()
    };
    let at = |minutes: i64| Timestamp::from_second(NOW + minutes * 60).unwrap();
    let say = |minutes, note: &'static str, generation| {
        let (recorder, client, regarding) =
            (recorder.clone(), cluster.client.clone(), regarding.clone());
        async move {
            recorder
                .publish(
                    &client,
                    at(minutes),
                    EventType::Warning,
                    "Why",
                    note,
                    &regarding,
                    Some(generation),
                )
                .await
                .unwrap()
        }
    };
    say(0, "a", 1).await;
    say(1, "a", 1).await; // a repeat: series
    say(2, "b", 1).await; // another note: its own Event
    say(3, "a", 2).await; // the object changed: its own Event
    say(10, "a", 1).await; // more than six minutes after the last repeat: new
    let events = cluster.events();
    let notes: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["note"].as_str().unwrap(),
                e["series"]["count"].as_i64().unwrap_or(1),
            )
        })
        .collect();
    assert_eq!(notes, [("a", 2), ("b", 1), ("a", 1), ("a", 1)]);
    let patches = cluster
        .log()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/events/"))
        .count();
    assert_eq!(patches, 1);
}

//! Against a real cluster (only when `KUBECONFIG` is set): install the CRDs, apply the
//! quickstart into a scratch namespace, run the controller in this process, wait for the
//! Organization to be Ready, then change an IpAllowRange and see the ConfigMap and status
//! follow. Without `KUBECONFIG` the test says it was skipped and checks nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crds::manifest::load_paths;
use crds::{IpAllowRange, Organization};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use operator::controller::metrics::Metrics;
use operator::controller::probe::ProbingDisabled;
use operator::controller::{Context, Settings, run};
use operator::render::{Objects, RenderEnv, render};
use relay::config::RelayConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

const NS: &str = "smtprelay-it";
const MANAGER: &str = "smtprelay-it";
/// Polls of at most one second each: how long the cluster gets to converge.
const POLLS: usize = 180;

async fn apply<K>(api: &Api<K>, object: &K)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut body = serde_json::to_value(object).unwrap();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    body["metadata"]["resourceVersion"] = serde_json::Value::Null;
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

/// Polls `check` until it returns `Some`, at most [`POLLS`] times.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..POLLS {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{what} did not happen; last observation: {last}");
}

fn expected_config(set: &crds::manifest::ManifestSet) -> RelayConfig {
    let orgs: Vec<_> = set.organizations.iter().map(|l| l.object.clone()).collect();
    let settings: Vec<_> = set.settings.iter().map(|l| l.object.clone()).collect();
    let ranges: Vec<_> = set.ranges.iter().map(|l| l.object.clone()).collect();
    let routes: Vec<_> = set.routes.iter().map(|l| l.object.clone()).collect();
    render(
        NS,
        Objects {
            organizations: &orgs,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &BTreeSet::new(),
        },
        &RenderEnv::pod(),
    )
    .unwrap()
    .config
}

async fn config_in_cluster(client: &Client) -> Result<RelayConfig, String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let cm = cms
        .get_opt("acme-relay-config")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no ConfigMap acme-relay-config yet")?;
    let text = cm
        .data
        .and_then(|d| d.get("config.json").cloned())
        .ok_or("ConfigMap has no config.json")?;
    RelayConfig::from_json(&text).map_err(|e| e.to_string())
}

#[tokio::test]
async fn quickstart_becomes_ready_and_follows_a_range_change() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!("skipped: KUBECONFIG not set");
        return;
    }
    let client = Client::try_default().await.unwrap();

    // CRDs, established.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds::all_crds() {
        apply(&crds, &crd).await;
    }
    for crd in crds::all_crds() {
        let name = crd.name_any();
        eventually(&format!("CRD {name} established"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                established
                    .then_some(())
                    .ok_or_else(|| "not established".into())
            }
        })
        .await;
    }

    // The quickstart, moved into a scratch namespace.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    apply(&namespaces, &ns).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let mut set = load_paths(&[dir]).unwrap();
    for l in &mut set.organizations {
        l.object.metadata.namespace = Some(NS.into());
    }
    for l in &mut set.settings {
        l.object.metadata.namespace = Some(NS.into());
    }
    for l in &mut set.ranges {
        l.object.metadata.namespace = Some(NS.into());
    }
    for l in &mut set.routes {
        l.object.metadata.namespace = Some(NS.into());
    }
    let orgs: Api<Organization> = Api::namespaced(client.clone(), NS);
    let ranges: Api<IpAllowRange> = Api::namespaced(client.clone(), NS);
    for l in &set.organizations {
        apply(&orgs, &l.object).await;
    }
    for l in &set.settings {
        apply(&Api::namespaced(client.clone(), NS), &l.object).await;
    }
    for l in &set.ranges {
        apply(&ranges, &l.object).await;
    }
    for l in &set.routes {
        apply(&Api::namespaced(client.clone(), NS), &l.object).await;
    }

    // The controller, in this process.
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        ProbingDisabled,
        Arc::new(Metrics::default()),
        Some("cluster-test".into()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(ctx, async move {
        let _ = stopped.await;
    }));

    let first = expected_config(&set);
    let applied = eventually("ConfigMap with the quickstart config", || async {
        let c = config_in_cluster(&client).await?;
        (c.hash == first.hash)
            .then_some(c)
            .ok_or_else(|| "ConfigMap holds another config".to_string())
    })
    .await;
    assert_eq!(applied, first);
    eventually("Organization Ready", || async {
        let org = orgs.get("acme").await.map_err(|e| e.to_string())?;
        let status = org.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.config_hash.as_deref() == Some(first.hash.as_str()))
            .then_some(())
            .ok_or_else(|| format!("{status:?} (is the relay image loaded into the cluster?)"))
    })
    .await;

    // Change a range: 127.0.0.1 becomes 127.0.0.2.
    let range = set
        .ranges
        .iter_mut()
        .find(|l| l.object.name_any() == "loopback-v4")
        .unwrap();
    range.object.spec.cidr = "127.0.0.2".into();
    apply(&ranges, &range.object).await;
    let second = expected_config(&set);
    assert_ne!(first.hash, second.hash);
    let applied = eventually("ConfigMap following the range change", || async {
        let c = config_in_cluster(&client).await?;
        (c.hash == second.hash)
            .then_some(c)
            .ok_or_else(|| "ConfigMap still holds the old config".to_string())
    })
    .await;
    let networks: Vec<String> = applied.settings[0]
        .ip_ranges
        .iter()
        .flatten()
        .map(|r| r.network.to_string())
        .collect();
    assert!(
        networks.contains(&"127.0.0.2/32".to_string()),
        "{networks:?}"
    );
    eventually("Organization status naming the new hash", || async {
        let org = orgs.get("acme").await.map_err(|e| e.to_string())?;
        let hash = org.status.and_then(|s| s.config_hash);
        (hash.as_deref() == Some(second.hash.as_str()))
            .then_some(())
            .ok_or_else(|| format!("configHash {hash:?}"))
    })
    .await;
    eventually("IpAllowRange status of the new generation", || async {
        let r = ranges.get("loopback-v4").await.map_err(|e| e.to_string())?;
        let status = r.status.clone().unwrap_or_default();
        (status.observed_generation == r.metadata.generation
            && status.network.as_deref() == Some("127.0.0.2/32"))
        .then_some(())
        .ok_or_else(|| format!("{status:?}"))
    })
    .await;

    let _ = stop.send(());
    let _ = controller.await;
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
}

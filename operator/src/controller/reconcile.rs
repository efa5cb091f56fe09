//! Reconciling one Organization: read the namespace's objects from the stores, GET the
//! Secrets they name, render, apply the children and the status of every kind, move a
//! relay still running as a Deployment to its StatefulSet, nudge pods behind on config,
//! and announce what changed. A deleted Organization goes to `finalize`.
//!
//! Not here: building children (`children`), the status text (`status`), deletion
//! (`finalize`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::{MailRoute, Organization};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use relay::config::RouteConfig;

use super::probe::TlsProber;
use super::status::{ACCEPTED, DEGRADED, PodReport, Problem, TLS_VERIFIED};
use super::{children, drain, identity, status};
use crate::render::{Objects, render};

use super::apply::{
    ensure_or_note, in_namespace, owned, publish, publish_if_changed, record, short, watched,
    write_status,
};
use super::context::{Context, Error, FIELD_MANAGER, Settings};
use super::finalize::{drain_claims, finalize, set_finalizer};

/// Reconciles one Organization (the controller's entry point).
pub async fn reconcile<P: TlsProber>(
    org: Arc<Organization>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_org(&org, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(org.as_ref()));
    }
    result
}

/// Failed reconciles are retried after an exponential backoff with jitter, capped (see
/// [`backoff`]); the error is logged and counted.
pub fn error_policy<P: TlsProber>(
    org: Arc<Organization>,
    error: &Error,
    ctx: Arc<Context<P>>,
) -> Action {
    ctx.metrics.failed(error.metric_label());
    let failures = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(ObjectRef::from_obj(org.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let wait = backoff(
        failures,
        ctx.settings.error_backoff,
        ctx.settings.error_backoff_cap,
        (ctx.jitter)(),
    );
    tracing::warn!(organization = %org.name_any(), namespace = ?org.namespace(), %error, failures, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The wait before retry number `failures` (1 for the first): `base` doubled per failure
/// and capped at `cap`, then "equal jitter": half of it fixed, half scaled by `unit` (a
/// random number in `[0, 1)`), so that Organizations failing together do not retry in step.
pub fn backoff(failures: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1 << exponent).min(cap);
    full / 2 + full.div_f64(2.0).mul_f64(unit.clamp(0.0, 1.0))
}

/// The Secrets `org` and its routes name, each fetched with one GET (the operator lists no
/// Secrets: it may read only those it is pointed at). Missing ones are left out.
pub(super) async fn referenced_secrets(
    client: &Client,
    namespace: &str,
    org: &Organization,
    routes: &[Arc<MailRoute>],
) -> Result<Vec<Secret>, Error> {
    let mut names = BTreeSet::new();
    names.extend(org.spec.relay.tls_secret_ref.iter().map(|r| r.name.clone()));
    names.extend(org.spec.auth_secret_ref.iter().map(|r| r.name.clone()));
    names.extend(
        org.spec
            .relay
            .limit_store
            .iter()
            .filter_map(|s| s.password_secret_ref.as_ref())
            .map(|r| r.name.clone()),
    );
    names.extend(org.spec.dkim.iter().map(|k| k.secret_ref.name.clone()));
    for r in routes {
        names.extend(
            r.spec
                .tls
                .trusted_ca_secret_ref
                .iter()
                .map(|r| r.name.clone()),
        );
        names.extend(r.spec.auth.iter().map(|a| a.secret_ref.name.clone()));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = Vec::new();
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(s)) => secrets.push(s),
            Ok(None) => {}
            Err(source) => {
                return Err(Error::Get {
                    kind: "Secret",
                    namespace: namespace.into(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(secrets)
}

/// The Organization's admin token Secret (`<org>-relay-admin`, key `token`): read with
/// one GET, or created with a new random token when there is none. An existing one is
/// never overwritten (an operator may rotate the token by editing it): a Secret someone
/// made meanwhile wins (the create conflicts and the Secret is read).
pub(super) async fn ensure_admin_secret(
    client: &Client,
    org: &Organization,
) -> Result<Secret, Error> {
    let namespace = org.namespace().unwrap_or_default();
    let name = children::admin_secret_name(&org.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(Some(s)) => return Ok(s),
        Ok(None) => {}
        Err(source) => {
            return Err(Error::Get {
                kind: "Secret",
                namespace,
                name,
                source,
            });
        }
    }
    let create = |source| Error::Apply {
        kind: "Secret".into(),
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let token = crate::local::new_admin_token()
        .map_err(|e| create(kube::Error::Service(e.to_string().into())))?;
    let secret = children::admin_secret(org, &token);
    // A create, not an apply: the operator may create Secrets but never change one.
    match api.create(&PostParams::default(), &secret).await {
        Ok(made) => {
            tracing::info!(namespace, name, "created the relay admin token Secret");
            Ok(made)
        }
        // Someone made it meanwhile: theirs wins.
        Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(create(kube::Error::Api(e))),
            Err(source) => Err(Error::Get {
                kind: "Secret",
                namespace,
                name,
                source,
            }),
        },
        Err(source) => Err(create(source)),
    }
}

/// Why the operator refuses to run what `org` asks for (tenant boundaries set by flags).
pub(super) fn refusals(org: &Organization, settings: &Settings) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(image) = &org.spec.relay.image
        && *image != settings.defaults.relay_image
        && !settings.allowed_images.contains(image)
    {
        out.push(Problem::new(
            "ImageNotAllowed",
            format!(
                "relay.image {image} is not in the operator's list of allowed images; the relay keeps its current image"
            ),
        ));
    }
    if settings.forbid_load_balancer
        && org.spec.relay.service_type == Some(crds::ServiceType::LoadBalancer)
    {
        out.push(Problem::new(
            "LoadBalancerForbidden",
            "relay.serviceType LoadBalancer is forbidden by the operator; the Service keeps its current type (ClusterIP for a new one)".into(),
        ));
    }
    out
}

/// The spool a StatefulSet was created with: its claim template, or its emptyDir.
pub(super) fn spool_of(stateful_set: &StatefulSet) -> Option<crds::SpoolSpec> {
    let spec = &stateful_set.spec;
    if let Some(claim) = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .find(|c| c.metadata.name.as_deref() == Some(identity::SPOOL_VOLUME))
    {
        let claim = claim.spec.as_ref()?;
        return Some(crds::SpoolSpec {
            size: claim
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone()),
            storage_class_name: claim.storage_class_name.clone(),
            ephemeral: false,
        });
    }
    let empty_dir = spec
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == identity::SPOOL_VOLUME)?
        .empty_dir
        .as_ref()?;
    Some(crds::SpoolSpec {
        size: empty_dir.size_limit.as_ref().map(|q| q.0.clone()),
        storage_class_name: None,
        ephemeral: true,
    })
}

/// A spool spec with its defaults filled in, for comparison.
/// Sizes are compared by amount (`1024Mi` is `1Gi`, as the API server stores it).
pub(super) fn spool_with_defaults(spool: Option<&crds::SpoolSpec>) -> crds::SpoolSpec {
    let mut s = spool.cloned().unwrap_or_default();
    let size = s
        .size
        .take()
        .unwrap_or_else(|| children::DEFAULT_SPOOL_SIZE.into());
    s.size = Some(crate::quantity::canonical_or_same(&size));
    s
}

/// `org` as the operator runs it: a refused image is replaced by the one the relay runs
/// now (or the default), a refused Service type by the current one (or ClusterIP), and a
/// spool change by the spool the StatefulSet has (its claim templates cannot change: the
/// API server refuses the update), so that everything else the Organization asks for
/// still takes effect. A kept spool is added to `problems`.
pub(super) fn within_bounds(
    org: &Organization,
    problems: &mut Vec<Problem>,
    stateful_set: Option<&StatefulSet>,
    services: &Store<Service>,
) -> Organization {
    let mut allowed = org.clone();
    let refused = |reason: &str| problems.iter().any(|p| p.reason == reason);
    if refused("ImageNotAllowed") {
        allowed.spec.relay.image = stateful_set.and_then(|d| {
            d.spec
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
        });
    }
    if refused("LoadBalancerForbidden") {
        let current = org.namespace().and_then(|ns| {
            services.get(&ObjectRef::new(&identity::relay_name(&org.name_any())).within(&ns))
        });
        allowed.spec.relay.service_type = Some(
            match current
                .as_ref()
                .and_then(|s| s.spec.as_ref()?.type_.as_deref())
            {
                Some("NodePort") => crds::ServiceType::NodePort,
                _ => crds::ServiceType::ClusterIP,
            },
        );
    }
    if let Some(current) = stateful_set.and_then(spool_of)
        && spool_with_defaults(Some(&current)) != spool_with_defaults(org.spec.relay.spool.as_ref())
    {
        let describe = |s: &crds::SpoolSpec| {
            let s = spool_with_defaults(Some(s));
            let size = s.size.unwrap_or_default();
            match (s.ephemeral, s.storage_class_name) {
                (true, _) => format!("an emptyDir of at most {size}"),
                (false, Some(class)) => format!("a {size} claim of class {class} per pod"),
                (false, None) => format!("a {size} claim per pod"),
            }
        };
        problems.push(Problem::new(
            "SpoolUnchangeable",
            format!(
                "relay.spool asks for {} but the relay's StatefulSet was created with {}, and a StatefulSet's claim templates cannot change; the relay keeps its spool (grow claims by editing them; to change the kind, drain and recreate the relay)",
                describe(org.spec.relay.spool.as_ref().unwrap_or(&Default::default())),
                describe(&current)
            ),
        ));
        allowed.spec.relay.spool = Some(current);
    }
    allowed
}

pub(super) async fn reconcile_org<P: TlsProber>(
    org: &Organization,
    ctx: &Context<P>,
) -> Result<Action, Error> {
    if org.meta().deletion_timestamp.is_some() {
        return finalize(org, ctx).await;
    }
    let stores = &ctx.stores;
    if !stores.ready() {
        // The watches are still listing: come back when the caches are whole.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if !org.finalizers().iter().any(|f| f == drain::FINALIZER) {
        set_finalizer(&ctx.client, org, true).await?;
    }
    let name = org.name_any();
    let ns = org
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = &ctx.client;
    let organizations = in_namespace(&stores.organizations, &ns);
    let settings = in_namespace(&stores.settings, &ns);
    let ranges = in_namespace(&stores.ranges, &ns);
    let routes = in_namespace(&stores.routes, &ns);
    let mut secrets = referenced_secrets(client, &ns, org, &routes).await?;
    let mut secret_names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
    // The admin token Secret: looked for (and made when missing) only until the relay pods
    // mount it, so a settled reconcile still makes no request.
    let admin_secret = children::admin_secret_name(&name);
    let admin_mounted = stores
        .stateful_sets
        .get(&ObjectRef::new(&identity::stateful_set_name(&name)).within(&ns))
        .is_some_and(|s| children::mounts_admin_token(&s));
    if admin_mounted {
        secret_names.insert(admin_secret);
    } else {
        match ensure_admin_secret(client, org).await {
            Ok(secret) => {
                secret_names.insert(admin_secret);
                secrets.push(secret);
            }
            // Queue administration stays unavailable; mail flows. Tried again next time.
            Err(e) => {
                tracing::warn!(namespace = %ns, organization = %name, "no admin token Secret: {e}")
            }
        }
    }
    let now = Time((ctx.clock)());

    // The store may lag behind the object that triggered this reconcile.
    let mut organizations = owned(&organizations);
    match organizations.iter_mut().find(|o| o.name_any() == name) {
        Some(o) => *o = org.clone(),
        None => organizations.push(org.clone()),
    }
    let (settings, ranges, routes) = (owned(&settings), owned(&ranges), owned(&routes));
    let rendered = render(
        &ns,
        Objects {
            organizations: &organizations,
            settings: &settings,
            ranges: &ranges,
            routes: &routes,
            secrets: &secret_names,
        },
        &ctx.settings.env,
    );
    let old_status = org.status.clone();
    let rendered = match rendered {
        Ok(mut r) => {
            r.findings
                .extend(crate::render::dkim_key_findings(org, &secrets));
            r.findings.sort();
            r
        }
        Err(e) => {
            // Children stay as they are: the config in force keeps working.
            let new = status::organization_failed(org, &e.to_string(), &now);
            record(
                ctx,
                org,
                old_status.as_ref(),
                &new,
                &[watched(DEGRADED, "True", false)],
            )
            .await?;
            return Ok(Action::requeue(ctx.settings.settled_requeue));
        }
    };

    // Children.
    let relay_name = identity::relay_name(&name);
    let existing = stores
        .stateful_sets
        .get(&ObjectRef::new(&identity::stateful_set_name(&name)).within(&ns))
        .map(|d| d.as_ref().clone());
    let old_config_map = stores
        .config_maps
        .get(&ObjectRef::new(&children::config_map_name(&name)).within(&ns))
        .map(|c| c.as_ref().clone());
    // Key by key, as the kubelet will mount them; the running pods' Secrets stay.
    let mounts = children::secret_mounts(org, &routes, &secrets, existing.as_ref());
    let mounted = mounts.mounted;
    let secrets_hash = children::secrets_hash(&mounted, &secrets);
    let mut problems: Vec<Problem> = mounts
        .missing
        .iter()
        .map(|m| Problem::new("SecretKeyMissing", m.message()))
        .collect();
    problems.extend(refusals(org, &ctx.settings));
    let allowed = within_bounds(org, &mut problems, existing.as_ref(), &stores.services);
    let mut built = children::build(
        &allowed,
        &rendered.config,
        &mounted,
        &secrets_hash,
        &ctx.settings.defaults,
    );
    // Claim templates never change (the API server refuses it; `within_bounds` keeps the
    // spool): a StatefulSet made before claims carried the Organization's UID keeps
    // claim templates without it.
    let labelled = |s: &StatefulSet| {
        s.spec.volume_claim_templates.iter().flatten().any(|c| {
            c.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(children::ORGANIZATION_UID_LABEL))
        })
    };
    if existing.as_ref().is_some_and(|s| !labelled(s)) {
        for claim in built
            .stateful_set
            .spec
            .volume_claim_templates
            .iter_mut()
            .flatten()
        {
            if let Some(labels) = claim.metadata.labels.as_mut() {
                labels.remove(children::ORGANIZATION_UID_LABEL);
            }
        }
    }
    // Claims of an earlier Organization of this name: no relay pod of this one may run on
    // them (the StatefulSet would take them by name), so the relay stops below the first.
    let foreign = drain::foreign_claims(org, &owned(&in_namespace(&stores.claims, &ns)));
    if !foreign.is_empty() {
        let list: Vec<&str> = foreign.iter().map(|(_, c)| c.as_str()).collect();
        problems.insert(
            0,
            Problem::new(
                "ForeignSpoolClaim",
                format!(
                    "spool claims {} were made for an earlier Organization named {name} (label {} or creation time) and may hold its mail: no relay pod of this Organization runs on them; deliver their mail with a drain Job and delete them (see deploy/README.md), and the relay starts",
                    list.join(", "),
                    children::ORGANIZATION_UID_LABEL
                ),
            ),
        );
        if let Some(first) = foreign.iter().filter_map(|(o, _)| *o).min() {
            let replicas = built.stateful_set.spec.replicas.unwrap_or(1);
            let capped = replicas.min(i32::try_from(first).unwrap_or(i32::MAX));
            built.stateful_set.spec.replicas = Some(capped);
        }
    }
    let mut failed = None;
    ensure_or_note(
        client,
        &stores.config_maps,
        &built.config_map,
        &mut problems,
        &mut failed,
    )
    .await;
    // The headless Service first: the StatefulSet names it.
    ensure_or_note(
        client,
        &stores.services,
        &built.pods_service,
        &mut problems,
        &mut failed,
    )
    .await;
    let stateful_set = ensure_or_note(
        client,
        &stores.stateful_sets,
        &built.stateful_set,
        &mut problems,
        &mut failed,
    )
    .await;
    ensure_or_note(
        client,
        &stores.services,
        &built.service,
        &mut problems,
        &mut failed,
    )
    .await;
    ensure_or_note(client, &stores.pdbs, &built.pdb, &mut problems, &mut failed).await;
    ensure_or_note(
        client,
        &stores.network_policies,
        &built.network_policy,
        &mut problems,
        &mut failed,
    )
    .await;
    ensure_or_note(
        client,
        &stores.network_policies,
        &built.drain_network_policy,
        &mut problems,
        &mut failed,
    )
    .await;
    let desired = allowed.spec.relay.replicas.unwrap_or(1).max(1);
    let rollout = status::Rollout::of(stateful_set.as_ref());
    let replaced = replace_deployment(ctx, org, &ns, &relay_name, &rollout, desired).await;
    if let Err(e) = replaced {
        problems.push(Problem::new("DeploymentNotReplaced", e.to_string()));
        failed.get_or_insert(e);
    }
    let reports = pod_reports(
        ctx,
        &ns,
        stateful_set.as_ref(),
        rendered.config.admin_listen.port(),
    )
    .await;
    let wanted_content = children::content_hash_in_pods(&rendered.config, &mounted, &secrets);
    nudge_pods(ctx, &ns, &reports, &rendered.config.hash, &wanted_content).await;
    let draining = drain_claims(
        ctx,
        org,
        &ns,
        Some(u32::try_from(desired).unwrap_or(1)),
        stateful_set.as_ref().map(|s| &s.spec.template),
        rendered.config.admin_listen.port(),
        &mut problems,
    )
    .await
    .draining;

    // Status of the Organization, then the Events that announce it.
    let mut new = status::organization_rendered(
        org,
        &rendered.config,
        &rendered.findings,
        status::Relay {
            stateful_set: stateful_set.as_ref(),
            ephemeral_spool: children::ephemeral_spool(&allowed),
            reports: &reports,
            content_hash: Some(&wanted_content),
        },
        &problems,
        &now,
    );
    status::set_condition(
        &mut new.conditions,
        status::claims_pending(&draining),
        org.metadata.generation,
        &now,
    );
    new.draining = draining;
    let changed = old_status.as_ref() != Some(&new);
    if changed {
        write_status(client, org, &new).await?;
    }
    // The audit log: what changed first, then what it did to the conditions.
    announce_changes(
        ctx,
        org,
        old_status.as_ref(),
        &rendered.config.hash,
        existing.as_ref(),
        stateful_set.is_some(),
        old_config_map.as_ref(),
        &mounted,
        &secrets_hash,
    )
    .await;
    if changed {
        let before = old_status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for w in [
            watched(status::READY, "False", true),
            watched(DEGRADED, "True", false),
            watched(status::SPOOL_EPHEMERAL, "True", false),
        ] {
            publish_if_changed(ctx, org, before, &new.conditions, &w).await;
        }
        // The audit log's last word on a config: when every relay runs it. The steps on
        // the way (pods still on the old hash) are status only: they are expected.
        if let Some(now) = status::condition(&new.conditions, status::IN_FORCE)
            && now.status == "True"
            && status::condition(before, status::IN_FORCE)
                .is_none_or(|b| (&b.status, &b.message) != (&now.status, &now.message))
        {
            publish(ctx, org, EventType::Normal, "ConfigInForce", &now.message).await;
        }
    }
    ctx.metrics.config_in_force(
        &ns,
        &name,
        status::condition(&new.conditions, status::IN_FORCE).is_some_and(|c| c.status == "True"),
    );
    // Settled once rolled out and in force on every ready pod (the kubelet refreshes
    // ConfigMap volumes within a minute or two; until then come back soon).
    let settled = new.draining.is_empty()
        && status::condition(&new.conditions, status::PROGRESSING)
            .is_some_and(|c| c.status == "False")
        && status::condition(&new.conditions, status::IN_FORCE).is_some_and(|c| c.status == "True");

    // Status of the other kinds.
    for s in &settings {
        let new = status::setting(s, &rendered.config, &rendered.findings, &now);
        record(
            ctx,
            s,
            s.status.as_ref(),
            &new,
            &[watched(ACCEPTED, "False", true)],
        )
        .await?;
    }
    for r in &ranges {
        let new = status::range(r, &rendered.findings, &now);
        record(
            ctx,
            r,
            r.status.as_ref(),
            &new,
            &[watched(ACCEPTED, "False", true)],
        )
        .await?;
    }
    let interval =
        SignedDuration::try_from(ctx.settings.probe_interval).unwrap_or(SignedDuration::MAX);
    for route in &routes {
        let old = route.status.as_ref();
        let due = old.is_none_or(|s| {
            s.observed_generation != route.metadata.generation
                || s.last_probe_time
                    .as_ref()
                    .is_none_or(|t| t.0.checked_add(interval).is_ok_and(|due| due <= now.0))
        });
        let qualified = format!("{ns}/{}", route.name_any());
        let probe = match rendered.config.routes.iter().find(|r| r.name == qualified) {
            Some(cfg) if due => {
                let cfg =
                    with_local_ca(cfg, route, &secrets, ctx.settings.probe_ca_dir.as_deref()).await;
                let results = ctx.prober.probe(&cfg, &rendered.config.delivery).await;
                if !results.is_empty() {
                    let verified = results.iter().all(|(_, r)| r.is_ok());
                    ctx.metrics.route_tls(&ns, &qualified, verified);
                }
                (!results.is_empty()).then_some(results)
            }
            _ => None,
        };
        let refused_by: Vec<String> = reports
            .iter()
            .filter(|r| {
                r.running
                    .as_ref()
                    .is_ok_and(|run| run.auth_refused.contains(&qualified))
            })
            .map(|r| r.pod.clone())
            .collect();
        let new = status::route(route, &rendered.findings, probe.as_ref(), &refused_by, &now);
        record(
            ctx,
            route,
            old,
            &new,
            &[
                watched(ACCEPTED, "False", true),
                watched(TLS_VERIFIED, "False", true),
                watched(status::CREDENTIALS_ACCEPTED, "False", true),
            ],
        )
        .await?;
    }

    if let Some(e) = failed {
        // Status says what the API server refused; retry with backoff.
        return Err(e);
    }
    Ok(Action::requeue(if settled {
        ctx.settings
            .settled_requeue
            .min(ctx.settings.probe_interval)
    } else {
        ctx.settings.rollout_requeue
    }))
}

/// The audit log of what the reconcile changed: a new config, a new relay, new Secrets.
#[allow(clippy::too_many_arguments)]
pub(super) async fn announce_changes<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    old_status: Option<&crds::OrganizationStatus>,
    new_hash: &str,
    existing: Option<&StatefulSet>,
    deployed: bool,
    old_config_map: Option<&ConfigMap>,
    mounted: &[children::MountedSecret],
    secrets_hash: &str,
) {
    match old_status.and_then(|s| s.config_hash.as_deref()) {
        Some(old) if old == new_hash => {}
        Some(old) => {
            let note = format!(
                "relay config changed from {} to {}; relays reload it without restarting",
                short(old),
                short(new_hash)
            );
            publish(ctx, org, EventType::Normal, "ConfigUpdated", &note).await
        }
        None => {
            let note = format!("relay config {} applied (first version)", short(new_hash));
            publish(ctx, org, EventType::Normal, "ConfigUpdated", &note).await
        }
    }
    if existing.is_none() && deployed {
        let note = format!(
            "created StatefulSet {} with {} replica(s), each with its own spool",
            identity::stateful_set_name(&org.name_any()),
            org.spec.relay.replicas.unwrap_or(1).max(1)
        );
        publish(ctx, org, EventType::Normal, "RelayCreated", &note).await
    }
    let old_secrets_hash = old_config_map
        .and_then(|c| c.metadata.annotations.as_ref())
        .and_then(|a| a.get(children::SECRETS_HASH_ANNOTATION));
    if let Some(old) = old_secrets_hash
        && old != secrets_hash
    {
        // The admin token is not in the hash (see `children::secrets_hash`).
        let names: Vec<&str> = mounted
            .iter()
            .filter(|m| m.usage != children::SecretUse::Admin)
            .map(|m| m.name.as_str())
            .collect();
        let note = format!(
            "mounted Secrets [{}] changed (hash {} to {}): relays reload the files without restarting once the kubelet has refreshed them",
            names.join(", "),
            short(old),
            short(secrets_hash)
        );
        publish(ctx, org, EventType::Normal, "SecretsChanged", &note).await
    }
}

/// Deletes the Deployment that ran this relay before StatefulSets, once the StatefulSet
/// has every desired pod ready (so clients are served throughout). Only a Deployment
/// this Organization controls is touched. Its spool claim, if it had one, stays: it may
/// hold queued mail (see `deploy/README.md`).
pub(super) async fn replace_deployment<P: TlsProber>(
    ctx: &Context<P>,
    org: &Organization,
    ns: &str,
    name: &str,
    rollout: &status::Rollout,
    desired: i32,
) -> Result<(), Error> {
    let Some(old) = ctx.stores.deployments.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let ours = old
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == org.metadata.uid.as_ref());
    if !ours || old.metadata.deletion_timestamp.is_some() || !rollout.complete(desired) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Delete {
                kind: "Deployment",
                namespace: ns.into(),
                name: name.into(),
                source,
            });
        }
    }
    let claim = old
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    let set = identity::stateful_set_name(&org.name_any());
    let (kind, note) = match claim {
        Some(claim) => (
            EventType::Warning,
            format!(
                "replaced Deployment {name} by StatefulSet {set}; its spool claim {claim} is kept: drain its queue before deleting it"
            ),
        ),
        None => (
            EventType::Normal,
            format!("replaced Deployment {name} by StatefulSet {set}"),
        ),
    };
    publish(ctx, org, kind, "DeploymentReplaced", &note).await;
    Ok(())
}

/// Annotation on a relay pod: the content hash of the config and files it should load.
/// Writing it makes the kubelet sync the pod at once, and a sync refreshes the pod's
/// ConfigMap and Secret volumes: a change is in force within seconds, instead of after
/// the kubelet's periodic sync (a minute or more). The pod template is not touched, so
/// nothing restarts.
pub const WANTS_ANNOTATION: &str = "smtprelay.dev/wants-content-hash";

/// Annotates each ready relay pod that reports another config (or older Secret files)
/// than `hash` / `content_hash` with [`WANTS_ANNOTATION`], once per content hash. Only
/// that annotation is applied (server-side, the operator's field manager). A pod that
/// refuses the annotation is logged: its kubelet will still refresh the files later.
pub(super) async fn nudge_pods<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    reports: &[PodReport],
    hash: &str,
    content_hash: &str,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for r in reports {
        let Ok(run) = &r.running else { continue };
        let behind = run.hash != hash
            || run
                .content_hash
                .as_deref()
                .is_some_and(|c| c != content_hash);
        if !behind {
            continue;
        }
        let nudged = ctx
            .stores
            .pods
            .get(&ObjectRef::new(&r.pod).within(ns))
            .is_some_and(|p| {
                p.annotations().get(WANTS_ANNOTATION).map(String::as_str) == Some(content_hash)
            });
        if nudged {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": r.pod, "namespace": ns,
                "annotations": {WANTS_ANNOTATION: content_hash}},
        });
        if let Err(e) = api
            .patch(
                &r.pod,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            tracing::warn!(namespace = %ns, pod = %r.pod, "cannot annotate the relay pod to refresh its config now: {e}");
        }
    }
}

/// What every ready relay pod of `stateful_set` says about its config, asked
/// concurrently. Only pods the StatefulSet owns (its controller owner reference, by UID)
/// are asked: a pod of the tenant's own with the relay's labels is not a relay, and its
/// address is not the operator's to connect to.
pub(super) async fn pod_reports<P: TlsProber>(
    ctx: &Context<P>,
    ns: &str,
    stateful_set: Option<&StatefulSet>,
    admin_port: u16,
) -> Vec<PodReport> {
    let Some(owner) = stateful_set.and_then(|s| s.uid()) else {
        return Vec::new();
    };
    let ready: Vec<(String, std::net::IpAddr)> = in_namespace(&ctx.stores.pods, ns)
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.owner_references().iter().any(|r| {
                    r.kind == "StatefulSet" && r.controller == Some(true) && r.uid == owner
                })
        })
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_deref()?.parse().ok()?;
            ready.then(|| (p.name_any(), ip))
        })
        .collect();
    let asks = ready.into_iter().map(|(pod, ip)| async move {
        let running = ctx.pod_reports.running(ip, admin_port).await;
        PodReport { pod, running }
    });
    futures::future::join_all(asks).await
}

/// The route as the operator probes it: its CA file (a Secret mount path in relay pods) is
/// written from the Secret's `ca.crt` under `dir`. If that fails the path stays as it is
/// and the probe reports the unreadable file, which is what the relay would hit too.
pub(super) async fn with_local_ca(
    cfg: &RouteConfig,
    route: &MailRoute,
    secrets: &[Secret],
    dir: Option<&std::path::Path>,
) -> RouteConfig {
    let mut cfg = cfg.clone();
    let (Some(dir), Some(secret_ref)) = (dir, route.spec.tls.trusted_ca_secret_ref.as_ref()) else {
        return cfg;
    };
    if cfg.tls.extra_ca_file.is_none() {
        return cfg;
    }
    let Some(ca) = secrets
        .iter()
        .find(|s| s.name_any() == secret_ref.name)
        .and_then(|s| crate::secrets::secret_value(s, "ca.crt"))
    else {
        return cfg;
    };
    let folder = dir
        .join(route.namespace().unwrap_or_default())
        .join(&secret_ref.name);
    let file = folder.join("ca.crt");
    let written = async {
        tokio::fs::create_dir_all(&folder).await?;
        tokio::fs::write(&file, ca).await
    }
    .await;
    match written {
        Ok(()) => cfg.tls.extra_ca_file = Some(file.to_string_lossy().into_owned()),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "could not write CA file for probing")
        }
    }
    cfg
}

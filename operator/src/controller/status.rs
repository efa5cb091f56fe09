//! Status of every kind, computed by pure functions from what reconcile saw.
//!
//! Each function takes the object's old status, what render (and the StatefulSet, and the
//! TLS prober) said, and the current time, and returns the new status. A condition keeps
//! its `lastTransitionTime` while its status stays the same, so a reconcile that changes
//! nothing computes a status equal to the old one, and the controller writes (and emits
//! Events) only when they differ. This module does not talk to the API server.

use crds::route::HostProbe;
use crds::{
    Condition, IpAllowRange, IpAllowRangeStatus, MailRoute, MailRouteStatus, Organization,
    OrganizationStatus, SmtpRelaySetting, SmtpRelaySettingStatus,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use relay::config::RelayConfig;

use super::pod_reports::Running;
use super::probe::verdict;
use crate::render::{Finding, ObjectKind, parse_network};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const ACCEPTED: &str = "Accepted";
pub const TLS_VERIFIED: &str = "TlsConnectionVerified";
/// MailRoute condition of a route with `auth`: whether its hosts accept the relay's login.
pub const CREDENTIALS_ACCEPTED: &str = "CredentialsAccepted";
pub const IN_FORCE: &str = "InForce";
/// A Warning condition: the spool does not outlive its pod.
pub const SPOOL_EPHEMERAL: &str = "SpoolEphemeral";
/// True while a spool claim no relay pod serves waits to be drained (its mail handed
/// over to the remaining relays, or delivered); what it waits for in the message.
pub const SPOOL_CLAIM_PENDING: &str = "SpoolClaimPending";
/// True while a deleted Organization waits for something before it goes; the reason says
/// what (the relay to stop, drains, a failed drain, claims left with their mail).
pub const DELETING: &str = "Deleting";

/// `SpoolClaimPending` from the claims being drained.
pub fn claims_pending(draining: &[crds::DrainingClaim]) -> Want {
    if draining.is_empty() {
        return Want::new(
            SPOOL_CLAIM_PENDING,
            false,
            "NoClaimPending",
            "no spool claim waits to be drained".into(),
        );
    }
    let failed = draining.iter().any(|d| d.phase == "Failed");
    let list: Vec<String> = draining
        .iter()
        .map(|d| format!("{} (Job {}, {})", d.claim, d.job, d.phase))
        .collect();
    Want::new(
        SPOOL_CLAIM_PENDING,
        true,
        if failed { "DrainFailed" } else { "Draining" },
        format!(
            "spool claims of relay pods that are gone hold mail until drained: {}",
            list.join(", ")
        ),
    )
}

/// What reconcile saw of the running relay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relay<'a> {
    /// The StatefulSet as the API server holds it (none: not created or refused).
    pub stateful_set: Option<&'a StatefulSet>,
    /// The spool is an emptyDir.
    pub ephemeral_spool: bool,
    /// The answers of the ready relay pods.
    pub reports: &'a [PodReport],
    /// The content hash pods report once their Secret files are current (`None`: not
    /// compared).
    pub content_hash: Option<&'a str>,
}

/// What one ready relay pod said about the config it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    pub pod: String,
    /// The config in force (`smtprelay_config_info{hash=...,content_hash=...}`), or why the
    /// pod could not be asked.
    pub running: Result<Running, String>,
}

/// `InForce`: True only when every ready pod reports the hash of the latest config (and,
/// when `content_hash` is given and the pod reports one, the content hash of the current
/// Secret files). False with `Rollout` while a pod still runs an older config or older
/// files (the kubelet has not yet refreshed its volumes, or the pod refused the new
/// config), `Pending` while no pod is ready or a pod did not answer.
pub fn in_force(
    config: &RelayConfig,
    content_hash: Option<&str>,
    rollout: &Rollout,
    reports: &[PodReport],
) -> Want {
    let hash = short(&config.hash);
    if !matches!(rollout, Rollout::Observed { ready, .. } if *ready > 0) || reports.is_empty() {
        return Want::new(
            IN_FORCE,
            false,
            "Pending",
            format!("no ready relay pod reports config {hash} yet"),
        );
    }
    let refusing: Vec<String> = refusals(config, reports)
        .into_iter()
        .map(|(pod, _)| pod)
        .collect();
    if !refusing.is_empty() {
        return Want::new(
            IN_FORCE,
            false,
            "Refused",
            format!(
                "config {hash} was refused by {} (see Degraded); the config they had stays in force there",
                refusing.join(", ")
            ),
        );
    }
    let mut behind = Vec::new();
    let mut silent = Vec::new();
    for r in reports {
        match &r.running {
            Ok(run) if run.hash != config.hash => {
                behind.push(format!("{} runs {}", r.pod, short(&run.hash)))
            }
            Ok(Running {
                content_hash: Some(c),
                ..
            }) if content_hash.is_some_and(|want| want != c) => behind.push(format!(
                "{} has not yet loaded the current Secret files",
                r.pod
            )),
            Ok(_) => {}
            Err(e) => silent.push(format!("{}: {e}", r.pod)),
        }
    }
    if !behind.is_empty() {
        return Want::new(
            IN_FORCE,
            false,
            "Rollout",
            format!(
                "config {hash} is not yet in force on every ready pod: {}",
                behind.join(", ")
            ),
        );
    }
    if !silent.is_empty() {
        return Want::new(
            IN_FORCE,
            false,
            "Pending",
            format!(
                "could not learn the config in force from every ready pod: {}",
                silent.join("; ")
            ),
        );
    }
    Want::new(
        IN_FORCE,
        true,
        "AllPodsReport",
        format!("every ready relay pod reports config {hash}"),
    )
}

/// The pods that refused the latest config (`config`), with why: a pod publishes the
/// last document it refused; it counts when that is the latest (by hash), or when it could
/// not read a document at all while it still runs an older one.
pub fn refusals(config: &RelayConfig, reports: &[PodReport]) -> Vec<(String, String)> {
    reports
        .iter()
        .filter_map(|r| {
            let run = r.running.as_ref().ok()?;
            let (hash, reason) = run.refused.as_ref()?;
            let latest = *hash == config.hash || (hash.is_empty() && run.hash != config.hash);
            latest.then(|| (r.pod.clone(), reason.clone()))
        })
        .collect()
}

/// Findings that describe a choice the author made on purpose: the object is still
/// accepted, the reason says what is unusual about it.
const ADVISORY_FINDINGS: &[&str] = &["TlsChecksRelaxed"];

/// One condition as reconcile wants it, before times and generations are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    /// `None` is `Unknown`: not yet known (a rollout nobody has observed).
    pub status: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(type_: &'static str, status: bool, reason: &str, message: String) -> Self {
        Self {
            type_,
            status: Some(status),
            reason: reason.into(),
            message,
        }
    }

    /// A condition whose status is `Unknown`.
    pub fn unknown(type_: &'static str, reason: &str, message: String) -> Self {
        Self {
            type_,
            status: None,
            reason: reason.into(),
            message,
        }
    }
}

/// Replaces (or adds) the condition `want.type_` in `conditions`, keeping its transition
/// time when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    want: Want,
    generation: Option<i64>,
    now: &Time,
) {
    let status = match want.status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == want.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let new = Condition {
        type_: want.type_.into(),
        status: status.into(),
        reason: want.reason,
        message: want.message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Something that keeps the relay from being what the Organization asks for: a render
/// finding, a child the API server refused, a rollout that stopped, a refused image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &str, message: String) -> Self {
        Self {
            reason: reason.into(),
            message,
        }
    }
}

/// What the StatefulSet says about the rollout, trusted only once the StatefulSet
/// controller has observed the generation the last apply produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// No StatefulSet (not created, or its apply was refused).
    Absent,
    /// The StatefulSet controller has not yet observed the latest spec: the replica
    /// counts describe the previous one.
    Pending { generation: i64 },
    /// Observed: counts are current.
    Observed {
        available: i32,
        updated: i32,
        ready: i32,
    },
}

impl Rollout {
    pub fn of(stateful_set: Option<&StatefulSet>) -> Self {
        let Some(s) = stateful_set else {
            return Rollout::Absent;
        };
        let generation = s.metadata.generation.unwrap_or(0);
        let Some(status) = s.status.as_ref() else {
            return Rollout::Pending { generation };
        };
        if status.observed_generation.unwrap_or(0) < generation {
            return Rollout::Pending { generation };
        }
        Rollout::Observed {
            available: status
                .available_replicas
                .unwrap_or(status.ready_replicas.unwrap_or(0)),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
        }
    }

    /// True when every desired replica of the current generation is ready.
    pub fn complete(&self, desired: i32) -> bool {
        matches!(self, Rollout::Observed { available, updated, .. } if *available >= desired && *updated >= desired)
    }
}

/// Status of an Organization whose objects rendered. Ready: every desired replica is
/// available (as observed for the current StatefulSet generation). Progressing: a rollout
/// is under way or not yet observed. Degraded: a finding about the Organization, a child
/// the API server refused, a refused image, Service type or spool change. InForce: see
/// [`in_force`]. SpoolEphemeral: a Warning while the spool is an emptyDir. Messages carry
/// no replica counts (those are `readyReplicas`), so a rollout step is not a new Ready
/// message, nor an Event.
pub fn organization_rendered(
    org: &Organization,
    config: &RelayConfig,
    findings: &[Finding],
    relay: Relay<'_>,
    problems: &[Problem],
    now: &Time,
) -> OrganizationStatus {
    let Relay {
        stateful_set,
        ephemeral_spool,
        reports,
        content_hash,
    } = relay;
    let old = org.status.clone().unwrap_or_default();
    let generation = org.metadata.generation;
    let desired = org.spec.relay.replicas.unwrap_or(1).max(1);
    let hash = short(&config.hash);
    let rollout = Rollout::of(stateful_set);

    let mut conditions = old.conditions.clone();
    let (ready, progressing) = match &rollout {
        Rollout::Absent => (
            Some(Want::new(
                READY,
                false,
                "RelayMissing",
                "the relay StatefulSet does not exist".into(),
            )),
            Want::new(
                PROGRESSING,
                false,
                "NoStatefulSet",
                "no relay StatefulSet to roll out".into(),
            ),
        ),
        Rollout::Pending { generation } => (
            // The previous pods still serve: Ready stays what it was until the new
            // generation is observed.
            condition(&old.conditions, READY).is_none().then(|| {
                Want::unknown(
                    READY,
                    "RolloutPending",
                    format!("config {hash} applied; waiting for the relay to start"),
                )
            }),
            Want::new(
                PROGRESSING,
                true,
                "RolloutPending",
                format!(
                    "waiting for the StatefulSet controller to observe generation {generation}"
                ),
            ),
        ),
        Rollout::Observed {
            available, updated, ..
        } => {
            let ready = if *available >= desired {
                Want::new(
                    READY,
                    true,
                    "RelayAvailable",
                    format!("relay available; config {hash} applied"),
                )
            } else {
                Want::new(
                    READY,
                    false,
                    "RelayUnavailable",
                    format!("fewer relay replicas available than desired; config {hash} applied"),
                )
            };
            let progressing = if *updated >= desired && *available >= desired {
                Want::new(
                    PROGRESSING,
                    false,
                    "RolloutComplete",
                    format!("config {hash} rolled out"),
                )
            } else {
                Want::new(
                    PROGRESSING,
                    true,
                    "RollingOut",
                    format!("rolling out the relay with config {hash}"),
                )
            };
            (Some(ready), progressing)
        }
    };
    if let Some(ready) = ready {
        set_condition(&mut conditions, ready, generation, now);
    }
    set_condition(&mut conditions, progressing, generation, now);

    let mut all: Vec<Problem> = findings
        .iter()
        .filter(|f| f.kind == ObjectKind::Organization)
        .map(|f| Problem::new(f.reason, f.message.clone()))
        .collect();
    all.extend(problems.iter().cloned());
    for (pod, reason) in refusals(config, reports) {
        all.push(Problem::new(
            "ConfigRefused",
            format!("relay pod {pod} refused config {hash}: {reason}"),
        ));
    }
    // A key the Secret has but a relay cannot use (unreadable file, not a key): its mail
    // is deferred, never sent unsigned.
    let mut unreadable: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in reports {
        if let Ok(run) = &r.running {
            for domain in &run.dkim_unreadable {
                unreadable.entry(domain).or_default().push(&r.pod);
            }
        }
    }
    for (domain, pods) in unreadable {
        all.push(Problem::new(
            "DkimKeyUnreadable",
            format!(
                "relay pod(s) {} cannot sign for {domain}: its DKIM key cannot be read or parsed; mail from {domain} waits in the queue, unsigned mail is never sent",
                pods.join(", ")
            ),
        ));
    }
    // A content filter a relay cannot reach: its messages get the filter's onUnavailable
    // answer (by default 451 4.7.1, so clients retry) until it answers again.
    let mut unreachable: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in reports {
        if let Ok(run) = &r.running {
            for filter in &run.filters_unreachable {
                unreachable.entry(filter).or_default().push(&r.pod);
            }
        }
    }
    for (filter, pods) in unreachable {
        let answer = org
            .spec
            .content_filters
            .iter()
            .find(|f| f.name == filter)
            .map(|f| match f.on_unavailable {
                crds::organization::OnUnavailable::Accept => {
                    "messages go on unfiltered (onUnavailable: Accept)"
                }
                crds::organization::OnUnavailable::TempFail => {
                    "messages are answered 451 4.7.1 and clients retry (onUnavailable: TempFail)"
                }
            })
            .unwrap_or("its onUnavailable answer applies");
        all.push(Problem::new(
            "ContentFilterUnreachable",
            format!(
                "relay pod(s) {} cannot reach content filter {filter}: {answer} until it answers again",
                pods.join(", ")
            ),
        ));
    }
    set_condition(
        &mut conditions,
        in_force(config, content_hash, &rollout, reports),
        generation,
        now,
    );
    if ephemeral_spool {
        set_condition(
            &mut conditions,
            Want::new(
                SPOOL_EPHEMERAL,
                true,
                "EmptyDirSpool",
                "relay.spool.ephemeral is set: the spool is an emptyDir, so mail acknowledged but not yet delivered is lost whenever a relay pod goes away (rollout, node drain, eviction)".into(),
            ),
            generation,
            now,
        );
    } else {
        conditions.retain(|c| c.type_ != SPOOL_EPHEMERAL);
    }
    set_condition(
        &mut conditions,
        match all.as_slice() {
            [] => Want::new(DEGRADED, false, "AsExpected", "no problems found".into()),
            [first, ..] => Want::new(
                DEGRADED,
                true,
                &first.reason,
                all.iter()
                    .map(|p| format!("{}: {}", p.reason, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        },
        generation,
        now,
    );
    let ready_replicas = match rollout {
        Rollout::Observed { ready, .. } => Some(ready),
        Rollout::Pending { .. } => old.ready_replicas,
        Rollout::Absent => None,
    };
    OrganizationStatus {
        conditions,
        observed_generation: generation,
        config_hash: Some(config.hash.clone()),
        ready_replicas,
        // The controller fills it in from the drain Jobs.
        draining: old.draining,
    }
}

/// Status of an Organization whose objects do not render: Degraded with the error; the
/// previous config (and its hash) stays in force, so Ready is left as it was.
pub fn organization_failed(org: &Organization, error: &str, now: &Time) -> OrganizationStatus {
    let old = org.status.clone().unwrap_or_default();
    let generation = org.metadata.generation;
    let mut conditions = old.conditions.clone();
    let kept = match &old.config_hash {
        Some(h) => format!("; config {} stays in force", short(h)),
        None => "; no config has been applied yet".into(),
    };
    set_condition(
        &mut conditions,
        Want::new(DEGRADED, true, "RenderFailed", format!("{error}{kept}")),
        generation,
        now,
    );
    OrganizationStatus {
        conditions,
        observed_generation: generation,
        ..old
    }
}

/// The `Accepted` condition of one object from the findings about it.
fn accepted(kind: ObjectKind, name: &str, findings: &[Finding], what: &str) -> Want {
    let mine: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.kind == kind && f.name == name)
        .collect();
    match mine.as_slice() {
        [] => Want::new(
            ACCEPTED,
            true,
            "Rendered",
            format!("{what} is part of the relay configuration"),
        ),
        [first, ..] => Want::new(
            ACCEPTED,
            mine.iter().all(|f| ADVISORY_FINDINGS.contains(&f.reason)),
            first.reason,
            mine.iter()
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// Status of a SmtpRelaySetting.
pub fn setting(
    setting: &SmtpRelaySetting,
    config: &RelayConfig,
    findings: &[Finding],
    now: &Time,
) -> SmtpRelaySettingStatus {
    let old = setting.status.clone().unwrap_or_default();
    let name = setting.name_any();
    let qualified = format!("{}/{}", setting.namespace().unwrap_or_default(), name);
    let matched = config
        .settings
        .iter()
        .find(|s| s.name == qualified)
        .and_then(|s| s.ip_ranges.as_ref())
        .map(|r| i32::try_from(r.len()).unwrap_or(i32::MAX));
    let mut conditions = old.conditions;
    set_condition(
        &mut conditions,
        accepted(ObjectKind::SmtpRelaySetting, &name, findings, "the setting"),
        setting.metadata.generation,
        now,
    );
    SmtpRelaySettingStatus {
        conditions,
        observed_generation: setting.metadata.generation,
        matched_ranges: matched,
    }
}

/// Status of an IpAllowRange.
pub fn range(range: &IpAllowRange, findings: &[Finding], now: &Time) -> IpAllowRangeStatus {
    let old = range.status.clone().unwrap_or_default();
    let name = range.name_any();
    let mut conditions = old.conditions;
    let want = if range.spec.enabled {
        accepted(ObjectKind::IpAllowRange, &name, findings, "the range")
    } else {
        Want::new(
            ACCEPTED,
            true,
            "Disabled",
            "the range is disabled (enabled: false) and allows nothing".into(),
        )
    };
    set_condition(&mut conditions, want, range.metadata.generation, now);
    IpAllowRangeStatus {
        conditions,
        observed_generation: range.metadata.generation,
        network: parse_network(&range.spec.cidr).map(|n| n.to_string()),
    }
}

/// Result of probing a route's hosts: `host:port` and the verifier's verdict.
pub type ProbeResults = Vec<(String, Result<(), String>)>;

/// Status of a MailRoute. `probe` is `Some` when the route's hosts were just probed; the
/// previous `TlsConnectionVerified` (and probe time) is kept otherwise.
pub fn route(
    route: &MailRoute,
    findings: &[Finding],
    probe: Option<&ProbeResults>,
    login_refused_by: &[String],
    now: &Time,
) -> MailRouteStatus {
    let old = route.status.clone().unwrap_or_default();
    let name = route.name_any();
    let generation = route.metadata.generation;
    let mut status = MailRouteStatus {
        conditions: old.conditions,
        observed_generation: generation,
        last_probe_time: old.last_probe_time,
        hosts: old.hosts,
    };
    set_condition(
        &mut status.conditions,
        accepted(ObjectKind::MailRoute, &name, findings, "the route"),
        generation,
        now,
    );
    if let Some(results) = probe {
        // Only the TLS verdict, in a form that stays the same while the failure does.
        let results: ProbeResults = results
            .iter()
            .map(|(host, r)| (host.clone(), r.clone().map_err(|e| verdict(&e))))
            .collect();
        let failed: Vec<String> = results
            .iter()
            .filter_map(|(host, r)| r.as_ref().err().map(|e| format!("{host}: {e}")))
            .collect();
        let want = if failed.is_empty() {
            let hosts: Vec<&str> = results.iter().map(|(h, _)| h.as_str()).collect();
            Want::new(
                TLS_VERIFIED,
                true,
                "Verified",
                format!("TLS verified for {}", hosts.join(", ")),
            )
        } else {
            Want::new(
                TLS_VERIFIED,
                false,
                "CertificateValidationFailed",
                failed.join("; "),
            )
        };
        set_condition(&mut status.conditions, want, generation, now);
        status.last_probe_time = Some(now.clone());
        status.hosts = results
            .iter()
            .map(|(host, r)| HostProbe {
                host: host.clone(),
                verified: r.is_ok(),
                message: match r {
                    Ok(()) => "verified".into(),
                    Err(e) => e.clone(),
                },
            })
            .collect();
    }
    // Only routes that log in have the condition.
    match &route.spec.auth {
        None => status
            .conditions
            .retain(|c| c.type_ != CREDENTIALS_ACCEPTED),
        Some(auth) => {
            let want = if login_refused_by.is_empty() {
                Want::new(
                    CREDENTIALS_ACCEPTED,
                    true,
                    "NotRefused",
                    "no relay pod reports its last login to the route's hosts refused".into(),
                )
            } else {
                Want::new(
                    CREDENTIALS_ACCEPTED,
                    false,
                    "CredentialsRefused",
                    format!(
                        "the route's hosts refused the last login (5xx to AUTH) of {}: its mail bounces with 5.7.8; check the credentials in Secret {}",
                        login_refused_by.join(", "),
                        auth.secret_ref.name
                    ),
                )
            };
            set_condition(&mut status.conditions, want, generation, now);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_only_moves_when_status_flips() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            Want::new(READY, false, "A", "a".into()),
            Some(1),
            &at(10),
        );
        set_condition(
            &mut c,
            Want::new(READY, false, "B", "b".into()),
            Some(2),
            &at(20),
        );
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(
            (c[0].reason.as_str(), c[0].observed_generation),
            ("B", Some(2))
        );
        set_condition(
            &mut c,
            Want::new(READY, true, "C", "c".into()),
            Some(2),
            &at(30),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].status.as_str(), c[0].last_transition_time.clone()),
            ("True", at(30))
        );
    }

    #[test]
    fn a_refused_login_is_a_false_credentials_condition_that_clears_once_one_goes_through() {
        let route: MailRoute = yaml_serde::from_str(
            r#"
apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {name: ses, namespace: acme, generation: 1}
spec:
  description: d
  match: {default: true}
  singleHost: {host: email-smtp.eu-west-1.amazonaws.com, port: 587}
  auth: {mechanism: Plain, secretRef: {name: ses-smtp}}
"#,
        )
        .unwrap();
        let refused = super::route(&route, &[], None, &["acme-relay-1".into()], &at(5));
        let c = condition(&refused.conditions, CREDENTIALS_ACCEPTED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "CredentialsRefused")
        );
        assert!(
            c.message.contains("acme-relay-1") && c.message.contains("Secret ses-smtp"),
            "{}",
            c.message
        );
        let mut later = route.clone();
        later.status = Some(refused);
        let fixed = super::route(&later, &[], None, &[], &at(9));
        let c = condition(&fixed.conditions, CREDENTIALS_ACCEPTED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "NotRefused")
        );
        // A route without auth has no such condition.
        let mut plain = later.clone();
        plain.spec.auth = None;
        plain.status = Some(fixed);
        let s = super::route(&plain, &[], None, &[], &at(10));
        assert!(condition(&s.conditions, CREDENTIALS_ACCEPTED).is_none());
    }

    #[test]
    fn probe_failure_names_each_failing_host() {
        let route: MailRoute = yaml_serde::from_str(
            r#"
apiVersion: smtprelay.dev/v1alpha1
kind: MailRoute
metadata: {name: partner, namespace: acme, generation: 4}
spec:
  description: d
  match: {recipientDomains: [partner.example]}
  singleHost: {host: mx.partner.example, port: 25}
"#,
        )
        .unwrap();
        let results: ProbeResults = vec![
            ("a.partner.example:25".into(), Ok(())),
            (
                "b.partner.example:25".into(),
                Err("invalid peer certificate: UnknownIssuer".into()),
            ),
        ];
        let s = super::route(&route, &[], Some(&results), &[], &at(5));
        let tls = condition(&s.conditions, TLS_VERIFIED).unwrap();
        assert_eq!(tls.status, "False");
        assert_eq!(tls.reason, "CertificateValidationFailed");
        assert_eq!(
            tls.message,
            "b.partner.example:25: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(s.last_probe_time, Some(at(5)));
        assert_eq!(s.hosts.len(), 2);
        assert!(s.hosts[0].verified && !s.hosts[1].verified);
        let accepted = condition(&s.conditions, ACCEPTED).unwrap();
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("True", "Rendered")
        );
        assert_eq!(s.observed_generation, Some(4));
    }

    fn org_and_config(replicas: i32) -> (Organization, RelayConfig, Vec<Finding>) {
        let org: Organization = yaml_serde::from_str(&format!(
            r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {{name: acme, namespace: acme, generation: 3}}
spec:
  domains: [acme.example]
  licenses: 1
  relay: {{replicas: {replicas}}}
"#
        ))
        .unwrap();
        let rendered = crate::render::render(
            "acme",
            crate::render::Objects {
                organizations: std::slice::from_ref(&org),
                settings: &[],
                ranges: &[],
                routes: &[],
                secrets: &Default::default(),
            },
            &crate::render::RenderEnv::pod(),
        )
        .unwrap();
        (org, rendered.config, rendered.findings)
    }

    fn stateful_set(generation: i64, status: serde_json::Value) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "acme-relay", "generation": generation},
            "spec": {"selector": {}, "template": {}, "serviceName": "acme-relay-pods"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn replicas_without_redis_degrade_and_rollout_is_progressing() {
        let (org, config, findings) = org_and_config(3);
        let rolling = stateful_set(
            2,
            serde_json::json!({"observedGeneration": 2, "availableReplicas": 2, "updatedReplicas": 3, "readyReplicas": 2}),
        );
        let s = organization_rendered(
            &org,
            &config,
            &findings,
            Relay {
                stateful_set: Some(&rolling),
                ephemeral_spool: false,
                reports: &[],
                content_hash: None,
            },
            &[],
            &at(1),
        );
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "RedisRequired")
        );
        assert!(
            degraded
                .message
                .starts_with("RedisRequired: relay.replicas is 3 but limitStore is Memory")
        );
        let ready = condition(&s.conditions, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message,
            format!(
                "fewer relay replicas available than desired; config {} applied",
                &config.hash[..12]
            )
        );
        assert_eq!(
            condition(&s.conditions, PROGRESSING).unwrap().status,
            "True"
        );
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.config_hash.as_deref(), Some(config.hash.as_str()));
    }

    #[test]
    fn counts_of_a_generation_not_yet_observed_are_not_trusted() {
        let (org, config, _) = org_and_config(1);
        // The apply made generation 5; the status still describes generation 4.
        let stale = stateful_set(
            5,
            serde_json::json!({"observedGeneration": 4, "availableReplicas": 1, "updatedReplicas": 1, "readyReplicas": 1}),
        );
        let s = organization_rendered(
            &org,
            &config,
            &[],
            Relay {
                stateful_set: Some(&stale),
                ephemeral_spool: false,
                reports: &[],
                content_hash: None,
            },
            &[],
            &at(1),
        );
        let progressing = condition(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RolloutPending")
        );
        assert_eq!(condition(&s.conditions, READY).unwrap().status, "Unknown");
    }

    #[test]
    fn render_failure_keeps_the_config_in_force() {
        let (mut org, config, _) = org_and_config(1);
        let ok = stateful_set(
            1,
            serde_json::json!({"observedGeneration": 1, "availableReplicas": 1, "updatedReplicas": 1}),
        );
        org.status = Some(organization_rendered(
            &org,
            &config,
            &[],
            Relay {
                stateful_set: Some(&ok),
                ephemeral_spool: false,
                reports: &[],
                content_hash: None,
            },
            &[],
            &at(1),
        ));
        let s = organization_failed(
            &org,
            "MailRoute a and MailRoute b are both default routes",
            &at(2),
        );
        assert_eq!(s.config_hash.as_deref(), Some(config.hash.as_str()));
        assert_eq!(condition(&s.conditions, READY).unwrap().status, "True");
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(degraded.reason, "RenderFailed");
        assert_eq!(
            degraded.message,
            format!(
                "MailRoute a and MailRoute b are both default routes; config {} stays in force",
                &config.hash[..12]
            )
        );
        assert_eq!(degraded.last_transition_time, at(2));
    }

    fn report(pod: &str, hash: &str) -> PodReport {
        PodReport {
            pod: pod.into(),
            running: Ok(Running {
                hash: hash.into(),
                content_hash: Some("files-1".into()),
                ..Default::default()
            }),
        }
    }

    /// The status of `org` rendered with `config`, its StatefulSet observed with two ready
    /// pods that answer `reports`.
    fn with_two_ready_pods(
        org: &Organization,
        config: &RelayConfig,
        reports: &[PodReport],
    ) -> OrganizationStatus {
        let ready = stateful_set(
            1,
            serde_json::json!({"observedGeneration": 1, "availableReplicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
        );
        organization_rendered(
            org,
            config,
            &[],
            Relay {
                stateful_set: Some(&ready),
                ephemeral_spool: false,
                reports,
                content_hash: None,
            },
            &[],
            &at(1),
        )
    }

    #[test]
    fn in_force_only_when_every_ready_pod_reports_the_latest_hash() {
        let (org, config, _) = org_and_config(1);
        let status = |reports: &[PodReport]| {
            let s = with_two_ready_pods(&org, &config, reports);
            let c = condition(&s.conditions, IN_FORCE).unwrap().clone();
            (c.status, c.reason, c.message)
        };
        let (st, reason, _) = status(&[
            report("acme-relay-0", &config.hash),
            report("acme-relay-1", &config.hash),
        ]);
        assert_eq!((st.as_str(), reason.as_str()), ("True", "AllPodsReport"));
        // The kubelet has not yet refreshed pod 1's ConfigMap volume.
        let (st, reason, message) = status(&[
            report("acme-relay-0", &config.hash),
            report("acme-relay-1", "0123456789abcdef"),
        ]);
        assert_eq!((st.as_str(), reason.as_str()), ("False", "Rollout"));
        assert!(
            message.ends_with("acme-relay-1 runs 0123456789ab"),
            "{message}"
        );
        let silent = PodReport {
            pod: "acme-relay-1".into(),
            running: Err("connection refused".into()),
        };
        let (st, reason, _) = status(&[report("acme-relay-0", &config.hash), silent]);
        assert_eq!((st.as_str(), reason.as_str()), ("False", "Pending"));
        let (st, reason, _) = status(&[]);
        assert_eq!((st.as_str(), reason.as_str()), ("False", "Pending"));
    }

    #[test]
    fn a_config_a_pod_refused_is_degraded_with_the_pods_reason() {
        let (org, config, _) = org_and_config(1);
        let refusing = |refused_hash: &str| PodReport {
            pod: "acme-relay-1".into(),
            running: Ok(Running {
                hash: "0ld".into(),
                content_hash: None,
                refused: Some((
                    refused_hash.into(),
                    "cannot read /etc/smtprelay/tls/tls.crt: No such file or directory".into(),
                )),
                ..Default::default()
            }),
        };
        let status = |reports: &[PodReport]| with_two_ready_pods(&org, &config, reports);
        let s = status(&[report("acme-relay-0", &config.hash), refusing(&config.hash)]);
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ConfigRefused")
        );
        assert_eq!(
            degraded.message,
            format!(
                "ConfigRefused: relay pod acme-relay-1 refused config {}: cannot read /etc/smtprelay/tls/tls.crt: No such file or directory",
                short(&config.hash)
            )
        );
        let in_force = condition(&s.conditions, IN_FORCE).unwrap();
        assert_eq!(
            (in_force.status.as_str(), in_force.reason.as_str()),
            ("False", "Refused")
        );
        assert!(
            in_force.message.contains("acme-relay-1"),
            "{}",
            in_force.message
        );
        // An older refusal (of a config since replaced) is not this config's problem.
        let s = status(&[report("acme-relay-0", &config.hash), refusing("5upers3ded")]);
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(degraded.status, "False");
        assert_eq!(
            condition(&s.conditions, IN_FORCE).unwrap().reason,
            "Rollout"
        );
    }

    #[test]
    fn a_dkim_key_a_pod_cannot_use_is_degraded_naming_the_domain_and_the_pods() {
        let (org, config, _) = org_and_config(1);
        let pod = |name: &str, unreadable: &[&str]| PodReport {
            pod: name.into(),
            running: Ok(Running {
                hash: config.hash.clone(),
                content_hash: None,
                dkim_unreadable: unreadable.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            }),
        };
        let status = |reports: &[PodReport]| with_two_ready_pods(&org, &config, reports);
        let s = status(&[
            pod("acme-relay-0", &["acme.example"]),
            pod("acme-relay-1", &["acme.example"]),
        ]);
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "DkimKeyUnreadable")
        );
        assert!(
            degraded
                .message
                .starts_with("DkimKeyUnreadable: relay pod(s) acme-relay-0, acme-relay-1 cannot sign for acme.example"),
            "{}",
            degraded.message
        );
        let s = status(&[pod("acme-relay-0", &[]), pod("acme-relay-1", &[])]);
        assert_eq!(condition(&s.conditions, DEGRADED).unwrap().status, "False");
    }

    #[test]
    fn a_content_filter_a_pod_cannot_reach_is_degraded_naming_the_filter_the_pods_and_the_answer() {
        let (mut org, config, _) = org_and_config(1);
        org.spec.content_filters = serde_json::from_value(serde_json::json!([
            {"name": "rspamd", "milter": {"host": "rspamd.filters.svc", "port": 11332}},
            {"name": "clamav", "milter": {"host": "clamav.filters.svc", "port": 7357},
             "onUnavailable": "Accept"},
        ]))
        .unwrap();
        let pod = |name: &str, unreachable: &[&str]| PodReport {
            pod: name.into(),
            running: Ok(Running {
                hash: config.hash.clone(),
                filters_unreachable: unreachable.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            }),
        };
        let status = |reports: &[PodReport]| with_two_ready_pods(&org, &config, reports);
        let s = status(&[
            pod("acme-relay-0", &["rspamd"]),
            pod("acme-relay-1", &["rspamd", "clamav"]),
        ]);
        let degraded = condition(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ContentFilterUnreachable")
        );
        assert!(
            degraded.message.contains(
                "relay pod(s) acme-relay-0, acme-relay-1 cannot reach content filter rspamd: messages are answered 451 4.7.1"
            ),
            "{}",
            degraded.message
        );
        assert!(
            degraded.message.contains(
                "relay pod(s) acme-relay-1 cannot reach content filter clamav: messages go on unfiltered"
            ),
            "{}",
            degraded.message
        );
        // Reachable again: no longer degraded.
        let s = status(&[pod("acme-relay-0", &[]), pod("acme-relay-1", &[])]);
        assert_eq!(condition(&s.conditions, DEGRADED).unwrap().status, "False");
    }

    #[test]
    fn a_pod_on_the_latest_config_with_older_secret_files_is_not_in_force() {
        let (_, config, _) = org_and_config(1);
        let rollout = Rollout::Observed {
            available: 1,
            updated: 1,
            ready: 1,
        };
        let pod = [report("acme-relay-0", &config.hash)];
        let rotated = in_force(&config, Some("files-2"), &rollout, &pod);
        assert_eq!(
            (rotated.status, rotated.reason.as_str()),
            (Some(false), "Rollout")
        );
        assert!(
            rotated
                .message
                .ends_with("acme-relay-0 has not yet loaded the current Secret files"),
            "{}",
            rotated.message
        );
        let current = in_force(&config, Some("files-1"), &rollout, &pod);
        assert_eq!(current.status, Some(true));
    }

    #[test]
    fn an_ephemeral_spool_is_a_warning_condition_that_goes_with_it() {
        let (mut org, config, _) = org_and_config(1);
        let s = organization_rendered(
            &org,
            &config,
            &[],
            Relay {
                stateful_set: None,
                ephemeral_spool: true,
                reports: &[],
                content_hash: None,
            },
            &[],
            &at(1),
        );
        let c = condition(&s.conditions, SPOOL_EPHEMERAL).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "EmptyDirSpool")
        );
        assert!(c.message.contains("lost"));
        org.status = Some(s);
        let s = organization_rendered(
            &org,
            &config,
            &[],
            Relay {
                stateful_set: None,
                ephemeral_spool: false,
                reports: &[],
                content_hash: None,
            },
            &[],
            &at(2),
        );
        assert!(condition(&s.conditions, SPOOL_EPHEMERAL).is_none());
    }
}

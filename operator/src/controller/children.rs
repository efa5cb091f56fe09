//! The objects the operator owns for one Organization, built by pure functions.
//!
//! [`build`] turns an Organization, its rendered [`RelayConfig`](relay::config::RelayConfig)
//! and the hash of its mounted Secrets into the ConfigMap, Deployment, Service,
//! PodDisruptionBudget, NetworkPolicy and (for a persistent spool) PersistentVolumeClaim
//! that run its relay. Names come from [`names`](super::names), so they are valid whatever
//! the Organization and its Secrets are called.
//! The same inputs always give the same objects, so server-side apply with one field manager
//! is idempotent, and golden files pin the output.
//!
//! The config hash is deliberately *not* in the pod template: relays hot-reload the
//! ConfigMap. Only a change of a mounted Secret's data changes the template (through
//! [`SECRETS_HASH_ANNOTATION`]) and so restarts the pods.
//!
//! Nothing here talks to the API server; `controller` applies what this module builds.

use std::collections::{BTreeMap, BTreeSet};

use crds::{MailRoute, Organization, ServiceType};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use relay::config::RelayConfig;
use sha2::{Digest, Sha256};

use super::names;

/// Pod-template annotation holding the hash of the mounted Secrets' data.
pub const SECRETS_HASH_ANNOTATION: &str = "smtprelay.dev/secrets-hash";
/// ConfigMap annotation holding the hash of the RelayConfig it carries.
pub const CONFIG_HASH_ANNOTATION: &str = "smtprelay.dev/config-hash";
/// Key of the RelayConfig document in the ConfigMap.
pub const CONFIG_KEY: &str = "config.json";
/// Where the ConfigMap is mounted in relay pods.
pub const CONFIG_DIR: &str = "/etc/smtprelay/config";
/// Label every child carries, and the label selector of the operator's watches.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "smtprelay-operator");
/// Port of the relay's `/metrics`, `/healthz` and `/readyz`.
const ADMIN_PORT_NAME: &str = "admin";
/// Non-root user the relay runs as (the distroless `nonroot` user).
const RELAY_UID: i64 = 65532;

/// Settings of the operator that shape children but are not part of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildDefaults {
    /// Relay image when `spec.relay.image` is unset.
    pub relay_image: String,
    /// Namespaces whose pods may reach the relay's admin port (`/metrics`, queue
    /// administration): the operator's own and the monitoring namespace.
    pub admin_namespaces: Vec<String>,
}

impl Default for ChildDefaults {
    fn default() -> Self {
        Self {
            relay_image: "smtprelay-relay:dev".into(),
            admin_namespaces: vec!["smtprelay-system".into(), "monitoring".into()],
        }
    }
}

/// Why a Secret is mounted into relay pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretUse {
    /// `relay.tlsSecretRef`: `tls.crt` and `tls.key`.
    Tls,
    /// `authSecretRef`: the `credentials` file.
    Auth,
    /// A route's `tls.trustedCaSecretRef`: `ca.crt`.
    Ca,
    /// `relay.limitStore.passwordSecretRef`: `password`.
    RedisPassword,
}

/// A Secret the relay pods mount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MountedSecret {
    pub usage: SecretUse,
    pub name: String,
}

/// Secrets the pods mount: those the Organization and its routes name *and* that exist
/// (a missing Secret is a render finding; mounting it would keep pods from starting).
pub fn mounted_secrets(
    org: &Organization,
    routes: &[MailRoute],
    existing: &BTreeSet<String>,
) -> Vec<MountedSecret> {
    let mut out = BTreeSet::new();
    let mut add = |usage, name: &str| {
        if existing.contains(name) {
            out.insert(MountedSecret {
                usage,
                name: name.to_string(),
            });
        }
    };
    if let Some(r) = &org.spec.relay.tls_secret_ref {
        add(SecretUse::Tls, &r.name);
    }
    if let Some(r) = &org.spec.auth_secret_ref {
        add(SecretUse::Auth, &r.name);
    }
    if let Some(r) = org
        .spec
        .relay
        .limit_store
        .as_ref()
        .and_then(|s| s.password_secret_ref.as_ref())
    {
        add(SecretUse::RedisPassword, &r.name);
    }
    for route in routes {
        if route.namespace() != org.namespace() {
            continue;
        }
        if let Some(r) = &route.spec.tls.trusted_ca_secret_ref {
            add(SecretUse::Ca, &r.name);
        }
    }
    out.into_iter().collect()
}

/// SHA-256 over the names and data of the mounted Secrets, in a fixed order. `stringData`
/// counts as data (manifests loaded from files carry it; the API server folds it into
/// `data`), so both spellings of one Secret hash the same.
pub fn secrets_hash(mounted: &[MountedSecret], secrets: &[Secret]) -> String {
    let mut hasher = Sha256::new();
    for m in mounted {
        let Some(secret) = secrets.iter().find(|s| s.name_any() == m.name) else {
            continue;
        };
        let mut data: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (k, ByteString(v)) in secret.data.iter().flatten() {
            data.insert(k, v);
        }
        for (k, v) in secret.string_data.iter().flatten() {
            data.insert(k, v.as_bytes());
        }
        hasher.update(format!("{:?}\0{}\0", m.usage, m.name).as_bytes());
        for (k, v) in data {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(v);
        }
    }
    hex::encode(hasher.finalize())
}

/// Everything applied for one Organization.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    /// Only when `spec.relay.spool.size` asks for a persistent spool.
    pub spool_claim: Option<PersistentVolumeClaim>,
}

impl Children {
    /// All children as one multi-document YAML stream (golden files, `kubectl diff`).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut out = String::new();
        let mut push = |doc: String| {
            out.push_str("---\n");
            out.push_str(&doc);
        };
        push(serde_yaml::to_string(&self.config_map)?);
        push(serde_yaml::to_string(&self.deployment)?);
        push(serde_yaml::to_string(&self.service)?);
        push(serde_yaml::to_string(&self.pdb)?);
        push(serde_yaml::to_string(&self.network_policy)?);
        if let Some(pvc) = &self.spool_claim {
            push(serde_yaml::to_string(pvc)?);
        }
        Ok(out)
    }
}

/// Name of the ConfigMap holding the RelayConfig.
pub fn config_map_name(org: &str) -> String {
    names::child_name("", org, "-relay-config")
}

/// Name of the Deployment, Service, PodDisruptionBudget and NetworkPolicy: a DNS-1035
/// label (as a Service name must be) whatever the Organization is called.
pub fn relay_name(org: &str) -> String {
    names::child_name("", org, "-relay")
}

/// Name of the spool PersistentVolumeClaim.
pub fn spool_claim_name(org: &str) -> String {
    names::child_name("", org, "-relay-spool")
}

/// Name of the volume of a route's CA Secret: a DNS-1123 label even when the Secret's
/// name has dots or is long.
pub fn ca_volume_name(secret: &str) -> String {
    names::child_name("ca-", secret, "")
}

/// Labels selecting the relay pods of one Organization.
pub fn selector_labels(org: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "smtprelay".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            names::label_value(org),
        ),
    ])
}

fn labels(org: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(org);
    l.insert("app.kubernetes.io/component".into(), "relay".into());
    l.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    l
}

/// The controller owner reference every child carries, so that deleting the Organization
/// garbage-collects its relay.
pub fn owner_reference(org: &Organization) -> OwnerReference {
    OwnerReference {
        api_version: Organization::api_version(&()).into_owned(),
        kind: Organization::kind(&()).into_owned(),
        name: org.name_any(),
        uid: org.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(org: &Organization, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: org.namespace(),
        labels: Some(labels(&org.name_any())),
        owner_references: Some(vec![owner_reference(org)]),
        ..Default::default()
    }
}

/// Builds the children of `org` from its rendered config and the hash of its mounted
/// Secrets (see [`secrets_hash`]).
pub fn build(
    org: &Organization,
    config: &RelayConfig,
    mounted: &[MountedSecret],
    secrets_hash: &str,
    defaults: &ChildDefaults,
) -> Children {
    let name = org.name_any();
    let relay = &org.spec.relay;
    let replicas = relay.replicas.unwrap_or(1).max(1);

    let mut cm_meta = meta(org, config_map_name(&name));
    cm_meta.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        config.hash.clone(),
    )]));
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config.to_json())])),
        ..Default::default()
    };

    let spool_claim = relay
        .spool
        .as_ref()
        .and_then(|s| s.size.as_ref().map(|size| (s, size)))
        .map(|(spool, size)| PersistentVolumeClaim {
            metadata: meta(org, spool_claim_name(&name)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spool.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(size.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });

    let deployment = deployment(
        org,
        config,
        mounted,
        secrets_hash,
        defaults,
        replicas,
        spool_claim.is_some(),
    );
    let service = service(org);
    let pdb = PodDisruptionBudget {
        metadata: meta(org, relay_name(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            min_available: (replicas > 1).then_some(IntOrString::Int(1)),
            max_unavailable: (replicas <= 1).then_some(IntOrString::Int(1)),
            ..Default::default()
        }),
        ..Default::default()
    };
    Children {
        config_map,
        network_policy: network_policy(org, config, defaults),
        deployment,
        service,
        pdb,
        spool_claim,
    }
}

/// Ingress to the relay pods: the SMTP ports from `relay.allowedClientCidrs` (anywhere
/// when empty), the admin port only from the operator's and the monitoring namespaces.
/// Egress is left open: the relay delivers to whatever MX hosts mail is addressed to.
fn network_policy(
    org: &Organization,
    config: &RelayConfig,
    defaults: &ChildDefaults,
) -> NetworkPolicy {
    let name = org.name_any();
    let port = |p: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let cidrs = &org.spec.relay.allowed_client_cidrs;
    let smtp = NetworkPolicyIngressRule {
        ports: Some(vec![
            port(config.listeners.smtp.port()),
            port(config.listeners.submission.port()),
            port(config.listeners.smtps.port()),
        ]),
        from: (!cidrs.is_empty()).then(|| {
            cidrs
                .iter()
                .map(|c| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: c.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect()
        }),
    };
    let admin = NetworkPolicyIngressRule {
        ports: Some(vec![port(config.admin_listen.port())]),
        from: Some(
            defaults
                .admin_namespaces
                .iter()
                .map(|ns| NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            ns.clone(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    NetworkPolicy {
        metadata: meta(org, relay_name(&name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![smtp, admin]),
            ..Default::default()
        }),
    }
}

fn deployment(
    org: &Organization,
    config: &RelayConfig,
    mounted: &[MountedSecret],
    secrets_hash: &str,
    defaults: &ChildDefaults,
    replicas: i32,
    persistent_spool: bool,
) -> Deployment {
    let name = org.name_any();
    let relay = &org.spec.relay;
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let admin_port = config.admin_listen.port();
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    let env = crate::render::RenderEnv::pod();
    for m in mounted {
        let (volume, path, keys): (String, String, &[&str]) = match m.usage {
            SecretUse::Tls => ("tls".into(), env.tls_dir.clone(), &["tls.crt", "tls.key"]),
            SecretUse::Auth => ("auth".into(), env.credentials_dir.clone(), &["credentials"]),
            SecretUse::Ca => (
                ca_volume_name(&m.name),
                format!("{}/{}", env.ca_dir, m.name),
                &["ca.crt"],
            ),
            SecretUse::RedisPassword => {
                let file = env.redis_password_file();
                let dir = file.rsplit_once('/').map_or(file.as_str(), |(d, _)| d);
                ("redis".into(), dir.to_string(), &["password"])
            }
        };
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(m.name.clone()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: (*k).into(),
                            path: (*k).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: path,
            read_only: Some(true),
            ..Default::default()
        });
    }
    volumes.push(if persistent_spool {
        Volume {
            name: "spool".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: spool_claim_name(&name),
                ..Default::default()
            }),
            ..Default::default()
        }
    } else {
        Volume {
            name: "spool".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }
    });
    mounts.push(VolumeMount {
        name: "spool".into(),
        mount_path: config.spool_dir.clone(),
        ..Default::default()
    });

    let container = Container {
        name: "relay".into(),
        image: Some(
            relay
                .image
                .clone()
                .unwrap_or_else(|| defaults.relay_image.clone()),
        ),
        command: Some(vec![
            "relay".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![
            port("smtp", config.listeners.smtp.port()),
            port("submission", config.listeners.submission.port()),
            port("smtps", config.listeners.smtps.port()),
            port(ADMIN_PORT_NAME, admin_port),
        ]),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        resources: relay.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), admin_port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (
            SECRETS_HASH_ANNOTATION.to_string(),
            secrets_hash.to_string(),
        ),
    ]);
    Deployment {
        metadata: meta(org, relay_name(&name)),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            // One ReadWriteOnce claim cannot be attached by two pods during a rollout.
            strategy: persistent_spool.then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(RELAY_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn service(org: &Organization) -> Service {
    let name = org.name_any();
    let ports = org.spec.relay.ports.clone().unwrap_or_default();
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let service_type = match org
        .spec
        .relay
        .service_type
        .unwrap_or(ServiceType::ClusterIP)
    {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: meta(org, relay_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some(service_type.into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                port("smtp", ports.smtp),
                port("submission", ports.submission),
                port("smtps", ports.smtps),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Objects, RenderEnv, render};

    fn org(yaml: &str) -> Organization {
        serde_yaml::from_str(yaml).unwrap()
    }

    const ORG: &str = r#"
apiVersion: smtprelay.dev/v1alpha1
kind: Organization
metadata: {name: acme, namespace: acme, uid: 1234}
spec:
  domains: [acme.example]
  licenses: 1
  relay:
    replicas: 3
    tlsSecretRef: {name: relay-tls}
    limitStore: {type: Redis, url: "redis://redis:6379"}
"#;

    fn children_for(org: &Organization, secrets: &[Secret]) -> Children {
        let names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
        let rendered = render(
            "acme",
            Objects {
                organizations: std::slice::from_ref(org),
                settings: &[],
                ranges: &[],
                routes: &[],
                secrets: &names,
            },
            &RenderEnv::pod(),
        )
        .unwrap();
        let mounted = mounted_secrets(org, &[], &names);
        build(
            org,
            &rendered.config,
            &mounted,
            &secrets_hash(&mounted, secrets),
            &ChildDefaults::default(),
        )
    }

    fn tls_secret(cert: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("relay-tls".into()),
                namespace: Some("acme".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("tls.crt".into(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".into(), ByteString(b"key".to_vec())),
            ])),
            ..Default::default()
        }
    }

    fn template_annotations(c: &Children) -> BTreeMap<String, String> {
        c.deployment
            .spec
            .template
            .clone()
            .metadata
            .unwrap()
            .annotations
            .unwrap()
    }

    #[test]
    fn secret_rotation_restarts_pods_but_config_changes_do_not() {
        let o = org(ORG);
        let before = children_for(&o, &[tls_secret("cert-1")]);
        let rotated = children_for(&o, &[tls_secret("cert-2")]);
        assert_ne!(
            template_annotations(&before)[SECRETS_HASH_ANNOTATION],
            template_annotations(&rotated)[SECRETS_HASH_ANNOTATION]
        );
        // A config change (more licences) changes the ConfigMap, not the pod template.
        let mut more = o.clone();
        more.spec.licenses = 50;
        let reconfigured = children_for(&more, &[tls_secret("cert-1")]);
        assert_ne!(before.config_map, reconfigured.config_map);
        assert_eq!(
            before.deployment.spec.template,
            reconfigured.deployment.spec.template
        );
    }

    #[test]
    fn string_data_and_data_hash_alike() {
        let o = org(ORG);
        let mut as_string = tls_secret("x");
        as_string.data = None;
        as_string.string_data = Some(BTreeMap::from([
            ("tls.crt".into(), "cert-1".into()),
            ("tls.key".into(), "key".into()),
        ]));
        let mounted = mounted_secrets(&o, &[], &BTreeSet::from(["relay-tls".to_string()]));
        assert_eq!(
            secrets_hash(&mounted, &[as_string]),
            secrets_hash(&mounted, &[tls_secret("cert-1")])
        );
    }

    #[test]
    fn missing_tls_secret_is_not_mounted() {
        let c = children_for(&org(ORG), &[]);
        let volumes = c.deployment.spec.template.spec.unwrap().volumes.unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["config", "spool"]);
    }

    #[test]
    fn several_replicas_keep_one_available_during_disruptions() {
        let three = children_for(&org(ORG), &[]).pdb.spec.unwrap();
        assert_eq!(three.min_available, Some(IntOrString::Int(1)));
        assert_eq!(three.max_unavailable, None);
        let mut single = org(ORG);
        single.spec.relay.replicas = None;
        let one = children_for(&single, &[]).pdb.spec.unwrap();
        assert_eq!(one.min_available, None);
        assert_eq!(one.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn children_are_owned_by_the_organization() {
        let c = children_for(&org(ORG), &[]);
        for refs in [
            &c.config_map.metadata.owner_references,
            &c.deployment.metadata.owner_references,
            &c.service.metadata.owner_references,
            &c.pdb.metadata.owner_references,
        ] {
            let r = &refs.as_ref().unwrap()[0];
            assert_eq!(
                (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
                ("Organization", "acme", "1234")
            );
            assert_eq!(r.controller, Some(true));
        }
    }

    #[test]
    fn service_ports_type_and_persistent_spool_follow_the_spec() {
        let mut o = org(ORG);
        o.spec.relay.ports = Some(crds::ListenerPorts {
            smtp: 2025,
            submission: 2587,
            smtps: 2465,
        });
        o.spec.relay.service_type = Some(ServiceType::LoadBalancer);
        o.spec.relay.spool = Some(crds::SpoolSpec {
            size: Some("10Gi".into()),
            storage_class_name: Some("fast".into()),
        });
        let c = children_for(&o, &[]);
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        let ports: Vec<(i32, String)> = svc
            .ports
            .unwrap()
            .into_iter()
            .map(|p| {
                let target = match p.target_port.unwrap() {
                    IntOrString::String(s) => s,
                    IntOrString::Int(i) => i.to_string(),
                };
                (p.port, target)
            })
            .collect();
        assert_eq!(
            ports,
            [
                (2025, "smtp".to_string()),
                (2587, "submission".to_string()),
                (2465, "smtps".to_string())
            ]
        );
        let pvc = c.spool_claim.unwrap();
        assert_eq!(pvc.metadata.name.as_deref(), Some("acme-relay-spool"));
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("10Gi".into())
        );
        let deployment = c.deployment.spec;
        assert_eq!(
            deployment.strategy.unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let spool = deployment
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "spool")
            .unwrap();
        assert_eq!(
            spool.persistent_volume_claim.unwrap().claim_name,
            "acme-relay-spool"
        );
    }
}

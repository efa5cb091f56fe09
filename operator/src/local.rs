//! Running a relay from manifests on this machine (`relayctl run`, `relayctl test-tls`): the
//! same `render` the operator uses, with Secrets from the manifest set written to files
//! the way a pod would see them mounted, and listeners on loopback.
//!
//! It owns the local state directory layout, the self-signed certificate made when the
//! manifests carry no TLS Secret, and the local admin token (`admin/token`, mode 0600) that
//! `relayctl queue` presents; it does not decide relay behaviour (render and the relay do).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crds::MailRoute;
use crds::manifest::ManifestSet;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use relay::config::{DeliveryConfig, ListenerConfig, RelayConfig, TlsFiles};

use crate::controller::children::{SecretUse, mounted_secrets};
use crate::manifests::{organization_namespace, render_set};
use crate::render::{Finding, RenderEnv, RenderError};
use crate::secrets::secret_value;

/// Where a local relay listens and keeps its files.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub host: IpAddr,
    pub smtp_port: u16,
    pub submission_port: u16,
    pub smtps_port: u16,
    pub admin_port: u16,
    /// Spool, delivery state and the files made from Secrets.
    pub state_dir: PathBuf,
    /// DNS servers for MX lookup (empty: the system's).
    pub nameservers: Vec<SocketAddr>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            smtp_port: 10025,
            submission_port: 10587,
            smtps_port: 10465,
            admin_port: 10090,
            state_dir: PathBuf::from(".relayctl"),
            nameservers: Vec::new(),
        }
    }
}

/// Why a local configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Secret {secret} has no key {key} (needed for {purpose})")]
    MissingKey {
        secret: String,
        key: String,
        purpose: String,
    },
    #[error("cannot make a random admin token: {0}")]
    Random(String),
    #[error("cannot make a self-signed certificate: {0}")]
    Certificate(String),
}

/// A configuration ready to run locally.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    pub config: RelayConfig,
    pub findings: Vec<Finding>,
    /// Set when no TLS Secret was given and a self-signed certificate was made.
    pub self_signed_for: Option<String>,
}

impl LocalOptions {
    fn env(&self) -> RenderEnv {
        let at = |port| SocketAddr::new(self.host, port);
        let dir = |name: &str| self.state_dir.join(name).to_string_lossy().into_owned();
        RenderEnv {
            listeners: ListenerConfig {
                smtp: at(self.smtp_port),
                submission: at(self.submission_port),
                smtps: at(self.smtps_port),
            },
            admin_listen: at(self.admin_port),
            spool_dir: dir("spool"),
            tls_dir: dir("tls"),
            credentials_dir: dir("auth"),
            ca_dir: dir("ca"),
            delivery: DeliveryConfig {
                nameservers: self.nameservers.clone(),
                ..DeliveryConfig::default()
            },
        }
    }

    /// Renders the manifest set for this machine and writes the files its Secrets become.
    pub fn prepare(&self, set: &ManifestSet) -> Result<LocalConfig, LocalError> {
        let env = self.env();
        let rendered = render_set(set, &env)?;
        let namespace = organization_namespace(set)?;
        let secrets: BTreeMap<String, &Secret> = set
            .secrets
            .iter()
            .filter(|s| s.object.namespace().unwrap_or_else(|| "default".into()) == namespace)
            .map(|s| (s.object.name_any(), &s.object))
            .collect();
        let mut config = rendered.config;

        // The Secrets a pod would mount, chosen as the operator chooses them, written where
        // the rendered config expects their files.
        let org = set
            .organizations
            .iter()
            .map(|o| &o.object)
            .find(|o| o.namespace().unwrap_or_else(|| "default".into()) == namespace);
        if let Some(org) = org {
            let routes: Vec<MailRoute> = set.routes.iter().map(|r| r.object.clone()).collect();
            let existing: BTreeSet<String> = secrets.keys().cloned().collect();
            for mounted in mounted_secrets(org, &routes, &existing) {
                let Some(secret) = secrets.get(&mounted.name) else {
                    continue;
                };
                match mounted.usage {
                    SecretUse::Tls => {
                        let dir = Path::new(&env.tls_dir);
                        write_key(
                            secret,
                            "tls.crt",
                            &dir.join("tls.crt"),
                            "the relay certificate",
                        )?;
                        write_key(secret, "tls.key", &dir.join("tls.key"), "the relay key")?;
                    }
                    SecretUse::Auth => {
                        let path = Path::new(&env.credentials_dir).join("credentials");
                        write_key(secret, "credentials", &path, "SMTP AUTH")?;
                    }
                    SecretUse::Ca => {
                        let path = Path::new(&env.ca_dir).join(&mounted.name).join("ca.crt");
                        write_key(secret, "ca.crt", &path, "trusted CA roots")?;
                    }
                    SecretUse::RouteAuth => {
                        let dir = Path::new(&env.route_auth_dir()).join(&mounted.name);
                        // As in a pod: the keys the Secret has of those pods mount.
                        for key in crate::render::ROUTE_AUTH_KEYS.iter().copied() {
                            if secret_value(secret, key).is_some() {
                                write_key(secret, key, &dir.join(key), "route credentials")?;
                            }
                        }
                    }
                    SecretUse::Dkim => {
                        let path = env.dkim_key_file(&mounted.name);
                        write_key(
                            secret,
                            crate::render::DKIM_SECRET_KEY,
                            Path::new(&path),
                            "a DKIM private key",
                        )?;
                    }
                    SecretUse::RedisPassword => {
                        let path = env.redis_password_file();
                        write_key(secret, "password", Path::new(&path), "the Redis password")?;
                    }
                    SecretUse::Admin => {
                        let path = env.admin_token_file();
                        write_key(secret, "token", Path::new(&path), "the admin token")?;
                    }
                }
            }
        }

        // Queue administration: a token of this machine, made once, readable by its owner only.
        ensure_admin_token(Path::new(&env.admin_token_file()))?;

        let mut self_signed_for = None;
        if config.tls.is_none() {
            let cert = Path::new(&env.tls_dir).join("self-signed.crt");
            let key = Path::new(&env.tls_dir).join("self-signed.key");
            make_self_signed(&config.hostname, &cert, &key)?;
            config.tls = Some(TlsFiles {
                cert_file: cert.to_string_lossy().into_owned(),
                key_file: key.to_string_lossy().into_owned(),
            });
            config = config.seal();
            self_signed_for = Some(config.hostname.clone());
        }
        // Settings that could not work without a certificate now can; keep the rest.
        let findings = rendered
            .findings
            .into_iter()
            .filter(|f| {
                self_signed_for.is_none()
                    || !matches!(f.reason, "TlsSecretMissing" | "NoRelayCertificate")
            })
            .collect();
        Ok(LocalConfig {
            config,
            findings,
            self_signed_for,
        })
    }
}

impl LocalOptions {
    /// The admin token file of a local relay (`<state dir>/admin/token`, mode 0600).
    pub fn admin_token_path(&self) -> PathBuf {
        PathBuf::from(self.env().admin_token_file())
    }

    /// Where `relayctl run` writes the URL of its admin endpoint, for `relayctl queue`.
    pub fn admin_address_path(&self) -> PathBuf {
        self.state_dir.join("admin").join("address")
    }

    /// Records the admin endpoint's URL for `relayctl queue`.
    pub fn write_admin_address(&self, admin: SocketAddr) -> Result<(), LocalError> {
        write_file(
            &self.admin_address_path(),
            format!("http://{admin}\n").as_bytes(),
        )
    }
}

/// A new random admin token (256 bits, hex) written with mode 0600, unless one is there.
fn ensure_admin_token(path: &Path) -> Result<(), LocalError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| LocalError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let token = new_admin_token()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    // Never readable by others, not even for a moment.
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path) {
        Ok(mut f) => f.write_all(token.as_bytes()).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// 256 random bits from the operating system, as hex.
pub fn new_admin_token() -> Result<String, LocalError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| LocalError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let err = |source| LocalError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename, so a relay reloading at the same moment never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

fn write_key(secret: &Secret, key: &str, path: &Path, purpose: &str) -> Result<(), LocalError> {
    let value = secret_value(secret, key).ok_or_else(|| LocalError::MissingKey {
        secret: secret.name_any(),
        key: key.into(),
        purpose: purpose.into(),
    })?;
    write_file(path, &value)
}

/// A self-signed certificate for `hostname` and `localhost`, written unless already there.
fn make_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), LocalError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| LocalError::Certificate(e.to_string()))?;
    write_file(key, made.signing_key.serialize_pem().as_bytes())?;
    write_file(cert, made.cert.pem().as_bytes())
}

/// The manifest files under `paths` with their contents, compared between polls to
/// notice edits (contents, not modification times, which are too coarse on some file
/// systems to see two quick saves).
pub fn snapshot(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    crds::manifest::collect_files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap_or_default();
            (f, bytes)
        })
        .collect()
}

//! A config generation: one `RelayConfig` with everything derived from it (compiled
//! policy, loaded credentials, rustls server config), built once and shared by `Arc`.
//!
//! Sessions pick up a new generation between transactions (see `server`). Building a
//! generation reads the TLS and credential files, so a reload also picks up rotated
//! certificates and passwords.
//!
//! A config with a setting that checks nothing (neither an IP allow list nor SMTP AUTH
//! required) is refused ([`GenerationError::OpenSetting`]): it would relay for anyone. The
//! CRD schema refuses such a setting, but the relay does not rely on it, since a ConfigMap
//! can be edited by hand; the refusal is reported like any other (the old generation stays
//! in force, `/metrics` names the reason).
//!
//! The Secrets a config names are configuration too: [`content_hash`] covers the document
//! and the bytes of every file it names (credentials, TLS certificate and key, CA roots),
//! so a rotated certificate or a revoked password is a new generation, put in force by
//! [`crate::RelayHandle::reload_if_changed`] like any other change. The hash never
//! reveals the secrets: it is a SHA-256 over them.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{RelayConfig, TlsFiles};
use crate::ingress::auth::{Credentials, CredentialsError};
use crate::ingress::session::SessionConfig;

/// Why a config cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(
        "setting {setting} has neither an IP allow list nor SMTP AUTH required: it would relay for anyone"
    )]
    OpenSetting { setting: String },
}

/// One config in force.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one per reload, starting at 1.
    pub id: u64,
    pub config: Arc<RelayConfig>,
    /// SHA-256 of the config document (computed when the document carried none).
    pub hash: String,
    /// SHA-256 of the document hash and of every file it names ([`content_hash`]).
    pub content_hash: String,
    pub session: SessionConfig,
    pub credentials: Credentials,
    pub tls: Option<Arc<ServerConfig>>,
}

impl Generation {
    /// Builds generation `id` from `config`.
    pub fn build(id: u64, config: RelayConfig) -> Result<Self, GenerationError> {
        if let Some(open) = config
            .settings
            .iter()
            .find(|s| s.ip_ranges.is_none() && !s.require_smtp_auth)
        {
            return Err(GenerationError::OpenSetting {
                setting: open.name.clone(),
            });
        }
        let content_hash = content_hash(&config);
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let credentials = Credentials::load(config.organization.credentials_file.as_deref())?;
        let hash = if config.hash.is_empty() {
            config.compute_hash()
        } else {
            config.hash.clone()
        };
        let mut session = SessionConfig::for_config(&config, tls.is_some());
        session.credentials = credentials.clone();
        Ok(Self {
            id,
            config: Arc::new(config),
            hash,
            content_hash,
            session,
            credentials,
            tls,
        })
    }
}

/// The files a config names whose content is part of its behaviour, with what each is.
pub fn named_files(config: &RelayConfig) -> Vec<(&'static str, &str)> {
    let mut files = Vec::new();
    if let Some(path) = &config.organization.credentials_file {
        files.push(("AUTH credentials", path.as_str()));
    }
    if let Some(tls) = &config.tls {
        files.push(("TLS certificate", tls.cert_file.as_str()));
        files.push(("TLS key", tls.key_file.as_str()));
    }
    for route in &config.routes {
        if let Some(ca) = &route.tls.extra_ca_file {
            files.push(("route CA roots", ca.as_str()));
        }
        if let Some(auth) = &route.auth {
            files.push(("route AUTH user name", auth.username_file.as_str()));
            files.extend(auth.secret_files());
        }
    }
    files
}

/// SHA-256 (hex) of the document hash and of the content of every file it names, in a
/// fixed order. A file that cannot be read contributes its error kind, so its coming back
/// is a change too.
pub fn content_hash(config: &RelayConfig) -> String {
    content_hash_with(config, |path| std::fs::read(path))
}

/// [`content_hash`] with the files read by `read` instead of from disk: the operator
/// computes the hash a relay pod should report from the Secrets it mounts there.
pub fn content_hash_with(
    config: &RelayConfig,
    read: impl Fn(&str) -> std::io::Result<Vec<u8>>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let doc = if config.hash.is_empty() {
        config.compute_hash()
    } else {
        config.hash.clone()
    };
    h.update(doc.as_bytes());
    for (what, path) in named_files(config) {
        h.update(b"\0");
        h.update(what.as_bytes());
        h.update(b"\0");
        h.update(path.as_bytes());
        h.update(b"\0");
        match read(path) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(e) => h.update(format!("unreadable: {:?}", e.kind()).as_bytes()),
        }
    }
    hex::encode(h.finalize())
}

/// Reads the PEM chain and key into a rustls server config using the ring provider.
pub fn load_tls(files: &TlsFiles) -> Result<Arc<ServerConfig>, GenerationError> {
    let open = |path: &str| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| GenerationError::Tls(format!("cannot open {path}: {e}")))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.cert_file)))?;
    if certs.is_empty() {
        return Err(GenerationError::Tls(format!(
            "{} holds no certificate",
            files.cert_file
        )));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key_file)?)
        .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.key_file)))?
        .ok_or_else(|| GenerationError::Tls(format!("{} holds no private key", files.key_file)))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| GenerationError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.cert_file)))?;
    Ok(Arc::new(config))
}

//! SMTP AUTH: decoding the PLAIN and LOGIN exchanges (pure) and verifying a password
//! against the organization's argon2id PHC hashes (CPU-heavy, run on the blocking pool).
//!
//! Credentials come from `organization.credentials_file`: one `address:PHC` line per user,
//! blank lines and `#` comments ignored. They are loaded once per config generation.
//! Not here: when AUTH is allowed (after TLS only; `session` enforces that).

use std::collections::HashMap;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A malformed SASL exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed PLAIN message")]
    Plain,
}

/// Decodes an `AUTH PLAIN` response: `authzid NUL authcid NUL password`. The identity is
/// lower-cased; an authzid different from the authcid is refused.
pub fn decode_plain(b64: &str) -> Result<(String, String), SaslError> {
    let raw = STANDARD.decode(b64.trim()).map_err(|_| SaslError::Base64)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Plain);
    };
    let authc = std::str::from_utf8(authc)
        .map_err(|_| SaslError::Plain)?
        .to_ascii_lowercase();
    let authz = std::str::from_utf8(authz).map_err(|_| SaslError::Plain)?;
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(&authc) {
        return Err(SaslError::Plain);
    }
    let pass = String::from_utf8(pass.to_vec()).map_err(|_| SaslError::Plain)?;
    if authc.is_empty() {
        return Err(SaslError::Plain);
    }
    Ok((authc, pass))
}

/// Decodes one `AUTH LOGIN` step (user name or password).
pub fn decode_login_step(b64: &str) -> Result<String, SaslError> {
    let raw = STANDARD.decode(b64.trim()).map_err(|_| SaslError::Base64)?;
    String::from_utf8(raw).map_err(|_| SaslError::Base64)
}

/// Errors loading the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("credentials file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The PHC hashes of one config generation.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    hashes: Arc<HashMap<String, String>>,
}

impl Credentials {
    /// Loads `path` (`None`: nobody can authenticate).
    pub fn load(path: Option<&str>) -> Result<Self, CredentialsError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses the file content; `path` is only used in messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, CredentialsError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| CredentialsError::Line {
                path: path.to_string(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let (user, phc) = line
                .split_once(':')
                .ok_or_else(|| err("expected address:PHC"))?;
            PasswordHash::new(phc).map_err(|_| err("not a PHC string"))?;
            hashes.insert(user.trim().to_ascii_lowercase(), phc.to_string());
        }
        Ok(Self {
            hashes: Arc::new(hashes),
        })
    }

    /// True when `password` is the password of `identity`. Runs argon2 on the blocking pool.
    pub async fn verify(&self, identity: &str, password: String) -> bool {
        let Some(phc) = self.hashes.get(&identity.to_ascii_lowercase()).cloned() else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    #[test]
    fn plain_decodes_identity_and_password() {
        let b64 = STANDARD.encode(b"\0Alice@Acme.example\0s3cret");
        assert_eq!(
            decode_plain(&b64),
            Ok(("alice@acme.example".into(), "s3cret".into()))
        );
        assert_eq!(decode_plain("!!"), Err(SaslError::Base64));
        let other = STANDARD.encode(b"bob@acme.example\0alice@acme.example\0x");
        assert_eq!(decode_plain(&other), Err(SaslError::Plain));
    }

    #[tokio::test]
    async fn verifies_argon2id_phc_lines() {
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        let phc = Argon2::default()
            .hash_password(b"right", &salt)
            .unwrap()
            .to_string();
        let creds =
            Credentials::parse("creds", &format!("# users\nalice@acme.example:{phc}\n")).unwrap();
        assert!(creds.verify("Alice@acme.example", "right".into()).await);
        assert!(!creds.verify("alice@acme.example", "wrong".into()).await);
        assert!(!creds.verify("bob@acme.example", "right".into()).await);
        assert!(Credentials::parse("creds", "alice@acme.example:plain").is_err());
    }
}

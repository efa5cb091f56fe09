//! Google service-account keys and the signed JWT of the JWT bearer grant (RFC 7523).
//!
//! [`ServiceAccountKey::read`] loads the JSON key file Google's console downloads (fields
//! `type`, `client_email`, `private_key`, `private_key_id`, `token_uri`);
//! [`ServiceAccountKey::assertion`] builds the JWT Google's token endpoint trades for an
//! access token: header `{"alg":"RS256","typ":"JWT","kid":…}`, claims `iss` (the service
//! account), `sub` (the mailbox impersonated through domain-wide delegation), `scope`,
//! `aud` (the token endpoint), `iat` and `exp` one hour later (Google's maximum), signed
//! RSASSA-PKCS1-v1_5 with SHA-256 by `ring`. `ring` is already in the tree through
//! rustls-webpki; `jsonwebtoken` would add a second crypto stack (its current releases sign
//! with `aws-lc-rs` or the `rsa` crate), for three base64 segments. Errors name the file,
//! never the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

/// Lifetime of an assertion: Google refuses `exp` more than an hour after `iat`.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A service account's JSON key.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// The service account's address: the JWT's issuer.
    pub client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    /// The token endpoint the key is for: the JWT's audience and where it is posted.
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// The key in `path` (a mounted Secret's `serviceAccountKey`).
    pub fn read(path: &str) -> Result<Self, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read the service account key ({path}): {e}"))?;
        Self::parse(&text).map_err(|e| format!("service account key ({path}): {e}"))
    }

    /// A key from the bytes of its JSON file.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        // serde_json's messages give a line and column, not the text.
        let key: Self = serde_json::from_slice(json)
            .map_err(|e| format!("not a service account JSON key: {e}"))?;
        if let Some(kind) = &key.kind
            && kind != "service_account"
        {
            return Err(format!(
                "the key's type is {kind:?}, not \"service_account\" (an OAuth client's file is used with refreshToken instead)"
            ));
        }
        if !key.token_uri.starts_with("https://") {
            return Err("the key's token_uri is not an https:// URL".into());
        }
        Ok(key)
    }

    /// The signed JWT asking for `scope` on behalf of `subject`, issued at `now`.
    pub fn assertion(&self, subject: &str, scope: &str, now: SystemTime) -> Result<String, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(self.private_key.as_bytes())
            .map_err(|_| "the key's private_key is not a PEM PKCS#8 private key".to_string())?;
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("the key's private_key is not a usable RSA key: {e}"))?;
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_string())?
            .as_secs();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = kid.as_str().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": subject,
            "scope": scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; pair.public().modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing the assertion failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_secret_file_is_refused_with_what_to_use_instead() {
        let err = ServiceAccountKey::parse(
            br#"{"type":"authorized_user","client_email":"x","private_key":"","token_uri":"https://oauth2.googleapis.com/token"}"#,
        )
        .unwrap_err();
        assert!(err.contains("refreshToken"), "{err}");
    }

    #[test]
    fn a_plain_http_token_uri_is_refused() {
        let err = ServiceAccountKey::parse(
            br#"{"type":"service_account","client_email":"x","private_key":"","token_uri":"http://oauth2.googleapis.com/token"}"#,
        )
        .unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn a_broken_private_key_is_an_error_not_a_panic() {
        let key = ServiceAccountKey::parse(
            br#"{"type":"service_account","client_email":"x","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"https://oauth2.googleapis.com/token"}"#,
        )
        .unwrap();
        let err = key
            .assertion("u@acme.test", "s", UNIX_EPOCH + Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("private_key"), "{err}");
    }
}

//! DKIM signing at delivery time (SPEC §2.1 `dkim`; RFC 6376, RFC 8463 for Ed25519).
//!
//! This module owns: choosing the key for a message (the header From domain equals or is
//! a subdomain of a configured domain; the most specific domain wins), reading and caching
//! keys from their files (re-read on every use and re-parsed when the bytes change, so a
//! rotated Secret is used without a restart), computing the signature by streaming the
//! spooled text (only the header section is buffered), the DKIM metrics, and the DNS TXT
//! record of a key (`relayctl dkim-record`). Canonicalisation and cryptography are the
//! `mail-auth` crate's. The signature is a prefix of what is sent
//! ([`MessageText::with_prefix`]); the spool file is never rewritten.
//!
//! A key that cannot be read or parsed is an error for that message: the caller defers
//! it (a temporary failure) and never sends it unsigned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;

use crate::config::{DkimAlgorithm, DkimConfig};
use crate::delivery::text::MessageText;

/// Header fields signed when a manifest names none: the ones RFC 6376 §5.4.1 recommends
/// that a message usually has.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Labels of the DKIM metrics: a configured signing domain (bounded by the configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    /// The configured signing domain.
    pub domain: String,
}

/// DKIM metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DkimMetrics {
    /// Messages signed, by signing domain.
    pub signed: Family<DomainLabels, Counter>,
    /// Signing attempts that failed because the key could not be read or parsed (the
    /// message was deferred), by signing domain.
    pub key_errors: Family<DomainLabels, Counter>,
    /// 1 while the last signing for a domain failed on its key, 0 once one succeeded:
    /// what the operator turns into a Degraded condition.
    pub key_unreadable: Family<DomainLabels, Gauge>,
}

impl DkimMetrics {
    /// Registers `dkim_signed_total` and `dkim_key_errors_total` (under the registry's
    /// prefix, `smtprelay_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "dkim_signed",
            "Messages DKIM-signed before delivery, by signing domain",
            m.signed.clone(),
        );
        registry.register(
            "dkim_key_errors",
            "Deliveries deferred because the DKIM key could not be read or parsed, by signing domain",
            m.key_errors.clone(),
        );
        registry.register(
            "dkim_key_unreadable",
            "1 while the last signing for the domain failed on its key (mail deferred), 0 once one succeeded",
            m.key_unreadable.clone(),
        );
        m
    }
}

/// What [`Dkim::sign`] decided for a message.
#[derive(Debug)]
pub enum Signing {
    /// No configured domain matches the header From domain: send as is.
    NotConfigured,
    /// The text to send: the stored text with a `DKIM-Signature:` header in front.
    Signed(MessageText),
}

/// Why a message could not be signed; the message is deferred with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningError {
    /// The configured signing domain whose key failed.
    pub domain: String,
    /// What went wrong, for the deferral reason and the log.
    pub reason: String,
}

impl std::fmt::Display for SigningError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "4.7.0 DKIM signing for {} failed, message held unsigned: {}",
            self.domain, self.reason
        )
    }
}

struct CachedKey {
    /// The file's bytes the key was parsed from.
    source: Vec<u8>,
    algorithm: DkimAlgorithm,
    key: Arc<DkimKey>,
}

/// The signing keys in force and a cache of parsed keys. Shared by every delivery.
pub struct Dkim {
    keys: RwLock<Arc<Vec<DkimConfig>>>,
    cache: Mutex<HashMap<String, CachedKey>>,
    metrics: DkimMetrics,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim")
            .field("keys", &self.keys.read().unwrap_or_else(|e| e.into_inner()))
            .finish()
    }
}

impl Dkim {
    /// No keys; metrics registered into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            keys: RwLock::new(Arc::new(Vec::new())),
            cache: Mutex::new(HashMap::new()),
            metrics: DkimMetrics::register(registry),
        }
    }

    /// Puts a new list of keys in force (a new RelayConfig).
    pub fn set_keys(&self, keys: Vec<DkimConfig>) {
        let paths: Vec<String> = keys.iter().map(|k| k.key_file.clone()).collect();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|path, _| paths.contains(path));
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Signs `text` when its header From domain has a key. `headers` is the message's
    /// header section (as [`MessageText::header_section`] gives it).
    pub async fn sign(&self, headers: &[u8], text: &MessageText) -> Result<Signing, SigningError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        if keys.is_empty() {
            return Ok(Signing::NotConfigured);
        }
        let Some(from_domain) = header_from_domain(headers) else {
            return Ok(Signing::NotConfigured);
        };
        let Some(config) = select_key(&keys, &from_domain) else {
            return Ok(Signing::NotConfigured);
        };
        let key = match self.load(config).await {
            Ok(k) => k,
            Err(reason) => {
                let labels = DomainLabels {
                    domain: config.domain.clone(),
                };
                self.metrics.key_errors.get_or_create(&labels).inc();
                self.metrics.key_unreadable.get_or_create(&labels).set(1);
                return Err(SigningError {
                    domain: config.domain.clone(),
                    reason,
                });
            }
        };
        let header = sign_text(&key, config, text)
            .await
            .map_err(|reason| SigningError {
                domain: config.domain.clone(),
                reason,
            })?;
        let labels = DomainLabels {
            domain: config.domain.clone(),
        };
        self.metrics.signed.get_or_create(&labels).inc();
        self.metrics.key_unreadable.get_or_create(&labels).set(0);
        Ok(Signing::Signed(text.with_prefix(header.into_bytes())))
    }

    /// The parsed key of `config`, from the cache when the file still has the same bytes.
    async fn load(&self, config: &DkimConfig) -> Result<Arc<DkimKey>, String> {
        let bytes = tokio::fs::read(&config.key_file)
            .await
            .map_err(|e| format!("cannot read key file {}: {e}", config.key_file))?;
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&config.key_file)
                && c.source == bytes
                && c.algorithm == config.algorithm
            {
                return Ok(c.key.clone());
            }
        }
        let key = Arc::new(
            parse_key(&bytes, config.algorithm)
                .map_err(|e| format!("key file {}: {e}", config.key_file))?,
        );
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            config.key_file.clone(),
            CachedKey {
                source: bytes,
                algorithm: config.algorithm,
                key: key.clone(),
            },
        );
        Ok(key)
    }
}

/// The configured key for a message whose header From domain is `from_domain`: the one
/// whose domain equals it or is its longest parent domain. Case-insensitive.
pub fn select_key<'a>(keys: &'a [DkimConfig], from_domain: &str) -> Option<&'a DkimConfig> {
    let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
    keys.iter()
        .filter(|k| {
            let d = k.domain.trim_end_matches('.').to_ascii_lowercase();
            !d.is_empty()
                && (from == d
                    || (from.len() > d.len()
                        && from.ends_with(&d)
                        && from.as_bytes()[from.len() - d.len() - 1] == b'.'))
        })
        .max_by_key(|k| k.domain.trim_end_matches('.').len())
}

/// The domain of the first address of the first `From:` header field, lower-case.
pub fn header_from_domain(headers: &[u8]) -> Option<String> {
    let message = mail_auth::AuthenticatedMessage::parse(headers)?;
    let from = message.from.first()?;
    let (_, domain) = from.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('>').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// Parses a PEM private key for `algorithm`.
pub fn parse_key(pem: &[u8], algorithm: DkimAlgorithm) -> Result<DkimKey, String> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| "no PEM private key found".to_string())?;
    match algorithm {
        DkimAlgorithm::RsaSha256 => rsa_key(der).map(DkimKey::Rsa),
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(der) => ed25519_key(der.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}")),
            _ => Err("an Ed25519 key must be a PKCS#8 PEM (`BEGIN PRIVATE KEY`)".to_string()),
        },
    }
}

/// An Ed25519 signing key from PKCS#8 v2 (the seed and the public key, checked against
/// each other) or v1 (the seed only, as `openssl genpkey` writes it), which ring reads
/// only through its "maybe unchecked" constructor.
fn ed25519_key(pkcs8: &[u8]) -> mail_auth::Result<Ed25519Key> {
    match Ed25519Key::from_pkcs8_der(pkcs8) {
        Err(e) if e.to_string().contains("VersionNotSupported") => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8)
        }
        other => other,
    }
}

/// An RSA signing key (PKCS#1 or PKCS#8). ring signs with keys of 2048 to 8192 bits only:
/// a smaller key (RFC 8301 still allows 1024) is refused here with a message saying so,
/// and mail it would sign is deferred, as for any unreadable key.
fn rsa_key(der: PrivateKeyDer<'_>) -> Result<RsaKey<Sha256>, String> {
    if !matches!(der, PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_)) {
        return Err("not an RSA private key (PKCS#8 or PKCS#1 PEM)".into());
    }
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
        let e = e.to_string();
        if e.contains("TooSmall") {
            RSA_TOO_SMALL.to_string()
        } else if e.contains("TooLarge") {
            "the RSA key is larger than 8192 bits, which DKIM signing does not support".into()
        } else {
            format!("not an RSA private key: {e}")
        }
    })
}

/// Why a 1024-bit RSA key is refused.
pub const RSA_TOO_SMALL: &str = "the RSA key is smaller than 2048 bits: DKIM signing needs \
     2048 to 8192 bits (RFC 8301 recommends 2048); generate a new key, e.g. `openssl genpkey \
     -algorithm RSA -pkeyopt rsa_keygen_bits:2048`, and publish its record";

/// Streams `text` through a DKIM signer and returns the `DKIM-Signature:` header field.
async fn sign_text(
    key: &DkimKey,
    config: &DkimConfig,
    text: &MessageText,
) -> Result<String, String> {
    let signer = DkimSigner::from_key(KeyRef(key))
        .domain(config.domain.clone())
        .selector(config.selector.clone())
        .headers(config.headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let mut stream = signer.sign_streaming();
    let mut reader = text
        .open()
        .await
        .map_err(|e| format!("cannot read message: {e}"))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read message: {e}"))?;
        if n == 0 {
            break;
        }
        stream.write(&chunk[..n]);
    }
    let signature = stream
        .finish()
        .map_err(|e| format!("signing failed: {e}"))?;
    let mut header = signature.to_header();
    if !header.ends_with("\r\n") {
        header.push_str("\r\n");
    }
    Ok(header)
}

/// A borrowed key, so one parsed key serves many deliveries.
struct KeyRef<'a>(&'a DkimKey);

impl mail_auth::common::crypto::SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// The DNS TXT record that publishes the public half of the PEM private key `pem`, as a
/// zone-file line: `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=..."`, the value
/// split into strings of at most 255 bytes (RFC 1035 character-strings). The RSA public
/// key is a DER SubjectPublicKeyInfo, the form `openssl rsa -pubout` writes and every
/// verifier reads; the Ed25519 one the raw 32 bytes (RFC 8463 §4.2).
pub fn dns_record(
    pem: &[u8],
    algorithm: DkimAlgorithm,
    selector: &str,
    domain: &str,
) -> Result<String, String> {
    let (k, public) = public_key(pem, algorithm)?;
    let value = format!(
        "v=DKIM1; k={k}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    Ok(format!(
        "{selector}._domainkey.{}. IN TXT {}",
        domain.trim_end_matches('.').to_ascii_lowercase(),
        strings.join(" ")
    ))
}

/// The key type tag (`k=`) and the public key bytes of `p=`.
pub fn public_key(pem: &[u8], algorithm: DkimAlgorithm) -> Result<(&'static str, Vec<u8>), String> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| "no PEM private key found".to_string())?;
    match algorithm {
        DkimAlgorithm::RsaSha256 => Ok(("rsa", rsa_spki(&rsa_key(der)?.public_key()))),
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(d) = der else {
                return Err("an Ed25519 key must be a PKCS#8 PEM (`BEGIN PRIVATE KEY`)".into());
            };
            let key = ed25519_key(d.secret_pkcs8_der())
                .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}"))?;
            Ok(("ed25519", key.public_key()))
        }
    }
}

/// The DER SubjectPublicKeyInfo (RFC 5280 §4.1, algorithm `rsaEncryption` of RFC 8017
/// §A.1) around a PKCS#1 `RSAPublicKey`, which is what ring gives.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    /// `SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }`.
    const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(pkcs1);
    let mut body = RSA_ENCRYPTION.to_vec();
    body.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &body)
}

/// One DER tag-length-value (definite length, short or long form).
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A PEM `PRIVATE KEY` block around PKCS#8 DER (tests and tools that generate keys).
pub fn pkcs8_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(domain: &str) -> DkimConfig {
        DkimConfig {
            domain: domain.to_string(),
            selector: "s1".to_string(),
            algorithm: DkimAlgorithm::RsaSha256,
            key_file: format!("/keys/{domain}"),
            headers: vec!["From".to_string()],
        }
    }

    #[test]
    fn the_most_specific_domain_wins_and_only_whole_labels_match() {
        let keys = vec![key("acme.test"), key("mail.acme.test"), key("other.test")];
        let pick = |d: &str| select_key(&keys, d).map(|k| k.domain.as_str());
        assert_eq!(pick("acme.test"), Some("acme.test"));
        assert_eq!(pick("ACME.Test."), Some("acme.test"));
        assert_eq!(pick("eu.acme.test"), Some("acme.test"));
        assert_eq!(pick("mail.acme.test"), Some("mail.acme.test"));
        assert_eq!(pick("x.mail.acme.test"), Some("mail.acme.test"));
        assert_eq!(pick("notacme.test"), None);
        assert_eq!(pick("test"), None);
        assert_eq!(pick("example.net"), None);
    }

    #[test]
    fn the_header_from_domain_is_read_from_the_header_section() {
        let h =
            b"To: b@example.net\r\nFrom: \"Alice\" <Alice@Mail.ACME.test>\r\nSubject: x\r\n\r\n";
        assert_eq!(header_from_domain(h).as_deref(), Some("mail.acme.test"));
        assert_eq!(header_from_domain(b"Subject: x\r\n\r\n"), None);
    }

    #[test]
    fn a_txt_record_names_the_selector_and_is_split_into_255_byte_strings() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let line = dns_record(
            ed.serialize_pem().as_bytes(),
            DkimAlgorithm::Ed25519Sha256,
            "s1",
            "Acme.test",
        )
        .unwrap();
        let p = line
            .strip_prefix("s1._domainkey.acme.test. IN TXT \"v=DKIM1; k=ed25519; p=")
            .unwrap();
        // 32 raw bytes in base64, one string.
        assert_eq!(p.len(), 44 + 1);
        assert!(parse_key(ed.serialize_pem().as_bytes(), DkimAlgorithm::RsaSha256).is_err());

        let pem = crate::delivery::testing::dkim_keys::RSA_2048_PKCS8;
        let line = dns_record(pem.as_bytes(), DkimAlgorithm::RsaSha256, "s2", "acme.test").unwrap();
        let rest = line
            .strip_prefix("s2._domainkey.acme.test. IN TXT ")
            .unwrap();
        let strings: Vec<&str> = rest.split("\" \"").collect();
        assert_eq!(strings.len(), 2, "{line}");
        assert_eq!(strings[0].len(), 1 + 255);
        assert!(strings[0].starts_with("\"v=DKIM1; k=rsa; p=MIIBIjAN"));
        assert!(strings[1].ends_with('"'));
        // p= is the public key exactly as `openssl pkey -pubout` encodes it.
        let p: String = strings
            .concat()
            .trim_matches('"')
            .strip_prefix("v=DKIM1; k=rsa; p=")
            .unwrap()
            .to_string();
        assert_eq!(
            p,
            crate::delivery::testing::dkim_keys::RSA_2048_SPKI_BASE64.trim()
        );
        assert!(parse_key(pem.as_bytes(), DkimAlgorithm::RsaSha256).is_ok());
        assert!(parse_key(pem.as_bytes(), DkimAlgorithm::Ed25519Sha256).is_err());

        // The PKCS#1 form of the same key publishes the same record.
        let pkcs1 = crate::delivery::testing::dkim_keys::RSA_2048_PKCS1;
        assert_eq!(
            dns_record(
                pkcs1.as_bytes(),
                DkimAlgorithm::RsaSha256,
                "s2",
                "acme.test"
            )
            .unwrap(),
            line
        );
    }

    #[test]
    fn an_ed25519_key_as_openssl_writes_it_signs() {
        // PKCS#8 v1 (seed only), as `openssl genpkey -algorithm ed25519` writes it.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend(0u8..32);
        let pem = pkcs8_pem(&der);
        assert!(parse_key(pem.as_bytes(), DkimAlgorithm::Ed25519Sha256).is_ok());
        let (k, public) = public_key(pem.as_bytes(), DkimAlgorithm::Ed25519Sha256).unwrap();
        assert_eq!((k, public.len()), ("ed25519", 32));
        // A v2 key whose public key is not the seed's is refused.
        let v2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut tampered = v2.serialize_der();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            parse_key(
                pkcs8_pem(&tampered).as_bytes(),
                DkimAlgorithm::Ed25519Sha256
            )
            .is_err()
        );
    }

    #[test]
    fn a_1024_bit_rsa_key_is_refused_with_a_message_that_says_why() {
        let pem = crate::delivery::testing::dkim_keys::RSA_1024_PKCS8.as_bytes();
        let err = parse_key(pem, DkimAlgorithm::RsaSha256).err().unwrap();
        assert_eq!(err, RSA_TOO_SMALL);
        assert!(err.contains("smaller than 2048 bits"));
        let err = dns_record(pem, DkimAlgorithm::RsaSha256, "s1", "acme.test").unwrap_err();
        assert_eq!(err, RSA_TOO_SMALL);
    }
}

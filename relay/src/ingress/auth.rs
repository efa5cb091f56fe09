//! SMTP AUTH: decoding the PLAIN and LOGIN exchanges (pure) and verifying a password
//! against the organization's argon2id PHC hashes (CPU-heavy, run on a bounded pool).
//!
//! Credentials come from `organization.credentials_file`: one `address:PHC` line per user,
//! blank lines and `#` comments ignored. They are loaded once per config generation.
//!
//! [`Credentials::verify`] answers a [`Verdict`]:
//! - an unknown user costs the same as a known one: argon2 runs against a dummy hash with
//!   the parameters of the real ones (those of the first line, or argon2's defaults), so
//!   the reply time says nothing about which users exist;
//! - argon2 runs on an [`Argon2Pool`]: at most one verification per CPU but one at a time
//!   ([`default_workers`]: a flood of guesses never takes every core from the sessions
//!   and deliveries), a few more waiting, and [`Verdict::Busy`] beyond that (answer
//!   [`busy_reply`], `454 4.3.0`) instead of a blocking thread and 19 MiB per attempt. All
//!   generations share one process-wide pool, so a reload does not raise the bound.
//! - a valid password answers the [`CredentialFingerprint`] of the line it matched (a
//!   SHA-256 of its PHC string): a session keeps it and, at each MAIL, compares it with the
//!   fingerprint of the generation in force ([`Credentials::still_valid`], one map lookup),
//!   so a changed password or a removed user is noticed without hashing the password
//!   again (SPEC §3.7).
//!
//! Not here: when AUTH is allowed (after TLS only; `session` enforces that), and how often a
//! client may try (`auth_throttle`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::Semaphore;

use crate::smtp::Reply;

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

/// Which credential line a login matched: a SHA-256 of its PHC string. The same line in
/// a later generation has the same fingerprint; a new password (a new PHC string) or a
/// removed user has another, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CredentialFingerprint([u8; 32]);

impl CredentialFingerprint {
    fn of(phc: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(phc.as_bytes()).into())
    }
}

/// The outcome of a password check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password is the user's: `235`. The session keeps the fingerprint of the line
    /// it matched, to notice at each MAIL when that line changes or goes.
    Valid(CredentialFingerprint),
    /// Wrong password or unknown user (indistinguishable by design): `535 5.7.8`.
    Invalid,
    /// The argon2 pool and its queue are full; nothing was checked: answer [`busy_reply`]
    /// and do not count it as a failure.
    Busy,
}

/// The reply to [`Verdict::Busy`].
pub fn busy_reply() -> Reply {
    Reply::new(454, "4.3.0 Authentication service busy, try again later")
}

/// The argon2 pool refused a job: every worker is busy and the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the password check pool is full")]
pub struct PoolFull;

/// A bounded pool for password checks: at most `workers` run at once (each on a blocking
/// thread), at most `queue` more wait for a worker, and a job beyond that is refused at
/// once. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct Argon2Pool {
    /// Permits for jobs running or waiting: `workers + queue`.
    admitted: Arc<Semaphore>,
    /// Permits for jobs running: `workers`.
    running: Arc<Semaphore>,
    completed: Arc<AtomicU64>,
}

/// Waiting jobs allowed per worker in the default pool.
pub const QUEUE_PER_WORKER: usize = 4;

/// Password checks run at once on a machine with `cpus` CPUs: all but one, and at least
/// one. A flood of AUTH attempts then leaves a core to sessions, delivery and the admin
/// endpoint (on a single CPU the one worker still shares it with them).
pub fn default_workers(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

impl Argon2Pool {
    /// A pool of `workers` (at least one) and `queue` waiting places.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(workers + queue)),
            running: Arc::new(Semaphore::new(workers)),
            completed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The process-wide pool: [`default_workers`] of the CPUs
    /// ([`std::thread::available_parallelism`]) and [`QUEUE_PER_WORKER`] waiting places
    /// per worker.
    pub fn shared() -> Self {
        static SHARED: OnceLock<Argon2Pool> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                let workers = default_workers(cpus);
                Self::new(workers, workers * QUEUE_PER_WORKER)
            })
            .clone()
    }

    /// Admits `job` now, or refuses it with [`PoolFull`]; the returned future waits for a
    /// worker and runs the job on it. Dropping the future before it finishes gives the
    /// place back (a job already running keeps its worker until it returns). A job that
    /// panics answers `false`.
    pub fn try_run<F>(&self, job: F) -> Result<impl Future<Output = bool> + use<F>, PoolFull>
    where
        F: FnOnce() -> bool + Send + 'static,
    {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolFull)?;
        let running = self.running.clone();
        let completed = self.completed.clone();
        Ok(async move {
            // The pool never closes its semaphores.
            let Ok(worker) = running.acquire_owned().await else {
                return false;
            };
            // The permits move into the blocking job, so they are held while it runs
            // even if this future is dropped.
            tokio::task::spawn_blocking(move || {
                let _permits = (admitted, worker);
                let answer = job();
                completed.fetch_add(1, Ordering::Relaxed);
                answer
            })
            .await
            .unwrap_or(false)
        })
    }

    /// Jobs run to the end so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

/// One user's line: its PHC string and that string's fingerprint.
#[derive(Debug)]
struct Stored {
    phc: Arc<str>,
    fingerprint: CredentialFingerprint,
}

/// The PHC hashes of one config generation, and the pool they are checked on.
#[derive(Clone, Debug)]
pub struct Credentials {
    hashes: Arc<HashMap<String, Stored>>,
    /// Checked for unknown users: same algorithm and parameters as the real hashes.
    dummy: Arc<str>,
    pool: Argon2Pool,
}

impl Default for Credentials {
    /// Nobody can authenticate.
    fn default() -> Self {
        Self {
            hashes: Arc::default(),
            dummy: dummy_phc(None).into(),
            pool: Argon2Pool::shared(),
        }
    }
}

/// A salt for the dummy hash; its value does not matter, only the work it causes.
const DUMMY_SALT: &str = "ZHVtbXlzYWx0ZHVtbXlzYWx0";

/// A PHC string nobody's password matches, costing what `model` costs to check (argon2's
/// defaults when there is no usable model).
fn dummy_phc(model: Option<&str>) -> String {
    let model = model
        .and_then(|phc| PasswordHash::new(phc).ok())
        .filter(|hash| {
            Algorithm::try_from(hash.algorithm).is_ok() && Params::try_from(hash).is_ok()
        });
    let (algorithm, version, params, output_len) = match &model {
        Some(hash) => (
            hash.algorithm,
            hash.version,
            hash.params.clone(),
            hash.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len()),
        ),
        None => (
            Algorithm::default().ident(),
            Some(Version::default().into()),
            ParamsString::try_from(&Params::DEFAULT).unwrap_or_default(),
            Params::DEFAULT_OUTPUT_LEN,
        ),
    };
    let dummy = PasswordHash {
        algorithm,
        version,
        params,
        salt: Salt::from_b64(DUMMY_SALT).ok(),
        hash: Output::new(&vec![0xA5; output_len]).ok(),
    };
    dummy.to_string()
}

/// True when `password` matches `phc` (argon2; the parameters come from the PHC string).
fn check(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
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
        let mut first = None;
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
            first.get_or_insert_with(|| phc.to_string());
            let stored = Stored {
                phc: phc.into(),
                fingerprint: CredentialFingerprint::of(phc),
            };
            hashes.insert(user.trim().to_ascii_lowercase(), stored);
        }
        Ok(Self {
            hashes: Arc::new(hashes),
            dummy: dummy_phc(first.as_deref()).into(),
            pool: Argon2Pool::shared(),
        })
    }

    /// The same credentials, checked on `pool` instead of the process-wide one.
    pub fn with_pool(self, pool: Argon2Pool) -> Self {
        Self { pool, ..self }
    }

    /// The line of `identity` (case-insensitive; no allocation when it is lower case
    /// already, as sessions keep it).
    fn stored(&self, identity: &str) -> Option<&Stored> {
        if identity.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hashes.get(&identity.to_ascii_lowercase())
        } else {
            self.hashes.get(identity)
        }
    }

    /// Checks `password` for `identity` (case-insensitive) on the pool. An unknown
    /// identity runs the same argon2 work against the dummy hash and is [`Verdict::Invalid`].
    pub async fn verify(&self, identity: &str, password: String) -> Verdict {
        let (phc, fingerprint) = match self.stored(identity) {
            Some(stored) => (stored.phc.clone(), Some(stored.fingerprint)),
            None => (self.dummy.clone(), None),
        };
        let known = fingerprint.is_some();
        let job = move || check(&phc, password.as_bytes()) && known;
        let Ok(run) = self.pool.try_run(job) else {
            return Verdict::Busy;
        };
        match (run.await, fingerprint) {
            (true, Some(fingerprint)) => Verdict::Valid(fingerprint),
            _ => Verdict::Invalid,
        }
    }

    /// The fingerprint of `identity`'s line (tests build sessions without a password check).
    #[cfg(test)]
    pub(crate) fn fingerprint(&self, identity: &str) -> Option<CredentialFingerprint> {
        self.stored(identity).map(|stored| stored.fingerprint)
    }

    /// Whether the line `fingerprint` was taken from is still `identity`'s line here: false
    /// once its password changed or the user was removed. A map lookup and a comparison.
    pub fn still_valid(&self, identity: &str, fingerprint: CredentialFingerprint) -> bool {
        self.stored(identity)
            .is_some_and(|stored| stored.fingerprint == fingerprint)
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

    /// A PHC line with cheap parameters, so tests stay fast.
    fn phc(password: &str, m_cost: u32) -> String {
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        let params = Params::new(m_cost, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn alice(m_cost: u32) -> Credentials {
        let line = format!("# users\nalice@acme.example:{}\n", phc("right", m_cost));
        Credentials::parse("creds", &line).unwrap()
    }

    #[tokio::test]
    async fn verifies_argon2id_phc_lines() {
        let creds = alice(64);
        let Verdict::Valid(fingerprint) = creds.verify("Alice@acme.example", "right".into()).await
        else {
            panic!("the right password is valid");
        };
        assert!(creds.still_valid("alice@acme.example", fingerprint));
        assert_eq!(
            creds.verify("alice@acme.example", "wrong".into()).await,
            Verdict::Invalid
        );
        assert_eq!(
            creds.verify("bob@acme.example", "right".into()).await,
            Verdict::Invalid
        );
        assert!(Credentials::parse("creds", "alice@acme.example:plain").is_err());
    }

    #[tokio::test]
    async fn unknown_users_run_argon2_like_known_ones() {
        let pool = Argon2Pool::new(1, 4);
        let creds = alice(64).with_pool(pool.clone());
        assert_eq!(
            creds.verify("alice@acme.example", "wrong".into()).await,
            Verdict::Invalid
        );
        assert_eq!(pool.completed(), 1);
        assert_eq!(
            creds.verify("nobody@acme.example", "wrong".into()).await,
            Verdict::Invalid
        );
        assert_eq!(pool.completed(), 2, "an unknown user must run argon2 too");
        let nobody = Credentials::default().with_pool(pool.clone());
        assert_eq!(
            nobody.verify("alice@acme.example", "right".into()).await,
            Verdict::Invalid
        );
        assert_eq!(pool.completed(), 3);
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let creds = alice(256);
        let dummy = PasswordHash::new(&creds.dummy).unwrap();
        let real = PasswordHash::new(&creds.hashes["alice@acme.example"].phc).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(Params::try_from(&dummy), Params::try_from(&real));
        assert!(!check(&creds.dummy, b"right"));

        let none = Credentials::default();
        let dummy = PasswordHash::new(&none.dummy).unwrap();
        assert_eq!(
            Algorithm::try_from(dummy.algorithm),
            Ok(Algorithm::default())
        );
        let params = Params::try_from(&dummy).unwrap();
        let default = Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(params.output_len(), Some(Params::DEFAULT_OUTPUT_LEN));
    }

    #[tokio::test]
    async fn a_full_pool_answers_busy() {
        let pool = Argon2Pool::new(1, 1);
        let creds = alice(64).with_pool(pool.clone());
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn(pool.try_run(move || gate.recv().is_ok()).unwrap());
        let waiting = tokio::spawn(pool.try_run(|| true).unwrap());
        assert_eq!(
            creds.verify("alice@acme.example", "right".into()).await,
            Verdict::Busy
        );
        assert_eq!(
            creds.verify("nobody@acme.example", "right".into()).await,
            Verdict::Busy
        );
        release.send(()).unwrap();
        assert!(running.await.unwrap());
        assert!(waiting.await.unwrap());
        assert_eq!(pool.completed(), 2, "a busy answer runs nothing");
        assert!(matches!(
            creds.verify("alice@acme.example", "right".into()).await,
            Verdict::Valid(_)
        ));
    }

    #[tokio::test]
    async fn a_dropped_check_gives_its_place_back() {
        let pool = Argon2Pool::new(1, 0);
        let held = pool.try_run(|| true).unwrap();
        assert!(pool.try_run(|| true).is_err());
        drop(held);
        assert!(pool.try_run(|| true).unwrap().await);
    }

    #[tokio::test]
    async fn a_changed_password_or_a_removed_user_is_no_longer_valid() {
        let creds = alice(64);
        let Verdict::Valid(fingerprint) = creds.verify("alice@acme.example", "right".into()).await
        else {
            panic!("the right password is valid");
        };
        let bob = format!("bob@acme.example:{}\n", phc("bob's", 64));
        let same = format!("alice@acme.example:{}\n{bob}", phc("right", 64));
        let changed = format!("alice@acme.example:{}\n{bob}", phc("new", 64));
        let parse = |text: &str| Credentials::parse("creds", text).unwrap();
        assert!(parse(&same).still_valid("alice@acme.example", fingerprint));
        assert!(parse(&same).still_valid("ALICE@acme.example", fingerprint));
        assert!(!parse(&changed).still_valid("alice@acme.example", fingerprint));
        assert!(!parse(&bob).still_valid("alice@acme.example", fingerprint));
        assert!(!parse(&same).still_valid("bob@acme.example", fingerprint));
    }

    #[test]
    fn the_pool_leaves_a_core_free() {
        assert_eq!(default_workers(0), 1);
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(4), 3);
        assert_eq!(default_workers(64), 63);
    }

    #[test]
    fn busy_reply_is_a_transient_failure() {
        assert_eq!(
            busy_reply().to_string(),
            "454 4.3.0 Authentication service busy, try again later\r\n"
        );
    }
}

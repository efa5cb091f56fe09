//! The shared [`LimitStore`]: SPEC §3.6 counters in Redis, so every replica of an
//! organization counts against the same limits.
//!
//! Semantics are those of [`crate::limits::MemoryLimitStore`] (one-minute buckets, rolling
//! 24-hour and 10-minute windows, unique recipients per user, every recipient per
//! customer), with one addition that makes the limits exact when several sessions on
//! several replicas race: **a recipient that passes the check at RCPT is reserved**.
//!
//! - `check` runs one Lua script (atomic in Redis) that expires old buckets, compares
//!   `counted + reserved + 1` with each limit, and, when every limit allows it, reserves
//!   the recipient for its transaction: a customer reservation `TX:rcpt`, a user-message
//!   reservation `TX` for the first recipient of a transaction (`pending` empty), and the
//!   address itself in the user's reserved-recipient set when it is new. A reservation
//!   expires after the session timeout plus a minute, the longest a transaction can stay
//!   open, should its relay die before it ends the transaction.
//! - `record` (the message is spooled) runs a second script that turns the transaction's
//!   own reservations into counts, so `counted + reserved` never drops while it runs.
//! - `release` (RSET, QUIT, a refused message, a dropped connection) removes the
//!   transaction's customer and message reservations at once. A new recipient it had
//!   reserved in the user's unique-recipient set stays until it expires, since another
//!   open transaction of the same user may hold the same address: that capacity comes
//!   back late, never early.
//!
//! Time is the injected clock's (passed as arguments), never Redis' own, so tests move it
//! freely and replicas only need synchronized clocks. Keys share the hash tag of the
//! organization, so both scripts also work on a Redis Cluster. Redis TTLs only collect
//! garbage (25 h after the last write). Needs Redis 6.2 or later (`ZADD GT`); plain TCP
//! (`redis://`), no TLS.
//!
//! When Redis cannot answer within [`REDIS_TIMEOUT`], `check` fails and the session replies
//! `451 4.3.0` (temporary): limits are never silently dropped. A message already spooled
//! whose count fails is counted later by a background retry (for about three minutes,
//! without popping reservations, so the retry can only over-count). Each failure is logged
//! and counted (`smtprelay_limit_store_errors_total`).
//!
//! Not here: the limit values (config), the replies (`limits`), SMTP sequencing (`session`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Script};

use crate::limits::{
    BoxFuture, LimitHit, LimitStore, LimitStoreError, RcptQuery, Release, TxId, Usage,
};

/// Longest wait for one Redis round trip (connect included) before answering 451.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Real seconds a counter key survives its last write (garbage collection only).
const KEEP_SECONDS: u64 = 25 * 3600;

/// Retries of a failed count (about three minutes in all).
const RECORD_RETRIES: u32 = 8;

/// Reservations outlive the longest transaction by this much (spool write, clock skew).
const RESERVATION_MARGIN_SECONDS: u64 = 60;

/// Lua shared by both scripts: drops buckets that left a window and returns the sum of the
/// buckets still in it. `b` is a hash minute→count, `m` a sorted set of those minutes,
/// `s` their running sum.
const LUA_WINDOW: &str = r#"
local function expire_window(b, m, s, now_min, window)
  local cutoff = now_min - window
  while true do
    local old = redis.call('ZRANGEBYSCORE', m, '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local drop = 0
    for _, c in ipairs(redis.call('HMGET', b, unpack(old))) do
      if c then drop = drop + tonumber(c) end
    end
    redis.call('HDEL', b, unpack(old))
    redis.call('ZREM', m, unpack(old))
    if drop > 0 then redis.call('DECRBY', s, drop) end
  end
  local sum = tonumber(redis.call('GET', s) or '0')
  if sum < 0 then
    redis.call('DEL', s)
    sum = 0
  end
  return sum
end
"#;

/// KEYS: see [`Keys::all`]. ARGV: now_ms, now_min, reservation_ttl_ms, user messages limit,
/// user recipients limit, customer day limit, customer peak limit, recipient, first (1/0),
/// keep seconds, transaction id. Returns 0 (reserved) or the number of the limit hit (1..4).
const LUA_CHECK: &str = r#"
local cb, cm, cs, cr = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local umb, umm, ums, umr = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local urc, urr = KEYS[9], KEYS[10]
local now_ms = tonumber(ARGV[1])
local now_min = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local lim_msgs, lim_rcpts = tonumber(ARGV[4]), tonumber(ARGV[5])
local lim_day, lim_peak = tonumber(ARGV[6]), tonumber(ARGV[7])
local rcpt = ARGV[8]
local first = ARGV[9] == '1'
local keep = tonumber(ARGV[10])
local tx = ARGV[11]

redis.call('ZREMRANGEBYSCORE', cr, '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', umr, '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', urr, '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', urc, '-inf', now_min - 1440)

local msgs = expire_window(umb, umm, ums, now_min, 1440) + redis.call('ZCARD', umr)
if msgs + (first and 1 or 0) > lim_msgs then return 1 end

local counted = redis.call('ZSCORE', urc, rcpt)
local known = counted or redis.call('ZSCORE', urr, rcpt)
if not known then
  if redis.call('ZCARD', urc) + redis.call('ZCARD', urr) + 1 > lim_rcpts then return 2 end
end

local reserved = redis.call('ZCARD', cr)
if expire_window(cb, cm, cs, now_min, 1440) + reserved + 1 > lim_day then return 3 end
local fields = {}
for i = 0, 9 do fields[#fields + 1] = tostring(now_min - i) end
local peak = 0
for _, c in ipairs(redis.call('HMGET', cb, unpack(fields))) do
  if c then peak = peak + tonumber(c) end
end
if peak + reserved + 1 > lim_peak then return 4 end

local expiry = now_ms + ttl_ms
redis.call('ZADD', cr, expiry, tx .. ':' .. rcpt)
redis.call('EXPIRE', cr, keep)
if not counted then
  redis.call('ZADD', urr, 'GT', expiry, rcpt)
  redis.call('EXPIRE', urr, keep)
end
if first then
  redis.call('ZADD', umr, expiry, tx)
  redis.call('EXPIRE', umr, keep)
end
return 0
"#;

/// KEYS: see [`Keys::all`]. ARGV: now_ms, now_min, keep seconds, transaction id (empty: a
/// late retry whose reservations may be gone), recipients... Commits the transaction's
/// reservations and counts the message.
const LUA_RECORD: &str = r#"
local cb, cm, cs, cr = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local umb, umm, ums, umr = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local urc, urr = KEYS[9], KEYS[10]
local now_ms = tonumber(ARGV[1])
local now_min = ARGV[2]
local keep = tonumber(ARGV[3])
local tx = ARGV[4]
local n = #ARGV - 4

redis.call('ZREMRANGEBYSCORE', cr, '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', umr, '-inf', now_ms)
if tx ~= '' then
  for i = 5, #ARGV do redis.call('ZREM', cr, tx .. ':' .. ARGV[i]) end
  redis.call('ZREM', umr, tx)
end

redis.call('HINCRBY', cb, now_min, n)
redis.call('ZADD', cm, tonumber(now_min), now_min)
redis.call('INCRBY', cs, n)
redis.call('HINCRBY', umb, now_min, 1)
redis.call('ZADD', umm, tonumber(now_min), now_min)
redis.call('INCRBY', ums, 1)
for i = 5, #ARGV do
  redis.call('ZADD', urc, tonumber(now_min), ARGV[i])
  redis.call('ZREM', urr, ARGV[i])
end
for _, k in ipairs({cb, cm, cs, umb, umm, ums, urc}) do
  redis.call('EXPIRE', k, keep)
end
return 0
"#;

/// KEYS: see [`Keys::all`]. ARGV: transaction id, recipients... Gives the transaction's
/// customer and message reservations back.
const LUA_RELEASE: &str = r#"
local cr, umr = KEYS[4], KEYS[8]
local tx = ARGV[1]
for i = 2, #ARGV do redis.call('ZREM', cr, tx .. ':' .. ARGV[i]) end
redis.call('ZREM', umr, tx)
return 0
"#;

/// The keys of one (organization, user) pair, all under the organization's hash tag.
struct Keys {
    prefix: String,
    user: String,
}

impl Keys {
    /// In the order both scripts expect.
    fn all(&self) -> [String; 10] {
        let p = &self.prefix;
        let u = &self.user;
        [
            format!("{p}cb"),
            format!("{p}cm"),
            format!("{p}cs"),
            format!("{p}cr"),
            format!("{p}umb:{u}"),
            format!("{p}umm:{u}"),
            format!("{p}ums:{u}"),
            format!("{p}umr:{u}"),
            format!("{p}urc:{u}"),
            format!("{p}urr:{u}"),
        ]
    }
}

/// Why a Redis limit store could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL for the limit store: {0}")]
pub struct RedisUrlError(String);

/// Limit counters shared by every replica through one Redis.
pub struct RedisLimitStore {
    conn: ConnectionManager,
    prefix: String,
    check: Script,
    record: Script,
    release: Script,
    errors: Counter,
}

impl std::fmt::Debug for RedisLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimitStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// The Redis password from a mounted Secret file (one trailing newline dropped).
pub fn read_password(file: &str) -> Result<String, RedisUrlError> {
    std::fs::read_to_string(file)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| RedisUrlError(format!("Redis password file {file}: {e}")))
}

impl RedisLimitStore {
    /// A store for `organization` at `url` (`redis://host:port/db`). Connects lazily, so a
    /// relay starts while Redis is down and answers 451 at RCPT until it comes back; the
    /// connection is re-established in the background after a failure. Must be called
    /// inside a tokio runtime.
    pub fn new(url: &str, organization: &str) -> Result<Self, RedisUrlError> {
        Self::with_password(url, None, organization)
    }

    /// As [`new`](Self::new), authenticating with `password` (read from a mounted Secret,
    /// never written into the URL of the config).
    pub fn with_password(
        url: &str,
        password: Option<&str>,
        organization: &str,
    ) -> Result<Self, RedisUrlError> {
        let info = url
            .into_connection_info()
            .map_err(|e| RedisUrlError(format!("{url}: {e}")))?;
        let info = match password {
            Some(p) => {
                let redis = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(redis)
            }
            None => info,
        };
        let client = Client::open(info).map_err(|e| RedisUrlError(format!("{url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisUrlError(format!("{url}: {e}")))?;
        // Braces would end the hash tag early; organization names are `namespace/name`.
        let tag: String = organization
            .chars()
            .map(|c| if c == '{' || c == '}' { '_' } else { c })
            .collect();
        Ok(Self {
            conn,
            prefix: format!("relay:{{{tag}}}:"),
            check: Script::new(&format!("{LUA_WINDOW}{LUA_CHECK}")),
            record: Script::new(&format!("{LUA_WINDOW}{LUA_RECORD}")),
            release: Script::new(LUA_RELEASE),
            errors: Counter::default(),
        })
    }

    /// Failures to reach Redis (each one a 451 at RCPT or an uncounted message); the
    /// relay registers it as `smtprelay_limit_store_errors_total`.
    pub fn errors(&self) -> Counter {
        self.errors.clone()
    }

    fn keys(&self, user: &str) -> Keys {
        Keys {
            prefix: self.prefix.clone(),
            user: user.to_string(),
        }
    }

    fn failed(&self, what: &'static str, e: impl std::fmt::Display) -> LimitStoreError {
        self.errors.inc();
        tracing::warn!(
            error = %e,
            "limit store unavailable ({what}); recipients get 451 until Redis answers"
        );
        LimitStoreError(format!("Redis {what}: {e}"))
    }

    async fn check_now(&self, q: RcptQuery<'_>) -> Result<Option<LimitHit>, LimitStoreError> {
        let now_ms = millis(q.now);
        let ttl_ms = q
            .limits
            .session_timeout_seconds
            .saturating_add(RESERVATION_MARGIN_SECONDS)
            .saturating_mul(1000);
        let mut inv = self.check.prepare_invoke();
        for k in self.keys(q.user).all() {
            inv.key(k);
        }
        inv.arg(now_ms)
            .arg(now_ms / 60_000)
            .arg(ttl_ms)
            .arg(q.limits.user_messages_per_day)
            .arg(q.limits.user_recipients_per_day)
            .arg(q.limits.customer_recipients_per_day)
            .arg(q.limits.customer_recipients_per10_minutes)
            .arg(q.rcpt)
            .arg(if q.pending.is_empty() { "1" } else { "0" })
            .arg(KEEP_SECONDS)
            .arg(q.tx.to_string());
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await;
        match answer {
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(1)) => Ok(Some(LimitHit::UserMessagesPerDay)),
            Ok(Ok(2)) => Ok(Some(LimitHit::UserRecipientsPerDay)),
            Ok(Ok(3)) => Ok(Some(LimitHit::CustomerRecipientsPerDay)),
            Ok(Ok(4)) => Ok(Some(LimitHit::CustomerRecipientsPer10Minutes)),
            Ok(Ok(other)) => Err(self.failed("check", format!("unexpected answer {other}"))),
            Ok(Err(e)) => Err(self.failed("check", e)),
            Err(_) => Err(self.failed("check", "timed out")),
        }
    }

    async fn record_now(&self, u: Usage<'_>) -> Result<(), LimitStoreError> {
        let count = Count {
            script: self.record.clone(),
            keys: self.keys(u.user).all(),
            now_ms: millis(u.now),
            tx: u.tx,
            rcpts: u.rcpts.to_vec(),
        };
        let mut conn = self.conn.clone();
        match count.send(&mut conn, true).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = self.failed("record", e);
                tokio::spawn(count.retry(conn, self.errors.clone()));
                Err(error)
            }
        }
    }
}

impl RedisLimitStore {
    /// Gives a transaction's reservations back. A failure only delays the capacity until
    /// the reservations expire, so it is logged and counted, not retried.
    async fn release_now(&self, r: Release<'_>) -> Result<(), LimitStoreError> {
        let mut inv = self.release.prepare_invoke();
        for k in self.keys(r.user).all() {
            inv.key(k);
        }
        inv.arg(r.tx.to_string());
        for rcpt in r.rcpts {
            inv.arg(rcpt.as_str());
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed("release", e)),
            Err(_) => Err(self.failed("release", "timed out")),
        }
    }
}

/// Counting one accepted message, kept so a failed count can be retried.
struct Count {
    script: Script,
    keys: [String; 10],
    now_ms: u64,
    tx: TxId,
    rcpts: Vec<String>,
}

impl Count {
    /// `pop`: turn this message's reservations into counts. A late retry does not pop:
    /// its own reservations have expired or will, and counting them twice only errs on
    /// the side of refusing.
    async fn send(&self, conn: &mut ConnectionManager, pop: bool) -> Result<(), String> {
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k.as_str());
        }
        inv.arg(self.now_ms)
            .arg(self.now_ms / 60_000)
            .arg(KEEP_SECONDS)
            .arg(if pop {
                self.tx.to_string()
            } else {
                String::new()
            });
        for r in &self.rcpts {
            inv.arg(r.as_str());
        }
        match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<i64>(conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Retries a count that failed, with growing pauses, for a few minutes: a message the
    /// relay accepted still counts once Redis is back (its time is the original one).
    async fn retry(self, mut conn: ConnectionManager, errors: Counter) {
        for attempt in 0..RECORD_RETRIES {
            tokio::time::sleep(Duration::from_secs((1u64 << attempt).min(60))).await;
            match self.send(&mut conn, false).await {
                Ok(()) => {
                    tracing::info!(attempt, "limit store counted an accepted message late");
                    return;
                }
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, attempt, "limit store still unavailable for a count");
                }
            }
        }
        tracing::error!(
            recipients = self.rcpts.len(),
            "an accepted message was never counted toward the limits: Redis did not answer"
        );
    }
}

/// The next turn of a route: at the later of now (Redis's clock, one clock for every
/// replica) and the turn after the last one given; the key expires a minute after its
/// last turn. Returns how many milliseconds to wait.
const LUA_TURN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
if next < now then next = now end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], next + interval, 'PX', interval + 60000)
return next - now
"#;

impl crate::delivery::rate::SharedTurns for RedisLimitStore {
    fn turn<'a>(
        &'a self,
        route: &'a str,
        interval: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = format!("{}rate:{route}", self.prefix);
            let millis = u64::try_from(interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let wait: i64 = tokio::time::timeout(
                REDIS_TIMEOUT,
                Script::new(LUA_TURN)
                    .key(key)
                    .arg(millis)
                    .invoke_async(&mut conn),
            )
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| e.to_string())?;
            Ok(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
        })
    }
}

impl LimitStore for RedisLimitStore {
    fn check<'a>(
        &'a self,
        query: RcptQuery<'a>,
    ) -> BoxFuture<'a, Result<Option<LimitHit>, LimitStoreError>> {
        Box::pin(self.check_now(query))
    }

    fn record<'a>(&'a self, usage: Usage<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(self.record_now(usage))
    }

    fn release<'a>(&'a self, release: Release<'a>) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(self.release_now(release))
    }
}

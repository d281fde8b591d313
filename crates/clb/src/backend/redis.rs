//! The `redis` backend (feature `redis`): for nodes that cannot mesh, every
//! node publishes its report to a shared Redis server (or Redis Cluster)
//! and reads everyone's.
//!
//! Each call is one atomic round trip, a Lua script that
//!
//! 1. reads the server's clock (`TIME`): ages and liveness are judged on it,
//!    so node clocks may disagree;
//! 2. stores this node's value if it changed (its age starts again), and
//!    notes that the node was heard from;
//! 3. drops members not heard from for `member_ttl` (failure detection);
//! 4. re-arms the expiry of the namespace's keys, so a cluster that goes
//!    away leaves nothing behind;
//! 5. returns every live member's value, stamped with when it last changed
//!    on the server's clock (the backend turns that into an age).
//!
//! The worker asks for a round's publish and view together
//! ([`ClusterBackend::publish_and_view`]): one round trip a round, plus a
//! lighter publish three times a round for freshness. The two keys of a
//! namespace share a hash tag (`clb:{<namespace>}:…`), so one script touches
//! one slot and the backend works on Redis Cluster. Each process publishes
//! under `<node id>@<incarnation>` (its start time in ms), so two processes
//! started with one id are two records, which the core notices.
//!
//! The connection is made lazily and kept by `redis`'s connection manager,
//! which reconnects after a Redis restart; while Redis is unreachable every
//! call fails, so every round is discarded: nothing is ever shed on stale
//! data. The password (from the URL or [`RedisConfig::password`]) is never
//! logged: URLs are shown with it masked.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clb_core::{ConfigError, MemberRecord, NodeId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, Script, Value};
use tokio::sync::Mutex as AsyncMutex;

use super::{BackendError, BackendHealth, ClusterBackend};
use crate::metrics;
use crate::ratelimit::RateLimiter;

/// How a node reaches Redis. Every field but `urls` and `node_id` has a
/// default.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// This node's id (`A-Z a-z 0-9 _ . - :`, at most 128).
    pub node_id: String,
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or
    /// `redis+unix:///path`. For a Redis Cluster, one or more of its nodes
    /// with [`cluster`](Self::cluster) set.
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster. Default false.
    pub cluster: bool,
    /// The password, when it is not in the URL (read it from the
    /// environment, say). Never logged.
    pub password: Option<String>,
    /// A member not heard from for this long is dropped. Default 10 s;
    /// 100 ms to 1 h. Keep it above a round and well above the publish
    /// interval (a quarter round).
    pub member_ttl: Duration,
    /// Longest one call may take, connecting included. Default 2 s.
    pub timeout: Duration,
    /// Prefix of every key. Default `clb:`.
    pub key_prefix: String,
    /// Which life of this node publishes: larger after every restart.
    /// Default: the start time in ms since the Unix epoch.
    pub incarnation: u64,
    /// For `rediss://`: the CA certificate (PEM) the server's certificate
    /// must chain to, instead of the system's and Mozilla's roots (a private
    /// CA). Default: none.
    pub tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("node_id", &self.node_id)
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("member_ttl", &self.member_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// A config with every default, for `node_id` on the server at `url`.
    pub fn new(node_id: impl Into<String>, url: impl Into<String>) -> Self {
        RedisConfig {
            node_id: node_id.into(),
            urls: vec![url.into()],
            cluster: false,
            password: None,
            member_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            key_prefix: "clb:".into(),
            incarnation: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            tls_ca: None,
        }
    }

    /// Checks the config; the error names the field (and never shows a
    /// password).
    pub fn validate(&self) -> Result<(), ConfigError> {
        clb_core::validate_node_id(&self.node_id)?;
        if self.urls.is_empty() || self.urls.len() > 64 {
            return Err(ConfigError::OutOfRange {
                field: "redis_url",
                value: self.urls.len().to_string(),
                range: "[1, 64] URLs".into(),
            });
        }
        for url in &self.urls {
            let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
                && url.as_str().into_connection_info().is_ok();
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "redis_url",
                    value: redact(url),
                    expected: "redis://[user:password@]host:port[/db], rediss://… or redis+unix:///path",
                });
            }
        }
        if let Some(p) = &self.password {
            if p.is_empty() || p.len() > 512 || p.chars().any(char::is_control) {
                return Err(ConfigError::Invalid {
                    field: "redis_password",
                    value: "<hidden>".into(),
                    expected: "1 to 512 bytes, no control characters",
                });
            }
        }
        let ms = |d: Duration| d.as_millis();
        if !(100..=3_600_000).contains(&ms(self.member_ttl)) {
            return Err(ConfigError::OutOfRange {
                field: "member_ttl",
                value: format!("{:?}", self.member_ttl),
                range: "[100ms, 1h]".into(),
            });
        }
        if !(10..=60_000).contains(&ms(self.timeout)) {
            return Err(ConfigError::OutOfRange {
                field: "redis_timeout",
                value: format!("{:?}", self.timeout),
                range: "[10ms, 60s]".into(),
            });
        }
        let prefix_ok = self.key_prefix.len() <= 64
            && !self.key_prefix.contains(['{', '}'])
            && !self.key_prefix.chars().any(char::is_control);
        if !prefix_ok {
            return Err(ConfigError::Invalid {
                field: "key_prefix",
                value: self.key_prefix.clone(),
                expected: "at most 64 characters, no braces",
            });
        }
        Ok(())
    }
}

/// `url` with its password masked, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// One of the two kinds of connection, both kept alive by the `redis`
/// crate (reconnects included).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis backend: one per node, shared by every balancer of the node.
pub struct RedisBackend {
    config: RedisConfig,
    conn: AsyncMutex<Option<Conn>>,
    script: Script,
    last_error: Mutex<Option<String>>,
    log: RateLimiter,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The round trip; see the module docs. KEYS: values, heard.
/// ARGV: mode (`publish`, `view`, `both`), member, value, ttl in ms.
///
/// `values` maps a member to `<changed ms> <value>`; `heard` scores each
/// member with when it last published. The view is `HGETALL values` as it
/// stands, so Redis does no work per member in the common case: a per-member
/// loop in Lua cost six times as much at 500 members (BENCHMARKS.md).
const ROUND_TRIP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
if ARGV[1] ~= 'view' then
  local old = redis.call('HGET', KEYS[1], ARGV[2])
  local same = false
  if old then
    local space = string.find(old, ' ', 1, true)
    same = space ~= nil and string.sub(old, space + 1) == ARGV[3]
  end
  if not same then
    redis.call('HSET', KEYS[1], ARGV[2], string.format('%.0f', now) .. ' ' .. ARGV[3])
  end
  redis.call('ZADD', KEYS[2], now, ARGV[2])
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))) do
  redis.call('HDEL', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
end
-- A value nobody is heard for (written by hand, or its key evicted) goes.
if redis.call('HLEN', KEYS[1]) ~= redis.call('ZCARD', KEYS[2]) then
  for _, m in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not redis.call('ZSCORE', KEYS[2], m) then
      redis.call('HDEL', KEYS[1], m)
    end
  end
end
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ttl * 3)
  end
end
if ARGV[1] == 'publish' then
  return {now}
end
return {now, redis.call('HGETALL', KEYS[1])}
";

impl RedisBackend {
    /// Checks the config; the connection is made at the first call and
    /// kept from then on, so a node starts while Redis is down (its rounds
    /// are discarded until Redis answers).
    pub fn new(config: RedisConfig) -> Result<Self, BackendError> {
        config.validate()?;
        ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => "malformed").increment(0);
        if config.urls.iter().any(|u| u.starts_with("rediss://")) {
            // TLS needs a process-wide crypto provider; one may already be
            // installed by the application, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let urls: Vec<String> = config.urls.iter().map(|u| redact(u)).collect();
        tracing::info!(node = %config.node_id, urls = ?urls, cluster = config.cluster, "redis backend");
        Ok(RedisBackend {
            config,
            conn: AsyncMutex::new(None),
            script: Script::new(ROUND_TRIP),
            last_error: Mutex::new(None),
            log: RateLimiter::default(),
        })
    }

    /// This process's member name: `<node id>@<incarnation>`.
    fn member(&self) -> String {
        format!("{}@{}", self.config.node_id, self.config.incarnation)
    }

    fn keys(&self, namespace: &str) -> [String; 2] {
        let p = &self.config.key_prefix;
        [
            format!("{p}{{{namespace}}}:values"),
            format!("{p}{{{namespace}}}:heard"),
        ]
    }

    async fn connect(&self) -> Result<Conn, BackendError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let infos = self
            .config
            .urls
            .iter()
            .map(|url| {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BackendError::Unreachable(format!("{}: {e}", redact(url))))?;
                if let Some(password) = &self.config.password {
                    if info.redis_settings().password().is_none() {
                        let settings = info.redis_settings().clone().set_password(password);
                        info = info.set_redis_settings(settings);
                    }
                }
                Ok(info)
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let timeout = self.config.timeout;
        let unreachable = |e: redis::RedisError| BackendError::Unreachable(format!("redis: {e}"));
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: self.config.tls_ca.clone(),
        };
        let conn = if self.config.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if self.config.tls_ca.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder.build().map_err(unreachable)?;
            let connecting = client.get_async_connection();
            let conn = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| BackendError::TimedOut(timeout))?
                .map_err(unreachable)?;
            Conn::Cluster(conn)
        } else {
            let Some(info) = infos.into_iter().next() else {
                return Err(BackendError::Unreachable("no Redis URL".into()));
            };
            let client = match self.config.tls_ca {
                Some(_) => redis::Client::build_with_tls(info, certs()),
                None => redis::Client::open(info),
            }
            .map_err(unreachable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let connecting = ConnectionManager::new_with_config(client, config);
            let conn = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| BackendError::TimedOut(timeout))?
                .map_err(unreachable)?;
            Conn::Single(conn)
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs the round trip in `mode`; the members' records unless `publish`.
    async fn round_trip(
        &self,
        mode: &str,
        namespace: &str,
        value: &str,
    ) -> Result<Vec<MemberRecord>, BackendError> {
        let keys = self.keys(namespace);
        let ttl = u64::try_from(self.config.member_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&keys[0])
            .key(&keys[1])
            .arg(mode)
            .arg(self.member())
            .arg(value)
            .arg(ttl);
        let reply = self
            .call(|mut conn| async move {
                match &mut conn {
                    Conn::Single(c) => invocation.invoke_async::<Value>(c).await,
                    Conn::Cluster(c) => invocation.invoke_async::<Value>(c).await,
                }
            })
            .await?;
        if mode == "publish" {
            return Ok(Vec::new());
        }
        parse_members(reply).map_err(|e| {
            ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => "malformed").increment(1);
            BackendError::Protocol(e)
        })
    }

    /// Runs `f` on the connection within the timeout, remembering the last
    /// failure for [`ClusterBackend::health`].
    async fn call<F, Fut, T>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.connect().await {
            Ok(conn) => match tokio::time::timeout(self.config.timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(BackendError::Unreachable(format!("redis: {e}"))),
                Err(_) => Err(BackendError::TimedOut(self.config.timeout)),
            },
            Err(e) => Err(e),
        };
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *last = None,
            Err(e) => {
                if last.is_none() || self.log.hit("redis").is_some() {
                    tracing::warn!(error = %e, "redis call failed; rounds are discarded until it answers");
                }
                *last = Some(e.to_string());
            }
        }
        result
    }
}

/// `[now, [member, "<changed ms> <value>", …]]` as records.
fn parse_members(reply: Value) -> Result<Vec<MemberRecord>, String> {
    let Value::Array(items) = reply else {
        return Err(format!("the round trip returned {reply:?}, not an array"));
    };
    let mut items = items.into_iter();
    let (Some(Value::Int(now)), Some(Value::Array(fields))) = (items.next(), items.next()) else {
        return Err("the round trip returned no time and values".into());
    };
    let text = |v: Value| match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    };
    let mut records = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.into_iter();
    while let (Some(member), Some(stored)) = (fields.next(), fields.next()) {
        let member = text(member)?;
        let stored = text(stored)?;
        // A value written by hand without the time goes to the core whole,
        // as if just changed: the core refuses it or decides on it, never
        // this backend.
        let stamped = stored
            .split_once(' ')
            .and_then(|(ms, value)| Some((ms.parse::<i64>().ok()?, value.to_owned())));
        let (changed, value) = stamped.unwrap_or((now, stored));
        // `node@incarnation`; a member written by hand without one is
        // incarnation 0 (and a node id the core may well refuse).
        let (node, incarnation) = match member.rsplit_once('@') {
            Some((node, inc)) => (node.to_owned(), inc.parse().unwrap_or(0)),
            None => (member, 0),
        };
        records.push(MemberRecord {
            node: NodeId::new(node),
            incarnation,
            value,
            age: Duration::from_millis(u64::try_from(now - changed).unwrap_or(0)),
        });
    }
    Ok(records)
}

/// What `/status` shows of Redis (passwords masked).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RedisStatus {
    /// The URLs, passwords masked.
    pub urls: Vec<String>,
    /// Whether they are a Redis Cluster.
    pub cluster: bool,
    /// The last call's error, if it failed.
    pub last_error: Option<String>,
}

impl RedisBackend {
    /// What `/status` shows of Redis.
    pub fn status(&self) -> RedisStatus {
        RedisStatus {
            urls: self.config.urls.iter().map(|u| redact(u)).collect(),
            cluster: self.config.cluster,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl ClusterBackend for RedisBackend {
    async fn publish(
        &self,
        namespace: &str,
        _node: &NodeId,
        value: &str,
    ) -> Result<(), BackendError> {
        self.round_trip("publish", namespace, value)
            .await
            .map(|_| ())
    }

    async fn view(&self, namespace: &str) -> Result<Vec<MemberRecord>, BackendError> {
        self.round_trip("view", namespace, "").await
    }

    async fn publish_and_view(
        &self,
        namespace: &str,
        _node: &NodeId,
        value: &str,
    ) -> Result<Vec<MemberRecord>, BackendError> {
        self.round_trip("both", namespace, value).await
    }

    /// Writes `left` in place of the report; it expires like any value.
    async fn leave(&self, namespace: &str, node: &NodeId) -> Result<(), BackendError> {
        self.publish(namespace, node, clb_core::wire::LEFT).await
    }

    fn node_id(&self) -> Option<NodeId> {
        Some(NodeId::new(self.config.node_id.clone()))
    }

    fn health(&self) -> BackendHealth {
        let mut health = BackendHealth::default();
        if let Some(e) = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            health
                .warnings
                .push(format!("redis unreachable, rounds are discarded: {e}"));
        }
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(
            redact("rediss://:s3cret@host:6380"),
            "rediss://:***@host:6380"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let mut config = RedisConfig::new("n1", "redis://u:s3cret@host:6379");
        config.password = Some("other-secret".into());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("other-secret"),
            "{shown}"
        );
        config.urls = vec!["http://u:s3cret@host".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("redis_url") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn replies_become_records_and_anything_else_is_malformed() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let now = 1_700_000_000_000;
        let reply = Value::Array(vec![
            Value::Int(now),
            Value::Array(vec![
                bulk("a@17"),
                bulk(&format!("{} v2;c=1;s=1;t=0.5;w=1;r=0", now - 250)),
                bulk("by-hand"),
                bulk("garbage"),
                bulk("stamped-by-hand@2"),
                bulk(&format!("{now} also garbage")),
            ]),
        ]);
        let records = parse_members(reply).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            (records[0].node.as_str(), records[0].incarnation),
            ("a", 17)
        );
        assert_eq!(records[0].value, "v2;c=1;s=1;t=0.5;w=1;r=0");
        assert_eq!(records[0].age, Duration::from_millis(250));
        // Without a time stamp the whole value goes to the core, which
        // refuses it; with one, the rest does.
        assert_eq!(
            (records[1].node.as_str(), records[1].value.as_str()),
            ("by-hand", "garbage")
        );
        assert_eq!(records[1].age, Duration::ZERO);
        assert_eq!(records[2].value, "also garbage");
        assert!(parse_members(Value::Int(3)).is_err());
        assert!(parse_members(Value::Array(vec![Value::Int(0)])).is_err());
        let not_text = Value::Array(vec![
            Value::Int(0),
            Value::Array(vec![bulk("a"), Value::Int(5)]),
        ]);
        assert!(parse_members(not_text).is_err());
    }
}

//! The flags every subcommand shares, one struct per section of `clb.toml`:
//! `[balancer]` ([`ConfigArgs`]), `[limits]` ([`LimitArgs`]), `[gossip]`
//! ([`GossipArgs`]), `[redis]` ([`RedisArgs`]). Each field is one flag, one
//! key of its section (the flag's name with underscores) and one
//! environment variable (`CLB_` and the key in capitals): one list of
//! fields, three ways in. See [`crate::config_file`] for how they layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use clb::adapter::websocket::WsLimits;
use clb::{ClusterKey, GossipConfig};
use clb_core::{Config, Strategy};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, BackendPlan};
use crate::config_file::{FileConfig, layer};

/// A cap that can be turned off: a value, or `none`. A newtype rather than
/// `Option<Option<T>>`, which clap cannot parse into from a custom parser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cap<T>(pub Option<T>);

/// Every [`Config`] field. Unset fields keep the strategy's preset.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigArgs {
    /// Decision rule: proportional (the default) or classic (the Elixir
    /// original, exactly).
    #[arg(long, value_parser = parse_strategy)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Time between two decisions, e.g. 10s, 500ms (default: 10s; in the demo, 1s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub round_duration: Option<Duration>,
    /// How far above average/target a node may be, in percent (default: 25).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_average_deviation_percent: Option<f64>,
    /// Share of the excess shed in one round, in percent (default: 100; classic 50).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shed_percentage: Option<f64>,
    /// Most shed by one node in one round; "none" for no absolute cap
    /// (default: none; classic 100).
    #[arg(long, value_parser = parse_cap_u64)]
    #[serde(default, with = "serde_cap", skip_serializing_if = "Option::is_none")]
    pub max_shed_count: Option<Cap<u64>>,
    /// Smallest amount worth shedding (default: 1; classic 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_shed_count: Option<u64>,
    /// Proportional: rebalance until every node is this close to target, percent (default: 5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_band_percent: Option<f64>,
    /// Proportional: absolute floor under both bands, in resources (default: 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abs_tolerance: Option<u64>,
    /// Hard cap per round as a share of the node's count; "none" to turn off
    /// (default: classic: none, else 0.1).
    #[arg(long, value_parser = parse_cap_f64)]
    #[serde(default, with = "serde_cap", skip_serializing_if = "Option::is_none")]
    pub max_shed_fraction: Option<Cap<f64>>,
    /// Rounds to hold shedding after a membership change (default: classic: 0, else 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_rounds: Option<u32>,
    /// Decide only while seeing a strict majority of the members remembered,
    /// so a partitioned minority never sheds; a node holding a majority
    /// forgets a lost member after this many rounds; 0 = off (default:
    /// classic: 0, else 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum_rounds: Option<u32>,
    /// Spread a shed over this share of a round; 0 = all at once
    /// (default: classic: 0, else 0.5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacing_window: Option<f64>,
    /// Most batches one shed is split into (default: 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacing_max_batches: Option<u32>,
    /// Admission control: refuse new resources while above target in an
    /// active rebalance (proportional), on or off (default: classic: off, else on).
    #[arg(long, value_parser = parse_on_off)]
    #[serde(
        default,
        with = "serde_on_off",
        skip_serializing_if = "Option::is_none"
    )]
    pub admission: Option<bool>,
    /// Decide and report, shed nothing.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// This node's capacity relative to the others (default: 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl ConfigArgs {
    /// The strategy's preset with every given field applied, validated.
    pub fn to_config(&self) -> Result<Config, clb_core::ConfigError> {
        let mut c = match self.strategy {
            Some(Strategy::Classic) => Config::classic(),
            _ => Config::proportional(),
        };
        set(&mut c.strategy, self.strategy);
        set(&mut c.round_duration, self.round_duration);
        set(
            &mut c.allowed_average_deviation_percent,
            self.allowed_average_deviation_percent,
        );
        set(&mut c.shed_percentage, self.shed_percentage);
        set(&mut c.max_shed_count, self.max_shed_count.map(|Cap(v)| v));
        set(&mut c.min_shed_count, self.min_shed_count);
        set(&mut c.stop_band_percent, self.stop_band_percent);
        set(&mut c.abs_tolerance, self.abs_tolerance);
        set(
            &mut c.max_shed_fraction,
            self.max_shed_fraction.map(|Cap(v)| v),
        );
        set(&mut c.settle_rounds, self.settle_rounds);
        set(&mut c.quorum_rounds, self.quorum_rounds);
        set(&mut c.pacing_window, self.pacing_window);
        set(&mut c.pacing_max_batches, self.pacing_max_batches);
        set(&mut c.admission_control, self.admission);
        c.dry_run |= self.dry_run;
        set(&mut c.weight, self.weight);
        c.validate()?;
        Ok(c)
    }
}

/// Every WebSocket limit; unset fields keep [`WsLimits::default`].
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitArgs {
    /// Most WebSocket connections held at once; beyond it upgrades get 503
    /// (default: 10000, lowered to fit the open-file limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections not (yet) upgraded, per listener; beyond it a connection
    /// gets 503 and is closed (default: 1024).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_connections: Option<usize>,
    /// Largest WebSocket message accepted; larger gets close 1009
    /// (default: 64KiB).
    #[arg(long, value_parser = parse_size)]
    #[serde(default, with = "serde_size", skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// Largest WebSocket frame accepted (default: 64KiB).
    #[arg(long, value_parser = parse_size)]
    #[serde(default, with = "serde_size", skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<usize>,
    /// Read buffer per connection, most of its idle memory (default: 4KiB).
    #[arg(long, value_parser = parse_size)]
    #[serde(default, with = "serde_size", skip_serializing_if = "Option::is_none")]
    pub ws_read_buffer: Option<usize>,
    /// Outgoing bytes gathered before writing; 0 writes at once (default: 0).
    #[arg(long, value_parser = parse_size)]
    #[serde(default, with = "serde_size", skip_serializing_if = "Option::is_none")]
    pub ws_write_buffer: Option<usize>,
    /// Most outgoing bytes queued per connection, pongs included
    /// (default: 256KiB).
    #[arg(long, value_parser = parse_size)]
    #[serde(default, with = "serde_size", skip_serializing_if = "Option::is_none")]
    pub ws_max_write_buffer: Option<usize>,
    /// Longest a send waits for a client to read; then it is dropped
    /// (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub ws_send_timeout: Option<Duration>,
    /// Time between pings to each connection (default: 30s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub ws_ping_interval: Option<Duration>,
    /// Close a connection silent for this long, pongs included (default: 90s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub ws_idle_timeout: Option<Duration>,
    /// Longest a close may take before the connection is dropped (default: 3s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub close_deadline: Option<Duration>,
    /// Longest request headers may take to arrive, and an HTTP connection
    /// may sit idle (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<Duration>,
}

impl LimitArgs {
    /// The defaults with every given field applied, validated.
    pub fn to_limits(&self) -> Result<WsLimits, clb_core::ConfigError> {
        let mut l = WsLimits::default();
        let d = &mut l;
        set(&mut d.max_connections, self.max_connections);
        set(&mut d.max_pending_connections, self.max_pending_connections);
        set(&mut d.max_message_size, self.max_message_size);
        set(&mut d.max_frame_size, self.max_frame_size);
        set(&mut d.read_buffer_size, self.ws_read_buffer);
        set(&mut d.write_buffer_size, self.ws_write_buffer);
        set(&mut d.max_write_buffer_size, self.ws_max_write_buffer);
        set(&mut d.send_timeout, self.ws_send_timeout);
        set(&mut d.ping_interval, self.ws_ping_interval);
        set(&mut d.idle_timeout, self.ws_idle_timeout);
        set(&mut d.close_deadline, self.close_deadline);
        set(&mut d.handshake_timeout, self.handshake_timeout);
        // Defaults that depend on a given field follow it, so one field is
        // never refused for another field's default.
        if self.max_frame_size.is_none() {
            d.max_frame_size = d.max_frame_size.min(d.max_message_size);
        }
        if self.ws_max_write_buffer.is_none() {
            d.max_write_buffer_size = d
                .max_write_buffer_size
                .max(d.write_buffer_size + d.max_message_size + 1);
        }
        if self.ws_idle_timeout.is_none() {
            d.idle_timeout = d.idle_timeout.max(d.ping_interval * 3);
        }
        l.validate()?;
        Ok(l)
    }

    /// [`to_limits`](Self::to_limits), with the open-file limit raised to
    /// what the caps need. Explicit caps that do not fit are an error;
    /// default caps are lowered to fit, with a warning (a machine whose
    /// limit is 1,024 still runs a node).
    pub fn to_fitted_limits(&self) -> anyhow::Result<WsLimits> {
        let mut limits = self.to_limits()?;
        let needed = |l: &WsLimits| {
            l.max_connections as u64 + 2 * l.max_pending_connections as u64 + FD_OVERHEAD
        };
        let wanted = needed(&limits);
        #[cfg(unix)]
        let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
        #[cfg(not(unix))]
        let got = wanted;
        if got >= wanted {
            return Ok(limits);
        }
        let before = (limits.max_connections, limits.max_pending_connections);
        if self.max_pending_connections.is_none() {
            let share = usize::try_from(got / 8).unwrap_or(usize::MAX).max(16);
            limits.max_pending_connections = limits.max_pending_connections.min(share);
        }
        if self.max_connections.is_none() {
            let reserve = 2 * limits.max_pending_connections as u64 + FD_OVERHEAD;
            let fits = usize::try_from(got.saturating_sub(reserve)).unwrap_or(usize::MAX);
            limits.max_connections = limits.max_connections.min(fits);
        }
        if needed(&limits) > got || limits.max_connections < 16 {
            bail!(
                "the open-file limit is {got}, too low for --max-connections {} with --max-pending-connections {} \
                 (needs {wanted}): raise it with `ulimit -n {wanted}`, or lower them",
                before.0,
                before.1
            );
        }
        tracing::warn!(
            "the open-file limit is {got}: max_connections lowered from {} to {} and max_pending_connections \
             from {} to {} to fit (raise it with `ulimit -n {wanted}`)",
            before.0,
            limits.max_connections,
            before.1,
            limits.max_pending_connections
        );
        Ok(limits)
    }
}

/// File descriptors a node needs beyond its connections.
const FD_OVERHEAD: u64 = 256;

/// How a node gossips: every [`GossipConfig`] field a user sets.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipArgs {
    /// UDP address to gossip on; port 0: any free port, see the ready line
    /// (default: 127.0.0.1:7946).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_listen: Option<SocketAddr>,
    /// Address peers gossip to, if not --gossip-listen (behind NAT, say).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Peers to join, host:port, comma-separated (DNS names are re-resolved).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, with = "serde_list", skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// Shared secret(s) authenticating gossip, comma-separated: sign with the
    /// first, accept any (key rotation). At least 16 bytes each. Best given
    /// as CLB_CLUSTER_KEY.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, with = "serde_list", skip_serializing_if = "Vec::is_empty")]
    pub cluster_key: Vec<String>,
    /// Nodes of different cluster ids ignore each other (default: clb).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Time between gossip rounds (default: 250ms).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub gossip_interval: Option<Duration>,
    /// Incarnation number, larger after every restart (default: start time in ms).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Not ready if given seeds and none admitted this long after start;
    /// "none" to never (default: 30s).
    #[arg(long, value_parser = parse_opt_duration)]
    #[serde(
        default,
        with = "serde_cap_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub join_timeout: Option<Cap<Duration>>,
}

impl GossipArgs {
    /// The gossip config of node `id`, validated.
    pub fn to_config(&self, id: &str) -> Result<GossipConfig, clb_core::ConfigError> {
        let listen = self
            .gossip_listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7946)));
        let mut gossip = GossipConfig::new(id, listen);
        gossip.advertise_addr = self.gossip_advertise;
        gossip.seeds = self.seeds.clone();
        set(&mut gossip.cluster_id, self.cluster_id.clone());
        gossip.keys = self
            .cluster_key
            .iter()
            .filter(|k| !k.is_empty())
            .map(ClusterKey::new)
            .collect::<Result<Vec<_>, _>>()?;
        set(&mut gossip.gossip_interval, self.gossip_interval);
        set(&mut gossip.generation, self.generation);
        set(&mut gossip.join_timeout, self.join_timeout.map(|Cap(t)| t));
        gossip.validate()?;
        Ok(gossip)
    }
}

/// How a node reaches Redis, for `--backend redis`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisArgs {
    /// Redis URL(s), comma-separated: redis://user:password@host:port/db
    /// (user, password, db optional), rediss://… (TLS), redis+unix:///path;
    /// several for a Redis Cluster.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, with = "serde_list", skip_serializing_if = "Vec::is_empty")]
    pub redis_url: Vec<String>,
    /// The URLs are nodes of a Redis Cluster.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub redis_cluster: bool,
    /// The Redis password, if not in the URL. Best given as
    /// CLB_REDIS_PASSWORD; never logged.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<String>,
    /// For rediss://: a PEM file with the CA the server's certificate chains
    /// to (default: the system's and Mozilla's roots).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls_ca: Option<PathBuf>,
    /// A member not heard from for this long is dropped (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub redis_member_ttl: Option<Duration>,
    /// Longest one Redis call may take, connecting included (default: 2s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "serde_dur", skip_serializing_if = "Option::is_none")]
    pub redis_timeout: Option<Duration>,
}

impl RedisArgs {
    /// The Redis config of node `id`, validated.
    pub fn to_config(&self, id: &str) -> anyhow::Result<clb::RedisConfig> {
        let Some(first) = self.redis_url.first() else {
            bail!("--backend redis needs --redis-url (or redis_url in [redis], or CLB_REDIS_URL)");
        };
        let mut redis = clb::RedisConfig::new(id, first.clone());
        redis.urls = self.redis_url.clone();
        redis.cluster = self.redis_cluster;
        redis.password = self.redis_password.clone();
        if let Some(path) = &self.redis_tls_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("--redis-tls-ca {}", path.display()))?;
            redis.tls_ca = Some(pem);
        }
        set(&mut redis.member_ttl, self.redis_member_ttl);
        set(&mut redis.timeout, self.redis_timeout);
        redis.validate()?;
        Ok(redis)
    }
}

/// Who this process is in the cluster, and where it answers: `[node]`,
/// shared by `clb node` and `clb sidecar`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFields {
    /// This node's id, unique in the cluster (A-Z a-z 0-9 _ . - :); required.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name of the balanced resource; nodes balance per namespace
    /// (default: websocket).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// HTTP address for /metrics, /status, /health/ready; port 0: any free
    /// port, see the ready line (default: 127.0.0.1:9090).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// The URL clients should use for this node, advertised for steered
    /// reconnects (clb node's default: ws://WS-LISTEN/ws).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// How nodes learn each other's counts: gossip or redis (default: gossip).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
}

/// Everything a cluster member (node or sidecar) takes from the command
/// line, the environment and `clb.toml`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// `[node]`.
    #[command(flatten)]
    pub node: NodeFields,
    /// `[balancer]`.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// `[gossip]`.
    #[command(flatten)]
    pub gossip: GossipArgs,
    /// `[redis]`.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// A cluster member's settings, layered and checked; nothing started.
#[derive(Debug)]
pub struct Member {
    /// The node's id.
    pub id: String,
    /// The namespace it balances.
    pub namespace: String,
    /// Where its HTTP endpoints answer.
    pub http_listen: SocketAddr,
    /// Its clients' address, for steering hints.
    pub advertise_url: Option<String>,
    /// The decision config.
    pub config: Config,
    /// The backend, checked, not started.
    pub backend: BackendPlan,
}

impl ClusterArgs {
    /// Layers flags, environment and `file`, and checks everything a user
    /// can get wrong.
    pub fn resolve(&self, file: &FileConfig) -> anyhow::Result<Member> {
        let node = layer(&self.node, file.node.as_ref())?;
        let Some(id) = node.id else {
            bail!("a node id is required: --id (or id in [node], or CLB_ID)");
        };
        let namespace = node.namespace.unwrap_or_else(|| "websocket".into());
        clb_core::validate_namespace(&namespace)?;
        if let Some(url) = &node.advertise_url {
            clb_core::validate_address(url).context("--advertise-url")?;
        }
        let config = layer(&self.config, file.balancer.as_ref())?.to_config()?;
        let kind = node.backend.unwrap_or_default();
        // A file may hold both sections (to switch by one key); a flag for
        // the backend not in use is a mistake worth stopping for.
        let (unused, other) = match kind {
            BackendKind::Gossip => (flags_given(&self.redis)?, BackendKind::Redis),
            BackendKind::Redis => (flags_given(&self.gossip)?, BackendKind::Gossip),
        };
        if !unused.is_empty() {
            bail!(
                "{} set, but this member uses --backend {} (a {} setting has no effect)",
                unused.join(", "),
                kind.as_str(),
                other.as_str()
            );
        }
        let backend = match kind {
            BackendKind::Gossip => {
                BackendPlan::Gossip(layer(&self.gossip, file.gossip.as_ref())?.to_config(&id)?)
            }
            BackendKind::Redis => {
                BackendPlan::Redis(layer(&self.redis, file.redis.as_ref())?.to_config(&id)?)
            }
        };
        Ok(Member {
            http_listen: node
                .http_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090))),
            advertise_url: node.advertise_url,
            id,
            namespace,
            config,
            backend,
        })
    }
}

/// The flags set in `args`, as `--flag-name`.
fn flags_given<T: Serialize>(args: &T) -> anyhow::Result<Vec<String>> {
    let table = toml::Table::try_from(args).context("re-reading the flags")?;
    Ok(table
        .keys()
        .map(|k| format!("--{}", k.replace('_', "-")))
        .collect())
}

fn is_false(b: &bool) -> bool {
    !b
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse().map_err(|e: clb_core::ConfigError| e.to_string())
}

/// The longest duration any flag takes: longer is a typo, not a setting.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `10s`, `500ms`, `1m`, or a bare number of seconds; at most a week.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("expected a duration of at most a week, got {s:?}"))?,
        Err(_) => {
            humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s, 500ms)"))?
        }
    };
    if d > MAX_DURATION {
        return Err(format!("expected a duration of at most a week, got {s:?}"));
    }
    Ok(d)
}

/// A duration, or `none` to turn the feature off.
pub fn parse_opt_duration(s: &str) -> Result<Cap<Duration>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => parse_duration(s).map(|d| Cap(Some(d))),
    }
}

/// A size in bytes: `4096`, `4KiB`, `64KiB`, `1MiB` (also `K`, `M`, `G`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" | "kB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        _ => {
            return Err(format!(
                "expected a size like 4096, 64KiB or 1MiB, got {s:?}"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("expected a size like 4096, 64KiB or 1MiB, got {s:?}"))
}

fn parse_cap_u64(s: &str) -> Result<Cap<u64>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => s
            .parse()
            .map(|n| Cap(Some(n)))
            .map_err(|_| format!("expected a whole number or \"none\", got {s:?}")),
    }
}

fn parse_cap_f64(s: &str) -> Result<Cap<f64>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => s
            .parse()
            .map(|n| Cap(Some(n)))
            .map_err(|_| format!("expected a number or \"none\", got {s:?}")),
    }
}

/// A comma-separated list, e.g. `100,0,0`.
pub fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|part| {
            part.trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a valid number in {s:?}"))
        })
        .collect()
}

/// `on` / `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// How values look in `clb.toml`: the same as on the command line, as
/// strings, numbers or booleans where TOML has them.
mod serde_forms {
    use serde::de::{self, Deserializer};
    use serde::{Deserialize, Serialize};

    /// A TOML value as this module takes it.
    #[derive(Deserialize, Serialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
        List(Vec<String>),
    }

    impl Raw {
        pub(super) fn text(&self) -> String {
            match self {
                Raw::Bool(b) => b.to_string(),
                Raw::Int(i) => i.to_string(),
                Raw::Float(f) => f.to_string(),
                Raw::Text(s) => s.clone(),
                Raw::List(v) => v.join(","),
            }
        }
    }

    /// Parses what the key holds with the flag's own parser.
    pub(super) fn via<'de, D, T>(
        d: D,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let raw = Option::<Raw>::deserialize(d)?;
        raw.map(|r| parse(&r.text()).map_err(de::Error::custom))
            .transpose()
    }
}

macro_rules! serde_via {
    ($module:ident, $ty:ty, $parse:expr, $show:expr) => {
        pub(crate) mod $module {
            use serde::{Deserializer, Serialize, Serializer};

            #[allow(unused_imports)]
            use super::*;

            pub(crate) fn serialize<S: Serializer>(
                v: &Option<$ty>,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                let show: fn(&$ty) -> super::serde_forms::Raw = $show;
                v.as_ref().map(show).serialize(s)
            }

            pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<$ty>, D::Error> {
                super::serde_forms::via(d, $parse)
            }
        }
    };
}

use serde_forms::Raw;

serde_via!(serde_dur, Duration, parse_duration, |d| Raw::Text(
    humantime::format_duration(*d).to_string()
));
serde_via!(serde_size, usize, parse_size, |n| Raw::Int(
    i64::try_from(*n).unwrap_or(i64::MAX)
));
serde_via!(
    serde_cap_dur,
    Cap<Duration>,
    parse_opt_duration,
    |c| match c.0 {
        Some(d) => Raw::Text(humantime::format_duration(d).to_string()),
        None => Raw::Text("none".into()),
    }
);
serde_via!(serde_on_off, bool, parse_on_off, |b| Raw::Bool(*b));

/// `Cap<u64>` or `Cap<f64>`: a number, or `"none"`.
mod serde_cap {
    use serde::{Deserializer, Serialize, Serializer};

    use super::Cap;
    use super::serde_forms::Raw;

    pub(super) trait Number: Copy + std::str::FromStr {
        fn raw(self) -> Raw;
    }

    impl Number for u64 {
        fn raw(self) -> Raw {
            Raw::Int(i64::try_from(self).unwrap_or(i64::MAX))
        }
    }

    impl Number for f64 {
        fn raw(self) -> Raw {
            Raw::Float(self)
        }
    }

    pub(super) fn serialize<S: Serializer, T: Number>(
        v: &Option<Cap<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.map(|Cap(c)| c.map_or(Raw::Text("none".into()), Number::raw))
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Number>(
        d: D,
    ) -> Result<Option<Cap<T>>, D::Error> {
        super::serde_forms::via(d, |s| match s {
            "none" | "off" => Ok(Cap(None)),
            _ => s
                .parse()
                .map(|n| Cap(Some(n)))
                .map_err(|_| format!("expected a number or \"none\", got {s:?}")),
        })
    }
}

/// A list: a TOML array, or one comma-separated string (as in an
/// environment variable).
mod serde_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::serde_forms::Raw;

    pub(super) fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Raw::deserialize(d)? {
            Raw::List(v) => v,
            other => other
                .text()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_refuse_what_does_not_fit() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["1e30", "-1", "NaN", "inf", "8d", "", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_units_and_refuse_overflow() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        for bad in [
            "-1",
            "1.5KiB",
            "99999999999999999999",
            "1 furlong",
            "",
            "17179869184G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_form_round_trips_through_toml() {
        let args = ConfigArgs {
            strategy: Some(Strategy::Classic),
            round_duration: Some(Duration::from_millis(1500)),
            max_shed_count: Some(Cap(None)),
            max_shed_fraction: Some(Cap(Some(0.2))),
            admission: Some(false),
            dry_run: true,
            ..ConfigArgs::default()
        };
        let text = toml::to_string(&args).unwrap();
        let back: ConfigArgs = toml::from_str(&text).unwrap();
        assert_eq!(format!("{back:?}"), format!("{args:?}"), "{text}");
        let limits: LimitArgs =
            toml::from_str("max_message_size = \"32KiB\"\nws_read_buffer = 8192").unwrap();
        assert_eq!(
            (limits.max_message_size, limits.ws_read_buffer),
            (Some(32768), Some(8192))
        );
        let gossip: GossipArgs =
            toml::from_str("seeds = \"a:1, b:2\"\njoin_timeout = \"none\"").unwrap();
        assert_eq!(gossip.seeds, ["a:1", "b:2"]);
        assert_eq!(gossip.join_timeout, Some(Cap(None)));
    }
}

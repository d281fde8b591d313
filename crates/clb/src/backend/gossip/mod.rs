//! The `gossip` backend: nodes find each other and exchange reports over UDP
//! gossip, with no infrastructure, built on the [`chitchat`] crate
//! (scuttlebutt anti-entropy with a phi-accrual failure detector, Quickwit's
//! membership layer).
//!
//! Each node keeps one key per namespace, `clb/<namespace>`, holding its
//! report exactly as the core encoded it. One gossip instance serves every
//! namespace of a node. A member is identified by its node id and a
//! *generation* (its start time, in ms): after a restart, peers briefly list
//! both incarnations as live; the core keeps the newest and notices two that
//! both keep publishing (two processes started with one id).
//!
//! This backend moves bytes: it never decodes, drops or repairs a report.
//! What it does judge is the datagrams themselves ([`transport`]): forged,
//! replayed, misaddressed or malformed ones are dropped, counted by reason in
//! `clb_rejected_messages_total` (every reason present from the start, at 0)
//! and logged at most once per reason every 10 seconds.

pub mod transport;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
};
use clb_core::{ConfigError, MemberRecord, NodeId};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::transport::{AuthTransport, Reject, RejectStats};
pub use self::transport::{ClusterKey, DatagramSocket};
use super::{BackendError, BackendHealth, ClusterBackend};
use crate::metrics;
use crate::ratelimit::RateLimiter;

/// Prefix of every key this backend writes into chitchat.
const KEY_PREFIX: &str = "clb/";
/// How often seeds are resolved again, for the status and the log (chitchat
/// resolves them on its own schedule too).
const SEED_CHECK_EVERY: Duration = Duration::from_secs(30);

/// How a node gossips. Every field has a LAN default; see each field.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GossipConfig {
    /// This node's id (`A-Z a-z 0-9 _ . - :`, at most 128).
    pub node_id: String,
    /// Grows with every restart of the same node. Default: the start time in
    /// milliseconds since the Unix epoch.
    pub generation: u64,
    /// The UDP address to bind.
    pub listen_addr: SocketAddr,
    /// The address peers should gossip to. Default: `listen_addr`.
    pub advertise_addr: Option<SocketAddr>,
    /// Peers to start from, `host:port`. DNS names are resolved again every
    /// minute, so a Kubernetes headless service works. Empty entries are
    /// ignored. Default: none.
    pub seeds: Vec<String>,
    /// Nodes with different cluster ids ignore each other. Default `clb`.
    pub cluster_id: String,
    /// Shared secrets. With any, every datagram is signed with the first and
    /// must carry a valid signature by one of them (rotation: add the new key
    /// second, then first, then drop the old). Default: none (trusted network).
    pub keys: Vec<ClusterKey>,
    /// Time between two gossip rounds. Default 250 ms (about 10 datagrams a
    /// second per node at rest, whatever the cluster size).
    pub gossip_interval: Duration,
    /// Phi above which a silent node is declared dead. Default 8 (with the
    /// default interval, a stopped node is dead within about 2 s on a LAN).
    pub phi_threshold: f64,
    /// Forget a dead node's state after this long. Default 10 minutes
    /// (chitchat's own default is 24 hours).
    pub dead_node_grace_period: Duration,
    /// Keep deleted keys (a namespace a node left) this long before
    /// forgetting them. Default 10 minutes.
    pub deleted_key_grace_period: Duration,
    /// A node that was given seeds and has admitted none of them this long
    /// after it started reports itself not ready (a wrong cluster key, seeds
    /// that do not resolve, a firewall), instead of serving as a cluster of
    /// one. Once any peer has been admitted it stays ready, so the last
    /// survivor of a cluster keeps serving. `None` turns the check off (a
    /// first node of a cluster whose orchestrator waits for it to be ready
    /// before starting the others). Default 30 s.
    pub join_timeout: Option<Duration>,
}

impl GossipConfig {
    /// A config with every default, for `node_id` listening on `listen_addr`.
    pub fn new(node_id: impl Into<String>, listen_addr: SocketAddr) -> Self {
        GossipConfig {
            node_id: node_id.into(),
            generation: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            listen_addr,
            advertise_addr: None,
            seeds: Vec::new(),
            cluster_id: "clb".into(),
            keys: Vec::new(),
            gossip_interval: Duration::from_millis(250),
            phi_threshold: 8.0,
            dead_node_grace_period: Duration::from_secs(600),
            deleted_key_grace_period: Duration::from_secs(600),
            join_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Checks the config; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        clb_core::validate_node_id(&self.node_id)?;
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return Err(ConfigError::Invalid {
                field: "cluster_id",
                value: self.cluster_id.clone(),
                expected: "1 to 64 characters",
            });
        }
        let ms = self.gossip_interval.as_millis();
        if !(10..=60_000).contains(&ms) {
            return Err(ConfigError::OutOfRange {
                field: "gossip_interval",
                value: format!("{:?}", self.gossip_interval),
                range: "[10ms, 60s]".into(),
            });
        }
        if !(self.phi_threshold >= 1.0 && self.phi_threshold <= 100.0) {
            return Err(ConfigError::OutOfRange {
                field: "phi_threshold",
                value: self.phi_threshold.to_string(),
                range: "[1, 100]".into(),
            });
        }
        let advertised = self.advertise_addr.unwrap_or(self.listen_addr);
        if advertised.ip().is_unspecified() {
            return Err(ConfigError::Invalid {
                field: "advertise_addr",
                value: advertised.to_string(),
                expected: "the address peers reach this node at (set it when listening on 0.0.0.0 or [::])",
            });
        }
        if self.advertise_addr.is_some_and(|a| a.port() == 0) {
            return Err(ConfigError::Invalid {
                field: "advertise_addr",
                value: advertised.to_string(),
                expected: "an address with a port",
            });
        }
        if self.seeds.len() > 1024 {
            return Err(ConfigError::OutOfRange {
                field: "seeds",
                value: self.seeds.len().to_string(),
                range: "[0, 1024] seeds".into(),
            });
        }
        // Empty entries (a trailing comma, an unset variable) are ignored.
        for seed in self.seeds.iter().filter(|s| !s.is_empty()) {
            validate_seed(seed)?;
        }
        if let Some(t) = self.join_timeout {
            if t.is_zero() || t > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::OutOfRange {
                    field: "join_timeout",
                    value: format!("{t:?}"),
                    range: "(0s, 24h] or none".into(),
                });
            }
        }
        Ok(())
    }
}

/// Checks a seed's form: `host:port`, the host an IP address (IPv6 in
/// brackets) or a DNS name, the port 1 to 65535. A name that does not
/// resolve yet is accepted (DNS may catch up); it is reported until it does.
pub fn validate_seed(seed: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::Invalid {
        field: "seeds",
        value: seed.chars().take(80).collect(),
        expected: "host:port, the host an IP address ([v6] in brackets) or a DNS name",
    };
    if seed.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = seed.rsplit_once(':').ok_or_else(invalid)?;
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(invalid());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // An all-numeric last label is a mistyped IP address, not a name.
    let numeric_tld = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if host.len() > 253
        || host.parse::<IpAddr>().is_ok()
        || numeric_tld
        || !host.split('.').all(label_ok)
    {
        return Err(invalid());
    }
    Ok(())
}

/// A gossip backend: one per node, shared by every balancer of the node.
pub struct GossipBackend {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    self_id: ChitchatId,
    /// The address gossip is bound to (the real port when 0 was asked for).
    local_addr: SocketAddr,
    /// When each member's value in each namespace last changed, on our
    /// clock.
    changes: Arc<Mutex<HashMap<(ChitchatId, String), Instant>>>,
    started: Instant,
    seeds: Vec<String>,
    join_timeout: Option<Duration>,
    signed: bool,
    /// Whether any peer has ever been live (or every seed is this node).
    admitted: Arc<AtomicBool>,
    seed_status: Arc<Mutex<Vec<SeedStatus>>>,
    seed_task: Option<JoinHandle<()>>,
    rejects: Arc<RejectStats>,
    gossip_interval: Duration,
    _listener: ListenerHandle,
}

/// One seed and what it resolves to, as last checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SeedStatus {
    /// The seed as given.
    pub seed: String,
    /// The addresses it resolved to.
    pub resolved: Vec<SocketAddr>,
    /// Why it did not resolve, if it did not.
    pub error: Option<String>,
}

/// What `/status` shows of gossip.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GossipStatus {
    /// The address gossip is bound to.
    pub listen: SocketAddr,
    /// The address peers gossip to.
    pub advertise: SocketAddr,
    /// Whether datagrams are signed and checked.
    pub signed: bool,
    /// Every live node of the cluster (any namespace), deduplicated by id.
    pub live_nodes: Vec<String>,
    /// Whether a peer has been admitted since start.
    pub admitted_a_peer: bool,
    /// The seeds and what they resolve to.
    pub seeds: Vec<SeedStatus>,
    /// Datagrams dropped since start, by reason (only non-zero reasons).
    pub rejected: HashMap<&'static str, u64>,
}

impl std::fmt::Debug for GossipBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipBackend")
            .field("self_id", &self.self_id)
            .finish_non_exhaustive()
    }
}

impl GossipBackend {
    /// Binds the UDP socket and starts gossiping. Port 0 picks a free port;
    /// [`local_addr`](Self::local_addr) says which.
    pub async fn start(config: GossipConfig) -> Result<Self, BackendError> {
        config.validate()?;
        let bind_error = |e: std::io::Error| {
            BackendError::Start(format!("binding gossip to {}: {e}", config.listen_addr))
        };
        let socket = std::net::UdpSocket::bind(config.listen_addr).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(bind_error)?;
        Self::start_on(config, socket).await
    }

    /// Starts gossiping on a socket the caller bound: a simulated network
    /// in tests (see [`DatagramSocket`]). `config.listen_addr` is not used;
    /// the socket's own address is.
    pub async fn start_on<S: DatagramSocket>(
        mut config: GossipConfig,
        socket: S,
    ) -> Result<Self, BackendError> {
        config.validate()?;
        config.seeds.retain(|s| !s.is_empty());
        let local_addr = socket
            .local_addr()
            .map_err(|e| BackendError::Start(format!("reading the gossip address: {e}")))?;
        // Checked by `validate`: neither unspecified nor port 0 once bound.
        let advertise = config.advertise_addr.unwrap_or(local_addr);
        let mut own = vec![advertise];
        if !local_addr.ip().is_unspecified() && local_addr != advertise {
            own.push(local_addr);
        }
        let self_id = ChitchatId::new(config.node_id.as_str(), config.generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: local_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval * 4,
                dead_node_grace_period: config.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: config.deleted_key_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        for reject in Reject::ALL {
            ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => reject.label())
                .increment(0);
        }
        let rejects = Arc::new(RejectStats::default());
        let transport = AuthTransport {
            keys: config.keys.clone().into(),
            advertise,
            own: own.clone().into(),
            socket: Mutex::new(Some(socket)),
            stats: Arc::clone(&rejects),
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, Vec::new(), &transport)
            .await
            .map_err(|e| BackendError::Start(format!("starting gossip on {local_addr}: {e:#}")))?;
        let chitchat = handle.chitchat();
        let changes: Arc<Mutex<HashMap<(ChitchatId, String), Instant>>> = Arc::default();
        let sink = Arc::clone(&changes);
        let listener = chitchat
            .lock()
            .await
            .subscribe_event(KEY_PREFIX, move |event| {
                let mut changes = sink.lock().unwrap_or_else(|p| p.into_inner());
                changes.insert((event.node.clone(), event.key.to_owned()), Instant::now());
            });
        let admitted = Arc::new(AtomicBool::new(config.seeds.is_empty()));
        let seed_status = Arc::new(Mutex::new(Vec::new()));
        let seed_task = (!config.seeds.is_empty()).then(|| {
            tokio::spawn(watch_seeds(
                config.seeds.clone(),
                own,
                Arc::clone(&seed_status),
                Arc::clone(&admitted),
            ))
        });
        let signed = !config.keys.is_empty();
        tracing::info!(node = %config.node_id, generation = config.generation, listen = %local_addr,
            advertise = %advertise, seeds = ?config.seeds, signed, "gossip started");
        if !signed {
            tracing::warn!(
                "gossip is not authenticated (no cluster key): anyone who can reach {local_addr} can join and forge reports; set --cluster-key unless the network is trusted"
            );
        }
        Ok(GossipBackend {
            chitchat,
            handle: tokio::sync::Mutex::new(Some(handle)),
            self_id,
            local_addr,
            changes,
            started: Instant::now(),
            seeds: config.seeds,
            join_timeout: config.join_timeout,
            signed,
            admitted,
            seed_status,
            seed_task,
            rejects,
            gossip_interval: config.gossip_interval,
            _listener: listener,
        })
    }

    /// The address gossip is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every live node of the cluster (any namespace), deduplicated by id.
    pub async fn live_nodes(&self) -> Vec<String> {
        let chitchat = self.chitchat.lock().await;
        let mut ids: Vec<String> = chitchat
            .live_nodes()
            .map(|id| id.node_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// What `/status` shows of gossip.
    pub async fn status(&self) -> GossipStatus {
        GossipStatus {
            listen: self.local_addr,
            advertise: self.self_id.gossip_advertise_addr,
            signed: self.signed,
            live_nodes: self.live_nodes().await,
            admitted_a_peer: self.admitted.load(Ordering::Relaxed),
            seeds: self
                .seed_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            rejected: self
                .rejects
                .nonzero()
                .into_iter()
                .map(|(r, n)| (r.label(), n))
                .collect(),
        }
    }

    /// Stops gossiping. Leave every namespace first, and give the leave a
    /// few gossip rounds to spread, or peers will see this node as failed
    /// rather than gone.
    pub async fn shutdown(&self) {
        if let Some(task) = &self.seed_task {
            task.abort();
        }
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.shutdown().await {
                tracing::warn!(error = %e, "gossip shutdown");
            }
        }
    }

    fn changes(&self) -> MutexGuard<'_, HashMap<(ChitchatId, String), Instant>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rejections_summary(&self) -> Option<String> {
        let counts = self.rejects.nonzero();
        if counts.is_empty() {
            return None;
        }
        let list: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.label()))
            .collect();
        let last = self
            .rejects
            .last()
            .map(|(r, from)| format!("; the last from {from}: {}", r.advice()))
            .unwrap_or_default();
        Some(format!("dropped datagrams: {}{last}", list.join(", ")))
    }
}

impl Drop for GossipBackend {
    fn drop(&mut self) {
        if let Some(task) = &self.seed_task {
            task.abort();
        }
    }
}

/// Resolves every seed now and every [`SEED_CHECK_EVERY`], for the status
/// and the log; a node seeded only with itself counts as admitted.
async fn watch_seeds(
    seeds: Vec<String>,
    own: Vec<SocketAddr>,
    status: Arc<Mutex<Vec<SeedStatus>>>,
    admitted: Arc<AtomicBool>,
) {
    let log = RateLimiter::new(Duration::from_secs(300));
    loop {
        let mut checked = Vec::with_capacity(seeds.len());
        for seed in &seeds {
            let lookup = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host(seed.as_str()),
            )
            .await;
            let (resolved, error) = match lookup {
                Ok(Ok(addrs)) => (addrs.collect::<Vec<_>>(), None),
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(_) => (Vec::new(), Some("lookup timed out after 5s".to_owned())),
            };
            if let Some(e) = &error {
                if log.hit("seed_unresolved").is_some() {
                    tracing::warn!(seed = %seed, error = %e, "seed does not resolve; it is tried again every {SEED_CHECK_EVERY:?}");
                }
            }
            checked.push(SeedStatus {
                seed: seed.clone(),
                resolved,
                error,
            });
        }
        let only_self = checked
            .iter()
            .all(|s| !s.resolved.is_empty() && s.resolved.iter().all(|a| own.contains(a)));
        if only_self {
            admitted.store(true, Ordering::Relaxed);
        }
        *status.lock().unwrap_or_else(|p| p.into_inner()) = checked;
        tokio::time::sleep(SEED_CHECK_EVERY).await;
    }
}

impl ClusterBackend for GossipBackend {
    async fn publish(
        &self,
        namespace: &str,
        _node: &NodeId,
        value: &str,
    ) -> Result<(), BackendError> {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(format!("{KEY_PREFIX}{namespace}"), value);
        Ok(())
    }

    async fn view(&self, namespace: &str) -> Result<Vec<MemberRecord>, BackendError> {
        let key = format!("{KEY_PREFIX}{namespace}");
        let now = Instant::now();
        let chitchat = self.chitchat.lock().await;
        let mut changes = self.changes();
        let mut records = Vec::new();
        let mut live = HashSet::new();
        let mut peers = false;
        for id in chitchat.live_nodes() {
            peers |= *id != self.self_id;
            live.insert(id.clone());
            let Some(value) = chitchat.node_state(id).and_then(|s| s.get(&key)) else {
                continue;
            };
            // chitchat's listener names keys without our prefix.
            let changed = *changes
                .entry((id.clone(), namespace.to_owned()))
                .or_insert(now);
            records.push(MemberRecord {
                node: NodeId::new(id.node_id.to_string()),
                incarnation: id.generation_id,
                value: value.to_owned(),
                age: now.saturating_duration_since(changed),
            });
        }
        // Nodes the failure detector gave up on that did not leave: the
        // core counts them for its quorum (a node restarted inside a
        // minority learns from its peers how big the cluster really is).
        let forgotten: HashSet<&ChitchatId> = chitchat.scheduled_for_deletion_nodes().collect();
        for (id, state) in chitchat.node_states() {
            if live.contains(id) || forgotten.contains(id) {
                continue;
            }
            if state.get(&key).is_some_and(|v| v != clb_core::wire::LEFT) {
                records.push(MemberRecord {
                    node: NodeId::new(id.node_id.to_string()),
                    incarnation: id.generation_id,
                    value: clb_core::wire::LOST.to_owned(),
                    age: Duration::ZERO,
                });
            }
        }
        drop(chitchat);
        // Forget change times of incarnations that are gone.
        changes.retain(|(id, ns), _| ns != namespace || live.contains(id));
        if peers {
            self.admitted.store(true, Ordering::Relaxed);
        }
        Ok(records)
    }

    /// Writes `left` in place of the report, rather than deleting the key:
    /// peers then know this member left, and do not count it as lost.
    async fn leave(&self, namespace: &str, node: &NodeId) -> Result<(), BackendError> {
        self.publish(namespace, node, clb_core::wire::LEFT).await
    }

    fn node_id(&self) -> Option<NodeId> {
        Some(NodeId::new(self.self_id.node_id.to_string()))
    }

    /// Four gossip rounds: enough, on a LAN, for every peer to hear it.
    fn leave_spread(&self) -> Duration {
        self.gossip_interval * 4
    }

    fn health(&self) -> BackendHealth {
        let mut health = BackendHealth::default();
        let waited = self.started.elapsed();
        let stranded = !self.admitted.load(Ordering::Relaxed)
            && self.join_timeout.is_some_and(|t| waited >= t);
        if stranded {
            let seeds = self
                .seed_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|s| match &s.error {
                    Some(e) => format!("{} (does not resolve: {e})", s.seed),
                    None => s.seed.clone(),
                })
                .collect::<Vec<_>>();
            let seeds = if seeds.is_empty() {
                self.seeds.join(", ")
            } else {
                seeds.join(", ")
            };
            let mut why = format!(
                "no seed admitted in {:.0?} of gossip (seeds: {seeds})",
                waited
            );
            match self.rejections_summary() {
                Some(rejections) => {
                    why.push_str("; ");
                    why.push_str(&rejections);
                }
                None => why.push_str(
                    "; no seed answered: they are down or unreachable, or have another cluster key \
                     (a node never answers datagrams it cannot verify)",
                ),
            }
            health.not_ready = Some(why);
        } else if let Some(rejections) = self.rejections_summary() {
            health.warnings.push(rejections);
        }
        if !self.signed {
            health
                .warnings
                .push("gossip is not authenticated (no cluster key)".to_owned());
        }
        health
    }
}

/// The labels of [`Reject`], for dashboards and tests.
pub fn reject_labels() -> impl Iterator<Item = &'static str> {
    Reject::ALL.into_iter().map(Reject::label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_must_be_host_and_port() {
        for ok in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "clb-0.clb.default.svc.cluster.local:7946",
            "node_1:80",
            "localhost.:1",
        ] {
            validate_seed(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "no such host!!",
            "host",
            "host:0",
            "host:65536",
            ":7001",
            "-bad-.example:1",
            "127.0.0.1:0",
            "1.2.3.4.5:1",
            "a..b:1",
        ] {
            let err = validate_seed(bad).unwrap_err().to_string();
            assert!(err.starts_with("seeds "), "{bad}: {err}");
        }
    }
}

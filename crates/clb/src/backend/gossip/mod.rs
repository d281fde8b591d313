//! The `gossip` backend: nodes find each other and exchange reports over UDP
//! gossip, with no infrastructure, built on the [`chitchat`] crate
//! (scuttlebutt anti-entropy with a phi-accrual failure detector, Quickwit's
//! membership layer).
//!
//! Each node keeps one key per namespace, `clb/<namespace>`, holding its
//! report as a compact versioned string. One gossip instance serves every
//! namespace of a node. A member is identified by its node id and a
//! *generation* (its start time, in ms): after a restart, peers briefly list
//! both incarnations as live, and the view keeps the newest.

mod codec;
pub mod transport;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
};
use clb_core::{ClusterView, ConfigError, MemberView, NodeId, Report};
use tokio::time::Instant;

pub use self::transport::ClusterKey;
use self::transport::{AuthTransport, Reject};
use super::{BackendError, ClusterBackend};
use crate::metrics;

/// Prefix of every key this backend writes into chitchat.
const KEY_PREFIX: &str = "clb/";

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
    /// minute, so a Kubernetes headless service works. Default: none.
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
        Ok(())
    }
}

/// A gossip backend: one per node, shared by every balancer of the node.
pub struct GossipBackend {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    self_id: ChitchatId,
    /// When each member's value under each key last changed, on our clock.
    changes: Arc<Mutex<HashMap<(ChitchatId, String), Instant>>>,
    _listener: ListenerHandle,
}

impl std::fmt::Debug for GossipBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipBackend")
            .field("self_id", &self.self_id)
            .finish_non_exhaustive()
    }
}

impl GossipBackend {
    /// Binds the UDP socket and starts gossiping.
    pub async fn start(config: GossipConfig) -> Result<Self, BackendError> {
        config.validate()?;
        let self_id = ChitchatId::new(
            config.node_id.as_str(),
            config.generation,
            config.advertise_addr.unwrap_or(config.listen_addr),
        );
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen_addr,
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
        let transport = AuthTransport {
            keys: config.keys.clone().into(),
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, Vec::new(), &transport)
            .await
            .map_err(|e| {
                BackendError::Unreachable(format!(
                    "starting gossip on {}: {e:#}",
                    config.listen_addr
                ))
            })?;
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
        tracing::info!(node = %config.node_id, generation = config.generation, listen = %config.listen_addr,
            seeds = ?config.seeds, signed = !config.keys.is_empty(), "gossip started");
        Ok(GossipBackend {
            chitchat,
            handle: tokio::sync::Mutex::new(Some(handle)),
            self_id,
            changes,
            _listener: listener,
        })
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

    /// Stops gossiping. Leave every namespace first, and give the leave a
    /// few gossip rounds to spread, or peers will see this node as failed
    /// rather than gone.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.shutdown().await {
                tracing::warn!(error = %e, "gossip shutdown");
            }
        }
    }

    fn changes(&self) -> MutexGuard<'_, HashMap<(ChitchatId, String), Instant>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClusterBackend for GossipBackend {
    async fn publish(&self, namespace: &str, report: &Report) -> Result<(), BackendError> {
        let value = codec::encode(report);
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(format!("{KEY_PREFIX}{namespace}"), value);
        Ok(())
    }

    async fn view(&self, namespace: &str) -> Result<ClusterView, BackendError> {
        let key = format!("{KEY_PREFIX}{namespace}");
        let now = Instant::now();
        // Newest live incarnation of each node id, with its value if any.
        let mut newest: HashMap<Arc<str>, (ChitchatId, Option<String>)> = HashMap::new();
        {
            let chitchat = self.chitchat.lock().await;
            for id in chitchat.live_nodes() {
                let value = chitchat
                    .node_state(id)
                    .and_then(|s| s.get(&key))
                    .map(str::to_owned);
                match newest.get(&id.node_id) {
                    Some((kept, _)) if kept.generation_id >= id.generation_id => {}
                    _ => {
                        newest.insert(Arc::clone(&id.node_id), (id.clone(), value));
                    }
                }
            }
        }
        let mut members = Vec::with_capacity(newest.len());
        let mut changes = self.changes();
        for (id, value) in newest.into_values() {
            let Some(value) = value else { continue };
            if clb_core::validate_node_id(&id.node_id).is_err() {
                ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => "invalid_node_id")
                    .increment(1);
                continue;
            }
            let node = NodeId::new(id.node_id.to_string());
            let report = match codec::decode(&node, &value) {
                Ok(report) => report,
                Err(reason) => {
                    // A bad report never enters a decision, and one bad peer
                    // must not stall everyone: it is left out and counted.
                    ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => reason)
                        .increment(1);
                    tracing::debug!(node = %node, reason, "dropped a report");
                    continue;
                }
            };
            let changed = *changes.entry((id, namespace.to_owned())).or_insert(now);
            members.push(MemberView {
                node,
                report: Some(report),
                age: now.saturating_duration_since(changed),
            });
        }
        // Forget change times of members that are gone.
        let live: HashSet<&NodeId> = members.iter().map(|m| &m.node).collect();
        changes.retain(|(id, ns), _| {
            ns != namespace || live.iter().any(|n| n.as_str() == &*id.node_id)
        });
        Ok(ClusterView { members })
    }

    async fn leave(&self, namespace: &str, _node: &NodeId) -> Result<(), BackendError> {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .delete(&format!("{KEY_PREFIX}{namespace}"));
        Ok(())
    }
}

/// The labels of [`Reject`], for dashboards and tests.
pub fn reject_labels() -> impl Iterator<Item = &'static str> {
    [
        Reject::Malformed,
        Reject::Oversized,
        Reject::Unsigned,
        Reject::UnexpectedSignature,
        Reject::BadSignature,
        Reject::Replayed,
        Reject::Stale,
    ]
    .into_iter()
    .map(Reject::label)
}

//! The backend a `clb node` or `clb sidecar` runs on, gossip or Redis, as
//! one type: both commands serve the same endpoints whatever it is.

use std::net::SocketAddr;

use clap::ValueEnum;
use clb::core::MemberRecord;
use clb::{
    BackendError, BackendHealth, ClusterBackend, GossipBackend, GossipConfig, NodeId, RedisBackend,
    RedisConfig,
};
use serde::{Deserialize, Serialize};

/// Which backend (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// UDP gossip between the nodes, no infrastructure (the default).
    #[default]
    Gossip,
    /// A shared Redis server or Redis Cluster.
    Redis,
}

impl BackendKind {
    /// The name `--backend` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Gossip => "gossip",
            BackendKind::Redis => "redis",
        }
    }
}

/// A checked backend config, not started yet.
#[derive(Debug)]
pub enum BackendPlan {
    /// Gossip.
    Gossip(GossipConfig),
    /// Redis.
    Redis(RedisConfig),
}

/// A running backend.
#[derive(Debug)]
pub enum Backend {
    /// Gossip.
    Gossip(GossipBackend),
    /// Redis.
    Redis(RedisBackend),
}

impl Backend {
    /// Starts what `plan` describes.
    pub async fn start(plan: BackendPlan) -> anyhow::Result<Backend> {
        Ok(match plan {
            BackendPlan::Gossip(config) => {
                let listen = config.listen_addr;
                let backend = GossipBackend::start(config).await.map_err(|e| {
                    anyhow::anyhow!("starting gossip on --gossip-listen {listen}: {e}")
                })?;
                Backend::Gossip(backend)
            }
            BackendPlan::Redis(config) => Backend::Redis(RedisBackend::new(config)?),
        })
    }

    /// The gossip address bound, for the ready line.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        match self {
            Backend::Gossip(b) => Some(b.local_addr()),
            Backend::Redis(_) => None,
        }
    }

    /// What `/status` shows of the backend.
    pub async fn status(&self) -> serde_json::Value {
        match self {
            Backend::Gossip(b) => serde_json::json!({"gossip": b.status().await}),
            Backend::Redis(b) => serde_json::json!({"redis": b.status()}),
        }
    }

    /// Stops it (gossip stops gossiping; Redis has nothing to stop).
    pub async fn shutdown(&self) {
        if let Backend::Gossip(b) = self {
            b.shutdown().await;
        }
    }
}

impl ClusterBackend for Backend {
    async fn publish(
        &self,
        namespace: &str,
        node: &NodeId,
        value: &str,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Gossip(b) => b.publish(namespace, node, value).await,
            Backend::Redis(b) => b.publish(namespace, node, value).await,
        }
    }

    async fn view(&self, namespace: &str) -> Result<Vec<MemberRecord>, BackendError> {
        match self {
            Backend::Gossip(b) => b.view(namespace).await,
            Backend::Redis(b) => b.view(namespace).await,
        }
    }

    async fn publish_and_view(
        &self,
        namespace: &str,
        node: &NodeId,
        value: &str,
    ) -> Result<Vec<MemberRecord>, BackendError> {
        match self {
            Backend::Gossip(b) => b.publish_and_view(namespace, node, value).await,
            Backend::Redis(b) => b.publish_and_view(namespace, node, value).await,
        }
    }

    async fn leave(&self, namespace: &str, node: &NodeId) -> Result<(), BackendError> {
        match self {
            Backend::Gossip(b) => b.leave(namespace, node).await,
            Backend::Redis(b) => b.leave(namespace, node).await,
        }
    }

    fn health(&self) -> BackendHealth {
        match self {
            Backend::Gossip(b) => b.health(),
            Backend::Redis(b) => b.health(),
        }
    }

    fn node_id(&self) -> Option<NodeId> {
        match self {
            Backend::Gossip(b) => b.node_id(),
            Backend::Redis(b) => b.node_id(),
        }
    }

    fn leave_spread(&self) -> std::time::Duration {
        match self {
            Backend::Gossip(b) => b.leave_spread(),
            Backend::Redis(b) => b.leave_spread(),
        }
    }
}

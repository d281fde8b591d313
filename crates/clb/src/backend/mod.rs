//! How nodes learn each other's reports: the [`ClusterBackend`] trait and its
//! implementations. A backend moves bytes; the core decides.

#[cfg(feature = "gossip")]
pub mod gossip;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::future::Future;
use std::time::Duration;

use clb_core::{MemberRecord, NodeId};

#[cfg(feature = "gossip")]
pub use gossip::{ClusterKey, GossipBackend, GossipConfig};
pub use memory::MemoryCluster;
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisConfig};

/// A shared medium where every node of a namespace publishes its report and
/// reads everyone's, as opaque values.
///
/// Contract (checked for every backend by the same conformance suite):
/// - `view` returns one [`MemberRecord`] per live member *incarnation* of the
///   namespace, with the value exactly as published and its age: the time
///   since the value last changed, measured on one clock. It never decodes,
///   drops or repairs a value: a value the core cannot read discards the
///   round, it is never silently left out;
/// - namespaces never mix;
/// - a member the backend still knows but considers failed may be handed
///   over with the value [`clb_core::wire::LOST`] (gossip does, for the
///   quorum; a backend that forgets failed members at once need not);
/// - `leave` publishes [`clb_core::wire::LEFT`] in place of the report, so
///   that others know the member left rather than failed (the core counts a
///   failed member against its quorum until a node holding a majority
///   forgets it, a member that left not at all); a node that stops
///   publishing is dropped by failure detection;
/// - what arrives from the network in a form the backend cannot even carry
///   (a forged or malformed datagram, say) is dropped there and counted in
///   [`crate::metrics::REJECTED_MESSAGES`], and logged at a bounded rate.
pub trait ClusterBackend: Send + Sync + 'static {
    /// Publishes this node's value in `namespace`.
    fn publish(
        &self,
        namespace: &str,
        node: &NodeId,
        value: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// What the backend holds for the live members of `namespace`, raw.
    fn view(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<MemberRecord>, BackendError>> + Send;

    /// Publishes this node's value and returns what the backend holds for
    /// `namespace` afterwards: what the worker asks for at every round's
    /// tick. A backend that can do both in one round trip (Redis) should;
    /// the default publishes, then views.
    fn publish_and_view(
        &self,
        namespace: &str,
        node: &NodeId,
        value: &str,
    ) -> impl Future<Output = Result<Vec<MemberRecord>, BackendError>> + Send {
        async move {
            self.publish(namespace, node, value).await?;
            self.view(namespace).await
        }
    }

    /// Leaves `namespace` at once (graceful shutdown): publishes
    /// [`clb_core::wire::LEFT`].
    fn leave(
        &self,
        namespace: &str,
        node: &NodeId,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// What is wrong with this node's membership right now, if anything
    /// (a node that was given seeds and has admitted none, say). A problem
    /// makes the node not ready: it refuses new resources and says why in
    /// its status. Cheap; called once a round. Default: nothing wrong.
    fn health(&self) -> BackendHealth {
        BackendHealth::default()
    }

    /// The node this backend publishes as, if it is bound to one (gossip
    /// is; the in-memory cluster serves many). A balancer takes its id from
    /// here, so a node is never known by two names.
    fn node_id(&self) -> Option<NodeId> {
        None
    }

    /// How long a `leave` takes to reach every peer, so a shutdown moves
    /// its clients only once peers have stopped steering clients to it.
    /// Default: at once.
    fn leave_spread(&self) -> Duration {
        Duration::ZERO
    }
}

/// A backend's view of its own health; see [`ClusterBackend::health`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendHealth {
    /// Why this node should not take new resources, if it should not.
    pub not_ready: Option<String>,
    /// Things an operator should know that do not block readiness.
    pub warnings: Vec<String>,
}

/// A backend operation failed. The balancer's state is untouched: a failed
/// `view` discards the round, a failed `publish` shows up to others as a
/// stale report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The backend could not bind or open what it listens on (a port in
    /// use, say); it did not start.
    #[error("backend could not start: {0}")]
    Start(String),
    /// The operation did not finish in time.
    #[error("backend operation timed out after {0:?}")]
    TimedOut(Duration),
    /// The backend answered something this version cannot use.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// The backend has been shut down.
    #[error("backend is shut down")]
    Closed,
    /// The backend's configuration is invalid; it did not start.
    #[error(transparent)]
    Config(#[from] clb_core::ConfigError),
}

//! How nodes learn each other's reports: the [`ClusterBackend`] trait and its
//! implementations. Backends translate and transport; they never decide.

#[cfg(feature = "gossip")]
pub mod gossip;
pub mod memory;

use std::future::Future;
use std::time::Duration;

use clb_core::{ClusterView, NodeId, Report};

#[cfg(feature = "gossip")]
pub use gossip::{ClusterKey, GossipBackend, GossipConfig};
pub use memory::MemoryCluster;

/// A shared medium where every node of a namespace publishes its report and
/// reads everyone's.
///
/// Contract (checked for every backend by the same conformance suite):
/// - `view` lists every *live* member of the namespace exactly once (deduplicated
///   by node id), with its latest valid report and the age of that report,
///   measured on one clock: the time since its `seq` last changed;
/// - namespaces never mix;
/// - after `leave`, others stop listing the node promptly; a node that stops
///   publishing without leaving is dropped by failure detection;
/// - malformed or forged data is dropped and counted, never returned.
pub trait ClusterBackend: Send + Sync + 'static {
    /// Publishes this node's report in `namespace`.
    fn publish(
        &self,
        namespace: &str,
        report: &Report,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The live members of `namespace` and their latest reports.
    fn view(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<ClusterView, BackendError>> + Send;

    /// Leaves `namespace` at once (graceful shutdown).
    fn leave(
        &self,
        namespace: &str,
        node: &NodeId,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
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

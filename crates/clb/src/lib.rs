//! Keeps long-lived resources — WebSocket connections above all — evenly
//! spread over the nodes of a cluster.
//!
//! After a rolling deploy the node restarted last is nearly empty and the
//! first ones are overloaded, and an external load balancer only balances
//! *new* connections. Every round, each node learns every other node's count
//! through a [`ClusterBackend`]; nodes too far above their fair share *shed*
//! some resources through your [`Resource`]; their clients reconnect and land
//! elsewhere; the cluster settles.
//!
//! This crate is the tokio shell: the [`Balancer`] handle and its worker, the
//! backends and adapters. The decisions live in [`clb_core`], a sans-IO crate
//! the simulator drives too.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use clb::{Balancer, Config, MemoryCluster, Resource, ResourceError, ShedRequest};
//!
//! struct Sessions(AtomicU64);
//!
//! impl Resource for Sessions {
//!     async fn count(&self) -> Result<u64, ResourceError> {
//!         Ok(self.0.load(Ordering::Relaxed))
//!     }
//!     async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
//!         Ok(request.n) // close request.n sessions here
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Arc::new(MemoryCluster::new());
//! let balancer = Balancer::builder("node-1", "sessions")
//!     .config(Config::classic())
//!     .spawn(Arc::new(Sessions(AtomicU64::new(0))), cluster)?;
//! // ... serve ...
//! balancer.shutdown().await;
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod backend;
mod balancer;
pub mod metrics;
pub mod ratelimit;
mod resource;
mod trace;
mod worker;

pub use backend::{BackendError, BackendHealth, ClusterBackend, MemoryCluster};
#[cfg(feature = "gossip")]
pub use backend::{ClusterKey, GossipBackend, GossipConfig};
pub use balancer::{
    Admission, Balancer, BuildError, Builder, Refusal, RoundCounts, Status, StatusHandle,
    StatusMember,
};
pub use clb_core::{
    self as core, ClusterView, Config, ConfigError, DiscardReason, Event, HoldReason, MemberRecord,
    NodeId, Report, RoundEvent, RoundOutcome, Strategy,
};
pub use resource::{Hint, Resource, ResourceError, ShedRequest};

/// Compiles (and runs, where not `no_run`) every Rust block of the README.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

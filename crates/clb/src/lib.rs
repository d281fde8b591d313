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
//! # Where to start
//!
//! - A WebSocket service on axum: [`adapter::axum`] — a [`WsGate`](adapter::websocket::WsGate)
//!   admits or refuses each upgrade and runs the connection under
//!   [`WsLimits`](adapter::websocket::WsLimits); [`Balancer::drain`] is the
//!   graceful shutdown; [`metrics::Prometheus`] serves `/metrics`. The
//!   README's "Embedding it" and `examples/axum_service.rs` show a whole
//!   service.
//! - A plain tokio-tungstenite server: `adapter::tungstenite`.
//! - Any other resource (SSE streams, actors): implement [`Resource`], as
//!   below.
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `gossip` | yes | [`GossipBackend`]: UDP gossip (chitchat) with HMAC-signed, address-bound datagrams |
//! | `axum` | no | `adapter::axum`: admission at upgrade time, sessions, a bounded HTTP server |
//! | `tungstenite` | no | `adapter::tungstenite`: the same for tokio-tungstenite servers |
//! | `prometheus` | no | `metrics::Prometheus`: a recorder with its own upkeep (and, with `axum`, a handler) |
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
//! let balancer = Balancer::builder("sessions")
//!     .node_id("node-1")
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
mod signal;
mod trace;
mod worker;

pub use backend::{BackendError, BackendHealth, ClusterBackend, MemoryCluster};
#[cfg(feature = "gossip")]
pub use backend::{ClusterKey, GossipBackend, GossipConfig};
#[cfg(feature = "redis")]
pub use backend::{RedisBackend, RedisConfig};
pub use balancer::{
    Admission, Balancer, BuildError, Builder, DrainReport, Refusal, RoundCounts, Status,
    StatusHandle, StatusMember,
};
pub use clb_core::{
    self as core, ClusterView, Config, ConfigError, DiscardReason, Event, HoldReason, MemberRecord,
    NodeId, Report, RoundEvent, RoundOutcome, Strategy,
};
pub use resource::{Hint, Resource, ResourceError, ShedRequest};
pub use signal::shutdown_signal;

/// Compiles (and runs, where not `no_run`) every Rust block of the README,
/// which uses the `axum` and `prometheus` features.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "axum", feature = "prometheus"))]
pub struct ReadmeDoctests;

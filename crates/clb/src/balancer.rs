//! The handle a service holds: build, observe, shut down.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clb_core::{Config, ConfigError, Event, NodeId, RoundOutcome};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::ClusterBackend;
use crate::resource::Resource;
use crate::worker::{Timeouts, Worker};

/// A running balancer for one namespace on one node.
///
/// Dropping the handle stops the balancer (it leaves the namespace in the
/// background); call [`shutdown`](Self::shutdown) to wait for that.
///
/// ```no_run
/// # async fn demo(registry: std::sync::Arc<impl clb::Resource>) -> Result<(), clb::BuildError> {
/// use std::sync::Arc;
/// use clb::{Balancer, Config, MemoryCluster};
///
/// let cluster = Arc::new(MemoryCluster::new());
/// let balancer = Balancer::builder("websockets")
///     .node_id("node-1") // a gossip backend knows its own id: no need there
///     .config(Config::default())
///     .spawn(registry, cluster)?;
/// let mut events = balancer.subscribe();
/// while let Ok(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Balancer {
    shared: Arc<Shared>,
    events_tx: broadcast::Sender<Event>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// How long the backend needs for a leave to reach every peer.
    leave_spread: Duration,
}

impl Balancer {
    /// Starts building a balancer for `namespace`. The node's id comes from
    /// the backend when it is bound to one (gossip); otherwise give it with
    /// [`Builder::node_id`].
    pub fn builder(namespace: impl Into<String>) -> Builder {
        Builder {
            node_id: None,
            namespace: namespace.into(),
            config: Config::default(),
            address: None,
            count_timeout: None,
            shed_timeout: None,
            backend_timeout: None,
            seed: None,
        }
    }

    /// Whether this node accepts new resources now (SPEC §4 admission
    /// control), judged with the last count read. A lock-free read.
    pub fn accepting(&self) -> bool {
        self.admission().accepting()
    }

    /// A cheap, cloneable handle to [`accepting`](Self::accepting), for
    /// adapters and health checks.
    pub fn admission(&self) -> Admission {
        Admission(Arc::clone(&self.shared))
    }

    /// A snapshot of this balancer's state, for `/status` and dashboards.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// A cheap, cloneable handle to [`status`](Self::status), for HTTP
    /// handlers that outlive a borrow of the balancer.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(Arc::clone(&self.shared))
    }

    /// A stream of every [`Event`] from now on. A receiver that falls more
    /// than 1024 events behind loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events_tx.subscribe()
    }

    /// Stops the balancer: admission refuses from now on, no more rounds,
    /// outstanding calls are dropped, and the node leaves the namespace.
    /// Waits until that is done (at most the backend timeout for the leave).
    pub async fn shutdown(mut self) {
        self.admission().start_draining();
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            // The worker never panics by design; if it did, there is nothing
            // left to clean up.
            let _ = task.await;
        }
    }

    /// Shuts the node down gracefully, in the one order that moves every
    /// client once and sends none back:
    ///
    /// 1. refuse newcomers (upgrades and readiness answer 503 from now on,
    ///    with no hint: the last round's may name nodes leaving too);
    /// 2. leave the namespace, so peers stop counting this node and stop
    ///    steering clients to it;
    /// 3. wait for the leave to reach every peer
    ///    ([`ClusterBackend::leave_spread`]);
    /// 4. ask every connection of `registry` to close (1012, "node shutting
    ///    down") and wait until they have: each drops itself at
    ///    `close_deadline` (the one its sessions run with,
    ///    [`WsLimits::close_deadline`](crate::adapter::websocket::WsLimits::close_deadline)),
    ///    so this waits a moment past it at most.
    ///
    /// Then stop the server and the backend. Returns what it did.
    pub async fn drain(
        self,
        registry: &crate::adapter::websocket::ConnectionRegistry,
        close_deadline: Duration,
    ) -> DrainReport {
        let close_within = close_deadline + close_deadline / 10 + Duration::from_millis(200);
        let started = Instant::now();
        let spread = self.leave_spread;
        self.shutdown().await;
        tokio::time::sleep(spread).await;
        let before = registry.len() as u64;
        let drained = registry
            .drain(&crate::adapter::websocket::Close::shutdown(), close_within)
            .await;
        let report = DrainReport {
            closed: before.saturating_sub(drained.still_open),
            still_open: drained.still_open,
            took: started.elapsed(),
        };
        tracing::info!(
            closed = report.closed,
            still_open = report.still_open,
            took_ms = report.took.as_millis() as u64,
            "drained"
        );
        report
    }
}

/// What [`Balancer::drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections closed.
    pub closed: u64,
    /// Connections still open when the deadline passed (each is dropped at
    /// its own close deadline).
    pub still_open: u64,
    /// How long the whole drain took.
    pub took: Duration,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// Whether a node accepts new resources, and where to send those it refuses;
/// see [`Balancer::admission`]. Cheap to clone and to call.
///
/// This is the one answer to "accepting?": a WebSocket upgrade handler, a
/// readiness check and a status page must all ask [`check`](Self::check),
/// so they never disagree.
#[derive(Clone, Debug)]
pub struct Admission(Arc<Shared>);

/// Why a node refuses a new resource; see [`Admission::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The node is shutting down: its clients are moving elsewhere.
    Draining,
    /// The node is above its fair share in an active rebalance (SPEC §4
    /// admission control).
    Rebalancing,
    /// The node cannot take part in balancing; the text says why (a node
    /// that admitted none of its seeds, an id another process also uses).
    NotReady(String),
}

impl Refusal {
    /// `draining`, `rebalancing` or `not_ready`: a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::Rebalancing => "rebalancing",
            Refusal::NotReady(_) => "not_ready",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Draining => f.write_str("draining: this node is shutting down"),
            Refusal::Rebalancing => f.write_str("rebalancing: this node is above its fair share"),
            Refusal::NotReady(why) => write!(f, "not ready: {why}"),
        }
    }
}

impl Admission {
    /// Whether a node holding `live_count` resources should accept one more,
    /// and if not, why. Lock-free unless the node is not ready; pass the
    /// adapter's live count.
    pub fn check(&self, live_count: u64) -> Result<(), Refusal> {
        let shared = &self.0;
        if shared.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        if shared.not_ready_flag.load(Ordering::Relaxed) {
            let why = shared.lock().not_ready.clone().unwrap_or_default();
            return Err(Refusal::NotReady(why));
        }
        if live_count > shared.accept_up_to.load(Ordering::Relaxed) {
            return Err(Refusal::Rebalancing);
        }
        Ok(())
    }

    /// [`check`](Self::check) as a bool.
    pub fn admits(&self, live_count: u64) -> bool {
        self.check(live_count).is_ok()
    }

    /// [`admits`](Self::admits) with the last count the balancer read.
    pub fn accepting(&self) -> bool {
        self.admits(self.0.last_count.load(Ordering::Relaxed))
    }

    /// Refuse every new resource from now on (graceful shutdown: do this
    /// first, then close what is open), naming no other node: the last
    /// round's hints may name nodes that are leaving too.
    /// [`Balancer::shutdown`] and [`Balancer::drain`] do it.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
        self.0
            .refusal_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    /// An under-target node's address for a refused client (a 503's hint):
    /// the next of the hints the core drew, in proportion to each node's
    /// room, at the last round. `None` when no member is below target with
    /// an address.
    pub fn hint(&self) -> Option<String> {
        let hints = self
            .0
            .refusal_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if hints.is_empty() {
            return None;
        }
        let i = self.0.hint_cursor.fetch_add(1, Ordering::Relaxed) % hints.len();
        hints.get(i).cloned()
    }
}

/// Reads a balancer's [`Status`]; see [`Balancer::status_handle`].
#[derive(Clone, Debug)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// A snapshot of the balancer's state.
    pub fn status(&self) -> Status {
        self.0.status()
    }
}

/// Configures and starts a [`Balancer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    node_id: Option<String>,
    namespace: String,
    config: Config,
    address: Option<String>,
    count_timeout: Option<Duration>,
    shed_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    seed: Option<u64>,
}

impl Builder {
    /// This node's id, for a backend that is not bound to one (the
    /// in-memory cluster). With a backend that is (gossip), it must be the
    /// backend's or the build is refused.
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// The decision config. Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The address this node's clients connect to, advertised for steered
    /// reconnects. Default: none.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Limit on one `count()` call. Default: a quarter of a round.
    pub fn count_timeout(mut self, limit: Duration) -> Self {
        self.count_timeout = Some(limit);
        self
    }

    /// Limit on one `shed()` call. Default: half a round.
    pub fn shed_timeout(mut self, limit: Duration) -> Self {
        self.shed_timeout = Some(limit);
        self
    }

    /// Limit on one backend call. Default: a quarter of a round.
    pub fn backend_timeout(mut self, limit: Duration) -> Self {
        self.backend_timeout = Some(limit);
        self
    }

    /// Seeds the balancer's RNG (tie breaker, jitter) for reproducible runs.
    /// Default: seeded from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates everything and starts the worker on the current tokio
    /// runtime. Nothing runs if this returns an error.
    pub fn spawn<R: Resource, B: ClusterBackend>(
        self,
        resource: Arc<R>,
        backend: Arc<B>,
    ) -> Result<Balancer, BuildError> {
        clb_core::validate_namespace(&self.namespace)?;
        let node_id = match (backend.node_id(), self.node_id) {
            (Some(theirs), Some(ours)) if theirs.as_str() != ours => {
                return Err(BuildError::NodeIdMismatch {
                    builder: ours,
                    backend: theirs.to_string(),
                });
            }
            (Some(theirs), _) => theirs.to_string(),
            (None, Some(ours)) => ours,
            (None, None) => return Err(BuildError::NoNodeId),
        };
        let round = self.config.round_duration;
        let timeouts = Timeouts {
            count: self.count_timeout.unwrap_or(round / 4),
            shed: self.shed_timeout.unwrap_or(round / 2),
            backend: self.backend_timeout.unwrap_or(round / 4),
        };
        for (field, value) in [
            ("count_timeout", timeouts.count),
            ("shed_timeout", timeouts.shed),
            ("backend_timeout", timeouts.backend),
        ] {
            if value.is_zero() || value > round {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: format!("{value:?}"),
                    range: format!("(0s, {round:?}] (at most one round)"),
                }
                .into());
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::seed_from_u64(rand::random()),
        };
        let epoch = Instant::now();
        let node = NodeId::new(node_id.clone());
        let mut core =
            clb_core::Balancer::new(node, self.config.clone(), clb_core::Millis(0), rng)?;
        core.set_address(self.address.clone())?;
        core.set_namespace(&self.namespace)?;

        let shared = Arc::new(Shared {
            accept_up_to: AtomicU64::new(u64::MAX),
            last_count: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            not_ready_flag: AtomicBool::new(false),
            refusal_hints: Mutex::new(Vec::new()),
            hint_cursor: AtomicUsize::new(0),
            status: Mutex::new(Status {
                node_id,
                namespace: self.namespace.clone(),
                strategy: self.config.strategy.as_str(),
                count: None,
                target: None,
                accepting: true,
                rebalancing: false,
                members: Vec::new(),
                rounds: RoundCounts::default(),
                shed_total: 0,
                last_round: None,
                last_outcome: None,
                refusal: None,
                refusal_message: None,
                not_ready: None,
                warnings: Vec::new(),
                duplicate_ids: Vec::new(),
            }),
        });
        let leave_spread = backend.leave_spread();
        let (events_tx, _) = broadcast::channel(1024);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let worker = Worker {
            core,
            resource,
            backend,
            namespace: Arc::from(self.namespace.as_str()),
            timeouts,
            shared: Arc::clone(&shared),
            events_tx: events_tx.clone(),
            epoch,
        };
        let task = runtime.spawn(worker.run(shutdown_rx));
        Ok(Balancer {
            shared,
            events_tx,
            shutdown_tx,
            task: Some(task),
            leave_spread,
        })
    }
}

/// A balancer could not be started; nothing is running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration, the node id or the namespace is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `spawn` was called outside a tokio runtime.
    #[error("no tokio runtime: call spawn from within a tokio runtime")]
    NoRuntime,
    /// The builder was given a node id other than the backend's.
    #[error(
        "node id {builder:?} is not the backend's {backend:?}: give the id once, to the backend"
    )]
    NodeIdMismatch {
        /// The id given to the builder.
        builder: String,
        /// The backend's.
        backend: String,
    },
    /// Neither the backend nor the builder names this node.
    #[error("no node id: this backend serves many nodes; give the id with Builder::node_id")]
    NoNodeId,
}

/// A snapshot of one balancer, as served by `/status` (SPEC §6).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// This node.
    pub node_id: String,
    /// The namespace balanced.
    pub namespace: String,
    /// The strategy's name.
    pub strategy: &'static str,
    /// The last count read (`None` before the first read).
    pub count: Option<u64>,
    /// This node's fair share at the last complete round.
    pub target: Option<f64>,
    /// Whether this node accepts new resources.
    pub accepting: bool,
    /// Whether a proportional rebalance is in progress.
    pub rebalancing: bool,
    /// Every live member at the last round, this node included.
    pub members: Vec<StatusMember>,
    /// Rounds by outcome.
    pub rounds: RoundCounts,
    /// Resources actually shed since start.
    pub shed_total: u64,
    /// The last round's number.
    pub last_round: Option<u64>,
    /// The last round's outcome.
    pub last_outcome: Option<RoundOutcome>,
    /// Why this node refuses new resources now, judged with `count`:
    /// `draining`, `rebalancing`, `not_ready` (an adapter adds `full`);
    /// `None` while it accepts.
    pub refusal: Option<&'static str>,
    /// The refusal, for a person.
    pub refusal_message: Option<String>,
    /// Why this node is not ready, if it is not.
    pub not_ready: Option<String>,
    /// What an operator should know that does not block readiness.
    pub warnings: Vec<String>,
    /// Node ids that two live processes publish under.
    pub duplicate_ids: Vec<String>,
}

/// One member in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusMember {
    /// The member.
    pub node_id: String,
    /// Its reported count (`None`: no usable report).
    pub count: Option<u64>,
}

/// Rounds by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoundCounts {
    /// Nothing to do.
    pub balanced: u64,
    /// Decided to shed.
    pub shed: u64,
    /// A safety rule held a shed back.
    pub held: u64,
    /// Incomplete or failed; nothing shed.
    pub discarded: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Admission limit (`u64::MAX`: accept everything).
    accept_up_to: AtomicU64,
    last_count: AtomicU64,
    draining: AtomicBool,
    /// Set while `status.not_ready` is: the fast path of [`Admission::check`].
    not_ready_flag: AtomicBool,
    refusal_hints: Mutex<Vec<String>>,
    hint_cursor: AtomicUsize,
    status: Mutex<Status>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Status> {
        // Status is plain data rewritten field by field; a panic mid-update
        // cannot leave it unusable.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot, with the admission verdict judged now.
    fn status(self: &Arc<Self>) -> Status {
        let count = self.last_count.load(Ordering::Relaxed);
        let refusal = Admission(Arc::clone(self)).check(count).err();
        let mut status = self.lock().clone();
        status.accepting = refusal.is_none();
        status.refusal = refusal.as_ref().map(Refusal::label);
        status.refusal_message = refusal.map(|r| r.to_string());
        status
    }

    pub(crate) fn set_count(&self, count: u64) {
        self.last_count.store(count, Ordering::Relaxed);
        self.lock().count = Some(count);
    }

    /// Admission state from the core after a round.
    pub(crate) fn set_admission(&self, accept_up_to: Option<u64>, refusal_hints: &[String]) {
        self.accept_up_to
            .store(accept_up_to.unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut h = self.refusal_hints.lock().unwrap_or_else(|p| p.into_inner());
        h.clear();
        h.extend_from_slice(refusal_hints);
    }

    /// Readiness after a round: from the core (an id used twice) and the
    /// backend (a node that admitted none of its seeds).
    pub(crate) fn set_readiness(
        self: &Arc<Self>,
        not_ready: Option<String>,
        warnings: Vec<String>,
        duplicate_ids: Vec<String>,
    ) {
        let mut status = self.lock();
        self.not_ready_flag
            .store(not_ready.is_some(), Ordering::Relaxed);
        status.not_ready = not_ready;
        status.warnings = warnings;
        status.duplicate_ids = duplicate_ids;
        let namespace = status.namespace.clone();
        drop(status);
        let accepting = Admission(Arc::clone(self)).accepting();
        metrics::gauge!(crate::metrics::ACCEPTING, "namespace" => namespace)
            .set(f64::from(u8::from(accepting)));
    }

    pub(crate) fn apply(&self, event: &Event) {
        let mut status = self.lock();
        match event {
            Event::Round(r) => {
                status.rebalancing = r.rebalancing;
                if r.count.is_some() {
                    status.count = r.count;
                }
                if r.target.is_some() {
                    status.target = r.target;
                }
                if !r.members.is_empty() {
                    status.members = r
                        .members
                        .iter()
                        .map(|m| StatusMember {
                            node_id: m.node.to_string(),
                            count: m.count,
                        })
                        .collect();
                }
                let counts = &mut status.rounds;
                match r.outcome {
                    RoundOutcome::Balanced => counts.balanced += 1,
                    RoundOutcome::Shed { .. } => counts.shed += 1,
                    RoundOutcome::Held { .. } => counts.held += 1,
                    _ => counts.discarded += 1,
                }
                status.last_round = Some(r.round);
                status.last_outcome = Some(r.outcome.clone());
            }
            Event::ShedDone { shed, .. } => status.shed_total += shed,
            _ => {}
        }
    }
}

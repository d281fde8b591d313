//! The handle a service holds: build, observe, shut down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clb_core::{Config, ConfigError, Deficit, Event, NodeId, RoundOutcome};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
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
/// let balancer = Balancer::builder("node-1", "websockets")
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
}

impl Balancer {
    /// Starts building a balancer for `node_id` in `namespace`.
    pub fn builder(node_id: impl Into<String>, namespace: impl Into<String>) -> Builder {
        Builder {
            node_id: node_id.into(),
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
        self.shared.lock().clone()
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

    /// Stops the balancer: no more rounds, outstanding calls are dropped, and
    /// the node leaves the namespace. Waits until that is done.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            // The worker never panics by design; if it did, there is nothing
            // left to clean up.
            let _ = task.await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// Whether a node accepts new resources, and where to send those it refuses;
/// see [`Balancer::admission`]. Cheap to clone and to call.
#[derive(Clone, Debug)]
pub struct Admission(Arc<Shared>);

impl Admission {
    /// Whether a node holding `live_count` resources should accept one more:
    /// false only while it is above its target in an active rebalance.
    /// Lock-free; pass the adapter's live count.
    pub fn admits(&self, live_count: u64) -> bool {
        live_count <= self.0.accept_up_to.load(Ordering::Relaxed)
    }

    /// [`admits`](Self::admits) with the last count the balancer read.
    pub fn accepting(&self) -> bool {
        self.admits(self.0.last_count.load(Ordering::Relaxed))
    }

    /// An under-target node's address, drawn in proportion to its deficit,
    /// for a steered reconnect (a 503's body, say). `None` when no member
    /// is below target with an address.
    pub fn hint(&self) -> Option<String> {
        let deficits = self.0.deficits.lock().unwrap_or_else(|p| p.into_inner());
        let total: f64 = deficits.iter().map(|d| d.deficit).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = rand::rng().random::<f64>() * total;
        for d in deficits.iter() {
            if x < d.deficit {
                return Some(d.address.clone());
            }
            x -= d.deficit;
        }
        deficits.last().map(|d| d.address.clone())
    }
}

/// Reads a balancer's [`Status`]; see [`Balancer::status_handle`].
#[derive(Clone, Debug)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// A snapshot of the balancer's state.
    pub fn status(&self) -> Status {
        self.0.lock().clone()
    }
}

/// Configures and starts a [`Balancer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    node_id: String,
    namespace: String,
    config: Config,
    address: Option<String>,
    count_timeout: Option<Duration>,
    shed_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    seed: Option<u64>,
}

impl Builder {
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
        let node = NodeId::new(self.node_id.clone());
        let mut core =
            clb_core::Balancer::new(node, self.config.clone(), clb_core::Millis(0), rng)?;
        core.set_address(self.address.clone());

        let shared = Arc::new(Shared {
            accept_up_to: AtomicU64::new(u64::MAX),
            last_count: AtomicU64::new(0),
            deficits: Mutex::new(Vec::new()),
            status: Mutex::new(Status {
                node_id: self.node_id,
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
            }),
        });
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
    deficits: Mutex<Vec<Deficit>>,
    status: Mutex<Status>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Status> {
        // Status is plain data rewritten field by field; a panic mid-update
        // cannot leave it unusable.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_count(&self, count: u64) {
        self.last_count.store(count, Ordering::Relaxed);
        self.lock().count = Some(count);
    }

    /// Admission state from the core after a round.
    pub(crate) fn set_admission(&self, accept_up_to: Option<u64>, deficits: &[Deficit]) {
        self.accept_up_to
            .store(accept_up_to.unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut d = self.deficits.lock().unwrap_or_else(|p| p.into_inner());
        d.clear();
        d.extend_from_slice(deficits);
    }

    pub(crate) fn apply(&self, event: &Event) {
        let mut status = self.lock();
        match event {
            Event::Round(r) => {
                status.accepting = r.accepting;
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

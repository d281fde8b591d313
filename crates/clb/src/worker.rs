//! The only loop: feeds the core one input at a time, carries out what it
//! asks, and holds no balancing policy of its own.
//!
//! Nothing the loop awaits can hang it: every resource and backend call runs
//! on its own task under a timeout, and the loop only `select!`s on their
//! completions, the core's next deadline and shutdown. A hung backend delays
//! neither a count, nor a shed, nor shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clb_core::{
    Action, CountFailed, Event, MemberRecord, Millis, RoundOutcome, ShedFailed, ViewFailed, wire,
};
use rand::rngs::StdRng;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, error::Elapsed, timeout};

use crate::backend::{BackendError, ClusterBackend};
use crate::balancer::Shared;
use crate::ratelimit::RateLimiter;
use crate::resource::{Resource, ResourceError, ShedRequest};
use crate::{metrics, trace};

/// Timeouts the worker puts around every call it makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) count: Duration,
    pub(crate) shed: Duration,
    pub(crate) backend: Duration,
}

/// A call running on its own task, under a timeout.
type Guarded<T, E> = JoinHandle<Result<Result<T, E>, Elapsed>>;
type Outcome<T, E> = Result<Result<Result<T, E>, Elapsed>, JoinError>;

pub(crate) struct Worker<R, B> {
    pub(crate) core: clb_core::Balancer<StdRng>,
    pub(crate) resource: Arc<R>,
    pub(crate) backend: Arc<B>,
    pub(crate) namespace: Arc<str>,
    pub(crate) timeouts: Timeouts,
    pub(crate) shared: Arc<Shared>,
    pub(crate) events_tx: broadcast::Sender<Event>,
    /// The instant the core's `Millis(0)` stands for.
    pub(crate) epoch: Instant,
}

/// The calls in flight; at most one of each.
#[derive(Default)]
struct InFlight {
    count: Option<Guarded<u64, ResourceError>>,
    shed: Option<Guarded<u64, ResourceError>>,
    /// How many the shed in flight was asked for.
    shed_asked: u64,
    view: Option<Guarded<Vec<MemberRecord>, BackendError>>,
    publish: Option<Guarded<(), BackendError>>,
    /// The newest value waiting for the publish in flight to finish; an
    /// older one waiting is replaced (only the latest report matters).
    next_publish: Option<String>,
}

impl InFlight {
    fn abort(self) {
        for task in [self.count, self.shed].into_iter().flatten() {
            task.abort();
        }
        if let Some(t) = self.view {
            t.abort();
        }
        if let Some(t) = self.publish {
            t.abort();
        }
    }
}

impl<R: Resource, B: ClusterBackend> Worker<R, B> {
    pub(crate) async fn run(mut self, mut shutdown_rx: watch::Receiver<bool>) {
        let mut calls = InFlight::default();
        let mut round_started = Instant::now();
        let log = RateLimiter::default();
        metrics::register(&self.namespace);
        let now = self.now();
        self.core.handle_timeout(now);
        loop {
            let mut unsent: Option<String> = None;
            while let Some(action) = self.core.poll_action() {
                match action {
                    Action::ReadCount => {
                        debug_assert!(calls.count.is_none(), "core asked for a second count");
                        round_started = Instant::now();
                        let resource = Arc::clone(&self.resource);
                        calls.count = Some(guarded(self.timeouts.count, async move {
                            resource.count().await
                        }));
                    }
                    Action::Publish(report) => {
                        self.shared.set_count(report.count);
                        // Held until the end of this drain: a round's view
                        // comes right after its publish, and a backend may
                        // do both in one round trip.
                        unsent = Some(wire::encode_in(&report, &self.namespace));
                    }
                    Action::FetchView => {
                        debug_assert!(calls.view.is_none(), "core asked for a second view");
                        let backend = Arc::clone(&self.backend);
                        let namespace = Arc::clone(&self.namespace);
                        let node = self.core.node().clone();
                        // Only when no publish is in flight, so values
                        // reach the backend in the order they were made.
                        let with = if calls.publish.is_none() {
                            unsent.take()
                        } else {
                            None
                        };
                        calls.view = Some(guarded(self.timeouts.backend, async move {
                            match with {
                                Some(value) => {
                                    backend.publish_and_view(&namespace, &node, &value).await
                                }
                                None => backend.view(&namespace).await,
                            }
                        }));
                    }
                    Action::Shed { n, hints } => {
                        debug_assert!(calls.shed.is_none(), "core asked for a second shed");
                        calls.shed_asked = n;
                        let request = ShedRequest::with_hints(n, hints).within(self.timeouts.shed);
                        let resource = Arc::clone(&self.resource);
                        calls.shed = Some(guarded(self.timeouts.shed, async move {
                            resource.shed(request).await
                        }));
                    }
                }
            }
            if let Some(value) = unsent.take() {
                if calls.publish.is_some() {
                    calls.next_publish = Some(value);
                } else {
                    calls.publish = Some(self.spawn_publish(value));
                }
            }
            while let Some(event) = self.core.poll_event() {
                if matches!(event, Event::Round(_)) {
                    self.after_round(&log);
                }
                self.record(event, round_started.elapsed(), &log);
            }

            let deadline = self
                .core
                .poll_timeout()
                .map(|t| self.epoch + Duration::from_millis(t.0));
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => break,
                res = join_opt(calls.count.as_mut()) => {
                    calls.count = None;
                    let count = self.check("count", self.timeouts.count, res).map_err(|()| CountFailed);
                    let now = self.now();
                    self.core.handle_count(now, count);
                }
                res = join_opt(calls.shed.as_mut()) => {
                    calls.shed = None;
                    let shed = self
                        .check("shed", self.timeouts.shed, res)
                        .map(|n| self.believable_shed(n, calls.shed_asked, &log))
                        .map_err(|()| ShedFailed);
                    let now = self.now();
                    self.core.handle_shed_done(now, shed);
                }
                res = join_opt(calls.view.as_mut()) => {
                    calls.view = None;
                    let records = self.backend_result("fetching members", res, &log);
                    let now = self.now();
                    self.core.handle_view(now, records.as_deref().map_err(|&e| e));
                }
                res = join_opt(calls.publish.as_mut()) => {
                    calls.publish = None;
                    // A failed publish shows up to others as a stale report.
                    let _ = self.backend_result("publishing", res, &log);
                    if let Some(value) = calls.next_publish.take() {
                        calls.publish = Some(self.spawn_publish(value));
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }

        calls.abort();
        let node = self.core.node().clone();
        match timeout(
            self.timeouts.backend,
            self.backend.leave(&self.namespace, &node),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(namespace = %self.namespace, "left the namespace"),
            Ok(Err(e)) => {
                tracing::warn!(namespace = %self.namespace, error = %e, "leaving failed; others will notice by failure detection")
            }
            Err(_) => {
                tracing::warn!(namespace = %self.namespace, "leaving timed out; others will notice by failure detection")
            }
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn spawn_publish(&self, value: String) -> Guarded<(), BackendError> {
        let backend = Arc::clone(&self.backend);
        let namespace = Arc::clone(&self.namespace);
        let node = self.core.node().clone();
        guarded(self.timeouts.backend, async move {
            backend.publish(&namespace, &node, &value).await
        })
    }

    /// What the shell tells the world after each round: admission, hints,
    /// readiness. Read by HTTP handlers without touching the worker.
    fn after_round(&self, log: &RateLimiter) {
        let now = self.now();
        self.shared
            .set_admission(self.core.accept_up_to(), self.core.refusal_hints());
        let duplicates: Vec<String> = self
            .core
            .duplicate_ids(now)
            .map(|n| n.to_string())
            .collect();
        if !duplicates.is_empty() && log.hit("duplicate_ids").is_some() {
            tracing::warn!(namespace = %self.namespace, ids = ?duplicates,
                "two live processes publish under the same node id: no round is decided until one stops; give every node its own id");
        }
        let health = self.backend.health();
        let not_ready = if self.core.own_id_duplicated(now) {
            Some(format!(
                "another live process uses this node's id {:?}",
                self.core.node().as_str()
            ))
        } else {
            health.not_ready
        };
        if let Some(why) = &not_ready {
            if log.hit("not_ready").is_some() {
                tracing::warn!(namespace = %self.namespace, "not ready: {why}");
            }
        }
        self.shared
            .set_readiness(not_ready, health.warnings, duplicates);
    }

    /// What a shed closed, as far as it can be believed: a resource that
    /// says it closed more than it was asked has a bug; it is counted as
    /// failed and believed up to what was asked, so the count of shed
    /// resources never exceeds what was decided.
    fn believable_shed(&self, reported: u64, asked: u64, log: &RateLimiter) -> u64 {
        if reported <= asked {
            return reported;
        }
        ::metrics::counter!(metrics::RESOURCE_FAILURES, "namespace" => self.namespace.to_string(), "call" => "shed").increment(1);
        if log.hit("shed_overreported").is_some() {
            tracing::warn!(namespace = %self.namespace, asked, reported,
                "resource shed() says it closed {reported} when asked for {asked}; counted as {asked}: check its return value");
        }
        asked
    }

    /// Flattens a resource call's result, logging and counting the failure.
    fn check<T>(
        &self,
        call: &'static str,
        limit: Duration,
        res: Outcome<T, ResourceError>,
    ) -> Result<T, ()> {
        let failure = match res {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(e))) => format!("failed: {e}"),
            Ok(Err(_)) => format!("timed out after {limit:?}"),
            Err(e) if e.is_panic() => "panicked".to_owned(),
            Err(_) => "was cancelled".to_owned(),
        };
        tracing::warn!(namespace = %self.namespace, call, "resource {call}() {failure}");
        ::metrics::counter!(metrics::RESOURCE_FAILURES, "namespace" => self.namespace.to_string(), "call" => call).increment(1);
        Err(())
    }

    /// Flattens a backend call's result, logging (at a bounded rate) and
    /// counting the failure.
    fn backend_result<T>(
        &self,
        what: &'static str,
        res: Outcome<T, BackendError>,
        log: &RateLimiter,
    ) -> Result<T, ViewFailed> {
        let failure = match res {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("timed out after {:?}", self.timeouts.backend),
            Err(e) if e.is_panic() => "panicked".to_owned(),
            Err(_) => "was cancelled".to_owned(),
        };
        ::metrics::counter!(metrics::BACKEND_FAILURES, "namespace" => self.namespace.to_string(), "call" => what).increment(1);
        if let Some(n) = log.hit(what) {
            tracing::warn!(namespace = %self.namespace, failures = n, "{what} failed: {failure}");
        }
        Err(ViewFailed)
    }

    fn record(&self, event: Event, round_latency: Duration, log: &RateLimiter) {
        if let Event::Round(r) = &event {
            if let RoundOutcome::Discarded { reason } = &r.outcome {
                // A round discarded for a bad or duplicated member is a
                // configuration or version problem someone must see.
                let loud = matches!(reason.label(), "invalid_report" | "duplicate_node");
                if loud && log.hit(reason.label()).is_some() {
                    tracing::warn!(namespace = %self.namespace, reason = reason.label(), "round discarded: {reason}");
                }
            }
        }
        trace::event(&self.namespace, &event);
        metrics::event(&self.namespace, &event, round_latency);
        self.shared.apply(&event);
        // No subscriber is fine: events are a convenience, not a contract.
        let _ = self.events_tx.send(event);
    }
}

/// Runs a call on its own task, so a panic is caught by tokio and a hang is
/// cut by the timeout, and the loop stays responsive.
fn guarded<T, E, F>(limit: Duration, call: F) -> Guarded<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    tokio::spawn(timeout(limit, call))
}

async fn join_opt<T>(task: Option<&mut JoinHandle<T>>) -> Result<T, JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

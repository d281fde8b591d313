//! The only loop: feeds the core one input at a time, carries out what it
//! asks, and holds no balancing policy of its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clb_core::{Action, CountFailed, Event, Millis, ShedFailed, ViewFailed};
use rand::rngs::StdRng;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, error::Elapsed, timeout};

use crate::backend::ClusterBackend;
use crate::balancer::Shared;
use crate::resource::{Resource, ResourceError, ShedRequest};
use crate::{metrics, trace};

/// Timeouts the worker puts around every call it makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) count: Duration,
    pub(crate) shed: Duration,
    pub(crate) backend: Duration,
}

/// A resource call running on its own task, under a timeout.
type Guarded<T> = JoinHandle<Result<Result<T, ResourceError>, Elapsed>>;
type CallResult<T> = Result<Result<Result<T, ResourceError>, Elapsed>, JoinError>;

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

impl<R: Resource, B: ClusterBackend> Worker<R, B> {
    pub(crate) async fn run(mut self, mut shutdown_rx: watch::Receiver<bool>) {
        let mut count_task: Option<Guarded<u64>> = None;
        let mut shed_task: Option<Guarded<u64>> = None;
        let mut round_started = Instant::now();
        let now = self.now();
        self.core.handle_timeout(now);
        loop {
            while let Some(action) = self.core.poll_action() {
                match action {
                    Action::ReadCount => {
                        debug_assert!(count_task.is_none(), "core asked for a second count");
                        round_started = Instant::now();
                        count_task =
                            Some(self.spawn_guarded(self.timeouts.count, |r| async move {
                                r.count().await
                            }));
                    }
                    Action::Publish(report) => {
                        self.shared.set_count(report.count);
                        let publish = self.backend.publish(&self.namespace, &report);
                        match timeout(self.timeouts.backend, publish).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(namespace = %self.namespace, error = %e, "publish failed")
                            }
                            Err(_) => {
                                tracing::warn!(namespace = %self.namespace, "publish timed out")
                            }
                        }
                    }
                    Action::FetchView => {
                        let view = match timeout(
                            self.timeouts.backend,
                            self.backend.view(&self.namespace),
                        )
                        .await
                        {
                            Ok(Ok(view)) => Ok(view),
                            Ok(Err(e)) => {
                                tracing::warn!(namespace = %self.namespace, error = %e, "fetching members failed");
                                Err(ViewFailed)
                            }
                            Err(_) => {
                                tracing::warn!(namespace = %self.namespace, "fetching members timed out");
                                Err(ViewFailed)
                            }
                        };
                        let now = self.now();
                        self.core.handle_view(now, view.as_ref().map_err(|&e| e));
                    }
                    Action::Shed { n, hints } => {
                        debug_assert!(shed_task.is_none(), "core asked for a second shed");
                        let request = ShedRequest::with_hints(n, hints);
                        shed_task =
                            Some(self.spawn_guarded(self.timeouts.shed, move |r| async move {
                                r.shed(request).await
                            }));
                    }
                }
            }
            while let Some(event) = self.core.poll_event() {
                if matches!(event, Event::Round(_)) {
                    self.shared
                        .set_admission(self.core.accept_up_to(), self.core.deficits());
                }
                self.record(event, round_started.elapsed());
            }

            let deadline = self
                .core
                .poll_timeout()
                .map(|t| self.epoch + Duration::from_millis(t.0));
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => break,
                res = join_opt(count_task.as_mut()) => {
                    count_task = None;
                    let now = self.now();
                    self.core.handle_count(now, self.check("count", self.timeouts.count, res).map_err(|()| CountFailed));
                }
                res = join_opt(shed_task.as_mut()) => {
                    shed_task = None;
                    let now = self.now();
                    self.core.handle_shed_done(now, self.check("shed", self.timeouts.shed, res).map_err(|()| ShedFailed));
                }
                _ = sleep_until_opt(deadline) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }

        if let Some(t) = count_task {
            t.abort();
        }
        if let Some(t) = shed_task {
            t.abort();
        }
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

    /// Runs a resource call on its own task, so a panic is caught by tokio
    /// and a hang is cut by the timeout, and the loop stays responsive.
    fn spawn_guarded<T, F, Fut>(&self, limit: Duration, call: F) -> Guarded<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<R>) -> Fut,
        Fut: Future<Output = Result<T, ResourceError>> + Send + 'static,
    {
        let fut = call(Arc::clone(&self.resource));
        tokio::spawn(timeout(limit, fut))
    }

    /// Flattens a guarded call's result, logging and counting the failure.
    fn check<T>(&self, call: &'static str, limit: Duration, res: CallResult<T>) -> Result<T, ()> {
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

    fn record(&self, event: Event, round_latency: Duration) {
        trace::event(&self.namespace, &event);
        metrics::event(&self.namespace, &event, round_latency);
        self.shared.apply(&event);
        // No subscriber is fine: events are a convenience, not a contract.
        let _ = self.events_tx.send(event);
    }
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

//! Prometheus metric names (SPEC §7) and how events feed them.
//!
//! Recorded through the `metrics` facade: nothing is exported unless the
//! application installs a recorder (`clb node` installs the Prometheus one).
//! Every series a dashboard or an alert needs exists from the start, at 0.

use std::time::Duration;

use clb_core::{DiscardReason, Event, RoundOutcome};

/// Counter: rounds ended, by `outcome` (`balanced`, `shed`, `held`, `discarded`).
pub const ROUNDS: &str = "clb_rounds_total";
/// Counter: discarded rounds, by `reason`.
pub const DISCARDED: &str = "clb_discarded_rounds_total";
/// Counter: resources actually shed (as reported by the resource).
pub const SHED: &str = "clb_shed_total";
/// Gauge: this node's resource count at the last round.
pub const RESOURCE_COUNT: &str = "clb_resource_count";
/// Gauge: live members of the namespace in the last round.
pub const CLUSTER_MEMBERS: &str = "clb_cluster_members";
/// Histogram: time from a round's count read to its decision, in seconds.
pub const ROUND_DURATION: &str = "clb_round_duration_seconds";
/// Counter: network messages dropped by a backend, by `reason`.
pub const REJECTED_MESSAGES: &str = "clb_rejected_messages_total";
/// Counter: gossip datagrams, by `direction` (`sent`, `received`).
pub const GOSSIP_PACKETS: &str = "clb_gossip_packets_total";
/// Counter: outgoing messages dropped before sending, by `reason`.
pub const SENT_DROPPED: &str = "clb_gossip_send_dropped_total";
/// Counter: failed, panicked or timed-out resource calls, by `call`.
pub const RESOURCE_FAILURES: &str = "clb_resource_failures_total";
/// Counter: failed or timed-out backend calls, by `call`.
pub const BACKEND_FAILURES: &str = "clb_backend_failures_total";
/// Gauge: 1 while this node accepts new resources, 0 while it refuses.
pub const ACCEPTING: &str = "clb_accepting";
/// Counter: WebSocket upgrades refused, by `reason` (`draining`,
/// `rebalancing`, `not_ready`, `full`).
pub const WS_REFUSED: &str = "clb_ws_refused_total";
/// Counter: WebSocket connections ended, by `reason` (see
/// [`crate::adapter::session::Ended`]).
pub const WS_CLOSED: &str = "clb_ws_closed_total";

/// Creates every series of `namespace` at 0 and describes every metric, so
/// a scrape right after start already shows what an alert will watch.
pub(crate) fn register(namespace: &str) {
    describe();
    let ns = namespace.to_owned();
    for outcome in ["balanced", "shed", "held", "discarded"] {
        metrics::counter!(ROUNDS, "namespace" => ns.clone(), "outcome" => outcome).increment(0);
    }
    for reason in DiscardReason::labels() {
        metrics::counter!(DISCARDED, "namespace" => ns.clone(), "reason" => reason).increment(0);
    }
    metrics::counter!(SHED, "namespace" => ns.clone()).increment(0);
    for call in ["count", "shed"] {
        metrics::counter!(RESOURCE_FAILURES, "namespace" => ns.clone(), "call" => call)
            .increment(0);
    }
    for call in ["fetching members", "publishing"] {
        metrics::counter!(BACKEND_FAILURES, "namespace" => ns.clone(), "call" => call).increment(0);
    }
}

/// `# HELP` texts for every metric of this crate.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ROUNDS,
        "Rounds ended, by outcome (balanced, shed, held, discarded)."
    );
    describe_counter!(DISCARDED, "Rounds discarded (nothing shed), by reason.");
    describe_counter!(
        SHED,
        "Resources actually shed, as reported by the resource."
    );
    describe_gauge!(
        RESOURCE_COUNT,
        "This node's resource count at the last round."
    );
    describe_gauge!(
        CLUSTER_MEMBERS,
        "Live members of the namespace in the last round."
    );
    describe_histogram!(
        ROUND_DURATION,
        metrics::Unit::Seconds,
        "Time from a round's count read to its decision."
    );
    describe_counter!(
        REJECTED_MESSAGES,
        "Network messages dropped by a backend (forged, replayed, malformed...), by reason."
    );
    describe_counter!(GOSSIP_PACKETS, "Gossip datagrams, by direction.");
    describe_counter!(
        SENT_DROPPED,
        "Outgoing gossip datagrams dropped before sending, by reason."
    );
    describe_counter!(
        RESOURCE_FAILURES,
        "Failed, panicked or timed-out resource calls, by call."
    );
    describe_counter!(
        BACKEND_FAILURES,
        "Failed or timed-out backend calls, by call."
    );
    describe_gauge!(
        ACCEPTING,
        "1 while this node accepts new resources, 0 while it refuses."
    );
    describe_counter!(WS_REFUSED, "WebSocket upgrades refused, by reason.");
    describe_counter!(WS_CLOSED, "WebSocket connections ended, by reason.");
}

/// Creates the WebSocket series at 0 (the adapter's gate does it).
pub(crate) fn register_websocket() {
    for reason in ["draining", "rebalancing", "not_ready", "full"] {
        metrics::counter!(WS_REFUSED, "reason" => reason).increment(0);
    }
    for ended in crate::adapter::session::Ended::ALL {
        metrics::counter!(WS_CLOSED, "reason" => ended.label()).increment(0);
    }
}

pub(crate) fn event(namespace: &str, event: &Event, round_latency: Duration) {
    let ns = namespace.to_owned();
    match event {
        Event::Round(round) => {
            metrics::counter!(ROUNDS, "namespace" => ns.clone(), "outcome" => round.outcome.label()).increment(1);
            if let RoundOutcome::Discarded { reason } = &round.outcome {
                metrics::counter!(DISCARDED, "namespace" => ns.clone(), "reason" => reason.label())
                    .increment(1);
            }
            if let Some(count) = round.count {
                metrics::gauge!(RESOURCE_COUNT, "namespace" => ns.clone()).set(count as f64);
            }
            if !round.members.is_empty() {
                metrics::gauge!(CLUSTER_MEMBERS, "namespace" => ns.clone())
                    .set(round.members.len() as f64);
            }
            metrics::histogram!(ROUND_DURATION, "namespace" => ns)
                .record(round_latency.as_secs_f64());
        }
        Event::ShedDone { shed, .. } => {
            metrics::counter!(SHED, "namespace" => ns).increment(*shed);
        }
        Event::ShedFailed { .. } => {}
        // A new event kind is not a metric until someone decides it is.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// A Prometheus exporter for every metric of this crate (feature
/// `prometheus`): installs the global recorder, keeps it tidy on its own,
/// renders the text format, and (with `axum`) serves it.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = clb::metrics::Prometheus::install()?;
/// let text = metrics.render(); // what a scrape of /metrics returns
/// # let _ = text; Ok(()) }
/// ```
#[cfg(feature = "prometheus")]
#[derive(Debug)]
pub struct Prometheus {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    upkeep: tokio::task::JoinHandle<()>,
}

/// Buckets of `clb_round_duration_seconds`, in seconds: a round is decided
/// in microseconds to a few backend timeouts.
#[cfg(feature = "prometheus")]
pub const ROUND_DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[cfg(feature = "prometheus")]
impl Prometheus {
    /// Installs the recorder for the whole process and starts its upkeep
    /// (every 5 s) on the current tokio runtime. One per process: a second
    /// install is refused.
    pub fn install() -> Result<Self, MetricsError> {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(ROUND_DURATION.into()),
                &ROUND_DURATION_BUCKETS,
            )
            .map_err(|e| MetricsError(e.to_string()))?
            .install_recorder()
            .map_err(|e| MetricsError(e.to_string()))?;
        describe();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| MetricsError("no tokio runtime: install from within one".into()))?;
        let tidy = handle.clone();
        let upkeep = runtime.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                tidy.run_upkeep();
            }
        });
        Ok(Prometheus { handle, upkeep })
    }

    /// The Prometheus text format of every metric now.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// A `GET /metrics` handler for an axum router.
    #[cfg(feature = "axum")]
    pub fn handler<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        let handle = self.handle.clone();
        axum::routing::get(move || {
            let text = handle.render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        })
    }
}

#[cfg(feature = "prometheus")]
impl Drop for Prometheus {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

/// The Prometheus recorder could not be installed; nothing was changed.
#[cfg(feature = "prometheus")]
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(String);

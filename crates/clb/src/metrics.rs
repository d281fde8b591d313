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

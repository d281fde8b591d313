//! One `tracing` event per round, and one per shed batch.

use clb_core::{Event, RoundEvent, RoundOutcome};

fn member_ids(r: &RoundEvent) -> String {
    let ids: Vec<&str> = r.members.iter().map(|m| m.node.as_str()).collect();
    ids.join(",")
}

pub(crate) fn event(namespace: &str, event: &Event) {
    match event {
        Event::Round(r) => match &r.outcome {
            RoundOutcome::Balanced => tracing::debug!(
                namespace,
                round = r.round,
                count = r.count,
                target = r.target,
                members = r.members.len(),
                "round: balanced"
            ),
            RoundOutcome::Shed { n } => tracing::info!(
                namespace,
                round = r.round,
                count = r.count,
                target = r.target,
                members = r.members.len(),
                // Which members the decision saw: an audit of every shed
                // against what the cluster really was (scripts/chaos.py).
                seen = %member_ids(r),
                shed = n,
                "round: shedding {n}"
            ),
            RoundOutcome::Held { would_shed, reason } => tracing::info!(
                namespace,
                round = r.round,
                count = r.count,
                would_shed,
                "round: held back ({reason:?})"
            ),
            RoundOutcome::Discarded { reason } => tracing::info!(
                namespace,
                round = r.round,
                reason = reason.label(),
                "round: discarded, {reason}"
            ),
            #[allow(unreachable_patterns)]
            other => tracing::info!(namespace, round = r.round, "round: {other:?}"),
        },
        Event::ShedDone { requested, shed } => {
            tracing::debug!(namespace, requested, shed, "shed batch done")
        }
        Event::ShedFailed {
            requested,
            cancelled,
        } => tracing::warn!(
            namespace,
            requested,
            cancelled,
            "shed batch failed; the rest of this round's plan is cancelled"
        ),
        #[allow(unreachable_patterns)]
        other => tracing::debug!(namespace, "{other:?}"),
    }
}

//! One `tracing` event per round, and one per shed batch.

use clb_core::{Event, RoundOutcome};

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

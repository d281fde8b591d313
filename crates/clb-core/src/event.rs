//! What a balancer tells the outside world: round outcomes and shed results,
//! delivered as values by [`crate::Balancer::poll_event`].

use serde::{Deserialize, Serialize};

use crate::report::NodeId;
use crate::round::DiscardReason;
use crate::time::Millis;

/// What one round concluded. Outcomes are values, not errors: a discarded
/// round is a normal, counted event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RoundOutcome {
    /// Nothing to do.
    Balanced,
    /// This node decided to shed `n` resources (after the hard cap); they are
    /// shed now or paced over the window.
    Shed {
        /// How many.
        n: u64,
    },
    /// The strategy asked for a shed but a safety rule held it back; nothing
    /// was shed.
    Held {
        /// What would have been shed.
        would_shed: u64,
        /// Which rule held it.
        #[serde(flatten)]
        reason: HoldReason,
    },
    /// The round could not be decided; nothing was shed.
    Discarded {
        /// Why.
        #[serde(flatten)]
        reason: DiscardReason,
    },
}

impl RoundOutcome {
    /// `balanced`, `shed`, `held` or `discarded`: the `outcome` label of
    /// `clb_rounds_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RoundOutcome::Balanced => "balanced",
            RoundOutcome::Shed { .. } => "shed",
            RoundOutcome::Held { .. } => "held",
            RoundOutcome::Discarded { .. } => "discarded",
        }
    }
}

/// Why a decided shed was held back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hold", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HoldReason {
    /// Membership changed recently (SPEC §4 settle time).
    Settling {
        /// Held rounds left, this one included.
        rounds_left: u32,
    },
    /// The config says decide but do not shed.
    DryRun,
}

/// One member's count as seen in a round (`None`: no usable report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCount {
    /// The member.
    pub node: NodeId,
    /// Its reported count.
    pub count: Option<u64>,
}

/// The record of one round of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundEvent {
    /// This balancer's round number, from 1.
    pub round: u64,
    /// When it was decided.
    pub at: Millis,
    /// This node's count at the tick; `None` when `count()` failed.
    pub count: Option<u64>,
    /// This node's fair share, when the round was complete.
    pub target: Option<f64>,
    /// Every live member the round saw, this node included, sorted by id.
    pub members: Vec<MemberCount>,
    /// Whether this node accepts new resources after this round.
    pub accepting: bool,
    /// Admission limit after this round: above this count the node refuses
    /// new resources (`None`: accepts everything).
    pub accept_up_to: Option<u64>,
    /// Whether a proportional rebalance is in progress after this round.
    pub rebalancing: bool,
    /// What the round concluded.
    #[serde(flatten)]
    pub outcome: RoundOutcome,
}

/// Everything [`crate::Balancer::poll_event`] can report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A round ended.
    Round(RoundEvent),
    /// A shed batch finished; `shed` is what the resource says it closed.
    ShedDone {
        /// Asked for.
        requested: u64,
        /// Actually shed, as reported by the resource.
        shed: u64,
    },
    /// A shed batch failed (error, panic or timeout); the rest of this
    /// round's plan was cancelled.
    ShedFailed {
        /// Asked for.
        requested: u64,
        /// Left in the plan and dropped.
        cancelled: u64,
    },
}

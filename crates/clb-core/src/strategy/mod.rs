//! Strategies: pure functions from a complete [`Round`] to a [`Decision`].
//!
//! Safety limits (hard cap, settle, pacing, dry run) are applied afterwards by
//! the [`crate::Balancer`], so each strategy is exactly its SPEC §4 rule.

pub mod classic;
pub mod proportional;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Strategy};
use crate::round::Round;

/// What a strategy concluded for this node in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether this node's rule says it is overloaded this round (classic:
    /// highest and above the allowed deviation; proportional: above target
    /// in an active rebalance). It can be true with an amount of 0 when the
    /// amount falls below `min_shed_count`.
    pub overloaded: bool,
    /// How many resources to shed, before the safety limits.
    pub amount: u64,
    /// This node's fair share: `total * weight / sum(weights)`.
    pub target: f64,
    /// Proportional: whether a rebalance is in progress after this round
    /// (the hysteresis state carried to the next round).
    pub rebalancing: bool,
    /// Admission control: while the node's live count is above this, it
    /// refuses new resources. `None` accepts everything.
    pub accept_up_to: Option<u64>,
    /// Under-target members that advertise an address, with their deficits:
    /// where a shed client is best steered.
    pub deficits: Vec<Deficit>,
}

/// A member below its target, for steered reconnects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deficit {
    /// Where its clients connect.
    pub address: String,
    /// How far below target it is, in resources.
    pub deficit: f64,
}

/// Runs the configured strategy on a round. `rebalancing` is the previous
/// round's [`Decision::rebalancing`] (ignored by `classic`).
pub fn decide(round: &Round, config: &Config, rebalancing: bool) -> Decision {
    match config.strategy {
        Strategy::Classic => classic::decide(round, config),
        Strategy::Proportional => proportional::decide(round, config, rebalancing),
    }
}

//! Strategies: pure functions from a complete [`Round`] to a [`Decision`].
//!
//! Safety limits (hard cap, settle, pacing, dry run) are applied afterwards by
//! the [`crate::Balancer`], so each strategy is exactly its SPEC §4 rule.

pub mod classic;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Strategy};
use crate::round::Round;

/// What a strategy concluded for this node in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether this node's rule says it is overloaded this round (classic:
    /// highest and above the allowed deviation). It can be true with an
    /// amount of 0 when the amount falls below `min_shed_count`.
    pub overloaded: bool,
    /// How many resources to shed, before the safety limits.
    pub amount: u64,
    /// This node's fair share: `total * weight / sum(weights)`.
    pub target: f64,
}

/// Runs the configured strategy on a round.
pub fn decide(round: &Round, config: &Config) -> Decision {
    match config.strategy {
        Strategy::Classic => classic::decide(round, config),
    }
}

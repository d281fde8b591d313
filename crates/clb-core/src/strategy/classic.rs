//! `classic`: the Elixir original, exactly (SPEC §4).
//!
//! Only the single highest node may shed, and only when it is more than
//! `allowed_average_deviation_percent` above the mean; it sheds
//! `trunc((count - avg) * shed_percentage / 100)`, at most `max_shed_count`,
//! and nothing if that is below `min_shed_count`.

use std::cmp::Ordering;

use super::Decision;
use crate::config::Config;
use crate::round::Round;

/// Whether this node is *the* highest: strictly above every other count, or
/// equal in count and strictly above in tie breaker. An exact double tie has
/// no highest node.
pub fn is_highest(round: &Round) -> bool {
    let me = round.me();
    round
        .iter_others()
        .all(|other| match me.count.cmp(&other.count) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => me.tie_breaker.value() > other.tie_breaker.value(),
        })
}

/// The mean of all counts, this node's included.
pub fn average(round: &Round) -> f64 {
    round.total() as f64 / round.num_members() as f64
}

/// Whether the original would shed: highest, and above `avg * (1 + dev/100)`.
/// A cluster of one never sheds.
pub fn should_shed(round: &Round, allowed_average_deviation_percent: f64) -> bool {
    if round.num_members() < 2 || !is_highest(round) {
        return false;
    }
    let avg = average(round);
    round.me().count as f64 > avg + allowed_average_deviation_percent / 100.0 * avg
}

/// The original's amount: `trunc((count - avg) * shed% / 100)`, capped by
/// `max_shed_count`, and 0 when that is below `min_shed_count`.
pub fn amount(
    round: &Round,
    shed_percentage: f64,
    max_shed_count: Option<u64>,
    min_shed_count: u64,
) -> u64 {
    let excess = round.me().count as f64 - average(round);
    if excess <= 0.0 {
        return 0;
    }
    // `as` saturates for floats, and trunc is the original's rounding.
    let raw = (excess * shed_percentage / 100.0).trunc() as u64;
    let capped = max_shed_count.map_or(raw, |max| raw.min(max));
    if capped < min_shed_count { 0 } else { capped }
}

/// The classic rule on one round.
pub fn decide(round: &Round, config: &Config) -> Decision {
    let overloaded = should_shed(round, config.allowed_average_deviation_percent);
    let amount = if overloaded {
        amount(
            round,
            config.shed_percentage,
            config.max_shed_count,
            config.min_shed_count,
        )
    } else {
        0
    };
    Decision {
        overloaded,
        amount,
        target: round.my_target(),
        rebalancing: false,
        accept_up_to: None,
        deficits: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_double_tie_has_no_highest() {
        let round = Round::from_counts(0, &[100, 100], &[0.26, 0.26]);
        assert!(!is_highest(&round));
        let mirrored = Round::from_counts(1, &[100, 100], &[0.26, 0.26]);
        assert!(!is_highest(&mirrored));
    }

    #[test]
    fn single_node_is_highest_but_never_sheds() {
        let round = Round::from_counts(0, &[100_000], &[]);
        assert!(is_highest(&round));
        assert!(!should_shed(&round, 0.0));
    }
}

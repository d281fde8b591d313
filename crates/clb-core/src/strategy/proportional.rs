//! `proportional`: every node moves toward its capacity-weighted share, in
//! parallel, with relative caps and hysteresis (SPEC §4).
//!
//! - target = `total * weight / sum(weights)`; a node's band is
//!   `max(percent% of target, abs_tolerance)` around it;
//! - a rebalance **starts** when any node is outside the trigger band
//!   (`allowed_average_deviation_percent`), above *or* below, and
//!   **continues** until every node is inside the stop band
//!   (`stop_band_percent`): hysteresis;
//! - while it is active, every node above its target sheds
//!   `shed_percentage`% of its excess, at most `max_shed_fraction` of its
//!   count and `max_shed_count` when set, nothing below `min_shed_count`;
//! - admission control, while it is active: a node above target refuses new
//!   resources; a node below target accepts up to its *fill level*. When the
//!   nodes below their stop band miss more than the nodes above it hold
//!   ([`Plan::fill_to_band_edge`]), the fill level is the lower edge of the
//!   stop band, otherwise the target. The least loaded node always accepts
//!   up to its target, so someone always accepts. Under-target nodes with an
//!   address are steering candidates, weighted by the room they have left.
//!
//! Why fill only to the band edge: with a random external load balancer a
//! shed client finds a node that accepts it with a probability that falls as
//! fewer nodes accept. Every client moved past the edge is a client the
//! stop band does not need, moved at the worst odds. In the 200-node rolling
//! deploy of BENCHMARKS.md this alone is worth about 0.1 of churn ratio.

use super::{Decision, Deficit};
use crate::config::Config;
use crate::round::Round;

/// The half-width of a band of `percent`% around `target`, with an absolute
/// floor.
pub fn band(target: f64, percent: f64, abs_tolerance: u64) -> f64 {
    (target * percent / 100.0).max(abs_tolerance as f64)
}

/// Whether `count` is outside the band of `percent`% around `target`.
pub fn outside(count: u64, target: f64, percent: f64, abs_tolerance: u64) -> bool {
    (count as f64 - target).abs() > band(target, percent, abs_tolerance)
}

/// Whether a rebalance is active after this round, given whether this node
/// was in one. It continues (stop band) while this node or any member
/// reports one; otherwise only the trigger band starts one.
pub fn rebalancing(round: &Round, config: &Config, was_rebalancing: bool) -> bool {
    if round.num_members() < 2 {
        return false;
    }
    let anyone = was_rebalancing || round.entries().iter().any(|e| e.rebalancing);
    let percent = if anyone {
        config.stop_band_percent
    } else {
        config.allowed_average_deviation_percent
    };
    round
        .entries()
        .iter()
        .zip(round.targets())
        .any(|(e, t)| outside(e.count, t, percent, config.abs_tolerance))
}

/// How far a round is from the stop band, on each side. Every node that sees
/// the same round computes the same plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Sum over nodes of what lies above their stop band.
    pub over_band: f64,
    /// Sum over nodes of what is missing below their stop band.
    pub under_band: f64,
}

impl Plan {
    /// Measures a round against the stop band.
    pub fn of(round: &Round, config: &Config) -> Self {
        let mut plan = Plan {
            over_band: 0.0,
            under_band: 0.0,
        };
        for (e, t) in round.entries().iter().zip(round.targets()) {
            let c = e.count as f64;
            let b = band(t, config.stop_band_percent, config.abs_tolerance);
            plan.over_band += (c - t - b).max(0.0);
            plan.under_band += (t - b - c).max(0.0);
        }
        plan
    }

    /// Whether under-target nodes need only reach the lower edge of their
    /// stop band: the nodes above the band have no more to give than that.
    pub fn fill_to_band_edge(&self) -> bool {
        self.under_band >= self.over_band
    }

    /// Up to what count an under-target node accepts new resources.
    pub fn fill_level(&self, target: f64, config: &Config) -> f64 {
        if self.fill_to_band_edge() {
            target - band(target, config.stop_band_percent, config.abs_tolerance)
        } else {
            target
        }
    }
}

/// The amount a node above target sheds in an active rebalance.
pub fn amount(count: u64, target: f64, config: &Config) -> u64 {
    let excess = count as f64 - target;
    if excess <= 0.0 {
        return 0;
    }
    let mut n = (excess * config.shed_percentage / 100.0).trunc() as u64;
    if let Some(fraction) = config.max_shed_fraction {
        n = n.min((count as f64 * fraction).floor() as u64);
    }
    if let Some(max) = config.max_shed_count {
        n = n.min(max);
    }
    if n < config.min_shed_count { 0 } else { n }
}

/// The proportional rule on one round.
pub fn decide(round: &Round, config: &Config, was_rebalancing: bool) -> Decision {
    let target = round.my_target();
    let count = round.me().count;
    let active = rebalancing(round, config, was_rebalancing);
    let mut decision = Decision {
        overloaded: false,
        amount: 0,
        target,
        rebalancing: active,
        accept_up_to: None,
        deficits: Vec::new(),
    };
    if !active {
        return decision;
    }
    decision.overloaded = count as f64 > target;
    decision.amount = amount(count, target, config);
    let plan = Plan::of(round, config);
    // The least loaded node relative to its target (ties: the first by id)
    // takes new resources up to its target, so that someone always accepts.
    let least = round
        .entries()
        .iter()
        .zip(round.targets())
        .map(|(e, t)| e.count as f64 / t.max(f64::MIN_POSITIVE))
        .enumerate()
        .min_by(|(_, a), (_, b)| a.total_cmp(b))
        .map(|(i, _)| i);
    let fill = |i: usize, t: f64| {
        if Some(i) == least {
            t
        } else {
            plan.fill_level(t, config)
        }
    };
    if config.admission_control {
        let limit = if decision.overloaded {
            target
        } else {
            fill(round.my_index(), target)
        };
        decision.accept_up_to = Some(limit.max(0.0).floor() as u64);
    }
    decision.deficits = round
        .entries()
        .iter()
        .zip(round.targets())
        .enumerate()
        .filter_map(|(i, (e, t))| {
            let room = fill(i, t) - e.count as f64;
            let address = e.address.clone()?;
            (room >= 1.0).then_some(Deficit {
                address,
                deficit: room,
            })
        })
        .collect();
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::Entry;

    fn config() -> Config {
        Config {
            shed_percentage: 100.0,
            min_shed_count: 1,
            ..Config::proportional()
        }
    }

    #[test]
    fn hysteresis_starts_at_the_trigger_band_and_stops_at_the_stop_band() {
        let c = config();
        // 20% above target: inside the 25% trigger band, outside the 5% stop band.
        let round = Round::from_counts(0, &[120, 80], &[]);
        assert!(!rebalancing(&round, &c, false), "not started by 20%");
        assert!(
            rebalancing(&round, &c, true),
            "but continued while outside 5%"
        );
        let even = Round::from_counts(0, &[104, 96], &[]);
        assert!(!rebalancing(&even, &c, true), "stops inside 5%");
    }

    #[test]
    fn a_rebalance_continues_while_any_member_reports_one() {
        let c = config();
        // This node saw the cluster inside the stop band at its last round
        // and stopped; another member did not, and the +15% is still there.
        let mut other = Entry::new("b", 85, 0.1);
        other.rebalancing = true;
        let round = Round::new(Entry::new("a", 115, 0.2), [other]);
        let d = decide(&round, &c, false);
        assert!(d.rebalancing);
        assert_eq!(d.amount, 11, "it takes part again");
        // Everyone inside the stop band: it stops, whatever anyone reports.
        let mut other = Entry::new("b", 98, 0.1);
        other.rebalancing = true;
        let round = Round::new(Entry::new("a", 102, 0.2), [other]);
        assert!(!decide(&round, &c, true).rebalancing);
    }

    #[test]
    fn a_node_below_target_triggers_too() {
        let round = Round::from_counts(0, &[110, 110, 110, 70], &[]);
        // The 70 is 30% below the target of 100: every node above sheds.
        let d = decide(&round, &config(), false);
        assert!(d.rebalancing);
        assert_eq!(d.amount, 10);
    }

    #[test]
    fn under_target_nodes_fill_to_the_band_edge_only_when_that_is_enough() {
        let c = config();
        // Targets 100, band 5: 300 is 195 above its band, the 0s 190 below.
        let round = Round::from_counts(0, &[300, 0, 0], &[]);
        let plan = Plan::of(&round, &c);
        assert_eq!((plan.over_band, plan.under_band), (195.0, 190.0));
        assert!(
            !plan.fill_to_band_edge(),
            "more above than below: fill to target"
        );
        assert_eq!(plan.fill_level(100.0, &c), 100.0);
        // One node far below, the rest just above: fill to the band edge.
        let round = Round::from_counts(0, &[104, 104, 104, 104, 84], &[]);
        let plan = Plan::of(&round, &c);
        assert!(plan.fill_to_band_edge());
        assert_eq!(plan.fill_level(100.0, &c), 95.0);
    }

    #[test]
    fn absolute_floor_keeps_small_clusters_still() {
        let round = Round::from_counts(0, &[3, 1], &[]);
        let c = Config {
            abs_tolerance: 2,
            ..config()
        };
        assert!(!decide(&round, &c, false).rebalancing);
    }

    #[test]
    fn the_relative_cap_and_the_absolute_cap_both_bind() {
        let c = config();
        assert_eq!(amount(1000, 500.0, &c), 100, "10% of 1000");
        let capped = Config {
            max_shed_count: Some(42),
            ..c.clone()
        };
        assert_eq!(amount(1000, 500.0, &capped), 42);
        let half = Config {
            shed_percentage: 50.0,
            ..c
        };
        assert_eq!(amount(1000, 980.0, &half), 10);
    }

    #[test]
    fn admission_refuses_above_target_only_while_rebalancing() {
        let c = config();
        let round = Round::from_counts(0, &[300, 100, 0], &[]);
        let d = decide(&round, &c, false);
        assert_eq!(d.accept_up_to, Some(133), "above target: refuse above it");
        let under = decide(&Round::from_counts(1, &[300, 100, 0], &[]), &c, false);
        assert_eq!(
            under.accept_up_to,
            Some(133),
            "more above the band than below it: fill to target"
        );
        let edge = decide(
            &Round::from_counts(3, &[110, 110, 110, 90, 80], &[]),
            &c,
            true,
        );
        assert_eq!(edge.accept_up_to, Some(95), "fill to the lower band edge");
        let least = decide(&Round::from_counts(2, &[300, 100, 0], &[]), &c, false);
        assert_eq!(
            least.accept_up_to,
            Some(133),
            "the least loaded takes up to target"
        );
        let calm = Round::from_counts(0, &[101, 100, 99], &[]);
        assert_eq!(decide(&calm, &c, false).accept_up_to, None);
        let off = Config {
            admission_control: false,
            ..c
        };
        assert_eq!(decide(&round, &off, false).accept_up_to, None);
    }

    #[test]
    fn deficits_list_under_target_members_with_an_address() {
        let mut a = Entry::new("a", 300, 0.1);
        a.address = Some("a:1".into());
        let mut b = Entry::new("b", 0, 0.2);
        b.address = Some("b:1".into());
        let c = Entry::new("c", 0, 0.3); // no address: not a candidate
        let round = Round::new(a, [b, c]);
        let d = decide(&round, &config(), false);
        assert_eq!(
            d.deficits,
            [Deficit {
                address: "b:1".into(),
                deficit: 100.0
            }]
        );
        assert_eq!(d.amount, 30, "10% of 300");
    }
}

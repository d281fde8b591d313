//! Every `classic` case of SPEC §4 (the Elixir original's own tests), one row
//! each. Defaults: deviation 25%, shed 50%, max 100, min 10.

use clb_core::strategy::classic;
use clb_core::{Config, Entry, Round};

/// (self count, self tie breaker, others as (count, tie breaker), sheds?)
type DecisionRow = (u64, f64, &'static [(u64, f64)], bool);

const DECISIONS: &[DecisionRow] = &[
    // a single node never sheds
    (0, 0.5, &[], false),
    (100, 0.5, &[], false),
    (100_000, 0.5, &[], false),
    // two nodes
    (100, 0.5, &[(0, 0.1)], true),
    (100, 0.5, &[(59, 0.1)], true),
    (100, 0.5, &[(60, 0.1)], false),
    (100, 0.5, &[(61, 0.1)], false),
    (0, 0.5, &[(100, 0.1)], false),
    // three nodes
    (10, 0.5, &[(1, 0.1), (2, 0.1)], true),
    // not the highest
    (
        99,
        0.5,
        &[(100, 0.1), (0, 0.1), (0, 0.1), (0, 0.1), (0, 0.1), (0, 0.1)],
        false,
    ),
    // ties are broken by the tie breaker; an exact double tie has no highest
    (100, 0.25, &[(100, 0.26), (0, 0.1), (0, 0.1)], false),
    (100, 0.27, &[(100, 0.26), (0, 0.1), (0, 0.1)], true),
    (100, 0.26, &[(100, 0.26)], false),
];

fn round(me: u64, tb: f64, others: &[(u64, f64)]) -> Round {
    let others = others
        .iter()
        .enumerate()
        .map(|(i, &(c, t))| Entry::new(format!("other-{i}").as_str(), c, t));
    Round::new(Entry::new("me", me, tb), others)
}

#[test]
fn classic_decision_table() {
    let config = Config::classic();
    for (row, &(me, tb, others, sheds)) in DECISIONS.iter().enumerate() {
        let round = round(me, tb, others);
        let got = classic::should_shed(&round, config.allowed_average_deviation_percent);
        assert_eq!(
            got, sheds,
            "row {row}: {me} (tb {tb}) vs {others:?} should_shed = {got}, want {sheds}"
        );
        let decision = classic::decide(&round, &config);
        assert_eq!(decision.overloaded, sheds, "row {row}: decide().overloaded");
        if !sheds {
            assert_eq!(decision.amount, 0, "row {row}: no shed means amount 0");
        }
    }
}

/// (shed %, max, min, expected amount) for 100 vs [0].
const AMOUNTS: &[(f64, u64, u64, u64)] = &[
    (50.0, 100, 10, 25),
    (100.0, 100, 10, 50),
    (20.0, 100, 10, 10),
    (10.0, 100, 10, 0), // 5 is below min 10
    (100.0, 100, 51, 0),
    (100.0, 10, 10, 10),
    (100.0, 25, 10, 25),
    (50.0, 24, 10, 24),
];

#[test]
fn classic_amount_table() {
    let round = round(100, 0.5, &[(0, 0.1)]);
    for (row, &(shed, max, min, want)) in AMOUNTS.iter().enumerate() {
        let config = Config {
            shed_percentage: shed,
            max_shed_count: Some(max),
            min_shed_count: min,
            ..Config::classic()
        };
        let got = classic::decide(&round, &config).amount;
        assert_eq!(
            got, want,
            "row {row}: shed {shed}% max {max} min {min}: amount {got}, want {want}"
        );
    }
}

#[test]
fn hundred_vs_fifty_nine_sheds_ten() {
    let decision = classic::decide(&round(100, 0.5, &[(59, 0.1)]), &Config::classic());
    assert_eq!(decision.amount, 10);
    assert_eq!(decision.target, 79.5);
}

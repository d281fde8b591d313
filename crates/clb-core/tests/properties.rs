//! Invariants of the decision core, over random inputs.

use std::time::Duration;

use clb_core::{
    Action, Balancer, ClusterView, Config, DiscardReason, Entry, Event, MemberView, Millis, Report,
    Round, RoundOutcome, TieBreaker, safety::hard_cap, strategy,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        0.0..200.0f64,
        0.0..=100.0f64,
        proptest::option::of(1u64..1000),
        0u64..50,
        proptest::option::of(0.01..=1.0f64),
    )
        .prop_map(|(dev, shed, max, min, frac)| Config {
            allowed_average_deviation_percent: dev,
            shed_percentage: shed,
            max_shed_count: max.map(|m| m.max(min)),
            min_shed_count: min,
            max_shed_fraction: frac,
            ..Config::classic()
        })
}

fn entries(counts: &[(u64, f64)]) -> Vec<Entry> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &(c, t))| Entry::new(format!("n{i}").as_str(), c, t))
        .collect()
}

proptest! {
    #[test]
    fn single_node_never_sheds(count in 0u64..10_000_000, config in config_strategy()) {
        let round = Round::new(Entry::new("solo", count, 0.5), []);
        prop_assert_eq!(strategy::decide(&round, &config).amount, 0);
    }

    #[test]
    fn decision_does_not_depend_on_report_order(
        counts in prop::collection::vec((0u64..100_000, 0.0..1.0f64), 1..12),
        me in 0usize..12,
        seed in any::<u64>(),
        config in config_strategy(),
    ) {
        let all = entries(&counts);
        let me = me % all.len();
        let mine = all[me].clone();
        let mut shuffled = all.clone();
        // A seeded Fisher–Yates, so failures reproduce.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = strategy::decide(&Round::new(mine.clone(), all), &config);
        let b = strategy::decide(&Round::new(mine, shuffled), &config);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn shed_never_exceeds_hard_cap_nor_own_count(
        amount in any::<u64>(),
        count in 0u64..u64::MAX / 2,
        frac in proptest::option::of(0.0001..=1.0f64),
    ) {
        let capped = hard_cap(amount, count, frac);
        prop_assert!(capped <= count);
        if let Some(f) = frac {
            prop_assert!(capped as f64 <= (count as f64 * f).floor());
        }
    }

    /// Through the whole state machine: whatever the others report, the
    /// amount shed in one round respects the cap and the own count, and a
    /// discarded round sheds nothing.
    #[test]
    fn balancer_sheds_within_caps_and_never_on_discard(
        own in 0u64..1_000_000,
        others in prop::collection::vec((0u64..1_000_000, 0.0..1.0f64, 0u64..20_000), 0..8),
        config in config_strategy(),
        seed in any::<u64>(),
    ) {
        let config = Config { round_duration: Duration::from_secs(10), ..config };
        let mut b = Balancer::new("me".into(), config.clone(), Millis(0), ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let t = Millis(10_000);
        b.handle_timeout(t);
        let mut shed_total = 0;
        let mut discarded = false;
        let view = ClusterView {
            members: others.iter().enumerate().map(|(i, &(c, tb, age))| MemberView {
                node: format!("o{i}").into(),
                report: Some(Report {
                    node: format!("o{i}").into(),
                    count: c,
                    tie_breaker: TieBreaker::new(tb),
                    weight: 1.0,
                    address: None,
                    seq: 1,
                }),
                age: Duration::from_millis(age),
            }).collect(),
        };
        let stale = others.iter().any(|&(_, _, age)| age > 10_000);
        for _ in 0..100 {
            let Some(action) = b.poll_action() else { break };
            match action {
                Action::ReadCount => b.handle_count(t, Ok(own)),
                Action::Publish(_) => {}
                Action::FetchView => b.handle_view(t, Ok(&view)),
                Action::Shed { n } => { shed_total += n; b.handle_shed_done(t, Ok(n)); }
            }
        }
        while let Some(e) = b.poll_event() {
            if let Event::Round(r) = e {
                if let RoundOutcome::Discarded { reason } = &r.outcome {
                    let stale_reason = matches!(reason, DiscardReason::StaleReport { .. });
                    prop_assert!(stale_reason, "unexpected discard: {:?}", reason);
                    discarded = true;
                }
            }
        }
        prop_assert_eq!(discarded, stale);
        if discarded { prop_assert_eq!(shed_total, 0); }
        prop_assert!(shed_total <= own);
        if let Some(f) = config.max_shed_fraction {
            prop_assert!(shed_total as f64 <= (own as f64 * f).floor());
        }
        if let Some(max) = config.max_shed_count {
            prop_assert!(shed_total <= max);
        }
    }
}

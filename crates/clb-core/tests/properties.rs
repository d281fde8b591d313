//! Invariants of the decision core, over random inputs, for every strategy.

use std::time::Duration;

use clb_core::strategy::{self, proportional};
use clb_core::{
    Action, Balancer, Config, DiscardReason, Entry, Event, MemberRecord, Millis, Report, Round,
    RoundOutcome, Strategy as Rule, TieBreaker, safety::hard_cap,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

fn config_strategy() -> impl proptest::strategy::Strategy<Value = Config> {
    (
        prop_oneof![Just(Rule::Classic), Just(Rule::Proportional)],
        0.0..200.0f64,
        0.0..=100.0f64,
        proptest::option::of(1u64..1000),
        0u64..50,
        proptest::option::of(0.01..=1.0f64),
        0u64..20,
    )
        .prop_map(|(strategy, dev, shed, max, min, frac, abs)| Config {
            strategy,
            allowed_average_deviation_percent: dev,
            stop_band_percent: dev / 5.0,
            shed_percentage: shed,
            max_shed_count: max.map(|m| m.max(min)),
            min_shed_count: min,
            max_shed_fraction: frac,
            abs_tolerance: abs,
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
    fn single_node_never_sheds(count in 0u64..10_000_000, config in config_strategy(), was in any::<bool>()) {
        let round = Round::new(Entry::new("solo", count, 0.5), []);
        let d = strategy::decide(&round, &config, was);
        prop_assert_eq!(d.amount, 0);
        prop_assert!(!d.rebalancing);
    }

    #[test]
    fn decision_does_not_depend_on_report_order(
        counts in prop::collection::vec((0u64..100_000, 0.0..1.0f64), 1..12),
        weights in prop::collection::vec(0.1..10.0f64, 12),
        me in 0usize..12,
        seed in any::<u64>(),
        config in config_strategy(),
        was in any::<bool>(),
    ) {
        let mut all = entries(&counts);
        for (e, w) in all.iter_mut().zip(&weights) {
            e.weight = *w;
        }
        let me = me % all.len();
        let mine = all[me].clone();
        let mut shuffled = all.clone();
        // A seeded Fisher–Yates, so failures reproduce.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = strategy::decide(&Round::new(mine.clone(), all), &config, was);
        let b = strategy::decide(&Round::new(mine, shuffled), &config, was);
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

    #[test]
    fn proportional_never_sheds_at_or_below_target_and_never_past_the_cap(
        counts in prop::collection::vec(0u64..1_000_000, 2..20),
        me in 0usize..20,
        config in config_strategy(),
        was in any::<bool>(),
    ) {
        let config = Config { strategy: Rule::Proportional, ..config };
        let me = me % counts.len();
        let round = Round::from_counts(me, &counts, &[]);
        let d = strategy::decide(&round, &config, was);
        let count = counts[me];
        if count as f64 <= round.my_target() {
            prop_assert_eq!(d.amount, 0);
        }
        prop_assert!(d.amount as f64 <= count as f64 - round.my_target() + 1e-9 || d.amount == 0);
        if let Some(f) = config.max_shed_fraction {
            prop_assert!(d.amount as f64 <= (count as f64 * f).floor());
        }
    }

    #[test]
    fn proportional_does_nothing_in_a_balanced_cluster(
        base in 100u64..1_000_000,
        wiggle in prop::collection::vec(-1.0..1.0f64, 2..20),
        me in 0usize..20,
        was in any::<bool>(),
    ) {
        let config = Config::proportional();
        // Every node within half the stop band of the mean.
        let counts: Vec<u64> = wiggle
            .iter()
            .map(|w| (base as f64 * (1.0 + w * config.stop_band_percent / 200.0)) as u64)
            .collect();
        let round = Round::from_counts(me % counts.len(), &counts, &[]);
        let d = strategy::decide(&round, &config, was);
        prop_assert!(!d.rebalancing, "counts {:?}", counts);
        prop_assert_eq!(d.amount, 0);
        prop_assert_eq!(d.accept_up_to, None);
    }

    #[test]
    fn weights_scale_targets(
        counts in prop::collection::vec(0u64..100_000, 2..10),
        weights in prop::collection::vec(0.5..4.0f64, 10),
        k in 0.1..10.0f64,
    ) {
        let make = |scale: f64| {
            let mut es = entries(&counts.iter().map(|&c| (c, 0.5)).collect::<Vec<_>>());
            for (e, w) in es.iter_mut().zip(&weights) {
                e.weight = w * scale;
            }
            let mine = es[0].clone();
            Round::new(mine, es)
        };
        let (a, b) = (make(1.0), make(k));
        let total: f64 = counts.iter().sum::<u64>() as f64;
        let wsum: f64 = weights.iter().take(counts.len()).sum();
        for (i, (ta, tb)) in a.targets().zip(b.targets()).enumerate() {
            prop_assert!((ta - tb).abs() < 1e-6 * total.max(1.0), "scaling every weight keeps targets");
            prop_assert!((ta - total * weights[i] / wsum).abs() < 1e-6 * total.max(1.0));
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
        let view: Vec<MemberRecord> = others.iter().enumerate().map(|(i, &(c, tb, age))| {
            let report = Report {
                node: format!("o{i}").into(),
                count: c,
                tie_breaker: TieBreaker::new(tb),
                weight: 1.0,
                address: Some(format!("o{i}:80")),
                seq: 1,
                rebalancing: false,
            };
            MemberRecord::from_report(&report, Duration::from_millis(age))
        }).collect();
        let stale = others.iter().any(|&(_, _, age)| age > 10_000);
        for _ in 0..100 {
            let Some(action) = b.poll_action() else { break };
            match action {
                Action::ReadCount => b.handle_count(t, Ok(own)),
                Action::Publish(_) => {}
                Action::FetchView => b.handle_view(t, Ok(&view[..])),
                Action::Shed { n, hints } => {
                    prop_assert!(hints.iter().map(|h| h.n).sum::<u64>() <= n);
                    shed_total += n;
                    b.handle_shed_done(t, Ok(n));
                }
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

#[test]
fn proportional_steers_every_shed_client_when_addresses_are_known() {
    let config = Config {
        round_duration: Duration::from_secs(1),
        pacing_window: 0.0,
        ..Config::proportional()
    };
    let mut b = Balancer::new("a".into(), config, Millis(0), ChaCha8Rng::seed_from_u64(3)).unwrap();
    b.set_address(Some("a:80".into())).unwrap();
    let report = |id: &str, count| Report {
        node: id.into(),
        count,
        tie_breaker: TieBreaker::new(0.5),
        weight: 1.0,
        address: Some(format!("{id}:80")),
        seq: 1,
        rebalancing: false,
    };
    let view: Vec<MemberRecord> = [report("b", 0), report("c", 300)]
        .iter()
        .map(|r| MemberRecord::from_report(r, Duration::ZERO))
        .collect();
    // The first round sets the membership baseline; shed in the second.
    let t = Millis(1000);
    b.handle_timeout(t);
    let mut hints = None;
    while let Some(a) = b.poll_action() {
        match a {
            Action::ReadCount => b.handle_count(t, Ok(900)),
            Action::FetchView => b.handle_view(t, Ok(&view[..])),
            Action::Shed { n, hints: h } => {
                hints = Some((n, h));
                b.handle_shed_done(t, Ok(n));
            }
            Action::Publish(_) => {}
        }
    }
    let (n, hints) = hints.expect("a shed");
    assert_eq!(n, 90, "10% of 900");
    // Targets are 400: b is 400 short, c 100 short, so 4:1.
    let split: Vec<(&str, u64)> = hints.iter().map(|h| (h.address.as_str(), h.n)).collect();
    assert_eq!(split, [("b:80", 72), ("c:80", 18)]);
    assert!(!b.admits(900), "above target in a rebalance: refuse");
    assert!(b.admits(400));
    let _ = proportional::outside(1, 1.0, 0.0, 0);
}

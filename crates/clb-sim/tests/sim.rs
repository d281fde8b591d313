#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The simulator end to end: scenarios, determinism, the original's known
//! behaviour.

use clb_core::Config;
use clb_sim::{Lb, Scenario, SimSpec, run};

fn counts(counts: &[u64], tie_breakers: &[f64]) -> Scenario {
    Scenario::Counts {
        counts: counts.to_vec(),
        tie_breakers: tie_breakers.to_vec(),
    }
}

#[test]
fn hundred_vs_fifty_nine_one_round_no_lb() {
    let spec = SimSpec {
        scenario: counts(&[100, 59], &[]),
        lb: Lb::None,
        rounds: 1,
        ..SimSpec::default()
    };
    let r = run(&spec, |_, _| {}).unwrap();
    assert_eq!(r.rounds.len(), 1);
    assert_eq!(r.rounds[0].counts, [100, 59]);
    assert_eq!(r.rounds[0].shed, [10, 0]);
    assert_eq!(r.lost_clients, 10, "lb none: shed clients do not come back");
    assert_eq!(r.final_counts, [90, 59]);
}

#[test]
fn explicit_tie_breakers_pick_the_shedding_node() {
    // (100, 0.27) beats (100, 0.26): node 0 is the single highest.
    let spec = SimSpec {
        scenario: counts(&[100, 100, 0, 0], &[0.27, 0.26, 0.1, 0.1]),
        lb: Lb::None,
        rounds: 1,
        ..SimSpec::default()
    };
    assert_eq!(run(&spec, |_, _| {}).unwrap().rounds[0].shed, [25, 0, 0, 0]);
    // An exact double tie has no highest node: nothing is shed.
    let spec = SimSpec {
        scenario: counts(&[100, 100], &[0.26, 0.26]),
        ..spec
    };
    assert_eq!(run(&spec, |_, _| {}).unwrap().rounds[0].shed, [0, 0]);
}

#[test]
fn the_same_seed_gives_the_same_json_byte_for_byte() {
    let spec = SimSpec {
        scenario: Scenario::Skewed {
            nodes: 7,
            clients: 20_000,
        },
        rounds: 60,
        seed: 42,
        ..SimSpec::default()
    };
    let a = run(&spec, |_, _| {}).unwrap().to_json();
    let b = run(&spec, |_, _| {}).unwrap().to_json();
    assert_eq!(a, b);
    let other = run(&SimSpec { seed: 43, ..spec }, |_, _| {})
        .unwrap()
        .to_json();
    assert_ne!(a, other, "the seed must matter");
}

#[test]
fn rolling_deploy_classic_shows_the_originals_known_behaviour() {
    // 5 nodes x 10,000 clients: about 35 rounds to +25%, never within ±10%,
    // and the node restarted last ends near a third of the average.
    let spec = SimSpec {
        rounds: 120,
        ..SimSpec::default()
    };
    let r = run(&spec, |_, _| {}).unwrap();
    assert_eq!(r.warmup_rounds, 5);
    assert_eq!(r.final_counts.iter().sum::<u64>(), 10_000, "no client lost");
    let converged = r.converged_round.expect("classic converges to +25%");
    assert!(
        (25..=50).contains(&converged),
        "converged_round {converged}"
    );
    assert_eq!(r.within_10_round, None);
    let last_share = r.final_counts[4] as f64 / 2000.0;
    assert!(
        (0.25..0.45).contains(&last_share),
        "last node at {last_share:.2} of average"
    );
    // Round 1 is the first round with every node back: the last one is empty.
    assert_eq!(r.rounds[0].counts[4], 0);
    assert!(
        r.rounds
            .iter()
            .all(|rec| rec.shed.iter().all(|&s| s <= 100))
    );
    assert!(
        r.rounds
            .iter()
            .all(|rec| rec.shed.iter().filter(|&&s| s > 0).count() <= 1),
        "classic: at most one node sheds per round"
    );
}

#[test]
fn new_node_is_never_filled_by_classic() {
    let spec = SimSpec {
        scenario: Scenario::NewNode {
            nodes: 5,
            clients: 10_000,
        },
        rounds: 50,
        ..SimSpec::default()
    };
    let r = run(&spec, |_, _| {}).unwrap();
    assert_eq!(r.total_shed, 0, "four nodes at exactly +25% never shed");
    assert_eq!(r.final_counts[4], 0);
}

#[test]
fn every_lb_model_keeps_every_client() {
    for lb in [Lb::Random, Lb::RoundRobin, Lb::LeastConn] {
        let spec = SimSpec {
            scenario: counts(&[5_000, 0, 0, 0], &[]),
            lb,
            rounds: 40,
            ..SimSpec::default()
        };
        let r = run(&spec, |_, _| {}).unwrap();
        assert_eq!(r.final_counts.iter().sum::<u64>(), 5_000, "{lb}");
        assert!(r.total_shed > 0, "{lb}");
    }
}

#[test]
fn least_conn_balances_faster_than_random() {
    let at = |lb| {
        let spec = SimSpec {
            scenario: counts(&[4_000, 0, 0, 0], &[]),
            lb,
            rounds: 200,
            ..SimSpec::default()
        };
        run(&spec, |_, _| {}).unwrap().converged_round.unwrap()
    };
    assert!(at(Lb::LeastConn) < at(Lb::Random));
}

#[test]
fn invalid_inputs_are_refused_before_running() {
    let bad = SimSpec {
        config: Config {
            shed_percentage: 150.0,
            ..Config::classic()
        },
        ..SimSpec::default()
    };
    assert_eq!(
        run(&bad, |_, _| {}).unwrap_err().to_string(),
        "shed_percentage must be in [0, 100], got 150"
    );
    let bad = SimSpec {
        hint_followers: 1.5,
        ..SimSpec::default()
    };
    assert!(
        run(&bad, |_, _| {})
            .unwrap_err()
            .to_string()
            .starts_with("hint_followers")
    );
}

fn proportional(scenario: Scenario, rounds: u32) -> SimSpec {
    SimSpec {
        scenario,
        config: Config::proportional(),
        rounds,
        ..SimSpec::default()
    }
}

#[test]
fn proportional_evens_out_a_rolling_deploy_in_a_handful_of_rounds() {
    let r = run(
        &proportional(
            Scenario::RollingDeploy {
                nodes: 5,
                clients: 10_000,
            },
            30,
        ),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.final_counts.iter().sum::<u64>(), 10_000, "no client lost");
    // Two settle rounds after the last node is back, then a few of shedding.
    assert!(
        r.rounds[0]
            .shed
            .iter()
            .chain(&r.rounds[1].shed)
            .all(|&s| s == 0)
    );
    let w10 = r.within_10_round.expect("within ±10%");
    let w5 = r.within_5_round.expect("within ±5%");
    assert!(
        w10 <= 8 && w5 <= 9,
        "within ±10% after {w10}, ±5% after {w5}"
    );
    assert!(
        r.peak_node_shed_fraction <= 0.1,
        "hard cap: {}",
        r.peak_node_shed_fraction
    );
    assert!(r.refusals > 0, "admission control refused someone");
    let last = r.final_counts[4] as f64 / 2000.0;
    assert!(last >= 0.95, "the last restarted node is filled: {last:.2}");
}

#[test]
fn proportional_fills_a_new_node() {
    let r = run(
        &proportional(
            Scenario::NewNode {
                nodes: 5,
                clients: 10_000,
            },
            20,
        ),
        |_, _| {},
    )
    .unwrap();
    assert!(
        r.within_5_round.is_some_and(|w| w <= 6),
        "{:?}",
        r.within_5_round
    );
    assert!(r.final_counts[4] >= 1900);
}

#[test]
fn clients_that_follow_hints_move_once() {
    let spec = SimSpec {
        hint_followers: 1.0,
        ..proportional(
            Scenario::RollingDeploy {
                nodes: 5,
                clients: 10_000,
            },
            30,
        )
    };
    let r = run(&spec, |_, _| {}).unwrap();
    let churn = r.churn_ratio.unwrap();
    assert!(churn <= 1.05, "churn {churn}");
}

#[test]
fn fast_forward_changes_nothing_but_the_time() {
    for config in [Config::classic(), Config::proportional()] {
        let spec = SimSpec {
            config,
            scenario: Scenario::Skewed {
                nodes: 6,
                clients: 12_000,
            },
            rounds: 400,
            seed: 5,
            ..SimSpec::default()
        };
        let fast = run(&spec, |_, _| {}).unwrap();
        let slow = run(
            &SimSpec {
                fast_forward: false,
                ..spec
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(fast.rounds.len(), 400);
        assert_eq!(fast.to_json(), slow.to_json());
    }
}

#[test]
fn admission_off_means_no_refusals() {
    let mut spec = proportional(
        Scenario::RollingDeploy {
            nodes: 5,
            clients: 10_000,
        },
        30,
    );
    spec.config.admission_control = false;
    spec.admission = false;
    let r = run(&spec, |_, _| {}).unwrap();
    assert_eq!(r.refusals, 0);
    assert_eq!(r.final_counts.iter().sum::<u64>(), 10_000);
}

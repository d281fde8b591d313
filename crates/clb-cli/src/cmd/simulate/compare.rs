//! `clb simulate --compare`: classic against the configured strategy, on the
//! same seeds, side by side, with ratios.

use std::io::{self, Write};

use clb_core::Config;
use clb_sim::{Scenario, SimReport, SimSpec};
use serde_json::{Value, json};

use super::summary::{self, Stat, Unit};
use super::{SimulateArgs, candidate_config, label, plot, runner};

/// One scenario of the comparison.
struct Case {
    scenario: Scenario,
    rounds: u32,
    hint_followers: f64,
}

/// The suite BENCHMARKS.md reports: the target rows, each with
/// enough rounds for `classic` to get where it gets.
fn standard_suite() -> Vec<Case> {
    let case = |scenario, rounds, hint_followers| Case {
        scenario,
        rounds,
        hint_followers,
    };
    vec![
        case(
            Scenario::RollingDeploy {
                nodes: 5,
                clients: 10_000,
            },
            200,
            0.0,
        ),
        case(
            Scenario::RollingDeploy {
                nodes: 5,
                clients: 1_000_000,
            },
            4_000,
            0.0,
        ),
        case(
            Scenario::NewNode {
                nodes: 5,
                clients: 10_000,
            },
            100,
            0.0,
        ),
        case(
            Scenario::Skewed {
                nodes: 10,
                clients: 100_000,
            },
            600,
            0.0,
        ),
        case(
            Scenario::RollingDeploy {
                nodes: 200,
                clients: 1_000_000,
            },
            2_200,
            0.0,
        ),
        case(
            Scenario::RollingDeploy {
                nodes: 5,
                clients: 10_000,
            },
            200,
            1.0,
        ),
    ]
}

pub fn run(args: &SimulateArgs, scenario: Option<Scenario>, runs: u32) -> anyhow::Result<()> {
    let candidate = candidate_config(&args.config)?;
    let baseline = Config {
        round_duration: candidate.round_duration,
        ..Config::classic()
    };
    let mut cases = match scenario {
        Some(scenario) => vec![Case {
            scenario,
            rounds: 200,
            hint_followers: args.hint_followers,
        }],
        None => standard_suite(),
    };
    if let Some(rounds) = args.rounds {
        for case in &mut cases {
            case.rounds = rounds;
        }
    }
    let mut specs = Vec::new();
    for case in &cases {
        for config in [&baseline, &candidate] {
            for i in 0..runs {
                specs.push(SimSpec {
                    scenario: case.scenario.clone(),
                    config: config.clone(),
                    lb: args.lb,
                    admission: candidate.admission_control,
                    hint_followers: case.hint_followers,
                    rounds: case.rounds,
                    seed: args.seed.wrapping_add(u64::from(i)),
                    fast_forward: true,
                });
            }
        }
    }
    let reports = runner::run_all(&specs)?;
    let per_case: Vec<(&Case, &[SimReport], &[SimReport])> = cases
        .iter()
        .zip(reports.chunks(2 * runs as usize))
        .map(|(case, chunk)| {
            let (classic, other) = chunk.split_at(runs as usize);
            (case, classic, other)
        })
        .collect();

    if let (Some(path), Some((_, classic, other))) = (&args.plot, per_case.first()) {
        plot::write(
            path,
            &[(&classic[0], "classic"), (&other[0], other[0].strategy)],
        )?;
    }
    let mut out = io::stdout().lock();
    if args.json {
        let cases: Vec<Value> = per_case
            .iter()
            .map(|(case, classic, other)| {
                json!({
                    "scenario": classic[0].scenario, "nodes": classic[0].nodes,
                    "clients": classic[0].clients, "rounds": case.rounds, "runs": runs,
                    "lb": classic[0].lb, "admission": candidate.admission_control,
                    "hint_followers": case.hint_followers,
                    "classic": summary::stats_json(classic),
                    other[0].strategy: summary::stats_json(other),
                })
            })
            .collect();
        writeln!(out, "{}", json!({ "cases": cases }))?;
    } else {
        for (case, classic, other) in &per_case {
            print_case(
                &mut out,
                case,
                classic,
                other,
                runs,
                candidate.admission_control,
            )?;
        }
    }
    Ok(())
}

fn print_case(
    out: &mut impl Write,
    case: &Case,
    classic: &[SimReport],
    other: &[SimReport],
    runs: u32,
    admission: bool,
) -> io::Result<()> {
    let name = other[0].strategy;
    writeln!(
        out,
        "\n{} — {} seeds from {}, {} rounds, lb {}, admission {}, hint followers {}",
        label(&classic[0]),
        runs,
        classic[0].seed,
        case.rounds,
        classic[0].lb,
        if admission { "on" } else { "off" },
        case.hint_followers
    )?;
    writeln!(
        out,
        "{:<26} {:>10} {:>10}   {:>12} {:>10}   {:>14}",
        "",
        "classic",
        "p90",
        name,
        "p90",
        format!("{name}/classic")
    )?;
    for (a, b) in summary::stats(classic)
        .iter()
        .zip(summary::stats(other).iter())
    {
        writeln!(
            out,
            "{:<26} {:>10} {:>10}   {:>12} {:>10}   {:>14}",
            a.name,
            a.format(a.median),
            a.format(a.p90),
            b.format(b.median),
            b.format(b.p90),
            ratio(a, b)
        )?;
    }
    Ok(())
}

/// `other / classic` of the medians, where both are numbers and it means
/// something.
fn ratio(classic: &Stat, other: &Stat) -> String {
    let meaningful = matches!(
        classic.name,
        "converged_round" | "within_10_round" | "within_5_round" | "churn_ratio" | "total_shed"
    );
    match (classic.median, other.median, classic.unit) {
        _ if !meaningful => "".into(),
        (Some(a), Some(b), _) if a > 0.0 => format!("{:.2}", b / a),
        (None, Some(_), Unit::Rounds) => "classic never".into(),
        _ => "—".into(),
    }
}

//! `clb simulate`: the real decision core on a virtual clock (SPEC §6).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use clb_sim::{Lb, Scenario, SimReport, SimSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::args::{ConfigArgs, parse_list};

/// Simulate the algorithm, deterministically, to choose parameters.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Starting state: rolling-deploy, new-node or skewed (default
    /// rolling-deploy unless --counts is given).
    #[arg(long, value_enum, conflicts_with = "counts")]
    scenario: Option<ScenarioName>,
    /// Nodes in the scenario.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Clients in the scenario.
    #[arg(long, default_value_t = 10_000)]
    clients: u64,
    /// Explicit counts, e.g. 100,0,0 (instead of a scenario).
    #[arg(long)]
    counts: Option<String>,
    /// Tie breakers for --counts, one per node, e.g. 0.25,0.26.
    #[arg(long, requires = "counts")]
    tie_breakers: Option<String>,
    /// How shed clients come back: random, round-robin, least-conn, none.
    #[arg(long, default_value = "random")]
    lb: Lb,
    /// Share of clients that honour a steered-reconnect hint, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    hint_followers: f64,
    /// Balancing rounds to simulate.
    #[arg(long, default_value_t = 100)]
    rounds: u32,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many seeds (seed, seed+1, ...) and summarise them.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Print JSON (SPEC §6) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScenarioName {
    RollingDeploy,
    NewNode,
    Skewed,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = args.config.to_config()?;
    let scenario = match (&args.counts, args.scenario) {
        (Some(counts), _) => Scenario::Counts {
            counts: parse_list(counts)
                .map_err(anyhow::Error::msg)
                .context("--counts")?,
            tie_breakers: match &args.tie_breakers {
                Some(t) => parse_list(t)
                    .map_err(anyhow::Error::msg)
                    .context("--tie-breakers")?,
                None => Vec::new(),
            },
        },
        (None, name) => {
            let (nodes, clients) = (args.nodes, args.clients);
            match name.unwrap_or(ScenarioName::RollingDeploy) {
                ScenarioName::RollingDeploy => Scenario::RollingDeploy { nodes, clients },
                ScenarioName::NewNode => Scenario::NewNode { nodes, clients },
                ScenarioName::Skewed => Scenario::Skewed { nodes, clients },
            }
        }
    };
    if args.runs == 0 || args.runs > 10_000 {
        bail!("runs must be in [1, 10000], got {}", args.runs);
    }
    let spec = SimSpec {
        scenario,
        admission: config.admission_control,
        config,
        lb: args.lb,
        hint_followers: args.hint_followers,
        rounds: args.rounds,
        seed: args.seed,
    };
    let mut progress = Progress::new(u64::from(args.runs) * u64::from(args.rounds));
    let mut reports = Vec::with_capacity(args.runs as usize);
    for i in 0..args.runs {
        let spec = SimSpec {
            seed: args.seed.wrapping_add(u64::from(i)),
            ..spec.clone()
        };
        let base = u64::from(i) * u64::from(args.rounds);
        let report = clb_sim::run(&spec, |done, total| {
            // Warm-up rounds are not in `rounds`; scale to the balancing ones.
            let done = u64::from(done) * u64::from(args.rounds) / u64::from(total.max(1));
            progress.set(base + done);
        })?;
        reports.push(report);
    }
    progress.finish();

    match (args.runs, args.json) {
        (1, true) => println!("{}", reports[0].to_json()),
        (1, false) => print_one(&reports[0]),
        (_, true) => println!("{}", summary_json(&reports)),
        (_, false) => print_many(&reports),
    }
    Ok(())
}

/// A progress bar on stderr, shown only once a run has taken a while, and
/// never when stderr is not a terminal (indicatif hides it then).
struct Progress {
    started: Instant,
    total: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            started: Instant::now(),
            total,
            bar: None,
        }
    }

    fn set(&mut self, done: u64) {
        if self.bar.is_none() && self.started.elapsed() > Duration::from_millis(500) {
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("simulating {bar:40} {pos}/{len} rounds, eta {eta}")
            {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn round_label(r: Option<u32>) -> String {
    r.map_or_else(|| "never".to_owned(), |r| r.to_string())
}

fn print_one(r: &SimReport) {
    println!(
        "{}: {} nodes, {} clients, strategy {}, lb {}, seed {}",
        r.scenario, r.nodes, r.clients, r.strategy, r.lb, r.seed
    );
    if r.warmup_rounds > 0 {
        println!(
            "(after {} warm-up rounds of rolling deploy, which shed {})",
            r.warmup_rounds, r.warmup_shed
        );
    }
    println!("{:>6}  {:<48}  shed", "round", "counts before shedding");
    let show = |i: usize| r.rounds.len() <= 40 || i < 30 || i + 5 >= r.rounds.len();
    let mut skipped = false;
    for (i, rec) in r.rounds.iter().enumerate() {
        if !show(i) {
            if !skipped {
                println!("{:>6}", "...");
                skipped = true;
            }
            continue;
        }
        println!(
            "{:>6}  {:<48}  {}",
            rec.round,
            join(&rec.counts),
            join(&rec.shed)
        );
    }
    println!("final   {}", join(&r.final_counts));
    println!(
        "converged (max <= avg + dev%) after round {}; within ±10% after {}; within ±5% after {}",
        round_label(r.converged_round),
        round_label(r.within_10_round),
        round_label(r.within_5_round)
    );
    println!(
        "shed {} (ideal {}, churn {}); peak round {}; peak node fraction {:.1}%; refusals {}",
        r.total_shed,
        r.ideal_shed,
        r.churn_ratio
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.3}")),
        r.peak_round_shed,
        r.peak_node_shed_fraction * 100.0,
        r.refusals
    );
    if r.lost_clients > 0 {
        println!("lost clients (lb none): {}", r.lost_clients);
    }
}

fn join(v: &[u64]) -> String {
    let parts: Vec<String> = if v.len() > 12 {
        v.iter()
            .take(10)
            .map(u64::to_string)
            .chain(["…".to_owned()])
            .collect()
    } else {
        v.iter().map(u64::to_string).collect()
    };
    parts.join(" ")
}

/// For a rolling deploy: the last restarted node's final count over the average.
fn last_restarted_share(r: &SimReport) -> Option<f64> {
    if r.scenario != "rolling-deploy" {
        return None;
    }
    let last = *r.final_counts.last()?;
    let avg = r.final_counts.iter().sum::<u64>() as f64 / r.final_counts.len() as f64;
    (avg > 0.0).then(|| last as f64 / avg)
}

/// Nearest-rank percentile; `None` ("never") sorts after every round.
fn percentile_rounds(values: &[Option<u32>], p: f64) -> Option<u32> {
    let mut v: Vec<u32> = values.iter().map(|r| r.unwrap_or(u32::MAX)).collect();
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1]).filter(|&x| x != u32::MAX)
}

fn percentile_f64(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[derive(Clone, Copy)]
enum Unit {
    Ratio,
    Percent,
    Count,
}

struct Stat {
    name: &'static str,
    median: String,
    p90: String,
    json: serde_json::Value,
}

fn stats(reports: &[SimReport]) -> Vec<Stat> {
    let rounds = |name, f: fn(&SimReport) -> Option<u32>| {
        let v: Vec<Option<u32>> = reports.iter().map(f).collect();
        let (m, p) = (percentile_rounds(&v, 0.5), percentile_rounds(&v, 0.9));
        Stat {
            name,
            median: round_label(m),
            p90: round_label(p),
            json: json!({"median": m, "p90": p}),
        }
    };
    let floats = |name, f: &dyn Fn(&SimReport) -> Option<f64>, unit: Unit| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        if v.is_empty() {
            return Stat {
                name,
                median: "n/a".into(),
                p90: "n/a".into(),
                json: json!(null),
            };
        }
        let (m, p) = (percentile_f64(&v, 0.5), percentile_f64(&v, 0.9));
        let fmt = |x: f64| match unit {
            Unit::Ratio => format!("{x:.3}"),
            Unit::Percent => format!("{:.1}%", x * 100.0),
            Unit::Count => format!("{x:.0}"),
        };
        Stat {
            name,
            median: fmt(m),
            p90: fmt(p),
            json: json!({"median": m, "p90": p}),
        }
    };
    vec![
        rounds("converged_round", |r| r.converged_round),
        rounds("within_10_round", |r| r.within_10_round),
        rounds("within_5_round", |r| r.within_5_round),
        floats("churn_ratio", &|r| r.churn_ratio, Unit::Ratio),
        floats(
            "peak_node_shed_fraction",
            &|r| Some(r.peak_node_shed_fraction),
            Unit::Percent,
        ),
        floats("refusals", &|r| Some(r.refusals as f64), Unit::Count),
        floats("last_restarted_share", &last_restarted_share, Unit::Percent),
    ]
}

fn print_many(reports: &[SimReport]) {
    let first = &reports[0];
    println!(
        "{}: {} nodes, {} clients, strategy {}, lb {}, seeds {}..={}",
        first.scenario,
        first.nodes,
        first.clients,
        first.strategy,
        first.lb,
        first.seed,
        reports.last().map_or(first.seed, |r| r.seed)
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9} {:>14}",
        "seed",
        "converged",
        "within10",
        "within5",
        "churn",
        "peak node",
        "refusals",
        "last/average"
    );
    for r in reports {
        println!(
            "{:>6} {:>10} {:>10} {:>10} {:>8} {:>9.1}% {:>9} {:>14}",
            r.seed,
            round_label(r.converged_round),
            round_label(r.within_10_round),
            round_label(r.within_5_round),
            r.churn_ratio
                .map_or_else(|| "n/a".into(), |c| format!("{c:.3}")),
            r.peak_node_shed_fraction * 100.0,
            r.refusals,
            last_restarted_share(r).map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0)),
        );
    }
    println!("\n{:<24} {:>10} {:>10}", "", "median", "p90");
    for s in stats(reports) {
        println!("{:<24} {:>10} {:>10}", s.name, s.median, s.p90);
    }
}

fn summary_json(reports: &[SimReport]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({
                "seed": r.seed, "converged_round": r.converged_round,
                "within_10_round": r.within_10_round, "within_5_round": r.within_5_round,
                "total_shed": r.total_shed, "ideal_shed": r.ideal_shed, "churn_ratio": r.churn_ratio,
                "peak_round_shed": r.peak_round_shed, "peak_node_shed_fraction": r.peak_node_shed_fraction,
                "refusals": r.refusals, "final_counts": r.final_counts,
            })
        })
        .collect();
    let summary: serde_json::Map<String, serde_json::Value> = stats(reports)
        .into_iter()
        .map(|s| (s.name.to_owned(), s.json))
        .collect();
    let first = &reports[0];
    json!({
        "scenario": first.scenario, "strategy": first.strategy, "lb": first.lb,
        "nodes": first.nodes, "clients": first.clients, "runs": runs, "summary": summary,
    })
}

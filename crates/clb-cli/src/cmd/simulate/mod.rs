//! `clb simulate`: the real decision core on a virtual clock (SPEC §6).

mod compare;
mod plot;
mod runner;
mod summary;

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use clb_core::Config;
use clb_sim::{Lb, Scenario, SimReport, SimSpec};

use crate::args::{ConfigArgs, parse_list};

/// Simulate the algorithm, deterministically, to choose parameters.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Starting state: rolling-deploy, new-node or skewed (default
    /// rolling-deploy unless --counts is given; with --compare and neither,
    /// the standard suite of BENCHMARKS.md).
    #[arg(long, value_enum, conflicts_with = "counts")]
    scenario: Option<ScenarioName>,
    /// Nodes in the scenario.
    #[arg(long, default_value_t = 5, conflicts_with = "counts")]
    nodes: usize,
    /// Clients in the scenario.
    #[arg(long, default_value_t = 10_000, conflicts_with = "counts")]
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
    /// Balancing rounds to simulate (default: 100; with --compare, per scenario).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many seeds (seed, seed+1, ...) and summarise them
    /// (default: 1; with --compare, 20).
    #[arg(long)]
    runs: Option<u32>,
    /// Run `classic` (its preset, untouched) against the configured strategy
    /// (proportional unless --strategy says otherwise; config flags apply to
    /// it) on the same seeds, side by side.
    #[arg(long)]
    compare: bool,
    /// Write an SVG chart of per-node counts per round (first seed).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
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

/// Runs the simulation(s) and prints the result.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let scenario = match (&args.counts, args.scenario) {
        (Some(counts), _) => Some(Scenario::Counts {
            counts: parse_list(counts)
                .map_err(anyhow::Error::msg)
                .context("--counts")?,
            tie_breakers: match &args.tie_breakers {
                Some(t) => parse_list(t)
                    .map_err(anyhow::Error::msg)
                    .context("--tie-breakers")?,
                None => Vec::new(),
            },
        }),
        (None, Some(name)) => Some(scenario(name, args.nodes, args.clients)),
        (None, None) if args.compare => None,
        (None, None) => Some(scenario(
            ScenarioName::RollingDeploy,
            args.nodes,
            args.clients,
        )),
    };
    if let Some(path) = &args.plot {
        crate::cmd::check_writable(path).context("--plot")?;
    }
    let runs = args.runs.unwrap_or(if args.compare { 20 } else { 1 });
    if runs == 0 || runs > 10_000 {
        bail!("runs must be in [1, 10000], got {runs}");
    }
    if args.compare {
        return compare::run(&args, scenario, runs);
    }
    let config = args.config.to_config()?;
    let spec = SimSpec {
        scenario: scenario.unwrap_or(Scenario::RollingDeploy {
            nodes: args.nodes,
            clients: args.clients,
        }),
        admission: config.admission_control,
        config,
        lb: args.lb,
        hint_followers: args.hint_followers,
        rounds: args.rounds.unwrap_or(100),
        seed: args.seed,
        fast_forward: true,
    };
    let reports = runner::run_seeds(&spec, runs)?;
    if let Some(path) = &args.plot {
        plot::write(path, &[(&reports[0], reports[0].strategy)])?;
    }
    let mut out = io::stdout().lock();
    match (runs, args.json) {
        (1, true) => writeln!(out, "{}", reports[0].to_json())?,
        (1, false) => summary::print_one(&mut out, &reports[0])?,
        (_, true) => writeln!(out, "{}", summary::many_json(&reports))?,
        (_, false) => summary::print_many(&mut out, &reports)?,
    }
    Ok(())
}

fn scenario(name: ScenarioName, nodes: usize, clients: u64) -> Scenario {
    match name {
        ScenarioName::RollingDeploy => Scenario::RollingDeploy { nodes, clients },
        ScenarioName::NewNode => Scenario::NewNode { nodes, clients },
        ScenarioName::Skewed => Scenario::Skewed { nodes, clients },
    }
}

/// The config `--compare` pits against `classic`: the flags applied to the
/// chosen strategy's preset, proportional when none (or classic) is chosen.
fn candidate_config(args: &ConfigArgs) -> Result<Config, clb_core::ConfigError> {
    let mut args = args.clone();
    if args.strategy == Some(clb_core::Strategy::Classic) {
        args.strategy = Some(clb_core::Strategy::Proportional);
    }
    args.to_config()
}

/// Labels for a report's scenario, e.g. `rolling-deploy 5×10,000`.
fn label(r: &SimReport) -> String {
    format!("{} {}×{}", r.scenario, r.nodes, thousands(r.clients))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

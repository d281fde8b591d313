//! Tables and JSON summaries of simulation runs.

use std::io::{self, Write};

use clb_sim::SimReport;
use serde_json::{Value, json};

/// A round number or "never".
pub fn round_label(r: Option<u32>) -> String {
    r.map_or_else(|| "never".to_owned(), |r| r.to_string())
}

/// One run, round by round.
pub fn print_one(out: &mut impl Write, r: &SimReport) -> io::Result<()> {
    writeln!(
        out,
        "{}: {} nodes, {} clients, strategy {}, lb {}, seed {}",
        r.scenario, r.nodes, r.clients, r.strategy, r.lb, r.seed
    )?;
    if r.warmup_rounds > 0 {
        writeln!(
            out,
            "(after {} warm-up rounds of rolling deploy, which shed {})",
            r.warmup_rounds, r.warmup_shed
        )?;
    }
    writeln!(
        out,
        "{:>6}  {:<48}  shed",
        "round", "counts before shedding"
    )?;
    let show = |i: usize| r.rounds.len() <= 40 || i < 30 || i + 5 >= r.rounds.len();
    let mut skipped = false;
    for (i, rec) in r.rounds.iter().enumerate() {
        if !show(i) {
            if !skipped {
                writeln!(out, "{:>6}", "...")?;
                skipped = true;
            }
            continue;
        }
        writeln!(
            out,
            "{:>6}  {:<48}  {}",
            rec.round,
            join(&rec.counts),
            join(&rec.shed)
        )?;
    }
    writeln!(out, "final   {}", join(&r.final_counts))?;
    writeln!(
        out,
        "converged (max <= avg + dev%) after round {}; within ±10% after {}; within ±5% after {}",
        round_label(r.converged_round),
        round_label(r.within_10_round),
        round_label(r.within_5_round)
    )?;
    writeln!(
        out,
        "shed {} (ideal {}, churn {}); peak round {}; peak node fraction {:.1}%; refusals {}",
        r.total_shed,
        r.ideal_shed,
        r.churn_ratio
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.3}")),
        r.peak_round_shed,
        r.peak_node_shed_fraction * 100.0,
        r.refusals
    )?;
    if r.lost_clients > 0 {
        writeln!(out, "lost clients (lb none): {}", r.lost_clients)?;
    }
    Ok(())
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

/// Nearest-rank percentile of `values`, where `None` (never) ranks last.
fn percentile<T: Copy + PartialOrd>(values: &[Option<T>], p: f64) -> Option<T> {
    let mut v: Vec<Option<T>> = values.to_vec();
    v.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().flatten()
}

#[derive(Clone, Copy)]
pub enum Unit {
    Rounds,
    Ratio,
    Percent,
    Count,
}

/// The median and p90 of one figure over many runs.
pub struct Stat {
    pub name: &'static str,
    pub unit: Unit,
    pub median: Option<f64>,
    pub p90: Option<f64>,
}

impl Stat {
    pub fn format(&self, v: Option<f64>) -> String {
        match (v, self.unit) {
            (None, Unit::Rounds) => "never".into(),
            (None, _) => "n/a".into(),
            (Some(x), Unit::Rounds | Unit::Count) => format!("{x:.0}"),
            (Some(x), Unit::Ratio) => format!("{x:.3}"),
            (Some(x), Unit::Percent) => format!("{:.1}%", x * 100.0),
        }
    }

    fn json(&self) -> Value {
        let num = |v: Option<f64>| match (v, self.unit) {
            (Some(x), Unit::Rounds | Unit::Count) => json!(x as u64),
            (Some(x), _) => json!(x),
            (None, _) => Value::Null,
        };
        json!({"median": num(self.median), "p90": num(self.p90)})
    }
}

/// Median and p90 of every figure of merit.
pub fn stats(reports: &[SimReport]) -> Vec<Stat> {
    let stat = |name, unit, f: &dyn Fn(&SimReport) -> Option<f64>| {
        let v: Vec<Option<f64>> = reports.iter().map(f).collect();
        Stat {
            name,
            unit,
            median: percentile(&v, 0.5),
            p90: percentile(&v, 0.9),
        }
    };
    let mut all = vec![
        stat("converged_round", Unit::Rounds, &|r| {
            r.converged_round.map(f64::from)
        }),
        stat("within_10_round", Unit::Rounds, &|r| {
            r.within_10_round.map(f64::from)
        }),
        stat("within_5_round", Unit::Rounds, &|r| {
            r.within_5_round.map(f64::from)
        }),
        stat("churn_ratio", Unit::Ratio, &|r| r.churn_ratio),
        stat("peak_node_shed_fraction", Unit::Percent, &|r| {
            Some(r.peak_node_shed_fraction)
        }),
        stat("refusals", Unit::Count, &|r| Some(r.refusals as f64)),
        stat("total_shed", Unit::Count, &|r| Some(r.total_shed as f64)),
    ];
    if reports.iter().any(|r| r.scenario == "rolling-deploy") {
        all.push(stat(
            "last_restarted_share",
            Unit::Percent,
            &last_restarted_share,
        ));
    }
    all
}

/// Many seeds: a line per seed, then median and p90.
pub fn print_many(out: &mut impl Write, reports: &[SimReport]) -> io::Result<()> {
    let Some(first) = reports.first() else {
        return Ok(());
    };
    writeln!(
        out,
        "{}: {} nodes, {} clients, strategy {}, lb {}, seeds {}..={}",
        first.scenario,
        first.nodes,
        first.clients,
        first.strategy,
        first.lb,
        first.seed,
        reports.last().map_or(first.seed, |r| r.seed)
    )?;
    writeln!(
        out,
        "{:>6} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9} {:>14}",
        "seed",
        "converged",
        "within10",
        "within5",
        "churn",
        "peak node",
        "refusals",
        "last/average"
    )?;
    for r in reports {
        writeln!(
            out,
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
        )?;
    }
    writeln!(out, "\n{:<24} {:>10} {:>10}", "", "median", "p90")?;
    for s in stats(reports) {
        writeln!(
            out,
            "{:<24} {:>10} {:>10}",
            s.name,
            s.format(s.median),
            s.format(s.p90)
        )?;
    }
    Ok(())
}

/// Medians and p90s as a JSON object keyed by figure.
pub fn stats_json(reports: &[SimReport]) -> Value {
    Value::Object(
        stats(reports)
            .into_iter()
            .map(|s| (s.name.to_owned(), s.json()))
            .collect(),
    )
}

/// Many seeds as one JSON object: a line per run and the summary.
pub fn many_json(reports: &[SimReport]) -> Value {
    let runs: Vec<Value> = reports
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
    let first = reports.first();
    json!({
        "scenario": first.map(|r| r.scenario), "strategy": first.map(|r| r.strategy),
        "lb": first.map(|r| r.lb), "nodes": first.map(|r| r.nodes), "clients": first.map(|r| r.clients),
        "runs": runs, "summary": stats_json(reports),
    })
}

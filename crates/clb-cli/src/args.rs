//! Flags shared by every subcommand that runs a balancer: one per config
//! field, applied on top of the chosen strategy's preset.

use std::time::Duration;

use clap::Args;
use clb_core::{Config, Strategy};

/// Every [`Config`] field as a flag. Unset flags keep the preset's value.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Decision rule: proportional (the default) or classic (the Elixir
    /// original, exactly).
    #[arg(long, default_value = "proportional", value_parser = parse_strategy)]
    pub strategy: Strategy,
    /// Time between two decisions, e.g. 10s, 500ms (default: 10s; in the demo, 1s).
    #[arg(long, value_parser = parse_duration)]
    pub round_duration: Option<Duration>,
    /// How far above average/target a node may be, in percent (default: 25).
    #[arg(long)]
    pub allowed_average_deviation_percent: Option<f64>,
    /// Share of the excess shed in one round, in percent (default: 100; classic 50).
    #[arg(long)]
    pub shed_percentage: Option<f64>,
    /// Most shed by one node in one round; "none" for no absolute cap
    /// (default: none; classic 100).
    #[arg(long, value_parser = parse_opt_u64)]
    pub max_shed_count: Option<Option<u64>>,
    /// Smallest amount worth shedding (default: 1; classic 10).
    #[arg(long)]
    pub min_shed_count: Option<u64>,
    /// Proportional: rebalance until every node is this close to target, percent (default: 5).
    #[arg(long)]
    pub stop_band_percent: Option<f64>,
    /// Proportional: absolute floor under both bands, in resources (default: 2).
    #[arg(long)]
    pub abs_tolerance: Option<u64>,
    /// Hard cap per round as a share of the node's count; "none" to turn off
    /// (default: classic: none, else 0.1).
    #[arg(long, value_parser = parse_opt_f64)]
    pub max_shed_fraction: Option<Option<f64>>,
    /// Rounds to hold shedding after a membership change (default: classic: 0, else 2).
    #[arg(long)]
    pub settle_rounds: Option<u32>,
    /// Spread a shed over this share of a round; 0 = all at once
    /// (default: classic: 0, else 0.5).
    #[arg(long)]
    pub pacing_window: Option<f64>,
    /// Most batches one shed is split into (default: 10).
    #[arg(long)]
    pub pacing_max_batches: Option<u32>,
    /// Admission control: refuse new resources while above target in an
    /// active rebalance (proportional), on or off (default: classic: off, else on).
    #[arg(long, value_parser = parse_on_off)]
    pub admission: Option<bool>,
    /// Decide and report, shed nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// This node's capacity relative to the others (default: 1).
    #[arg(long)]
    pub weight: Option<f64>,
}

impl ConfigArgs {
    /// The strategy's preset with every given flag applied, validated.
    pub fn to_config(&self) -> Result<Config, clb_core::ConfigError> {
        let mut c = match self.strategy {
            Strategy::Classic => Config::classic(),
            Strategy::Proportional => Config::proportional(),
            _ => Config::default(),
        };
        c.strategy = self.strategy;
        if let Some(v) = self.round_duration {
            c.round_duration = v;
        }
        if let Some(v) = self.allowed_average_deviation_percent {
            c.allowed_average_deviation_percent = v;
        }
        if let Some(v) = self.shed_percentage {
            c.shed_percentage = v;
        }
        if let Some(v) = self.max_shed_count {
            c.max_shed_count = v;
        }
        if let Some(v) = self.min_shed_count {
            c.min_shed_count = v;
        }
        if let Some(v) = self.stop_band_percent {
            c.stop_band_percent = v;
        }
        if let Some(v) = self.abs_tolerance {
            c.abs_tolerance = v;
        }
        if let Some(v) = self.max_shed_fraction {
            c.max_shed_fraction = v;
        }
        if let Some(v) = self.settle_rounds {
            c.settle_rounds = v;
        }
        if let Some(v) = self.pacing_window {
            c.pacing_window = v;
        }
        if let Some(v) = self.pacing_max_batches {
            c.pacing_max_batches = v;
        }
        if let Some(v) = self.admission {
            c.admission_control = v;
        }
        if self.dry_run {
            c.dry_run = true;
        }
        if let Some(v) = self.weight {
            c.weight = v;
        }
        c.validate()?;
        Ok(c)
    }
}

impl ConfigArgs {
    /// The flags that were given, as `clb node` arguments: what the demo
    /// passes on to the nodes it starts.
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut out = vec!["--strategy".to_owned(), self.strategy.to_string()];
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{flag}"));
                out.push(v);
            }
        };
        push(
            "round-duration",
            self.round_duration.map(|d| format!("{}ms", d.as_millis())),
        );
        push(
            "allowed-average-deviation-percent",
            self.allowed_average_deviation_percent
                .map(|v| v.to_string()),
        );
        push(
            "shed-percentage",
            self.shed_percentage.map(|v| v.to_string()),
        );
        push(
            "max-shed-count",
            self.max_shed_count
                .map(|v| v.map_or("none".into(), |n| n.to_string())),
        );
        push("min-shed-count", self.min_shed_count.map(|v| v.to_string()));
        push(
            "stop-band-percent",
            self.stop_band_percent.map(|v| v.to_string()),
        );
        push("abs-tolerance", self.abs_tolerance.map(|v| v.to_string()));
        push(
            "max-shed-fraction",
            self.max_shed_fraction
                .map(|v| v.map_or("none".into(), |n| n.to_string())),
        );
        push("settle-rounds", self.settle_rounds.map(|v| v.to_string()));
        push("pacing-window", self.pacing_window.map(|v| v.to_string()));
        push(
            "pacing-max-batches",
            self.pacing_max_batches.map(|v| v.to_string()),
        );
        push(
            "admission",
            self.admission
                .map(|v| if v { "on".into() } else { "off".into() }),
        );
        push("weight", self.weight.map(|v| v.to_string()));
        if self.dry_run {
            out.push("--dry-run".into());
        }
        out
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse().map_err(|e: clb_core::ConfigError| e.to_string())
}

/// `10s`, `500ms`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s, 500ms)"))
}

fn parse_opt_u64(s: &str) -> Result<Option<u64>, String> {
    match s {
        "none" | "off" => Ok(None),
        _ => s
            .parse()
            .map(Some)
            .map_err(|_| format!("expected a whole number or \"none\", got {s:?}")),
    }
}

fn parse_opt_f64(s: &str) -> Result<Option<f64>, String> {
    match s {
        "none" | "off" => Ok(None),
        _ => s
            .parse()
            .map(Some)
            .map_err(|_| format!("expected a number or \"none\", got {s:?}")),
    }
}

/// A comma-separated list, e.g. `100,0,0`.
pub fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|part| {
            part.trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a valid number in {s:?}"))
        })
        .collect()
}

/// `on` / `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

//! A deterministic simulation of cluster-load-balancer: N real
//! [`clb_core::Balancer`]s on one virtual clock, a seeded model of the
//! external load balancer that shed clients reconnect through, and scripted
//! scenarios. The same [`SimSpec`] gives the same [`SimReport`], byte for byte.
//!
//! Clients are counted per node, not simulated one by one beyond the moment
//! they reconnect, so a million clients take seconds.
//!
//! ```
//! use clb_sim::{Lb, Scenario, SimSpec};
//!
//! let spec = SimSpec {
//!     scenario: Scenario::Counts { counts: vec![100, 59], tie_breakers: vec![] },
//!     lb: Lb::None,
//!     rounds: 1,
//!     ..SimSpec::default()
//! };
//! let report = clb_sim::run(&spec, |_, _| {})?;
//! assert_eq!(report.rounds[0].shed, [10, 0]);
//! # Ok::<(), clb_sim::SimError>(())
//! ```

mod engine;
mod lb;
pub mod metrics;
mod scenario;

use clb_core::{Config, ConfigError};
use serde::Serialize;

pub use lb::Lb;
pub use scenario::Scenario;

/// Everything that defines one simulation run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSpec {
    /// The starting state and what happens to it.
    pub scenario: Scenario,
    /// The decision config every node runs (strategy included).
    pub config: Config,
    /// How shed clients come back.
    pub lb: Lb,
    /// Whether reconnecting clients respect admission control.
    pub admission: bool,
    /// Share of clients that honour a steered-reconnect hint, 0 to 1.
    pub hint_followers: f64,
    /// Balancing rounds to simulate (after any warm-up the scenario needs).
    pub rounds: u32,
    /// Seeds every random choice.
    pub seed: u64,
    /// Stop computing once the cluster is at a fixed point (every node
    /// decided "balanced" twice on unchanged counts) and write the remaining
    /// identical rounds down. The output is the same either way; only the
    /// time differs. Default true.
    pub fast_forward: bool,
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            scenario: Scenario::RollingDeploy {
                nodes: 5,
                clients: 10_000,
            },
            config: Config::classic(),
            lb: Lb::Random,
            admission: true,
            hint_followers: 0.0,
            rounds: 100,
            seed: 1,
            fast_forward: true,
        }
    }
}

/// A simulation could not start; nothing ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The decision config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The scenario or a simulation flag is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// One round as the SPEC §6 JSON shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundRecord {
    /// 1-based, counted from the first balancing round.
    pub round: u32,
    /// Every node's count at the round's tick, before shedding.
    pub counts: Vec<u64>,
    /// What each node actually shed during the round.
    pub shed: Vec<u64>,
}

/// The result of a run, serialised as the SPEC §6 JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Strategy name.
    pub strategy: &'static str,
    /// LB model name.
    pub lb: &'static str,
    /// The seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of clients at the start.
    pub clients: u64,
    /// The balancing rounds.
    pub rounds: Vec<RoundRecord>,
    /// First round after which `max <= avg * (1 + dev%)` holds for good.
    pub converged_round: Option<u32>,
    /// First round after which every node is within ±10% of its target for good.
    pub within_10_round: Option<u32>,
    /// The same for ±5% (or the absolute tolerance, whichever is larger).
    pub within_5_round: Option<u32>,
    /// Sum of everything shed in the balancing rounds.
    pub total_shed: u64,
    /// Fewest moves that could balance the cluster when balancing starts.
    pub ideal_shed: u64,
    /// `total_shed / ideal_shed`; `null` when there was nothing to balance.
    pub churn_ratio: Option<f64>,
    /// Most shed by the whole cluster in one round.
    pub peak_round_shed: u64,
    /// Most any node shed in one round, as a share of its count then.
    pub peak_node_shed_fraction: f64,
    /// Reconnect attempts refused by admission control.
    pub refusals: u64,
    /// Clients that, refused five times, stayed on a refusing node.
    pub forced_landings: u64,
    /// The scenario's name.
    pub scenario: &'static str,
    /// Counts after the last round.
    pub final_counts: Vec<u64>,
    /// Rounds simulated before the balancing rounds (the rolling deploy).
    pub warmup_rounds: u32,
    /// Those rounds, numbered from 1 (for plots).
    pub warmup: Vec<RoundRecord>,
    /// What was shed during the warm-up rounds (not in `total_shed`).
    pub warmup_shed: u64,
    /// Clients that never came back (only with `lb: none`).
    pub lost_clients: u64,
}

impl SimReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of plain numbers, strings and vectors always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Runs a simulation. `progress(done, total)` is called after every round.
pub fn run(spec: &SimSpec, progress: impl FnMut(u32, u32)) -> Result<SimReport, SimError> {
    spec.config.validate()?;
    if !(0.0..=1.0).contains(&spec.hint_followers) {
        return Err(SimError::Invalid(format!(
            "hint_followers must be in [0, 1], got {}",
            spec.hint_followers
        )));
    }
    if spec.rounds == 0 || spec.rounds > 1_000_000 {
        return Err(SimError::Invalid(format!(
            "rounds must be in [1, 1000000], got {}",
            spec.rounds
        )));
    }
    let setup = spec.scenario.setup(spec.seed)?;
    engine::Engine::new(spec, setup).run(progress)
}

//! Starting states and scripted events.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;

/// What the simulated cluster looks like at the start, and what happens to it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scenario {
    /// Balanced (`clients / nodes` each); then node 0, 1, … in turn goes down
    /// for one round (its clients reconnect to the others) and comes back
    /// empty. Balancing rounds count from the round the last node is back.
    RollingDeploy {
        /// Nodes.
        nodes: usize,
        /// Clients.
        clients: u64,
    },
    /// `nodes - 1` balanced nodes and one empty node that has just joined.
    NewNode {
        /// Nodes, the new one included.
        nodes: usize,
        /// Clients.
        clients: u64,
    },
    /// Clients spread with probability ∝ 1/rank over a shuffled ranking of
    /// the nodes (Zipf, s = 1).
    Skewed {
        /// Nodes.
        nodes: usize,
        /// Clients.
        clients: u64,
    },
    /// Explicit counts, optionally with tie breakers (one per node, in [0, 1)).
    Counts {
        /// Count per node.
        counts: Vec<u64>,
        /// Tie breaker per node; empty to draw them.
        tie_breakers: Vec<f64>,
    },
}

/// One scripted event, applied before a round's tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The node stops gracefully; its clients reconnect elsewhere.
    Down(usize),
    /// The node starts again, empty, with a fresh balancer.
    Up(usize),
}

/// A scenario made concrete.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) counts: Vec<u64>,
    pub(crate) tie_breakers: Option<Vec<f64>>,
    /// `warmup[k]`: events before warm-up round `k + 1`.
    pub(crate) warmup: Vec<Vec<Step>>,
    /// Events before balancing round 1.
    pub(crate) first_round: Vec<Step>,
}

const MAX_NODES: usize = 10_000;
const MAX_CLIENTS: u64 = 1_000_000_000;

impl Scenario {
    /// The CLI/JSON name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::RollingDeploy { .. } => "rolling-deploy",
            Scenario::NewNode { .. } => "new-node",
            Scenario::Skewed { .. } => "skewed",
            Scenario::Counts { .. } => "counts",
        }
    }

    pub(crate) fn setup(&self, seed: u64) -> Result<Setup, SimError> {
        let sized = |nodes: usize, clients: u64, min_nodes: usize| {
            if !(min_nodes..=MAX_NODES).contains(&nodes) {
                return Err(SimError::Invalid(format!(
                    "nodes must be in [{min_nodes}, {MAX_NODES}] for {}, got {nodes}",
                    self.name()
                )));
            }
            if clients > MAX_CLIENTS {
                return Err(SimError::Invalid(format!(
                    "clients must be in [0, {MAX_CLIENTS}], got {clients}"
                )));
            }
            Ok(())
        };
        let plain = |counts: Vec<u64>| Setup {
            counts,
            tie_breakers: None,
            warmup: Vec::new(),
            first_round: Vec::new(),
        };
        match *self {
            Scenario::RollingDeploy { nodes, clients } => {
                sized(nodes, clients, 1)?;
                // Node k goes down before warm-up round k + 1 and is back one
                // round later; the last one is back for balancing round 1.
                let warmup = (0..nodes)
                    .map(|k| {
                        let mut steps = Vec::new();
                        if k > 0 {
                            steps.push(Step::Up(k - 1));
                        }
                        steps.push(Step::Down(k));
                        steps
                    })
                    .collect();
                Ok(Setup {
                    warmup,
                    first_round: vec![Step::Up(nodes - 1)],
                    ..plain(even(nodes, clients))
                })
            }
            Scenario::NewNode { nodes, clients } => {
                sized(nodes, clients, 2)?;
                let mut counts = even(nodes - 1, clients);
                counts.push(0);
                Ok(plain(counts))
            }
            Scenario::Skewed { nodes, clients } => {
                sized(nodes, clients, 1)?;
                Ok(plain(zipf(nodes, clients, seed)))
            }
            Scenario::Counts {
                ref counts,
                ref tie_breakers,
            } => {
                if counts.is_empty() || counts.len() > MAX_NODES {
                    return Err(SimError::Invalid(format!(
                        "counts must list 1 to {MAX_NODES} nodes, got {}",
                        counts.len()
                    )));
                }
                if counts
                    .iter()
                    .try_fold(0u64, |a, &c| a.checked_add(c))
                    .is_none_or(|t| t > MAX_CLIENTS)
                {
                    return Err(SimError::Invalid(format!(
                        "counts must sum to at most {MAX_CLIENTS}"
                    )));
                }
                if !tie_breakers.is_empty() && tie_breakers.len() != counts.len() {
                    return Err(SimError::Invalid(format!(
                        "tie-breakers must have one value per node: {} counts, {} tie breakers",
                        counts.len(),
                        tie_breakers.len()
                    )));
                }
                if let Some(bad) = tie_breakers.iter().find(|t| !(0.0..1.0).contains(*t)) {
                    return Err(SimError::Invalid(format!(
                        "tie-breakers must be in [0, 1), got {bad}"
                    )));
                }
                Ok(Setup {
                    tie_breakers: (!tie_breakers.is_empty()).then(|| tie_breakers.clone()),
                    ..plain(counts.clone())
                })
            }
        }
    }
}

/// `clients` spread as evenly as integers allow, the remainder on the first nodes.
fn even(nodes: usize, clients: u64) -> Vec<u64> {
    let n = nodes as u64;
    (0..n)
        .map(|i| clients / n + u64::from(i < clients % n))
        .collect()
}

/// Each client lands on node `i` with probability ∝ 1 / rank(i), ranks shuffled.
fn zipf(nodes: usize, clients: u64, seed: u64) -> Vec<u64> {
    // A stream of its own, so the scenario does not shift the run's choices.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ca1_ab1e_0000_0001);
    let mut ranks: Vec<usize> = (1..=nodes).collect();
    for i in (1..nodes).rev() {
        ranks.swap(i, rng.random_range(0..=i));
    }
    let mut cumulative = Vec::with_capacity(nodes);
    let mut sum = 0.0;
    for &r in &ranks {
        sum += 1.0 / r as f64;
        cumulative.push(sum);
    }
    let mut counts = vec![0u64; nodes];
    for _ in 0..clients {
        let x = rng.random::<f64>() * sum;
        let i = cumulative.partition_point(|&c| c <= x).min(nodes - 1);
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_spreads_the_remainder() {
        assert_eq!(even(3, 10), [4, 3, 3]);
    }

    #[test]
    fn zipf_is_seeded_and_skewed() {
        let a = zipf(10, 100_000, 7);
        assert_eq!(a, zipf(10, 100_000, 7));
        assert_eq!(a.iter().sum::<u64>(), 100_000);
        let max = *a.iter().max().unwrap();
        let min = *a.iter().min().unwrap();
        // Rank 1 gets ~34%, rank 10 ~3.4%.
        assert!(max > 30_000 && min < 4_500, "{a:?}");
    }

    #[test]
    fn rolling_deploy_script() {
        let s = Scenario::RollingDeploy {
            nodes: 3,
            clients: 9,
        }
        .setup(1)
        .unwrap();
        assert_eq!(s.counts, [3, 3, 3]);
        assert_eq!(
            s.warmup,
            [
                vec![Step::Down(0)],
                vec![Step::Up(0), Step::Down(1)],
                vec![Step::Up(1), Step::Down(2)]
            ]
        );
        assert_eq!(s.first_round, [Step::Up(2)]);
    }

    #[test]
    fn bad_inputs_are_refused_with_the_field() {
        let e = Scenario::Counts {
            counts: vec![1, 2],
            tie_breakers: vec![0.1],
        }
        .setup(1)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tie-breakers must have one value per node")
        );
        let e = Scenario::NewNode {
            nodes: 1,
            clients: 9,
        }
        .setup(1)
        .unwrap_err();
        assert!(e.to_string().starts_with("nodes must be in [2, 10000]"));
    }
}

//! Models of the external load balancer that shed clients reconnect through.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// How a reconnecting client picks a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lb {
    /// Uniformly at random among the nodes that are up.
    Random,
    /// The next node that is up, in turn.
    RoundRobin,
    /// The node that is up with the fewest clients (ties broken at random).
    LeastConn,
    /// Shed clients do not come back.
    None,
}

impl Lb {
    /// The CLI/JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lb::Random => "random",
            Lb::RoundRobin => "round-robin",
            Lb::LeastConn => "least-conn",
            Lb::None => "none",
        }
    }
}

impl fmt::Display for Lb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Lb::Random),
            "round-robin" => Ok(Lb::RoundRobin),
            "least-conn" => Ok(Lb::LeastConn),
            "none" => Ok(Lb::None),
            other => Err(format!(
                "unknown load balancer {other:?}: expected random, round-robin, least-conn or none"
            )),
        }
    }
}

/// The LB's own state (the round-robin cursor).
#[derive(Debug, Default)]
pub(crate) struct LbState {
    cursor: usize,
}

impl LbState {
    /// Picks one of `live` (sorted indices of the nodes that are up); `None`
    /// when no node is up or the model is [`Lb::None`].
    pub(crate) fn pick(
        &mut self,
        lb: Lb,
        live: &[usize],
        counts: &[u64],
        rng: &mut ChaCha8Rng,
    ) -> Option<usize> {
        if live.is_empty() {
            return None;
        }
        match lb {
            Lb::None => None,
            Lb::Random => Some(live[rng.random_range(0..live.len())]),
            Lb::RoundRobin => {
                // The cursor walks all node slots, so a node that comes back
                // takes its old place in the rotation.
                for _ in 0..counts.len() {
                    let i = self.cursor % counts.len();
                    self.cursor = self.cursor.wrapping_add(1);
                    if live.binary_search(&i).is_ok() {
                        return Some(i);
                    }
                }
                None
            }
            Lb::LeastConn => {
                let min = live.iter().map(|&i| counts[i]).min()?;
                let ties = live.iter().filter(|&&i| counts[i] == min).count();
                let k = rng.random_range(0..ties);
                live.iter().copied().filter(|&i| counts[i] == min).nth(k)
            }
        }
    }
}

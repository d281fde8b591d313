//! What nodes tell each other: one [`Report`] per node and namespace, and the
//! [`ClusterView`] the core assembles from them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::wire::ReportError;

/// Identifies a node. Unique in the cluster and stable across restarts of the
/// same node (a restarted node is the same member with a fresh report).
/// Cheap to clone and, for clones of one id, cheap to compare: every round
/// copies and compares every member's id.
#[derive(Clone, Debug, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

// Hashes the text, consistent with `eq` (pointer equality implies equal text).
impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeId {
    /// Wraps a name. Validation (non-empty, printable) happens where a name
    /// enters from outside: see [`crate::validate_node_id`].
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(Arc::from(id.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(Arc::from(s))
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(Arc::from(s))
    }
}

/// A random number in `[0, 1)` drawn once per balancer life; breaks ties
/// between equally loaded nodes (SPEC §3, the original's rule).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TieBreaker(f64);

impl TieBreaker {
    /// A tie breaker with a given value; values outside `[0, 1)` are clamped.
    pub fn new(value: f64) -> Self {
        if value.is_nan() {
            return TieBreaker(0.0);
        }
        TieBreaker(value.clamp(0.0, 1.0 - f64::EPSILON))
    }

    /// Draws a fresh tie breaker from `rng`.
    pub fn random(rng: &mut impl Rng) -> Self {
        TieBreaker(unit_f64(rng))
    }

    /// The value, in `[0, 1)`.
    pub fn value(self) -> f64 {
        self.0
    }
}

/// A uniform `f64` in `[0, 1)` with 53 bits of precision.
pub(crate) fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Upper bound on a report's weight: a weight is a relative capacity, and a
/// huge one is more likely a bug than a machine a million times bigger.
pub const MAX_WEIGHT: f64 = 1_000_000.0;

/// One node's published state for one namespace (SPEC §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Who publishes it.
    pub node: NodeId,
    /// How many resources the node holds.
    pub count: u64,
    /// Drawn once per balancer life.
    pub tie_breaker: TieBreaker,
    /// Relative capacity; targets are proportional to it. Default 1.
    pub weight: f64,
    /// Where this node's clients connect (`host:port` or a URL), for steered
    /// reconnects. `None` when the node does not advertise one.
    pub address: Option<String>,
    /// Grows with every publish; freshness is judged by when it last changed.
    pub seq: u64,
    /// Whether this node's last complete round left a proportional
    /// rebalance active. Shared so that a rebalance continues while any
    /// member still takes part in it: nodes sample at different moments and
    /// would otherwise disagree about the hysteresis.
    pub rebalancing: bool,
}

impl Report {
    /// Whether the values are usable in a decision: a positive, finite
    /// weight of at most [`MAX_WEIGHT`], and an address that fits
    /// [`crate::validate_address`]. [`crate::wire::decode`] refuses reports
    /// that fail this, so a bad peer cannot poison a round.
    pub fn is_valid(&self) -> bool {
        self.weight.is_finite()
            && self.weight > 0.0
            && self.weight <= MAX_WEIGHT
            && self
                .address
                .as_deref()
                .is_none_or(|a| crate::config::validate_address(a).is_ok())
    }
}

/// One live member of a namespace, as the [`crate::member::MemberTable`]
/// assembles it from what a backend holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member.
    pub node: NodeId,
    /// Its latest report, if one has arrived and decodes.
    pub report: Option<Report>,
    /// Why its latest value is not a usable report, when it is not.
    pub error: Option<ReportError>,
    /// How long ago, when the view was taken, the report's `seq` last changed,
    /// measured on one clock (this node's, or the Redis server's). Never the
    /// difference of two machines' clocks.
    pub age: Duration,
}

/// The live members of one namespace and their latest reports, one per node
/// id. Order carries no meaning.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Every live member, this node included or not (the core adds itself).
    pub members: Vec<MemberView>,
    /// Node ids that more than one live process publishes under right now
    /// (two fresh incarnations): no round can be decided on them.
    pub duplicates: Vec<NodeId>,
    /// Node ids whose newest value is [`crate::wire::LEFT`]: they left
    /// gracefully and are not members.
    #[serde(default)]
    pub left: Vec<NodeId>,
    /// Node ids the backend knows but considers failed
    /// ([`crate::wire::LOST`]): not members, but counted by the quorum.
    #[serde(default)]
    pub lost: Vec<NodeId>,
}

impl ClusterView {
    /// A view where every report is brand new (age zero): handy in tests and
    /// the simulator, where delivery is instant.
    pub fn from_reports(reports: impl IntoIterator<Item = Report>) -> Self {
        ClusterView {
            members: reports
                .into_iter()
                .map(|r| MemberView {
                    node: r.node.clone(),
                    report: Some(r),
                    error: None,
                    age: Duration::ZERO,
                })
                .collect(),
            duplicates: Vec::new(),
            left: Vec::new(),
            lost: Vec::new(),
        }
    }
}

//! Round collection: a complete set of fresh reports becomes a [`Round`];
//! anything less is a [`DiscardReason`] and nothing is shed (SPEC §3).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::{ClusterView, NodeId, Report, TieBreaker};
use crate::wire::ReportError;

/// One node's part in a round: the values the strategies read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The node.
    pub node: NodeId,
    /// Its resource count.
    pub count: u64,
    /// Its tie breaker.
    pub tie_breaker: TieBreaker,
    /// Its capacity weight (positive).
    pub weight: f64,
    /// Its advertised client address, if any.
    pub address: Option<String>,
    /// Whether it reports an active proportional rebalance.
    pub rebalancing: bool,
}

impl Entry {
    /// An entry with weight 1 and no address.
    pub fn new(node: impl Into<NodeId>, count: u64, tie_breaker: f64) -> Self {
        Entry {
            node: node.into(),
            count,
            tie_breaker: TieBreaker::new(tie_breaker),
            weight: 1.0,
            address: None,
            rebalancing: false,
        }
    }

    fn from_report(r: &Report) -> Self {
        Entry {
            node: r.node.clone(),
            count: r.count,
            tie_breaker: r.tie_breaker,
            weight: r.weight,
            address: r.address.clone(),
            rebalancing: r.rebalancing,
        }
    }
}

/// A complete, fresh set of entries, one per live member, seen from one node.
///
/// Entries are kept sorted by node id, so nothing downstream can depend on
/// the order in which reports arrived.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    entries: Vec<Entry>,
    me: usize,
}

impl Round {
    /// A round from this node's entry and the others'. An entry of another
    /// node with this node's id is ignored (this node's own count wins); of
    /// duplicate ids, one is kept.
    pub fn new(me: Entry, others: impl IntoIterator<Item = Entry>) -> Self {
        let mut entries: Vec<Entry> = others.into_iter().collect();
        // Backends usually deliver sorted, unique ids: check in one pass and
        // only sort when needed (this runs for every member every round).
        if !entries.is_sorted_by(|a, b| a.node < b.node) {
            entries.sort_by(|a, b| a.node.cmp(&b.node));
            entries.dedup_by(|a, b| a.node == b.node);
        }
        let me = match entries.binary_search_by(|e| e.node.cmp(&me.node)) {
            Ok(i) => {
                entries[i] = me;
                i
            }
            Err(i) => {
                entries.insert(i, me);
                i
            }
        };
        Round { entries, me }
    }

    /// A round of anonymous nodes, for tables and the simulator: node `i` is
    /// named `n{i:05}` so sorting keeps the given order.
    pub fn from_counts(me: usize, counts: &[u64], tie_breakers: &[f64]) -> Self {
        let entries = counts.iter().enumerate().map(|(i, &c)| {
            Entry::new(
                format!("n{i:05}").as_str(),
                c,
                tie_breakers.get(i).copied().unwrap_or(0.0),
            )
        });
        let entries: Vec<Entry> = entries.collect();
        let mine = entries.get(me).cloned();
        match mine {
            Some(m) => Round::new(m, entries),
            None => Round::new(Entry::new("n-none", 0, 0.0), entries),
        }
    }

    /// This node's entry.
    pub fn me(&self) -> &Entry {
        &self.entries[self.me]
    }

    /// Index of this node in [`Round::entries`].
    pub fn my_index(&self) -> usize {
        self.me
    }

    /// Every entry, this node's included, sorted by node id.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Takes the entries out, sorted by node id.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Every entry but this node's.
    pub fn iter_others(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.me)
            .map(|(_, e)| e)
    }

    /// How many members take part.
    pub fn num_members(&self) -> usize {
        self.entries.len()
    }

    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| e.count).sum()
    }

    /// The fair share of entry `i`: `total * weight / sum(weights)`.
    pub fn target_of(&self, i: usize) -> f64 {
        self.entries
            .get(i)
            .map_or(0.0, |e| e.weight * self.share_per_weight())
    }

    /// Every entry's fair share, in entry order, in one pass over the sums.
    pub fn targets(&self) -> impl Iterator<Item = f64> + '_ {
        let per_weight = self.share_per_weight();
        self.entries.iter().map(move |e| e.weight * per_weight)
    }

    fn share_per_weight(&self) -> f64 {
        let weights: f64 = self.entries.iter().map(|e| e.weight).sum();
        if weights > 0.0 {
            self.total() as f64 / weights
        } else {
            0.0
        }
    }

    /// This node's fair share.
    pub fn my_target(&self) -> f64 {
        self.target_of(self.me)
    }
}

/// Why a round was discarded: nothing was shed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DiscardReason {
    /// This node's own `count()` failed, panicked or timed out.
    CountFailed,
    /// The backend could not deliver the members and their reports.
    BackendFailed,
    /// A live member has published no valid report yet.
    MissingReport {
        /// The member.
        node: NodeId,
    },
    /// A live member's report has not changed within one round.
    StaleReport {
        /// The member.
        node: NodeId,
        /// How long ago its report last changed, in milliseconds.
        age_ms: u64,
    },
    /// A member's latest value is not a usable report (it does not decode,
    /// or its values are unusable).
    InvalidReport {
        /// The member.
        node: NodeId,
        /// Why, when the value did not decode.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ReportError>,
    },
    /// Two live processes publish under one node id: whose count is this
    /// node's is unknown.
    DuplicateNode {
        /// The node id.
        node: NodeId,
    },
    /// This node sees no strict majority of the members it has seen
    /// recently (see [`crate::Config::quorum_rounds`]): it may be on the
    /// minority side of a partition, and its view cannot be trusted.
    NoQuorum {
        /// Members in this round's view, this node included.
        live: u64,
        /// Members seen within the quorum memory, this node included.
        known: u64,
    },
}

impl DiscardReason {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            DiscardReason::CountFailed => "count_failed",
            DiscardReason::BackendFailed => "backend_failed",
            DiscardReason::MissingReport { .. } => "missing_report",
            DiscardReason::StaleReport { .. } => "stale_report",
            DiscardReason::InvalidReport { .. } => "invalid_report",
            DiscardReason::DuplicateNode { .. } => "duplicate_node",
            DiscardReason::NoQuorum { .. } => "no_quorum",
        }
    }

    /// Every label, for metrics that must exist from the start.
    pub fn labels() -> [&'static str; 7] {
        [
            "count_failed",
            "backend_failed",
            "missing_report",
            "stale_report",
            "invalid_report",
            "duplicate_node",
            "no_quorum",
        ]
    }
}

impl fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscardReason::CountFailed => f.write_str("own count failed"),
            DiscardReason::BackendFailed => f.write_str("backend did not answer"),
            DiscardReason::MissingReport { node } => write!(f, "member {node} has no report"),
            DiscardReason::StaleReport { node, age_ms } => {
                write!(f, "member {node}'s report is {age_ms} ms old")
            }
            DiscardReason::InvalidReport {
                node,
                error: Some(e),
            } => {
                write!(f, "member {node:?}'s report is {e}")
            }
            DiscardReason::InvalidReport { node, error: None } => {
                write!(f, "member {node:?}'s report is invalid")
            }
            DiscardReason::DuplicateNode { node } => write!(
                f,
                "two live processes publish as {node:?}: give every node its own id"
            ),
            DiscardReason::NoQuorum { live, known } => write!(
                f,
                "sees {live} of the {known} members seen recently, no majority: a partition or a mass failure"
            ),
        }
    }
}

/// Turns an assembled view into a round, or says why it cannot.
///
/// `own` is this node's report, carrying the count read at this tick; it
/// replaces whatever the view holds for this node. Every other live member
/// must have a valid report whose `seq` changed at most `max_age` ago, and
/// no node id may be held by two live processes.
pub fn collect(
    own: &Report,
    view: &ClusterView,
    max_age: Duration,
) -> Result<Round, DiscardReason> {
    if let Some(node) = view.duplicates.first() {
        return Err(DiscardReason::DuplicateNode { node: node.clone() });
    }
    let mut others = Vec::with_capacity(view.members.len());
    for member in view.members.iter().filter(|m| m.node != own.node) {
        let Some(report) = &member.report else {
            return Err(match member.error {
                Some(error) => DiscardReason::InvalidReport {
                    node: member.node.clone(),
                    error: Some(error),
                },
                None => DiscardReason::MissingReport {
                    node: member.node.clone(),
                },
            });
        };
        if member.age > max_age {
            return Err(DiscardReason::StaleReport {
                node: member.node.clone(),
                age_ms: u64::try_from(member.age.as_millis()).unwrap_or(u64::MAX),
            });
        }
        if !report.is_valid() || report.node != member.node {
            return Err(DiscardReason::InvalidReport {
                node: member.node.clone(),
                error: None,
            });
        }
        others.push(Entry::from_report(report));
    }
    Ok(Round::new(Entry::from_report(own), others))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MemberView;

    fn report(node: &str, count: u64, seq: u64) -> Report {
        Report {
            node: node.into(),
            count,
            tie_breaker: TieBreaker::new(0.5),
            weight: 1.0,
            address: None,
            seq,
            rebalancing: false,
        }
    }

    fn member(node: &str, count: u64, age_ms: u64) -> MemberView {
        MemberView {
            node: node.into(),
            report: Some(report(node, count, 1)),
            error: None,
            age: Duration::from_millis(age_ms),
        }
    }

    const ROUND: Duration = Duration::from_secs(10);

    #[test]
    fn complete_fresh_view_makes_a_round_with_own_fresh_count() {
        let view = ClusterView {
            members: vec![
                member("b", 5, 100),
                member("a", 70, 9_000),
                member("c", 1, 0),
            ],
            ..Default::default()
        };
        let round = collect(&report("a", 80, 2), &view, ROUND).unwrap();
        assert_eq!(round.num_members(), 3);
        assert_eq!(
            round.me().count,
            80,
            "own count comes from the tick, not the view"
        );
        let ids: Vec<_> = round.entries().iter().map(|e| e.node.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(round.total(), 86);
    }

    #[test]
    fn a_view_without_self_still_counts_self() {
        let view = ClusterView {
            members: vec![member("b", 5, 0)],
            ..Default::default()
        };
        let round = collect(&report("a", 80, 2), &view, ROUND).unwrap();
        assert_eq!(round.num_members(), 2);
        assert_eq!(round.me().node.as_str(), "a");
    }

    #[test]
    fn stale_report_discards() {
        let view = ClusterView {
            members: vec![member("b", 5, 10_001)],
            ..Default::default()
        };
        assert_eq!(
            collect(&report("a", 1, 1), &view, ROUND),
            Err(DiscardReason::StaleReport {
                node: "b".into(),
                age_ms: 10_001
            })
        );
    }

    #[test]
    fn missing_report_discards() {
        let view = ClusterView {
            members: vec![MemberView {
                node: "b".into(),
                report: None,
                error: None,
                age: Duration::ZERO,
            }],
            duplicates: vec![],
            left: vec![],
            lost: vec![],
        };
        assert_eq!(
            collect(&report("a", 1, 1), &view, ROUND),
            Err(DiscardReason::MissingReport { node: "b".into() })
        );
    }

    #[test]
    fn invalid_weight_discards() {
        let mut bad = member("b", 5, 0);
        if let Some(r) = bad.report.as_mut() {
            r.weight = f64::NAN;
        }
        let view = ClusterView {
            members: vec![bad],
            duplicates: vec![],
            left: vec![],
            lost: vec![],
        };
        assert_eq!(
            collect(&report("a", 1, 1), &view, ROUND),
            Err(DiscardReason::InvalidReport {
                node: "b".into(),
                error: None
            })
        );
    }

    #[test]
    fn an_undecodable_member_or_a_duplicated_id_discards() {
        let undecodable = MemberView {
            node: "b".into(),
            report: None,
            error: Some(ReportError::Malformed),
            age: Duration::ZERO,
        };
        let view = ClusterView {
            members: vec![member("c", 1, 0), undecodable],
            duplicates: vec![],
            left: vec![],
            lost: vec![],
        };
        assert_eq!(
            collect(&report("a", 1, 1), &view, ROUND),
            Err(DiscardReason::InvalidReport {
                node: "b".into(),
                error: Some(ReportError::Malformed)
            })
        );
        let view = ClusterView {
            members: vec![member("c", 1, 0)],
            duplicates: vec!["c".into()],
            left: vec![],
            lost: vec![],
        };
        assert_eq!(
            collect(&report("a", 1, 1), &view, ROUND),
            Err(DiscardReason::DuplicateNode { node: "c".into() })
        );
    }

    #[test]
    fn targets_follow_weights() {
        let mut heavy = Entry::new("b", 0, 0.0);
        heavy.weight = 3.0;
        let round = Round::new(Entry::new("a", 100, 0.0), [heavy]);
        assert_eq!(round.target_of(0), 25.0);
        assert_eq!(round.target_of(1), 75.0);
    }
}

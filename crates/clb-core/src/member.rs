//! From what a backend holds to the view a round is decided on.
//!
//! A backend only moves bytes: for each member of a namespace it hands over
//! a [`MemberRecord`] — the node id, which life of the node published it, the
//! value exactly as published, and how long ago that value last changed.
//! The [`MemberTable`] does the rest, the same way for every backend and for
//! the simulator:
//!
//! 1. decodes every value ([`crate::wire`]); a value that does not decode
//!    becomes a member with `report: None` and the reason, so the round is
//!    discarded and counted — never decided on part of the cluster;
//! 2. keeps one member per node id: the newest incarnation (a restarted node
//!    is briefly listed twice by gossip);
//! 3. notices a node id that two live processes publish under at once: two
//!    incarnations whose values both changed within the last round. A
//!    restart never looks like that for long (the old process stops
//!    publishing and its value goes stale within a round); two processes
//!    started with the same id do, for as long as both run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::{ClusterView, MemberView, NodeId, Report};
use crate::time::Millis;
use crate::wire::{self, ReportError};

/// One member of a namespace as a backend holds it: an identity, bytes and
/// an age. Backends produce these and decide nothing about them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node id the backend knows the member by (checked by the table).
    pub node: NodeId,
    /// Which life of that node published the value; larger after every
    /// restart (gossip: the generation). `0` where a backend keeps one value
    /// per node id.
    pub incarnation: u64,
    /// The value exactly as it was published ([`crate::wire::encode`]).
    pub value: String,
    /// How long ago, when the records were taken, the value last changed,
    /// measured on one clock (this node's, or the Redis server's). Never the
    /// difference of two machines' clocks.
    pub age: Duration,
}

impl MemberRecord {
    /// The record a backend would hold for `report`, published `age` ago:
    /// for tests, the simulator and the in-memory backend.
    pub fn from_report(report: &Report, age: Duration) -> Self {
        MemberRecord {
            node: report.node.clone(),
            incarnation: 0,
            value: wire::encode(report),
            age,
        }
    }
}

/// Assembles [`ClusterView`]s from [`MemberRecord`]s and remembers what it
/// needs across rounds: decoded values (so an unchanged value is not decoded
/// again) and since when each duplicated node id has been duplicated.
#[derive(Debug, Default)]
pub struct MemberTable {
    decoded: HashMap<(NodeId, u64), Decoded>,
    /// Node ids with two fresh incarnations, and since when.
    duplicated_since: BTreeMap<NodeId, Millis>,
    pass: u64,
    /// The namespace being balanced, when known: values naming another are
    /// refused.
    namespace: Option<String>,
}

#[derive(Debug)]
struct Decoded {
    value: String,
    result: Result<Report, ReportError>,
    pass: u64,
}

impl MemberTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty table for `namespace`: a value naming another namespace
    /// is a member without a report ([`ReportError::WrongNamespace`]).
    pub fn for_namespace(namespace: &str) -> Self {
        MemberTable {
            namespace: Some(namespace.to_owned()),
            ..Self::default()
        }
    }

    /// The view of one namespace at `now`. A record is fresh when its value
    /// changed at most `fresh_within` ago (one round).
    pub fn assemble(
        &mut self,
        now: Millis,
        records: &[MemberRecord],
        fresh_within: Duration,
    ) -> ClusterView {
        self.pass += 1;
        let mut order: Vec<&MemberRecord> = records.iter().collect();
        // By node id; within one id the newest incarnation, then the
        // youngest value, first.
        order.sort_by(|a, b| {
            a.node
                .cmp(&b.node)
                .then(b.incarnation.cmp(&a.incarnation))
                .then(a.age.cmp(&b.age))
        });
        let mut members = Vec::with_capacity(order.len());
        let mut duplicates = Vec::new();
        let mut left = Vec::new();
        let mut lost = Vec::new();
        for group in order.chunk_by(|a, b| a.node == b.node) {
            // `left` and `lost` stand for a node only when no life of it
            // is publishing: a restarted node's new life may look failed
            // to gossip until its first heartbeats, and must not hide the
            // old life that still runs.
            let marker = |r: &&MemberRecord| r.value == wire::LEFT || r.value == wire::LOST;
            let Some(newest) = group.iter().find(|r| !marker(r)).copied() else {
                if group[0].value == wire::LEFT {
                    left.push(group[0].node.clone());
                } else {
                    lost.push(group[0].node.clone());
                }
                continue;
            };
            let fresh = group.iter().filter(|r| !marker(r) && r.age <= fresh_within);
            if fresh.count() >= 2 {
                duplicates.push(newest.node.clone());
            }
            let (report, error) = match self.decode(newest) {
                Ok(report) => (Some(report), None),
                Err(e) => (None, Some(e)),
            };
            members.push(MemberView {
                node: newest.node.clone(),
                report,
                error,
                age: newest.age,
            });
        }
        let pass = self.pass;
        self.decoded.retain(|_, d| d.pass == pass);
        self.duplicated_since
            .retain(|node, _| duplicates.binary_search(node).is_ok());
        for node in &duplicates {
            self.duplicated_since.entry(node.clone()).or_insert(now);
        }
        ClusterView {
            members,
            duplicates,
            left,
            lost,
        }
    }

    /// Node ids that have had two fresh incarnations without a break for at
    /// least `persisting`: not a restart, but two processes sharing an id.
    pub fn duplicate_ids(
        &self,
        now: Millis,
        persisting: Duration,
    ) -> impl Iterator<Item = &NodeId> + '_ {
        self.duplicated_since
            .iter()
            .filter(move |(_, since)| now.saturating_since(**since) >= persisting)
            .map(|(node, _)| node)
    }

    fn decode(&mut self, record: &MemberRecord) -> Result<Report, ReportError> {
        let pass = self.pass;
        let key = (record.node.clone(), record.incarnation);
        if let Some(d) = self.decoded.get_mut(&key) {
            if d.value == record.value {
                d.pass = pass;
                return d.result.clone();
            }
        }
        let result = if crate::config::validate_node_id(record.node.as_str()).is_ok() {
            wire::decode_in(&record.node, &record.value, self.namespace.as_deref())
        } else {
            Err(ReportError::InvalidValues)
        };
        self.decoded.insert(
            key,
            Decoded {
                value: record.value.clone(),
                result: result.clone(),
                pass,
            },
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TieBreaker;

    const ROUND: Duration = Duration::from_secs(1);

    fn report(node: &str, count: u64) -> Report {
        Report {
            node: node.into(),
            count,
            tie_breaker: TieBreaker::new(0.5),
            weight: 1.0,
            address: None,
            seq: 1,
            rebalancing: false,
        }
    }

    fn record(node: &str, incarnation: u64, count: u64, age_ms: u64) -> MemberRecord {
        MemberRecord {
            incarnation,
            ..MemberRecord::from_report(&report(node, count), Duration::from_millis(age_ms))
        }
    }

    #[test]
    fn keeps_the_newest_incarnation_of_each_node_once() {
        let mut table = MemberTable::new();
        // b restarted: its old life is still listed, stale.
        let view = table.assemble(
            Millis(0),
            &[
                record("b", 1, 50, 1500),
                record("a", 0, 10, 0),
                record("b", 2, 0, 100),
            ],
            ROUND,
        );
        let seen: Vec<(&str, Option<u64>)> = view
            .members
            .iter()
            .map(|m| (m.node.as_str(), m.report.as_ref().map(|r| r.count)))
            .collect();
        assert_eq!(seen, [("a", Some(10)), ("b", Some(0))]);
        assert!(view.duplicates.is_empty(), "a restart is not a duplicate");
    }

    #[test]
    fn a_marker_never_hides_a_life_that_still_publishes() {
        let mut table = MemberTable::new();
        let lost = |incarnation| MemberRecord {
            node: "b".into(),
            incarnation,
            value: wire::LOST.into(),
            age: Duration::ZERO,
        };
        // b restarted: gossip does not trust the new life yet (lost), the
        // old one still runs. b is a member, once, with the old report.
        let view = table.assemble(Millis(0), &[record("b", 1, 7, 100), lost(2)], ROUND);
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].report.as_ref().map(|r| r.count), Some(7));
        assert!(view.lost.is_empty() && view.duplicates.is_empty());
        // Every life failed: b is lost, not a member.
        let view = table.assemble(Millis(1), &[lost(1), lost(2)], ROUND);
        assert!(view.members.is_empty());
        assert_eq!(view.lost, [NodeId::from("b")]);
    }

    #[test]
    fn an_undecodable_value_is_a_member_without_a_report_never_left_out() {
        let mut table = MemberTable::new();
        let mut bad = record("b", 0, 5, 0);
        bad.value = "v9;something".into();
        let mut bad_id = record("c d", 0, 5, 0);
        bad_id.node = "c d".into();
        let view = table.assemble(Millis(0), &[record("a", 0, 1, 0), bad, bad_id], ROUND);
        assert_eq!(view.members.len(), 3);
        assert_eq!(view.members[1].report, None);
        assert_eq!(view.members[1].error, Some(ReportError::UnknownVersion));
        assert_eq!(view.members[2].error, Some(ReportError::InvalidValues));
    }

    #[test]
    fn two_fresh_incarnations_are_a_duplicate_reported_once_it_persists() {
        let mut table = MemberTable::new();
        let both = [record("a", 7, 81, 100), record("a", 9, 0, 200)];
        let view = table.assemble(Millis(1_000), &both, ROUND);
        assert_eq!(view.duplicates, [NodeId::from("a")]);
        assert_eq!(table.duplicate_ids(Millis(1_000), 2 * ROUND).count(), 0);
        table.assemble(Millis(3_000), &both, ROUND);
        let ids: Vec<&NodeId> = table.duplicate_ids(Millis(3_000), 2 * ROUND).collect();
        assert_eq!(ids, [&NodeId::from("a")]);
        // One of them stops: the conflict is over and forgotten.
        let view = table.assemble(
            Millis(4_000),
            &[record("a", 7, 81, 1_200), both[1].clone()],
            ROUND,
        );
        assert!(view.duplicates.is_empty());
        assert_eq!(
            table.duplicate_ids(Millis(9_000), Duration::ZERO).count(),
            0
        );
    }

    #[test]
    fn a_changed_value_is_decoded_again() {
        let mut table = MemberTable::new();
        table.assemble(Millis(0), &[record("a", 0, 1, 0)], ROUND);
        let view = table.assemble(Millis(250), &[record("a", 0, 2, 0)], ROUND);
        assert_eq!(view.members[0].report.as_ref().map(|r| r.count), Some(2));
    }
}

//! The member table fed whatever a backend may hold: any ids, lives, ages
//! and values. It never panics, never lists a node twice, and a round is
//! decided only on members that all have a usable report.
#![no_main]

use std::time::Duration;

use clb_core::member::{MemberRecord, MemberTable};
use clb_core::round::collect;
use clb_core::{Millis, NodeId, Report, TieBreaker};
use libfuzzer_sys::fuzz_target;

const IDS: [&str; 5] = ["a", "b", "c", "n1", "me"];

fuzz_target!(|data: &[u8]| {
    let mut records = Vec::new();
    for chunk in data.split(|&b| b == 0xFF).take(64) {
        let [id, life, age, value @ ..] = chunk else {
            continue;
        };
        let node = match IDS.get(usize::from(*id) % 8) {
            Some(id) => NodeId::new(*id),
            None => NodeId::new(String::from_utf8_lossy(value).into_owned()),
        };
        records.push(MemberRecord {
            node,
            incarnation: u64::from(*life % 4),
            value: String::from_utf8_lossy(value).into_owned(),
            age: Duration::from_millis(u64::from(*age) * 20),
        });
    }
    let mut table = MemberTable::for_namespace("ws");
    let own = Report {
        node: "me".into(),
        count: 10,
        tie_breaker: TieBreaker::new(0.5),
        weight: 1.0,
        address: None,
        seq: 1,
        rebalancing: false,
    };
    for pass in 0..2u64 {
        let view = table.assemble(Millis(pass * 1000), &records, Duration::from_secs(1));
        let mut ids: Vec<&NodeId> = view.members.iter().map(|m| &m.node).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "a node listed twice");
        assert!(view.left.iter().all(|l| !ids.contains(&l)));
        if let Ok(round) = collect(&own, &view, Duration::from_secs(1)) {
            assert_eq!(round.num_members(), n + usize::from(!ids.contains(&&own.node)));
            // Its own entry is replaced by its fresh report; every other
            // member must have had a usable one.
            assert!(
                view.members
                    .iter()
                    .all(|m| m.node == own.node || m.report.as_ref().is_some_and(|r| r.is_valid()))
            );
        }
    }
});

//! What several test binaries share: the backend conformance suite, and real
//! `redis-server` processes for the Redis tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod redis_server;

use std::future::Future;
use std::time::Duration;

use clb::ClusterBackend;
use clb::core::{MemberRecord, Report, TieBreaker, wire};
use tokio::time::{Instant, sleep};

pub fn report(node: &str, count: u64, seq: u64) -> Report {
    Report {
        node: node.into(),
        count,
        tie_breaker: TieBreaker::new(0.5),
        weight: 1.0,
        address: Some(format!("ws://{node}/ws")),
        seq,
        rebalancing: false,
    }
}

pub async fn publish<B: ClusterBackend>(b: &B, ns: &str, r: &Report) {
    b.publish(ns, &r.node, &wire::encode(r)).await.unwrap();
}

/// Each record's node and count, decoded the way the core does, sorted;
/// members that left or failed are not members.
pub fn counts(records: &[MemberRecord]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = records
        .iter()
        .filter(|m| m.value != wire::LEFT && m.value != wire::LOST)
        .map(|m| {
            let count = wire::decode(&m.node, &m.value).map_or(u64::MAX, |r| r.count);
            (m.node.to_string(), count)
        })
        .collect();
    v.sort();
    v
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// The contract of [`ClusterBackend`], for two members `a` and `b`.
pub async fn backend_suite<B: ClusterBackend>(a: &B, b: &B, limit: Duration) {
    // Reports spread, per namespace.
    publish(a, "ws", &report("a", 10, 1)).await;
    publish(b, "ws", &report("b", 20, 1)).await;
    publish(b, "sse", &report("b", 7, 1)).await;
    eventually(limit, "both members in a's view", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 10), ("b".into(), 20)]
    })
    .await;
    // Namespaces never mix.
    eventually(limit, "only b in sse", || async {
        counts(&a.view("sse").await.unwrap()) == [("b".into(), 7)]
    })
    .await;
    assert!(b.view("nothing").await.unwrap().is_empty());
    // A new value is a fresh report: its age starts again.
    sleep(Duration::from_millis(300)).await;
    let age_of_b = |records: Vec<MemberRecord>| {
        records
            .into_iter()
            .find(|m| m.node.as_str() == "b")
            .map(|m| (m.age, m.value))
            .unwrap()
    };
    let (old_age, _) = age_of_b(a.view("ws").await.unwrap());
    assert!(
        old_age >= Duration::from_millis(250),
        "age grows while the value stays: {old_age:?}"
    );
    publish(b, "ws", &report("b", 21, 2)).await;
    eventually(limit, "b's new report, young again", || async {
        let (age, value) = age_of_b(a.view("ws").await.unwrap());
        value == wire::encode(&report("b", 21, 2)) && age < old_age
    })
    .await;
    // Bytes in, bytes out: a value the core cannot read is carried as it is,
    // never dropped or repaired by the backend (the core discards the round).
    b.publish("ws", &"b".into(), "v9;garbage;\u{1F600}")
        .await
        .unwrap();
    eventually(limit, "b's unreadable value, untouched", || async {
        age_of_b(a.view("ws").await.unwrap()).1 == "v9;garbage;\u{1F600}"
    })
    .await;
    // Leaving puts `left` in place of the report, for others to see.
    b.leave("ws", &"b".into()).await.unwrap();
    eventually(limit, "b gone from ws", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 10)]
    })
    .await;
    assert_eq!(
        counts(&a.view("sse").await.unwrap()),
        [("b".into(), 7)],
        "other namespaces stay"
    );
}

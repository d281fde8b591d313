#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One conformance suite, run against every backend: the in-memory one
//! first, then gossip over real UDP on loopback.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use clb::core::{ClusterView, Report, TieBreaker};
use clb::{ClusterBackend, ClusterKey, GossipBackend, GossipConfig, MemoryCluster};
use tokio::time::{Instant, sleep};

fn report(node: &str, count: u64, seq: u64) -> Report {
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

fn counts(view: &ClusterView) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = view
        .members
        .iter()
        .map(|m| {
            (
                m.node.to_string(),
                m.report.as_ref().map_or(u64::MAX, |r| r.count),
            )
        })
        .collect();
    v.sort();
    v
}

/// Polls `check` until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
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
async fn backend_suite<B: ClusterBackend>(a: &B, b: &B, limit: Duration) {
    // Reports spread, per namespace.
    a.publish("ws", &report("a", 10, 1)).await.unwrap();
    b.publish("ws", &report("b", 20, 1)).await.unwrap();
    b.publish("sse", &report("b", 7, 1)).await.unwrap();
    eventually(limit, "both members in a's view", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 10), ("b".into(), 20)]
    })
    .await;
    // Namespaces never mix.
    eventually(limit, "only b in sse", || async {
        counts(&a.view("sse").await.unwrap()) == [("b".into(), 7)]
    })
    .await;
    assert!(b.view("nothing").await.unwrap().members.is_empty());
    // A new seq is a fresh report: its age starts again.
    sleep(Duration::from_millis(300)).await;
    let old_age = a
        .view("ws")
        .await
        .unwrap()
        .members
        .iter()
        .find(|m| m.node.as_str() == "b")
        .unwrap()
        .age;
    assert!(
        old_age >= Duration::from_millis(250),
        "age grows while seq stays: {old_age:?}"
    );
    b.publish("ws", &report("b", 21, 2)).await.unwrap();
    eventually(limit, "b's new report, young again", || async {
        let view = a.view("ws").await.unwrap();
        let m = view
            .members
            .iter()
            .find(|m| m.node.as_str() == "b")
            .unwrap();
        m.report.as_ref().unwrap().count == 21 && m.age < old_age
    })
    .await;
    // Leaving removes a member from others' views.
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

#[tokio::test]
async fn memory_backend_passes_the_suite() {
    let cluster = MemoryCluster::new();
    backend_suite(&cluster, &cluster.clone(), Duration::from_secs(1)).await;
}

fn free_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn gossip_config(
    id: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
    key: Option<&str>,
) -> GossipConfig {
    let mut config = GossipConfig::new(id, listen);
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip_interval = Duration::from_millis(50);
    config.keys = key
        .map(|k| ClusterKey::new(k).unwrap())
        .into_iter()
        .collect();
    config
}

#[tokio::test]
async fn gossip_backend_passes_the_suite() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let key = Some("a-shared-secret-for-the-suite");
    let a = GossipBackend::start(gossip_config("a", pa, &[pb], key))
        .await
        .unwrap();
    let b = GossipBackend::start(gossip_config("b", pb, &[pa], key))
        .await
        .unwrap();
    backend_suite(&a, &b, Duration::from_secs(10)).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn gossip_with_another_key_is_never_admitted() {
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    let a = GossipBackend::start(gossip_config(
        "a",
        pa,
        &[pb, pc],
        Some("key-one-key-one-key-one"),
    ))
    .await
    .unwrap();
    let b = GossipBackend::start(gossip_config(
        "b",
        pb,
        &[pa, pc],
        Some("key-one-key-one-key-one"),
    ))
    .await
    .unwrap();
    let c = GossipBackend::start(gossip_config(
        "c",
        pc,
        &[pa, pb],
        Some("key-two-key-two-key-two"),
    ))
    .await
    .unwrap();
    for (node, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        node.publish("ws", &report(n, 1, 1)).await.unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "a and b see each other",
        || async {
            counts(&a.view("ws").await.unwrap()).len() == 2
                && counts(&b.view("ws").await.unwrap()).len() == 2
        },
    )
    .await;
    // Many gossip rounds later, c is still a stranger, and sees no one.
    sleep(Duration::from_millis(1000)).await;
    assert_eq!(a.live_nodes().await, ["a", "b"]);
    assert_eq!(counts(&c.view("ws").await.unwrap()), [("c".into(), 1)]);
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_node_is_counted_once_and_a_dead_one_goes_stale_then_away() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = GossipBackend::start(gossip_config("a", pa, &[pb], None))
        .await
        .unwrap();
    let mut first = gossip_config("b", pb, &[pa], None);
    first.generation = 1;
    let b1 = GossipBackend::start(first).await.unwrap();
    a.publish("ws", &report("a", 1, 1)).await.unwrap();
    b1.publish("ws", &report("b", 5, 1)).await.unwrap();
    eventually(Duration::from_secs(10), "b (gen 1) seen", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 1), ("b".into(), 5)]
    })
    .await;
    // Restart b on the same address with a higher generation.
    b1.shutdown().await;
    drop(b1);
    let mut second = gossip_config("b", pb, &[pa], None);
    second.generation = 2;
    let b2 = GossipBackend::start(second).await.unwrap();
    b2.publish("ws", &report("b", 9, 1)).await.unwrap();
    eventually(Duration::from_secs(10), "b (gen 2) seen, once", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 1), ("b".into(), 9)]
    })
    .await;
    // Now b dies without leaving: its report ages, then it is dropped.
    b2.shutdown().await;
    eventually(
        Duration::from_secs(15),
        "b dropped by failure detection",
        || async { counts(&a.view("ws").await.unwrap()) == [("a".into(), 1)] },
    )
    .await;
    a.shutdown().await;
}

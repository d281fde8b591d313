#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One conformance suite, run against every backend: the in-memory one
//! first, then gossip over real UDP on loopback. A backend moves bytes: what
//! is published comes back byte for byte, whatever it is.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use clb::core::{MemberTable, Millis, wire};
use clb::{ClusterBackend, ClusterKey, GossipBackend, GossipConfig, MemoryCluster, NodeId};
use support::{backend_suite, counts, eventually, publish, report};
use tokio::time::{Instant, sleep};

#[tokio::test]
async fn memory_backend_passes_the_suite() {
    let cluster = MemoryCluster::new();
    backend_suite(&cluster, &cluster.clone(), Duration::from_secs(1)).await;
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn gossip_config(id: &str, seeds: &[SocketAddr], key: Option<&str>) -> GossipConfig {
    let mut config = GossipConfig::new(id, loopback_any());
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
    let key = Some("a-shared-secret-for-the-suite");
    let a = GossipBackend::start(gossip_config("a", &[], key))
        .await
        .unwrap();
    let b = GossipBackend::start(gossip_config("b", &[a.local_addr()], key))
        .await
        .unwrap();
    assert_ne!(a.local_addr().port(), 0, "port 0 binds a real port");
    backend_suite(&a, &b, Duration::from_secs(10)).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn gossip_with_another_key_is_never_admitted() {
    let a = GossipBackend::start(gossip_config("a", &[], Some("key-one-key-one-key-one")))
        .await
        .unwrap();
    let b = GossipBackend::start(gossip_config(
        "b",
        &[a.local_addr()],
        Some("key-one-key-one-key-one"),
    ))
    .await
    .unwrap();
    let c = GossipBackend::start(gossip_config(
        "c",
        &[a.local_addr(), b.local_addr()],
        Some("key-two-key-two-key-two"),
    ))
    .await
    .unwrap();
    for (node, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        publish(node, "ws", &report(n, 1, 1)).await;
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
    let status = a.status().await;
    assert!(
        status.rejected.get("bad_signature").copied().unwrap_or(0) > 0,
        "{status:?}"
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_node_is_counted_once_and_a_dead_one_goes_stale_then_away() {
    let a = GossipBackend::start(gossip_config("a", &[], None))
        .await
        .unwrap();
    let mut first = gossip_config("b", &[a.local_addr()], None);
    first.generation = 1;
    let b1 = GossipBackend::start(first).await.unwrap();
    publish(&a, "ws", &report("a", 1, 1)).await;
    publish(&b1, "ws", &report("b", 5, 1)).await;
    eventually(Duration::from_secs(10), "b (gen 1) seen", || async {
        counts(&a.view("ws").await.unwrap()) == [("a".into(), 1), ("b".into(), 5)]
    })
    .await;
    // Restart b on another port with a higher generation. Gossip lists both
    // incarnations for a while; the core's table keeps the newest, once.
    b1.shutdown().await;
    drop(b1);
    let mut second = gossip_config("b", &[a.local_addr()], None);
    second.generation = 2;
    let b2 = GossipBackend::start(second).await.unwrap();
    publish(&b2, "ws", &report("b", 9, 1)).await;
    let mut table = MemberTable::new();
    let start = Instant::now();
    loop {
        let records = a.view("ws").await.unwrap();
        let now = Millis(start.elapsed().as_millis() as u64);
        let view = table.assemble(now, &records, Duration::from_secs(1));
        let b: Vec<_> = view
            .members
            .iter()
            .filter(|m| m.node == NodeId::from("b"))
            .collect();
        assert_eq!(b.len(), 1, "b counted once: {records:?}");
        if b[0].report.as_ref().is_some_and(|r| r.count == 9) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b (gen 2) not seen"
        );
        sleep(Duration::from_millis(20)).await;
    }
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

#[tokio::test]
async fn a_node_whose_seeds_never_answer_is_not_ready_and_says_why() {
    // A seed nobody listens on: a node that never joins anyone.
    let silent = std::net::UdpSocket::bind(loopback_any()).unwrap();
    let mut config = gossip_config(
        "lonely",
        &[silent.local_addr().unwrap()],
        Some("lonely-key-0123456789"),
    );
    config.join_timeout = Some(Duration::from_millis(300));
    let lonely = GossipBackend::start(config).await.unwrap();
    assert_eq!(
        lonely.health().not_ready,
        None,
        "not before the join timeout"
    );
    eventually(Duration::from_secs(5), "not ready", || async {
        lonely.health().not_ready.is_some()
    })
    .await;
    let why = lonely.health().not_ready.unwrap();
    assert!(why.starts_with("no seed admitted in"), "{why}");
    assert!(
        why.contains(&silent.local_addr().unwrap().to_string()),
        "{why}"
    );
    // A node with no seeds is a cluster of one by design: always ready.
    let alone = GossipBackend::start(gossip_config("alone", &[], None))
        .await
        .unwrap();
    assert_eq!(alone.health().not_ready, None);
    lonely.shutdown().await;
    alone.shutdown().await;
}

/// A node of the previous release, over real gossip: it writes the v1
/// layout; a balancer of this release counts it and decides on both.
#[tokio::test]
async fn a_mixed_version_gossip_cluster_drops_no_member_and_decides_on_all() {
    use std::sync::Arc;

    use clb::{Balancer, Config, Event, Resource, ResourceError, RoundOutcome, ShedRequest};

    struct Fixed(u64);
    impl Resource for Fixed {
        async fn count(&self) -> Result<u64, ResourceError> {
            Ok(self.0)
        }
        async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
            Ok(request.n)
        }
    }

    let old = GossipBackend::start(gossip_config("old", &[], None))
        .await
        .unwrap();
    let new = Arc::new(
        GossipBackend::start(gossip_config("new", &[old.local_addr()], None))
            .await
            .unwrap(),
    );
    let config = Config {
        round_duration: Duration::from_millis(500),
        dry_run: true,
        ..Config::classic()
    };
    let balancer = Balancer::builder("ws")
        .config(config)
        .spawn(Arc::new(Fixed(100)), Arc::clone(&new))
        .unwrap();
    let mut events = balancer.subscribe();
    let writer = async {
        for seq in 1.. {
            let value = wire::encode_v1(&report("old", 0, seq));
            old.publish("ws", &"old".into(), &value).await.unwrap();
            sleep(Duration::from_millis(100)).await;
        }
    };
    let decided = async {
        loop {
            if let Ok(Event::Round(r)) = events.recv().await {
                if r.members.len() == 2 {
                    return r;
                }
            }
        }
    };
    let round = tokio::select! {
        r = decided => r,
        () = writer => unreachable!(),
        () = sleep(Duration::from_secs(15)) => panic!("no round with both members"),
    };
    // Decided on both (100 against 0): classic would shed 25, dry run holds it.
    assert!(
        matches!(round.outcome, RoundOutcome::Held { would_shed: 25, .. }),
        "{round:?}"
    );
    balancer.shutdown().await;
    old.shutdown().await;
    new.shutdown().await;
}

#[tokio::test]
async fn a_gossip_port_in_use_is_a_start_error_and_the_id_is_the_backends() {
    use clb::{BackendError, Balancer, BuildError, Resource, ResourceError, ShedRequest};

    let taken = std::net::UdpSocket::bind(loopback_any()).unwrap();
    let config = GossipConfig::new("a", taken.local_addr().unwrap());
    match GossipBackend::start(config).await {
        Err(BackendError::Start(why)) => assert!(why.contains("binding gossip"), "{why}"),
        other => panic!("expected a start error, got {other:?}"),
    }

    struct Zero;
    impl Resource for Zero {
        async fn count(&self) -> Result<u64, ResourceError> {
            Ok(0)
        }
        async fn shed(&self, _: ShedRequest) -> Result<u64, ResourceError> {
            Ok(0)
        }
    }
    let backend = std::sync::Arc::new(
        GossipBackend::start(gossip_config("a", &[], None))
            .await
            .unwrap(),
    );
    let err = Balancer::builder("ws")
        .node_id("b")
        .spawn(std::sync::Arc::new(Zero), std::sync::Arc::clone(&backend))
        .unwrap_err();
    assert!(matches!(err, BuildError::NodeIdMismatch { .. }), "{err}");
    let balancer = Balancer::builder("ws")
        .spawn(std::sync::Arc::new(Zero), std::sync::Arc::clone(&backend))
        .unwrap();
    assert_eq!(balancer.status().node_id, "a", "taken from the backend");
    let err = Balancer::builder("ws")
        .spawn(
            std::sync::Arc::new(Zero),
            std::sync::Arc::new(MemoryCluster::new()),
        )
        .unwrap_err();
    assert!(matches!(err, BuildError::NoNodeId), "{err}");
    balancer.shutdown().await;
    backend.shutdown().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real `clb node` processes on loopback: real gossip, real WebSocket
//! servers and clients. Every wait has a deadline; every process is killed
//! when its guard drops.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clb_cli::probe;
use clb_cli::swarm::{Swarm, SwarmConfig};
use common::{
    Node, SERIAL, Spec, cluster, counts, formed, members, metric, metrics, start, status, until,
    ws_urls,
};
use tokio::time::{Instant, sleep};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_300_clients_from_one_node_and_lose_none() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster(
        3,
        &["--strategy", "classic"],
        Some("a-cluster-key-for-tests"),
    );
    let refs: Vec<&Node> = nodes.iter().collect();
    formed(&refs, 3).await;
    let swarm = Swarm::start(SwarmConfig {
        nodes: ws_urls(&refs),
        clients: 300,
        seed: 7,
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        hint_followers: 0.0,
        first_node: Some(0),
    });
    let started = Instant::now();
    until(Duration::from_secs(30), "300 clients connected", || async {
        swarm.stats().connected.load(Ordering::Relaxed) == 300
    })
    .await;
    // Classic's own sense of balanced: no node above +25% of the average.
    until(
        Duration::from_secs(60),
        "no node above +25% of the average",
        || async {
            let c = counts(&refs).await;
            c.iter().sum::<u64>() == 300 && c.iter().all(|&x| x <= 125)
        },
    )
    .await;
    let balanced_after = started.elapsed();
    let stats = swarm.stats();
    assert!(
        stats.closed_1012.load(Ordering::Relaxed) >= 100,
        "shed clients got close code 1012"
    );
    assert!(status(&nodes[0]).await["shed_total"].as_u64().unwrap() >= 100);
    until(
        Duration::from_secs(20),
        "every client connected again",
        || async { swarm.stats().connected.load(Ordering::Relaxed) == 300 },
    )
    .await;
    eprintln!(
        "balanced 300 clients in {balanced_after:?}: counts {:?}",
        counts(&refs).await
    );
    swarm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_discards_rounds_until_failure_detection_then_balancing_resumes() {
    let _serial = SERIAL.lock().await;
    let mut nodes = cluster(3, &["--strategy", "classic"], None);
    let refs: Vec<&Node> = nodes.iter().collect();
    formed(&refs, 3).await;
    let before = status(&nodes[0]).await["rounds"]["discarded"]
        .as_u64()
        .unwrap();
    let killed_at = Instant::now();
    let mut dead = nodes.pop().unwrap();
    dead.child.kill().unwrap(); // SIGKILL: no leave, no goodbye
    until(
        Duration::from_secs(10),
        "a discarded round on n0",
        || async {
            status(&nodes[0]).await["rounds"]["discarded"]
                .as_u64()
                .unwrap()
                > before
        },
    )
    .await;
    let s = status(&nodes[0]).await;
    assert_eq!(s["last_outcome"]["outcome"], "discarded", "{s}");
    assert_eq!(s["last_outcome"]["reason"], "stale_report", "{s}");
    until(
        Duration::from_secs(20),
        "n0 and n1 balance on their own",
        || async {
            let s = status(&nodes[0]).await;
            members(&s) == ["n0", "n1"] && s["last_outcome"]["outcome"] == "balanced"
        },
    )
    .await;
    eprintln!("dead node dropped after {:?}", killed_at.elapsed());
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_key_is_never_admitted_says_so_and_is_not_ready() {
    let _serial = SERIAL.lock().await;
    let key = Some("the-right-key-0123456789");
    let a = start(&Spec {
        key,
        ..Spec::new("a")
    });
    let b = start(&Spec {
        seeds: vec![a.gossip()],
        key,
        ..Spec::new("b")
    });
    let c = start(&Spec {
        seeds: vec![a.gossip(), b.gossip()],
        key: Some("the-wrong-key-0123456789"),
        extra: &["--join-timeout", "2s"],
        ..Spec::new("c")
    });
    formed(&[&a, &b], 2).await;
    for node in [&a, &b] {
        let s = status(node).await;
        assert_eq!(
            s["gossip"]["live_nodes"],
            serde_json::json!(["a", "b"]),
            "{s}"
        );
        assert_eq!(members(&s), ["a", "b"]);
    }
    // c runs alone: after its join timeout it is not ready, and says why.
    until(Duration::from_secs(10), "c not ready", || async {
        probe::get(c.http, "/health/ready")
            .await
            .is_ok_and(|(code, _)| code == 503)
    })
    .await;
    let s = status(&c).await;
    assert_eq!(s["gossip"]["live_nodes"], serde_json::json!(["c"]), "{s}");
    assert_eq!(s["ready"], false, "{s}");
    assert_eq!(s["accepting"], false, "{s}");
    assert_eq!(s["refusal"], "not_ready", "{s}");
    let why = s["not_ready"].as_str().unwrap();
    assert!(
        why.contains("no seed admitted") && why.contains("cluster key"),
        "{why}"
    );
    let (_, body) = probe::get(c.http, "/health/ready").await.unwrap();
    assert!(body.contains("no seed admitted"), "{body}");
    // a and b say, rate-limited, that they drop c's packets; c says it is
    // not ready.
    until(Duration::from_secs(5), "c's warning", || async {
        c.log().contains("WARN") && c.log().contains("not ready: no seed admitted")
    })
    .await;
    for node in [&a, &b] {
        until(
            Duration::from_secs(5),
            "a warning naming the cause",
            || async { node.log().contains("bad_signature") && node.log().contains("WARN") },
        )
        .await;
    }
    let rejected = |m: &str, reason: &str| {
        metric(
            m,
            &format!("clb_rejected_messages_total{{reason=\"{reason}\"}}"),
        )
    };
    let m = metrics(&a).await;
    assert!(rejected(&m, "bad_signature").unwrap() > 0.0, "{m}");
    // Junk and truncated datagrams are dropped and counted too, and a lives on.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in [&b"junk"[..], &[0x03, 1, 2, 3][..], &[][..]] {
        junk.send_to(datagram, a.gossip()).unwrap();
    }
    until(Duration::from_secs(5), "junk counted", || async {
        rejected(&metrics(&a).await, "malformed").unwrap_or(0.0) >= 2.0
    })
    .await;
    assert_eq!(members(&status(&a).await), ["a", "b"]);
    assert_eq!(status(&a).await["ready"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_the_same_id_is_counted_once() {
    let _serial = SERIAL.lock().await;
    let a = start(&Spec::new("a"));
    let spec_b = Spec {
        seeds: vec![a.gossip()],
        ..Spec::new("b")
    };
    let mut b = start(&spec_b);
    formed(&[&a, &b], 2).await;
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let b2 = start(&spec_b);
    // Until the old incarnation is declared dead, gossip lists both; the
    // balancer must never see two `b`s, nor take the restart for two
    // processes sharing an id.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut saw_new = false;
    while Instant::now() < deadline {
        let s = status(&a).await;
        let m = members(&s);
        assert!(
            m.iter().filter(|id| *id == "b").count() <= 1,
            "b counted twice: {s}"
        );
        assert_eq!(s["duplicate_ids"], serde_json::json!([]), "{s}");
        saw_new |= status(&b2).await["last_round"]
            .as_u64()
            .is_some_and(|r| r >= 1)
            && m == ["a", "b"];
        sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_new, "the restarted b joined");
    assert_eq!(status(&b2).await["ready"], true);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_clients_at_once_and_peers_see_a_leave_not_a_failure() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster(3, &[], None);
    let refs: Vec<&Node> = nodes.iter().collect();
    formed(&refs, 3).await;
    let swarm = Swarm::start(SwarmConfig {
        nodes: ws_urls(&refs),
        clients: 60,
        seed: 3,
        backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        hint_followers: 0.0,
        first_node: Some(2),
    });
    until(Duration::from_secs(20), "60 clients on n2", || async {
        status(&nodes[2]).await["count"].as_u64() == Some(60)
    })
    .await;
    let discarded_before = status(&nodes[0]).await["rounds"]["discarded"]
        .as_u64()
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &nodes[2].child.id().to_string()])
        .status()
        .unwrap();
    until(
        Duration::from_secs(10),
        "clients moved to n0 and n1",
        || async { counts(&refs[..2]).await.iter().sum::<u64>() == 60 },
    )
    .await;
    assert!(swarm.stats().closed_1012.load(Ordering::Relaxed) >= 60);
    until(Duration::from_secs(10), "n0 sees two members", || async {
        members(&status(&nodes[0]).await) == ["n0", "n1"]
    })
    .await;
    let s = status(&nodes[0]).await;
    assert_eq!(
        s["rounds"]["discarded"].as_u64().unwrap(),
        discarded_before,
        "a leave is not a failure: {s}"
    );
    swarm.stop().await;
}

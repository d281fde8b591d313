#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `clb node --backend redis`: real processes sharing a real `redis-server`
//! the test starts on a unix socket of its own, with real WebSocket clients.

mod common;
// The library's tests start Redis the same way; one copy of that code.
#[path = "../../clb/tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use clb_cli::swarm::{Swarm, SwarmConfig};
use common::{Node, SERIAL, Spec, counts, formed, metric, metrics, start, status, until, ws_urls};
use redis_server::{RedisServer, available};

fn node(id: &str, url: &str) -> Node {
    start(&Spec {
        extra: &[
            "--backend",
            "redis",
            "--redis-url",
            url,
            "--strategy",
            "classic",
        ],
        ..Spec::new(id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_redis_spread_300_clients_and_stop_deciding_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    if !available() {
        return;
    }
    let mut redis = RedisServer::start(&[]);
    let url = redis.url();
    let nodes = [node("r0", &url), node("r1", &url), node("r2", &url)];
    let refs: Vec<&Node> = nodes.iter().collect();
    formed(&refs, 3).await;
    let s = status(&nodes[0]).await;
    assert!(s["redis"]["last_error"].is_null(), "{s}");
    assert_eq!(s["redis"]["urls"][0], url.as_str(), "{s}");
    let swarm = Swarm::start(SwarmConfig {
        nodes: ws_urls(&refs),
        clients: 300,
        seed: 11,
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        hint_followers: 0.0,
        first_node: Some(0),
    });
    until(Duration::from_secs(30), "300 clients connected", || async {
        swarm.stats().connected.load(Ordering::Relaxed) == 300
    })
    .await;
    until(Duration::from_secs(60), "no node above +25%", || async {
        let c = counts(&refs).await;
        c.iter().sum::<u64>() == 300 && c.iter().all(|&x| x <= 125)
    })
    .await;
    // Redis goes away: every round is discarded, nothing is shed.
    redis.kill();
    let shed_before = status(&nodes[0]).await["shed_total"].as_u64().unwrap();
    until(Duration::from_secs(15), "rounds discarded", || async {
        let m = metrics(&nodes[0]).await;
        metric(
            &m,
            "clb_discarded_rounds_total{namespace=\"websocket\",reason=\"backend_failed\"",
        )
        .is_some_and(|n| n >= 2.0)
    })
    .await;
    let s = status(&nodes[0]).await;
    assert!(s["redis"]["last_error"].is_string(), "{s}");
    assert_eq!(s["shed_total"].as_u64().unwrap(), shed_before, "{s}");
    assert!(nodes[0].log().contains("WARN"), "the outage is logged");
    // Back: the same processes decide rounds again.
    redis.restart();
    formed(&refs, 3).await;
    until(Duration::from_secs(20), "balanced rounds again", || async {
        status(&nodes[0]).await["last_outcome"]["outcome"] == "balanced"
    })
    .await;
    assert_eq!(swarm.stats().connected.load(Ordering::Relaxed), 300);
    swarm.stop().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Redis backend against a real `redis-server` (and a real three-master
//! Redis Cluster) that the tests start themselves. Real time, short rounds;
//! every wait has a deadline.
#![cfg(feature = "redis")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clb::backend::redis::{RedisBackend, RedisConfig};
use clb::{
    Balancer, ClusterBackend, Config, DiscardReason, Event, Resource, ResourceError, RoundEvent,
    RoundOutcome, ShedRequest,
};
use support::redis_server::{self, RedisCluster, RedisServer};
use support::{backend_suite, eventually};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep};

const ROUND: Duration = Duration::from_millis(400);

/// The Redis tests share one machine's two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn backend(node: &str, urls: &[String], cluster: bool) -> Arc<RedisBackend> {
    let mut config = RedisConfig::new(node, urls[0].clone());
    config.urls = urls.to_vec();
    config.cluster = cluster;
    config.member_ttl = Duration::from_millis(1500);
    config.timeout = Duration::from_millis(300);
    Arc::new(RedisBackend::new(config).unwrap())
}

#[tokio::test]
async fn the_redis_backend_passes_the_suite() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start(&[]);
    let a = backend("a", &[server.url()], false);
    let b = backend("b", &[server.url()], false);
    backend_suite(&*a, &*b, Duration::from_secs(5)).await;
}

/// Counts per node and a seeded "load balancer": a shed client reconnects
/// to a node picked round-robin among the others.
struct World {
    counts: Mutex<Vec<u64>>,
    next: Mutex<usize>,
}

struct Node {
    world: Arc<World>,
    index: usize,
}

impl Resource for Node {
    async fn count(&self) -> Result<u64, ResourceError> {
        Ok(self.world.counts.lock().unwrap()[self.index])
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let mut counts = self.world.counts.lock().unwrap();
        let n = request.n.min(counts[self.index]);
        counts[self.index] -= n;
        let len = counts.len();
        let mut next = self.world.next.lock().unwrap();
        for _ in 0..n {
            *next = (*next + 1) % len;
            if *next == self.index {
                *next = (*next + 1) % len;
            }
            counts[*next] += 1;
        }
        Ok(n)
    }
}

fn cluster_of(world: &Arc<World>, backends: &[Arc<RedisBackend>]) -> Vec<Balancer> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Balancer::builder("ws")
                .config(Config {
                    round_duration: ROUND,
                    ..Config::default()
                })
                .spawn(
                    Arc::new(Node {
                        world: Arc::clone(world),
                        index: i,
                    }),
                    Arc::clone(b),
                )
                .unwrap()
        })
        .collect()
}

fn within_10_percent(counts: &[u64]) -> bool {
    let avg = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts.iter().all(|&c| (c as f64 - avg).abs() <= avg * 0.1)
}

async fn converge(urls: &[String], cluster: bool) {
    let world = Arc::new(World {
        counts: Mutex::new(vec![900, 0, 0]),
        next: Mutex::new(0),
    });
    let backends: Vec<_> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| backend(n, urls, cluster))
        .collect();
    let balancers = cluster_of(&world, &backends);
    eventually(
        Duration::from_secs(60),
        "three nodes within ±10%",
        || async { within_10_percent(&world.counts.lock().unwrap()) },
    )
    .await;
    assert_eq!(world.counts.lock().unwrap().iter().sum::<u64>(), 900);
    let status = balancers[0].status();
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(status.shed_total > 0);
    for b in balancers {
        b.shutdown().await;
    }
}

#[tokio::test]
async fn three_balancers_converge_over_one_server() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start(&[]);
    converge(&[server.url()], false).await;
}

#[tokio::test]
async fn three_balancers_converge_over_a_three_master_redis_cluster() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    converge(&cluster.urls(), true).await;
}

/// Waits for the first round event matching `pred`.
async fn wait_round(
    rx: &mut broadcast::Receiver<Event>,
    limit: Duration,
    mut pred: impl FnMut(&RoundEvent) -> bool,
) -> RoundEvent {
    let deadline = Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching round before the deadline")
            .expect("event stream closed");
        if let Event::Round(r) = event {
            if pred(&r) {
                return r;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_redis_discards_every_round_and_balancing_resumes_when_it_is_back() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut server = RedisServer::start(&[]);
    let world = Arc::new(World {
        counts: Mutex::new(vec![600, 0]),
        next: Mutex::new(0),
    });
    let backends = vec![
        backend("n0", &[server.url()], false),
        backend("n1", &[server.url()], false),
    ];
    let balancers = cluster_of(&world, &backends);
    let mut rx = balancers[0].subscribe();
    wait_round(&mut rx, Duration::from_secs(10), |r| {
        matches!(r.outcome, RoundOutcome::Shed { .. })
    })
    .await;
    server.kill();
    // Give what was planned before the kill time to finish, then freeze.
    wait_round(&mut rx, Duration::from_secs(10), |r| {
        r.outcome
            == RoundOutcome::Discarded {
                reason: DiscardReason::BackendFailed,
            }
    })
    .await;
    sleep(ROUND).await;
    let frozen = world.counts.lock().unwrap().clone();
    for _ in 0..5 {
        let r = wait_round(&mut rx, Duration::from_secs(5), |_| true).await;
        assert_eq!(
            r.outcome,
            RoundOutcome::Discarded {
                reason: DiscardReason::BackendFailed
            },
            "Redis is down: every round is discarded"
        );
    }
    assert_eq!(
        *world.counts.lock().unwrap(),
        frozen,
        "nothing shed on stale data"
    );
    let warnings = balancers[0].status().warnings;
    assert!(
        warnings.iter().any(|w| w.contains("redis unreachable")),
        "{warnings:?}"
    );
    server.restart();
    eventually(Duration::from_secs(30), "balanced again", || async {
        within_10_percent(&world.counts.lock().unwrap())
    })
    .await;
    for b in balancers {
        b.shutdown().await;
    }
}

#[tokio::test]
async fn a_report_written_by_hand_in_a_bad_format_is_never_decided_on() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start(&[]);
    let world = Arc::new(World {
        counts: Mutex::new(vec![500, 0]),
        next: Mutex::new(0),
    });
    let backends = vec![
        backend("n0", &[server.url()], false),
        backend("n1", &[server.url()], false),
    ];
    // A member nobody runs, kept fresh by hand with a value no node wrote.
    let forger = tokio::spawn({
        let socket = server.socket();
        async move {
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    .to_string();
                let s = socket.display().to_string();
                for args in [
                    vec!["HSET", "clb:{ws}:values", "evil@1", "count=999999"],
                    vec!["ZADD", "clb:{ws}:heard", &now, "evil@1"],
                ] {
                    let _ = tokio::process::Command::new("redis-cli")
                        .args(["-s", &s])
                        .args(args)
                        .output()
                        .await;
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let balancers = cluster_of(&world, &backends);
    let mut rx = balancers[0].subscribe();
    for _ in 0..4 {
        let r = wait_round(&mut rx, Duration::from_secs(5), |r| r.members.len() == 3).await;
        assert!(
            matches!(
                &r.outcome,
                RoundOutcome::Discarded { reason: DiscardReason::InvalidReport { node, .. } }
                    if node.as_str() == "evil"
            ),
            "{r:?}"
        );
    }
    assert_eq!(*world.counts.lock().unwrap(), vec![500, 0], "nothing shed");
    forger.abort();
    for b in balancers {
        b.shutdown().await;
    }
}

#[tokio::test]
async fn a_value_nobody_is_heard_for_is_removed_and_never_in_a_view() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start(&[]);
    let a = backend("a", &[server.url()], false);
    // Written by hand (or left when the `heard` key was evicted).
    server.cli(&[
        "HSET",
        "clb:{ws}:values",
        "ghost@1",
        "1 v2;c=5;s=1;t=0.5;w=1;r=0",
    ]);
    let view = a
        .publish_and_view("ws", &clb::NodeId::new("a"), "v2;c=1;s=1;t=0.5;w=1;r=0")
        .await
        .unwrap();
    let nodes: Vec<&str> = view.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(nodes, ["a"]);
    assert_eq!(
        server
            .cli(&["HEXISTS", "clb:{ws}:values", "ghost@1"])
            .trim(),
        "0"
    );
}

#[tokio::test]
async fn a_password_from_the_config_opens_a_protected_server() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start(&["--requirepass", "a-redis-password"]);
    let mut config = RedisConfig::new("n0", server.url());
    config.timeout = Duration::from_millis(500);
    let wrong = RedisBackend::new(config.clone()).unwrap();
    let err = clb::ClusterBackend::view(&wrong, "ws").await.unwrap_err();
    assert!(!err.to_string().contains("a-redis-password"), "{err}");
    config.password = Some("a-redis-password".into());
    let right = RedisBackend::new(config).unwrap();
    support::publish(&right, "ws", &support::report("n0", 7, 1)).await;
    let records = clb::ClusterBackend::view(&right, "ws").await.unwrap();
    assert_eq!(support::counts(&records), [("n0".to_owned(), 7)]);
}

#[tokio::test]
async fn rediss_urls_speak_tls_to_a_server_with_a_private_ca() {
    if !redis_server::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some(tls) = support::redis_server::TlsServer::start() else {
        eprintln!("*** SKIPPED: this redis-server or openssl cannot do TLS ***");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "TLS must be testable in CI"
        );
        return;
    };
    let make = |node: &str, ca: Option<Vec<u8>>| {
        let mut config = RedisConfig::new(node, tls.url());
        config.timeout = Duration::from_secs(2);
        config.tls_ca = ca;
        RedisBackend::new(config).unwrap()
    };
    // Without the CA the server's certificate is refused: no data moves.
    let untrusted = make("a", None);
    assert!(clb::ClusterBackend::view(&untrusted, "ws").await.is_err());
    let a = make("a", Some(tls.ca.clone()));
    let b = make("b", Some(tls.ca.clone()));
    backend_suite(&a, &b, Duration::from_secs(5)).await;
}

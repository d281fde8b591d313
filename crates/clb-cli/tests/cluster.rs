#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real `clb node` processes on loopback: real gossip, real WebSocket
//! servers and clients. Every wait has a deadline; every process is killed
//! when its guard drops.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clb_cli::probe;
use clb_cli::swarm::{Swarm, SwarmConfig};
use serde_json::Value;
use tokio::time::{Instant, sleep};

/// One cluster test at a time: they are timing-sensitive and a 2-core
/// machine should not run fifteen nodes at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    id: String,
    child: Child,
    ws: SocketAddr,
    http: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> SocketAddr {
    probe::free_tcp().unwrap()
}

fn free_udp() -> SocketAddr {
    probe::free_udp().unwrap()
}

struct Spec<'a> {
    id: &'a str,
    gossip: SocketAddr,
    seeds: Vec<SocketAddr>,
    key: Option<&'a str>,
    extra: &'a [&'a str],
}

fn spawn(spec: &Spec<'_>, ws: SocketAddr, http: SocketAddr) -> Node {
    let seeds: Vec<String> = spec.seeds.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clb"));
    cmd.args(["node", "--id", spec.id])
        .args(["--gossip-listen", &spec.gossip.to_string()])
        .args(["--seeds", &seeds.join(",")])
        .args([
            "--ws-listen",
            &ws.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .args(["--round-duration", "1s", "--gossip-interval", "250ms"])
        .args(spec.extra)
        .env_remove("CLB_CLUSTER_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(key) = spec.key {
        cmd.env("CLB_CLUSTER_KEY", key);
    }
    Node {
        id: spec.id.to_owned(),
        child: cmd.spawn().expect("spawn clb node"),
        ws,
        http,
    }
}

fn start(spec: &Spec<'_>) -> Node {
    spawn(spec, free_tcp(), free_tcp())
}

async fn status(node: &Node) -> Value {
    probe::get_json(node.http, "/status")
        .await
        .unwrap_or(Value::Null)
}

/// Polls until `check` holds, or fails naming `what` after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

fn members(s: &Value) -> Vec<String> {
    s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["node_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn counts(nodes: &[&Node]) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(status(n).await["count"].as_u64().unwrap_or(u64::MAX));
    }
    out
}

/// Three nodes that know each other, with these extra flags each.
fn three(extra: &'static [&'static str], key: Option<&'static str>) -> Vec<Node> {
    let gossip = [free_udp(), free_udp(), free_udp()];
    ["n0", "n1", "n2"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            start(&Spec {
                id,
                gossip: gossip[i],
                seeds: gossip.iter().copied().filter(|g| *g != gossip[i]).collect(),
                key,
                extra,
            })
        })
        .collect()
}

async fn formed(nodes: &[&Node], n: usize) {
    for node in nodes {
        until(
            Duration::from_secs(20),
            &format!("{} sees {n} members", node.id),
            || async {
                let s = status(node).await;
                members(&s).len() == n && s["last_round"].as_u64().is_some_and(|r| r >= 1)
            },
        )
        .await;
    }
}

fn ws_urls(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| format!("ws://{}/ws", n.ws)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_300_clients_from_one_node_and_lose_none() {
    let _serial = SERIAL.lock().await;
    let nodes = three(&["--strategy", "classic"], Some("a-cluster-key-for-tests"));
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
    let mut nodes = three(&["--strategy", "classic"], None);
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
async fn a_node_with_another_cluster_key_is_never_admitted_and_its_packets_are_counted() {
    let _serial = SERIAL.lock().await;
    let (ga, gb, gc) = (free_udp(), free_udp(), free_udp());
    let key = Some("the-right-key-0123456789");
    let a = start(&Spec {
        id: "a",
        gossip: ga,
        seeds: vec![gb, gc],
        key,
        extra: &[],
    });
    let b = start(&Spec {
        id: "b",
        gossip: gb,
        seeds: vec![ga, gc],
        key,
        extra: &[],
    });
    let c = start(&Spec {
        id: "c",
        gossip: gc,
        seeds: vec![ga, gb],
        key: Some("the-wrong-key-0123456789"),
        extra: &[],
    });
    formed(&[&a, &b], 2).await;
    sleep(Duration::from_secs(2)).await;
    for node in [&a, &b] {
        let s = status(node).await;
        assert_eq!(s["gossip_live_nodes"], serde_json::json!(["a", "b"]), "{s}");
        assert_eq!(members(&s), ["a", "b"]);
    }
    assert_eq!(
        status(&c).await["gossip_live_nodes"],
        serde_json::json!(["c"])
    );
    // Junk and truncated datagrams are dropped and counted too, and a lives on.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in [&b"junk"[..], &[0x02, 1, 2, 3][..], &[][..]] {
        junk.send_to(datagram, ga).unwrap();
    }
    let rejected = |metrics: &str, reason: &str| -> f64 {
        let prefix = format!("clb_rejected_messages_total{{reason=\"{reason}\"}}");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    until(Duration::from_secs(5), "junk counted", || async {
        let (_, metrics) = probe::get(a.http, "/metrics").await.unwrap();
        rejected(&metrics, "malformed") >= 2.0
    })
    .await;
    let (_, metrics) = probe::get(a.http, "/metrics").await.unwrap();
    assert!(
        rejected(&metrics, "bad_signature") > 0.0,
        "a counted c's packets as bad signatures:\n{metrics}"
    );
    assert_eq!(members(&status(&a).await), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_the_same_id_is_counted_once() {
    let _serial = SERIAL.lock().await;
    let (ga, gb) = (free_udp(), free_udp());
    let a = start(&Spec {
        id: "a",
        gossip: ga,
        seeds: vec![gb],
        key: None,
        extra: &[],
    });
    let spec_b = Spec {
        id: "b",
        gossip: gb,
        seeds: vec![ga],
        key: None,
        extra: &[],
    };
    let mut b = start(&spec_b);
    formed(&[&a, &b], 2).await;
    let (ws, http) = (b.ws, b.http);
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let b2 = spawn(&spec_b, ws, http);
    // Until the old incarnation is declared dead, gossip lists both; the
    // balancer must never see two `b`s.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut saw_new = false;
    while Instant::now() < deadline {
        let s = status(&a).await;
        let m = members(&s);
        assert!(
            m.iter().filter(|id| *id == "b").count() <= 1,
            "b counted twice: {s}"
        );
        saw_new |= status(&b2).await["last_round"]
            .as_u64()
            .is_some_and(|r| r >= 1)
            && m == ["a", "b"];
        sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_new, "the restarted b joined");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_clients_at_once_and_peers_see_a_leave_not_a_failure() {
    let _serial = SERIAL.lock().await;
    let nodes = three(&[], None);
    let refs: Vec<&Node> = nodes.iter().collect();
    formed(&refs, 3).await;
    let swarm = Swarm::start(SwarmConfig {
        nodes: ws_urls(&refs[..2])
            .into_iter()
            .chain([format!("ws://{}/ws", nodes[2].ws)])
            .collect(),
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

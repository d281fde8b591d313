#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What one round costs on the Redis backend, against a real `redis-server`
//! this benchmark starts, reached over loopback TCP and over a unix socket.
//!
//! For 3, 50 and 500 members: every simulated member writes its report
//! (through the backend, as a node does each quarter round), then one member
//! makes its round trip (publish its report and read every live one: one
//! Lua call). The figure is that round trip's latency, beside a bare `PING`
//! on the same server in the same process (the baseline: what any single
//! Redis command costs here).
//!
//! ```sh
//! cargo bench -p clb --bench redis_round --features redis
//! ```
//!
//! Not a test: it prints figures, it asserts nothing.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use clb::{ClusterBackend, RedisBackend, RedisConfig};
use clb_core::{NodeId, Report, TieBreaker, wire};

const ROUNDS: usize = 300;

fn main() {
    if !redis_server::available() {
        std::process::exit(2);
    }
    // A free loopback port for the TCP listener (the server also keeps its
    // unix socket).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server =
        redis_server::RedisServer::start(&["--port", &port.to_string(), "--bind", "127.0.0.1"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tcp = format!("redis://127.0.0.1:{port}");
    runtime.block_on(async {
        for (how, url) in [
            ("loopback TCP", tcp.as_str()),
            ("unix socket", &server.url()),
        ] {
            let baseline = ping(url).await;
            println!(
                "redis round trip per round, {how} ({ROUNDS} rounds each, one real redis-server)"
            );
            println!(
                "  baseline: PING p50 {:>7.1} µs, p99 {:>7.1} µs",
                baseline.0, baseline.1
            );
            println!(
                "  {:>8}  {:>10}  {:>10}  {:>12}  {:>16}  {:>12}",
                "members", "p50 µs", "p99 µs", "p50 / PING", "in Redis p50 µs", "reply bytes"
            );
            for members in [3, 50, 500] {
                let r = round_trip(url, members).await;
                println!(
                    "  {members:>8}  {:>10.1}  {:>10.1}  {:>12.1}  {:>16.1}  {:>12}",
                    r.p50,
                    r.p99,
                    r.p50 / baseline.0,
                    r.server_p50,
                    r.bytes
                );
            }
        }
    });
}

/// The report member `i` would publish: a realistic v2 value.
fn report(i: usize, seq: u64) -> String {
    wire::encode(&Report {
        node: NodeId::new(format!("node-{i}")),
        count: 1000 + i as u64,
        tie_breaker: TieBreaker::new(0.123_456_789),
        weight: 1.0,
        address: Some(format!("ws://10.0.{}.{}:8080/ws", i / 250, i % 250)),
        seq,
        rebalancing: false,
    })
}

fn backend(url: &str, i: usize, namespace_ttl: Duration) -> RedisBackend {
    let mut config = RedisConfig::new(format!("node-{i}"), url);
    config.member_ttl = namespace_ttl;
    RedisBackend::new(config).expect("a valid config")
}

/// p50 and p99 of `samples`, in µs.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

async fn ping(url: &str) -> (f64, f64) {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let mut samples = Vec::with_capacity(ROUNDS * 10);
    for _ in 0..ROUNDS * 10 {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        samples.push(started.elapsed());
    }
    percentiles(samples)
}

/// One member's publish-and-view latency with `members` live members.
async fn round_trip(url: &str, members: usize) -> RoundTrip {
    let namespace = format!("bench-{members}-{}", url.len());
    let ttl = Duration::from_secs(60);
    let all: Vec<(NodeId, RedisBackend)> = (0..members)
        .map(|i| (NodeId::new(format!("node-{i}")), backend(url, i, ttl)))
        .collect();
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut server = Vec::with_capacity(ROUNDS);
    let mut admin = redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let mut bytes = 0;
    for round in 0..ROUNDS as u64 {
        // The others write their reports for this round.
        for (i, (node, b)) in all.iter().enumerate().skip(1) {
            b.publish(&namespace, node, &report(i, round))
                .await
                .unwrap();
        }
        let (node, me) = &all[0];
        let value = report(0, round);
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut admin)
            .await
            .unwrap();
        let started = Instant::now();
        let view = me.publish_and_view(&namespace, node, &value).await.unwrap();
        samples.push(started.elapsed());
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut admin)
            .await
            .unwrap();
        server.push(Duration::from_micros(usec(&info, "evalsha")));
        assert_eq!(view.len(), members, "every member is live");
        bytes = view
            .iter()
            .map(|m| m.node.as_str().len() + m.value.len() + 8)
            .sum();
    }
    let (p50, p99) = percentiles(samples);
    let (server_p50, _) = percentiles(server);
    RoundTrip {
        p50,
        p99,
        server_p50,
        bytes,
    }
}

struct RoundTrip {
    p50: f64,
    p99: f64,
    /// Time Redis spent running the script (its own `commandstats`), µs.
    server_p50: f64,
    bytes: usize,
}

/// `usec=` of `cmdstat_<command>` in `INFO commandstats`.
fn usec(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

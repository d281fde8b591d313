#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a `clb node` costs in memory, measured on a real process:
//!
//! 1. **idle connections**: RSS before and after 10,000 idle WebSocket
//!    clients connect (override with `CLB_BENCH_CLIENTS`), with the node's
//!    limits as shipped, and again with the WebSocket library's default
//!    buffers (128 KiB each way) as the baseline;
//! 2. **ping flood**: RSS over 10 seconds while one client that never
//!    reads sends pings as fast as the node takes them.
//!
//! ```sh
//! cargo bench -p clb-cli --bench node_memory
//! ```
//!
//! Linux only (it reads `/proc/<pid>/status`). Not a test: it prints
//! figures, it asserts nothing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

fn main() {
    let clients: usize = std::env::var("CLB_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    #[cfg(unix)]
    {
        let need = clients as u64 + 512;
        let got = rlimit::increase_nofile_limit(need).unwrap_or(0);
        if got < need {
            eprintln!("the open-file limit is {got}; {need} needed for {clients} clients");
            std::process::exit(2);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let idle_flags: &[&str] = &["--ws-ping-interval", "20m", "--ws-idle-timeout", "1h"];
    let ours = runtime.block_on(idle_memory(clients, idle_flags));
    let library: Vec<&str> = idle_flags
        .iter()
        .copied()
        .chain(["--ws-read-buffer", "128KiB", "--ws-write-buffer", "128KiB"])
        .collect();
    let baseline = runtime.block_on(idle_memory(clients, &library));
    println!("idle connections ({clients} clients, `clb node` RSS growth per connection):");
    println!("  shipped limits (4 KiB read buffer, eager writes): {ours:>8.1} KiB");
    println!("  WebSocket library defaults (128 KiB buffers):     {baseline:>8.1} KiB");
    println!(
        "  ratio shipped / library defaults:                 {:>8.3}",
        ours / baseline
    );
    let flood = runtime.block_on(ping_flood(Duration::from_secs(10)));
    println!("ping flood (one client that never reads, 10 s):");
    println!(
        "  RSS {:.1} MiB before, {:.1} MiB at most, {:.1} MiB after: grew at most {:.1} MiB",
        flood.start / 1024.0,
        flood.peak / 1024.0,
        flood.end / 1024.0,
        (flood.peak - flood.start) / 1024.0
    );
    match flood.cut_off_after {
        Some(t) => println!(
            "  the node dropped the client after {:.1} s",
            t.as_secs_f64()
        ),
        None => println!("  the node never dropped the client"),
    }
}

/// A `clb node` process on loopback port 0, killed on drop.
struct Node {
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

impl Node {
    fn start(extra: &[&str], max_connections: usize) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clb"))
            .args(["node", "--id", "bench", "--gossip-listen", "127.0.0.1:0"])
            .args(["--ws-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--max-connections", &max_connections.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("CLB_CLUSTER_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clb node");
        let stdout = child.stdout.take().expect("node stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines.next().expect("a ready line").expect("node stdout");
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["event"] == "ready" {
                break v;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let addr = |k: &str| {
            ready[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an address")
        };
        Node {
            ws: addr("ws"),
            http: addr("http"),
            child,
        }
    }

    /// Resident set size, KiB.
    fn rss_kib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    async fn count(&self) -> Option<u64> {
        let status = clb_cli::probe::get_json(self.http, "/status").await.ok()?;
        status["count"].as_u64()
    }
}

/// RSS growth per idle connection, KiB.
async fn idle_memory(clients: usize, flags: &[&str]) -> f64 {
    let node = Node::start(flags, clients + 16);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = node.rss_kib();
    let url = format!("ws://{}/ws", node.ws);
    let mut held = Vec::with_capacity(clients);
    let mut pending = futures_util::stream::iter(0..clients)
        .map(|_| tokio_tungstenite::connect_async(url.clone()))
        .buffer_unordered(200);
    while let Some(result) = pending.next().await {
        let (ws, _) = result.expect("a client connects");
        held.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.count().await != Some(clients as u64) {
        assert!(
            Instant::now() < deadline,
            "the node never counted every client"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node.rss_kib();
    drop(held);
    (after - before) / clients as f64
}

/// RSS in KiB while one non-reading client floods pings.
struct Flood {
    start: f64,
    peak: f64,
    end: f64,
    /// When the node dropped the client, if it did.
    cut_off_after: Option<Duration>,
}

async fn ping_flood(duration: Duration) -> Flood {
    let node = Node::start(&[], 16);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = node.rss_kib();
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small window");
    let mut stream = socket.connect(node.ws).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("upgrade request");
    // A masked ping with a 125-byte payload, a thousand times over.
    let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    ping.extend((0..125).map(|i| 7u8 ^ [1, 2, 3, 4][i % 4]));
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let flood = tokio::spawn(async move { while stream.write_all(&burst).await.is_ok() {} });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.count().await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the flooding client never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut peak = start;
    let mut cut_off_after = None;
    let started = Instant::now();
    while started.elapsed() < duration {
        peak = peak.max(node.rss_kib());
        if cut_off_after.is_none() && (flood.is_finished() || node.count().await == Some(0)) {
            cut_off_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
    Flood {
        start,
        peak,
        end: node.rss_kib(),
        cut_off_after,
    }
}

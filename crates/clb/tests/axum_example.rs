#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `examples/axum_service.rs` as a user runs it: two instances over real
//! gossip on loopback, real WebSocket clients. One instance holds every
//! client: it sheds some with 1012 and a hint naming the other; then it is
//! stopped with SIGTERM and closes every client with 1012, and exits.
#![cfg(all(feature = "axum", feature = "prometheus"))]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// The example's binary, built by `cargo test` beside this test's.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("examples").join("axum_service");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/axum_service.rs");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    assert!(
        modified(&path) >= modified(std::path::Path::new(source)),
        "{} is missing or older than its source: `cargo test` builds it (with the axum and \
         prometheus features on, as in the workspace), `cargo test --test ...` does not",
        path.display()
    );
    path
}

struct Instance {
    child: Child,
    http: SocketAddr,
    gossip: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(id: &str, seeds: &str) -> Instance {
    let mut child = Command::new(example())
        .env("NODE_ID", id)
        .env("LISTEN", "127.0.0.1:0")
        .env("GOSSIP", "127.0.0.1:0")
        .env("SEEDS", seeds)
        .env("ROUND_MS", "500")
        .env("CLB_CLUSTER_KEY", "the-example-test-cluster-key")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    let addr = |k: &str| field(&ready, k).parse().unwrap();
    Instance {
        http: addr("http"),
        gossip: addr("gossip"),
        child,
        lines,
    }
}

/// The value of `key=value` in a line of the example's output.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Reads until the server closes; returns the close code and reason.
async fn closed(
    ws: &mut (impl StreamExt<Item = Result<Message, impl std::fmt::Debug>> + Unpin),
) -> (u16, String) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                // Read on, as a client does: it sends the close's answer.
                while let Some(Ok(_)) = ws.next().await {}
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_shed_with_a_hint_and_a_sigterm_closes_every_client_1012() {
    let a = start("a", "");
    let b = start("b", &a.gossip.to_string());
    let url_a = format!("ws://{}/ws", a.http);
    let url_b = format!("ws://{}/ws", b.http);
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(tokio_tungstenite::connect_async(&url_a).await.unwrap().0);
    }
    // a holds 40 against b's 0: the first shed closes with 1012 and b's
    // address as the hint.
    let mut shed = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while shed.is_none() {
        assert!(Instant::now() < deadline, "no client was shed");
        for (i, ws) in clients.iter_mut().enumerate() {
            if let Ok(Some(Ok(Message::Close(Some(frame))))) =
                timeout(Duration::from_millis(20), ws.next()).await
            {
                shed = Some((i, u16::from(frame.code), frame.reason.to_string()));
                break;
            }
        }
    }
    let (i, code, reason) = shed.unwrap();
    assert_eq!(code, 1012);
    assert_eq!(reason, format!("rebalance; try {url_b}"));
    clients.remove(i);
    // /metrics and /health/ready are served.
    let (status, metrics) = clb_probe(a.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("clb_shed_total"), "{metrics}");
    assert!(
        metrics.contains("# HELP clb_round_duration_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clb_round_duration_seconds_bucket"),
        "a histogram: {metrics}"
    );
    // SIGTERM: every client still on a is closed with 1012, and a exits.
    let mut a = a;
    Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    // (a kept shedding meanwhile: some were shed before the signal.)
    let mut shut_down = 0;
    for ws in &mut clients {
        let (code, reason) = timeout(Duration::from_secs(10), closed(ws)).await.unwrap();
        assert_eq!(code, 1012, "{reason}");
        if reason == "node shutting down" {
            shut_down += 1;
        } else {
            assert_eq!(reason, format!("rebalance; try {url_b}"));
        }
    }
    assert!(shut_down > 0);
    let drained = a.lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(drained.starts_with("drained "), "{drained}");
    assert_eq!(field(&drained, "still_open"), "0", "{drained}");
    // Closed during the drain: every client told to shut down, and any
    // still finishing a shed's close.
    let closed: usize = field(&drained, "closed").parse().unwrap();
    assert!(closed >= shut_down, "{drained}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "a did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(a.http).is_err(),
        "nothing left listening"
    );
    drop(b);
}

/// A minimal GET over a raw socket: the test needs no HTTP client.
async fn clb_probe(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response)
}

//! Real `clb node` processes for the process-level tests: each binds port 0
//! and reports its addresses in its ready line, so tests never race another
//! program for a port; its log is kept for assertions; every process is
//! killed when its handle drops. Every wait has a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use clb_cli::probe;
use serde_json::Value;
use tokio::time::{Instant, sleep};

/// One cluster test at a time per test binary: they are timing-sensitive,
/// and a 2-core machine should not run fifteen nodes at once.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running node and what it bound.
pub struct Node {
    pub id: String,
    pub child: Child,
    ws: Option<SocketAddr>,
    pub http: SocketAddr,
    gossip: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// The WebSocket listener (`clb node` only).
    pub fn ws(&self) -> SocketAddr {
        self.ws.expect("a sidecar has no WebSocket listener")
    }

    /// The gossip socket (the gossip backend only).
    pub fn gossip(&self) -> SocketAddr {
        self.gossip.expect("this member does not gossip")
    }

    /// Everything the node has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM; waits up to `limit` for the exit and returns its status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What to start.
pub struct Spec<'a> {
    pub id: &'a str,
    pub seeds: Vec<SocketAddr>,
    pub key: Option<&'a str>,
    pub extra: &'a [&'a str],
    /// Run under `ulimit -n` of this (soft and hard).
    pub file_limit: Option<u32>,
    /// `node` (the default) or `sidecar`.
    pub command: &'a str,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> Spec<'a> {
    pub fn new(id: &'a str) -> Self {
        Spec {
            id,
            seeds: Vec::new(),
            key: None,
            extra: &[],
            file_limit: None,
            command: "node",
            env: &[],
        }
    }
}

/// The `clb` binary with nothing inherited that could change its behaviour.
pub fn clb() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clb"));
    clean_env(&mut cmd);
    cmd
}

/// Every `CLB_*` variable is a setting (`CLB_ROUND_DURATION`, ...): none
/// leaks from the test's environment into a child.
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CLB_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_BACKTRACE")
        .env("RUST_LOG", "warn,clb=info,clb_cli=info");
}

/// Starts a node on loopback port 0 and waits for its ready line.
pub fn start(spec: &Spec<'_>) -> Node {
    let seeds: Vec<String> = spec.seeds.iter().map(ToString::to_string).collect();
    let mut cmd = match spec.file_limit {
        Some(n) => {
            let mut cmd = Command::new("sh");
            clean_env(&mut cmd);
            let script = format!("ulimit -n {n} && exec \"$0\" \"$@\"");
            cmd.args(["-c", &script, env!("CARGO_BIN_EXE_clb")]);
            cmd
        }
        None => clb(),
    };
    cmd.args([spec.command, "--id", spec.id]).args([
        "--http-listen",
        "127.0.0.1:0",
        "--round-duration",
        "1s",
    ]);
    if !spec.extra.contains(&"redis") {
        cmd.args([
            "--gossip-listen",
            "127.0.0.1:0",
            "--gossip-interval",
            "250ms",
        ]);
    }
    let node = spec.command == "node";
    if node {
        cmd.args(["--ws-listen", "127.0.0.1:0"]);
    }
    if node && !spec.extra.contains(&"--max-connections") && spec.file_limit.is_none() {
        // Fits any test machine's open-file limit.
        cmd.args(["--max-connections", "2000"]);
    }
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    cmd.args(spec.extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(key) = spec.key {
        cmd.env("CLB_CLUSTER_KEY", key);
    }
    cmd.envs(spec.env.iter().copied());
    let mut child = cmd.spawn().expect("spawn clb node");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["event"] == "ready" {
                        let _ = ready_tx.send(v);
                        sent = true;
                    }
                }
            }
        }
    });
    let ready = match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(v) => v,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node {} did not print its ready line; its log:\n{}",
                spec.id,
                log.lock().unwrap().join("\n")
            );
        }
    };
    let addr = |key: &str| ready[key].as_str().unwrap().parse().unwrap();
    Node {
        id: spec.id.to_owned(),
        child,
        ws: ready["ws"].as_str().map(|a| a.parse().unwrap()),
        http: addr("http"),
        gossip: ready["gossip"].as_str().map(|a| a.parse().unwrap()),
        log,
    }
}

/// `n` nodes, each seeded with the ones before it.
pub fn cluster(n: usize, extra: &'static [&'static str], key: Option<&'static str>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let id = format!("n{i}");
        let seeds = nodes.iter().map(|n| n.gossip()).collect();
        nodes.push(start(&Spec {
            id: &id,
            seeds,
            key,
            extra,
            ..Spec::new(&id)
        }));
    }
    nodes
}

pub async fn status(node: &Node) -> Value {
    probe::get_json(node.http, "/status")
        .await
        .unwrap_or(Value::Null)
}

/// Polls until `check` holds, or fails naming `what` after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
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

pub fn members(s: &Value) -> Vec<String> {
    s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["node_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn counts(nodes: &[&Node]) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(status(n).await["count"].as_u64().unwrap_or(u64::MAX));
    }
    out
}

/// Waits until every node sees `n` members and has decided a round.
pub async fn formed(nodes: &[&Node], n: usize) {
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

pub fn ws_urls(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| format!("ws://{}/ws", n.ws()))
        .collect()
}

/// The value of a Prometheus series, summed over the series whose name and
/// labels start with `prefix` (e.g. `clb_rejected_messages_total{reason="bad_signature"`).
pub fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub async fn metrics(node: &Node) -> String {
    probe::get(node.http, "/metrics").await.unwrap().1
}

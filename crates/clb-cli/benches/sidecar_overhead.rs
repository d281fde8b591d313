#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What `clb sidecar` costs per round beside its service, against `clb node`
//! (which counts its own connections in-process) as the baseline, both real
//! processes measured side by side over the same window:
//!
//! - **round latency**: `clb_round_duration_seconds` (from reading the count
//!   to the round's decision), mean over the window;
//! - **CPU per round**: the process's user + system time over the window
//!   (`/proc/<pid>/stat`), divided by the rounds it decided.
//!
//! The service is a minimal HTTP server in this process answering the
//! count (it never has to shed: each member is alone in its cluster). Rounds
//! of 100 ms, a 30 s window after a 3 s warm-up.
//!
//! ```sh
//! cargo bench -p clb-cli --bench sidecar_overhead
//! ```
//!
//! Linux only. Not a test: it prints figures, it asserts nothing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

const WINDOW: Duration = Duration::from_secs(30);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let calls = Arc::new(AtomicU64::new(0));
        let service = serve(Arc::clone(&calls)).await;
        let count_url = format!("http://{service}/count");
        let shed_url = format!("http://{service}/shed");
        let node = Member::start("node", &[]);
        let sidecar = Member::start(
            "sidecar",
            &["--count-url", &count_url, "--shed-url", &shed_url],
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (node0, sidecar0, calls0) = (
            node.sample().await,
            sidecar.sample().await,
            calls.load(Ordering::Relaxed),
        );
        tokio::time::sleep(WINDOW).await;
        let node = node.sample().await.since(&node0);
        let sidecar = sidecar.sample().await.since(&sidecar0);
        let calls = calls.load(Ordering::Relaxed) - calls0;
        println!(
            "sidecar overhead per round ({:.0} s window, rounds of 100 ms, one member each):",
            WINDOW.as_secs_f64()
        );
        println!(
            "  {:<34} {:>8} {:>16} {:>16}",
            "", "rounds", "latency mean ms", "CPU µs / round"
        );
        for (name, w) in [
            ("clb node (in-process count)", &node),
            ("clb sidecar (HTTP count)", &sidecar),
        ] {
            println!(
                "  {name:<34} {:>8} {:>16.3} {:>16.0}",
                w.rounds,
                w.latency_mean_ms(),
                w.cpu_us_per_round()
            );
        }
        println!(
            "  ratio sidecar / node:              {:>8} {:>16.2} {:>16.2}",
            "",
            sidecar.latency_mean_ms() / node.latency_mean_ms(),
            sidecar.cpu_us_per_round() / node.cpu_us_per_round()
        );
        println!(
            "  count calls the service answered: {calls} ({:.2} per round)",
            calls as f64 / sidecar.rounds as f64
        );
    });
}

/// The service: `GET /count` answers 1000; `POST /shed` sheds nothing.
async fn serve(calls: Arc<AtomicU64>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/count",
            get(move || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { "1000" }
            }),
        )
        .route("/shed", post(|| async { "0" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A `clb node` or `clb sidecar` on loopback port 0, killed on drop.
struct Member {
    child: Child,
    http: SocketAddr,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cumulative figures at one moment.
struct Sample {
    rounds: u64,
    latency_sum: f64,
    latency_count: f64,
    cpu_ticks: u64,
}

impl Sample {
    fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            rounds: self.rounds - earlier.rounds,
            latency_sum: self.latency_sum - earlier.latency_sum,
            latency_count: self.latency_count - earlier.latency_count,
            cpu_ticks: self.cpu_ticks - earlier.cpu_ticks,
        }
    }

    fn latency_mean_ms(&self) -> f64 {
        self.latency_sum / self.latency_count * 1e3
    }

    fn cpu_us_per_round(&self) -> f64 {
        // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
        self.cpu_ticks as f64 * 10_000.0 / self.rounds as f64
    }
}

impl Member {
    fn start(command: &str, extra: &[&str]) -> Member {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clb"))
            .args([command, "--id", "bench", "--round-duration", "100ms"])
            .args([
                "--gossip-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(if command == "node" {
                &["--ws-listen", "127.0.0.1:0"][..]
            } else {
                &[]
            })
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("CLB_CLUSTER_KEY", "a-key-for-the-sidecar-benchmark")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clb");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines.next().expect("a ready line").expect("stdout");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "ready" {
                    break v;
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let http = ready["http"].as_str().unwrap().parse().unwrap();
        Member { child, http }
    }

    async fn sample(&self) -> Sample {
        let status = clb_cli::probe::get_json(self.http, "/status")
            .await
            .unwrap();
        let r = &status["rounds"];
        let rounds = ["balanced", "discarded", "held", "shed"]
            .iter()
            .map(|k| r[k].as_u64().unwrap_or(0))
            .sum();
        let (_, metrics) = clb_cli::probe::get(self.http, "/metrics").await.unwrap();
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks = |i: usize| fields[i].parse::<u64>().unwrap();
        Sample {
            rounds,
            latency_sum: value("clb_round_duration_seconds_sum"),
            latency_count: value("clb_round_duration_seconds_count"),
            // utime and stime, fields 14 and 15 of stat (counted from the pid).
            cpu_ticks: ticks(11) + ticks(12),
        }
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `clb demo` end to end, small: real node processes, real clients, a
//! rolling restart, and nothing left running afterwards.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn clb() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clb"));
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("CLB_CLUSTER_KEY");
    cmd
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_short_demo_balances_loses_no_client_and_leaves_nothing_running() {
    let started = Instant::now();
    let out = clb()
        .args([
            "demo",
            "--nodes",
            "3",
            "--clients",
            "300",
            "--round-duration",
            "500ms",
        ])
        .args(["--restart-gap", "1s", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("demo took {:?}: {summary}", started.elapsed());
    for key in [
        "nodes",
        "clients",
        "connected_at_end",
        "lost_clients",
        "rounds",
        "seconds_to_balance",
        "total_shed",
        "ideal_shed",
        "churn_ratio",
        "final_counts",
        "max_deviation_percent",
    ] {
        assert!(summary.get(key).is_some(), "missing {key}");
    }
    assert_eq!(summary["lost_clients"], 0);
    assert_eq!(summary["connected_at_end"], 300);
    assert_eq!(summary["balanced"], true, "{summary}");
    let final_counts: Vec<u64> = serde_json::from_value(summary["final_counts"].clone()).unwrap();
    assert_eq!(final_counts.iter().sum::<u64>(), 300);
    assert!(
        summary["max_deviation_percent"].as_f64().unwrap() <= 25.0,
        "{summary}"
    );
    assert!(summary["closed_1012"].as_u64().unwrap() > 0);
    // Every node process the demo ever started has exited, its ports free.
    for pid in summary["node_pids"].as_array().unwrap() {
        assert!(
            !pid_alive(pid.as_u64().unwrap()),
            "node process {pid} still running"
        );
    }
    for node in summary["node_ports"].as_array().unwrap() {
        for port in ["ws", "http"] {
            let addr = node[port].as_str().unwrap();
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still bound: {e}"));
        }
    }
}

#[test]
fn an_interrupted_demo_stops_every_node() {
    let mut child = clb()
        .args([
            "demo",
            "--nodes",
            "2",
            "--clients",
            "50",
            "--round-duration",
            "500ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let log_dir = first
        .rsplit("node logs in ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    // Wait for the live view: the nodes are up and the clients connecting.
    for line in lines.by_ref() {
        if line.unwrap().contains("connected") {
            break;
        }
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each node logged its HTTP address when ready; none may answer now.
    let mut checked = 0;
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let log = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for http in log
            .split("http=")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next())
        {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(http).is_ok() {
                assert!(Instant::now() < deadline, "a node still answers on {http}");
                std::thread::sleep(Duration::from_millis(50));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "both nodes' addresses found in {log_dir}");
    let _ = std::fs::remove_dir_all(&log_dir);
}

#[test]
fn too_low_a_file_limit_is_refused_before_anything_starts() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec '{}' demo --clients 4000",
            env!("CARGO_BIN_EXE_clb")
        ))
        .env_remove("CLB_CLUSTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: the open-file limit is 256"),
        "{stderr}"
    );
    assert!(stderr.contains("ulimit -n"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started");
}

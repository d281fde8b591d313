#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every option of every subcommand, taken from the CLI definition itself
//! (clap's `Command`), is run for real with a valid value and must not
//! panic; every option that takes a value is given absurd values and must
//! answer exit 2 and one `error:` line. A new flag without a row in the
//! tables below fails this test: no flag escapes it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::clb;

/// (subcommand, flag) → valid values; `None` for a flag that takes none.
fn valid() -> BTreeMap<(&'static str, &'static str), Vec<&'static str>> {
    let mut t = BTreeMap::new();
    let config: &[(&str, &[&str])] = &[
        ("strategy", &["classic", "proportional"]),
        ("round-duration", &["300ms"]),
        ("allowed-average-deviation-percent", &["30"]),
        ("shed-percentage", &["40"]),
        ("max-shed-count", &["100", "none"]),
        ("min-shed-count", &["1"]),
        ("stop-band-percent", &["4"]),
        ("abs-tolerance", &["3"]),
        ("max-shed-fraction", &["0.2", "none"]),
        ("settle-rounds", &["1"]),
        ("quorum-rounds", &["0", "30"]),
        ("pacing-window", &["0.3"]),
        ("pacing-max-batches", &["3"]),
        ("admission", &["on", "off"]),
        ("dry-run", &[]),
        ("weight", &["2"]),
    ];
    for sub in ["node", "sidecar", "simulate", "demo"] {
        for (flag, values) in config {
            t.insert((sub, *flag), values.to_vec());
        }
    }
    for sub in ["node", "sidecar", "demo"] {
        t.insert((sub, "config"), vec!["EXAMPLE"]);
    }
    // What node and sidecar share: the member and its backend.
    let member: &[(&str, &[&str])] = &[
        ("id", &["n-1"]),
        ("namespace", &["chat.v2"]),
        ("http-listen", &["127.0.0.1:0"]),
        ("advertise-url", &["ws://127.0.0.1:1/ws"]),
        ("backend", &["gossip", "redis"]),
        ("gossip-listen", &["127.0.0.1:0"]),
        ("gossip-advertise", &["127.0.0.1:7946"]),
        ("seeds", &["127.0.0.1:9,localhost:9"]),
        (
            "cluster-key",
            &["a-long-enough-cluster-key,another-long-cluster-key"],
        ),
        ("cluster-id", &["prod-eu"]),
        ("gossip-interval", &["100ms"]),
        ("generation", &["42"]),
        ("join-timeout", &["2s", "none"]),
        (
            "redis-url",
            &["redis://127.0.0.1:1", "redis://u:p@127.0.0.1:1/2"],
        ),
        ("redis-cluster", &[]),
        ("redis-password", &["a-redis-password"]),
        ("redis-tls-ca", &["EXAMPLE"]),
        ("redis-member-ttl", &["5s"]),
        ("redis-timeout", &["500ms"]),
    ];
    for sub in ["node", "sidecar"] {
        for (flag, values) in member {
            t.insert((sub, *flag), values.to_vec());
        }
    }
    let sidecar: &[(&str, &[&str])] = &[
        ("count-url", &["http://127.0.0.1:1/count"]),
        ("shed-url", &["http://127.0.0.1:1/shed"]),
        ("admission-url", &["http://127.0.0.1:1/admission"]),
        ("admission-every", &["5s"]),
        ("service-timeout", &["200ms"]),
        ("service-retries", &["0", "2"]),
    ];
    for (flag, values) in sidecar {
        t.insert(("sidecar", *flag), values.to_vec());
    }
    let node: &[(&str, &[&str])] = &[
        ("ws-listen", &["127.0.0.1:0"]),
        ("shed-policy", &["random", "newest", "idle", "ranked"]),
        ("max-connections", &["500"]),
        ("max-pending-connections", &["64"]),
        ("max-message-size", &["32KiB"]),
        ("max-frame-size", &["16KiB"]),
        ("ws-read-buffer", &["8KiB"]),
        ("ws-write-buffer", &["1KiB"]),
        ("ws-max-write-buffer", &["1MiB"]),
        ("ws-send-timeout", &["5s"]),
        ("ws-ping-interval", &["10s"]),
        ("ws-idle-timeout", &["40s"]),
        ("close-deadline", &["1s"]),
        ("handshake-timeout", &["5s"]),
    ];
    for (flag, values) in node {
        t.insert(("node", *flag), values.to_vec());
    }
    let simulate: &[(&str, &[&str])] = &[
        ("scenario", &["rolling-deploy", "new-node", "skewed"]),
        ("nodes", &["4"]),
        ("clients", &["200"]),
        ("counts", &["90,10,0"]),
        ("tie-breakers", &["0.25,0.5"]),
        ("lb", &["random", "round-robin", "least-conn", "none"]),
        ("hint-followers", &["0.5"]),
        ("rounds", &["4"]),
        ("seed", &["9"]),
        ("runs", &["2"]),
        ("compare", &[]),
        ("plot", &["PLOT"]),
        ("json", &[]),
    ];
    for (flag, values) in simulate {
        t.insert(("simulate", *flag), values.to_vec());
    }
    let demo: &[(&str, &[&str])] = &[
        ("nodes", &["3"]),
        ("clients", &["24"]),
        ("restart-gap", &["100ms"]),
        ("seed", &["3"]),
        ("hint-followers", &["0.5"]),
        ("max-rounds", &["20"]),
        ("json", &[]),
        ("plot", &["PLOT"]),
    ];
    for (flag, values) in demo {
        t.insert(("demo", *flag), values.to_vec());
    }
    t
}

/// (subcommand, flag) → absurd values, each refused with exit 2.
fn absurd() -> AbsurdTable {
    let mut t = BTreeMap::new();
    let huge = "x".repeat(10_000);
    let config: Vec<(&str, Vec<&str>)> = vec![
        ("strategy", vec!["fancy", ""]),
        ("round-duration", vec!["1e30", "0s", "-1", "2h", "soon"]),
        (
            "allowed-average-deviation-percent",
            vec!["-5", "NaN", "1e400"],
        ),
        ("shed-percentage", vec!["150", "NaN", "-1"]),
        ("max-shed-count", vec!["0", "-1", "lots"]),
        ("min-shed-count", vec!["-1", "99999999999999999999"]),
        ("stop-band-percent", vec!["30", "-1", "NaN"]),
        ("abs-tolerance", vec!["-1", "1.5"]),
        ("max-shed-fraction", vec!["0", "1.5", "NaN"]),
        ("settle-rounds", vec!["1001", "-1"]),
        ("quorum-rounds", vec!["100001", "-1"]),
        ("pacing-window", vec!["0.95", "-0.1"]),
        ("pacing-max-batches", vec!["0", "10001"]),
        ("admission", vec!["maybe"]),
        ("weight", vec!["0", "-1", "1e7", "NaN"]),
    ];
    for sub in ["node", "sidecar", "simulate", "demo"] {
        add_absurd(&mut t, sub, config.clone());
    }
    for sub in ["node", "sidecar", "demo"] {
        add_absurd(
            &mut t,
            sub,
            vec![("config", vec!["/nonexistent-folder/clb.toml", ""])],
        );
    }
    let member: Vec<(&str, Vec<&str>)> = vec![
        ("id", vec!["", "a b", &huge]),
        ("namespace", vec!["", "a:b", &huge]),
        ("http-listen", vec!["nope"]),
        ("advertise-url", vec!["has space", "", &huge]),
        ("backend", vec!["etcd", ""]),
        ("gossip-listen", vec!["nope", "127.0.0.1:99999"]),
        ("gossip-advertise", vec!["nope", "0.0.0.0:7000"]),
        ("seeds", vec!["no such host!!", "host", ":1", "1.2.3.4.5:1"]),
        ("cluster-key", vec!["short"]),
        ("cluster-id", vec!["", &huge]),
        ("gossip-interval", vec!["1e30", "1ms", "5m"]),
        ("generation", vec!["-1", "abc"]),
        ("join-timeout", vec!["0s", "1e30", "soon"]),
        ("redis-url", vec!["http://127.0.0.1:1", "not a url"]),
        ("redis-password", vec!["", "a\nb"]),
        ("redis-tls-ca", vec!["/nonexistent-folder/ca.pem"]),
        ("redis-member-ttl", vec!["1ms", "2h"]),
        ("redis-timeout", vec!["1ms", "5m"]),
    ];
    for sub in ["node", "sidecar"] {
        add_absurd(&mut t, sub, member.clone());
    }
    let node: Vec<(&str, Vec<&str>)> = vec![
        ("ws-listen", vec!["nope", "127.0.0.1:99999"]),
        ("shed-policy", vec!["oldest", ""]),
        ("max-connections", vec!["0", "-1", "10000000"]),
        ("max-pending-connections", vec!["0", "2000000"]),
        ("max-message-size", vec!["8", "1GiB", "lots"]),
        ("max-frame-size", vec!["8", "1MiB"]),
        ("ws-read-buffer", vec!["100", "2MiB"]),
        ("ws-write-buffer", vec!["2MiB", "-1"]),
        ("ws-max-write-buffer", vec!["1KiB", "1GiB"]),
        ("ws-send-timeout", vec!["1ms", "1h", "1e30"]),
        ("ws-ping-interval", vec!["1ms", "2h"]),
        ("ws-idle-timeout", vec!["1s", "2d"]),
        ("close-deadline", vec!["1ms", "1h"]),
        ("handshake-timeout", vec!["1ms", "1h"]),
    ];
    add_absurd(&mut t, "node", node);
    let sidecar: Vec<(&str, Vec<&str>)> = vec![
        (
            "count-url",
            vec!["https://127.0.0.1:1/count", "not a url", ""],
        ),
        ("shed-url", vec!["ftp://127.0.0.1:1/shed", "nope"]),
        ("admission-url", vec!["nope"]),
        ("admission-every", vec!["1ms", "1e30"]),
        ("service-timeout", vec!["1ms", "1h"]),
        ("service-retries", vec!["11", "-1"]),
    ];
    add_absurd(&mut t, "sidecar", sidecar);
    let simulate: Vec<(&str, Vec<&str>)> = vec![
        ("scenario", vec!["sideways"]),
        ("nodes", vec!["0", "-1", "100000000"]),
        (
            "clients",
            vec!["-1", "99999999999999999999", "100000000000000"],
        ),
        ("counts", vec!["100,x", "", "-1"]),
        ("tie-breakers", vec!["x", "2,3"]),
        ("lb", vec!["magic"]),
        ("hint-followers", vec!["2", "-1", "NaN"]),
        ("rounds", vec!["0", "2000000"]),
        ("seed", vec!["-1", "x"]),
        ("runs", vec!["0", "10001"]),
        ("plot", vec!["/nonexistent-folder/x.svg"]),
    ];
    add_absurd(&mut t, "simulate", simulate);
    let demo: Vec<(&str, Vec<&str>)> = vec![
        ("nodes", vec!["1", "17", "-1"]),
        ("clients", vec!["0", "100001"]),
        ("restart-gap", vec!["1e30", "2m"]),
        ("seed", vec!["-1"]),
        ("hint-followers", vec!["2", "NaN"]),
        ("max-rounds", vec!["0", "100000"]),
        ("plot", vec!["/nonexistent-folder/x.svg"]),
    ];
    add_absurd(&mut t, "demo", demo);
    t
}

type AbsurdTable = BTreeMap<(&'static str, &'static str), Vec<String>>;

fn add_absurd(t: &mut AbsurdTable, sub: &'static str, rows: Vec<(&'static str, Vec<&str>)>) {
    for (flag, values) in rows {
        t.insert((sub, flag), values.iter().map(|v| v.to_string()).collect());
    }
}

/// Every option of every subcommand, from the definition: (subcommand,
/// flag, whether it takes a value).
fn options() -> Vec<(String, String, bool)> {
    let cli = clb_cli::Cli::command();
    let mut out = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let long = arg.get_long().unwrap_or_else(|| {
                panic!(
                    "clb {} {id}: every option needs a long name",
                    sub.get_name()
                )
            });
            out.push((
                sub.get_name().to_owned(),
                long.to_owned(),
                arg.get_action().takes_values(),
            ));
        }
    }
    out
}

/// The arguments a subcommand needs to run quickly, as (flag, value) pairs;
/// the flag under test replaces its own pair.
fn base(sub: &str) -> Vec<(&'static str, Option<&'static str>)> {
    match sub {
        "node" => vec![
            ("id", Some("n0")),
            ("gossip-listen", Some("127.0.0.1:0")),
            ("ws-listen", Some("127.0.0.1:0")),
            ("http-listen", Some("127.0.0.1:0")),
            ("max-connections", Some("100")),
        ],
        "sidecar" => vec![
            ("id", Some("s0")),
            ("gossip-listen", Some("127.0.0.1:0")),
            ("http-listen", Some("127.0.0.1:0")),
            ("count-url", Some("http://127.0.0.1:1/count")),
            ("shed-url", Some("http://127.0.0.1:1/shed")),
        ],
        "simulate" => vec![
            ("counts", Some("100,0")),
            ("rounds", Some("3")),
            ("json", None),
        ],
        "demo" => vec![
            ("nodes", Some("2")),
            ("clients", Some("12")),
            ("round-duration", Some("200ms")),
            ("restart-gap", Some("0s")),
            ("max-rounds", Some("15")),
            ("json", None),
        ],
        other => panic!("no base arguments for clb {other}: add them here"),
    }
}

fn command_line(sub: &str, flag: &str, value: Option<&str>) -> Vec<String> {
    let mut args = vec![sub.to_owned()];
    let mut pairs = base(sub);
    pairs.retain(|(f, _)| *f != flag);
    // Options that exclude or require another.
    if sub == "simulate" && ["scenario", "nodes", "clients"].contains(&flag) {
        pairs.retain(|(f, _)| *f != "counts");
        pairs.push(("scenario", Some("new-node")));
        pairs.retain(|(f, _)| *f != flag);
    }
    if sub == "simulate" && flag == "tie-breakers" {
        pairs.retain(|(f, _)| *f != "counts");
        pairs.push(("counts", Some("60,40")));
    }
    // Redis settings count only with the Redis backend.
    if flag.starts_with("redis-") {
        pairs.push(("backend", Some("redis")));
    }
    let wants_url = flag.starts_with("redis-") || (flag == "backend" && value == Some("redis"));
    if wants_url {
        // A gossip flag with the Redis backend is refused.
        pairs.retain(|(f, _)| *f != "gossip-listen");
    }
    if wants_url && flag != "redis-url" {
        pairs.push(("redis-url", Some("redis://127.0.0.1:1")));
    }
    for (f, v) in pairs {
        args.push(format!("--{f}"));
        args.extend(v.map(str::to_owned));
    }
    args.push(format!("--{flag}"));
    args.extend(value.map(str::to_owned));
    args
}

/// `clb.example.toml` for `--config`; a PEM of a CA for `--redis-tls-ca`.
fn example_path(flag: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    match flag {
        "config" => format!("{root}/clb.example.toml"),
        _ => {
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-flags-ca.pem");
            // Any PEM does: a node with an unreachable Redis never uses it.
            std::fs::write(
                &path,
                "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            path.display().to_string()
        }
    }
}

fn plot_path(tag: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("cli-flags-{tag}-{}.svg", std::process::id()))
        .display()
        .to_string()
}

fn run_to_end(args: &[String], limit: Duration) -> Output {
    let mut child = clb()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "clb {} did not finish within {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Starts a node, waits for its ready line, stops it with SIGTERM: it must
/// exit 0 without a panic.
fn run_node(args: &[String]) -> Result<(), String> {
    let mut child = clb()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(r#""event":"ready""#) {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !ready {
        return Err(format!("no ready line; stderr:\n{stderr}"));
    }
    if !out.status.success() || stderr.contains("panicked") {
        return Err(format!("exit {:?}; stderr:\n{stderr}", out.status));
    }
    Ok(())
}

/// A named check to run on a worker thread.
type Job = (String, Box<dyn FnOnce() -> Result<(), String> + Send>);

/// Runs `jobs` on `width` threads at once; returns every failure.
fn in_parallel(jobs: Vec<Job>, width: usize) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let workers: Vec<_> = (0..width)
        .map(|_| {
            let jobs = std::sync::Arc::clone(&jobs);
            let tx = tx.clone();
            std::thread::spawn(move || {
                loop {
                    let job = jobs.lock().unwrap().pop();
                    let Some((name, job)) = job else { return };
                    if let Err(e) = job() {
                        let _ = tx.send(format!("{name}: {e}"));
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    rx.into_iter().collect()
}

#[test]
fn every_option_of_every_subcommand_runs_with_a_valid_value() {
    let valid = valid();
    let absurd = absurd();
    let mut jobs: Vec<Job> = Vec::new();
    let mut missing = Vec::new();
    for (sub, flag, takes_value) in options() {
        let Some(values) = valid.get(&(sub.as_str(), flag.as_str())) else {
            missing.push(format!(
                "clb {sub} --{flag}: no valid value in this test's table"
            ));
            continue;
        };
        if takes_value && !absurd.contains_key(&(sub.as_str(), flag.as_str())) {
            missing.push(format!(
                "clb {sub} --{flag}: no absurd value in this test's table"
            ));
        }
        let values: Vec<Option<String>> = if values.is_empty() {
            vec![None]
        } else {
            values
                .iter()
                .map(|v| {
                    Some(match *v {
                        "PLOT" => plot_path(&format!("{sub}-{flag}")),
                        "EXAMPLE" => example_path(&flag),
                        _ => (*v).to_owned(),
                    })
                })
                .collect()
        };
        for value in values {
            let args = command_line(&sub, &flag, value.as_deref());
            let name = format!("clb {}", args.join(" "));
            let sub = sub.clone();
            jobs.push((
                name,
                Box::new(move || match sub.as_str() {
                    "node" | "sidecar" => run_node(&args),
                    _ => {
                        let out = run_to_end(&args, Duration::from_secs(120));
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        if out.status.success() && !stderr.contains("panicked") {
                            Ok(())
                        } else {
                            Err(format!("exit {:?}; stderr:\n{stderr}", out.status))
                        }
                    }
                }),
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let failures = in_parallel(jobs, 4);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn absurd_values_get_exit_2_and_one_error_line() {
    let mut jobs: Vec<Job> = Vec::new();
    for ((sub, flag), values) in absurd() {
        for value in values {
            let args = command_line(sub, flag, Some(&value));
            let name = format!(
                "clb {sub} --{flag} {:?}",
                value.chars().take(40).collect::<String>()
            );
            jobs.push((
                name,
                Box::new(move || {
                    let out = run_to_end(&args, Duration::from_secs(20));
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let lines: Vec<&str> =
                        stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
                    let one_error_line = lines.len() == 1 && lines[0].starts_with("error: ");
                    if out.status.code() == Some(2) && one_error_line && out.stdout.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("exit {:?}, stderr {stderr:?}", out.status.code()))
                    }
                }),
            ));
        }
    }
    let failures = in_parallel(jobs, 4);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_node_whose_stdout_is_full_serves_anyway_and_stops_cleanly() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = clb()
        .args(command_line("node", "id", Some("full-out")))
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The node says where it serves in its log when the ready line fails.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    let http = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("node log");
        log.push(line.clone());
        if let Some(addr) = line
            .split("http=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
        {
            break addr.parse::<std::net::SocketAddr>().unwrap();
        }
        assert!(Instant::now() < deadline, "{log:?}");
    };
    assert!(
        log.iter()
            .any(|l| l.contains("could not write the ready line")),
        "{log:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (code, _) = runtime
        .block_on(clb_cli::probe::get(http, "/health/live"))
        .unwrap();
    assert_eq!(code, 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{status:?} {rest:?}");
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
}

#[test]
fn a_node_with_quiet_logs_runs_until_it_is_signalled() {
    // At RUST_LOG=warn the node once awaited its signal inside an info! macro,
    // which a disabled level skips: it shut down the moment it started.
    let mut child = clb()
        .env("RUST_LOG", "warn")
        .args(command_line("node", "id", Some("quiet")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let http: std::net::SocketAddr = ready["http"].as_str().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..10 {
        let (code, _) = runtime
            .block_on(clb_cli::probe::get(http, "/health/ready"))
            .unwrap();
        assert_eq!(code, 200, "the node stopped serving");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the node exited on its own"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `clb sidecar` beside a service that is not Rust: a Python 3 script
//! (standard library only, `tests/fixtures/service.py`) holding the counts of
//! three services, driven by three real sidecar processes over real gossip.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clb_cli::probe;
use common::{Node, SERIAL, Spec, formed, metric, metrics, start, status, until};
use serde_json::Value;

/// Starts `python3 script args…` and returns it with the first line it
/// prints; `None` (with a loud message) where Python 3 is missing, which
/// under `CI=true` fails instead.
fn python(script: &str, args: &[&str]) -> Option<(Child, String)> {
    let spawned = Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "\n*** SKIPPED: python3 is not installed ({e}); the sidecar tests need it ***\n"
            );
            return None;
        }
        Err(e) => panic!("python3 is required under CI=true: {e}"),
    };
    // The first line says where it listens; a timeout guards a hang.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => Some((child, line)),
        Err(_) => {
            let _ = child.kill();
            panic!("{script} printed nothing");
        }
    }
}

/// The fixture's bad count answers, and the reason each is counted under.
const BAD_COUNTS: [(&str, &str); 5] = [
    ("garbage", "not_a_number"),
    ("negative", "negative"),
    ("error", "http_error"),
    ("hang", "timeout"),
    ("down", "refused"),
];

/// The Python service; killed on drop.
struct Service {
    _child: Killed,
    ports: Vec<u16>,
    control: u16,
    http: reqwest::Client,
}

impl Service {
    /// Starts the fixture, or `None` (with a loud message) where Python 3 is
    /// missing; under `CI=true` a missing Python fails.
    fn start(counts: &[u64]) -> Option<Service> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/service.py");
        let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
        let counts: Vec<&str> = counts.iter().map(String::as_str).collect();
        let (child, line) = python(script, &counts)?;
        let v: Value = serde_json::from_str(&line).unwrap();
        let ports = v["services"].as_array().unwrap();
        Some(Service {
            _child: Killed(child),
            ports: ports.iter().map(|p| p.as_u64().unwrap() as u16).collect(),
            control: v["control"].as_u64().unwrap() as u16,
            http: reqwest::Client::new(),
        })
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[i])
    }

    async fn state(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/state", self.control);
        let body = self.http.get(url).send().await.unwrap().text().await;
        serde_json::from_str(&body.unwrap()).unwrap()
    }

    async fn set_mode(&self, i: usize, mode: &str) {
        let url = format!("http://127.0.0.1:{}/mode/{i}/{mode}", self.control);
        let r = self.http.post(url).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// A sidecar for service `i`, seeded with `seeds`.
    fn sidecar(&self, i: usize, seeds: &[&Node], extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec![
            "--count-url".into(),
            self.url(i, "/count"),
            "--shed-url".into(),
            self.url(i, "/shed"),
            "--admission-url".into(),
            self.url(i, "/admission"),
            "--admission-every".into(),
            "1s".into(),
            "--advertise-url".into(),
            format!("ws://127.0.0.1:{}/", self.ports[i]),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start(&Spec {
            command: "sidecar",
            seeds: seeds.iter().map(|n| n.gossip()).collect(),
            extra: &args,
            ..Spec::new(["s0", "s1", "s2"][i])
        })
    }
}

fn counts(state: &Value) -> Vec<u64> {
    let counts = state["counts"].as_array().unwrap();
    counts.iter().map(|c| c.as_u64().unwrap()).collect()
}

/// Shed calls the service `i` has answered so far.
fn shed_calls(state: &Value, i: usize) -> usize {
    state["shed_calls"][i].as_array().unwrap().len()
}

fn bad(m: &str, call: &str, reason: &str) -> f64 {
    let series = format!("clb_sidecar_bad_answers_total{{call=\"{call}\",reason=\"{reason}\"}}");
    metric(m, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_balance_a_python_service_from_900_0_0() {
    let _serial = SERIAL.lock().await;
    let Some(service) = Service::start(&[900, 0, 0]) else {
        return;
    };
    let s0 = service.sidecar(0, &[], &[]);
    let s1 = service.sidecar(1, &[&s0], &[]);
    let s2 = service.sidecar(2, &[&s0, &s1], &[]);
    formed(&[&s0, &s1, &s2], 3).await;
    until(Duration::from_secs(60), "balanced within 10%", || async {
        let c = counts(&service.state().await);
        c.iter().all(|&n| (270..=330).contains(&n))
    })
    .await;
    let state = service.state().await;
    assert_eq!(counts(&state).iter().sum::<u64>(), 900, "{state}");
    // Only the overloaded service was told to shed, and never more than it held.
    assert!(shed_calls(&state, 0) >= 1, "{state}");
    assert_eq!(shed_calls(&state, 1) + shed_calls(&state, 2), 0, "{state}");
    // Its clients were steered to the others' advertised URLs.
    let others = [1, 2].map(|i| format!("ws://127.0.0.1:{}/", service.ports[i]));
    for hint in state["hints"][0].as_array().unwrap() {
        assert!(
            others.contains(&hint.as_str().unwrap().to_owned()),
            "{state}"
        );
    }
    // The first service was told to refuse newcomers, then to accept again;
    // the others were only ever told to accept, at least once a second.
    let said = |i: usize| -> Vec<String> {
        let list = state["admissions"][i].as_array().unwrap();
        list.iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let first = said(0);
    let refused_at = first.iter().position(|a| a == "refuse").expect("refused");
    until(Duration::from_secs(10), "accept after refuse", || async {
        let s = service.state().await;
        let list = s["admissions"][0].as_array().unwrap();
        list[refused_at..].iter().any(|a| a == "accept")
            && s["admissions"][1].as_array().unwrap().len() >= 3
    })
    .await;
    assert!(said(1).iter().chain(&said(2)).all(|a| a == "accept"));
    // Every sidecar is ready, and says so on its own endpoint.
    for sidecar in [&s0, &s1, &s2] {
        until(Duration::from_secs(10), "ready", || async {
            probe::get(sidecar.http, "/health/ready")
                .await
                .is_ok_and(|(code, _)| code == 200)
        })
        .await;
    }
    let st = status(&s0).await;
    assert_eq!(st["count_url"], service.url(0, "/count"), "{st}");
    assert!(st["last_bad_answer"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answering_garbage_hanging_or_down_is_survived_and_nothing_is_shed_for_it() {
    let _serial = SERIAL.lock().await;
    let Some(service) = Service::start(&[900, 0, 0]) else {
        return;
    };
    // Bad from the start: the sidecar never sees a count it could act on.
    service.set_mode(0, "garbage").await;
    let s0 = service.sidecar(0, &[], &[]);
    let s1 = service.sidecar(1, &[&s0], &[]);
    let s2 = service.sidecar(2, &[&s0, &s1], &[]);
    for (mode, reason) in BAD_COUNTS {
        service.set_mode(0, mode).await;
        let before = bad(&metrics(&s0).await, "count", reason);
        until(
            Duration::from_secs(15),
            &format!("two {mode} answers counted"),
            || async {
                bad(&metrics(&s0).await, "count", reason) >= before + 2.0
                    && status(&s0).await["last_outcome"]["reason"] == "count_failed"
            },
        )
        .await;
        let state = service.state().await;
        assert_eq!(counts(&state), [900, 0, 0], "{mode}: {state}");
        assert_eq!(shed_calls(&state, 0), 0, "{mode}: shed on a guess: {state}");
        let st = status(&s0).await;
        assert!(st["last_bad_answer"].is_string(), "{st}");
        assert_eq!(st["shed_total"], 0, "{st}");
        assert_ne!(
            probe::get(s0.http, "/health/live").await.unwrap().0,
            0,
            "alive"
        );
    }
    // Each reason was logged, and at a bounded rate.
    let log = s0.log();
    for (_, reason) in BAD_COUNTS {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(reason)),
            "no warning for {reason}:\n{log}"
        );
    }
    // A service that sheds but answers nonsense: the shed is not believed.
    service.set_mode(0, "shed-garbage").await;
    until(Duration::from_secs(30), "a shed answer refused", || async {
        bad(&metrics(&s0).await, "shed", "not_a_number") >= 1.0
    })
    .await;
    // Back to health: the same sidecars balance it.
    service.set_mode(0, "ok").await;
    formed(&[&s0, &s1, &s2], 3).await;
    until(Duration::from_secs(60), "balanced within 10%", || async {
        let c = counts(&service.state().await);
        c.iter().all(|&n| (270..=330).contains(&n))
    })
    .await;
    assert_eq!(counts(&service.state().await).iter().sum::<u64>(), 900);
    drop((s1, s2));
}

/// SPEC §7's metrics, each with a help text, on `clb node` and `clb sidecar`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_metric_is_exported_with_help_by_node_and_sidecar() {
    let _serial = SERIAL.lock().await;
    let Some(service) = Service::start(&[5]) else {
        return;
    };
    let node = start(&Spec::new("n0"));
    let sidecar = service.sidecar(0, &[], &[]);
    for member in [&node, &sidecar] {
        until(Duration::from_secs(10), "a round decided", || async {
            status(member).await["last_round"].as_u64().is_some()
        })
        .await;
        let m = metrics(member).await;
        for name in [
            "clb_rounds_total",
            "clb_shed_total",
            "clb_resource_count",
            "clb_cluster_members",
            "clb_round_duration_seconds",
            "clb_rejected_messages_total",
        ] {
            assert!(
                m.contains(&format!("# HELP {name} ")),
                "{}: no help for {name}:\n{m}",
                member.id
            );
            assert!(
                m.lines().any(|l| l.starts_with(name)),
                "{}: no series of {name}:\n{m}",
                member.id
            );
        }
    }
    assert!(
        metrics(&sidecar)
            .await
            .contains("# HELP clb_sidecar_bad_answers_total ")
    );
}

/// The README's example service (`examples/python/service.py`) is what it
/// claims: a sidecar reads its count and makes it shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_example_is_balanced_by_a_sidecar() {
    let _serial = SERIAL.lock().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/service.py"
    );
    let mut services = Vec::new();
    for sessions in ["100", "0"] {
        let Some((child, line)) = python(script, &["0", sessions]) else {
            return;
        };
        let port: u16 = line.strip_prefix("listening on ").unwrap().parse().unwrap();
        services.push((Killed(child), port));
    }
    let flags = |port: u16| {
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        [
            "--count-url".to_owned(),
            url("/count"),
            "--shed-url".to_owned(),
            url("/shed"),
            "--admission-url".to_owned(),
            url("/admission"),
        ]
    };
    let a_flags = flags(services[0].1);
    let a_flags: Vec<&str> = a_flags.iter().map(String::as_str).collect();
    let a = start(&Spec {
        command: "sidecar",
        extra: &a_flags,
        ..Spec::new("a")
    });
    let b_flags = flags(services[1].1);
    let b_flags: Vec<&str> = b_flags.iter().map(String::as_str).collect();
    let b = start(&Spec {
        command: "sidecar",
        seeds: vec![a.gossip()],
        extra: &b_flags,
        ..Spec::new("b")
    });
    formed(&[&a, &b], 2).await;
    until(Duration::from_secs(20), "the example shed", || async {
        status(&a).await["shed_total"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    let (_, metrics) = probe::get(a.http, "/metrics").await.unwrap();
    for (_, reason) in BAD_COUNTS {
        assert_eq!(bad(&metrics, "count", reason), 0.0, "{metrics}");
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

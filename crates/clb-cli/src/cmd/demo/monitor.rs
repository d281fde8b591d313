//! Watches the cluster: polls every node's `/status` a few times a second,
//! keeps the history for the summary and the chart, and draws the live view.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::probe;
use crate::swarm::SwarmStats;

/// What the demo is doing, for the header line and the chart.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Starting,
    Connecting,
    Steady,
    Restarting(usize),
    Balancing,
    Done,
}

impl Phase {
    fn describe(&self, ids: &[String]) -> String {
        match self {
            Phase::Starting => "starting nodes".into(),
            Phase::Connecting => "connecting clients".into(),
            Phase::Steady => "steady".into(),
            Phase::Restarting(i) => format!(
                "rolling restart: {}",
                ids.get(*i).map_or("?", String::as_str)
            ),
            Phase::Balancing => "rebalancing".into(),
            Phase::Done => "done".into(),
        }
    }
}

/// One node at one instant. `None` counts: the node did not answer (down).
#[derive(Clone, Debug, Default)]
pub struct NodeSample {
    pub count: Option<u64>,
    pub shed_total: Option<u64>,
    pub accepting: bool,
    pub rebalancing: bool,
}

/// Every node at one instant.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the clients started.
    pub t: f64,
    pub nodes: Vec<NodeSample>,
}

/// Shared between the orchestration and the monitor task.
pub struct Watch {
    pub ids: Vec<String>,
    /// Each node's HTTP address; a restarted node gets a new one.
    http: Mutex<Vec<SocketAddr>>,
    pub phase: Mutex<Phase>,
    pub down: Mutex<Vec<bool>>,
    pub samples: Mutex<Vec<Sample>>,
    /// (seconds, what): restarts and milestones, for the chart.
    pub marks: Mutex<Vec<(f64, String)>>,
    pub t0: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watch {
    pub fn new(ids: Vec<String>, http: Vec<SocketAddr>) -> Arc<Self> {
        let n = ids.len();
        Arc::new(Watch {
            ids,
            http: Mutex::new(http),
            phase: Mutex::new(Phase::Starting),
            down: Mutex::new(vec![false; n]),
            samples: Mutex::new(Vec::new()),
            marks: Mutex::new(Vec::new()),
            t0: Mutex::new(None),
        })
    }

    pub fn set_phase(&self, phase: Phase) {
        *lock(&self.phase) = phase;
    }

    pub fn set_down(&self, i: usize, down: bool) {
        lock(&self.down)[i] = down;
    }

    /// Node `i` answers on `addr` from now on.
    pub fn set_http(&self, i: usize, addr: SocketAddr) {
        if let Some(slot) = lock(&self.http).get_mut(i) {
            *slot = addr;
        }
    }

    /// Seconds since the clients started (0 before).
    pub fn now(&self) -> f64 {
        lock(&self.t0).map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    pub fn mark(&self, what: impl Into<String>) {
        self.mark_at(self.now(), what);
    }

    /// Marks something that happened `t` seconds after the clients started.
    pub fn mark_at(&self, t: f64, what: impl Into<String>) {
        lock(&self.marks).push((t, what.into()));
    }

    pub fn last(&self) -> Option<Sample> {
        lock(&self.samples).last().cloned()
    }

    pub fn history(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    async fn sample(&self) -> Sample {
        let down = lock(&self.down).clone();
        let http = lock(&self.http).clone();
        let mut nodes = Vec::with_capacity(http.len());
        for (i, addr) in http.iter().enumerate() {
            let status = if down[i] {
                None
            } else {
                probe::get_json(*addr, "/status").await.ok()
            };
            nodes.push(match status {
                Some(s) => NodeSample {
                    count: s["count"].as_u64(),
                    shed_total: s["shed_total"].as_u64(),
                    accepting: s["accepting"].as_bool().unwrap_or(true),
                    rebalancing: s["rebalancing"].as_bool().unwrap_or(false),
                },
                None => NodeSample::default(),
            });
        }
        Sample {
            t: self.now(),
            nodes,
        }
    }
}

/// Polls every 250 ms and redraws: bars when stdout is a terminal (or
/// stderr, with `--json`), else a plain line per second.
pub async fn run(watch: Arc<Watch>, stats: Arc<SwarmStats>, clients: u64, to_stderr: bool) {
    let terminal = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let mut view = terminal.then(|| Bars::new(&watch.ids, to_stderr));
    let mut last_line = Instant::now() - Duration::from_secs(2);
    let mut prev: Option<Sample> = None;
    loop {
        let sample = watch.sample().await;
        let phase = lock(&watch.phase).clone();
        let connected = stats.connected.load(Ordering::Relaxed);
        if let Some(bars) = view.as_mut() {
            bars.draw(&watch, &phase, &sample, prev.as_ref(), connected, clients);
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let counts: Vec<String> = sample
                .nodes
                .iter()
                .map(|n| n.count.map_or("down".into(), |c| c.to_string()))
                .collect();
            let line = format!(
                "t={:>5.1}s  {:<28} counts [{}]  connected {connected}/{clients}",
                sample.t,
                phase.describe(&watch.ids),
                counts.join(", ")
            );
            if to_stderr {
                eprintln!("{line}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        }
        if lock(&watch.t0).is_some() {
            lock(&watch.samples).push(sample.clone());
        }
        prev = Some(sample);
        if phase == Phase::Done {
            if let Some(bars) = view {
                bars.finish();
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The terminal view: a header and one bar per node.
struct Bars {
    _multi: MultiProgress,
    header: ProgressBar,
    nodes: Vec<ProgressBar>,
}

impl Bars {
    fn new(ids: &[String], to_stderr: bool) -> Self {
        let target = if to_stderr {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::stdout_with_hz(8)
        };
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            header.set_style(style);
        }
        let style = ProgressStyle::with_template("{prefix:>4} {bar:40.cyan/blue} {msg}")
            .map(|s| s.progress_chars("█▌ "))
            .ok();
        let nodes = ids
            .iter()
            .map(|id| {
                let bar = multi.add(ProgressBar::new(1));
                if let Some(style) = &style {
                    bar.set_style(style.clone());
                }
                bar.set_prefix(id.clone());
                bar
            })
            .collect();
        Bars {
            _multi: multi,
            header,
            nodes,
        }
    }

    fn draw(
        &mut self,
        watch: &Watch,
        phase: &Phase,
        s: &Sample,
        prev: Option<&Sample>,
        connected: u64,
        clients: u64,
    ) {
        let up: Vec<u64> = s.nodes.iter().filter_map(|n| n.count).collect();
        let total: u64 = up.iter().sum();
        let target = if up.is_empty() {
            0.0
        } else {
            total as f64 / up.len() as f64
        };
        let scale = (target * 2.0)
            .max(up.iter().copied().max().unwrap_or(0) as f64)
            .max(1.0) as u64;
        self.header.set_message(format!(
            "{:>5.1}s  {}   clients connected {connected}/{clients}",
            s.t,
            phase.describe(&watch.ids)
        ));
        self.header.tick();
        for (i, (bar, node)) in self.nodes.iter().zip(&s.nodes).enumerate() {
            bar.set_length(scale);
            let shed_now = prev
                .and_then(|p| p.nodes.get(i))
                .and_then(|p| Some(node.shed_total? > p.shed_total?))
                .unwrap_or(false);
            let state = if node.count.is_none() {
                "restarting".to_owned()
            } else {
                let mut parts = Vec::new();
                if shed_now {
                    parts.push("shedding");
                }
                if !node.accepting {
                    parts.push("refusing");
                }
                if parts.is_empty() {
                    "up".to_owned()
                } else {
                    parts.join(", ")
                }
            };
            bar.set_position(node.count.unwrap_or(0));
            bar.set_message(format!(
                "{:>6} / target {:>6.0}   shed {:>6}   {state}",
                node.count.map_or("-".into(), |c| c.to_string()),
                target,
                node.shed_total.map_or("-".into(), |c| c.to_string()),
            ));
        }
    }

    fn finish(self) {
        // Leave the last picture on screen as it is.
        self.header.abandon();
        for bar in self.nodes {
            bar.abandon();
        }
    }
}

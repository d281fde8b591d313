//! `clb demo`: a real local cluster rebalancing real WebSocket clients after
//! a rolling restart, shown live (SPEC §2, §6).
//!
//! The story: N `clb node` processes on loopback (real gossip, real
//! WebSocket servers); M real clients connect to random nodes, as behind an
//! external random load balancer; every node is restarted in turn (graceful
//! stop, its clients move, it comes back empty); then the balancer evens the
//! cluster out. A summary, and with `--json` the SPEC §6 object, at the end.

mod cluster;
mod monitor;
mod plot;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use clb::core::Strategy;
use clb_sim::metrics;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::{Instant, sleep};

use self::cluster::Cluster;
use self::monitor::{Phase, Sample, Watch};
use crate::args::{ConfigArgs, GossipArgs, LimitArgs, parse_duration};
use crate::config_file::{self, ConfigPath, FileConfig, layer};
use crate::probe;
use crate::swarm::{Swarm, SwarmConfig};

/// Run the demo: a local cluster, a rolling restart, a live view.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    file: ConfigPath,
    #[command(flatten)]
    demo: DemoFields,
    #[command(flatten)]
    config: ConfigArgs,
}

/// The demo's own settings: `[demo]` in `clb.toml`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoFields {
    /// Node processes to start (default: 4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    /// WebSocket clients to connect, one task each (default: 4000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<usize>,
    /// Pause between one node being back and the next one stopping. Shorter
    /// than two rounds, the balancer holds (settles) through the whole
    /// deploy, as it should: nothing is shed into nodes about to restart
    /// (default: 1s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(
        default,
        with = "crate::args::serde_dur",
        skip_serializing_if = "Option::is_none"
    )]
    restart_gap: Option<Duration>,
    /// Seeds the clients' choices (default: 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Share of clients that follow steering hints, 0 to 1 (default: 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    hint_followers: Option<f64>,
    /// Give up waiting for balance this many rounds after the restart
    /// (default: 90).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_rounds: Option<u32>,
    /// Print the SPEC §6 JSON object at the end (the live view goes to stderr).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    json: bool,
    /// Write an SVG chart of per-node counts over time.
    #[arg(long, value_name = "FILE.svg")]
    #[serde(skip_serializing_if = "Option::is_none")]
    plot: Option<PathBuf>,
}

/// The demo's settings, layered and checked.
#[derive(Debug)]
struct Demo {
    nodes: usize,
    clients: usize,
    restart_gap: Duration,
    seed: u64,
    hint_followers: f64,
    max_rounds: u32,
    json: bool,
    plot: Option<PathBuf>,
    /// The nodes' decision config, as every node gets it.
    config: ConfigArgs,
}

/// File descriptors each process needs beyond its connections (a node's
/// pending-connection bound, twice, and the rest).
const FD_OVERHEAD: u64 = 512;
/// The pending-connection bound of the demo's nodes.
const NODE_PENDING: usize = 64;

impl DemoArgs {
    fn resolve(&self) -> anyhow::Result<Demo> {
        let file = config_file::load(self.file.config.as_deref())?;
        let d = layer(&self.demo, file.demo.as_ref())?;
        let mut config = layer(&self.config, file.balancer.as_ref())?;
        // Rounds of a second keep the demo to about a minute.
        config.round_duration.get_or_insert(Duration::from_secs(1));
        let demo = Demo {
            nodes: d.nodes.unwrap_or(4),
            clients: d.clients.unwrap_or(4000),
            restart_gap: d.restart_gap.unwrap_or(Duration::from_secs(1)),
            seed: d.seed.unwrap_or(1),
            hint_followers: d.hint_followers.unwrap_or(0.0),
            max_rounds: d.max_rounds.unwrap_or(90),
            json: d.json,
            plot: d.plot,
            config,
        };
        if !(2..=16).contains(&demo.nodes) {
            bail!("nodes must be in [2, 16], got {}", demo.nodes);
        }
        if !(1..=100_000).contains(&demo.clients) {
            bail!("clients must be in [1, 100000], got {}", demo.clients);
        }
        if !(0.0..=1.0).contains(&demo.hint_followers) {
            bail!(
                "hint_followers must be in [0, 1], got {}",
                demo.hint_followers
            );
        }
        if demo.restart_gap > Duration::from_secs(60) {
            bail!(
                "restart_gap must be in [0s, 60s], got {:?}",
                demo.restart_gap
            );
        }
        if !(1..=10_000).contains(&demo.max_rounds) {
            bail!("max_rounds must be in [1, 10000], got {}", demo.max_rounds);
        }
        if let Some(path) = &demo.plot {
            crate::cmd::check_writable(path).context("--plot")?;
        }
        Ok(demo)
    }
}

/// Runs the demo to its summary; every node process is gone when it returns.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let args = args.resolve()?;
    let config = args.config.to_config()?;
    ensure_fd_limit(args.clients as u64 + FD_OVERHEAD)?;
    if !args.json {
        crate::cmd::init_tracing();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = demo(&args, &config) => result,
            _ = tokio::signal::ctrl_c() => {
                // Dropping `demo` dropped the cluster: every node is killed.
                eprintln!("interrupted: every node process was stopped");
                Ok(())
            }
        }
    })
}

/// Raises the open-file limit if it can, and refuses clearly if it cannot.
fn ensure_fd_limit(needed: u64) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let got = rlimit::increase_nofile_limit(needed).unwrap_or(0);
        if got < needed {
            bail!(
                "the open-file limit is {got}, too low for this many clients (need at least {needed}): \
                 raise it with `ulimit -n {}` in this shell, or pass fewer --clients",
                needed.next_power_of_two()
            );
        }
    }
    let _ = needed;
    Ok(())
}

async fn demo(args: &Demo, config: &clb::Config) -> anyhow::Result<()> {
    let round = config.round_duration;
    let log_dir = std::env::temp_dir().join(format!("clb-demo-{}", std::process::id()));
    // The nodes get their settings the way a user's nodes would: a file.
    let node_config = FileConfig {
        balancer: Some(args.config.clone()),
        gossip: Some(GossipArgs {
            // Gossip well inside a round, so reports are always fresh.
            gossip_interval: Some(
                (round / 5).clamp(Duration::from_millis(50), Duration::from_millis(250)),
            ),
            ..GossipArgs::default()
        }),
        limits: Some(LimitArgs {
            // Any node may briefly hold every client.
            max_connections: Some(args.clients),
            max_pending_connections: Some(NODE_PENDING),
            ..LimitArgs::default()
        }),
        ..FileConfig::default()
    };
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let node_toml = log_dir.join("node.toml");
    std::fs::write(&node_toml, toml::to_string(&node_config)?)
        .with_context(|| format!("writing {}", node_toml.display()))?;
    let node_args = vec!["--config".to_owned(), node_toml.display().to_string()];
    let out_is_json = args.json;
    let say = |line: String| {
        if out_is_json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "clb demo: {} nodes, {} clients, strategy {}, rounds of {:?}; node logs in {}",
        args.nodes,
        args.clients,
        config.strategy,
        round,
        log_dir.display()
    ));

    let mut cluster = Cluster::start(args.nodes, node_args, &log_dir).await?;
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let bound: Vec<_> = cluster.nodes.iter().filter_map(|n| n.bound).collect();
    let watch = Watch::new(ids.clone(), bound.iter().map(|b| b.http).collect());
    for b in &bound {
        wait_members(b.http, args.nodes, Duration::from_secs(30)).await?;
    }

    watch.set_phase(Phase::Connecting);
    let swarm = Swarm::start(SwarmConfig {
        nodes: bound.iter().map(|b| format!("ws://{}/ws", b.ws)).collect(),
        clients: args.clients,
        seed: args.seed,
        backoff: (Duration::from_millis(50), Duration::from_millis(500)),
        hint_followers: args.hint_followers,
        first_node: None,
    });
    let stats = swarm.stats_handle();
    *watch.t0.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    let monitor = tokio::spawn(monitor::run(
        Arc::clone(&watch),
        Arc::clone(&stats),
        args.clients as u64,
        args.json,
    ));
    let clients = args.clients as u64;
    wait_for(Duration::from_secs(60), "every client to connect", || {
        stats.connected.load(Ordering::Relaxed) == clients
    })
    .await?;
    watch.set_phase(Phase::Steady);
    watch.mark("clients connected");
    sleep(round * 3).await;

    for (i, id) in ids.iter().enumerate() {
        watch.set_phase(Phase::Restarting(i));
        watch.mark(format!("restart {id}"));
        watch.set_down(i, true);
        cluster.stop(i).await?;
        let fresh = cluster.spawn(i).await?;
        swarm.set_node(i, format!("ws://{}/ws", fresh.ws));
        watch.set_http(i, fresh.http);
        watch.set_down(i, false);
        for b in cluster.nodes.iter().filter_map(|n| n.bound) {
            wait_members(b.http, args.nodes, Duration::from_secs(30)).await?;
        }
        if i + 1 < args.nodes {
            sleep(args.restart_gap).await;
        }
    }
    watch.set_phase(Phase::Balancing);
    watch.mark("restart done");
    let restart_done = Instant::now();
    let restart_done_t = watch.now();
    let at_restart_done = sample_now(&watch).await;

    // Done when the balancer has stopped acting: nothing shed for two
    // rounds, every client back, and the strategy content with what it sees.
    let deadline = restart_done + round * args.max_rounds;
    let mut last_shed_at = restart_done;
    let mut last_shed = total_shed(&at_restart_done);
    let settled = loop {
        sleep(Duration::from_millis(250)).await;
        let Some(s) = watch.last() else { continue };
        let shed = total_shed(&s);
        if shed != last_shed {
            last_shed = shed;
            last_shed_at = Instant::now();
        }
        let quiet = last_shed_at.elapsed() >= round * 2;
        let all_back = stats.connected.load(Ordering::Relaxed) == clients;
        if quiet && all_back && content(&s, config) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    let seconds_to_balance =
        settled.then(|| last_shed_at.duration_since(restart_done).as_secs_f64());
    if let Some(secs) = seconds_to_balance {
        watch.mark_at(restart_done_t + secs, format!("balanced (+{secs:.1}s)"));
    }
    // Clients in their backoff pause are not lost: give them a moment.
    let _ = wait_for(Duration::from_secs(5), "", || {
        stats.connected.load(Ordering::Relaxed) == clients
    })
    .await;
    let end = sample_now(&watch).await;
    let connected_at_end = stats.connected.load(Ordering::Relaxed);
    watch.set_phase(Phase::Done);
    let _ = monitor.await;
    let history = watch.history();
    let marks = watch
        .marks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();

    let final_counts: Vec<u64> = end.nodes.iter().map(|n| n.count.unwrap_or(0)).collect();
    let start_counts: Vec<u64> = at_restart_done
        .nodes
        .iter()
        .map(|n| n.count.unwrap_or(0))
        .collect();
    let total_shed = total_shed(&end).saturating_sub(total_shed(&at_restart_done));
    let ideal_shed = metrics::ideal_shed(&start_counts);
    let rounds = seconds_to_balance.map(|s| (s / round.as_secs_f64()).ceil() as u64);
    let swarm_stats = swarm.stats();
    let summary = json!({
        "nodes": args.nodes,
        "clients": args.clients,
        "connected_at_end": connected_at_end,
        "lost_clients": clients.saturating_sub(connected_at_end),
        "rounds": rounds,
        "seconds_to_balance": seconds_to_balance.map(|s| (s * 10.0).round() / 10.0),
        "total_shed": total_shed,
        "ideal_shed": ideal_shed,
        "churn_ratio": metrics::churn_ratio(total_shed, ideal_shed),
        "final_counts": final_counts,
        "max_deviation_percent": (metrics::max_deviation_percent(&final_counts) * 10.0).round() / 10.0,
        "strategy": config.strategy.as_str(),
        "round_duration_ms": round.as_millis() as u64,
        "balanced": settled,
        "counts_after_restart": start_counts,
        "closed_1012": swarm_stats.closed_1012.load(Ordering::Relaxed),
        "refused_503": swarm_stats.refused_503.load(Ordering::Relaxed),
        "node_pids": cluster.nodes.iter().flat_map(|n| n.pids.iter().copied()).collect::<Vec<u32>>(),
        "node_ports": cluster.nodes.iter().flat_map(|n| n.history.iter().map(|b| json!({"id": n.id, "ws": b.ws.to_string(), "http": b.http.to_string(), "gossip": b.gossip.to_string()}))).collect::<Vec<_>>(),
    });
    swarm.stop().await;
    cluster.shutdown().await;
    if !cluster.all_gone() {
        bail!("some node processes did not exit");
    }
    if let Some(path) = &args.plot {
        plot::write(path, &ids, &history, &marks, config.strategy)?;
    }
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{summary}")?;
    } else {
        write_words(&mut out, &summary, args.plot.as_ref())?;
    }
    Ok(())
}

async fn sample_now(watch: &Watch) -> Sample {
    // The monitor samples every 250 ms; wait for a fresh one.
    let before = watch.last().map_or(-1.0, |s| s.t);
    for _ in 0..20 {
        if let Some(s) = watch.last().filter(|s| s.t > before) {
            return s;
        }
        sleep(Duration::from_millis(50)).await;
    }
    watch.last().unwrap_or(Sample {
        t: 0.0,
        nodes: Vec::new(),
    })
}

fn total_shed(s: &Sample) -> u64 {
    s.nodes.iter().filter_map(|n| n.shed_total).sum()
}

/// Whether the strategy is content with the cluster: no node above the
/// average by more than the allowed deviation (classic), or no node in an
/// active rebalance (proportional: every node inside the band it stops at).
fn content(s: &Sample, config: &clb::Config) -> bool {
    let counts: Vec<u64> = s.nodes.iter().filter_map(|n| n.count).collect();
    if counts.len() != s.nodes.len() {
        return false;
    }
    match config.strategy {
        Strategy::Classic => {
            metrics::within_classic(&counts, config.allowed_average_deviation_percent)
        }
        _ => s.nodes.iter().all(|n| !n.rebalancing),
    }
}

async fn wait_members(addr: std::net::SocketAddr, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = probe::get_json(addr, "/status").await {
            if s["members"].as_array().is_some_and(|m| m.len() == n) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("the node at {addr} did not see {n} members within {limit:?}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(limit: Duration, what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn write_words(
    out: &mut impl Write,
    s: &serde_json::Value,
    plot: Option<&PathBuf>,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{} nodes, {} clients, strategy {}.",
        s["nodes"],
        s["clients"],
        s["strategy"].as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "Right after the rolling restart the counts were {}.",
        s["counts_after_restart"]
    )?;
    match s["seconds_to_balance"].as_f64() {
        Some(secs) => writeln!(
            out,
            "The cluster was balanced {secs:.1} s ({} rounds) later, shedding {} connections \
             where {} moves were the least possible (churn {}).",
            s["rounds"], s["total_shed"], s["ideal_shed"], s["churn_ratio"]
        )?,
        None => writeln!(
            out,
            "The cluster did not balance within the time allowed; {} connections were shed.",
            s["total_shed"]
        )?,
    }
    writeln!(
        out,
        "Final counts {}: the largest gap to the fair share is {}%.",
        s["final_counts"], s["max_deviation_percent"]
    )?;
    writeln!(
        out,
        "{} of {} clients connected at the end ({} lost); every node process has exited.",
        s["connected_at_end"], s["clients"], s["lost_clients"]
    )?;
    if let Some(path) = plot {
        writeln!(out, "Chart written to {}.", path.display())?;
    }
    Ok(())
}

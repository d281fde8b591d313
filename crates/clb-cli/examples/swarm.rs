//! A swarm of real WebSocket clients for the chaos run and the soak
//! (scripts/chaos.py, scripts/soak.py): they connect through a random
//! "load balancer" over the given nodes, follow steering hints, come back
//! after every close, and the swarm writes its counters as JSON to a file
//! every second until it is told to stop (SIGTERM or Ctrl-C).
//!
//! ```sh
//! cargo run --release -p clb-cli --example swarm -- \
//!     --nodes ws://10.77.0.1:8080/ws,ws://10.77.0.2:8080/ws --clients 1000 --stats swarm.json
//! ```

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use clb_cli::swarm::{Swarm, SwarmConfig};

#[derive(Parser)]
struct Args {
    /// The nodes' WebSocket URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// How many clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seeds every client's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Every client connects to this node (0-based) first: a lopsided start.
    #[arg(long)]
    first_node: Option<usize>,
    /// Where to write the counters, every second.
    #[arg(long)]
    stats: PathBuf,
}

/// Refuses what cannot work before any client starts: one `error:` line,
/// exit 2, as the `clb` command does.
fn refuse(what: String) -> ! {
    eprintln!("error: {what}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(i) = args.first_node.filter(|&i| i >= args.nodes.len()) {
        refuse(format!(
            "--first-node {i}: there are {} nodes (0-based)",
            args.nodes.len()
        ));
    }
    if let Err(e) = std::fs::write(&args.stats, "{}") {
        refuse(format!("--stats {}: {e}", args.stats.display()));
    }
    rlimit::increase_nofile_limit(args.clients as u64 * 2 + 256)?;
    let swarm = Swarm::start(SwarmConfig {
        nodes: args.nodes,
        clients: args.clients,
        seed: args.seed,
        backoff: (Duration::from_millis(50), Duration::from_millis(500)),
        hint_followers: 0.5,
        first_node: args.first_node,
    });
    let stats = swarm.stats_handle();
    let write = |stopping: bool| -> anyhow::Result<()> {
        let s = &stats;
        let json = serde_json::json!({
            "clients": args.clients,
            "connected": s.connected.load(Ordering::Relaxed),
            "closed_1012": s.closed_1012.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "refused_503": s.refused_503.load(Ordering::Relaxed),
            "connect_failures": s.connect_failures.load(Ordering::Relaxed),
            "connects": s.connects.load(Ordering::Relaxed),
            "hinted_connects": s.hinted_connects.load(Ordering::Relaxed),
            "stopping": stopping,
        });
        let tmp = args.stats.with_extension("tmp");
        std::fs::write(&tmp, json.to_string())?;
        std::fs::rename(&tmp, &args.stats)?;
        Ok(())
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = clb::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => write(false)?,
        }
    }
    write(true)?;
    swarm.stop().await;
    Ok(())
}

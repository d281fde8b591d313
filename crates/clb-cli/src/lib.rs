//! The `clb` command, as a library: the binary in `main.rs` only parses the
//! command line and calls [`run`]. Tests and the demo reuse the pieces (the
//! WebSocket client swarm, the HTTP probe).

pub mod args;
pub mod cmd;
pub mod probe;
pub mod swarm;

use clap::{Parser, Subcommand};

/// Keeps long-lived resources evenly spread over the nodes of a cluster.
#[derive(Parser, Debug)]
#[command(name = "clb", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job: a real local cluster, a rolling restart, a live view of
    /// the balancer evening it out.
    Demo(cmd::demo::DemoArgs),
    /// Run one real cluster node: a WebSocket server, the balancer, gossip,
    /// and /metrics, /status, /health/ready over HTTP.
    Node(cmd::node::NodeArgs),
    /// Simulate the algorithm with the real decision code (deterministic, seeded).
    Simulate(cmd::simulate::SimulateArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
    }
}

/// Whether an error is only "the reader went away" (`clb ... | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

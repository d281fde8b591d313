//! The `clb` command, as a library: the binary in `main.rs` only parses the
//! command line and calls [`run`]. Tests and the demo reuse the pieces (the
//! WebSocket client swarm, the HTTP probe).

pub mod args;
pub mod backend;
pub mod cmd;
pub mod config_file;
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
    Node(Box<cmd::node::NodeArgs>),
    /// Run the balancer beside a service in any language: counts and sheds
    /// over HTTP, admission on /health/ready.
    Sidecar(Box<cmd::sidecar::SidecarArgs>),
    /// Simulate the algorithm with the real decision code (deterministic, seeded).
    Simulate(cmd::simulate::SimulateArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Node(args) => cmd::node::run(*args),
        Command::Sidecar(args) => cmd::sidecar::run(*args),
        Command::Simulate(args) => cmd::simulate::run(args),
    }
}

/// Prints a command-line error the way every other error is printed: one
/// `error:` line, exit 2. Help and version go to stdout, exit 0.
pub fn report_usage_error(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            std::process::ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!(
                "error: a subcommand is required: demo, node, sidecar or simulate (see clb --help)"
            );
            std::process::ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid command line");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {}", one_line(message));
            std::process::ExitCode::from(2)
        }
    }
}

/// `s` on one line: line breaks become "; ", control characters are dropped,
/// and it is cut at 1,000 characters (a value echoed back can be huge).
pub fn one_line(s: &str) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out: String = joined
        .chars()
        .filter(|c| !c.is_control())
        .take(1000)
        .collect();
    if joined.chars().count() > 1000 {
        out.push('…');
    }
    out
}

/// Whether an error is only "the reader went away" (`clb ... | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

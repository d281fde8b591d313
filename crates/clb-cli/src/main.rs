//! `clb`: run, simulate and demonstrate cluster-load-balancer.

mod args;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps long-lived resources evenly spread over the nodes of a cluster.
#[derive(Parser, Debug)]
#[command(name = "clb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate the algorithm with the real decision code (deterministic, seeded).
    Simulate(cmd::simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => cmd::simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`clb simulate | head`): nothing left to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole chain, no backtrace: this is for a person.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

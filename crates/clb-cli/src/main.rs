//! `clb`: run, simulate and demonstrate cluster-load-balancer.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match clb_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clb_cli::report_usage_error(&e),
    };
    match clb_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`clb simulate | head`): nothing left to say.
        Err(e) if clb_cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole chain, no backtrace: this is for a person.
            eprintln!("error: {}", clb_cli::one_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

//! One module per subcommand.

mod chart;
pub mod demo;
pub mod node;
pub mod simulate;

/// Logs to stderr, `RUST_LOG` honoured (default: info for clb, warn else).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,clb=info,clb_cli=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

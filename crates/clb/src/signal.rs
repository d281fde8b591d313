//! Waiting for the signal to stop, for a service's graceful shutdown.

use std::future::Future;

/// Resolves on SIGTERM (what orchestrators send) or Ctrl-C, naming which.
/// The handlers are installed when this is called, not when it is first
/// polled: call it before announcing that the service is ready, so a
/// signal sent the moment after is not missed.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let stop = clb::shutdown_signal(); // before "ready"
/// println!("ready");
/// let which = stop.await;
/// println!("{which}: shutting down");
/// # }
/// ```
pub fn shutdown_signal() -> impl Future<Output = &'static str> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

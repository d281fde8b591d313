//! Serving an axum app on a listener that hostile clients cannot exhaust.
//!
//! `axum::serve` has no bound on connections and no timeouts, so ~1,000
//! silent TCP connections at the default open-file limit stopped a node
//! from taking WebSocket upgrades and answering `/health`. Here:
//!
//! - at most `max_pending` connections per listener that have not become
//!   something else yet (a handshake, an HTTP exchange); one more is
//!   answered `503` and closed at once, counted and logged (rate-limited);
//! - request headers must arrive within the handshake timeout, and an idle
//!   keep-alive connection is closed after it (hyper's header read timeout
//!   runs from the moment a connection waits for a request);
//! - a connection that has not finished within `max_lifetime` (a client
//!   that never reads its response, say) is dropped;
//! - an `accept` error (out of file descriptors) is logged, rate-limited,
//!   and the loop backs off instead of spinning;
//! - stopping closes idle connections at once and gives busy ones a grace
//!   period.
//!
//! A WebSocket upgrade leaves this accounting once upgraded: its limits are
//! the registry's and the session's.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use clb::ratelimit::RateLimiter;

/// Counter: connections refused before any request, by `listener` and
/// `reason` (`pending_full`).
pub const REFUSED_CONNECTIONS: &str = "clb_refused_connections_total";
/// Counter: connections dropped by the server, by `listener` and `reason`
/// (`handshake_timeout`, `lifetime`, `http_error`).
pub const DROPPED_CONNECTIONS: &str = "clb_dropped_connections_total";

/// The bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections not upgraded (yet) at once.
    pub max_pending: usize,
    /// Longest request headers may take, and longest a connection idles.
    pub handshake_timeout: Duration,
    /// Longest a connection may live before it upgrades or ends.
    pub max_lifetime: Duration,
}

/// Serves `app` on `listener` until `stop` turns true; then waits up to
/// `grace` for connections in flight.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    metrics::counter!(REFUSED_CONNECTIONS, "listener" => name, "reason" => "pending_full")
        .increment(0);
    for reason in ["handshake_timeout", "lifetime", "http_error"] {
        metrics::counter!(DROPPED_CONNECTIONS, "listener" => name, "reason" => reason).increment(0);
    }
    let pending = Arc::new(Semaphore::new(limits.max_pending));
    let log = Arc::new(RateLimiter::default());
    let mut connections = JoinSet::new();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                        refuse(stream);
                        metrics::counter!(REFUSED_CONNECTIONS, "listener" => name, "reason" => "pending_full").increment(1);
                        if let Some(n) = log.hit("pending_full") {
                            tracing::warn!(listener = name, %peer, refused = n,
                                "refused {n} connection(s): {} connections are already waiting for a handshake or a response (--max-pending-connections)",
                                limits.max_pending);
                        }
                        continue;
                    };
                    let app = app.clone();
                    let stop = conn_stop.clone();
                    let log = Arc::clone(&log);
                    connections.spawn(async move {
                        serve_one(name, stream, app, limits, stop, &log).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    if let Some(n) = log.hit("accept") {
                        tracing::warn!(listener = name, errors = n, "accept failed: {e} (out of file descriptors? see --max-connections)");
                    }
                    // Out of descriptors, most likely: give closes a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

async fn serve_one(
    name: &'static str,
    stream: TcpStream,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
    log: &RateLimiter,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.max_lifetime);
    tokio::pin!(lifetime);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break Some(result),
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut lifetime => break None,
        }
    };
    let reason = match result {
        Some(Ok(())) => return,
        Some(Err(e)) if e.is_timeout() => "handshake_timeout",
        // A client that went away mid-request is no news.
        Some(Err(e)) if e.is_incomplete_message() || e.is_canceled() => return,
        Some(Err(_)) => "http_error",
        None => "lifetime",
    };
    metrics::counter!(DROPPED_CONNECTIONS, "listener" => name, "reason" => reason).increment(1);
    if let Some(n) = log.hit(reason) {
        tracing::debug!(
            listener = name,
            reason,
            dropped = n,
            "dropped {n} connection(s)"
        );
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answers 503 without reading anything and closes: the cheapest refusal
/// that still tells a well-behaved client to come back.
fn refuse(stream: TcpStream) {
    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let _ = stream.try_write(ANSWER);
}

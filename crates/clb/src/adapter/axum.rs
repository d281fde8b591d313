//! The WebSocket adapter for axum (feature `axum`): admission at upgrade
//! time, sessions under the limits, and an HTTP server hostile clients
//! cannot exhaust.
//!
//! ```no_run
//! use axum::Router;
//! use axum::extract::{State, ws::WebSocketUpgrade};
//! use axum::response::Response;
//! use axum::routing::get;
//! use clb::adapter::axum::WsGate;
//!
//! async fn ws(State(gate): State<WsGate>, upgrade: WebSocketUpgrade) -> Response {
//!     // 503 with Retry-After and a hint when the node refuses; else the
//!     // connection, closed with 1012 and the hint when it is shed.
//!     gate.accept(upgrade, |mut session| async move {
//!         while let Some(message) = session.recv().await {
//!             if session.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # fn app(gate: WsGate) -> Router {
//! Router::new()
//!     .route("/ws", get(ws))
//!     .route("/health/ready", get(WsGate::ready))
//!     .with_state(gate)
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite;

use super::session::{self, Frame, SendFailed, Session, WsTransport};
use super::websocket::{Close, HINT_HEADER, InputError, WsLimits};
pub use super::websocket::{Refused, WsGate};
use crate::ratelimit::RateLimiter;

impl From<Close> for CloseFrame {
    fn from(close: Close) -> Self {
        CloseFrame {
            code: close.code,
            reason: close.reason.into(),
        }
    }
}

impl WsTransport for WebSocket {
    type Message = Message;

    async fn next_frame(&mut self) -> Frame<Message> {
        match self.recv().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => Frame::Message(m),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Heartbeat,
            Some(Ok(Message::Close(_))) => Frame::Closed,
            Some(Err(e)) => match input_error(e) {
                Some(kind) => Frame::Bad(kind),
                None => Frame::Gone,
            },
            None => Frame::Gone,
        }
    }

    async fn send_message(&mut self, message: Message) -> Result<(), SendFailed> {
        self.send(message).await.map_err(|_| SendFailed)
    }

    async fn send_ping(&mut self) -> Result<(), SendFailed> {
        self.send(Message::Ping(Bytes::new()))
            .await
            .map_err(|_| SendFailed)
    }

    async fn send_close(&mut self, close: &Close) -> Result<(), SendFailed> {
        self.send(Message::Close(Some(close.clone().into())))
            .await
            .map_err(|_| SendFailed)
    }
}

/// The client's fault, if the error is one: which close code it gets.
fn input_error(error: axum::Error) -> Option<InputError> {
    let error = error.into_inner().downcast::<tungstenite::Error>().ok()?;
    super::tungstenite_input_error(&error)
}

impl IntoResponse for Refused {
    /// `503`, `Retry-After: 1`, the hint in [`HINT_HEADER`] and a JSON body
    /// `{"error", "reason", "try"}`.
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"error": self.message, "reason": self.reason, "try": self.hint});
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(body),
        )
            .into_response();
        if let Some(value) = self.hint.and_then(|h| HeaderValue::from_str(&h).ok()) {
            response.headers_mut().insert(HINT_HEADER, value);
        }
        response
    }
}

impl WsGate {
    /// Admits the upgrade or refuses it ([`Refused`]); an admitted
    /// connection runs `handler` on a [`Session`] under the limits, is
    /// counted while it is open, and is closed with 1012 and a hint when the
    /// balancer sheds it.
    pub fn accept<F, Fut>(&self, upgrade: WebSocketUpgrade, handler: F) -> Response
    where
        F: FnOnce(Session<Message>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(reservation) = self.reserve() else {
            // Full between the check and the reservation is full too.
            return self.refused().into_response();
        };
        let limits = Arc::clone(self.shared_limits());
        upgrade
            .read_buffer_size(limits.read_buffer_size)
            .write_buffer_size(limits.write_buffer_size)
            .max_write_buffer_size(limits.max_write_buffer_size)
            .max_message_size(limits.max_message_size)
            .max_frame_size(limits.max_frame_size)
            .on_upgrade(move |socket| async move {
                session::run(socket, reservation.register(), &limits, handler).await;
            })
    }

    /// A readiness handler: `200 ready`, or `503` with why (use as
    /// `get(WsGate::ready)` on a router whose state is the gate).
    pub async fn ready(State(gate): State<WsGate>) -> Response {
        match gate.refusal() {
            Some(r) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("refusing new connections: {}\n", r.message),
            )
                .into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        }
    }
}

/// Counter: connections refused before any request, by `listener` and
/// `reason` (`pending_full`).
pub const REFUSED_CONNECTIONS: &str = "clb_refused_connections_total";
/// Counter: connections dropped by the server, by `listener` and `reason`
/// (`handshake_timeout`, `lifetime`, `http_error`).
pub const DROPPED_CONNECTIONS: &str = "clb_dropped_connections_total";

/// The bounds [`serve`] keeps on one listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections not upgraded (yet) at once; one more gets `503`.
    pub max_pending: usize,
    /// Longest request headers may take, and longest a connection idles.
    pub handshake_timeout: Duration,
    /// Longest a connection may live before it upgrades or ends.
    pub max_lifetime: Duration,
    /// After shutdown, how long connections in flight get to finish.
    pub grace: Duration,
}

impl From<&WsLimits> for ServeLimits {
    fn from(l: &WsLimits) -> Self {
        ServeLimits {
            max_pending: l.max_pending_connections,
            handshake_timeout: l.handshake_timeout,
            max_lifetime: l.handshake_timeout + l.send_timeout,
            grace: Duration::from_secs(2),
        }
    }
}

/// Serves `app` on `listener`, which hostile clients cannot exhaust,
/// until `shutdown` resolves (whatever to: a `oneshot::Receiver` will do);
/// `name` labels its metrics and logs.
///
/// `axum::serve` bounds nothing: ~1,000 silent TCP connections at the
/// default open-file limit stop it. Here:
///
/// - at most `max_pending` connections that have not become something else
///   yet (a handshake, an HTTP exchange); one more is answered `503` and
///   closed at once, counted and logged (rate-limited);
/// - request headers must arrive within the handshake timeout, and an idle
///   keep-alive connection is closed after it;
/// - a connection that has not finished within `max_lifetime` (a client
///   that never reads its response) is dropped;
/// - an `accept` error (out of file descriptors) is logged, rate-limited,
///   and the loop backs off instead of spinning;
/// - on shutdown, idle connections close at once and busy ones get `grace`.
///
/// A WebSocket leaves this accounting once upgraded: its limits are the
/// registry's and the session's.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future + Send + 'static,
) {
    ::metrics::counter!(REFUSED_CONNECTIONS, "listener" => name, "reason" => "pending_full")
        .increment(0);
    for reason in ["handshake_timeout", "lifetime", "http_error"] {
        ::metrics::counter!(DROPPED_CONNECTIONS, "listener" => name, "reason" => reason)
            .increment(0);
    }
    let (stop_tx, mut stop) = watch::channel(false);
    let shutdown = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
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
                        ::metrics::counter!(REFUSED_CONNECTIONS, "listener" => name, "reason" => "pending_full").increment(1);
                        if let Some(n) = log.hit("pending_full") {
                            tracing::warn!(listener = name, %peer, refused = n,
                                "refused {n} connection(s): {} connections are already waiting for a handshake or a response",
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
                        tracing::warn!(listener = name, errors = n, "accept failed: {e} (out of file descriptors?)");
                    }
                    // Out of descriptors, most likely: give closes a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    shutdown.abort();
    let _ = tokio::time::timeout(limits.grace, async {
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
    ::metrics::counter!(DROPPED_CONNECTIONS, "listener" => name, "reason" => reason).increment(1);
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

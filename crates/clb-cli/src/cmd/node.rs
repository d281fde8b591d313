//! `clb node`: one real cluster member (SPEC §6).
//!
//! A WebSocket echo server at `/ws` whose connections are the balanced
//! resource, the balancer, the gossip backend, and an HTTP server with
//! `/metrics` (Prometheus text), `/status` (JSON) and `/health/ready`.
//!
//! Every client is potentially hostile: connections are capped, messages
//! bounded, every send, idle period and close has a deadline, and every
//! refusal and drop is counted and logged at a bounded rate (see
//! [`WsLimits`] and [`crate::server`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use clap::Args;
use clb::adapter::websocket::{
    CLOSE_GOING_AWAY, Close, Connection, ConnectionRegistry, InputError, WsLimits, close_code_for,
};
use clb::backend::gossip::GossipStatus;
use clb::{
    Admission, Balancer, ClusterKey, GossipBackend, GossipConfig, Refusal, RoundCounts,
    RoundOutcome, StatusHandle, StatusMember,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite;

use crate::args::{Cap, ConfigArgs, LimitArgs, parse_duration, parse_opt_duration};
use crate::server::{self, ServeLimits};

/// Counter: WebSocket upgrades refused, by `reason` (`draining`,
/// `rebalancing`, `not_ready`, `full`).
pub const WS_REFUSED: &str = "clb_ws_refused_total";
/// Counter: WebSocket connections ended, by `reason` (`client`, `shed`,
/// `shutdown`, `too_big`, `protocol`, `invalid_utf8`, `send_timeout`,
/// `idle`, `close_deadline`).
pub const WS_CLOSED: &str = "clb_ws_closed_total";

/// File descriptors a node needs beyond its connections.
const FD_OVERHEAD: u64 = 256;

/// Run one cluster node.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster (A-Z a-z 0-9 _ . - :).
    #[arg(long)]
    id: String,
    /// UDP address to gossip on (port 0: any free port, see the ready line).
    #[arg(long, default_value = "127.0.0.1:7946")]
    gossip_listen: SocketAddr,
    /// Address peers gossip to, if not --gossip-listen (behind NAT, say).
    #[arg(long)]
    gossip_advertise: Option<SocketAddr>,
    /// Peers to join, host:port, comma-separated (DNS names are re-resolved).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<String>,
    /// WebSocket server address (path /ws; port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws_listen: SocketAddr,
    /// HTTP address for /metrics, /status, /health/ready (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    http_listen: SocketAddr,
    /// The URL clients should use for this node, advertised for steered
    /// reconnects (default: `ws://<ws-listen>/ws`).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Name of the balanced resource; nodes balance per namespace.
    #[arg(long, default_value = "websocket")]
    namespace: String,
    /// Shared secret(s) authenticating gossip, comma-separated: sign with the
    /// first, accept any (key rotation). At least 16 bytes each.
    #[arg(
        long,
        env = "CLB_CLUSTER_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    cluster_key: Vec<String>,
    /// Nodes of different cluster ids ignore each other.
    #[arg(long, default_value = "clb")]
    cluster_id: String,
    /// Time between gossip rounds.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    gossip_interval: Duration,
    /// Incarnation number, larger after every restart (default: start time in ms).
    #[arg(long)]
    generation: Option<u64>,
    /// Not ready if given seeds and none admitted this long after start;
    /// "none" to never (default: 30s).
    #[arg(long, value_parser = parse_opt_duration)]
    join_timeout: Option<Cap<Duration>>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Everything a node runs with, checked before anything starts.
struct Plan {
    config: clb::Config,
    limits: WsLimits,
    gossip: GossipConfig,
    id: String,
    namespace: String,
    advertise_url: Option<String>,
    ws_listen: SocketAddr,
    http_listen: SocketAddr,
    gossip_interval: Duration,
}

impl NodeArgs {
    /// Checks everything a user can get wrong; nothing has started yet.
    fn plan(&self) -> anyhow::Result<Plan> {
        let config = self.config.to_config()?;
        let mut limits = self.limits.to_limits()?;
        clb::core::validate_node_id(&self.id)?;
        clb::core::validate_namespace(&self.namespace)?;
        if let Some(url) = &self.advertise_url {
            clb::core::validate_address(url).context("--advertise-url")?;
        }
        let keys = self
            .cluster_key
            .iter()
            .filter(|k| !k.is_empty())
            .map(ClusterKey::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut gossip = GossipConfig::new(&self.id, self.gossip_listen);
        gossip.advertise_addr = self.gossip_advertise;
        gossip.seeds = self
            .seeds
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        gossip.cluster_id = self.cluster_id.clone();
        gossip.keys = keys;
        gossip.gossip_interval = self.gossip_interval;
        if let Some(generation) = self.generation {
            gossip.generation = generation;
        }
        if let Some(Cap(timeout)) = self.join_timeout {
            gossip.join_timeout = timeout;
        }
        gossip.validate()?;
        fit_file_limit(&mut limits, &self.limits)?;
        Ok(Plan {
            config,
            limits,
            gossip,
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            advertise_url: self.advertise_url.clone(),
            ws_listen: self.ws_listen,
            http_listen: self.http_listen,
            gossip_interval: self.gossip_interval,
        })
    }
}

/// Runs the node until SIGTERM or Ctrl-C, then shuts down gracefully.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    crate::cmd::init_tracing();
    let plan = args.plan()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(plan))
}

/// Raises the open-file limit to what the connection caps need. Explicit
/// caps that do not fit are an error; default caps are lowered to fit, with
/// a warning (a machine whose limit is 1,024 still runs a node).
fn fit_file_limit(limits: &mut WsLimits, explicit: &LimitArgs) -> anyhow::Result<()> {
    let needed = |l: &WsLimits| {
        l.max_connections as u64 + 2 * l.max_pending_connections as u64 + FD_OVERHEAD
    };
    let wanted = needed(limits);
    #[cfg(unix)]
    let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    #[cfg(not(unix))]
    let got = wanted;
    if got >= wanted {
        return Ok(());
    }
    let before = (limits.max_connections, limits.max_pending_connections);
    if explicit.max_pending_connections.is_none() {
        let share = usize::try_from(got / 8).unwrap_or(usize::MAX).max(16);
        limits.max_pending_connections = limits.max_pending_connections.min(share);
    }
    if explicit.max_connections.is_none() {
        let reserve = 2 * limits.max_pending_connections as u64 + FD_OVERHEAD;
        let fits = usize::try_from(got.saturating_sub(reserve)).unwrap_or(usize::MAX);
        limits.max_connections = limits.max_connections.min(fits);
    }
    if needed(limits) > got || limits.max_connections < 16 {
        bail!(
            "the open-file limit is {got}, too low for --max-connections {} with --max-pending-connections {} \
             (needs {wanted}): raise it with `ulimit -n {wanted}`, or lower them",
            before.0,
            before.1
        );
    }
    tracing::warn!(
        "the open-file limit is {got}: max_connections lowered from {} to {} and max_pending_connections \
         from {} to {} to fit (raise it with `ulimit -n {wanted}`)",
        before.0,
        limits.max_connections,
        before.1,
        limits.max_pending_connections
    );
    Ok(())
}

#[derive(Clone)]
struct AppState {
    node_id: String,
    namespace: String,
    generation: u64,
    registry: Arc<ConnectionRegistry>,
    admission: Admission,
    status: StatusHandle,
    gossip: Arc<GossipBackend>,
    prometheus: PrometheusHandle,
    limits: Arc<WsLimits>,
}

/// Why this node refuses a new connection: the one answer `/ws`,
/// `/health/ready` and `/status` all give.
enum NodeRefusal {
    Balancer(Refusal),
    Full(usize),
}

impl NodeRefusal {
    fn label(&self) -> &'static str {
        match self {
            NodeRefusal::Balancer(Refusal::Draining) => "draining",
            NodeRefusal::Balancer(Refusal::Rebalancing) => "rebalancing",
            NodeRefusal::Balancer(_) => "not_ready",
            NodeRefusal::Full(_) => "full",
        }
    }

    fn message(&self) -> String {
        match self {
            NodeRefusal::Balancer(r) => r.to_string(),
            NodeRefusal::Full(max) => format!("full: {max} connections (--max-connections)"),
        }
    }
}

impl AppState {
    fn refusal(&self) -> Option<NodeRefusal> {
        let live = self.registry.len() as u64;
        match self.admission.check(live) {
            Err(r) => Some(NodeRefusal::Balancer(r)),
            Ok(()) if self.registry.is_full() => {
                Some(NodeRefusal::Full(self.limits.max_connections))
            }
            Ok(()) => None,
        }
    }
}

async fn serve(plan: Plan) -> anyhow::Result<()> {
    let ws_listener = TcpListener::bind(plan.ws_listen)
        .await
        .with_context(|| format!("binding --ws-listen {}", plan.ws_listen))?;
    let http_listener = TcpListener::bind(plan.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", plan.http_listen))?;
    let ws_addr = ws_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe_metrics();
    let generation = plan.gossip.generation;
    let gossip = Arc::new(
        GossipBackend::start(plan.gossip.clone())
            .await
            .with_context(|| {
                format!(
                    "starting gossip on --gossip-listen {}",
                    plan.gossip.listen_addr
                )
            })?,
    );
    let gossip_addr = gossip.local_addr();
    let registry = ConnectionRegistry::with_limit(plan.limits.max_connections);
    let advertise_url = plan
        .advertise_url
        .clone()
        .unwrap_or(format!("ws://{ws_addr}/ws"));
    let balancer = Balancer::builder(&plan.id, &plan.namespace)
        .config(plan.config.clone())
        .address(advertise_url)
        .spawn(Arc::clone(&registry), Arc::clone(&gossip))?;

    let limits = Arc::new(plan.limits.clone());
    let state = AppState {
        node_id: plan.id.clone(),
        namespace: plan.namespace.clone(),
        generation,
        registry: Arc::clone(&registry),
        admission: balancer.admission(),
        status: balancer.status_handle(),
        gossip: Arc::clone(&gossip),
        prometheus: prometheus.clone(),
        limits: Arc::clone(&limits),
    };
    let ws_app = Router::new()
        .route("/ws", get(upgrade))
        .with_state(state.clone());
    let http_app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/status", get(status))
        .route("/health/ready", get(ready))
        .route("/health/live", get(|| async { "ok" }))
        .with_state(state.clone());
    let serve_limits = ServeLimits {
        max_pending: limits.max_pending_connections,
        handshake_timeout: limits.handshake_timeout,
        max_lifetime: limits.handshake_timeout + limits.send_timeout,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = Duration::from_secs(2);
    let ws_server = tokio::spawn(server::serve(
        "ws",
        ws_listener,
        ws_app,
        serve_limits,
        stop_rx.clone(),
        grace,
    ));
    let http_server = tokio::spawn(server::serve(
        "http",
        http_listener,
        http_app,
        serve_limits,
        stop_rx,
        grace,
    ));
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            prometheus.run_upkeep();
        }
    });

    // Listen for the stop signals before saying "ready": a supervisor may
    // send SIGTERM the moment it reads the line.
    let signal = shutdown_signal();
    // One machine-readable line, for scripts and the demo: the addresses
    // actually bound (port 0 picks one).
    let ready = serde_json::json!({"event": "ready", "node_id": plan.id, "ws": ws_addr.to_string(),
        "http": http_addr.to_string(), "gossip": gossip_addr.to_string(), "generation": generation});
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{ready}").and_then(|()| stdout.flush()) {
        // Nobody reads our stdout (or it is full): the node serves anyway.
        tracing::warn!(error = %e, "could not write the ready line to stdout");
    }
    drop(stdout);
    tracing::info!(node = %plan.id, ws = %ws_addr, http = %http_addr, gossip = %gossip_addr,
        strategy = %plan.config.strategy, max_connections = limits.max_connections, "node ready");

    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let started = Instant::now();
    // The shutdown order, each step for a reason:
    // 1. refuse newcomers (upgrades and readiness answer 503 from now on);
    let admission = balancer.admission();
    admission.start_draining();
    // 2. leave the namespace, so peers stop counting this node and stop
    //    steering clients to it;
    balancer.shutdown().await;
    // 3. give the leave a few gossip rounds to spread before clients move,
    //    so they are not sent back here by a peer's stale hint;
    tokio::time::sleep(plan.gossip_interval * 4).await;
    // 4. ask every client to go elsewhere now, and wait for the close frames
    //    to go out (each connection drops itself at its close deadline);
    let drained = registry
        .drain(
            &Close::shutdown(),
            limits.close_deadline + Duration::from_millis(500),
        )
        .await;
    // 5. stop gossiping and serving.
    gossip.shutdown().await;
    let _ = stop_tx.send(true);
    upkeep.abort();
    for server in [ws_server, http_server] {
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), server).await;
    }
    tracing::info!(
        closed = drained.asked,
        still_open = drained.still_open,
        took_ms = started.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C; the handlers are installed when this is
/// called, not when it is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
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

fn describe_metrics() {
    metrics::describe_counter!(WS_REFUSED, "WebSocket upgrades refused, by reason.");
    metrics::describe_counter!(WS_CLOSED, "WebSocket connections ended, by reason.");
    metrics::describe_counter!(
        server::REFUSED_CONNECTIONS,
        "Connections refused before any request, by listener and reason."
    );
    metrics::describe_counter!(
        server::DROPPED_CONNECTIONS,
        "Connections dropped by the server, by listener and reason."
    );
    for reason in ["draining", "rebalancing", "not_ready", "full"] {
        metrics::counter!(WS_REFUSED, "reason" => reason).increment(0);
    }
    for reason in [
        "client",
        "shed",
        "shutdown",
        "too_big",
        "protocol",
        "invalid_utf8",
        "send_timeout",
        "idle",
        "close_deadline",
    ] {
        metrics::counter!(WS_CLOSED, "reason" => reason).increment(0);
    }
}

/// `/ws`: admission control first, then an echo session that the balancer
/// can shed.
async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let reservation = match state.refusal() {
        None => state.registry.reserve(),
        Some(_) => None,
    };
    let Some(reservation) = reservation else {
        // Full between the check and the reservation counts as full too.
        let refusal = state
            .refusal()
            .unwrap_or(NodeRefusal::Full(state.limits.max_connections));
        metrics::counter!(WS_REFUSED, "reason" => refusal.label()).increment(1);
        let hint = state.admission.hint();
        let body =
            serde_json::json!({"error": refusal.message(), "reason": refusal.label(), "try": hint});
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response();
        if let Some(value) = hint.and_then(|h| HeaderValue::from_str(&h).ok()) {
            response.headers_mut().insert("x-clb-try", value);
        }
        return response;
    };
    let limits = Arc::clone(&state.limits);
    ws.read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(limits.write_buffer_size)
        .max_write_buffer_size(limits.max_write_buffer_size)
        .max_message_size(limits.max_message_size)
        .max_frame_size(limits.max_frame_size)
        .on_upgrade(move |socket| session(socket, reservation.register(), limits))
}

/// One echo session. It ends when the client closes, when the balancer
/// sheds it, or when the client misbehaves; then the connection is dropped
/// and, with it, its registration: the count is what is open.
async fn session(mut socket: WebSocket, mut conn: Connection, limits: Arc<WsLimits>) {
    let mut last_heard = tokio::time::Instant::now();
    let mut ping =
        tokio::time::interval_at(last_heard + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (close, reason) = loop {
        let reply = tokio::select! {
            close = conn.until_shed() => break shed_close(close),
            message = socket.recv() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    last_heard = tokio::time::Instant::now();
                    message
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    last_heard = tokio::time::Instant::now();
                    continue;
                }
                Some(Ok(Message::Close(_))) => {
                    // The library answers the close; reading on sends it.
                    let _ = tokio::time::timeout(limits.close_deadline, drain(&mut socket)).await;
                    break (None, "client");
                }
                Some(Err(e)) => match input_error(e) {
                    Some(kind) => {
                        let label = match kind {
                            InputError::TooBig => "too_big",
                            InputError::InvalidUtf8 => "invalid_utf8",
                            _ => "protocol",
                        };
                        break (Some(close_code_for(kind)), label);
                    }
                    None => break (None, "client"),
                },
                None => break (None, "client"),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    let close = Close { code: CLOSE_GOING_AWAY, reason: "idle timeout".into() };
                    break (Some(close), "idle");
                }
                Message::Ping(Bytes::new())
            }
        };
        // A send that waits on a client that does not read must neither
        // outlive the send timeout nor hide a shed: the close deadline runs
        // from the moment the balancer asks.
        tokio::select! {
            sent = tokio::time::timeout(limits.send_timeout, socket.send(reply)) => {
                if !matches!(sent, Ok(Ok(()))) {
                    break (None, "send_timeout");
                }
            }
            close = conn.until_shed() => break shed_close(close),
        }
    };
    let mut reason = reason;
    if let Some(close) = close {
        let frame = CloseFrame {
            code: close.code,
            reason: close.reason.into(),
        };
        let deadline = tokio::time::Instant::now() + limits.close_deadline;
        match tokio::time::timeout_at(deadline, socket.send(Message::Close(Some(frame)))).await {
            // The client's answer, so the close frame is read before the
            // connection goes; a client that does not answer is dropped at
            // the deadline all the same.
            Ok(Ok(())) => {
                let _ = tokio::time::timeout_at(deadline, drain(&mut socket)).await;
            }
            Ok(Err(_)) => {}
            // A close that cannot be sent in time is a drop.
            Err(_) => reason = "close_deadline",
        }
    }
    metrics::counter!(WS_CLOSED, "reason" => reason).increment(1);
    drop(socket);
    drop(conn);
}

/// The close a shed (or a shutdown) asks for, and its metric label.
fn shed_close(close: Close) -> (Option<Close>, &'static str) {
    let reason = if close == Close::shutdown() {
        "shutdown"
    } else {
        "shed"
    };
    (Some(close), reason)
}

/// Reads until the connection ends (after a close, the client's answer).
async fn drain(socket: &mut WebSocket) {
    while let Some(Ok(_)) = socket.recv().await {}
}

/// The client's fault, if the error is one: the close code it gets.
fn input_error(error: axum::Error) -> Option<InputError> {
    let error = error.into_inner().downcast::<tungstenite::Error>().ok()?;
    match *error {
        tungstenite::Error::Capacity(_) => Some(InputError::TooBig),
        tungstenite::Error::Utf8(_) => Some(InputError::InvalidUtf8),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(InputError::Protocol),
        _ => None,
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

/// `/status`: SPEC §6, plus what an operator wants next to it.
#[derive(Serialize)]
struct NodeStatus {
    node_id: String,
    namespace: String,
    generation: u64,
    strategy: &'static str,
    /// Connections open now.
    count: u64,
    target: Option<f64>,
    accepting: bool,
    /// Why not, when not: `draining`, `rebalancing`, `not_ready`, `full`.
    refusal: Option<&'static str>,
    refusal_message: Option<String>,
    /// Whether this node can take part in balancing (seeds admitted, its id
    /// its own); when not, `not_ready` says why.
    ready: bool,
    not_ready: Option<String>,
    warnings: Vec<String>,
    duplicate_ids: Vec<String>,
    rebalancing: bool,
    draining: bool,
    members: Vec<StatusMember>,
    rounds: RoundCounts,
    shed_total: u64,
    last_round: Option<u64>,
    last_outcome: Option<RoundOutcome>,
    gossip_live_nodes: Vec<String>,
    gossip: GossipStatus,
    max_connections: usize,
}

async fn status(State(state): State<AppState>) -> Json<NodeStatus> {
    let s = state.status.status();
    let refusal = state.refusal();
    let gossip = state.gossip.status().await;
    Json(NodeStatus {
        node_id: state.node_id.clone(),
        namespace: state.namespace.clone(),
        generation: state.generation,
        strategy: s.strategy,
        count: state.registry.len() as u64,
        target: s.target,
        accepting: refusal.is_none(),
        refusal: refusal.as_ref().map(NodeRefusal::label),
        refusal_message: refusal.as_ref().map(NodeRefusal::message),
        ready: s.not_ready.is_none(),
        not_ready: s.not_ready,
        warnings: s.warnings,
        duplicate_ids: s.duplicate_ids,
        rebalancing: s.rebalancing,
        draining: state.admission.is_draining(),
        members: s.members,
        rounds: s.rounds,
        shed_total: s.shed_total,
        last_round: s.last_round,
        last_outcome: s.last_outcome,
        gossip_live_nodes: gossip.live_nodes.clone(),
        gossip,
        max_connections: state.limits.max_connections,
    })
}

/// `/health/ready`: 503 while this node refuses new connections, with why.
async fn ready(State(state): State<AppState>) -> Response {
    match state.refusal() {
        Some(refusal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refusing new connections: {}\n", refusal.message()),
        )
            .into_response(),
        None => (StatusCode::OK, "ready\n").into_response(),
    }
}

//! `clb node`: one real cluster member (SPEC §6), built only on the
//! library's public API: a WebSocket echo server at `/ws` whose connections
//! are the balanced resource, the balancer on gossip, and `/metrics`,
//! `/status`, `/health/ready` over HTTP. Every limit that protects it from
//! its clients is a flag ([`clb::adapter::websocket::WsLimits`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{State, ws::WebSocketUpgrade};
use axum::response::{Json, Response};
use axum::routing::get;
use clap::Args;
use clb::adapter::axum::{ServeLimits, WsGate, serve};
use clb::adapter::websocket::{ConnectionRegistry, ShedPolicy};
use clb::metrics::Prometheus;
use clb::{Balancer, StatusHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::args::{ClusterArgs, LimitArgs};
use crate::backend::Backend;
use crate::config_file::{self, ConfigPath, layer};

/// Run one cluster node.
#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    file: ConfigPath,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    ws: WsFields,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The WebSocket server's own settings: `[websocket]` in `clb.toml`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsFields {
    /// WebSocket server address, path /ws; port 0: any free port
    /// (default: 127.0.0.1:8080).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ws_listen: Option<SocketAddr>,
    /// Which connections a shed closes first: random, newest, idle, ranked
    /// (default: random).
    #[arg(long, value_parser = |s: &str| s.parse::<ShedPolicy>().map_err(|e| e.to_string()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    shed_policy: Option<ShedPolicy>,
}

/// Runs the node until SIGTERM or Ctrl-C, then shuts down gracefully.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    crate::cmd::init_tracing();
    // Everything a user can get wrong is checked before anything starts.
    let file = config_file::load(args.file.config.as_deref())?;
    let member = args.cluster.resolve(&file)?;
    let websocket = layer(&args.ws, file.websocket.as_ref())?;
    let limits = layer(&args.limits, file.limits.as_ref())?.to_fitted_limits()?;
    let ws_listen = websocket
        .ws_listen
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let ws = TcpListener::bind(ws_listen).await;
        let ws = ws.with_context(|| format!("binding --ws-listen {ws_listen}"))?;
        let http = TcpListener::bind(member.http_listen).await;
        let http = http.with_context(|| format!("binding --http-listen {}", member.http_listen))?;
        let (ws_addr, http_addr) = (ws.local_addr()?, http.local_addr()?);
        let metrics = Prometheus::install()?;
        let backend = Arc::new(Backend::start(member.backend).await?);
        let policy = websocket.shed_policy.unwrap_or_default();
        let registry = ConnectionRegistry::with_policy(limits.max_connections, policy);
        let balancer = Balancer::builder(&member.namespace)
            .config(member.config.clone())
            .address(member.advertise_url.unwrap_or(format!("ws://{ws_addr}/ws")))
            .spawn(Arc::clone(&registry), Arc::clone(&backend))?;
        let gate = WsGate::new(registry, balancer.admission(), limits.clone());
        let node = Node {
            gate: gate.clone(),
            status: balancer.status_handle(),
            backend: Arc::clone(&backend),
        };
        let ws_app = Router::new().route("/ws", get(echo)).with_state(gate.clone());
        let http_app = Router::new()
            .route("/metrics", metrics.handler())
            .route("/status", get(status))
            .route("/health/ready", get(WsGate::ready).with_state(gate.clone()))
            .route("/health/live", get(|| async { "ok" }))
            .with_state(node);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        let stop = |mut rx: tokio::sync::watch::Receiver<()>| async move { rx.changed().await };
        let bounds = ServeLimits::from(&limits);
        let ws_server = tokio::spawn(serve("ws", ws, ws_app, bounds, stop(stop_rx.clone())));
        let http_server = tokio::spawn(serve("http", http, http_app, bounds, stop(stop_rx)));
        let signal = clb::shutdown_signal();
        // For scripts and the demo: the addresses bound (port 0 picks one).
        let gossip = backend.gossip_addr().map(|a| a.to_string());
        let ready = serde_json::json!({"event": "ready", "node_id": member.id, "ws": ws_addr.to_string(),
            "http": http_addr.to_string(), "gossip": gossip});
        if let Err(e) = writeln!(std::io::stdout().lock(), "{ready}") {
            // Nobody reads our stdout (or it is full): the node serves anyway.
            tracing::warn!(error = %e, "could not write the ready line to stdout");
        }
        tracing::info!(node = %member.id, ws = %ws_addr, http = %http_addr, gossip = ?gossip,
            strategy = %member.config.strategy, max_connections = limits.max_connections, "node ready");
        let which = signal.await; // not in the macro: a disabled level skips it
        tracing::info!(signal = which, "shutting down");
        // Refuse, leave, let the leave spread, close every client (1012).
        balancer.drain(gate.registry(), limits.close_deadline).await;
        backend.shutdown().await;
        drop(stop_tx);
        for server in [ws_server, http_server] {
            let _ = tokio::time::timeout(bounds.grace * 2, server).await;
        }
        anyhow::Ok(())
    })
}

/// `/ws`: the gate admits (or refuses with 503 and a hint); an admitted
/// client is echoed until it leaves or is shed (1012, a hint).
async fn echo(State(gate): State<WsGate>, upgrade: WebSocketUpgrade) -> Response {
    gate.accept(upgrade, |mut session| async move {
        while let Some(message) = session.recv().await {
            if session.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct Node {
    gate: WsGate,
    status: StatusHandle,
    backend: Arc<Backend>,
}

/// `/status`: SPEC §6 (the balancer's status, with the connections really
/// open and the gate's verdict), plus what an operator wants next to it.
#[derive(Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    balancer: clb::Status,
    /// Whether this node can take part in balancing; `not_ready` says why.
    ready: bool,
    draining: bool,
    /// `{"gossip": …}` or `{"redis": …}`.
    #[serde(flatten)]
    backend: serde_json::Value,
}

async fn status(State(node): State<Node>) -> Json<NodeStatus> {
    let balancer = node.gate.status(node.status.status());
    Json(NodeStatus {
        ready: balancer.not_ready.is_none(),
        balancer,
        draining: node.gate.admission().is_draining(),
        backend: node.backend.status().await,
    })
}

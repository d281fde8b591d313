//! `clb node`: one real cluster member (SPEC §6).
//!
//! A WebSocket echo server at `/ws` whose connections are the balanced
//! resource, the balancer, the gossip backend, and an HTTP server with
//! `/metrics` (Prometheus text), `/status` (JSON) and `/health/ready`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use clap::Args;
use clb::adapter::websocket::{CLOSE_RESTART, Close, ConnectionRegistry};
use clb::{Admission, Balancer, ClusterKey, GossipBackend, GossipConfig, StatusHandle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::args::{ConfigArgs, parse_duration};

/// Run one cluster node.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster (A-Z a-z 0-9 _ . - :).
    #[arg(long)]
    id: String,
    /// UDP address to gossip on.
    #[arg(long, default_value = "127.0.0.1:7946")]
    gossip_listen: SocketAddr,
    /// Address peers gossip to, if not --gossip-listen (behind NAT, say).
    #[arg(long)]
    gossip_advertise: Option<SocketAddr>,
    /// Peers to join, host:port, comma-separated (DNS names are re-resolved).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<String>,
    /// WebSocket server address (path /ws).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws_listen: SocketAddr,
    /// HTTP address for /metrics, /status, /health/ready.
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
    #[command(flatten)]
    config: ConfigArgs,
}

/// Runs the node until SIGTERM or Ctrl-C, then shuts down gracefully.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    crate::cmd::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
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
    draining: Arc<AtomicBool>,
}

async fn serve(args: NodeArgs) -> anyhow::Result<()> {
    // Everything a user can get wrong is checked before anything starts.
    let config = args.config.to_config()?;
    clb::core::validate_node_id(&args.id)?;
    clb::core::validate_namespace(&args.namespace)?;
    let keys = args
        .cluster_key
        .iter()
        .filter(|k| !k.is_empty())
        .map(ClusterKey::new)
        .collect::<Result<Vec<_>, _>>()?;
    let mut gossip_config = GossipConfig::new(&args.id, args.gossip_listen);
    gossip_config.advertise_addr = args.gossip_advertise;
    gossip_config.seeds = args
        .seeds
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    gossip_config.cluster_id = args.cluster_id.clone();
    gossip_config.keys = keys;
    gossip_config.gossip_interval = args.gossip_interval;
    if let Some(generation) = args.generation {
        gossip_config.generation = generation;
    }
    gossip_config.validate()?;

    let ws_listener = TcpListener::bind(args.ws_listen)
        .await
        .with_context(|| format!("binding --ws-listen {}", args.ws_listen))?;
    let http_listener = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", args.http_listen))?;
    let ws_addr = ws_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let generation = gossip_config.generation;
    let gossip =
        Arc::new(GossipBackend::start(gossip_config).await.with_context(|| {
            format!("starting gossip on --gossip-listen {}", args.gossip_listen)
        })?);
    let registry = ConnectionRegistry::new();
    let advertise_url = args
        .advertise_url
        .clone()
        .unwrap_or(format!("ws://{ws_addr}/ws"));
    let balancer = Balancer::builder(&args.id, &args.namespace)
        .config(config.clone())
        .address(advertise_url)
        .spawn(Arc::clone(&registry), Arc::clone(&gossip))?;

    let state = AppState {
        node_id: args.id.clone(),
        namespace: args.namespace.clone(),
        generation,
        registry: Arc::clone(&registry),
        admission: balancer.admission(),
        status: balancer.status_handle(),
        gossip: Arc::clone(&gossip),
        prometheus: prometheus.clone(),
        draining: Arc::new(AtomicBool::new(false)),
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let ws_server = tokio::spawn(
        axum::serve(ws_listener, ws_app)
            .with_graceful_shutdown(until_stopped(stop_rx.clone()))
            .into_future(),
    );
    let http_server = tokio::spawn(
        axum::serve(http_listener, http_app)
            .with_graceful_shutdown(until_stopped(stop_rx))
            .into_future(),
    );
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            prometheus.run_upkeep();
        }
    });

    // One machine-readable line, for scripts and the demo.
    println!(
        "{}",
        json!({"event": "ready", "node_id": args.id, "ws": ws_addr.to_string(), "http": http_addr.to_string(),
               "gossip": args.gossip_listen.to_string(), "generation": generation})
    );
    tracing::info!(node = %args.id, ws = %ws_addr, http = %http_addr, gossip = %args.gossip_listen,
        strategy = %config.strategy, "node ready");

    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    let started = Instant::now();
    // 1. Refuse newcomers, and leave the namespace so peers stop counting us.
    state.draining.store(true, Ordering::Relaxed);
    balancer.shutdown().await;
    // 2. Give the leave a few gossip rounds to spread.
    tokio::time::sleep(args.gossip_interval * 4).await;
    // 3. Tell every client to go elsewhere now.
    let closed = registry.close_all(&Close {
        code: CLOSE_RESTART,
        reason: "node shutting down".into(),
    });
    // The sessions send their close frames on their own tasks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 4. Stop gossiping and serving.
    gossip.shutdown().await;
    let _ = stop_tx.send(true);
    upkeep.abort();
    for server in [ws_server, http_server] {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    tracing::info!(
        closed,
        took_ms = started.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = tokio::signal::ctrl_c() => return "SIGINT",
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

/// `/ws`: admission control first, then an echo session that the balancer
/// can shed.
async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let count = state.registry.len() as u64;
    if state.draining.load(Ordering::Relaxed) || !state.admission.admits(count) {
        let hint = state.admission.hint();
        let body = json!({"error": "rebalancing: this node is above its fair share", "try": hint});
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
    }
    let registry = Arc::clone(&state.registry);
    ws.on_upgrade(move |socket| session(socket, registry))
}

async fn session(mut socket: WebSocket, registry: Arc<ConnectionRegistry>) {
    let mut conn = registry.register();
    loop {
        tokio::select! {
            close = conn.shed() => {
                let frame = CloseFrame { code: close.code, reason: close.reason.into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

/// `/status`: SPEC §6, plus what an operator wants next to it.
async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let s = state.status.status();
    let count = state.registry.len() as u64;
    Json(json!({
        "node_id": state.node_id,
        "namespace": state.namespace,
        "generation": state.generation,
        "strategy": s.strategy,
        "count": count,
        "target": s.target,
        "accepting": !state.draining.load(Ordering::Relaxed) && state.admission.admits(count),
        "rebalancing": s.rebalancing,
        "draining": state.draining.load(Ordering::Relaxed),
        "members": s.members,
        "rounds": s.rounds,
        "shed_total": s.shed_total,
        "last_round": s.last_round,
        "last_outcome": s.last_outcome,
        "gossip_live_nodes": state.gossip.live_nodes().await,
    }))
}

/// `/health/ready`: 503 while this node refuses new resources.
async fn ready(State(state): State<AppState>) -> Response {
    let count = state.registry.len() as u64;
    if state.draining.load(Ordering::Relaxed) || !state.admission.admits(count) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "refusing new connections\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

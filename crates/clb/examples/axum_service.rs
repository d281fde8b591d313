//! A production-shaped WebSocket service on clb: gossip (the key from
//! `CLB_CLUSTER_KEY`), admission at upgrade time, shedding with steering
//! hints, `/metrics`, `/health/ready`, and a graceful shutdown on Ctrl-C or
//! SIGTERM that closes every client with 1012.
//!
//! ```sh
//! export CLB_CLUSTER_KEY=change-me-to-a-long-random-string
//! NODE_ID=a LISTEN=127.0.0.1:8001 GOSSIP=127.0.0.1:7001 \
//!     cargo run -p clb --example axum_service --features axum,prometheus
//! NODE_ID=b LISTEN=127.0.0.1:8002 GOSSIP=127.0.0.1:7002 SEEDS=127.0.0.1:7001 \
//!     cargo run -p clb --example axum_service --features axum,prometheus
//! ```

use std::{sync::Arc, time::Duration};

use axum::extract::{State, ws::WebSocketUpgrade};
use axum::{Router, response::Response, routing::get};
use clb::adapter::axum::{ServeLimits, WsGate, serve};
use clb::adapter::websocket::{ConnectionRegistry, WsLimits};
use clb::{Balancer, ClusterKey, Config, GossipBackend, GossipConfig, metrics::Prometheus};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let listener = tokio::net::TcpListener::bind(env("LISTEN")).await?;
    let addr = listener.local_addr()?;
    let mut gossip = GossipConfig::new(env("NODE_ID"), env("GOSSIP").parse()?);
    gossip.seeds = env("SEEDS").split(',').map(String::from).collect();
    gossip.keys = ClusterKey::list_from_env("CLB_CLUSTER_KEY")?;
    let backend = Arc::new(GossipBackend::start(gossip).await?);
    let round = Duration::from_millis(env("ROUND_MS").parse().unwrap_or(10_000)); // 10 s
    let limits = WsLimits::default();
    let registry = ConnectionRegistry::with_limit(limits.max_connections);
    let balancer = Balancer::builder("chat") // the node id is the backend's
        .config(Config {
            round_duration: round,
            ..Config::default()
        })
        .address(format!("ws://{addr}/ws"))
        .spawn(Arc::clone(&registry), Arc::clone(&backend))?;
    let metrics = Prometheus::install()?;
    let gate = WsGate::new(registry, balancer.admission(), limits.clone());
    let app = Router::new()
        .route("/ws", get(chat))
        .route("/health/ready", get(WsGate::ready))
        .route("/metrics", metrics.handler())
        .with_state(gate.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bounds = ServeLimits::from(&limits);
    let server = tokio::spawn(serve("http", listener, app, bounds, stopped));
    let signal = clb::shutdown_signal();
    println!("ready http={addr} gossip={}", backend.local_addr());
    signal.await;
    // Refuse newcomers, leave, let the leave spread, then close every client.
    let d = balancer.drain(gate.registry(), limits.close_deadline).await;
    println!("drained closed={} still_open={}", d.closed, d.still_open);
    let _ = stop.send(());
    server.await?;
    backend.shutdown().await;
    Ok(())
}

/// An echo chat. The gate refuses (503, a hint) or admits; a shed closes 1012.
async fn chat(State(gate): State<WsGate>, upgrade: WebSocketUpgrade) -> Response {
    gate.accept(upgrade, |mut session| async move {
        while let Some(message) = session.recv().await {
            if session.send(message).await.is_err() {
                break;
            }
        }
    })
}

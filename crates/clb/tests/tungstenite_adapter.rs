#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The adapter for plain tokio-tungstenite servers, on real sockets on
//! loopback: an admitted client is served and, when shed, closed with 1012
//! and the hint; a refused handshake gets 503, `Retry-After` and the hint
//! header.
#![cfg(feature = "tungstenite")]

use std::sync::Arc;
use std::time::Duration;

use clb::adapter::websocket::{ConnectionRegistry, HINT_HEADER, WsGate, WsLimits};
use clb::{Balancer, MemoryCluster};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error, Message};

#[tokio::test]
async fn admitted_clients_are_served_and_shed_with_1012_refused_ones_get_503() {
    let registry = ConnectionRegistry::new();
    let balancer = Balancer::builder("ws")
        .node_id("n1")
        .spawn(Arc::clone(&registry), Arc::new(MemoryCluster::new()))
        .unwrap();
    let gate = WsGate::new(
        Arc::clone(&registry),
        balancer.admission(),
        WsLimits::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn({
        let gate = gate.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _ = gate
                        .accept_stream(stream, |mut session| async move {
                            while let Some(m) = session.recv().await {
                                if session.send(m).await.is_err() {
                                    break;
                                }
                            }
                        })
                        .await;
                });
            }
        }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let echo = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("hi"));
    assert_eq!(registry.len(), 1);
    // Shed it, with a hint.
    let hint = Some("ws://10.0.0.2:8080/ws".to_owned());
    let shed = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            registry
                .shed_some(1, std::iter::once(hint), Duration::from_secs(5))
                .await
        }
    });
    match timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1012);
            assert_eq!(
                frame.reason.as_str(),
                "rebalance; try ws://10.0.0.2:8080/ws"
            );
        }
        other => panic!("expected close 1012, got {other:?}"),
    }
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(shed.await.unwrap(), 1, "closed, and counted as shed");
    assert!(registry.is_empty());
    // A draining node refuses the handshake.
    gate.admission().start_draining();
    match tokio_tungstenite::connect_async(&url).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            assert!(
                response.headers().get(HINT_HEADER).is_none(),
                "no stale hint"
            );
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains(r#""reason":"draining""#), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    server.abort();
    balancer.shutdown().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `clb node` against clients that misbehave, as a hostile one would: real
//! processes, real sockets on loopback, the WebSocket protocol spoken by
//! hand where a library would refuse to misbehave. Every wait has a
//! deadline; timeouts are shortened by flags so the tests stay quick.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clb_cli::probe;
use clb_cli::swarm::{Swarm, SwarmConfig};
use common::{SERIAL, Spec, metric, metrics, start, status, until};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Opens a WebSocket by hand: the upgrade request, the 101, nothing else.
async fn raw_ws(stream: TcpStream) -> TcpStream {
    let mut stream = stream;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "upgrade cut short"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

async fn connect_raw(addr: SocketAddr) -> TcpStream {
    raw_ws(TcpStream::connect(addr).await.unwrap()).await
}

/// One client frame: FIN, `opcode`, masked unless `masked` is false.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame; returns the opcodes seen before
/// it and its code, or `None` if the connection ended without one.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<u16>) {
    let mut seen = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            if stream.read_exact(&mut head).await.is_err() {
                return None;
            }
            let opcode = head[0] & 0x0F;
            let len = match head[1] & 0x7F {
                126 => {
                    let mut b = [0u8; 2];
                    stream.read_exact(&mut b).await.ok()?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    stream.read_exact(&mut b).await.ok()?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            stream.read_exact(&mut payload).await.ok()?;
            if opcode == 0x8 {
                return Some(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])));
            }
            seen.push(opcode);
        }
    };
    match timeout(limit, read).await {
        Ok(Some(code)) => (seen, code),
        _ => (seen, None),
    }
}

fn closed_total(m: &str, reason: &str) -> f64 {
    metric(m, &format!("clb_ws_closed_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_and_never_reads_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        extra: &[
            "--ws-ping-interval",
            "200ms",
            "--ws-send-timeout",
            "300ms",
            "--ws-max-write-buffer",
            "128KiB",
        ],
        ..Spec::new("n0")
    });
    // A small receive window, so what the node sends piles up on its side,
    // and pings as fast as the node reads them.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = raw_ws(socket.connect(node.ws()).await.unwrap()).await;
    let burst: Vec<u8> = (0..1000)
        .flat_map(|_| frame(0x9, &[7u8; 125], true))
        .collect();
    let flood = tokio::spawn(async move {
        // Ends when the node drops the connection (reset, broken pipe).
        while stream.write_all(&burst).await.is_ok() {}
    });
    until(
        Duration::from_secs(15),
        "the flooding client cut off",
        || async { flood.is_finished() || status(&node).await["count"] == 0 },
    )
    .await;
    flood.abort();
    until(Duration::from_secs(5), "the drop counted", || async {
        closed_total(&metrics(&node).await, "send_timeout") >= 1.0
    })
    .await;
    assert_eq!(status(&node).await["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_close_code_1009_1002_1007() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec::new("n0"));
    let url = format!("ws://{}/ws", node.ws());
    // 1009: a message over the 64 KiB default, from a well-formed client.
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), false)
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let echo = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("hello"), "echo works");
    ws.send(Message::text("x".repeat(100 << 10))).await.unwrap();
    let reply = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // 1002: an unmasked frame from a client.
    let mut raw = connect_raw(node.ws()).await;
    raw.write_all(&frame(0x1, b"unmasked", false))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut raw, Duration::from_secs(5)).await.1,
        Some(1002)
    );
    // 1007: a text message that is not UTF-8.
    let mut raw = connect_raw(node.ws()).await;
    raw.write_all(&frame(0x1, &[0xFF, 0xFE, 0xFD], true))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut raw, Duration::from_secs(5)).await.1,
        Some(1007)
    );
    until(Duration::from_secs(5), "every close counted", || async {
        let m = metrics(&node).await;
        closed_total(&m, "too_big") >= 1.0
            && closed_total(&m, "protocol") >= 1.0
            && closed_total(&m, "invalid_utf8") >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_answers_503_everywhere_alike() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        extra: &["--max-connections", "2"],
        ..Spec::new("n0")
    });
    let url = format!("ws://{}/ws", node.ws());
    let (first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_second, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let (code, body) = probe::get(node.http, "/health/ready").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("full"), "{body}");
    let s = status(&node).await;
    assert_eq!(
        (s["accepting"].clone(), s["refusal"].clone()),
        (false.into(), "full".into()),
        "{s}"
    );
    assert!(
        metric(
            &metrics(&node).await,
            "clb_ws_refused_total{reason=\"full\"}"
        )
        .unwrap()
            >= 1.0
    );
    drop(first);
    until(Duration::from_secs(5), "a slot frees", || async {
        tokio_tungstenite::connect_async(&url).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_dropped_and_cannot_lock_out_health_or_upgrades() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        extra: &[
            "--max-pending-connections",
            "32",
            "--handshake-timeout",
            "500ms",
        ],
        ..Spec::new("n0")
    });
    let mut silent = Vec::new();
    for addr in [node.http, node.ws()] {
        for _ in 0..100 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    // Every silent connection is closed by the node: the first 32 of each
    // listener at the handshake timeout, the others at once with a 503.
    let started = Instant::now();
    for stream in &mut silent {
        let mut buf = [0u8; 256];
        loop {
            match timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => continue, // the 503, then the close
                Err(_) => panic!("a silent connection was kept open"),
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Health and upgrades work, the silent sockets still held on our side.
    let (code, _) = probe::get(node.http, "/health/ready").await.unwrap();
    assert_eq!(code, 200);
    let url = format!("ws://{}/ws", node.ws());
    tokio_tungstenite::connect_async(&url).await.unwrap();
    let m = metrics(&node).await;
    for listener in ["http", "ws"] {
        let dropped = metric(
            &m,
            &format!(
                "clb_dropped_connections_total{{listener=\"{listener}\",reason=\"handshake_timeout\"}}"
            ),
        );
        let refused = metric(
            &m,
            &format!(
                "clb_refused_connections_total{{listener=\"{listener}\",reason=\"pending_full\"}}"
            ),
        );
        assert!(dropped.unwrap() >= 32.0, "{listener}: {m}");
        assert!(refused.unwrap() >= 1.0, "{listener}: {m}");
    }
    assert!(node.log().contains("refused"), "the refusals are logged");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_file_limit_of_1024_a_thousand_silent_connections_lock_nothing_out() {
    let _serial = SERIAL.lock().await;
    // The limit many machines still start processes with; default caps.
    let node = start(&Spec {
        file_limit: Some(1024),
        extra: &["--handshake-timeout", "1s"],
        ..Spec::new("n0")
    });
    assert!(
        node.log().contains("lowered"),
        "the caps were fitted to the limit, and it said so"
    );
    let mut silent = Vec::new();
    for _ in 0..1010 {
        silent.push(TcpStream::connect(node.http).await.unwrap());
    }
    // Upgrades never stopped: the WebSocket listener has its own bound.
    let url = format!("ws://{}/ws", node.ws());
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // Health answers (503 while the HTTP listener is saturated, then 200
    // once the silent connections hit the handshake timeout) and says so.
    until(
        Duration::from_secs(10),
        "/health/ready answers 200",
        || async {
            probe::get(node.http, "/health/ready")
                .await
                .is_ok_and(|(code, _)| code == 200)
        },
    )
    .await;
    assert!(node.log().contains("refused"), "the refusals are logged");
    assert_eq!(status(&node).await["count"], 1);
    drop((ws, silent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_going_away() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        extra: &["--ws-ping-interval", "100ms", "--ws-idle-timeout", "400ms"],
        ..Spec::new("n0")
    });
    let mut raw = connect_raw(node.ws()).await;
    let (seen, code) = read_until_close(&mut raw, Duration::from_secs(5)).await;
    assert!(
        seen.iter().filter(|&&op| op == 0x9).count() >= 2,
        "pinged: {seen:?}"
    );
    assert_eq!(code, Some(1001));
    until(Duration::from_secs(5), "the close counted", || async {
        closed_total(&metrics(&node).await, "idle") >= 1.0
    })
    .await;
}

/// Server-side sockets of `port` in the kernel's table that are ESTABLISHED.
fn established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_is_what_is_open_when_shed_clients_are_stuck() {
    let _serial = SERIAL.lock().await;
    // A long send timeout: only the close deadline can free a stuck client.
    let extra: &[&str] = &[
        "--ws-send-timeout",
        "60s",
        "--close-deadline",
        "500ms",
        "--max-message-size",
        "64KiB",
    ];
    let n0 = start(&Spec {
        extra,
        ..Spec::new("n0")
    });
    let n1 = start(&Spec {
        seeds: vec![n0.gossip()],
        extra,
        ..Spec::new("n1")
    });
    common::formed(&[&n0, &n1], 2).await;
    // Stuck clients: they send and never read, with a small receive window,
    // so n0's echo blocks on them.
    let mut stuck = Vec::new();
    for _ in 0..30 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = raw_ws(socket.connect(n0.ws()).await.unwrap()).await;
        stuck.push(tokio::spawn(async move {
            let chunk = frame(0x1, &[b'x'; 16 << 10], true);
            for _ in 0..400 {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            // Hold the socket, reading nothing, until the test ends.
            std::future::pending::<()>().await;
        }));
    }
    let swarm = Swarm::start(SwarmConfig {
        nodes: common::ws_urls(&[&n0, &n1]),
        clients: 30,
        seed: 11,
        backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        hint_followers: 0.0,
        first_node: Some(0),
    });
    until(Duration::from_secs(20), "60 clients on n0", || async {
        status(&n0).await["count"].as_u64() == Some(60)
    })
    .await;
    // n0 holds 60 against n1's 0: it sheds, picking stuck clients too.
    until(Duration::from_secs(30), "n0 sheds", || async {
        status(&n0).await["shed_total"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    // From now on the count must be what the kernel says is open.
    let mut worst = 0i64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let count = status(&n0).await["count"].as_i64().unwrap();
        let open = established(n0.ws().port()) as i64;
        worst = worst.max((count - open).abs());
        sleep(Duration::from_millis(200)).await;
    }
    eprintln!("count against ESTABLISHED sockets: worst difference {worst}");
    assert!(worst <= 2, "count and open sockets differed by {worst}");
    let m = metrics(&n0).await;
    assert!(
        closed_total(&m, "close_deadline") >= 1.0,
        "a stuck client was shed and dropped at the close deadline: {m}"
    );
    assert!(swarm.stats().connected.load(Ordering::Relaxed) <= 30);
    swarm.stop().await;
    for task in stuck {
        task.abort();
    }
}

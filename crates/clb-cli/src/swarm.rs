//! A swarm of real WebSocket clients, as a service's users would be: each
//! connects to a node picked at random (an external random load balancer),
//! stays until the server closes it, and comes back after a short jittered
//! backoff. A client refused with 503 (admission control) or unable to
//! connect tries another random node. Clients that honour steering hints go
//! to the node named in the close reason or the 503 first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clb::adapter::websocket::{CLOSE_RESTART, Close};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How the swarm behaves.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The nodes' WebSocket URLs (`ws://host:port/ws`).
    pub nodes: Vec<String>,
    /// How many clients.
    pub clients: usize,
    /// Seeds every client's choices.
    pub seed: u64,
    /// Reconnect after a random pause in this range.
    pub backoff: (Duration, Duration),
    /// Share of clients that try the hinted node first, 0 to 1.
    pub hint_followers: f64,
    /// If set, every client connects to this node first (a lopsided start).
    pub first_node: Option<usize>,
}

/// What the swarm has seen, updated live.
#[derive(Debug, Default)]
pub struct SwarmStats {
    /// Clients holding an open connection now.
    pub connected: AtomicU64,
    /// Connections the server closed with 1012 (shed or node restart).
    pub closed_1012: AtomicU64,
    /// Connections that ended any other way (a node killed, say).
    pub dropped: AtomicU64,
    /// Upgrades refused with 503 (admission control or a draining node).
    pub refused_503: AtomicU64,
    /// Connection attempts that failed (node down).
    pub connect_failures: AtomicU64,
    /// Successful connections, first ones included.
    pub connects: AtomicU64,
    /// Connections made to a hinted node.
    pub hinted_connects: AtomicU64,
}

/// A running swarm; dropping it disconnects every client.
pub struct Swarm {
    stats: Arc<SwarmStats>,
    nodes: Arc<RwLock<Vec<String>>>,
    stop_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Swarm {
    /// Starts every client; they connect concurrently.
    pub fn start(config: SwarmConfig) -> Self {
        let stats = Arc::new(SwarmStats::default());
        let nodes = Arc::new(RwLock::new(config.nodes.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        for i in 0..config.clients {
            let rng =
                StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            tasks.spawn(client(
                Arc::clone(&config),
                Arc::clone(&nodes),
                Arc::clone(&stats),
                rng,
                stop_rx.clone(),
            ));
        }
        Swarm {
            stats,
            nodes,
            stop_tx,
            tasks,
        }
    }

    /// Node `i` is now reached at `url` (it restarted on another port):
    /// from now on clients that pick it go there.
    pub fn set_node(&self, i: usize, url: String) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = nodes.get_mut(i) {
            *slot = url;
        }
    }

    /// The live counters.
    pub fn stats(&self) -> &SwarmStats {
        &self.stats
    }

    /// The live counters, shareable with other tasks.
    pub fn stats_handle(&self) -> Arc<SwarmStats> {
        Arc::clone(&self.stats)
    }

    /// Disconnects every client and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

enum Ended {
    /// The server asked us to go, maybe naming where.
    Closed(Option<String>),
    /// Refused at the door, maybe naming where.
    Refused(Option<String>),
    /// Could not connect, or the connection broke.
    Failed,
    Stop,
}

async fn client(
    config: Arc<SwarmConfig>,
    nodes: Arc<RwLock<Vec<String>>>,
    stats: Arc<SwarmStats>,
    mut rng: StdRng,
    mut stop_rx: watch::Receiver<bool>,
) {
    let follows_hints = rng.random_bool(config.hint_followers.clamp(0.0, 1.0));
    let pick = |rng: &mut StdRng, i: Option<usize>| {
        let nodes = nodes.read().unwrap_or_else(|p| p.into_inner());
        let i = i.unwrap_or_else(|| rng.random_range(0..nodes.len().max(1)));
        nodes.get(i).cloned()
    };
    let mut next: Option<String> = config.first_node.and_then(|i| pick(&mut rng, Some(i)));
    loop {
        let hinted = next.is_some();
        let Some(url) = next.take().or_else(|| pick(&mut rng, None)) else {
            return;
        };
        let ended = tokio::select! {
            ended = session(&url, &stats, hinted) => ended,
            _ = stop_rx.changed() => Ended::Stop,
        };
        let hint = match ended {
            Ended::Stop => return,
            Ended::Closed(hint) | Ended::Refused(hint) => hint,
            Ended::Failed => None,
        };
        if follows_hints {
            next = hint.filter(|h| h.starts_with("ws://"));
        }
        let (lo, hi) = config.backoff;
        let pause = if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop_rx.changed() => return,
        }
    }
}

/// One connection, from connect to close.
async fn session(url: &str, stats: &SwarmStats, hinted: bool) -> Ended {
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 503 => {
            stats.refused_503.fetch_add(1, Ordering::Relaxed);
            let hint = response
                .headers()
                .get("x-clb-try")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ended::Refused(hint);
        }
        Err(_) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            return Ended::Failed;
        }
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    if hinted {
        stats.hinted_connects.fetch_add(1, Ordering::Relaxed);
    }
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let ended = loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame))))
                if frame.code == CloseCode::from(CLOSE_RESTART) =>
            {
                stats.closed_1012.fetch_add(1, Ordering::Relaxed);
                break Ended::Closed(Close::hint_in(&frame.reason).map(str::to_owned));
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                break Ended::Failed;
            }
            Some(Ok(_)) => {}
        }
    };
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    ended
}

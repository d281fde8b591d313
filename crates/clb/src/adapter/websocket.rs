//! A [`Resource`] for WebSocket servers: a registry of live connections that
//! counts them and sheds a uniformly random sample by asking each chosen
//! connection to close with code 1012 ("service restart": the client may
//! reconnect at once) and a short reason naming an under-target node when
//! the balancer has one.
//!
//! The registry knows nothing of the WebSocket library: a connection task
//! registers, and waits for [`Connection::shed`] beside its socket.
//!
//! ```no_run
//! # async fn handle(mut socket: axum::extract::ws::WebSocket, registry: std::sync::Arc<clb::adapter::websocket::ConnectionRegistry>) {
//! use axum::extract::ws::{CloseFrame, Message};
//!
//! let mut conn = registry.register();
//! loop {
//!     tokio::select! {
//!         close = conn.shed() => {
//!             let frame = CloseFrame { code: close.code, reason: close.reason.into() };
//!             let _ = socket.send(Message::Close(Some(frame))).await;
//!             break;
//!         }
//!         msg = socket.recv() => match msg {
//!             Some(Ok(msg)) => { /* serve */ let _ = msg; }
//!             _ => break, // closed by the client: dropping `conn` unregisters it
//!         },
//!     }
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::RngExt;
use tokio::sync::oneshot;

use crate::resource::{Resource, ResourceError, ShedRequest};

/// WebSocket close code 1012, "service restart": reconnect at once.
pub const CLOSE_RESTART: u16 = 1012;
/// The longest close reason a WebSocket close frame carries, in bytes.
pub const MAX_REASON: usize = 123;

/// What a shed connection should send before closing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The close code: [`CLOSE_RESTART`].
    pub code: u16,
    /// A short reason: `rebalance`, or `rebalance; try <address>`.
    pub reason: String,
}

impl Close {
    /// The close sent when shedding, with an optional steering hint.
    pub fn rebalance(hint: Option<&str>) -> Self {
        let reason = match hint {
            Some(address) => truncate(format!("rebalance; try {address}")),
            None => "rebalance".to_owned(),
        };
        Close {
            code: CLOSE_RESTART,
            reason,
        }
    }

    /// The steering hint in a close reason, if any: what a client should
    /// try first when it reconnects.
    pub fn hint_in(reason: &str) -> Option<&str> {
        reason
            .strip_prefix("rebalance; try ")
            .filter(|a| !a.is_empty())
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The live connections of one server. Share it as `Arc<ConnectionRegistry>`:
/// the server registers connections, the balancer counts and sheds them.
///
/// Registering and unregistering take a short lock, never held across an
/// await.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    connections: Mutex<HashMap<u64, oneshot::Sender<Close>>>,
    next_id: AtomicU64,
}

impl ConnectionRegistry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a connection; drop the [`Connection`] when it ends.
    pub fn register(self: &Arc<Self>) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        Connection {
            id,
            registry: Arc::clone(self),
            close_rx: rx,
        }
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks `n` connections chosen uniformly at random to close, the first
    /// ones with the given hints; returns how many were asked (connections
    /// that were already going away are not counted).
    pub fn close_random(&self, n: u64, hints: impl Iterator<Item = Option<String>>) -> u64 {
        let chosen: Vec<oneshot::Sender<Close>> = {
            let mut connections = self.lock();
            let mut ids: Vec<u64> = connections.keys().copied().collect();
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(ids.len());
            let mut rng = rand::rng();
            // A partial Fisher–Yates: the first n are a uniform sample.
            for i in 0..n {
                let j = rng.random_range(i..ids.len());
                ids.swap(i, j);
            }
            ids[..n]
                .iter()
                .filter_map(|id| connections.remove(id))
                .collect()
        };
        let mut hints = hints.chain(std::iter::repeat(None));
        chosen
            .into_iter()
            .map(|tx| {
                let hint = hints.next().flatten();
                u64::from(tx.send(Close::rebalance(hint.as_deref())).is_ok())
            })
            .sum()
    }

    /// Asks every connection to close with `close` (a graceful shutdown);
    /// returns how many were asked.
    pub fn close_all(&self, close: &Close) -> u64 {
        let all: Vec<oneshot::Sender<Close>> = self.lock().drain().map(|(_, tx)| tx).collect();
        all.into_iter()
            .map(|tx| u64::from(tx.send(close.clone()).is_ok()))
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Close>>> {
        // A map of senders stays consistent whatever panicked holding it.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Resource for ConnectionRegistry {
    async fn count(&self) -> Result<u64, ResourceError> {
        Ok(self.len() as u64)
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let hints = request
            .iter_hints()
            .map(|h| h.map(str::to_owned))
            .collect::<Vec<_>>();
        Ok(self.close_random(request.n, hints.into_iter()))
    }
}

/// One registered connection. Dropping it unregisters it.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    registry: Arc<ConnectionRegistry>,
    close_rx: oneshot::Receiver<Close>,
}

impl Connection {
    /// Resolves when the balancer sheds this connection: send the returned
    /// close frame and end the connection. Cancel-safe; pending forever if
    /// the registry is gone.
    pub async fn shed(&mut self) -> Close {
        match (&mut self.close_rx).await {
            Ok(close) => close,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hint;

    #[tokio::test]
    async fn sheds_a_random_sample_with_code_1012_and_hints() {
        let registry = ConnectionRegistry::new();
        let mut conns: Vec<Connection> = (0..100).map(|_| registry.register()).collect();
        assert_eq!(registry.count().await.unwrap(), 100);
        let request = ShedRequest::with_hints(
            10,
            vec![Hint {
                address: "ws://10.0.0.2:8080/ws".into(),
                n: 4,
            }],
        );
        assert_eq!(registry.shed(request).await.unwrap(), 10);
        assert_eq!(registry.len(), 90, "shed connections leave at once");
        let mut closes = Vec::new();
        for conn in &mut conns {
            if let Ok(close) = tokio::time::timeout(std::time::Duration::ZERO, conn.shed()).await {
                closes.push(close);
            }
        }
        assert_eq!(closes.len(), 10);
        assert!(closes.iter().all(|c| c.code == 1012));
        let hinted: Vec<_> = closes
            .iter()
            .filter_map(|c| Close::hint_in(&c.reason))
            .collect();
        assert_eq!(hinted, ["ws://10.0.0.2:8080/ws"; 4]);
        drop(conns);
        assert!(registry.is_empty(), "every connection unregistered on drop");
    }

    #[tokio::test]
    async fn a_connection_that_closed_on_its_own_is_not_counted_as_shed() {
        let registry = ConnectionRegistry::new();
        let keep = registry.register();
        drop(registry.register());
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.shed(ShedRequest::new(5)).await.unwrap(), 1);
        drop(keep);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let close = Close::rebalance(Some(&"é".repeat(100)));
        assert!(close.reason.len() <= MAX_REASON);
        assert_eq!(Close::rebalance(None).reason, "rebalance");
        assert_eq!(Close::hint_in("rebalance"), None);
    }
}

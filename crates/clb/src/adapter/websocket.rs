//! A [`Resource`] for WebSocket servers: a registry of live connections that
//! counts them and sheds some (a uniformly random sample by default, see
//! [`ShedPolicy`]) by asking each chosen connection to close with code 1012
//! ("service restart": the client may reconnect at once) and a short reason
//! naming an under-target node when the balancer has one.
//!
//! The registry knows nothing of the WebSocket library. The session helpers
//! do the rest for axum (`clb::adapter::axum`, feature `axum`) and
//! tokio-tungstenite (`clb::adapter::tungstenite`): a [`WsGate`] admits or
//! refuses each handshake, and [`session::run`](super::session::run) drives
//! the connection. Without them, a connection task registers and waits for
//! [`Connection::until_shed`] beside its socket. The registry's count is
//! what is really open: a connection asked to close stays counted until its
//! task drops the [`Connection`], which it must do once the close frame is
//! out, or when the close deadline has passed ([`WsLimits::close_deadline`]:
//! a close that cannot be sent in time is a drop).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use clb::adapter::websocket::{ConnectionRegistry, WsLimits};
//!
//! let registry = ConnectionRegistry::with_limit(WsLimits::default().max_connections);
//! let Some(slot) = registry.reserve() else { return }; // full: answer 503 instead
//! let mut conn = slot.register(); // after the upgrade
//! let task = tokio::spawn(async move {
//!     let close = conn.until_shed().await; // beside the socket, in a select!
//!     // ... send `close` (code 1012, reason with the hint) within the deadline ...
//!     drop(conn); // the connection is over: the count drops
//!     close
//! });
//! let shed = registry.shed_some(1, std::iter::empty(), Duration::from_secs(1)).await;
//! assert_eq!((shed, task.await.unwrap().code), (1, 1012));
//! assert!(registry.is_empty());
//! # }
//! ```
//!
//! # Limits
//!
//! A node serving clients must be protected from them. [`WsLimits`] holds
//! the limits `clb node` applies, with their defaults; an embedding service
//! should apply the same ones:
//!
//! - to axum's `WebSocketUpgrade` before `on_upgrade`:
//!   `.read_buffer_size(l.read_buffer_size)`,
//!   `.write_buffer_size(l.write_buffer_size)`,
//!   `.max_write_buffer_size(l.max_write_buffer_size)`,
//!   `.max_message_size(l.max_message_size)`,
//!   `.max_frame_size(l.max_frame_size)` (tokio-tungstenite: the same
//!   fields of `WebSocketConfig`). The library defaults are 128 KiB buffers
//!   (most of an idle connection's memory), an **unbounded** outgoing queue
//!   (a client that sends pings and never reads grows it without limit) and
//!   64 MiB messages;
//! - in the session: every send under `send_timeout`, a ping every
//!   `ping_interval`, a drop after `idle_timeout` without a frame, every
//!   close under `close_deadline`; a message over the limit answered with
//!   close 1009, a protocol error with 1002, invalid UTF-8 with 1007
//!   ([`close_code_for`]);
//! - in the HTTP server: the upgrade refused with 503 when
//!   [`ConnectionRegistry::reserve`] says the node is full; request headers
//!   under `handshake_timeout` (hyper's `header_read_timeout`); a bound on
//!   connections that have not upgraded yet; and an open-file limit above
//!   `max_connections` plus that bound.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::balancer::Admission;
use crate::resource::{Resource, ResourceError, ShedRequest};

/// WebSocket close code 1012, "service restart": reconnect at once.
pub const CLOSE_RESTART: u16 = 1012;
/// WebSocket close code 1000: the service is done with the connection.
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code 1001, "going away": sent to a connection that has
/// been silent for longer than the idle timeout.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1002: the client broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket close code 1007: a text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// WebSocket close code 1009: a message larger than the limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
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

    /// The close sent to every connection of a node that shuts down.
    pub fn shutdown() -> Self {
        Close {
            code: CLOSE_RESTART,
            reason: "node shutting down".to_owned(),
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

/// Why a client's input ended its connection, for the close code to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputError {
    /// A message or frame over the size limit.
    TooBig,
    /// A violation of the WebSocket protocol (unmasked frame, bad opcode...).
    Protocol,
    /// A text message that is not valid UTF-8.
    InvalidUtf8,
}

/// The close frame to answer a client's bad input with: 1009, 1002 or 1007.
pub fn close_code_for(error: InputError) -> Close {
    let (code, reason) = match error {
        InputError::TooBig => (CLOSE_TOO_BIG, "message too big"),
        InputError::Protocol => (CLOSE_PROTOCOL_ERROR, "protocol error"),
        InputError::InvalidUtf8 => (CLOSE_INVALID_DATA, "invalid utf-8"),
    };
    Close {
        code,
        reason: reason.to_owned(),
    }
}

/// The limits that protect a WebSocket node from its clients; see the
/// [module docs](self) for where each applies. Every field has a default
/// fit for a node holding many mostly idle connections.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsLimits {
    /// Most WebSocket connections held at once; beyond it, upgrades are
    /// answered 503. Default 10,000; 1 to 10,000,000.
    pub max_connections: usize,
    /// Connections that have not (yet) become WebSockets, per listener:
    /// handshakes in progress, HTTP requests. Beyond it, a new connection is
    /// answered 503 and closed at once. Default 1,024; 1 to 1,000,000.
    pub max_pending_connections: usize,
    /// Largest message accepted, in bytes; a larger one is answered with
    /// close 1009. Default 64 KiB; 16 B to 64 MiB.
    pub max_message_size: usize,
    /// Largest frame accepted, in bytes. Default 64 KiB; 16 B to
    /// `max_message_size`.
    pub max_frame_size: usize,
    /// Read buffer per connection, in bytes: most of an idle connection's
    /// memory. Default 4 KiB; 1 KiB to 1 MiB.
    pub read_buffer_size: usize,
    /// Outgoing bytes gathered before they are written (0: write every
    /// message at once). Default 0; at most 1 MiB.
    pub write_buffer_size: usize,
    /// Most outgoing bytes queued per connection, automatic pongs included:
    /// a client that does not read cannot make the node queue more. Default
    /// 256 KiB; more than `write_buffer_size + max_message_size`, at most
    /// 64 MiB.
    pub max_write_buffer_size: usize,
    /// Longest a send may wait for the client to read; then the connection
    /// is dropped. Default 10 s; 10 ms to 10 min.
    pub send_timeout: Duration,
    /// Time between two pings the server sends each connection. Default
    /// 30 s; 10 ms to 1 h.
    pub ping_interval: Duration,
    /// A connection that has sent nothing, not even a pong, for this long is
    /// closed (1001) and dropped. Default 90 s; more than `ping_interval`,
    /// at most 24 h.
    pub idle_timeout: Duration,
    /// Longest a close may take, from asking a connection to close until its
    /// close frame is out and the client's answer in; then the connection is
    /// dropped: a close that cannot be sent in time is a drop. Default 3 s;
    /// 10 ms to 10 min.
    pub close_deadline: Duration,
    /// Longest an HTTP request's headers (a WebSocket upgrade's) may take to
    /// arrive, and longest an HTTP connection may sit idle between requests.
    /// Default 10 s; 10 ms to 10 min.
    pub handshake_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_connections: 10_000,
            max_pending_connections: 1_024,
            max_message_size: 64 << 10,
            max_frame_size: 64 << 10,
            read_buffer_size: 4 << 10,
            write_buffer_size: 0,
            max_write_buffer_size: 256 << 10,
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            close_deadline: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl WsLimits {
    /// Checks every field and cross-field rule; the error names the field
    /// and the allowed range.
    pub fn validate(&self) -> Result<(), clb_core::ConfigError> {
        let size = |field: &'static str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(clb_core::ConfigError::OutOfRange {
                    field,
                    value: value.to_string(),
                    range: format!("[{min}, {max}]"),
                })
            }
        };
        let time = |field: &'static str, value: Duration, min: Duration, max: Duration| {
            if value >= min && value <= max {
                Ok(())
            } else {
                Err(clb_core::ConfigError::OutOfRange {
                    field,
                    value: format!("{value:?}"),
                    range: format!("[{min:?}, {max:?}]"),
                })
            }
        };
        const MIB: usize = 1 << 20;
        let ms = Duration::from_millis;
        let min = Duration::from_secs(60);
        size("max_connections", self.max_connections, 1, 10_000_000)?;
        size(
            "max_pending_connections",
            self.max_pending_connections,
            1,
            1_000_000,
        )?;
        size("max_message_size", self.max_message_size, 16, 64 * MIB)?;
        size(
            "max_frame_size",
            self.max_frame_size,
            16,
            self.max_message_size,
        )?;
        size("read_buffer_size", self.read_buffer_size, 1024, MIB)?;
        size("write_buffer_size", self.write_buffer_size, 0, MIB)?;
        size(
            "max_write_buffer_size",
            self.max_write_buffer_size,
            self.write_buffer_size + self.max_message_size + 1,
            64 * MIB,
        )?;
        time("send_timeout", self.send_timeout, ms(10), 10 * min)?;
        time("ping_interval", self.ping_interval, ms(10), 60 * min)?;
        time(
            "idle_timeout",
            self.idle_timeout,
            self.ping_interval + ms(1),
            24 * 60 * min,
        )?;
        time("close_deadline", self.close_deadline, ms(10), 10 * min)?;
        time(
            "handshake_timeout",
            self.handshake_timeout,
            ms(10),
            10 * min,
        )?;
        Ok(())
    }
}

/// Which connections a shed closes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShedPolicy {
    /// A uniformly random sample: the default, and what keeps the clients
    /// that move representative of the node's load.
    #[default]
    Random,
    /// The most recently opened first: the least session warmth is lost.
    Newest,
    /// The longest idle first (no frame either way for the longest time).
    IdleLongest,
    /// The lowest [`Connection::set_rank`] first, ties at random; a
    /// connection ranked [`Connection::NEVER_SHED`] is never shed (a
    /// connection in the middle of an upload, say).
    Ranked,
}

impl ShedPolicy {
    /// The name `clb node --shed-policy` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedPolicy::Random => "random",
            ShedPolicy::Newest => "newest",
            ShedPolicy::IdleLongest => "idle",
            ShedPolicy::Ranked => "ranked",
        }
    }
}

impl fmt::Display for ShedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ShedPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ShedPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for ShedPolicy {
    type Err = clb_core::ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(ShedPolicy::Random),
            "newest" => Ok(ShedPolicy::Newest),
            "idle" => Ok(ShedPolicy::IdleLongest),
            "ranked" => Ok(ShedPolicy::Ranked),
            other => Err(clb_core::ConfigError::Invalid {
                field: "shed_policy",
                value: other.chars().take(40).collect(),
                expected: "one of: random, newest, idle, ranked",
            }),
        }
    }
}

/// What a connection's task tells the registry about it, lock-free.
#[derive(Debug)]
struct Meta {
    /// Milliseconds since the registry's epoch of the last frame either way.
    last_active_ms: AtomicU64,
    rank: AtomicU32,
}

/// The header naming an under-target node in a 503: clients that honour it
/// connect there next (`x-clb-try: ws://10.0.0.7:8080/ws`).
pub const HINT_HEADER: &str = "x-clb-try";

/// Why a node refuses a new WebSocket: the answer a handshake gets (`503`,
/// `Retry-After: 1`, the hint in [`HINT_HEADER`], a JSON body `{"error",
/// "reason", "try"}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// `draining`, `rebalancing`, `not_ready` or `full`: the `reason` label
    /// of `clb_ws_refused_total`.
    pub reason: &'static str,
    /// For a person.
    pub message: String,
    /// An under-target node's address, for the client to try.
    pub hint: Option<String>,
}

impl Refused {
    /// The JSON body of the 503.
    pub fn body(&self) -> String {
        serde_json::json!({"error": self.message, "reason": self.reason, "try": self.hint})
            .to_string()
    }
}

/// Everything a WebSocket handshake needs to admit or refuse: the registry,
/// the balancer's admission and the limits. Cheap to clone; use it as the
/// server's state. The `axum` and `tungstenite` features add the handshake
/// itself (`accept`, `accept_stream`).
#[derive(Clone, Debug)]
pub struct WsGate {
    registry: Arc<ConnectionRegistry>,
    admission: Admission,
    limits: Arc<WsLimits>,
}

impl WsGate {
    /// A gate over `registry` (the balancer's resource), answering with
    /// `admission` (from the same balancer) under `limits`.
    pub fn new(registry: Arc<ConnectionRegistry>, admission: Admission, limits: WsLimits) -> Self {
        crate::metrics::register_websocket();
        WsGate {
            registry,
            admission,
            limits: Arc::new(limits),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<ConnectionRegistry> {
        &self.registry
    }

    /// The admission.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The limits.
    pub fn limits(&self) -> &WsLimits {
        &self.limits
    }

    #[cfg(any(feature = "axum", feature = "tungstenite"))]
    pub(crate) fn shared_limits(&self) -> &Arc<WsLimits> {
        &self.limits
    }

    /// Why a new connection would be refused now, if it would: the one
    /// answer for handshakes, readiness and status pages.
    pub fn refusal(&self) -> Option<Refused> {
        let refused = |reason: &'static str, message: String| Refused {
            reason,
            message,
            hint: self.admission.hint(),
        };
        match self.admission.check(self.registry.len() as u64) {
            Err(r) => Some(refused(r.label(), r.to_string())),
            Ok(()) if self.registry.is_full() => Some(refused(
                "full",
                format!("full: {} connections", self.limits.max_connections),
            )),
            Ok(()) => None,
        }
    }

    /// `status` (the balancer's) with what is true of this server now: the
    /// connections really open, and the gate's verdict (which adds `full`).
    pub fn status(&self, mut status: crate::Status) -> crate::Status {
        let refusal = self.refusal();
        status.count = Some(self.registry.len() as u64);
        status.accepting = refusal.is_none();
        status.refusal = refusal.as_ref().map(|r| r.reason);
        status.refusal_message = refusal.map(|r| r.message);
        status
    }

    /// A slot for the connection being handshaken, or `None`: refuse it
    /// with [`refused`](Self::refused).
    pub fn reserve(&self) -> Option<Reservation> {
        match self.refusal() {
            None => self.registry.reserve(),
            Some(_) => None,
        }
    }

    /// The refusal for a handshake [`reserve`](Self::reserve) turned down,
    /// counted in `clb_ws_refused_total` (full between the check and the
    /// reservation is full too).
    pub fn refused(&self) -> Refused {
        let refused = self.refusal().unwrap_or(Refused {
            reason: "full",
            message: format!("full: {} connections", self.limits.max_connections),
            hint: self.admission.hint(),
        });
        ::metrics::counter!(crate::metrics::WS_REFUSED, "reason" => refused.reason).increment(1);
        refused
    }
}

/// The live connections of one server. Share it as `Arc<ConnectionRegistry>`:
/// the server registers connections, the balancer counts and sheds them.
///
/// Registering and unregistering take a short lock, never held across an
/// await.
#[derive(Debug)]
pub struct ConnectionRegistry {
    inner: Mutex<Inner>,
    /// Wakes [`drain`](Self::drain) when a connection ends.
    ended: Notify,
    next_id: AtomicU64,
    max_connections: usize,
    policy: ShedPolicy,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    open: HashMap<u64, Entry>,
    /// Upgrades promised a slot but not registered yet.
    reserved: usize,
}

#[derive(Debug)]
struct Entry {
    /// `Some` until the connection is asked to close.
    ask: Option<oneshot::Sender<Close>>,
    /// Dropped with the entry, so whoever asked learns that it closed.
    gone: Option<oneshot::Sender<()>>,
    meta: Arc<Meta>,
}

impl Default for ConnectionRegistry {
    fn default() -> Self {
        ConnectionRegistry::with_capacity_limit(usize::MAX, ShedPolicy::Random)
    }
}

impl ConnectionRegistry {
    /// An empty registry with no limit on connections.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty registry that holds at most `max_connections`
    /// ([`WsLimits::max_connections`]) and sheds at random.
    pub fn with_limit(max_connections: usize) -> Arc<Self> {
        Arc::new(Self::with_capacity_limit(
            max_connections,
            ShedPolicy::Random,
        ))
    }

    /// An empty registry that holds at most `max_connections` and sheds by
    /// `policy`.
    pub fn with_policy(max_connections: usize, policy: ShedPolicy) -> Arc<Self> {
        Arc::new(Self::with_capacity_limit(max_connections, policy))
    }

    fn with_capacity_limit(max_connections: usize, policy: ShedPolicy) -> Self {
        ConnectionRegistry {
            inner: Mutex::new(Inner::default()),
            ended: Notify::new(),
            next_id: AtomicU64::new(0),
            max_connections,
            policy,
            epoch: Instant::now(),
        }
    }

    /// Which connections a shed closes first.
    pub fn policy(&self) -> ShedPolicy {
        self.policy
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A slot for one more connection, or `None` when the registry is full
    /// (answer 503 then, before upgrading). Dropping the reservation frees
    /// the slot; [`Reservation::register`] turns it into a connection.
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        let mut inner = self.lock();
        if inner.open.len() + inner.reserved >= self.max_connections {
            return None;
        }
        inner.reserved += 1;
        Some(Reservation {
            registry: Some(Arc::clone(self)),
        })
    }

    /// Registers a connection whatever the limit; drop the [`Connection`]
    /// when it ends. Prefer [`reserve`](Self::reserve) before upgrading.
    pub fn register(self: &Arc<Self>) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let meta = Arc::new(Meta {
            last_active_ms: AtomicU64::new(self.now_ms()),
            rank: AtomicU32::new(0),
        });
        self.lock().open.insert(
            id,
            Entry {
                ask: Some(tx),
                gone: None,
                meta: Arc::clone(&meta),
            },
        );
        Connection {
            id,
            registry: Arc::clone(self),
            close_rx: rx,
            meta,
        }
    }

    /// How many connections are open, those already asked to close
    /// included: until its task drops it, a connection is open.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a new connection would be refused.
    pub fn is_full(&self) -> bool {
        let inner = self.lock();
        inner.open.len() + inner.reserved >= self.max_connections
    }

    /// Asks `n` connections, chosen by the registry's [`ShedPolicy`] among
    /// those not already closing, to close (the first ones with the given
    /// hints), and waits until they have, or until `within`. Returns how many
    /// closed in time; those still closing stay counted until they do.
    pub async fn shed_some(
        &self,
        n: u64,
        hints: impl Iterator<Item = Option<String>>,
        within: Duration,
    ) -> u64 {
        let deadline = Instant::now() + within;
        let mut gone = Vec::new();
        {
            let mut inner = self.lock();
            let ids = self.choose(&inner, n);
            let mut hints = hints.chain(std::iter::repeat(None));
            for id in &ids {
                let Some(entry) = inner.open.get_mut(id) else {
                    continue;
                };
                let Some(ask) = entry.ask.take() else {
                    continue;
                };
                let hint = hints.next().flatten();
                if ask.send(Close::rebalance(hint.as_deref())).is_ok() {
                    let (tx, rx) = oneshot::channel();
                    entry.gone = Some(tx);
                    gone.push(rx);
                }
            }
        }
        let mut closed = 0;
        for rx in gone {
            // The sender is dropped with the entry: an error means "closed".
            if tokio::time::timeout_at(deadline, rx).await.is_ok() {
                closed += 1;
            }
        }
        closed
    }

    /// The ids of up to `n` connections to shed, in order, by the policy.
    fn choose(&self, inner: &Inner, n: u64) -> Vec<u64> {
        let mut candidates: Vec<(u64, &Meta)> = inner
            .open
            .iter()
            .filter(|(_, e)| e.ask.is_some())
            .map(|(id, e)| (*id, &*e.meta))
            .collect();
        if self.policy == ShedPolicy::Ranked {
            candidates.retain(|(_, m)| m.rank.load(Ordering::Relaxed) != Connection::NEVER_SHED);
        }
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(candidates.len());
        let mut rng = rand::rng();
        // A random order first: ties of every policy fall at random.
        for i in 0..candidates.len() {
            let j = rng.random_range(i..candidates.len());
            candidates.swap(i, j);
            if self.policy == ShedPolicy::Random && i + 1 >= n {
                // A partial Fisher–Yates: the first n are a uniform sample.
                break;
            }
        }
        match self.policy {
            ShedPolicy::Random => {}
            ShedPolicy::Newest => candidates.sort_by_key(|(id, _)| std::cmp::Reverse(*id)),
            ShedPolicy::IdleLongest => {
                candidates.sort_by_key(|(_, m)| m.last_active_ms.load(Ordering::Relaxed))
            }
            ShedPolicy::Ranked => candidates.sort_by_key(|(_, m)| m.rank.load(Ordering::Relaxed)),
        }
        candidates.into_iter().take(n).map(|(id, _)| id).collect()
    }

    /// Asks every open connection to close with `close` (a graceful
    /// shutdown) and waits until none is left, or until `within`. Returns
    /// how many were asked and how many are still open.
    pub async fn drain(&self, close: &Close, within: Duration) -> Drained {
        let deadline = Instant::now() + within;
        let asked = {
            let mut inner = self.lock();
            let mut asked = 0;
            for entry in inner.open.values_mut() {
                if let Some(ask) = entry.ask.take() {
                    asked += u64::from(ask.send(close.clone()).is_ok());
                }
            }
            asked
        };
        loop {
            let ended = self.ended.notified();
            if self.is_empty() || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, ended).await;
        }
        Drained {
            asked,
            still_open: self.len() as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A map of channel ends stays consistent whatever panicked holding it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What [`ConnectionRegistry::drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Connections asked to close.
    pub asked: u64,
    /// Connections still open when it returned (their close deadline had
    /// not passed yet, or their task ignored the request).
    pub still_open: u64,
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
        // Answer a little before the balancer stops waiting, with what has
        // closed so far.
        let within = request
            .within
            .map_or(Duration::from_secs(3600), |w| w.mul_f64(0.9));
        Ok(self.shed_some(request.n, hints.into_iter(), within).await)
    }
}

/// A slot in a [`ConnectionRegistry`], promised before a WebSocket upgrade.
#[derive(Debug)]
pub struct Reservation {
    registry: Option<Arc<ConnectionRegistry>>,
}

impl Reservation {
    /// The upgrade succeeded: the slot becomes a registered connection.
    pub fn register(mut self) -> Connection {
        match self.registry.take() {
            Some(registry) => {
                registry.lock().reserved -= 1;
                registry.register()
            }
            None => unreachable!("a reservation is registered at most once"),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.lock().reserved -= 1;
        }
    }
}

/// One registered connection. Dropping it unregisters it: drop it when the
/// connection has really ended.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    registry: Arc<ConnectionRegistry>,
    close_rx: oneshot::Receiver<Close>,
    meta: Arc<Meta>,
}

impl Connection {
    /// The rank that [`ShedPolicy::Ranked`] never sheds.
    pub const NEVER_SHED: u32 = u32::MAX;

    /// Notes activity on the connection (a frame either way), for
    /// [`ShedPolicy::IdleLongest`]. Lock-free; the session helpers call it.
    pub fn touch(&self) {
        self.meta
            .last_active_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }

    /// Ranks the connection for [`ShedPolicy::Ranked`]: the lowest ranks are
    /// shed first, [`Self::NEVER_SHED`] never (default 0). Lock-free; change
    /// it as the connection's state changes (an upload starts and ends).
    pub fn set_rank(&self, rank: u32) {
        self.meta.rank.store(rank, Ordering::Relaxed);
    }

    /// Resolves when the balancer sheds this connection (or the node shuts
    /// down): send the returned close frame, within the close deadline, and
    /// end the connection. Cancel-safe; pending forever if the registry is
    /// gone.
    pub async fn until_shed(&mut self) -> Close {
        match (&mut self.close_rx).await {
            Ok(close) => close,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.lock().open.remove(&self.id);
        self.registry.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hint;

    /// Plays the connection tasks: each closes `after` once asked, or never.
    fn serve(conns: Vec<Connection>, after: Option<Duration>) -> tokio::task::JoinSet<Close> {
        let mut set = tokio::task::JoinSet::new();
        for mut conn in conns {
            set.spawn(async move {
                let close = conn.until_shed().await;
                match after {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
                drop(conn);
                close
            });
        }
        set
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_a_random_sample_with_code_1012_and_hints_and_counts_only_what_closed() {
        let registry = ConnectionRegistry::new();
        let conns: Vec<Connection> = (0..100).map(|_| registry.register()).collect();
        assert_eq!(registry.count().await.unwrap(), 100);
        let mut tasks = serve(conns, Some(Duration::from_millis(5)));
        tokio::task::yield_now().await;
        let request = ShedRequest::with_hints(
            10,
            vec![Hint {
                address: "ws://10.0.0.2:8080/ws".into(),
                n: 4,
            }],
        )
        .within(Duration::from_secs(1));
        assert_eq!(registry.shed(request).await.unwrap(), 10);
        assert_eq!(registry.len(), 90, "the shed connections have closed");
        let mut closes = Vec::new();
        while closes.len() < 10 {
            closes.push(tasks.join_next().await.unwrap().unwrap());
        }
        assert!(closes.iter().all(|c| c.code == 1012));
        let hinted: Vec<_> = closes
            .iter()
            .filter_map(|c| Close::hint_in(&c.reason))
            .collect();
        assert_eq!(hinted, ["ws://10.0.0.2:8080/ws"; 4]);
        tasks.shutdown().await;
        assert!(registry.is_empty(), "every connection unregistered on drop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_cannot_close_in_time_stays_counted_and_is_not_reported_shed() {
        let registry = ConnectionRegistry::new();
        let stuck: Vec<Connection> = (0..3).map(|_| registry.register()).collect();
        let mut tasks = serve(stuck, None);
        tokio::task::yield_now().await;
        let shed = registry
            .shed(ShedRequest::new(3).within(Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(shed, 0, "nothing closed in time, nothing counted as shed");
        assert_eq!(registry.len(), 3, "the count is what is really open");
        // Asked once: the next shed does not pick them again.
        assert_eq!(
            registry
                .shed(ShedRequest::new(3).within(Duration::from_millis(10)))
                .await
                .unwrap(),
            0
        );
        tasks.shutdown().await;
        assert!(registry.is_empty(), "dropped: unregistered");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_asks_everyone_and_waits_for_them_within_a_deadline() {
        let registry = ConnectionRegistry::new();
        let quick: Vec<Connection> = (0..5).map(|_| registry.register()).collect();
        let slow: Vec<Connection> = (0..2).map(|_| registry.register()).collect();
        let mut quick = serve(quick, Some(Duration::from_millis(10)));
        let mut slow = serve(slow, None);
        tokio::task::yield_now().await;
        let drained = registry
            .drain(&Close::shutdown(), Duration::from_secs(1))
            .await;
        assert_eq!(
            drained,
            Drained {
                asked: 7,
                still_open: 2
            }
        );
        while let Some(close) = quick.join_next().await {
            assert_eq!(close.unwrap(), Close::shutdown());
        }
        slow.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn each_policy_picks_its_own_connections_first() {
        let quick = Some(Duration::ZERO);
        // Newest: the last three registered.
        let registry = ConnectionRegistry::with_policy(100, ShedPolicy::Newest);
        let conns: Vec<Connection> = (0..10).map(|_| registry.register()).collect();
        let newest: Vec<u64> = conns[7..].iter().map(|c| c.id).collect();
        let mut tasks = serve(conns, quick);
        tokio::task::yield_now().await;
        assert_eq!(
            registry
                .shed_some(3, std::iter::empty(), Duration::from_secs(1))
                .await,
            3
        );
        let left: Vec<u64> = registry.lock().open.keys().copied().collect();
        assert!(newest.iter().all(|id| !left.contains(id)), "{left:?}");
        tasks.shutdown().await;

        // Idle longest: the ones not touched since the start.
        let registry = ConnectionRegistry::with_policy(100, ShedPolicy::IdleLongest);
        let conns: Vec<Connection> = (0..6).map(|_| registry.register()).collect();
        tokio::time::advance(Duration::from_secs(5)).await;
        for c in &conns[2..] {
            c.touch();
        }
        let idle: Vec<u64> = conns[..2].iter().map(|c| c.id).collect();
        let mut tasks = serve(conns, quick);
        tokio::task::yield_now().await;
        registry
            .shed_some(2, std::iter::empty(), Duration::from_secs(1))
            .await;
        let left: Vec<u64> = registry.lock().open.keys().copied().collect();
        assert!(idle.iter().all(|id| !left.contains(id)), "{left:?}");
        tasks.shutdown().await;

        // Ranked: lowest first, never the protected ones.
        let registry = ConnectionRegistry::with_policy(100, ShedPolicy::Ranked);
        let conns: Vec<Connection> = (0..4).map(|_| registry.register()).collect();
        conns[0].set_rank(Connection::NEVER_SHED);
        conns[1].set_rank(5);
        conns[2].set_rank(1);
        conns[3].set_rank(Connection::NEVER_SHED);
        let mut tasks = serve(conns, quick);
        tokio::task::yield_now().await;
        let shed = registry
            .shed_some(4, std::iter::empty(), Duration::from_secs(1))
            .await;
        assert_eq!(shed, 2, "the two protected ones stay");
        assert_eq!(registry.len(), 2);
        tasks.shutdown().await;
        assert_eq!(
            "idle".parse::<ShedPolicy>().unwrap(),
            ShedPolicy::IdleLongest
        );
        assert!("oldest".parse::<ShedPolicy>().is_err());
    }

    #[test]
    fn a_full_registry_refuses_reservations_and_a_dropped_one_frees_its_slot() {
        let registry = ConnectionRegistry::with_limit(2);
        let a = registry.reserve().unwrap();
        let b = registry.reserve().unwrap();
        assert!(registry.reserve().is_none() && registry.is_full());
        let conn = a.register();
        assert_eq!(registry.len(), 1, "reserved slots are not open connections");
        assert!(registry.reserve().is_none());
        drop(b);
        let c = registry.reserve().unwrap();
        drop(conn);
        drop(c);
        assert!(!registry.is_full() && registry.is_empty());
    }

    #[test]
    fn reasons_fit_a_close_frame_and_bad_input_gets_its_code() {
        let close = Close::rebalance(Some(&"é".repeat(100)));
        assert!(close.reason.len() <= MAX_REASON);
        assert_eq!(Close::rebalance(None).reason, "rebalance");
        assert_eq!(Close::hint_in("rebalance"), None);
        assert_eq!(close_code_for(InputError::TooBig).code, 1009);
        assert_eq!(close_code_for(InputError::Protocol).code, 1002);
        assert_eq!(close_code_for(InputError::InvalidUtf8).code, 1007);
    }

    #[test]
    fn limits_name_the_field_and_range() {
        WsLimits::default().validate().unwrap();
        let bad = WsLimits {
            max_write_buffer_size: 1000,
            ..WsLimits::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("max_write_buffer_size must be in [65537,"),
            "{err}"
        );
        let bad = WsLimits {
            idle_timeout: Duration::from_secs(1),
            ..WsLimits::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("idle_timeout")
        );
    }
}

//! chitchat's messages over UDP, each datagram authenticated with
//! HMAC-SHA256 when a cluster key is configured, and checked for replays.
//!
//! Datagram layout (all integers little-endian):
//!
//! ```text
//! plain:  0x01 | chitchat message
//! signed: 0x02 | session u64 | counter u64 | unix_ms u64 | tag [32] | chitchat message
//! ```
//!
//! The tag covers everything before it and the message. `session` is random
//! per socket, `counter` grows with every datagram: a receiver keeps a
//! sliding window of counters per session and drops repeats. `unix_ms` only
//! bounds how old a session a replay can come from (two minutes either way);
//! it never enters a balancing decision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use crate::metrics;

/// Largest UDP payload over IPv4; anything bigger is refused.
pub const MAX_DATAGRAM: usize = 65_507;
const PLAIN: u8 = 0x01;
const SIGNED: u8 = 0x02;
const HEADER: usize = 1 + 8 + 8 + 8;
const TAG: usize = 32;
/// How far a signed datagram's clock may be from ours.
const CLOCK_WINDOW: Duration = Duration::from_secs(120);
/// Sessions remembered for replay checks; the least recently seen go first.
const MAX_SESSIONS: usize = 4096;

/// A shared secret for HMAC-SHA256. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

impl ClusterKey {
    /// Shortest accepted key, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from its bytes; at least [`Self::MIN_LEN`] of them.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, clb_core::ConfigError> {
        let bytes = bytes.as_ref();
        if bytes.len() < Self::MIN_LEN {
            return Err(clb_core::ConfigError::Invalid {
                field: "cluster_key",
                value: format!("<{} bytes>", bytes.len()),
                expected: "at least 16 bytes (use a long random string)",
            });
        }
        Ok(ClusterKey(Arc::from(bytes)))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey(<{} bytes>)", self.0.len())
    }
}

/// Why a datagram was dropped: the `reason` label of
/// `clb_rejected_messages_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// No valid header, or a chitchat message that does not parse.
    Malformed,
    /// Larger than a UDP datagram may be.
    Oversized,
    /// Unsigned, but this node requires a cluster key.
    Unsigned,
    /// Signed, but this node has no cluster key to check it with.
    UnexpectedSignature,
    /// The tag matches none of this node's keys: forged, or another cluster.
    BadSignature,
    /// A counter this node has already accepted from that session.
    Replayed,
    /// Its timestamp is more than two minutes from this node's clock.
    Stale,
}

impl Reject {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Oversized => "oversized",
            Reject::Unsigned => "unsigned",
            Reject::UnexpectedSignature => "unexpected_signature",
            Reject::BadSignature => "bad_signature",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale",
        }
    }
}

/// Wraps a chitchat message: signed with `keys[0]` when there is a key.
pub fn seal(
    keys: &[ClusterKey],
    session: u64,
    counter: u64,
    unix_ms: u64,
    message: &[u8],
) -> Vec<u8> {
    let Some(key) = keys.first() else {
        let mut out = Vec::with_capacity(1 + message.len());
        out.push(PLAIN);
        out.extend_from_slice(message);
        return out;
    };
    let mut out = Vec::with_capacity(HEADER + TAG + message.len());
    out.push(SIGNED);
    out.extend_from_slice(&session.to_le_bytes());
    out.extend_from_slice(&counter.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
    let tag = key
        .mac()
        .chain_update(&out)
        .chain_update(message)
        .finalize()
        .into_bytes();
    out.extend_from_slice(&tag);
    out.extend_from_slice(message);
    out
}

/// Checks a datagram and returns the chitchat message bytes inside it.
pub fn open<'a>(
    keys: &[ClusterKey],
    replay: &mut ReplayGuard,
    unix_ms: u64,
    datagram: &'a [u8],
) -> Result<&'a [u8], Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::Oversized);
    }
    match datagram.first() {
        Some(&PLAIN) if keys.is_empty() => Ok(&datagram[1..]),
        Some(&PLAIN) => Err(Reject::Unsigned),
        Some(&SIGNED) if keys.is_empty() => Err(Reject::UnexpectedSignature),
        Some(&SIGNED) => {
            if datagram.len() < HEADER + TAG {
                return Err(Reject::Malformed);
            }
            let (header, rest) = datagram.split_at(HEADER);
            let (tag, message) = rest.split_at(TAG);
            let signed_by_us = keys.iter().any(|key| {
                key.mac()
                    .chain_update(header)
                    .chain_update(message)
                    .verify_slice(tag)
                    .is_ok()
            });
            if !signed_by_us {
                return Err(Reject::BadSignature);
            }
            let field = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&header[1 + 8 * i..9 + 8 * i]);
                u64::from_le_bytes(b)
            };
            let (session, counter, sent_ms) = (field(0), field(1), field(2));
            if sent_ms.abs_diff(unix_ms) > CLOCK_WINDOW.as_millis() as u64 {
                return Err(Reject::Stale);
            }
            replay.check(session, counter)?;
            Ok(message)
        }
        _ => Err(Reject::Malformed),
    }
}

/// Per-session sliding windows of accepted counters.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    sessions: HashMap<u64, Window>,
}

#[derive(Debug)]
struct Window {
    highest: u64,
    /// Bit `i` set: `highest - i` was accepted.
    seen: u64,
    last_used: Instant,
}

impl ReplayGuard {
    /// Accepts `counter` once per session; tolerates reordering within 64.
    pub fn check(&mut self, session: u64, counter: u64) -> Result<(), Reject> {
        let now = Instant::now();
        if !self.sessions.contains_key(&session) && self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(s, _)| *s)
            {
                self.sessions.remove(&oldest);
            }
        }
        let w = self.sessions.entry(session).or_insert(Window {
            highest: counter,
            seen: 0,
            last_used: now,
        });
        w.last_used = now;
        if w.seen == 0 {
            w.highest = counter;
            w.seen = 1;
            return Ok(());
        }
        if counter > w.highest {
            let shift = counter - w.highest;
            w.seen = if shift >= 64 {
                1
            } else {
                (w.seen << shift) | 1
            };
            w.highest = counter;
            return Ok(());
        }
        let back = w.highest - counter;
        if back >= 64 || w.seen & (1 << back) != 0 {
            return Err(Reject::Replayed);
        }
        w.seen |= 1 << back;
        Ok(())
    }
}

/// A chitchat [`Transport`] over UDP that signs and checks every datagram.
pub(crate) struct AuthTransport {
    pub(crate) keys: Arc<[ClusterKey]>,
}

#[async_trait]
impl Transport for AuthTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr).await?;
        Ok(Box::new(AuthSocket {
            socket,
            keys: Arc::clone(&self.keys),
            session: rand::rng().random(),
            counter: 0,
            replay: ReplayGuard::default(),
            buf_send: Vec::new(),
            buf_recv: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

struct AuthSocket {
    socket: tokio::net::UdpSocket,
    keys: Arc<[ClusterKey]>,
    session: u64,
    counter: u64,
    replay: ReplayGuard,
    buf_send: Vec<u8>,
    buf_recv: Box<[u8]>,
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | Interrupted
            | WouldBlock
            | TimedOut
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl Socket for AuthSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.buf_send.clear();
        message.serialize(&mut self.buf_send);
        self.counter += 1;
        let datagram = seal(
            &self.keys,
            self.session,
            self.counter,
            unix_ms(),
            &self.buf_send,
        );
        if datagram.len() > MAX_DATAGRAM {
            // The cluster state has outgrown a datagram; chitchat will retry
            // with a smaller delta next round.
            ::metrics::counter!(metrics::SENT_DROPPED, "reason" => "oversized").increment(1);
            return Ok(());
        }
        ::metrics::counter!(metrics::GOSSIP_PACKETS, "direction" => "sent").increment(1);
        if let Err(e) = self.socket.send_to(&datagram, to).await {
            // A peer that went away is not our failure: the failure detector
            // will notice it.
            tracing::debug!(%to, error = %e, "gossip send failed");
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf_recv).await {
                Ok(got) => got,
                // ICMP "port unreachable" and friends surface here on some
                // systems; they say nothing about the next datagram.
                Err(e) if is_transient(&e) => {
                    tracing::debug!(error = %e, "gossip recv error");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            ::metrics::counter!(metrics::GOSSIP_PACKETS, "direction" => "received").increment(1);
            let message = open(
                &self.keys,
                &mut self.replay,
                unix_ms(),
                &self.buf_recv[..len],
            )
            .and_then(|mut bytes| {
                ChitchatMessage::deserialize(&mut bytes).map_err(|_| Reject::Malformed)
            });
            match message {
                Ok(message) => return Ok((from, message)),
                Err(reject) => {
                    tracing::debug!(%from, reason = reject.label(), "dropped a gossip datagram");
                    ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => reject.label())
                        .increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s).unwrap()
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn signed_datagrams_round_trip_and_rotation_accepts_any_key() {
        let old = key("old-cluster-key-0123456789");
        let new = key("new-cluster-key-0123456789");
        let sent = seal(std::slice::from_ref(&new), 7, 1, NOW, b"hello");
        let mut guard = ReplayGuard::default();
        assert_eq!(open(&[old, new], &mut guard, NOW, &sent), Ok(&b"hello"[..]));
    }

    #[test]
    fn forged_tampered_and_foreign_datagrams_are_refused() {
        let ours = key("ours-ours-ours-ours");
        let theirs = key("theirs-theirs-theirs");
        let mut guard = ReplayGuard::default();
        let foreign = seal(&[theirs], 1, 1, NOW, b"x");
        assert_eq!(
            open(std::slice::from_ref(&ours), &mut guard, NOW, &foreign),
            Err(Reject::BadSignature)
        );
        let mut tampered = seal(std::slice::from_ref(&ours), 1, 2, NOW, b"count=5");
        *tampered.last_mut().unwrap() = b'9';
        assert_eq!(
            open(std::slice::from_ref(&ours), &mut guard, NOW, &tampered),
            Err(Reject::BadSignature)
        );
        let plain = seal(&[], 0, 0, NOW, b"x");
        assert_eq!(
            open(std::slice::from_ref(&ours), &mut guard, NOW, &plain),
            Err(Reject::Unsigned)
        );
        let signed = seal(&[ours], 1, 3, NOW, b"x");
        assert_eq!(
            open(&[], &mut guard, NOW, &signed),
            Err(Reject::UnexpectedSignature)
        );
        assert_eq!(open(&[], &mut guard, NOW, &[]), Err(Reject::Malformed));
        assert_eq!(
            open(&[], &mut guard, NOW, &[0x7f, 1, 2]),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open(&[], &mut guard, NOW, &[SIGNED, 1, 2]),
            Err(Reject::UnexpectedSignature)
        );
        assert_eq!(
            open(
                &[key("ours-ours-ours-ours")],
                &mut guard,
                NOW,
                &[SIGNED, 1, 2]
            ),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open(&[], &mut guard, NOW, &vec![PLAIN; MAX_DATAGRAM + 1]),
            Err(Reject::Oversized)
        );
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let k = key("a-cluster-key-of-length");
        let mut guard = ReplayGuard::default();
        let first = seal(std::slice::from_ref(&k), 42, 10, NOW, b"a");
        assert!(open(std::slice::from_ref(&k), &mut guard, NOW, &first).is_ok());
        assert_eq!(
            open(std::slice::from_ref(&k), &mut guard, NOW, &first),
            Err(Reject::Replayed)
        );
        // Reordered within the window is fine, once.
        let later = seal(std::slice::from_ref(&k), 42, 12, NOW, b"c");
        let between = seal(std::slice::from_ref(&k), 42, 11, NOW, b"b");
        assert!(open(std::slice::from_ref(&k), &mut guard, NOW, &later).is_ok());
        assert!(open(std::slice::from_ref(&k), &mut guard, NOW, &between).is_ok());
        assert_eq!(
            open(std::slice::from_ref(&k), &mut guard, NOW, &between),
            Err(Reject::Replayed)
        );
        // Far behind the window: refused.
        let far = seal(std::slice::from_ref(&k), 42, 100, NOW, b"d");
        assert!(open(std::slice::from_ref(&k), &mut guard, NOW, &far).is_ok());
        let ancient = seal(std::slice::from_ref(&k), 42, 20, NOW, b"e");
        assert_eq!(
            open(std::slice::from_ref(&k), &mut guard, NOW, &ancient),
            Err(Reject::Replayed)
        );
        // A datagram from three minutes ago: refused whatever its counter.
        let old = seal(std::slice::from_ref(&k), 43, 1, NOW - 180_000, b"f");
        assert_eq!(open(&[k], &mut guard, NOW, &old), Err(Reject::Stale));
    }

    #[test]
    fn short_keys_are_refused_and_never_printed() {
        let err = ClusterKey::new("short").unwrap_err();
        assert!(err.to_string().contains("at least 16 bytes"), "{err}");
        assert!(!err.to_string().contains("short"));
        assert_eq!(
            format!("{:?}", key("0123456789abcdef")),
            "ClusterKey(<16 bytes>)"
        );
    }
}

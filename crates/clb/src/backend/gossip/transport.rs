//! chitchat's messages over UDP, each datagram authenticated with
//! HMAC-SHA256 when a cluster key is configured, bound to its sender and its
//! recipient, and checked for replays.
//!
//! Datagram layout (all integers little-endian):
//!
//! ```text
//! plain:  0x01 | chitchat message
//! signed: 0x03 | session u64 | counter u64 | unix_ms u64 | from addr | to addr | tag [32] | chitchat message
//! addr:   0x04 | IPv4 [4] | port u16     or     0x06 | IPv6 [16] | port u16
//! ```
//!
//! The tag covers everything before it and the message. A receiver accepts
//! a signed datagram only if the tag is right, `to` is its own advertised
//! address, `from` is the address the datagram really came from, and the
//! counter is new for the session: a datagram captured between two nodes
//! and replayed to a third, or from another address, is dropped and
//! counted, and never answered. `session` is random per socket, `counter`
//! grows with every datagram; the receiver keeps a sliding window of
//! counters per session. `unix_ms` only bounds how old a session a replay
//! can come from (two minutes either way); it never enters a balancing
//! decision.
//!
//! Signed datagrams of the first release (tag `0x02`) were not bound to an
//! address; they are refused (`legacy_datagram`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use crate::metrics;
use crate::ratelimit::RateLimiter;

/// Largest UDP payload over IPv4; anything bigger is refused.
pub const MAX_DATAGRAM: usize = 65_507;
const PLAIN: u8 = 0x01;
const LEGACY_SIGNED: u8 = 0x02;
const SIGNED: u8 = 0x03;
const COUNTERS: usize = 1 + 8 + 8 + 8;
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

    /// The keys in an environment variable, comma-separated (sign with the
    /// first, accept any: rotation); none when it is unset or empty. The
    /// error names the variable, never the keys.
    ///
    /// ```
    /// let keys = clb::ClusterKey::list_from_env("CLB_DOC_EXAMPLE_UNSET")?;
    /// assert!(keys.is_empty());
    /// # Ok::<(), clb_core::ConfigError>(())
    /// ```
    pub fn list_from_env(var: &str) -> Result<Vec<ClusterKey>, clb_core::ConfigError> {
        let Ok(value) = std::env::var(var) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .filter(|k| !k.is_empty())
            .map(|k| {
                ClusterKey::new(k).map_err(|_| clb_core::ConfigError::Invalid {
                    field: "cluster_key",
                    value: format!("${var}"),
                    expected: "keys of at least 16 bytes each, comma-separated",
                })
            })
            .collect()
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// Signed for another recipient: replayed to this node, or this node is
    /// reached at an address other than the one it advertises.
    WrongRecipient,
    /// Sent from an address other than the one it was signed for: replayed,
    /// or the sender is behind a NAT and advertises the wrong address.
    WrongSender,
    /// Signed in the first release's format, which bound no address.
    LegacyDatagram,
}

impl Reject {
    /// Every reason, for metrics that must exist from the start.
    pub const ALL: [Reject; 10] = [
        Reject::Malformed,
        Reject::Oversized,
        Reject::Unsigned,
        Reject::UnexpectedSignature,
        Reject::BadSignature,
        Reject::Replayed,
        Reject::Stale,
        Reject::WrongRecipient,
        Reject::WrongSender,
        Reject::LegacyDatagram,
    ];

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
            Reject::WrongRecipient => "wrong_recipient",
            Reject::WrongSender => "wrong_sender",
            Reject::LegacyDatagram => "legacy_datagram",
        }
    }

    /// What an operator should check, for the log line.
    pub fn advice(self) -> &'static str {
        match self {
            Reject::Malformed | Reject::Oversized => {
                "not gossip of this version: something else sends to the gossip port"
            }
            Reject::Unsigned => {
                "a peer sends unsigned gossip but this node has a cluster key: give every node the same key"
            }
            Reject::UnexpectedSignature => {
                "peers sign their gossip but this node has no cluster key: set --cluster-key"
            }
            Reject::BadSignature => {
                "signed with a key this node does not have: check that every node has the same cluster key"
            }
            Reject::Replayed => "a datagram arrived twice: a replay, or a network that duplicates",
            Reject::Stale => "its clock is more than two minutes from this node's: check NTP",
            Reject::WrongRecipient => {
                "addressed to another node: a replay, or this node is reached at an address other than its advertised one (--gossip-advertise)"
            }
            Reject::WrongSender => {
                "sent from an address other than its sender's: a replay, or a peer behind NAT advertising the wrong address (--gossip-advertise)"
            }
            Reject::LegacyDatagram => {
                "a node of the first release: upgrade it (its datagrams are not bound to an address)"
            }
        }
    }
}

/// The two addresses a signed datagram is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The sender's advertised gossip address.
    pub from: SocketAddr,
    /// The recipient's address, as the sender dialled it.
    pub to: SocketAddr,
}

/// Wraps a chitchat message: signed with `keys[0]` and bound to `route`
/// when there is a key, plain otherwise.
pub fn seal(
    keys: &[ClusterKey],
    session: u64,
    counter: u64,
    unix_ms: u64,
    route: Route,
    message: &[u8],
) -> Vec<u8> {
    let Some(key) = keys.first() else {
        let mut out = Vec::with_capacity(1 + message.len());
        out.push(PLAIN);
        out.extend_from_slice(message);
        return out;
    };
    let mut out = Vec::with_capacity(COUNTERS + 2 * 19 + TAG + message.len());
    out.push(SIGNED);
    out.extend_from_slice(&session.to_le_bytes());
    out.extend_from_slice(&counter.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
    put_addr(&mut out, route.from);
    put_addr(&mut out, route.to);
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

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0x04);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(0x06);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// Reads an address at the start of `bytes`; returns it and its length.
fn take_addr(bytes: &[u8]) -> Option<(SocketAddr, usize)> {
    let (ip, len): (IpAddr, usize) = match bytes.first()? {
        0x04 => {
            let b: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
            (Ipv4Addr::from(b).into(), 5)
        }
        0x06 => {
            let b: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
            (Ipv6Addr::from(b).into(), 17)
        }
        _ => return None,
    };
    let port: [u8; 2] = bytes.get(len..len + 2)?.try_into().ok()?;
    Some((SocketAddr::new(ip, u16::from_le_bytes(port)), len + 2))
}

/// Who a receiving socket is, for [`open`].
#[derive(Clone, Debug)]
pub struct Receiver<'a> {
    /// The cluster keys; empty for a trusted network.
    pub keys: &'a [ClusterKey],
    /// The addresses this node accepts as a datagram's `to`.
    pub own: &'a [SocketAddr],
    /// Where the datagram really came from.
    pub from: SocketAddr,
    /// This node's clock, in ms since the Unix epoch.
    pub unix_ms: u64,
}

/// Checks a datagram and returns the chitchat message bytes inside it.
/// The replay window is only updated for datagrams that pass every other
/// check, so forged datagrams cannot push genuine ones out of it.
pub fn open<'a>(
    rx: &Receiver<'_>,
    replay: &mut ReplayGuard,
    datagram: &'a [u8],
) -> Result<&'a [u8], Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::Oversized);
    }
    match datagram.first() {
        Some(&PLAIN) if rx.keys.is_empty() => Ok(&datagram[1..]),
        Some(&PLAIN) => Err(Reject::Unsigned),
        Some(&SIGNED | &LEGACY_SIGNED) if rx.keys.is_empty() => Err(Reject::UnexpectedSignature),
        Some(&LEGACY_SIGNED) => Err(Reject::LegacyDatagram),
        Some(&SIGNED) => {
            let rest = datagram.get(COUNTERS..).ok_or(Reject::Malformed)?;
            let (from, a) = take_addr(rest).ok_or(Reject::Malformed)?;
            let (to, b) = take_addr(&rest[a..]).ok_or(Reject::Malformed)?;
            let header_len = COUNTERS + a + b;
            if datagram.len() < header_len + TAG {
                return Err(Reject::Malformed);
            }
            let (header, rest) = datagram.split_at(header_len);
            let (tag, message) = rest.split_at(TAG);
            let signed_by_us = rx.keys.iter().any(|key| {
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
            if sent_ms.abs_diff(rx.unix_ms) > CLOCK_WINDOW.as_millis() as u64 {
                return Err(Reject::Stale);
            }
            if !rx.own.contains(&to) {
                return Err(Reject::WrongRecipient);
            }
            if from != rx.from {
                return Err(Reject::WrongSender);
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

/// What the transport has dropped, for the backend's health and status.
#[derive(Debug, Default)]
pub(crate) struct RejectStats {
    counts: [AtomicU64; Reject::ALL.len()],
    last: Mutex<Option<(Reject, SocketAddr)>>,
}

impl RejectStats {
    fn note(&self, reject: Reject, from: SocketAddr) {
        if let Some(i) = Reject::ALL.iter().position(|r| *r == reject) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((reject, from));
    }

    /// Every reason with a non-zero count.
    pub(crate) fn nonzero(&self) -> Vec<(Reject, u64)> {
        Reject::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The last rejection and where it came from.
    pub(crate) fn last(&self) -> Option<(Reject, SocketAddr)> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What gossip sends and receives datagrams through: a real UDP socket
/// ([`tokio::net::UdpSocket`]), or a simulated one, so that partitions,
/// loss and crashes can be tested deterministically (the turmoil tests).
/// Everything above it (signing, replay checks, chitchat) is the same.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Sends one datagram to `to`.
    fn send_to(
        &self,
        buf: &[u8],
        to: SocketAddr,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Receives one datagram and who sent it.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = std::io::Result<(usize, SocketAddr)>> + Send;
    /// The address the socket is bound to.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn send_to(
        &self,
        buf: &[u8],
        to: SocketAddr,
    ) -> impl Future<Output = std::io::Result<usize>> + Send {
        tokio::net::UdpSocket::send_to(self, buf, to)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = std::io::Result<(usize, SocketAddr)>> + Send {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// A chitchat [`Transport`] over UDP that signs and checks every datagram.
pub(crate) struct AuthTransport<S> {
    pub(crate) keys: Arc<[ClusterKey]>,
    /// This node's advertised gossip address: the `from` of what it sends.
    pub(crate) advertise: SocketAddr,
    /// The addresses this node accepts as a datagram's `to`.
    pub(crate) own: Arc<[SocketAddr]>,
    /// The socket, bound before chitchat starts so that port 0 works and
    /// the real address is advertised.
    pub(crate) socket: Mutex<Option<S>>,
    pub(crate) stats: Arc<RejectStats>,
}

#[async_trait]
impl<S: DatagramSocket> Transport for AuthTransport<S> {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket was already opened"))?;
        Ok(Box::new(AuthSocket {
            socket,
            keys: Arc::clone(&self.keys),
            advertise: self.advertise,
            own: Arc::clone(&self.own),
            session: rand::rng().random(),
            counter: 0,
            replay: ReplayGuard::default(),
            buf_send: Vec::new(),
            buf_recv: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            stats: Arc::clone(&self.stats),
            log: RateLimiter::default(),
        }))
    }
}

struct AuthSocket<S> {
    socket: S,
    keys: Arc<[ClusterKey]>,
    advertise: SocketAddr,
    own: Arc<[SocketAddr]>,
    session: u64,
    counter: u64,
    replay: ReplayGuard,
    buf_send: Vec<u8>,
    buf_recv: Box<[u8]>,
    stats: Arc<RejectStats>,
    log: RateLimiter,
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
impl<S: DatagramSocket> Socket for AuthSocket<S> {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.buf_send.clear();
        message.serialize(&mut self.buf_send);
        self.counter += 1;
        let route = Route {
            from: self.advertise,
            to,
        };
        let datagram = seal(
            &self.keys,
            self.session,
            self.counter,
            unix_ms(),
            route,
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
            let rx = Receiver {
                keys: &self.keys,
                own: &self.own,
                from,
                unix_ms: unix_ms(),
            };
            let message =
                open(&rx, &mut self.replay, &self.buf_recv[..len]).and_then(|mut bytes| {
                    ChitchatMessage::deserialize(&mut bytes).map_err(|_| Reject::Malformed)
                });
            match message {
                Ok(message) => return Ok((from, message)),
                Err(reject) => {
                    ::metrics::counter!(metrics::REJECTED_MESSAGES, "reason" => reject.label())
                        .increment(1);
                    self.stats.note(reject, from);
                    if let Some(n) = self.log.hit(reject.label()) {
                        tracing::warn!(%from, reason = reject.label(), dropped = n,
                            "dropped {n} gossip datagram(s) since the last report ({}), the last from {from}: {}",
                            reject.label(), reject.advice());
                    }
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

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// n2 (port 2) sending to n3 (port 3).
    const N2_TO_N3: Route = Route {
        from: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2),
        to: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3),
    };

    const OWN: [[SocketAddr; 1]; 3] = [
        [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)],
        [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2)],
        [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3)],
    ];

    /// What node `port` (1 to 3) accepts from `from`, with `keys`.
    fn rx(keys: &[ClusterKey], port: u16, from: SocketAddr) -> Receiver<'_> {
        Receiver {
            keys,
            own: &OWN[usize::from(port - 1)],
            from,
            unix_ms: NOW,
        }
    }

    #[test]
    fn signed_datagrams_round_trip_and_rotation_accepts_any_key() {
        let old = key("old-cluster-key-0123456789");
        let new = key("new-cluster-key-0123456789");
        let sent = seal(std::slice::from_ref(&new), 7, 1, NOW, N2_TO_N3, b"hello");
        let mut guard = ReplayGuard::default();
        let keys = [old, new];
        assert_eq!(
            open(&rx(&keys, 3, addr(2)), &mut guard, &sent),
            Ok(&b"hello"[..])
        );
        let v6 = Route {
            from: "[::1]:7001".parse().unwrap(),
            to: "[::1]:7002".parse().unwrap(),
        };
        let sent = seal(&keys, 7, 2, NOW, v6, b"six");
        let own = [v6.to];
        let r = Receiver {
            keys: &keys,
            own: &own,
            from: v6.from,
            unix_ms: NOW,
        };
        assert_eq!(open(&r, &mut guard, &sent), Ok(&b"six"[..]));
    }

    #[test]
    fn a_datagram_replayed_to_another_node_or_from_another_address_is_refused() {
        let k = [key("a-cluster-key-of-length")];
        // Captured between n2 and n3 ...
        let captured = seal(&k, 9, 1, NOW, N2_TO_N3, b"cluster state");
        // ... replayed to n1 from an attacker's address, or n2's own:
        let mut n1 = ReplayGuard::default();
        assert_eq!(
            open(&rx(&k, 1, addr(6666)), &mut n1, &captured),
            Err(Reject::WrongRecipient)
        );
        assert_eq!(
            open(&rx(&k, 1, addr(2)), &mut n1, &captured),
            Err(Reject::WrongRecipient)
        );
        // ... replayed to n3 itself, from elsewhere:
        let mut n3 = ReplayGuard::default();
        assert_eq!(
            open(&rx(&k, 3, addr(6666)), &mut n3, &captured),
            Err(Reject::WrongSender)
        );
        // Neither rejection used up the counter: the genuine one still passes once.
        assert!(open(&rx(&k, 3, addr(2)), &mut n3, &captured).is_ok());
        assert_eq!(
            open(&rx(&k, 3, addr(2)), &mut n3, &captured),
            Err(Reject::Replayed)
        );
        // The addresses are under the tag: rewriting them breaks it.
        let mut rewritten = captured.clone();
        rewritten[COUNTERS + 7 + 5] = 1; // the low byte of `to`'s port: n3 -> n1
        assert_eq!(
            open(&rx(&k, 1, addr(2)), &mut ReplayGuard::default(), &rewritten),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn forged_tampered_foreign_and_legacy_datagrams_are_refused() {
        let ours = [key("ours-ours-ours-ours")];
        let theirs = [key("theirs-theirs-theirs")];
        let mut guard = ReplayGuard::default();
        let from_n2 = rx(&ours, 3, addr(2));
        let foreign = seal(&theirs, 1, 1, NOW, N2_TO_N3, b"x");
        assert_eq!(
            open(&from_n2, &mut guard, &foreign),
            Err(Reject::BadSignature)
        );
        let mut tampered = seal(&ours, 1, 2, NOW, N2_TO_N3, b"count=5");
        *tampered.last_mut().unwrap() = b'9';
        assert_eq!(
            open(&from_n2, &mut guard, &tampered),
            Err(Reject::BadSignature)
        );
        let plain = seal(&[], 0, 0, NOW, N2_TO_N3, b"x");
        assert_eq!(open(&from_n2, &mut guard, &plain), Err(Reject::Unsigned));
        let signed = seal(&ours, 1, 3, NOW, N2_TO_N3, b"x");
        let keyless = rx(&[], 3, addr(2));
        assert_eq!(
            open(&keyless, &mut guard, &signed),
            Err(Reject::UnexpectedSignature)
        );
        assert_eq!(open(&keyless, &mut guard, &plain), Ok(&b"x"[..]));
        let mut legacy = signed.clone();
        legacy[0] = LEGACY_SIGNED;
        assert_eq!(
            open(&from_n2, &mut guard, &legacy),
            Err(Reject::LegacyDatagram)
        );
        for junk in [&[][..], &[0x7f, 1, 2][..], &[SIGNED, 1, 2][..]] {
            assert_eq!(open(&from_n2, &mut guard, junk), Err(Reject::Malformed));
        }
        let mut bad_addr = signed.clone();
        bad_addr[COUNTERS] = 0x05;
        assert_eq!(
            open(&from_n2, &mut guard, &bad_addr),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open(&keyless, &mut guard, &vec![PLAIN; MAX_DATAGRAM + 1]),
            Err(Reject::Oversized)
        );
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let k = [key("a-cluster-key-of-length")];
        let from_n2 = rx(&k, 3, addr(2));
        let mut guard = ReplayGuard::default();
        let first = seal(&k, 42, 10, NOW, N2_TO_N3, b"a");
        assert!(open(&from_n2, &mut guard, &first).is_ok());
        assert_eq!(open(&from_n2, &mut guard, &first), Err(Reject::Replayed));
        // Reordered within the window is fine, once.
        let later = seal(&k, 42, 12, NOW, N2_TO_N3, b"c");
        let between = seal(&k, 42, 11, NOW, N2_TO_N3, b"b");
        assert!(open(&from_n2, &mut guard, &later).is_ok());
        assert!(open(&from_n2, &mut guard, &between).is_ok());
        assert_eq!(open(&from_n2, &mut guard, &between), Err(Reject::Replayed));
        // Far behind the window: refused.
        let far = seal(&k, 42, 100, NOW, N2_TO_N3, b"d");
        assert!(open(&from_n2, &mut guard, &far).is_ok());
        let ancient = seal(&k, 42, 20, NOW, N2_TO_N3, b"e");
        assert_eq!(open(&from_n2, &mut guard, &ancient), Err(Reject::Replayed));
        // A datagram from three minutes ago: refused whatever its counter.
        let old = seal(&k, 43, 1, NOW - 180_000, N2_TO_N3, b"f");
        assert_eq!(open(&from_n2, &mut guard, &old), Err(Reject::Stale));
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

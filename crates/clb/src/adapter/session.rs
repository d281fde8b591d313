//! Running one WebSocket connection under the [`WsLimits`], so that a
//! service writes only what its connection does.
//!
//! [`run`] drives the socket — reading, pings, the idle timeout, every send
//! under its timeout, the close with its deadline, the close codes for bad
//! input — and hands the service a [`Session`]: messages in, messages out.
//! When the balancer sheds the connection, the driver sends the close frame
//! (1012 and the hint) and the service's [`Session::recv`] returns `None`;
//! when the service is done and drops its session, the driver closes with
//! 1000. Both run in the connection's task; the session's queues hold one
//! message each way, so a slow side slows the other instead of piling up.
//!
//! The WebSocket library is behind [`WsTransport`], implemented for axum's
//! `WebSocket` (feature `axum`) and tokio-tungstenite's `WebSocketStream`
//! (feature `tungstenite`).

use std::future::Future;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::websocket::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, Close, Connection, InputError, WsLimits, close_code_for,
};
use crate::metrics;

/// What a [`WsTransport`] read.
#[derive(Debug)]
#[non_exhaustive]
pub enum Frame<M> {
    /// A text or binary message, for the service.
    Message(M),
    /// A ping or a pong: the client is alive (the library answers pings).
    Heartbeat,
    /// The client's close frame (the library answers it as it reads on).
    Closed,
    /// Input the client must be told off for, with its close code.
    Bad(InputError),
    /// The connection is gone (reset, ended, or already closed).
    Gone,
}

/// The send failed; the connection is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket send failed")]
pub struct SendFailed;

/// A WebSocket connection as the session driver needs it.
pub trait WsTransport: Send + 'static {
    /// The library's message type, as the service sees it.
    type Message: Send + 'static;

    /// The next frame. Must be cancel-safe.
    fn next_frame(&mut self) -> impl Future<Output = Frame<Self::Message>> + Send;

    /// Sends a message, flushed.
    fn send_message(
        &mut self,
        message: Self::Message,
    ) -> impl Future<Output = Result<(), SendFailed>> + Send;

    /// Sends a ping, flushed.
    fn send_ping(&mut self) -> impl Future<Output = Result<(), SendFailed>> + Send;

    /// Sends a close frame, flushed.
    fn send_close(&mut self, close: &Close) -> impl Future<Output = Result<(), SendFailed>> + Send;
}

/// How a session ended: the `reason` label of `clb_ws_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The client closed, or went away.
    Client,
    /// The service dropped its session: closed with 1000.
    Server,
    /// The balancer shed it: closed with 1012 and the hint.
    Shed,
    /// The node shut down: closed with 1012.
    Shutdown,
    /// A message over the size limit: 1009.
    TooBig,
    /// A protocol violation: 1002.
    Protocol,
    /// A text message that was not UTF-8: 1007.
    InvalidUtf8,
    /// A send outlasted the send timeout: dropped.
    SendTimeout,
    /// Silent past the idle timeout: 1001.
    Idle,
    /// The close frame could not be sent by the close deadline: dropped.
    CloseDeadline,
}

impl Ended {
    /// Every label, for metrics that must exist from the start.
    pub const ALL: [Ended; 10] = [
        Ended::Client,
        Ended::Server,
        Ended::Shed,
        Ended::Shutdown,
        Ended::TooBig,
        Ended::Protocol,
        Ended::InvalidUtf8,
        Ended::SendTimeout,
        Ended::Idle,
        Ended::CloseDeadline,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Server => "server",
            Ended::Shed => "shed",
            Ended::Shutdown => "shutdown",
            Ended::TooBig => "too_big",
            Ended::Protocol => "protocol",
            Ended::InvalidUtf8 => "invalid_utf8",
            Ended::SendTimeout => "send_timeout",
            Ended::Idle => "idle",
            Ended::CloseDeadline => "close_deadline",
        }
    }
}

/// The session is over: the connection was shed, closed or broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket session is over")]
pub struct SessionOver;

/// The service's end of one connection; see the [module docs](self).
#[derive(Debug)]
pub struct Session<M> {
    incoming: mpsc::Receiver<M>,
    outgoing: mpsc::Sender<M>,
}

impl<M: Send + 'static> Session<M> {
    /// The next text or binary message from the client; `None` once the
    /// connection is over (shed, closed, broken, too quiet), its close
    /// already taken care of. Cancel-safe.
    pub async fn recv(&mut self) -> Option<M> {
        self.incoming.recv().await
    }

    /// Sends a message to the client (under the send timeout, by the
    /// driver); waits while one is still on its way. `Err` once the
    /// connection is over.
    pub async fn send(&self, message: M) -> Result<(), SessionOver> {
        self.outgoing.send(message).await.map_err(|_| SessionOver)
    }

    /// A handle that sends into this session from another task (a push
    /// stream, say).
    pub fn sender(&self) -> mpsc::Sender<M> {
        self.outgoing.clone()
    }
}

/// Runs `handler` on a session of `transport`, under `limits`, until both
/// the connection and the handler are done; counts how it ended in
/// `clb_ws_closed_total`. The registration in `conn` ends with the
/// connection: the registry's count is what is open.
pub async fn run<T, F, Fut>(transport: T, conn: Connection, limits: &WsLimits, handler: F) -> Ended
where
    T: WsTransport,
    F: FnOnce(Session<T::Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (in_tx, in_rx) = mpsc::channel(1);
    let (out_tx, out_rx) = mpsc::channel(1);
    let session = Session {
        incoming: in_rx,
        outgoing: out_tx,
    };
    let (ended, ()) = tokio::join!(
        drive(transport, conn, limits, in_tx, out_rx),
        handler(session)
    );
    ::metrics::counter!(metrics::WS_CLOSED, "reason" => ended.label()).increment(1);
    ended
}

/// Why the loop stopped, and the close frame to send, if any.
type Stop = (Option<Close>, Ended);

fn shed(close: Close) -> Stop {
    let ended = if close == Close::shutdown() {
        Ended::Shutdown
    } else {
        Ended::Shed
    };
    (Some(close), ended)
}

fn bad(kind: InputError) -> Stop {
    let ended = match kind {
        InputError::TooBig => Ended::TooBig,
        InputError::InvalidUtf8 => Ended::InvalidUtf8,
        _ => Ended::Protocol,
    };
    (Some(close_code_for(kind)), ended)
}

fn normal() -> Stop {
    let close = Close {
        code: CLOSE_NORMAL,
        reason: String::new(),
    };
    (Some(close), Ended::Server)
}

/// What the loop sends next.
enum Out<M> {
    Message(M),
    Ping,
}

async fn drive<T: WsTransport>(
    mut t: T,
    mut conn: Connection,
    limits: &WsLimits,
    to_service: mpsc::Sender<T::Message>,
    mut from_service: mpsc::Receiver<T::Message>,
) -> Ended {
    let mut last_heard = Instant::now();
    let mut ping =
        tokio::time::interval_at(last_heard + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (close, mut ended) = loop {
        let out = tokio::select! {
            close = conn.until_shed() => break shed(close),
            frame = t.next_frame() => match frame {
                Frame::Message(m) => {
                    last_heard = Instant::now();
                    conn.touch();
                    match deliver(&mut t, &mut conn, limits, &to_service, &mut from_service, m).await {
                        Ok(()) => continue,
                        Err(stop) => break stop,
                    }
                }
                Frame::Heartbeat => {
                    last_heard = Instant::now();
                    continue;
                }
                Frame::Closed => {
                    // Reading on sends the library's answer to the close.
                    let _ = tokio::time::timeout(limits.close_deadline, drain(&mut t)).await;
                    break (None, Ended::Client);
                }
                Frame::Bad(kind) => break bad(kind),
                Frame::Gone => break (None, Ended::Client),
            },
            out = from_service.recv() => match out {
                Some(m) => Out::Message(m),
                None => break normal(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    let close = Close { code: CLOSE_GOING_AWAY, reason: "idle timeout".into() };
                    break (Some(close), Ended::Idle);
                }
                Out::Ping
            }
        };
        if let Err(stop) = send(&mut t, &mut conn, limits, out).await {
            break stop;
        }
    };
    // The service's `recv` ends now, not after the close.
    drop(to_service);
    if let Some(close) = close {
        let deadline = Instant::now() + limits.close_deadline;
        match tokio::time::timeout_at(deadline, t.send_close(&close)).await {
            // The client's answer, so the close frame is read before the
            // connection goes; a client that does not answer is dropped at
            // the deadline all the same.
            Ok(Ok(())) => {
                let _ = tokio::time::timeout_at(deadline, drain(&mut t)).await;
            }
            Ok(Err(SendFailed)) => {}
            // A close that cannot be sent in time is a drop.
            Err(_) => ended = Ended::CloseDeadline,
        }
    }
    drop(t);
    drop(conn);
    ended
}

/// Sends under the send timeout, racing a shed: a client that does not read
/// neither holds the session past the timeout nor delays a shed's close
/// deadline.
async fn send<T: WsTransport>(
    t: &mut T,
    conn: &mut Connection,
    limits: &WsLimits,
    out: Out<T::Message>,
) -> Result<(), Stop> {
    let sending = async {
        match out {
            Out::Message(m) => t.send_message(m).await,
            Out::Ping => t.send_ping().await,
        }
    };
    tokio::select! {
        sent = tokio::time::timeout(limits.send_timeout, sending) => match sent {
            Ok(Ok(())) => {
                conn.touch();
                Ok(())
            }
            _ => Err((None, Ended::SendTimeout)),
        },
        close = conn.until_shed() => Err(shed(close)),
    }
}

/// Hands a message to the service, writing out what the service sends
/// meanwhile (so neither side can wait on the other forever), racing a shed.
async fn deliver<T: WsTransport>(
    t: &mut T,
    conn: &mut Connection,
    limits: &WsLimits,
    to_service: &mpsc::Sender<T::Message>,
    from_service: &mut mpsc::Receiver<T::Message>,
    message: T::Message,
) -> Result<(), Stop> {
    loop {
        tokio::select! {
            permit = to_service.reserve() => {
                return match permit {
                    Ok(permit) => {
                        permit.send(message);
                        Ok(())
                    }
                    // The service dropped its session.
                    Err(_) => Err(normal()),
                };
            }
            out = from_service.recv() => match out {
                Some(m) => send(t, conn, limits, Out::Message(m)).await?,
                None => return Err(normal()),
            },
            close = conn.until_shed() => return Err(shed(close)),
        }
    }
}

/// Reads until the connection ends (after a close, the client's answer).
async fn drain<T: WsTransport>(t: &mut T) {
    loop {
        if let Frame::Gone | Frame::Bad(_) = t.next_frame().await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::adapter::websocket::ConnectionRegistry;

    /// A scripted client: frames to read, then silence; records what it got.
    #[derive(Clone, Default)]
    struct Script {
        incoming: Arc<Mutex<VecDeque<Frame<String>>>>,
        sent: Arc<Mutex<Vec<String>>>,
        /// Sends stall forever (a client that does not read).
        stall: bool,
        /// No more frames means the client went away (else silence).
        hang_up: bool,
    }

    impl WsTransport for Script {
        type Message = String;

        async fn next_frame(&mut self) -> Frame<String> {
            let next = self.incoming.lock().unwrap().pop_front();
            match next {
                Some(f) => f,
                None if self.hang_up => Frame::Gone,
                None => std::future::pending().await,
            }
        }

        async fn send_message(&mut self, m: String) -> Result<(), SendFailed> {
            self.record(m).await
        }

        async fn send_ping(&mut self) -> Result<(), SendFailed> {
            self.record("ping".into()).await
        }

        async fn send_close(&mut self, close: &Close) -> Result<(), SendFailed> {
            self.record(format!("close {}", close.code)).await
        }
    }

    impl Script {
        async fn record(&mut self, what: String) -> Result<(), SendFailed> {
            if self.stall {
                std::future::pending::<()>().await;
            }
            self.sent.lock().unwrap().push(what);
            Ok(())
        }

        fn with(frames: Vec<Frame<String>>) -> Self {
            let script = Script::default();
            script.incoming.lock().unwrap().extend(frames);
            script
        }
    }

    fn limits() -> WsLimits {
        WsLimits {
            ping_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(2),
            close_deadline: Duration::from_millis(500),
            ..WsLimits::default()
        }
    }

    async fn echo(mut session: Session<String>) {
        while let Some(m) = session.recv().await {
            if session.send(format!("echo {m}")).await.is_err() {
                break;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn echoes_and_closes_1000_when_the_service_is_done_or_ends_when_the_client_goes() {
        let registry = ConnectionRegistry::new();
        let script = Script::with(vec![Frame::Message("a".into()), Frame::Message("b".into())]);
        let twice = |mut session: Session<String>| async move {
            for _ in 0..2 {
                let Some(m) = session.recv().await else {
                    return;
                };
                let _ = session.send(format!("echo {m}")).await;
            }
        };
        let ended = run(script.clone(), registry.register(), &limits(), twice).await;
        assert_eq!(ended, Ended::Server);
        assert_eq!(
            *script.sent.lock().unwrap(),
            ["echo a", "echo b", "close 1000"]
        );
        assert!(
            registry.is_empty(),
            "the registration ends with the connection"
        );
        let gone = Script {
            hang_up: true,
            ..Script::default()
        };
        let ended = run(gone.clone(), registry.register(), &limits(), echo).await;
        assert_eq!(ended, Ended::Client);
        assert!(gone.sent.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shed_closes_1012_and_ends_the_service_loop() {
        let registry = ConnectionRegistry::new();
        let script = Script::default();
        let conn = registry.register();
        let limits = limits();
        let session = run(script.clone(), conn, &limits, echo);
        let shedding = registry.shed_some(
            1,
            std::iter::once(Some("ws://b/ws".into())),
            Duration::from_secs(1),
        );
        let (ended, shed) = tokio::join!(session, shedding);
        assert_eq!((ended, shed), (Ended::Shed, 1));
        assert_eq!(*script.sent.lock().unwrap(), ["close 1012"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_going_away() {
        let registry = ConnectionRegistry::new();
        let script = Script::default();
        let ended = run(script.clone(), registry.register(), &limits(), echo).await;
        assert_eq!(ended, Ended::Idle);
        let sent = script.sent.lock().unwrap().clone();
        assert_eq!(sent, ["ping", "ping", "close 1001"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped_and_a_shed_does_not_wait_for_it() {
        let registry = ConnectionRegistry::new();
        let mut stalled = Script::with(vec![Frame::Message("x".into())]);
        stalled.stall = true;
        let started = Instant::now();
        let ended = run(stalled, registry.register(), &limits(), echo).await;
        assert_eq!(ended, Ended::SendTimeout);
        assert_eq!(started.elapsed(), limits().send_timeout);
        // Shed while the echo is stuck: dropped at the close deadline.
        let mut stalled = Script::with(vec![Frame::Message("x".into())]);
        stalled.stall = true;
        let limits = limits();
        let session = run(stalled, registry.register(), &limits, echo);
        let shedding = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            registry
                .shed_some(1, std::iter::empty(), Duration::from_secs(5))
                .await
        };
        let started = Instant::now();
        let (ended, shed) = tokio::join!(session, shedding);
        assert_eq!((ended, shed), (Ended::CloseDeadline, 1));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100) + limits.close_deadline
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_gets_its_close_code_and_a_done_service_closes_1000() {
        let registry = ConnectionRegistry::new();
        let script = Script::with(vec![Frame::Bad(InputError::TooBig)]);
        let ended = run(script.clone(), registry.register(), &limits(), echo).await;
        assert_eq!(ended, Ended::TooBig);
        assert_eq!(*script.sent.lock().unwrap(), ["close 1009"]);
        // A service that sends one message and is done.
        let script = Script::default();
        let ended = run(
            script.clone(),
            registry.register(),
            &limits(),
            |s: Session<String>| async move {
                let _ = s.send("bye".into()).await;
            },
        )
        .await;
        assert_eq!(ended, Ended::Server);
        assert_eq!(*script.sent.lock().unwrap(), ["bye", "close 1000"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_reads_nothing_still_sends_and_is_still_shed() {
        let registry = ConnectionRegistry::new();
        let frames = (0..5).map(|i| Frame::Message(format!("m{i}"))).collect();
        let script = Script::with(frames);
        let pusher = |s: Session<String>| async move {
            for i in 0..3 {
                let _ = s.send(format!("push {i}")).await;
            }
            std::future::pending::<()>().await;
        };
        let conn = registry.register();
        let limits = limits();
        let session = async {
            tokio::select! {
                ended = run(script.clone(), conn, &limits, pusher) => Some(ended),
                () = tokio::time::sleep(Duration::from_secs(1)) => None,
            }
        };
        let shedding = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            registry
                .shed_some(1, std::iter::empty(), Duration::from_secs(1))
                .await
        };
        let (ended, shed) = tokio::join!(session, shedding);
        // The service never reads: the driver still wrote its pushes, and
        // the shed still closed it (the service itself is then cut off by
        // the test's timeout, as its task would be by its owner).
        assert_eq!(shed, 1);
        assert_eq!(ended, None);
        let sent = script.sent.lock().unwrap().clone();
        assert_eq!(sent, ["push 0", "push 1", "push 2", "close 1012"]);
    }
}

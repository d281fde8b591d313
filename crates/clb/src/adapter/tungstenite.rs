//! The WebSocket adapter for plain tokio-tungstenite servers (feature
//! `tungstenite`): the handshake with admission, and the session under the
//! limits.
//!
//! ```no_run
//! # async fn serve(gate: clb::adapter::websocket::WsGate) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let gate = gate.clone();
//!     tokio::spawn(async move {
//!         // Refused handshakes get 503 with Retry-After and a hint.
//!         let _ = gate
//!             .accept_stream(stream, |mut session| async move {
//!                 while let Some(message) = session.recv().await {
//!                     if session.send(message).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             })
//!             .await;
//!     });
//! }
//! # }
//! ```

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

use super::session::{self, Ended, Frame, SendFailed, Session, WsTransport};
use super::websocket::{Close, HINT_HEADER, Refused, WsGate, WsLimits};

impl<S> WsTransport for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Message = Message;

    async fn next_frame(&mut self) -> Frame<Message> {
        match self.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => Frame::Message(m),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Frame::Heartbeat,
            Some(Ok(Message::Close(_))) => Frame::Closed,
            Some(Err(e)) => match super::tungstenite_input_error(&e) {
                Some(kind) => Frame::Bad(kind),
                None => Frame::Gone,
            },
            None => Frame::Gone,
        }
    }

    async fn send_message(&mut self, message: Message) -> Result<(), SendFailed> {
        self.send(message).await.map_err(|_| SendFailed)
    }

    async fn send_ping(&mut self) -> Result<(), SendFailed> {
        self.send(Message::Ping(Bytes::new()))
            .await
            .map_err(|_| SendFailed)
    }

    async fn send_close(&mut self, close: &Close) -> Result<(), SendFailed> {
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.reason.clone().into(),
        };
        self.send(Message::Close(Some(frame)))
            .await
            .map_err(|_| SendFailed)
    }
}

/// The WebSocket configuration the limits call for.
pub fn config(limits: &WsLimits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(limits.write_buffer_size)
        .max_write_buffer_size(limits.max_write_buffer_size)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_frame_size))
}

/// The 503 a refused handshake gets.
fn error_response(refused: &Refused) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(refused.body()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if let Some(value) = refused
        .hint
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(HINT_HEADER, value);
    }
    response
}

impl WsGate {
    /// Handshakes `stream` (within the handshake timeout), admitting or
    /// refusing it; an admitted connection runs `handler` on a [`Session`]
    /// under the limits, is counted while it is open, and is closed with
    /// 1012 and a hint when the balancer sheds it. Returns how it ended, or
    /// the handshake's error (a refusal included).
    pub async fn accept_stream<S, F, Fut>(
        &self,
        stream: S,
        handler: F,
    ) -> Result<Ended, tungstenite::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce(Session<Message>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let limits = self.limits();
        let mut reservation = None;
        // tungstenite's callback type fixes the error type, large or not.
        #[allow(clippy::result_large_err)]
        let admit = |_: &Request, response: Response| match self.reserve() {
            Some(r) => {
                reservation = Some(r);
                Ok(response)
            }
            None => Err(error_response(&self.refused())),
        };
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, admit, Some(config(limits)));
        let socket = tokio::time::timeout(limits.handshake_timeout, handshake)
            .await
            .map_err(|_| {
                tungstenite::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "WebSocket handshake timed out",
                ))
            })??;
        let Some(reservation) = reservation else {
            return Err(tungstenite::Error::ConnectionClosed);
        };
        Ok(session::run(socket, reservation.register(), limits, handler).await)
    }
}

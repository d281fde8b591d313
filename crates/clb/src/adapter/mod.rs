//! Ready-made [`Resource`](crate::Resource)s and the pieces a WebSocket
//! service needs around them.
//!
//! - [`websocket`]: the connection registry (a `Resource`), close frames,
//!   the limits and shed policies; no WebSocket library needed.
//! - [`session`]: runs one connection under the limits and hands the
//!   service a message-in, message-out session.
//! - `axum` (feature `axum`): admission at upgrade time, the session for
//!   axum's `WebSocket`, a bounded HTTP server.
//! - `tungstenite` (feature `tungstenite`): the same for a plain
//!   tokio-tungstenite server.

#[cfg(feature = "axum")]
pub mod axum;
pub mod session;
#[cfg(feature = "tungstenite")]
pub mod tungstenite;
pub mod websocket;

/// Which close code a tungstenite error earns the client, if it is the
/// client's fault.
#[cfg(any(feature = "axum", feature = "tungstenite"))]
fn tungstenite_input_error(
    error: &tokio_tungstenite::tungstenite::Error,
) -> Option<websocket::InputError> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match error {
        Error::Capacity(_) => Some(websocket::InputError::TooBig),
        Error::Utf8(_) => Some(websocket::InputError::InvalidUtf8),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some(websocket::InputError::Protocol),
        _ => None,
    }
}

//! What the balancer balances: a [`Resource`] counts and sheds.

use std::future::Future;
use std::time::Duration;

pub use clb_core::Hint;

/// Something a node holds many of and can shed: WebSocket connections, SSE
/// streams, actors. Implement it for your service, or use a ready-made one
/// (the WebSocket adapter).
///
/// Both calls run under a timeout and a panic guard: an error, a panic or a
/// timeout skips the round (for `count`) or the rest of the round's plan (for
/// `shed`), is logged and counted, and the balancer keeps running.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use clb::{Resource, ResourceError, ShedRequest};
///
/// struct Sessions(AtomicU64);
///
/// impl Resource for Sessions {
///     async fn count(&self) -> Result<u64, ResourceError> {
///         Ok(self.0.load(Ordering::Relaxed))
///     }
///     async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
///         // Close `request.n` sessions; report how many actually closed.
///         let n = request.n.min(self.0.load(Ordering::Relaxed));
///         self.0.fetch_sub(n, Ordering::Relaxed);
///         Ok(n)
///     }
/// }
/// ```
pub trait Resource: Send + Sync + 'static {
    /// How many resources this node holds now. Must be cheap: it runs four
    /// times a round.
    fn count(&self) -> impl Future<Output = Result<u64, ResourceError>> + Send;

    /// Close `request.n` resources (a uniformly random sample is best), so
    /// that their clients reconnect elsewhere. Returns how many were actually
    /// closed; that number, not the request, is what gets counted.
    fn shed(&self, request: ShedRequest)
    -> impl Future<Output = Result<u64, ResourceError>> + Send;
}

/// What to shed in one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShedRequest {
    /// How many resources to close.
    pub n: u64,
    /// Steering hints (proportional strategy): for each under-target node's
    /// advertised address, how many of the `n` to point there (in the close
    /// reason, say). Their `n`s sum to at most `n`; the rest get no hint.
    /// Clients that ignore hints lose nothing.
    pub hints: Vec<Hint>,
    /// How long the balancer waits for this call's answer (`None`: no
    /// limit). A resource that waits for its closes to complete should
    /// answer before then with what has closed so far, rather than be cut
    /// off and counted as having shed nothing.
    pub within: Option<Duration>,
}

impl ShedRequest {
    /// A request to shed `n`, without hints.
    pub fn new(n: u64) -> Self {
        ShedRequest {
            n,
            hints: Vec::new(),
            within: None,
        }
    }

    /// A request to shed `n` with steering hints.
    pub fn with_hints(n: u64, hints: Vec<Hint>) -> Self {
        ShedRequest {
            n,
            hints,
            within: None,
        }
    }

    /// The same request, answered within `limit`.
    pub fn within(mut self, limit: Duration) -> Self {
        self.within = Some(limit);
        self
    }

    /// One hint per resource to close, in order: `Some(address)` for the
    /// first `hints[0].n`, and so on, then `None` for the rest.
    pub fn iter_hints(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        let hinted = self
            .hints
            .iter()
            .flat_map(|h| std::iter::repeat_n(Some(h.address.as_str()), h.n as usize));
        hinted.chain(std::iter::repeat(None)).take(self.n as usize)
    }
}

/// A [`Resource`] call failed. Nothing was shed by the balancer because of
/// it; the round (or the rest of its plan) is skipped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The resource could not answer now (e.g. it is shutting down).
    #[error("resource unavailable: {0}")]
    Unavailable(String),
    /// Any other error from the implementation.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

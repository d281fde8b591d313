//! `clb sidecar`: the balancer for a service in any language, running
//! beside it on each node (SPEC §2). The service answers two HTTP calls:
//!
//! - `GET <count-url>`: how many resources it holds, a non-negative integer
//!   as the body;
//! - `POST <shed-url>`: shed this many (the body, an integer; `x-clb-try`
//!   names where most of them should reconnect, `x-clb-hints` lists
//!   `<n> <address>` pairs for all of them); the answer's body is how many
//!   were really shed.
//!
//! The sidecar publishes the admission signal on its own `/health/ready`
//! (503 while the service should refuse newcomers) and, with
//! `--admission-url`, as `POST accept` / `POST refuse` on every change and
//! again every `--admission-every`. A bad answer (not a number, negative, an
//! HTTP error, a timeout, a refused connection) skips the round, is counted
//! in `clb_sidecar_bad_answers_total{call,reason}` and logged at a bounded
//! rate: nothing is ever shed on a guess, and the sidecar keeps running.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use clap::Args;
use clb::adapter::axum::{ServeLimits, serve};
use clb::metrics::Prometheus;
use clb::ratelimit::RateLimiter;
use clb::{Admission, Balancer, Event, Resource, ResourceError, ShedRequest, StatusHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::args::{ClusterArgs, parse_duration};
use crate::backend::Backend;
use crate::config_file::{self, ConfigPath, layer};

/// Counter: answers from the service the sidecar could not use, by `call`
/// (`count`, `shed`, `admission`) and `reason`.
pub const BAD_ANSWERS: &str = "clb_sidecar_bad_answers_total";
const REASONS: [&str; 6] = [
    "not_a_number",
    "negative",
    "http_error",
    "timeout",
    "refused",
    "error",
];

/// Run the balancer beside a service in any language.
#[derive(Args, Debug)]
pub struct SidecarArgs {
    #[command(flatten)]
    file: ConfigPath,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    sidecar: SidecarFields,
}

/// How the sidecar talks to its service: `[sidecar]` in `clb.toml`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFields {
    /// GET: the service's resource count, a non-negative integer; required.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    count_url: Option<String>,
    /// POST: shed this many (the body); the answer: how many were; required.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shed_url: Option<String>,
    /// POST `accept` or `refuse` here on every change (default: only
    /// /health/ready says it).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_url: Option<String>,
    /// Send the admission signal again this often (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(
        default,
        with = "crate::args::serde_dur",
        skip_serializing_if = "Option::is_none"
    )]
    admission_every: Option<Duration>,
    /// Longest one call to the service may take (default: 1s, or an eighth
    /// of a shorter round).
    #[arg(long, value_parser = parse_duration)]
    #[serde(
        default,
        with = "crate::args::serde_dur",
        skip_serializing_if = "Option::is_none"
    )]
    service_timeout: Option<Duration>,
    /// Tries again after a failed count, and after a shed that could not
    /// connect (a shed that reached the service is never sent twice)
    /// (default: 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    service_retries: Option<u32>,
}

/// The service, as a balancer's [`Resource`].
struct Service {
    client: reqwest::Client,
    count_url: reqwest::Url,
    shed_url: reqwest::Url,
    retries: u32,
    bad: Bad,
}

/// Bad answers: counted, logged at a bounded rate, the last one kept.
#[derive(Default)]
struct Bad {
    log: RateLimiter,
    last: Mutex<Option<String>>,
}

impl Bad {
    fn note(&self, call: &'static str, reason: &'static str, detail: String) -> ResourceError {
        metrics::counter!(BAD_ANSWERS, "call" => call, "reason" => reason).increment(1);
        if let Some(n) = self.log.hit(reason) {
            tracing::warn!(
                call,
                reason,
                answers = n,
                "the service's {call} answer was unusable ({detail}); the round is skipped"
            );
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{call}: {detail}"));
        ResourceError::Unavailable(format!("{call}: {detail}"))
    }
}

/// Why a call failed, and whether trying again is safe.
fn failure(e: &reqwest::Error) -> (&'static str, bool) {
    if e.is_timeout() {
        ("timeout", false)
    } else if e.is_connect() {
        ("refused", true)
    } else {
        ("error", false)
    }
}

/// A count or shed answer's body as a number: a non-negative integer of at
/// most 64 bytes with surrounding whitespace, nothing else. The error is
/// the reason label of `clb_sidecar_bad_answers_total` and a detail.
pub fn parse_answer(body: &[u8]) -> Result<u64, (&'static str, String)> {
    // A count or a shed answer is a few bytes: refuse a flood.
    if body.len() > 64 {
        return Err(("not_a_number", format!("{} bytes", body.len())));
    }
    number(&String::from_utf8_lossy(body))
}

/// The body as a count: a non-negative integer, nothing else.
fn number(body: &str) -> Result<u64, (&'static str, String)> {
    let body = body.trim();
    match body.parse::<i128>() {
        Ok(n) if n < 0 => Err(("negative", format!("{n}"))),
        Ok(n) => u64::try_from(n).map_err(|_| ("not_a_number", format!("{n} is too large"))),
        Err(_) => Err((
            "not_a_number",
            format!("{:?}", body.chars().take(40).collect::<String>()),
        )),
    }
}

impl Service {
    async fn read(&self, response: reqwest::Response) -> Result<u64, (&'static str, String)> {
        let status = response.status();
        if !status.is_success() {
            return Err(("http_error", format!("HTTP {}", status.as_u16())));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| (failure(&e).0, e.to_string()))?;
        parse_answer(&bytes)
    }
}

impl Resource for Service {
    async fn count(&self) -> Result<u64, ResourceError> {
        let mut attempt = 0;
        loop {
            let answer = match self.client.get(self.count_url.clone()).send().await {
                Ok(response) => self.read(response).await,
                Err(e) => Err((failure(&e).0, e.to_string())),
            };
            match answer {
                Ok(n) => return Ok(n),
                Err(_) if attempt < self.retries => attempt += 1,
                Err((reason, detail)) => return Err(self.bad.note("count", reason, detail)),
            }
        }
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let mut hints: Vec<String> = Vec::new();
        for hint in &request.hints {
            hints.push(format!("{} {}", hint.n, hint.address));
        }
        let most = request
            .hints
            .iter()
            .max_by_key(|h| h.n)
            .map(|h| h.address.clone());
        let mut attempt = 0;
        loop {
            let mut post = self
                .client
                .post(self.shed_url.clone())
                .body(request.n.to_string());
            if let Some(address) = &most {
                post = post.header("x-clb-try", address);
            }
            if !hints.is_empty() {
                post = post.header("x-clb-hints", hints.join(", "));
            }
            let answer = match post.send().await {
                Ok(response) => self.read(response).await,
                // Only a call that never reached the service is sent again.
                Err(e) if failure(&e).1 && attempt < self.retries => {
                    attempt += 1;
                    continue;
                }
                Err(e) => Err((failure(&e).0, e.to_string())),
            };
            return match answer {
                Ok(n) if n > request.n => {
                    tracing::warn!(
                        asked = request.n,
                        shed = n,
                        "the service says it shed more than asked; counting what was asked"
                    );
                    Ok(request.n)
                }
                Ok(n) => Ok(n),
                Err((reason, detail)) => Err(self.bad.note("shed", reason, detail)),
            };
        }
    }
}

/// Runs the sidecar until SIGTERM or Ctrl-C.
pub fn run(args: SidecarArgs) -> anyhow::Result<()> {
    crate::cmd::init_tracing();
    let file = config_file::load(args.file.config.as_deref())?;
    let member = args.cluster.resolve(&file)?;
    let fields = layer(&args.sidecar, file.sidecar.as_ref())?;
    let url = |name: &str, value: &Option<String>| -> anyhow::Result<Option<reqwest::Url>> {
        let Some(value) = value else { return Ok(None) };
        let url = reqwest::Url::parse(value).with_context(|| format!("--{name} {value:?}"))?;
        if url.scheme() != "http" {
            bail!("--{name} {value:?}: only http:// URLs (the service runs beside the sidecar)");
        }
        Ok(Some(url))
    };
    let (Some(count_url), Some(shed_url)) = (
        url("count-url", &fields.count_url)?,
        url("shed-url", &fields.shed_url)?,
    ) else {
        bail!("--count-url and --shed-url are required (or count_url and shed_url in [sidecar])");
    };
    let admission_url = url("admission-url", &fields.admission_url)?;
    let round = member.config.round_duration;
    // Both tries of a call fit in a quarter round by default.
    let timeout = fields
        .service_timeout
        .unwrap_or((round / 8).min(Duration::from_secs(1)));
    let retries = fields.service_retries.unwrap_or(1);
    let admission_every = fields.admission_every.unwrap_or(Duration::from_secs(10));
    let call_time = timeout * (retries + 1);
    if timeout < Duration::from_millis(10) || retries > 10 || call_time >= round {
        bail!(
            "service_timeout {timeout:?} x (service_retries {retries} + 1) must be under the round ({round:?}), \
             with service_timeout at least 10ms and service_retries at most 10"
        );
    }
    if admission_every < Duration::from_millis(100) {
        bail!("admission_every must be at least 100ms, got {admission_every:?}");
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(2)
        .build()
        .context("building the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let http = TcpListener::bind(member.http_listen).await;
        let http = http.with_context(|| format!("binding --http-listen {}", member.http_listen))?;
        let http_addr = http.local_addr()?;
        let metrics = Prometheus::install()?;
        for call in ["count", "shed", "admission"] {
            for reason in REASONS {
                metrics::counter!(BAD_ANSWERS, "call" => call, "reason" => reason).increment(0);
            }
        }
        metrics::describe_counter!(
            BAD_ANSWERS,
            "Answers from the service the sidecar could not use, by call and reason."
        );
        let backend = Arc::new(Backend::start(member.backend).await?);
        let service = Arc::new(Service {
            client: client.clone(),
            count_url,
            shed_url,
            retries,
            bad: Bad::default(),
        });
        let mut builder = Balancer::builder(&member.namespace)
            .config(member.config.clone())
            .count_timeout(call_time + timeout / 2)
            .shed_timeout(call_time + timeout / 2);
        if let Some(address) = &member.advertise_url {
            builder = builder.address(address.clone());
        }
        let balancer = builder.spawn(Arc::clone(&service), Arc::clone(&backend))?;
        let signaller = admission_url.map(|url| {
            tokio::spawn(signal_admission(
                client,
                url,
                balancer.admission(),
                balancer.subscribe(),
                admission_every,
                Arc::clone(&service),
            ))
        });
        let state = Sidecar {
            admission: balancer.admission(),
            status: balancer.status_handle(),
            backend: Arc::clone(&backend),
            service: Arc::clone(&service),
        };
        let app = Router::new()
            .route("/metrics", metrics.handler())
            .route("/status", get(status))
            .route("/health/ready", get(ready))
            .route("/health/live", get(|| async { "ok" }))
            .with_state(state);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let bounds = ServeLimits::from(&clb::adapter::websocket::WsLimits::default());
        let server = tokio::spawn(serve("http", http, app, bounds, stop_rx));
        let signal = clb::shutdown_signal();
        let gossip = backend.gossip_addr().map(|a| a.to_string());
        let ready = serde_json::json!({"event": "ready", "node_id": member.id,
            "http": http_addr.to_string(), "gossip": gossip});
        if let Err(e) = writeln!(std::io::stdout().lock(), "{ready}") {
            tracing::warn!(error = %e, "could not write the ready line to stdout");
        }
        tracing::info!(node = %member.id, http = %http_addr, gossip = ?gossip, "sidecar ready");
        let which = signal.await;
        tracing::info!(signal = which, "shutting down");
        balancer.admission().start_draining();
        if let Some(task) = signaller {
            task.abort();
        }
        balancer.shutdown().await;
        backend.shutdown().await;
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(bounds.grace * 2, server).await;
        anyhow::Ok(())
    })
}

/// `POST accept|refuse` to the service on every change of the verdict and
/// every `every`; failures are counted and logged, never fatal.
async fn signal_admission(
    client: reqwest::Client,
    url: reqwest::Url,
    admission: Admission,
    mut rounds: tokio::sync::broadcast::Receiver<Event>,
    every: Duration,
    service: Arc<Service>,
) {
    let mut last: Option<bool> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        let periodic = tokio::select! {
            _ = tick.tick() => true,
            event = rounds.recv() => match event {
                Ok(Event::Round(_)) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => false,
                Ok(_) => continue,
                Err(_) => return,
            },
        };
        let accepting = admission.accepting();
        if !periodic && last == Some(accepting) {
            continue;
        }
        let body = if accepting { "accept" } else { "refuse" };
        let answer = match client.post(url.clone()).body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(("http_error", format!("HTTP {}", r.status().as_u16()))),
            Err(e) => Err((failure(&e).0, e.to_string())),
        };
        match answer {
            Ok(()) => last = Some(accepting),
            Err((reason, detail)) => {
                service.bad.note("admission", reason, detail);
            }
        }
    }
}

#[derive(Clone)]
struct Sidecar {
    admission: Admission,
    status: StatusHandle,
    backend: Arc<Backend>,
    service: Arc<Service>,
}

/// `/status`: the balancer's status, the service's last bad answer, the
/// backend.
#[derive(Serialize)]
struct SidecarStatus {
    #[serde(flatten)]
    balancer: clb::Status,
    ready: bool,
    count_url: String,
    shed_url: String,
    last_bad_answer: Option<String>,
    #[serde(flatten)]
    backend: serde_json::Value,
}

async fn status(State(s): State<Sidecar>) -> Json<SidecarStatus> {
    let balancer = s.status.status();
    let last_bad_answer = s
        .service
        .bad
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(SidecarStatus {
        ready: balancer.not_ready.is_none(),
        balancer,
        count_url: s.service.count_url.to_string(),
        shed_url: s.service.shed_url.to_string(),
        last_bad_answer,
        backend: s.backend.status().await,
    })
}

/// `/health/ready`: 503 while the service should refuse newcomers.
async fn ready(State(s): State<Sidecar>) -> Response {
    match s.admission.check(s.status.status().count.unwrap_or(0)) {
        Err(refusal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refusing new connections: {refusal}\n"),
        )
            .into_response(),
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_negative_integer_is_a_count() {
        assert_eq!(number("42\n"), Ok(42));
        assert_eq!(number(" 0 "), Ok(0));
        assert_eq!(number("-5").unwrap_err().0, "negative");
        assert_eq!(number("lots").unwrap_err().0, "not_a_number");
        assert_eq!(number("4.5").unwrap_err().0, "not_a_number");
        assert_eq!(number("").unwrap_err().0, "not_a_number");
        assert_eq!(
            number("99999999999999999999999").unwrap_err().0,
            "not_a_number"
        );
    }
}

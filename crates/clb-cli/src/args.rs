//! Flags shared by every subcommand that runs a balancer: one per config
//! field, applied on top of the chosen strategy's preset.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use clb::adapter::websocket::WsLimits;
use clb::{ClusterKey, GossipConfig};
use clb_core::{Config, Strategy};

/// A cap that can be turned off: a number, or `none`. A newtype rather than
/// `Option<Option<T>>`, which clap cannot parse into from a custom parser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cap<T>(pub Option<T>);

impl<T: std::fmt::Display> Cap<T> {
    fn to_arg(&self) -> String {
        self.0.as_ref().map_or("none".into(), |v| v.to_string())
    }
}

/// Every [`Config`] field as a flag. Unset flags keep the preset's value.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Decision rule: proportional (the default) or classic (the Elixir
    /// original, exactly).
    #[arg(long, default_value = "proportional", value_parser = parse_strategy)]
    pub strategy: Strategy,
    /// Time between two decisions, e.g. 10s, 500ms (default: 10s; in the demo, 1s).
    #[arg(long, value_parser = parse_duration)]
    pub round_duration: Option<Duration>,
    /// How far above average/target a node may be, in percent (default: 25).
    #[arg(long)]
    pub allowed_average_deviation_percent: Option<f64>,
    /// Share of the excess shed in one round, in percent (default: 100; classic 50).
    #[arg(long)]
    pub shed_percentage: Option<f64>,
    /// Most shed by one node in one round; "none" for no absolute cap
    /// (default: none; classic 100).
    #[arg(long, value_parser = parse_cap_u64)]
    pub max_shed_count: Option<Cap<u64>>,
    /// Smallest amount worth shedding (default: 1; classic 10).
    #[arg(long)]
    pub min_shed_count: Option<u64>,
    /// Proportional: rebalance until every node is this close to target, percent (default: 5).
    #[arg(long)]
    pub stop_band_percent: Option<f64>,
    /// Proportional: absolute floor under both bands, in resources (default: 2).
    #[arg(long)]
    pub abs_tolerance: Option<u64>,
    /// Hard cap per round as a share of the node's count; "none" to turn off
    /// (default: classic: none, else 0.1).
    #[arg(long, value_parser = parse_cap_f64)]
    pub max_shed_fraction: Option<Cap<f64>>,
    /// Rounds to hold shedding after a membership change (default: classic: 0, else 2).
    #[arg(long)]
    pub settle_rounds: Option<u32>,
    /// Spread a shed over this share of a round; 0 = all at once
    /// (default: classic: 0, else 0.5).
    #[arg(long)]
    pub pacing_window: Option<f64>,
    /// Most batches one shed is split into (default: 10).
    #[arg(long)]
    pub pacing_max_batches: Option<u32>,
    /// Admission control: refuse new resources while above target in an
    /// active rebalance (proportional), on or off (default: classic: off, else on).
    #[arg(long, value_parser = parse_on_off)]
    pub admission: Option<bool>,
    /// Decide and report, shed nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// This node's capacity relative to the others (default: 1).
    #[arg(long)]
    pub weight: Option<f64>,
}

impl ConfigArgs {
    /// The strategy's preset with every given flag applied, validated.
    pub fn to_config(&self) -> Result<Config, clb_core::ConfigError> {
        let mut c = match self.strategy {
            Strategy::Classic => Config::classic(),
            Strategy::Proportional => Config::proportional(),
            _ => Config::default(),
        };
        c.strategy = self.strategy;
        set(&mut c.round_duration, self.round_duration);
        set(
            &mut c.allowed_average_deviation_percent,
            self.allowed_average_deviation_percent,
        );
        set(&mut c.shed_percentage, self.shed_percentage);
        set(&mut c.max_shed_count, self.max_shed_count.map(|Cap(v)| v));
        set(&mut c.min_shed_count, self.min_shed_count);
        set(&mut c.stop_band_percent, self.stop_band_percent);
        set(&mut c.abs_tolerance, self.abs_tolerance);
        set(
            &mut c.max_shed_fraction,
            self.max_shed_fraction.map(|Cap(v)| v),
        );
        set(&mut c.settle_rounds, self.settle_rounds);
        set(&mut c.pacing_window, self.pacing_window);
        set(&mut c.pacing_max_batches, self.pacing_max_batches);
        set(&mut c.admission_control, self.admission);
        c.dry_run |= self.dry_run;
        set(&mut c.weight, self.weight);
        c.validate()?;
        Ok(c)
    }
}

impl ConfigArgs {
    /// The flags that were given, as `clb node` arguments: what the demo
    /// passes on to the nodes it starts.
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut out = vec!["--strategy".to_owned(), self.strategy.to_string()];
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{flag}"));
                out.push(v);
            }
        };
        push(
            "round-duration",
            self.round_duration.map(|d| format!("{}ms", d.as_millis())),
        );
        push(
            "allowed-average-deviation-percent",
            self.allowed_average_deviation_percent
                .map(|v| v.to_string()),
        );
        push(
            "shed-percentage",
            self.shed_percentage.map(|v| v.to_string()),
        );
        push(
            "max-shed-count",
            self.max_shed_count.as_ref().map(Cap::to_arg),
        );
        push("min-shed-count", self.min_shed_count.map(|v| v.to_string()));
        push(
            "stop-band-percent",
            self.stop_band_percent.map(|v| v.to_string()),
        );
        push("abs-tolerance", self.abs_tolerance.map(|v| v.to_string()));
        push(
            "max-shed-fraction",
            self.max_shed_fraction.as_ref().map(Cap::to_arg),
        );
        push("settle-rounds", self.settle_rounds.map(|v| v.to_string()));
        push("pacing-window", self.pacing_window.map(|v| v.to_string()));
        push(
            "pacing-max-batches",
            self.pacing_max_batches.map(|v| v.to_string()),
        );
        push(
            "admission",
            self.admission
                .map(|v| if v { "on".into() } else { "off".into() }),
        );
        push("weight", self.weight.map(|v| v.to_string()));
        if self.dry_run {
            out.push("--dry-run".into());
        }
        out
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse().map_err(|e: clb_core::ConfigError| e.to_string())
}

/// The longest duration any flag takes: longer is a typo, not a setting.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `10s`, `500ms`, `1m`, or a bare number of seconds; at most a week.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("expected a duration of at most a week, got {s:?}"))?,
        Err(_) => {
            humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s, 500ms)"))?
        }
    };
    if d > MAX_DURATION {
        return Err(format!("expected a duration of at most a week, got {s:?}"));
    }
    Ok(d)
}

/// A duration, or `none` to turn the feature off.
pub fn parse_opt_duration(s: &str) -> Result<Cap<Duration>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => parse_duration(s).map(|d| Cap(Some(d))),
    }
}

/// A size in bytes: `4096`, `4KiB`, `64KiB`, `1MiB` (also `K`, `M`, `G`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" | "kB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        _ => {
            return Err(format!(
                "expected a size like 4096, 64KiB or 1MiB, got {s:?}"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("expected a size like 4096, 64KiB or 1MiB, got {s:?}"))
}

fn parse_cap_u64(s: &str) -> Result<Cap<u64>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => s
            .parse()
            .map(|n| Cap(Some(n)))
            .map_err(|_| format!("expected a whole number or \"none\", got {s:?}")),
    }
}

fn parse_cap_f64(s: &str) -> Result<Cap<f64>, String> {
    match s {
        "none" | "off" => Ok(Cap(None)),
        _ => s
            .parse()
            .map(|n| Cap(Some(n)))
            .map_err(|_| format!("expected a number or \"none\", got {s:?}")),
    }
}

/// A comma-separated list, e.g. `100,0,0`.
pub fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|part| {
            part.trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a valid number in {s:?}"))
        })
        .collect()
}

/// `on` / `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// Every WebSocket limit as a flag; unset flags keep [`WsLimits::default`].
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Most WebSocket connections held at once; beyond it upgrades get 503
    /// (default: 10000, lowered to fit the open-file limit).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections not (yet) upgraded, per listener; beyond it a connection
    /// gets 503 and is closed (default: 1024).
    #[arg(long)]
    pub max_pending_connections: Option<usize>,
    /// Largest WebSocket message accepted; larger gets close 1009
    /// (default: 64KiB).
    #[arg(long, value_parser = parse_size)]
    pub max_message_size: Option<usize>,
    /// Largest WebSocket frame accepted (default: 64KiB).
    #[arg(long, value_parser = parse_size)]
    pub max_frame_size: Option<usize>,
    /// Read buffer per connection, most of its idle memory (default: 4KiB).
    #[arg(long, value_parser = parse_size)]
    pub ws_read_buffer: Option<usize>,
    /// Outgoing bytes gathered before writing; 0 writes at once (default: 0).
    #[arg(long, value_parser = parse_size)]
    pub ws_write_buffer: Option<usize>,
    /// Most outgoing bytes queued per connection, pongs included
    /// (default: 256KiB).
    #[arg(long, value_parser = parse_size)]
    pub ws_max_write_buffer: Option<usize>,
    /// Longest a send waits for a client to read; then it is dropped
    /// (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    pub ws_send_timeout: Option<Duration>,
    /// Time between pings to each connection (default: 30s).
    #[arg(long, value_parser = parse_duration)]
    pub ws_ping_interval: Option<Duration>,
    /// Close a connection silent for this long, pongs included (default: 90s).
    #[arg(long, value_parser = parse_duration)]
    pub ws_idle_timeout: Option<Duration>,
    /// Longest a close may take before the connection is dropped (default: 3s).
    #[arg(long, value_parser = parse_duration)]
    pub close_deadline: Option<Duration>,
    /// Longest request headers may take to arrive, and an HTTP connection
    /// may sit idle (default: 10s).
    #[arg(long, value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
}

impl LimitArgs {
    /// The defaults with every given flag applied, validated.
    pub fn to_limits(&self) -> Result<WsLimits, clb_core::ConfigError> {
        let mut l = WsLimits::default();
        let d = &mut l;
        set(&mut d.max_connections, self.max_connections);
        set(&mut d.max_pending_connections, self.max_pending_connections);
        set(&mut d.max_message_size, self.max_message_size);
        set(&mut d.max_frame_size, self.max_frame_size);
        set(&mut d.read_buffer_size, self.ws_read_buffer);
        set(&mut d.write_buffer_size, self.ws_write_buffer);
        set(&mut d.max_write_buffer_size, self.ws_max_write_buffer);
        set(&mut d.send_timeout, self.ws_send_timeout);
        set(&mut d.ping_interval, self.ws_ping_interval);
        set(&mut d.idle_timeout, self.ws_idle_timeout);
        set(&mut d.close_deadline, self.close_deadline);
        set(&mut d.handshake_timeout, self.handshake_timeout);
        // Defaults that depend on a given flag follow it, so one flag is
        // never refused for another flag's default.
        if self.max_frame_size.is_none() {
            d.max_frame_size = d.max_frame_size.min(d.max_message_size);
        }
        if self.ws_max_write_buffer.is_none() {
            d.max_write_buffer_size = d
                .max_write_buffer_size
                .max(d.write_buffer_size + d.max_message_size + 1);
        }
        if self.ws_idle_timeout.is_none() {
            d.idle_timeout = d.idle_timeout.max(d.ping_interval * 3);
        }
        l.validate()?;
        Ok(l)
    }
}

/// File descriptors a node needs beyond its connections.
const FD_OVERHEAD: u64 = 256;

impl LimitArgs {
    /// [`to_limits`](Self::to_limits), with the open-file limit raised to
    /// what the caps need. Explicit caps that do not fit are an error;
    /// default caps are lowered to fit, with a warning (a machine whose
    /// limit is 1,024 still runs a node).
    pub fn to_fitted_limits(&self) -> anyhow::Result<WsLimits> {
        let mut limits = self.to_limits()?;
        let needed = |l: &WsLimits| {
            l.max_connections as u64 + 2 * l.max_pending_connections as u64 + FD_OVERHEAD
        };
        let wanted = needed(&limits);
        #[cfg(unix)]
        let got = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
        #[cfg(not(unix))]
        let got = wanted;
        if got >= wanted {
            return Ok(limits);
        }
        let before = (limits.max_connections, limits.max_pending_connections);
        if self.max_pending_connections.is_none() {
            let share = usize::try_from(got / 8).unwrap_or(usize::MAX).max(16);
            limits.max_pending_connections = limits.max_pending_connections.min(share);
        }
        if self.max_connections.is_none() {
            let reserve = 2 * limits.max_pending_connections as u64 + FD_OVERHEAD;
            let fits = usize::try_from(got.saturating_sub(reserve)).unwrap_or(usize::MAX);
            limits.max_connections = limits.max_connections.min(fits);
        }
        if needed(&limits) > got || limits.max_connections < 16 {
            bail!(
                "the open-file limit is {got}, too low for --max-connections {} with --max-pending-connections {} \
                 (needs {wanted}): raise it with `ulimit -n {wanted}`, or lower them",
                before.0,
                before.1
            );
        }
        tracing::warn!(
            "the open-file limit is {got}: max_connections lowered from {} to {} and max_pending_connections \
             from {} to {} to fit (raise it with `ulimit -n {wanted}`)",
            before.0,
            limits.max_connections,
            before.1,
            limits.max_pending_connections
        );
        Ok(limits)
    }
}

/// How a node gossips: every [`GossipConfig`] field a user sets, as flags.
#[derive(Args, Debug, Clone)]
pub struct GossipArgs {
    /// UDP address to gossip on (port 0: any free port, see the ready line).
    #[arg(long, default_value = "127.0.0.1:7946")]
    pub gossip_listen: SocketAddr,
    /// Address peers gossip to, if not --gossip-listen (behind NAT, say).
    #[arg(long)]
    pub gossip_advertise: Option<SocketAddr>,
    /// Peers to join, host:port, comma-separated (DNS names are re-resolved).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Shared secret(s) authenticating gossip, comma-separated: sign with the
    /// first, accept any (key rotation). At least 16 bytes each.
    #[arg(
        long,
        env = "CLB_CLUSTER_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub cluster_key: Vec<String>,
    /// Nodes of different cluster ids ignore each other.
    #[arg(long, default_value = "clb")]
    pub cluster_id: String,
    /// Time between gossip rounds.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub gossip_interval: Duration,
    /// Incarnation number, larger after every restart (default: start time in ms).
    #[arg(long)]
    pub generation: Option<u64>,
    /// Not ready if given seeds and none admitted this long after start;
    /// "none" to never (default: 30s).
    #[arg(long, value_parser = parse_opt_duration)]
    pub join_timeout: Option<Cap<Duration>>,
}

impl GossipArgs {
    /// The gossip config of node `id`, validated.
    pub fn to_config(&self, id: &str) -> Result<GossipConfig, clb_core::ConfigError> {
        let mut gossip = GossipConfig::new(id, self.gossip_listen);
        gossip.advertise_addr = self.gossip_advertise;
        gossip.seeds = self.seeds.clone();
        gossip.cluster_id = self.cluster_id.clone();
        gossip.keys = self
            .cluster_key
            .iter()
            .filter(|k| !k.is_empty())
            .map(ClusterKey::new)
            .collect::<Result<Vec<_>, _>>()?;
        gossip.gossip_interval = self.gossip_interval;
        set(&mut gossip.generation, self.generation);
        set(&mut gossip.join_timeout, self.join_timeout.map(|Cap(t)| t));
        gossip.validate()?;
        Ok(gossip)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_refuse_what_does_not_fit() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["1e30", "-1", "NaN", "inf", "8d", "", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_units_and_refuse_overflow() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        for bad in [
            "-1",
            "1.5KiB",
            "99999999999999999999",
            "1 furlong",
            "",
            "17179869184G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

//! `--config clb.toml`: every setting of `clb node`, `clb sidecar` and
//! `clb demo` in one file, by section — `[balancer]`, `[limits]`,
//! `[gossip]`, `[redis]`, `[node]`, `[websocket]`, `[sidecar]`, `[demo]` — each key the
//! name of a flag with underscores (`--round-duration` is
//! `round_duration`). `clb.example.toml` lists every key with its default.
//!
//! Each setting is taken from, first to last: the flag; the environment
//! variable `CLB_` + the key in capitals (`CLB_ROUND_DURATION=2s`); the
//! file; the default. An unknown key or a value of the wrong form is an
//! error naming the key and the file (or the variable); nothing starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Args;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::args::{ConfigArgs, GossipArgs, LimitArgs, RedisArgs};

/// The whole file. A command reads the sections it takes and ignores the
/// others' (but checks them all).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The decision config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer: Option<ConfigArgs>,
    /// The WebSocket limits (`clb node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitArgs>,
    /// The gossip backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipArgs>,
    /// The Redis backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisArgs>,
    /// Who a node or sidecar is, and where it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::args::NodeFields>,
    /// `clb node`'s WebSocket server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<crate::cmd::node::WsFields>,
    /// `clb sidecar`'s own settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<crate::cmd::sidecar::SidecarFields>,
    /// `clb demo`'s own settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo: Option<crate::cmd::demo::DemoFields>,
}

/// The file at `path`, or an empty one when `path` is `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    parse(path, &text)
}

/// The file's text as a config; errors name `path`, the line and the key.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| anyhow!("{}", located(path, text, &e)))
}

/// `file:line: message (at: the line)` from a TOML error.
fn located(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{}:{line}: {message} (at `{source}`)", path.display())
        }
        None => format!("{}: {message}", path.display()),
    }
}

/// One section's settings from every source: `flags`, then the
/// environment, then `file`, then (left unset) the defaults.
pub fn layer<T>(flags: &T, file: Option<&T>) -> anyhow::Result<T>
where
    T: Args + Serialize + DeserializeOwned,
{
    let mut table = match file {
        Some(f) => toml::Table::try_from(f).context("re-reading the file's settings")?,
        None => toml::Table::new(),
    };
    table.extend(from_env::<T>()?);
    table.extend(toml::Table::try_from(flags).context("re-reading the flags")?);
    toml::Value::Table(table)
        .try_into()
        .map_err(|e| anyhow!("combining flags, environment and file: {e}"))
}

/// `CLB_<KEY>` for every key of `T`, each checked on its own so an error
/// names the variable.
fn from_env<T: Args + DeserializeOwned>() -> anyhow::Result<toml::Table> {
    let command = T::augment_args(clap::Command::new("clb"));
    let mut table = toml::Table::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        let var = format!("CLB_{}", key.to_uppercase());
        let Ok(raw) = std::env::var(&var) else {
            continue;
        };
        // The text as a TOML value (a number, a boolean), else as a string.
        let literal = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        let candidates = literal
            .into_iter()
            .chain([toml::Value::String(raw.clone())]);
        let mut last_error = None;
        let mut accepted = None;
        for value in candidates {
            let one = toml::Table::from_iter([(key.to_owned(), value.clone())]);
            match toml::Value::Table(one).try_into::<T>() {
                Ok(_) => {
                    accepted = Some(value);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (accepted, last_error) {
            (Some(value), _) => {
                table.insert(key.to_owned(), value);
            }
            (None, Some(e)) => anyhow::bail!("{var}: {}", e.message()),
            (None, None) => {}
        }
    }
    Ok(table)
}

/// Where `--config` points, shared by every command that takes one.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigPath {
    /// Read settings from this TOML file; flags and CLB_* variables
    /// override it (see clb.example.toml for every key).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::GossipArgs;

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let dir = std::env::temp_dir().join(format!("clb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 100\nmax_conections = 5\n",
        )
        .unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("bad.toml:3:"), "{err}");
        assert!(err.contains("unknown field `max_conections`"), "{err}");
        std::fs::write(&path, "[balancer]\nround_duration = \"soon\"\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml:2:") && err.contains("round_duration"),
            "{err}"
        );
        std::fs::write(&path, "[limits]\nmax_connections = \"lots\"\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("invalid type") && err.contains("max_connections"),
            "{err}"
        );
        std::fs::write(&path, "[nodes]\nid = \"x\"\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `nodes`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn example() -> (PathBuf, String) {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../clb.example.toml"
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    #[test]
    fn the_example_file_parses_and_every_value_in_it_is_the_default() {
        let (path, _) = example();
        let file = load(Some(&path)).unwrap();
        let balancer = file.balancer.unwrap().to_config().unwrap();
        assert_eq!(balancer, clb::Config::default());
        let limits = file.limits.unwrap().to_limits().unwrap();
        assert_eq!(limits, clb::adapter::websocket::WsLimits::default());
        let gossip = file.gossip.unwrap().to_config("n1").unwrap();
        let defaults = GossipArgs::default().to_config("n1").unwrap();
        assert_eq!(
            (
                gossip.listen_addr,
                gossip.seeds,
                gossip.cluster_id,
                gossip.gossip_interval,
                gossip.join_timeout
            ),
            (
                defaults.listen_addr,
                defaults.seeds,
                defaults.cluster_id,
                defaults.gossip_interval,
                defaults.join_timeout
            )
        );
        let redis = file.redis.unwrap();
        let mut with_url = redis.clone();
        with_url.redis_url = vec!["redis://127.0.0.1:6379".into()];
        let redis = with_url.to_config("n1").unwrap();
        let defaults = clb::RedisConfig::new("n1", "redis://127.0.0.1:6379");
        assert_eq!(
            (redis.cluster, redis.member_ttl, redis.timeout),
            (defaults.cluster, defaults.member_ttl, defaults.timeout)
        );
        // The sections with defaults spelled out where they are applied.
        let node = file.node.unwrap();
        assert_eq!(node.namespace.as_deref(), Some("websocket"));
        assert_eq!(node.http_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(file.websocket.is_some() && file.sidecar.is_some() && file.demo.is_some());
    }

    #[test]
    fn the_example_file_lists_every_key_of_every_command() {
        use clap::CommandFactory;
        let (_, text) = example();
        let keys: Vec<String> = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_owned()))
            .collect();
        let cli = crate::Cli::command();
        let mut missing = Vec::new();
        for name in ["node", "sidecar", "demo"] {
            let Some(sub) = cli.find_subcommand(name) else {
                panic!("no subcommand {name}");
            };
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version", "config"].contains(&id) {
                    continue;
                }
                if !keys.iter().any(|k| k == id) {
                    missing.push(format!("{name}: {id}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys missing from clb.example.toml: {missing:?}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file: ConfigArgs = toml::from_str("shed_percentage = 40\nsettle_rounds = 3").unwrap();
        let flags = ConfigArgs {
            shed_percentage: Some(60.0),
            ..ConfigArgs::default()
        };
        let merged = layer(&flags, Some(&file)).unwrap();
        assert_eq!(
            (merged.shed_percentage, merged.settle_rounds),
            (Some(60.0), Some(3))
        );
    }
}

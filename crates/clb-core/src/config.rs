//! Balancer configuration: typed data, SPEC defaults, one [`Config::validate`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which decision rule a balancer runs each round (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Strategy {
    /// The Elixir original, exactly: only the single highest node sheds, and
    /// only when it is above the average by more than the allowed deviation.
    Classic,
    /// Capacity-weighted targets, a two-sided trigger band with hysteresis,
    /// every node above target shedding in the same round under a relative
    /// cap, admission control and steered reconnects.
    Proportional,
}

impl Strategy {
    /// The lowercase name used by the CLI, logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Classic => "classic",
            Strategy::Proportional => "proportional",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Strategy::Classic),
            "proportional" => Ok(Strategy::Proportional),
            other => Err(ConfigError::Invalid {
                field: "strategy",
                value: other.to_owned(),
                expected: "one of: classic, proportional",
            }),
        }
    }
}

/// How a balancer decides. Every field is public; build one from a preset
/// ([`Config::default`], [`Config::classic`]) and change what you need.
/// [`Config::validate`] runs when a balancer is built, so an invalid config
/// never runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The decision rule. Default: [`Strategy::Proportional`]; the README
    /// says when to pick [`Strategy::Classic`].
    pub strategy: Strategy,
    /// Time between two decisions of one node. Default 10 s; 10 ms to 1 h.
    /// Each node also republishes its report four times a round, so a healthy
    /// member always has a report fresher than one round.
    #[serde(with = "duration_ms")]
    pub round_duration: Duration,
    /// How far above the average (classic) or its target (proportional) a
    /// node may be before it acts, in percent. Default 25; 0 to 1000.
    pub allowed_average_deviation_percent: f64,
    /// Share of the excess shed in one round, in percent. Default 100
    /// (classic: 50); 0 to 100.
    pub shed_percentage: f64,
    /// Most resources one node sheds in one round; `None` for no absolute
    /// cap. Default none (classic: 100); at least 1.
    pub max_shed_count: Option<u64>,
    /// A decided amount below this is not worth a round: nothing is shed.
    /// Default 1 (classic: 10); at most `max_shed_count`.
    pub min_shed_count: u64,
    /// Proportional: once a rebalance has started it continues until every
    /// node is within this many percent of its target. Default 5; 0 to
    /// `allowed_average_deviation_percent` (proportional), 1000 (classic).
    pub stop_band_percent: f64,
    /// Proportional: an absolute floor under both bands, in resources, so a
    /// small cluster is not chased to the last connection. Default 2.
    pub abs_tolerance: u64,
    /// Hard cap: never shed more than this share of the node's own count in
    /// one round, whatever the inputs say. `None` turns it off (the classic
    /// preset). Default 0.1; above 0, at most 1.
    pub max_shed_fraction: Option<f64>,
    /// After any member joins or leaves, hold shedding for this many complete
    /// rounds, the round that saw the change included. While holding, a
    /// node refuses new resources only above the trigger band. Default 2
    /// (classic: 0); 0 to 1000.
    pub settle_rounds: u32,
    /// Quorum: a node decides only while it sees a strict majority of the
    /// members it remembers (itself included), so the minority side of a
    /// network partition never sheds on its partial view. A member that
    /// leaves gracefully is forgotten at once; one that crashed or is cut
    /// off is forgotten after this many rounds without it, and only by a
    /// node that holds a majority. 0 turns the rule off (the classic preset).
    /// Default 60 (10 minutes at the default round); 0 to 100000.
    pub quorum_rounds: u32,
    /// Pacing: spread a decided amount over this share of a round, in
    /// jittered batches. 0 sheds all at once (the classic preset).
    /// Default 0.5; 0 to 0.9.
    pub pacing_window: f64,
    /// Pacing: the most batches one decided amount is split into.
    /// Default 10; 1 to 10000.
    pub pacing_max_batches: u32,
    /// Proportional: refuse new resources while above target in an active
    /// rebalance (SPEC §4 admission control). Default true (classic: false).
    pub admission_control: bool,
    /// Decide and report, shed nothing. Default false.
    pub dry_run: bool,
    /// This node's capacity relative to the others. Default 1; above 0, at
    /// most 1000000.
    pub weight: f64,
}

impl Default for Config {
    /// The recommended preset: [`Config::proportional`].
    fn default() -> Self {
        Config::proportional()
    }
}

impl Config {
    /// The Elixir original exactly: `classic` with deviation 25%, shed 50%,
    /// max 100, min 10, rounds of 10 s, and no settle, pacing, hard cap or
    /// admission control. Each can be turned on by setting its field.
    ///
    /// ```
    /// let c = clb_core::Config::classic();
    /// assert_eq!(c.max_shed_count, Some(100));
    /// assert_eq!(c.max_shed_fraction, None);
    /// assert!(c.validate().is_ok());
    /// ```
    pub fn classic() -> Self {
        Config {
            strategy: Strategy::Classic,
            round_duration: Duration::from_secs(10),
            allowed_average_deviation_percent: 25.0,
            shed_percentage: 50.0,
            max_shed_count: Some(100),
            min_shed_count: 10,
            stop_band_percent: 5.0,
            abs_tolerance: 2,
            max_shed_fraction: None,
            settle_rounds: 0,
            quorum_rounds: 0,
            pacing_window: 0.0,
            pacing_max_batches: 10,
            admission_control: false,
            dry_run: false,
            weight: 1.0,
        }
    }

    /// The `proportional` strategy with every safety on (settle 2 rounds,
    /// pacing over half a round, hard cap 10%), the SPEC's bands (trigger
    /// 25%, stop 5%), and the values `clb simulate --compare` chose: shed
    /// 100% of the excess (the 10% hard cap is what paces a big excess), no
    /// absolute cap (so convergence does not slow with size), minimum 1 (so
    /// the last few resources still move). See BENCHMARKS.md.
    ///
    /// ```
    /// let c = clb_core::Config::proportional();
    /// assert_eq!(c.max_shed_fraction, Some(0.1));
    /// assert_eq!(c.settle_rounds, 2);
    /// assert!(c.validate().is_ok());
    /// ```
    pub fn proportional() -> Self {
        Config {
            strategy: Strategy::Proportional,
            shed_percentage: 100.0,
            max_shed_count: None,
            min_shed_count: 1,
            max_shed_fraction: Some(0.1),
            settle_rounds: 2,
            quorum_rounds: 60,
            pacing_window: 0.5,
            admission_control: true,
            ..Config::classic()
        }
    }

    /// How often a node republishes its report: four times a round, so that a
    /// healthy member's report is always fresher than one round.
    pub fn publish_interval(&self) -> Duration {
        self.round_duration / 4
    }

    /// Checks every field and cross-field rule; the error names the field,
    /// the value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration(
            "round_duration",
            self.round_duration,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        check_f64(
            "allowed_average_deviation_percent",
            self.allowed_average_deviation_percent,
            Bound::Inclusive(0.0),
            1000.0,
        )?;
        check_f64(
            "shed_percentage",
            self.shed_percentage,
            Bound::Inclusive(0.0),
            100.0,
        )?;
        if let Some(max) = self.max_shed_count {
            if max == 0 {
                return Err(ConfigError::OutOfRange {
                    field: "max_shed_count",
                    value: "0".into(),
                    range: "[1, 18446744073709551615] or unset".into(),
                });
            }
            if self.min_shed_count > max {
                return Err(ConfigError::MinAboveMax {
                    min: self.min_shed_count,
                    max,
                });
            }
        }
        let max_stop_band = match self.strategy {
            // Hysteresis only makes sense with the stop band inside the trigger band.
            Strategy::Proportional => self.allowed_average_deviation_percent,
            Strategy::Classic => 1000.0,
        };
        check_f64(
            "stop_band_percent",
            self.stop_band_percent,
            Bound::Inclusive(0.0),
            max_stop_band,
        )?;
        if let Some(fraction) = self.max_shed_fraction {
            check_f64("max_shed_fraction", fraction, Bound::Exclusive(0.0), 1.0)?;
        }
        if self.settle_rounds > 1000 {
            return Err(ConfigError::OutOfRange {
                field: "settle_rounds",
                value: self.settle_rounds.to_string(),
                range: "[0, 1000]".into(),
            });
        }
        if self.quorum_rounds > 100_000 {
            return Err(ConfigError::OutOfRange {
                field: "quorum_rounds",
                value: self.quorum_rounds.to_string(),
                range: "[0, 100000]".into(),
            });
        }
        check_f64(
            "pacing_window",
            self.pacing_window,
            Bound::Inclusive(0.0),
            0.9,
        )?;
        if !(1..=10_000).contains(&self.pacing_max_batches) {
            return Err(ConfigError::OutOfRange {
                field: "pacing_max_batches",
                value: self.pacing_max_batches.to_string(),
                range: "[1, 10000]".into(),
            });
        }
        check_f64(
            "weight",
            self.weight,
            Bound::Exclusive(0.0),
            crate::report::MAX_WEIGHT,
        )?;
        Ok(())
    }
}

/// Why a configuration or a name was refused. Nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number outside its allowed range.
    #[error("{field} must be in {range}, got {value}")]
    OutOfRange {
        /// The config field, as spelled in [`Config`] (CLI flags use dashes).
        field: &'static str,
        /// The refused value.
        value: String,
        /// The allowed range, `[` inclusive, `(` exclusive.
        range: String,
    },
    /// `min_shed_count` above `max_shed_count`.
    #[error("min_shed_count ({min}) must not exceed max_shed_count ({max})")]
    MinAboveMax {
        /// The refused minimum.
        min: u64,
        /// The maximum it exceeds.
        max: u64,
    },
    /// A value of the wrong form (a name with bad characters, an unknown strategy).
    #[error("{field} {value:?} is invalid: expected {expected}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The refused value.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
}

enum Bound {
    Inclusive(f64),
    Exclusive(f64),
}

fn check_f64(field: &'static str, value: f64, min: Bound, max: f64) -> Result<(), ConfigError> {
    // Written so that NaN fails every comparison and is refused.
    let (above_min, open, lo) = match min {
        Bound::Inclusive(lo) => (value >= lo, '[', lo),
        Bound::Exclusive(lo) => (value > lo, '(', lo),
    };
    if above_min && value <= max {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value: value.to_string(),
            range: format!("{open}{lo}, {max}]"),
        })
    }
}

fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value: format!("{value:?}"),
            range: format!("[{min:?}, {max:?}]"),
        })
    }
}

/// Checks a namespace name: 1 to 64 characters of `A-Z a-z 0-9 _ . -`, so it
/// is safe as a gossip key and a Redis key.
pub fn validate_namespace(namespace: &str) -> Result<(), ConfigError> {
    check_name(
        "namespace",
        namespace,
        64,
        "1 to 64 characters of A-Z a-z 0-9 _ . -",
    )
}

/// Checks a node id: 1 to 128 characters of `A-Z a-z 0-9 _ . - :`.
pub fn validate_node_id(id: &str) -> Result<(), ConfigError> {
    check_name(
        "node_id",
        id,
        128,
        "1 to 128 characters of A-Z a-z 0-9 _ . - :",
    )
}

/// Checks an advertised client address (a URL or `host:port`): 1 to
/// [`crate::wire::MAX_ADDRESS`] bytes, no whitespace or control characters,
/// so it fits a report, a close reason and an HTTP header.
pub fn validate_address(address: &str) -> Result<(), ConfigError> {
    let ok = !address.is_empty()
        && address.len() <= crate::wire::MAX_ADDRESS
        && !address.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "address",
            value: address.chars().take(64).collect(),
            expected: "1 to 256 bytes with no spaces or control characters",
        })
    }
}

fn check_name(
    field: &'static str,
    value: &str,
    max_len: usize,
    expected: &'static str,
) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
        && (field != "namespace" || !value.contains(':'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            value: value.to_owned(),
            expected,
        })
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        Config::default().validate().unwrap();
        Config::classic().validate().unwrap();
        Config::proportional().validate().unwrap();
    }

    #[test]
    fn proportional_stop_band_must_sit_inside_the_trigger_band() {
        let c = Config {
            stop_band_percent: 30.0,
            ..Config::proportional()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "stop_band_percent must be in [0, 25], got 30"
        );
        let classic = Config {
            stop_band_percent: 30.0,
            ..Config::classic()
        };
        classic.validate().unwrap();
    }

    #[test]
    fn classic_preset_turns_every_safety_off() {
        let c = Config::classic();
        assert_eq!(c.settle_rounds, 0);
        assert_eq!(c.pacing_window, 0.0);
        assert_eq!(c.max_shed_fraction, None);
        assert!(!c.admission_control);
        assert_eq!(
            (c.allowed_average_deviation_percent, c.shed_percentage),
            (25.0, 50.0)
        );
        assert_eq!((c.max_shed_count, c.min_shed_count), (Some(100), 10));
        assert_eq!(c.round_duration, Duration::from_secs(10));
    }

    #[test]
    fn out_of_range_names_field_value_and_range() {
        let c = Config {
            shed_percentage: 150.0,
            ..Config::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "shed_percentage must be in [0, 100], got 150"
        );
    }

    #[test]
    fn nan_is_refused() {
        let c = Config {
            allowed_average_deviation_percent: f64::NAN,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                field: "allowed_average_deviation_percent",
                ..
            })
        ));
    }

    #[test]
    fn zero_round_is_refused() {
        let c = Config {
            round_duration: Duration::ZERO,
            ..Config::default()
        };
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("round_duration must be in [10ms, 3600s]"),
            "{err}"
        );
    }

    #[test]
    fn min_above_max_is_refused() {
        let c = Config {
            min_shed_count: 200,
            max_shed_count: Some(100),
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::MinAboveMax { min: 200, max: 100 })
        );
        let unset = Config {
            min_shed_count: 200,
            max_shed_count: None,
            ..Config::default()
        };
        unset.validate().unwrap();
    }

    #[test]
    fn zero_hard_cap_and_wide_stop_band_are_refused() {
        let c = Config {
            max_shed_fraction: Some(0.0),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("(0, 1]"));
        let c = Config {
            stop_band_percent: 1001.0,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("stop_band_percent")
        );
    }

    #[test]
    fn names_are_checked() {
        validate_namespace("ws.chat-1").unwrap();
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a b").is_err());
        assert!(validate_namespace("a:b").is_err());
        assert!(validate_namespace(&"x".repeat(65)).is_err());
        validate_node_id("node-1:gen").unwrap();
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("n\n").is_err());
    }

    #[test]
    fn strategy_parses_and_refuses_unknown() {
        assert_eq!("classic".parse::<Strategy>().unwrap(), Strategy::Classic);
        let err = "fancy".parse::<Strategy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "strategy \"fancy\" is invalid: expected one of: classic, proportional"
        );
    }
}

//! The report on the wire: the one place that knows its format.
//!
//! Every backend stores and moves a report as the string this module
//! produces and hands the string back untouched; only the core decodes it
//! (see [`crate::member`]), so every backend accepts and refuses the same
//! values.
//!
//! # Versions
//!
//! - **v2** (written): `v2;c=<count>;s=<seq>;t=<tie_breaker>;w=<weight>;r=<0|1>[;a=<address>]`.
//!   A node also writes `;n=<namespace>` ([`encode_in`]): a member whose
//!   value names another namespace than the one being balanced is refused
//!   (a backend mixing namespaces), one that names none is taken as is.
//!   Keys may come in any order; keys this version does not know are
//!   ignored, so a later release can add a field without a version bump and
//!   without the older nodes leaving the newer ones out. `%` and `;` in the
//!   address are written `%25` and `%3B`.
//! - **v1** (decoded, never written): `v1;count;seq;tie_breaker;weight;rebalancing;address`,
//!   what the previous release writes, so a rolling upgrade never splits the
//!   cluster.
//!
//! - **`left`**: the value a member writes when it leaves gracefully
//!   ([`LEFT`]). It is not a report: the member is out of the view at once
//!   and out of the quorum's memory (see [`crate::Config::quorum_rounds`]),
//!   where a member that vanished without it counts as lost until a node
//!   holding a majority forgets it.
//!   A release before this one reads it as an unknown version and discards
//!   rounds until the member is gone (a few seconds).
//! - **`lost`** ([`LOST`]) is never published: a backend hands it over for
//!   a member it knows but considers failed.
//!
//! The node id is not in the value: it is the backend member's identity.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::report::{NodeId, Report, TieBreaker};

/// What a member that left gracefully leaves behind in place of its report.
/// Backends store it through [`crate::member`]'s contract like any value.
pub const LEFT: &str = "left";

/// What a backend hands over, in place of a value, for a member its
/// membership layer still knows but considers failed (gossip: a node the
/// failure detector declared dead that did not leave). Not a member of the
/// round, but one the quorum counts: a node restarted inside the minority
/// side of a partition learns the cluster's real size from its peers.
pub const LOST: &str = "lost";

/// The longest value accepted. A report is about 60 bytes; the bound leaves
/// room for everything this release can encode: the longest address with
/// every byte escaped (3 x [`MAX_ADDRESS`]), the longest namespace, and the
/// longest numbers (found by fuzzing: 512 did not hold an address of `;`).
pub const MAX_VALUE: usize = 1024;

/// The longest advertised address accepted, in bytes.
pub const MAX_ADDRESS: usize = 256;

/// Why a value is not a usable report. Nothing was decided on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReportError {
    /// Longer than [`MAX_VALUE`].
    Oversized,
    /// A version tag this release does not know (a newer, incompatible
    /// format, or not a report at all).
    UnknownVersion,
    /// The right version, the wrong layout: a missing, repeated or
    /// unparsable field.
    Malformed,
    /// Well formed, but with values no decision can use (a weight of 0, a
    /// tie breaker outside `[0, 1)`, a control character in the address).
    InvalidValues,
    /// A report of another namespace than the one being balanced: the
    /// backend mixed namespaces.
    WrongNamespace,
}

impl ReportError {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ReportError::Oversized => "oversized_report",
            ReportError::UnknownVersion => "unknown_report_version",
            ReportError::Malformed => "malformed_report",
            ReportError::InvalidValues => "invalid_report",
            ReportError::WrongNamespace => "wrong_namespace",
        }
    }

    /// Every variant, for metrics that must exist from the start.
    pub fn all() -> [ReportError; 5] {
        [
            ReportError::Oversized,
            ReportError::UnknownVersion,
            ReportError::Malformed,
            ReportError::InvalidValues,
            ReportError::WrongNamespace,
        ]
    }
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReportError::Oversized => "oversized",
            ReportError::UnknownVersion => "of an unknown version",
            ReportError::Malformed => "malformed",
            ReportError::InvalidValues => "carrying unusable values",
            ReportError::WrongNamespace => "of another namespace (the backend mixed namespaces)",
        })
    }
}

/// Encodes a report in the current version (v2).
///
/// ```
/// use clb_core::{Report, TieBreaker, wire};
///
/// let report = Report {
///     node: "n1".into(),
///     count: 42,
///     tie_breaker: TieBreaker::new(0.5),
///     weight: 1.0,
///     address: Some("ws://10.0.0.1:8080/ws".into()),
///     seq: 7,
///     rebalancing: false,
/// };
/// let value = wire::encode(&report);
/// assert_eq!(value, "v2;c=42;s=7;t=0.5;w=1;r=0;a=ws://10.0.0.1:8080/ws");
/// assert_eq!(wire::decode(&report.node, &value), Ok(report));
/// ```
pub fn encode(report: &Report) -> String {
    let mut out = format!(
        "v2;c={};s={};t={};w={};r={}",
        report.count,
        report.seq,
        report.tie_breaker.value(),
        report.weight,
        u8::from(report.rebalancing),
    );
    if let Some(address) = &report.address {
        out.push_str(";a=");
        for ch in address.chars() {
            match ch {
                '%' => out.push_str("%25"),
                ';' => out.push_str("%3B"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Encodes a report as a node of `namespace` publishes it: [`encode`] and
/// the namespace, so that a backend mixing namespaces is caught
/// ([`decode_in`]). `namespace` is a valid one
/// ([`crate::validate_namespace`]), which never needs escaping.
///
/// ```
/// # use clb_core::{Report, TieBreaker, wire};
/// # let report = Report { node: "n1".into(), count: 1, tie_breaker: TieBreaker::new(0.5),
/// #     weight: 1.0, address: None, seq: 1, rebalancing: false };
/// let value = wire::encode_in(&report, "ws");
/// assert!(wire::decode_in(&report.node, &value, Some("ws")).is_ok());
/// assert_eq!(
///     wire::decode_in(&report.node, &value, Some("sse")),
///     Err(wire::ReportError::WrongNamespace)
/// );
/// ```
pub fn encode_in(report: &Report, namespace: &str) -> String {
    let mut out = encode(report);
    out.push_str(";n=");
    out.push_str(namespace);
    out
}

/// Encodes a report in the previous version (v1), as the previous release
/// writes it: for tests of mixed-version clusters and for tools that must
/// speak to older nodes.
pub fn encode_v1(report: &Report) -> String {
    format!(
        "v1;{};{};{};{};{};{}",
        report.count,
        report.seq,
        report.tie_breaker.value(),
        report.weight,
        u8::from(report.rebalancing),
        report.address.as_deref().unwrap_or("")
    )
}

/// Decodes a value of any version this release reads, for member `node`.
pub fn decode(node: &NodeId, value: &str) -> Result<Report, ReportError> {
    decode_in(node, value, None)
}

/// [`decode`], for a balancer of `namespace`: a value that names another
/// namespace is refused ([`ReportError::WrongNamespace`]).
pub fn decode_in(
    node: &NodeId,
    value: &str,
    namespace: Option<&str>,
) -> Result<Report, ReportError> {
    if value.len() > MAX_VALUE {
        return Err(ReportError::Oversized);
    }
    let fields = match value.split_once(';') {
        Some(("v2", rest)) => decode_v2(rest)?,
        Some(("v1", rest)) => decode_v1(rest)?,
        _ => return Err(ReportError::UnknownVersion),
    };
    if let (Some(theirs), Some(ours)) = (&fields.namespace, namespace) {
        if theirs != ours {
            return Err(ReportError::WrongNamespace);
        }
    }
    let report = Report {
        node: node.clone(),
        count: fields.count,
        tie_breaker: TieBreaker::new(fields.tie_breaker),
        weight: fields.weight,
        address: fields.address,
        seq: fields.seq,
        rebalancing: fields.rebalancing,
    };
    let tie_ok = (0.0..1.0).contains(&fields.tie_breaker);
    if !tie_ok || !report.is_valid() {
        return Err(ReportError::InvalidValues);
    }
    Ok(report)
}

struct Fields {
    count: u64,
    seq: u64,
    tie_breaker: f64,
    weight: f64,
    rebalancing: bool,
    address: Option<String>,
    namespace: Option<String>,
}

fn decode_v2(rest: &str) -> Result<Fields, ReportError> {
    let (mut count, mut seq, mut tie, mut weight, mut rebalancing, mut address) =
        (None, None, None, None, None, None);
    let mut namespace = None;
    for field in rest.split(';') {
        let (key, value) = field.split_once('=').ok_or(ReportError::Malformed)?;
        let slot_taken = match key {
            "c" => count.replace(number::<u64>(value)?).is_some(),
            "s" => seq.replace(number::<u64>(value)?).is_some(),
            "t" => tie.replace(number::<f64>(value)?).is_some(),
            "w" => weight.replace(number::<f64>(value)?).is_some(),
            "r" => rebalancing.replace(flag(value)?).is_some(),
            "a" => address.replace(unescape(value)?).is_some(),
            "n" => namespace.replace(value.to_owned()).is_some(),
            // A field of a later release: ignored, so that adding one never
            // splits a cluster during an upgrade.
            _ => false,
        };
        if slot_taken {
            return Err(ReportError::Malformed);
        }
    }
    Ok(Fields {
        count: count.ok_or(ReportError::Malformed)?,
        seq: seq.ok_or(ReportError::Malformed)?,
        tie_breaker: tie.ok_or(ReportError::Malformed)?,
        weight: weight.ok_or(ReportError::Malformed)?,
        rebalancing: rebalancing.unwrap_or(false),
        address: address.filter(|a| !a.is_empty()),
        namespace,
    })
}

fn decode_v1(rest: &str) -> Result<Fields, ReportError> {
    let mut parts = rest.splitn(6, ';');
    let mut next = || parts.next().ok_or(ReportError::Malformed);
    Ok(Fields {
        count: number(next()?)?,
        seq: number(next()?)?,
        tie_breaker: number(next()?)?,
        weight: number(next()?)?,
        rebalancing: flag(next()?)?,
        address: Some(next()?.to_owned()).filter(|a| !a.is_empty()),
        namespace: None,
    })
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, ReportError> {
    s.parse().map_err(|_| ReportError::Malformed)
}

fn flag(s: &str) -> Result<bool, ReportError> {
    match s {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(ReportError::Malformed),
    }
}

/// The inverse of the address escaping in [`encode`]: only `%25` and `%3B`.
fn unescape(s: &str) -> Result<String, ReportError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).ok_or(ReportError::Malformed)?;
        out.push(match code {
            "25" => '%',
            "3B" | "3b" => ';',
            _ => return Err(ReportError::Malformed),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(address: Option<&str>) -> Report {
        Report {
            node: "n1".into(),
            count: 1234,
            tie_breaker: TieBreaker::new(0.123_456_789_012_345_67),
            weight: 2.5,
            address: address.map(str::to_owned),
            seq: 99,
            rebalancing: true,
        }
    }

    #[test]
    fn the_longest_report_this_release_can_encode_fits_and_decodes() {
        // fuzz/seeds/report_value/escaped-address: a v1 value whose address
        // of semicolons grew past the old 512-byte bound once re-encoded.
        let worst = Report {
            node: "n1".into(),
            count: u64::MAX,
            tie_breaker: TieBreaker::new(0.123_456_789_012_345_67),
            weight: crate::report::MAX_WEIGHT - 0.000_000_1,
            address: Some(";".repeat(MAX_ADDRESS)),
            seq: u64::MAX,
            rebalancing: true,
        };
        assert!(worst.is_valid());
        let namespace = "n".repeat(64);
        let value = encode_in(&worst, &namespace);
        assert!(value.len() <= MAX_VALUE, "{} bytes", value.len());
        assert_eq!(decode_in(&worst.node, &value, Some(&namespace)), Ok(worst));
    }

    #[test]
    fn both_versions_round_trip_exactly() {
        for r in [
            report(None),
            report(Some("ws://10.0.0.1:8080/ws;x=1%20y")),
            report(Some("wss://[::1]:443/ws?a=b")),
        ] {
            assert_eq!(decode(&r.node, &encode(&r)), Ok(r.clone()), "v2");
            if !r.address.as_deref().unwrap_or("").contains(';') {
                assert_eq!(decode(&r.node, &encode_v1(&r)), Ok(r.clone()), "v1");
            }
        }
    }

    #[test]
    fn v2_ignores_fields_it_does_not_know_and_takes_any_order() {
        let n: NodeId = "n1".into();
        let r = decode(&n, "v2;w=1;t=0.5;s=3;c=10;x=future;inflight=7").unwrap();
        assert_eq!(
            (r.count, r.seq, r.rebalancing, r.address),
            (10, 3, false, None)
        );
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let n: NodeId = "n1".into();
        let cases = [
            ("v3;c=1;s=1;t=0.5;w=1", ReportError::UnknownVersion),
            ("count=1", ReportError::UnknownVersion),
            ("", ReportError::UnknownVersion),
            ("v2;c=1;s=1;t=0.5", ReportError::Malformed),
            ("v2;c=1;c=2;s=1;t=0.5;w=1", ReportError::Malformed),
            ("v2;c=-1;s=1;t=0.5;w=1", ReportError::Malformed),
            ("v2;c=1;s=1;t=0.5;w=1;r=2", ReportError::Malformed),
            ("v2;c=1;s=1;t=0.5;w=1;a=%41", ReportError::Malformed),
            ("v2;c=1;s=1;t=0.5;w=1;a=%2", ReportError::Malformed),
            ("v2;c=1;s=1;t=0.5;w=1;novalue", ReportError::Malformed),
            ("v2;c=1;s=1;t=1.5;w=1", ReportError::InvalidValues),
            ("v2;c=1;s=1;t=0.5;w=NaN", ReportError::InvalidValues),
            ("v2;c=1;s=1;t=0.5;w=0", ReportError::InvalidValues),
            ("v2;c=1;s=1;t=0.5;w=1;a=a\nb", ReportError::InvalidValues),
            ("v1;1;1;0.5", ReportError::Malformed),
            ("v1;-1;1;0.5;1;0;", ReportError::Malformed),
            ("v1;1;1;1.5;1;0;", ReportError::InvalidValues),
            ("v1;1;1;0.5;1;2;", ReportError::Malformed),
        ];
        for (i, (value, want)) in cases.iter().enumerate() {
            assert_eq!(decode(&n, value), Err(*want), "case {i}: {value:?}");
        }
        let long = format!("v2;c=1;s=1;t=0.5;w=1;a={}", "x".repeat(MAX_VALUE));
        assert_eq!(decode(&n, &long), Err(ReportError::Oversized));
        let long_address = format!("v2;c=1;s=1;t=0.5;w=1;a={}", "x".repeat(300));
        assert_eq!(decode(&n, &long_address), Err(ReportError::InvalidValues));
    }
}

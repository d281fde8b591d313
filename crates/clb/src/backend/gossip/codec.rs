//! A report as a gossip value:
//! `v1;count;seq;tie_breaker;weight;rebalancing;address` (`rebalancing` is
//! `0` or `1`; the address comes last and may be empty). The node id is the
//! gossip member's.

use clb_core::{NodeId, Report, TieBreaker};

/// Longest value accepted; a report is about 60 bytes.
const MAX_VALUE: usize = 512;

pub(crate) fn encode(report: &Report) -> String {
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

/// Parses a value, or says why not (a metric label).
pub(crate) fn decode(node: &NodeId, value: &str) -> Result<Report, &'static str> {
    if value.len() > MAX_VALUE {
        return Err("oversized_report");
    }
    let mut parts = value.splitn(7, ';');
    if parts.next() != Some("v1") {
        return Err("unknown_report_version");
    }
    let mut next = || parts.next().ok_or("malformed_report");
    let count = next()?.parse::<u64>().map_err(|_| "malformed_report")?;
    let seq = next()?.parse::<u64>().map_err(|_| "malformed_report")?;
    let tie_breaker = next()?.parse::<f64>().map_err(|_| "malformed_report")?;
    let weight = next()?.parse::<f64>().map_err(|_| "malformed_report")?;
    let rebalancing = match next()? {
        "0" => false,
        "1" => true,
        _ => return Err("malformed_report"),
    };
    let address = next()?;
    if !(0.0..1.0).contains(&tie_breaker) || address.chars().any(char::is_control) {
        return Err("malformed_report");
    }
    let report = Report {
        node: node.clone(),
        count,
        tie_breaker: TieBreaker::new(tie_breaker),
        weight,
        address: (!address.is_empty()).then(|| address.to_owned()),
        seq,
        rebalancing,
    };
    if !report.is_valid() {
        return Err("invalid_report");
    }
    Ok(report)
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
    fn round_trips_exactly() {
        for r in [report(None), report(Some("ws://10.0.0.1:8080/ws;x=1"))] {
            assert_eq!(decode(&r.node, &encode(&r)), Ok(r.clone()));
        }
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let n: NodeId = "n1".into();
        assert_eq!(decode(&n, "v2;1;1;0.5;1;0;"), Err("unknown_report_version"));
        assert_eq!(decode(&n, "v1;1;1;0.5"), Err("malformed_report"));
        assert_eq!(decode(&n, "v1;-1;1;0.5;1;0;"), Err("malformed_report"));
        assert_eq!(decode(&n, "v1;1;1;1.5;1;0;"), Err("malformed_report"));
        assert_eq!(decode(&n, "v1;1;1;0.5;1;2;"), Err("malformed_report"));
        assert_eq!(decode(&n, "v1;1;1;0.5;NaN;0;"), Err("invalid_report"));
        assert_eq!(decode(&n, "v1;1;1;0.5;0;0;"), Err("invalid_report"));
        assert_eq!(
            decode(&n, "v1;1;1;0.5;1;1;a\\nb").map(|r| r.rebalancing),
            Ok(true)
        );
        assert_eq!(decode(&n, "v1;1;1;0.5;1;0;a\nb"), Err("malformed_report"));
        assert_eq!(
            decode(&n, &format!("v1;1;1;0.5;1;0;{}", "x".repeat(600))),
            Err("oversized_report")
        );
    }
}

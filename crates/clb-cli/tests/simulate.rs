#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `clb simulate` as a user runs it: flags in, JSON or a clear error out.

use std::process::{Command, Output};

fn clb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clb"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run clb")
}

#[test]
fn counts_100_59_one_round_no_lb_as_json() {
    let out = clb(&[
        "simulate", "--counts", "100,59", "--lb", "none", "--rounds", "1", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["strategy"], "classic");
    assert_eq!(v["lb"], "none");
    assert_eq!(v["nodes"], 2);
    assert_eq!(v["clients"], 159);
    assert_eq!(v["rounds"][0]["counts"], serde_json::json!([100, 59]));
    assert_eq!(v["rounds"][0]["shed"], serde_json::json!([10, 0]));
    for key in [
        "seed",
        "converged_round",
        "within_10_round",
        "within_5_round",
        "total_shed",
        "ideal_shed",
        "churn_ratio",
        "peak_round_shed",
        "peak_node_shed_fraction",
        "refusals",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn out_of_range_flag_is_one_line_naming_field_and_range() {
    let out = clb(&["simulate", "--shed-percentage", "150"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: shed_percentage must be in [0, 100], got 150\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_lists_and_mismatched_tie_breakers_are_clear_errors() {
    let out = clb(&["simulate", "--counts", "100,x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: --counts: \"x\" is not a valid number"),
        "{stderr}"
    );
    let out = clb(&["simulate", "--counts", "1,2", "--tie-breakers", "0.5"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("one value per node"), "{stderr}");
}

#[test]
fn same_seed_same_bytes() {
    let args = [
        "simulate",
        "--scenario",
        "skewed",
        "--nodes",
        "6",
        "--clients",
        "5000",
        "--seed",
        "9",
        "--json",
    ];
    let a = clb(&args);
    let b = clb(&args);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn many_runs_summarise_median_and_p90() {
    let out = clb(&["simulate", "--runs", "3", "--rounds", "80", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    assert!(v["summary"]["converged_round"]["median"].is_u64());
}

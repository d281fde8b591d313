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
    // The original's own case: node 0 sheds 10, node 1 nothing; the
    // proportional default agrees on this one (10% of 100).
    for strategy in ["proportional", "classic"] {
        let out = clb(&[
            "simulate",
            "--counts",
            "100,59",
            "--lb",
            "none",
            "--rounds",
            "1",
            "--json",
            "--strategy",
            strategy,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON object on one line");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["strategy"], strategy);
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

#[test]
fn compare_runs_both_strategies_on_the_same_seeds_and_plots() {
    let dir = std::env::temp_dir().join(format!("clb-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("counts.svg");
    let out = clb(&[
        "simulate",
        "--compare",
        "--scenario",
        "new-node",
        "--runs",
        "3",
        "--rounds",
        "30",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let case = &v["cases"][0];
    assert_eq!(case["scenario"], "new-node");
    assert_eq!(case["runs"], 3);
    // The original never fills a node joining four at +25%; ours does.
    assert!(case["classic"]["within_5_round"]["median"].is_null());
    assert!(
        case["proportional"]["within_5_round"]["median"]
            .as_u64()
            .unwrap()
            <= 10
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("classic") && plot.contains("proportional"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_clb"))
        .args(["simulate", "--runs", "30", "--rounds", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte and hang up, as `| head -c1` would.
    let mut one = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut one).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

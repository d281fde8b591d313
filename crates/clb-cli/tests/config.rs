#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `--config clb.toml` at the process level: precedence flags > `CLB_*` >
//! file > defaults, and errors that name the key and the file.

mod common;

use std::path::PathBuf;

use common::{SERIAL, Spec, clb, start, status};

/// A file in a fresh folder of its own.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clb-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const FILE: &str = r#"
[node]
namespace = "from-file"

[balancer]
strategy = "classic"
"#;

type Layers<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_beats_the_file_and_a_flag_beats_the_environment() {
    let _serial = SERIAL.lock().await;
    let path = file("layers", FILE);
    let path = path.to_str().unwrap();
    // (environment, flags, the namespace and strategy the node runs with)
    let cases: [Layers<'_>; 3] = [
        (&[], &[], "from-file", "classic"),
        (&[("CLB_NAMESPACE", "from-env")], &[], "from-env", "classic"),
        (
            &[
                ("CLB_NAMESPACE", "from-env"),
                ("CLB_STRATEGY", "proportional"),
            ],
            &["--namespace", "from-flag"],
            "from-flag",
            "proportional",
        ),
    ];
    for (env, flags, namespace, strategy) in cases {
        let mut extra = vec!["--config", path];
        extra.extend_from_slice(flags);
        let node = start(&Spec {
            env,
            extra: &extra,
            ..Spec::new("n0")
        });
        let s = status(&node).await;
        assert_eq!(
            s["namespace"], namespace,
            "env {env:?} flags {flags:?}: {s}"
        );
        assert_eq!(s["strategy"], strategy, "env {env:?} flags {flags:?}: {s}");
    }
}

/// Runs `clb <args>` to its end: (exit code, stderr).
fn fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = clb().args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sub` with what it needs besides `extra` (the demo takes no id).
fn args<'a>(sub: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![sub];
    if sub != "demo" {
        args.extend(["--id", "n0"]);
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_bad_file_or_variable_stops_every_command_with_one_line_naming_the_key() {
    let unknown = file("unknown", "[balancer]\nround_durration = \"1s\"\n");
    let wrong_type = file("type", "[limits]\nmax_connections = \"many\"\n");
    let out_of_range = file("range", "[balancer]\nmax_shed_fraction = 7.0\n");
    let cases = [
        (&unknown, "round_durration"),
        (&wrong_type, "max_connections"),
        (&out_of_range, "max_shed_fraction"),
    ];
    for sub in ["node", "sidecar", "demo"] {
        for (path, key) in &cases {
            let path = path.to_str().unwrap();
            let (code, stderr) = fails(&args(sub, &["--config", path]), &[]);
            assert_eq!(code, Some(2), "{sub} {path}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{sub}: {stderr}");
            assert!(stderr.starts_with("error: "), "{sub}: {stderr}");
            assert!(stderr.contains(key), "{sub} names {key}: {stderr}");
            if *key != "max_shed_fraction" {
                assert!(stderr.contains(path), "{sub} names the file: {stderr}");
            }
        }
        if sub != "demo" {
            // A flag of the backend not in use is a mistake, not a no-op.
            let url = ["--redis-url", "redis://127.0.0.1:1"];
            let seeds = ["--seeds", "127.0.0.1:7946"];
            let redis_with_seeds = [&["--backend", "redis"][..], &url, &seeds].concat();
            for (flags, named) in [
                (&redis_with_seeds[..], "--seeds"),
                (&url[..], "--redis-url"),
            ] {
                let (code, stderr) = fails(&args(sub, flags), &[]);
                assert_eq!(code, Some(2), "{sub} {flags:?}: {stderr}");
                assert!(stderr.contains(named), "{sub} names {named}: {stderr}");
            }
        }
        let env = [("CLB_ROUND_DURATION", "fast")];
        let (code, stderr) = fails(&args(sub, &[]), &env);
        assert_eq!(code, Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("CLB_ROUND_DURATION"), "{sub}: {stderr}");
    }
}

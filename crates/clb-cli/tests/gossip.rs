#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gossip failures that used to be quiet, on real `clb node` processes over
//! real UDP on loopback: replayed datagrams, two processes with one id,
//! seeds that do not resolve, a node without the key. Each must be visible:
//! a rate-limited warning naming the cause, a metric, `/status`, readiness.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use clb_cli::probe;
use common::{SERIAL, Spec, formed, members, metric, metrics, start, status, until};
use tokio::time::Instant;

const KEY: Option<&str> = Some("a-cluster-key-for-the-gossip-tests");

fn rejected(m: &str, reason: &str) -> f64 {
    metric(
        m,
        &format!("clb_rejected_messages_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_and_discard_series_exists_at_zero_from_the_start() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        key: KEY,
        ..Spec::new("n0")
    });
    let m = metrics(&node).await;
    for reason in clb::backend::gossip::reject_labels() {
        let series = format!("clb_rejected_messages_total{{reason=\"{reason}\"}} 0");
        assert!(m.contains(&series), "missing {series}:\n{m}");
    }
    for reason in clb::DiscardReason::labels() {
        let series =
            format!("clb_discarded_rounds_total{{namespace=\"websocket\",reason=\"{reason}\"}} 0");
        assert!(m.contains(&series), "missing {series}:\n{m}");
    }
    assert!(m.contains("# HELP clb_rejected_messages_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_datagrams_replayed_to_another_node_are_refused_counted_and_never_answered() {
    let _serial = SERIAL.lock().await;
    // The "wire": n2 believes a peer listens here, and we record what it sends.
    let tap = UdpSocket::bind("127.0.0.1:0").unwrap();
    tap.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let n1 = start(&Spec {
        key: KEY,
        ..Spec::new("n1")
    });
    let n2 = start(&Spec {
        seeds: vec![tap.local_addr().unwrap()],
        key: KEY,
        extra: &["--join-timeout", "none"],
        ..Spec::new("n2")
    });
    let mut captured = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65_536];
    while captured.len() < 20 && Instant::now() < deadline {
        if let Ok((len, from)) = tap.recv_from(&mut buf) {
            assert_eq!(from, n2.gossip());
            captured.push(buf[..len].to_vec());
        }
    }
    assert!(captured.len() >= 5, "n2 gossiped to its seed");
    // Replay everything to n1 (and back to n2) from the tap's address.
    for datagram in &captured {
        tap.send_to(datagram, n1.gossip()).unwrap();
        tap.send_to(datagram, n2.gossip()).unwrap();
    }
    until(Duration::from_secs(5), "the replays counted", || async {
        rejected(&metrics(&n1).await, "wrong_recipient") >= captured.len() as f64
            && rejected(&metrics(&n2).await, "wrong_recipient") >= captured.len() as f64
    })
    .await;
    // Nothing came back: a node never answers an address that has not
    // proven the key. (n2 still gossips to its seed, the tap, on its own:
    // those datagrams are n2's, addressed to the tap, never from n1.)
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        if let Ok((_, from)) = tap.recv_from(&mut buf) {
            assert_ne!(from, n1.gossip(), "n1 answered a replay");
        }
    }
    assert!(
        n1.log().contains("wrong_recipient"),
        "the refusal is logged"
    );
    assert_eq!(
        status(&n1).await["gossip"]["live_nodes"],
        serde_json::json!(["n1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_flood_is_counted_in_full_and_logged_a_bounded_number_of_times() {
    let _serial = SERIAL.lock().await;
    let node = start(&Spec {
        key: KEY,
        ..Spec::new("n0")
    });
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    // In batches a socket buffer holds, so the kernel drops none.
    for batch in 1..=20 {
        for _ in 0..100 {
            junk.send_to(b"not gossip at all", node.gossip()).unwrap();
        }
        until(Duration::from_secs(10), "the batch counted", || async {
            rejected(&metrics(&node).await, "malformed") >= f64::from(batch * 100)
        })
        .await;
    }
    let lines = node
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("malformed"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} warning lines for 2,000 datagrams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_id_are_reported_and_no_round_is_decided_on_them() {
    let _serial = SERIAL.lock().await;
    let a = start(&Spec {
        key: KEY,
        ..Spec::new("n1")
    });
    let b = start(&Spec {
        seeds: vec![a.gossip()],
        key: KEY,
        ..Spec::new("n2")
    });
    formed(&[&a, &b], 2).await;
    // A second process started as n1 (a copy-pasted unit file, say).
    let twin = start(&Spec {
        seeds: vec![a.gossip(), b.gossip()],
        key: KEY,
        ..Spec::new("n1")
    });
    until(
        Duration::from_secs(15),
        "n2 reports the duplicate",
        || async { status(&b).await["duplicate_ids"] == serde_json::json!(["n1"]) },
    )
    .await;
    let s = status(&b).await;
    assert_eq!(s["last_outcome"]["outcome"], "discarded", "{s}");
    assert_eq!(s["last_outcome"]["reason"], "duplicate_node", "{s}");
    // Both n1 processes say their id is taken, and are not ready.
    for node in [&a, &twin] {
        until(Duration::from_secs(10), "n1 not ready", || async {
            probe::get(node.http, "/health/ready")
                .await
                .is_ok_and(|(c, _)| c == 503)
        })
        .await;
        let s = status(node).await;
        let why = s["not_ready"].as_str().unwrap_or("");
        assert!(
            why.contains("another live process uses this node's id"),
            "{s}"
        );
        assert!(node.log().contains("WARN"), "logged");
    }
    assert!(b.log().contains("duplicate_node") || b.log().contains("same node id"));
    // One of them stops: the conflict ends, balancing resumes.
    drop(twin);
    until(
        Duration::from_secs(20),
        "n2 decides rounds again",
        || async {
            let s = status(&b).await;
            s["last_outcome"]["outcome"] == "balanced" && members(&s) == ["n1", "n2"]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_do_not_resolve_or_a_missing_key_make_a_node_not_ready_and_say_why() {
    let _serial = SERIAL.lock().await;
    let lonely = start(&Spec {
        seeds: vec![],
        extra: &[
            "--seeds",
            "no-such-host.invalid:7946",
            "--join-timeout",
            "1s",
        ],
        ..Spec::new("lonely")
    });
    let keyed = start(&Spec {
        key: KEY,
        ..Spec::new("keyed")
    });
    // No key, seeded with a node that signs: it hears signed datagrams only
    // if the keyed node talks to it, so seed both ways.
    let keyless = start(&Spec {
        seeds: vec![keyed.gossip()],
        extra: &["--join-timeout", "1s"],
        ..Spec::new("keyless")
    });
    until(Duration::from_secs(10), "both not ready", || async {
        status(&lonely).await["ready"] == false && status(&keyless).await["ready"] == false
    })
    .await;
    let s = status(&lonely).await;
    let why = s["not_ready"].as_str().unwrap();
    assert!(
        why.contains("no-such-host.invalid:7946") && why.contains("does not resolve"),
        "{why}"
    );
    assert_eq!(
        s["gossip"]["seeds"][0]["resolved"],
        serde_json::json!([]),
        "{s}"
    );
    assert!(
        lonely.log().contains("seed does not resolve"),
        "{}",
        lonely.log()
    );
    let why = status(&keyless).await["not_ready"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("no seed admitted"), "{why}");
    // The keyed node refuses the keyless one's unsigned datagrams, loudly.
    until(
        Duration::from_secs(5),
        "the keyed node complains",
        || async {
            rejected(&metrics(&keyed).await, "unsigned") > 0.0 && keyed.log().contains("unsigned")
        },
    )
    .await;
    assert_eq!(
        status(&keyed).await["ready"],
        true,
        "a node with no seeds is ready alone"
    );
}

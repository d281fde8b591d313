//! The demo's node processes: started, restarted and stopped, and never left
//! behind (every child is killed when its handle drops, panics included).
//!
//! Every node binds port 0 and says in its ready line which ports it got:
//! nothing probes for a free port and races another program for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The addresses a node bound, from its ready line.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Bound {
    pub gossip: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
}

/// Reads `clb node`'s ready line, if `line` is one.
pub fn parse_ready(line: &str) -> Option<Bound> {
    #[derive(Deserialize)]
    struct Ready {
        event: String,
        #[serde(flatten)]
        bound: Bound,
    }
    serde_json::from_str::<Ready>(line)
        .ok()
        .filter(|r| r.event == "ready")
        .map(|r| r.bound)
}

/// One `clb node` process slot: a child and its addresses while running.
pub struct NodeProc {
    pub id: String,
    /// Where the node is now (its last start).
    pub bound: Option<Bound>,
    child: Option<Child>,
    /// Every pid this slot has run, to check they are all gone at the end.
    pub pids: Vec<u32>,
    /// Every address set this slot has bound, to check they are free.
    pub history: Vec<Bound>,
}

/// The whole local cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    exe: PathBuf,
    node_args: Vec<String>,
    pub log_dir: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes, each seeded with those already up, and waits until
    /// each says it is ready.
    pub async fn start(n: usize, node_args: Vec<String>, log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the clb executable")?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let nodes = (0..n)
            .map(|i| NodeProc {
                id: format!("n{}", i + 1),
                bound: None,
                child: None,
                pids: Vec::new(),
                history: Vec::new(),
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            exe,
            node_args,
            log_dir: log_dir.to_owned(),
        };
        for i in 0..n {
            cluster.spawn(i).await?;
        }
        Ok(cluster)
    }

    /// Starts node `i` (stopped, or never started) on fresh ports and waits
    /// until it is ready.
    pub async fn spawn(&mut self, i: usize) -> anyhow::Result<Bound> {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && n.child.is_some())
            .filter_map(|(_, n)| n.bound.map(|b| b.gossip.to_string()))
            .collect();
        let log_path = self.log_dir.join(format!("{}.log", self.nodes[i].id));
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening a node log")?;
        let mut command = Command::new(&self.exe);
        command
            .arg("node")
            .args(["--id", &node.id])
            .args(["--gossip-listen", "127.0.0.1:0"])
            .args(["--ws-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"]);
        if !seeds.is_empty() {
            command.args(["--seeds", &seeds.join(",")]);
        }
        // Only the demo's own settings: none of the shell's CLB_* variables.
        for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLB_")) {
            command.env_remove(var);
        }
        let mut child = command
            .args(&self.node_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", node.id))?;
        if let Some(pid) = child.id() {
            node.pids.push(pid);
        }
        let stdout = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(bound) = parse_ready(&line) {
                    return anyhow::Ok(Some(bound));
                }
            }
            Ok(None)
        })
        .await;
        node.child = Some(child);
        match ready {
            Ok(Ok(Some(bound))) => {
                // Keep draining stdout so the node never blocks on it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                node.bound = Some(bound);
                node.history.push(bound);
                Ok(bound)
            }
            _ => bail!(
                "node {} did not start; its log is {}",
                node.id,
                log_path.display()
            ),
        }
    }

    /// SIGTERM, then wait: the node leaves, closes its clients with 1012 and
    /// exits. Killed if it takes more than 10 s.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "node {} ignored SIGTERM for 10 s and was killed",
                    self.nodes[i].id
                )
            }
        }
    }

    /// Stops every node, gracefully and all at once.
    pub async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(pid) = self.nodes[i].child.as_ref().and_then(Child::id) {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Whether every process this cluster ever started has exited.
    pub fn all_gone(&self) -> bool {
        self.nodes.iter().all(|n| n.child.is_none())
            && self.nodes.iter().flat_map(|n| &n.pids).all(|pid| {
                !Path::new(&format!("/proc/{pid}")).exists() || !cfg!(target_os = "linux")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_gives_the_bound_addresses() {
        let line = r#"{"event":"ready","node_id":"n1","ws":"127.0.0.1:4001","http":"127.0.0.1:4002","gossip":"127.0.0.1:4003","generation":7}"#;
        let bound = parse_ready(line).unwrap();
        assert_eq!(bound.ws.port(), 4001);
        assert_eq!(bound.gossip.port(), 4003);
        assert!(parse_ready("starting").is_none());
        assert!(parse_ready(r#"{"event":"stopped"}"#).is_none());
    }
}

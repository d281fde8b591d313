//! The demo's node processes: started, restarted and stopped, and never left
//! behind (every child is killed when its handle drops, panics included).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::probe::{free_tcp, free_udp};

/// One `clb node` process slot: fixed addresses, a child when running.
pub struct NodeProc {
    pub id: String,
    pub gossip: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    child: Option<Child>,
    /// Every pid this slot has run, to check they are all gone at the end.
    pub pids: Vec<u32>,
}

/// The whole local cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    exe: PathBuf,
    node_args: Vec<String>,
    pub log_dir: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes on free loopback ports, each seeded with the others,
    /// and waits until each says it is ready.
    pub async fn start(n: usize, node_args: Vec<String>, log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the clb executable")?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(NodeProc {
                id: format!("n{}", i + 1),
                gossip: free_udp()?,
                ws: free_tcp()?,
                http: free_tcp()?,
                child: None,
                pids: Vec::new(),
            });
        }
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

    /// Starts node `i` (stopped, or never started) and waits until it is ready.
    pub async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.gossip.to_string())
            .collect();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", node.id)))
            .context("opening a node log")?;
        let mut child = Command::new(&self.exe)
            .arg("node")
            .args(["--id", &node.id])
            .args(["--gossip-listen", &node.gossip.to_string()])
            .args(["--seeds", &seeds.join(",")])
            .args(["--ws-listen", &node.ws.to_string()])
            .args(["--http-listen", &node.http.to_string()])
            .args(&self.node_args)
            .env_remove("CLB_CLUSTER_KEY")
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
                if line.contains("\"event\":\"ready\"") {
                    return anyhow::Ok(true);
                }
            }
            Ok(false)
        })
        .await;
        node.child = Some(child);
        match ready {
            Ok(Ok(true)) => {
                // Keep draining stdout so the node never blocks on it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(())
            }
            _ => bail!(
                "node {} did not start; its log is {}",
                node.id,
                self.log_dir.join(format!("{}.log", node.id)).display()
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

//! A RabbitMQ cluster of the caller's own: three (or n) [`RabbitNode`]s on
//! this machine, each with its own node name, AMQP and distribution ports
//! and data directory, sharing one Erlang cookie (the `rabbitmq` user's, as
//! root; see `rabbit`), joined with `rabbitmqctl join_cluster`. Quorum
//! queues declared once it is formed have a member on every node (the
//! initial group size defaults to the cluster's size), so each node's loss
//! is a real failover. A test or the chaos runner stops and starts nodes
//! one by one; everything is stopped and deleted on drop.
//!
//! The nodes have no plugins (no management listener): what the runner
//! needs of the cluster (a queue's leader and members) it asks `rabbitmqctl`.

use std::sync::Arc;

use crate::rabbit::RabbitNode;

/// The nodes of a cluster, stopped and removed on drop.
pub struct RabbitCluster {
    nodes: Vec<Arc<RabbitNode>>,
}

/// Where a quorum queue's replicas are, by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReplicas {
    /// The node hosting the leader (`None` while the queue has no leader:
    /// its majority is gone).
    pub leader: Option<usize>,
    /// Nodes holding a member of the queue.
    pub members: Vec<usize>,
}

impl RabbitCluster {
    /// Boots `size` nodes side by side, then joins every other node to the
    /// first. Blocking (a boot is ~7 s per node on the 2-core machine, more
    /// as they share it): from async code, call it on a blocking thread.
    pub fn start(size: usize) -> Self {
        assert!(size >= 1, "a cluster has a node");
        let nodes: Vec<Arc<RabbitNode>> =
            (0..size).map(|_| Arc::new(RabbitNode::prepare())).collect();
        let boots: Vec<_> = nodes
            .iter()
            .map(|n| {
                let n = n.clone();
                std::thread::spawn(move || n.restart())
            })
            .collect();
        for boot in boots {
            if let Err(panic) = boot.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let first = nodes[0].name().to_string();
        for node in &nodes[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", first.as_str()],
                vec!["start_app"],
            ] {
                let out = node.ctl(&args, None);
                assert!(
                    out.status.success(),
                    "rabbitmqctl -n {} {} failed: {}\n{}",
                    node.name(),
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr),
                    node.log_tail()
                );
            }
        }
        let cluster = Self { nodes };
        let running = cluster.running_nodes(0);
        assert_eq!(running.len(), size, "every node joined: {running:?}");
        cluster
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[Arc<RabbitNode>] {
        &self.nodes
    }

    /// Every node's URL for `user` with `password`, comma-separated, as
    /// `ADDONREG_AMQP_URL` takes them.
    pub fn urls_for(&self, user: &str, password: &str) -> String {
        self.nodes
            .iter()
            .map(|n| n.url_for(user, password))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Names of the cluster's running nodes, as node `via` sees them.
    pub fn running_nodes(&self, via: usize) -> Vec<String> {
        let out = self.nodes[via].ctl(&["cluster_status", "--formatter", "json"], None);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["running_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where `queue`'s replicas are, asked of node `via` (a running one).
    /// `None` when the node cannot tell (not running, no such queue).
    pub fn replicas(&self, via: usize, queue: &str) -> Option<QueueReplicas> {
        let out = self.nodes[via].ctl(
            &[
                "list_queues",
                "name",
                "leader",
                "members",
                "--formatter",
                "json",
                "--timeout",
                "10",
            ],
            None,
        );
        if !out.status.success() {
            return None;
        }
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = rows.as_array()?.iter().find(|r| r["name"] == queue)?;
        let index = |name: &str| self.nodes.iter().position(|n| n.name() == name);
        Some(QueueReplicas {
            leader: row["leader"].as_str().and_then(index),
            members: row["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|n| n.as_str().and_then(index))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

//! `kith deep-check`: checks (and optionally repairs) every file and directory under a root.
//!
//! Directories and mutable files are checked by [`crate::slot::check`] (every share is
//! fetched whole and verified, so a check of a slot is also a verify); immutable files by
//! the immutable checker. The walk reads each directory once; the report lists every node
//! with its health and a summary with counts.

use serde::Serialize;

use crate::{caps::Cap, fs, node::NodeHandle};

/// One node of the tree.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCheck {
    /// Its path.
    pub path: String,
    /// `file`, `mutable` or `dir`.
    pub kind: &'static str,
    /// Healthy (after repair, when repairing).
    pub healthy: bool,
    /// Shares found / wanted, in words.
    pub summary: String,
    /// What a repair did, when one ran.
    pub repair: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeepCheck {
    /// Every node.
    pub nodes: Vec<NodeCheck>,
    /// Nodes checked.
    pub checked: usize,
    /// Healthy ones.
    pub healthy: usize,
    /// Unhealthy ones (after repair).
    pub unhealthy: usize,
    /// Repairs attempted.
    pub repairs_attempted: usize,
    /// Repairs that left the node healthy.
    pub repairs_successful: usize,
    /// Directories that could not be read.
    pub unreadable: Vec<(String, String)>,
}

/// Checks one node.
pub async fn check_one(
    node: &NodeHandle,
    path: &str,
    cap: &Cap,
    verify: bool,
    repair: bool,
) -> NodeCheck {
    let kind = fs::kind(cap);
    match cap {
        Cap::Ssk(s) => {
            let r = crate::slot::check(node, s, repair).await;
            NodeCheck {
                path: path.to_owned(),
                kind,
                healthy: r.healthy,
                summary: format!(
                    "{}/{} shares of version {} on {} servers{}{}",
                    r.good_shares,
                    r.total,
                    r.seqnum.map_or("-".into(), |v| v.to_string()),
                    r.happiness,
                    if r.other_versions > 0 {
                        format!(", {} stale", r.other_versions)
                    } else {
                        String::new()
                    },
                    if r.bad.is_empty() {
                        String::new()
                    } else {
                        format!(", {} bad", r.bad.len())
                    }
                ),
                repair: r.repair,
            }
        }
        other => immutable(node, path, other, verify, repair).await,
    }
}

async fn immutable(
    node: &NodeHandle,
    path: &str,
    cap: &Cap,
    verify: bool,
    repair: bool,
) -> NodeCheck {
    let target = crate::checker::CheckTarget::from(cap);
    let opts = crate::checker::CheckOptions { verify, repair };
    match crate::checker::check(node, &target, opts).await {
        Ok(r) => NodeCheck {
            path: path.to_owned(),
            kind: fs::kind(cap),
            healthy: r.healthy_now(),
            summary: r.summary(),
            repair: r.repair.as_ref().map(|x| {
                if r.healthy_now() {
                    format!(
                        "repaired: {} shares placed on {} servers",
                        x.shares_placed.len(),
                        x.servers
                    )
                } else {
                    format!("repair incomplete: {}", x.problems.join("; "))
                }
            }),
        },
        Err(e) => NodeCheck {
            path: path.to_owned(),
            kind: fs::kind(cap),
            healthy: false,
            summary: format!("check failed: {e}"),
            repair: None,
        },
    }
}

/// Checks only `root` itself (what `kith check PATH` does), in the same report shape.
pub async fn shallow(
    node: &NodeHandle,
    root: &Cap,
    root_name: &str,
    verify: bool,
    repair: bool,
) -> DeepCheck {
    let mut report = DeepCheck::default();
    report.add(check_one(node, root_name, root, verify, repair).await);
    report
}

impl DeepCheck {
    fn add(&mut self, c: NodeCheck) {
        self.checked += 1;
        if c.healthy {
            self.healthy += 1;
        } else {
            self.unhealthy += 1;
        }
        if let Some(r) = &c.repair {
            self.repairs_attempted += 1;
            if c.healthy && r.starts_with("repaired") {
                self.repairs_successful += 1;
            }
        }
        self.nodes.push(c);
    }
}

/// Checks every node under `root`.
pub async fn deep_check(
    node: &NodeHandle,
    root: &Cap,
    root_name: &str,
    verify: bool,
    repair: bool,
) -> DeepCheck {
    let (all, unreadable) = fs::walk(node, root, root_name).await;
    let mut report = DeepCheck {
        unreadable,
        ..DeepCheck::default()
    };
    for (path, cap) in all {
        report.add(check_one(node, &path, &cap, verify, repair).await);
    }
    report
}

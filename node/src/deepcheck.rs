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
    _node: &NodeHandle,
    path: &str,
    cap: &Cap,
    _verify: bool,
    _repair: bool,
) -> NodeCheck {
    let lit = matches!(
        cap,
        Cap::Read(crate::caps::ReadCap::Lit(_)) | Cap::ImmDir(crate::caps::ReadCap::Lit(_))
    );
    NodeCheck {
        path: path.to_owned(),
        kind: fs::kind(cap),
        healthy: lit,
        summary: if lit {
            "literal (stored in the cap)".into()
        } else {
            "not checked".into()
        },
        repair: None,
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
        let c = check_one(node, &path, &cap, verify, repair).await;
        report.checked += 1;
        if c.healthy {
            report.healthy += 1;
        } else {
            report.unhealthy += 1;
        }
        if let Some(r) = &c.repair {
            report.repairs_attempted += 1;
            if c.healthy && r.starts_with("repaired") {
                report.repairs_successful += 1;
            }
        }
        report.nodes.push(c);
    }
    report
}

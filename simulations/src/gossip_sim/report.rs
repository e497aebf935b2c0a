//! Results of one run and the table the `gossip-sim` binary prints.

use std::{collections::BTreeMap, fmt::Write as _};

/// Raw network counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Bytes sent by members (encoded CBOR size), whole run.
    pub bytes_total: u64,
    /// Bytes sent by members from the end of the warm-up on.
    pub bytes_window: u64,
    /// Window bytes per message kind.
    pub bytes_by_kind: BTreeMap<&'static str, u64>,
    /// Messages sent by members.
    pub messages: u64,
    /// Messages lost (i.i.d. loss).
    pub lost: u64,
    /// Messages sent to a peer with no open connection (dropped).
    pub no_link: u64,
    /// Messages in flight when their connection closed.
    pub cut: u64,
    /// Messages swallowed by stalled nodes.
    pub swallowed: u64,
    /// Messages sent by Sybils.
    pub sybil_sent: u64,
    /// Sybil messages that reached a running member.
    pub sybil_received: u64,
    /// Forged pushes sent by members.
    pub forged_sent: u64,
    /// Forged items some node delivered (must be 0).
    pub forged_delivered: u64,
}

/// The outcome of one scenario run with one seed.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// Member nodes.
    pub nodes: u32,
    /// Measured publications (records and refreshes inside the window).
    pub records: u64,
    /// (record, node) pairs that should learn: nodes running from the publication to the end.
    pub eligible: u64,
    /// Eligible pairs that never learned the record.
    pub missed: u64,
    /// Median time to learn a record (ms); `None` when beyond the deliveries (missed).
    pub p50: Option<u64>,
    /// 99th percentile (ms).
    pub p99: Option<u64>,
    /// 99.9th percentile (ms).
    pub p999: Option<u64>,
    /// Slowest delivery (ms); `None` if some were missed.
    pub max: Option<u64>,
    /// Percentage of eligible pairs delivered.
    pub delivered_pct: f64,
    /// Duplicate payload copies per delivery after the warm-up.
    pub redundancy: f64,
    /// Bytes sent per member per second over the whole run.
    pub bytes_per_node_s_total: f64,
    /// Bytes sent per member per second after the warm-up (steady state).
    pub bytes_per_node_s_window: f64,
    /// Messages sent by Sybils.
    pub sybil_sent: u64,
    /// Sybil messages that reached a running member.
    pub sybil_received: u64,
    /// Messages the cores dropped because the sender is not a member.
    pub sybil_dropped: u64,
    /// Forged pushes sent by members.
    pub forged_sent: u64,
    /// Items refused with a bad signature after the warm-up.
    pub forged_rejected: u64,
    /// Forged items delivered (must be 0).
    pub forged_delivered: u64,
    /// Grafts after the warm-up.
    pub grafts: u64,
    /// Items learned by anti-entropy after the warm-up.
    pub sync_items: u64,
    /// Messages dropped by rate limits after the warm-up.
    pub rate_limited: u64,
    /// Mean eager neighbours (directed) of running nodes at the end.
    pub eager_degree: f64,
    /// Mean neighbours of running nodes at the end.
    pub degree: f64,
    /// Connected components of the eager graph among running nodes at the end (1: a
    /// spanning structure).
    pub components: u32,
    /// Events processed.
    pub events: u64,
    /// Whether the event bound stopped the run early.
    pub truncated: bool,
    /// SHA-256 over the processed events and every sent message (hex).
    pub trace: String,
    /// Raw counters.
    pub totals: Totals,
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "miss".into(), |v| v.to_string())
}

impl Report {
    /// The table header matching [`Report::row`].
    pub fn header() -> String {
        format!(
            "{:<12} {:>6} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>7} {:>7} {:>6} {:>11} {:>16}",
            "scenario",
            "nodes",
            "seed",
            "recs",
            "p50",
            "p99",
            "p99.9",
            "max",
            "deliv%",
            "redund",
            "B/n/s",
            "B/n/s*",
            "missed",
            "sybil drop",
            "trace"
        )
    }

    /// One table row (times in ms; `B/n/s` whole run, `B/n/s*` after the warm-up).
    pub fn row(&self) -> String {
        format!(
            "{:<12} {:>6} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>8.3} {:>6.3} {:>7.0} {:>7.0} {:>6} {:>11} {:>16}{}",
            self.name,
            self.nodes,
            self.seed,
            self.records,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.delivered_pct,
            self.redundancy,
            self.bytes_per_node_s_total,
            self.bytes_per_node_s_window,
            self.missed,
            format!("{}/{}", self.sybil_dropped, self.sybil_received),
            &self.trace[..16],
            if self.truncated { " TRUNCATED" } else { "" }
        )
    }

    /// Extra detail: bytes per message kind, grafts, losses.
    pub fn detail(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "  events {} msgs {} lost {} no-link {} cut {} swallowed {} grafts {} sync-items {} \
             rate-limited {} forged {}/{} rejected, {} delivered\n  degree {:.2} eager {:.2} \
             eager components {}\n  window bytes/node/s by kind:",
            self.events,
            t.messages,
            t.lost,
            t.no_link,
            t.cut,
            t.swallowed,
            self.grafts,
            self.sync_items,
            self.rate_limited,
            self.forged_rejected,
            self.forged_sent,
            self.forged_delivered,
            self.degree,
            self.eager_degree,
            self.components,
        );
        let secs = self.window_secs();
        for (k, b) in &t.bytes_by_kind {
            let _ = write!(s, " {k} {:.1}", *b as f64 / f64::from(self.nodes) / secs);
        }
        s
    }

    fn window_secs(&self) -> f64 {
        if self.bytes_per_node_s_window > 0.0 {
            self.totals.bytes_window as f64 / f64::from(self.nodes) / self.bytes_per_node_s_window
        } else {
            1.0
        }
    }
}

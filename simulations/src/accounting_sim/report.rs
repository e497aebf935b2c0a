//! Results of one run and the table the `accounting-sim` binary prints.

use std::fmt::Write as _;

/// Detection of one class of deleters (big: ≥ 10% deleted; small: ~1%).
#[derive(Clone, Debug, Default)]
pub struct Detection {
    /// Deleters in the class.
    pub deleters: u64,
    /// Deleters whose first deletion fell inside the window.
    pub started: u64,
    /// Flagged by some auditor by the end of the window.
    pub caught: u64,
    /// Deleters whose first deletion was ≥ 24 h before the end.
    pub eligible_24h: u64,
    /// Of those, flagged within 24 h of the first deletion.
    pub caught_24h: u64,
    /// Deleters whose first deletion was ≥ 7 days before the end.
    pub eligible_7d: u64,
    /// Of those, flagged within 7 days.
    pub caught_7d: u64,
    /// Σ over the 24 h-eligible deleters of `1 − (1 − f)^a`, a = audits it answered in those
    /// 24 h (the sampling odds given the audit volume; divide by `eligible_24h`).
    pub model_24h: f64,
    /// Same over 7 days.
    pub model_7d: f64,
    /// Deleters not flagged within their class's window (24 h for ≥ 10%, 7 days for ~1%):
    /// (node, fraction deleted, hours online in the window, audits answered in it).
    pub missed: Vec<(u32, f64, f64, u32)>,
    /// Seconds from first deletion to being flagged, sorted.
    pub delays: Vec<u64>,
}

impl Detection {
    /// Mean modelled probability of detection within 24 h (`None`: nobody eligible).
    pub fn p24(&self) -> Option<f64> {
        (self.eligible_24h > 0).then(|| self.model_24h / self.eligible_24h as f64)
    }

    /// Mean modelled probability of detection within 7 days.
    pub fn p7d(&self) -> Option<f64> {
        (self.eligible_7d > 0).then(|| self.model_7d / self.eligible_7d as f64)
    }

    /// Delay percentile in hours (`None`: no delays).
    pub fn delay_h(&self, q: f64) -> Option<f64> {
        if self.delays.is_empty() {
            return None;
        }
        let i = ((self.delays.len() - 1) as f64 * q).round() as usize;
        Some(self.delays[i] as f64 / 3600.0)
    }
}

/// The outcome of one scenario run with one seed.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: u32,
    /// Simulated hours.
    pub hours: u64,
    /// Honest nodes.
    pub honest: u64,
    /// Free riders.
    pub free_riders: u64,
    /// Silent deleters.
    pub deleters: u64,
    /// Files generated (uploaded or not).
    pub files: u64,
    /// Shares placed.
    pub shares: u64,
    /// Upload attempts.
    pub uploads: u64,
    /// Uploads that found fewer than `happy` servers.
    pub upload_failed: u64,
    /// Writes refused by a server that advertised room (full or refusing).
    pub refusals: u64,
    /// Writes refused by the reciprocal quota.
    pub over_quota: u64,
    /// Share bytes stored grid-wide at the end.
    pub stored_bytes: u64,
    /// Deleters of ≥ 10%.
    pub big: Detection,
    /// Deleters of < 10% (~1%).
    pub small: Detection,
    /// (owner, deleter) pairs where the owner lost a share.
    pub victims: u64,
    /// Of those, pairs where the owner flagged the deleter by the end.
    pub victims_flagged: u64,
    /// Non-deleters flagged as suspect by some auditor (must be 0).
    pub false_accusations: u64,
    /// Of those, peers that are ever offline (must be 0).
    pub false_offline: u64,
    /// Challenges sent (auditor online).
    pub audits_sent: u64,
    /// Challenges answered (peer online): passes and failures.
    pub audits_answered: u64,
    /// Failed audits.
    pub audits_failed: u64,
    /// Challenges that found the peer offline (incl. retries).
    pub audits_offline: u64,
    /// Challenges not sent because the auditor was offline.
    pub audits_skipped: u64,
    /// Bytes challenged per audit (0: whole block).
    pub audit_unit: u64,
    /// Bytes one audit moves, for a 64-block share.
    pub bytes_per_audit: u64,
    /// Audit bytes per week as a percentage of the mean stored share bytes, grid-wide.
    pub audit_pct_week: f64,
    /// The same per audited peer: 99th percentile.
    pub audit_pct_week_p99: f64,
    /// The same per audited peer: maximum.
    pub audit_pct_week_max: f64,
    /// Answered audits per storing peer per day.
    pub audits_per_peer_day: f64,
    /// Percentage of honest peers whose consumption / contribution is in [0.8, 1.25].
    pub ratio_in_band_pct: f64,
    /// 5th percentile of the honest ratio.
    pub ratio_p5: f64,
    /// Median honest ratio.
    pub ratio_p50: f64,
    /// 95th percentile of the honest ratio.
    pub ratio_p95: f64,
    /// Share bytes honest peers placed, as a percentage of what they wanted to place.
    pub honest_satisfied_pct: f64,
    /// Share bytes free riders placed, as a percentage of what they wanted to place.
    pub free_consumed_pct: f64,
    /// Free riders' placed bytes as a percentage of all stored bytes.
    pub free_share_of_stored_pct: f64,
    /// Share bytes free riders store for others.
    pub free_contributed: u64,
    /// Per free-rider kind (none, overcommit, refuse): (nodes, need, placed, stored for others).
    pub free_kinds: [(u64, u64, u64, u64); 3],
    /// Events processed.
    pub events: u64,
    /// Whether the event bound stopped the run early.
    pub truncated: bool,
    /// SHA-256 over the processed events, placements and audit outcomes (hex).
    pub trace: String,
}

fn frac(n: u64, d: u64) -> String {
    format!("{n}/{d}")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

impl Report {
    /// The table header matching [`Report::row`].
    pub fn header() -> String {
        format!(
            "{:<14} {:>5} {:>4} {:>7} {:>8} {:>7} {:>8} {:>11} {:>5} {:>7} {:>7} {:>6} {:>14} {:>6} {:>16}",
            "scenario",
            "nodes",
            "seed",
            "≥10%24h",
            "P24",
            "1%7d",
            "P7d",
            "det h p50/max",
            "false",
            "aud%/wk",
            "p99%/wk",
            "band%",
            "ratio p5/50/95",
            "fr%",
            "trace"
        )
    }

    /// One table row. `≥10%24h`: big deleters flagged within 24 h / eligible; `P24` the mean
    /// modelled odds from the audits they answered; `1%7d`, `P7d` the same for ~1% deleters over
    /// 7 days; `det h` hours from first deletion to first flag (big deleters); `false` honest or
    /// free-riding peers ever flagged; `aud%/wk` audit bytes per week / stored bytes (grid), and
    /// `p99%/wk` the 99th percentile per peer; `band%` honest peers with consumption /
    /// contribution in [0.8, 1.25]; `fr%` free riders' placed bytes / their wish.
    pub fn row(&self) -> String {
        format!(
            "{:<14} {:>5} {:>4} {:>7} {:>8} {:>7} {:>8} {:>11} {:>5} {:>7.4} {:>7.4} {:>6.1} {:>14} {:>6.1} {:>16}{}",
            self.name,
            self.nodes,
            self.seed,
            frac(self.big.caught_24h, self.big.eligible_24h),
            opt(self.big.p24().map(|p| 100.0 * p), 3),
            frac(self.small.caught_7d, self.small.eligible_7d),
            opt(self.small.p7d().map(|p| 100.0 * p), 3),
            format!(
                "{}/{}",
                opt(self.big.delay_h(0.5), 1),
                opt(self.big.delay_h(1.0), 1)
            ),
            self.false_accusations,
            self.audit_pct_week,
            self.audit_pct_week_p99,
            self.ratio_in_band_pct,
            format!(
                "{:.2}/{:.2}/{:.2}",
                self.ratio_p5, self.ratio_p50, self.ratio_p95
            ),
            self.free_consumed_pct,
            &self.trace[..16],
            if self.truncated { " TRUNCATED" } else { "" }
        )
    }

    /// Extra detail: volumes, audit counters, free riders by kind, small-deleter delays.
    pub fn detail(&self) -> String {
        let mut s = format!(
            "  {} h; {} honest, {} free riders, {} deleters; {} files, {} shares, {:.1} TiB stored; \
             uploads {} ({} failed); refusals {}, over quota {}; events {}\n  \
             audits: {} sent, {} answered, {} failed, {} offline, {} skipped (auditor offline); \
             {:.1} answered/peer/day; {} B/audit (unit {}); max peer {:.4}%/wk\n  \
             detection: big {}/{} caught by end (24 h: {}/{}), small {}/{} (7 d: {}/{}, delay p50 {} h); \
             victims that flagged their deleter by the end {}/{}; false accusations {} (offline peers {})\n  \
             honest placed {:.1}% of their need; free riders placed {:.1}% of their need = {:.2}% of stored bytes, stored {:.1} GiB for others",
            self.hours,
            self.honest,
            self.free_riders,
            self.deleters,
            self.files,
            self.shares,
            gib(self.stored_bytes) / 1024.0,
            self.uploads,
            self.upload_failed,
            self.refusals,
            self.over_quota,
            self.events,
            self.audits_sent,
            self.audits_answered,
            self.audits_failed,
            self.audits_offline,
            self.audits_skipped,
            self.audits_per_peer_day,
            self.bytes_per_audit,
            if self.audit_unit == 0 {
                "block".to_string()
            } else {
                self.audit_unit.to_string()
            },
            self.audit_pct_week_max,
            self.big.caught,
            self.big.started,
            self.big.caught_24h,
            self.big.eligible_24h,
            self.small.caught,
            self.small.started,
            self.small.caught_7d,
            self.small.eligible_7d,
            opt(self.small.delay_h(0.5), 1),
            self.victims_flagged,
            self.victims,
            self.false_accusations,
            self.false_offline,
            self.honest_satisfied_pct,
            self.free_consumed_pct,
            self.free_share_of_stored_pct,
            gib(self.free_contributed),
        );
        for (label, window, d) in [("≥10%", "24 h", &self.big), ("1%", "7 days", &self.small)] {
            for (node, f, online, answered) in &d.missed {
                let _ = write!(
                    s,
                    "\n    {label} deleter {node} (f {f:.3}) not flagged within {window}: online {online:.1} h of them, {answered} audits answered"
                );
            }
        }
        for (name, (n, need, placed, stored)) in
            ["none", "overcommit", "refuse"].iter().zip(self.free_kinds)
        {
            let _ = write!(
                s,
                "\n    free rider {name:<10} {n:>4} nodes: placed {:.1} of {:.1} GiB wanted, stored {:.1} GiB",
                gib(placed),
                gib(need),
                gib(stored)
            );
        }
        s
    }
}

//! Check, verify and repair immutable (CHK) files, and the automatic repairer: the IO around the
//! pure [`crate::repair`] planner and regenerator (Tahoe-LAFS's checker, verifier and repairer).
//!
//! - **Check** ([`check`] with default [`CheckOptions`]): ask every storage server which shares
//!   of the file it holds, fetch each share's metadata and verify it against the verify cap (UEB
//!   hash, share hash chain, crypttext hashes). Healthy = all n distinct shares are present and
//!   servers of happiness reach the node's `encoding.shares_happy`.
//! - **Verify** (`verify: true`): also fetch every block of every share and check its hash; a
//!   share with a bad block is reported corrupt (server, segment) and does not count. A server
//!   that stops answering in the middle (a block unanswered ten times as long as its own blocks
//!   took so far, plus a second: [`crate::hedge::stragglers_after`]) is reported unreachable,
//!   not corrupt, and marked silent; its other shares are not waited for.
//! - **Repair** (`repair: true`, unhealthy files only): plan where missing shares go
//!   ([`crate::repair::plan_repair`]: servers of happiness with the good holdings fixed, never on
//!   a server holding a corrupt copy of the same share), allocate, regenerate them segment by
//!   segment from k good blocks **without the decryption key**
//!   ([`crate::repair::Regenerator`]), write, and close each share only after the regenerated
//!   share roots matched the UEB. The repairing node owns the leases of what it places, and adds
//!   or renews its lease on the shares that were already there. Corrupt shares are left on their
//!   servers (the protocol has no remote delete); the report says so.
//!
//! Callers pass a [`CheckTarget`] (a verify cap, or a read cap, which is attenuated to its verify
//! cap first; LIT files live in the cap and are always healthy) and get a serializable
//! [`CheckReport`]. The `kith check` command goes through `POST /api/v1/check`; directory walkers
//! call [`check`] for every file they find.
//!
//! The **automatic repairer** ([`Repairer`], [`run_repairer`]) walks its roots one file at a time
//! with a pause between files, every `[repair] interval`: the uploads this node remembers
//! ([`crate::maintenance`]) plus any root added with [`Repairer::add_root`]. Its progress is in
//! the node's status (`repair`), `/api/v1/repairer` and `/metrics` (`kith_repair_*`).

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    caps::{Cap, ChkVerifyCap, ReadCap},
    client::{self, Writer},
    codec::{self, UriExtension, VerifiedShare},
    grid::now_ms,
    node::NodeHandle,
    placement,
    protocol::{Request, Response},
    repair::{self, PlanError, Regenerator},
};

/// Share metadata fetched at once.
const META_CONCURRENCY: usize = 8;
/// Shares whose blocks are verified at once (each reads one block at a time).
const VERIFY_CONCURRENCY: usize = 3;
/// Rounds of planning and allocating when servers refuse.
const ALLOCATE_ROUNDS: usize = 3;

/// What to check: an immutable file by its verify cap, or a literal file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckTarget {
    /// An immutable file (a read cap is attenuated to this first).
    Chk(ChkVerifyCap),
    /// A literal file: its bytes are in the cap, so it is always healthy.
    Lit {
        /// Its size.
        size: u64,
    },
    /// A mutable file or directory: checked by [`crate::slot::check`] (repairable with its
    /// write cap only); [`check`] refuses it.
    Slot(crate::caps::SskCap),
}

impl From<ChkVerifyCap> for CheckTarget {
    fn from(c: ChkVerifyCap) -> Self {
        CheckTarget::Chk(c)
    }
}

impl From<&ReadCap> for CheckTarget {
    fn from(c: &ReadCap) -> Self {
        match c {
            ReadCap::Chk(c) => CheckTarget::Chk(c.verify_cap()),
            ReadCap::Lit(l) => CheckTarget::Lit {
                size: l.data.len() as u64,
            },
        }
    }
}

impl From<&Cap> for CheckTarget {
    fn from(c: &Cap) -> Self {
        match c {
            Cap::Read(r) | Cap::ImmDir(r) => r.into(),
            Cap::Verify(v) | Cap::ImmDirVerify(v) => CheckTarget::Chk(v.clone()),
            Cap::Ssk(s) => CheckTarget::Slot(s.clone()),
        }
    }
}

impl FromStr for CheckTarget {
    type Err = CheckError;

    /// Any cap text: `kith:chk:…`, `kith:chk-verify:…` or `kith:lit:…`.
    fn from_str(s: &str) -> Result<Self, CheckError> {
        let cap: Cap = s.parse().map_err(|e| CheckError::Cap(format!("{e}")))?;
        Ok((&cap).into())
    }
}

/// What [`check`] does besides counting shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Fetch and check every block of every share.
    #[serde(default)]
    pub verify: bool,
    /// Repair the file when it is not healthy.
    #[serde(default)]
    pub repair: bool,
}

/// Why a check could not run at all (an unhealthy file is a report, not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The cap text does not parse.
    #[error("{0}")]
    Cap(String),
    /// An internal task failed.
    #[error("check failed: {0}")]
    Internal(String),
}

/// The good shares one server holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerShares {
    /// The server's peer id.
    pub server: String,
    /// Share numbers that verified.
    pub shares: Vec<u8>,
}

/// A server that did not answer, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerProblem {
    /// The server's peer id.
    pub server: String,
    /// What went wrong.
    pub problem: String,
}

/// A share that failed verification or could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptShare {
    /// The server holding it.
    pub server: String,
    /// The share number.
    pub shnum: u8,
    /// The first bad segment, when a block was bad.
    pub segment: Option<u32>,
    /// What was wrong.
    pub reason: String,
}

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// A repair was tried (the file was unhealthy and repair asked for).
    pub attempted: bool,
    /// The file is healthy afterwards.
    pub successful: bool,
    /// Shares regenerated and placed: share number -> server.
    pub shares_placed: BTreeMap<u8, String>,
    /// Distinct servers new shares went to.
    pub servers: usize,
    /// Servers that added or renewed this node's lease on shares they already held.
    pub leases_renewed: u64,
    /// Distinct good shares afterwards.
    pub good_shares_after: usize,
    /// Servers of happiness afterwards.
    pub happiness_after: usize,
    /// Healthy afterwards.
    pub healthy_after: bool,
    /// Servers that refused or failed, and other problems.
    pub problems: Vec<String>,
    /// Things the user should know (corrupt shares left in place).
    pub notes: Vec<String>,
    /// Time spent repairing, in milliseconds.
    pub elapsed_ms: u64,
}

/// What [`check`] found (and did).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// `"chk"` or `"lit"`.
    pub kind: String,
    /// The storage index (base32), absent for LIT files.
    pub storage_index: Option<String>,
    /// File size.
    pub size: u64,
    /// k.
    pub needed: u8,
    /// Servers of happiness wanted (this node's `encoding.shares_happy`, within k..=n).
    pub happy: u8,
    /// n.
    pub total: u8,
    /// Every block was checked.
    pub verified: bool,
    /// Storage servers asked.
    pub servers_asked: usize,
    /// Per server that answered: the good shares it holds.
    pub servers: Vec<ServerShares>,
    /// Servers that did not answer.
    pub unreachable: Vec<ServerProblem>,
    /// Distinct good shares.
    pub good_shares: usize,
    /// Servers of happiness of the good shares.
    pub happiness: usize,
    /// All n shares present and happiness >= happy (before any repair).
    pub healthy: bool,
    /// Shares that failed verification or could not be read.
    pub corrupt: Vec<CorruptShare>,
    /// The repair, when asked for.
    pub repair: Option<RepairReport>,
    /// Time spent, in milliseconds (repair included).
    pub elapsed_ms: u64,
}

impl CheckReport {
    /// Healthy after the command: after the repair when one ran.
    pub fn healthy_now(&self) -> bool {
        match &self.repair {
            Some(r) if r.attempted => r.healthy_after,
            _ => self.healthy,
        }
    }

    /// One line for humans, e.g. `healthy: 10/10 shares on 10 servers (happy 10 >= 7)`.
    pub fn summary(&self) -> String {
        if self.kind == "lit" {
            return format!("healthy: literal file ({} bytes inside the cap)", self.size);
        }
        let holders = self.servers.iter().filter(|s| !s.shares.is_empty()).count();
        let state = |healthy: bool, good: usize, servers: usize, happiness: usize| {
            format!(
                "{}: {good}/{} shares on {servers} server{} (happy {happiness} {} {})",
                if healthy { "healthy" } else { "unhealthy" },
                self.total,
                if servers == 1 { "" } else { "s" },
                if happiness >= usize::from(self.happy) {
                    ">="
                } else {
                    "<"
                },
                self.happy
            )
        };
        let mut line = state(self.healthy, self.good_shares, holders, self.happiness);
        if !self.corrupt.is_empty() {
            line.push_str(&format!(
                ", {} corrupt or unreadable share{}",
                self.corrupt.len(),
                if self.corrupt.len() == 1 { "" } else { "s" }
            ));
        }
        if let Some(r) = self.repair.as_ref().filter(|r| r.attempted) {
            let placed = r.shares_placed.len();
            line.push_str(&format!(
                "; repair{}: placed {placed} share{} on {} server{}",
                if r.successful { "ed" } else { " incomplete" },
                if placed == 1 { "" } else { "s" },
                r.servers,
                if r.servers == 1 { "" } else { "s" },
            ));
            let after_holders = {
                let mut s: BTreeSet<&str> = self
                    .servers
                    .iter()
                    .filter(|s| !s.shares.is_empty())
                    .map(|s| s.server.as_str())
                    .collect();
                s.extend(r.shares_placed.values().map(String::as_str));
                s.len()
            };
            line.push_str(&format!(
                "; now {}",
                state(
                    r.healthy_after,
                    r.good_shares_after,
                    after_holders,
                    r.happiness_after
                )
            ));
        }
        line
    }
}

/// A share that verified, and where it lives.
#[derive(Clone)]
struct GoodShare {
    server: PeerId,
    shnum: u8,
    share: Arc<VerifiedShare>,
}

fn b32(si: &[u8; 16]) -> String {
    data_encoding::BASE32_NOPAD.encode(si).to_ascii_lowercase()
}

/// Checks (and with `opts`, verifies and repairs) one file.
pub async fn check(
    node: &NodeHandle,
    target: &CheckTarget,
    opts: CheckOptions,
) -> Result<CheckReport, CheckError> {
    let started = Instant::now();
    let cap = match target {
        CheckTarget::Lit { size } => {
            return Ok(CheckReport {
                kind: "lit".into(),
                storage_index: None,
                size: *size,
                needed: 0,
                happy: 0,
                total: 0,
                verified: opts.verify,
                servers_asked: 0,
                servers: Vec::new(),
                unreachable: Vec::new(),
                good_shares: 0,
                happiness: 0,
                healthy: true,
                corrupt: Vec::new(),
                repair: None,
                elapsed_ms: 0,
            });
        }
        CheckTarget::Chk(c) => c,
        CheckTarget::Slot(_) => {
            return Err(CheckError::Cap(
                "this is a mutable file or directory: check it with `kith deep-check`".into(),
            ));
        }
    };
    let si = cap.storage_index;
    let happy = node
        .config()
        .encoding
        .happy
        .clamp(cap.needed, cap.total.max(cap.needed));
    let servers = node.storage_servers();

    // 1. Who holds what.
    let mut usable: Vec<PeerId> = Vec::new();
    let mut unreachable = Vec::new();
    let mut listed: Vec<(PeerId, u8)> = Vec::new();
    let mut corrupt: Vec<(PeerId, CorruptShare)> = Vec::new();
    for (s, r) in client::list_for_check(node, si, &servers).await {
        match r {
            Ok(shares) => {
                usable.push(s);
                let shares: BTreeSet<u8> = shares.into_iter().collect();
                for sh in shares {
                    if sh < cap.total {
                        listed.push((s, sh));
                    } else {
                        corrupt.push((
                            s,
                            CorruptShare {
                                server: s.to_string(),
                                shnum: sh,
                                segment: None,
                                reason: format!("share number {sh} is outside 0..{}", cap.total),
                            },
                        ));
                    }
                }
            }
            Err(problem) => unreachable.push(ServerProblem {
                server: s.to_string(),
                problem,
            }),
        }
    }
    usable.sort();

    // 2. Metadata of every listed share, verified against the cap.
    let metas = bounded(
        listed
            .into_iter()
            .map(|(s, sh)| async move { (s, sh, client::fetch_meta(node, s, si, sh).await) })
            .collect::<Vec<_>>(),
        META_CONCURRENCY,
    )
    .await;
    let mut ueb: Option<UriExtension> = None;
    let mut crypttext_hashes: Option<Vec<[u8; 32]>> = None;
    let mut good: Vec<GoodShare> = Vec::new();
    let mut bad = |s: PeerId, sh: u8, segment: Option<u32>, reason: String| {
        corrupt.push((
            s,
            CorruptShare {
                server: s.to_string(),
                shnum: sh,
                segment,
                reason,
            },
        ));
    };
    for (s, sh, meta) in metas {
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                bad(s, sh, None, format!("metadata unreadable: {e}"));
                continue;
            }
        };
        if meta.shnum != sh {
            bad(s, sh, None, format!("metadata is for share {}", meta.shnum));
            continue;
        }
        let u = match codec::verify_ueb_with_verify_cap(cap, &meta.ueb) {
            Ok(u) => u,
            Err(e) => {
                bad(s, sh, None, e.to_string());
                continue;
            }
        };
        let ct = meta.crypttext_hashes.clone();
        match VerifiedShare::new(&u, meta) {
            Ok(v) => {
                crypttext_hashes.get_or_insert(ct);
                ueb.get_or_insert(u);
                good.push(GoodShare {
                    server: s,
                    shnum: sh,
                    share: Arc::new(v),
                });
            }
            Err(e) => bad(s, sh, None, e.to_string()),
        }
    }

    // 3. Verify: every block of every good share.
    if opts.verify
        && let Some(u) = &ueb
    {
        let mut stopped: BTreeMap<PeerId, String> = BTreeMap::new();
        let u = Arc::new(u.clone());
        let results = bounded(
            good.into_iter()
                .map(|g| {
                    let u = u.clone();
                    async move {
                        let r = verify_share(node, si, u, &g).await;
                        (g, r)
                    }
                })
                .collect::<Vec<_>>(),
            VERIFY_CONCURRENCY,
        )
        .await;
        good = Vec::new();
        for (g, r) in results {
            match r {
                Ok(()) => good.push(g),
                Err(VerifyFailure::Bad(segment, reason)) => {
                    bad(g.server, g.shnum, Some(segment), reason)
                }
                Err(VerifyFailure::Stopped(why)) => {
                    stopped.entry(g.server).or_insert(why);
                }
            }
        }
        // A server that stopped answering holds no verified share, and takes no repair.
        good.retain(|g| !stopped.contains_key(&g.server));
        usable.retain(|s| !stopped.contains_key(s));
        for (s, problem) in stopped {
            unreachable.push(ServerProblem {
                server: s.to_string(),
                problem,
            });
        }
    }
    good.sort_by_key(|g| (g.server, g.shnum));
    corrupt.sort_by_key(|a| (a.0, a.1.shnum));

    let mut holdings: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    for g in &good {
        holdings.entry(g.server).or_default().insert(g.shnum);
    }
    let healthy = repair::is_healthy(&holdings, cap.total, happy);
    let mut report = CheckReport {
        kind: "chk".into(),
        storage_index: Some(b32(&si)),
        size: cap.size,
        needed: cap.needed,
        happy,
        total: cap.total,
        verified: opts.verify,
        servers_asked: servers.len(),
        servers: usable
            .iter()
            .map(|s| ServerShares {
                server: s.to_string(),
                shares: holdings
                    .get(s)
                    .map(|h| h.iter().copied().collect())
                    .unwrap_or_default(),
            })
            .collect(),
        unreachable,
        good_shares: repair::distinct_shares(&holdings),
        happiness: placement::happiness(&holdings),
        healthy,
        corrupt: corrupt.iter().map(|(_, c)| c.clone()).collect(),
        repair: None,
        elapsed_ms: 0,
    };

    // 4. Repair.
    if opts.repair && !healthy {
        let mut corrupt_at: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
        for (s, c) in &corrupt {
            corrupt_at.entry(*s).or_default().insert(c.shnum);
        }
        let r = match (ueb, crypttext_hashes) {
            (Some(u), Some(ct)) => {
                repair_file(
                    node,
                    cap,
                    happy,
                    RepairInput {
                        ueb: u,
                        crypttext_hashes: ct,
                        good: &good,
                        holdings: &holdings,
                        corrupt: &corrupt_at,
                        usable: &usable,
                    },
                )
                .await
            }
            _ => RepairReport {
                attempted: true,
                problems: vec![format!(
                    "no good share found (need {} to rebuild the file)",
                    cap.needed
                )],
                good_shares_after: report.good_shares,
                happiness_after: report.happiness,
                ..RepairReport::default()
            },
        };
        report.repair = Some(r);
    } else if opts.repair {
        report.repair = Some(RepairReport {
            good_shares_after: report.good_shares,
            happiness_after: report.happiness,
            healthy_after: true,
            successful: true,
            ..RepairReport::default()
        });
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Runs `futs` with at most `limit` at once; results in completion order.
async fn bounded<F: std::future::Future>(futs: Vec<F>, limit: usize) -> Vec<F::Output> {
    let mut pending = futs.into_iter();
    let mut running = FuturesUnordered::new();
    running.extend(pending.by_ref().take(limit.max(1)));
    let mut out = Vec::new();
    while let Some(x) = running.next().await {
        out.push(x);
        if let Some(f) = pending.next() {
            running.push(f);
        }
    }
    out
}

/// Why a share's verification ended early.
enum VerifyFailure {
    /// A block failed its hash, or the server answered something else or an error: corrupt or
    /// unreadable, at this segment.
    Bad(u32, String),
    /// The server stopped answering (or is known to have): unreachable, not corrupt.
    Stopped(String),
}

/// Reads and checks every block of one share, one block at a time; the first bad one ends it.
/// A block unanswered [`crate::hedge::stragglers_after`] the share's typical block time so far
/// ends it too, as [`VerifyFailure::Stopped`], and marks the server silent (the first block
/// has the request's own timeout: nothing to compare it with yet).
async fn verify_share(
    node: &NodeHandle,
    si: [u8; 16],
    ueb: Arc<UriExtension>,
    g: &GoodShare,
) -> Result<(), VerifyFailure> {
    let mut times = crate::hedge::BlockTimes::default();
    for seg in 0..ueb.num_segments {
        if node.is_silent(&g.server) {
            return Err(VerifyFailure::Stopped(format!(
                "not answering lately: share {} not verified past block {seg}",
                g.shnum
            )));
        }
        let req = Request::Read {
            si,
            shnum: g.shnum,
            offset: codec::block_offset(&ueb, seg),
            len: codec::block_size_for(&ueb, seg) as u32,
        };
        let asked = Instant::now();
        let read = node.rpc(g.server, req);
        let answer = match times.typical().map(crate::hedge::stragglers_after) {
            None => read.await,
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(a) => a,
                Err(_) => {
                    node.went_silent(g.server);
                    return Err(VerifyFailure::Stopped(format!(
                        "stopped answering during the verify: block {seg} of share {} not \
                         answered in {:.1} s (its blocks took {:.0} ms before)",
                        g.shnum,
                        limit.as_secs_f64(),
                        times.typical().unwrap_or_default().as_secs_f64() * 1000.0
                    )));
                }
            },
        };
        // A request that failed (the connection, a timeout) says nothing about the share.
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                return Err(VerifyFailure::Stopped(format!(
                    "block {seg} of share {} not read: {e}",
                    g.shnum
                )));
            }
        };
        let block = match client::rpc_error(Ok(answer)) {
            Ok(Response::Bytes(b)) => b.into_vec(),
            Ok(other) => {
                return Err(VerifyFailure::Bad(
                    seg,
                    format!("unexpected answer {other:?}"),
                ));
            }
            Err(e) => {
                return Err(VerifyFailure::Bad(
                    seg,
                    format!("block {seg} unreadable: {e}"),
                ));
            }
        };
        times.observe(asked.elapsed());
        let share = g.share.clone();
        let checked = tokio::task::spawn_blocking(move || share.check_block(seg, &block)).await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(VerifyFailure::Bad(seg, e.to_string())),
            Err(e) => return Err(VerifyFailure::Bad(seg, e.to_string())),
        }
    }
    Ok(())
}

/// What a repair starts from: the check's findings.
struct RepairInput<'a> {
    ueb: UriExtension,
    crypttext_hashes: Vec<[u8; 32]>,
    good: &'a [GoodShare],
    holdings: &'a BTreeMap<PeerId, BTreeSet<u8>>,
    corrupt: &'a BTreeMap<PeerId, BTreeSet<u8>>,
    usable: &'a [PeerId],
}

async fn repair_file(
    node: &NodeHandle,
    cap: &ChkVerifyCap,
    happy: u8,
    input: RepairInput<'_>,
) -> RepairReport {
    let started = Instant::now();
    let si = cap.storage_index;
    let ueb = Arc::new(input.ueb);
    let mut report = RepairReport {
        attempted: true,
        ..RepairReport::default()
    };
    if !input.corrupt.is_empty() {
        report.notes.push(format!(
            "{} corrupt or unreadable share(s) were left on their servers (the storage protocol \
             cannot delete them); they were replaced elsewhere",
            input.corrupt.values().map(BTreeSet::len).sum::<usize>()
        ));
    }
    let last = ueb.num_segments.saturating_sub(1);
    let data_len = codec::block_offset(&ueb, last) + codec::block_size_for(&ueb, last);

    // 1. Plan and allocate; servers that refuse are dropped and the rest re-planned. Servers
    // an upload left behind lately as far slower than the others get no new shares while
    // enough others remain (the share an upload left behind goes to a faster server).
    let usable = node.put_aside(input.usable.to_vec(), usize::from(happy));
    let mut excluded: BTreeSet<PeerId> = BTreeSet::new();
    let mut to_write: BTreeMap<u8, PeerId> = BTreeMap::new();
    let mut also_held: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    for _round in 0..ALLOCATE_ROUNDS {
        let mut fixed = input.holdings.clone();
        for (&sh, &s) in &to_write {
            fixed.entry(s).or_default().insert(sh);
        }
        for (s, sh) in &also_held {
            fixed.entry(*s).or_default().extend(sh);
        }
        let candidates: Vec<PeerId> = usable
            .iter()
            .filter(|s| !excluded.contains(s))
            .copied()
            .collect();
        let plan = match plan_by_bytes(&si, &candidates, &fixed, input.corrupt, cap, happy) {
            Ok(p) => p,
            Err(e) => {
                report.problems.push(e.to_string());
                break;
            }
        };
        if plan.is_empty() {
            break;
        }
        let mut per_server: BTreeMap<PeerId, Vec<u8>> = BTreeMap::new();
        for (sh, s) in plan {
            per_server.entry(s).or_default().push(sh);
        }
        let answers = bounded(
            per_server
                .into_iter()
                .map(|(s, shnums)| async move {
                    let r = node
                        .rpc(
                            s,
                            Request::Allocate {
                                si,
                                shnums: shnums.clone(),
                                data_len,
                            },
                        )
                        .await;
                    (s, shnums, client::rpc_error(r))
                })
                .collect::<Vec<_>>(),
            META_CONCURRENCY,
        )
        .await;
        let mut all_placed = true;
        for (s, asked, r) in answers {
            match r {
                Ok(Response::Allocated {
                    already_have,
                    allocated,
                    ..
                }) => {
                    for sh in &asked {
                        if allocated.contains(sh) && !to_write.contains_key(sh) {
                            to_write.insert(*sh, s);
                        } else if already_have.contains(sh) {
                            // Someone placed it meanwhile (it was not there at the check).
                            also_held.entry(s).or_default().insert(*sh);
                        } else {
                            all_placed = false;
                            excluded.insert(s);
                        }
                    }
                }
                Ok(other) => {
                    report
                        .problems
                        .push(format!("{s}: unexpected answer {other:?}"));
                    excluded.insert(s);
                    all_placed = false;
                }
                Err(e) => {
                    report.problems.push(format!("{s}: {e}"));
                    excluded.insert(s);
                    all_placed = false;
                }
            }
        }
        if all_placed {
            break;
        }
    }

    // 2. Regenerate and write, segment by segment.
    let mut closed: BTreeMap<u8, PeerId> = BTreeMap::new();
    if !to_write.is_empty() {
        match regenerate_and_write(
            node,
            si,
            &ueb,
            input.crypttext_hashes,
            input.good,
            &to_write,
        )
        .await
        {
            Ok((ok, problems)) => {
                closed = ok;
                report.problems.extend(problems);
            }
            Err(e) => {
                report.problems.push(e);
                client::abort_all(node, si, &to_write).await;
            }
        }
    }

    // 3. Add or renew this node's lease on the shares that were already there.
    let holders: BTreeSet<PeerId> = input.holdings.keys().copied().collect();
    let renewals = bounded(
        holders
            .into_iter()
            .map(|s| async move { (s, node.rpc(s, Request::AddLease { si }).await) })
            .collect::<Vec<_>>(),
        META_CONCURRENCY,
    )
    .await;
    for (s, r) in renewals {
        match client::rpc_error(r) {
            Ok(Response::Leased(_)) => report.leases_renewed += 1,
            Ok(other) => report
                .problems
                .push(format!("{s}: adding a lease: unexpected answer {other:?}")),
            Err(e) => report.problems.push(format!("{s}: adding a lease: {e}")),
        }
    }

    // 4. Where things stand now.
    let mut after = input.holdings.clone();
    for (s, sh) in &also_held {
        after.entry(*s).or_default().extend(sh);
    }
    let mut per_server_placed: BTreeMap<PeerId, u64> = BTreeMap::new();
    for (&sh, &s) in &closed {
        after.entry(s).or_default().insert(sh);
        report.shares_placed.insert(sh, s.to_string());
        *per_server_placed.entry(s).or_default() += 1;
    }
    report.servers = per_server_placed.len();
    report.good_shares_after = repair::distinct_shares(&after);
    report.happiness_after = placement::happiness(&after);
    report.healthy_after = repair::is_healthy(&after, cap.total, happy);
    report.successful = report.healthy_after;
    if !closed.is_empty() {
        let (db, friends) = (node.database().clone(), node.friends().clone());
        let holdings = after.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::maintenance::update_holdings(&db, si, &holdings) {
                tracing::warn!(error = %e, "recording the repaired holdings failed");
            }
            for (s, n) in per_server_placed {
                if let Err(e) = friends.placed(&s, data_len.saturating_mul(n), n) {
                    tracing::warn!(server = %s, error = %e, "recording placed shares failed");
                }
            }
        })
        .await;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// [`repair::plan_repair`] over peer ids (the planner keys servers by their bytes).
fn plan_by_bytes(
    si: &[u8; 16],
    candidates: &[PeerId],
    good: &BTreeMap<PeerId, BTreeSet<u8>>,
    corrupt: &BTreeMap<PeerId, BTreeSet<u8>>,
    cap: &ChkVerifyCap,
    happy: u8,
) -> Result<BTreeMap<u8, PeerId>, PlanError> {
    let bytes = |m: &BTreeMap<PeerId, BTreeSet<u8>>| -> BTreeMap<Vec<u8>, BTreeSet<u8>> {
        m.iter().map(|(p, s)| (p.to_bytes(), s.clone())).collect()
    };
    let cands: Vec<Vec<u8>> = candidates.iter().map(|p| p.to_bytes()).collect();
    let plan = repair::plan_repair(
        si,
        &cands,
        &bytes(good),
        &bytes(corrupt),
        cap.needed,
        cap.total,
        happy,
    )?;
    Ok(plan
        .place
        .into_iter()
        .filter_map(|(sh, s)| Some((sh, PeerId::from_bytes(&s).ok()?)))
        .collect())
}

/// Regenerates the shares of `to_write` and writes them; returns the shares closed and the
/// problems of the servers that failed. `Err` means nothing may be closed (the caller aborts).
async fn regenerate_and_write(
    node: &NodeHandle,
    si: [u8; 16],
    ueb: &Arc<UriExtension>,
    crypttext_hashes: Vec<[u8; 32]>,
    good: &[GoodShare],
    to_write: &BTreeMap<u8, PeerId>,
) -> Result<(BTreeMap<u8, PeerId>, Vec<String>), String> {
    let known: Vec<Arc<VerifiedShare>> = good.iter().map(|g| g.share.clone()).collect();
    let wanted: BTreeSet<u8> = to_write.keys().copied().collect();
    let mut regen = Regenerator::new((**ueb).clone(), crypttext_hashes, known, wanted)
        .map_err(|e| e.to_string())?;
    // One source per share number, spread over servers first; the others stand by.
    let mut sources: Vec<GoodShare> = Vec::new();
    let mut standby: Vec<GoodShare> = Vec::new();
    let mut seen = BTreeSet::new();
    for g in good {
        if seen.insert(g.shnum) {
            sources.push(g.clone());
        } else {
            standby.push(g.clone());
        }
    }
    let mut writers: BTreeMap<PeerId, Writer> = BTreeMap::new();
    for &s in to_write.values() {
        writers
            .entry(s)
            .or_insert_with(|| Writer::spawn(node.clone(), s, si, None));
    }
    let k = usize::from(ueb.needed);
    while let Some(seg) = regen.next_segment() {
        let mut got: Vec<codec::SegmentBlock> = Vec::new();
        let mut tried: BTreeSet<(PeerId, u8)> = BTreeSet::new();
        while got.len() < k {
            let have: BTreeSet<u8> = got.iter().map(codec::SegmentBlock::shnum).collect();
            let plan: Vec<(PeerId, u8, Arc<VerifiedShare>)> = sources
                .iter()
                .chain(standby.iter())
                .filter(|g| !have.contains(&g.shnum) && !tried.contains(&(g.server, g.shnum)))
                .fold(Vec::<&GoodShare>::new(), |mut acc, g| {
                    if acc.len() < k - got.len() && !acc.iter().any(|a| a.shnum == g.shnum) {
                        acc.push(g);
                    }
                    acc
                })
                .into_iter()
                .map(|g| (g.server, g.shnum, g.share.clone()))
                .collect();
            if plan.is_empty() {
                return Err(format!(
                    "segment {seg}: only {} of the {k} blocks needed could be read",
                    got.len()
                ));
            }
            tried.extend(plan.iter().map(|(s, sh, _)| (*s, *sh)));
            let (_, blocks, failures) =
                client::fetch_segment(node.clone(), si, ueb.clone(), seg, plan).await;
            for (s, sh, problem) in failures {
                tracing::warn!(server = %s, shnum = sh, %problem, "repair source failed");
                sources.retain(|g| !(g.server == s && g.shnum == sh));
                standby.retain(|g| !(g.server == s && g.shnum == sh));
            }
            got.extend(blocks);
        }
        let (back, out) = tokio::task::spawn_blocking(move || {
            let out = regen.segment(seg, got);
            (regen, out)
        })
        .await
        .map_err(|e| e.to_string())?;
        regen = back;
        let out = out.map_err(|e| e.to_string())?;
        let offset = codec::block_offset(ueb, seg);
        for (sh, block) in out {
            if let Some(w) = to_write.get(&sh).and_then(|s| writers.get(s)) {
                // A failed writer has dropped its queue; its shares are counted as lost below.
                let _ = w.tx.send((sh, offset, block)).await;
            }
        }
    }
    let mut problems = Vec::new();
    let mut failed: BTreeSet<PeerId> = BTreeSet::new();
    for (s, w) in writers {
        drop(w.tx);
        match w.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                problems.push(format!("{s}: {e}"));
                failed.insert(s);
            }
            Err(e) => {
                problems.push(format!("{s}: {e}"));
                failed.insert(s);
            }
        }
    }
    let metas = tokio::task::spawn_blocking(move || regen.finish())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let closes = bounded(
        to_write
            .iter()
            .filter(|(_, s)| !failed.contains(s))
            .filter_map(|(&sh, &s)| {
                let meta = ByteBuf::from(metas.get(&sh)?.to_bytes());
                Some(async move {
                    let r = node
                        .rpc(
                            s,
                            Request::Close {
                                si,
                                shnum: sh,
                                meta,
                            },
                        )
                        .await;
                    (sh, s, client::rpc_error(r))
                })
            })
            .collect::<Vec<_>>(),
        META_CONCURRENCY,
    )
    .await;
    let mut closed = BTreeMap::new();
    for (sh, s, r) in closes {
        match r {
            Ok(_) => {
                closed.insert(sh, s);
            }
            Err(e) => problems.push(format!("{s}: closing share {sh}: {e}")),
        }
    }
    for (&sh, &s) in to_write {
        if failed.contains(&s) {
            let _ = node.rpc(s, Request::Abort { si, shnum: sh }).await;
        }
    }
    Ok((closed, problems))
}

// ---------------------------------------------------------------------------------------------
// The automatic repairer.

/// Counters of one repairer pass (or of every pass since start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassCounts {
    /// Files checked.
    pub files_checked: u64,
    /// Files found unhealthy.
    pub unhealthy: u64,
    /// Unhealthy files repaired to health.
    pub repaired: u64,
    /// Files whose check or repair failed (still unhealthy, or an error).
    pub failed: u64,
}

/// The automatic repairer's progress (the node's status `repair`, `/api/v1/repairer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairerStatus {
    /// `[repair] enabled`.
    pub enabled: bool,
    /// `[repair] interval`, in seconds.
    pub interval_secs: u64,
    /// A pass is running.
    pub running: bool,
    /// Passes completed since start.
    pub passes: u64,
    /// When the current or last pass started (unix seconds).
    pub last_pass_started: Option<u64>,
    /// When the last pass finished (unix seconds).
    pub last_pass_finished: Option<u64>,
    /// The current pass so far (the last one once it finished).
    pub current: PassCounts,
    /// Every pass since start.
    pub total: PassCounts,
    /// The last problem seen (a root that failed, a file that could not be repaired).
    pub last_problem: Option<String>,
}

/// A source of files the automatic repairer keeps healthy. The node's own uploads are one;
/// directory trees reachable from aliases can be another.
#[async_trait::async_trait]
pub trait RepairRoot: Send + Sync + 'static {
    /// A name for logs and problems.
    fn name(&self) -> &str;
    /// The files to check in this pass.
    async fn targets(&self, node: &NodeHandle) -> Result<Vec<CheckTarget>, String>;
}

/// The uploads this node remembers (their verify caps; the read caps are never stored).
#[derive(Debug, Default)]
pub struct Uploads;

#[async_trait::async_trait]
impl RepairRoot for Uploads {
    fn name(&self) -> &str {
        "uploads"
    }

    async fn targets(&self, node: &NodeHandle) -> Result<Vec<CheckTarget>, String> {
        let db = node.database().clone();
        let caps =
            tokio::task::spawn_blocking(move || crate::maintenance::uploaded_verify_caps(&db))
                .await
                .map_err(|e| e.to_string())??;
        Ok(caps.into_iter().map(CheckTarget::Chk).collect())
    }
}

/// Every file and directory under the node's aliases (walked fresh each pass): immutable
/// files by their verify caps, mutable files and directories by the strongest cap the alias
/// reaches them with (repair of those needs a write cap).
#[derive(Debug, Default)]
pub struct AliasTrees;

#[async_trait::async_trait]
impl RepairRoot for AliasTrees {
    fn name(&self) -> &str {
        "aliases"
    }

    async fn targets(&self, node: &NodeHandle) -> Result<Vec<CheckTarget>, String> {
        let db = node.database().clone();
        let aliases = tokio::task::spawn_blocking(move || crate::aliases::list(&db))
            .await
            .map_err(|e| e.to_string())??;
        let mut out = Vec::new();
        for (name, cap) in aliases {
            let (all, unreadable) = crate::fs::walk(node, &cap, &format!("{name}:")).await;
            for (path, why) in unreadable {
                tracing::warn!(%path, %why, "repairer could not read a directory");
            }
            out.extend(all.iter().map(|(_, c)| CheckTarget::from(c)));
        }
        Ok(out)
    }
}

/// The automatic repairer's shared state: its roots, its status and a wake-up (cheap to clone).
#[derive(Clone)]
pub struct Repairer {
    status: Arc<Mutex<RepairerStatus>>,
    roots: Arc<Mutex<Vec<Arc<dyn RepairRoot>>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Read-held by a pass for its whole length, write-held by [`Repairer::hold`].
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// Keeps the repairer from starting a pass while it lives (see [`Repairer::hold`]).
#[derive(Debug)]
pub struct RepairerHold {
    _gate: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl std::fmt::Debug for Repairer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repairer")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Default for Repairer {
    fn default() -> Self {
        Self::new()
    }
}

impl Repairer {
    /// A repairer over this node's uploads and its aliases' trees.
    pub fn new() -> Self {
        Self {
            status: Arc::default(),
            roots: Arc::new(Mutex::new(vec![
                Arc::new(Uploads) as Arc<dyn RepairRoot>,
                Arc::new(AliasTrees),
            ])),
            wake: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// Waits for a running pass to finish and keeps new ones from starting until the
    /// returned hold is dropped: for maintenance that must look atomic to the repairer
    /// (moving shares between disks, or a test damaging several files at once).
    pub async fn hold(&self) -> RepairerHold {
        RepairerHold {
            _gate: self.gate.clone().write_owned().await,
        }
    }

    /// Adds a root: its files are checked (and repaired) from the next pass on.
    pub fn add_root(&self, root: Arc<dyn RepairRoot>) {
        self.roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(root);
    }

    /// The progress.
    pub fn status(&self) -> RepairerStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts a pass now (when the repairer is enabled and idle).
    pub fn run_soon(&self) {
        self.wake.notify_one();
    }

    fn update(&self, f: impl FnOnce(&mut RepairerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One pass over every root: one file at a time, `pause` between files.
    pub async fn pass(&self, node: &NodeHandle, pause: Duration) -> PassCounts {
        let _gate = self.gate.clone().read_owned().await;
        self.update(|s| {
            s.running = true;
            s.last_pass_started = Some(now_ms() / 1000);
            s.current = PassCounts::default();
        });
        let roots: Vec<Arc<dyn RepairRoot>> =
            self.roots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut seen: BTreeSet<[u8; 16]> = BTreeSet::new();
        let mut counts = PassCounts::default();
        for root in roots {
            let targets = match root.targets(node).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("repair root {}: {e}", root.name());
                    tracing::warn!(%msg, "repairer");
                    self.update(|s| s.last_problem = Some(msg));
                    continue;
                }
            };
            for target in targets {
                if let CheckTarget::Chk(c) = &target
                    && !seen.insert(c.storage_index)
                {
                    continue;
                }
                let opts = CheckOptions {
                    verify: false,
                    repair: true,
                };
                let mut delta = PassCounts {
                    files_checked: 1,
                    ..PassCounts::default()
                };
                let mut problem = None;
                if let CheckTarget::Slot(cap) = &target {
                    if !seen.insert(cap.storage_index()) {
                        continue;
                    }
                    // The report is the state after a repair; a repair ran only when it
                    // was unhealthy.
                    let r = crate::slot::check(node, cap, true).await;
                    if !r.healthy || r.repair.is_some() {
                        delta.unhealthy = 1;
                        if r.healthy {
                            delta.repaired = 1;
                        } else {
                            delta.failed = 1;
                            problem = Some(format!(
                                "mutable {}: {}",
                                r.storage_index,
                                r.repair.clone().unwrap_or_default()
                            ));
                        }
                    }
                    add(&mut counts, &delta);
                    self.update(|s| {
                        add(&mut s.current, &delta);
                        add(&mut s.total, &delta);
                        if problem.is_some() {
                            s.last_problem = problem;
                        }
                    });
                    tokio::time::sleep(pause).await;
                    continue;
                }
                match check(node, &target, opts).await {
                    Ok(r) if r.healthy => {}
                    Ok(r) => {
                        delta.unhealthy = 1;
                        if r.healthy_now() {
                            delta.repaired = 1;
                            tracing::info!(summary = %r.summary(), "repairer repaired a file");
                        } else {
                            delta.failed = 1;
                            let why = r
                                .repair
                                .as_ref()
                                .map(|x| x.problems.join("; "))
                                .unwrap_or_default();
                            problem = Some(format!("{}: {why}", r.summary()));
                        }
                    }
                    Err(e) => {
                        delta.failed = 1;
                        problem = Some(e.to_string());
                    }
                }
                if let Some(p) = &problem {
                    tracing::warn!(problem = %p, "repairer could not repair a file");
                }
                add(&mut counts, &delta);
                self.update(|s| {
                    add(&mut s.current, &delta);
                    add(&mut s.total, &delta);
                    if problem.is_some() {
                        s.last_problem = problem;
                    }
                });
                tokio::time::sleep(pause).await;
            }
        }
        self.update(|s| {
            s.running = false;
            s.passes += 1;
            s.last_pass_finished = Some(now_ms() / 1000);
        });
        counts
    }
}

fn add(to: &mut PassCounts, d: &PassCounts) {
    to.files_checked += d.files_checked;
    to.unhealthy += d.unhealthy;
    to.repaired += d.repaired;
    to.failed += d.failed;
}

/// The automatic repairer's task: a pass every `settings.interval` (the first one after
/// `min(interval, 10 min)`), or when [`Repairer::run_soon`] asks; never two at once.
pub async fn run_repairer(node: NodeHandle, settings: crate::config::RepairSettings) {
    let repairer = node.repairer().clone();
    repairer.update(|s| {
        s.enabled = settings.enabled;
        s.interval_secs = settings.interval.as_secs();
    });
    if !settings.enabled {
        return;
    }
    let first = settings.interval.min(Duration::from_secs(600));
    let mut next = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = repairer.wake.notified() => {}
        }
        repairer.pass(&node, settings.pause).await;
        next = tokio::time::Instant::now() + settings.interval;
    }
}

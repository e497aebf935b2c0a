//! Background upkeep: lease renewal for what this node uploaded, and the storage server's
//! garbage collector.
//!
//! - **Uploads** are remembered in `uploads-0` (storage index -> size, time, the servers that
//!   hold its shares; never the cap). [`renew`] adds or renews this node's lease on every one
//!   of them; the daemon does it daily for uploads whose leases would otherwise run out within
//!   half a lease period, and `kith renew` does it now.
//! - **The collector** walks the lease table in bounded steps (500 leases per transaction, a
//!   pause between steps so uploads and downloads keep their share of the disk), removes
//!   leases that expired and leases of accounts whose revocation grace ended, and deletes
//!   shares left without a lease. It runs every hour and on demand; its progress is in
//!   [`CollectorStatus`] (panel, `/api/v1/collector`).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{
    grid::now_ms,
    node::NodeHandle,
    protocol::{Request, Response, from_cbor, to_cbor},
    storage::{CollectReport, ShareStore},
};

const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads-0");

/// Leases examined per collector transaction.
pub const COLLECT_BUDGET: usize = 500;
/// Pause between collector transactions.
pub const COLLECT_PAUSE: Duration = Duration::from_millis(20);

/// One upload: its verify cap's parts (can check shares, cannot decrypt) and which server
/// holds which shares. The storage index is the key.
#[derive(Serialize, Deserialize)]
struct UploadRow {
    size: u64,
    at: u64,
    renewed: u64,
    #[serde(with = "serde_bytes")]
    ueb_hash: [u8; 32],
    needed: u8,
    total: u8,
    /// Server -> share numbers it holds.
    holdings: Vec<(String, Vec<u8>)>,
}

impl UploadRow {
    fn verify_cap(&self, si: [u8; 16]) -> crate::caps::ChkVerifyCap {
        crate::caps::ChkVerifyCap {
            storage_index: si,
            ueb_hash: self.ueb_hash,
            needed: self.needed,
            total: self.total,
            size: self.size,
        }
    }

    /// Servers holding shares, with the share numbers each holds.
    fn holders(&self) -> impl Iterator<Item = (PeerId, &[u8])> {
        self.holdings
            .iter()
            .filter_map(|(p, sh)| Some((p.parse().ok()?, sh.as_slice())))
    }
}

/// Creates the table.
pub fn init(db: &redb::Database) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Writes `rows` in one transaction.
fn put_uploads(db: &redb::Database, rows: &[([u8; 16], UploadRow)]) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
        for (si, row) in rows {
            t.insert(si.as_slice(), to_cbor(row).as_slice())
                .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

fn load_uploads(db: &redb::Database) -> Result<Vec<([u8; 16], UploadRow)>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if let (Ok(si), Ok(row)) = (<[u8; 16]>::try_from(k.value()), from_cbor(v.value())) {
            out.push((si, row));
        }
    }
    Ok(out)
}

/// Remembers an upload: its verify cap (never the read cap) and which server holds which
/// shares, for lease renewal and audits.
pub fn record_upload(
    db: &redb::Database,
    cap: &crate::caps::ChkVerifyCap,
    holdings: &std::collections::BTreeMap<PeerId, BTreeSet<u8>>,
) -> Result<(), String> {
    let now = now_ms() / 1000;
    let row = UploadRow {
        size: cap.size,
        at: now,
        renewed: now,
        ueb_hash: cap.ueb_hash,
        needed: cap.needed,
        total: cap.total,
        holdings: holdings
            .iter()
            .map(|(p, sh)| (p.to_string(), sh.iter().copied().collect()))
            .collect(),
    };
    put_uploads(db, &[(cap.storage_index, row)])
}

/// The verify caps of every upload this node remembers (the automatic repairer's first root).
pub fn uploaded_verify_caps(db: &redb::Database) -> Result<Vec<crate::caps::ChkVerifyCap>, String> {
    Ok(load_uploads(db)?
        .into_iter()
        .map(|(si, row)| row.verify_cap(si))
        .collect())
}

/// After a repair: replaces the remembered holdings of an upload of this node (so renewals and
/// audits go to the servers that hold its shares now). Files this node did not upload are left
/// out; returns whether the upload was known.
pub fn update_holdings(
    db: &redb::Database,
    si: [u8; 16],
    holdings: &std::collections::BTreeMap<PeerId, BTreeSet<u8>>,
) -> Result<bool, String> {
    let row = {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let t = tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
        t.get(si.as_slice())
            .map_err(|e| e.to_string())?
            .and_then(|v| from_cbor::<UploadRow>(v.value()).ok())
    };
    let Some(mut row) = row else {
        return Ok(false);
    };
    row.holdings = holdings
        .iter()
        .map(|(p, sh)| (p.to_string(), sh.iter().copied().collect()))
        .collect();
    put_uploads(db, &[(si, row)])?;
    Ok(true)
}

/// What a renewal did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RenewReport {
    /// Uploads looked at.
    pub files: u64,
    /// Leases added or renewed (one per server and file).
    pub renewed: u64,
    /// Servers that refused or could not be reached, with why.
    pub failed: Vec<String>,
}

/// Renews this node's leases on its uploads (all of them, or only those last renewed more
/// than `older_than` ago).
pub async fn renew(node: &NodeHandle, older_than: Duration) -> Result<RenewReport, String> {
    let db = node.database().clone();
    let now = now_ms() / 1000;
    let mut rows = tokio::task::spawn_blocking(move || load_uploads(&db))
        .await
        .map_err(|e| e.to_string())??;
    rows.retain(|(_, row)| now.saturating_sub(row.renewed) >= older_than.as_secs());
    let mut report = RenewReport::default();
    for (si, row) in &mut rows {
        report.files += 1;
        for (server, _) in row.holders() {
            match node.rpc(server, Request::AddLease { si: *si }).await {
                Ok(Response::Leased(_)) => report.renewed += 1,
                Ok(Response::Error(e)) => report.failed.push(format!("{server}: {e}")),
                Ok(other) => report
                    .failed
                    .push(format!("{server}: unexpected {other:?}")),
                Err(e) => report.failed.push(format!("{server}: {e}")),
            }
        }
        row.renewed = now;
    }
    let db = node.database().clone();
    tokio::task::spawn_blocking(move || put_uploads(&db, &rows))
        .await
        .map_err(|e| e.to_string())??;
    // Mutable files and directories this node wrote.
    let (files, renewed, failed) = crate::slot::renew(node, older_than).await?;
    report.files += files;
    report.renewed += renewed;
    report.failed.extend(failed);
    Ok(report)
}

/// The collector's progress.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CollectorStatus {
    /// A pass is running.
    pub running: bool,
    /// Passes completed since start.
    pub passes: u64,
    /// When the last pass started (unix seconds).
    pub last_started: Option<u64>,
    /// When the last pass finished.
    pub last_finished: Option<u64>,
    /// What the current (or last) pass did so far.
    pub current: CollectReport,
    /// Everything since start.
    pub total: CollectReport,
}

/// The collector's shared status.
pub type SharedStatus = Arc<Mutex<CollectorStatus>>;

/// Runs one whole collector pass over the store.
pub async fn collect_pass(
    store: &ShareStore,
    status: &SharedStatus,
) -> Result<CollectReport, String> {
    let now = now_ms() / 1000;
    let db = store.database().clone();
    let gone: BTreeSet<kith_accounting::AccountId> = tokio::task::spawn_blocking(move || {
        kith_accounting::store::load(&db)
            .map(|l| l.collectable(now).into_iter().collect())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    {
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.running = true;
        s.last_started = Some(now);
        s.current = CollectReport::default();
    }
    let mut cursor = None;
    let mut pass = CollectReport::default();
    let result = loop {
        let st = store.clone();
        let g = gone.clone();
        let c = cursor.take();
        let step = tokio::task::spawn_blocking(move || st.collect_step(now, &g, c, COLLECT_BUDGET))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match step {
            Ok((r, next)) => {
                pass.add(&r);
                {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    s.current = pass.clone();
                    s.total.add(&r);
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break Ok(pass.clone()),
                }
            }
            Err(e) => break Err(e),
        }
        tokio::time::sleep(COLLECT_PAUSE).await;
    };
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.running = false;
    s.passes += 1;
    s.last_finished = Some(now_ms() / 1000);
    if pass.shares_removed > 0 {
        tracing::info!(
            shares = pass.shares_removed,
            bytes = pass.bytes_freed,
            "collector removed unleased shares"
        );
    }
    result
}

/// What an audit round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    /// Challenges sent.
    pub challenges: u64,
    /// Answered with a block that verified.
    pub passed: u64,
    /// Answered wrongly or "not found": the share is gone or damaged.
    pub failed: Vec<String>,
    /// No answer before the deadline (never held against the server).
    pub offline: u64,
}

/// How long a challenged server has to answer.
pub const AUDIT_DEADLINE: Duration = Duration::from_secs(30);

enum Verdict {
    Pass,
    Fail(String),
    Offline,
}

async fn challenge(
    node: &NodeHandle,
    server: PeerId,
    cap: &crate::caps::ChkVerifyCap,
    shnum: u8,
    pick: u64,
) -> Verdict {
    use crate::codec::{VerifiedShare, block_offset, block_size_for, share::ShareMeta};
    let ask = |req: Request| async {
        match tokio::time::timeout(AUDIT_DEADLINE, node.rpc(server, req)).await {
            Err(_) | Ok(Err(_)) => Err(Verdict::Offline),
            Ok(Ok(Response::Bytes(b))) => Ok(b.into_vec()),
            Ok(Ok(Response::Error(e))) => Err(Verdict::Fail(format!("share {shnum}: {e}"))),
            Ok(Ok(other)) => Err(Verdict::Fail(format!(
                "share {shnum}: unexpected {other:?}"
            ))),
        }
    };
    let si = cap.storage_index;
    let meta = match ask(Request::ReadMeta { si, shnum }).await {
        Ok(b) => b,
        Err(v) => return v,
    };
    let Ok(meta) = ShareMeta::from_bytes(&meta, crate::protocol::MAX_META) else {
        return Verdict::Fail(format!("share {shnum}: malformed metadata"));
    };
    let Ok(ueb) = crate::codec::verify_ueb_with_verify_cap(cap, &meta.ueb) else {
        return Verdict::Fail(format!("share {shnum}: metadata does not match the file"));
    };
    let Ok(share) = VerifiedShare::new(&ueb, meta) else {
        return Verdict::Fail(format!("share {shnum}: hashes do not chain to the file"));
    };
    let segment = (pick % u64::from(ueb.num_segments.max(1))) as u32;
    let block = match ask(Request::Read {
        si,
        shnum,
        offset: block_offset(&ueb, segment),
        len: block_size_for(&ueb, segment) as u32,
    })
    .await
    {
        Ok(b) => b,
        Err(v) => return v,
    };
    match share.check_block(segment, &block) {
        Ok(()) => Verdict::Pass,
        Err(e) => Verdict::Fail(format!("share {shnum}: {e}")),
    }
}

/// Challenges `count` random (file, share) pairs held by other servers for one random block
/// each, checked against the file's verify cap, and records each outcome in the ledger
/// (Pass / Fail / Offline: a server that does not answer is never accused).
pub async fn audit(node: &NodeHandle, count: usize) -> Result<AuditReport, String> {
    use rand::Rng;
    let db = node.database().clone();
    let uploads = tokio::task::spawn_blocking(move || load_uploads(&db))
        .await
        .map_err(|e| e.to_string())??;
    let me = node.peer_id();
    let mut targets: Vec<(crate::caps::ChkVerifyCap, PeerId, u8)> = Vec::new();
    for (si, row) in &uploads {
        let cap = row.verify_cap(*si);
        for (server, shnums) in row.holders().filter(|(s, _)| *s != me) {
            targets.extend(shnums.iter().map(|sh| (cap.clone(), server, *sh)));
        }
    }
    let mut report = AuditReport::default();
    if targets.is_empty() {
        return Ok(report);
    }
    for _ in 0..count {
        let (i, pick) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..targets.len()), rng.r#gen::<u64>())
        };
        let (cap, server, shnum) = &targets[i];
        report.challenges += 1;
        let outcome = match challenge(node, *server, cap, *shnum, pick).await {
            Verdict::Pass => {
                report.passed += 1;
                kith_accounting::Outcome::Pass
            }
            Verdict::Fail(why) => {
                tracing::warn!(server = %server, %why, "audit failed");
                report.failed.push(format!("{server}: {why}"));
                kith_accounting::Outcome::Fail
            }
            Verdict::Offline => {
                report.offline += 1;
                kith_accounting::Outcome::Offline
            }
        };
        let friends = node.friends().clone();
        let server = *server;
        tokio::task::spawn_blocking(move || friends.audited(&server, outcome))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(report)
}

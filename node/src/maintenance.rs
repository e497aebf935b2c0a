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
    protocol::{Request, Response},
    storage::{CollectReport, ShareStore},
};

const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads-0");

/// Leases examined per collector transaction.
pub const COLLECT_BUDGET: usize = 500;
/// Pause between collector transactions.
pub const COLLECT_PAUSE: Duration = Duration::from_millis(20);

#[derive(Serialize, Deserialize)]
struct UploadRow {
    size: u64,
    at: u64,
    renewed: u64,
    servers: Vec<String>,
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// Creates the table.
pub fn init(db: &redb::Database) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Remembers an upload (storage index and the servers holding its shares).
pub fn record_upload(
    db: &redb::Database,
    si: &[u8; 16],
    size: u64,
    servers: &BTreeSet<PeerId>,
) -> Result<(), String> {
    let now = now_ms() / 1000;
    let row = UploadRow {
        size,
        at: now,
        renewed: now,
        servers: servers.iter().map(ToString::to_string).collect(),
    };
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(UPLOADS)
        .map_err(|e| e.to_string())?
        .insert(si.as_slice(), cbor(&row).as_slice())
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
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
    let rows: Vec<([u8; 16], UploadRow)> = tokio::task::spawn_blocking(move || {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let t = tx.open_table(UPLOADS).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let Ok(si) = <[u8; 16]>::try_from(k.value()) else {
                continue;
            };
            if let Ok(row) =
                ciborium::de::from_reader_with_recursion_limit::<UploadRow, _>(v.value(), 8)
                && now.saturating_sub(row.renewed) >= older_than.as_secs()
            {
                out.push((si, row));
            }
        }
        Ok::<_, String>(out)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut report = RenewReport::default();
    for (si, mut row) in rows {
        report.files += 1;
        for s in &row.servers {
            let Ok(server) = s.parse::<PeerId>() else {
                continue;
            };
            match node.rpc(server, Request::AddLease { si }).await {
                Ok(Response::Leased(_)) => report.renewed += 1,
                Ok(Response::Error(e)) => report.failed.push(format!("{server}: {e}")),
                Ok(other) => report
                    .failed
                    .push(format!("{server}: unexpected {other:?}")),
                Err(e) => report.failed.push(format!("{server}: {e}")),
            }
        }
        row.renewed = now;
        let db = node.database().clone();
        let _ = tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.open_table(UPLOADS)
                .map_err(|e| e.to_string())?
                .insert(si.as_slice(), cbor(&row).as_slice())
                .map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())
        })
        .await;
    }
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

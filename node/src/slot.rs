//! Mutable files on the grid: the IO around the pure [`crate::mutable`] codec.
//!
//! - [`map`] asks every storage server for its shares of a slot and verifies each one against
//!   the cap (a server's garbage or a forged version is reported, never used);
//! - [`read`] decodes the newest version that has at least k shares;
//! - [`create`] makes a new slot (fresh RSA-2048 key) and places its first version by servers
//!   of happiness;
//! - [`publish`] writes a new version over a map taken earlier. Every server gets a
//!   test-and-set write expecting exactly the sequence numbers the map saw there. The servers
//!   are written in a fixed order (the slot's permuted ring): the first one that already holds
//!   shares is written alone first and arbitrates: if its test fails, another writer got there
//!   first, nothing else is written and the caller gets [`SlotError::Uncoordinated`]. Two
//!   writers racing from the same map therefore see exactly one success;
//! - [`modify`] is read-modify-write with retries on [`SlotError::Uncoordinated`] (what
//!   directories use, so concurrent edits of different entries all land).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    caps::SskCap,
    client::{BadShare, next_before},
    hedge,
    mutable::{self, MutableError, MutableShare, Version},
    node::NodeHandle,
    placement,
    protocol::{Request, Response, ServerError, SlotShareWrite},
};

/// Slots this node wrote: storage index -> [`SlotRow`] (verify cap parts and holders; never a
/// read or write cap). Lease renewal walks it.
const SLOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("slots-0");

const MAP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes of shares per slot-write request (under the frame limit).
const WRITE_BATCH: usize = 6 << 20;
/// Read-modify-write attempts before giving up on a contended slot.
const MODIFY_ATTEMPTS: usize = 8;

/// Why a mutable operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// Another writer changed the slot between our read and our write.
    #[error(
        "uncoordinated write: another writer changed this mutable file at the same time (now at version {current}); nothing of ours was written — read it again and retry"
    )]
    Uncoordinated {
        /// The highest sequence number seen on the servers that refused.
        current: u64,
    },
    /// No version with k shares could be found.
    #[error("not enough shares of any version: {0}")]
    NotEnoughShares(String),
    /// Not enough servers to place shares on.
    #[error("{0}")]
    NotHappy(String),
    /// The codec refused (bad cap, too large, …).
    #[error(transparent)]
    Mutable(#[from] MutableError),
    /// A server refused with an error.
    #[error("{0}")]
    Server(String),
}

/// Shares of a slot found on the grid, verified.
#[derive(Clone, Debug, Default)]
pub struct ServerMap {
    /// Every good share: (server, share).
    pub shares: Vec<(PeerId, MutableShare)>,
    /// Servers that answered.
    pub answered: Vec<PeerId>,
    /// Shares that failed verification.
    pub bad: Vec<BadShare>,
    /// Servers that did not answer, with why.
    pub unreachable: Vec<(PeerId, String)>,
    /// What every answering server stores, good or bad: (server, share, sequence number) —
    /// what a test-and-set write must expect there.
    pub stored: Vec<(PeerId, u8, u64)>,
}

impl ServerMap {
    /// The newest version with at least k shares.
    pub fn best(&self) -> Option<Version> {
        mutable::best_version(self.shares.iter().map(|(_, s)| s))
    }

    /// The highest sequence number of a verified share (recoverable or not). Unverified
    /// shares do not count: a lying server must not push the version out of range.
    pub fn max_seqnum(&self) -> u64 {
        self.shares
            .iter()
            .map(|(_, s)| s.version.seqnum)
            .max()
            .unwrap_or(0)
    }

    /// Distinct shares of `version`.
    pub fn count(&self, version: Version) -> usize {
        self.shares
            .iter()
            .filter(|(_, s)| s.version == version)
            .map(|(_, s)| s.shnum)
            .collect::<BTreeSet<u8>>()
            .len()
    }

    /// Server -> share numbers of `version` it holds.
    pub fn holdings(&self, version: Version) -> BTreeMap<PeerId, BTreeSet<u8>> {
        let mut m: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
        for (p, s) in &self.shares {
            if s.version == version {
                m.entry(*p).or_default().insert(s.shnum);
            }
        }
        m
    }
}

fn server_err(r: Result<Response, crate::net::RpcError>) -> Result<Response, String> {
    match r {
        Ok(Response::Error(ServerError { kind, message })) => Err(format!("{kind}: {message}")),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

async fn read_server(
    node: &NodeHandle,
    server: PeerId,
    si: [u8; 16],
) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut want: Vec<u8> = Vec::new();
    // Bounded: each round returns at least one share or ends.
    for _ in 0..=256 {
        let r = node
            .rpc(
                server,
                Request::SlotRead {
                    si,
                    shnums: want.clone(),
                },
            )
            .await;
        match server_err(r)? {
            Response::Slots { shares, more } => {
                let got = shares.len();
                out.extend(shares.into_iter().map(|(sh, b)| (sh, b.into_vec())));
                if more.is_empty() || got == 0 {
                    return Ok(out);
                }
                want = more;
            }
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    Ok(out)
}

/// Asks every storage server for its shares of the slot and verifies them. Once `happy`
/// servers have answered, the rest are waited for only up to [`hedge::stragglers_until`]
/// (they count as unreachable, and as [silent](hedge::Silent) for a while), and servers
/// already silent not at all.
pub async fn map(node: &NodeHandle, cap: &SskCap) -> ServerMap {
    let si = cap.storage_index();
    let servers = node.storage_servers();
    let happy = node.config().encoding.happy;
    let asked_at = tokio::time::Instant::now();
    let mut asks: FuturesUnordered<_> = servers
        .iter()
        .map(|&s| async move {
            let r = tokio::time::timeout(MAP_TIMEOUT, read_server(node, s, si))
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            (s, r)
        })
        .collect();
    let mut m = ServerMap::default();
    let mut good: Vec<Duration> = Vec::new();
    // Servers silent lately are asked but not waited for once `happy` others answered.
    let silent = node.silent_servers();
    let mut pending: BTreeSet<PeerId> = servers.iter().copied().collect();
    loop {
        if good.len() >= usize::from(happy) && pending.iter().all(|p| silent.contains(p)) {
            break;
        }
        let cutoff = hedge::stragglers_until(&good, happy).map(|after| asked_at + after);
        let Some((s, r)) = next_before(&mut asks, cutoff).await else {
            break;
        };
        pending.remove(&s);
        if r.is_ok() {
            good.push(asked_at.elapsed());
        }
        match r {
            Ok(shares) => {
                m.answered.push(s);
                for (sh, bytes) in shares {
                    if let Ok(seq) = mutable::peek_seqnum(&bytes) {
                        m.stored.push((s, sh, seq));
                    }
                    match mutable::verify_share(&si, &cap.fingerprint, &bytes) {
                        Ok(share) if share.shnum == sh => m.shares.push((s, share)),
                        Ok(_) => m.bad.push(BadShare {
                            server: s.to_string(),
                            shnum: sh,
                            problem: "share number disagrees with the server's".into(),
                        }),
                        Err(e) => m.bad.push(BadShare {
                            server: s.to_string(),
                            shnum: sh,
                            problem: e.to_string(),
                        }),
                    }
                }
            }
            Err(e) => m.unreachable.push((s, e)),
        }
    }
    let waited = asked_at.elapsed().as_millis();
    for s in servers {
        if !m.answered.contains(&s) && !m.unreachable.iter().any(|(u, _)| *u == s) {
            // Only a server waited for gets a new mark: renewing the mark of one not waited
            // for would keep it silent as long as maps come, even after it came back.
            if !silent.contains(&s) {
                node.went_silent(s);
            }
            m.unreachable.push((
                s,
                format!("no answer within {waited} ms, when the others had answered"),
            ));
        }
    }
    m
}

/// The newest recoverable version's content.
pub async fn read(node: &NodeHandle, cap: &SskCap) -> Result<(Vec<u8>, Version), SlotError> {
    let m = map(node, cap).await;
    read_from(cap, &m)
}

/// Decodes the newest recoverable version of a map.
pub fn read_from(cap: &SskCap, m: &ServerMap) -> Result<(Vec<u8>, Version), SlotError> {
    let v = m.best().ok_or_else(|| {
        SlotError::NotEnoughShares(format!(
            "{} good shares on {} servers answering{}{}",
            m.shares.len(),
            m.answered.len(),
            if m.bad.is_empty() {
                String::new()
            } else {
                format!(", {} bad", m.bad.len())
            },
            if m.unreachable.is_empty() {
                String::new()
            } else {
                format!(", {} servers unreachable", m.unreachable.len())
            }
        ))
    })?;
    let data = mutable::decode_version(cap, v, m.shares.iter().map(|(_, s)| s))?;
    Ok((data, v))
}

/// Creates a slot holding `content`; returns its write cap.
pub async fn create(node: &NodeHandle, dir: bool, content: &[u8]) -> Result<SskCap, SlotError> {
    if content.len() > mutable::MAX_MUTABLE_SIZE {
        return Err(MutableError::TooLarge(content.len()).into());
    }
    let new = tokio::task::spawn_blocking(move || mutable::new_slot(&mut rand::rngs::OsRng, dir))
        .await
        .map_err(|e| SlotError::Server(e.to_string()))??;
    publish_with_key(node, &new.cap, &new.privkey, content, &ServerMap::default()).await?;
    Ok(new.cap)
}

/// Publishes `content` as the next version after what `m` saw (see the module docs).
pub async fn publish(
    node: &NodeHandle,
    cap: &SskCap,
    content: &[u8],
    m: &ServerMap,
) -> Result<Version, SlotError> {
    if cap.writekey().is_none() {
        return Err(MutableError::NotAllowed(
            "this is a read-only cap: it cannot change the file".into(),
        )
        .into());
    }
    let (_, any) = m
        .shares
        .first()
        .ok_or_else(|| SlotError::NotEnoughShares("no share of this slot was found".into()))?;
    let c = cap.clone();
    let any = any.clone();
    let privkey = tokio::task::spawn_blocking(move || mutable::recover_privkey(&c, &any))
        .await
        .map_err(|e| SlotError::Server(e.to_string()))??;
    publish_with_key(node, cap, &privkey, content, m).await
}

async fn publish_with_key(
    node: &NodeHandle,
    cap: &SskCap,
    privkey: &rsa::RsaPrivateKey,
    content: &[u8],
    m: &ServerMap,
) -> Result<Version, SlotError> {
    if content.len() > mutable::MAX_MUTABLE_SIZE {
        return Err(MutableError::TooLarge(content.len()).into());
    }
    let params = node.config().encoding;
    let (needed, total) = m
        .shares
        .first()
        .map(|(_, s)| (s.needed, s.total))
        .unwrap_or((params.needed, params.total));
    let seqnum = m.max_seqnum().saturating_add(1);
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let shares = {
        let (c, k, content) = (cap.clone(), privkey.clone(), content.to_vec());
        tokio::task::spawn_blocking(move || {
            mutable::encode_version(&c, &k, seqnum, &content, needed, total, salt)
        })
        .await
        .map_err(|e| SlotError::Server(e.to_string()))??
    };
    write_shares(node, cap, m, shares).await
}

/// Writes the shares of one version: over every copy the map saw (expecting what it saw) and
/// on servers the placement picks for shares nobody holds; the arbiter first (module docs).
pub async fn write_shares(
    node: &NodeHandle,
    cap: &SskCap,
    m: &ServerMap,
    shares: Vec<MutableShare>,
) -> Result<Version, SlotError> {
    let writekey = *cap
        .writekey()
        .ok_or_else(|| MutableError::NotAllowed("a read cap cannot write".into()))?;
    let si = cap.storage_index();
    let params = node.config().encoding;
    let first = shares
        .first()
        .ok_or_else(|| SlotError::Server("no shares to write".into()))?;
    let (total, seqnum) = (first.total, first.version.seqnum);
    // What each server holds now, and at which sequence number.
    let mut seen: BTreeMap<PeerId, BTreeMap<u8, u64>> = BTreeMap::new();
    for (p, sh, seq) in &m.stored {
        seen.entry(*p).or_default().insert(*sh, *seq);
    }
    let servers = node.storage_servers();
    let usable: Vec<PeerId> = servers
        .iter()
        .filter(|s| !m.unreachable.iter().any(|(u, _)| u == *s))
        .copied()
        .collect();
    let fixed: BTreeMap<Vec<u8>, BTreeSet<u8>> = seen
        .iter()
        .map(|(p, shs)| (p.to_bytes(), shs.keys().copied().collect()))
        .collect();
    let happy = params.happy.min(total);
    // New copies go to servers heard from lately, while enough of them remain.
    let usable = node.put_aside(usable, usize::from(happy));
    let usable_b: Vec<Vec<u8>> = usable.iter().map(|p| p.to_bytes()).collect();
    let plan = placement::plan(&si, &usable_b, &fixed, total, happy).map_err(|e| {
        SlotError::NotHappy(format!(
            "a mutable file needs shares on {happy} distinct servers; {e} ({} servers reachable)",
            usable.len()
        ))
    })?;
    // Every share copy to write: where the map saw shares, plus the plan's new placements.
    // Copies already holding this very version (a repair) are left alone.
    let current: BTreeSet<(PeerId, u8)> = m
        .shares
        .iter()
        .filter(|(_, s)| s.version == first.version)
        .map(|(p, s)| (*p, s.shnum))
        .collect();
    let mut targets: BTreeMap<PeerId, BTreeMap<u8, Option<u64>>> = BTreeMap::new();
    for (p, shs) in &seen {
        for (&sh, &seq) in shs {
            if !current.contains(&(*p, sh)) {
                targets.entry(*p).or_default().insert(sh, Some(seq));
            }
        }
    }
    for (&sh, s) in &plan.assignments {
        if let Ok(p) = PeerId::from_bytes(s)
            && !current.contains(&(p, sh))
        {
            targets.entry(p).or_default().entry(sh).or_insert(None);
        }
    }
    let version = first.version;
    let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); usize::from(total)];
    for sh in &shares {
        if let Some(slot) = encoded.get_mut(usize::from(sh.shnum)) {
            *slot = sh.to_bytes();
        }
    }
    // The arbiter: the first server on the ring that already holds shares.
    let ring = placement::permuted_ring(
        &si,
        &targets.keys().map(|p| p.to_bytes()).collect::<Vec<_>>(),
    );
    let order: Vec<PeerId> = ring
        .iter()
        .filter_map(|b| PeerId::from_bytes(b).ok())
        .collect();
    let arbiter = order.iter().find(|p| seen.contains_key(p)).copied();
    let write_one = |server: PeerId| {
        let writes: Vec<SlotShareWrite> = targets
            .get(&server)
            .map(|shs| {
                shs.iter()
                    .filter_map(|(&sh, &expect)| {
                        let data = encoded.get(usize::from(sh)).filter(|d| !d.is_empty())?;
                        Some(SlotShareWrite {
                            shnum: sh,
                            expect,
                            data: ByteBuf::from(data.clone()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let enabler = mutable::write_enabler(&writekey, &server.to_bytes());
        async move {
            let mut batches: Vec<Vec<SlotShareWrite>> = vec![Vec::new()];
            let mut size = 0;
            for w in writes {
                if size + w.data.len() > WRITE_BATCH && !batches[batches.len() - 1].is_empty() {
                    batches.push(Vec::new());
                    size = 0;
                }
                size += w.data.len();
                if let Some(b) = batches.last_mut() {
                    b.push(w);
                }
            }
            let mut written = BTreeSet::new();
            for b in batches.into_iter().filter(|b| !b.is_empty()) {
                let shnums: Vec<u8> = b.iter().map(|w| w.shnum).collect();
                let r = node
                    .rpc(
                        server,
                        Request::SlotWrite {
                            si,
                            write_enabler: ByteBuf::from(enabler.to_vec()),
                            writes: b,
                        },
                    )
                    .await;
                match server_err(r) {
                    Ok(Response::Done) => written.extend(shnums),
                    Ok(Response::SlotConflict(now)) => {
                        let current = now.iter().filter_map(|(_, s)| *s).max().unwrap_or(0);
                        return (server, Err(WriteFail::Conflict(current)), written);
                    }
                    Ok(other) => {
                        return (
                            server,
                            Err(WriteFail::Other(format!("unexpected answer {other:?}"))),
                            written,
                        );
                    }
                    Err(e) => return (server, Err(WriteFail::Other(e)), written),
                }
            }
            (server, Ok(()), written)
        }
    };
    let mut holdings: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    for (p, sh) in &current {
        holdings.entry(*p).or_default().insert(*sh);
    }
    let mut failures: Vec<String> = Vec::new();
    if let Some(a) = arbiter {
        let (_, r, written) = write_one(a).await;
        match r {
            Ok(()) => {
                holdings.entry(a).or_default().extend(written);
            }
            Err(WriteFail::Conflict(current)) => return Err(SlotError::Uncoordinated { current }),
            Err(WriteFail::Other(e)) => failures.push(format!("{a}: {e}")),
        }
    }
    let mut waiting: BTreeSet<PeerId> = order
        .iter()
        .filter(|p| Some(**p) != arbiter)
        .copied()
        .collect();
    let mut rest: FuturesUnordered<_> = waiting.iter().map(|&p| write_one(p)).collect();
    let mut conflict: Option<u64> = None;
    // Once the version is happy, the rest are waited for only up to `stragglers_until`.
    let asked_at = tokio::time::Instant::now();
    let mut cutoff: Option<tokio::time::Instant> = None;
    while let Some((p, r, written)) = next_before(&mut rest, cutoff).await {
        waiting.remove(&p);
        if !written.is_empty() {
            holdings.entry(p).or_default().extend(written);
        }
        match r {
            Ok(()) => {}
            Err(WriteFail::Conflict(c)) => conflict = Some(conflict.unwrap_or(0).max(c)),
            Err(WriteFail::Other(e)) => failures.push(format!("{p}: {e}")),
        }
        if cutoff.is_none() && placement::happiness(&holdings) >= usize::from(happy) {
            cutoff = Some(asked_at + hedge::stragglers_after(asked_at.elapsed()));
        }
    }
    drop(rest);
    for p in waiting {
        node.went_silent(p);
    }
    if let Some(current) = conflict {
        return Err(SlotError::Uncoordinated { current });
    }
    let got = placement::happiness(&holdings);
    if got < usize::from(happy) {
        return Err(SlotError::NotHappy(format!(
            "version {seqnum} reached {got} distinct servers, {happy} wanted{}",
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join("; "))
            }
        )));
    }
    // Remember the slot for lease renewal (its verify cap only).
    let (db, verify) = (node.database().clone(), cap.verify_cap());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = record(&db, &verify, &holdings) {
            tracing::warn!(error = %e, "recording the mutable file for lease renewal failed");
        }
    });
    Ok(version)
}

enum WriteFail {
    Conflict(u64),
    Other(String),
}

/// Read-modify-write: `f` gets the current content and returns the new one (`None`: leave the
/// slot unchanged). Retries on uncoordinated writes with a short random backoff.
pub async fn modify<F, E>(node: &NodeHandle, cap: &SskCap, mut f: F) -> Result<Option<Version>, E>
where
    F: FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
    E: From<SlotError>,
{
    let mut last = None;
    for attempt in 0..MODIFY_ATTEMPTS {
        let m = map(node, cap).await;
        let (old, _) = read_from(cap, &m)?;
        let Some(new) = f(&old)? else {
            return Ok(None);
        };
        match publish(node, cap, &new, &m).await {
            Ok(v) => return Ok(Some(v)),
            Err(e @ SlotError::Uncoordinated { .. }) => {
                let ms = 20u64 << attempt.min(5);
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=ms);
                tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .unwrap_or(SlotError::Uncoordinated { current: 0 })
        .into())
}

#[derive(Serialize, Deserialize)]
struct SlotRow {
    #[serde(with = "serde_bytes")]
    fingerprint: [u8; 32],
    dir: bool,
    renewed: u64,
    holders: Vec<String>,
}

/// Creates the table.
pub fn init(db: &redb::Database) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(SLOTS).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

fn record(
    db: &redb::Database,
    cap: &SskCap,
    holdings: &BTreeMap<PeerId, BTreeSet<u8>>,
) -> Result<(), String> {
    let row = SlotRow {
        fingerprint: cap.fingerprint,
        dir: cap.dir,
        renewed: crate::grid::now_ms() / 1000,
        holders: holdings.keys().map(|p| p.to_string()).collect(),
    };
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = tx.open_table(SLOTS).map_err(|e| e.to_string())?;
        t.insert(
            cap.storage_index().as_slice(),
            crate::protocol::to_cbor(&row).as_slice(),
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Verify caps of every slot this node wrote (for renewal and the repairer).
pub fn recorded(db: &redb::Database) -> Result<Vec<SskCap>, String> {
    Ok(load(db)?
        .into_iter()
        .map(|(si, row)| SskCap {
            dir: row.dir,
            access: crate::caps::SskAccess::Verify { storage_index: si },
            fingerprint: row.fingerprint,
        })
        .collect())
}

fn load(db: &redb::Database) -> Result<Vec<([u8; 16], SlotRow)>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = match tx.open_table(SLOTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if let (Ok(si), Ok(row)) = (
            <[u8; 16]>::try_from(k.value()),
            crate::protocol::from_cbor::<SlotRow>(v.value()),
        ) {
            out.push((si, row));
        }
    }
    Ok(out)
}

/// Renews this node's leases on the slots it wrote (last renewed more than `older_than` ago):
/// (slots, leases renewed, failures).
pub async fn renew(
    node: &NodeHandle,
    older_than: Duration,
) -> Result<(u64, u64, Vec<String>), String> {
    let db = node.database().clone();
    let now = crate::grid::now_ms() / 1000;
    let rows = tokio::task::spawn_blocking(move || load(&db))
        .await
        .map_err(|e| e.to_string())??;
    let (mut files, mut renewed, mut failed) = (0, 0, Vec::new());
    for (si, mut row) in rows {
        if now.saturating_sub(row.renewed) < older_than.as_secs() {
            continue;
        }
        files += 1;
        for server in row.holders.iter().filter_map(|s| s.parse::<PeerId>().ok()) {
            match node.rpc(server, Request::AddLease { si }).await {
                Ok(Response::Leased(_)) => renewed += 1,
                Ok(Response::Error(e)) => failed.push(format!("{server}: {e}")),
                Ok(other) => failed.push(format!("{server}: unexpected {other:?}")),
                Err(e) => failed.push(format!("{server}: {e}")),
            }
        }
        row.renewed = now;
        let db = node.database().clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = tx.open_table(SLOTS).map_err(|e| e.to_string())?;
                t.insert(si.as_slice(), crate::protocol::to_cbor(&row).as_slice())
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    Ok((files, renewed, failed))
}

/// What checking a mutable file or directory found (and did).
#[derive(Clone, Debug, Serialize)]
pub struct SlotCheck {
    /// The storage index (base32).
    pub storage_index: String,
    /// Sequence number of the newest recoverable version.
    pub seqnum: Option<u64>,
    /// k.
    pub needed: u8,
    /// n.
    pub total: u8,
    /// Distinct shares of that version (every share is fetched whole and verified).
    pub good_shares: usize,
    /// Distinct servers holding them, as servers of happiness counts.
    pub happiness: usize,
    /// Shares of other (older or unrecoverable) versions.
    pub other_versions: usize,
    /// Shares that failed verification.
    pub bad: Vec<BadShare>,
    /// Servers that did not answer.
    pub unreachable: usize,
    /// All n shares of one version on enough servers, nothing stale.
    pub healthy: bool,
    /// Set when a repair ran: what it placed, or why it could not.
    pub repair: Option<String>,
}

fn b32(si: &[u8; 16]) -> String {
    data_encoding::BASE32_NOPAD.encode(si).to_ascii_lowercase()
}

fn assess(node: &NodeHandle, cap: &SskCap, m: &ServerMap) -> SlotCheck {
    let best = m.best();
    let (needed, total) = m
        .shares
        .iter()
        .find(|(_, s)| Some(s.version) == best)
        .map(|(_, s)| (s.needed, s.total))
        .unwrap_or((0, 0));
    let good_shares = best.map_or(0, |v| m.count(v));
    let happiness = best.map_or(0, |v| placement::happiness(&m.holdings(v)));
    let other_versions = m
        .shares
        .iter()
        .filter(|(_, s)| Some(s.version) != best)
        .count();
    let happy = node.config().encoding.happy.min(total);
    SlotCheck {
        storage_index: b32(&cap.storage_index()),
        seqnum: best.map(|v| v.seqnum),
        needed,
        total,
        good_shares,
        happiness,
        other_versions,
        bad: m.bad.clone(),
        unreachable: m.unreachable.len(),
        healthy: best.is_some()
            && good_shares == usize::from(total)
            && happiness >= usize::from(happy)
            && other_versions == 0
            && m.bad.is_empty(),
        repair: None,
    }
}

/// Checks a slot (any cap: verify caps see everything a check needs); with `repair` and a
/// write cap, puts back missing shares of the newest version without bumping it (and
/// overwrites stale or bad copies).
pub async fn check(node: &NodeHandle, cap: &SskCap, repair: bool) -> SlotCheck {
    let m = map(node, cap).await;
    let mut report = assess(node, cap, &m);
    if report.healthy || !repair {
        return report;
    }
    let Some(best) = m.best() else {
        report.repair = Some("cannot repair: no version has k good shares".into());
        return report;
    };
    if cap.writekey().is_none() {
        report.repair = Some(
            "cannot repair: writing a mutable file's shares needs its write cap (servers check write enablers)"
                .into(),
        );
        return report;
    }
    let shares = match mutable::regenerate(m.shares.iter().map(|(_, s)| s), best) {
        Ok(s) => s,
        Err(e) => {
            report.repair = Some(format!("cannot repair: {e}"));
            return report;
        }
    };
    // Bad and stale copies are overwritten (the map knows what each server stores).
    match write_shares(node, cap, &m, shares).await {
        Ok(_) => {
            let after = map(node, cap).await;
            let mut fixed = assess(node, cap, &after);
            fixed.repair = Some(format!(
                "repaired: {} -> {} good shares, happiness {} -> {}",
                report.good_shares, fixed.good_shares, report.happiness, fixed.happiness
            ));
            fixed
        }
        Err(e) => {
            report.repair = Some(format!("repair failed: {e}"));
            report
        }
    }
}

//! Mutable slots in the share store.
//!
//! A slot share is an ordinary indexed share (same file layout, same leases, accounting,
//! collector and crash recovery) whose data is one encoded mutable share (`mutable`) and whose
//! metadata is the slot's write enabler for this server: `b"KSLT"`, version 1, enabler[32].
//! The store never returns that metadata (the server refuses `ReadMeta` on slots), so only
//! write-cap holders, who derive the enabler, can change a slot.
//!
//! [`ShareStore::slot_write`] is a test-and-set over several shares at once, serialised by a
//! store-wide lock: every share's current sequence number must equal what the writer expects
//! (`None`: absent) and its enabler must match, or nothing is written. Each new share goes to a
//! temp file that is fsynced and renamed over the old one; then one redb transaction updates the
//! rows, the leases (every lease holder's charge moves to the new size) and the usage. A crash
//! between the rename and the commit leaves a file whose length disagrees with its row, which
//! [`ShareStore::open`] removes: that server loses its share of the slot (repair puts it back),
//! and nothing half-written is ever served.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::FileExt,
    path::Path,
    sync::atomic::Ordering,
};

use redb::ReadableTable;
use subtle::ConstantTimeEq;

use super::{
    DATA_OFFSET, FORMAT_VERSION, LEASES, MAGIC, Row, SHARES, ShareStore, StoreError, USAGE,
    account_lease, b32, db, fsync_dir, io_at, lease_key, now, share_key,
};

const SLOT_MAGIC: &[u8; 4] = b"KSLT";
const SLOT_VERSION: u8 = 1;
const SLOT_META_LEN: usize = 4 + 1 + 32;

/// Shares read, (share number, bytes), and those left for a next call.
pub type SlotRead = (Vec<(u8, Vec<u8>)>, Vec<u8>);

/// One share of a test-and-set write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotWrite {
    /// The share.
    pub shnum: u8,
    /// The sequence number the writer believes is stored (`None`: no share yet).
    pub expect: Option<u64>,
    /// The new encoded share.
    pub data: Vec<u8>,
}

/// What a test-and-set write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Every share was written.
    Written,
    /// A test failed; nothing was written. What is stored now: (shnum, seqnum).
    Conflict(Vec<(u8, Option<u64>)>),
}

fn slot_meta(enabler: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SLOT_META_LEN);
    m.extend_from_slice(SLOT_MAGIC);
    m.push(SLOT_VERSION);
    m.extend_from_slice(enabler);
    m
}

/// Whether a share's metadata marks it as a mutable slot share.
pub fn is_slot_meta(meta: &[u8]) -> bool {
    meta.len() == SLOT_META_LEN && &meta[..4] == SLOT_MAGIC && meta[4] == SLOT_VERSION
}

impl ShareStore {
    /// (write enabler, sequence number) of a stored slot share, `None` when absent.
    fn slot_state(&self, si: &[u8; 16], shnum: u8) -> Result<Option<([u8; 32], u64)>, StoreError> {
        if self.row(si, shnum)?.is_none() {
            return Ok(None);
        }
        let meta = self.read_meta(si, shnum)?;
        if !is_slot_meta(&meta) {
            return Err(StoreError::NotASlot { shnum });
        }
        let mut we = [0u8; 32];
        we.copy_from_slice(&meta[5..]);
        let head = self.read(si, shnum, 0, 13)?;
        let seq = crate::mutable::peek_seqnum(&head).map_err(|e| StoreError::Corrupt {
            path: self.share_path(si, shnum),
            why: e.to_string(),
        })?;
        Ok(Some((we, seq)))
    }

    /// Slot shares of `si` (all when `shnums` is empty), whole, up to about `budget` bytes (at
    /// least one); the second list names shares left out for a next call.
    pub fn slot_read(
        &self,
        si: &[u8; 16],
        shnums: &[u8],
        budget: usize,
    ) -> Result<SlotRead, StoreError> {
        let wanted: Vec<u8> = if shnums.is_empty() {
            self.list(si)?
        } else {
            shnums.to_vec()
        };
        let mut out = Vec::new();
        let mut more = Vec::new();
        let mut used = 0usize;
        for sh in wanted {
            let Some(row) = self.row(si, sh)? else {
                continue;
            };
            if !is_slot_meta(&self.read_meta(si, sh)?) {
                continue;
            }
            let len = row.data_len as usize;
            if !out.is_empty() && used + len > budget {
                more.push(sh);
                continue;
            }
            let (bytes, _) = self.open_share(si, sh)?;
            let buf = bytes.read_vec(0, len)?;
            used += len;
            out.push((sh, buf));
        }
        Ok((out, more))
    }

    /// Test-and-set write of slot shares (see the module docs).
    pub fn slot_write(
        &self,
        si: &[u8; 16],
        owner: &[u8],
        enabler: &[u8; 32],
        writes: &[SlotWrite],
        lease_expiry: u64,
    ) -> Result<SlotOutcome, StoreError> {
        if owner.len() > super::MAX_OWNER_LEN || owner.is_empty() {
            return Err(StoreError::InvalidArgument("bad owner id".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in writes {
            if !seen.insert(w.shnum) {
                return Err(StoreError::InvalidArgument(format!(
                    "share {} written twice",
                    w.shnum
                )));
            }
            if w.data.is_empty() || w.data.len() > crate::mutable::MAX_SHARE_LEN {
                return Err(StoreError::InvalidArgument(format!(
                    "slot share of {} bytes",
                    w.data.len()
                )));
            }
            crate::mutable::peek_seqnum(&w.data)
                .map_err(|e| StoreError::InvalidArgument(format!("not a mutable share: {e}")))?;
        }
        let _guard = super::lock(&self.inner.slot_lock);
        // Test every share before writing any.
        let mut current = Vec::with_capacity(writes.len());
        let mut conflict = false;
        let mut old_rows = Vec::with_capacity(writes.len());
        for w in writes {
            let state = self.slot_state(si, w.shnum)?;
            if let Some((we, _)) = &state
                && !bool::from(we.ct_eq(enabler))
            {
                return Err(StoreError::BadWriteEnabler { shnum: w.shnum });
            }
            let seq = state.map(|(_, s)| s);
            conflict |= seq != w.expect;
            current.push((w.shnum, seq));
            old_rows.push(self.row(si, w.shnum)?);
        }
        if conflict {
            return Ok(SlotOutcome::Conflict(current));
        }
        if self.cfg().read_only {
            return Err(StoreError::ReadOnly);
        }
        let meta = slot_meta(enabler);
        let old_bytes: u64 = old_rows.iter().flatten().map(Row::stored_bytes).sum();
        let new_bytes: u64 = writes
            .iter()
            .map(|w| (w.data.len() + meta.len()) as u64)
            .sum();
        if new_bytes > old_bytes {
            let grow = new_bytes - old_bytes;
            let (used, _) = self.used()?;
            let available = self.cfg().capacity.saturating_sub(used);
            if grow > available {
                return Err(StoreError::OverCapacity {
                    needed: grow,
                    available,
                });
            }
            let free = self.disk_free();
            if free < grow.saturating_add(self.cfg().reserved) {
                return Err(StoreError::DiskReserve {
                    needed: grow,
                    free,
                    reserved: self.cfg().reserved,
                });
            }
        }
        // Files first (temp, fsync, rename), then the index in one transaction.
        for w in writes {
            let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
            let tmp =
                self.cfg()
                    .root
                    .join("incoming")
                    .join(format!("slot.{}.{}.{n}", b32(si), w.shnum));
            write_share_file(&tmp, &w.data, &meta)?;
            let dest = self.share_path(si, w.shnum);
            let parent = dest.parent().map(Path::to_owned).unwrap_or_default();
            fs::create_dir_all(&parent).map_err(io_at(&parent))?;
            if let Err(e) = fs::rename(&tmp, &dest) {
                let _ = fs::remove_file(&tmp);
                return Err(io_at(&dest)(e));
            }
            fsync_dir(&parent)?;
        }
        let tx = self.inner.db.begin_write().map_err(db)?;
        {
            let mut shares = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let mut used_delta: i128 = 0;
            let mut count_delta: u64 = 0;
            for (w, old) in writes.iter().zip(&old_rows) {
                let row = Row {
                    data_len: w.data.len() as u64,
                    meta_len: meta.len() as u64,
                    created: old.map(|o| o.created).unwrap_or_else(now),
                    inline: false,
                };
                shares
                    .insert(share_key(si, w.shnum).as_slice(), row.encode().as_slice())
                    .map_err(db)?;
                // Every lease holder is now charged for the new size.
                let prefix = share_key(si, w.shnum);
                let mut holders = Vec::new();
                for item in leases.range(prefix.as_slice()..).map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    holders.push((k.value()[17..].to_vec(), v.value()));
                }
                if let Some(old) = old {
                    for (holder, expiry) in &holders {
                        account_lease(&tx, holder, old.stored_bytes(), Some(*expiry), None)?;
                        account_lease(&tx, holder, row.stored_bytes(), None, Some(*expiry))?;
                    }
                    used_delta -= i128::from(old.stored_bytes());
                } else {
                    count_delta += 1;
                }
                used_delta += i128::from(row.stored_bytes());
                let k = lease_key(si, w.shnum, owner);
                let old_lease = holders
                    .iter()
                    .find(|(h, _)| h.as_slice() == owner)
                    .map(|(_, e)| *e);
                let new_lease = old_lease.unwrap_or(0).max(lease_expiry);
                leases.insert(k.as_slice(), new_lease).map_err(db)?;
                account_lease(&tx, owner, row.stored_bytes(), old_lease, Some(new_lease))?;
            }
            let mut usage = tx.open_table(USAGE).map_err(db)?;
            let used = usage
                .get("used_bytes")
                .map_err(db)?
                .map(|v| v.value())
                .unwrap_or(0);
            let count = usage
                .get("share_count")
                .map_err(db)?
                .map(|v| v.value())
                .unwrap_or(0);
            let used = u64::try_from((i128::from(used) + used_delta).max(0)).unwrap_or(0);
            usage.insert("used_bytes", used).map_err(db)?;
            usage
                .insert("share_count", count + count_delta)
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(SlotOutcome::Written)
    }
}

fn write_share_file(path: &Path, data: &[u8], meta: &[u8]) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_at(path))?;
    let mut header = Vec::with_capacity(DATA_OFFSET as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    let r = file
        .write_all_at(&header, 0)
        .and_then(|()| file.write_all_at(data, DATA_OFFSET))
        .and_then(|()| file.write_all_at(meta, DATA_OFFSET + data.len() as u64))
        .and_then(|()| file.sync_all());
    if let Err(e) = r {
        let _ = fs::remove_file(path);
        return Err(io_at(path)(e));
    }
    Ok(())
}

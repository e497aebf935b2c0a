//! The share store of a storage server: share bytes in plain files, their index, leases and
//! usage in redb.
//!
//! A share is identified by (storage index, share number). Its file holds a fixed header, the
//! share's data (the concatenated erasure-coded blocks, written by the uploader at byte offsets)
//! and its metadata blob (UEB and hashes, given at close). The store never interprets either: the
//! data is ciphertext and the downloader verifies everything.
//!
//! Crash safety: an upload writes to `incoming/`; [`ShareStore::close`] writes the metadata and
//! header, fsyncs, renames the file into `shares/`, fsyncs the folder, and only then inserts the
//! share row, the uploader's lease and the new usage in **one** redb transaction. [`ShareStore::open`]
//! recovers from a crash at any point: it empties `incoming/`, deletes share files without a row
//! (renamed, never committed), drops rows whose file is missing or of the wrong length, and
//! recomputes usage, so usage always equals the sum of the indexed shares and no half-written
//! share is ever visible.
//!
//! Uploaded share data goes to the disk around the page cache (`O_DIRECT`, whole pages; see
//! `plan_write`) where the file system allows, so receiving a friend's upload costs little CPU
//! and does not push the owner's own files out of the cache.
//!
//! Tables (versioned names, as iroh-blobs): `shares-0` (si ‖ shnum -> data_len, meta_len,
//! created), `leases-0` (si ‖ shnum ‖ owner -> expiry), `usage-0` (`used_bytes`, `share_count`),
//! `store-meta-0` (`schema-version`), `inline-0` (si ‖ shnum -> data ‖ metadata of small shares
//! stored whole by [`ShareStore::put`]: no file, no folder, one transaction).

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const SHARES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("shares-0");
const LEASES: TableDefinition<&[u8], u64> = TableDefinition::new("leases-0");
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage-0");
const STORE_META: TableDefinition<&str, u64> = TableDefinition::new("store-meta-0");
/// Small shares kept in the index itself: si ‖ shnum -> data ‖ metadata.
const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline-0");

/// Shares whose data and metadata together are at most this many bytes, stored whole in one
/// [`ShareStore::put`], live in redb (`inline-0`) instead of a file of their own: no inode,
/// folder, rename or per-file fsync, just the index transaction that would be committed anyway.
pub const INLINE_MAX: u64 = 16 * 1024;
/// A share being written is flushed to the disk and dropped from the page cache every this
/// many bytes.
const WRITE_BEHIND: u64 = 8 << 20;
const SCHEMA_VERSION: u64 = 0;

const MAGIC: &[u8; 8] = b"KITHSHR\0";
const FORMAT_VERSION: u32 = 1;
/// Bytes before a share's data in its file.
pub const DATA_OFFSET: u64 = 8 + 4 + 8 + 8;
/// File offsets and memory of `O_DIRECT` writes are aligned to this (the page size; block
/// devices want at most their logical block size, 512 or 4096).
const DIRECT_ALIGN: usize = crate::protocol::BULK_ALIGN;
/// A thread keeps its aligned copy for `O_DIRECT` writes up to this size (a block of 1 MiB
/// segments at k = 1, with room); larger writes use a copy of their own.
const DIRECT_SCRATCH_KEEP: usize = (1 << 20) + 2 * DIRECT_ALIGN;
/// Writes whose whole aligned pages come to less than this go through the page cache alone:
/// an `O_DIRECT` write waits for the disk, worth it for a block, not for a few pages.
const DIRECT_MIN: usize = 64 << 10;

/// The bytes at the end of a share's last write that did not fill a page: kept until the next
/// write continues them, so the page they start goes out whole with it (see [`plan_write`]).
#[derive(Debug)]
struct Carry {
    /// File offset, a multiple of [`DIRECT_ALIGN`].
    at: u64,
    /// Fewer than [`DIRECT_ALIGN`] bytes.
    bytes: Vec<u8>,
}

/// A share's file opened with `O_DIRECT`, and its [`Carry`]; the lock is held for a whole
/// write, so one share's writes land one after another.
#[derive(Debug)]
struct DirectFile {
    file: File,
    carry: Mutex<Option<Carry>>,
}

/// Writes `prefix` then `pages` at `at` through `direct` (`O_DIRECT`) from this thread's
/// aligned copy of them.
fn write_aligned_copy(direct: &File, at: u64, prefix: &[u8], pages: &[u8]) -> io::Result<()> {
    thread_local! {
        /// This thread's aligned copy of the pages it writes (a blocking-pool thread's, freed
        /// when the pool retires the thread).
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let len = prefix.len() + pages.len();
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < len + DIRECT_ALIGN {
            *scratch = vec![0; len + DIRECT_ALIGN];
        }
        // (`align_offset` cannot fail for bytes; were it to, the write would be refused.)
        let skew = scratch
            .as_ptr()
            .align_offset(DIRECT_ALIGN)
            .min(DIRECT_ALIGN);
        let aligned = &mut scratch[skew..skew + len];
        aligned[..prefix.len()].copy_from_slice(prefix);
        aligned[prefix.len()..].copy_from_slice(pages);
        let written = direct.write_all_at(aligned, at);
        if scratch.len() > DIRECT_SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        written
    })
}

/// The file range a write of `len` bytes at file offset `pos` sends with `O_DIRECT`, whole
/// [`DIRECT_ALIGN`] pages, given the carry (`(at, len)`) of the share's last write. A range
/// starting before `pos` starts with the carry's page (carry, then this write's first bytes):
/// the write continues it. What comes before the range goes through the page cache, what comes
/// after becomes the new carry. Empty: all through the page cache.
/// So a page is written whole by `O_DIRECT` or in part through the page cache, never both by
/// one write, and the kernel keeps the two coherent across writes (an `O_DIRECT` write
/// flushes and drops cached pages in its range; a cached write reads a page the disk has).
fn plan_write(pos: u64, len: usize, carry: Option<(u64, usize)>) -> std::ops::Range<u64> {
    let align = DIRECT_ALIGN as u64;
    let end = pos.saturating_add(len as u64) / align * align;
    let start = match carry {
        Some((at, n)) if at.checked_add(n as u64) == Some(pos) && at % align == 0 => Some(at),
        _ => pos.checked_next_multiple_of(align),
    };
    match start {
        Some(start) if end >= start.saturating_add(DIRECT_MIN as u64) => start..end,
        _ => 0..0,
    }
}

/// `path` opened for writing with `O_DIRECT`, or `None` where the system refuses it.
fn open_direct(path: &Path) -> Option<File> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(File::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = path;
        None
    }
}

/// Largest share data accepted.
pub const MAX_DATA_LEN: u64 = 64 << 30;
/// Largest metadata blob accepted.
pub const MAX_META_LEN: usize = 8 << 20;
/// Largest single read.
pub const MAX_READ_LEN: u32 = 16 << 20;
/// Largest owner id (a peer id is 38 bytes).
pub const MAX_OWNER_LEN: usize = 64;

/// Store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The node dir's `storage/` folder.
    pub root: PathBuf,
    /// Most bytes (data + metadata) stored.
    pub capacity: u64,
    /// Disk space always left free.
    pub reserved: u64,
    /// Refuse writes.
    pub read_only: bool,
    /// Write the bulk of uploaded share data with `O_DIRECT`, around the page cache (see
    /// `plan_write`); off, or where the file system refuses it, everything goes through
    /// the page cache.
    pub direct_io: bool,
}

/// Store errors; the server maps them to typed protocol errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configured capacity would be exceeded.
    #[error("storage capacity exceeded: {needed} bytes needed, {available} available")]
    OverCapacity {
        /// Bytes asked for.
        needed: u64,
        /// Bytes left under the capacity.
        available: u64,
    },
    /// The disk would drop below its reserve.
    #[error("disk reserve reached: {needed} bytes needed, {free} free, {reserved} reserved")]
    DiskReserve {
        /// Bytes asked for.
        needed: u64,
        /// Free disk space.
        free: u64,
        /// Reserve.
        reserved: u64,
    },
    /// The store is read-only.
    #[error("this storage server is read-only")]
    ReadOnly,
    /// No such share.
    #[error("share {shnum} not found")]
    NotFound {
        /// The share.
        shnum: u8,
    },
    /// Write or close without an allocation by this owner.
    #[error("share {shnum} is not allocated to this uploader")]
    NotAllocated {
        /// The share.
        shnum: u8,
    },
    /// A byte range outside the share.
    #[error("range at offset {offset} (+{len}) is outside the share's {data_len} bytes")]
    OutOfBounds {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Share data length.
        data_len: u64,
    },
    /// The accounting tables refused an update (a bug or a corrupt row).
    #[error("accounting: {0}")]
    Accounting(String),
    /// An argument beyond the limits.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A share file failed its own consistency check.
    #[error("share file {} is corrupt: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// File system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// redb error.
    #[error("share index: {0}")]
    Db(#[from] redb::Error),
    /// A slot write whose write enabler does not match the slot's.
    #[error("share {shnum}: bad write enabler (this cap cannot write the slot)")]
    BadWriteEnabler {
        /// The share.
        shnum: u8,
    },
    /// A mutable-slot operation on an immutable share.
    #[error("share {shnum} is not a mutable slot share")]
    NotASlot {
        /// The share.
        shnum: u8,
    },
    /// The commit that carried this put together with others failed (the leader's error).
    #[error("share index (batched commit): {0}")]
    Batch(String),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

fn acct(e: kith_accounting::store::StoreError) -> StoreError {
    StoreError::Accounting(e.to_string())
}

/// The accounting identity of a lease owner (owners are peer ids; kith peer ids are ed25519).
pub fn account_of(owner: &[u8]) -> Option<kith_accounting::AccountId> {
    libp2p::PeerId::from_bytes(owner)
        .ok()
        .and_then(|p| crate::grid::pk_of(&p))
}

/// Records a lease change of `owner` in the accounting tables, inside the lease's transaction.
fn account_lease(
    tx: &redb::WriteTransaction,
    owner: &[u8],
    bytes: u64,
    old_expiry: Option<u64>,
    new_expiry: Option<u64>,
) -> Result<(), StoreError> {
    use kith_accounting::Event;
    let Some(who) = account_of(owner) else {
        return Ok(());
    };
    let event = match (old_expiry, new_expiry) {
        (None, Some(expiry)) => Event::LeaseAdded {
            who,
            bytes,
            shares: 1,
            expiry,
        },
        (Some(expiry), None) => Event::LeaseRemoved {
            who,
            bytes,
            shares: 1,
            expiry,
        },
        (Some(from), Some(to)) if from != to => Event::LeaseRenewed {
            who,
            bytes,
            shares: 1,
            from,
            to,
        },
        _ => return Ok(()),
    };
    kith_accounting::store::apply(tx, &event).map_err(acct)
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Result of an allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Already stored here; the owner's lease was added or renewed.
    pub already_have: Vec<u8>,
    /// Reserved for the owner to write.
    pub allocated: Vec<u8>,
    /// Being uploaded right now by another allocation.
    pub in_progress: Vec<u8>,
}

/// What one step of the garbage collector did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectReport {
    /// Leases looked at.
    pub leases_scanned: u64,
    /// Leases removed (expired, or of an account whose revocation grace ended).
    pub leases_removed: u64,
    /// Shares removed (no lease left).
    pub shares_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

impl CollectReport {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &CollectReport) {
        self.leases_scanned += other.leases_scanned;
        self.leases_removed += other.leases_removed;
        self.shares_removed += other.shares_removed;
        self.bytes_freed += other.bytes_freed;
    }
}

/// Space accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of stored shares (data + metadata).
    pub used_bytes: u64,
    /// Stored shares.
    pub share_count: u64,
    /// Configured capacity.
    pub capacity: u64,
    /// Configured reserve.
    pub reserved: u64,
    /// Free disk space.
    pub disk_free: u64,
    /// Bytes reserved by uploads in progress.
    pub in_flight_bytes: u64,
}

/// What [`ShareStore::open`] repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished uploads removed from `incoming/`.
    pub incoming_removed: usize,
    /// Share files without an index row, removed.
    pub orphan_files_removed: usize,
    /// Index rows without a valid file, removed.
    pub rows_removed: usize,
    /// Whether the usage counters had to be corrected.
    pub usage_fixed: bool,
}

/// Problems found by [`ShareStore::verify_consistency`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// Descriptions of every problem.
    pub problems: Vec<String>,
    /// Shares checked.
    pub shares_checked: u64,
}

impl ConsistencyReport {
    /// No problems.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug)]
struct InFlight {
    owner: Vec<u8>,
    data_len: u64,
    lease_expiry: u64,
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT` (see [`plan_write`]), if the file system takes it.
    direct: Option<Arc<DirectFile>>,
    /// Bytes written through the page cache since its pages were last flushed and dropped (see
    /// `write`).
    unflushed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<redb::Database>,
    cfg: StoreConfig,
    inflight: Mutex<BTreeMap<([u8; 16], u8), InFlight>>,
    counter: AtomicU64,
    recovery: RecoveryReport,
    slot_lock: Mutex<()>,
    /// Inline puts waiting for the next commit ([`ShareStore::put_many`]).
    put_queue: Mutex<Vec<PutJob>>,
    /// Held by whoever commits the queued puts.
    put_commit: Mutex<()>,
    /// Commits that stored inline puts, and the puts they carried.
    put_batches: AtomicU64,
    put_jobs: AtomicU64,
    write_behind_flushes: AtomicU64,
    /// Share bytes written with `O_DIRECT`, and those of them that went from an aligned copy.
    direct_bytes: AtomicU64,
    direct_copied: AtomicU64,
    /// Share data bytes read for downloaders (blocks, not metadata).
    read_bytes: AtomicU64,
    /// The file system refused an `O_DIRECT` write: later shares go through the page cache.
    direct_refused: AtomicBool,
}

/// One inline put waiting for a commit.
#[derive(Debug)]
struct PutJob {
    si: [u8; 16],
    owner: Vec<u8>,
    shares: Vec<(u8, Vec<u8>, Vec<u8>)>,
    lease_expiry: u64,
    reply: std::sync::mpsc::SyncSender<Result<Allocation, StoreError>>,
}

/// The share store (cheap to clone; blocking methods, run them off the async runtime).
#[derive(Clone, Debug)]
pub struct ShareStore {
    inner: Arc<Inner>,
}

/// Locks `m`, taking over a lock poisoned by a panicked holder (the guarded data is always
/// left consistent: the index itself lives in redb transactions).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn share_key(si: &[u8; 16], shnum: u8) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(si);
    k[16] = shnum;
    k
}

fn lease_key(si: &[u8; 16], shnum: u8, owner: &[u8]) -> Vec<u8> {
    let mut k = share_key(si, shnum).to_vec();
    k.extend_from_slice(owner);
    k
}

#[derive(Clone, Copy, Debug)]
struct Row {
    data_len: u64,
    meta_len: u64,
    created: u64,
    /// The bytes are in `inline-0`, not in a file.
    inline: bool,
}

impl Row {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(25);
        b.extend_from_slice(&self.data_len.to_le_bytes());
        b.extend_from_slice(&self.meta_len.to_le_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        if self.inline {
            b.push(1);
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Row> {
        let f = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        Some(Row {
            data_len: f(0)?,
            meta_len: f(8)?,
            created: f(16)?,
            inline: b.get(24) == Some(&1),
        })
    }

    fn stored_bytes(&self) -> u64 {
        self.data_len + self.meta_len
    }

    fn file_len(&self) -> u64 {
        DATA_OFFSET + self.data_len + self.meta_len
    }
}

/// Where a stored share's bytes are: its own file, or inline in the index.
enum ShareBytes {
    File(File, PathBuf),
    Inline(Vec<u8>),
}

impl ShareBytes {
    /// Reads `len` bytes at `offset` of the share's data ‖ metadata into a buffer from the
    /// block pool, which goes back to the pool once the answer is on the network: a
    /// download's blocks are read here, and fresh buffers cost a serving node malloc, page
    /// faults and zeroed pages per block (a memset of each was 5% of its CPU once).
    fn read_vec(self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        match self {
            ShareBytes::File(mut f, path) => {
                let mut buf = crate::protocol::take_bulk(len);
                f.seek(SeekFrom::Start(DATA_OFFSET + offset))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(io_at(&path))?;
                Ok(buf)
            }
            ShareBytes::Inline(b) => usize::try_from(offset)
                .ok()
                .and_then(|o| b.get(o..o.checked_add(len)?))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| StoreError::InvalidArgument("read past the share".into())),
        }
    }
}

fn b32(si: &[u8; 16]) -> String {
    data_encoding::BASE32_NOPAD.encode(si).to_ascii_lowercase()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One share of a put: (share number, data, metadata).
pub type PutShareRef<'a> = (u8, &'a [u8], &'a [u8]);

/// One put of [`ShareStore::put_many`]: a file's storage index and its shares for this server.
pub type PutRef<'a> = ([u8; 16], &'a [PutShareRef<'a>]);

/// Checks one put's shares: `None` when there are none, else their common data length and
/// whether every share is small enough to live in the index (see [`ShareStore::put_many`]).
fn check_put(owner: &[u8], shares: &[PutShareRef<'_>]) -> Result<Option<(u64, bool)>, StoreError> {
    let Some(&(_, first, _)) = shares.first() else {
        return Ok(None);
    };
    let data_len = first.len() as u64;
    if shares.iter().any(|(_, d, _)| d.len() as u64 != data_len) {
        return Err(StoreError::InvalidArgument(
            "the shares of one put differ in length".into(),
        ));
    }
    if let Some((_, _, m)) = shares.iter().find(|(_, _, m)| m.len() > MAX_META_LEN) {
        return Err(StoreError::InvalidArgument(format!(
            "metadata of {} bytes",
            m.len()
        )));
    }
    let inline = shares
        .iter()
        .all(|(_, d, m)| (d.len() + m.len()) as u64 <= INLINE_MAX);
    if inline && (owner.len() > MAX_OWNER_LEN || owner.is_empty()) {
        return Err(StoreError::InvalidArgument("bad owner id".into()));
    }
    Ok(Some((data_len, inline)))
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_at(path))
}

impl ShareStore {
    /// Opens (creating folders and tables) and recovers from any crash.
    pub fn open(database: Arc<redb::Database>, cfg: StoreConfig) -> Result<Self, StoreError> {
        for d in [cfg.root.join("shares"), cfg.root.join("incoming")] {
            fs::create_dir_all(&d).map_err(io_at(&d))?;
        }
        {
            let tx = database.begin_write().map_err(db)?;
            {
                tx.open_table(SHARES).map_err(db)?;
                tx.open_table(LEASES).map_err(db)?;
                tx.open_table(USAGE).map_err(db)?;
                tx.open_table(INLINE).map_err(db)?;
                kith_accounting::store::init(&tx).map_err(acct)?;
                let mut meta = tx.open_table(STORE_META).map_err(db)?;
                let version = meta.get("schema-version").map_err(db)?.map(|v| v.value());
                match version {
                    None => {
                        meta.insert("schema-version", SCHEMA_VERSION).map_err(db)?;
                    }
                    Some(SCHEMA_VERSION) => {}
                    Some(v) => {
                        return Err(StoreError::InvalidArgument(format!(
                            "share index schema version {v} is newer than this kith understands ({SCHEMA_VERSION})"
                        )));
                    }
                }
            }
            tx.commit().map_err(db)?;
        }
        let mut store = ShareStore {
            inner: Arc::new(Inner {
                db: database,
                cfg,
                inflight: Mutex::new(BTreeMap::new()),
                counter: AtomicU64::new(0),
                recovery: RecoveryReport::default(),
                slot_lock: Mutex::new(()),
                put_queue: Mutex::new(Vec::new()),
                put_commit: Mutex::new(()),
                put_batches: AtomicU64::new(0),
                write_behind_flushes: AtomicU64::new(0),
                direct_bytes: AtomicU64::new(0),
                direct_copied: AtomicU64::new(0),
                read_bytes: AtomicU64::new(0),
                direct_refused: AtomicBool::new(false),
                put_jobs: AtomicU64::new(0),
            }),
        };
        let report = store.recover()?;
        store.account_existing_leases()?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.recovery = report;
        }
        Ok(store)
    }

    /// Charges leases made before accounting existed to their owners (once per store).
    fn account_existing_leases(&self) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write().map_err(db)?;
        {
            let mut meta = tx.open_table(STORE_META).map_err(db)?;
            if meta.get("accounting").map_err(db)?.is_some() {
                return Ok(());
            }
            meta.insert("accounting", 1).map_err(db)?;
            let shares = tx.open_table(SHARES).map_err(db)?;
            let leases = tx.open_table(LEASES).map_err(db)?;
            let mut all = Vec::new();
            for item in leases.iter().map_err(db)? {
                let (k, v) = item.map_err(db)?;
                let k = k.value();
                if k.len() > 17 {
                    all.push((k[..17].to_vec(), k[17..].to_vec(), v.value()));
                }
            }
            for (share, owner, expiry) in all {
                if let Some(row) = shares
                    .get(share.as_slice())
                    .map_err(db)?
                    .and_then(|v| Row::decode(v.value()))
                {
                    account_lease(&tx, &owner, row.stored_bytes(), None, Some(expiry))?;
                }
            }
        }
        tx.commit().map_err(db)
    }

    /// One bounded step of the garbage collector: looks at up to `budget` leases after
    /// `cursor` (key order), removes those that expired before `now` or belong to an account
    /// in `gone` (revoked, grace over), and deletes shares left without a lease. Lease
    /// removals, their accounting and the share rows change in one transaction; files are
    /// deleted after it commits (a crash in between leaves files without a row, which
    /// [`open`](Self::open) removes). Returns the report and the cursor to continue from
    /// (`None`: the whole table was scanned).
    pub fn collect_step(
        &self,
        now: u64,
        gone: &std::collections::BTreeSet<kith_accounting::AccountId>,
        cursor: Option<Vec<u8>>,
        budget: usize,
    ) -> Result<(CollectReport, Option<Vec<u8>>), StoreError> {
        let mut report = CollectReport::default();
        let mut files = Vec::new();
        let tx = self.inner.db.begin_write().map_err(db)?;
        let next = {
            let mut shares = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            {
                let range = match &cursor {
                    Some(c) => leases.range::<&[u8]>((
                        std::ops::Bound::Excluded(c.as_slice()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => leases.range::<&[u8]>(..),
                }
                .map_err(db)?;
                for item in range.take(budget) {
                    let (k, v) = item.map_err(db)?;
                    let k = k.value().to_vec();
                    report.leases_scanned += 1;
                    let expired = v.value() < now;
                    let revoked =
                        k.len() > 17 && account_of(&k[17..]).is_some_and(|a| gone.contains(&a));
                    if expired || revoked {
                        doomed.push((k.clone(), v.value()));
                    }
                    last = Some(k);
                }
            }
            let mut touched = std::collections::BTreeSet::new();
            for (k, expiry) in &doomed {
                let (share, owner) = k.split_at(17);
                let Some(row) = shares
                    .get(share)
                    .map_err(db)?
                    .and_then(|v| Row::decode(v.value()))
                else {
                    leases.remove(k.as_slice()).map_err(db)?;
                    continue;
                };
                leases.remove(k.as_slice()).map_err(db)?;
                account_lease(&tx, owner, row.stored_bytes(), Some(*expiry), None)?;
                report.leases_removed += 1;
                touched.insert(share.to_vec());
            }
            let mut freed_bytes = 0u64;
            let mut freed_shares = 0u64;
            for share in touched {
                let still_leased = leases
                    .range(share.as_slice()..)
                    .map_err(db)?
                    .next()
                    .transpose()
                    .map_err(db)?
                    .is_some_and(|(k, _)| k.value().starts_with(&share));
                if still_leased {
                    continue;
                }
                if let Some(row) = shares
                    .remove(share.as_slice())
                    .map_err(db)?
                    .and_then(|v| Row::decode(v.value()))
                {
                    if row.inline {
                        tx.open_table(INLINE)
                            .map_err(db)?
                            .remove(share.as_slice())
                            .map_err(db)?;
                    } else {
                        let mut si = [0u8; 16];
                        si.copy_from_slice(&share[..16]);
                        files.push(self.share_path(&si, share[16]));
                    }
                    freed_bytes += row.stored_bytes();
                    freed_shares += 1;
                }
            }
            if freed_shares > 0 {
                let mut usage = tx.open_table(USAGE).map_err(db)?;
                let used = usage
                    .get("used_bytes")
                    .map_err(db)?
                    .map_or(0, |v| v.value());
                let count = usage
                    .get("share_count")
                    .map_err(db)?
                    .map_or(0, |v| v.value());
                usage
                    .insert("used_bytes", used.saturating_sub(freed_bytes))
                    .map_err(db)?;
                usage
                    .insert("share_count", count.saturating_sub(freed_shares))
                    .map_err(db)?;
            }
            report.shares_removed = freed_shares;
            report.bytes_freed = freed_bytes;
            if report.leases_scanned < budget as u64 {
                None
            } else {
                last
            }
        };
        tx.commit().map_err(db)?;
        for f in files {
            let _ = fs::remove_file(&f);
        }
        Ok((report, next))
    }

    /// Bytes `owner` has allocated and not yet closed.
    pub fn inflight_bytes(&self, owner: &[u8]) -> u64 {
        self.inflight()
            .values()
            .filter(|f| f.owner == owner)
            .map(|f| f.data_len)
            .sum()
    }

    /// Whether `owner` may add `new_bytes` (plus what it has in flight), by the accounting
    /// ledger's grant, quota and revocation state.
    pub fn check_write(
        &self,
        owner: &[u8],
        new_bytes: u64,
        now: u64,
    ) -> Result<Result<(), kith_accounting::Refusal>, StoreError> {
        let Some(who) = account_of(owner) else {
            return Ok(Ok(()));
        };
        let pending = if new_bytes > 0 {
            self.inflight_bytes(owner)
        } else {
            0
        };
        let tx = self.inner.db.begin_read().map_err(db)?;
        kith_accounting::store::check_write(&tx, &who, new_bytes.saturating_add(pending), now)
            .map_err(acct)
    }

    /// The database (for the accounting tables that live next to the share index).
    pub fn database(&self) -> &Arc<redb::Database> {
        &self.inner.db
    }

    /// What [`open`](Self::open) repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    fn cfg(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, BTreeMap<([u8; 16], u8), InFlight>> {
        lock(&self.inner.inflight)
    }

    /// Where a complete share lives.
    pub fn share_path(&self, si: &[u8; 16], shnum: u8) -> PathBuf {
        let s = b32(si);
        self.cfg()
            .root
            .join("shares")
            .join(&s[..2])
            .join(&s)
            .join(shnum.to_string())
    }

    fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let incoming = self.cfg().root.join("incoming");
        for e in fs::read_dir(&incoming).map_err(io_at(&incoming))?.flatten() {
            let p = e.path();
            if fs::remove_file(&p).is_ok() {
                report.incoming_removed += 1;
            }
        }
        // Rows whose file is missing or has the wrong length.
        let rows = self.rows()?;
        let mut bad_rows = Vec::new();
        let inline_lens = self.inline_lens()?;
        for (si, shnum, row) in &rows {
            let ok = if row.inline {
                inline_lens.get(&share_key(si, *shnum)) == Some(&row.stored_bytes())
            } else {
                let p = self.share_path(si, *shnum);
                fs::metadata(&p)
                    .map(|m| m.len() == row.file_len())
                    .unwrap_or(false)
            };
            if !ok {
                bad_rows.push((*si, *shnum));
            }
        }
        // Files without a row.
        let shares_dir = self.cfg().root.join("shares");
        let indexed: std::collections::BTreeSet<PathBuf> = rows
            .iter()
            .filter(|(_, _, row)| !row.inline)
            .map(|(si, sh, _)| self.share_path(si, *sh))
            .collect();
        let mut stack = vec![shares_dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !indexed.contains(&p) {
                    tracing::warn!(path = %p.display(), "removing share file that was never indexed");
                    if fs::remove_file(&p).is_ok() {
                        report.orphan_files_removed += 1;
                    }
                }
            }
        }
        let tx = self.inner.db.begin_write().map_err(db)?;
        {
            let mut shares = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let mut inline = tx.open_table(INLINE).map_err(db)?;
            // Inline bytes without a row (none are written without one; kept honest anyway).
            let rowless: Vec<[u8; 17]> = inline_lens
                .keys()
                .filter(|k| shares.get(k.as_slice()).ok().flatten().is_none())
                .copied()
                .collect();
            for k in rowless {
                inline.remove(k.as_slice()).map_err(db)?;
            }
            for (si, shnum) in &bad_rows {
                inline
                    .remove(share_key(si, *shnum).as_slice())
                    .map_err(db)?;
                tracing::warn!(
                    shnum,
                    "removing index row of a missing or truncated share file"
                );
                let removed = shares
                    .remove(share_key(si, *shnum).as_slice())
                    .map_err(db)?
                    .and_then(|v| Row::decode(v.value()));
                let prefix = share_key(si, *shnum);
                let mut gone = Vec::new();
                for item in leases.range(prefix.as_slice()..).map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    gone.push((k.value()[17..].to_vec(), v.value()));
                }
                leases.retain(|k, _| !k.starts_with(&prefix)).map_err(db)?;
                if let Some(row) = removed {
                    for (owner, expiry) in gone {
                        account_lease(&tx, &owner, row.stored_bytes(), Some(expiry), None)?;
                    }
                }
                let _ = fs::remove_file(self.share_path(si, *shnum));
                report.rows_removed += 1;
            }
            let mut used = 0u64;
            let mut count = 0u64;
            for item in shares.iter().map_err(db)? {
                let (_, v) = item.map_err(db)?;
                if let Some(row) = Row::decode(v.value()) {
                    used += row.stored_bytes();
                    count += 1;
                }
            }
            let mut usage = tx.open_table(USAGE).map_err(db)?;
            let old_used = usage.get("used_bytes").map_err(db)?.map(|v| v.value());
            let old_count = usage.get("share_count").map_err(db)?.map(|v| v.value());
            if old_used != Some(used) || old_count != Some(count) {
                report.usage_fixed = old_used.is_some();
                usage.insert("used_bytes", used).map_err(db)?;
                usage.insert("share_count", count).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        if report != RecoveryReport::default() {
            tracing::warn!(?report, "share store recovered from an unclean stop");
        }
        Ok(report)
    }

    fn rows(&self) -> Result<Vec<([u8; 16], u8, Row)>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(SHARES).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let k = k.value();
            if k.len() != 17 {
                continue;
            }
            let mut si = [0u8; 16];
            si.copy_from_slice(&k[..16]);
            if let Some(row) = Row::decode(v.value()) {
                out.push((si, k[16], row));
            }
        }
        Ok(out)
    }

    /// Length of every inline share's bytes, by share key.
    fn inline_lens(&self) -> Result<BTreeMap<[u8; 17], u64>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(INLINE).map_err(db)?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            if let Ok(k) = <[u8; 17]>::try_from(k.value()) {
                out.insert(k, v.value().len() as u64);
            }
        }
        Ok(out)
    }

    fn row(&self, si: &[u8; 16], shnum: u8) -> Result<Option<Row>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(SHARES).map_err(db)?;
        let v = t.get(share_key(si, shnum).as_slice()).map_err(db)?;
        Ok(v.and_then(|v| Row::decode(v.value())))
    }

    fn disk_free(&self) -> u64 {
        rustix::fs::statvfs(&self.cfg().root)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0)
    }

    fn used(&self) -> Result<(u64, u64), StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(USAGE).map_err(db)?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(t.get(k).map_err(db)?.map(|v| v.value()).unwrap_or(0))
        };
        Ok((get("used_bytes")?, get("share_count")?))
    }

    /// Reserves space for `shnums` of `si` for `owner`; adds the owner's lease to shares already
    /// stored.
    pub fn allocate(
        &self,
        si: &[u8; 16],
        owner: &[u8],
        shnums: &[u8],
        data_len: u64,
        lease_expiry: u64,
    ) -> Result<Allocation, StoreError> {
        if owner.len() > MAX_OWNER_LEN || owner.is_empty() {
            return Err(StoreError::InvalidArgument("bad owner id".into()));
        }
        if data_len == 0 || data_len > MAX_DATA_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "share length {data_len}"
            )));
        }
        let mut want: Vec<u8> = shnums.to_vec();
        want.sort_unstable();
        want.dedup();
        let mut alloc = Allocation::default();
        let mut new = Vec::new();
        {
            let inflight = self.inflight();
            for &sh in &want {
                if self.row(si, sh)?.is_some() {
                    alloc.already_have.push(sh);
                } else if let Some(f) = inflight.get(&(*si, sh)) {
                    if f.owner == owner {
                        alloc.allocated.push(sh);
                    } else {
                        alloc.in_progress.push(sh);
                    }
                } else {
                    new.push(sh);
                }
            }
        }
        if !alloc.already_have.is_empty() {
            self.add_leases(si, &alloc.already_have, owner, lease_expiry)?;
        }
        if new.is_empty() {
            return Ok(alloc);
        }
        if self.cfg().read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut inflight = self.inflight();
        let in_flight: u64 = inflight.values().map(|f| f.data_len).sum();
        let (used, _) = self.used()?;
        let needed = data_len.saturating_mul(new.len() as u64);
        let available = self
            .cfg()
            .capacity
            .saturating_sub(used)
            .saturating_sub(in_flight);
        if needed > available {
            return Err(StoreError::OverCapacity { needed, available });
        }
        let free = self.disk_free();
        if free.saturating_sub(in_flight) < needed.saturating_add(self.cfg().reserved) {
            return Err(StoreError::DiskReserve {
                needed,
                free,
                reserved: self.cfg().reserved,
            });
        }
        for sh in new {
            let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
            let path = self
                .cfg()
                .root
                .join("incoming")
                .join(format!("{}.{sh}.{n}", b32(si)));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_at(&path))?;
            let direct = (self.cfg().direct_io
                && !self.inner.direct_refused.load(Ordering::Relaxed))
            .then(|| open_direct(&path))
            .flatten()
            .map(|file| {
                Arc::new(DirectFile {
                    file,
                    carry: Mutex::new(None),
                })
            });
            inflight.insert(
                (*si, sh),
                InFlight {
                    owner: owner.to_vec(),
                    data_len,
                    lease_expiry,
                    path,
                    file,
                    direct,
                    unflushed: Arc::default(),
                },
            );
            alloc.allocated.push(sh);
        }
        alloc.allocated.sort_unstable();
        Ok(alloc)
    }

    /// Writes bytes of an allocated share.
    pub fn write(
        &self,
        si: &[u8; 16],
        shnum: u8,
        owner: &[u8],
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let inflight = self.inflight();
        let f = inflight
            .get(&(*si, shnum))
            .filter(|f| f.owner == owner)
            .ok_or(StoreError::NotAllocated { shnum })?;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > f.data_len) {
            return Err(StoreError::OutOfBounds {
                offset,
                len: data.len() as u64,
                data_len: f.data_len,
            });
        }
        let file = f.file.try_clone().map_err(io_at(&f.path))?;
        let direct = f.direct.clone();
        let path = f.path.clone();
        let unflushed = f.unflushed.clone();
        drop(inflight);
        let pos = DATA_OFFSET + offset;
        let cached = match direct {
            Some(direct) => self.write_around_cache(&file, &direct, pos, data, &path)?,
            None => {
                file.write_all_at(data, pos).map_err(io_at(&path))?;
                data.len()
            }
        };
        // Write-behind: a share is written once and read rarely, so every WRITE_BEHIND bytes
        // that went through the page cache go to the disk and out of it. Dirty pages stay
        // bounded, a friend's upload does not push the owner's own files out of the cache,
        // `close` has little left to fsync, and the kernel recycles the same pages instead of
        // taking fresh ones for every block (measured: 2 GB written in 1 MiB pieces took 2.5 s
        // of system time without this and 0.6 s with it). With `O_DIRECT` only the pages at
        // the edges of each write come this way.
        let pending = unflushed.fetch_add(cached as u64, Ordering::Relaxed) + cached as u64;
        if pending >= WRITE_BEHIND && unflushed.swap(0, Ordering::Relaxed) >= WRITE_BEHIND {
            rustix::fs::fdatasync(&file).map_err(|e| io_at(&path)(e.into()))?;
            // Advice only: a file system that ignores it loses nothing.
            #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            self.inner
                .write_behind_flushes
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Finishes a share: metadata, header, fsync, rename, then the index transaction.
    pub fn close(
        &self,
        si: &[u8; 16],
        shnum: u8,
        owner: &[u8],
        meta: &[u8],
    ) -> Result<(), StoreError> {
        if meta.len() > MAX_META_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "metadata of {} bytes",
                meta.len()
            )));
        }
        let f = {
            let mut inflight = self.inflight();
            match inflight.get(&(*si, shnum)) {
                Some(f) if f.owner == owner => inflight.remove(&(*si, shnum)),
                _ => None,
            }
        }
        .ok_or(StoreError::NotAllocated { shnum })?;
        let result = self.finish_file(si, shnum, &f, meta);
        if result.is_err() {
            let _ = fs::remove_file(&f.path);
        }
        result
    }

    fn finish_file(
        &self,
        si: &[u8; 16],
        shnum: u8,
        f: &InFlight,
        meta: &[u8],
    ) -> Result<(), StoreError> {
        Self::flush_carry(f)?;
        let mut header = Vec::with_capacity(DATA_OFFSET as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&f.data_len.to_le_bytes());
        header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        let io = io_at(&f.path);
        f.file
            .write_all_at(meta, DATA_OFFSET + f.data_len)
            .map_err(io)?;
        f.file.write_all_at(&header, 0).map_err(io_at(&f.path))?;
        f.file
            .set_len(DATA_OFFSET + f.data_len + meta.len() as u64)
            .map_err(io_at(&f.path))?;
        f.file.sync_all().map_err(io_at(&f.path))?;
        let dest = self.share_path(si, shnum);
        let parent = dest.parent().map(Path::to_owned).unwrap_or_default();
        fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        fs::rename(&f.path, &dest).map_err(io_at(&dest))?;
        fsync_dir(&parent)?;
        let row = Row {
            data_len: f.data_len,
            meta_len: meta.len() as u64,
            created: now(),
            inline: false,
        };
        let tx = self.inner.db.begin_write().map_err(db)?;
        {
            let mut shares = tx.open_table(SHARES).map_err(db)?;
            let existed = shares
                .insert(share_key(si, shnum).as_slice(), row.encode().as_slice())
                .map_err(db)?
                .and_then(|old| Row::decode(old.value()));
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let old_lease = leases
                .insert(lease_key(si, shnum, &f.owner).as_slice(), f.lease_expiry)
                .map_err(db)?
                .map(|v| v.value());
            account_lease(
                &tx,
                &f.owner,
                row.stored_bytes(),
                old_lease,
                Some(f.lease_expiry),
            )?;
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
            let (used, count) = match existed {
                Some(old) => (
                    used - old.stored_bytes().min(used) + row.stored_bytes(),
                    count,
                ),
                None => (used + row.stored_bytes(), count + 1),
            };
            usage.insert("used_bytes", used).map_err(db)?;
            usage.insert("share_count", count).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Stores whole shares at once (a small file's, in one round trip): allocates, writes and
    /// closes each; shares already held get `owner`'s lease, shares someone else is uploading
    /// are left alone. `shares` are (share number, data, metadata), every data of one length.
    pub fn put(
        &self,
        si: &[u8; 16],
        owner: &[u8],
        shares: &[PutShareRef<'_>],
        lease_expiry: u64,
    ) -> Result<Allocation, StoreError> {
        self.put_many(owner, &[(*si, shares)], lease_expiry)
            .pop()
            .unwrap_or_else(|| Ok(Allocation::default()))
    }

    /// Several [`put`](Self::put)s of one owner, each answered on its own, in order.
    ///
    /// Puts whose shares are small enough to live in the index are stored by one transaction
    /// that checks what is held, adds leases, stores the new shares' bytes and rows and charges
    /// usage. A share someone is streaming into `incoming/` right now is left to them. When the
    /// new shares do not fit (read-only, capacity, disk reserve) the leases on held shares are
    /// still committed, as [`allocate`](Self::allocate) does, and the refusal returned.
    ///
    /// Group commit: inline puts that arrive while another commit is running queue up (all of
    /// one call together), and the next caller to take the commit lock stores the whole queue
    /// in one transaction (one fsync instead of one per put). Each put still gets its own
    /// answer; a refusal of one does not affect the others. Puts too large for the index are
    /// stored as files, one after another.
    pub fn put_many(
        &self,
        owner: &[u8],
        puts: &[PutRef<'_>],
        lease_expiry: u64,
    ) -> Vec<Result<Allocation, StoreError>> {
        let mut out: Vec<Option<Result<Allocation, StoreError>>> =
            (0..puts.len()).map(|_| None).collect();
        let mut jobs = Vec::new();
        let mut waits = Vec::new();
        for (i, (si, shares)) in puts.iter().enumerate() {
            match check_put(owner, shares) {
                Err(e) => out[i] = Some(Err(e)),
                Ok(None) => out[i] = Some(Ok(Allocation::default())),
                Ok(Some((data_len, false))) => {
                    out[i] = Some(self.put_files(si, owner, shares, data_len, lease_expiry));
                }
                Ok(Some((_, true))) => {
                    let (reply, answer) = std::sync::mpsc::sync_channel(1);
                    jobs.push(PutJob {
                        si: *si,
                        owner: owner.to_vec(),
                        shares: shares
                            .iter()
                            .map(|&(sh, d, m)| (sh, d.to_vec(), m.to_vec()))
                            .collect(),
                        lease_expiry,
                        reply,
                    });
                    waits.push((i, answer));
                }
            }
        }
        if !jobs.is_empty() {
            // Our jobs enter the queue together, so a commit that runs while we wait for the
            // lock carries all of them or none.
            lock(&self.inner.put_queue).extend(jobs);
            let _commit = lock(&self.inner.put_commit);
            let mut carried = false;
            if let Some((i, answer)) = waits.first()
                && let Ok(r) = answer.try_recv()
            {
                out[*i] = Some(r);
                carried = true;
            }
            if !carried {
                let queued = std::mem::take(&mut *lock(&self.inner.put_queue));
                self.commit_puts(queued);
            }
        }
        for (i, answer) in waits {
            if out[i].is_none() {
                out[i] =
                    Some(answer.recv().unwrap_or_else(|_| {
                        Err(StoreError::Batch("the commit was abandoned".into()))
                    }));
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Batch("no answer".into()))))
            .collect()
    }

    /// A put of shares too large for the index: allocate, write and close each as a file.
    fn put_files(
        &self,
        si: &[u8; 16],
        owner: &[u8],
        shares: &[PutShareRef<'_>],
        data_len: u64,
        lease_expiry: u64,
    ) -> Result<Allocation, StoreError> {
        let shnums: Vec<u8> = shares.iter().map(|(sh, _, _)| *sh).collect();
        let mut alloc = self.allocate(si, owner, &shnums, data_len, lease_expiry)?;
        let mut stored = Vec::with_capacity(alloc.allocated.len());
        let mut result = Ok(());
        for &sh in &alloc.allocated {
            let Some((_, data, meta)) = shares.iter().find(|(s, _, _)| *s == sh) else {
                continue;
            };
            if result.is_ok() {
                result = self
                    .write(si, sh, owner, 0, data)
                    .and_then(|()| self.close(si, sh, owner, meta));
                if result.is_ok() {
                    stored.push(sh);
                    continue;
                }
            }
            let _ = self.abort(si, sh, owner);
        }
        result?;
        alloc.allocated = stored;
        Ok(alloc)
    }

    /// Stores queued inline puts in one transaction and answers each.
    fn commit_puts(&self, jobs: Vec<PutJob>) {
        if jobs.is_empty() {
            return;
        }
        let run = || -> Result<Vec<Result<Allocation, StoreError>>, StoreError> {
            let tx = self.inner.db.begin_write().map_err(db)?;
            let mut out = Vec::with_capacity(jobs.len());
            for j in &jobs {
                let shares: Vec<(u8, &[u8], &[u8])> = j
                    .shares
                    .iter()
                    .map(|(sh, d, m)| (*sh, d.as_slice(), m.as_slice()))
                    .collect();
                out.push(self.put_inline_in(&tx, &j.si, &j.owner, &shares, j.lease_expiry)?);
            }
            tx.commit().map_err(db)?;
            Ok(out)
        };
        match run() {
            Ok(results) => {
                self.inner.put_batches.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .put_jobs
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                let why = e.to_string();
                for j in jobs {
                    let _ = j.reply.send(Err(StoreError::Batch(why.clone())));
                }
            }
        }
    }

    /// (commits that stored inline puts, puts they carried) since the store was opened.
    pub fn put_batches(&self) -> (u64, u64) {
        (
            self.inner.put_batches.load(Ordering::Relaxed),
            self.inner.put_jobs.load(Ordering::Relaxed),
        )
    }

    /// Times a share being written was flushed to the disk and dropped from the page cache.
    pub fn write_behind_flushes(&self) -> u64 {
        self.inner.write_behind_flushes.load(Ordering::Relaxed)
    }

    /// Share bytes written with `O_DIRECT` since the store was opened.
    pub fn direct_bytes(&self) -> u64 {
        self.inner.direct_bytes.load(Ordering::Relaxed)
    }

    /// Share data bytes read for downloaders (this node's own downloads included) since the
    /// store was opened.
    pub fn read_bytes(&self) -> u64 {
        self.inner.read_bytes.load(Ordering::Relaxed)
    }

    /// Of [`ShareStore::direct_bytes`], those written from an aligned copy because the data
    /// did not sit in memory as it sits in the file (see [`crate::protocol::BulkBuf`]); the
    /// first page of a write that continues the one before always does.
    pub fn direct_copied_bytes(&self) -> u64 {
        self.inner.direct_copied.load(Ordering::Relaxed)
    }

    /// One write of a share whose file takes `O_DIRECT`, as [`plan_write`] says; returns the
    /// bytes that went through the page cache.
    fn write_around_cache(
        &self,
        file: &File,
        direct: &DirectFile,
        pos: u64,
        data: &[u8],
        path: &Path,
    ) -> Result<usize, StoreError> {
        let mut carry = direct.carry.lock().unwrap_or_else(|e| e.into_inner());
        let range = plan_write(
            pos,
            data.len(),
            carry.as_ref().map(|c| (c.at, c.bytes.len())),
        );
        let joined = range.start < pos;
        let mut cached = 0;
        // A carry this write does not continue goes first, so that where they overlap this
        // write's bytes land last. A carry leaves the lock only once its bytes are written:
        // they belong to a write already answered.
        if !joined && let Some(c) = carry.as_ref() {
            file.write_all_at(&c.bytes, c.at).map_err(io_at(path))?;
            cached += c.bytes.len();
            *carry = None;
        }
        if range.is_empty() {
            file.write_all_at(data, pos).map_err(io_at(path))?;
            return Ok(cached + data.len());
        }
        let head = range.start.saturating_sub(pos) as usize;
        let middle = (range.end - pos) as usize;
        file.write_all_at(&data[..head], pos).map_err(io_at(path))?;
        cached += head;
        let prefix = carry.as_ref().map_or(&[][..], |c| &c.bytes[..]);
        if !self.write_direct(&direct.file, range.start, prefix, &data[head..middle], path)? {
            file.write_all_at(prefix, range.start)
                .map_err(io_at(path))?;
            file.write_all_at(&data[head..middle], pos + head as u64)
                .map_err(io_at(path))?;
            cached += prefix.len() + middle - head;
        }
        *carry = None;
        if middle < data.len() {
            *carry = Some(Carry {
                at: range.end,
                bytes: data[middle..].to_vec(),
            });
        }
        Ok(cached)
    }

    /// Writes a share's carry, if any, through the page cache (before its file is finished).
    fn flush_carry(f: &InFlight) -> Result<(), StoreError> {
        let Some(direct) = &f.direct else {
            return Ok(());
        };
        let carry = direct
            .carry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = carry {
            f.file
                .write_all_at(&c.bytes, c.at)
                .map_err(io_at(&f.path))?;
        }
        Ok(())
    }

    /// Writes `prefix` then `pages`, whole aligned pages of a share, at `at` with `O_DIRECT`
    /// (the kernel wants the memory aligned too). Pages that sit in memory at an aligned
    /// address (a block read at its place, [`crate::protocol::BulkBuf`]) go straight from
    /// there; the page `prefix` begins, and every page of data placed otherwise, go from an
    /// aligned copy. `Ok(false)`: the file system refused (`EINVAL`); nothing is lost, the
    /// caller writes them through the page cache, and so do later shares.
    fn write_direct(
        &self,
        direct: &File,
        at: u64,
        prefix: &[u8],
        pages: &[u8],
        path: &Path,
    ) -> Result<bool, StoreError> {
        // The bytes of `pages` that complete the page `prefix` begins (none without one).
        let first = ((DIRECT_ALIGN - prefix.len() % DIRECT_ALIGN) % DIRECT_ALIGN).min(pages.len());
        let rest = &pages[first..];
        let in_place = rest.as_ptr().addr().is_multiple_of(DIRECT_ALIGN);
        let (copied, uncopied) = if in_place {
            (&pages[..first], rest)
        } else {
            (pages, &[][..])
        };
        let written = (|| {
            if !prefix.is_empty() || !copied.is_empty() {
                write_aligned_copy(direct, at, prefix, copied)?;
            }
            let copy_len = (prefix.len() + copied.len()) as u64;
            if !uncopied.is_empty() {
                direct.write_all_at(uncopied, at + copy_len)?;
            }
            Ok::<u64, io::Error>(copy_len)
        })();
        match written {
            Ok(copy_len) => {
                let len = (prefix.len() + pages.len()) as u64;
                self.inner.direct_bytes.fetch_add(len, Ordering::Relaxed);
                self.inner
                    .direct_copied
                    .fetch_add(copy_len, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                if !self.inner.direct_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the file system refused an O_DIRECT write ({e}); share data goes \
                         through the page cache from now on"
                    );
                }
                Ok(false)
            }
            Err(e) => Err(io_at(path)(e)),
        }
    }

    /// One inline put inside `tx`: `Err` aborts the whole transaction, `Ok(Err(_))` refuses
    /// this put alone (its leases on already-held shares still count).
    fn put_inline_in(
        &self,
        tx: &redb::WriteTransaction,
        si: &[u8; 16],
        owner: &[u8],
        shares: &[PutShareRef<'_>],
        lease_expiry: u64,
    ) -> Result<Result<Allocation, StoreError>, StoreError> {
        let mut alloc = Allocation::default();
        let refusal = {
            let mut rows = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let mut new: Vec<(u8, &[u8], &[u8])> = Vec::new();
            let in_flight: u64 = {
                let inflight = self.inflight();
                for &(sh, data, meta) in shares {
                    if new.iter().any(|n| n.0 == sh)
                        || alloc.already_have.contains(&sh)
                        || alloc.in_progress.contains(&sh)
                    {
                        continue;
                    }
                    let key = share_key(si, sh);
                    let held = rows
                        .get(key.as_slice())
                        .map_err(db)?
                        .and_then(|v| Row::decode(v.value()));
                    if let Some(row) = held {
                        let k = lease_key(si, sh, owner);
                        let old = leases.get(k.as_slice()).map_err(db)?.map(|v| v.value());
                        let expiry = old.unwrap_or(0).max(lease_expiry);
                        leases.insert(k.as_slice(), expiry).map_err(db)?;
                        account_lease(tx, owner, row.stored_bytes(), old, Some(expiry))?;
                        alloc.already_have.push(sh);
                    } else if inflight.contains_key(&(*si, sh)) {
                        alloc.in_progress.push(sh);
                    } else {
                        new.push((sh, data, meta));
                    }
                }
                inflight.values().map(|f| f.data_len).sum()
            };
            let needed: u64 = new.iter().map(|(_, d, m)| (d.len() + m.len()) as u64).sum();
            let mut usage = tx.open_table(USAGE).map_err(db)?;
            let get = |usage: &redb::Table<&str, u64>, k: &str| -> Result<u64, StoreError> {
                Ok(usage.get(k).map_err(db)?.map_or(0, |v| v.value()))
            };
            let used = get(&usage, "used_bytes")?;
            let count = get(&usage, "share_count")?;
            let available = self
                .cfg()
                .capacity
                .saturating_sub(used)
                .saturating_sub(in_flight);
            let free = if new.is_empty() { 0 } else { self.disk_free() };
            if new.is_empty() {
                None
            } else if self.cfg().read_only {
                Some(StoreError::ReadOnly)
            } else if needed > available {
                Some(StoreError::OverCapacity { needed, available })
            } else if free.saturating_sub(in_flight) < needed.saturating_add(self.cfg().reserved) {
                Some(StoreError::DiskReserve {
                    needed,
                    free,
                    reserved: self.cfg().reserved,
                })
            } else {
                let mut inline = tx.open_table(INLINE).map_err(db)?;
                let created = now();
                let mut bytes = Vec::new();
                for &(sh, data, meta) in &new {
                    let key = share_key(si, sh);
                    let row = Row {
                        data_len: data.len() as u64,
                        meta_len: meta.len() as u64,
                        created,
                        inline: true,
                    };
                    bytes.clear();
                    bytes.extend_from_slice(data);
                    bytes.extend_from_slice(meta);
                    inline
                        .insert(key.as_slice(), bytes.as_slice())
                        .map_err(db)?;
                    rows.insert(key.as_slice(), row.encode().as_slice())
                        .map_err(db)?;
                    leases
                        .insert(lease_key(si, sh, owner).as_slice(), lease_expiry)
                        .map_err(db)?;
                    account_lease(tx, owner, row.stored_bytes(), None, Some(lease_expiry))?;
                    alloc.allocated.push(sh);
                }
                usage
                    .insert("used_bytes", used.saturating_add(needed))
                    .map_err(db)?;
                usage
                    .insert("share_count", count.saturating_add(new.len() as u64))
                    .map_err(db)?;
                None
            }
        };
        Ok(match refusal {
            Some(e) => Err(e),
            None => Ok(alloc),
        })
    }

    /// Drops an unfinished share of `owner`.
    pub fn abort(&self, si: &[u8; 16], shnum: u8, owner: &[u8]) -> Result<(), StoreError> {
        let f = {
            let mut inflight = self.inflight();
            match inflight.get(&(*si, shnum)) {
                Some(f) if f.owner == owner => inflight.remove(&(*si, shnum)),
                _ => None,
            }
        }
        .ok_or(StoreError::NotAllocated { shnum })?;
        fs::remove_file(&f.path).map_err(io_at(&f.path))
    }

    /// Drops every unfinished share of `owner` (its connection went away).
    pub fn abort_owner(&self, owner: &[u8]) {
        let gone: Vec<InFlight> = {
            let mut inflight = self.inflight();
            let keys: Vec<_> = inflight
                .iter()
                .filter(|(_, f)| f.owner == owner)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| inflight.remove(k)).collect()
        };
        for f in gone {
            let _ = fs::remove_file(&f.path);
        }
    }

    fn open_share(&self, si: &[u8; 16], shnum: u8) -> Result<(ShareBytes, Row), StoreError> {
        let row = self.row(si, shnum)?.ok_or(StoreError::NotFound { shnum })?;
        let path = self.share_path(si, shnum);
        if row.inline {
            let tx = self.inner.db.begin_read().map_err(db)?;
            let t = tx.open_table(INLINE).map_err(db)?;
            let bytes = t
                .get(share_key(si, shnum).as_slice())
                .map_err(db)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            if bytes.len() as u64 != row.stored_bytes() {
                return Err(StoreError::Corrupt {
                    path,
                    why: "inline share missing or of the wrong length".into(),
                });
            }
            return Ok((ShareBytes::Inline(bytes), row));
        }
        let mut file = File::open(&path).map_err(io_at(&path))?;
        let corrupt = |why: &str| StoreError::Corrupt {
            path: path.clone(),
            why: why.to_owned(),
        };
        let mut header = [0u8; DATA_OFFSET as usize];
        file.read_exact(&mut header)
            .map_err(|_| corrupt("short header"))?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if &header[..8] != MAGIC || header[8..12] != FORMAT_VERSION.to_le_bytes() {
            return Err(corrupt("bad magic or version"));
        }
        if u64_at(12) != row.data_len || u64_at(20) != row.meta_len {
            return Err(corrupt("header disagrees with the index"));
        }
        let len = file.seek(SeekFrom::End(0)).map_err(io_at(&path))?;
        if len != row.file_len() {
            return Err(corrupt("wrong file length"));
        }
        Ok((ShareBytes::File(file, path), row))
    }

    /// A share's metadata.
    pub fn read_meta(&self, si: &[u8; 16], shnum: u8) -> Result<Vec<u8>, StoreError> {
        let (bytes, row) = self.open_share(si, shnum)?;
        bytes.read_vec(row.data_len, row.meta_len as usize)
    }

    /// `len` bytes of a share's data at `offset`.
    pub fn read(
        &self,
        si: &[u8; 16],
        shnum: u8,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        if len > MAX_READ_LEN {
            return Err(StoreError::InvalidArgument(format!("read of {len} bytes")));
        }
        let (bytes, row) = self.open_share(si, shnum)?;
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|e| e > row.data_len)
        {
            return Err(StoreError::OutOfBounds {
                offset,
                len: u64::from(len),
                data_len: row.data_len,
            });
        }
        let data = bytes.read_vec(offset, len as usize)?;
        self.inner
            .read_bytes
            .fetch_add(u64::from(len), Ordering::Relaxed);
        Ok(data)
    }

    /// Complete shares of `si`.
    pub fn list(&self, si: &[u8; 16]) -> Result<Vec<u8>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(SHARES).map_err(db)?;
        let start = share_key(si, 0);
        let end = share_key(si, 255);
        let mut out = Vec::new();
        for item in t.range(start.as_slice()..=end.as_slice()).map_err(db)? {
            let (k, _) = item.map_err(db)?;
            if let Some(&sh) = k.value().get(16) {
                out.push(sh);
            }
        }
        Ok(out)
    }

    fn add_leases(
        &self,
        si: &[u8; 16],
        shnums: &[u8],
        owner: &[u8],
        expiry: u64,
    ) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write().map_err(db)?;
        {
            let shares = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            for &sh in shnums {
                let Some(row) = shares
                    .get(share_key(si, sh).as_slice())
                    .map_err(db)?
                    .and_then(|v| Row::decode(v.value()))
                else {
                    continue;
                };
                let k = lease_key(si, sh, owner);
                let old = leases.get(k.as_slice()).map_err(db)?.map(|v| v.value());
                let new = old.unwrap_or(0).max(expiry);
                leases.insert(k.as_slice(), new).map_err(db)?;
                account_lease(&tx, owner, row.stored_bytes(), old, Some(new))?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Adds or renews `owner`'s lease on every stored share of `si`.
    pub fn add_lease(&self, si: &[u8; 16], owner: &[u8], expiry: u64) -> Result<usize, StoreError> {
        if owner.len() > MAX_OWNER_LEN || owner.is_empty() {
            return Err(StoreError::InvalidArgument("bad owner id".into()));
        }
        let shares = self.list(si)?;
        if shares.is_empty() {
            return Err(StoreError::NotFound { shnum: 0 });
        }
        self.add_leases(si, &shares, owner, expiry)?;
        Ok(shares.len())
    }

    /// Deletes a stored share now, whoever holds leases on it: its row, its leases (uncharged
    /// from their owners) and its usage in one transaction, then its file. For the owner of the
    /// server (a share known to be corrupt, or one to drop by hand) and for tests that simulate
    /// a server losing a share. Returns whether the share existed.
    pub fn remove_share(&self, si: &[u8; 16], shnum: u8) -> Result<bool, StoreError> {
        let tx = self.inner.db.begin_write().map_err(db)?;
        let removed = {
            let mut shares = tx.open_table(SHARES).map_err(db)?;
            let mut leases = tx.open_table(LEASES).map_err(db)?;
            let prefix = share_key(si, shnum);
            let row = shares
                .remove(prefix.as_slice())
                .map_err(db)?
                .and_then(|v| Row::decode(v.value()));
            let mut gone = Vec::new();
            for item in leases.range(prefix.as_slice()..).map_err(db)? {
                let (k, v) = item.map_err(db)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                gone.push((k.value().to_vec(), v.value()));
            }
            for (k, expiry) in &gone {
                leases.remove(k.as_slice()).map_err(db)?;
                if let Some(row) = &row {
                    account_lease(&tx, &k[17..], row.stored_bytes(), Some(*expiry), None)?;
                }
            }
            if row.is_some_and(|r| r.inline) {
                tx.open_table(INLINE)
                    .map_err(db)?
                    .remove(prefix.as_slice())
                    .map_err(db)?;
            }
            if let Some(row) = &row {
                let mut usage = tx.open_table(USAGE).map_err(db)?;
                let used = usage
                    .get("used_bytes")
                    .map_err(db)?
                    .map_or(0, |v| v.value());
                let count = usage
                    .get("share_count")
                    .map_err(db)?
                    .map_or(0, |v| v.value());
                usage
                    .insert("used_bytes", used.saturating_sub(row.stored_bytes()))
                    .map_err(db)?;
                usage
                    .insert("share_count", count.saturating_sub(1))
                    .map_err(db)?;
            }
            row.map(|r| !r.inline)
        };
        tx.commit().map_err(db)?;
        if removed == Some(true) {
            let path = self.share_path(si, shnum);
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
        Ok(removed.is_some())
    }

    /// Leases on a share: owner -> expiry.
    pub fn leases(&self, si: &[u8; 16], shnum: u8) -> Result<BTreeMap<Vec<u8>, u64>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let t = tx.open_table(LEASES).map_err(db)?;
        let prefix = share_key(si, shnum);
        let mut out = BTreeMap::new();
        for item in t.range(prefix.as_slice()..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            out.insert(k[17..].to_vec(), v.value());
        }
        Ok(out)
    }

    /// Space accounting.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let (used_bytes, share_count) = self.used()?;
        let in_flight_bytes = self.inflight().values().map(|f| f.data_len).sum();
        Ok(Usage {
            used_bytes,
            share_count,
            capacity: self.cfg().capacity,
            reserved: self.cfg().reserved,
            disk_free: self.disk_free(),
            in_flight_bytes,
        })
    }

    /// Checks every index row against its file and the usage counters against the rows, and
    /// looks for files without rows and leftovers in `incoming/` (not counting uploads in
    /// progress).
    pub fn verify_consistency(&self) -> Result<ConsistencyReport, StoreError> {
        let mut report = ConsistencyReport::default();
        let rows = self.rows()?;
        let mut used = 0;
        for (si, sh, row) in &rows {
            report.shares_checked += 1;
            used += row.stored_bytes();
            if let Err(e) = self.open_share(si, *sh) {
                report.problems.push(e.to_string());
            }
            if self.leases(si, *sh)?.is_empty() {
                report
                    .problems
                    .push(format!("share {} of {} has no lease", sh, b32(si)));
            }
        }
        // Every account's usage equals the sum of the shares it holds leases on.
        let mut per_owner: BTreeMap<kith_accounting::AccountId, (u64, u64)> = BTreeMap::new();
        for (si, sh, row) in &rows {
            for owner in self.leases(si, *sh)?.keys() {
                if let Some(who) = account_of(owner) {
                    let e = per_owner.entry(who).or_default();
                    e.0 += row.stored_bytes();
                    e.1 += 1;
                }
            }
        }
        match kith_accounting::store::load(&self.inner.db) {
            Ok(ledger) => {
                for (who, acct) in ledger.accounts() {
                    let have = (acct.stored().bytes, acct.stored().shares);
                    let want = per_owner.remove(who).unwrap_or_default();
                    if have != want {
                        report.problems.push(format!(
                            "account {} is charged {} bytes in {} shares, its leases hold {} bytes in {} shares",
                            kith_accounting::ledger::short_id(who),
                            have.0,
                            have.1,
                            want.0,
                            want.1
                        ));
                    }
                }
                for (who, want) in per_owner {
                    report.problems.push(format!(
                        "account {} holds leases on {} bytes but has no account",
                        kith_accounting::ledger::short_id(&who),
                        want.0
                    ));
                }
            }
            Err(e) => report.problems.push(format!("accounting: {e}")),
        }
        let (u, c) = self.used()?;
        if u != used || c != rows.len() as u64 {
            report.problems.push(format!(
                "usage says {u} bytes in {c} shares, index has {used} bytes in {} shares",
                rows.len()
            ));
        }
        let indexed: std::collections::BTreeSet<PathBuf> = rows
            .iter()
            .map(|(si, sh, _)| self.share_path(si, *sh))
            .collect();
        let mut stack = vec![self.cfg().root.join("shares")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !indexed.contains(&p) {
                    report
                        .problems
                        .push(format!("{} is not indexed", p.display()));
                }
            }
        }
        let live: std::collections::BTreeSet<PathBuf> =
            self.inflight().values().map(|f| f.path.clone()).collect();
        let incoming = self.cfg().root.join("incoming");
        for e in fs::read_dir(&incoming).map_err(io_at(&incoming))?.flatten() {
            if !live.contains(&e.path()) {
                report
                    .problems
                    .push(format!("{} is a leftover upload", e.path().display()));
            }
        }
        Ok(report)
    }
}

mod slots;
pub use slots::{SlotOutcome, SlotRead, SlotWrite, is_slot_meta};

#[cfg(test)]
mod tests;

//! Uploader and downloader: the storage client side of a node.
//!
//! **Upload** ([`upload`], [`upload_from`]): derive the key (convergent: one hashing pass over
//! the file, done while the local API receives it, or on every core over a file `kith put`
//! handed over the local socket, see [`Source::Open`]; or a random key), list which servers
//! already hold shares, plan placement over the permuted ring with servers of happiness (`placement`), allocate, then stream: segments are read in order,
//! encrypted and erasure-coded on the blocking pool (several at once, so both cores work), and
//! each block is queued to its server's writer task, which keeps a few writes in flight. Every
//! queue is bounded, so memory stays at a few segments whatever the file size. Finally each
//! share is closed with its metadata and the upload succeeds only when `happy` distinct servers
//! hold shares (any `k` of them rebuild the file). Files of at most [`SMALL_FILE`] skip the
//! listing and the streaming: they are encoded whole and each server gets its shares in one
//! [`Request::Put`] (allocate, write and close at once), which answers what it already held.
//!
//! **Download** ([`download`]): ask every storage server which shares it holds, take the
//! fastest answers first, verify the UEB against the cap and each share's hash chain against
//! the UEB, then fetch segments (a few ahead) from `k` shares, verify every block, decode and
//! decrypt in order into the writer. A share that returns bad data or fails is reported and
//! replaced by another one; the report names the server.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::Path,
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream::FuturesOrdered, stream::FuturesUnordered};
use libp2p::PeerId;
use serde::Serialize;
use serde_bytes::ByteBuf;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::{
    caps::{ChkReadCap, LitCap, ReadCap},
    codec::{
        self, ConvergentKeyHasher, EncodedSegment, EncodingParams, FileEncoder, Key, SegmentBlock,
        ShareMeta, UriExtension, VerifiedShare,
    },
    hedge,
    node::NodeHandle,
    placement,
    protocol::{BulkBuf, PutShare, Request, Response, ServerError},
};

/// Segments being encoded at once.
const ENCODE_DEPTH: usize = 2;
/// Blocks queued per server writer.
const WRITE_QUEUE: usize = 2;
/// Writes in flight per server.
const WRITES_IN_FLIGHT: usize = 2;
/// Segments fetched ahead while downloading.
const FETCH_DEPTH: usize = 4;
/// How often an upload waiting for room in a server's queue looks for laggards.
const LAG_CHECK: Duration = Duration::from_millis(250);
/// How long to wait for a server to answer a listing.
const LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// Per-upload options.
#[derive(Clone, Debug)]
pub struct PutOptions {
    /// Encoding parameters.
    pub params: EncodingParams,
    /// Convergent encryption (else a random key).
    pub convergent: bool,
    /// The convergent key when the caller already hashed the plaintext (the local API hashes
    /// while it receives the upload, saving a pass over the file).
    pub key: Option<Key>,
}

/// What an upload did.
#[derive(Clone, Debug, Serialize)]
pub struct PutResult {
    /// The read cap (text form).
    pub cap: String,
    /// The file size.
    pub size: u64,
    /// Share number -> server holding it.
    pub placement: BTreeMap<u8, String>,
    /// Distinct servers holding shares.
    pub happiness: usize,
    /// Shares that servers already had (convergent dedupe).
    pub already_present: usize,
    /// Servers whose listing (a small file: whose put) had not come when the upload stopped
    /// waiting: it went on without them (hung, or far slower than the others), and a small
    /// file's shares meant for them went to the others.
    pub unanswered: Vec<String>,
    /// Servers far slower than the others ([`hedge::Pace::laggards`]) whose shares the upload
    /// left behind to go on at the others' pace: the file is short of those shares (still
    /// happy) until a repair (`kith check --repair`, the automatic repairer) places them.
    pub left_behind: Vec<String>,
    /// Servers this upload did not ask, because they left a request unanswered lately or an
    /// upload left them behind as far slower than the others ([`crate::hedge::LAGGING_FOR`]),
    /// while enough others remained.
    pub put_aside: Vec<String>,
    /// Where the time went, in milliseconds.
    pub timings: Timings,
}

/// Time spent in each phase of an upload, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Convergent key pass over the plaintext.
    pub key_ms: u64,
    /// Listing and allocating on servers.
    pub placement_ms: u64,
    /// Reading, encrypting, encoding and writing every segment.
    pub stream_ms: u64,
    /// Closing shares (hash trees, metadata, server fsync and index).
    pub close_ms: u64,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// Reading the source failed.
    #[error("reading the file failed: {0}")]
    Io(#[from] std::io::Error),
    /// Not enough servers to place shares on.
    #[error("{message}")]
    NotHappy {
        /// Servers of happiness wanted.
        happy: u8,
        /// Storage servers that answered.
        reachable: usize,
        /// The whole message, with the servers' refusals.
        message: String,
    },
    /// The encoder refused the parameters.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The file was written to while it was read (its size or times changed between the key
    /// pass and the end of the encode pass); no share of it was kept.
    #[error(
        "the file changed while it was uploaded; nothing was kept (upload it again once it is complete)"
    )]
    Changed,
}

/// Which server sent bad data, and what.
#[derive(Clone, Debug, Serialize)]
pub struct BadShare {
    /// The server.
    pub server: String,
    /// The share number.
    pub shnum: u8,
    /// What was wrong.
    pub problem: String,
}

/// A share a download stopped reading from because its server was slow.
#[derive(Clone, Debug, Serialize)]
pub struct SlowShare {
    /// The server.
    pub server: String,
    /// The share number.
    pub shnum: u8,
}

/// A server whose share listing a download went without.
#[derive(Clone, Debug, Serialize)]
pub struct Unanswered {
    /// The server.
    pub server: String,
    /// What it answered, if it did (timed out, unreachable, refused); none: it was still
    /// silent when the download ended.
    pub error: Option<String>,
}

/// What a download did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DownloadReport {
    /// Bytes written.
    pub size: u64,
    /// Servers blocks were read from.
    pub servers_used: Vec<String>,
    /// Shares that failed verification or could not be read.
    pub bad_shares: Vec<BadShare>,
    /// Shares read around because their server was far slower than the others: the rest of
    /// the file came from another share instead.
    pub slow_shares: Vec<SlowShare>,
    /// Servers that had not listed their shares by the end of the download: the download did
    /// not wait for them (one that answers a little late is not named).
    pub unanswered: Vec<Unanswered>,
    /// Segments whose block was also asked of the spare share (a read slow or failed).
    pub spare_reads: u64,
    /// Set when the download failed (possibly after part of the file was sent).
    pub error: Option<String>,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// Fewer than k good shares could be found.
    #[error("not enough shares: need {needed}, found {found} good ones on {servers} reachable servers{}", problems(.bad))]
    NotEnoughShares {
        /// k.
        needed: u8,
        /// Good shares found.
        found: usize,
        /// Servers asked.
        servers: usize,
        /// Shares that failed.
        bad: Vec<BadShare>,
    },
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Io(#[from] std::io::Error),
}

fn problems(bad: &[BadShare]) -> String {
    if bad.is_empty() {
        return String::new();
    }
    let list: Vec<String> = bad
        .iter()
        .map(|b| format!("share {} on {}: {}", b.shnum, b.server, b.problem))
        .collect();
    format!(" (bad: {})", list.join("; "))
}

pub(crate) fn rpc_error(resp: Result<Response, crate::net::RpcError>) -> Result<Response, String> {
    match resp {
        Ok(Response::Error(ServerError { kind, message })) => Err(format!("{kind}: {message}")),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

/// A check's listings: every server's answer, each waited for up to [`LIST_TIMEOUT`], except
/// that servers [silent](hedge::Silent) lately are asked but not waited for once the others
/// answered (only about as long as those took, [`hedge::about_as_fast`]): one friend's hung
/// machine costs the first check that meets it the listing's timeout, not every check of a
/// repairer's pass. The silent ones still out count as unreachable, as a timed-out one always
/// did.
pub(crate) async fn list_for_check(
    node: &NodeHandle,
    si: [u8; 16],
    servers: &[PeerId],
) -> Vec<(PeerId, Result<Vec<u8>, String>)> {
    let silent = node.silent_servers();
    let start = tokio::time::Instant::now();
    let mut asks = ask_listings(node, si, servers);
    let mut pending: BTreeSet<PeerId> = servers.iter().copied().collect();
    let mut out = Vec::new();
    let mut cutoff = None;
    while !pending.is_empty() {
        if cutoff.is_none() && pending.iter().all(|p| silent.contains(p)) {
            cutoff = Some(start + hedge::about_as_fast(start.elapsed()));
        }
        let Some((s, r, _)) = next_before(&mut asks, cutoff).await else {
            break;
        };
        pending.remove(&s);
        out.push((s, r));
    }
    out.extend(pending.into_iter().map(|s| {
        (
            s,
            Err("not answering lately: asked, not waited for".to_owned()),
        )
    }));
    out
}

/// One server's answer to a listing: its share numbers (or why not), and how long after the
/// listings were asked for it came.
type ListAnswer = (PeerId, Result<Vec<u8>, String>, Duration);

/// Asks every server in `servers` which shares of `si` it holds; the answers come as they
/// arrive (a server that does not answer within [`LIST_TIMEOUT`] answers "timed out" and is
/// marked [silent](hedge::Silent), whether or not anyone still waits for it).
fn ask_listings<'a>(
    node: &'a NodeHandle,
    si: [u8; 16],
    servers: &[PeerId],
) -> FuturesUnordered<futures::future::BoxFuture<'a, ListAnswer>> {
    let start = std::time::Instant::now();
    servers
        .iter()
        .map(|&s| {
            // Its own task: an operation that stops waiting drops the handle, not the request,
            // so a late answer still reaches `NodeHandle::rpc` and ends the server's silence.
            let node = node.clone();
            let asked = tokio::spawn(async move {
                let r = tokio::time::timeout(LIST_TIMEOUT, node.rpc(s, Request::List { si })).await;
                if r.is_err() {
                    node.went_silent(s);
                }
                r
            });
            async move {
                let r = match asked.await {
                    Ok(Ok(r)) => match rpc_error(r) {
                        Ok(Response::Shares(v)) => Ok(v),
                        Ok(other) => Err(format!("unexpected answer {other:?}")),
                        Err(e) => Err(e),
                    },
                    Ok(Err(_)) => Err("timed out".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                (s, r, start.elapsed())
            }
            .boxed()
        })
        .collect()
}

/// Takes listing answers from `asks` as they come until every server answered or the time
/// `until` gives (counted from `start`, from the answers so far; `None`: wait for the next)
/// has passed; the listings still out stay in `asks`.
async fn answers_until(
    asks: &mut FuturesUnordered<futures::future::BoxFuture<'_, ListAnswer>>,
    start: tokio::time::Instant,
    until: impl Fn(&[ListAnswer]) -> Option<Duration>,
) -> Vec<ListAnswer> {
    let mut answers = Vec::new();
    while let Some(answer) = next_before(asks, until(&answers).map(|after| start + after)).await {
        answers.push(answer);
    }
    answers
}

/// The next item of `s`, or `None` when `cutoff` (if any) comes first: how an operation
/// stops waiting for stragglers.
pub(crate) async fn next_before<S: futures::Stream + Unpin>(
    s: &mut S,
    cutoff: Option<tokio::time::Instant>,
) -> Option<S::Item> {
    match cutoff {
        None => s.next().await,
        Some(at) => tokio::select! {
            r = s.next() => r,
            () = tokio::time::sleep_until(at) => None,
        },
    }
}

/// An upload's listings: every server's answer that came before [`hedge::stragglers_until`]
/// (or all of them), and the servers still silent then.
async fn list_for_upload(
    node: &NodeHandle,
    si: [u8; 16],
    servers: &[PeerId],
    happy: u8,
) -> (Vec<(PeerId, Result<Vec<u8>, String>)>, Vec<PeerId>) {
    let start = tokio::time::Instant::now();
    let mut asks = ask_listings(node, si, servers);
    let answers = answers_until(&mut asks, start, |answers| {
        let good: Vec<Duration> = answers
            .iter()
            .filter(|(_, r, _)| r.is_ok())
            .map(|(_, _, t)| *t)
            .collect();
        hedge::stragglers_until(&good, happy)
    })
    .await;
    let silent = servers
        .iter()
        .filter(|s| !answers.iter().any(|(a, _, _)| a == *s))
        .copied()
        .collect();
    (
        answers.into_iter().map(|(s, r, _)| (s, r)).collect(),
        silent,
    )
}

/// What an upload reads: a file, or bytes already in memory (small bodies the local API did
/// not spool to disk).
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A file on disk that nobody else writes (the API's spool).
    File(&'a Path),
    /// A file the user opened and handed over (`kith put` over the local socket). It is read
    /// twice, for the key and for the encoding, in place; its size and times are compared
    /// before any share is closed, so a file written to meanwhile fails the upload with
    /// [`UploadError::Changed`] instead of storing content its convergent key was not
    /// derived from.
    Open(&'a std::fs::File),
    /// The whole content.
    Bytes(&'a [u8]),
    /// Bytes as they arrive (an HTTP body of known length), read once, in order, and never
    /// stored whole: only for a random key (a convergent key needs every byte before the
    /// first can be encrypted).
    Stream(&'a Incoming),
}

impl Source<'_> {
    /// All `size` bytes, in memory (for files small enough to go up in one request, and for
    /// mutable files).
    pub(crate) async fn read_all(self, size: u64) -> std::io::Result<Vec<u8>> {
        match self {
            Source::File(path) => tokio::fs::read(path).await,
            Source::Open(f) => read_exact_at(f, 0, size as usize),
            Source::Bytes(b) => Ok(b.to_vec()),
            Source::Stream(s) => {
                let mut buf = vec![0; usize::try_from(s.len).map_err(std::io::Error::other)?];
                s.read_exact(&mut buf).await?;
                Ok(buf)
            }
        }
    }
}

/// An upload's bytes as they arrive: `len` bytes in chunks from a channel (the HTTP handler
/// feeds it from the request body). Reading past what came before the channel closed is an
/// `UnexpectedEof` error: the client went away or sent less than it announced.
#[derive(Debug)]
pub struct Incoming {
    len: u64,
    chunks: tokio::sync::Mutex<(mpsc::Receiver<bytes::Bytes>, bytes::Bytes)>,
}

impl Incoming {
    /// `len` bytes to come through `chunks`.
    pub fn new(len: u64, chunks: mpsc::Receiver<bytes::Bytes>) -> Self {
        Incoming {
            len,
            chunks: tokio::sync::Mutex::new((chunks, bytes::Bytes::new())),
        }
    }

    /// No more bytes are wanted: the feeder's sends fail from now on.
    pub async fn close(&self) {
        self.chunks.lock().await.0.close();
    }

    /// Fills `buf` with the next bytes.
    async fn read_exact(&self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut guard = self.chunks.lock().await;
        let (chunks, left) = &mut *guard;
        let mut at = 0;
        while at < buf.len() {
            if left.is_empty() {
                *left = chunks.recv().await.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload's body ended before its announced length",
                    )
                })?;
                continue;
            }
            let n = left.len().min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&left.split_to(n));
            at += n;
        }
        Ok(())
    }
}

/// What identifies one version of a file: size, inode, modification and change times (ns).
/// `tar` and `rsync` trust the same fields; a write moves `ctime` forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp([i64; 7]);

impl FileStamp {
    fn of(f: &std::fs::File) -> std::io::Result<FileStamp> {
        Ok(FileStamp::from_metadata(&f.metadata()?))
    }

    fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp([
            m.len() as i64,
            m.dev() as i64,
            m.ino() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ])
    }
}

/// Reads `len` bytes at `offset` (positional: the handle's own offset is left alone).
pub(crate) fn read_exact_at(
    f: &std::fs::File,
    offset: u64,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Where an upload's segments are read from.
enum SegmentSource<'a> {
    /// Read positionally, on the blocking pool, straight into the block buffers.
    File(Arc<std::fs::File>),
    /// Copied into the block buffers.
    Bytes(&'a [u8]),
    /// Copied into the block buffers as they arrive (segments are asked for in order).
    Stream(&'a Incoming),
}

impl SegmentSource<'_> {
    /// Starts encoding segment `index` on the blocking pool: its bytes go straight into `n`
    /// block buffers from the bulk pool (no segment buffer, no copy out of one), which become
    /// the blocks.
    async fn encode(
        &self,
        encoder: &Arc<FileEncoder>,
        index: u32,
    ) -> Result<tokio::task::JoinHandle<Result<EncodedSegment, UploadError>>, UploadError> {
        let bs = encoder.block_size(index) as usize;
        let mut blocks: Vec<Vec<u8>> = (0..encoder.params().total)
            .map(|_| crate::protocol::take_bulk(bs))
            .collect();
        let enc = encoder.clone();
        let encode = move |blocks| {
            enc.encode_segment_blocks(index, blocks)
                .map_err(|e| UploadError::Encode(e.to_string()))
        };
        Ok(match self {
            SegmentSource::Bytes(b) => {
                for (block, (offset, real)) in blocks.iter_mut().zip(encoder.data_pieces(index)) {
                    let piece = usize::try_from(offset)
                        .ok()
                        .and_then(|at| b.get(at..at + real))
                        .ok_or(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                    block[..real].copy_from_slice(piece);
                }
                tokio::task::spawn_blocking(move || encode(blocks))
            }
            SegmentSource::Stream(incoming) => {
                for (block, (_, real)) in blocks.iter_mut().zip(encoder.data_pieces(index)) {
                    incoming.read_exact(&mut block[..real]).await?;
                }
                tokio::task::spawn_blocking(move || encode(blocks))
            }
            SegmentSource::File(f) => {
                let f = f.clone();
                let pieces = encoder.data_pieces(index);
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    for (block, (offset, real)) in blocks.iter_mut().zip(pieces) {
                        f.read_exact_at(&mut block[..real], offset)?;
                    }
                    encode(blocks)
                })
            }
        })
    }
}

/// Pieces of the convergent key hashed per round of the key pass (64 MiB: the digests held at
/// once stay small whatever the file's size).
const KEY_BATCH: usize = 64;

/// The convergent key of `size` bytes that `read(offset, buf)` fills piece by piece: the
/// pieces are hashed on every core (at most 8), in rounds of `KEY_BATCH` pieces, and added
/// in order. Blocking.
pub fn convergent_key_by_pieces(
    secret: &[u8; 32],
    params: &EncodingParams,
    size: u64,
    read: impl Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync,
) -> std::io::Result<Key> {
    let piece = codec::KEY_PIECE as u64;
    let pieces = size.div_ceil(piece);
    let piece_len = |i: u64| (size - i * piece).min(piece) as usize;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut bufs: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; codec::KEY_PIECE]).collect();
    let mut h = ConvergentKeyHasher::new(secret, params);
    let read = &read;
    let mut first = 0u64;
    while first < pieces {
        let end = (first + KEY_BATCH as u64).min(pieces);
        let mut batch = vec![[0u8; 32]; (end - first) as usize];
        // Each thread takes a run of consecutive pieces.
        let per = batch.len().div_ceil(threads);
        std::thread::scope(|sc| -> std::io::Result<()> {
            let handles: Vec<_> = batch
                .chunks_mut(per)
                .zip(bufs.iter_mut())
                .enumerate()
                .map(|(t, (out, buf))| {
                    let start = first + (t * per) as u64;
                    sc.spawn(move || -> std::io::Result<()> {
                        for (j, digest) in out.iter_mut().enumerate() {
                            let i = start + j as u64;
                            let b = &mut buf[..piece_len(i)];
                            read(i * piece, b)?;
                            *digest = ConvergentKeyHasher::piece_digest(b);
                        }
                        Ok(())
                    })
                })
                .collect();
            for j in handles {
                j.join()
                    .map_err(|_| std::io::Error::other("a key-pass thread panicked"))??;
            }
            Ok(())
        })?;
        for (j, digest) in batch.iter().enumerate() {
            h.add_piece(digest, piece_len(first + j as u64));
        }
        first = end;
    }
    Ok(h.finalize())
}

/// The convergent key of the first `size` bytes of `f` ([`convergent_key_by_pieces`] with
/// positional reads, on the blocking pool).
async fn convergent_key_of(
    f: std::fs::File,
    size: u64,
    secret: [u8; 32],
    params: EncodingParams,
) -> Result<Key, UploadError> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        convergent_key_by_pieces(&secret, &params, size, |offset, buf| {
            f.read_exact_at(buf, offset)
        })
    })
    .await
    .map_err(|e| UploadError::Encode(e.to_string()))?
    .map_err(UploadError::Io)
}

/// Uploads the file at `path`.
pub async fn upload(
    node: &NodeHandle,
    path: &Path,
    opts: &PutOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<PutResult, UploadError> {
    upload_from(node, Source::File(path), opts, progress).await
}

/// Uploads from a file or from memory.
pub async fn upload_from(
    node: &NodeHandle,
    source: Source<'_>,
    opts: &PutOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<PutResult, UploadError> {
    let (size, stamp) = match source {
        Source::File(path) => (tokio::fs::metadata(path).await?.len(), None),
        Source::Open(f) => {
            let m = f.metadata()?;
            if !m.is_file() {
                return Err(UploadError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                )));
            }
            (m.len(), Some(FileStamp::from_metadata(&m)))
        }
        Source::Bytes(b) => (b.len() as u64, None),
        Source::Stream(s) => (s.len, None),
    };
    let unchanged = || -> Result<(), UploadError> {
        match (source, stamp) {
            (Source::Open(f), Some(s)) if FileStamp::of(f)? != s => Err(UploadError::Changed),
            _ => Ok(()),
        }
    };
    let mut timings = Timings::default();
    let mut phase = std::time::Instant::now();
    let mut lap = |slot: &mut u64| {
        *slot = phase.elapsed().as_millis() as u64;
        phase = std::time::Instant::now();
    };
    let params = opts.params;
    if size <= codec::LIT_THRESHOLD as u64 {
        let data = source.read_all(size).await?;
        unchanged()?;
        progress(size);
        return Ok(PutResult {
            cap: ReadCap::Lit(LitCap { data }).to_string(),
            size,
            placement: BTreeMap::new(),
            happiness: 0,
            already_present: 0,
            unanswered: Vec::new(),
            left_behind: Vec::new(),
            put_aside: Vec::new(),
            timings,
        });
    }
    let key = if let Some(key) = opts.key.clone() {
        key
    } else if opts.convergent {
        let secret = *node.convergence_secret();
        match source {
            Source::Bytes(b) => {
                let mut h = ConvergentKeyHasher::new(&secret, &params);
                h.update(b);
                h.finalize()
            }
            Source::File(path) => {
                convergent_key_of(std::fs::File::open(path)?, size, secret, params).await?
            }
            Source::Open(f) => convergent_key_of(f.try_clone()?, size, secret, params).await?,
            Source::Stream(_) => {
                return Err(UploadError::Encode(
                    "bytes that arrive as they are uploaded take a random key".into(),
                ));
            }
        }
    } else {
        codec::random_key(&mut rand::rngs::OsRng)
    };
    let encoder =
        FileEncoder::new(key, params, size).map_err(|e| UploadError::Encode(e.to_string()))?;
    let si = encoder.storage_index();
    let data_len = encoder.share_data_len();

    lap(&mut timings.key_ms);
    if size <= SMALL_FILE {
        let data = match source {
            Source::Bytes(b) => std::borrow::Cow::Borrowed(b),
            _ => std::borrow::Cow::Owned(source.read_all(size).await?),
        };
        if data.len() as u64 != size {
            return Err(UploadError::Encode(
                "the file changed while it was read".into(),
            ));
        }
        unchanged()?;
        return upload_small(node, encoder, &data, params, timings, progress).await;
    }
    // 1. Who is there, and what do they already hold?
    let (servers, mut refusals, put_aside) = candidates(node, params).await;
    let mut existing: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    let mut usable: Vec<PeerId> = Vec::new();
    let (listed, unanswered) = list_for_upload(node, si, &servers, params.happy).await;
    for s in &unanswered {
        node.went_silent(*s);
    }
    for (s, r) in listed {
        match r {
            Ok(v) => {
                usable.push(s);
                if !v.is_empty() {
                    existing.insert(s, v.into_iter().filter(|&n| n < params.total).collect());
                }
            }
            Err(e) => refusals.push(format!("{s}: {e}")),
        }
    }
    let reachable = usable.len();
    let not_happy = |achievable: usize, refusals: &[String]| {
        not_happy_error(params, reachable, achievable, refusals)
    };

    // 2. Plan and allocate; servers that refuse are dropped and the rest re-planned.
    let mut held: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    let mut to_write: BTreeMap<u8, PeerId> = BTreeMap::new();
    for _round in 0..3 {
        let mut fixed = held.clone();
        for (&sh, &s) in &to_write {
            fixed.entry(s).or_default().insert(sh);
        }
        for (s, shares) in &existing {
            if usable.contains(s) {
                fixed.entry(*s).or_default().extend(shares.iter().copied());
            }
        }
        // The placement core keys servers by their peer id bytes.
        let usable_b: Vec<Vec<u8>> = usable.iter().map(|p| p.to_bytes()).collect();
        let fixed_b: BTreeMap<Vec<u8>, BTreeSet<u8>> = fixed
            .iter()
            .map(|(p, s)| (p.to_bytes(), s.clone()))
            .collect();
        let plan = match placement::plan(&si, &usable_b, &fixed_b, params.total, params.happy) {
            Ok(p) => p,
            Err(placement::PlacementError::NotHappy { achievable, .. }) => {
                return Err(not_happy(achievable, &refusals));
            }
        };
        let mut per_server: BTreeMap<PeerId, Vec<u8>> = BTreeMap::new();
        for (&sh, s) in plan.assignments.iter().chain(plan.already_placed.iter()) {
            let Ok(s) = PeerId::from_bytes(s) else {
                continue;
            };
            let s = &s;
            let confirmed =
                held.get(s).is_some_and(|h| h.contains(&sh)) || to_write.get(&sh) == Some(s);
            if !confirmed {
                per_server.entry(*s).or_default().push(sh);
            }
        }
        if per_server.is_empty() {
            break;
        }
        let mut asks: FuturesUnordered<_> = per_server
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
                (s, shnums, rpc_error(r))
            })
            .collect();
        let mut all_placed = true;
        while let Some((s, asked, r)) = asks.next().await {
            match r {
                Ok(Response::Allocated {
                    already_have,
                    allocated,
                    ..
                }) => {
                    for sh in already_have {
                        held.entry(s).or_default().insert(sh);
                    }
                    for sh in allocated {
                        if asked.contains(&sh) && !to_write.contains_key(&sh) {
                            to_write.insert(sh, s);
                        }
                    }
                    if asked.iter().any(|sh| {
                        !held.get(&s).is_some_and(|h| h.contains(sh))
                            && to_write.get(sh) != Some(&s)
                    }) {
                        all_placed = false;
                    }
                }
                Ok(other) => {
                    drop_server(
                        s,
                        format!("unexpected answer {other:?}"),
                        &mut refusals,
                        &mut usable,
                    );
                    all_placed = false;
                }
                Err(e) => {
                    drop_server(s, e, &mut refusals, &mut usable);
                    existing.remove(&s);
                    all_placed = false;
                }
            }
        }
        if all_placed {
            break;
        }
    }
    // Shares held elsewhere need not be written again.
    let held_shares: BTreeSet<u8> = held.values().flatten().copied().collect();
    to_write.retain(|sh, _| !held_shares.contains(sh));
    let mut holdings = held.clone();
    for (&sh, &s) in &to_write {
        holdings.entry(s).or_default().insert(sh);
    }
    let happiness = placement::happiness(&holdings);
    if happiness < usize::from(params.happy) {
        abort_all(node, si, &to_write).await;
        return Err(not_happy(happiness, &refusals));
    }

    lap(&mut timings.placement_ms);
    // 3. Stream: read, encode (in parallel), write.
    let encoder = Arc::new(encoder);
    let pace: SharedPace = Arc::new(std::sync::Mutex::new(hedge::Pace::new(
        to_write.values().copied().collect::<BTreeSet<_>>(),
    )));
    let mut writers: BTreeMap<PeerId, Writer> = BTreeMap::new();
    for &s in to_write.values() {
        writers
            .entry(s)
            .or_insert_with(|| Writer::spawn(node.clone(), s, si, Some(pace.clone())));
    }
    // The servers of happiness that are not written to (they held their shares already):
    // the others the upload cannot do without are the reference for laggards.
    let keep = usize::from(params.happy)
        .saturating_sub(held.keys().filter(|s| !writers.contains_key(s)).count())
        .max(1);
    let mut left: BTreeSet<PeerId> = BTreeSet::new();
    // Leaves a laggard behind if the upload stays happy without it; the caller stops its writer.
    let leave = |l: PeerId, to_write: &mut BTreeMap<u8, PeerId>, left: &mut BTreeSet<PeerId>| {
        leave_behind(node, si, l, params.happy, &held, to_write, left, &pace)
    };
    let mut last_check = std::time::Instant::now();
    let file = match source {
        Source::File(path) => SegmentSource::File(Arc::new(
            tokio::fs::File::open(path).await?.into_std().await,
        )),
        // Positional reads leave the handle's offset alone.
        Source::Open(f) => SegmentSource::File(Arc::new(f.try_clone()?)),
        Source::Bytes(b) => SegmentSource::Bytes(b),
        Source::Stream(s) => SegmentSource::Stream(s),
    };
    let num_segments = encoder.num_segments();
    let mut encoding: FuturesOrdered<tokio::task::JoinHandle<Result<EncodedSegment, UploadError>>> =
        FuturesOrdered::new();
    let mut hashes = Vec::with_capacity(num_segments as usize);
    let mut next_read: u32 = 0;
    let mut done_bytes = 0u64;
    let sent: Result<(), UploadError> = async {
        loop {
            while encoding.len() < ENCODE_DEPTH && next_read < num_segments {
                encoding.push_back(file.encode(&encoder, next_read).await?);
                next_read += 1;
            }
            let Some(seg) = encoding.next().await else {
                return Ok(());
            };
            let mut seg = seg.map_err(|e| UploadError::Encode(e.to_string()))??;
            hashes.push(seg.hashes());
            let offset = encoder.block_offset(seg.index);
            let targets: Vec<(u8, PeerId)> = to_write.iter().map(|(&sh, &s)| (sh, s)).collect();
            for (sh, s) in targets {
                // A server left behind while this segment was being sent gets no more.
                let Some(tx) = writers.get(&s).map(|w| w.tx.clone()) else {
                    continue;
                };
                let Some(block) = seg.blocks.get_mut(usize::from(sh)) else {
                    continue;
                };
                let item = (sh, offset, std::mem::take(block));
                // A failed writer has dropped its queue; its shares are counted as lost below.
                let item = match tx.try_reserve() {
                    Ok(permit) => {
                        permit.send(item);
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => continue,
                    Err(mpsc::error::TrySendError::Full(())) => item,
                };
                let mut since = std::time::Instant::now();
                let mut item = Some(item);
                while let Some(it) = item.take() {
                    let waited = tokio::time::timeout(LAG_CHECK, tx.reserve()).await;
                    let now = std::time::Instant::now();
                    pace_of(&pace).waited(&s, now - since);
                    since = now;
                    match waited {
                        Ok(Ok(permit)) => permit.send(it),
                        Ok(Err(_closed)) => {}
                        Err(_still_full) => item = Some(it),
                    }
                    if now.duration_since(last_check) >= LAG_CHECK {
                        last_check = now;
                        let laggards = pace_of(&pace).laggards(keep, now);
                        for l in laggards {
                            if leave(l, &mut to_write, &mut left)
                                && let Some(w) = writers.remove(&l)
                            {
                                w.task.abort();
                            }
                        }
                        if !writers.contains_key(&s)
                            && let Some(it) = item.take()
                        {
                            crate::protocol::recycle_bulk(it.2);
                        }
                    }
                }
            }
            // Blocks of shares already held elsewhere: their buffers serve the next segment.
            for block in seg.blocks.drain(..) {
                crate::protocol::recycle_bulk(block);
            }
            done_bytes += encoder.segment_len(seg.index) as u64;
            progress(done_bytes);
        }
    }
    .await;
    if let Err(e) = sent {
        // Nothing more to read (a body cut short, a file that shrank) or a segment that would
        // not encode: the shares begun are dropped, not left for the servers' restart.
        drop(encoding);
        drop(writers);
        abort_all(node, si, &to_write).await;
        return Err(e);
    }
    // Every block is queued; the writers finish their queues. A server that turns slow now
    // (its queue and what is in flight may be a few MiB) is left behind like one that turned
    // slow earlier: the wait for it counts as holding the upload back.
    let mut failed: BTreeSet<PeerId> = BTreeSet::new();
    let mut aborts: BTreeMap<PeerId, tokio::task::AbortHandle> = BTreeMap::new();
    let mut draining: FuturesUnordered<_> = writers
        .into_iter()
        .map(|(s, w)| {
            drop(w.tx);
            aborts.insert(s, w.task.abort_handle());
            let task = w.task;
            async move { (s, task.await) }
        })
        .collect();
    let mut last = std::time::Instant::now();
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + LAG_CHECK, LAG_CHECK);
    loop {
        tokio::select! {
            next = draining.next() => {
                let Some((s, r)) = next else { break };
                aborts.remove(&s);
                let e = match r {
                    Ok(Ok(())) => continue,
                    // Left behind during the drain: its task was stopped.
                    Err(e) if e.is_cancelled() && left.contains(&s) => continue,
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                refusals.push(format!("{s}: {e}"));
                failed.insert(s);
            }
            _ = check.tick() => {
                let now = std::time::Instant::now();
                let laggards = {
                    let mut p = pace_of(&pace);
                    for s in aborts.keys() {
                        p.waited(s, now - last);
                    }
                    p.laggards(keep, now)
                };
                last = now;
                for l in laggards {
                    if leave(l, &mut to_write, &mut left)
                        && let Some(a) = aborts.remove(&l)
                    {
                        a.abort();
                    }
                }
            }
        }
    }
    let encoder =
        Arc::try_unwrap(encoder).map_err(|_| UploadError::Encode("encoder still shared".into()))?;
    let encoded = encoder
        .finish(hashes)
        .map_err(|e| UploadError::Encode(e.to_string()))?;

    lap(&mut timings.stream_ms);
    // Shares of a file that changed under the reader are dropped before any is closed.
    if let Err(e) = unchanged() {
        abort_all(node, si, &to_write).await;
        return Err(e);
    }
    // 4. Close every written share with its metadata.
    let mut closes: FuturesUnordered<_> = to_write
        .iter()
        .filter(|(_, s)| !failed.contains(s))
        .filter_map(|(&sh, &s)| {
            let meta = encoded.share_metas.get(usize::from(sh))?.to_bytes();
            Some(async move {
                let r = node
                    .rpc(
                        s,
                        Request::Close {
                            si,
                            shnum: sh,
                            meta: ByteBuf::from(meta),
                        },
                    )
                    .await;
                (sh, s, rpc_error(r))
            })
        })
        .collect();
    let mut final_holdings = held.clone();
    let mut placed: BTreeMap<u8, String> = BTreeMap::new();
    for (s, shares) in &held {
        for sh in shares {
            placed.insert(*sh, s.to_string());
        }
    }
    let mut closed: BTreeMap<PeerId, u64> = BTreeMap::new();
    while let Some((sh, s, r)) = closes.next().await {
        match r {
            Ok(_) => {
                final_holdings.entry(s).or_default().insert(sh);
                placed.insert(sh, s.to_string());
                *closed.entry(s).or_default() += 1;
            }
            Err(e) => refusals.push(format!("{s}: closing share {sh}: {e}")),
        }
    }
    record(node, &encoded.cap, &final_holdings, closed, data_len);
    let happiness = placement::happiness(&final_holdings);
    if happiness < usize::from(params.happy) {
        return Err(not_happy(happiness, &refusals));
    }
    Ok(PutResult {
        cap: ReadCap::Chk(encoded.cap).to_string(),
        size,
        placement: placed,
        happiness,
        already_present: held_shares.len(),
        unanswered: unanswered.iter().map(ToString::to_string).collect(),
        left_behind: left.iter().map(ToString::to_string).collect(),
        put_aside: put_aside.iter().map(ToString::to_string).collect(),
        timings: {
            lap(&mut timings.close_ms);
            timings
        },
    })
}

/// Leaves laggard `server` behind (its shares dropped, the server asked to abort them in the
/// background) when the shares held and still being written keep the upload happy without
/// it, and says whether it did (the caller then stops its writer); a server that has not
/// answered a write for [`hedge::LAG_FLOOR`] is also marked silent.
#[allow(clippy::too_many_arguments)]
fn leave_behind(
    node: &NodeHandle,
    si: [u8; 16],
    server: PeerId,
    happy: u8,
    held: &BTreeMap<PeerId, BTreeSet<u8>>,
    to_write: &mut BTreeMap<u8, PeerId>,
    left: &mut BTreeSet<PeerId>,
    pace: &SharedPace,
) -> bool {
    let mut without = held.clone();
    for (&sh, &s) in to_write.iter().filter(|(_, s)| **s != server) {
        without.entry(s).or_default().insert(sh);
    }
    if placement::happiness(&without) < usize::from(happy) {
        return false;
    }
    let stalled = {
        let mut p = pace_of(pace);
        let stalled = p.stalled(&server, std::time::Instant::now());
        p.remove(&server);
        stalled
    };
    if stalled >= hedge::LAG_FLOOR {
        node.went_silent(server);
    }
    node.went_slow(server);
    let dropped: BTreeMap<u8, PeerId> = to_write
        .iter()
        .filter(|(_, s)| **s == server)
        .map(|(&sh, &s)| (sh, s))
        .collect();
    to_write.retain(|_, s| *s != server);
    tracing::info!(
        %server,
        shares = ?dropped.keys().collect::<Vec<_>>(),
        "a server far slower than the others is left behind; the upload goes on without its shares"
    );
    left.insert(server);
    let node = node.clone();
    tokio::spawn(async move { abort_all(&node, si, &dropped).await });
    true
}

/// Files up to this size are encoded whole in memory and placed with one [`Request::Put`] per
/// server: no listing, no allocate/write/close round trips.
pub const SMALL_FILE: u64 = 128 * 1024;

/// Storage servers to place shares on, why others were left out, and the servers put aside as
/// silent or lagging. Servers that failed audits, and servers lately silent or far slower
/// than the others ([`crate::hedge::Silent`]), get no new shares while enough others remain.
async fn candidates(
    node: &NodeHandle,
    params: EncodingParams,
) -> (Vec<PeerId>, Vec<String>, Vec<PeerId>) {
    let (mut servers, refusing) = node.storage_candidates();
    let suspects = {
        let f = node.friends().clone();
        tokio::task::spawn_blocking(move || f.suspects().unwrap_or_default())
            .await
            .unwrap_or_default()
    };
    if !suspects.is_empty() {
        let trusted: Vec<PeerId> = servers
            .iter()
            .filter(|s| !suspects.contains(s))
            .copied()
            .collect();
        if trusted.len() >= usize::from(params.happy) {
            servers = trusted;
        }
    }
    // Servers that left a request unanswered lately, or that an upload left behind as far
    // slower than the others, wait their turn while enough others remain (a hung friend costs
    // the first upload that met it, not every one after; a friend on a slow link the first
    // large upload in ten minutes).
    let kept = node.put_aside(servers.clone(), usize::from(params.happy));
    let put_aside: Vec<PeerId> = servers.into_iter().filter(|s| !kept.contains(s)).collect();
    servers = kept;
    // Members whose published grants refuse this node are not asked, unless the others are
    // too few (their record may be older than their owner's latest decision): then they
    // answer for themselves.
    let mut refusals: Vec<String> = Vec::new();
    if servers.len() < usize::from(params.happy) {
        servers.extend(refusing.iter().map(|(p, _)| *p));
    } else {
        refusals.extend(refusing.iter().map(|(p, why)| format!("{p}: {why}")));
    }
    (servers, refusals, put_aside)
}

/// A server that refused or failed during placement: say why, and plan without it.
fn drop_server(s: PeerId, why: String, refusals: &mut Vec<String>, usable: &mut Vec<PeerId>) {
    refusals.push(format!("{s}: {why}"));
    usable.retain(|x| *x != s);
}

fn not_happy_error(
    params: EncodingParams,
    reachable: usize,
    achievable: usize,
    refusals: &[String],
) -> UploadError {
    let mut message = format!(
        "upload needs shares on {} distinct servers (happy={}) but only {} storage server{} reachable (this node included)",
        params.happy,
        params.happy,
        reachable,
        if reachable == 1 { " was" } else { "s were" },
    );
    if achievable != reachable {
        message.push_str(&format!("; shares could be placed on {achievable}"));
    }
    if !refusals.is_empty() {
        message.push_str(&format!("; refused: {}", refusals.join("; ")));
    }
    UploadError::NotHappy {
        happy: params.happy,
        reachable,
        message,
    }
}

/// Remembers a finished upload: its verify cap and holders for lease renewal and audits (never
/// the read cap), and what this node now stores on each server (the friends page).
fn record(
    node: &NodeHandle,
    cap: &ChkReadCap,
    holdings: &BTreeMap<PeerId, BTreeSet<u8>>,
    written: BTreeMap<PeerId, u64>,
    data_len: u64,
) {
    let holdings = holdings.clone();
    let verify = cap.verify_cap();
    let db = node.database().clone();
    let friends = node.friends().clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::maintenance::record_upload(&db, &verify, &holdings) {
            tracing::warn!(error = %e, "recording the upload for lease renewal failed");
        }
        let items: Vec<(PeerId, u64, u64)> = written
            .into_iter()
            .map(|(s, n)| (s, data_len.saturating_mul(n), n))
            .collect();
        if let Err(e) = friends.placed_many(&items) {
            tracing::warn!(error = %e, "recording placed shares failed");
        }
    });
}

/// Uploads a small file: encodes it whole on the blocking pool, plans placement over the ring
/// and sends each server its whole shares in one [`Request::Put`]. Servers answer which shares
/// they already held (convergent re-upload: nothing is written twice) or now store; servers
/// that fail are dropped and the rest re-planned, as for large files.
async fn upload_small(
    node: &NodeHandle,
    encoder: FileEncoder,
    data: &[u8],
    params: EncodingParams,
    mut timings: Timings,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<PutResult, UploadError> {
    let mut phase = std::time::Instant::now();
    let si = encoder.storage_index();
    let data_len = encoder.share_data_len();
    let size = data.len() as u64;
    let plaintext = data.to_vec();
    let (shares, encoded) = tokio::task::spawn_blocking(move || {
        let n = usize::from(params.total);
        let mut shares = vec![vec![0u8; data_len as usize]; n];
        let mut hashes = Vec::with_capacity(encoder.num_segments() as usize);
        let mut at = 0usize;
        for i in 0..encoder.num_segments() {
            let len = encoder.segment_len(i);
            let seg = encoder
                .encode_segment(i, &plaintext[at..at + len])
                .map_err(|e| e.to_string())?;
            at += len;
            let off = encoder.block_offset(i) as usize;
            for (share, block) in shares.iter_mut().zip(&seg.blocks) {
                share[off..off + block.len()].copy_from_slice(block);
            }
            hashes.push(seg.hashes());
        }
        let encoded = encoder.finish(hashes).map_err(|e| e.to_string())?;
        Ok::<_, String>((shares, encoded))
    })
    .await
    .map_err(|e| UploadError::Encode(e.to_string()))?
    .map_err(UploadError::Encode)?;
    progress(size);
    timings.stream_ms = phase.elapsed().as_millis() as u64;
    phase = std::time::Instant::now();

    let (mut usable, mut refusals, put_aside) = candidates(node, params).await;
    // Who holds what (confirmed by the server), and what each server newly stored.
    let mut held: BTreeMap<PeerId, BTreeSet<u8>> = BTreeMap::new();
    let mut written: BTreeMap<PeerId, u64> = BTreeMap::new();
    let mut already_present = 0usize;
    let mut unanswered: Vec<PeerId> = Vec::new();
    for _round in 0..3 {
        let usable_b: Vec<Vec<u8>> = usable.iter().map(|p| p.to_bytes()).collect();
        let fixed_b: BTreeMap<Vec<u8>, BTreeSet<u8>> = held
            .iter()
            .map(|(p, s)| (p.to_bytes(), s.clone()))
            .collect();
        let plan = match placement::plan(&si, &usable_b, &fixed_b, params.total, params.happy) {
            Ok(p) => p,
            Err(placement::PlacementError::NotHappy { achievable, .. }) => {
                return Err(not_happy_error(params, usable.len(), achievable, &refusals));
            }
        };
        let mut per_server: BTreeMap<PeerId, Vec<u8>> = BTreeMap::new();
        for (&sh, s) in &plan.assignments {
            if let Ok(s) = PeerId::from_bytes(s) {
                per_server.entry(s).or_default().push(sh);
            }
        }
        if per_server.is_empty() {
            break;
        }
        // One request per server, split where a server's shares would exceed a frame's
        // `MAX_PUT` (k=1 grids with many shares per server).
        let mut batches: Vec<(PeerId, Vec<u8>, Vec<PutShare>, usize)> = Vec::new();
        for (s, shnums) in per_server {
            for sh in shnums {
                let (Some(data), Some(meta)) = (
                    shares.get(usize::from(sh)),
                    encoded.share_metas.get(usize::from(sh)),
                ) else {
                    continue;
                };
                let share = PutShare {
                    shnum: sh,
                    data: ByteBuf::from(data.clone()),
                    meta: ByteBuf::from(meta.to_bytes()),
                };
                let len = share.put_len();
                match batches.last_mut() {
                    Some((b, asked, list, total))
                        if *b == s && *total + len <= crate::protocol::MAX_PUT =>
                    {
                        asked.push(sh);
                        list.push(share);
                        *total += len;
                    }
                    _ => batches.push((s, vec![sh], vec![share], len)),
                }
            }
        }
        // Requests still unanswered per server: once the placement is happy, the rest are
        // waited for only up to `hedge::stragglers_until`.
        let mut waiting: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (s, ..) in &batches {
            *waiting.entry(*s).or_default() += 1;
        }
        let asked_at = tokio::time::Instant::now();
        let mut cutoff: Option<tokio::time::Instant> = None;
        let mut puts: FuturesUnordered<_> = batches
            .into_iter()
            .map(|(s, shnums, shares, _)| async move {
                (s, shnums, put_batched(node, s, si, shares).await)
            })
            .collect();
        let mut all_placed = true;
        while let Some((s, asked, r)) = next_before(&mut puts, cutoff).await {
            if let Some(n) = waiting.get_mut(&s) {
                *n -= 1;
            }
            match r {
                Ok(Response::Stored {
                    already_have,
                    stored,
                    ..
                }) => {
                    already_present += already_have.len();
                    *written.entry(s).or_default() += stored.len() as u64;
                    let h = held.entry(s).or_default();
                    h.extend(already_have.into_iter().chain(stored));
                    if asked.iter().any(|sh| !h.contains(sh)) {
                        all_placed = false;
                    }
                }
                Ok(other) => {
                    drop_server(
                        s,
                        format!("unexpected answer {other:?}"),
                        &mut refusals,
                        &mut usable,
                    );
                    all_placed = false;
                }
                Err(e) => {
                    drop_server(s, e, &mut refusals, &mut usable);
                    all_placed = false;
                }
            }
            if cutoff.is_none() && placement::happiness(&held) >= usize::from(params.happy) {
                cutoff = Some(asked_at + hedge::stragglers_after(asked_at.elapsed()));
            }
        }
        drop(puts);
        // Servers still silent at the cutoff: their shares go to the others next round.
        for (s, n) in waiting {
            if n > 0 {
                node.went_silent(s);
                usable.retain(|x| *x != s);
                if !unanswered.contains(&s) {
                    unanswered.push(s);
                }
                all_placed = false;
            }
        }
        if all_placed {
            break;
        }
    }
    timings.close_ms = phase.elapsed().as_millis() as u64;
    record(node, &encoded.cap, &held, written, data_len);
    let happiness = placement::happiness(&held);
    if happiness < usize::from(params.happy) {
        return Err(not_happy_error(params, usable.len(), happiness, &refusals));
    }
    let placement = held
        .iter()
        .flat_map(|(s, shs)| shs.iter().map(move |sh| (*sh, s.to_string())))
        .collect();
    Ok(PutResult {
        cap: ReadCap::Chk(encoded.cap).to_string(),
        size,
        placement,
        happiness,
        already_present,
        unanswered: unanswered.iter().map(ToString::to_string).collect(),
        left_behind: Vec::new(),
        put_aside: put_aside.iter().map(ToString::to_string).collect(),
        timings,
    })
}

pub(crate) async fn abort_all(node: &NodeHandle, si: [u8; 16], to_write: &BTreeMap<u8, PeerId>) {
    let aborts: FuturesUnordered<_> = to_write
        .iter()
        .map(|(&shnum, &s)| node.rpc(s, Request::Abort { si, shnum }))
        .collect();
    let _: Vec<_> = aborts.collect().await;
}

/// One server's writer task: blocks `(shnum, offset, data)` in, a few writes in flight.
pub(crate) struct Writer {
    pub(crate) tx: mpsc::Sender<(u8, u64, Vec<u8>)>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), String>>,
}

/// An upload's [`hedge::Pace`], shared by its writers (who time their writes) and the loop
/// that feeds them (which times its waits).
pub(crate) type SharedPace = Arc<std::sync::Mutex<hedge::Pace<PeerId>>>;

fn pace_of(p: &SharedPace) -> std::sync::MutexGuard<'_, hedge::Pace<PeerId>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Writer {
    /// A writer to `server`; with `pace`, each write's start and answer are noted there.
    pub(crate) fn spawn(
        node: NodeHandle,
        server: PeerId,
        si: [u8; 16],
        pace: Option<SharedPace>,
    ) -> Writer {
        let (tx, mut rx) = mpsc::channel::<(u8, u64, Vec<u8>)>(WRITE_QUEUE);
        let task = tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let mut open = true;
            while open || !inflight.is_empty() {
                tokio::select! {
                    item = rx.recv(), if open && inflight.len() < WRITES_IN_FLIGHT => match item {
                        Some((shnum, offset, data)) => {
                            let node = node.clone();
                            let pace = pace.clone();
                            if let Some(p) = &pace {
                                pace_of(p).sent(&server, std::time::Instant::now());
                            }
                            inflight.push(async move {
                                let r = node.rpc(server, Request::Write { si, shnum, offset, data: BulkBuf::from(data) }).await;
                                if let Some(p) = &pace {
                                    pace_of(p).answered(&server, std::time::Instant::now());
                                }
                                rpc_error(r).map(|_| ()).map_err(|e| format!("writing share {shnum}: {e}"))
                            });
                        }
                        None => open = false,
                    },
                    Some(r) = inflight.next() => r?,
                }
            }
            Ok(())
        });
        Writer { tx, task }
    }
}

/// One share the downloader reads from.
struct ShareSource {
    server: PeerId,
    shnum: u8,
    share: Arc<VerifiedShare>,
}

impl ShareSource {
    fn planned(&self) -> Planned {
        (self.server, self.shnum, self.share.clone())
    }

    fn is(&self, server: PeerId, shnum: u8) -> bool {
        self.server == server && self.shnum == shnum
    }
}

/// The shares a download reads from, the spare, and the rest.
struct Sources<'a> {
    /// `k` shares read from.
    active: Vec<ShareSource>,
    /// One more verified share, read when one of `active` fails or is slow.
    spare: Option<ShareSource>,
    want_spare: bool,
    /// Listed shares not read from yet, best first.
    candidates: VecDeque<(PeerId, u8)>,
    /// Listings that had not come when the download started.
    late: FuturesUnordered<futures::future::BoxFuture<'a, ListAnswer>>,
    bad: Vec<BadShare>,
    slow: Vec<SlowShare>,
    /// Servers whose listing has not come, or came as an error.
    unanswered: BTreeMap<PeerId, Option<String>>,
    servers_asked: usize,
}

/// The order in which a download tries shares, from the servers' `List` answers (fastest
/// first, with how long each took): the fastest server's first share, then the next server's
/// (spread over distinct servers), then everyone's other shares. Primary shares (numbers below
/// k: a segment's own bytes, decoded without Reed-Solomon work) come first when they are on
/// servers that answered about as fast as the k-th fastest (within 1.5 times + 10 ms): on
/// loopback or a LAN that is all of them, even on a busy machine; over the internet only
/// servers about as close as the fastest ones. Before all of them comes one share this node
/// (`local`) holds itself, a primary one if it has one: it is read in process, so it costs no
/// transfer, no TLS and no other node's work, and if it is a parity share, rebuilding the
/// missing data block from it costs far less than fetching one.
fn order_candidates(
    listed: &[(PeerId, Vec<u8>, Duration)],
    needed: u8,
    local: Option<PeerId>,
) -> VecDeque<(PeerId, u8)> {
    let k = usize::from(needed);
    let holding: Vec<&(PeerId, Vec<u8>, Duration)> =
        listed.iter().filter(|(_, v, _)| !v.is_empty()).collect();
    let near = holding
        .get(k.saturating_sub(1))
        .or(holding.last())
        .map(|(_, _, t)| hedge::about_as_fast(*t));
    let mut candidates: VecDeque<(PeerId, u8)> = VecDeque::new();
    let mut seen = BTreeSet::new();
    let mut used = BTreeSet::new();
    if let Some((s, shares, _)) = holding.iter().find(|(s, _, _)| Some(*s) == local) {
        let own = shares.iter().find(|&&sh| usize::from(sh) < k);
        if let Some(&sh) = own.or(shares.first()) {
            seen.insert(sh);
            used.insert(*s);
            candidates.push_back((*s, sh));
        }
    }
    for (s, shares, t) in &holding {
        if used.contains(s) || near.is_none_or(|near| *t > near) {
            continue;
        }
        if let Some(&sh) = shares
            .iter()
            .find(|&&sh| usize::from(sh) < k && !seen.contains(&sh))
        {
            seen.insert(sh);
            used.insert(*s);
            candidates.push_back((*s, sh));
        }
    }
    let mut extra = Vec::new();
    for (s, shares, _) in &holding {
        for (i, &sh) in shares.iter().enumerate() {
            if candidates.contains(&(*s, sh)) {
                continue;
            }
            if i == 0 && !used.contains(s) && seen.insert(sh) {
                candidates.push_back((*s, sh));
            } else {
                extra.push((*s, sh));
            }
        }
    }
    // Every listed (server, share) is now either a candidate or in `extra`, never both.
    candidates.extend(extra);
    candidates
}

/// Downloads `cap` into `out`.
pub async fn download<W: AsyncWrite + Unpin + Send>(
    node: &NodeHandle,
    cap: &ReadCap,
    out: &mut W,
) -> Result<DownloadReport, DownloadError> {
    download_to(node, cap, &mut Writes(out)).await
}

/// Where a download's decoded segments go, in file order: a writer ([`download`]) or
/// something that takes each segment's buffers as they are (the HTTP body: no copy).
pub trait SegmentSink: Send {
    /// The next segment's bytes; the buffers are the sink's now.
    fn segment(
        &mut self,
        bytes: codec::SegmentBytes,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Every segment was given.
    fn finish(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A writer as a [`SegmentSink`]: each segment is written out, then the writer flushed; the
/// written buffers go back to the block pool for the blocks still to come.
struct Writes<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin + Send> SegmentSink for Writes<'_, W> {
    async fn segment(&mut self, bytes: codec::SegmentBytes) -> std::io::Result<()> {
        for piece in bytes.into_pieces() {
            self.0.write_all(&piece).await?;
            crate::protocol::recycle_bulk(piece);
        }
        Ok(())
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }
}

/// [`download`] into a [`SegmentSink`].
pub async fn download_to<S: SegmentSink>(
    node: &NodeHandle,
    cap: &ReadCap,
    out: &mut S,
) -> Result<DownloadReport, DownloadError> {
    let cap = match cap {
        ReadCap::Lit(lit) => {
            out.segment(lit.data.clone().into()).await?;
            out.finish().await?;
            return Ok(DownloadReport {
                size: lit.data.len() as u64,
                ..DownloadReport::default()
            });
        }
        ReadCap::Chk(c) => c,
    };
    let si = cap.storage_index();
    let servers = node.storage_servers();
    let mut src = Sources::list(node, si, &servers, cap.needed).await;
    // A spare share to read around a slow server, for files of more than a few blocks; its
    // metadata is read with the first shares', in the same round trip.
    src.want_spare = cap.size > SMALL_FILE;
    let (ueb, crypttext_hashes) = src.first_shares(node, si, cap).await?;
    let ueb = Arc::new(ueb);
    let crypttext_hashes = Arc::new(crypttext_hashes);
    src.fill(node, si, &ueb, cap.needed).await?;

    let key = Arc::new(cap.key.clone());
    let times = Arc::new(std::sync::Mutex::new(hedge::BlockTimes::default()));
    let mut report = DownloadReport::default();
    let mut fetching: FuturesOrdered<_> = FuturesOrdered::new();
    let mut next = 0u32;
    let num_segments = ueb.num_segments;
    let needed = usize::from(cap.needed);
    loop {
        while fetching.len() < FETCH_DEPTH && next < num_segments {
            let plan: Vec<Planned> = src.active.iter().map(ShareSource::planned).collect();
            let spare = src.spare.as_ref().map(ShareSource::planned);
            // Fetch, verify and decode: each segment ahead is its own task, so its blocks are
            // taken in and decoded on the blocking pool while this task writes the previous
            // one out (a future polled only by this loop would sit still during the write),
            // and both cores work. Dropped with the download, the tasks stop.
            let at = BlockAt::new(si, &ueb, next);
            let fetch = fetch_segment_hedged(node.clone(), at, needed, plan, spare, times.clone());
            let (u, k, ct) = (ueb.clone(), key.clone(), crypttext_hashes.clone());
            fetching.push_back(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                async move {
                    let mut fetched = fetch.await;
                    let (seg, got) = (at.seg, std::mem::take(&mut fetched.good));
                    if got.len() < needed {
                        return (seg, Err(got), fetched);
                    }
                    let plain = tokio::task::spawn_blocking(move || {
                        codec::decode_segment(&u, &k, &ct, seg, got)
                    })
                    .await;
                    (seg, Ok(plain), fetched)
                },
            )));
            next += 1;
        }
        let Some(done) = fetching.next().await else {
            break;
        };
        let (seg, decoded, fetched) = done.map_err(|e| std::io::Error::other(e.to_string()))?;
        report.spare_reads += u64::from(fetched.spare_read);
        if src.drop_failed_and_slow(fetched.failures, fetched.slow) {
            // A spare stands in for what was dropped, and a new spare is read.
            src.fill(node, si, &ueb, cap.needed).await?;
        }
        let plain = match decoded {
            Ok(plain) => plain,
            Err(mut got) => {
                // Replace failed shares and fetch this segment's missing blocks from the new
                // ones.
                while got.len() < needed {
                    src.fill(node, si, &ueb, cap.needed).await?;
                    let have: BTreeSet<u8> = got.iter().map(SegmentBlock::shnum).collect();
                    let missing: Vec<Planned> = src
                        .active
                        .iter()
                        .filter(|a| !have.contains(&a.shnum))
                        .map(ShareSource::planned)
                        .collect();
                    let (_, more, failures) =
                        fetch_segment(node.clone(), si, ueb.clone(), seg, missing).await;
                    got.extend(more);
                    src.drop_failed_and_slow(failures, Vec::new());
                }
                let (u, k, ct) = (ueb.clone(), key.clone(), crypttext_hashes.clone());
                tokio::task::spawn_blocking(move || codec::decode_segment(&u, &k, &ct, seg, got))
                    .await
            }
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let plain = match plain {
            Ok(p) => p,
            Err(e) => {
                // Blocks verified but the segment does not decode to what the cap says: the
                // uploader's shares disagree. Nothing more can be done with these shares.
                src.bad.push(BadShare {
                    server: "(several)".into(),
                    shnum: 0,
                    problem: e.to_string(),
                });
                return Err(src.not_enough(cap.needed));
            }
        };
        report.size += plain.len() as u64;
        out.segment(plain).await?;
    }
    out.finish().await?;
    let mut used: Vec<String> = src.active.iter().map(|a| a.server.to_string()).collect();
    used.sort();
    used.dedup();
    report.servers_used = used;
    report.bad_shares = std::mem::take(&mut src.bad);
    for b in &report.bad_shares {
        tracing::warn!(server = %b.server, shnum = b.shnum, problem = %b.problem, "bad share");
    }
    report.slow_shares = std::mem::take(&mut src.slow);
    for s in &report.slow_shares {
        tracing::info!(server = %s.server, shnum = s.shnum, "slow share read around");
    }
    while let Some(Some((s, r, _))) = src.late.next().now_or_never() {
        src.listed(s, r.err());
    }
    report.unanswered = src
        .unanswered
        .iter()
        .map(|(s, error)| Unanswered {
            server: s.to_string(),
            error: error.clone(),
        })
        .collect();
    Ok(report)
}

impl<'a> Sources<'a> {
    /// Asks every server in `servers` for its shares of `si` and orders the answers
    /// ([`order_candidates`]); returns once [`hedge::start_after`] says enough came, and keeps
    /// the listings still out for later.
    async fn list(
        node: &'a NodeHandle,
        si: [u8; 16],
        servers: &[PeerId],
        needed: u8,
    ) -> Sources<'a> {
        let start = tokio::time::Instant::now();
        let mut asks = ask_listings(node, si, servers);
        let answers = answers_until(&mut asks, start, |answers| {
            let holding: Vec<(&[u8], Duration)> = answers
                .iter()
                .filter_map(|(_, r, t)| Some((r.as_ref().ok()?.as_slice(), *t)))
                .collect();
            hedge::start_after(&holding, needed)
        })
        .await;
        let mut src = Sources {
            active: Vec::new(),
            spare: None,
            want_spare: false,
            candidates: VecDeque::new(),
            late: asks,
            bad: Vec::new(),
            slow: Vec::new(),
            unanswered: servers.iter().map(|s| (*s, None)).collect(),
            servers_asked: servers.len(),
        };
        let mut listed: Vec<(PeerId, Vec<u8>, Duration)> = Vec::new();
        for (s, r, t) in answers {
            match r {
                Ok(shares) => {
                    src.listed(s, None);
                    listed.push((s, shares, t));
                }
                Err(e) => src.listed(s, Some(e)),
            }
        }
        src.candidates = order_candidates(&listed, needed, Some(node.peer_id()));
        src
    }

    fn report(&mut self, server: PeerId, shnum: u8, problem: String) {
        self.bad.push(BadShare {
            server: server.to_string(),
            shnum,
            problem,
        });
    }

    fn not_enough(&self, needed: u8) -> DownloadError {
        DownloadError::NotEnoughShares {
            needed,
            found: self.active.len(),
            servers: self.servers_asked,
            bad: self.bad.clone(),
        }
    }

    /// A listing came late: the server's shares (`error` none) or why not.
    fn listed(&mut self, server: PeerId, error: Option<String>) {
        match error {
            None => self.unanswered.remove(&server),
            Some(e) => self.unanswered.insert(server, Some(e)),
        };
    }

    /// The share numbers read from or kept as the spare.
    fn taken(&self) -> BTreeSet<u8> {
        self.active
            .iter()
            .chain(&self.spare)
            .map(|a| a.shnum)
            .collect()
    }

    /// The next candidate share whose number is not `taken`: from the listings the download
    /// started with, then from those that came later (waiting for one only when `wait`).
    async fn next_candidate(&mut self, taken: &BTreeSet<u8>, wait: bool) -> Option<(PeerId, u8)> {
        loop {
            if let Some(i) = self
                .candidates
                .iter()
                .position(|(_, sh)| !taken.contains(sh))
            {
                return self.candidates.remove(i);
            }
            let (s, r, _) = if wait {
                self.late.next().await
            } else {
                self.late.next().now_or_never().flatten()
            }?;
            match r {
                Ok(shares) => {
                    self.listed(s, None);
                    self.candidates.extend(shares.into_iter().map(|sh| (s, sh)));
                }
                Err(e) => self.listed(s, Some(e)),
            }
        }
    }

    /// The metadata of up to `want` more shares with numbers not taken yet, read at once
    /// (waiting for a late listing only when `wait` and no candidate is left).
    async fn fetch_metas(
        &mut self,
        node: &NodeHandle,
        si: [u8; 16],
        want: usize,
        wait: bool,
    ) -> Vec<(PeerId, u8, Result<ShareMeta, String>)> {
        let mut taken = self.taken();
        let mut picks = Vec::new();
        while picks.len() < want {
            let Some((s, sh)) = self.next_candidate(&taken, wait && picks.is_empty()).await else {
                break;
            };
            taken.insert(sh);
            picks.push((s, sh));
        }
        futures::future::join_all(
            picks
                .into_iter()
                .map(|(s, sh)| async move { (s, sh, fetch_meta(node, s, si, sh).await) }),
        )
        .await
    }

    /// The first shares: `k` (and a spare when wanted) whose metadata is read at once, the
    /// URI extension block checked against the cap on the first that has one that verifies.
    async fn first_shares(
        &mut self,
        node: &NodeHandle,
        si: [u8; 16],
        cap: &ChkReadCap,
    ) -> Result<(UriExtension, Vec<[u8; 32]>), DownloadError> {
        let want = usize::from(cap.needed) + usize::from(self.want_spare);
        loop {
            let metas = self.fetch_metas(node, si, want, true).await;
            if metas.is_empty() {
                return Err(self.not_enough(cap.needed));
            }
            let mut found = None;
            let mut read = Vec::new();
            for (s, sh, meta) in metas {
                let meta = match meta {
                    Ok(meta) => meta,
                    Err(e) => {
                        self.report(s, sh, e);
                        continue;
                    }
                };
                if found.is_none() {
                    match codec::verify_ueb(cap, &meta.ueb) {
                        Ok(ueb) => found = Some((ueb, meta.crypttext_hashes.clone())),
                        Err(e) => {
                            self.report(s, sh, e.to_string());
                            continue;
                        }
                    }
                }
                read.push((s, sh, meta));
            }
            if let Some((ueb, ct)) = found {
                for (s, sh, meta) in read {
                    self.add(&ueb, s, sh, meta, cap.needed);
                }
                return Ok((ueb, ct));
            }
        }
    }

    /// Verifies a share's metadata against the UEB and takes it: as one to read from while
    /// fewer than `needed`, else as the spare.
    fn add(&mut self, ueb: &UriExtension, server: PeerId, shnum: u8, meta: ShareMeta, needed: u8) {
        match VerifiedShare::new(ueb, meta) {
            Ok(v) => {
                let source = ShareSource {
                    server,
                    shnum,
                    share: Arc::new(v),
                };
                if self.active.len() < usize::from(needed) {
                    self.active.push(source);
                } else if self.spare.is_none() {
                    self.spare = Some(source);
                }
            }
            Err(e) => self.report(server, shnum, e.to_string()),
        }
    }

    /// Tops the shares read from up to `needed` distinct verified ones, the spare first, and
    /// the spare up when one is wanted (without waiting for late listings: it is only a
    /// spare).
    async fn fill(
        &mut self,
        node: &NodeHandle,
        si: [u8; 16],
        ueb: &UriExtension,
        needed: u8,
    ) -> Result<(), DownloadError> {
        let k = usize::from(needed);
        loop {
            if self.active.len() < k
                && let Some(spare) = self.spare.take()
            {
                self.active.push(spare);
                continue;
            }
            let missing = k.saturating_sub(self.active.len());
            let spare = usize::from(self.want_spare && self.spare.is_none());
            if missing + spare == 0 {
                return Ok(());
            }
            let metas = if missing > 0 {
                self.fetch_metas(node, si, missing + spare, true).await
            } else {
                // Only a spare is wanted: not worth holding the download up for.
                let metas = self.fetch_metas(node, si, spare, false);
                tokio::time::timeout(hedge::HEDGE_FIRST, metas)
                    .await
                    .unwrap_or_default()
            };
            if metas.is_empty() {
                return if missing > 0 {
                    Err(self.not_enough(needed))
                } else {
                    Ok(())
                };
            }
            for (s, sh, meta) in metas {
                match meta {
                    Ok(meta) => self.add(ueb, s, sh, meta, needed),
                    Err(e) => self.report(s, sh, e),
                }
            }
        }
    }

    /// Stops reading from share `shnum` on `server`; whether it was read from.
    fn drop_active(&mut self, server: PeerId, shnum: u8) -> bool {
        let before = self.active.len();
        self.active.retain(|a| !a.is(server, shnum));
        self.active.len() < before
    }

    /// Stops reading from shares that failed (reported) and from shares a segment was read
    /// around because they were slow (kept as candidates, last); whether any was dropped.
    fn drop_failed_and_slow(
        &mut self,
        failures: Vec<(PeerId, u8, String)>,
        slow: Vec<(PeerId, u8)>,
    ) -> bool {
        let mut dropped = false;
        for (s, sh, problem) in failures {
            let spare = self.spare.as_ref().is_some_and(|a| a.is(s, sh));
            if spare {
                self.spare = None;
            } else if !self.drop_active(s, sh) {
                continue;
            }
            self.report(s, sh, problem);
            dropped = true;
        }
        for (s, sh) in slow {
            if self.drop_active(s, sh) {
                self.slow.push(SlowShare {
                    server: s.to_string(),
                    shnum: sh,
                });
                self.candidates.push_back((s, sh));
                dropped = true;
            }
        }
        dropped
    }
}

pub(crate) async fn fetch_meta(
    node: &NodeHandle,
    server: PeerId,
    si: [u8; 16],
    shnum: u8,
) -> Result<ShareMeta, String> {
    match rpc_error(node.rpc(server, Request::ReadMeta { si, shnum }).await)? {
        Response::Bytes(b) => {
            ShareMeta::from_bytes(&b, crate::protocol::MAX_META).map_err(|e| e.to_string())
        }
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// A share to read blocks from: its server, number and verified metadata.
pub(crate) type Planned = (PeerId, u8, Arc<VerifiedShare>);

pub(crate) type Fetched = (u32, Vec<SegmentBlock>, Vec<(PeerId, u8, String)>);

/// Where a segment's blocks are in every share.
#[derive(Clone, Copy, Debug)]
struct BlockAt {
    si: [u8; 16],
    seg: u32,
    offset: u64,
    len: u32,
}

impl BlockAt {
    fn new(si: [u8; 16], ueb: &UriExtension, seg: u32) -> Self {
        BlockAt {
            si,
            seg,
            offset: codec::block_offset(ueb, seg),
            len: codec::block_size_for(ueb, seg) as u32,
        }
    }
}

/// Reads one block and verifies it against its share's hash tree (on the blocking pool).
async fn read_block(
    node: &NodeHandle,
    at: BlockAt,
    (s, sh, share): Planned,
) -> Result<SegmentBlock, (PeerId, u8, String)> {
    let request = Request::Read {
        si: at.si,
        shnum: sh,
        offset: at.offset,
        len: at.len,
    };
    let block = match rpc_error(node.rpc(s, request).await) {
        Ok(Response::Bytes(b)) => b.into_vec(),
        Ok(other) => return Err((s, sh, format!("unexpected answer {other:?}"))),
        Err(e) => return Err((s, sh, e)),
    };
    let seg = at.seg;
    match tokio::task::spawn_blocking(move || share.verify_block(seg, block)).await {
        Ok(Ok(block)) => Ok(block),
        Ok(Err(e)) => Err((s, sh, e.to_string())),
        Err(e) => Err((s, sh, e.to_string())),
    }
}

/// Fetches and verifies segment `seg`'s blocks from every share of `plan`; returns good
/// blocks and failures.
pub(crate) async fn fetch_segment(
    node: NodeHandle,
    si: [u8; 16],
    ueb: Arc<UriExtension>,
    seg: u32,
    plan: Vec<Planned>,
) -> Fetched {
    let at = BlockAt::new(si, &ueb, seg);
    let reads: FuturesUnordered<_> = plan.into_iter().map(|p| read_block(&node, at, p)).collect();
    let results: Vec<_> = reads.collect().await;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for r in results {
        match r {
            Ok(b) => good.push(b),
            Err(f) => bad.push(f),
        }
    }
    (seg, good, bad)
}

/// What a download's segment fetch found.
struct HedgedFetch {
    /// Verified blocks.
    good: Vec<SegmentBlock>,
    /// Failed reads.
    failures: Vec<(PeerId, u8, String)>,
    /// Shares still being read when `needed` blocks were in (the spare was read around them).
    slow: Vec<(PeerId, u8)>,
    /// Whether the spare was read (also when its block came too late to be used).
    spare_read: bool,
}

/// Fetches and verifies a segment's blocks for a download: `plan`'s shares at once; the
/// `spare`'s block too when one of them fails, or is still missing after
/// [`hedge::BlockTimes::hedge_after`]; done as soon as `needed` blocks are verified (a slow
/// read still out is dropped and named).
async fn fetch_segment_hedged(
    node: NodeHandle,
    at: BlockAt,
    needed: usize,
    plan: Vec<Planned>,
    mut spare: Option<Planned>,
    times: Arc<std::sync::Mutex<hedge::BlockTimes>>,
) -> HedgedFetch {
    let start = tokio::time::Instant::now();
    let me = node.peer_id();
    let read = |p: Planned| {
        let node = node.clone();
        async move {
            let (s, sh) = (p.0, p.1);
            let t0 = std::time::Instant::now();
            let r = read_block(&node, at, p).await;
            (s, sh, t0.elapsed(), r)
        }
    };
    let mut outstanding: Vec<(PeerId, u8)> = plan.iter().map(|(s, sh, _)| (*s, *sh)).collect();
    let mut reads: FuturesUnordered<_> = plan.into_iter().map(read).collect();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut spare_read = false;
    while good.len() < needed {
        let hedge_at = spare
            .as_ref()
            .map(|_| start + crate::storage::lock(&times).hedge_after());
        let next = match hedge_at {
            None => reads.next().await,
            Some(at) => tokio::select! {
                r = reads.next() => r,
                () = tokio::time::sleep_until(at) => {
                    spare_read = true;
                    reads.extend(spare.take().map(read));
                    continue;
                }
            },
        };
        let Some((s, sh, took, r)) = next else { break };
        outstanding.retain(|&o| o != (s, sh));
        match r {
            Ok(block) => {
                if s != me {
                    crate::storage::lock(&times).observe(took);
                }
                good.push(block);
            }
            Err(failed) => {
                bad.push(failed);
                spare_read |= spare.is_some();
                reads.extend(spare.take().map(read));
            }
        }
    }
    let slow = if good.len() >= needed {
        outstanding
    } else {
        Vec::new()
    };
    HedgedFetch {
        good,
        failures: bad,
        slow,
        spare_read,
    }
}

/// Parses a read cap given on the command line or in a URL.
pub fn parse_read_cap(s: &str) -> Result<ReadCap, String> {
    s.trim().parse::<ReadCap>().map_err(|e| e.to_string())
}

/// For the verify-cap path later: the chk read cap's storage index.
pub fn storage_index(cap: &ChkReadCap) -> [u8; 16] {
    cap.storage_index()
}

/// Small-file puts waiting for a server, per server: while one request to a server is in
/// flight, puts for it queue up and go together in the next [`Request::PutMany`]. Nothing
/// waits for a batch to fill: a put to an idle server is sent at once, alone.
#[derive(Debug, Default)]
pub(crate) struct PutQueues {
    queues: std::sync::Mutex<BTreeMap<PeerId, VecDeque<QueuedPut>>>,
}

#[derive(Debug)]
struct QueuedPut {
    si: [u8; 16],
    shares: Vec<PutShare>,
    bytes: usize,
    reply: tokio::sync::oneshot::Sender<Result<Response, String>>,
}

/// Puts one file's shares on `server` (at most [`crate::protocol::MAX_PUT`] bytes), batched
/// with other puts to the same server that queue behind a request in flight. Answers as
/// [`rpc_error`] does for a lone [`Request::Put`].
pub(crate) async fn put_batched(
    node: &NodeHandle,
    server: PeerId,
    si: [u8; 16],
    shares: Vec<PutShare>,
) -> Result<Response, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let bytes = shares.iter().map(PutShare::put_len).sum();
    let start = {
        let mut queues = crate::storage::lock(&node.put_queues().queues);
        // An entry exists while a sender task runs for the server.
        let start = !queues.contains_key(&server);
        queues.entry(server).or_default().push_back(QueuedPut {
            si,
            shares,
            bytes,
            reply,
        });
        start
    };
    if start {
        tokio::spawn(send_puts(node.clone(), server));
    }
    answer
        .await
        .unwrap_or_else(|_| Err("the put was dropped".into()))
}

/// Sends the queued puts for `server`, a batch at a time, until none are left.
async fn send_puts(node: NodeHandle, server: PeerId) {
    use crate::protocol::{MAX_PUT, MAX_PUT_MANY, PutItem};
    loop {
        let mut batch: Vec<QueuedPut> = Vec::new();
        {
            let mut queues = crate::storage::lock(&node.put_queues().queues);
            let Some(q) = queues.get_mut(&server) else {
                return;
            };
            let mut bytes = 0usize;
            while let Some(next) = q.front() {
                if next.reply.is_closed() {
                    // Its upload stopped waiting for this server (a straggler cut off).
                    q.pop_front();
                    continue;
                }
                if !batch.is_empty()
                    && (batch.len() == MAX_PUT_MANY || bytes + next.bytes > MAX_PUT)
                {
                    break;
                }
                bytes += next.bytes;
                batch.extend(q.pop_front());
            }
            if batch.is_empty() {
                queues.remove(&server);
                return;
            }
        }
        if batch.len() == 1 {
            let p = batch.remove(0);
            let r = node
                .rpc(
                    server,
                    Request::Put {
                        si: p.si,
                        shares: p.shares,
                    },
                )
                .await;
            let _ = p.reply.send(rpc_error(r));
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        let puts = batch
            .into_iter()
            .map(|p| {
                replies.push(p.reply);
                PutItem {
                    si: p.si,
                    shares: p.shares,
                }
            })
            .collect();
        match rpc_error(node.rpc(server, Request::PutMany { puts }).await) {
            Ok(Response::StoredMany(answers)) if answers.len() == replies.len() => {
                for (reply, a) in replies.into_iter().zip(answers) {
                    let _ = reply.send(rpc_error(Ok(a.into())));
                }
            }
            other => {
                let why = match other {
                    Ok(r) => format!("unexpected answer to a put of several files: {r:?}"),
                    Err(e) => e,
                };
                for reply in replies {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    proptest! {
        #![proptest_config(crate::prop::cases(64))]
        /// However the body is chunked and however the encoder asks for it, it reads the bytes
        /// in order, and asking past a body that ended is an `UnexpectedEof` error.
        #[test]
        fn an_incoming_body_reads_in_order_whatever_its_chunks(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(1usize..700, 1..20),
            reads in proptest::collection::vec(1usize..900, 1..20),
            short in 0usize..3,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sent = data.len().saturating_sub(short);
            let (got, end) = rt.block_on(async {
                let (tx, rx) = mpsc::channel(4);
                let incoming = Incoming::new(data.len() as u64, rx);
                let body = data[..sent].to_vec();
                let feed = tokio::spawn(async move {
                    let mut at = 0;
                    for c in cuts.iter().cycle() {
                        if at >= body.len() {
                            break;
                        }
                        let end = (at + c).min(body.len());
                        if tx.send(bytes::Bytes::copy_from_slice(&body[at..end])).await.is_err() {
                            break;
                        }
                        at = end;
                    }
                });
                let mut got = Vec::new();
                let mut end = None;
                for want in reads.iter().cycle() {
                    let want = (*want).min(data.len() - got.len());
                    let mut buf = vec![0; want];
                    if let Err(e) = incoming.read_exact(&mut buf).await {
                        end = Some(e.kind());
                        break;
                    }
                    got.extend_from_slice(&buf);
                    if got.len() == data.len() {
                        break;
                    }
                }
                feed.await.unwrap();
                (got, end)
            });
            if short == 0 || data.is_empty() {
                prop_assert_eq!(&got, &data);
                prop_assert_eq!(end, None);
            } else {
                prop_assert!(data[..sent].starts_with(&got));
                prop_assert_eq!(end, Some(std::io::ErrorKind::UnexpectedEof));
            }
        }
    }

    #[test]
    fn downloads_prefer_primary_shares_on_servers_about_as_fast_as_the_fastest() {
        let p: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        // Loopback-like: everyone answers within a few ms; parity shares answered first.
        let listed = vec![
            (p[0], vec![7], ms(1)),
            (p[1], vec![9, 2], ms(1)),
            (p[2], vec![5], ms(2)),
            (p[3], vec![0], ms(2)),
            (p[4], vec![], ms(2)),
            (p[5], vec![1, 8], ms(3)),
        ];
        let order: Vec<(PeerId, u8)> = order_candidates(&listed, 3, None).into();
        // The three primaries first, each on its own server, in answer order...
        assert_eq!(&order[..3], &[(p[1], 2), (p[3], 0), (p[5], 1)]);
        // ...then the other servers' first shares, then the rest; nothing twice, nothing lost.
        assert_eq!(&order[3..6], &[(p[0], 7), (p[2], 5), (p[1], 9)]);
        assert_eq!(order.len(), 7);
        assert!(order.contains(&(p[5], 8)));

        // Internet-like: a primary on a server far slower than the k-th fastest is not
        // preferred; the fastest servers' shares come first.
        let listed = vec![
            (p[0], vec![7], ms(20)),
            (p[1], vec![2], ms(22)),
            (p[2], vec![5], ms(25)),
            (p[3], vec![0], ms(48)),
            (p[4], vec![1], ms(300)),
        ];
        let order: Vec<(PeerId, u8)> = order_candidates(&listed, 3, None).into();
        assert_eq!(
            order,
            vec![(p[1], 2), (p[0], 7), (p[2], 5), (p[3], 0), (p[4], 1)]
        );

        // Fewer holders than k, or none: still every share, in answer order.
        let order: Vec<(PeerId, u8)> =
            order_candidates(&[(p[0], vec![4, 1], ms(5))], 3, None).into();
        assert_eq!(order, vec![(p[0], 1), (p[0], 4)]);
        assert!(order_candidates(&[], 3, None).is_empty());
    }

    #[test]
    fn downloads_read_a_share_this_node_holds_before_any_other() {
        let p: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let listed = vec![
            (p[0], vec![0], ms(1)),
            (p[1], vec![1], ms(1)),
            (p[2], vec![2], ms(2)),
            (p[3], vec![8, 6], ms(2)),
            (p[4], vec![5], ms(3)),
        ];
        // This node (p[3]) holds parity shares only: one of them first, then two primaries
        // from other servers (enough for k = 3), then the rest.
        let order: Vec<(PeerId, u8)> = order_candidates(&listed, 3, Some(p[3])).into();
        assert_eq!(&order[..4], &[(p[3], 8), (p[0], 0), (p[1], 1), (p[2], 2)]);
        assert_eq!(order.len(), 6);
        assert!(order.contains(&(p[3], 6)) && order.contains(&(p[4], 5)));

        // Holding a primary among its shares, it reads that one.
        let listed = vec![(p[0], vec![0], ms(1)), (p[3], vec![9, 2], ms(2))];
        let order: Vec<(PeerId, u8)> = order_candidates(&listed, 3, Some(p[3])).into();
        assert_eq!(order, vec![(p[3], 2), (p[0], 0), (p[3], 9)]);

        // Holding none, or not a server: as without it.
        let without: Vec<(PeerId, u8)> = order_candidates(&listed, 3, None).into();
        let stranger: Vec<(PeerId, u8)> =
            order_candidates(&listed, 3, Some(PeerId::random())).into();
        assert_eq!(stranger, without);
    }
}

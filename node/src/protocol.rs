//! The storage protocol (`/kith/storage/1.2.0`): messages between an uploader/downloader and a
//! storage server, and their wire format.
//!
//! One request and one response per libp2p stream (libp2p request-response). A frame is a
//! 4-byte big-endian length, then a 4-byte big-endian header length, the header (the message in
//! CBOR, serde) and the message's bulk bytes if it has any (the data of a [`Request::Write`] or
//! a [`Response::Bytes`]; see [`Bulk`]). Version 1.0.0 carried the bulk bytes inside the CBOR,
//! which cost a copy on the sender and two on the receiver; 1.2.0 added
//! [`Request::PutMany`] (several small files' puts in one stream). Every frame is bounded
//! by [`MAX_FRAME`]; the decoders never trust a length before checking it, and a frame that is
//! too long or not valid CBOR for the expected type is not an IO error but a
//! [`RequestFrame::Malformed`], so the server answers it with a typed
//! [`ErrorKind::Malformed`] / [`ErrorKind::TooLarge`] instead of dropping the stream, and never
//! panics.
//!
//! Like Tahoe-LAFS's storage protocol, the server deals in byte ranges of opaque share data plus
//! an opaque metadata blob; it cannot read anything (the data is ciphertext) and the client
//! verifies every byte it reads against its capability.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/storage/1.2.0");

/// Largest frame in either direction: a block of the largest segment (4 MiB at k=1) or a share's
/// metadata (at most [`MAX_META`]) plus envelope.
pub const MAX_FRAME: usize = MAX_META + 64 * 1024;

/// Largest share metadata blob a server accepts.
pub const MAX_META: usize = 8 << 20;

/// Largest read a server serves in one request.
pub const MAX_READ: u32 = 5 << 20;

/// Largest sum of share data and metadata in one [`Request::Put`]: small files go in one round
/// trip, larger ones are streamed with allocate/write/close.
pub const MAX_PUT: usize = 1 << 20;

/// Most puts in one [`Request::PutMany`].
pub const MAX_PUT_MANY: usize = 64;

/// A storage index: 16 bytes derived one-way from the file's key.
pub type StorageIndex = [u8; 16];

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Reserve space for shares of a file; adds the caller's lease to shares already held.
    Allocate {
        /// The file.
        si: StorageIndex,
        /// Share numbers the caller wants to place here.
        shnums: Vec<u8>,
        /// Length of each share's data.
        data_len: u64,
    },
    /// Write a byte range of an allocated share.
    Write {
        /// The file.
        si: StorageIndex,
        /// The share.
        shnum: u8,
        /// Offset in the share's data.
        offset: u64,
        /// The bytes.
        data: BulkBuf,
    },
    /// Finish a share: store its metadata and make it visible.
    Close {
        /// The file.
        si: StorageIndex,
        /// The share.
        shnum: u8,
        /// Opaque share metadata (UEB, hashes).
        meta: ByteBuf,
    },
    /// Store whole shares of a small file in one round trip (allocate, write and close at
    /// once); adds the caller's lease to shares already held. Every share has the same data
    /// length, and data plus metadata of all shares is at most [`MAX_PUT`].
    Put {
        /// The file.
        si: StorageIndex,
        /// The shares.
        shares: Vec<PutShare>,
    },
    /// Several [`Request::Put`]s in one request (one stream, one answer each, in order):
    /// what an uploader sends a server when small files queue up behind a put in flight. At
    /// most [`MAX_PUT_MANY`] puts; their data plus metadata together at most [`MAX_PUT`].
    PutMany {
        /// The puts.
        puts: Vec<PutItem>,
    },
    /// Drop an unfinished share.
    Abort {
        /// The file.
        si: StorageIndex,
        /// The share.
        shnum: u8,
    },
    /// Which shares of a file are held here.
    List {
        /// The file.
        si: StorageIndex,
    },
    /// A share's metadata.
    ReadMeta {
        /// The file.
        si: StorageIndex,
        /// The share.
        shnum: u8,
    },
    /// A byte range of a share's data.
    Read {
        /// The file.
        si: StorageIndex,
        /// The share.
        shnum: u8,
        /// Offset in the share's data.
        offset: u64,
        /// Length, at most [`MAX_READ`].
        len: u32,
    },
    /// Add or renew the caller's lease on every share of a file held here.
    AddLease {
        /// The file.
        si: StorageIndex,
    },
    /// Whole shares of a mutable slot (all held here when `shnums` is empty); the server may
    /// leave some out to bound the answer and says which.
    SlotRead {
        /// The slot.
        si: StorageIndex,
        /// The shares wanted.
        shnums: Vec<u8>,
    },
    /// Test-and-set write of mutable slot shares: all tests pass and every share is replaced,
    /// or nothing changes.
    SlotWrite {
        /// The slot.
        si: StorageIndex,
        /// The slot's write enabler for this server.
        write_enabler: ByteBuf,
        /// The shares.
        writes: Vec<SlotShareWrite>,
    },
}

/// One whole share of a [`Request::Put`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutShare {
    /// The share.
    pub shnum: u8,
    /// Its data (all its blocks).
    pub data: ByteBuf,
    /// Its metadata (UEB, hashes).
    pub meta: ByteBuf,
}

impl PutShare {
    /// Data plus metadata: what counts against [`MAX_PUT`].
    pub fn put_len(&self) -> usize {
        self.data.len() + self.meta.len()
    }
}

/// One put of a [`Request::PutMany`]: one file's shares for this server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutItem {
    /// The file.
    pub si: StorageIndex,
    /// The shares.
    pub shares: Vec<PutShare>,
}

/// The answer to one put of a [`Request::PutMany`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutAnswer {
    /// As [`Response::Stored`].
    Stored {
        /// Shares already held here (the caller's lease was added).
        already_have: Vec<u8>,
        /// Shares stored now.
        stored: Vec<u8>,
        /// Shares someone else is uploading right now (not stored).
        in_progress: Vec<u8>,
    },
    /// This put was refused or failed (the others are answered on their own).
    Error(ServerError),
}

impl From<PutAnswer> for Response {
    fn from(a: PutAnswer) -> Self {
        match a {
            PutAnswer::Stored {
                already_have,
                stored,
                in_progress,
            } => Response::Stored {
                already_have,
                stored,
                in_progress,
            },
            PutAnswer::Error(e) => Response::Error(e),
        }
    }
}

/// One share of a [`Request::SlotWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotShareWrite {
    /// The share.
    pub shnum: u8,
    /// The sequence number the writer expects stored (`None`: no share yet).
    pub expect: Option<u64>,
    /// The encoded share.
    pub data: ByteBuf,
}

impl Request {
    /// Whether the request only reads (safe to send again when its connection closed before
    /// the answer came).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::List { .. }
                | Request::ReadMeta { .. }
                | Request::Read { .. }
                | Request::SlotRead { .. }
        )
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Allocate { .. } => "allocate",
            Request::Write { .. } => "write",
            Request::Close { .. } => "close",
            Request::Put { .. } => "put",
            Request::PutMany { .. } => "put-many",
            Request::Abort { .. } => "abort",
            Request::List { .. } => "list",
            Request::ReadMeta { .. } => "read-meta",
            Request::Read { .. } => "read",
            Request::AddLease { .. } => "add-lease",
            Request::SlotRead { .. } => "slot-read",
            Request::SlotWrite { .. } => "slot-write",
        }
    }
}

/// What a server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Allocate`].
    Allocated {
        /// Shares already held here (the caller's lease was added).
        already_have: Vec<u8>,
        /// Shares the caller may now write.
        allocated: Vec<u8>,
        /// Shares someone else is uploading right now.
        in_progress: Vec<u8>,
    },
    /// Write, close, abort succeeded.
    Done,
    /// Answer to [`Request::Put`].
    Stored {
        /// Shares already held here (the caller's lease was added).
        already_have: Vec<u8>,
        /// Shares stored now.
        stored: Vec<u8>,
        /// Shares someone else is uploading right now (not stored).
        in_progress: Vec<u8>,
    },
    /// Answer to [`Request::PutMany`]: one per put, in order.
    StoredMany(Vec<PutAnswer>),
    /// Answer to [`Request::List`].
    Shares(Vec<u8>),
    /// Answer to [`Request::ReadMeta`] or [`Request::Read`].
    Bytes(ByteBuf),
    /// Answer to [`Request::AddLease`]: how many shares were renewed.
    Leased(u32),
    /// Answer to [`Request::SlotRead`].
    Slots {
        /// (share number, encoded share).
        shares: Vec<(u8, ByteBuf)>,
        /// Shares held but left out of this answer (ask again for them).
        more: Vec<u8>,
    },
    /// Answer to a [`Request::SlotWrite`] whose test failed: nothing was written; what is
    /// stored now, (share number, sequence number).
    SlotConflict(Vec<(u8, Option<u64>)>),
    /// The request was refused or failed.
    Error(ServerError),
}

/// A typed refusal or failure, shown to the uploader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ServerError {
    /// What class of failure.
    pub kind: ErrorKind,
    /// Details for humans (bounded by the decoder's frame limit).
    pub message: String,
}

impl ServerError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Classes of server errors. The docs say what the uploader should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server is over its configured capacity: place the share elsewhere.
    NoSpace,
    /// The server's disk is down to its reserve: place the share elsewhere.
    DiskReserve,
    /// The server does not accept writes: place the share elsewhere.
    ReadOnly,
    /// The server does not serve storage to this peer.
    NoGrant,
    /// This peer's grant on the server was revoked.
    Revoked,
    /// The write would exceed this peer's quota on the server.
    OverQuota,
    /// The server's owner has not decided on this peer yet (invite-only policy).
    Pending,
    /// No such share here: look on other servers.
    NotFound,
    /// Write or close of a share this peer has not allocated.
    NotAllocated,
    /// A byte range outside the share.
    OutOfBounds,
    /// The request could not be decoded: a bug or a hostile peer.
    Malformed,
    /// The request frame exceeded the size limit.
    TooLarge,
    /// The stored share failed its own consistency check: use other servers.
    Corrupt,
    /// Anything else on the server side (disk failure...): try again or elsewhere.
    Internal,
    /// A slot write with the wrong write enabler: the writer does not hold the write cap.
    BadWriteEnabler,
    /// An error kind this version does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorKind::NoSpace => "no space",
            ErrorKind::DiskReserve => "disk reserve reached",
            ErrorKind::ReadOnly => "read-only server",
            ErrorKind::NoGrant => "no storage grant",
            ErrorKind::Revoked => "revoked",
            ErrorKind::OverQuota => "over quota",
            ErrorKind::Pending => "grant pending",
            ErrorKind::NotFound => "not found",
            ErrorKind::NotAllocated => "not allocated",
            ErrorKind::OutOfBounds => "out of bounds",
            ErrorKind::Malformed => "malformed request",
            ErrorKind::TooLarge => "request too large",
            ErrorKind::Corrupt => "corrupt share",
            ErrorKind::Internal => "internal server error",
            ErrorKind::BadWriteEnabler => "bad write enabler",
            ErrorKind::Unknown => "unknown error",
        };
        f.write_str(s)
    }
}

/// Why an inbound frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The body is not valid CBOR for the expected message.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// An inbound request as the codec yields it: decoded, or the reason it could not be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFrame {
    /// A well-formed request.
    Request(Request),
    /// A malformed or oversized frame; the server answers with a typed error.
    Malformed(DecodeError),
}

/// A message whose bulk bytes (a block being written or read) travel after its CBOR header
/// instead of inside it, so that neither side pushes megabytes through the CBOR encoder or
/// decoder (ciborium copies a byte string in 4 KiB pieces into a growing buffer).
pub trait Bulk {
    /// Moves the bulk bytes out, leaving the field empty (nothing when the message has none).
    fn take_bulk(&mut self) -> Vec<u8>;
    /// Puts `bulk` into the message's empty bulk field; `false` when it has no such field.
    fn put_bulk(&mut self, bulk: BulkBuf) -> bool;
    /// Where the receiver will put the bulk bytes in a file, if it writes them to one: they are
    /// then read into memory at the same address modulo [`BULK_ALIGN`] (see [`BulkBuf`]).
    fn bulk_position(&self) -> Option<u64> {
        None
    }
}

impl Bulk for Request {
    fn take_bulk(&mut self) -> Vec<u8> {
        match self {
            Request::Write { data, .. } => std::mem::take(data).into_vec(),
            _ => Vec::new(),
        }
    }

    fn put_bulk(&mut self, bulk: BulkBuf) -> bool {
        match self {
            Request::Write { data, .. } if data.is_empty() => {
                *data = bulk;
                true
            }
            _ => false,
        }
    }

    fn bulk_position(&self) -> Option<u64> {
        match self {
            Request::Write { offset, .. } => {
                Some(crate::storage::DATA_OFFSET.wrapping_add(*offset))
            }
            _ => None,
        }
    }
}

impl Bulk for Response {
    fn take_bulk(&mut self) -> Vec<u8> {
        match self {
            Response::Bytes(b) => std::mem::take(b).into_vec(),
            _ => Vec::new(),
        }
    }

    fn put_bulk(&mut self, bulk: BulkBuf) -> bool {
        match self {
            Response::Bytes(b) if b.is_empty() => {
                *b = ByteBuf::from(bulk.into_vec());
                true
            }
            _ => false,
        }
    }
}

/// Alignment of the bulk bytes a server writes to a share file: the page size `O_DIRECT`
/// wants for both the file position and the memory.
pub const BULK_ALIGN: usize = 4096;

/// The bytes of a [`Request::Write`]: `buf[start..]` of a buffer. A server reads a block
/// into its buffer at the `start` that puts every byte at the same address modulo
/// [`BULK_ALIGN`] as its position in the share file, so the block's whole pages go to the
/// disk with `O_DIRECT` straight from where they arrived instead of through an aligned copy.
/// Compares, hashes into CBOR and prints as its bytes alone.
#[derive(Clone, Default)]
pub struct BulkBuf {
    buf: Vec<u8>,
    start: usize,
}

impl BulkBuf {
    /// `len` bytes whose contents the caller overwrites, in `buf` (any contents, any
    /// capacity), starting at an address congruent to `position` modulo [`BULK_ALIGN`].
    pub fn placed(mut buf: Vec<u8>, len: usize, position: u64) -> BulkBuf {
        if buf.capacity() < len + BULK_ALIGN {
            buf = vec![0; len + BULK_ALIGN];
        }
        let base = buf.as_ptr().addr() % BULK_ALIGN;
        let want = (position % BULK_ALIGN as u64) as usize;
        let start = (want + BULK_ALIGN - base) % BULK_ALIGN;
        // Zeroes only bytes the buffer never held; a longer one is cut.
        buf.resize(start + len, 0);
        BulkBuf { buf, start }
    }

    /// The bytes, as a vector of their own (free unless they start inside their buffer).
    pub fn into_vec(self) -> Vec<u8> {
        let BulkBuf { mut buf, start } = self;
        buf.drain(..start);
        buf
    }

    /// The whole buffer the bytes live in (to reuse it).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl From<Vec<u8>> for BulkBuf {
    fn from(buf: Vec<u8>) -> BulkBuf {
        BulkBuf { buf, start: 0 }
    }
}

impl std::ops::Deref for BulkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl std::ops::DerefMut for BulkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
}

impl PartialEq for BulkBuf {
    fn eq(&self, other: &BulkBuf) -> bool {
        **self == **other
    }
}

impl Eq for BulkBuf {}

impl std::fmt::Debug for BulkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde_bytes::Bytes::new(self).fmt(f)
    }
}

impl Serialize for BulkBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for BulkBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BulkBuf, D::Error> {
        ByteBuf::deserialize(d).map(|b| BulkBuf::from(b.into_vec()))
    }
}

/// One encoded frame: `head` is both length prefixes and the CBOR header, `tail` the bulk
/// bytes (sent as they are, not copied into `head`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame length, header length, CBOR header.
    pub head: Vec<u8>,
    /// The message's bulk bytes (often empty).
    pub tail: Vec<u8>,
}

impl Frame {
    /// The frame as one buffer (tests, fuzz seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.head[..], &self.tail[..]].concat()
    }
}

/// Encodes a message as one frame, its bulk bytes moved (not copied) to the frame's tail.
pub fn encode_frame<T: Serialize + Bulk>(mut msg: T) -> io::Result<Frame> {
    let tail = msg.take_bulk();
    let mut head = vec![0u8; 8];
    ciborium::into_writer(&msg, &mut head).map_err(|e| io::Error::other(e.to_string()))?;
    let len = head.len() - 4 + tail.len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the frame limit of {MAX_FRAME}"),
        ));
    }
    let too_long = || io::Error::from(io::ErrorKind::InvalidInput);
    let hlen = u32::try_from(head.len() - 8).map_err(|_| too_long())?;
    let len = u32::try_from(len).map_err(|_| too_long())?;
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4..8].copy_from_slice(&hlen.to_be_bytes());
    Ok(Frame { head, tail })
}

/// Decodes a CBOR header (no length prefixes, no bulk bytes).
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, DecodeError> {
    if body.len() > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            len: body.len() as u64,
            max: MAX_FRAME,
        });
    }
    ciborium::from_reader(body).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// A frame's header and bulk bytes, decoded into one message.
pub fn decode_parts<T: for<'de> Deserialize<'de> + Bulk>(
    header: &[u8],
    tail: Vec<u8>,
) -> Result<T, DecodeError> {
    with_bulk(decode_body(header)?, BulkBuf::from(tail))
}

/// A decoded header with its frame's bulk bytes put in.
fn with_bulk<T: Bulk>(mut msg: T, tail: BulkBuf) -> Result<T, DecodeError> {
    if !tail.is_empty() && !msg.put_bulk(tail) {
        return Err(DecodeError::Invalid(
            "bulk bytes after a message that carries none".into(),
        ));
    }
    Ok(msg)
}

/// Checks a frame's two lengths; returns the header's length.
fn split_lengths(len: usize, hlen: Option<u32>) -> Result<usize, DecodeError> {
    if len > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    let Some(hlen) = hlen else {
        return Err(DecodeError::Invalid(format!(
            "a frame of {len} bytes cannot hold its header length"
        )));
    };
    let hlen = hlen as usize;
    if hlen > len.saturating_sub(4) {
        return Err(DecodeError::Invalid(format!(
            "header of {hlen} bytes in a frame of {len}"
        )));
    }
    Ok(hlen)
}

/// Decodes one whole frame as it arrives on the wire (both length prefixes included): the
/// checks every received frame goes through, in one synchronous call (tests and fuzzing).
pub fn decode_frame<T: for<'de> Deserialize<'de> + Bulk>(wire: &[u8]) -> Result<T, DecodeError> {
    let Some((len, rest)) = wire.split_first_chunk::<4>() else {
        return Err(DecodeError::Invalid("no frame length".into()));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len <= MAX_FRAME && rest.len() != len {
        return Err(DecodeError::Invalid(format!(
            "frame of {len} bytes announced, {} present",
            rest.len()
        )));
    }
    let hlen = rest
        .split_first_chunk::<4>()
        .filter(|_| len >= 4)
        .map(|(h, _)| u32::from_be_bytes(*h));
    let hlen = split_lengths(len, hlen)?;
    decode_parts(&rest[4..4 + hlen], rest[4 + hlen..].to_vec())
}

/// Reads one frame and decodes it: its CBOR header and its bulk bytes, each read into a buffer
/// of its exact size, the bulk bytes placed as the header's [`Bulk::bulk_position`] asks.
/// `Ok(Err(_))` means the peer sent bad lengths (the rest of the frame was not read) or a
/// frame that does not decode.
async fn read_frame<T, R>(io: &mut R) -> io::Result<Result<T, DecodeError>>
where
    T: for<'de> Deserialize<'de> + Bulk,
    R: AsyncRead + Unpin,
{
    let truncated = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::UnexpectedEof, "frame truncated")
        } else {
            e
        }
    };
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    let hlen = if (4..=MAX_FRAME).contains(&len) {
        let mut h = [0u8; 4];
        io.read_exact(&mut h).await.map_err(truncated)?;
        Some(u32::from_be_bytes(h))
    } else {
        None
    };
    let hlen = match split_lengths(len, hlen) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let mut header = vec![0u8; hlen];
    io.read_exact(&mut header).await.map_err(truncated)?;
    let msg = decode_body::<T>(&header);
    let tail_len = len - 4 - hlen;
    let mut tail = match msg.as_ref().ok().and_then(Bulk::bulk_position) {
        Some(position) if tail_len > 0 => {
            BulkBuf::placed(BULK_POOL.take(tail_len + BULK_ALIGN), tail_len, position)
        }
        _ => BulkBuf::from(BULK_POOL.take(tail_len)),
    };
    io.read_exact(&mut tail).await.map_err(truncated)?;
    Ok(msg.and_then(|msg| with_bulk(msg, tail)))
}

/// Bulk buffers at least this large come from (and go back to) [`BulkPool`].
const POOLED_BULK: usize = 64 << 10;
/// How many freed bulk buffers the pool keeps (an upload's pipeline frees ten blocks per
/// segment, in bursts), and the largest it keeps.
const POOL_KEEP: usize = 32;
const POOL_MAX_CAPACITY: usize = 2 << 20;

/// Buffers for blocks, reused. An upload's encoder fills ten fresh block buffers per 1 MiB
/// segment and a server reads every block it receives into one; fresh buffers cost malloc,
/// page faults, the kernel zeroing the pages and often `mremap`/`munmap` (together ~11% of an
/// uploading node's samples and ~20% of a receiving server's). The process keeps freed ones
/// here instead: the encoder and inbound frames take ([`take_bulk`]); a frame's bulk bytes go
/// back once written to the network ([`write_frame`]) or to a share file (the server). The
/// pool empties itself when it went unused between two [`trim_idle_bulk`] calls (the network
/// actor's 500 ms tick), so an idle node holds none.
pub(crate) struct BulkPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers taken so far, and the count at the last trim check.
    takes: std::sync::atomic::AtomicU64,
    takes_at_trim: std::sync::atomic::AtomicU64,
}

impl BulkPool {
    pub(crate) const fn new() -> Self {
        BulkPool {
            free: std::sync::Mutex::new(Vec::new()),
            takes: std::sync::atomic::AtomicU64::new(0),
            takes_at_trim: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A buffer of `len` bytes whose contents the caller overwrites (stale or zero).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len < POOLED_BULK {
            return vec![0; len];
        }
        self.takes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kept = self.free.lock().ok().and_then(|mut free| {
            // The newest buffer large enough: growing a smaller one would copy its stale bytes.
            let at = free.iter().rposition(|b| b.capacity() >= len)?;
            Some(free.swap_remove(at))
        });
        match kept {
            Some(mut buf) => {
                // Zeroes only bytes the buffer never held; a longer one is cut.
                buf.resize(len, 0);
                buf
            }
            // Fresh zeroed memory (calloc: pages the kernel zeroes anyway, no memset).
            None => vec![0; len],
        }
    }

    /// Keeps `buf` for [`BulkPool::take`] if it is large, not too large, and there is room.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if (POOLED_BULK..=POOL_MAX_CAPACITY).contains(&buf.capacity())
            && let Ok(mut free) = self.free.lock()
            && free.len() < POOL_KEEP
        {
            free.push(buf);
        }
    }

    /// Frees every kept buffer if none was taken since the previous call.
    pub(crate) fn trim_idle(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let takes = self.takes.load(Relaxed);
        if self.takes_at_trim.swap(takes, Relaxed) == takes
            && let Ok(mut free) = self.free.lock()
        {
            *free = Vec::new();
        }
    }
}

static BULK_POOL: BulkPool = BulkPool::new();

/// A bulk buffer of `len` bytes from the process's pool; its contents are stale: the caller
/// overwrites all of it.
pub(crate) fn take_bulk(len: usize) -> Vec<u8> {
    BULK_POOL.take(len)
}

/// Hands a bulk buffer that is no longer needed back to the process's pool.
pub(crate) fn recycle_bulk(buf: Vec<u8>) {
    BULK_POOL.give(buf);
}

/// A bulk buffer that goes back to a pool when dropped: the owner of an HTTP body chunk made
/// from a downloaded block ([`bytes::Bytes::from_owner`]), so the buffer is read into again
/// once the chunk is on the socket instead of freed and allocated anew (a fresh one costs page
/// faults and the kernel zeroing its pages).
pub(crate) struct Recycled {
    buf: Vec<u8>,
    pool: &'static BulkPool,
}

impl Recycled {
    /// `buf`, back to the process's pool when dropped.
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        Recycled::to(&BULK_POOL, buf)
    }

    fn to(pool: &'static BulkPool, buf: Vec<u8>) -> Self {
        Recycled { buf, pool }
    }
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Frees the pool's buffers if it went unused since the last call (see [`BulkPool`]).
pub(crate) fn trim_idle_bulk() {
    BULK_POOL.trim_idle();
}

/// Writes a frame; its bulk bytes go back to the pool afterwards.
async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: Frame) -> io::Result<()> {
    io.write_all(&frame.head).await?;
    if !frame.tail.is_empty() {
        io.write_all(&frame.tail).await?;
        recycle_bulk(frame.tail);
    }
    Ok(())
}

/// The request-response codec of the storage protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RequestFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match read_frame::<Request, _>(io).await? {
            Ok(req) => RequestFrame::Request(req),
            Err(e) => RequestFrame::Malformed(e),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
            .await?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RequestFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let RequestFrame::Request(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a malformed frame cannot be sent",
            ));
        };
        write_frame(io, encode_frame(req)?).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode_frame(res)?).await?;
        io.close().await
    }
}

/// CBOR of `v` (the node's tables and small messages).
pub(crate) fn to_cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// Depth-bounded CBOR decoding of a table row or a small message.
pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    ciborium::de::from_reader_with_recursion_limit(b, 16).map_err(|e| e.to_string())
}

/// The gossip protocol: one gossip message per request, empty response.
pub const GOSSIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/gossip/1.0.0");
/// The join protocol: an invitation secret in, a certificate chain and the grid's records out.
pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/join/1.0.0");

/// A request-response codec of raw bytes with size limits (the payload is decoded, bounded and
/// typed, by whoever receives it).
#[derive(Clone, Copy, Debug)]
pub struct BytesCodec {
    /// Largest request.
    pub max_request: usize,
    /// Largest response.
    pub max_response: usize,
}

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

impl libp2p::request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_limited(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_limited(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn si() -> StorageIndex {
        [7u8; 16]
    }

    #[test]
    fn bulk_buffers_are_reused_at_the_asked_length() {
        let pool = BulkPool::new();
        let mut a = pool.take(300 << 10);
        assert_eq!(a.len(), 300 << 10);
        a.fill(0xaa);
        let at = a.as_ptr();
        pool.give(a);
        // the same allocation comes back, cut to the new length (its old bytes are overwritten
        // by whoever takes it)
        let b = pool.take(200 << 10);
        assert_eq!((b.as_ptr(), b.len()), (at, 200 << 10));
        pool.give(b);
        let c = pool.take(300 << 10);
        assert_eq!((c.as_ptr(), c.len()), (at, 300 << 10));
        // a buffer too small for the request is left for a smaller one
        pool.give(c);
        let big = pool.take(1 << 20);
        assert_ne!(big.as_ptr(), at);
        let again = pool.take(300 << 10);
        assert_eq!(again.as_ptr(), at);
        // small buffers bypass the pool; the pool keeps at most POOL_KEEP, none too large
        assert_eq!(pool.take(100).len(), 100);
        pool.give(vec![0; 16]);
        pool.give(Vec::with_capacity(POOL_MAX_CAPACITY + 1));
        for _ in 0..POOL_KEEP + 3 {
            pool.give(vec![0; POOLED_BULK]);
        }
        {
            let kept = pool.free.lock().unwrap();
            assert_eq!(kept.len(), POOL_KEEP);
            assert!(kept.iter().all(|b| b.capacity() <= POOL_MAX_CAPACITY));
        }
        // a pool used since the last trim keeps its buffers; an unused one frees them
        pool.trim_idle();
        assert_eq!(pool.free.lock().unwrap().len(), POOL_KEEP);
        pool.trim_idle();
        assert!(pool.free.lock().unwrap().is_empty());
        pool.give(pool.take(POOLED_BULK));
        pool.trim_idle();
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_body_chunk_gives_its_buffer_back_to_the_pool_once_every_reference_is_gone() {
        static POOL: BulkPool = BulkPool::new();
        let buf = POOL.take(300 << 10);
        let at = buf.as_ptr();
        let chunk = bytes::Bytes::from_owner(Recycled::to(&POOL, buf));
        assert_eq!((chunk.as_ptr(), chunk.len()), (at, 300 << 10));
        let head = chunk.slice(..100);
        drop(chunk);
        assert!(
            POOL.free.lock().unwrap().is_empty(),
            "a slice still uses it"
        );
        drop(head);
        let again = POOL.take(300 << 10);
        assert_eq!(again.as_ptr(), at);
    }

    #[test]
    fn every_request_round_trips() {
        let reqs = vec![
            Request::Allocate {
                si: si(),
                shnums: vec![0, 3, 9],
                data_len: 1 << 30,
            },
            Request::Write {
                si: si(),
                shnum: 2,
                offset: 99,
                data: BulkBuf::from(vec![1, 2, 3]),
            },
            Request::Close {
                si: si(),
                shnum: 2,
                meta: ByteBuf::from(vec![4; 100]),
            },
            Request::Put {
                si: si(),
                shares: vec![PutShare {
                    shnum: 4,
                    data: ByteBuf::from(vec![5; 40]),
                    meta: ByteBuf::from(vec![6; 30]),
                }],
            },
            Request::PutMany {
                puts: vec![
                    PutItem {
                        si: si(),
                        shares: vec![PutShare {
                            shnum: 1,
                            data: ByteBuf::from(vec![5; 40]),
                            meta: ByteBuf::from(vec![6; 30]),
                        }],
                    },
                    PutItem {
                        si: [8; 16],
                        shares: vec![],
                    },
                ],
            },
            Request::Abort { si: si(), shnum: 1 },
            Request::List { si: si() },
            Request::ReadMeta { si: si(), shnum: 0 },
            Request::Read {
                si: si(),
                shnum: 0,
                offset: 5,
                len: 10,
            },
            Request::AddLease { si: si() },
        ];
        for r in reqs {
            let frame = encode_frame(r.clone()).unwrap();
            // Only a write's data travels as bulk bytes.
            assert_eq!(
                frame.tail.is_empty(),
                !matches!(r, Request::Write { .. }),
                "{r:?}"
            );
            assert_eq!(decode_frame::<Request>(&frame.to_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip_and_unknown_error_kinds_decode() {
        for r in [
            Response::Error(ServerError::new(ErrorKind::NoSpace, "full")),
            Response::Bytes(ByteBuf::from(vec![9; 1000])),
            Response::Bytes(ByteBuf::new()),
            Response::Shares(vec![1, 2]),
            Response::StoredMany(vec![
                PutAnswer::Stored {
                    already_have: vec![1],
                    stored: vec![2, 3],
                    in_progress: vec![],
                },
                PutAnswer::Error(ServerError::new(ErrorKind::OverQuota, "quota")),
            ]),
        ] {
            let frame = encode_frame(r.clone()).unwrap();
            assert_eq!(decode_frame::<Response>(&frame.to_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn oversized_frames_are_typed_errors_without_reading_the_body() {
        let mut wire = (u32::MAX).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0u8; 16]);
        let frame = futures::executor::block_on(async {
            let mut io = futures::io::Cursor::new(wire);
            libp2p::request_response::Codec::read_request(&mut Codec, &PROTOCOL, &mut io).await
        })
        .unwrap();
        assert!(matches!(
            frame,
            RequestFrame::Malformed(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_lengths_and_misplaced_bulk_bytes_are_typed_errors() {
        let read = |wire: Vec<u8>| {
            futures::executor::block_on(async {
                let mut io = futures::io::Cursor::new(wire);
                libp2p::request_response::Codec::read_request(&mut Codec, &PROTOCOL, &mut io).await
            })
        };
        let list = encode_frame(Request::List { si: si() }).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "frame too short for a header length",
                vec![0, 0, 0, 2, 1, 2],
            ),
            (
                "header longer than the frame",
                [&[0, 0, 0, 6, 0, 0, 0, 9][..], &[0xa0, 0xa0]].concat(),
            ),
            (
                "bulk bytes after a list",
                [&list.to_bytes()[..], &[1, 2, 3]].concat(),
            ),
        ];
        for (name, mut wire) in cases {
            if name.starts_with("bulk") {
                let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) + 3;
                wire[..4].copy_from_slice(&len.to_be_bytes());
            }
            assert!(
                matches!(
                    read(wire.clone()).unwrap(),
                    RequestFrame::Malformed(DecodeError::Invalid(_))
                ),
                "{name}"
            );
            assert!(
                matches!(decode_frame::<Request>(&wire), Err(DecodeError::Invalid(_))),
                "{name}"
            );
        }
        // A frame that ends early is an IO error of the stream, not a message.
        let mut cut = list.to_bytes();
        cut.pop();
        assert_eq!(read(cut).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let wire = vec![0, 0, 0, 7, 0, 0, 0, 3, 0xff, 0x00, 0x13];
        let frame = futures::executor::block_on(async {
            let mut io = futures::io::Cursor::new(wire);
            libp2p::request_response::Codec::read_request(&mut Codec, &PROTOCOL, &mut io).await
        })
        .unwrap();
        assert!(matches!(
            frame,
            RequestFrame::Malformed(DecodeError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<Request>(&bytes);
            let _ = decode_body::<Response>(&bytes);
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<Response>(&bytes);
        }

        #[test]
        fn writes_and_reads_of_any_size_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            offset in any::<u64>(),
        ) {
            let w = Request::Write { si: si(), shnum: 3, offset, data: BulkBuf::from(data.clone()) };
            prop_assert_eq!(decode_frame::<Request>(&encode_frame(w.clone()).unwrap().to_bytes()).unwrap(), w);
            let r = Response::Bytes(ByteBuf::from(data));
            prop_assert_eq!(decode_frame::<Response>(&encode_frame(r.clone()).unwrap().to_bytes()).unwrap(), r);
        }

        #[test]
        fn a_received_write_sits_in_memory_as_it_will_in_the_share_file(
            len in 1usize..200_000,
            offset in any::<u64>(),
            seed in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let w = Request::Write { si: si(), shnum: 3, offset, data: BulkBuf::from(data) };
            let wire = encode_frame(w.clone()).unwrap().to_bytes();
            let got = futures::executor::block_on(async {
                let mut io = futures::io::Cursor::new(wire);
                libp2p::request_response::Codec::read_request(&mut Codec, &PROTOCOL, &mut io).await
            })
            .unwrap();
            let RequestFrame::Request(got) = got else {
                return Err(TestCaseError::fail(format!("{got:?}")));
            };
            prop_assert_eq!(&got, &w);
            let Request::Write { data, .. } = got else {
                return Err(TestCaseError::fail("not a write"));
            };
            let place = crate::storage::DATA_OFFSET.wrapping_add(offset) % BULK_ALIGN as u64;
            prop_assert_eq!((data.as_ptr().addr() % BULK_ALIGN) as u64, place);
            recycle_bulk(data.into_buffer());
        }
    }
}

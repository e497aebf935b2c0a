//! The storage server: answers storage-protocol requests from the share store.
//!
//! [`StorageServer::handle`] is the one entry point, used both for requests arriving over
//! libp2p (keyed by the connection's authenticated peer id, so a lease always belongs to the
//! peer that really sent it) and for the node's own uploads to itself. Store operations block on
//! disk, so they run on tokio's blocking pool. A malformed frame gets a typed error; nothing a
//! peer sends can panic the server.

use std::sync::{Arc, OnceLock};

use libp2p::PeerId;
use serde_bytes::ByteBuf;

use crate::{
    protocol::{
        ErrorKind, MAX_META, MAX_PUT, MAX_PUT_MANY, MAX_READ, PutAnswer, PutShare, Request,
        RequestFrame, Response, ServerError,
    },
    storage::{PutRef, PutShareRef, ShareStore, SlotOutcome, SlotWrite, StoreError},
};

/// Decides whether a peer may write (allocate, write, close, renew leases).
pub type WritePolicy = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// Answers storage requests.
#[derive(Clone)]
pub struct StorageServer {
    store: Option<ShareStore>,
    lease_secs: u64,
    policy: Arc<OnceLock<WritePolicy>>,
    /// (PutMany requests, puts they carried) since start.
    put_many: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl std::fmt::Debug for StorageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageServer")
            .field("store", &self.store)
            .field("lease_secs", &self.lease_secs)
            .finish_non_exhaustive()
    }
}

impl StorageServer {
    /// A server backed by `store`; `None` when this node does not offer storage.
    pub fn new(store: Option<ShareStore>, lease_secs: u64) -> Self {
        Self {
            store,
            lease_secs,
            policy: Arc::default(),
            put_many: Arc::default(),
        }
    }

    /// (several-file put requests, puts they carried) answered since start.
    pub fn put_many_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.put_many[0].load(Relaxed),
            self.put_many[1].load(Relaxed),
        )
    }

    /// Sets who may write (once; until then everyone may: used only before the node is up).
    pub fn set_write_policy(&self, policy: WritePolicy) {
        let _ = self.policy.set(policy);
    }

    /// The share store, when storage is offered.
    pub fn store(&self) -> Option<&ShareStore> {
        self.store.as_ref()
    }

    /// Handles one request from `peer`.
    pub async fn handle(&self, peer: PeerId, frame: RequestFrame) -> Response {
        let req = match frame {
            RequestFrame::Request(req) => req,
            RequestFrame::Malformed(e) => {
                let kind = match e {
                    crate::protocol::DecodeError::TooLarge { .. } => ErrorKind::TooLarge,
                    _ => ErrorKind::Malformed,
                };
                tracing::debug!(%peer, error = %e, "malformed storage request");
                return Response::Error(ServerError::new(kind, e.to_string()));
            }
        };
        let Some(store) = self.store.clone() else {
            return Response::Error(ServerError::new(
                ErrorKind::NoGrant,
                "this node does not offer storage",
            ));
        };
        let writes = matches!(
            req,
            Request::Allocate { .. }
                | Request::Write { .. }
                | Request::Close { .. }
                | Request::Put { .. }
                | Request::PutMany { .. }
                | Request::AddLease { .. }
                | Request::SlotWrite { .. }
        );
        if writes
            && let Some(policy) = self.policy.get()
            && !policy(&peer)
        {
            tracing::info!(%peer, request = req.name(), "storage write refused: not a member");
            return Response::Error(ServerError::new(
                ErrorKind::NoGrant,
                "this node stores only for members of its grid (not a member, or expelled)",
            ));
        }
        let new_bytes = match &req {
            Request::Allocate {
                shnums, data_len, ..
            } => Some(data_len.saturating_mul(shnums.len() as u64)),
            Request::Put { shares, .. } => Some(shares.iter().map(|p| p.data.len() as u64).sum()),
            Request::PutMany { puts } => Some(
                puts.iter()
                    .flat_map(|p| &p.shares)
                    .map(|p| p.data.len() as u64)
                    .sum(),
            ),
            Request::AddLease { .. } => Some(0),
            Request::SlotWrite { writes, .. } => {
                Some(writes.iter().map(|w| w.data.len() as u64).sum())
            }
            _ => None,
        };
        if let Some(new_bytes) = new_bytes {
            let owner = peer.to_bytes();
            let st = store.clone();
            let verdict =
                tokio::task::spawn_blocking(move || st.check_write(&owner, new_bytes, now_secs()))
                    .await;
            let refusal = match verdict {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(r))) => Some(r),
                Ok(Err(e)) => return Response::Error(to_server_error(&e)),
                Err(e) => {
                    return Response::Error(ServerError::new(ErrorKind::Internal, e.to_string()));
                }
            };
            if let Some(r) = refusal {
                use kith_accounting::Refusal as R;
                let kind = match r {
                    R::Revoked { .. } => ErrorKind::Revoked,
                    R::OverQuota { .. } => ErrorKind::OverQuota,
                    R::Pending => ErrorKind::Pending,
                    _ => ErrorKind::NoGrant,
                };
                tracing::info!(%peer, request = req.name(), refusal = %r, "storage write refused");
                return Response::Error(ServerError::new(kind, r.to_string()));
            }
        }
        let lease_expiry = now_secs().saturating_add(self.lease_secs);
        if let Request::PutMany { puts } = &req {
            use std::sync::atomic::Ordering::Relaxed;
            self.put_many[0].fetch_add(1, Relaxed);
            self.put_many[1].fetch_add(puts.len() as u64, Relaxed);
        }
        let name = req.name();
        let owner = peer.to_bytes();
        let result =
            tokio::task::spawn_blocking(move || execute(&store, &owner, req, lease_expiry)).await;
        match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::debug!(%peer, request = name, error = %e, "storage request refused");
                Response::Error(to_server_error(&e))
            }
            Err(join) => Response::Error(ServerError::new(
                ErrorKind::Internal,
                format!("request task failed: {join}"),
            )),
        }
    }

    /// Drops every unfinished upload of `peer` (its connection went away).
    pub async fn peer_gone(&self, peer: PeerId) {
        if let Some(store) = self.store.clone() {
            let owner = peer.to_bytes();
            let _ = tokio::task::spawn_blocking(move || store.abort_owner(&owner)).await;
        }
    }
}

/// Data plus metadata of a put's shares (bounded by [`MAX_PUT`]).
fn put_bytes(shares: &[PutShare]) -> usize {
    shares.iter().map(PutShare::put_len).sum()
}

/// A put's shares as the store takes them.
fn share_refs(shares: &[PutShare]) -> Vec<PutShareRef<'_>> {
    shares
        .iter()
        .map(|p| (p.shnum, p.data.as_slice(), p.meta.as_slice()))
        .collect()
}

/// What a put stored, as answered to the uploader.
fn stored(a: crate::storage::Allocation) -> PutAnswer {
    PutAnswer::Stored {
        already_have: a.already_have,
        stored: a.allocated,
        in_progress: a.in_progress,
    }
}

fn execute(
    store: &ShareStore,
    owner: &[u8],
    req: Request,
    lease_expiry: u64,
) -> Result<Response, StoreError> {
    Ok(match req {
        Request::Allocate {
            si,
            shnums,
            data_len,
        } => {
            let a = store.allocate(&si, owner, &shnums, data_len, lease_expiry)?;
            Response::Allocated {
                already_have: a.already_have,
                allocated: a.allocated,
                in_progress: a.in_progress,
            }
        }
        Request::Write {
            si,
            shnum,
            offset,
            data,
        } => {
            store.write(&si, shnum, owner, offset, &data)?;
            // The block's buffer came from the bulk pool (an inbound frame, or this node's own
            // encoder): the next block goes into it.
            crate::protocol::recycle_bulk(data.into_buffer());
            Response::Done
        }
        Request::Close { si, shnum, meta } => {
            if meta.len() > MAX_META {
                return Ok(Response::Error(ServerError::new(
                    ErrorKind::TooLarge,
                    format!("share metadata of {} bytes exceeds {MAX_META}", meta.len()),
                )));
            }
            store.close(&si, shnum, owner, &meta)?;
            Response::Done
        }
        Request::Put { si, shares } => {
            let total = put_bytes(&shares);
            if total > MAX_PUT {
                return Ok(Response::Error(ServerError::new(
                    ErrorKind::TooLarge,
                    format!("a put of {total} bytes exceeds {MAX_PUT}"),
                )));
            }
            let a = store.put(&si, owner, &share_refs(&shares), lease_expiry)?;
            stored(a).into()
        }
        Request::PutMany { puts } => {
            let total: usize = puts.iter().map(|p| put_bytes(&p.shares)).sum();
            if total > MAX_PUT || puts.len() > MAX_PUT_MANY {
                return Ok(Response::Error(ServerError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "{} puts of {total} bytes exceed {MAX_PUT_MANY} puts or {MAX_PUT} bytes",
                        puts.len()
                    ),
                )));
            }
            let shares: Vec<Vec<PutShareRef<'_>>> =
                puts.iter().map(|p| share_refs(&p.shares)).collect();
            let items: Vec<PutRef<'_>> = puts
                .iter()
                .zip(&shares)
                .map(|(p, s)| (p.si, s.as_slice()))
                .collect();
            Response::StoredMany(
                store
                    .put_many(owner, &items, lease_expiry)
                    .into_iter()
                    .map(|r| r.map_or_else(|e| PutAnswer::Error(to_server_error(&e)), stored))
                    .collect(),
            )
        }
        Request::Abort { si, shnum } => {
            store.abort(&si, shnum, owner)?;
            Response::Done
        }
        Request::List { si } => Response::Shares(store.list(&si)?),
        Request::ReadMeta { si, shnum } => {
            let meta = store.read_meta(&si, shnum)?;
            // A slot share's metadata is its write enabler: never shown.
            if crate::storage::is_slot_meta(&meta) {
                return Err(StoreError::NotFound { shnum });
            }
            Response::Bytes(ByteBuf::from(meta))
        }
        Request::Read {
            si,
            shnum,
            offset,
            len,
        } => {
            if len > MAX_READ {
                return Ok(Response::Error(ServerError::new(
                    ErrorKind::TooLarge,
                    format!("read of {len} bytes exceeds {MAX_READ}"),
                )));
            }
            Response::Bytes(ByteBuf::from(store.read(&si, shnum, offset, len)?))
        }
        Request::AddLease { si } => {
            let n = store.add_lease(&si, owner, lease_expiry)?;
            Response::Leased(u32::try_from(n).unwrap_or(u32::MAX))
        }
        Request::SlotRead { si, shnums } => {
            let (shares, more) = store.slot_read(&si, &shnums, MAX_READ as usize)?;
            Response::Slots {
                shares: shares
                    .into_iter()
                    .map(|(sh, b)| (sh, ByteBuf::from(b)))
                    .collect(),
                more,
            }
        }
        Request::SlotWrite {
            si,
            write_enabler,
            writes,
        } => {
            let enabler: [u8; 32] = write_enabler
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::InvalidArgument("a write enabler has 32 bytes".into()))?;
            let writes: Vec<SlotWrite> = writes
                .into_iter()
                .map(|w| SlotWrite {
                    shnum: w.shnum,
                    expect: w.expect,
                    data: w.data.into_vec(),
                })
                .collect();
            match store.slot_write(&si, owner, &enabler, &writes, lease_expiry)? {
                SlotOutcome::Written => Response::Done,
                SlotOutcome::Conflict(now) => Response::SlotConflict(now),
            }
        }
    })
}

/// Maps a store error to what goes on the wire.
pub fn to_server_error(e: &StoreError) -> ServerError {
    let kind = match e {
        StoreError::OverCapacity { .. } => ErrorKind::NoSpace,
        StoreError::DiskReserve { .. } => ErrorKind::DiskReserve,
        StoreError::ReadOnly => ErrorKind::ReadOnly,
        StoreError::NotFound { .. } => ErrorKind::NotFound,
        StoreError::NotAllocated { .. } => ErrorKind::NotAllocated,
        StoreError::OutOfBounds { .. } => ErrorKind::OutOfBounds,
        StoreError::InvalidArgument(_) => ErrorKind::Malformed,
        StoreError::Corrupt { .. } => ErrorKind::Corrupt,
        StoreError::BadWriteEnabler { .. } => ErrorKind::BadWriteEnabler,
        StoreError::NotASlot { .. } => ErrorKind::Malformed,
        _ => ErrorKind::Internal,
    };
    // Internal errors may carry local paths; keep those on this node.
    let message = if kind == ErrorKind::Internal {
        tracing::warn!(error = %e, "storage server error");
        "internal error (see the server's log)".to_owned()
    } else {
        e.to_string()
    };
    ServerError::new(kind, message)
}

/// Seconds since the Unix epoch (the IO shell's clock; pure code takes `now` as an argument).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::StoreConfig;

    fn server(dir: &std::path::Path, capacity: u64) -> StorageServer {
        let db = Arc::new(redb::Database::create(dir.join("node.redb")).unwrap());
        let store = ShareStore::open(
            db,
            StoreConfig {
                root: dir.join("storage"),
                capacity,
                reserved: 0,
                read_only: false,
                direct_io: true,
            },
        )
        .unwrap();
        StorageServer::new(Some(store), 86_400)
    }

    fn req(r: Request) -> RequestFrame {
        RequestFrame::Request(r)
    }

    #[tokio::test]
    async fn refusals_are_typed_and_leases_belong_to_the_sender() {
        let tmp = tempfile::tempdir().unwrap();
        let s = server(tmp.path(), 10_000);
        let (alice, bob) = (PeerId::random(), PeerId::random());
        let si = [4u8; 16];
        // Past capacity: a typed NoSpace the uploader can show.
        let r = s
            .handle(
                alice,
                req(Request::Allocate {
                    si,
                    shnums: vec![0, 1],
                    data_len: 6_000,
                }),
            )
            .await;
        assert!(
            matches!(
                r,
                Response::Error(ServerError {
                    kind: ErrorKind::NoSpace,
                    ..
                })
            ),
            "{r:?}"
        );
        let r = s
            .handle(
                alice,
                req(Request::Allocate {
                    si,
                    shnums: vec![0],
                    data_len: 6_000,
                }),
            )
            .await;
        assert!(
            matches!(r, Response::Allocated { ref allocated, .. } if allocated == &[0]),
            "{r:?}"
        );
        // Bob cannot write into Alice's allocation.
        let w = |data: Vec<u8>| {
            req(Request::Write {
                si,
                shnum: 0,
                offset: 0,
                data: crate::protocol::BulkBuf::from(data),
            })
        };
        let r = s.handle(bob, w(vec![1; 10])).await;
        assert!(
            matches!(
                r,
                Response::Error(ServerError {
                    kind: ErrorKind::NotAllocated,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(s.handle(alice, w(vec![1; 6_000])).await, Response::Done);
        let r = s
            .handle(
                alice,
                req(Request::Close {
                    si,
                    shnum: 0,
                    meta: ByteBuf::from(vec![2; 8]),
                }),
            )
            .await;
        assert_eq!(r, Response::Done);
        let leases = s.store().unwrap().leases(&si, 0).unwrap();
        assert!(leases.contains_key(&alice.to_bytes()) && !leases.contains_key(&bob.to_bytes()));
        // Reads beyond the share and oversized reads are refused, not served.
        let r = s
            .handle(
                bob,
                req(Request::Read {
                    si,
                    shnum: 0,
                    offset: 5_990,
                    len: 20,
                }),
            )
            .await;
        assert!(
            matches!(
                r,
                Response::Error(ServerError {
                    kind: ErrorKind::OutOfBounds,
                    ..
                })
            ),
            "{r:?}"
        );
        let r = s
            .handle(
                bob,
                req(Request::Read {
                    si,
                    shnum: 0,
                    offset: 0,
                    len: MAX_READ + 1,
                }),
            )
            .await;
        assert!(
            matches!(
                r,
                Response::Error(ServerError {
                    kind: ErrorKind::TooLarge,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            s.handle(bob, req(Request::List { si })).await,
            Response::Shares(vec![0])
        );
        // A node without storage says so.
        let none = StorageServer::new(None, 1);
        let r = none.handle(bob, req(Request::List { si })).await;
        assert!(
            matches!(
                r,
                Response::Error(ServerError {
                    kind: ErrorKind::NoGrant,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

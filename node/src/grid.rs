//! The grid shell: membership state persisted in redb, the gossip task that drives
//! [`kith_gossip::Gossip`] over libp2p, invitations, joining and expulsion.
//!
//! - Every node starts as the founder of its own one-member grid (its key is the grid id) until
//!   it joins another with an invitation code; joining is allowed while the current grid has no
//!   other member.
//! - Items (node records, expulsions) live in the `grid-items-0` table, the grid id and this
//!   node's certificate chain in `grid-0`, invitations (SHA-256 of the secret, expiry, uses
//!   left) in `invites-0`. Accepted items are written in one transaction per batch of gossip
//!   input, so a crash loses at most what gossip will bring back.
//! - The gossip task owns the core; the network actor hands it connection events and inbound
//!   gossip messages, and it sends messages and dial requests back. Member addresses from
//!   records feed the network's address book, so storage requests dial members on demand.
//! - This node's record is republished when its addresses change and every
//!   [`RECORD_REFRESH`]; records expire after [`RECORD_TTL`].

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kith_gossip::{
    Certificate, Expulsion, ExpulsionBody, Gossip, GridId, GridItem, Input, Inserted, Invitation,
    ItemKey, Kind, Message, Meta, NodeRecord, Output, PublicKey, RecordBody, Registry, Reject,
    Signer, Stats, Store, membership::ROLE_STORAGE,
};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use rand::RngCore;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    net::{NetEvent, NetHandle},
    protocol::{from_cbor, to_cbor},
};

const GRID_META: TableDefinition<&str, &[u8]> = TableDefinition::new("grid-0");
const GRID_ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("grid-items-0");
const INVITES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("invites-0");

/// How often a node republishes its record.
pub const RECORD_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// How long a record stays valid.
pub const RECORD_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// Default invitation lifetime.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest join response (every record of the grid).
pub const MAX_JOIN_RESPONSE: usize = 8 << 20;

/// Unix time in milliseconds (the gossip core's clock in the node).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ed25519 public key inside an ed25519 peer id.
pub fn pk_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// The peer id of an ed25519 public key.
pub fn peer_of(pk: &PublicKey) -> Option<PeerId> {
    let k = libp2p::identity::ed25519::PublicKey::try_from_bytes(pk).ok()?;
    Some(libp2p::identity::PublicKey::from(k).to_peer_id())
}

/// Errors of grid operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GridError {
    /// The database failed.
    #[error("grid database: {0}")]
    Db(String),
    /// The invitation code could not be read.
    #[error(transparent)]
    Code(#[from] kith_gossip::CodeError),
    /// The inviter refused the invitation.
    #[error("the inviter refused: {0}")]
    Refused(JoinRefusal),
    /// The inviter could not be reached or answered nonsense.
    #[error("joining failed: {0}")]
    Join(String),
    /// This node already belongs to a grid with other members.
    #[error(
        "this node already belongs to a grid with {0} other member(s); use a fresh node dir to join another grid"
    )]
    AlreadyMember(usize),
    /// Unknown member.
    #[error("{0} is not a member of this grid")]
    NotMember(String),
    /// Not allowed (expelling without being the founder or the inviter...).
    #[error("{0}")]
    NotAllowed(String),
    /// The gossip task stopped.
    #[error("the node is shutting down")]
    Shutdown,
}

/// Why an inviter refused a join.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, thiserror::Error,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum JoinRefusal {
    /// No such invitation (forged, or from another node).
    #[error("unknown invitation code (forged, or issued by another node)")]
    Unknown,
    /// Already used up.
    #[error("this invitation code was already used")]
    Used,
    /// Past its expiry.
    #[error("this invitation code has expired")]
    Expired,
    /// The inviter is no longer a member.
    #[error("the inviter is no longer a member of its grid")]
    NotMember,
}

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    #[serde(with = "serde_bytes")]
    secret: [u8; 16],
}

#[derive(Serialize, Deserialize)]
enum JoinResponse {
    Welcome {
        #[serde(with = "serde_bytes")]
        grid: GridId,
        chain: Vec<Certificate>,
        items: Vec<ByteBuf>,
    },
    Refused(JoinRefusal),
}

#[derive(Serialize, Deserialize)]
struct InviteEntry {
    expires: u64,
    uses_left: u32,
    created: u64,
}

/// The membership state: the validated registry plus what this node is.
#[derive(Debug)]
pub struct Membership {
    registry: Registry,
    chain: Vec<Certificate>,
    signer: Signer,
    me: PublicKey,
    peers: BTreeMap<PeerId, PublicKey>,
    dirty: BTreeMap<ItemKey, Option<Vec<u8>>>,
    join_refused: BTreeMap<JoinRefusal, u64>,
    version: u64,
    /// When each peer was last heard from (unix seconds).
    seen: BTreeMap<PeerId, u64>,
}

impl Membership {
    fn reindex(&mut self) {
        self.peers = self
            .registry
            .records()
            .filter(|r| r.body.peer != self.me)
            .filter_map(|r| peer_of(&r.body.peer).map(|p| (p, r.body.peer)))
            .collect();
        self.version += 1;
    }

    fn apply(&mut self, change: kith_gossip::Change) {
        for k in change.removed {
            self.dirty.insert(k, None);
        }
        if let Some((k, b)) = change.stored {
            self.dirty.insert(k, Some(b));
        }
        self.reindex();
    }

    /// The grid id.
    pub fn grid(&self) -> GridId {
        *self.registry.grid()
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Members other than this node, by peer id.
    pub fn peers(&self) -> &BTreeMap<PeerId, PublicKey> {
        &self.peers
    }

    /// Whether `peer` is a current member other than this node.
    pub fn is_peer(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }
}

impl Store<PeerId> for Membership {
    fn identify(&self, item: &[u8]) -> Result<(ItemKey, Meta), Reject> {
        Registry::identify(item).map(|(k, m, _)| (k, m))
    }

    fn insert(&mut self, item: &[u8], now: u64) -> Result<Inserted, Reject> {
        let (ins, change) = self.registry.insert(item, now / 1000)?;
        if ins == Inserted::New {
            self.apply(change);
        }
        Ok(ins)
    }

    fn meta(&self, key: &ItemKey) -> Option<Meta> {
        self.registry.meta(key)
    }

    fn get(&self, key: &ItemKey) -> Option<Vec<u8>> {
        self.registry.get(key).map(<[u8]>::to_vec)
    }

    fn buckets(&self) -> Vec<kith_gossip::Digest> {
        self.registry.index().buckets().to_vec()
    }

    fn bucket_entries(&self, b: usize) -> Vec<(ItemKey, Meta)> {
        self.registry.index().bucket_entries(b)
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    fn sample_members(
        &self,
        rng: &mut dyn RngCore,
        n: usize,
        skip: &dyn Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let mut all: Vec<PeerId> = self.peers.keys().filter(|p| !skip(p)).copied().collect();
        let mut out = Vec::new();
        while out.len() < n && !all.is_empty() {
            let i = (rng.next_u64() % all.len() as u64) as usize;
            out.push(all.swap_remove(i));
        }
        out
    }
}

/// One member as `kith members` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberInfo {
    /// Peer id.
    pub peer_id: String,
    /// Nickname.
    pub nickname: String,
    /// Advertised addresses.
    pub addrs: Vec<String>,
    /// Onion address.
    pub onion: Option<String>,
    /// Roles: "storage", "relay".
    pub roles: Vec<&'static str>,
    /// Last heard from (unix seconds): now while connected, else the later of the last
    /// message or connection and its current record's creation.
    pub last_seen: u64,
    /// Record sequence number.
    pub seq: u64,
    /// Free storage offered.
    pub free_bytes: u64,
    /// Software version.
    pub version: String,
    /// Who invited it (peer id; absent for the founder).
    pub invited_by: Option<String>,
    /// This node.
    pub me: bool,
    /// Connected right now.
    pub connected: bool,
}

/// Grid overview (`kith members --json` wraps the member list in it).
#[derive(Clone, Debug, Serialize)]
pub struct GridInfo {
    /// Grid id (founder's peer id).
    pub grid: String,
    /// Whether this node founded the grid.
    pub founder: bool,
    /// Members, this node included.
    pub members: Vec<MemberInfo>,
    /// Expelled members (peer ids).
    pub expelled: Vec<String>,
    /// Gossip counters (rejections by reason...).
    pub gossip: Stats,
    /// Join requests refused, by reason.
    pub join_refused: BTreeMap<JoinRefusal, u64>,
}

/// A fresh invitation.
#[derive(Clone, Debug, Serialize)]
pub struct InviteInfo {
    /// The one-line code.
    pub code: String,
    /// Expiry (unix seconds).
    pub expires: u64,
    /// Uses allowed.
    pub uses: u32,
}

enum Cmd {
    Publish(Vec<u8>),
    Stats(oneshot::Sender<Stats>),
}

/// Cloneable handle to the grid (membership state and the gossip task).
#[derive(Clone, Debug)]
pub struct GridHandle {
    state: Arc<Mutex<Membership>>,
    db: Arc<redb::Database>,
    cmd: mpsc::Sender<Cmd>,
    changed: watch::Receiver<u64>,
    net: NetHandle,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

/// What the grid needs to know about the node to describe it.
#[derive(Clone)]
pub struct Profile {
    /// Nickname.
    pub nickname: String,
    /// Offers storage.
    pub storage: bool,
    /// Capacity offered.
    pub capacity: u64,
    /// Free capacity (read when a record is made).
    pub free: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Encoding defaults for invitations (k, happy, n).
    pub encoding: (u8, u8, u8),
    /// Addresses announced in addition to the listen addresses.
    pub announce: Vec<Multiaddr>,
    /// Whom this node lets store here (read when a record is made).
    pub grants: Arc<dyn Fn() -> kith_gossip::GrantView + Send + Sync>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("nickname", &self.nickname)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Membership>) -> MutexGuard<'_, Membership> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads (or founds) the membership from the database.
pub fn load(
    db: &redb::Database,
    keypair: &libp2p::identity::Keypair,
) -> Result<Membership, GridError> {
    let ed = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|_| GridError::Db("the node key is not ed25519".into()))?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&ed.to_bytes()[..32]);
    let signer = Signer::from_seed(&seed);
    let me = signer.public();
    let tx = db.begin_write().map_err(db_e)?;
    let (grid, chain, items) = {
        let mut meta = tx.open_table(GRID_META).map_err(db_e)?;
        let items_t = tx.open_table(GRID_ITEMS).map_err(db_e)?;
        tx.open_table(INVITES).map_err(db_e)?;
        let grid: GridId = match meta.get("grid").map_err(db_e)? {
            Some(v) => v
                .value()
                .try_into()
                .map_err(|_| GridError::Db("bad grid id".into()))?,
            None => me,
        };
        let chain: Vec<Certificate> = match meta.get("chain").map_err(db_e)? {
            Some(v) => from_cbor(v.value()).map_err(GridError::Db)?,
            None => Vec::new(),
        };
        if meta.get("grid").map_err(db_e)?.is_none() {
            // First start: found a grid of our own.
            meta.insert("grid", grid.as_slice()).map_err(db_e)?;
            meta.insert("chain", to_cbor(&chain).as_slice())
                .map_err(db_e)?;
        }
        let items: Vec<Vec<u8>> = items_t
            .iter()
            .map_err(db_e)?
            .filter_map(Result::ok)
            .map(|(_, v)| v.value().to_vec())
            .collect();
        (grid, chain, items)
    };
    tx.commit().map_err(db_e)?;
    let mut registry = Registry::new(grid);
    // Expulsions first, so records they void are not loaded.
    let mut sorted = items;
    sorted.sort_by_key(|b| !matches!(GridItem::decode(b), Ok(GridItem::Expulsion(_))));
    // Expired records are kept for dialing at start, then swept by the gossip task.
    for b in &sorted {
        let _ = registry.insert(b, 0);
    }
    let mut m = Membership {
        registry,
        chain,
        signer,
        me,
        peers: BTreeMap::new(),
        dirty: BTreeMap::new(),
        join_refused: BTreeMap::new(),
        version: 0,
        seen: BTreeMap::new(),
    };
    m.reindex();
    Ok(m)
}

fn flush(db: &redb::Database, m: &mut Membership) -> Result<(), GridError> {
    if m.dirty.is_empty() {
        return Ok(());
    }
    let dirty = std::mem::take(&mut m.dirty);
    let tx = db.begin_write().map_err(db_e)?;
    {
        let mut t = tx.open_table(GRID_ITEMS).map_err(db_e)?;
        write_items(&mut t, dirty)?;
    }
    tx.commit().map_err(db_e)
}

/// Writes (or, for `None`, removes) grid items in `t`.
fn write_items(
    t: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    items: impl IntoIterator<Item = (ItemKey, Option<Vec<u8>>)>,
) -> Result<(), GridError> {
    for (k, v) in items {
        let mut key = [0u8; 33];
        key[0] = k.kind;
        key[1..].copy_from_slice(&k.id);
        match v {
            Some(b) => {
                t.insert(key.as_slice(), b.as_slice()).map_err(db_e)?;
            }
            None => {
                t.remove(key.as_slice()).map_err(db_e)?;
            }
        }
    }
    Ok(())
}

/// An `/onion3/…` address.
pub fn is_onion(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Onion3(_)))
}

/// An `/onion3/…` address, with or without a trailing `/p2p/<peer>`, and nothing else.
pub fn is_onion_with_peer(a: &Multiaddr) -> bool {
    let mut it = a.iter();
    matches!(it.next(), Some(Protocol::Onion3(_)))
        && matches!(
            (it.next(), it.next()),
            (None | Some(Protocol::P2p(_)), None)
        )
}

/// Addresses others can dial: no unspecified IPs, no link-local ones (`fe80::/10` needs the
/// interface it belongs to, which a peer's host does not have; `169.254/16` likewise), no
/// wildcard onion listen address (onion addresses are kept: peers with Tor dial them), no
/// trailing `/p2p/<self>`.
fn dialable(addrs: &[Multiaddr]) -> Vec<Multiaddr> {
    addrs
        .iter()
        .filter(|a| {
            !a.iter().any(|p| match p {
                Protocol::Ip4(ip) => ip.is_unspecified() || ip.is_link_local(),
                Protocol::Ip6(ip) => ip.is_unspecified() || ip.is_unicast_link_local(),
                Protocol::Onion3(o) => o.hash().iter().all(|b| *b == 0),
                _ => false,
            })
        })
        // Only a trailing `/p2p/<self>` goes: a relayed address keeps its relay's `/p2p/`.
        .map(kith_transports::without_peer_id)
        .collect()
}

/// Addresses worth telling others: loopback ones only when there is nothing else (a node on a
/// real network announcing 127.0.0.1 sends peers to themselves, or to whatever else listens
/// on that port on their host).
pub(crate) fn announceable(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    // An onion address is no reason to hide the loopback ones: on one machine (tests) they
    // are the clearnet path.
    if addrs.iter().all(|a| loopback(a) || is_onion(a)) {
        return addrs;
    }
    addrs.into_iter().filter(|a| !loopback(a)).collect()
}

/// The addresses a node tells others (its record, its invitations, `kith id`), without
/// `/p2p/`: announced ones, then confirmed external ones (AutoNAT, UPnP, relayed), then the
/// listen addresses (useful on the same LAN), IPv4 before IPv6 (a host may hold many IPv6
/// addresses: temporary ones rotate daily and linger, and a record keeps
/// [`kith_gossip::membership::MAX_ADDRS`]); [`dialable`] and [`announceable`] ones only, each
/// once.
pub(crate) fn advertised(announce: &[Multiaddr], st: &crate::net::NetState) -> Vec<Multiaddr> {
    let mut all: Vec<Multiaddr> = announce.to_vec();
    all.extend(st.external_addrs.iter().cloned());
    let (v4, v6): (Vec<&Multiaddr>, Vec<&Multiaddr>) = st
        .listen_addrs
        .iter()
        .partition(|a| !matches!(a.iter().next(), Some(Protocol::Ip6(_))));
    all.extend(v4.into_iter().chain(v6).cloned());
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in announceable(dialable(&all)) {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(kith_gossip::membership::MAX_ADDRS);
    out
}

fn record_addrs(r: &NodeRecord) -> Vec<Multiaddr> {
    r.body
        .addrs
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
        .collect()
}

impl GridHandle {
    /// Starts the gossip task.
    pub fn spawn(
        membership: Membership,
        db: Arc<redb::Database>,
        net: NetHandle,
        events: mpsc::Receiver<NetEvent>,
        profile: Profile,
    ) -> (GridHandle, tokio::task::JoinHandle<()>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (changed_tx, changed_rx) = watch::channel(membership.version);
        // Dial what we knew before: reconnect with nobody's address typed in again.
        for r in membership.registry.records() {
            if let Some(p) = peer_of(&r.body.peer)
                && r.body.peer != membership.me
            {
                net.set_addresses(p, record_addrs(r));
            }
        }
        let state = Arc::new(Mutex::new(membership));
        let handle = GridHandle {
            state: state.clone(),
            db: db.clone(),
            cmd: cmd_tx,
            changed: changed_rx,
            net: net.clone(),
        };
        let task = Task {
            core: Gossip::new(
                net.local_peer_id(),
                kith_gossip::Config::default(),
                now_ms(),
            ),
            state,
            db,
            net,
            changed: changed_tx,
            profile,
            rng: rand::SeedableRng::from_entropy(),
            published_addrs: None,
            next_refresh: 0,
            // Records that expired while this node was off still say where members were: keep
            // them for five minutes, time to reconnect and sync fresh ones.
            next_expire: now_ms() + 300_000,
        };
        let join = tokio::spawn(task.run(events, cmd_rx));
        (handle, join)
    }

    /// The membership state (locked).
    pub fn state(&self) -> MutexGuard<'_, Membership> {
        lock(&self.state)
    }

    /// A receiver that changes whenever the membership does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Members other than this node that offer storage and whose published grants do not
    /// refuse this node (a reciprocal policy counts as a grant: its node decides).
    pub fn storage_members(&self) -> Vec<PeerId> {
        Self::granting(&self.state())
    }

    fn granting(s: &Membership) -> Vec<PeerId> {
        let me = s.me;
        s.peers
            .iter()
            .filter(|(_, pk)| {
                s.registry.record(pk).is_some_and(|r| {
                    r.offers_storage()
                        && r.body
                            .grants
                            .grant_for(&me, Some(kith_gossip::membership::UNLIMITED))
                            .is_some()
                })
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Members offering storage that grant this node, and those whose published grants refuse
    /// it (with the reason), from one consistent view.
    pub fn storage_view(&self) -> (Vec<PeerId>, Vec<(PeerId, &'static str)>) {
        let s = self.state();
        (Self::granting(&s), Self::refusing(&s))
    }

    fn refusing(s: &Membership) -> Vec<(PeerId, &'static str)> {
        let me = s.me;
        s.peers
            .iter()
            .filter_map(|(p, pk)| {
                let g = &s
                    .registry
                    .record(pk)
                    .filter(|r| r.offers_storage())?
                    .body
                    .grants;
                if g.grant_for(&me, Some(kith_gossip::membership::UNLIMITED))
                    .is_some()
                {
                    return None;
                }
                let why = if g.explicit.iter().any(|e| e.member == me) {
                    "revoked this node's access (or has not granted it yet)"
                } else if g.invite_only {
                    "grant pending (invite-only)"
                } else {
                    "grants no storage to members"
                };
                Some((*p, why))
            })
            .collect()
    }

    /// Whether `peer` is a current member.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.state().is_peer(peer)
    }

    /// The grid overview.
    pub async fn info(&self) -> GridInfo {
        let (tx, rx) = oneshot::channel();
        let stats = match self.cmd.send(Cmd::Stats(tx)).await {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Stats::default(),
        };
        let connected = self.net.state().peers;
        let s = self.state();
        let grid = s.grid();
        let now = now_ms() / 1000;
        let members = s
            .registry
            .records()
            .map(|r| {
                let b = &r.body;
                let peer = peer_of(&b.peer);
                let mut roles = Vec::new();
                if b.roles & ROLE_STORAGE != 0 {
                    roles.push("storage");
                }
                if b.roles & kith_gossip::membership::ROLE_RELAY != 0 {
                    roles.push("relay");
                }
                MemberInfo {
                    peer_id: peer.map(|p| p.to_string()).unwrap_or_default(),
                    nickname: b.nickname.clone(),
                    addrs: record_addrs(r).iter().map(ToString::to_string).collect(),
                    onion: b.onion.clone(),
                    roles,
                    last_seen: match peer {
                        _ if b.peer == s.me => now,
                        Some(p) if connected.contains_key(&p) => now,
                        Some(p) => s.seen.get(&p).copied().unwrap_or(0).max(b.issued_at),
                        None => b.issued_at,
                    },
                    seq: b.seq,
                    free_bytes: b.free,
                    version: b.version.clone(),
                    invited_by: b
                        .chain
                        .first()
                        .and_then(|c| peer_of(&c.inviter))
                        .map(|p| p.to_string()),
                    me: b.peer == s.me,
                    connected: peer.is_some_and(|p| connected.contains_key(&p)),
                }
            })
            .collect();
        GridInfo {
            grid: peer_of(&grid).map(|p| p.to_string()).unwrap_or_default(),
            founder: grid == s.me,
            members,
            expelled: s
                .registry
                .expulsions()
                .filter_map(|e| peer_of(&e.body.member))
                .map(|p| p.to_string())
                .collect(),
            gossip: stats,
            join_refused: s.join_refused.clone(),
        }
    }

    /// Creates an invitation valid for `ttl` and `uses` joins.
    pub async fn invite(
        &self,
        ttl: Duration,
        uses: u32,
        addrs: Vec<Multiaddr>,
        encoding: (u8, u8, u8),
    ) -> Result<InviteInfo, GridError> {
        let mut secret = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let now = now_ms() / 1000;
        let expires = now.saturating_add(ttl.as_secs());
        let (grid, me) = {
            let s = self.state();
            (s.grid(), s.me)
        };
        let entry = InviteEntry {
            expires,
            uses_left: uses.max(1),
            created: now,
        };
        let db = self.db.clone();
        let key = Invitation::secret_hash(&secret);
        tokio::task::spawn_blocking(move || -> Result<(), GridError> {
            let tx = db.begin_write().map_err(db_e)?;
            tx.open_table(INVITES)
                .map_err(db_e)?
                .insert(key.as_slice(), to_cbor(&entry).as_slice())
                .map_err(db_e)?;
            tx.commit().map_err(db_e)
        })
        .await
        .map_err(db_e)??;
        let inv = Invitation {
            grid,
            inviter: me,
            addrs: dialable(&addrs)
                .iter()
                .map(|a| ByteBuf::from(a.to_vec()))
                .take(kith_gossip::membership::MAX_ADDRS)
                .collect(),
            onion: None,
            k: encoding.0,
            happy: encoding.1,
            n: encoding.2,
            secret,
            expires,
        };
        Ok(InviteInfo {
            code: inv.encode(),
            expires,
            uses: uses.max(1),
        })
    }

    /// Joins the grid of `code`: dials the inviter, proves the secret, adopts the certificate
    /// chain and the records it sends. Returns the number of members now known.
    pub async fn join(&self, code: &str) -> Result<usize, GridError> {
        let inv = Invitation::decode(code)?;
        // Expiry is the inviter's to judge (and count): clocks differ.
        {
            let s = self.state();
            if s.grid() == inv.grid && (s.me == inv.grid || !s.chain.is_empty()) {
                return Ok(s.registry.records().count());
            }
            if !s.peers.is_empty() {
                return Err(GridError::AlreadyMember(s.peers.len()));
            }
        }
        let inviter =
            peer_of(&inv.inviter).ok_or_else(|| GridError::Join("bad inviter key".into()))?;
        let addrs: Vec<Multiaddr> = inv
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
            .collect();
        if addrs.is_empty() {
            return Err(GridError::Join(
                "the code carries no address of the inviter".into(),
            ));
        }
        self.net.set_addresses(inviter, addrs);
        let body = to_cbor(&JoinRequest { secret: inv.secret });
        let resp = self
            .net
            .join_request(inviter, body)
            .await
            .map_err(|e| GridError::Join(e.to_string()))?;
        let resp: JoinResponse = from_cbor(&resp)
            .map_err(|e| GridError::Join(format!("bad answer from the inviter: {e}")))?;
        let (grid, chain, items) = match resp {
            JoinResponse::Welcome { grid, chain, items } => (grid, chain, items),
            JoinResponse::Refused(r) => return Err(GridError::Refused(r)),
        };
        let me = self.state().me;
        if grid != inv.grid {
            return Err(GridError::Join(
                "the inviter answered for another grid".into(),
            ));
        }
        kith_gossip::membership::verify_chain(&grid, &me, &chain, &|_| false)
            .map_err(|e| GridError::Join(format!("the inviter sent a bad certificate: {e}")))?;
        let mut registry = Registry::new(grid);
        let unix = now_ms() / 1000;
        // Expulsions first.
        let mut items: Vec<Vec<u8>> = items.into_iter().map(ByteBuf::into_vec).collect();
        items.sort_by_key(|b| !matches!(GridItem::decode(b), Ok(GridItem::Expulsion(_))));
        for b in &items {
            let _ = registry.insert(b, unix);
        }
        // Adopt and persist in one critical section and one transaction: grid, chain, the new
        // items, the old grid's items gone. (The grid task writes dirty items whenever it
        // handles gossip: with the new items marked dirty before the old ones were cleared
        // from the disk, a write of them in between was cleared too, and a node that joined
        // without its daemon restarted knowing nobody: about one join in ten in the CLI tests.)
        let db = self.db.clone();
        let state = self.state.clone();
        let count = tokio::task::spawn_blocking(move || -> Result<usize, GridError> {
            let mut s = lock(&state);
            let items: Vec<(ItemKey, Option<Vec<u8>>)> = registry
                .index()
                .iter()
                .map(|(k, _)| (*k, registry.get(k).map(<[u8]>::to_vec)))
                .collect();
            let tx = db.begin_write().map_err(db_e)?;
            {
                let mut meta = tx.open_table(GRID_META).map_err(db_e)?;
                meta.insert("grid", grid.as_slice()).map_err(db_e)?;
                meta.insert("chain", to_cbor(&chain).as_slice())
                    .map_err(db_e)?;
                let mut t = tx.open_table(GRID_ITEMS).map_err(db_e)?;
                t.retain(|_, _| false).map_err(db_e)?;
                write_items(&mut t, items)?;
            }
            tx.commit().map_err(db_e)?;
            s.registry = registry;
            s.chain = chain;
            s.dirty.clear();
            s.reindex();
            Ok(s.registry.records().count())
        })
        .await
        .map_err(db_e)??;
        for r in self.state().registry.records() {
            if let Some(p) = peer_of(&r.body.peer) {
                self.net.set_addresses(p, record_addrs(r));
            }
        }
        // Publish our record now (the task also connects to members).
        let _ = self.cmd.send(Cmd::Publish(Vec::new())).await;
        Ok(count)
    }

    /// Expels `peer` grid-wide (this node must be the founder or `peer`'s inviter).
    pub async fn expel(&self, peer: PeerId) -> Result<(), GridError> {
        let item = {
            let s = self.state();
            let pk = pk_of(&peer).ok_or_else(|| GridError::NotMember(peer.to_string()))?;
            let rec = s
                .registry
                .record(&pk)
                .ok_or_else(|| GridError::NotMember(peer.to_string()))?;
            let inviter = rec.body.chain.first().map(|c| c.inviter);
            if s.me != s.grid() && Some(s.me) != inviter {
                return Err(GridError::NotAllowed(format!(
                    "only the grid's founder or the member's inviter can expel {peer}"
                )));
            }
            let e = Expulsion::sign(
                &s.signer,
                ExpulsionBody {
                    grid: s.grid(),
                    member: pk,
                    by: s.me,
                    issued_at: now_ms() / 1000,
                    chain: rec.body.chain.clone(),
                },
            );
            GridItem::Expulsion(e).encode()
        };
        self.cmd
            .send(Cmd::Publish(item))
            .await
            .map_err(|_| GridError::Shutdown)?;
        let mut w = self.watch();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            w.wait_for(|_| !self.state().is_peer(&peer)),
        )
        .await;
        if self.state().is_peer(&peer) {
            return Err(GridError::NotAllowed(
                "the expulsion was not accepted".into(),
            ));
        }
        self.net.forget(peer).await;
        Ok(())
    }

    /// Republishes this node's record now (new sequence number).
    pub async fn refresh_record(&self) -> Result<(), GridError> {
        self.cmd
            .send(Cmd::Publish(Vec::new()))
            .await
            .map_err(|_| GridError::Shutdown)
    }

    /// Sends a raw gossip message to `peer` (for tests and diagnostics: the receiver validates
    /// everything).
    pub fn send_raw(&self, peer: PeerId, msg: &Message) {
        self.net.send_gossip(peer, msg.encode());
    }

    /// This node's signing key (for tests that forge items).
    pub fn signer(&self) -> Signer {
        self.state().signer.clone()
    }
}

/// Answers a join request from `peer` (the connection authenticated it).
fn answer_join(
    state: &Mutex<Membership>,
    db: &redb::Database,
    peer: PeerId,
    body: &[u8],
) -> Vec<u8> {
    let resp = match admit(state, db, peer, body) {
        Ok(r) => r,
        Err(refusal) => {
            *lock(state).join_refused.entry(refusal).or_insert(0) += 1;
            tracing::info!(%peer, reason = %refusal, "join refused");
            JoinResponse::Refused(refusal)
        }
    };
    to_cbor(&resp)
}

fn admit(
    state: &Mutex<Membership>,
    db: &redb::Database,
    peer: PeerId,
    body: &[u8],
) -> Result<JoinResponse, JoinRefusal> {
    let req: JoinRequest = from_cbor(body).map_err(|_| JoinRefusal::Unknown)?;
    let member = pk_of(&peer).ok_or(JoinRefusal::Unknown)?;
    let key = Invitation::secret_hash(&req.secret);
    let now = now_ms() / 1000;
    let tx = db.begin_write().map_err(|_| JoinRefusal::Unknown)?;
    {
        let mut t = tx.open_table(INVITES).map_err(|_| JoinRefusal::Unknown)?;
        let entry: InviteEntry = match t.get(key.as_slice()).map_err(|_| JoinRefusal::Unknown)? {
            Some(v) => from_cbor(v.value()).map_err(|_| JoinRefusal::Unknown)?,
            None => return Err(JoinRefusal::Unknown),
        };
        if entry.uses_left == 0 {
            return Err(JoinRefusal::Used);
        }
        if entry.expires <= now {
            return Err(JoinRefusal::Expired);
        }
        let left = InviteEntry {
            uses_left: entry.uses_left - 1,
            ..entry
        };
        t.insert(key.as_slice(), to_cbor(&left).as_slice())
            .map_err(|_| JoinRefusal::Unknown)?;
    }
    tx.commit().map_err(|_| JoinRefusal::Unknown)?;
    let s = lock(state);
    if s.registry.is_expelled(&s.me) || (s.me != s.grid() && !s.registry.is_member(&s.me)) {
        return Err(JoinRefusal::NotMember);
    }
    let cert = Certificate::issue(&s.signer, s.grid(), member, now);
    let mut chain = vec![cert];
    chain.extend(s.chain.iter().cloned());
    let mut items = Vec::new();
    let mut size = 0;
    for (k, _) in s.registry.index().iter() {
        if let Some(b) = s.registry.get(k) {
            size += b.len() + 8;
            if size > MAX_JOIN_RESPONSE - 64 * 1024 {
                break; // the rest arrives by anti-entropy
            }
            items.push(ByteBuf::from(b.to_vec()));
        }
    }
    Ok(JoinResponse::Welcome {
        grid: s.grid(),
        chain,
        items,
    })
}

fn db_e<E: std::fmt::Display>(e: E) -> GridError {
    GridError::Db(e.to_string())
}

struct Task {
    core: Gossip<PeerId>,
    state: Arc<Mutex<Membership>>,
    db: Arc<redb::Database>,
    net: NetHandle,
    changed: watch::Sender<u64>,
    profile: Profile,
    rng: rand::rngs::StdRng,
    published_addrs: Option<Vec<Multiaddr>>,
    next_refresh: u64,
    next_expire: u64,
}

impl Task {
    async fn run(mut self, mut events: mpsc::Receiver<NetEvent>, mut cmds: mpsc::Receiver<Cmd>) {
        let mut net_state = self.net.watch();
        // Publish our record as soon as the listen addresses are known (maybe already).
        net_state.mark_changed();
        // Dial known members right away (restart: reconnect from persisted records).
        self.input(Input::Tick);
        loop {
            let deadline = self
                .core
                .next_deadline()
                .min(self.next_refresh.max(now_ms() + 50));
            let sleep = Duration::from_millis(deadline.saturating_sub(now_ms()).min(1000));
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break,
                    Some(NetEvent::Connected(p)) => self.input(Input::Connected(p)),
                    Some(NetEvent::Disconnected(p)) => self.input(Input::Disconnected(p)),
                    Some(NetEvent::Gossip(p, bytes)) => {
                        let input = match Message::decode(&bytes) {
                            Ok(m) => Input::Message(p, m, bytes.len()),
                            Err(e) => {
                                tracing::debug!(peer = %p, error = %e, "malformed gossip");
                                Input::Malformed(p)
                            }
                        };
                        self.input(input);
                    }
                    Some(NetEvent::Join(p, body, reply)) => {
                        let _ = reply.send(answer_join(&self.state, &self.db, p, &body));
                    }
                },
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Cmd::Publish(item)) if item.is_empty() => self.publish_record(),
                    Some(Cmd::Publish(item)) => self.input(Input::Publish(item)),
                    Some(Cmd::Stats(tx)) => { let _ = tx.send(self.core.stats().clone()); }
                },
                changed = net_state.changed() => {
                    if changed.is_err() { break; }
                    let addrs = self.my_addrs();
                    if !addrs.is_empty() && self.published_addrs.as_ref() != Some(&addrs) {
                        self.publish_record();
                    }
                }
                _ = tokio::time::sleep(sleep) => {
                    let now = now_ms();
                    if now >= self.next_refresh && self.published_addrs.is_some() {
                        self.publish_record();
                    }
                    let expired = if now >= self.next_expire {
                        self.next_expire = now + 60_000;
                        lock(&self.state).registry.expire(now / 1000)
                    } else {
                        Vec::new()
                    };
                    if !expired.is_empty() {
                        let mut s = lock(&self.state);
                        for k in expired { s.dirty.insert(k, None); }
                        s.reindex();
                    }
                    self.input(Input::Tick);
                }
            }
        }
    }

    fn my_addrs(&self) -> Vec<Multiaddr> {
        advertised(&self.profile.announce, &self.net.state())
    }

    fn publish_record(&mut self) {
        let addrs = self.my_addrs();
        let now = now_ms();
        let item = {
            let s = lock(&self.state);
            let seq = s
                .registry
                .record(&s.me)
                .map_or(0, |r| r.body.seq)
                .max(now.saturating_sub(1))
                + 1;
            let body = RecordBody {
                grid: s.grid(),
                peer: s.me,
                seq,
                issued_at: now / 1000,
                expires: now / 1000 + RECORD_TTL.as_secs(),
                nickname: self.profile.nickname.chars().take(64).collect(),
                addrs: addrs.iter().map(|a| ByteBuf::from(a.to_vec())).collect(),
                onion: addrs.iter().find(|a| is_onion(a)).map(ToString::to_string),
                roles: if self.profile.storage {
                    ROLE_STORAGE
                } else {
                    0
                },
                free: (self.profile.free)(),
                capacity: self.profile.capacity,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                chain: s.chain.clone(),
                grants: (self.profile.grants)(),
            };
            GridItem::Record(NodeRecord::sign(&s.signer, body)).encode()
        };
        self.published_addrs = Some(addrs);
        self.next_refresh = now + RECORD_REFRESH.as_millis() as u64;
        self.input(Input::Publish(item));
    }

    fn input(&mut self, input: Input<PeerId>) {
        let now = now_ms();
        let mut s = lock(&self.state);
        if let Input::Connected(p) | Input::Disconnected(p) | Input::Message(p, ..) = &input
            && s.peers.contains_key(p)
        {
            s.seen.insert(*p, now / 1000);
        }
        self.core.handle(&mut *s, &mut self.rng, input, now);
        let mut sends = Vec::new();
        let mut delivered = false;
        while let Some(out) = self.core.poll() {
            match out {
                Output::Send(p, m) => sends.push((p, m)),
                Output::Connect(p) => {
                    if let Some(pk) = s.peers.get(&p)
                        && let Some(r) = s.registry.record(pk)
                    {
                        self.net.set_addresses(p, record_addrs(r));
                    }
                    let net = self.net.clone();
                    tokio::spawn(async move { net.connect(p).await });
                }
                Output::Delivered(key) => {
                    delivered = true;
                    if key.kind == Kind::Record as u8
                        && let Some(r) = s.registry.record(&key.id)
                        && let Some(p) = peer_of(&key.id)
                        && key.id != s.me
                    {
                        self.net.set_addresses(p, record_addrs(r));
                    }
                    if key.kind == Kind::Expulsion as u8
                        && let Some(p) = peer_of(&key.id)
                    {
                        let net = self.net.clone();
                        tokio::spawn(async move { net.forget(p).await });
                    }
                }
            }
        }
        if delivered || !s.dirty.is_empty() {
            if let Err(e) = flush(&self.db, &mut s) {
                tracing::warn!(error = %e, "persisting grid items failed");
            }
            let v = s.version;
            drop(s);
            self.changed.send_replace(v);
        } else {
            drop(s);
        }
        for (p, m) in sends {
            self.net.send_gossip(p, m.encode());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    const ONION: &str = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:4001";

    #[test]
    fn advertised_addresses_put_ipv4_listen_addresses_before_ipv6_and_keep_max_addrs() {
        let st = crate::net::NetState {
            external_addrs: vec![ma("/ip6/2001:db8::9/tcp/1")],
            // Many IPv6 addresses first (as if-watch may report them), then IPv4.
            listen_addrs: (1..=20)
                .map(|i| ma(&format!("/ip6/2001:db8::{i:x}/tcp/2")))
                .chain([
                    ma("/ip6/fe80::1/tcp/2"),
                    ma("/ip4/192.168.1.10/tcp/2"),
                    ma("/ip4/127.0.0.1/tcp/2"),
                ])
                .collect(),
            ..Default::default()
        };
        let announce = [ma("/ip4/203.0.113.5/tcp/2")];
        let got = advertised(&announce, &st);
        assert_eq!(got.len(), kith_gossip::membership::MAX_ADDRS);
        // Announced, external, then the IPv4 LAN address (loopback and link-local dropped)
        // ahead of the IPv6 ones that fill the rest.
        assert_eq!(
            got[..4],
            [
                ma("/ip4/203.0.113.5/tcp/2"),
                ma("/ip6/2001:db8::9/tcp/1"),
                ma("/ip4/192.168.1.10/tcp/2"),
                ma("/ip6/2001:db8::1/tcp/2"),
            ]
        );
    }

    #[test]
    fn link_local_addresses_are_not_dialable() {
        let keep = [
            "/ip6/2001:db8::7/tcp/1",
            "/ip6/fd00::2/udp/1/quic-v1",
            "/ip4/192.168.1.10/tcp/1",
        ];
        let mut all: Vec<Multiaddr> = keep.iter().map(|s| ma(s)).collect();
        all.push(ma("/ip6/fe80::fc:ff:fe00:1/tcp/1"));
        all.push(ma("/ip4/169.254.3.4/tcp/1"));
        all.push(ma("/ip6/::/tcp/1"));
        assert_eq!(
            dialable(&all),
            keep.iter().map(|s| ma(s)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn onion_addresses_are_dialable_and_announceable() {
        let wildcard = kith_transports::tor::onion_listen_addr(4001);
        let got = dialable(&[ma(ONION), wildcard, ma("/ip4/0.0.0.0/tcp/1")]);
        assert_eq!(
            got,
            vec![ma(ONION)],
            "the wildcard onion listen address is not dialable"
        );
        // loopback stays next to an onion address (tests on one machine)...
        let lo = ma("/ip4/127.0.0.1/tcp/1");
        assert_eq!(
            announceable(vec![lo.clone(), ma(ONION)]),
            vec![lo.clone(), ma(ONION)]
        );
        // ...and goes when a real address exists; the onion address always stays
        let public = ma("/ip4/192.0.2.1/tcp/1");
        assert_eq!(
            announceable(vec![lo, ma(ONION), public.clone()]),
            vec![ma(ONION), public]
        );
        assert!(is_onion(&ma(ONION)) && !is_onion(&ma("/ip4/192.0.2.1/tcp/1")));
        let with_peer = kith_transports::with_peer_id(&ma(ONION), PeerId::random());
        assert!(is_onion_with_peer(&with_peer));
        assert!(!is_onion_with_peer(&ma(&format!("{ONION}/p2p-circuit"))));
    }
}

//! The sans-IO gossip state machine: Plumtree dissemination over a bounded neighbour set plus
//! digest anti-entropy.
//!
//! [`Gossip::handle`] takes one [`Input`] and the current time (milliseconds on any monotonic
//! clock) and queues [`Output`]s, read with [`Gossip::poll`]. It never sleeps, reads a clock,
//! touches a socket or uses a global RNG: the caller passes the RNG in, and the item store is a
//! [`Store`] the caller owns (redb-backed in the node, a shared-base overlay in the simulator).
//!
//! - **Eager push / lazy announce** (Plumtree). A new item goes as a full `Push` to eager
//!   neighbours and as an `IHave` (batched every `lazy_flush`) to lazy ones. A duplicate push
//!   demotes its sender to lazy with a `Prune`. A missing item announced by `IHave` that has
//!   not arrived within `ihave_timeout` is pulled with a `Graft`, which also promotes that link
//!   to eager: the tree repairs itself around lost messages, stalled nodes and departures.
//!   Unlike classic Plumtree, a duplicate prunes only while more than `min_eager` (default 2)
//!   eager links remain, and a node left with fewer promotes random lazy neighbours: the eager
//!   graph is a spanning tree plus random extra edges, so a lost push or a departed parent is
//!   usually covered by the second path instead of a graft round trip, and the random edges
//!   shorten paths for every origin (one shared tree serves all origins poorly). Measured with
//!   `simulations/` (`gossip-sim`): under one duplicate per delivery at 1 000 and 10 000 nodes.
//!   A node at `max_degree` answers eager pushes from peers it cannot take as neighbours with
//!   `Prune`, and rotation replaces only lazy neighbours, so eager links stay symmetric.
//! - **Anti-entropy.** Every `sync_interval`, and whenever a neighbour is added, the node sends
//!   its root digest to one neighbour; if the roots differ, bucket digests, then the entries of
//!   the differing buckets, then the missing items follow. This is how late joiners, restarted
//!   nodes and healed partitions converge, and it carries whatever the tree dropped.
//! - **Neighbours.** Connected members, at most `max_degree`; below `target_degree` the core
//!   asks the shell to connect to random members (it knows them all: membership is what is
//!   gossiped), and every `rotate_interval` it adds one random member so the overlay stays a
//!   random graph and partitions heal.
//! - **Limits.** Messages from non-members are dropped and counted; each peer has a token
//!   bucket on bytes received; queues (missing items, lazy announcements) are bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, RngCore, seq::SliceRandom};
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::{
    index::{BUCKETS, Digest, ItemKey, Meta},
    message::{Announce, MAX_ANNOUNCES, MAX_ENTRIES, MAX_ITEMS, MAX_KEYS, Message},
};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Why an item was refused (counted per reason in [`Stats::rejected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reject {
    /// Not a valid item encoding.
    #[error("malformed item")]
    Malformed,
    /// The signature does not verify.
    #[error("forged signature")]
    BadSignature,
    /// The certificate chain does not lead to the grid founder.
    #[error("broken certificate chain")]
    BrokenChain,
    /// The item belongs to another grid.
    #[error("item of another grid")]
    WrongGrid,
    /// The subject (or someone in its chain) was expelled.
    #[error("expelled member")]
    Expelled,
    /// An older version than the one held (a replay).
    #[error("replayed old version")]
    Replayed,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Not allowed for another reason (an expulsion by someone who may not expel...).
    #[error("not allowed")]
    NotAllowed,
}

/// Result of [`Store::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored: newer than what was held.
    New,
    /// Not newer than what is held: nothing changed.
    Duplicate,
}

/// The item store the core reads and writes. Implementations validate items (signatures,
/// chains, expiry) and keep the digest [`crate::index::Index`].
pub trait Store<P> {
    /// Parses `item` cheaply (no signature check): its key and meta, for duplicate detection.
    fn identify(&self, item: &[u8]) -> Result<(ItemKey, Meta), Reject>;
    /// Fully validates `item` and stores it if newer.
    fn insert(&mut self, item: &[u8], now: Millis) -> Result<Inserted, Reject>;
    /// The meta held for `key`.
    fn meta(&self, key: &ItemKey) -> Option<Meta>;
    /// The canonical bytes held for `key`.
    fn get(&self, key: &ItemKey) -> Option<Vec<u8>>;
    /// The bucket digests ([`BUCKETS`] of them).
    fn buckets(&self) -> Vec<Digest>;
    /// The entries of bucket `b`.
    fn bucket_entries(&self, b: usize) -> Vec<(ItemKey, Meta)>;
    /// Whether `peer` is a current member (has a valid, unexpelled record).
    fn is_member(&self, peer: &P) -> bool;
    /// Up to `n` random members other than ourselves for which `skip` is false.
    fn sample_members(&self, rng: &mut dyn RngCore, n: usize, skip: &dyn Fn(&P) -> bool) -> Vec<P>;
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Neighbours the core tries to keep.
    pub target_degree: usize,
    /// Most neighbours (extra connections are not used for gossip).
    pub max_degree: usize,
    /// How long to wait for a pushed copy after an `IHave` before grafting.
    pub ihave_timeout: Millis,
    /// How long to wait after a graft before asking the next announcer.
    pub graft_timeout: Millis,
    /// Lazy announcements are batched this long.
    pub lazy_flush: Millis,
    /// Anti-entropy period.
    pub sync_interval: Millis,
    /// How often one more random member is added to the neighbours.
    pub rotate_interval: Millis,
    /// How long a requested connection may take before another member is tried.
    pub connect_timeout: Millis,
    /// Rounds by which a lazy path must beat the eager one to replace it (Plumtree
    /// optimization); 0 disables.
    pub optimize_threshold: u16,
    /// Eager links a node keeps even when they deliver duplicates: a duplicate from an eager
    /// neighbour prunes it only while more than this many remain, and a node left with fewer
    /// (pruned, disconnected) promotes random lazy neighbours. 1 is classic Plumtree (a
    /// spanning tree, about 0 duplicates, but every lost push or broken link costs a graft
    /// round trip); 2 keeps a second path to most nodes, so losses and departures rarely need
    /// a graft, and the extra random edges shorten paths, for well under one duplicate per
    /// delivery.
    pub min_eager: usize,
    /// Bytes a peer may send in a burst.
    pub rate_burst: u64,
    /// Bytes per second a peer may send sustained.
    pub rate_per_sec: u64,
    /// Most missing items tracked.
    pub max_missing: usize,
    /// Items remembered with their round (for the tree optimization), and for how long.
    pub recent_ttl: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target_degree: 6,
            max_degree: 8,
            ihave_timeout: 350,
            graft_timeout: 300,
            lazy_flush: 20,
            sync_interval: 10_000,
            rotate_interval: 60_000,
            connect_timeout: 10_000,
            optimize_threshold: 1,
            min_eager: 2,
            rate_burst: 4 << 20,
            rate_per_sec: 512 << 10,
            max_missing: 8192,
            recent_ttl: 30_000,
        }
    }
}

/// Something that happened to the node.
#[derive(Debug)]
pub enum Input<P> {
    /// A connection to `P` is open (any connection; the core decides whether it is a
    /// neighbour).
    Connected(P),
    /// Every connection to `P` closed.
    Disconnected(P),
    /// A decoded message from `P`, with its encoded size.
    Message(P, Message, usize),
    /// A message from `P` that did not decode (counted).
    Malformed(P),
    /// Publish our own item: the core validates and stores it, then pushes it.
    Publish(Vec<u8>),
    /// Time passed: run due timers.
    Tick,
}

/// Something the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `Message` to `P`.
    Send(P, Message),
    /// Open a connection to member `P`.
    Connect(P),
    /// A new item was stored.
    Delivered(ItemKey),
}

/// Counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// New items stored (from anyone).
    pub delivered: u64,
    /// Pushed items we already had (payload redundancy).
    pub duplicates: u64,
    /// Items refused, per reason.
    pub rejected: BTreeMap<Reject, u64>,
    /// Messages dropped because the sender is not a member.
    pub non_member: u64,
    /// Messages dropped by the per-peer rate limit.
    pub rate_limited: u64,
    /// Messages that failed to decode.
    pub malformed: u64,
    /// Grafts sent (missing items pulled).
    pub grafts: u64,
    /// Anti-entropy rounds started.
    pub sync_rounds: u64,
    /// Items learned through anti-entropy.
    pub sync_items: u64,
}

struct Neighbor {
    eager: bool,
    tokens: f64,
    last: Millis,
}

struct Missing<P> {
    meta: Meta,
    announcers: VecDeque<(P, u16)>,
    deadline: Millis,
}

/// The gossip state machine of one node.
pub struct Gossip<P> {
    cfg: Config,
    me: P,
    connected: BTreeSet<P>,
    neighbors: BTreeMap<P, Neighbor>,
    connecting: BTreeMap<P, Millis>,
    missing: BTreeMap<ItemKey, Missing<P>>,
    timers: BTreeSet<(Millis, ItemKey)>,
    lazy: BTreeMap<P, Vec<Announce>>,
    recent: BTreeMap<ItemKey, (Meta, u16, Millis, Option<P>)>,
    next_flush: Option<Millis>,
    next_sync: Millis,
    next_rotate: Millis,
    next_sweep: Millis,
    out: VecDeque<Output<P>>,
    stats: Stats,
    /// Items this node published (its record, expulsions it issued).
    own: BTreeSet<ItemKey>,
    /// The rate-limit bucket shared by peers that are not neighbours.
    others: Neighbor,
}

impl<P: Ord + Clone + std::fmt::Debug> Gossip<P> {
    /// A node `me` starting at `now`.
    pub fn new(me: P, cfg: Config, now: Millis) -> Self {
        let burst = cfg.rate_burst as f64;
        Gossip {
            next_sync: now + cfg.sync_interval,
            next_rotate: now + cfg.rotate_interval,
            next_sweep: now + 1000,
            cfg,
            me,
            connected: BTreeSet::new(),
            neighbors: BTreeMap::new(),
            connecting: BTreeMap::new(),
            missing: BTreeMap::new(),
            timers: BTreeSet::new(),
            lazy: BTreeMap::new(),
            recent: BTreeMap::new(),
            next_flush: None,
            out: VecDeque::new(),
            stats: Stats::default(),
            own: BTreeSet::new(),
            others: Neighbor {
                eager: false,
                tokens: burst,
                last: now,
            },
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current neighbours and whether each link is eager.
    pub fn neighbors(&self) -> impl Iterator<Item = (&P, bool)> {
        self.neighbors.iter().map(|(p, n)| (p, n.eager))
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// When [`Input::Tick`] should next be given (the earliest due timer).
    pub fn next_deadline(&self) -> Millis {
        let mut t = self.next_sync.min(self.next_rotate).min(self.next_sweep);
        if let Some(f) = self.next_flush {
            t = t.min(f);
        }
        if let Some((d, _)) = self.timers.first() {
            t = t.min(*d);
        }
        t
    }

    /// Handles one input.
    pub fn handle<S: Store<P>, R: RngCore>(
        &mut self,
        store: &mut S,
        rng: &mut R,
        input: Input<P>,
        now: Millis,
    ) {
        match input {
            Input::Connected(p) => {
                if p == self.me {
                    return;
                }
                self.connecting.remove(&p);
                self.connected.insert(p.clone());
                // Introduce ourselves: a peer that does not know us yet (we just joined, or it
                // restarted from an old view) accepts our record from us and so learns that we
                // are a member; one that knows it drops a duplicate.
                for key in &self.own {
                    if let Some(item) = store.get(key) {
                        // As `Items`, not `Push`: a duplicate must not prune the link.
                        self.out.push_back(Output::Send(
                            p.clone(),
                            Message::Items(vec![ByteBuf::from(item)]),
                        ));
                    }
                }
                self.try_add_neighbor(store, p, now);
            }
            Input::Disconnected(p) => {
                self.connected.remove(&p);
                self.neighbors.remove(&p);
                self.lazy.remove(&p);
                for m in self.missing.values_mut() {
                    m.announcers.retain(|(a, _)| a != &p);
                }
                self.fill_neighbors(store, rng, now);
                self.top_up_eager(rng);
            }
            Input::Malformed(_) => self.stats.malformed += 1,
            Input::Message(p, msg, size) => self.on_message(store, rng, p, msg, size, now),
            Input::Publish(item) => {
                self.promote(store, now);
                let Ok((key, meta)) = store.identify(&item) else {
                    self.stats
                        .rejected
                        .entry(Reject::Malformed)
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    return;
                };
                match store.insert(&item, now) {
                    Ok(Inserted::New) => {
                        self.own.insert(key);
                        self.stats.delivered += 1;
                        self.out.push_back(Output::Delivered(key));
                        self.forward(None, key, meta, item, 0, now);
                    }
                    Ok(Inserted::Duplicate) => {}
                    Err(r) => self.reject(r),
                }
            }
            Input::Tick => self.tick(store, rng, now),
        }
    }

    fn reject(&mut self, r: Reject) {
        *self.stats.rejected.entry(r).or_insert(0) += 1;
    }

    fn try_add_neighbor<S: Store<P>>(&mut self, store: &S, p: P, now: Millis) {
        if self.neighbors.contains_key(&p)
            || self.neighbors.len() >= self.cfg.max_degree
            || !store.is_member(&p)
        {
            return;
        }
        self.neighbors.insert(
            p.clone(),
            Neighbor {
                eager: true,
                tokens: self.cfg.rate_burst as f64,
                last: now,
            },
        );
        // A new link: compare sets right away (late joiner, restart, healed partition).
        self.stats.sync_rounds += 1;
        let root = Digest::root(&store.buckets());
        self.out.push_back(Output::Send(p, Message::SyncRoot(root)));
    }

    /// Connected peers that are not neighbours.
    fn spare_connected(&self) -> Vec<P> {
        self.connected
            .iter()
            .filter(|p| !self.neighbors.contains_key(*p))
            .cloned()
            .collect()
    }

    /// Connected peers that became members since they connected join the neighbours.
    fn promote<S: Store<P>>(&mut self, store: &S, now: Millis) {
        if self.neighbors.len() >= self.cfg.max_degree
            || self.connected.len() == self.neighbors.len()
        {
            return;
        }
        for p in self.spare_connected() {
            self.try_add_neighbor(store, p, now);
        }
    }

    fn fill_neighbors<S: Store<P>, R: RngCore>(&mut self, store: &S, rng: &mut R, now: Millis) {
        // Connected members first (no dial needed).
        for p in self.spare_connected() {
            if self.neighbors.len() >= self.cfg.target_degree {
                break;
            }
            self.try_add_neighbor(store, p, now);
        }
        self.connecting
            .retain(|_, since| now.saturating_sub(*since) < self.cfg.connect_timeout);
        let want = self
            .cfg
            .target_degree
            .saturating_sub(self.neighbors.len() + self.connecting.len());
        if want == 0 {
            return;
        }
        let skip =
            |p: &P| *p == self.me || self.connected.contains(p) || self.connecting.contains_key(p);
        for p in store.sample_members(rng, want, &skip) {
            self.connecting.insert(p.clone(), now);
            self.out.push_back(Output::Connect(p));
        }
    }

    fn admit(&mut self, p: &P, size: usize, now: Millis) -> bool {
        // Neighbours have a bucket each; everyone else (non-members, connected members beyond
        // the degree) shares one.
        let n = match self.neighbors.get_mut(p) {
            Some(n) => n,
            None => &mut self.others,
        };
        let elapsed = now.saturating_sub(n.last) as f64 / 1000.0;
        n.last = now;
        n.tokens =
            (n.tokens + elapsed * self.cfg.rate_per_sec as f64).min(self.cfg.rate_burst as f64);
        if n.tokens < size as f64 {
            return false;
        }
        n.tokens -= size as f64;
        true
    }

    fn on_message<S: Store<P>, R: RngCore>(
        &mut self,
        store: &mut S,
        rng: &mut R,
        p: P,
        msg: Message,
        size: usize,
        now: Millis,
    ) {
        if !self.admit(&p, size, now) {
            self.stats.rate_limited += 1;
            return;
        }
        if !store.is_member(&p) {
            // A new member's first record arrives before anyone knows it is a member: a push
            // from a non-member is validated like any other (a valid item is valid whoever
            // relays it, and the rate limit bounds the work), and counted unless the sender
            // turned out to be a member. Everything else from non-members is dropped.
            let items = match msg {
                Message::Push { item, .. } => vec![item],
                Message::Items(items) => items,
                _ => Vec::new(),
            };
            for item in items {
                self.receive(store, Some(&p), item.into_vec(), 0, now);
            }
            if store.is_member(&p) {
                self.promote(store, now);
                return;
            }
            self.stats.non_member += 1;
            return;
        }
        if self.connected.contains(&p) && !self.neighbors.contains_key(&p) {
            // A member we had not counted yet (its record arrived after it connected).
            self.try_add_neighbor(store, p.clone(), now);
        }
        match msg {
            Message::Push { item, round } => self.on_push(store, p, item.into_vec(), round, now),
            Message::IHave(list) => {
                for a in list {
                    self.on_ihave(store, &p, a, now);
                }
            }
            Message::Graft(keys) => {
                self.set_eager(&p, true);
                for key in keys {
                    if let Some(item) = store.get(&key) {
                        let round = self.recent.get(&key).map_or(0, |r| r.1);
                        self.out.push_back(Output::Send(
                            p.clone(),
                            Message::Push {
                                item: ByteBuf::from(item),
                                round: round.saturating_add(1),
                            },
                        ));
                    }
                }
            }
            Message::Prune => {
                self.set_eager(&p, false);
                self.top_up_eager(rng);
            }
            Message::SyncRoot(root) => {
                let buckets = store.buckets();
                if Digest::root(&buckets) != root {
                    self.out
                        .push_back(Output::Send(p, Message::SyncBuckets(buckets)));
                }
            }
            Message::SyncBuckets(theirs) => {
                let mine = store.buckets();
                let differing: Vec<usize> =
                    (0..BUCKETS).filter(|&b| mine[b] != theirs[b]).collect();
                let mut buckets = Vec::new();
                let mut entries = Vec::new();
                for b in differing {
                    let e = store.bucket_entries(b);
                    if !entries.is_empty() && entries.len() + e.len() > MAX_ENTRIES {
                        self.send_entries(
                            &p,
                            std::mem::take(&mut buckets),
                            std::mem::take(&mut entries),
                        );
                    }
                    if e.len() > MAX_ENTRIES {
                        continue; // cannot be listed in one message; never at friendnet sizes
                    }
                    buckets.push(b as u8);
                    entries.extend(e);
                }
                if !buckets.is_empty() {
                    self.send_entries(&p, buckets, entries);
                }
            }
            Message::SyncEntries { buckets, entries } => {
                let theirs: BTreeMap<ItemKey, Meta> = entries
                    .into_iter()
                    .filter(|(k, _)| buckets.contains(&(k.bucket() as u8)))
                    .collect();
                let mut want = Vec::new();
                let mut give = Vec::new();
                for b in &buckets {
                    for (k, m) in store.bucket_entries(usize::from(*b)) {
                        match theirs.get(&k) {
                            Some(t) if *t >= m => {}
                            _ => give.push(k),
                        }
                    }
                }
                for (k, t) in &theirs {
                    if store.meta(k).is_none_or(|m| m < *t) {
                        want.push(*k);
                    }
                }
                self.send_items(store, &p, &give);
                for chunk in want.chunks(MAX_KEYS) {
                    self.out
                        .push_back(Output::Send(p.clone(), Message::Want(chunk.to_vec())));
                }
            }
            Message::Want(keys) => self.send_items(store, &p, &keys),
            Message::Items(items) => {
                for item in items {
                    if self.receive(store, Some(&p), item.into_vec(), 0, now) {
                        self.stats.sync_items += 1;
                    }
                }
            }
        }
        self.promote(store, now);
    }

    fn send_entries(&mut self, p: &P, buckets: Vec<u8>, entries: Vec<(ItemKey, Meta)>) {
        self.out.push_back(Output::Send(
            p.clone(),
            Message::SyncEntries { buckets, entries },
        ));
    }

    fn send_items<S: Store<P>>(&mut self, store: &S, p: &P, keys: &[ItemKey]) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for k in keys {
            let Some(item) = store.get(k) else { continue };
            if batch.len() == MAX_ITEMS || bytes + item.len() > crate::message::MAX_MESSAGE / 2 {
                self.out.push_back(Output::Send(
                    p.clone(),
                    Message::Items(std::mem::take(&mut batch)),
                ));
                bytes = 0;
            }
            bytes += item.len();
            batch.push(ByteBuf::from(item));
        }
        if !batch.is_empty() {
            self.out
                .push_back(Output::Send(p.clone(), Message::Items(batch)));
        }
    }

    fn set_eager(&mut self, p: &P, eager: bool) {
        if let Some(n) = self.neighbors.get_mut(p) {
            n.eager = eager;
        }
    }

    /// Validates and stores an item from `from`; forwards it when new. Returns whether new.
    fn receive<S: Store<P>>(
        &mut self,
        store: &mut S,
        from: Option<&P>,
        item: Vec<u8>,
        round: u16,
        now: Millis,
    ) -> bool {
        let (key, meta) = match store.identify(&item) {
            Ok(x) => x,
            Err(r) => {
                self.reject(r);
                return false;
            }
        };
        match store.meta(&key) {
            Some(held) if held == meta => {
                self.stats.duplicates += 1;
                return false;
            }
            Some(held) if held > meta => {
                self.reject(Reject::Replayed);
                return false;
            }
            _ => {}
        }
        match store.insert(&item, now) {
            Ok(Inserted::New) => {
                self.stats.delivered += 1;
                self.out.push_back(Output::Delivered(key));
                if let Some(m) = self.missing.get(&key)
                    && m.meta <= meta
                {
                    let d = m.deadline;
                    self.missing.remove(&key);
                    self.timers.remove(&(d, key));
                }
                self.forward(from, key, meta, item, round, now);
                true
            }
            Ok(Inserted::Duplicate) => {
                self.stats.duplicates += 1;
                false
            }
            Err(r) => {
                self.reject(r);
                false
            }
        }
    }

    fn eager_count(&self) -> usize {
        self.neighbors.values().filter(|n| n.eager).count()
    }

    /// Promotes random lazy neighbours until `min_eager` links are eager.
    fn top_up_eager<R: RngCore>(&mut self, rng: &mut R) {
        let have = self.eager_count();
        if have >= self.cfg.min_eager {
            return;
        }
        let lazy: Vec<P> = self
            .neighbors
            .iter()
            .filter(|(_, n)| !n.eager)
            .map(|(p, _)| p.clone())
            .collect();
        for p in lazy.choose_multiple(rng, self.cfg.min_eager - have) {
            self.set_eager(p, true);
            self.out
                .push_back(Output::Send(p.clone(), Message::Graft(Vec::new())));
        }
    }

    fn on_push<S: Store<P>>(
        &mut self,
        store: &mut S,
        p: P,
        item: Vec<u8>,
        round: u16,
        now: Millis,
    ) {
        let before = self.stats.duplicates;
        let new = self.receive(store, Some(&p), item, round, now);
        if !self.neighbors.contains_key(&p) {
            // It pushes to us eagerly but we have no room for it (or dropped it): links must be
            // symmetric or the tree breaks in one direction, so make it announce instead.
            self.out.push_back(Output::Send(p, Message::Prune));
            return;
        }
        if !new
            && self.stats.duplicates > before
            && self.neighbors.get(&p).is_some_and(|n| n.eager)
            && self.eager_count() > self.cfg.min_eager
        {
            // Plumtree: a second copy means this link is redundant (while enough remain).
            self.set_eager(&p, false);
            self.out.push_back(Output::Send(p, Message::Prune));
        } else if !new && self.neighbors.get(&p).is_some_and(|n| !n.eager) {
            // A lazy neighbour that still pushes (our prune was lost): prune again.
            self.out.push_back(Output::Send(p, Message::Prune));
        }
    }

    fn forward(
        &mut self,
        from: Option<&P>,
        key: ItemKey,
        meta: Meta,
        item: Vec<u8>,
        round: u16,
        now: Millis,
    ) {
        self.recent.insert(key, (meta, round, now, from.cloned()));
        let next = round.saturating_add(1);
        let mut announced = false;
        for (q, n) in &self.neighbors {
            if Some(q) == from {
                continue;
            }
            if n.eager {
                self.out.push_back(Output::Send(
                    q.clone(),
                    Message::Push {
                        item: ByteBuf::from(item.clone()),
                        round: next,
                    },
                ));
            } else {
                let queue = self.lazy.entry(q.clone()).or_default();
                if queue.len() < MAX_ANNOUNCES {
                    queue.push(Announce {
                        key,
                        meta,
                        round: next,
                    });
                    announced = true;
                }
            }
        }
        if announced && self.next_flush.is_none() {
            self.next_flush = Some(now + self.cfg.lazy_flush);
        }
    }

    fn on_ihave<S: Store<P>>(&mut self, store: &S, p: &P, a: Announce, now: Millis) {
        if store.meta(&a.key).is_some_and(|m| m >= a.meta) {
            // Tree optimization: a much shorter lazy path replaces the eager one.
            if self.cfg.optimize_threshold > 0
                && let Some((m, r, _, from)) = self.recent.get(&a.key)
                && *m == a.meta
                && a.round.saturating_add(self.cfg.optimize_threshold) < *r
                && self.neighbors.get(p).is_some_and(|n| !n.eager)
            {
                let from = from.clone();
                // Remember the better path so other announcers do not trigger it again.
                self.recent
                    .insert(a.key, (a.meta, a.round, now, Some(p.clone())));
                self.set_eager(p, true);
                self.out
                    .push_back(Output::Send(p.clone(), Message::Graft(Vec::new())));
                if let Some(f) = from {
                    self.set_eager(&f, false);
                    self.out.push_back(Output::Send(f, Message::Prune));
                }
            }
            return;
        }
        if let Some(m) = self.missing.get_mut(&a.key) {
            if a.meta > m.meta {
                m.meta = a.meta;
            }
            if m.announcers.len() < 16 {
                m.announcers.push_back((p.clone(), a.round));
            }
            return;
        }
        if self.missing.len() >= self.cfg.max_missing {
            return;
        }
        let deadline = now + self.cfg.ihave_timeout;
        self.missing.insert(
            a.key,
            Missing {
                meta: a.meta,
                announcers: VecDeque::from([(p.clone(), a.round)]),
                deadline,
            },
        );
        self.timers.insert((deadline, a.key));
    }

    fn tick<S: Store<P>, R: RngCore>(&mut self, store: &mut S, rng: &mut R, now: Millis) {
        // Missing items whose pushed copy did not come: graft.
        while let Some(&(d, key)) = self.timers.first() {
            if d > now {
                break;
            }
            self.timers.remove(&(d, key));
            let Some(m) = self.missing.get_mut(&key) else {
                continue;
            };
            if store.meta(&key).is_some_and(|h| h >= m.meta) {
                self.missing.remove(&key);
                continue;
            }
            let Some((q, _)) = m.announcers.pop_front() else {
                self.missing.remove(&key);
                continue;
            };
            let deadline = now + self.cfg.graft_timeout;
            m.deadline = deadline;
            self.timers.insert((deadline, key));
            self.stats.grafts += 1;
            self.set_eager(&q, true);
            self.out
                .push_back(Output::Send(q, Message::Graft(vec![key])));
        }
        if self.next_flush.is_some_and(|f| f <= now) {
            self.next_flush = None;
            for (q, list) in std::mem::take(&mut self.lazy) {
                if !list.is_empty() {
                    self.out.push_back(Output::Send(q, Message::IHave(list)));
                }
            }
        }
        if self.next_sync <= now {
            self.next_sync = now + self.cfg.sync_interval;
            let peers: Vec<P> = self.neighbors.keys().cloned().collect();
            if let Some(p) = peers.choose(rng) {
                self.stats.sync_rounds += 1;
                let root = Digest::root(&store.buckets());
                self.out
                    .push_back(Output::Send(p.clone(), Message::SyncRoot(root)));
            }
        }
        if self.next_rotate <= now {
            // Jitter keeps nodes from rotating in lockstep.
            self.next_rotate =
                now + self.cfg.rotate_interval / 2 + rng.gen_range(0..=self.cfg.rotate_interval);
            let skip = |p: &P| *p == self.me || self.connected.contains(p);
            if let Some(p) = store.sample_members(rng, 1, &skip).pop() {
                if self.neighbors.len() >= self.cfg.max_degree {
                    // Make room: the newcomer replaces a random lazy neighbour. Never an eager
                    // one: the tree would break on its side (it keeps pushing to us, we no
                    // longer forward to it).
                    let peers: Vec<P> = self
                        .neighbors
                        .iter()
                        .filter(|(_, n)| !n.eager)
                        .map(|(p, _)| p.clone())
                        .collect();
                    if let Some(old) = peers.choose(rng) {
                        self.neighbors.remove(old);
                        self.lazy.remove(old);
                        self.out
                            .push_back(Output::Send(old.clone(), Message::Prune));
                    }
                }
                self.connecting.insert(p.clone(), now);
                self.out.push_back(Output::Connect(p));
            }
        }
        if self.next_sweep <= now {
            self.next_sweep = now + 1000;
            let ttl = self.cfg.recent_ttl;
            self.recent
                .retain(|_, (_, _, at, _)| now.saturating_sub(*at) < ttl);
            // Neighbours whose membership ended (expelled, expired) are dropped.
            let gone: Vec<P> = self
                .neighbors
                .keys()
                .filter(|p| !store.is_member(p))
                .cloned()
                .collect();
            for p in gone {
                self.neighbors.remove(&p);
                self.lazy.remove(&p);
            }
            if self.neighbors.len() < self.cfg.target_degree {
                self.fill_neighbors(store, rng, now);
            }
            self.top_up_eager(rng);
        }
    }
}

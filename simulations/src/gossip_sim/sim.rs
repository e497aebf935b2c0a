//! The discrete-event loop: nodes, links, the event queue and the measurements.
//!
//! See the [module docs](super) for the model.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kith_gossip::{Announce, Digest, Gossip, Input, ItemKey, Message, Meta, Output, Reject, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use super::{
    report::{Report, Totals},
    scenario::Scenario,
    store::{BASE_VERSION, Base, FORGED_VERSION, SimStore, build_item, forge_item, key_of},
};

/// Ms since the start of the simulation.
type Time = u64;

const NEVER: u32 = u32::MAX;

enum Payload {
    Connected,
    Msg(Message, usize),
}

enum Event {
    /// Run the node's due timers.
    Tick(u32),
    /// Something arrives over the link `gen` from `from` at `to`.
    Deliver {
        from: u32,
        to: u32,
        link: u64,
        payload: Payload,
    },
    /// `from`'s connection attempt reaches `to`.
    Dial { from: u32, to: u32 },
    /// A measured (or warm-up) record is published by a random node.
    Publish,
    /// Node re-publishes its record.
    Refresh(u32),
    /// The churn process takes a random node offline.
    Churn,
    /// A node comes back.
    Online(u32),
    /// The warm-up ends: stall nodes, start Sybils, churn and forgers.
    WarmupEnd,
    /// A Sybil dials members.
    SybilStart(u32),
    /// A Sybil sends junk to every member it is connected to.
    SybilSend(u32),
    /// A member pushes a forged record.
    Forge,
}

impl Event {
    fn tag(&self) -> u8 {
        match self {
            Event::Tick(_) => 0,
            Event::Deliver { .. } => 1,
            Event::Dial { .. } => 2,
            Event::Publish => 3,
            Event::Refresh(_) => 4,
            Event::Churn => 5,
            Event::Online(_) => 6,
            Event::WarmupEnd => 7,
            Event::SybilStart(_) => 8,
            Event::SybilSend(_) => 9,
            Event::Forge => 10,
        }
    }
}

struct Node {
    core: Gossip<u32>,
    store: SimStore,
    online: bool,
    online_since: Time,
    stalled: bool,
    /// Time of the scheduled tick ([`Time::MAX`]: none).
    tick_at: Time,
}

/// One end of a link: the link's generation and the FIFO horizon towards the peer.
struct End {
    link: u64,
    fifo: Time,
}

struct Measured {
    version: u64,
    t0: Time,
    origin: u32,
    /// Latency per node in ms ([`NEVER`]: not delivered).
    delivered: Vec<u32>,
}

/// A running simulation of one scenario with one seed.
pub struct Sim {
    sc: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: BTreeMap<(Time, u64), Event>,
    members: u32,
    nodes: Vec<Node>,
    /// Per peer (members then Sybils): its open links.
    links: Vec<BTreeMap<u32, End>>,
    next_link: u64,
    versions: Vec<u64>,
    trace: Sha256,
    events: u64,
    truncated: bool,
    measure_from: Time,
    window_end: Time,
    end: Time,
    records: Vec<Measured>,
    by_key: BTreeMap<ItemKey, Vec<usize>>,
    origins: BTreeSet<u32>,
    totals: Totals,
    /// Core counters summed over members at the end of the warm-up.
    at_warmup: Option<kith_gossip::Stats>,
    watch: Option<u32>,
}

/// A one-line summary of a message for [`Sim::watch`].
fn brief(m: &Message) -> String {
    match m {
        Message::Push { item, round } => format!("push {}B r{round}", item.len()),
        Message::IHave(a) => format!(
            "ihave {:?}",
            a.iter()
                .map(|a| (a.meta.version, a.round))
                .collect::<Vec<_>>()
        ),
        Message::Graft(k) => format!("graft {}", k.len()),
        m => m.name().to_string(),
    }
}

impl Sim {
    /// Builds the simulation of `sc` with `seed` (nothing runs yet).
    pub fn new(sc: &Scenario, seed: u64) -> Sim {
        let base = Arc::new(Base::new(sc.nodes, sc.item_size));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cfg = sc.core.config();
        let mut sim = Sim {
            sc: sc.clone(),
            seed,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            members: sc.nodes,
            nodes: Vec::with_capacity(sc.nodes as usize),
            links: (0..sc.nodes + sc.sybils).map(|_| BTreeMap::new()).collect(),
            next_link: 0,
            versions: vec![BASE_VERSION; sc.nodes as usize],
            trace: Sha256::new(),
            events: 0,
            truncated: false,
            measure_from: sc.warmup_ms,
            window_end: sc.warmup_ms + sc.duration_ms,
            end: sc.warmup_ms + sc.duration_ms + sc.drain_ms,
            records: Vec::new(),
            by_key: BTreeMap::new(),
            origins: BTreeSet::new(),
            totals: Totals::default(),
            at_warmup: None,
            watch: None,
            rng: ChaCha8Rng::seed_from_u64(0),
        };
        // Nodes start at random times within the first second, so timers do not run in lockstep.
        for n in 0..sc.nodes {
            let start = rng.gen_range(0..1000);
            sim.nodes.push(Node {
                core: Gossip::new(n, cfg.clone(), start),
                store: SimStore::new(base.clone(), n),
                online: true,
                online_since: 0,
                stalled: false,
                tick_at: start,
            });
            sim.schedule(start, Event::Tick(n));
        }
        // Warm-up records in the second half of the warm-up, measured ones over the window.
        for _ in 0..sc.warmup_records {
            let t = rng.gen_range(sc.warmup_ms / 2..sc.warmup_ms.max(1));
            sim.schedule(t, Event::Publish);
        }
        for _ in 0..sc.records {
            let t = sim.measure_from + rng.gen_range(0..sc.duration_ms.max(1));
            sim.schedule(t, Event::Publish);
        }
        if sc.refresh_interval_ms > 0 {
            for n in 0..sc.nodes {
                let t = rng.gen_range(0..sc.refresh_interval_ms);
                if t < sim.window_end {
                    sim.schedule(t, Event::Refresh(n));
                }
            }
        }
        sim.schedule(sc.warmup_ms, Event::WarmupEnd);
        sim.rng = rng;
        sim
    }

    /// Prints every input of node `n` and every message to or from it on stderr (debugging).
    pub fn watch(mut self, n: u32) -> Sim {
        self.watch = Some(n);
        self
    }

    fn schedule(&mut self, at: Time, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), e);
    }

    fn latency(&mut self) -> Time {
        let [lo, hi] = self.sc.latency_ms;
        self.rng.gen_range(lo..=hi)
    }

    fn is_sybil(&self, p: u32) -> bool {
        p >= self.members
    }

    fn active(&self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.online && !node.stalled
    }

    /// Runs to the end (or the event bound) and reports.
    pub fn run(mut self) -> Report {
        while let Some(((t, _), e)) = self.queue.pop_first() {
            if t > self.end {
                break;
            }
            if self.events >= self.sc.max_events {
                self.truncated = true;
                break;
            }
            self.events += 1;
            self.now = t;
            self.trace.update(t.to_be_bytes());
            self.trace.update([e.tag()]);
            self.step(e);
        }
        self.now = self.end;
        self.report()
    }

    fn step(&mut self, e: Event) {
        match e {
            Event::Tick(n) => {
                let node = &self.nodes[n as usize];
                if node.tick_at != self.now || !node.online || node.stalled {
                    return; // superseded, or the node is not running
                }
                self.nodes[n as usize].tick_at = Time::MAX;
                self.trace.update(n.to_be_bytes());
                self.input(n, Input::Tick);
            }
            Event::Deliver {
                from,
                to,
                link,
                payload,
            } => self.deliver(from, to, link, payload),
            Event::Dial { from, to } => self.dial(from, to),
            Event::Publish => self.publish(),
            Event::Refresh(n) => {
                if self.sc.refresh_interval_ms > 0 {
                    let next = self.now + self.sc.refresh_interval_ms;
                    if next < self.window_end {
                        self.schedule(next, Event::Refresh(n));
                    }
                }
                if self.active(n) {
                    self.publish_from(n);
                }
            }
            Event::Churn => self.churn(),
            Event::Online(n) => {
                let node = &mut self.nodes[n as usize];
                node.online = true;
                node.online_since = self.now;
                self.trace.update(n.to_be_bytes());
                self.input(n, Input::Tick);
            }
            Event::WarmupEnd => self.warmup_end(),
            Event::SybilStart(s) => {
                for _ in 0..self.sc.sybil_links {
                    let m = self.rng.gen_range(0..self.members);
                    let lat = self.latency();
                    self.schedule(self.now + lat, Event::Dial { from: s, to: m });
                }
                let first = self.rng.gen_range(0..self.sc.sybil_interval_ms.max(1));
                self.schedule(self.now + first, Event::SybilSend(s));
            }
            Event::SybilSend(s) => {
                self.sybil_send(s);
                if self.now + self.sc.sybil_interval_ms < self.window_end {
                    self.schedule(self.now + self.sc.sybil_interval_ms, Event::SybilSend(s));
                }
            }
            Event::Forge => {
                let m = self.rng.gen_range(0..self.members);
                if self.active(m) {
                    let subject = self.rng.gen_range(0..self.members);
                    let nonce = self.totals.forged_sent;
                    let item = forge_item(subject, nonce, self.sc.item_size);
                    let peers: Vec<u32> = self.links[m as usize].keys().copied().collect();
                    for p in peers {
                        self.totals.forged_sent += 1;
                        let msg = Message::Push {
                            item: ByteBuf::from(item.clone()),
                            round: 1,
                        };
                        self.send(m, p, msg);
                    }
                }
            }
        }
    }

    /// Gives `input` to node `n` and carries out its outputs.
    fn input(&mut self, n: u32, input: Input<u32>) {
        if self.watch == Some(n) {
            match &input {
                Input::Message(p, m, _) => eprintln!("{} {n} <- {p} {}", self.now, brief(m)),
                i => eprintln!("{} {n} {:?}", self.now, i),
            }
        }
        let node = &mut self.nodes[n as usize];
        node.core
            .handle(&mut node.store, &mut self.rng, input, self.now);
        let mut outputs = Vec::new();
        while let Some(o) = node.core.poll() {
            outputs.push(o);
        }
        let deadline = node.core.next_deadline().max(self.now + 1);
        for o in outputs {
            match o {
                Output::Send(p, msg) => {
                    if self.watch == Some(n) || self.watch == Some(p) {
                        eprintln!("{} {n} -> {p} {}", self.now, brief(&msg));
                    }
                    self.send(n, p, msg)
                }
                Output::Connect(p) => {
                    self.trace.update([b'c']);
                    self.trace.update(p.to_be_bytes());
                    let lat = self.latency();
                    self.schedule(self.now + lat, Event::Dial { from: n, to: p });
                }
                Output::Delivered(key) => self.delivered(n, key),
            }
        }
        let node = &mut self.nodes[n as usize];
        if deadline < node.tick_at {
            node.tick_at = deadline;
            self.schedule(deadline, Event::Tick(n));
        }
    }

    /// Gives `input` to a node that is going offline: its outputs are discarded.
    fn input_discarding(&mut self, n: u32, input: Input<u32>) {
        let node = &mut self.nodes[n as usize];
        node.core
            .handle(&mut node.store, &mut self.rng, input, self.now);
        while node.core.poll().is_some() {}
    }

    fn send(&mut self, from: u32, to: u32, msg: Message) {
        let bytes = msg.encode();
        let size = bytes.len();
        self.trace.update(b"s");
        self.trace.update(to.to_be_bytes());
        self.trace.update(&bytes);
        if !self.is_sybil(from) {
            self.totals.bytes_total += size as u64;
            self.totals.messages += 1;
            if self.now >= self.measure_from {
                self.totals.bytes_window += size as u64;
                *self.totals.bytes_by_kind.entry(msg.name()).or_insert(0) += size as u64;
            }
        }
        if !self.links[from as usize].contains_key(&to) {
            self.totals.no_link += 1;
            return;
        }
        if self.rng.gen_bool(self.sc.loss) {
            self.totals.lost += 1;
            return;
        }
        self.transmit(from, to, Payload::Msg(msg, size));
    }

    /// Schedules `payload` over the open link `from -> to`, after the previous one (streams are
    /// ordered).
    fn transmit(&mut self, from: u32, to: u32, payload: Payload) {
        let lat = self.latency();
        let Some(end) = self.links[from as usize].get_mut(&to) else {
            return;
        };
        let at = (self.now + lat).max(end.fifo);
        end.fifo = at;
        let link = end.link;
        self.schedule(
            at,
            Event::Deliver {
                from,
                to,
                link,
                payload,
            },
        );
    }

    fn deliver(&mut self, from: u32, to: u32, link: u64, payload: Payload) {
        self.trace.update(from.to_be_bytes());
        self.trace.update(to.to_be_bytes());
        if self.links[to as usize]
            .get(&from)
            .is_none_or(|e| e.link != link)
        {
            self.totals.cut += 1; // the connection closed while this was in flight
            return;
        }
        if self.is_sybil(to) {
            return;
        }
        if self.nodes[to as usize].stalled {
            self.totals.swallowed += 1;
            return;
        }
        match payload {
            Payload::Connected => self.input(to, Input::Connected(from)),
            Payload::Msg(msg, size) => {
                if self.is_sybil(from) {
                    self.totals.sybil_received += 1;
                }
                self.input(to, Input::Message(from, msg, size));
            }
        }
    }

    fn dial(&mut self, from: u32, to: u32) {
        self.trace.update(from.to_be_bytes());
        self.trace.update(to.to_be_bytes());
        let up = |s: &Sim, p: u32| s.is_sybil(p) || s.active(p);
        if !up(self, from) || !up(self, to) {
            return; // the core's connect timeout handles it
        }
        if !self.links[to as usize].contains_key(&from) {
            self.next_link += 1;
            let link = self.next_link;
            self.links[to as usize].insert(
                from,
                End {
                    link,
                    fifo: self.now,
                },
            );
            self.links[from as usize].insert(
                to,
                End {
                    link,
                    fifo: self.now,
                },
            );
            if !self.is_sybil(to) {
                self.input(to, Input::Connected(from));
            }
        }
        self.transmit(to, from, Payload::Connected);
    }

    fn publish(&mut self) {
        // A random running node, preferably one that has not published a measured record yet
        // (two versions of one record in flight would hide the older one's deliveries).
        for attempt in 0..1000 {
            let n = self.rng.gen_range(0..self.members);
            if self.active(n) && (attempt >= 500 || !self.origins.contains(&n)) {
                self.origins.insert(n);
                self.publish_from(n);
                return;
            }
        }
    }

    fn publish_from(&mut self, n: u32) {
        self.versions[n as usize] += 1;
        let version = self.versions[n as usize];
        let item = build_item(n, version, self.sc.item_size);
        let key = key_of(n);
        if self.now >= self.measure_from && self.now < self.window_end {
            let idx = self.records.len();
            self.records.push(Measured {
                version,
                t0: self.now,
                origin: n,
                delivered: vec![NEVER; self.members as usize],
            });
            self.by_key.entry(key).or_default().push(idx);
        }
        self.trace.update(n.to_be_bytes());
        self.input(n, Input::Publish(item));
    }

    fn delivered(&mut self, n: u32, key: ItemKey) {
        let Some(meta) = self.nodes[n as usize].store.meta(&key) else {
            return;
        };
        if meta.version >= FORGED_VERSION {
            self.totals.forged_delivered += 1;
        }
        let Some(idx) = self.by_key.get(&key) else {
            return;
        };
        // Learning a newer version counts as learning every older measured one.
        for &i in idx {
            let r = &mut self.records[i];
            let slot = &mut r.delivered[n as usize];
            if r.version <= meta.version && *slot == NEVER && self.now >= r.t0 {
                *slot = u32::try_from(self.now - r.t0).unwrap_or(NEVER - 1);
            }
        }
    }

    fn warmup_end(&mut self) {
        self.at_warmup = Some(self.sum_stats());
        let stall = (f64::from(self.members) * self.sc.stalled).round() as u32;
        let mut stalled = 0;
        for _ in 0..stall.saturating_mul(20) {
            if stalled == stall {
                break;
            }
            let n = self.rng.gen_range(0..self.members);
            if !self.nodes[n as usize].stalled {
                self.nodes[n as usize].stalled = true;
                stalled += 1;
            }
        }
        if self.sc.churn_per_min > 0.0 {
            let next = self.churn_gap();
            self.schedule(self.now + next, Event::Churn);
        }
        for s in 0..self.sc.sybils {
            let t = self.rng.gen_range(0..1000);
            self.schedule(self.now + t, Event::SybilStart(self.members + s));
        }
        for _ in 0..self.sc.forged {
            let t = self.rng.gen_range(0..self.sc.duration_ms.max(1));
            self.schedule(self.now + t, Event::Forge);
        }
    }

    /// Exponential gap between churn events (Poisson process).
    fn churn_gap(&mut self) -> Time {
        let per_ms = self.sc.churn_per_min * f64::from(self.members) / 60_000.0;
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        (-u.ln() / per_ms).ceil().max(1.0) as Time
    }

    fn churn(&mut self) {
        let next = self.churn_gap();
        if self.now + next < self.window_end {
            self.schedule(self.now + next, Event::Churn);
        }
        let n = self.rng.gen_range(0..self.members);
        if !self.active(n) {
            return;
        }
        self.trace.update(n.to_be_bytes());
        self.nodes[n as usize].online = false;
        self.nodes[n as usize].online_since = Time::MAX;
        let peers: Vec<u32> = std::mem::take(&mut self.links[n as usize])
            .into_keys()
            .collect();
        for p in peers {
            self.links[p as usize].remove(&n);
            self.input_discarding(n, Input::Disconnected(p));
            if !self.is_sybil(p) && self.active(p) {
                self.input(p, Input::Disconnected(n));
            }
        }
        let [lo, hi] = self.sc.offline_ms;
        let back = self.rng.gen_range(lo..=hi);
        self.schedule(self.now + back, Event::Online(n));
    }

    fn sybil_send(&mut self, s: u32) {
        let peers: Vec<u32> = self.links[s as usize].keys().copied().collect();
        for m in peers {
            let k = self.totals.sybil_sent;
            let msg = match k % 4 {
                0 => Message::Push {
                    item: ByteBuf::from(forge_item(s, k, self.sc.item_size)),
                    round: 0,
                },
                1 => Message::IHave(vec![Announce {
                    key: key_of(s),
                    meta: Meta::of(FORGED_VERSION + k, b"sybil"),
                    round: 0,
                }]),
                2 => Message::SyncRoot(Digest([k as u8; 16])),
                _ => Message::Graft(vec![key_of(m)]),
            };
            self.totals.sybil_sent += 1;
            self.send(s, m, msg);
        }
    }

    fn sum_stats(&self) -> kith_gossip::Stats {
        let mut t = kith_gossip::Stats::default();
        for n in &self.nodes {
            let s = n.core.stats();
            t.delivered += s.delivered;
            t.duplicates += s.duplicates;
            t.non_member += s.non_member;
            t.rate_limited += s.rate_limited;
            t.malformed += s.malformed;
            t.grafts += s.grafts;
            t.sync_rounds += s.sync_rounds;
            t.sync_items += s.sync_items;
            for (r, c) in &s.rejected {
                *t.rejected.entry(*r).or_insert(0) += c;
            }
        }
        t
    }

    fn report(mut self) -> Report {
        let end_stats = self.sum_stats();
        let base = self.at_warmup.take().unwrap_or_default();
        let mut latencies = Vec::new();
        let mut missed = 0u64;
        let mut eligible = 0u64;
        for r in &self.records {
            for (n, node) in self.nodes.iter().enumerate() {
                if n as u32 == r.origin || node.stalled || !node.online || node.online_since > r.t0
                {
                    continue;
                }
                eligible += 1;
                match r.delivered[n] {
                    NEVER => missed += 1,
                    l => latencies.push(u64::from(l)),
                }
            }
        }
        latencies.sort_unstable();
        let pct = |p: f64| -> Option<u64> {
            if eligible == 0 {
                return None;
            }
            let rank = ((p * eligible as f64).ceil() as usize).max(1);
            latencies.get(rank - 1).copied()
        };
        let secs_total = self.end as f64 / 1000.0;
        let secs_window = (self.end - self.measure_from) as f64 / 1000.0;
        let nodes = f64::from(self.members);
        let delivered = end_stats.delivered - base.delivered;
        let duplicates = end_stats.duplicates - base.duplicates;
        let bad_sig =
            |s: &kith_gossip::Stats| s.rejected.get(&Reject::BadSignature).copied().unwrap_or(0);
        let (eager_degree, degree, components) = self.overlay_shape();
        Report {
            eager_degree,
            degree,
            components,
            name: self.sc.name.clone(),
            seed: self.seed,
            nodes: self.members,
            records: self.records.len() as u64,
            eligible,
            missed,
            p50: pct(0.5),
            p99: pct(0.99),
            p999: pct(0.999),
            max: if missed == 0 {
                latencies.last().copied()
            } else {
                None
            },
            delivered_pct: if eligible == 0 {
                100.0
            } else {
                100.0 * (eligible - missed) as f64 / eligible as f64
            },
            redundancy: if delivered == 0 {
                0.0
            } else {
                duplicates as f64 / delivered as f64
            },
            bytes_per_node_s_total: self.totals.bytes_total as f64 / nodes / secs_total,
            bytes_per_node_s_window: self.totals.bytes_window as f64 / nodes / secs_window,
            sybil_sent: self.totals.sybil_sent,
            sybil_received: self.totals.sybil_received,
            sybil_dropped: end_stats.non_member - base.non_member,
            forged_sent: self.totals.forged_sent,
            forged_rejected: bad_sig(&end_stats) - bad_sig(&base),
            forged_delivered: self.totals.forged_delivered,
            grafts: end_stats.grafts - base.grafts,
            sync_items: end_stats.sync_items - base.sync_items,
            rate_limited: end_stats.rate_limited - base.rate_limited,
            events: self.events,
            truncated: self.truncated,
            trace: hex(&self.trace.finalize()),
            totals: self.totals,
        }
    }
}

impl Sim {
    /// Mean eager and total neighbour count of running nodes, and the number of connected
    /// components of the eager graph among them.
    fn overlay_shape(&self) -> (f64, f64, u32) {
        let n = self.nodes.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        let (mut eager, mut all, mut running) = (0u64, 0u64, 0u64);
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.online || node.stalled {
                continue;
            }
            running += 1;
            for (p, e) in node.core.neighbors() {
                all += 1;
                if e && self.active(*p) {
                    eager += 1;
                    let (a, b) = (find(&mut parent, i), find(&mut parent, *p as usize));
                    parent[a] = b;
                }
            }
        }
        let mut roots = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.online && !node.stalled {
                roots.insert(find(&mut parent, i));
            }
        }
        let r = running.max(1) as f64;
        (eager as f64 / r, all as f64 / r, roots.len() as u32)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

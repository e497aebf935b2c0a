//! The simulation: nodes, shares, placement, deletions, audits and the measurements.
//!
//! See the [module docs](super) for the model.

use std::collections::{BTreeMap, BTreeSet};

use kith_accounting::{
    Access, Outcome, Policy, Quota, Refusal, Reputation,
    audit::{self, DAY_SECS, Held},
};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};

use super::{
    report::{Detection, Report},
    scenario::{Placement, Scenario},
};

/// Seconds since the start of the window.
type Time = u64;

const HOUR: Time = 3600;
const WEEK_SECS: f64 = 7.0 * DAY_SECS as f64;
/// Bytes of an audit request (storage index, share number, block, range, nonce, framing).
const REQUEST_BYTES: u64 = 64;
/// Framing of an audit response besides the data and the hashes.
const RESPONSE_OVERHEAD: u64 = 32;
/// Files one node may have (a bound on the setup loop).
const MAX_FILES_PER_NODE: usize = 1_000_000;

/// What a node does with storage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Role {
    Honest,
    /// Offers no storage: advertises a zero grant.
    FreeNone,
    /// Advertises a normal capacity, keeps only a fraction, refuses once full.
    FreeOvercommit,
    /// Advertises a normal capacity, refuses every write.
    FreeRefuse,
    /// Accepts shares, then silently deletes `fraction` of them from `start` on.
    Deleter {
        fraction: f64,
        start: Time,
    },
}

impl Role {
    fn free_rider(self) -> bool {
        matches!(
            self,
            Role::FreeNone | Role::FreeOvercommit | Role::FreeRefuse
        )
    }
}

/// When a node is reachable.
enum Churn {
    Always,
    /// Online `on` seconds a day from `phase` on.
    Diurnal {
        phase: Time,
        on: Time,
    },
    /// Offline during these `[start, end)` spells (sorted, disjoint).
    Random(Vec<(Time, Time)>),
}

struct Node {
    role: Role,
    churn: Churn,
    /// Capacity it advertises (its record's total).
    claimed: u64,
    /// Bytes it really keeps before refusing.
    actual: u64,
    /// Its advertised per-member grant (in its record).
    grant: u64,
    /// Share bytes stored here for others (leased, deleted or not).
    used: u64,
    /// Share bytes it placed on others (consumption).
    placed: u64,
    /// Share bytes it wants to place (n/k × its file bytes).
    need: u64,
    /// Shares stored here.
    held: Vec<u32>,
    /// Deleted share bytes.
    deleted_bytes: u64,
    /// Σ over daily samples of `used` (for the mean).
    used_samples: u128,
    /// Audit bytes it answered (plus requests it received).
    audit_bytes: u64,
    /// Deleters: when some auditor first flagged it.
    detected: Option<Time>,
    /// Deleters: audits answered in the 24 h / 7 days after the first deletion.
    answered_24h: u32,
    answered_7d: u32,
}

/// What owner `u` knows about server `j` (`pairs[u][j]`).
struct Pair {
    bytes: u64,
    shares: Vec<u32>,
    rep: Reputation,
    /// Fractional audits carried to the next day.
    carry: f64,
    /// What `j` demonstrably grants `u` (set when `j` refused `u` while advertising room).
    observed: Option<u64>,
    /// `j` refused `u`: no more placements there.
    refused: bool,
    /// When `u` first found `j` suspect.
    flagged: Option<Time>,
    /// Offline outcomes recorded for `j`.
    offline: u32,
}

impl Pair {
    fn new(carry: f64) -> Pair {
        Pair {
            bytes: 0,
            shares: Vec::new(),
            rep: Reputation::default(),
            carry,
            observed: None,
            refused: false,
            flagged: None,
            offline: 0,
        }
    }
}

struct Share {
    server: u32,
    bytes: u64,
    blocks: u32,
    deleted: bool,
}

struct File {
    owner: u32,
    bytes: u64,
}

enum Event {
    Upload(u32),
    Delete(u32),
    PlanDay(u64),
    Audit {
        auditor: u32,
        peer: u32,
        share: u32,
        block: u32,
        tries: u32,
    },
}

/// Why a server refused a share.
enum Refused {
    /// The ledger's decision (over quota, no grant): the uploader's own limit there. The
    /// refusal is what the node would show; the simulator only counts it.
    #[allow(dead_code)]
    Ledger(Refusal),
    /// The server is full or refuses writes although it advertised room.
    NoRoom,
}

/// Weighted sampling with updates (a Fenwick tree over the servers' advertised free bytes).
struct Weights {
    tree: Vec<u64>,
    w: Vec<u64>,
    total: u64,
}

impl Weights {
    fn new(n: usize) -> Weights {
        Weights {
            tree: vec![0; n + 1],
            w: vec![0; n],
            total: 0,
        }
    }

    fn set(&mut self, i: usize, w: u64) {
        let old = self.w[i];
        self.w[i] = w;
        self.total = self.total - old + w;
        let mut k = i + 1;
        while k < self.tree.len() {
            self.tree[k] = self.tree[k] - old + w;
            k += k & k.wrapping_neg();
        }
    }

    /// The index whose cumulative range holds `x` (`x < total`).
    fn find(&self, mut x: u64) -> usize {
        let n = self.tree.len() - 1;
        let mut pos = 0;
        let mut step = n.next_power_of_two();
        while step > 0 {
            if pos + step <= n && self.tree[pos + step] <= x {
                pos += step;
                x -= self.tree[pos];
            }
            step /= 2;
        }
        pos
    }
}

/// ⌈log₂ x⌉ (0 for x ≤ 1).
fn log2_ceil(x: u64) -> u64 {
    if x <= 1 {
        0
    } else {
        u64::from(64 - (x - 1).leading_zeros())
    }
}

fn log_uniform<R: Rng>(rng: &mut R, r: [f64; 2]) -> f64 {
    if r[0] >= r[1] {
        return r[0];
    }
    rng.gen_range(r[0].ln()..r[1].ln()).exp()
}

/// A running simulation of one scenario with one seed.
pub struct Sim {
    sc: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    policy: Policy,
    now: Time,
    end: Time,
    seq: u64,
    queue: BTreeMap<(Time, u64), Event>,
    nodes: Vec<Node>,
    pairs: Vec<BTreeMap<u32, Pair>>,
    shares: Vec<Share>,
    files: Vec<File>,
    weights: Weights,
    debt: Weights,
    trace: Sha256,
    events: u64,
    truncated: bool,
    // Counters.
    uploads: u64,
    upload_failed: u64,
    refusals: u64,
    over_quota: u64,
    audits_sent: u64,
    audits_answered: u64,
    audits_failed: u64,
    audits_offline: u64,
    audits_skipped: u64,
    audit_bytes: u64,
    days_sampled: u64,
    stored_samples: u128,
    false_accusations: u64,
    false_offline: u64,
    rate_nominal: f64,
}

impl Sim {
    /// Builds the simulation of `sc` with `seed`: nodes, roles, churn, files, capacities.
    pub fn new(sc: &Scenario, seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_nodes = sc.nodes as usize;
        let end = sc.window_secs();
        // Roles: a random set of free riders, then of deleters.
        let mut order: Vec<u32> = (0..sc.nodes).collect();
        order.shuffle(&mut rng);
        let n_free = (sc.free_riders * f64::from(sc.nodes)).round() as usize;
        let n_del = (sc.deleters * f64::from(sc.nodes)).round() as usize;
        let n_small = (sc.small_deleters * n_del as f64).round() as usize;
        let mix_total: f64 = sc.free_rider_mix.iter().sum();
        let mut roles = vec![Role::Honest; n_nodes];
        for (i, &node) in order.iter().enumerate().take(n_free + n_del) {
            roles[node as usize] = if i < n_free {
                let x = rng.gen_range(0.0..mix_total);
                if x < sc.free_rider_mix[0] {
                    Role::FreeNone
                } else if x < sc.free_rider_mix[0] + sc.free_rider_mix[1] {
                    Role::FreeOvercommit
                } else {
                    Role::FreeRefuse
                }
            } else {
                let fraction = if i - n_free < n_small {
                    sc.small_deletion
                } else {
                    rng.gen_range(sc.big_deletion[0]..=sc.big_deletion[1])
                };
                let h = rng.gen_range(sc.deletion_start_hours[0]..=sc.deletion_start_hours[1]);
                Role::Deleter {
                    fraction,
                    start: (h * HOUR as f64) as Time,
                }
            };
        }
        // Churn, independent of the role.
        order.shuffle(&mut rng);
        let n_diurnal = (sc.diurnal * f64::from(sc.nodes)).round() as usize;
        let n_random = (sc.random_churn * f64::from(sc.nodes)).round() as usize;
        let mut churn: Vec<Churn> = (0..n_nodes).map(|_| Churn::Always).collect();
        for (i, &node) in order.iter().enumerate().take(n_diurnal + n_random) {
            churn[node as usize] = if i < n_diurnal {
                Churn::Diurnal {
                    phase: rng.gen_range(0..DAY_SECS),
                    on: (sc.diurnal_online_hours * HOUR as f64) as Time,
                }
            } else {
                let mut spells = Vec::new();
                let mut t = 0.0f64;
                while t < end as f64 && spells.len() < 100_000 {
                    let up: f64 =
                        -sc.churn_up_hours * HOUR as f64 * (1.0 - rng.gen_range(0.0..1.0f64)).ln();
                    let down = rng.gen_range(sc.churn_down_hours[0]..=sc.churn_down_hours[1])
                        * HOUR as f64;
                    let start = t + up;
                    spells.push((start as Time, (start + down) as Time));
                    t = start + down;
                }
                Churn::Random(spells)
            };
        }
        // Files and needs.
        let mut files = Vec::new();
        let mut history = Vec::new();
        let mut later = Vec::new();
        let mut need = vec![0u64; n_nodes];
        for node in 0..sc.nodes {
            let demand = (log_uniform(&mut rng, sc.demand_gib) * (1u64 << 30) as f64) as u64;
            let mut sum = 0u64;
            let mut count = 0;
            while sum < demand && count < MAX_FILES_PER_NODE {
                let bytes =
                    ((log_uniform(&mut rng, sc.file_mib) * (1u64 << 20) as f64) as u64).max(1);
                let id = files.len() as u32;
                files.push(File { owner: node, bytes });
                need[node as usize] += bytes.div_ceil(u64::from(sc.k)) * u64::from(sc.n);
                if rng.gen_bool(sc.preloaded) {
                    history.push(id);
                } else {
                    later.push((rng.gen_range(0..end), id));
                }
                sum += bytes;
                count += 1;
            }
        }
        history.shuffle(&mut rng);
        let mut nodes = Vec::with_capacity(n_nodes);
        let mut weights = Weights::new(n_nodes);
        let mut debt = Weights::new(n_nodes);
        for (i, (role, churn)) in roles.into_iter().zip(churn).enumerate() {
            let fair = sc.headroom * need[i] as f64;
            let (claimed, actual) = match role {
                Role::Honest | Role::Deleter { .. } => {
                    let spread =
                        log_uniform(&mut rng, [1.0 / sc.capacity_spread, sc.capacity_spread]);
                    let c = (fair * spread) as u64;
                    (c, c)
                }
                Role::FreeNone => (0, 0),
                Role::FreeOvercommit => (fair as u64, (fair * sc.overcommit_capacity) as u64),
                Role::FreeRefuse => (fair as u64, 0),
            };
            let grant = (sc.grant_fraction * claimed as f64) as u64;
            weights.set(i, claimed);
            debt.set(i, ((sc.balance_slack * claimed as f64) as u64).min(claimed));
            nodes.push(Node {
                role,
                churn,
                claimed,
                actual,
                grant,
                used: 0,
                placed: 0,
                need: need[i],
                held: Vec::new(),
                deleted_bytes: 0,
                used_samples: 0,
                audit_bytes: 0,
                detected: None,
                answered_24h: 0,
                answered_7d: 0,
            });
        }
        let mut sim = Sim {
            sc: sc.clone(),
            seed,
            rng: ChaCha8Rng::seed_from_u64(0),
            policy: Policy {
                default_grant: None,
                reciprocal: Some(sc.reciprocal),
                invite_only: false,
            },
            now: 0,
            end,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            pairs: (0..n_nodes).map(|_| BTreeMap::new()).collect(),
            shares: Vec::new(),
            files,
            weights,
            debt,
            trace: Sha256::new(),
            events: 0,
            truncated: false,
            uploads: 0,
            upload_failed: 0,
            refusals: 0,
            over_quota: 0,
            audits_sent: 0,
            audits_answered: 0,
            audits_failed: 0,
            audits_offline: 0,
            audits_skipped: 0,
            audit_bytes: 0,
            days_sampled: 0,
            stored_samples: 0,
            false_accusations: 0,
            false_offline: 0,
            rate_nominal: 0.0,
        };
        sim.rate_nominal = sim.nominal_rate();
        for id in history {
            sim.schedule(0, Event::Upload(id));
        }
        for day in 0..end.div_ceil(DAY_SECS) {
            sim.schedule(day * DAY_SECS, Event::PlanDay(day));
        }
        later.sort_unstable();
        for (t, id) in later {
            sim.schedule(t, Event::Upload(id));
        }
        for i in 0..sc.nodes {
            if let Role::Deleter { start, .. } = sim.nodes[i as usize].role {
                sim.schedule(start, Event::Delete(i));
            }
        }
        sim.rng = rng;
        sim
    }

    fn schedule(&mut self, t: Time, e: Event) {
        if t < self.end {
            self.queue.insert((t, self.seq), e);
            self.seq += 1;
        }
    }

    fn online(&self, node: u32, t: Time) -> bool {
        match &self.nodes[node as usize].churn {
            Churn::Always => true,
            Churn::Diurnal { phase, on } => (t + phase) % DAY_SECS < *on,
            Churn::Random(spells) => {
                let i = spells.partition_point(|s| s.0 <= t);
                i == 0 || spells[i - 1].1 <= t
            }
        }
    }

    /// Bytes one audit moves (request and response) for a share of `blocks` blocks.
    pub fn audit_bytes(sc: &Scenario, blocks: u32) -> u64 {
        let block = sc.block_size();
        let (data, in_block) = if sc.audit_unit == 0 || sc.audit_unit >= block {
            (block, 0)
        } else {
            (sc.audit_unit, log2_ceil(block.div_ceil(sc.audit_unit)))
        };
        let hashes = in_block + log2_ceil(u64::from(blocks)) + log2_ceil(u64::from(sc.n));
        REQUEST_BYTES + RESPONSE_OVERHEAD + data + 32 * hashes
    }

    /// Audits per day per byte an auditor holds on a peer, from the traffic cap alone (the
    /// fractional form of `audit::max_audits_for_traffic`), with 64-block shares.
    fn nominal_rate(&self) -> f64 {
        if self.sc.traffic_cap <= 0.0 {
            return f64::INFINITY;
        }
        self.sc.traffic_cap / (7.0 * Self::audit_bytes(&self.sc, 64) as f64)
    }

    /// Runs to the end of the window and reports.
    pub fn run(mut self) -> Report {
        while let Some(((t, _), e)) = self.queue.pop_first() {
            if self.events >= self.sc.max_events {
                self.truncated = true;
                break;
            }
            self.events += 1;
            self.now = t;
            self.trace.update(t.to_be_bytes());
            match e {
                Event::Upload(f) => self.upload(f, t == 0),
                Event::Delete(node) => self.delete(node),
                Event::PlanDay(day) => self.plan_day(day),
                Event::Audit {
                    auditor,
                    peer,
                    share,
                    block,
                    tries,
                } => self.audit(auditor, peer, share, block, tries),
            }
        }
        self.report()
    }

    /// The server's decision on `owner` writing `bytes` more: the ledger's reciprocal check
    /// (as `Ledger::check_write`) then the node's own capacity and behaviour.
    fn server_check(&self, server: u32, owner: u32, bytes: u64) -> Result<(), Refused> {
        let s = &self.nodes[server as usize];
        // What `owner` grants `server`, as `server` knows it: observed, else advertised.
        let theirs = self.pairs[server as usize]
            .get(&owner)
            .and_then(|p| p.observed)
            .unwrap_or(self.nodes[owner as usize].grant);
        let used = self.pairs[owner as usize]
            .get(&server)
            .map_or(0, |p| p.bytes);
        match self
            .policy
            .effective_grant(None, Some(Quota::Bytes(theirs)))
        {
            Access::Granted(q) if q.allows(used, bytes) => {}
            Access::Granted(q) => {
                return Err(Refused::Ledger(Refusal::OverQuota {
                    quota: match q {
                        Quota::Bytes(b) => b,
                        Quota::Unlimited => u64::MAX,
                    },
                    used,
                    requested: bytes,
                }));
            }
            Access::Revoked { grace_end } => {
                return Err(Refused::Ledger(Refusal::Revoked { grace_end }));
            }
            Access::Pending => return Err(Refused::Ledger(Refusal::Pending)),
            Access::NoGrant => return Err(Refused::Ledger(Refusal::NoGrant)),
        }
        if s.role == Role::FreeRefuse || s.used.saturating_add(bytes) > s.actual {
            return Err(Refused::NoRoom);
        }
        Ok(())
    }

    fn upload(&mut self, file: u32, history: bool) {
        let f = &self.files[file as usize];
        let owner = f.owner;
        let k = u64::from(self.sc.k);
        let share_bytes = f.bytes.div_ceil(k);
        let blocks = u32::try_from(f.bytes.div_ceil(self.sc.segment)).unwrap_or(u32::MAX);
        if !history && !self.online(owner, self.now) {
            // The owner uploads when it is next online (checked hourly, bounded by the window).
            self.schedule(self.now + HOUR, Event::Upload(file));
            return;
        }
        self.uploads += 1;
        // Reciprocal servers grant the owner at most what it grants (their records say so):
        // a share larger than that fits nowhere, so the uploader does not try.
        let most = Quota::Bytes(self.nodes[owner as usize].grant).scale(self.sc.reciprocal);
        if !most.allows(0, share_bytes) {
            self.upload_failed += 1;
            self.trace.update([b'u', b'x']);
            return;
        }
        let want = self.sc.n as usize;
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        let mut draws = 0;
        let balance = self.sc.placement == Placement::Balance;
        while chosen.len() < want && draws < self.sc.max_draws && self.weights.total > 0 {
            draws += 1;
            let tree = if balance && self.debt.total > 0 && draws <= self.sc.max_draws / 2 {
                &self.debt
            } else {
                &self.weights
            };
            let x = self.rng.gen_range(0..tree.total);
            let j = tree.find(x) as u32;
            if j == owner || chosen.contains(&j) || (!history && !self.online(j, self.now)) {
                continue;
            }
            let pair = self.pairs[owner as usize].get(&j);
            if pair.is_some_and(|p| p.refused || p.flagged.is_some()) {
                continue;
            }
            // Low scorers get fewer new shares: keep the draw with probability = score.
            let score = pair.map_or(1.0, |p| p.rep.score());
            if score < 1.0 && self.rng.gen_range(0.0..1.0) >= score {
                continue;
            }
            match self.server_check(j, owner, share_bytes) {
                Ok(()) => chosen.push(j),
                Err(Refused::Ledger(_)) => self.over_quota += 1,
                Err(Refused::NoRoom) => {
                    self.refusals += 1;
                    if self.sc.observe_refusals {
                        let carry = self.rng.gen_range(0.0..1.0);
                        let p = self.pairs[owner as usize]
                            .entry(j)
                            .or_insert_with(|| Pair::new(carry));
                        p.refused = true;
                        p.observed = Some(p.bytes);
                    }
                }
            }
        }
        self.trace.update([b'u']);
        self.trace.update(file.to_be_bytes());
        if chosen.len() < self.sc.happy as usize {
            self.upload_failed += 1;
            self.trace.update([b'x']);
            return;
        }
        for j in chosen {
            self.trace.update(j.to_be_bytes());
            let id = self.shares.len() as u32;
            let mut deleted = false;
            if let Role::Deleter { fraction, start } = self.nodes[j as usize].role
                && self.now >= start
                && !history
            {
                deleted = self.rng.gen_bool(fraction);
            }
            self.shares.push(Share {
                server: j,
                bytes: share_bytes,
                blocks: blocks.max(1),
                deleted,
            });
            let carry = self.rng.gen_range(0.0..1.0);
            let p = self.pairs[owner as usize]
                .entry(j)
                .or_insert_with(|| Pair::new(carry));
            p.bytes += share_bytes;
            p.shares.push(id);
            let s = &mut self.nodes[j as usize];
            s.used += share_bytes;
            s.held.push(id);
            if deleted {
                s.deleted_bytes += share_bytes;
            }
            let free = s.claimed.saturating_sub(s.used);
            self.weights.set(j as usize, free);
            self.nodes[owner as usize].placed += share_bytes;
            self.set_debt(j);
        }
        self.set_debt(owner);
    }

    /// The balance weight of `node`: what it consumes beyond what it stores, plus the slack,
    /// capped by its advertised free space.
    fn set_debt(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        let slack = (self.sc.balance_slack * n.claimed as f64) as u64;
        let owed = n.placed.saturating_add(slack).saturating_sub(n.used);
        let free = n.claimed.saturating_sub(n.used);
        self.debt.set(node as usize, owed.min(free));
    }

    fn delete(&mut self, node: u32) {
        let Role::Deleter { fraction, .. } = self.nodes[node as usize].role else {
            return;
        };
        let held = self.nodes[node as usize].held.len();
        let count = ((fraction * held as f64).round() as usize).min(held);
        let picks = rand::seq::index::sample(&mut self.rng, held, count);
        let mut bytes = 0;
        for i in picks.iter() {
            let id = self.nodes[node as usize].held[i];
            let share = &mut self.shares[id as usize];
            if !share.deleted {
                share.deleted = true;
                bytes += share.bytes;
            }
        }
        self.nodes[node as usize].deleted_bytes += bytes;
        self.trace.update([b'd']);
        self.trace.update(node.to_be_bytes());
        self.trace.update((count as u64).to_be_bytes());
    }

    fn plan_day(&mut self, day: u64) {
        let start = day * DAY_SECS;
        self.days_sampled += 1;
        for n in &mut self.nodes {
            n.used_samples += u128::from(n.used);
            self.stored_samples += u128::from(n.used);
        }
        let target = self.sc.audits_per_peer_day;
        let cap = self.rate_nominal;
        let mut planned: Vec<(Time, Event)> = Vec::new();
        for u in 0..self.nodes.len() {
            let pairs = std::mem::take(&mut self.pairs[u]);
            let mut pairs = pairs;
            for (&j, p) in pairs.iter_mut() {
                if p.shares.is_empty() {
                    continue;
                }
                let stored = self.nodes[j as usize].used.max(1) as f64;
                let rate = (target * p.bytes as f64 / stored).min(cap * p.bytes as f64);
                p.carry += rate;
                let n = p.carry.floor().min(f64::from(u32::MAX));
                p.carry -= n;
                if n < 1.0 {
                    continue;
                }
                let held: Vec<Held<u32>> = p
                    .shares
                    .iter()
                    .map(|&s| Held {
                        share: s,
                        blocks: self.shares[s as usize].blocks,
                    })
                    .collect();
                for c in audit::plan(&held, n as u32, &mut self.rng) {
                    planned.push((
                        start + c.at,
                        Event::Audit {
                            auditor: u as u32,
                            peer: j,
                            share: c.share,
                            block: c.block,
                            tries: 0,
                        },
                    ));
                }
            }
            self.pairs[u] = pairs;
        }
        self.trace.update([b'p']);
        self.trace.update((planned.len() as u64).to_be_bytes());
        for (t, e) in planned {
            self.schedule(t, e);
        }
    }

    fn audit(&mut self, auditor: u32, peer: u32, share: u32, block: u32, tries: u32) {
        let t = self.now;
        self.trace.update([b'a']);
        self.trace.update(auditor.to_be_bytes());
        self.trace.update(peer.to_be_bytes());
        self.trace.update(share.to_be_bytes());
        self.trace.update(block.to_be_bytes());
        if !self.online(auditor, t) {
            // An offline auditor sends nothing.
            self.audits_skipped += 1;
            return;
        }
        self.audits_sent += 1;
        self.audit_bytes += REQUEST_BYTES;
        self.nodes[peer as usize].audit_bytes += REQUEST_BYTES;
        debug_assert_eq!(self.shares[share as usize].server, peer);
        let outcome = if !self.online(peer, t) {
            Outcome::Offline
        } else if self.shares[share as usize].deleted {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        self.trace.update([outcome as u8]);
        match outcome {
            Outcome::Offline => {
                self.audits_offline += 1;
                if tries < self.sc.offline_retries {
                    let later = t + self.rng.gen_range(HOUR..=6 * HOUR);
                    self.schedule(
                        later,
                        Event::Audit {
                            auditor,
                            peer,
                            share,
                            block,
                            tries: tries + 1,
                        },
                    );
                }
            }
            Outcome::Pass | Outcome::Fail => {
                let bytes =
                    Self::audit_bytes(&self.sc, self.shares[share as usize].blocks) - REQUEST_BYTES;
                self.audit_bytes += bytes;
                self.audits_answered += 1;
                if outcome == Outcome::Fail {
                    self.audits_failed += 1;
                }
                let node = &mut self.nodes[peer as usize];
                node.audit_bytes += bytes;
                if let Role::Deleter { start, .. } = node.role
                    && t >= start
                {
                    if t < start + DAY_SECS {
                        node.answered_24h += 1;
                    }
                    if t < start + 7 * DAY_SECS {
                        node.answered_7d += 1;
                    }
                }
            }
        }
        let Some(p) = self.pairs[auditor as usize].get_mut(&peer) else {
            return;
        };
        p.rep.update(outcome);
        if outcome == Outcome::Offline {
            p.offline += 1;
        }
        if p.rep.suspect() && p.flagged.is_none() {
            p.flagged = Some(t);
            let offline_before = p.offline > 0;
            let node = &mut self.nodes[peer as usize];
            if matches!(node.role, Role::Deleter { .. }) {
                node.detected = Some(node.detected.map_or(t, |d| d.min(t)));
            } else {
                self.false_accusations += 1;
                if offline_before || !matches!(node.churn, Churn::Always) {
                    self.false_offline += 1;
                }
            }
            self.trace.update([b's']);
        }
    }

    fn report(mut self) -> Report {
        let sc = &self.sc;
        let end = self.end;
        // Detection per deleter.
        let mut big = Detection::default();
        let mut small = Detection::default();
        let mut victims_flagged = 0u64;
        let mut victims = 0u64;
        for (i, n) in self.nodes.iter().enumerate() {
            let Role::Deleter { fraction, start } = n.role else {
                continue;
            };
            let big_class = fraction >= 0.10 - 1e-9;
            let d = if big_class { &mut big } else { &mut small };
            d.deleters += 1;
            if start >= end {
                continue;
            }
            d.started += 1;
            let delay = n.detected.map(|t| t - start);
            if let Some(x) = delay {
                d.caught += 1;
                d.delays.push(x);
            }
            let window = if big_class { DAY_SECS } else { 7 * DAY_SECS };
            if start + window <= end && delay.is_none_or(|x| x > window) {
                // Online hours in that window (5-minute samples).
                let online = (0..window / 300)
                    .filter(|k| self.online(i as u32, start + k * 300))
                    .count() as f64
                    / 12.0;
                let answered = if big_class {
                    n.answered_24h
                } else {
                    n.answered_7d
                };
                d.missed.push((i as u32, fraction, online, answered));
            }
            if start + DAY_SECS <= end {
                d.eligible_24h += 1;
                d.caught_24h += u64::from(delay.is_some_and(|x| x <= DAY_SECS));
                d.model_24h += audit::detection_probability(fraction, n.answered_24h);
            }
            if start + 7 * DAY_SECS <= end {
                d.eligible_7d += 1;
                d.caught_7d += u64::from(delay.is_some_and(|x| x <= 7 * DAY_SECS));
                d.model_7d += audit::detection_probability(fraction, n.answered_7d);
            }
            // Owners that lost a share on it, and how many of them flagged it.
            let owners: BTreeSet<u32> = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.get(&(i as u32))
                        .is_some_and(|p| p.shares.iter().any(|&s| self.shares[s as usize].deleted))
                })
                .map(|(u, _)| u as u32)
                .collect();
            for u in owners {
                victims += 1;
                if self.pairs[u as usize]
                    .get(&(i as u32))
                    .is_some_and(|p| p.flagged.is_some())
                {
                    victims_flagged += 1;
                }
            }
        }
        big.delays.sort_unstable();
        small.delays.sort_unstable();
        // Audit traffic.
        let weeks = end as f64 / WEEK_SECS;
        let days = self.days_sampled.max(1) as f64;
        let mean_stored = self.stored_samples as f64 / days;
        let audit_pct_week = if mean_stored > 0.0 {
            100.0 * self.audit_bytes as f64 / weeks / mean_stored
        } else {
            0.0
        };
        let mut per_peer: Vec<f64> = self
            .nodes
            .iter()
            .filter(|n| n.used_samples > 0)
            .map(|n| 100.0 * n.audit_bytes as f64 / weeks / (n.used_samples as f64 / days))
            .collect();
        per_peer.sort_by(f64::total_cmp);
        let pct = |v: &[f64], q: f64| -> f64 {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            }
        };
        // Ratios.
        let mut ratios: Vec<f64> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Honest)
            .map(|n| {
                if n.used == 0 {
                    f64::INFINITY
                } else {
                    n.placed as f64 / n.used as f64
                }
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let in_band = ratios.iter().filter(|r| (0.8..=1.25).contains(*r)).count();
        let honest_need: u64 = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Honest)
            .map(|n| n.need)
            .sum();
        let honest_placed: u64 = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Honest)
            .map(|n| n.placed)
            .sum();
        let mut free = [(0u64, 0u64, 0u64, 0u64); 3];
        for n in &self.nodes {
            let k = match n.role {
                Role::FreeNone => 0,
                Role::FreeOvercommit => 1,
                Role::FreeRefuse => 2,
                _ => continue,
            };
            free[k].0 += 1;
            free[k].1 += n.need;
            free[k].2 += n.placed;
            free[k].3 += n.used;
        }
        let total_stored: u64 = self.nodes.iter().map(|n| n.used).sum();
        let free_placed: u64 = free.iter().map(|f| f.2).sum();
        let free_need: u64 = free.iter().map(|f| f.1).sum();
        let free_used: u64 = free.iter().map(|f| f.3).sum();
        let nodes_with =
            |role: fn(&Role) -> bool| self.nodes.iter().filter(|n| role(&n.role)).count();
        let trace = self.trace.finalize_reset();
        let _ = sc;
        Report {
            name: self.sc.name.clone(),
            seed: self.seed,
            nodes: self.sc.nodes,
            hours: self.sc.hours,
            honest: nodes_with(|r| *r == Role::Honest) as u64,
            free_riders: nodes_with(|r| r.free_rider()) as u64,
            deleters: nodes_with(|r| matches!(r, Role::Deleter { .. })) as u64,
            files: self.files.len() as u64,
            shares: self.shares.len() as u64,
            uploads: self.uploads,
            upload_failed: self.upload_failed,
            refusals: self.refusals,
            over_quota: self.over_quota,
            stored_bytes: total_stored,
            big,
            small,
            victims,
            victims_flagged,
            false_accusations: self.false_accusations,
            false_offline: self.false_offline,
            audits_sent: self.audits_sent,
            audits_answered: self.audits_answered,
            audits_failed: self.audits_failed,
            audits_offline: self.audits_offline,
            audits_skipped: self.audits_skipped,
            audit_unit: self.sc.audit_unit,
            bytes_per_audit: Self::audit_bytes(&self.sc, 64),
            audit_pct_week,
            audit_pct_week_p99: pct(&per_peer, 0.99),
            audit_pct_week_max: pct(&per_peer, 1.0),
            audits_per_peer_day: self.audits_answered as f64
                / (end as f64 / DAY_SECS as f64)
                / self.nodes.iter().filter(|n| n.used > 0).count().max(1) as f64,
            ratio_in_band_pct: if ratios.is_empty() {
                0.0
            } else {
                100.0 * in_band as f64 / ratios.len() as f64
            },
            ratio_p5: pct(&ratios, 0.05),
            ratio_p50: pct(&ratios, 0.50),
            ratio_p95: pct(&ratios, 0.95),
            honest_satisfied_pct: 100.0 * honest_placed as f64 / honest_need.max(1) as f64,
            free_consumed_pct: 100.0 * free_placed as f64 / free_need.max(1) as f64,
            free_share_of_stored_pct: 100.0 * free_placed as f64 / total_stored.max(1) as f64,
            free_contributed: free_used,
            free_kinds: free,
            events: self.events,
            truncated: self.truncated,
            trace: trace.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

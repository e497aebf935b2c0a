//! 50 cores over a small in-test network (fixed seed, 20-80 ms latency, 1% loss): every node
//! learns every published record by the tree, and a late joiner that starts with no records
//! learns all of them by anti-entropy alone.

use std::collections::{BTreeMap, BTreeSet};

use kith_gossip::{
    BUCKETS, Config, Digest, Gossip, Index, Input, Inserted, ItemKey, Message, Meta, Millis,
    Output, Reject, Store,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: u32 = 50;

/// Item: `subject (4) | version (8) | padding`; valid when the subject is a member.
fn item(subject: u32, version: u64) -> Vec<u8> {
    let mut v = subject.to_be_bytes().to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.resize(300, 0xab);
    v
}

fn key(subject: u32) -> ItemKey {
    let mut id = [0u8; 32];
    id[0] = (subject * 37 % 256) as u8; // spread over buckets
    id[1..5].copy_from_slice(&subject.to_be_bytes());
    ItemKey { kind: 1, id }
}

struct TestStore {
    me: u32,
    index: Index,
    items: BTreeMap<ItemKey, Vec<u8>>,
}

impl Store<u32> for TestStore {
    fn identify(&self, item: &[u8]) -> Result<(ItemKey, Meta), Reject> {
        let s = u32::from_be_bytes(
            item.get(..4)
                .ok_or(Reject::Malformed)?
                .try_into()
                .expect("4 or 8 bytes"),
        );
        let v = u64::from_be_bytes(
            item.get(4..12)
                .ok_or(Reject::Malformed)?
                .try_into()
                .expect("4 or 8 bytes"),
        );
        Ok((key(s), Meta::of(v, item)))
    }
    fn insert(&mut self, item: &[u8], _now: Millis) -> Result<Inserted, Reject> {
        let (k, m) = self.identify(item)?;
        if k.id[1..5].iter().fold(0u32, |a, b| a << 8 | u32::from(*b)) >= NODES {
            return Err(Reject::BrokenChain);
        }
        if self.index.get(&k).is_some_and(|old| old >= m) {
            return Ok(Inserted::Duplicate);
        }
        self.index.set(k, m);
        self.items.insert(k, item.to_vec());
        Ok(Inserted::New)
    }
    fn meta(&self, key: &ItemKey) -> Option<Meta> {
        self.index.get(key)
    }
    fn get(&self, key: &ItemKey) -> Option<Vec<u8>> {
        self.items.get(key).cloned()
    }
    fn buckets(&self) -> Vec<Digest> {
        self.index.buckets().to_vec()
    }
    fn bucket_entries(&self, b: usize) -> Vec<(ItemKey, Meta)> {
        self.index.bucket_entries(b)
    }
    fn is_member(&self, peer: &u32) -> bool {
        // The roster is known to everyone (a joiner gets it with its certificate).
        *peer < NODES
    }
    fn sample_members(
        &self,
        rng: &mut dyn RngCore,
        n: usize,
        skip: &dyn Fn(&u32) -> bool,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for _ in 0..n * 16 {
            let p = rng.gen_range(0..NODES);
            if out.len() < n && p != self.me && !skip(&p) && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

enum Ev {
    Tick(u32),
    Msg(u32, u32, Message),
    Conn(u32, u32),
    Publish(u32, u64),
    Join(u32),
}

#[test]
fn fifty_nodes_and_a_late_joiner_converge() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let late = NODES - 1;
    let mut cores: Vec<Gossip<u32>> = (0..NODES)
        .map(|n| Gossip::new(n, Config::default(), 0))
        .collect();
    let mut stores: Vec<TestStore> = (0..NODES)
        .map(|me| TestStore {
            me,
            index: Index::default(),
            items: BTreeMap::new(),
        })
        .collect();
    let mut running: BTreeSet<u32> = (0..late).collect();
    let mut links: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut queue: BTreeMap<(Millis, u64), Ev> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BTreeMap<(Millis, u64), Ev>, t: Millis, e: Ev| {
        seq += 1;
        q.insert((t, seq), e);
    };
    for n in 0..late {
        push(&mut queue, rng.gen_range(0..1000), Ev::Tick(n));
        // Every record, version 1, published by its owner in the first 5 s.
        push(&mut queue, 2000 + rng.gen_range(0..3000), Ev::Publish(n, 1));
    }
    // Updates of ten records while the late joiner is away, and the joiner at 20 s.
    for n in 0..10 {
        push(&mut queue, 10_000 + n as Millis * 500, Ev::Publish(n, 2));
    }
    push(&mut queue, 20_000, Ev::Join(late));
    let end: Millis = 60_000;
    let mut events = 0u32;
    let mut delivered = vec![0u32; NODES as usize];
    while let Some(((now, _), ev)) = queue.pop_first() {
        events += 1;
        assert!(events < 2_000_000, "event bound");
        if now > end {
            break;
        }
        let (n, input) = match ev {
            Ev::Tick(n) => (n, Input::Tick),
            Ev::Msg(from, to, m) => {
                if !links.contains(&(from.min(to), from.max(to))) {
                    continue;
                }
                let size = m.encode().len();
                (to, Input::Message(from, m, size))
            }
            Ev::Conn(from, to) => {
                if !running.contains(&to) {
                    continue;
                }
                if links.insert((from.min(to), from.max(to))) {
                    let lat = rng.gen_range(20..=80);
                    push(&mut queue, now + lat, Ev::Conn(to, from));
                }
                (to, Input::Connected(from))
            }
            Ev::Publish(n, v) => (n, Input::Publish(item(n, v))),
            Ev::Join(n) => {
                running.insert(n);
                (n, Input::Tick)
            }
        };
        if !running.contains(&n) {
            continue;
        }
        cores[n as usize].handle(&mut stores[n as usize], &mut rng, input, now);
        while let Some(o) = cores[n as usize].poll() {
            match o {
                Output::Send(p, m) => {
                    if rng.gen_bool(0.01) {
                        continue;
                    }
                    let lat = rng.gen_range(20..=80);
                    push(&mut queue, now + lat, Ev::Msg(n, p, m));
                }
                Output::Connect(p) => {
                    let lat = rng.gen_range(20..=80);
                    push(&mut queue, now + lat, Ev::Conn(n, p));
                }
                Output::Delivered(_) => delivered[n as usize] += 1,
            }
        }
        let d = cores[n as usize].next_deadline().max(now + 1);
        push(&mut queue, d, Ev::Tick(n));
    }
    // Every node holds every record at its newest version.
    let reference = stores[0].buckets();
    assert_eq!(stores[0].index.len(), late as usize);
    for s in &stores {
        assert_eq!(s.buckets(), reference, "node {} differs", s.me);
    }
    assert_eq!(reference.len(), BUCKETS);
    // The late joiner learned everything by anti-entropy (it missed every push).
    let joiner = cores[late as usize].stats();
    assert_eq!(delivered[late as usize], late);
    assert_eq!(joiner.sync_items, u64::from(late));
    assert!(cores.iter().all(|c| c.stats().non_member == 0));
}

//! When a download stops waiting for a server.
//!
//! - **Listings**: a download asks every storage server which shares it holds. It starts once
//!   it knows `k` distinct shares and the servers about as fast as the `k`-th fastest one have
//!   had their time to answer ([`start_after`]); a server that answers later would not be read
//!   first anyway ([`about_as_fast`] is the rule the download's share order uses), and one that
//!   hangs (a laptop lid closed, a process stopped, a link that drops packets) no longer holds
//!   every download back until its listing times out. Later answers stay available should the
//!   shares first chosen fail.
//! - **Blocks**: a block still missing after [`BlockTimes::hedge_after`] (several times the
//!   download's typical block time, at least [`HEDGE_FLOOR`]) is read from a spare share too,
//!   and the first `k` verified blocks make the segment. When the download's own link is the
//!   bottleneck every block is slow alike and the typical time follows, so only a server far
//!   slower than the others is read around.
//!
//! - **Stragglers**: where every server is asked and `happy` answers are enough (an upload's
//!   listings, a small file's puts, a mutable file's map), the rest are waited for only up to
//!   [`stragglers_until`] (ten times as long as the `happy`-th answer took, plus a second);
//!   then the operation goes on with the servers that answered (a small file's shares meant
//!   for a straggler are placed on the others).
//! - **Silent servers**: a server that left a request unanswered that way, or whose request
//!   failed, is [`Silent`] for [`SILENT_FOR`]: new uploads and mutable writes leave it out
//!   while enough others remain ([`Silent::put_aside`]), so a friend's hung machine costs
//!   the first operation that meets it about a second, not every operation after it. An
//!   answer to a request it is still asked (a download's or a check's listing, a read) ends
//!   that at once; a late answer to a request given up on does not (it was not waited for).
//!
//! Pure: times are durations or instants measured by the caller.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// A block is read from a spare share once it has taken this many times the download's
/// typical block time...
pub const HEDGE_FACTOR: u32 = 4;
/// ... and at least this long.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(500);
/// How long a block may take before any block of the download has come from another server.
pub const HEDGE_FIRST: Duration = Duration::from_secs(3);

/// An upload waits for listings up to this many times the time the `happy`-th answer took...
pub const STRAGGLER_FACTOR: u32 = 10;
/// ... plus this.
pub const STRAGGLER_SLACK: Duration = Duration::from_secs(1);

/// How long after asking every server an operation that needs `happy` of them waits for the
/// rest, given when the good answers so far came (in order): `None` until `happy` came (wait
/// for more), then ten times the `happy`-th answer's time plus a second: on a LAN about a
/// second, over the internet a few, over Tor tens; a hung server no longer costs every
/// operation a request's timeout.
pub fn stragglers_until(answered: &[Duration], happy: u8) -> Option<Duration> {
    let t = *answered.get(usize::from(happy).max(1) - 1)?;
    Some(stragglers_after(t))
}

/// How long after asking an operation that became happy `t` after asking waits for the
/// rest: ten times as long, plus a second (where "happy" is the placement's happiness, not a
/// count of answers: a small file's puts, a mutable version's writes).
pub fn stragglers_after(t: Duration) -> Duration {
    t * STRAGGLER_FACTOR + STRAGGLER_SLACK
}

/// How long a server stays [`Silent`] after it last left a request unanswered.
pub const SILENT_FOR: Duration = Duration::from_secs(60);

/// Servers that recently left a request unanswered (a straggler cut off, a request that
/// failed or timed out), each with when it last did. An answer to a later request clears a
/// server at once; the mark fades after [`SILENT_FOR`], so a server that came back without
/// being asked anything is tried again by the next operation (which costs that operation at
/// most its straggler wait if it is still hung).
#[derive(Clone, Debug)]
pub struct Silent<K> {
    since: BTreeMap<K, Instant>,
}

impl<K> Default for Silent<K> {
    fn default() -> Self {
        Silent {
            since: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Silent<K> {
    /// `server` left a request unanswered at `now` (marks that faded are forgotten).
    pub fn went_silent(&mut self, server: K, now: Instant) {
        self.since
            .retain(|_, t| now.saturating_duration_since(*t) < SILENT_FOR);
        self.since.insert(server, now);
    }

    /// `server` answered: it is not silent any more.
    pub fn answered(&mut self, server: &K) {
        self.since.remove(server);
    }

    /// Whether `server` left a request unanswered less than [`SILENT_FOR`] before `now`.
    pub fn is_silent(&self, server: &K, now: Instant) -> bool {
        self.since
            .get(server)
            .is_some_and(|t| now.saturating_duration_since(*t) < SILENT_FOR)
    }

    /// The servers silent at `now`.
    pub fn silent(&self, now: Instant) -> Vec<K> {
        self.since
            .keys()
            .filter(|k| self.is_silent(k, now))
            .cloned()
            .collect()
    }

    /// `servers` without the silent ones, when at least `keep` remain; otherwise all of them
    /// (too few would answer: the silent ones get their chance, bounded by the straggler
    /// wait).
    pub fn put_aside(&self, servers: Vec<K>, keep: usize, now: Instant) -> Vec<K> {
        let heard: Vec<K> = servers
            .iter()
            .filter(|s| !self.is_silent(s, now))
            .cloned()
            .collect();
        if heard.len() >= keep { heard } else { servers }
    }
}

/// The latest answer time still "about as fast" as an answer that took `t`: 1.5 times + 10 ms
/// (on loopback or a LAN every server is, even on a busy machine; over the internet only
/// servers about as close).
pub fn about_as_fast(t: Duration) -> Duration {
    t.mul_f64(1.5) + Duration::from_millis(10)
}

/// When a download may start, counted from when the listings were asked for, given the
/// answers so far in the order they came (each server's share numbers and when it answered):
/// once `needed` distinct shares are known, and not before the servers about as fast as the
/// `needed`-th one that holds shares could answer. `None`: not enough shares known yet.
pub fn start_after(answers: &[(&[u8], Duration)], needed: u8) -> Option<Duration> {
    let k = usize::from(needed).max(1);
    let mut distinct = BTreeSet::new();
    let mut holding = 0usize;
    let mut kth = None;
    for &(shares, t) in answers {
        if shares.is_empty() {
            continue;
        }
        holding += 1;
        if holding == k {
            kth = Some(t);
        }
        distinct.extend(shares.iter().copied());
        if distinct.len() >= k {
            // A few servers holding several shares each: the last of them is the reference.
            let reference = kth.unwrap_or(t);
            return Some(t.max(about_as_fast(reference)));
        }
    }
    None
}

/// The download's typical block time, from the blocks other servers sent: an exponentially
/// weighted mean, each new block weighing a quarter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockTimes {
    typical: Option<Duration>,
}

impl BlockTimes {
    /// A block took `took`, from the request to its verified bytes.
    pub fn observe(&mut self, took: Duration) {
        self.typical = Some(match self.typical {
            None => took,
            Some(t) => (t * 3 + took) / 4,
        });
    }

    /// How long a segment's blocks may take before a spare share is read too.
    pub fn hedge_after(&self) -> Duration {
        match self.typical {
            None => HEDGE_FIRST,
            Some(t) => (t * HEDGE_FACTOR).max(HEDGE_FLOOR),
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

    #[test]
    fn a_download_starts_once_k_shares_are_known_and_the_about_as_fast_servers_answered() {
        let (a, b, c, none): (&[u8], &[u8], &[u8], &[u8]) = (&[0], &[1], &[2], &[]);
        // Two of three shares known: wait for more.
        assert_eq!(
            start_after(&[(a, ms(2)), (none, ms(3)), (b, ms(4))], 3),
            None
        );
        // The third at 6 ms: start at 1.5 x 6 + 10 = 19 ms, in case a primary on a server
        // about as fast is still to come.
        assert_eq!(
            start_after(&[(a, ms(2)), (b, ms(4)), (c, ms(6))], 3),
            Some(ms(19))
        );
        // A server holding an already known share does not count twice.
        assert_eq!(start_after(&[(a, ms(2)), (b, ms(4)), (b, ms(5))], 3), None);
        // Two servers, one holding two shares: the share count is reached with the second
        // answer, and it is the reference.
        assert_eq!(
            start_after(&[(&[0, 3], ms(20)), (&[1, 2, 4], ms(100))], 3),
            Some(ms(160))
        );
        // The k-th server answered long before the k-th distinct share came: start at once.
        assert_eq!(
            start_after(
                &[(a, ms(2)), (a, ms(3)), (a, ms(4)), (b, ms(5)), (c, ms(900))],
                3
            ),
            Some(ms(900))
        );
        assert_eq!(start_after(&[], 3), None);
    }

    #[test]
    fn a_block_is_hedged_after_several_typical_block_times_and_never_sooner_than_the_floor() {
        let mut t = BlockTimes::default();
        assert_eq!(t.hedge_after(), HEDGE_FIRST);
        t.observe(ms(40));
        assert_eq!(t.hedge_after(), HEDGE_FLOOR);
        t.observe(ms(1000));
        // (3 x 40 + 1000) / 4 = 280 ms typical.
        assert_eq!(t.hedge_after(), ms(1120));
        for _ in 0..40 {
            t.observe(ms(2));
        }
        assert_eq!(t.hedge_after(), HEDGE_FLOOR);
    }

    #[test]
    fn stragglers_are_waited_for_until_well_after_the_happy_th_answer() {
        assert_eq!(stragglers_until(&[ms(3), ms(4)], 3), None);
        assert_eq!(stragglers_until(&[ms(3), ms(4), ms(5)], 3), Some(ms(1050)));
        assert_eq!(
            stragglers_until(&[ms(3), ms(4), ms(5), ms(900)], 3),
            Some(ms(1050))
        );
        assert_eq!(stragglers_until(&[ms(2000)], 1), Some(ms(21_000)));
    }

    #[test]
    fn a_silent_server_is_put_aside_while_enough_others_remain_until_it_answers_or_the_mark_fades()
    {
        let t0 = Instant::now();
        let mut s: Silent<char> = Silent::default();
        let all = vec!['a', 'b', 'c', 'd', 'e'];
        assert_eq!(s.put_aside(all.clone(), 4, t0), all);
        s.went_silent('b', t0);
        assert!(s.is_silent(&'b', t0 + ms(59_999)));
        assert_eq!(s.put_aside(all.clone(), 4, t0), vec!['a', 'c', 'd', 'e']);
        // Too few would remain: everyone is asked.
        s.went_silent('d', t0 + ms(10));
        assert_eq!(s.silent(t0 + ms(20)), vec!['b', 'd']);
        assert_eq!(s.put_aside(all.clone(), 4, t0 + ms(20)), all);
        assert_eq!(
            s.put_aside(all.clone(), 3, t0 + ms(20)),
            vec!['a', 'c', 'e']
        );
        // An answer clears at once; the other mark fades after SILENT_FOR.
        s.answered(&'d');
        assert_eq!(
            s.put_aside(all.clone(), 4, t0 + ms(30)),
            vec!['a', 'c', 'd', 'e']
        );
        assert!(!s.is_silent(&'b', t0 + SILENT_FOR));
        assert_eq!(s.put_aside(all.clone(), 4, t0 + SILENT_FOR), all);
        // A new failure renews the mark.
        s.went_silent('b', t0 + ms(50_000));
        assert!(s.is_silent(&'b', t0 + ms(100_000)));
        // Faded marks are forgotten when a new one is made.
        s.went_silent('c', t0 + ms(200_000));
        assert_eq!(s.since.keys().copied().collect::<Vec<_>>(), vec!['c']);
    }

    proptest! {
        #![proptest_config(crate::prop::cases(256))]

        /// Whatever the answers, the start is never before the answer that made `k` shares
        /// known, and more answers never make it come sooner.
        #[test]
        fn the_start_is_after_enough_answers_and_more_answers_never_bring_it_forward(
            raw in proptest::collection::vec(
                (proptest::collection::vec(0u8..10, 0..4), 0u64..5_000), 0..12),
            needed in 1u8..6,
        ) {
            let mut raw = raw;
            raw.sort_by_key(|(_, t)| *t);
            let answers: Vec<(&[u8], Duration)> =
                raw.iter().map(|(s, t)| (s.as_slice(), ms(*t))).collect();
            let mut first: Option<Duration> = None;
            for n in 0..=answers.len() {
                let got = start_after(&answers[..n], needed);
                let known: BTreeSet<u8> =
                    answers[..n].iter().flat_map(|(s, _)| s.iter().copied()).collect();
                prop_assert_eq!(got.is_some(), known.len() >= usize::from(needed));
                match (got, first) {
                    (Some(at), None) => {
                        // This answer made enough shares known.
                        let enough = answers[n - 1].1;
                        prop_assert!(at >= enough && at <= about_as_fast(enough));
                        first = Some(at);
                    }
                    (Some(at), Some(was)) => prop_assert_eq!(at, was, "a later answer moved it"),
                    _ => {}
                }
            }
        }

        /// The hedge delay stays between the floor and the factor times the largest block
        /// time seen.
        #[test]
        fn the_hedge_delay_is_bounded_by_the_blocks_seen(
            took in proptest::collection::vec(0u64..10_000, 1..50),
        ) {
            let mut t = BlockTimes::default();
            for &d in &took {
                t.observe(ms(d));
            }
            let max = ms(*took.iter().max().unwrap_or(&0));
            prop_assert!(t.hedge_after() >= HEDGE_FLOOR);
            prop_assert!(t.hedge_after() <= (max * HEDGE_FACTOR).max(HEDGE_FLOOR));
        }

        /// Putting silent servers aside keeps the order, never drops a server heard from,
        /// and never leaves fewer than `keep` unless there were fewer to begin with.
        #[test]
        fn put_aside_keeps_enough_servers_and_every_one_heard_from(
            marks in proptest::collection::vec((0u8..12, 0u64..120_000, any::<bool>()), 0..30),
            servers in proptest::collection::btree_set(0u8..12, 0..12),
            keep in 0usize..12,
            at in 0u64..200_000,
        ) {
            let t0 = Instant::now();
            let mut s: Silent<u8> = Silent::default();
            let mut marks = marks;
            marks.sort_by_key(|m| m.1);
            for (k, t, answered) in marks {
                if answered { s.answered(&k) } else { s.went_silent(k, t0 + ms(t)) }
            }
            let now = t0 + ms(at);
            let servers: Vec<u8> = servers.into_iter().collect();
            let kept = s.put_aside(servers.clone(), keep, now);
            prop_assert!(kept.len() >= keep.min(servers.len()));
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(kept.iter().all(|k| servers.contains(k)));
            for k in &servers {
                if !s.is_silent(k, now) {
                    prop_assert!(kept.contains(k));
                }
            }
            if kept.len() < servers.len() {
                prop_assert!(kept.iter().all(|k| !s.is_silent(k, now)));
            }
        }
    }
}

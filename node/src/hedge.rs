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
//!   that at once, and so does a listing's late answer (listings run on their own tasks);
//!   a late answer to another request given up on does not (it was not waited for). Checks
//!   ask silent servers but wait for them only as long as the others took.
//!
//! - **Laggards**: a large upload sends every segment's blocks to every server with a share,
//!   a few blocks queued per server, so the slowest server sets the pace of all of them. A
//!   server that has held the upload back for [`LAG_FLOOR`] in all and takes at least
//!   [`LAG_FACTOR`] times as long per block as the others needed for happiness (or has left a
//!   block unanswered that long) is a laggard ([`Pace::laggards`]): the upload leaves its
//!   shares behind when the rest still reach `happy`, and the file is placed at the pace of
//!   the others, one share short per laggard until a repair places it. A friend on a slow home
//!   link or behind Tor no longer sets every large upload's speed; a server that hangs
//!   mid-upload costs about two seconds instead of a write's timeout. A laggard is then
//!   *lagging* for [`LAGGING_FOR`] (a [`Silent`] whose marks answers do not clear): later
//!   uploads and repairs put it aside while enough others remain, so the repair places the
//!   share it was left behind with on a faster server, and the next large upload does not pay
//!   the two seconds of measuring it again.
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

/// How long a server an upload left behind as a laggard ([`Pace::laggards`]) is put aside by
/// later uploads and repairs (a [`Silent::fading_after`] mark that answers do not clear: a
/// slow server answers, slowly). Its friend's link is not going to be faster a minute later;
/// after this, the next large upload measures it again.
pub const LAGGING_FOR: Duration = Duration::from_secs(10 * 60);

/// Servers that recently left a request unanswered (a straggler cut off, a request that
/// failed or timed out), each with when it last did. An answer to a later request clears a
/// server at once; the mark fades after [`SILENT_FOR`], so a server that came back without
/// being asked anything is tried again by the next operation (which costs that operation at
/// most its straggler wait if it is still hung).
#[derive(Clone, Debug)]
pub struct Silent<K> {
    since: BTreeMap<K, Instant>,
    fade: Duration,
}

impl<K> Default for Silent<K> {
    fn default() -> Self {
        Silent::fading_after(SILENT_FOR)
    }
}

impl<K> Silent<K> {
    /// Marks that fade `fade` after they were set (the default: [`SILENT_FOR`]).
    pub fn fading_after(fade: Duration) -> Self {
        Silent {
            since: BTreeMap::new(),
            fade,
        }
    }
}

impl<K: Ord + Clone> Silent<K> {
    /// `server` left a request unanswered at `now` (marks that faded are forgotten).
    pub fn went_silent(&mut self, server: K, now: Instant) {
        let fade = self.fade;
        self.since
            .retain(|_, t| now.saturating_duration_since(*t) < fade);
        self.since.insert(server, now);
    }

    /// `server` answered: it is not silent any more.
    pub fn answered(&mut self, server: &K) {
        self.since.remove(server);
    }

    /// Whether `server` left a request unanswered less than [`SILENT_FOR`] (the fade) before
    /// `now`.
    pub fn is_silent(&self, server: &K, now: Instant) -> bool {
        self.since
            .get(server)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.fade)
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

    /// The typical block time so far (`None` before the first block).
    pub fn typical(&self) -> Option<Duration> {
        self.typical
    }

    /// How long a segment's blocks may take before a spare share is read too.
    pub fn hedge_after(&self) -> Duration {
        match self.typical {
            None => HEDGE_FIRST,
            Some(t) => (t * HEDGE_FACTOR).max(HEDGE_FLOOR),
        }
    }
}

/// An upload leaves a server behind only once it has waited on it this long in all...
pub const LAG_FLOOR: Duration = Duration::from_secs(2);
/// ... and that server takes this many times as long per block as the reference server (or
/// has left a block unanswered that long, and at least [`LAG_FLOOR`]).
pub const LAG_FACTOR: u32 = 4;

/// One server's writes in an upload.
#[derive(Clone, Copy, Debug, Default)]
struct Lane {
    in_flight: u32,
    /// Since when it has had a write in flight without a break.
    busy_since: Option<Instant>,
    /// Time with a write in flight, stretches that ended.
    busy: Duration,
    /// Writes answered.
    done: u64,
    /// When it last answered.
    last_answer: Option<Instant>,
    /// How long the upload waited for room in its queue.
    waited: Duration,
}

impl Lane {
    fn busy_until(&self, now: Instant) -> Duration {
        self.busy
            + self
                .busy_since
                .map_or(Duration::ZERO, |b| now.saturating_duration_since(b))
    }

    /// Time per answered write while it had writes in flight (a server the upload keeps busy
    /// overlaps two writes, so this is its throughput, not its latency).
    fn per_block(&self, now: Instant) -> Duration {
        self.busy_until(now) / u32::try_from(self.done.max(1)).unwrap_or(u32::MAX)
    }

    /// How long its oldest unanswered write has gone without any answer.
    fn stalled(&self, now: Instant) -> Duration {
        let Some(since) = self.busy_since else {
            return Duration::ZERO;
        };
        let from = self.last_answer.map_or(since, |a| a.max(since));
        now.saturating_duration_since(from)
    }
}

/// How fast each server of an upload takes its blocks; see the module docs.
#[derive(Clone, Debug)]
pub struct Pace<K> {
    lanes: BTreeMap<K, Lane>,
}

impl<K: Ord + Clone> Pace<K> {
    /// An upload writing to `servers`.
    pub fn new(servers: impl IntoIterator<Item = K>) -> Self {
        Pace {
            lanes: servers.into_iter().map(|k| (k, Lane::default())).collect(),
        }
    }

    /// A write went to `server` at `now`.
    pub fn sent(&mut self, server: &K, now: Instant) {
        if let Some(l) = self.lanes.get_mut(server) {
            if l.in_flight == 0 {
                l.busy_since = Some(now);
            }
            l.in_flight += 1;
        }
    }

    /// `server` answered a write at `now` (success or error alike: it answered).
    pub fn answered(&mut self, server: &K, now: Instant) {
        if let Some(l) = self.lanes.get_mut(server) {
            l.done += 1;
            l.last_answer = Some(now);
            l.in_flight = l.in_flight.saturating_sub(1);
            if l.in_flight == 0
                && let Some(b) = l.busy_since.take()
            {
                l.busy += now.saturating_duration_since(b);
            }
        }
    }

    /// The upload waited `d` for room in `server`'s queue.
    pub fn waited(&mut self, server: &K, d: Duration) {
        if let Some(l) = self.lanes.get_mut(server) {
            l.waited += d;
        }
    }

    /// The upload stopped writing to `server`.
    pub fn remove(&mut self, server: &K) {
        self.lanes.remove(server);
    }

    /// How long `server`'s oldest unanswered write has gone without any answer from it.
    pub fn stalled(&self, server: &K, now: Instant) -> Duration {
        self.lanes
            .get(server)
            .map_or(Duration::ZERO, |l| l.stalled(now))
    }

    /// The servers the upload would go at least [`LAG_FACTOR`] times faster without, slowest
    /// first: waited on for [`LAG_FLOOR`] in all, and slower per block (or stalled longer)
    /// than `LAG_FACTOR` times the `keep`-th fastest server. The caller leaves them behind
    /// while the others still make the upload happy. None while the reference server has
    /// answered nothing (no measure yet), or when there are no more than `keep` servers.
    pub fn laggards(&self, keep: usize, now: Instant) -> Vec<K> {
        let mut speeds: Vec<(Duration, &K, &Lane)> = self
            .lanes
            .iter()
            .map(|(k, l)| (l.per_block(now).max(l.stalled(now)), k, l))
            .collect();
        speeds.sort_by_key(|&(t, _, _)| t);
        let keep = keep.max(1);
        let Some(&(reference, _, ref_lane)) = speeds.get(keep - 1) else {
            return Vec::new();
        };
        if speeds.len() <= keep || ref_lane.done == 0 {
            return Vec::new();
        }
        let bar = reference * LAG_FACTOR;
        speeds[keep..]
            .iter()
            .rev()
            .filter(|(_, _, l)| l.waited >= LAG_FLOOR)
            .filter(|(_, _, l)| l.per_block(now) >= bar || l.stalled(now) >= bar.max(LAG_FLOOR))
            .map(|(_, k, _)| (*k).clone())
            .collect()
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

    #[test]
    fn a_lagging_mark_lasts_its_own_fade() {
        let t0 = Instant::now();
        let mut lagging: Silent<char> = Silent::fading_after(LAGGING_FOR);
        lagging.went_silent('b', t0);
        assert!(lagging.is_silent(&'b', t0 + SILENT_FOR * 5));
        assert!(!lagging.is_silent(&'b', t0 + LAGGING_FOR));
        // A faded mark is forgotten by the next one, not before.
        lagging.went_silent('c', t0 + ms(1));
        assert_eq!(lagging.since.len(), 2);
        lagging.went_silent('d', t0 + LAGGING_FOR);
        assert_eq!(
            lagging.since.keys().copied().collect::<Vec<_>>(),
            vec!['c', 'd']
        );
    }

    /// Drives a `Pace`: every `every` ms each listed server answers its write and gets the
    /// next, the upload waiting `waits` ms on `slow` each time.
    fn drive(
        p: &mut Pace<char>,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
        lanes: &[(char, u64)],
        slow: char,
    ) {
        for t in from_ms..to_ms {
            for &(k, every) in lanes {
                if t % every == 0 {
                    p.answered(&k, t0 + ms(t));
                    p.sent(&k, t0 + ms(t));
                }
            }
            p.waited(&slow, ms(1));
        }
    }

    /// Servers a to e, each with `writes` writes sent at `t0`.
    fn five_sent(t0: Instant, writes: usize) -> Pace<char> {
        let servers = ['a', 'b', 'c', 'd', 'e'];
        let mut p = Pace::new(servers);
        for k in servers {
            for _ in 0..writes {
                p.sent(&k, t0);
            }
        }
        p
    }

    #[test]
    fn a_server_far_slower_than_the_others_needed_is_a_laggard_once_it_held_the_upload_long_enough()
    {
        let t0 = Instant::now();
        let mut p = five_sent(t0, 1);
        let lanes = [('a', 10), ('b', 10), ('c', 12), ('d', 10), ('e', 100)];
        drive(&mut p, t0, 1, 1_900, &lanes, 'e');
        // Ten times slower, but the upload has waited on it less than LAG_FLOOR.
        assert_eq!(p.laggards(3, t0 + ms(1_900)), Vec::<char>::new());
        drive(&mut p, t0, 1_900, 2_500, &lanes, 'e');
        assert_eq!(p.laggards(3, t0 + ms(2_500)), vec!['e']);
        // Nobody is left behind when every server is needed.
        assert_eq!(p.laggards(5, t0 + ms(2_500)), Vec::<char>::new());
        p.remove(&'e');
        assert_eq!(p.laggards(3, t0 + ms(2_500)), Vec::<char>::new());
    }

    #[test]
    fn servers_all_slow_alike_or_a_little_slower_or_briefly_stalled_are_not_laggards() {
        let t0 = Instant::now();
        // The uploader's own link is the bottleneck: everyone is slow alike.
        let mut p = five_sent(t0, 1);
        let alike = [('a', 90), ('b', 100), ('c', 110), ('d', 100), ('e', 120)];
        drive(&mut p, t0, 1, 10_000, &alike, 'e');
        assert_eq!(p.laggards(3, t0 + ms(10_000)), Vec::<char>::new());
        // Three times slower: not enough to give up a share for.
        let mut p = five_sent(t0, 1);
        let lanes = [('a', 10), ('b', 10), ('c', 10), ('d', 10), ('e', 30)];
        drive(&mut p, t0, 1, 10_000, &lanes, 'e');
        assert_eq!(p.laggards(3, t0 + ms(10_000)), Vec::<char>::new());
        // A second's stall after that: its mean and its stall both stay under the bars.
        drive(&mut p, t0, 10_000, 11_000, &lanes[..4], 'e');
        assert_eq!(p.stalled(&'e', t0 + ms(11_000)), ms(1_010));
        assert_eq!(p.laggards(3, t0 + ms(11_000)), Vec::<char>::new());
    }

    #[test]
    fn a_server_that_stops_answering_mid_upload_is_a_laggard_after_the_floor() {
        let t0 = Instant::now();
        let mut p = five_sent(t0, 2);
        let all = [('a', 10), ('b', 10), ('c', 10), ('d', 10), ('e', 10)];
        drive(&mut p, t0, 1, 20_000, &all, 'a');
        // 'e' hangs: two writes in flight, never answered; the upload waits on it.
        drive(&mut p, t0, 20_000, 21_900, &all[..4], 'e');
        assert!(p.laggards(4, t0 + ms(21_900)).is_empty());
        drive(&mut p, t0, 21_900, 22_100, &all[..4], 'e');
        assert_eq!(p.stalled(&'e', t0 + ms(22_100)), ms(2_110));
        assert_eq!(p.laggards(4, t0 + ms(22_100)), vec!['e']);
        // Before any server answered there is no reference.
        let mut p = five_sent(t0, 1);
        for k in ['a', 'b', 'c', 'd', 'e'] {
            p.waited(&k, ms(5_000));
        }
        assert!(p.laggards(1, t0 + ms(5_000)).is_empty());
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

        /// Whatever the timings, at most all but `keep` servers are laggards, each one the
        /// upload waited on for the floor, and `keep` servers kept are no slower than it.
        #[test]
        fn laggards_leave_keep_servers_and_are_all_slower_than_every_server_kept(
            events in proptest::collection::vec((0u8..6, 0u8..3, 1u64..400), 0..300),
            keep in 0usize..7,
        ) {
            let t0 = Instant::now();
            let mut p: Pace<u8> = Pace::new(0u8..6);
            let mut now = t0;
            let mut in_flight = [0u32; 6];
            for (k, what, dt) in events {
                now += ms(dt);
                match what {
                    0 => {
                        p.sent(&k, now);
                        in_flight[usize::from(k)] += 1;
                    }
                    1 if in_flight[usize::from(k)] > 0 => {
                        p.answered(&k, now);
                        in_flight[usize::from(k)] -= 1;
                    }
                    _ => p.waited(&k, ms(dt * 10)),
                }
            }
            let lag = p.laggards(keep, now);
            prop_assert!(lag.len() <= 6usize.saturating_sub(keep.max(1)));
            let speed = |k: &u8| {
                let l = &p.lanes[k];
                l.per_block(now).max(l.stalled(now))
            };
            for k in &lag {
                prop_assert!(p.lanes[k].waited >= LAG_FLOOR);
                let no_slower = (0u8..6)
                    .filter(|o| !lag.contains(o) && speed(o) <= speed(k))
                    .count();
                prop_assert!(no_slower >= keep.max(1));
            }
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

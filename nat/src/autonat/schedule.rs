//! Which candidate address to test next, with which server, and what an answer means: the
//! decisions of kith's AutoNAT v2 client, without IO, clocks or RNG (`now_ms` and the random
//! numbers come in as arguments), so they can be property-tested.
//!
//! Where libp2p-autonat 0.16's client differs (and why kith has its own):
//! - an address a server could not reach is tested again, after [`RETRY_UNREACHABLE_MS`]
//!   doubling up to [`MAX_RETRY_UNREACHABLE_MS`], preferably by another server (libp2p never
//!   tests it again: one flaky dial-back, or one member that cannot dial the family, and a
//!   reachable address stays unconfirmed for the whole run);
//! - an error (timeout, refusal, a stream that broke) waits [`RETRY_ERROR_MS`] doubling up to
//!   [`MAX_RETRY_ERROR_MS`] (libp2p retries at the next tick, so an address behind a strict
//!   NAT, which every dial-back times out on, is probed every few seconds for ever);
//! - a test whose outcome never comes (its connection closed) counts as an error after
//!   [`PENDING_TIMEOUT_MS`] (libp2p leaves it pending for ever);
//! - at most [`MAX_CANDIDATES`] addresses are remembered (libp2p keeps every observed address;
//!   behind a strict NAT each connection brings a new port);
//! - a confirmed address is tested again every [`REVERIFY_MS`]; two "unreachable" answers in
//!   a row take it back ([`Verdict::Expired`]): a mapping the router dropped is no longer
//!   announced;
//! - an address can be [forgotten](Schedule::forget) (its external address expired), so a
//!   later report tests it afresh.

use std::collections::BTreeMap;

/// Addresses remembered at once; a new one beyond this replaces the least reported address
/// that is neither being tested nor confirmed.
pub const MAX_CANDIDATES: usize = 16;
/// Tests in flight at once.
pub const MAX_PENDING: usize = 4;
/// First wait before testing again an address a server could not reach.
pub const RETRY_UNREACHABLE_MS: u64 = 60_000;
/// Longest such wait.
pub const MAX_RETRY_UNREACHABLE_MS: u64 = 3_600_000;
/// First wait after an error (timeout, refusal, broken stream).
pub const RETRY_ERROR_MS: u64 = 5_000;
/// Longest such wait.
pub const MAX_RETRY_ERROR_MS: u64 = 600_000;
/// A test without an outcome this long counts as an error.
pub const PENDING_TIMEOUT_MS: u64 = 30_000;
/// How often a confirmed address is tested again.
pub const REVERIFY_MS: u64 = 1_800_000;
/// "Unreachable" answers in a row that take a confirmed address back.
pub const EXPIRE_AFTER: u32 = 2;

/// What a server answered (or what became of the test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server says it dialed the address back (believed only if the dial-back arrived).
    Reachable,
    /// The server could not connect to the address, or the dial-back stream failed.
    Unreachable,
    /// No answer about the address: timeout, refusal, internal error, broken stream.
    Error,
    /// The server does not speak the protocol after all: try another at once.
    Unsupported,
}

/// What a finished test changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<A> {
    /// Nothing to tell the swarm.
    None,
    /// The address is confirmed reachable (first time, or again after being taken back).
    Confirmed(A),
    /// A confirmed address failed [`EXPIRE_AFTER`] re-tests in a row.
    Expired(A),
}

/// A test to run: ask `server` to dial `addr` back with `nonce`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe<A, S> {
    /// The address to test.
    pub addr: A,
    /// Who to ask.
    pub server: S,
    /// The nonce the dial-back must carry.
    pub nonce: u64,
}

/// Where a candidate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status<S> {
    /// Never tested (or forgotten and reported again).
    Untested,
    /// A server is testing it.
    Pending {
        /// The test's nonce.
        nonce: u64,
        /// The server asked.
        server: S,
        /// When it was asked.
        since_ms: u64,
        /// Whether the dial-back with this nonce arrived.
        dialed_back: bool,
    },
    /// Waiting to be tested (again) at `until_ms`.
    Waiting {
        /// When it is due.
        until_ms: u64,
    },
}

#[derive(Clone, Debug)]
struct Candidate<S> {
    /// How often it was reported.
    score: u32,
    status: Status<S>,
    /// Confirmed (and not taken back since).
    confirmed: bool,
    /// "Unreachable" answers in a row.
    unreachable: u32,
    /// Errors in a row.
    errors: u32,
    /// The server that last found it unreachable (asked again only when no other is there).
    failed_by: Option<S>,
    /// Tests finished.
    tests: u32,
    /// The last test's outcome.
    last: Option<Outcome>,
}

/// One candidate, as `kith status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<A> {
    /// The address.
    pub addr: A,
    /// Confirmed reachable (and not taken back since).
    pub confirmed: bool,
    /// A test is under way.
    pub testing: bool,
    /// The last test's outcome.
    pub last: Option<Outcome>,
    /// Tests finished.
    pub tests: u32,
    /// When the next test is due, from now (none while testing).
    pub next_in_ms: Option<u64>,
}

/// The client's candidates and their tests. `A` is an address, `S` a server.
#[derive(Clone, Debug)]
pub struct Schedule<A, S> {
    candidates: BTreeMap<A, Candidate<S>>,
}

impl<A, S> Default for Schedule<A, S> {
    fn default() -> Self {
        Self {
            candidates: BTreeMap::new(),
        }
    }
}

fn backoff(first: u64, max: u64, n: u32) -> u64 {
    first
        .saturating_mul(1u64 << n.saturating_sub(1).min(20))
        .min(max)
}

impl<A: Clone + Ord, S: Clone + Eq> Schedule<A, S> {
    /// An empty schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// `addr` was reported as a candidate (again). Returns whether it is remembered.
    pub fn add(&mut self, addr: A) -> bool {
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.score = c.score.saturating_add(1);
            return true;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // The least reported address not under test and not confirmed makes room.
            let victim = self
                .candidates
                .iter()
                .filter(|(_, c)| !c.confirmed && !matches!(c.status, Status::Pending { .. }))
                .min_by_key(|(_, c)| c.score)
                .map(|(a, _)| a.clone());
            match victim {
                Some(v) => {
                    self.candidates.remove(&v);
                }
                None => return false,
            }
        }
        self.candidates.insert(
            addr,
            Candidate {
                score: 1,
                status: Status::Untested,
                confirmed: false,
                unreachable: 0,
                errors: 0,
                failed_by: None,
                tests: 0,
                last: None,
            },
        );
        true
    }

    /// `addr` should be tested at the next tick whatever its past (a router just mapped it:
    /// earlier failures as an observed address say nothing about the mapping). Returns
    /// whether it is remembered. A test under way is left to finish.
    pub fn test_now(&mut self, addr: A) -> bool {
        if !self.add(addr.clone()) {
            return false;
        }
        if let Some(c) = self.candidates.get_mut(&addr)
            && !matches!(c.status, Status::Pending { .. })
        {
            c.status = Status::Untested;
            c.unreachable = 0;
            c.errors = 0;
            c.failed_by = None;
        }
        true
    }

    /// Forgets `addr` (its external address expired, or it is no longer ours): a later report
    /// tests it afresh. An outcome of a test under way is then ignored.
    pub fn forget(&mut self, addr: &A) {
        self.candidates.remove(addr);
    }

    /// The tests to start now, given the servers able to test (in any order; `random()`
    /// gives the nonces and picks the servers). Tests that waited too long for an outcome
    /// count as errors first.
    pub fn due(
        &mut self,
        now_ms: u64,
        servers: &[S],
        random: &mut impl FnMut() -> u64,
    ) -> Vec<Probe<A, S>> {
        let stale: Vec<u64> = self
            .candidates
            .values()
            .filter_map(|c| match c.status {
                Status::Pending {
                    nonce, since_ms, ..
                } if now_ms.saturating_sub(since_ms) >= PENDING_TIMEOUT_MS => Some(nonce),
                _ => None,
            })
            .collect();
        for n in stale {
            self.outcome(n, Outcome::Error, now_ms);
        }
        if servers.is_empty() {
            return Vec::new();
        }
        let pending = self
            .candidates
            .values()
            .filter(|c| matches!(c.status, Status::Pending { .. }))
            .count();
        let mut ready: Vec<(&A, u32)> = self
            .candidates
            .iter()
            .filter(|(_, c)| match c.status {
                Status::Untested => true,
                Status::Waiting { until_ms } => until_ms <= now_ms,
                Status::Pending { .. } => false,
            })
            .map(|(a, c)| (a, c.score))
            .collect();
        // Most reported first; ties in address order (the map's).
        ready.sort_by_key(|(_, score)| std::cmp::Reverse(*score));
        let chosen: Vec<A> = ready
            .into_iter()
            .take(MAX_PENDING.saturating_sub(pending))
            .map(|(a, _)| a.clone())
            .collect();
        let mut probes = Vec::with_capacity(chosen.len());
        for addr in chosen {
            let Some(c) = self.candidates.get_mut(&addr) else {
                continue;
            };
            let others: Vec<&S> = servers
                .iter()
                .filter(|s| c.failed_by.as_ref() != Some(*s))
                .collect();
            let mut pick = |n: usize| (random() % n as u64) as usize;
            let server = if others.is_empty() {
                servers[pick(servers.len())].clone()
            } else {
                others[pick(others.len())].clone()
            };
            let n = random();
            c.status = Status::Pending {
                nonce: n,
                server: server.clone(),
                since_ms: now_ms,
                dialed_back: false,
            };
            probes.push(Probe {
                addr,
                server,
                nonce: n,
            });
        }
        probes
    }

    /// A dial-back carrying `nonce` arrived. Returns whether a test is waiting for it (only
    /// then is the dial-back answered as successful).
    pub fn dialed_back(&mut self, nonce: u64) -> bool {
        self.candidates.values_mut().any(|c| match &mut c.status {
            Status::Pending {
                nonce: n,
                dialed_back,
                ..
            } if *n == nonce => {
                *dialed_back = true;
                true
            }
            _ => false,
        })
    }

    /// The test with `nonce` ended with `outcome`. "Reachable" without the dial-back having
    /// arrived is an error (a server cannot vouch for what this node did not see).
    pub fn outcome(&mut self, nonce: u64, outcome: Outcome, now_ms: u64) -> Verdict<A> {
        let Some((addr, c)) = self
            .candidates
            .iter_mut()
            .find(|(_, c)| matches!(&c.status, Status::Pending { nonce: n, .. } if *n == nonce))
        else {
            return Verdict::None;
        };
        let Status::Pending {
            server,
            dialed_back,
            ..
        } = c.status.clone()
        else {
            return Verdict::None;
        };
        let outcome = match outcome {
            Outcome::Reachable if !dialed_back => Outcome::Error,
            o => o,
        };
        c.tests = c.tests.saturating_add(1);
        c.last = Some(outcome);
        match outcome {
            Outcome::Reachable => {
                c.unreachable = 0;
                c.errors = 0;
                c.failed_by = None;
                c.status = Status::Waiting {
                    until_ms: now_ms.saturating_add(REVERIFY_MS),
                };
                if !c.confirmed {
                    c.confirmed = true;
                    return Verdict::Confirmed(addr.clone());
                }
                Verdict::None
            }
            Outcome::Unreachable => {
                c.errors = 0;
                c.unreachable = c.unreachable.saturating_add(1);
                c.failed_by = Some(server);
                let wait = backoff(
                    RETRY_UNREACHABLE_MS,
                    MAX_RETRY_UNREACHABLE_MS,
                    c.unreachable,
                );
                c.status = Status::Waiting {
                    until_ms: now_ms.saturating_add(wait),
                };
                if c.confirmed && c.unreachable >= EXPIRE_AFTER {
                    c.confirmed = false;
                    return Verdict::Expired(addr.clone());
                }
                Verdict::None
            }
            Outcome::Error => {
                c.errors = c.errors.saturating_add(1);
                let wait = backoff(RETRY_ERROR_MS, MAX_RETRY_ERROR_MS, c.errors);
                c.status = Status::Waiting {
                    until_ms: now_ms.saturating_add(wait),
                };
                Verdict::None
            }
            Outcome::Unsupported => {
                c.status = Status::Waiting { until_ms: now_ms };
                Verdict::None
            }
        }
    }

    /// Every candidate, most reported first.
    pub fn report(&self, now_ms: u64) -> Vec<Report<A>> {
        let mut v: Vec<(&A, &Candidate<S>)> = self.candidates.iter().collect();
        v.sort_by_key(|(_, c)| std::cmp::Reverse(c.score));
        v.into_iter()
            .map(|(a, c)| Report {
                addr: a.clone(),
                confirmed: c.confirmed,
                testing: matches!(c.status, Status::Pending { .. }),
                last: c.last,
                tests: c.tests,
                next_in_ms: match c.status {
                    Status::Untested => Some(0),
                    Status::Waiting { until_ms } => Some(until_ms.saturating_sub(now_ms)),
                    Status::Pending { .. } => None,
                },
            })
            .collect()
    }

    /// Whether a test with `nonce` is under way.
    pub fn is_pending(&self, nonce: u64) -> bool {
        self.candidates
            .values()
            .any(|c| matches!(c.status, Status::Pending { nonce: n, .. } if n == nonce))
    }

    /// Where `addr` stands, if it is remembered.
    pub fn status(&self, addr: &A) -> Option<&Status<S>> {
        self.candidates.get(addr).map(|c| &c.status)
    }

    /// Whether `addr` is confirmed.
    pub fn is_confirmed(&self, addr: &A) -> bool {
        self.candidates.get(addr).is_some_and(|c| c.confirmed)
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    type Sched = Schedule<u32, char>;

    /// Each probe draws a server pick, then a nonce: the pick is always 0 (the first allowed
    /// server), nonces count up from `now * 1000`.
    fn run(s: &mut Sched, now: u64, servers: &[char]) -> Vec<Probe<u32, char>> {
        let mut n = now * 1000;
        let mut pick_next = false;
        s.due(now, servers, &mut || {
            pick_next = !pick_next;
            if pick_next {
                return 0;
            }
            n += 1;
            n
        })
    }

    /// The fix over libp2p's client: an address one server could not reach is tested again,
    /// by another server, after the back-off; a reachable one is confirmed then.
    #[test]
    fn an_address_a_server_failed_is_tested_again_by_another_server() {
        let mut s = Sched::new();
        s.add(7);
        let p = run(&mut s, 0, &['b', 'r']);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].server, 'b');
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Unreachable, 100),
            Verdict::None
        );
        assert!(
            run(&mut s, RETRY_UNREACHABLE_MS, &['b', 'r']).is_empty(),
            "waits"
        );
        let p = run(&mut s, RETRY_UNREACHABLE_MS + 100, &['b', 'r']);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].server, 'r', "not the server that failed it");
        assert!(s.dialed_back(p[0].nonce));
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Reachable, RETRY_UNREACHABLE_MS + 200),
            Verdict::Confirmed(7)
        );
        assert!(s.is_confirmed(&7));
    }

    /// A server that says "reachable" without the dial-back having arrived is not believed,
    /// and a dial-back with a nonce nobody waits for is refused.
    #[test]
    fn reachable_without_a_dial_back_is_an_error() {
        let mut s = Sched::new();
        s.add(1);
        let p = run(&mut s, 0, &['r']);
        assert!(!s.dialed_back(p[0].nonce + 1));
        assert_eq!(s.outcome(p[0].nonce, Outcome::Reachable, 10), Verdict::None);
        assert!(!s.is_confirmed(&1));
        assert_eq!(
            s.status(&1),
            Some(&Status::Waiting {
                until_ms: 10 + RETRY_ERROR_MS
            })
        );
    }

    /// Errors back off (a strict NAT's addresses are not probed every tick for ever); a test
    /// whose outcome never comes counts as one.
    #[test]
    fn errors_back_off_and_lost_tests_time_out() {
        let mut s = Sched::new();
        s.add(1);
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let p = run(&mut s, now, &['r']);
            assert_eq!(p.len(), 1);
            s.outcome(p[0].nonce, Outcome::Error, now);
            let Some(Status::Waiting { until_ms }) = s.status(&1).cloned() else {
                panic!("waiting")
            };
            waits.push(until_ms - now);
            now = until_ms;
        }
        assert_eq!(waits[0], RETRY_ERROR_MS);
        assert_eq!(waits[1], 2 * RETRY_ERROR_MS);
        assert_eq!(*waits.last().unwrap(), MAX_RETRY_ERROR_MS);
        // Lost: no outcome at all.
        let p = run(&mut s, now, &['r']);
        assert_eq!(p.len(), 1);
        assert!(run(&mut s, now + PENDING_TIMEOUT_MS - 1, &['r']).is_empty());
        run(&mut s, now + PENDING_TIMEOUT_MS, &['r']);
        assert!(matches!(s.status(&1), Some(Status::Waiting { .. })));
    }

    /// A confirmed address is tested again every REVERIFY_MS; two failures in a row take it
    /// back, a later success confirms it again.
    #[test]
    fn a_confirmed_address_that_stops_working_expires() {
        let mut s = Sched::new();
        s.add(5);
        let p = run(&mut s, 0, &['r']);
        s.dialed_back(p[0].nonce);
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Reachable, 0),
            Verdict::Confirmed(5)
        );
        assert!(run(&mut s, REVERIFY_MS - 1, &['r']).is_empty());
        let mut now = REVERIFY_MS;
        let p = run(&mut s, now, &['r']);
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Unreachable, now),
            Verdict::None
        );
        assert!(s.is_confirmed(&5), "one failure is not enough");
        now += RETRY_UNREACHABLE_MS;
        let p = run(&mut s, now, &['r']);
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Unreachable, now),
            Verdict::Expired(5)
        );
        now += 2 * RETRY_UNREACHABLE_MS;
        let p = run(&mut s, now, &['r']);
        s.dialed_back(p[0].nonce);
        assert_eq!(
            s.outcome(p[0].nonce, Outcome::Reachable, now),
            Verdict::Confirmed(5)
        );
    }

    /// The report says what `kith status` needs: last outcome, tests, when the next one is.
    #[test]
    fn the_report_tells_the_last_outcome_and_the_next_test() {
        let mut s = Sched::new();
        s.add(9);
        s.add(9);
        s.add(4);
        let p = run(&mut s, 0, &['r']);
        let on9 = p.iter().find(|p| p.addr == 9).unwrap().nonce;
        s.outcome(on9, Outcome::Unreachable, 1_000);
        let r = s.report(11_000);
        assert_eq!(r[0].addr, 9, "most reported first");
        assert_eq!(r[0].last, Some(Outcome::Unreachable));
        assert_eq!(r[0].tests, 1);
        assert_eq!(r[0].next_in_ms, Some(RETRY_UNREACHABLE_MS - 10_000));
        assert!(!r[0].confirmed && !r[0].testing);
        assert!(r[1].testing && r[1].next_in_ms.is_none() && r[1].last.is_none());
    }

    /// A mapping made after its address failed is tested at the next tick, not after the
    /// back-off, and a later failure backs off from the start again.
    #[test]
    fn test_now_skips_the_back_off() {
        let mut s = Sched::new();
        s.add(2);
        let p = run(&mut s, 0, &['r']);
        s.outcome(p[0].nonce, Outcome::Unreachable, 0);
        assert!(run(&mut s, 1_000, &['r']).is_empty(), "backing off");
        assert!(s.test_now(2));
        let p = run(&mut s, 1_000, &['r']);
        assert_eq!(p.len(), 1);
        assert!(s.test_now(2));
        assert!(s.is_pending(p[0].nonce), "a test under way is kept");
        s.outcome(p[0].nonce, Outcome::Unreachable, 2_000);
        assert_eq!(
            s.status(&2),
            Some(&Status::Waiting {
                until_ms: 2_000 + RETRY_UNREACHABLE_MS
            })
        );
    }

    /// An outcome for a forgotten address is ignored; reported again, it is untested.
    #[test]
    fn a_forgotten_address_starts_afresh() {
        let mut s = Sched::new();
        s.add(3);
        let p = run(&mut s, 0, &['r']);
        s.forget(&3);
        assert_eq!(s.outcome(p[0].nonce, Outcome::Reachable, 1), Verdict::None);
        s.add(3);
        assert_eq!(s.status(&3), Some(&Status::Untested));
    }

    proptest! {
        /// The property libp2p's client lacks: whatever the answers, an address is never given
        /// up on. After any outcome it is due again within the longest back-off (or the
        /// re-verification period once confirmed), and a confirmed one keeps being re-tested.
        #[test]
        fn no_address_is_ever_given_up(outcomes in proptest::collection::vec(0u8..4, 1..60)) {
            let mut s = Sched::new();
            s.add(1);
            let mut now = 0u64;
            for o in outcomes {
                let p = run(&mut s, now, &['a', 'b']);
                prop_assert_eq!(p.len(), 1, "due at {}", now);
                let outcome = [Outcome::Reachable, Outcome::Unreachable, Outcome::Error, Outcome::Unsupported][o as usize];
                if outcome == Outcome::Reachable {
                    s.dialed_back(p[0].nonce);
                }
                s.outcome(p[0].nonce, outcome, now);
                let longest = MAX_RETRY_UNREACHABLE_MS.max(MAX_RETRY_ERROR_MS).max(REVERIFY_MS);
                let Some(Status::Waiting { until_ms }) = s.status(&1).cloned() else {
                    return Err(TestCaseError::fail("not waiting after an outcome"));
                };
                prop_assert!(until_ms <= now + longest);
                now = until_ms;
            }
        }

        /// Whatever happens: at most MAX_CANDIDATES remembered, at most MAX_PENDING tests in
        /// flight, never two tests of one address at once, every probe's server is one of
        /// those offered, and an address is confirmed only after a dial-back with its nonce.
        #[test]
        fn the_schedule_stays_bounded_and_honest(
            ops in proptest::collection::vec((0u8..5, 0u32..40, any::<u64>(), 0u64..100_000), 1..400),
        ) {
            let mut s = Sched::new();
            let servers = ['a', 'b', 'c'];
            let mut now = 0u64;
            let mut in_flight: Vec<(u64, u32)> = Vec::new();
            let mut backed: Vec<u64> = Vec::new();
            let mut seed = 1u64;
            for (op, x, r, dt) in ops {
                now += dt;
                match op {
                    0 => { s.add(x); }
                    1 => {
                        let n = servers.len().min(x as usize % 4);
                        let probes = s.due(now, &servers[..n], &mut || { seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407 ^ r); seed });
                        for p in probes {
                            prop_assert!(servers[..n].contains(&p.server));
                            in_flight.push((p.nonce, p.addr));
                        }
                    }
                    2 if !in_flight.is_empty() => {
                        let (nonce, _) = in_flight[x as usize % in_flight.len()];
                        if s.dialed_back(nonce) { backed.push(nonce); }
                    }
                    3 if !in_flight.is_empty() => {
                        let i = x as usize % in_flight.len();
                        let (nonce, addr) = in_flight.remove(i);
                        let o = [Outcome::Reachable, Outcome::Unreachable, Outcome::Error, Outcome::Unsupported][(r % 4) as usize];
                        if let Verdict::Confirmed(a) = s.outcome(nonce, o, now) {
                            prop_assert_eq!(a, addr);
                            prop_assert!(backed.contains(&nonce), "confirmed without its dial-back");
                        }
                    }
                    _ => { s.forget(&x); }
                }
                prop_assert!(s.len() <= MAX_CANDIDATES);
                let pending: Vec<&u32> = s.candidates.iter().filter(|(_, c)| matches!(c.status, Status::Pending { .. })).map(|(a, _)| a).collect();
                prop_assert!(pending.len() <= MAX_PENDING);
            }
        }
    }
}

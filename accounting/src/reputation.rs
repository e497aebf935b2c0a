//! Audit reputation: a beta reputation with forgetting, as Storj's audit score.
//!
//! Each audit of a peer that holds our shares ends in an [`Outcome`]. Passes and failures update
//! a pair `(α, β)` (Storj whitepaper v3, §4.15; Jøsang & Ismail, "The Beta Reputation System",
//! 2002):
//!
//! ```text
//! α ← λ·α + w·(1 + v)/2        v = +1 for a pass, -1 for a failure
//! β ← λ·β + w·(1 − v)/2
//! score = α / (α + β)          in [0, 1]
//! ```
//!
//! λ (the forgetting factor, default 0.95) makes old results fade: after many passes α tends to
//! `w / (1 − λ)` = 20, so one failure then moves the score to 0.95, two to about 0.90, three to
//! about 0.86. A new peer starts at α = 1, β = 0 (score 1: benefit of the doubt, as Storj).
//! [`Reputation::suspect`] flags a score below [`Params::suspect_below`] (default 0.9), which
//! takes two or three close failures from a peer with a good history, or one from a new peer,
//! and also any peer whose forgotten-weighted failures β are still at least
//! [`Params::suspect_recent_fail`] (0.5): a failure is conclusive, so one failure flags a
//! peer until about 14 clean audits have passed since.
//!
//! **Offline is not a failure.** A peer that did not answer because it is unreachable is counted
//! in [`Reputation::offline`] and leaves α and β untouched: a friend whose laptop is closed is not
//! accused of deleting shares. Only an answer that is wrong (a block that fails its Merkle proof)
//! or a refusal ("I don't have that share") is a [`Outcome::Fail`].
//!
//! The node feeds scores into placement (low scorers get fewer new shares) and the panel.

use serde::{Deserialize, Serialize};

/// The result of one audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The peer returned the challenged block with a valid Merkle proof in time.
    Pass,
    /// The peer answered wrongly: bad block or proof, or it no longer has the share.
    Fail,
    /// The peer could not be reached or did not answer before the deadline.
    Offline,
}

/// Reputation parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Forgetting factor λ in (0, 1].
    pub lambda: f64,
    /// Weight w > 0 of one audit.
    pub weight: f64,
    /// [`Reputation::suspect`] is true below this score.
    pub suspect_below: f64,
    /// ...and while the forgotten-weighted failures β are at least this. A failure is
    /// conclusive (a wrong block, or "I don't have it" for a share we hold a lease on; being
    /// offline never counts), so one recent failure makes a suspect however long the record of
    /// passes before it; with λ = 0.95 it takes 14 clean audits to clear. Without this rule
    /// a peer that deleted 1% of its shares, audited by many peers that each see about one
    /// failure, would never reach the score threshold (the accounting simulator showed 96%
    /// caught in 7 days instead of the 100% wanted).
    pub suspect_recent_fail: f64,
}

impl Params {
    /// The defaults: λ = 0.95, w = 1, suspect below 0.9 or with a failure among the last ~14 audits.
    pub const DEFAULT: Params = Params {
        lambda: 0.95,
        weight: 1.0,
        suspect_below: 0.9,
        suspect_recent_fail: 0.5,
    };
}

impl Default for Params {
    fn default() -> Self {
        Params::DEFAULT
    }
}

/// One peer's audit reputation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    /// Forgotten-weighted passes (starts at 1).
    pub alpha: f64,
    /// Forgotten-weighted failures (starts at 0).
    pub beta: f64,
    /// Audits passed, ever.
    pub passes: u64,
    /// Audits failed, ever.
    pub fails: u64,
    /// Audits the peer missed because it was offline, ever (not failures).
    pub offline: u64,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation {
            alpha: 1.0,
            beta: 0.0,
            passes: 0,
            fails: 0,
            offline: 0,
        }
    }
}

impl Reputation {
    /// Records one audit outcome with the default parameters.
    pub fn update(&mut self, outcome: Outcome) {
        self.update_with(outcome, &Params::DEFAULT);
    }

    /// Records one audit outcome. `Offline` only counts; it never changes α or β.
    pub fn update_with(&mut self, outcome: Outcome, params: &Params) {
        match outcome {
            Outcome::Pass => {
                self.alpha = params.lambda * self.alpha + params.weight;
                self.beta *= params.lambda;
                self.passes = self.passes.saturating_add(1);
            }
            Outcome::Fail => {
                self.alpha *= params.lambda;
                self.beta = params.lambda * self.beta + params.weight;
                self.fails = self.fails.saturating_add(1);
            }
            Outcome::Offline => self.offline = self.offline.saturating_add(1),
        }
    }

    /// α / (α + β), in [0, 1]; 1 for a peer never audited.
    pub fn score(&self) -> f64 {
        let total = self.alpha + self.beta;
        if total > 0.0 && total.is_finite() {
            (self.alpha / total).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }

    /// Whether the score is below the default threshold (0.9).
    pub fn suspect(&self) -> bool {
        self.suspect_with(&Params::DEFAULT)
    }

    /// Whether the score is below `params.suspect_below` or a failure is recent (β at least
    /// `params.suspect_recent_fail`).
    pub fn suspect_with(&self, params: &Params) -> bool {
        self.score() < params.suspect_below || self.beta >= params.suspect_recent_fail
    }

    /// Audits recorded, ever (passes + failures + offline).
    pub fn audits(&self) -> u64 {
        self.passes
            .saturating_add(self.fails)
            .saturating_add(self.offline)
    }

    /// Whether this is the state of a peer never audited.
    pub fn is_fresh(&self) -> bool {
        *self == Reputation::default()
    }

    /// Whether the values are usable (finite, non-negative α and β): checked on decode.
    pub fn is_valid(&self) -> bool {
        self.alpha.is_finite() && self.beta.is_finite() && self.alpha >= 0.0 && self.beta >= 0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn documented_numbers() {
        let mut r = Reputation::default();
        assert_eq!(r.score(), 1.0);
        for _ in 0..500 {
            r.update(Outcome::Pass);
        }
        assert!((r.alpha - 20.0).abs() < 1e-6);
        assert!(!r.suspect());
        r.update(Outcome::Fail);
        assert!((r.score() - 0.95).abs() < 1e-3, "{}", r.score());
        // The score alone would not flag it; the recent (conclusive) failure does.
        assert!(!r.suspect_with(&Params {
            suspect_recent_fail: f64::INFINITY,
            ..Params::DEFAULT
        }));
        assert!(r.suspect());
        r.update(Outcome::Fail);
        assert!((r.score() - 0.9025).abs() < 1e-3, "{}", r.score());
        r.update(Outcome::Fail);
        assert!(r.suspect(), "{}", r.score());
        // A new peer that fails at once is suspect.
        let mut new = Reputation::default();
        new.update(Outcome::Fail);
        assert!(new.suspect());
    }

    #[test]
    fn offline_peer_is_not_accused() {
        let mut r = Reputation::default();
        for _ in 0..10_000 {
            r.update(Outcome::Offline);
        }
        assert_eq!(r.score(), 1.0);
        assert!(!r.suspect());
        assert_eq!(r.offline, 10_000);
        assert_eq!(r.fails, 0);
    }

    #[test]
    fn deleting_peer_drops() {
        // Passes 9 audits in 10 (it deleted 10% of the shares): the score settles near 0.9 and
        // the peer is flagged.
        let mut r = Reputation::default();
        let mut flagged = false;
        for i in 0..200 {
            r.update(if i % 10 == 9 {
                Outcome::Fail
            } else {
                Outcome::Pass
            });
            flagged |= r.suspect();
        }
        assert!(flagged);
        assert!(r.score() < 0.95);
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Pass),
            Just(Outcome::Fail),
            Just(Outcome::Offline)
        ]
    }

    fn params() -> impl Strategy<Value = Params> {
        (0.5f64..=1.0, 0.01f64..10.0).prop_map(|(lambda, weight)| Params {
            lambda,
            weight,
            suspect_below: 0.9,
            suspect_recent_fail: 0.5,
        })
    }

    const EPS: f64 = 1e-12;

    proptest! {
        #[test]
        fn score_in_unit_interval(p in params(), seq in proptest::collection::vec(outcome(), 0..300)) {
            let mut r = Reputation::default();
            for o in seq {
                r.update_with(o, &p);
                let s = r.score();
                prop_assert!((0.0..=1.0).contains(&s), "{s}");
                prop_assert!(r.is_valid());
            }
        }

        #[test]
        fn pass_never_lowers_fail_never_raises(
            p in params(),
            seq in proptest::collection::vec(outcome(), 0..200),
            next in outcome(),
        ) {
            let mut r = Reputation::default();
            for o in seq {
                r.update_with(o, &p);
            }
            let before = r;
            r.update_with(next, &p);
            match next {
                Outcome::Pass => prop_assert!(r.score() >= before.score() - EPS),
                Outcome::Fail => prop_assert!(r.score() <= before.score() + EPS),
                Outcome::Offline => {
                    prop_assert_eq!(r.alpha, before.alpha);
                    prop_assert_eq!(r.beta, before.beta);
                    prop_assert_eq!(r.score(), before.score());
                    prop_assert_eq!(r.offline, before.offline + 1);
                }
            }
            prop_assert_eq!(r.audits(), before.audits() + 1);
        }

        #[test]
        fn offline_never_changes_alpha_beta(
            seq in proptest::collection::vec(outcome(), 0..200),
        ) {
            let mut with = Reputation::default();
            let mut without = Reputation::default();
            for o in seq {
                with.update(o);
                if o != Outcome::Offline {
                    without.update(o);
                }
            }
            prop_assert_eq!(with.alpha, without.alpha);
            prop_assert_eq!(with.beta, without.beta);
        }
    }

    #[cfg(test)]
    mod recent_failure {
        use super::*;

        #[test]
        fn one_failure_after_a_long_clean_record_makes_a_suspect_until_it_fades() {
            let mut r = Reputation::default();
            for _ in 0..200 {
                r.update(Outcome::Pass);
            }
            assert!(!r.suspect());
            r.update(Outcome::Fail);
            assert!(r.score() > 0.9, "the score alone would not flag it");
            assert!(r.suspect());
            let mut clean = 0;
            while r.suspect() {
                r.update(Outcome::Pass);
                clean += 1;
            }
            assert_eq!(clean, 14);
            for _ in 0..1000 {
                r.update(Outcome::Offline);
            }
            assert!(!r.suspect(), "being offline never accuses");
        }
    }
}

//! Grant policy: who gets how much storage on this node when the owner has not decided per friend.
//!
//! A [`Policy`] is three knobs, set from the CLI (`kith policy set …`, parsed by
//! [`PolicyChange`]'s `FromStr`) or the panel:
//!
//! - `default-grant <size|unlimited|none>`: what every member gets. The default policy is
//!   `default-grant unlimited`: every grid member may store here, up to the node's capacity
//!   (`storage.capacity`, enforced by the node's share store, not here).
//! - `reciprocal <r|off>`: grant each friend `r ×` what they grant me (read from their signed
//!   node record); `unlimited` if they grant me `unlimited`. When their grant is unknown (no
//!   record yet) the default grant applies, so two reciprocal nodes bootstrap from their defaults.
//! - `invite-only [on|off]`: every member without an explicit decision is [`Access::Pending`]
//!   until the owner grants (or revokes) them.
//!
//! [`Policy::effective_grant`] combines them with the owner's explicit per-friend decision, in
//! this order: explicit decision (grant, revoke, pending) > invite-only > reciprocal (when their
//! grant is known) > default grant > no grant.
//!
//! Sizes are written as in `kith.toml`: `4096`, `10GB` (decimal), `50GiB` (binary), `1.5GiB`;
//! [`parse_size`] and [`format_size`] convert, [`Quota`] adds `unlimited`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Largest reciprocal factor accepted (a sanity bound: the factor multiplies byte counts).
pub const MAX_RECIPROCAL: f64 = 1_000.0;

/// How much a peer may store here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quota {
    /// No per-peer limit (the node's capacity and disk reserve still apply).
    Unlimited,
    /// At most this many bytes of leased shares.
    Bytes(u64),
}

impl Quota {
    /// Whether `used + requested` bytes fit under this quota.
    pub fn allows(self, used: u64, requested: u64) -> bool {
        match self {
            Quota::Unlimited => true,
            Quota::Bytes(q) => used.checked_add(requested).is_some_and(|total| total <= q),
        }
    }

    /// `r ×` this quota (the reciprocal policy): `Unlimited` stays `Unlimited` for `r > 0`;
    /// `r = 0` gives `Bytes(0)`. Byte counts round down and saturate at `u64::MAX`.
    pub fn scale(self, r: f64) -> Quota {
        if r.is_nan() || r <= 0.0 {
            return Quota::Bytes(0);
        }
        match self {
            Quota::Unlimited => Quota::Unlimited,
            Quota::Bytes(b) => {
                let scaled = (b as f64 * r).floor();
                if scaled >= u64::MAX as f64 {
                    Quota::Bytes(u64::MAX)
                } else {
                    Quota::Bytes(scaled as u64)
                }
            }
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quota::Unlimited => f.write_str("unlimited"),
            Quota::Bytes(b) => f.write_str(&format_size(*b)),
        }
    }
}

impl FromStr for Quota {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            Ok(Quota::Unlimited)
        } else {
            parse_size(t).map(Quota::Bytes)
        }
    }
}

/// An account's access to this node's storage.
///
/// The owner's explicit decision is one of `Granted`, `Revoked` or `Pending`; [`Policy::effective_grant`]
/// can also answer `NoGrant` (no decision and no policy that grants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// May store up to the quota.
    Granted(Quota),
    /// Access revoked: no new writes or lease renewals; shares already stored are kept until
    /// `grace_end` (unix seconds), then they may be garbage-collected.
    Revoked {
        /// End of the grace period, unix seconds.
        grace_end: u64,
    },
    /// Invite-only policy: a known member awaiting the owner's decision; may not store yet.
    Pending,
    /// No grant: neither an explicit decision nor a policy that grants.
    NoGrant,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Granted(q) => write!(f, "granted ({q})"),
            Access::Revoked { grace_end } => write!(f, "revoked (shares kept until {grace_end})"),
            Access::Pending => f.write_str("pending"),
            Access::NoGrant => f.write_str("no grant"),
        }
    }
}

/// The node owner's grant policy. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// What every member gets without an explicit decision (`None`: nothing).
    pub default_grant: Option<Quota>,
    /// Reciprocal factor `r`: grant each friend `r ×` what they grant me.
    pub reciprocal: Option<f64>,
    /// Members without an explicit decision are pending until the owner decides.
    pub invite_only: bool,
}

impl Default for Policy {
    /// The default policy: every member gets unlimited storage (up to the node's capacity).
    fn default() -> Self {
        Policy {
            default_grant: Some(Quota::Unlimited),
            reciprocal: None,
            invite_only: false,
        }
    }
}

impl Policy {
    /// The access an account effectively has, given the owner's explicit decision for it
    /// (`Granted`, `Revoked` or `Pending`; `None` when the owner has not decided) and what that
    /// peer grants me (from its signed record; `None` when unknown). See the module docs for the
    /// order of precedence.
    pub fn effective_grant(
        &self,
        explicit: Option<Access>,
        what_they_grant_me: Option<Quota>,
    ) -> Access {
        if let Some(decision) = explicit {
            return decision;
        }
        if self.invite_only {
            return Access::Pending;
        }
        if let (Some(r), Some(theirs)) = (self.reciprocal, what_they_grant_me) {
            return Access::Granted(theirs.scale(r));
        }
        match self.default_grant {
            Some(q) => Access::Granted(q),
            None => Access::NoGrant,
        }
    }

    /// Checks the invariants a decoded or changed policy must keep (a finite reciprocal factor
    /// in `0..=MAX_RECIPROCAL`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self.reciprocal {
            Some(r) if !(0.0..=MAX_RECIPROCAL).contains(&r) => Err(PolicyError::BadRatio {
                value: r.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Applies one change; on error the policy is unchanged.
    pub fn apply(&mut self, change: &PolicyChange) -> Result<(), PolicyError> {
        let mut next = self.clone();
        match *change {
            PolicyChange::DefaultGrant(q) => next.default_grant = q,
            PolicyChange::Reciprocal(r) => next.reciprocal = r,
            PolicyChange::InviteOnly(on) => next.invite_only = on,
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// The changes that turn [`Policy::default`] into this policy (for display and the CLI).
    pub fn changes(&self) -> [PolicyChange; 3] {
        [
            PolicyChange::DefaultGrant(self.default_grant),
            PolicyChange::Reciprocal(self.reciprocal),
            PolicyChange::InviteOnly(self.invite_only),
        ]
    }
}

/// One `kith policy set …` change, in its CLI form:
///
/// | text | change |
/// |---|---|
/// | `default-grant 10GiB`, `default-grant unlimited`, `default-grant none` | [`PolicyChange::DefaultGrant`] |
/// | `reciprocal 1.0`, `reciprocal off` | [`PolicyChange::Reciprocal`] |
/// | `invite-only`, `invite-only on`, `invite-only off` | [`PolicyChange::InviteOnly`] |
///
/// `Display` writes the canonical form, which parses back to the same change.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PolicyChange {
    /// Set (or with `None`, remove) the default grant.
    DefaultGrant(Option<Quota>),
    /// Set (or with `None`, turn off) the reciprocal factor.
    Reciprocal(Option<f64>),
    /// Turn invite-only on or off.
    InviteOnly(bool),
}

impl fmt::Display for PolicyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyChange::DefaultGrant(Some(q)) => write!(f, "default-grant {q}"),
            PolicyChange::DefaultGrant(None) => f.write_str("default-grant none"),
            PolicyChange::Reciprocal(Some(r)) => write!(f, "reciprocal {r}"),
            PolicyChange::Reciprocal(None) => f.write_str("reciprocal off"),
            PolicyChange::InviteOnly(true) => f.write_str("invite-only"),
            PolicyChange::InviteOnly(false) => f.write_str("invite-only off"),
        }
    }
}

impl FromStr for PolicyChange {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let setting = words.next().ok_or(PolicyError::Empty)?;
        let value = words.next();
        if let Some(extra) = words.next() {
            return Err(PolicyError::Trailing {
                extra: extra.to_string(),
            });
        }
        let setting = setting.to_ascii_lowercase();
        let missing = || PolicyError::MissingValue {
            setting: setting.clone(),
        };
        match setting.as_str() {
            "default-grant" => {
                let v = value.ok_or_else(missing)?;
                if v.eq_ignore_ascii_case("none") || v.eq_ignore_ascii_case("off") {
                    Ok(PolicyChange::DefaultGrant(None))
                } else {
                    Ok(PolicyChange::DefaultGrant(Some(v.parse()?)))
                }
            }
            "reciprocal" => {
                let v = value.ok_or_else(missing)?;
                if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none") {
                    return Ok(PolicyChange::Reciprocal(None));
                }
                let r: f64 = v.parse().map_err(|_| PolicyError::BadRatio {
                    value: v.to_string(),
                })?;
                if !(0.0..=MAX_RECIPROCAL).contains(&r) {
                    return Err(PolicyError::BadRatio {
                        value: v.to_string(),
                    });
                }
                Ok(PolicyChange::Reciprocal(Some(r)))
            }
            "invite-only" => match value.map(str::to_ascii_lowercase).as_deref() {
                None | Some("on") | Some("true") | Some("yes") => {
                    Ok(PolicyChange::InviteOnly(true))
                }
                Some("off") | Some("false") | Some("no") => Ok(PolicyChange::InviteOnly(false)),
                Some(other) => Err(PolicyError::BadSwitch {
                    value: other.to_string(),
                }),
            },
            _ => Err(PolicyError::UnknownSetting { setting }),
        }
    }
}

/// A policy, quota or size that could not be parsed or is out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Nothing to parse.
    #[error("empty policy change: expected default-grant SIZE, reciprocal R or invite-only")]
    Empty,
    /// Not one of the known settings.
    #[error(
        "unknown policy setting {setting:?}: expected default-grant SIZE, reciprocal R or invite-only"
    )]
    UnknownSetting {
        /// What was given.
        setting: String,
    },
    /// The setting needs a value.
    #[error("{setting} needs a value")]
    MissingValue {
        /// The setting.
        setting: String,
    },
    /// Words after the value.
    #[error("unexpected {extra:?} after the policy value")]
    Trailing {
        /// The first extra word.
        extra: String,
    },
    /// Not a size like `50GiB`, `10GB` or `4096`, or too large.
    #[error("{value:?} is not a size like 50GiB, 10GB or 4096")]
    BadSize {
        /// What was given.
        value: String,
    },
    /// Not a reciprocal factor: a number from 0 to 1000, or `off`.
    #[error("{value:?} is not a reciprocal factor: a number from 0 to 1000 (like 1.0), or off")]
    BadRatio {
        /// What was given.
        value: String,
    },
    /// Not `on` or `off`.
    #[error("{value:?} is not on or off")]
    BadSwitch {
        /// What was given.
        value: String,
    },
}

/// Parses a byte count: `4096`, `4096B`, `10KB`/`10MB`/`10GB`/`10TB` (powers of 1000),
/// `50KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), case-insensitive, optionally with a decimal
/// fraction (`1.5GiB`, rounded down to a whole byte) and a space before the unit.
pub fn parse_size(s: &str) -> Result<u64, PolicyError> {
    let bad = || PolicyError::BadSize {
        value: s.to_string(),
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || int.len() > 20 || frac.len() > 12 {
        return Err(bad());
    }
    if frac.contains('.') {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let (frac_num, frac_den) = if frac.is_empty() {
        (0u128, 1u128)
    } else {
        (
            frac.parse::<u128>().map_err(|_| bad())?,
            10u128.pow(frac.len() as u32),
        )
    };
    let bytes = int
        .checked_mul(mult)
        .and_then(|b| b.checked_add(frac_num * mult / frac_den))
        .ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| bad())
}

/// Formats a byte count exactly, in the largest binary unit that divides it (`50GiB`, `1536KiB`),
/// else in bytes (`4097`). [`parse_size`] reads it back to the same number.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Formats a byte count for people, rounded to one decimal (`9.8 GiB`, `512 B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if bytes.is_multiple_of(size) {
                format!("{} {name}", bytes / size)
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sizes_parse() {
        for (s, n) in [
            ("4096", 4096),
            ("4096B", 4096),
            ("10GB", 10_000_000_000),
            ("50GiB", 50 << 30),
            ("1MiB", 1 << 20),
            ("1.5GiB", 3 << 29),
            ("2 tib", 2 << 40),
            ("0", 0),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for s in [
            "",
            "GiB",
            "10 XB",
            "1.2.3GiB",
            "-5",
            "18446744073709551616",
            "99999999TiB",
            ".",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(50 << 30), "50GiB");
        assert_eq!(format_size(1536 << 10), "1536KiB");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(0), "0");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(10 << 30), "10 GiB");
        assert_eq!(human_size((10 << 30) - (200 << 20)), "9.8 GiB");
    }

    #[test]
    fn quota_text() {
        assert_eq!("unlimited".parse::<Quota>().unwrap(), Quota::Unlimited);
        assert_eq!("Unlimited".parse::<Quota>().unwrap(), Quota::Unlimited);
        assert_eq!("10GiB".parse::<Quota>().unwrap(), Quota::Bytes(10 << 30));
        assert_eq!(Quota::Bytes(10 << 30).to_string(), "10GiB");
        assert!("lots".parse::<Quota>().is_err());
    }

    #[test]
    fn quota_allows_and_scales() {
        assert!(Quota::Unlimited.allows(u64::MAX, u64::MAX));
        assert!(Quota::Bytes(10).allows(4, 6));
        assert!(!Quota::Bytes(10).allows(4, 7));
        assert!(!Quota::Bytes(u64::MAX).allows(u64::MAX, 1));
        assert_eq!(Quota::Bytes(100).scale(1.5), Quota::Bytes(150));
        assert_eq!(Quota::Bytes(100).scale(0.0), Quota::Bytes(0));
        assert_eq!(Quota::Unlimited.scale(0.5), Quota::Unlimited);
        assert_eq!(Quota::Bytes(u64::MAX).scale(2.0), Quota::Bytes(u64::MAX));
    }

    #[test]
    fn cli_forms_parse() {
        assert_eq!(
            "default-grant 10GiB".parse::<PolicyChange>().unwrap(),
            PolicyChange::DefaultGrant(Some(Quota::Bytes(10 << 30)))
        );
        assert_eq!(
            "default-grant unlimited".parse::<PolicyChange>().unwrap(),
            PolicyChange::DefaultGrant(Some(Quota::Unlimited))
        );
        assert_eq!(
            "default-grant none".parse::<PolicyChange>().unwrap(),
            PolicyChange::DefaultGrant(None)
        );
        assert_eq!(
            "reciprocal 1.0".parse::<PolicyChange>().unwrap(),
            PolicyChange::Reciprocal(Some(1.0))
        );
        assert_eq!(
            "reciprocal off".parse::<PolicyChange>().unwrap(),
            PolicyChange::Reciprocal(None)
        );
        assert_eq!(
            "invite-only".parse::<PolicyChange>().unwrap(),
            PolicyChange::InviteOnly(true)
        );
        assert_eq!(
            "  invite-only   off ".parse::<PolicyChange>().unwrap(),
            PolicyChange::InviteOnly(false)
        );
        for bad in [
            "",
            "default-grant",
            "default-grant lots",
            "reciprocal -1",
            "reciprocal NaN",
            "reciprocal inf",
            "reciprocal 1.0 extra",
            "invite-only maybe",
            "free-for-all",
        ] {
            let err = bad.parse::<PolicyChange>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn default_policy_grants_every_member_unlimited() {
        let p = Policy::default();
        assert_eq!(
            p.effective_grant(None, None),
            Access::Granted(Quota::Unlimited)
        );
        assert_eq!(
            p.effective_grant(None, Some(Quota::Bytes(0))),
            Access::Granted(Quota::Unlimited)
        );
    }

    #[test]
    fn precedence() {
        let granted = Access::Granted(Quota::Bytes(5));
        let revoked = Access::Revoked { grace_end: 9 };
        let p = Policy {
            default_grant: Some(Quota::Bytes(100)),
            reciprocal: Some(2.0),
            invite_only: false,
        };
        assert_eq!(
            p.effective_grant(Some(granted), Some(Quota::Unlimited)),
            granted
        );
        assert_eq!(p.effective_grant(Some(revoked), None), revoked);
        assert_eq!(
            p.effective_grant(None, Some(Quota::Bytes(7))),
            Access::Granted(Quota::Bytes(14))
        );
        assert_eq!(
            p.effective_grant(None, Some(Quota::Unlimited)),
            Access::Granted(Quota::Unlimited)
        );
        // Their grant unknown: the default applies.
        assert_eq!(
            p.effective_grant(None, None),
            Access::Granted(Quota::Bytes(100))
        );
        let invite = Policy {
            invite_only: true,
            ..p.clone()
        };
        assert_eq!(
            invite.effective_grant(None, Some(Quota::Unlimited)),
            Access::Pending
        );
        assert_eq!(invite.effective_grant(Some(granted), None), granted);
        let none = Policy {
            default_grant: None,
            reciprocal: None,
            invite_only: false,
        };
        assert_eq!(
            none.effective_grant(None, Some(Quota::Unlimited)),
            Access::NoGrant
        );
    }

    #[test]
    fn apply_changes_validates() {
        let mut p = Policy::default();
        p.apply(&"default-grant 10GiB".parse().unwrap()).unwrap();
        p.apply(&"reciprocal 1.0".parse().unwrap()).unwrap();
        p.apply(&"invite-only".parse().unwrap()).unwrap();
        assert_eq!(
            p,
            Policy {
                default_grant: Some(Quota::Bytes(10 << 30)),
                reciprocal: Some(1.0),
                invite_only: true
            }
        );
        let before = p.clone();
        assert!(p.apply(&PolicyChange::Reciprocal(Some(f64::NAN))).is_err());
        assert!(p.apply(&PolicyChange::Reciprocal(Some(-0.5))).is_err());
        assert_eq!(p, before);
        let mut rebuilt = Policy::default();
        for c in p.changes() {
            rebuilt.apply(&c).unwrap();
        }
        assert_eq!(rebuilt, p);
    }

    fn change() -> impl Strategy<Value = PolicyChange> {
        let quota = prop_oneof![Just(Quota::Unlimited), any::<u64>().prop_map(Quota::Bytes)];
        prop_oneof![
            proptest::option::of(quota).prop_map(PolicyChange::DefaultGrant),
            proptest::option::of(0.0..MAX_RECIPROCAL).prop_map(PolicyChange::Reciprocal),
            any::<bool>().prop_map(PolicyChange::InviteOnly),
        ]
    }

    proptest! {
        #[test]
        fn change_text_round_trips(c in change()) {
            let text = c.to_string();
            prop_assert_eq!(text.parse::<PolicyChange>().unwrap(), c);
        }

        #[test]
        fn size_text_round_trips(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }

        #[test]
        fn size_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
            let _ = s.parse::<PolicyChange>();
        }
    }
}

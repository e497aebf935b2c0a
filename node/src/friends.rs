//! Friends and access: the node's view of the accounting ledger (kith-accounting) joined with
//! the grid's members, and the owner's decisions (grant, quota, revoke, policy).
//!
//! The ledger lives in the node's redb next to the share index; the share store charges every
//! lease to its owner's account in the lease's own transaction, and the storage server checks
//! the ledger on every allocation and lease renewal ([`crate::storage::ShareStore::check_write`]).
//! Decisions here are events applied in one transaction each.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kith_accounting::{Access, AccountId, Event, Ledger, PolicyChange, Quota};
use libp2p::PeerId;
use redb::ReadableDatabase;
use serde::Serialize;

use crate::grid::{GridHandle, now_ms, peer_of, pk_of};

/// Errors of friend operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FriendError {
    /// The peer id is not an ed25519 kith peer id.
    #[error("{0} is not a kith peer id")]
    BadPeer(String),
    /// The accounting store failed.
    #[error("accounting: {0}")]
    Store(String),
    /// The change was refused (bad policy value...).
    #[error("{0}")]
    Invalid(String),
}

fn store_err<E: std::fmt::Display>(e: E) -> FriendError {
    FriendError::Store(e.to_string())
}

/// Bytes and shares.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UsageInfo {
    /// Bytes.
    pub bytes: u64,
    /// Shares.
    pub shares: u64,
    /// Earliest lease expiry (unix seconds), for what they store here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_lease: Option<u64>,
}

/// Access as the panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AccessInfo {
    /// "granted", "revoked", "pending" or "no-grant".
    pub state: &'static str,
    /// "unlimited" or a size, when granted.
    pub quota: Option<String>,
    /// End of the grace period, when revoked.
    pub grace_end: Option<u64>,
    /// Whether the owner decided it (else the policy did).
    pub explicit: bool,
}

/// Audit reputation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditInfo {
    /// Score in [0, 1].
    pub score: f64,
    /// Audits passed.
    pub passes: u64,
    /// Audits failed.
    pub fails: u64,
    /// Audits that found the peer offline (never counted against it).
    pub offline: u64,
    /// Whether the score is low enough to suspect the peer.
    pub suspect: bool,
}

/// One friend.
#[derive(Clone, Debug, Serialize)]
pub struct FriendInfo {
    /// Peer id.
    pub peer_id: String,
    /// Nickname (from its record).
    pub nickname: String,
    /// A current member of the grid.
    pub member: bool,
    /// Connected now.
    pub connected: bool,
    /// What it stores on this node.
    pub stored_here: UsageInfo,
    /// What this node stores on it.
    pub placed_there: UsageInfo,
    /// Its access here.
    pub access: AccessInfo,
    /// What it grants this node, when known.
    pub their_grant: Option<String>,
    /// Audit reputation.
    pub audit: AuditInfo,
}

/// The policy as the panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyInfo {
    /// Grant for members without an explicit decision.
    pub default_grant: Option<String>,
    /// Reciprocal factor.
    pub reciprocal: Option<f64>,
    /// New members wait for the owner's decision.
    pub invite_only: bool,
}

/// `kith friends --json`.
#[derive(Clone, Debug, Serialize)]
pub struct FriendsInfo {
    /// The policy.
    pub policy: PolicyInfo,
    /// Every member and every account.
    pub friends: Vec<FriendInfo>,
}

fn access_info(ledger: &Ledger, who: &AccountId) -> AccessInfo {
    let explicit = ledger
        .account(who)
        .and_then(|a| a.explicit_access())
        .is_some();
    match ledger.access(who) {
        Access::Granted(q) => AccessInfo {
            state: "granted",
            quota: Some(q.to_string()),
            grace_end: None,
            explicit,
        },
        Access::Revoked { grace_end } => AccessInfo {
            state: "revoked",
            quota: None,
            grace_end: Some(grace_end),
            explicit,
        },
        Access::Pending => AccessInfo {
            state: "pending",
            quota: None,
            grace_end: None,
            explicit,
        },
        _ => AccessInfo {
            state: "no-grant",
            quota: None,
            grace_end: None,
            explicit,
        },
    }
}

/// The accounting side of a node.
#[derive(Clone, Debug)]
pub struct Friends {
    db: Arc<redb::Database>,
    grid: GridHandle,
    me: PeerId,
}

impl Friends {
    /// Opens (creating the tables).
    pub fn open(
        db: Arc<redb::Database>,
        grid: GridHandle,
        me: PeerId,
    ) -> Result<Self, FriendError> {
        let tx = db.begin_write().map_err(store_err)?;
        kith_accounting::store::init(&tx).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(Friends { db, grid, me })
    }

    fn ledger(&self) -> Result<Ledger, FriendError> {
        kith_accounting::store::load(&self.db).map_err(store_err)
    }

    fn apply(&self, event: &Event) -> Result<(), FriendError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        kith_accounting::store::apply(&tx, event)
            .map_err(|e| FriendError::Invalid(e.to_string()))?;
        tx.commit().map_err(store_err)
    }

    fn who(peer: &PeerId) -> Result<AccountId, FriendError> {
        pk_of(peer).ok_or_else(|| FriendError::BadPeer(peer.to_string()))
    }

    /// Every member and every account, with usage both ways, access and audit score.
    pub fn info(
        &self,
        connected: &BTreeMap<PeerId, crate::net::PeerState>,
    ) -> Result<FriendsInfo, FriendError> {
        let ledger = self.ledger()?;
        let me = pk_of(&self.me);
        let mut ids: BTreeMap<AccountId, String> = BTreeMap::new();
        {
            let g = self.grid.state();
            for r in g.registry().records() {
                ids.insert(r.body.peer, r.body.nickname.clone());
            }
        }
        for (id, _) in ledger.accounts() {
            ids.entry(*id).or_default();
        }
        let friends = ids
            .into_iter()
            .filter(|(id, _)| Some(*id) != me)
            .filter_map(|(id, nickname)| {
                let peer = peer_of(&id)?;
                let acct = ledger.account(&id);
                let rep = acct.map(|a| *a.reputation()).unwrap_or_default();
                Some(FriendInfo {
                    peer_id: peer.to_string(),
                    nickname,
                    member: self.grid.is_member(&peer),
                    connected: connected.contains_key(&peer),
                    stored_here: acct.map_or_else(UsageInfo::default, |a| UsageInfo {
                        bytes: a.stored().bytes,
                        shares: a.stored().shares,
                        oldest_lease: a.earliest_expiry(),
                    }),
                    placed_there: acct.map_or_else(UsageInfo::default, |a| UsageInfo {
                        bytes: a.placed().bytes,
                        shares: a.placed().shares,
                        oldest_lease: None,
                    }),
                    access: access_info(&ledger, &id),
                    their_grant: acct.and_then(|a| a.their_grant()).map(|q| q.to_string()),
                    audit: AuditInfo {
                        score: rep.score(),
                        passes: rep.passes,
                        fails: rep.fails,
                        offline: rep.offline,
                        suspect: rep.suspect(),
                    },
                })
            })
            .collect();
        Ok(FriendsInfo {
            policy: self.policy_info()?,
            friends,
        })
    }

    /// The policy.
    pub fn policy_info(&self) -> Result<PolicyInfo, FriendError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let p = kith_accounting::store::policy(&tx).map_err(store_err)?;
        Ok(PolicyInfo {
            default_grant: p.default_grant.map(|q| q.to_string()),
            reciprocal: p.reciprocal,
            invite_only: p.invite_only,
        })
    }

    /// Grants `peer` storage here up to `quota`.
    pub fn grant(&self, peer: &PeerId, quota: Quota) -> Result<(), FriendError> {
        let who = Self::who(peer)?;
        self.apply(&Event::Granted { who, quota })
    }

    /// Revokes `peer`: no new writes from now; its shares are kept for `grace`.
    pub fn revoke(&self, peer: &PeerId, grace: Duration) -> Result<(), FriendError> {
        let who = Self::who(peer)?;
        let grace_end = (now_ms() / 1000).saturating_add(grace.as_secs());
        self.apply(&Event::Revoked { who, grace_end })
    }

    /// Changes the policy.
    pub fn set_policy(&self, change: PolicyChange) -> Result<PolicyInfo, FriendError> {
        self.apply(&Event::Policy(change))?;
        self.policy_info()
    }

    /// Records an audit outcome for `server`.
    pub fn audited(
        &self,
        server: &PeerId,
        outcome: kith_accounting::Outcome,
    ) -> Result<(), FriendError> {
        let peer = Self::who(server)?;
        self.apply(&Event::Audit {
            peer,
            at: now_ms() / 1000,
            outcome,
        })
    }

    /// Servers whose audit score makes them suspects (placement avoids them).
    pub fn suspects(&self) -> Result<Vec<PeerId>, FriendError> {
        Ok(self
            .ledger()?
            .suspects()
            .iter()
            .filter_map(peer_of)
            .collect())
    }

    /// Records shares this node placed on `server` (the "what I store on theirs" column).
    pub fn placed(&self, server: &PeerId, bytes: u64, shares: u64) -> Result<(), FriendError> {
        self.placed_many(&[(*server, bytes, shares)])
    }

    /// [`placed`](Self::placed) for several servers in one transaction (one commit per upload
    /// instead of one per server: what keeps small uploads from waiting on ten fsyncs).
    pub fn placed_many(&self, items: &[(PeerId, u64, u64)]) -> Result<(), FriendError> {
        let mut events = Vec::with_capacity(items.len());
        for (server, bytes, shares) in items {
            if *server == self.me || *shares == 0 {
                continue;
            }
            events.push(Event::Placed {
                on: Self::who(server)?,
                bytes: *bytes,
                shares: *shares,
            });
        }
        if events.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(store_err)?;
        for e in &events {
            kith_accounting::store::apply(&tx, e)
                .map_err(|e| FriendError::Invalid(e.to_string()))?;
        }
        tx.commit().map_err(store_err)
    }
}

fn quota_of_bytes(q: u64) -> Quota {
    if q == kith_gossip::membership::UNLIMITED {
        Quota::Unlimited
    } else {
        Quota::Bytes(q)
    }
}

fn quota_bytes(q: Quota) -> u64 {
    match q {
        Quota::Unlimited => kith_gossip::membership::UNLIMITED,
        Quota::Bytes(b) => b,
    }
}

/// This node's policy and explicit decisions as published in its record.
pub fn grant_view(db: &redb::Database) -> kith_gossip::GrantView {
    use kith_gossip::membership::{ExplicitGrant, MAX_EXPLICIT_GRANTS};
    let Ok(ledger) = kith_accounting::store::load(db) else {
        return kith_gossip::GrantView::default();
    };
    let p = ledger.policy();
    let mut explicit: Vec<ExplicitGrant> = ledger
        .accounts()
        .filter_map(|(id, a)| {
            let quota = match a.explicit_access()? {
                Access::Granted(q) => quota_bytes(q),
                _ => 0,
            };
            Some(ExplicitGrant { member: *id, quota })
        })
        .collect();
    // Refusals matter most to uploaders: publish them first.
    explicit.sort_by_key(|e| e.quota != 0);
    explicit.truncate(MAX_EXPLICIT_GRANTS);
    kith_gossip::GrantView {
        default: p.default_grant.map(quota_bytes),
        reciprocal_milli: p.reciprocal.map(|r| (r * 1000.0).round() as u32),
        invite_only: p.invite_only,
        explicit,
    }
}

/// Records what each member's published view grants this node (feeds the reciprocal policy
/// and the friends page); returns how many changed.
pub fn learn_their_grants(
    db: &redb::Database,
    grid: &GridHandle,
    me: &AccountId,
) -> Result<usize, FriendError> {
    let ledger = kith_accounting::store::load(db).map_err(store_err)?;
    let views: Vec<(AccountId, Option<u64>)> = {
        let g = grid.state();
        g.registry()
            .records()
            .filter(|r| &r.body.peer != me)
            .map(|r| {
                let mine = match ledger.access(&r.body.peer) {
                    Access::Granted(q) => Some(quota_bytes(q)),
                    _ => Some(0),
                };
                (r.body.peer, r.body.grants.grant_for(me, mine))
            })
            .collect()
    };
    let changes: Vec<Event> = views
        .into_iter()
        .map(|(who, grant)| (who, grant.map(quota_of_bytes)))
        .filter(|(who, grant)| ledger.account(who).and_then(|a| a.their_grant()) != *grant)
        .map(|(who, grant)| Event::TheyGrant { who, grant })
        .collect();
    // Called on every membership change: write (and fsync) only when something changed.
    if !changes.is_empty() {
        let tx = db.begin_write().map_err(store_err)?;
        for e in &changes {
            kith_accounting::store::apply(&tx, e).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)?;
    }
    Ok(changes.len())
}

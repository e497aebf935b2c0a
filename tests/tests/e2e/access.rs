//! Grants, quotas and revocation enforced between real nodes; usage both ways on the friends
//! page.

use std::time::Duration;

use kith_node::{
    NodeHandle,
    client::{PutOptions, UploadError},
    protocol::{ErrorKind, Request, Response},
};
use kith_tests::{Encoding, Grid, Listen, random_bytes};

const BOUND: Duration = Duration::from_secs(10);

async fn put(node: &NodeHandle, len: usize, seed: u64) -> Result<String, UploadError> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    std::fs::write(&file, random_bytes(len, seed)).unwrap();
    let opts = PutOptions {
        params: node.config().encoding,
        convergent: true,
        key: None,
    };
    Ok(node.put_file(&file, &opts, &|_| {}).await?.cap)
}

fn friend<'a>(
    info: &'a kith_node::friends::FriendsInfo,
    of: &NodeHandle,
) -> &'a kith_node::friends::FriendInfo {
    let id = of.peer_id().to_string();
    info.friends
        .iter()
        .find(|f| f.peer_id == id)
        .expect("friend listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_quotas_and_revocation_are_enforced_between_real_nodes() {
    // Every upload needs all three nodes (happy = 3), so one refusal sinks it.
    let enc = Encoding {
        needed: 1,
        happy: 3,
        total: 3,
    };
    let grid = Grid::start(3, Listen::Tcp, enc).await.unwrap();
    let (a, b, c) = (grid.node(0), grid.node(1), grid.node(2));

    // Default policy: every member may store. B stores on A; both sides see it.
    put(&b, 200_000, 1).await.expect("granted upload");
    let on_a = a.friends_info().await.unwrap();
    let b_at_a = friend(&on_a, &b);
    assert_eq!(b_at_a.access.state, "granted");
    assert_eq!(b_at_a.stored_here.shares, 1);
    assert!(b_at_a.stored_here.bytes >= 200_000);
    assert!(b_at_a.stored_here.oldest_lease.is_some());
    kith_tests::until("B to record its share on A", BOUND, async || {
        friend(&b.friends_info().await.unwrap(), &a)
            .placed_there
            .shares
            == 1
    })
    .await;

    // A revokes B: B's next upload fails and says why; renewing its leases is refused too; what
    // it stored stays during the grace period.
    a.revoke(b.peer_id(), Duration::from_secs(3600))
        .await
        .unwrap();
    let err = put(&b, 200_000, 2).await.unwrap_err().to_string();
    assert!(err.contains("revoked"), "{err}");
    let renew = b
        .rpc(a.peer_id(), Request::AddLease { si: [0; 16] })
        .await
        .unwrap();
    assert!(
        matches!(renew, Response::Error(ref e) if e.kind == ErrorKind::Revoked),
        "{renew:?}"
    );
    // A's record carries the decision: B stops asking A at all, and still says why.
    kith_tests::until("A's new record to reach B", BOUND, async || {
        !b.storage_servers().contains(&a.peer_id())
    })
    .await;
    let err = put(&b, 200_000, 6).await.unwrap_err().to_string();
    assert!(err.contains("revoked"), "{err}");
    let on_a = a.friends_info().await.unwrap();
    let b_at_a = friend(&on_a, &b);
    assert_eq!(b_at_a.access.state, "revoked");
    assert!(b_at_a.access.grace_end.is_some());
    assert_eq!(
        b_at_a.stored_here.shares, 1,
        "revocation keeps shares until the grace end"
    );

    // A quota: C may keep 100 KB on A; a 300 KB upload is over it, a small one fits.
    a.grant(c.peer_id(), "100KB".parse().unwrap())
        .await
        .unwrap();
    let err = put(&c, 300_000, 3).await.unwrap_err().to_string();
    assert!(err.contains("over quota"), "{err}");
    put(&c, 50_000, 4).await.expect("within quota");
    let on_a = a.friends_info().await.unwrap();
    let c_at_a = friend(&on_a, &c);
    let quota: kith_accounting::Quota = "100KB".parse().unwrap();
    assert_eq!(c_at_a.access.quota, Some(quota.to_string()));
    assert_eq!(c_at_a.stored_here.shares, 1);

    // C learns what A grants it from A's record.
    kith_tests::until("C to learn its quota on A", BOUND, async || {
        friend(&c.friends_info().await.unwrap(), &a).their_grant == Some(quota.to_string())
    })
    .await;

    // The same numbers in Prometheus text.
    let m = a.metrics().await;
    assert!(m.contains("kith_members 3"), "{m}");
    let line = format!(
        "kith_account_stored_here_bytes{{peer=\"{}\"}} {}",
        c.peer_id(),
        c_at_a.stored_here.bytes
    );
    assert!(m.contains(&line), "{m}");

    // Granting again restores B.
    a.grant(b.peer_id(), "unlimited".parse().unwrap())
        .await
        .unwrap();
    put(&b, 100_000, 5).await.expect("granted again");

    // Policy: invite-only leaves members without a decision pending.
    let p = a
        .set_policy("invite-only on".parse().unwrap())
        .await
        .unwrap();
    assert!(p.invite_only);

    // Revoked with no grace left: the collector deletes what B stored on A, and only that.
    let c_before = friend(&a.friends_info().await.unwrap(), &c)
        .stored_here
        .clone();
    a.revoke(b.peer_id(), Duration::ZERO).await.unwrap();
    let status = a.collect().await.unwrap();
    assert!(status.current.shares_removed >= 2, "{status:?}");
    let on_a = a.friends_info().await.unwrap();
    assert_eq!(friend(&on_a, &b).stored_here.shares, 0);
    assert_eq!(friend(&on_a, &c).stored_here.bytes, c_before.bytes);
    // B renews its leases: A refuses (revoked), C accepts.
    let r = b.renew().await.unwrap();
    assert!(r.failed.iter().any(|f| f.contains("revoked")), "{r:?}");
    assert!(r.renewed >= 2, "{r:?}");

    // Every store's accounting matches its leases.
    for h in grid.handles() {
        let report = h.server().store().unwrap().verify_consistency().unwrap();
        assert!(report.is_clean(), "{}: {report:?}", h.config().nickname);
    }
}

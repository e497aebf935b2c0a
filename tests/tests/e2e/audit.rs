//! Audits between real nodes: a server that silently lost shares is caught and its score
//! drops; a server that is only offline is not accused.

use kith_node::client::PutOptions;
use kith_tests::{Encoding, Grid, Listen, random_bytes};

fn remove_share_files(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![dir.join("shares")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                std::fs::remove_file(&p).unwrap();
                removed += 1;
            }
        }
    }
    removed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_catch_a_server_that_deleted_shares_and_never_accuse_an_offline_one() {
    let enc = Encoding {
        needed: 1,
        happy: 3,
        total: 3,
    };
    let mut grid = Grid::start(3, Listen::Tcp, enc).await.unwrap();
    let (a, b, c) = (grid.node(0), grid.node(1), grid.node(2));
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..2 {
        let file = tmp.path().join(format!("f{seed}"));
        // Three segments, so challenges pick among blocks.
        std::fs::write(&file, random_bytes(2_500_000, seed)).unwrap();
        let opts = PutOptions {
            params: a.config().encoding,
            convergent: true,
            key: None,
        };
        a.put_file(&file, &opts, &|_| {}).await.unwrap();
    }

    // Honest servers pass every challenge.
    let r = a.audit(20).await.unwrap();
    assert_eq!((r.challenges, r.passed), (20, 20), "{r:?}");

    // B silently deletes its shares; C goes offline.
    assert_eq!(remove_share_files(&grid.storage_dir(1)), 2);
    let (b_id, c_id) = (b.peer_id(), c.peer_id());
    grid.stop(2).await.unwrap();
    let r = a.audit(40).await.unwrap();
    assert!(!r.failed.is_empty() && r.offline > 0, "{r:?}");
    assert!(
        r.failed.iter().all(|f| f.starts_with(&b_id.to_string())),
        "only B may be accused: {r:?}"
    );

    let info = a.friends_info().await.unwrap();
    let get = |id: &libp2p::PeerId| {
        info.friends
            .iter()
            .find(|f| f.peer_id == id.to_string())
            .unwrap()
            .audit
            .clone()
    };
    let (b_audit, c_audit) = (get(&b_id), get(&c_id));
    assert!(
        b_audit.fails > 0 && b_audit.score < 0.9 && b_audit.suspect,
        "{b_audit:?}"
    );
    assert!(c_audit.offline > 0, "{c_audit:?}");
    assert_eq!(c_audit.fails, 0, "{c_audit:?}");
    assert!(!c_audit.suspect && c_audit.score > 0.99, "{c_audit:?}");
}

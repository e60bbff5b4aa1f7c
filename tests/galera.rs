//! MariaDB Galera (issue 14): three nodes of a multi-primary cluster the test starts from
//! Debian's packages (tests/common/galera.rs), each node of session-failover's store on a
//! different one.

mod common;

use std::sync::Arc;

use common::galera::Galera;
use common::require_program;
use session_failover::session::SessionId;
use session_failover::store::{self, Meta, Record, SessionAdmin, StoreOptions};

fn expired(version: i64) -> Record {
    Record {
        meta: Meta {
            key: SessionId::generate().store_key(),
            app: "storefront".to_owned(),
            context_path: "/".to_owned(),
            node: "a".to_owned(),
            principal: None,
            created_at: 1_000,
            modified_at: 1_000,
            expires_at: 2_000,
            max_inactive_secs: 1,
            version,
            attributes: vec![],
            size_bytes: 1,
        },
        data: vec![1, 0],
    }
}

/// The purge runs on exactly one node at a time across the cluster, and a session written
/// through one Galera node is read through another as written (not as it was before).
///
/// The purge runs on exactly one node at a time across the cluster. `GET_LOCK` cannot do it
/// (each Galera node has its own: shown first); the lease row can. Three stores, each on its
/// own Galera node, start a purge at the same moment, five times: each time exactly one runs
/// (the others skip, by the lease or by losing the certification of taking it), and the rows
/// are all deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_runs_on_one_node_at_a_time_across_galera() {
    let test = "the_purge_runs_on_one_node_at_a_time_across_galera";
    if !require_program("mariadbd", test)
        || !require_program("mariabackup", test)
        || !require_program("socat", test)
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let galera = Galera::start(work.path());

    // Why not GET_LOCK: two nodes both take the same name.
    let get_lock = "SELECT GET_LOCK('session_failover_probe', 0), SLEEP(2)";
    let held = std::thread::scope(|s| {
        let first = s.spawn(|| galera.query(0, get_lock));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let second = galera.query(1, "SELECT GET_LOCK('session_failover_probe', 0)");
        (first.join().unwrap(), second)
    });
    assert_eq!(
        held.1.as_deref().map(str::trim),
        Some("1"),
        "a second Galera node takes a GET_LOCK the first holds: {held:?}"
    );

    let mut stores: Vec<Arc<dyn SessionAdmin>> = Vec::new();
    for i in 0..3 {
        stores.push(
            store::open(&galera.url(i), &StoreOptions::default())
                .await
                .unwrap(),
        );
    }

    // Read-your-writes across nodes (wsrep_sync_wait): a node that failed over reads through
    // another Galera node what the first one committed through its own. 100 rounds of 50
    // updates through node 0, each batch read back through node 2 at once.
    let mut live: Vec<Record> = (0..50)
        .map(|_| {
            let mut r = expired(1);
            r.meta.expires_at = i64::MAX / 2;
            r
        })
        .collect();
    stores[0].set_many(&live).await.unwrap();
    let mut stale = 0;
    for version in 2..=100 {
        for r in &mut live {
            r.meta.version = version;
        }
        let written = stores[0].update_many(&live).await.unwrap();
        assert!(written.iter().all(|u| *u == store::Update::Written));
        for r in &live {
            let read = stores[2].get(&r.meta.key, 3_000).await.unwrap().unwrap();
            stale += usize::from(read.meta.version != version);
        }
    }
    assert_eq!(stale, 0, "reads through node 2 that missed node 0's commit");
    let keys: Vec<_> = live.iter().map(|r| r.meta.key.clone()).collect();
    stores[1].destroy_many(&keys).await.unwrap();

    for round in 0..5 {
        let rows: Vec<Record> = (0..300).map(|_| expired(1)).collect();
        stores[round % 3].set_many(&rows).await.unwrap();
        // One row a statement, so a run lasts while the others try.
        let runs: Vec<_> = stores
            .iter()
            .map(|store| {
                let store = Arc::clone(store);
                tokio::spawn(async move { store.purge_expired_exclusive(3_000, 1).await })
            })
            .collect();
        let mut ran = Vec::new();
        for run in runs {
            ran.push(run.await.unwrap().unwrap());
        }
        let purged: Vec<u64> = ran.iter().flatten().copied().collect();
        assert_eq!(
            purged.len(),
            1,
            "round {round}: exactly one node purges, the others skip: {ran:?}"
        );
        assert_eq!(purged[0], 300, "round {round}: {ran:?}");
        for store in &stores {
            assert_eq!(store.length().await.unwrap(), 0, "round {round}");
        }
    }
}

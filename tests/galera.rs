//! MariaDB Galera (issue 14): three nodes of a multi-primary cluster the test starts from
//! Debian's packages (tests/common/galera.rs), each node of session-failover's store on a
//! different one. One test at a time: each starts its own cluster (three `mariadbd`), which is
//! as much as this machine should run at once.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::balancer::{Lb, User, balancer_with, phase, rows_by_node, wait_until_all_up};
use common::galera::Galera;
use common::shared::{new_session, scenario};
use common::{Client, Server, config_dir, free_port, items, metric, require_program};
use http::StatusCode;
use session_failover::session::SessionId;
use session_failover::store::{self, Meta, Record, SessionAdmin, StoreOptions};

/// Held by each test for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the programs a Galera cluster needs are installed (in CI they must be).
fn galera_installed(test: &str) -> bool {
    require_program("mariadbd", test)
        && require_program("mariabackup", test)
        && require_program("socat", test)
}

/// Starts `session-failover serve` node `name` on Galera node `i`, sync mode.
fn app_node(
    work: &std::path::Path,
    config: &std::path::Path,
    galera: &Galera,
    i: usize,
    name: &str,
    bind: &str,
) -> Server {
    Server::start_with(
        work,
        config,
        name,
        bind,
        &[
            ("y_session_node_name", name),
            ("y_session_store_url", galera.url(i).as_str()),
        ],
    )
}

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
    let _one = ONE_AT_A_TIME.lock().await;
    let test = "the_purge_runs_on_one_node_at_a_time_across_galera";
    if !galera_installed(test) {
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

/// Issue 14's failover through HAProxy: three app nodes, each on its own Galera node, sync
/// mode, 24 users adding to their carts. The busiest app node is killed (SIGKILL); later in the
/// same run, the Galera node under the busiest remaining app node is killed. HAProxy checks
/// `/health/store`, so the app node whose database died is taken out and its users go to the
/// node that can still save. Every add acknowledged is in the cart afterwards; adds that got no
/// acknowledgement are either in it or were refused; the errors and the longest request are
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_galera() {
    let _one = ONE_AT_A_TIME.lock().await;
    let test = "failover_behind_haproxy_on_galera";
    if !galera_installed(test) || !require_program("haproxy", test) {
        return;
    }
    const USERS: usize = 24;
    let work = tempfile::tempdir().unwrap();
    let mut galera = Galera::start(work.path());
    let config = config_dir(
        work.path(),
        "spring.session.storefront.save=sync\nsession.store.timeout=3000\n",
    );
    let ports = [free_port(), free_port(), free_port()];
    // Started at once, on a database nobody migrated yet: their migrations run concurrently on
    // three Galera nodes (sqlx's GET_LOCK holds on one node only).
    let mut nodes: Vec<Option<Server>> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3)
            .map(|i| {
                let (work, config, galera) = (work.path(), &config, &galera);
                let bind = format!("127.0.0.1:{}", ports[i]);
                s.spawn(move || app_node(work, config, galera, i, &format!("node{}", i + 1), &bind))
            })
            .collect();
        started
            .into_iter()
            .map(|n| Some(n.join().unwrap()))
            .collect()
    });
    let front = free_port();
    let _lb = balancer_with(Lb::HaProxy, work.path(), front, free_port(), ports, |cfg| {
        let store_check = cfg.replace(
            "option httpchk GET /health\n",
            "option httpchk GET /health/store\n",
        );
        assert_ne!(store_check, cfg, "deploy/haproxy.cfg checks GET /health");
        store_check
    });
    let base = format!("http://127.0.0.1:{front}");
    wait_until_all_up(&base).await;
    let mut stores = Vec::new();
    for i in 0..3 {
        stores.push(
            store::open(&galera.url(i), &StoreOptions::default())
                .await
                .unwrap(),
        );
    }
    let busiest = async |store: &dyn SessionAdmin, skip: &[usize]| {
        let by_node = rows_by_node(store).await;
        let (name, users) = by_node
            .iter()
            .map(|(name, users)| {
                (
                    name.trim_start_matches("node").parse::<usize>().unwrap() - 1,
                    *users,
                )
            })
            .filter(|(i, _)| !skip.contains(i))
            .max_by_key(|(_, users)| *users)
            .unwrap();
        (name, users, by_node)
    };
    let started = std::time::Instant::now();

    // Every user builds a cart; HAProxy spreads them over the three app nodes.
    let users: Vec<User> = (0..USERS).map(|_| User::new()).collect();
    let users = phase(&base, users, "a", 4, Duration::ZERO).await;
    let (app_victim, app_victims_users, spread) = busiest(&*stores[0], &[]).await;
    assert!(spread.len() >= 2, "users spread over the nodes: {spread:?}");

    // The busiest app node is killed while the users add.
    let node = nodes[app_victim].take().unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        node.kill();
    });
    let users = phase(&base, users, "b", 6, Duration::from_millis(40)).await;
    killer.await.unwrap();
    let users = phase(&base, users, "c", 2, Duration::ZERO).await;

    // The Galera node under the busiest remaining app node is killed while the users add.
    let (db_victim, db_victims_users, _) = busiest(&*stores[0], &[app_victim]).await;
    let survivor = (0..3)
        .find(|i| ![app_victim, db_victim].contains(i))
        .unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        galera.kill(db_victim);
        galera
    });
    let users = phase(&base, users, "d", 6, Duration::from_millis(40)).await;
    let galera = killer.await.unwrap();
    let users = phase(&base, users, "e", 2, Duration::ZERO).await;

    // No acknowledged add is lost; nothing is in a cart that its user was not told about
    // except adds that got no answer (kept or not, the user could not know).
    let (mut unknown, mut failed_reads, mut kept_unanswered) = (0, 0, 0);
    let mut longest = Duration::ZERO;
    let live_store = &stores[survivor];
    let mut after = std::collections::BTreeMap::<String, usize>::new();
    for (i, mut user) in users.into_iter().enumerate() {
        let (status, body) = user.client.send(&base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK, "user {i}");
        let cart: BTreeSet<String> = items(&body).into_iter().map(|(sku, _)| sku).collect();
        let lost: Vec<_> = user.acknowledged.difference(&cart).collect();
        assert!(
            lost.is_empty(),
            "user {i}: acknowledged adds lost: {lost:?}"
        );
        let extra: BTreeSet<_> = cart.difference(&user.acknowledged).cloned().collect();
        assert!(
            extra.is_subset(&user.unseen),
            "user {i}: the cart holds adds never sent or seen refused: {extra:?}"
        );
        assert!(user.acknowledged.len() >= 4, "user {i}: the load ran");
        let row = live_store
            .get(&user.session_key(), 0)
            .await
            .unwrap()
            .expect("persisted");
        assert_ne!(
            row.meta.node,
            format!("node{}", app_victim + 1),
            "user {i}: not last written by the dead app node"
        );
        *after.entry(row.meta.node).or_default() += 1;
        unknown += user.unknown;
        failed_reads += user.failed_reads;
        kept_unanswered += extra.len();
        longest = longest.max(user.longest);
    }
    eprintln!(
        "{test}: {USERS} users, 20 adds each; killed app node{} (serving {app_victims_users}), \
         then Galera node {db_victim} under app node{} (serving {db_victims_users}); {unknown} adds \
         without acknowledgement ({kept_unanswered} of them kept), {failed_reads} failed cart reads, longest request {longest:?}, \
         rows by node after: {after:?}, {:.1}s",
        app_victim + 1,
        db_victim + 1,
        started.elapsed().as_secs_f64()
    );
    drop(nodes);
    drop(galera);
}

/// Issue 14: one session used at once by clients on two app nodes that write through two
/// different Galera nodes, sync mode. Each node's compare-and-set commits on its own Galera
/// node; two of them on one row conflict at certification (1213 at commit), which the writer
/// retries or refuses. Every add acknowledged is in the row, as a third node on the third
/// Galera node restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_on_two_app_nodes_through_two_galera_nodes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let test = "one_session_on_two_app_nodes_through_two_galera_nodes";
    if !galera_installed(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let galera = Galera::start(work.path());
    let config = config_dir(
        work.path(),
        "spring.session.storefront.save=sync\nsession.store.timeout=5000\n\
         session.cache.verify.interval=100\n",
    );
    let a = app_node(work.path(), &config, &galera, 0, "a", "127.0.0.1:0");
    let b = app_node(work.path(), &config, &galera, 1, "b", "127.0.0.1:0");
    let (na, nb) = (a.base.clone(), b.base.clone());
    let cases: [(&str, Vec<Vec<String>>); 2] = [
        ("alternating", vec![vec![na.clone(), nb.clone()]]),
        (
            "many",
            vec![
                vec![na.clone()],
                vec![na.clone()],
                vec![nb.clone()],
                vec![nb.clone()],
            ],
        ),
    ];
    for (name, clients) in cases {
        let cookie = new_session(&na).await;
        let tally = scenario(&cookie, name, clients, 20).await;
        let reader = app_node(
            work.path(),
            &config,
            &galera,
            2,
            &format!("reader-{name}"),
            "127.0.0.1:0",
        );
        let mut client = Client::new();
        client.cookie = Some(cookie.clone());
        let (status, body) = client.send(&reader.base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        let stored: BTreeSet<String> = items(&body).into_iter().map(|(sku, _)| sku).collect();
        let lost: Vec<&String> = tally.acknowledged.difference(&stored).collect();
        let mut retries = 0.0;
        for node in [&na, &nb] {
            retries += metric(node, "session_write_retries_total").await;
        }
        eprintln!(
            "{test} {name}: {} requests, {} acknowledged, {} refused, {} lost, {retries} writes retried",
            tally.requests,
            tally.acknowledged.len(),
            tally.refused,
            lost.len()
        );
        assert!(lost.is_empty(), "{name}: acknowledged adds lost: {lost:?}");
        assert!(stored.contains("first"), "{name}: the first add is kept");
        assert!(
            tally.refused * 5 < tally.requests,
            "{name}: {} of {} refused",
            tally.refused,
            tally.requests
        );
    }
}

//! One behaviour suite for every store backend: memory, SQLite, PostgreSQL, MariaDB/MySQL,
//! Redis.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small test data

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backends::{Backend, TestDb};
use session_failover::session::{SessionId, SessionKey};
use session_failover::store::{
    ListQuery, MemoryStore, Meta, MySqlStore, PgStore, Record, RedisStore, SessionAdmin,
    SessionStore, StoreOptions, Update,
};

const NOW: i64 = 1_700_000_000_000;

fn record(app: &str, principal: Option<&str>, node: &str, version: i64, data: Vec<u8>) -> Record {
    record_at(NOW, app, principal, node, version, data)
}

fn record_at(
    now: i64,
    app: &str,
    principal: Option<&str>,
    node: &str,
    version: i64,
    data: Vec<u8>,
) -> Record {
    let key = SessionId::generate().store_key();
    Record {
        meta: Meta {
            key,
            app: app.to_owned(),
            context_path: "/".to_owned(),
            node: node.to_owned(),
            principal: principal.map(str::to_owned),
            created_at: now,
            modified_at: now,
            expires_at: now + 60_000,
            max_inactive_secs: 60,
            version,
            attributes: vec!["cart".to_owned(), "ünïcode".to_owned()],
            size_bytes: data.len() as i64,
        },
        data,
    }
}

async fn suite(store: Arc<dyn SessionAdmin>) {
    suite_at(store, NOW, false).await;
}

/// The suite with `now` as the clock, for a store that expires rows itself (Redis: its clock
/// is the real one, and an expired row is gone rather than left for the purge).
async fn suite_at(store: Arc<dyn SessionAdmin>, now: i64, expires_itself: bool) {
    store.clear().await.unwrap();
    assert_eq!(store.length().await.unwrap(), 0);

    // set / get / exists / ttl
    let r = record_at(now, "storefront", Some("ann"), "a", 1, vec![1, 0, 7]);
    let key = r.meta.key.clone();
    assert_eq!(store.get(&key, now).await.unwrap(), None);
    store.set(&r).await.unwrap();
    assert_eq!(store.get(&key, now).await.unwrap(), Some(r.clone()));
    assert!(store.exists(&key, now).await.unwrap());
    assert_eq!(
        store.ttl(&key, now + 1_000).await.unwrap(),
        Some(Duration::from_secs(59))
    );

    // get_many: one outcome per key, in order, a repeated key answered each time, an absent
    // key and (at its expiry) an expired row as None
    let other = record_at(now, "storefront", None, "b", 1, vec![1, 0, 8]);
    store.set(&other).await.unwrap();
    let absent = record_at(now, "storefront", None, "b", 1, vec![1, 0])
        .meta
        .key;
    let keys = [
        key.clone(),
        absent.clone(),
        other.meta.key.clone(),
        key.clone(),
    ];
    let found: Vec<Option<Record>> = store
        .get_many(&keys, now)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        found,
        [Some(r.clone()), None, Some(other.clone()), Some(r.clone())]
    );
    let at_expiry = store.get_many(&keys, r.meta.expires_at).await.unwrap();
    assert!(at_expiry.iter().all(|found| matches!(found, Ok(None))));
    assert!(store.get_many(&[], now).await.unwrap().is_empty());
    store.destroy(&other.meta.key).await.unwrap();

    // expiry: absent at and after expires_at, for every read
    let expired_at = r.meta.expires_at;
    assert_eq!(store.get(&key, expired_at).await.unwrap(), None);
    assert!(!store.exists(&key, expired_at).await.unwrap());
    assert_eq!(store.ttl(&key, expired_at).await.unwrap(), None);

    // version rule: an older or equal version never replaces a newer row
    let mut newer = r.clone();
    newer.meta.version = 5;
    newer.data = vec![1, 0, 5];
    store.set(&newer).await.unwrap();
    let mut stale = r.clone();
    stale.meta.version = 4;
    stale.data = vec![1, 0, 4];
    store.set(&stale).await.unwrap();
    assert_eq!(
        store.get(&key, now).await.unwrap().unwrap().data,
        vec![1, 0, 5]
    );

    // update: only an existing row, only by a higher version
    let mut v6 = newer.clone();
    v6.meta.version = 6;
    v6.data = vec![1, 0, 6];
    assert_eq!(store.update(&v6).await.unwrap(), Update::Written);
    // The exact same update again (a batch sent twice) may find its own row (Redis says so);
    // another state under the same version never passes.
    let again = store.update(&v6).await.unwrap();
    assert!(
        matches!(again, Update::Written | Update::Superseded),
        "{again:?}"
    );
    let mut other6 = v6.clone();
    other6.data = vec![1, 0, 66];
    assert_eq!(store.update(&other6).await.unwrap(), Update::Superseded);
    assert_eq!(
        store.get(&key, now).await.unwrap().unwrap().data,
        vec![1, 0, 6]
    );
    let ghost = record_at(now, "storefront", None, "a", 9, vec![1, 0]);
    assert_eq!(store.update(&ghost).await.unwrap(), Update::Missing);
    assert_eq!(
        store.get(&ghost.meta.key, now).await.unwrap(),
        None,
        "update never inserts"
    );

    // update_many is a compare-and-set on the version the writer read (`version - 1`):
    // written, superseded (the row moved on), missing, in order.
    let a = record_at(now, "storefront", None, "a", 1, vec![1, 0, 0xa]);
    let b = record_at(now, "storefront", None, "a", 3, vec![1, 0, 0xb]);
    store.set_many(&[a.clone(), b.clone()]).await.unwrap();
    let mut a2 = a.clone();
    a2.meta.version = 2;
    a2.data = vec![1, 0, 0xa, 2];
    let mut a3 = a2.clone();
    a3.meta.version = 3;
    a3.data = vec![1, 0, 0xa, 3];
    let mut b_old = b.clone();
    b_old.meta.version = 2;
    let mut b_skip = b.clone();
    b_skip.meta.version = 5;
    let missing = record_at(now, "storefront", None, "a", 1, vec![1, 0]);
    let outcomes = store
        .update_many(&[a2.clone(), b_old, missing.clone(), b_skip])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Update::Written,
            Update::Superseded,
            Update::Missing,
            Update::Superseded
        ],
        "based on the stored version: written; on an older or a newer one: superseded"
    );
    let again = store.update(&a2).await.unwrap();
    assert!(
        matches!(again, Update::Written | Update::Superseded),
        "the same write again changes nothing: {again:?}"
    );
    assert_eq!(store.update(&a3).await.unwrap(), Update::Written);
    assert_eq!(
        store.get(&a.meta.key, now).await.unwrap().unwrap().data,
        a3.data
    );
    assert_eq!(
        store.get(&b.meta.key, now).await.unwrap().unwrap().data,
        b.data
    );
    assert_eq!(
        store.get(&missing.meta.key, now).await.unwrap(),
        None,
        "never inserted"
    );
    // An expired row is absent: an update does not revive it.
    let mut expired = record_at(now, "storefront", None, "a", 1, vec![1, 0, 0xe]);
    expired.meta.expires_at = now - 1;
    store.set(&expired).await.unwrap();
    let mut revive = expired.clone();
    revive.meta.version = 2;
    revive.meta.modified_at = now;
    revive.meta.expires_at = now + 60_000;
    assert_eq!(store.update(&revive).await.unwrap(), Update::Missing);
    assert_eq!(store.get(&expired.meta.key, now).await.unwrap(), None);
    store.destroy(&expired.meta.key).await.unwrap();
    assert!(store.update_many(&[]).await.unwrap().is_empty());
    assert_eq!(
        store
            .destroy_many(&[
                a.meta.key.clone(),
                b.meta.key.clone(),
                missing.meta.key.clone()
            ])
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.get(&a.meta.key, now).await.unwrap(), None);

    // reset_timer
    assert!(
        store
            .reset_timer(&key, now + 10_000, now + 70_000)
            .await
            .unwrap()
    );
    let touched = store.get(&key, now + 65_000).await.unwrap().unwrap();
    assert_eq!(
        (touched.meta.modified_at, touched.meta.expires_at),
        (now + 10_000, now + 70_000)
    );
    let unknown = SessionId::generate().store_key();
    assert!(!store.reset_timer(&unknown, now, now + 1).await.unwrap());

    // rekey: the blob only, at the version read, of a live row
    let version = touched.meta.version;
    assert!(
        !store.rekey(&key, version + 1, &[9], now).await.unwrap(),
        "another version"
    );
    assert!(
        !store
            .rekey(&key, version, &[9], now + 70_000)
            .await
            .unwrap(),
        "expired"
    );
    assert!(
        !store.rekey(&unknown, 1, &[9], now).await.unwrap(),
        "absent"
    );
    assert_eq!(store.get(&key, now).await.unwrap(), Some(touched.clone()));
    assert!(
        store
            .rekey(&key, version, &[1, 0, 7, 7], now)
            .await
            .unwrap()
    );
    let rekeyed = store.get(&key, now).await.unwrap().unwrap();
    assert_eq!(rekeyed.data, [1, 0, 7, 7]);
    let mut expected = touched.meta.clone();
    expected.size_bytes = 4;
    assert_eq!(rekeyed.meta, expected, "every other column as it was");

    // records: live rows with their data, by key, a page after a key
    let mut paged = Vec::new();
    let mut after = None;
    while let [one] = store
        .records(after.as_ref(), 1, now)
        .await
        .unwrap()
        .as_slice()
    {
        after = Some(one.meta.key.clone());
        paged.push(one.clone());
    }
    let live: Vec<SessionKey> = store
        .list(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.expires_at > now)
        .map(|m| m.key)
        .collect();
    assert_eq!(
        paged.iter().map(|r| r.meta.key.clone()).collect::<Vec<_>>(),
        live
    );
    assert!(paged.contains(&rekeyed));
    let later = store.records(None, 1000, now + 70_000).await.unwrap();
    assert!(
        later.iter().all(|r| r.meta.expires_at > now + 70_000),
        "expired rows are absent"
    );
    assert!(!later.iter().any(|r| r.meta.key == key));

    // set_many, with two states of one session in the batch: the newer wins
    let mut batch: Vec<Record> = (0..50)
        .map(|i| {
            record_at(
                now,
                if i % 2 == 0 {
                    "storefront"
                } else {
                    "backoffice"
                },
                Some(if i % 3 == 0 { "zoë" } else { "bob" }),
                if i < 25 { "a" } else { "b" },
                1,
                vec![1, 0, i as u8],
            )
        })
        .collect();
    let mut dup = batch[0].clone();
    dup.meta.version = 2;
    dup.data = vec![1, 0, 99];
    batch.push(dup);
    store.set_many(&batch).await.unwrap();
    assert_eq!(store.length().await.unwrap(), 51);
    assert_eq!(
        store
            .get(&batch[0].meta.key, now)
            .await
            .unwrap()
            .unwrap()
            .data,
        vec![1, 0, 99]
    );

    // list: filters and keyset paging cover each row once, in key order
    let mut seen: Vec<SessionKey> = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ListQuery {
                app: Some("storefront".into()),
                after: after.clone(),
                limit: 7,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page.iter().all(|m| m.app == "storefront"));
        after = Some(page.last().unwrap().key.clone());
        seen.extend(page.into_iter().map(|m| m.key));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(
        seen.len(),
        26,
        "25 storefront rows of the batch + the first record"
    );
    let zoe = store
        .list(&ListQuery {
            principal: Some("zoë".into()),
            node: Some("b".into()),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert!(!zoe.is_empty());
    assert!(
        zoe.iter()
            .all(|m| m.principal.as_deref() == Some("zoë") && m.node == "b")
    );
    let listed = store
        .list(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 51);
    let first = listed.iter().find(|m| m.key == key).unwrap();
    assert_eq!(first.attributes, ["cart", "ünïcode"]);

    // destroy
    assert!(store.destroy(&key).await.unwrap());
    assert!(!store.destroy(&key).await.unwrap());
    assert_eq!(store.get(&key, now).await.unwrap(), None);

    // large sessions and non-ASCII names
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let large = record_at(now, "bäckoffice-日本", Some("Łukasz 🛒"), "nøde", 1, big);
    store.set(&large).await.unwrap();
    assert_eq!(
        store.get(&large.meta.key, now).await.unwrap(),
        Some(large.clone())
    );

    // purge_expired in small batches removes exactly the expired rows
    let mut old: Vec<Record> = (0..23)
        .map(|_| record_at(now, "storefront", None, "a", 1, vec![1, 0]))
        .collect();
    for r in &mut old {
        r.meta.expires_at = now - 1;
    }
    let live_before = store.length().await.unwrap();
    store.set_many(&old).await.unwrap();
    if expires_itself {
        // Gone at once; the purge only tidies up after the store.
        assert_eq!(store.length().await.unwrap(), live_before);
        store.purge_expired(now, 5).await.unwrap();
    } else {
        assert_eq!(store.length().await.unwrap(), live_before + 23);
        assert_eq!(store.purge_expired(now, 5).await.unwrap(), 23);
    }
    assert_eq!(store.length().await.unwrap(), live_before);
    assert_eq!(store.purge_expired(now, 5).await.unwrap(), 0);

    // concurrent writers to one session: the highest version is what remains
    let base = record_at(now, "storefront", None, "a", 0, vec![1, 0]);
    let writers = (1..=40).map(|v| {
        let store = store.clone();
        let mut r = base.clone();
        r.meta.version = v;
        r.data = vec![1, 0, v as u8];
        tokio::spawn(async move { store.set(&r).await.unwrap() })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    assert_eq!(
        store
            .get(&base.meta.key, now)
            .await
            .unwrap()
            .unwrap()
            .meta
            .version,
        40
    );

    store.clear().await.unwrap();
    assert_eq!(store.length().await.unwrap(), 0);

    large_batches(&*store, now).await;
}

/// Batches larger than one statement's chunk (500 rows, 500 keys), with a superseded and a
/// missing record among the updates: every outcome is reported, nothing panics.
async fn large_batches(store: &dyn SessionAdmin, now: i64) {
    let first: Vec<Record> = (0..1200)
        .map(|_| record_at(now, "storefront", None, "a", 1, vec![1, 0]))
        .collect();
    store.set_many(&first).await.unwrap();
    assert_eq!(store.length().await.unwrap(), 1200);
    let mut second: Vec<Record> = first
        .iter()
        .map(|r| {
            let mut newer = r.clone();
            newer.meta.version = 2;
            newer.meta.created_at = now + 1;
            newer
        })
        .collect();
    // Another write of the stored version (another node's): superseded.
    second[7].meta.version = 1;
    second[7].meta.modified_at = now + 5;
    second[7].data = vec![1, 0, 7];
    second.push(record_at(now, "storefront", None, "a", 2, vec![1, 0])); // never stored: missing
    let outcomes = store.update_many(&second).await.unwrap();
    assert_eq!(outcomes.len(), 1201);
    for (i, outcome) in outcomes.iter().enumerate() {
        let expected = match i {
            7 => Update::Superseded,
            1200 => Update::Missing,
            _ => Update::Written,
        };
        assert_eq!(*outcome, expected, "record {i}");
    }
    let stored = store.get(&first[3].meta.key, now).await.unwrap().unwrap();
    assert_eq!(stored.meta.version, 2);
    // Read back in one get_many, across chunks: the stored rows in order, the missing one None.
    let keys: Vec<SessionKey> = second.iter().map(|r| r.meta.key.clone()).collect();
    let found = store.get_many(&keys, now).await.unwrap();
    assert_eq!(found.len(), 1201);
    for (i, found) in found.into_iter().enumerate() {
        let found = found.unwrap();
        assert_eq!(found.is_some(), i != 1200, "record {i}");
        if let Some(found) = found {
            assert_eq!(found.meta.key, keys[i], "record {i}");
        }
    }
    // An upsert of a newer version keeps the row's creation time.
    let mut third = stored.clone();
    third.meta.version = 3;
    third.meta.created_at = now + 2;
    store.set(&third).await.unwrap();
    let stored = store.get(&third.meta.key, now).await.unwrap().unwrap();
    assert_eq!((stored.meta.version, stored.meta.created_at), (3, now + 1));
    let keys: Vec<SessionKey> = second.iter().map(|r| r.meta.key.clone()).collect();
    assert_eq!(store.destroy_many(&keys).await.unwrap(), 1200);
    assert_eq!(store.length().await.unwrap(), 0);
}

#[tokio::test]
async fn memory_store() {
    suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(common::sqlite(dir.path()).await)).await;
}

#[tokio::test]
async fn sqlite_store_is_shared_between_pools_like_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::sqlite(dir.path()).await;
    let b = common::sqlite(dir.path()).await; // migrations are idempotent
    let r = record("storefront", None, "a", 1, vec![1, 0]);
    a.set(&r).await.unwrap();
    assert_eq!(b.get(&r.meta.key, NOW).await.unwrap(), Some(r));
}

#[tokio::test]
async fn postgres_store() {
    let Some(db) = TestDb::create(Backend::Postgres, "postgres_store").await else {
        return;
    };
    let store = PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn mysql_store() {
    let Some(db) = TestDb::create(Backend::MySql, "mysql_store").await else {
        return;
    };
    let store = MySqlStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_store() {
    let Some(url) = common::backends::redis_url("redis_store") else {
        return;
    };
    // Database 1 of the test server: other Redis tests use others.
    let store = RedisStore::connect(&format!("{url}/1"), &StoreOptions::default())
        .await
        .unwrap();
    // Redis expires rows by its own clock: the suite's clock is the real one.
    let now = session_failover::store::now_millis();
    suite_at(Arc::new(store.clone()), now, true).await;

    // The principal index: a session that signs out or ends leaves it, at once for readers
    // and for good at the purge.
    let ann = |version, principal: Option<&str>, key: &SessionKey| {
        let mut r = record_at(now, "storefront", principal, "a", version, vec![1, 0]);
        r.meta.key = key.clone();
        r
    };
    let (one, two) = (
        SessionId::generate().store_key(),
        SessionId::generate().store_key(),
    );
    store
        .set_many(&[ann(1, Some("ann"), &one), ann(1, Some("ann"), &two)])
        .await
        .unwrap();
    let by_ann = ListQuery {
        principal: Some("ann".into()),
        limit: 10,
        ..ListQuery::default()
    };
    assert_eq!(store.list(&by_ann).await.unwrap().len(), 2);
    assert_eq!(
        store.update(&ann(2, None, &one)).await.unwrap(),
        Update::Written
    );
    store.destroy(&two).await.unwrap();
    assert!(store.list(&by_ann).await.unwrap().is_empty());
    store.set(&ann(1, Some("ann"), &two)).await.unwrap();
    store.destroy(&two).await.unwrap();
    store.purge_expired(now, 1).await.unwrap();
    let mut connection = redis::Client::open(format!("{url}/1"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: u64 = redis::cmd("ZCARD")
        .arg("sf:principal:ann")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(left, 0, "the purge tidies the principal index");

    // Redis loses its data: every call that finds a session missing fails (retried) for a
    // while, not only the first, and the emptied counter moves once.
    let emptied = store.emptied().unwrap();
    let before = *emptied.borrow();
    let (a, b) = (ann(1, None, &one), ann(1, None, &two));
    store.set_many(&[a.clone(), b.clone()]).await.unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let mut a2 = a.clone();
    a2.meta.version = 2;
    let mut b2 = b.clone();
    b2.meta.version = 2;
    assert!(store.update(&a2).await.is_err(), "missing because emptied");
    assert!(
        store.update(&b2).await.is_err(),
        "and for the next call too"
    );
    assert!(store.version(&one, now).await.is_err());
    assert_eq!(*emptied.borrow(), before + 1);
    store.clear().await.unwrap();
}

/// The same suite on a Redis Cluster of the test's own (three masters, three replicas): a
/// batch spans slots on every master, listing merges the index shards, `SCAN` visits each
/// master. And the `WAIT` setting: a save waits for a replica, and fails when it cannot have
/// as many as asked.
#[tokio::test]
async fn redis_cluster_store() {
    if !common::require_program("redis-server", "redis_cluster_store") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cluster = common::redis::RedisCluster::start(work.path(), 5000);
    let store = RedisStore::connect(&cluster.url(), &StoreOptions::default())
        .await
        .unwrap();
    let now = session_failover::store::now_millis();
    suite_at(Arc::new(store.clone()), now, true).await;

    // 300 sessions in one batch land on every master; a listing pages through all of them in
    // key order, and the purge of a later clock removes their index entries everywhere.
    let records: Vec<Record> = (0..300)
        .map(|i| record_at(now, "storefront", None, "a", 1, vec![i as u8]))
        .collect();
    store.set_many(&records).await.unwrap();
    let per_master: Vec<usize> = cluster
        .nodes
        .iter()
        .flatten()
        .filter(|n| n.query(&["ROLE"]).is_some_and(|r| r.starts_with("master")))
        .map(common::redis::Redis::sessions)
        .collect();
    assert_eq!(per_master.len(), 3);
    assert!(per_master.iter().all(|&n| n > 50), "spread: {per_master:?}");
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ListQuery {
                limit: 70,
                after: after.clone(),
                ..ListQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| m.key.clone());
        listed.extend(page.into_iter().map(|m| m.key));
    }
    let mut expected: Vec<SessionKey> = records.iter().map(|r| r.meta.key.clone()).collect();
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(listed, expected, "every session once, in key order");
    assert_eq!(store.length().await.unwrap(), 300);

    // A save waits for one replica; asking for two (each master has one) fails and says why.
    let waiting = RedisStore::connect(
        &cluster.url(),
        &StoreOptions {
            redis_wait_replicas: 1,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let mut next = records[0].clone();
    next.meta.version = 2;
    assert_eq!(waiting.update(&next).await.unwrap(), Update::Written);
    let too_many = RedisStore::connect(
        &cluster.url(),
        &StoreOptions {
            redis_wait_replicas: 2,
            timeout: Duration::from_millis(400),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    next.meta.version = 3;
    let refused = too_many.update(&next).await.unwrap_err().to_string();
    assert!(
        refused.contains("reached 1 of 2 replicas within 200 ms"),
        "{refused}"
    );
    store.clear().await.unwrap();
    assert_eq!(cluster.sessions(), 0);
    assert_eq!(store.length().await.unwrap(), 0);
}

/// A row that does not decode fails its own key in a `get_many`, not the keys read with it.
#[tokio::test]
async fn a_corrupt_row_fails_only_its_key_in_a_batch_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite(dir.path()).await;
    let good = record("storefront", None, "a", 1, vec![1, 0]);
    let bad = record("storefront", None, "a", 1, vec![1, 0]);
    store.set_many(&[good.clone(), bad.clone()]).await.unwrap();
    sqlx::query("UPDATE stored_http_session SET attributes = 'not json' WHERE session_id = ?")
        .bind(bad.meta.key.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    let found = store
        .get_many(&[bad.meta.key.clone(), good.meta.key.clone()], NOW)
        .await
        .unwrap();
    let [bad_found, good_found] = <[_; 2]>::try_from(found).unwrap();
    let error = bad_found.unwrap_err().to_string();
    assert!(
        error.contains(bad.meta.key.as_str()),
        "the error names the row: {error}"
    );
    assert_eq!(good_found.unwrap(), Some(good));
}

/// Rows that are not sessions (a key no node writes) are skipped by `records`, and a page made
/// only of them is not taken for the end of the table (re-encryption would stop there).
#[tokio::test]
async fn records_skip_rows_that_are_not_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite(dir.path()).await;
    let r = record("storefront", None, "a", 1, vec![1, 0]);
    store.set(&r).await.unwrap();
    for bad in ["!bad-1", "!bad-2"] {
        sqlx::query(
            "INSERT INTO stored_http_session SELECT ?, app, context_path, node, principal, created_at, \
             modified_at, expires_at, max_inactive_secs, version, attributes, size_bytes, data \
             FROM stored_http_session WHERE session_id = ?",
        )
        .bind(bad)
        .bind(r.meta.key.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    }
    assert_eq!(
        store.records(None, 1, NOW).await.unwrap(),
        std::slice::from_ref(&r)
    );
    assert!(
        store
            .records(Some(&r.meta.key), 1, NOW)
            .await
            .unwrap()
            .is_empty()
    );
}

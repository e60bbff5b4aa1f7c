//! Custom stores as SAP approuter defines them: the eight operations, adapted to a full store
//! (the parts of the store behaviour suite that apply), chosen by name from the configuration,
//! and failing over a cart between two nodes.

mod common;

#[path = "../examples/custom_store.rs"]
#[allow(dead_code)] // the example's main
mod example;

use std::sync::Arc;
use std::time::Duration;

use common::{config, items, send};
use example::MapStore;
use serde_json::json;
use session_failover::session::SessionId;
use session_failover::store::{
    self, Adapted, ListQuery, Meta, Record, SessionAdmin, SessionStore, StoreOptions, Update,
    now_millis,
};

fn record(now: i64, version: i64, data: Vec<u8>) -> Record {
    Record {
        meta: Meta {
            key: SessionId::generate().store_key(),
            app: "storefront".to_owned(),
            context_path: "/".to_owned(),
            node: "a".to_owned(),
            principal: Some("zoë".to_owned()),
            created_at: now,
            modified_at: now,
            expires_at: now + 60_000,
            max_inactive_secs: 60,
            version,
            attributes: vec!["cart".to_owned()],
            size_bytes: data.len() as i64,
        },
        data,
    }
}

/// The store suite's rules that a store of eight operations can keep: reads, the version rule
/// of inserts, the compare-and-set outcomes of updates, deletes, touches, expiry by the store.
#[tokio::test]
async fn the_adapter_keeps_the_store_rules_that_apply() {
    let store = Adapted::new(MapStore::default());
    let now = now_millis();
    let r = record(now, 1, vec![1, 0, 7]);
    let key = r.meta.key.clone();
    assert_eq!(store.get(&key, now).await.unwrap(), None);
    store.set(&r).await.unwrap();
    let got = store.get(&key, now).await.unwrap().unwrap();
    assert_eq!((got.meta.version, &got.data), (1, &r.data));
    assert_eq!(got.meta.principal.as_deref(), Some("zoë"));
    assert!(
        got.meta.expires_at > now + 59_000,
        "expiry from the store's ttl"
    );

    // Version rule: an older or equal version never replaces a newer one; a newer one keeps
    // the creation time.
    let mut v5 = r.clone();
    v5.meta.version = 5;
    v5.meta.created_at = now + 1;
    v5.data = vec![5];
    store.set(&v5).await.unwrap();
    let mut v4 = r.clone();
    v4.meta.version = 4;
    v4.data = vec![4];
    store.set(&v4).await.unwrap();
    let got = store.get(&key, now).await.unwrap().unwrap();
    assert_eq!((got.data.as_slice(), got.meta.created_at), (&[5][..], now));

    // Compare-and-set: written, superseded, missing.
    let mut v6 = v5.clone();
    v6.meta.version = 6;
    let ghost = record(now, 2, vec![0]);
    assert_eq!(
        store
            .update_many(&[v6.clone(), v6.clone(), ghost.clone()])
            .await
            .unwrap(),
        [Update::Written, Update::Superseded, Update::Missing]
    );
    assert_eq!(
        store.get(&ghost.meta.key, now).await.unwrap(),
        None,
        "never inserted"
    );

    // Touch, exists, ttl, length, destroy, clear.
    assert!(store.reset_timer(&key, now, now + 120_000).await.unwrap());
    let ttl = SessionAdmin::ttl(&store, &key, now).await.unwrap().unwrap();
    assert!(ttl > Duration::from_secs(110), "{ttl:?}");
    let unknown = SessionId::generate().store_key();
    assert!(!store.reset_timer(&unknown, now, now + 1).await.unwrap());
    assert!(SessionAdmin::exists(&store, &key, now).await.unwrap());
    assert_eq!(SessionAdmin::length(&store).await.unwrap(), 1);
    assert_eq!(
        store
            .destroy_many(&[key.clone(), unknown.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get(&key, now).await.unwrap(), None);

    // Expiry by the store: a session set to expire at once is gone.
    let mut short = record(now, 1, vec![1]);
    short.meta.expires_at = now + 1;
    store.set(&short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.get(&short.meta.key, now_millis()).await.unwrap(),
        None
    );

    // What it gives up, said plainly.
    let refused = store.list(&ListQuery::default()).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("a custom store of the eight operations has no listing"),
        "{refused}"
    );
    store.set(&r).await.unwrap();
    store.clear().await.unwrap();
    assert_eq!(SessionAdmin::length(&store).await.unwrap(), 0);
}

/// By name: a registered store is chosen by `session.store.url`'s scheme and by
/// `EXT_SESSION_MGT`'s `storageType`; built-in names cannot be taken; an unknown name lists the
/// registered ones.
#[tokio::test]
async fn a_registered_store_is_chosen_by_name() {
    store::register("mapstore", |_url, _options| async {
        Ok(Arc::new(Adapted::new(MapStore::default())) as Arc<dyn SessionAdmin>)
    })
    .unwrap();
    assert!(
        store::register("redis", |_url, _options| async {
            Ok(Arc::new(Adapted::new(MapStore::default())) as Arc<dyn SessionAdmin>)
        })
        .is_err()
    );
    let config = config("spring.session.enabled=true\nsession.store.url=mapstore://anything\n");
    let opened = store::open(&config.store_url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(opened.length().await.unwrap(), 0);
    let unknown = store::open("nostore://x", &StoreOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("mapstore:// (registered)"), "{unknown}");

    let dir = tempfile::tempdir().unwrap();
    let secret = "custom-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-01";
    let vars = [
        (
            "EXT_SESSION_MGT".to_owned(),
            format!(
                r#"{{"instanceName": "store", "storageType": "mapstore", "sessionSecret": "{secret}"}}"#
            ),
        ),
        (
            "VCAP_SERVICES".to_owned(),
            r#"{"user-provided": [{"name": "store", "credentials": {"uri": "redis://h:1"}}]}"#
                .to_owned(),
        ),
    ];
    let properties = session_failover::config::Properties::load(dir.path(), vars).unwrap();
    assert_eq!(
        properties.get("session.store.url").unwrap().value,
        "mapstore://h:1"
    );
}

/// Two nodes on one adapted store: a cart made on one is restored by the other.
#[tokio::test]
async fn a_cart_fails_over_through_a_custom_store() {
    let shared: Arc<dyn SessionAdmin> = Arc::new(Adapted::new(MapStore::default()));
    let node = |name: &str| {
        let config = config("spring.session.enabled=true\nspring.session.storefront.save=sync\n");
        let persistence =
            session_failover::persist::Persistence::from_config(Arc::clone(&shared), &config);
        session_failover::server::app(&config, name, Some(persistence))
    };
    let (a, b) = (node("a"), node("b"));
    let added = send(
        &a,
        "POST",
        "/cart/items",
        None,
        Some(json!({"sku": "S1", "qty": 3})),
    )
    .await;
    let cookie = format!("JSESSIONID={}", added.cookie("JSESSIONID").unwrap());
    let cart = send(&b, "GET", "/cart", Some(&cookie), None).await;
    assert_eq!(items(&cart.body), [("S1".to_owned(), 3)]);
}

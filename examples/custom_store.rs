//! A store of your own, as SAP approuter's custom store interface defines it: the eight
//! operations of `session_failover::store::CustomStore`, here over a map in memory with
//! expiry. `Adapted` makes it a full store; `register` lets `session.store.url=mapstore://`
//! (or `EXT_SESSION_MGT`'s `"storageType": "mapstore"`) pick it.
//!
//! Run it with `cargo run --example custom_store`, then
//! `curl -c j -b j localhost:8081/visits` a few times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use session_failover::store::{Adapted, CustomStore, Error, SessionAdmin};
use session_failover::{SaveMode, Session, SessionFailoverLayer};

/// Sessions in a map, each with the instant it expires.
#[derive(Default)]
pub(crate) struct MapStore {
    sessions: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl MapStore {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, (_, expires)| *expires > now);
        sessions
    }
}

#[async_trait::async_trait]
impl CustomStore for MapStore {
    async fn clear(&self) -> Result<(), Error> {
        self.live().clear();
        Ok(())
    }
    async fn destroy(&self, id: &str) -> Result<(), Error> {
        self.live().remove(id);
        Ok(())
    }
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.live().get(id).map(|(session, _)| session.clone()))
    }
    async fn length(&self) -> Result<u64, Error> {
        Ok(self.live().len() as u64)
    }
    async fn ttl(&self, id: &str) -> Result<Option<Duration>, Error> {
        let now = Instant::now();
        Ok(self.live().get(id).map(|(_, expires)| *expires - now))
    }
    async fn set(&self, id: &str, session: Vec<u8>, timeout: Duration) -> Result<(), Error> {
        self.live()
            .insert(id.to_owned(), (session, Instant::now() + timeout));
        Ok(())
    }
    async fn exists(&self, id: &str) -> Result<bool, Error> {
        Ok(self.live().contains_key(id))
    }
    async fn reset_timer(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        if let Some((_, expires)) = self.live().get_mut(id) {
            *expires = Instant::now() + timeout;
        }
        Ok(())
    }
}

#[allow(dead_code)] // the tests include this file for MapStore only
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // By name, for the configuration files (one map per process here).
    session_failover::store::register("mapstore", |_url, _options| async {
        Ok(Arc::new(Adapted::new(MapStore::default())) as Arc<dyn SessionAdmin>)
    })?;
    // Or directly, in code.
    let store = Arc::new(Adapted::new(MapStore::default()));
    let app = Router::new()
        .route(
            "/visits",
            get(|session: Session| async move {
                let visits = session.update("visits", |n: &mut u32| {
                    *n += 1;
                    *n
                });
                format!("visit {visits}\n")
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_store(store, SaveMode::Sync));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
    println!("custom store example on http://127.0.0.1:8081/visits");
    axum::serve(listener, app).await?;
    Ok(())
}

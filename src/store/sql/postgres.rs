//! PostgreSQL: batches travel as 13 arrays (`UNNEST`), so one prepared statement serves every
//! batch size; the purge lock is a session-level advisory lock.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool};
use tokio::sync::broadcast;

use super::{COLUMNS, Dialect, Query, assignments, attribute_names, size};
use crate::id::SessionKey;
use crate::store::{Error, Pushed, Record, StoreOptions};

/// The channel the table's triggers notify (migration 0002): payload `<key> <version>` for a
/// written row, `<key>` for a deleted live one.
const CHANNEL: &str = "stored_http_session";
/// The wait before listening again after the connection was lost.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// The advisory lock key of the purge (an arbitrary constant: "SFPURGE" in ASCII).
#[doc(hidden)] // test support: the lock tests hold to prove exclusion
pub const PURGE_LOCK: i64 = 0x0053_4650_5552_4745;

/// The new rows of a batch, from 13 arrays in table order.
const UNNEST: &str = "UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::int8[], \
     $13::bytea[]) AS n(session_id, app, context_path, node, principal, created_at, modified_at, \
     expires_at, max_inactive_secs, version, attributes, size_bytes, data)";

/// The PostgreSQL dialect of [`super::SqlStore`].
#[derive(Debug)]
pub struct Postgres;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;

    const RETURNING: bool = true;
    const ARRAYS: bool = true;
    const MAX_ROWS: usize = usize::MAX;
    const MAX_BYTES: usize = usize::MAX;
    const BIGINT: &'static str = "BIGINT";
    const PURGE: &'static str = "DELETE FROM stored_http_session WHERE session_id IN \
         (SELECT session_id FROM stored_http_session WHERE expires_at <= $1 LIMIT $2)";

    fn param(n: usize) -> String {
        format!("${n}")
    }

    fn upsert(_rows: usize) -> String {
        format!(
            "INSERT INTO stored_http_session ({COLUMNS}) SELECT * FROM {UNNEST} \
             ON CONFLICT (session_id) DO UPDATE SET {} \
             WHERE stored_http_session.version < excluded.version",
            assignments("excluded", true)
        )
    }

    fn update(_rows: usize) -> String {
        format!(
            "UPDATE stored_http_session AS t SET {} FROM {UNNEST} \
             WHERE t.session_id = n.session_id AND t.version = n.version - 1 \
             AND t.expires_at > n.modified_at RETURNING t.session_id",
            assignments("n", false)
        )
    }

    fn bind_batch<'q>(query: Query<'q, Self>, records: &[&'q Record]) -> Query<'q, Self> {
        let text = |f: fn(&Record) -> String| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        let number = |f: fn(&Record) -> i64| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        query
            .bind(text(|r| r.meta.key.as_str().to_owned()))
            .bind(text(|r| r.meta.app.clone()))
            .bind(text(|r| r.meta.context_path.clone()))
            .bind(text(|r| r.meta.node.clone()))
            .bind(
                records
                    .iter()
                    .map(|r| r.meta.principal.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(number(|r| r.meta.created_at))
            .bind(number(|r| r.meta.modified_at))
            .bind(number(|r| r.meta.expires_at))
            .bind(number(|r| r.meta.max_inactive_secs))
            .bind(number(|r| r.meta.version))
            .bind(text(|r| attribute_names(&r.meta)))
            .bind(number(size))
            .bind(
                records
                    .iter()
                    .map(|r| r.data.as_slice())
                    .collect::<Vec<_>>(),
            )
    }

    fn bind_key_array<'q>(query: Query<'q, Self>, keys: &[SessionKey]) -> Query<'q, Self> {
        query.bind(
            keys.iter()
                .map(|key| key.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
    }

    async fn connect(url: &str, options: &StoreOptions) -> Result<PgPool, Error> {
        let connect: PgConnectOptions = url.parse()?;
        super::pool(url, options, connect).await
    }

    async fn migrate(pool: &PgPool) -> Result<(), Error> {
        sqlx::migrate!("migrations/postgres").run(pool).await?;
        Ok(())
    }

    fn listen(pool: &PgPool, sender: broadcast::Sender<Pushed>) -> bool {
        tokio::spawn(listen(pool.clone(), sender));
        true
    }

    async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PURGE_LOCK)
            .fetch_one(conn)
            .await
    }

    async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PURGE_LOCK)
            .execute(conn)
            .await
            .map(drop)
    }
}

/// Listens on [`CHANNEL`] on a connection of its own and pushes what the triggers notify to
/// `sender`, until nobody subscribes any more. A lost connection is told (`Lost`), then
/// listened again (`Listening`): changes in between are missed, and subscribers check their
/// copies instead.
async fn listen(pool: PgPool, sender: broadcast::Sender<Pushed>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    tracing::info!(channel = CHANNEL, "listening for session changes");
                    let _ = sender.send(Pushed::Listening);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => {
                                if let Some(pushed) = parse(notification.payload()) {
                                    let _ = sender.send(pushed);
                                }
                            }
                            Ok(None) => {
                                tracing::warn!(
                                    channel = CHANNEL,
                                    "lost the connection listening for session changes; cached sessions are checked by version until it is back"
                                );
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(
                                    channel = CHANNEL,
                                    error = &error as &dyn std::error::Error,
                                    "listening for session changes failed; cached sessions are checked by version until it is back"
                                );
                                break;
                            }
                        }
                    }
                    let _ = sender.send(Pushed::Lost);
                }
                Err(error) => {
                    tracing::warn!(
                        channel = CHANNEL,
                        error = &error as &dyn std::error::Error,
                        "cannot listen for session changes"
                    );
                }
            },
            Err(error) => {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "cannot connect to listen for session changes"
                );
            }
        }
        if sender.receiver_count() == 0 {
            return;
        }
        tokio::time::sleep(RELISTEN_DELAY).await;
    }
}

/// A notification's payload: `<key> <version>` (written) or `<key>` (deleted).
fn parse(payload: &str) -> Option<Pushed> {
    match payload.split_once(' ') {
        Some((key, version)) => Some(Pushed::Written {
            key: SessionKey::parse(key)?,
            version: version.parse().ok()?,
        }),
        None => Some(Pushed::Deleted(SessionKey::parse(payload)?)),
    }
}

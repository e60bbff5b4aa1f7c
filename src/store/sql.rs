//! What the SQL backends share: decoding a row into [`Meta`] and the batch rules.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Error, Meta, Record};
use crate::session::SessionKey;

/// The metadata columns, in the order every backend selects them.
pub(super) const META_COLUMNS: &str = "session_id, app, context_path, node, principal, \
     created_at, modified_at, expires_at, max_inactive_secs, version, attributes, size_bytes";

/// Decodes the metadata columns of a row of any SQL backend.
pub(super) fn meta_from_row<'r, R>(row: &'r R) -> Result<Meta, Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let key: String = row.try_get("session_id")?;
    let attributes: String = row.try_get("attributes")?;
    let attributes = serde_json::from_str(&attributes).map_err(|e| Error::CorruptRow {
        key: key.clone(),
        reason: format!("attribute names are not a JSON array of strings: {e}"),
    })?;
    Ok(Meta {
        key: SessionKey::from_stored(key),
        app: row.try_get("app")?,
        context_path: row.try_get("context_path")?,
        node: row.try_get("node")?,
        principal: row.try_get("principal")?,
        created_at: row.try_get("created_at")?,
        modified_at: row.try_get("modified_at")?,
        expires_at: row.try_get("expires_at")?,
        max_inactive_secs: row.try_get("max_inactive_secs")?,
        version: row.try_get("version")?,
        attributes,
        size_bytes: row.try_get("size_bytes")?,
    })
}

/// The `attributes` column's text: a JSON array of names.
pub(super) fn attribute_names(meta: &Meta) -> String {
    serde_json::to_string(&meta.attributes).unwrap_or_else(|_| "[]".to_owned())
}

/// The `size_bytes` column.
pub(super) fn size(record: &Record) -> i64 {
    i64::try_from(record.data.len()).unwrap_or(i64::MAX)
}

/// One record per key, the highest version of each, in the order keys first appear.
///
/// PostgreSQL refuses a multi-row upsert that touches one row twice, and only the newest state of
/// a session matters anyway.
pub(super) fn latest_per_key(records: &[Record]) -> Vec<&Record> {
    let mut index: std::collections::HashMap<&SessionKey, usize> =
        std::collections::HashMap::with_capacity(records.len());
    let mut out: Vec<&Record> = Vec::with_capacity(records.len());
    for record in records {
        match index.get(&record.meta.key) {
            Some(&i) if out[i].meta.version >= record.meta.version => {}
            Some(&i) => out[i] = record,
            None => {
                index.insert(&record.meta.key, out.len());
                out.push(record);
            }
        }
    }
    out
}

/// Splits a batch so no statement carries more than `max_rows` rows or about `max_bytes` of data
/// (a lone larger row still gets its own statement).
pub(super) fn chunks<'a>(
    records: &'a [&'a Record],
    max_rows: usize,
    max_bytes: usize,
) -> Vec<&'a [&'a Record]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, record) in records.iter().enumerate() {
        let len = record.data.len();
        if i > start && (i - start >= max_rows || bytes + len > max_bytes) {
            out.push(&records[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

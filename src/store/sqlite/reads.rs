//! Reads that may return many rows: listings of records and credentials, and the memory map
//! of a verification scan.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::codec::{decode_credential, decode_record, CREDENTIAL_COLUMNS, RECORD_COLUMNS};
use super::error::sql_error;
use crate::error::Result;
use crate::model::{CredentialRecord, Record};
use crate::store::sql::{Dialect, SqlValue};
use crate::store::{ListFilter, RecordFilter};

/// Lists records matching `filter` on `conn`, in key order.
pub(super) fn records_sync(conn: &Connection, filter: &RecordFilter) -> Result<Vec<Record>> {
    let (condition, values) = filter.sql_where(Dialect::Sqlite);
    let mut sql =
        format!("SELECT {RECORD_COLUMNS} FROM records WHERE {condition} ORDER BY kind, owner, key");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| sql_error("cannot prepare a record listing", e))?;
    let rows = stmt
        .query_map(
            rusqlite::params_from_iter(values.into_iter().map(sql_value)),
            decode_record,
        )
        .map_err(|e| sql_error("cannot list records", e))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(|e| sql_error("cannot list records", e))??);
    }
    Ok(out)
}

/// Turns on memory-mapped reads for one scan and off again afterwards.
pub(super) struct MappedScan<'c>(&'c Connection);

impl<'c> MappedScan<'c> {
    pub(super) fn new(conn: &'c Connection) -> MappedScan<'c> {
        // SQLite caps the size at its own compile-time maximum; failure only costs speed.
        let _ = conn.pragma_update(None, "mmap_size", 2_000_000_000i64);
        MappedScan(conn)
    }
}

impl Drop for MappedScan<'_> {
    fn drop(&mut self) {
        let _ = self.0.pragma_update(None, "mmap_size", 0i64);
    }
}

pub(super) fn sql_value(value: SqlValue) -> Value {
    match value {
        SqlValue::Text(text) => Value::Text(text),
        SqlValue::Int(n) => Value::Integer(n),
    }
}

/// Lists credentials matching `filter` on `conn`, in id order.
pub(super) fn list_sync(conn: &Connection, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
    let (condition, values) = filter.sql_where(Dialect::Sqlite);
    let mut sql =
        format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE {condition} ORDER BY id");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| sql_error("cannot prepare a credential listing", e))?;
    let rows = stmt
        .query_map(
            rusqlite::params_from_iter(values.into_iter().map(sql_value)),
            decode_credential,
        )
        .map_err(|e| sql_error("cannot list credentials", e))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(|e| sql_error("cannot list credentials", e))??);
    }
    Ok(out)
}

//! PostgreSQL errors into the crate's [`Error`], classified by SQLSTATE.

use crate::error::{Error, StoreErrorKind};

pub(super) fn db_error(context: &str, e: &tokio_postgres::Error) -> Error {
    let kind = if e.is_closed() || e.as_db_error().is_none() {
        StoreErrorKind::Busy
    } else {
        StoreErrorKind::Other
    };
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    Error::store(kind, format!("{context}: {detail}"))
}

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::store(
        StoreErrorKind::Busy,
        format!("cannot get a PostgreSQL connection: {e}"),
    )
}

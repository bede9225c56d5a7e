//! PostgreSQL errors into the crate's [`Error`], classified by SQLSTATE and by whether the
//! connection is gone (never by message text), with the server's reason in the message and
//! the driver's error as the source.

use tokio_postgres::error::SqlState;

use crate::error::{Error, StoreErrorKind};

/// `context` (what the store was doing) failed with `e`.
pub(super) fn db_error(context: &str, e: tokio_postgres::Error) -> Error {
    let kind = kind_of(&e);
    Error::store_with_source(kind, format!("{context}: {}", reason(&e)), e)
}

/// The portable kind of a driver error.
pub(super) fn kind_of(e: &tokio_postgres::Error) -> StoreErrorKind {
    if e.is_closed() {
        return StoreErrorKind::Connection;
    }
    match e.code() {
        Some(code) => kind_of_sqlstate(code),
        // Not the server's answer: a socket error (the connection broke) or a value the
        // driver could not convert.
        None if caused_by_io(e) => StoreErrorKind::Connection,
        None => StoreErrorKind::Other,
    }
}

/// The portable kind of a SQLSTATE, by its class (the first two characters) and a few
/// codes that matter on their own.
fn kind_of_sqlstate(code: &SqlState) -> StoreErrorKind {
    let text = code.code();
    match text {
        // Admin shutdown (pg_terminate_backend), crash shutdown, not accepting connections.
        "57P01" | "57P02" | "57P03" => StoreErrorKind::Connection,
        // Serialization failure, deadlock, lock not available, statement cancelled.
        "40001" | "40P01" | "55P03" | "57014" => StoreErrorKind::Busy,
        "53100" => StoreErrorKind::Full,
        // A read-only transaction (a hot standby, default_transaction_read_only).
        "25006" => StoreErrorKind::ReadOnly,
        "3F000" => StoreErrorKind::Schema,
        _ => match &text[..2.min(text.len())] {
            // Connection exception; invalid authorization; the database does not exist.
            "08" | "28" | "3D" => StoreErrorKind::Connection,
            // Insufficient resources other than disk: out of memory, too many connections.
            "53" => StoreErrorKind::Busy,
            // System error (an I/O error on the server).
            "58" => StoreErrorKind::Io,
            // Tables, columns or privileges are not what this build expects.
            "42" => StoreErrorKind::Schema,
            // Internal error: data or index corrupted.
            "XX" => StoreErrorKind::Schema,
            _ => StoreErrorKind::Other,
        },
    }
}

/// Is a socket error somewhere in `e`'s source chain?
fn caused_by_io(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The server's message and SQLSTATE, or the driver's description with its causes (a
/// socket error, say). The server's DETAIL (which may quote a row's key values) is left
/// out; it stays in the source error.
pub(super) fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `context` failed because no connection could be had from the pool.
pub(super) fn pool_error(context: &str, e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    let (kind, reason) = match &e {
        PoolError::Backend(inner) => (kind_of(inner), reason(inner)),
        PoolError::Timeout(_) => (StoreErrorKind::Busy, e.to_string()),
        PoolError::Closed => (StoreErrorKind::Closed, e.to_string()),
        _ => (StoreErrorKind::Other, e.to_string()),
    };
    Error::store_with_source(kind, format!("{context}: {reason}"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_code_and_class() {
        let cases = [
            (SqlState::T_R_SERIALIZATION_FAILURE, StoreErrorKind::Busy),
            (SqlState::T_R_DEADLOCK_DETECTED, StoreErrorKind::Busy),
            (SqlState::LOCK_NOT_AVAILABLE, StoreErrorKind::Busy),
            (SqlState::TOO_MANY_CONNECTIONS, StoreErrorKind::Busy),
            (SqlState::ADMIN_SHUTDOWN, StoreErrorKind::Connection),
            (SqlState::CANNOT_CONNECT_NOW, StoreErrorKind::Connection),
            (SqlState::CONNECTION_FAILURE, StoreErrorKind::Connection),
            (SqlState::INVALID_PASSWORD, StoreErrorKind::Connection),
            (SqlState::DISK_FULL, StoreErrorKind::Full),
            (
                SqlState::READ_ONLY_SQL_TRANSACTION,
                StoreErrorKind::ReadOnly,
            ),
            (SqlState::IO_ERROR, StoreErrorKind::Io),
            (SqlState::UNDEFINED_TABLE, StoreErrorKind::Schema),
            (SqlState::DATA_CORRUPTED, StoreErrorKind::Schema),
            (SqlState::RAISE_EXCEPTION, StoreErrorKind::Other),
            (SqlState::CHECK_VIOLATION, StoreErrorKind::Other),
        ];
        for (state, kind) in cases {
            assert_eq!(kind_of_sqlstate(&state), kind, "{}", state.code());
        }
    }
}

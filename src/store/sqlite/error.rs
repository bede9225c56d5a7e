//! SQLite errors into the crate's [`Error`], classified by SQLite's result code.

use rusqlite::ErrorCode;

use crate::error::{Error, StoreErrorKind};

pub(super) fn sql_error(context: &str, e: rusqlite::Error) -> Error {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreErrorKind::Busy,
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreErrorKind::Schema,
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
            StoreErrorKind::Connection
        }
        _ => StoreErrorKind::Other,
    };
    let hint = match kind {
        StoreErrorKind::Schema => {
            " (the file is not a strongroom SQLite database, or it is damaged)"
        }
        StoreErrorKind::Busy => " (another process holds the database lock; retry)",
        _ => "",
    };
    Error::Store {
        kind,
        message: format!("{context}{hint}"),
        source: Some(Box::new(e)),
    }
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

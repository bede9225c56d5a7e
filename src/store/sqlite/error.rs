//! SQLite errors into the crate's [`Error`], classified by SQLite's result code (never by
//! message text), with SQLite's reason in the message and its error as the source.

use rusqlite::ErrorCode;

use crate::error::{Error, StoreErrorKind};

/// `context` (what the store was doing) failed with `e`.
pub(super) fn sql_error(context: &str, e: rusqlite::Error) -> Error {
    let kind = kind_of(&e);
    let message = match kind {
        // The cause first: whatever was being written, the database refuses all writes.
        StoreErrorKind::ReadOnly => format!(
            "{context}: the database is read-only ({}){}",
            reason(&e),
            hint(kind)
        ),
        _ => format!("{context}: {}{}", reason(&e), hint(kind)),
    };
    Error::store_with_source(kind, message, e)
}

/// The portable kind of a SQLite failure, from its primary result code.
pub(super) fn kind_of(e: &rusqlite::Error) -> StoreErrorKind {
    let Some(code) = e.sqlite_error_code() else {
        // A value that does not convert, a misused API: not the database's doing.
        return StoreErrorKind::Other;
    };
    match code {
        // SQLITE_PROTOCOL is a WAL lock race lost to another connection, SQLITE_SCHEMA a
        // statement prepared before another connection changed the schema: both pass.
        ErrorCode::DatabaseBusy
        | ErrorCode::DatabaseLocked
        | ErrorCode::FileLockingProtocolFailed
        | ErrorCode::SchemaChanged => StoreErrorKind::Busy,
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => StoreErrorKind::ReadOnly,
        ErrorCode::DiskFull => StoreErrorKind::Full,
        ErrorCode::SystemIoFailure | ErrorCode::NoLargeFileSupport => StoreErrorKind::Io,
        ErrorCode::CannotOpen => StoreErrorKind::Connection,
        ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => StoreErrorKind::Schema,
        _ => StoreErrorKind::Other,
    }
}

/// SQLite's own words for the failure. SQLite's messages name tables, columns and
/// constraints, never a row's values; a trigger's `RAISE` text comes through as written.
/// rusqlite's own errors (conversions) are described without the value they met.
pub(super) fn reason(e: &rusqlite::Error) -> String {
    use rusqlite::Error as E;
    match e {
        E::SqliteFailure(failure, Some(message)) => {
            format!("{message} ({})", code_name(failure.extended_code))
        }
        E::SqliteFailure(failure, None) => {
            format!("{failure} ({})", code_name(failure.extended_code))
        }
        E::FromSqlConversionFailure(i, ty, _) => {
            format!("column {i} holds {ty} that does not convert")
        }
        E::IntegralValueOutOfRange(i, _) => format!("column {i} holds an integer out of range"),
        E::InvalidColumnType(_, name, ty) => format!("column `{name}` holds {ty}"),
        other => other.to_string(),
    }
}

/// What to do about a failure of `kind`, as a message suffix.
fn hint(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Schema => {
            "; the file is not a strongroom SQLite database, or it is damaged"
        }
        StoreErrorKind::Busy => "; another connection holds the database lock: retry",
        StoreErrorKind::ReadOnly => {
            "; the database cannot be written: check the permissions of the file and its \
             folder (which must be writable for the WAL) and the mount"
        }
        StoreErrorKind::Full => "; the disk or a quota is full: free space and retry",
        _ => "",
    }
}

/// `SQLITE_BUSY`-style name of a result code, with the extended code, for an operator
/// looking it up in SQLite's documentation.
fn code_name(extended: std::ffi::c_int) -> String {
    const PRIMARY: [&str; 29] = [
        "OK",
        "ERROR",
        "INTERNAL",
        "PERM",
        "ABORT",
        "BUSY",
        "LOCKED",
        "NOMEM",
        "READONLY",
        "INTERRUPT",
        "IOERR",
        "CORRUPT",
        "NOTFOUND",
        "FULL",
        "CANTOPEN",
        "PROTOCOL",
        "EMPTY",
        "SCHEMA",
        "TOOBIG",
        "CONSTRAINT",
        "MISMATCH",
        "MISUSE",
        "NOLFS",
        "AUTH",
        "FORMAT",
        "RANGE",
        "NOTADB",
        "NOTICE",
        "WARNING",
    ];
    match PRIMARY.get((extended & 0xff) as usize) {
        Some(name) if extended > 0xff => format!("SQLITE_{name}, extended code {extended}"),
        Some(name) => format!("SQLITE_{name}"),
        None => format!("SQLite result code {extended}"),
    }
}

/// Did `e` break a UNIQUE constraint (a name taken in its scope)?
pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

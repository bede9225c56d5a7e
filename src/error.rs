//! The crate's one error type. Every variant names the thing that failed and, where there is
//! one, the fix; no variant ever carries a secret value.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Match on the variant (or on [`Error::kind`]), never on message text.
///
/// Messages are written for an operator: they name the credential, key, file or variable
/// involved and say how to fix the problem. They never contain secret material; a failed
/// decryption deliberately says nothing about *why* it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing asked for does not exist.
    #[error("{what} not found{}", hint_suffix(.hint))]
    NotFound {
        /// What was looked for, e.g. "credential `openai_main` (per_user, user u1)".
        what: String,
        /// How to fix it, when there is something to say.
        hint: Option<String>,
    },

    /// A create-only write met an existing record.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What collided.
        what: String,
    },

    /// An if-version precondition failed: someone else changed the record first.
    #[error("version conflict on {what}: expected version {expected}, found {}; re-read it and retry", found_text(.found))]
    VersionConflict {
        /// The record.
        what: String,
        /// The version the caller expected.
        expected: u64,
        /// The version actually stored (`None` when the record is gone).
        found: Option<u64>,
    },

    /// The acting principal may not do this. Denials are audited by the caller.
    #[error("permission denied: {actor} may not {action} {target}")]
    PermissionDenied {
        /// Who asked.
        actor: String,
        /// What they asked to do.
        action: String,
        /// What they asked to do it to.
        target: String,
    },

    /// The credential exists but its lifecycle state forbids using it (expired, invalid,
    /// pending).
    #[error("{what} is {state} and cannot be used; update or re-verify it")]
    Unusable {
        /// Which credential.
        what: String,
        /// Its state.
        state: String,
    },

    /// A sealed blob failed to open: wrong key, tampered bytes or bound columns, or a blob
    /// that belongs to another record or vault namespace. Carries no detail beyond which
    /// record it was, in which namespace, and (for a format-2 blob whose data key unwrapped)
    /// that what its commitment binds changed.
    #[error("decryption failed for {what}: the data or the record's bound columns were tampered with, it belongs to another record or vault namespace, or the master key is wrong")]
    DecryptFailed {
        /// Which record (never its contents).
        what: String,
    },

    /// A master key is missing or cannot be used.
    #[error("master key {key_id} unavailable: {reason}")]
    KeyUnavailable {
        /// The key id (or backend name) involved.
        key_id: String,
        /// Why, and how to fix it.
        reason: String,
    },

    /// Stored data could not be decoded (a corrupt row or a malformed blob).
    #[error("corrupt data in {what}: {reason}")]
    Corrupt {
        /// Which row or blob.
        what: String,
        /// What was wrong with it (structure only, never values).
        reason: String,
    },

    /// An audit row could not be decoded at all (its columns were edited into nonsense).
    #[error("corrupt audit row {seq}: {reason}")]
    CorruptAuditRow {
        /// The row's sequence number.
        seq: u64,
        /// What was wrong with it.
        reason: String,
    },

    /// Input from the caller was malformed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which field or argument.
        field: String,
        /// The rule it broke and how to fix it.
        reason: String,
    },

    /// Configuration (environment variables, files, builder settings) is wrong.
    #[error("configuration error: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The store failed.
    #[error("store error ({kind}): {message}")]
    Store {
        /// A portable classification of the failure.
        kind: StoreErrorKind,
        /// What happened.
        message: String,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// A service refused what it was sent on the caller's behalf: an OAuth provider's
    /// `invalid_grant`, `access_denied` or `expired_token`, a code used twice. Retrying
    /// the same thing will not help; logging in again (or fixing the input) may.
    #[error("{peer} refused: {message}")]
    Rejected {
        /// Which service.
        peer: String,
        /// Its error code and what it means (never a token).
        message: String,
    },

    /// A network peer (KMS, provider API) failed.
    #[error("transport error talking to {peer}: {message}")]
    Transport {
        /// Which peer.
        peer: String,
        /// What happened.
        message: String,
    },

    /// Reading or writing a local file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A portable classification of store failures, so callers can react without parsing text.
///
/// The bundled stores classify by the backend's error code (SQLite's result code,
/// PostgreSQL's SQLSTATE), never by message text. What a host may do about each:
/// retry [`Busy`](Self::Busy) and [`Stale`](Self::Stale) at once (re-reading first for
/// `Stale`), retry [`Connection`](Self::Connection) after a pause, and leave the others to an
/// operator: retrying them does not help until something outside the process changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The database is busy or locked, or the server gave up a transaction to break a
    /// deadlock or a serialisation conflict; retrying may succeed.
    Busy,
    /// The connection to the database failed or was lost (for SQLite: the file cannot be
    /// opened). Retry after a pause; a batch whose commit was cut off may have landed, so
    /// read again first.
    Connection,
    /// The database file or schema is unusable (corrupt, too new, wrong format, tables
    /// missing or changed).
    Schema,
    /// The store has been closed or its writer has stopped. Open the store again.
    Closed,
    /// A checked commit found that the data it was based on changed; read again.
    Stale,
    /// The database refuses writes: a read-only file or mount, a store opened read-only, a
    /// read-only server (a standby). Reads still work.
    ReadOnly,
    /// The disk or a quota is full; writes fail until space is freed.
    Full,
    /// The storage under the database failed (an I/O error from the operating system).
    Io,
    /// Anything else, including a write refused by a trigger or a constraint the store does
    /// not know; the message carries the database's reason.
    Other,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Busy => "busy",
            StoreErrorKind::Connection => "connection",
            StoreErrorKind::Schema => "schema",
            StoreErrorKind::Closed => "closed",
            StoreErrorKind::Stale => "stale",
            StoreErrorKind::ReadOnly => "read-only",
            StoreErrorKind::Full => "full",
            StoreErrorKind::Io => "i/o",
            StoreErrorKind::Other => "other",
        })
    }
}

/// The variant of an [`Error`], without its payload; handy for assertions and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::NotFound`]
    NotFound,
    /// [`Error::AlreadyExists`]
    AlreadyExists,
    /// [`Error::VersionConflict`]
    VersionConflict,
    /// [`Error::PermissionDenied`]
    PermissionDenied,
    /// [`Error::DecryptFailed`]
    DecryptFailed,
    /// [`Error::Unusable`]
    Unusable,
    /// [`Error::KeyUnavailable`]
    KeyUnavailable,
    /// [`Error::Corrupt`]
    Corrupt,
    /// [`Error::InvalidInput`]
    InvalidInput,
    /// [`Error::Config`]
    Config,
    /// [`Error::Store`]
    Store,
    /// [`Error::Rejected`]
    Rejected,
    /// [`Error::Transport`]
    Transport,
    /// [`Error::Io`]
    Io,
}

impl Error {
    /// The variant, without its payload.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::VersionConflict { .. } => ErrorKind::VersionConflict,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::DecryptFailed { .. } => ErrorKind::DecryptFailed,
            Error::Unusable { .. } => ErrorKind::Unusable,
            Error::KeyUnavailable { .. } => ErrorKind::KeyUnavailable,
            Error::Corrupt { .. } | Error::CorruptAuditRow { .. } => ErrorKind::Corrupt,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Config { .. } => ErrorKind::Config,
            Error::Store { .. } => ErrorKind::Store,
            Error::Rejected { .. } => ErrorKind::Rejected,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    // Constructors for third-party stores, key backends and transports, so they need not
    // build struct variants by hand.

    /// A configuration problem ([`Error::Config`]): say what to set and where.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }

    /// Bad input ([`Error::InvalidInput`]): the field and why, never its value.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Stored data that cannot be read ([`Error::Corrupt`]): which row, and why.
    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A blob that does not open ([`Error::DecryptFailed`]): which one, no detail.
    pub fn decrypt(what: impl Into<String>) -> Self {
        Error::DecryptFailed { what: what.into() }
    }

    /// A store failure ([`Error::Store`]) of a portable kind, without a source.
    pub fn store(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Error::Store {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A store failure ([`Error::Store`]) keeping the backend's own error as its source,
    /// so a host can walk the chain to the cause.
    pub fn store_with_source(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A master key that cannot be used now ([`Error::KeyUnavailable`]): the key id (or
    /// backend) and why, with what to do.
    pub fn key_unavailable(key_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::KeyUnavailable {
            key_id: key_id.into(),
            reason: reason.into(),
        }
    }

    /// A network peer that failed ([`Error::Transport`]): name the host, never a URL's
    /// path or query (they may carry a token).
    pub fn transport(peer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Transport {
            peer: peer.into(),
            message: message.into(),
        }
    }

    /// A file-system failure ([`Error::Io`]) on `path`.
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("; {h}"),
        None => String::new(),
    }
}

fn found_text(found: &Option<u64>) -> String {
    match found {
        Some(v) => v.to_string(),
        None => "no record".to_string(),
    }
}

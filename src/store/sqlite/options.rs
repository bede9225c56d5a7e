//! The store's settings and its writer's counters.

use std::time::Duration;

/// SQLite's `synchronous` setting for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (the default). The store syncs the
    /// WAL itself, on a thread of its own, once for every group of transactions committed
    /// while the previous sync ran, and answers their callers after it: SQLite's
    /// `synchronous = FULL` durability, without making the next transaction wait for the
    /// disk.
    Full,
    /// WAL `NORMAL`: a power loss may drop the last commits (never corrupts).
    Normal,
}

/// Settings for [`SqliteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Durability (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// Most batches folded into one transaction (default 1024).
    pub max_group: usize,
    /// Read connections kept open for reuse (default 64, one per concurrent reader).
    pub readers: usize,
    /// How long to wait on a lock held by another process (default 5 s).
    pub busy_timeout: Duration,
    /// Point reads (a credential by name or id, found or not, and a credential's grants)
    /// kept in memory. A hit costs no database access; when the cache is full it starts over.
    /// Credentials are kept packed, one allocation each of about the size of the row (≈ 0.35
    /// KB for an API key, see BENCHMARKS.md), and only what was looked up is kept.
    ///
    /// `None` (the default) sizes it from the file: four entries for every credential in it
    /// (by name and by id, with room for as many again to be created), at least 100,000,
    /// counted when the store opens and again whenever the cache fills, so it follows a
    /// vault that grows. A large vault then resolves from memory once its credentials have
    /// been looked up; the memory this takes grows with the credentials looked up (≈ 0.41 KB
    /// each), not with the limit.
    pub point_cache_entries: Option<usize>,
    /// The size, in bytes, the WAL is cut back to once a checkpoint has copied it into the
    /// database (SQLite's `journal_size_limit`; default 4 MiB, about what one automatic
    /// checkpoint's worth of pages takes). A reader that holds a snapshot for long lets the
    /// WAL grow past it; this bounds what stays on disk afterwards.
    /// [`SqliteStore::close`] empties it entirely.
    pub wal_size_limit: u64,
    /// Open the file for reading only (`SQLITE_OPEN_READ_ONLY`): nothing is created or
    /// migrated, and every commit fails with
    /// [`StoreErrorKind::ReadOnly`](crate::StoreErrorKind::ReadOnly). For inspecting a vault
    /// on a read-only mount, or a copy (default off).
    pub read_only: bool,
    /// Create the database when the file is missing (default on). Off, a missing file is
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) and an empty (0-byte) file is
    /// refused rather than made a vault: for tools that must not create a vault by
    /// reading one.
    pub create_if_missing: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            max_group: 1024,
            readers: 64,
            busy_timeout: Duration::from_secs(5),
            point_cache_entries: None,
            wal_size_limit: 4 * 1024 * 1024,
            read_only: false,
            create_if_missing: true,
        }
    }
}

/// Counters of the group-commit writer, for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions committed or attempted.
    pub transactions: u64,
    /// Syncs of the WAL that made committed transactions durable (with
    /// [`Synchronous::Full`]; one sync covers every transaction committed while the one
    /// before it ran).
    pub syncs: u64,
    /// Batches handled (each caller's `commit` is one batch).
    pub batches: u64,
}

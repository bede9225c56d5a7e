//! `SqliteStore`: the embedded default. One file, WAL, `synchronous=FULL` by default, schema
//! migrations with a version table, and group commit — one writer thread folds every batch
//! waiting at the moment into one transaction and one sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::rules::{
    check_record_delete, check_record_put, check_version, grant_missing, grant_target_missing,
};
use super::{
    split_old_expiry, stale_read, Batch, CommitReceipt, ListFilter, Mutation, ReadStamp,
    RecordFilter, SqlValue, Store,
};
use crate::audit::encoding::{AuditDigest, AuditRecord, CanonicalRow, ChainHead};
use crate::audit::event::{Action, AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Record, RecordKey, Scope, ScopeKind,
    Timestamp,
};

/// The schema, one entry per version. Never edit an entry that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // 1: credentials and the audit chain.
    "CREATE TABLE credentials (
        id               TEXT PRIMARY KEY NOT NULL,
        name             TEXT NOT NULL,
        scope_kind       TEXT NOT NULL,
        owner            TEXT NOT NULL,
        provider         TEXT NOT NULL,
        handler_type     TEXT NOT NULL,
        state            TEXT NOT NULL,
        metadata         TEXT NOT NULL,
        agent_accessible INTEGER NOT NULL,
        version          INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        key_id           TEXT NOT NULL,
        sealed           BLOB NOT NULL,
        UNIQUE (scope_kind, owner, name)
    ) WITHOUT ROWID;
    CREATE INDEX credentials_key_id ON credentials (key_id);
    CREATE INDEX credentials_provider ON credentials (provider);
    CREATE TABLE audit (
        seq           INTEGER PRIMARY KEY NOT NULL,
        time          INTEGER NOT NULL,
        actor         TEXT NOT NULL,
        action        TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        scope_kind    TEXT NOT NULL,
        owner         TEXT NOT NULL,
        outcome       TEXT NOT NULL,
        details       TEXT NOT NULL,
        prev_hash     BLOB NOT NULL,
        hash          BLOB NOT NULL
    );",
    // 2: grants of per-user credentials to apps.
    "CREATE TABLE grants (
        credential_id TEXT NOT NULL,
        app           TEXT NOT NULL,
        granted_by    TEXT NOT NULL,
        granted_at    INTEGER NOT NULL,
        revoked_at    INTEGER,
        revoked_by    TEXT,
        PRIMARY KEY (credential_id, app)
    ) WITHOUT ROWID;",
    // 3: a counter bumped by every batch that changes credentials or grants, in the same
    //    transaction; a cached point read is valid exactly while it is unchanged.
    "CREATE TABLE strongroom_generation (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO strongroom_generation (id, value) VALUES (1, 0);",
    // 4: `expires_at` as a column of its own (it was a metadata string of milliseconds; the
    //    values move over in `after_migration`), indexed for listing what expires first.
    "ALTER TABLE credentials ADD COLUMN expires_at INTEGER;
    CREATE INDEX credentials_expires_at ON credentials (expires_at)
        WHERE expires_at IS NOT NULL;
    UPDATE strongroom_generation SET value = value + 1 WHERE id = 1;",
    // 5: records, keyed by kind, owner and key (compared byte by byte: SQLite's default
    //    BINARY collation), with the expiry indexed for sweeps and refreshers.
    "CREATE TABLE records (
        kind       TEXT NOT NULL,
        owner      TEXT NOT NULL,
        key        TEXT NOT NULL,
        version    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER,
        body       TEXT NOT NULL,
        sealed     BLOB,
        PRIMARY KEY (kind, owner, key)
    ) WITHOUT ROWID;
    CREATE INDEX records_owner ON records (owner, kind, key);
    CREATE INDEX records_expires_at ON records (expires_at) WHERE expires_at IS NOT NULL;",
];

/// Data changes that go with a schema step, run in the same transaction right after its SQL.
fn after_migration(tx: &Connection, version: usize) -> rusqlite::Result<()> {
    if version == 4 {
        move_expiry_out_of_metadata(tx)?;
    }
    Ok(())
}

/// Moves `expires_at` from each credential's metadata into the column. A value the vault
/// could not have written (not an integer) stays in the metadata, and a row whose metadata
/// does not decode is left as it is (it reads as corrupt, by id, as before).
fn move_expiry_out_of_metadata(tx: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(Option<String>, Option<String>)> = tx
        .prepare("SELECT id, metadata FROM credentials WHERE metadata LIKE '%\"expires_at\"%'")?
        .query_map([], |r| Ok((r.get(0).ok(), r.get(1).ok())))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update =
        tx.prepare("UPDATE credentials SET expires_at = ?1, metadata = ?2 WHERE id = ?3")?;
    for (id, metadata) in rows {
        let (Some(id), Some(metadata)) = (id, metadata) else {
            continue;
        };
        let Some((at, rest)) = split_old_expiry(&metadata) else {
            continue;
        };
        update.execute(params![at, rest, id])?;
    }
    Ok(())
}

/// SQLite's `synchronous` setting for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (the default).
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
    /// Point reads (a credential by name or id, a credential's grants) kept in memory
    /// (default 100,000). A hit costs no database access; when the cache is full it starts
    /// over. Size it to the working set for flat resolve latency on a large store: each
    /// entry holds one sealed record, about 0.5 KB.
    pub point_cache_entries: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            max_group: 1024,
            readers: 64,
            busy_timeout: Duration::from_secs(5),
            point_cache_entries: POINT_CACHE_ENTRIES,
        }
    }
}

struct Request {
    batch: Batch,
    /// Commit only if no credential or grant changed since these reads.
    stamp: ReadStamp,
    reply: oneshot::Sender<Result<CommitReceipt>>,
}

/// Counters of the group-commit writer, for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions committed or attempted (one sync each).
    pub transactions: u64,
    /// Batches handled (each caller's `commit` is one batch).
    pub batches: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    batches: AtomicU64,
    /// The newest data generation the writer has seen committed (its own commits and, read
    /// at the start of each transaction, other processes'). Cached point reads older than
    /// this are known stale.
    generation: AtomicI64,
}

struct Inner {
    path: PathBuf,
    counters: Arc<Counters>,
    options: SqliteOptions,
    writer: mpsc::Sender<Request>,
    readers: Mutex<Vec<Connection>>,
    cache: Mutex<PointCache>,
}

/// What a point read asked for.
#[derive(Clone, PartialEq, Eq, Hash)]
enum PointKey {
    /// A credential by scope kind, owner and name.
    Name(ScopeKind, String, String),
    /// A credential by id.
    Id(CredentialId),
    /// The grants of a credential.
    Grants(CredentialId),
}

#[derive(Clone)]
enum PointValue {
    Named(Option<Arc<CredentialRecord>>),
    Credential(Option<Box<CredentialRecord>>),
    Grants(Vec<Grant>),
}

/// Results of point reads, valid for one data generation. Every credential or grant change
/// (from this process or any other) bumps the generation in the same transaction, so an
/// entry read at generation G is exactly what any snapshot at generation G would return.
#[derive(Default)]
struct PointCache {
    generation: i64,
    entries: std::collections::HashMap<PointKey, PointValue>,
}

/// Default of [`SqliteOptions::point_cache_entries`].
const POINT_CACHE_ENTRIES: usize = 100_000;

/// The embedded SQLite store. Cheap to clone (clones share the connection set).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish()
    }
}

fn sql_error(context: &str, e: rusqlite::Error) -> Error {
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

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the store at `path`, migrating its schema.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
            }
        }
        let mut conn =
            Connection::open(&path).map_err(|e| sql_error(&format!("cannot open {shown}"), e))?;
        configure(&conn, &options)
            .map_err(|e| sql_error(&format!("cannot configure {shown}"), e))?;
        migrate(&mut conn, &shown)?;
        let head = load_head(&conn).map_err(|e| sql_error("cannot read the audit head", e))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let max_group = options.max_group.max(1);
        let counters = Arc::new(Counters::default());
        let generation = read_generation(&conn)
            .map_err(|e| sql_error(&format!("cannot read the data generation of {shown}"), e))?;
        counters.generation.store(generation, Ordering::Release);
        let writer_counters = counters.clone();
        std::thread::Builder::new()
            .name("strongroom-sqlite-writer".into())
            .spawn(move || writer_loop(conn, head, rx, max_group, &writer_counters))
            .map_err(|e| Error::io(&shown, e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                counters,
                options,
                writer: tx,
                readers: Mutex::new(Vec::new()),
                cache: Mutex::new(PointCache::default()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many transactions the writer has run for how many batches: with concurrent
    /// callers, group commit makes the first much smaller than the second.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.inner.counters.transactions.load(Ordering::Relaxed),
            batches: self.inner.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Runs a point read (one row or a handful) on the calling thread with a pooled
    /// connection: in WAL mode readers never wait for the writer, and a lookup of a few
    /// microseconds costs less than handing it to another thread and back.
    fn read_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.inner.take_reader()?;
        let out = f(&conn);
        self.inner.give_back(conn);
        out
    }

    /// A point read through the generation-checked cache: one read transaction reads the
    /// generation and, on a miss, the data; a hit costs only the generation read.
    ///
    /// With `stamped`, the caller will check the returned generation at commit time
    /// ([`Store::commit_checked`]), so a cache entry no older than what the writer last saw
    /// is returned without touching the database at all.
    fn read_cached(
        &self,
        key: PointKey,
        stamped: bool,
        f: impl FnOnce(&Connection) -> Result<PointValue>,
    ) -> Result<(PointValue, i64)> {
        if stamped {
            let seen = self.inner.counters.generation.load(Ordering::Acquire);
            {
                let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation >= seen {
                    if let Some(value) = cache.entries.get(&key) {
                        return Ok((value.clone(), cache.generation));
                    }
                }
            }
            // A miss: one autocommit read, stamped with the generation the writer last saw.
            // The read sees that generation or a newer one (the writer publishes only what
            // is committed), so the stamp is never newer than the data: if the data is
            // newer, the checked commit fails as stale and the caller reads again.
            let value = self.read_point(f)?;
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if (cache.generation < seen
                || cache.entries.len() >= self.inner.options.point_cache_entries.max(1))
                && seen >= cache.generation
            {
                cache.entries.clear();
                cache.generation = seen;
            }
            if cache.generation == seen {
                cache.entries.insert(key, value.clone());
            }
            return Ok((value, seen));
        }
        self.read_point(|conn| {
            exec_cached(conn, "BEGIN").map_err(|e| sql_error("cannot start a read", e))?;
            let out = (|| {
                let generation: i64 = conn
                    .prepare_cached("SELECT value FROM strongroom_generation WHERE id = 1")
                    .and_then(|mut st| st.query_row([], |r| r.get(0)))
                    .map_err(|e| sql_error("cannot read the data generation", e))?;
                {
                    let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.generation == generation {
                        if let Some(value) = cache.entries.get(&key) {
                            return Ok((value.clone(), generation));
                        }
                    }
                }
                let value = f(conn)?;
                let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation != generation
                    || cache.entries.len() >= self.inner.options.point_cache_entries.max(1)
                {
                    // Keep only the newest generation's entries.
                    if generation >= cache.generation {
                        cache.entries.clear();
                        cache.generation = generation;
                    }
                }
                if cache.generation == generation {
                    cache.entries.insert(key, value.clone());
                }
                Ok((value, generation))
            })();
            // A read-only transaction: ending it cannot lose anything.
            let _ = exec_cached(conn, "COMMIT");
            out
        })
    }

    /// Runs a read that may scan many rows on the blocking thread pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let out = f(&conn);
            inner.give_back(conn);
            out
        })
        .await
        .map_err(|e| Error::store(StoreErrorKind::Other, format!("read task failed: {e}")))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let shown = self.path.display().to_string();
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(&format!("cannot open {shown} for reading"), e))?;
        conn.busy_timeout(self.options.busy_timeout)
            .map_err(|e| sql_error("cannot configure a reader", e))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.options.readers.max(1) {
            pool.push(conn);
        }
    }
}

fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // SQLite's own automatic checkpoints (every 1000 WAL pages) measured faster here than a
    // background checkpointer, whose syncs compete with the commit path's.
    conn.pragma_update(None, "journal_size_limit", 64i64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn migrate(conn: &mut Connection, shown: &str) -> Result<()> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e| sql_error(&format!("{what} ({shown})"), e)
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail("cannot start the schema migration"))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS strongroom_schema (version INTEGER NOT NULL)")
        .map_err(fail("cannot create the schema version table"))?;
    let current: Option<i64> = tx
        .query_row("SELECT max(version) FROM strongroom_schema", [], |r| {
            r.get(0)
        })
        .map_err(fail("cannot read the schema version"))?;
    let current = current.unwrap_or(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(Error::store(
            StoreErrorKind::Schema,
            format!(
                "{shown} has schema version {current}, but this build of strongroom knows only up \
                 to {}; upgrade strongroom",
                MIGRATIONS.len()
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)
            .and_then(|()| after_migration(&tx, i + 1))
            .map_err(fail(&format!("schema migration {} failed", i + 1)))?;
        tx.execute("DELETE FROM strongroom_schema", [])
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO strongroom_schema (version) VALUES (?1)",
                    [i as i64 + 1],
                )
            })
            .map_err(fail("cannot record the schema version"))?;
    }
    tx.commit()
        .map_err(fail("cannot commit the schema migration"))
}

fn load_head(conn: &Connection) -> rusqlite::Result<Option<ChainHead>> {
    conn.prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            let seq: i64 = r.get(0)?;
            let hash: Vec<u8> = r.get(1)?;
            Ok((seq, hash))
        })
        .optional()
        .map(|row| {
            row.and_then(|(seq, hash)| {
                Some(ChainHead {
                    seq: seq as u64,
                    hash: hash.try_into().ok()?,
                })
            })
        })
}

/// The single writer: waits for one batch, takes every other batch already waiting (up to
/// `max_group`), and commits them all in one transaction — one sync for the group. Each
/// batch runs inside its own savepoint so a failed precondition undoes only that batch.
fn writer_loop(
    mut conn: Connection,
    mut head: Option<ChainHead>,
    rx: mpsc::Receiver<Request>,
    max_group: usize,
    counters: &Counters,
) {
    let mut group: Vec<Request> = Vec::with_capacity(max_group);
    // How many callers the last group served: the concurrency to wait for.
    let mut expected = 1usize;
    while let Ok(first) = rx.recv() {
        group.push(first);
        let started = std::time::Instant::now();
        loop {
            while group.len() < max_group {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            // A lone caller never waits. With concurrent callers, the ones just answered
            // are still on their way back; waiting briefly for them (while they keep
            // arriving) folds them into this sync instead of the next one.
            if group.len() >= expected.min(max_group) || started.elapsed() >= LINGER_MAX {
                break;
            }
            match rx.recv_timeout(LINGER_GAP) {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        // Remember the concurrency seen lately: jump up at once, decay slowly, so one
        // short group (a straggler cut off by the time limit) does not shrink the next.
        expected = group.len().max(expected - expected / 8);
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters
            .batches
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        run_group(&mut conn, &mut head, &mut group, &counters.generation);
    }
}

/// Longest pause between arrivals while a group is still filling.
// Short: a group that waits long holds every caller in it idle, while a group cut early
// lets the callers it answers compute (read, decrypt) during the next group's sync. 30 µs /
// 100 µs measured best for audited resolves (which compute between commits) without
// hurting pure audited commits; 100 µs / 1 ms held resolves to ~60% of this.
const LINGER_GAP: Duration = Duration::from_micros(30);
/// Longest a group waits to fill.
const LINGER_MAX: Duration = Duration::from_micros(100);

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

type Reply = oneshot::Sender<Result<CommitReceipt>>;

fn read_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM strongroom_generation WHERE id = 1")?
        .query_row([], |r| r.get(0))
}

fn run_group(
    conn: &mut Connection,
    head: &mut Option<ChainHead>,
    group: &mut Vec<Request>,
    published: &AtomicI64,
) {
    let start_head = *head;
    let mut results: Vec<(Reply, Result<CommitReceipt>)> = Vec::with_capacity(group.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = format!("cannot start a write transaction: {e}");
            for req in group.drain(..) {
                let _ = req
                    .reply
                    .send(Err(Error::store(StoreErrorKind::Busy, message.clone())));
            }
            return;
        }
    };
    // Set when something fails outside a savepoint: then the whole group rolls back.
    let mut poisoned: Option<String> = None;
    // The data generation as this transaction sees it, kept up to date as batches with
    // mutations bump it, to check stamped reads against.
    let mut generation = match read_generation(&tx) {
        Ok(g) => g,
        Err(e) => {
            poisoned = Some(format!("cannot read the data generation: {e}"));
            0
        }
    };
    // Another process (the CLI next to a host service, say) may have appended to the chain
    // since this writer's last group: continue from the head that is on disk.
    match load_head(&tx) {
        Ok(on_disk) => *head = on_disk,
        Err(e) => poisoned = Some(format!("cannot read the audit head: {e}")),
    }
    for req in group.drain(..) {
        if poisoned.is_some() {
            results.push((
                req.reply,
                Err(Error::store(StoreErrorKind::Other, "not written")),
            ));
            continue;
        }
        if req.stamp.current_at(generation) == Some(false) {
            results.push((req.reply, Err(stale_read())));
            continue;
        }
        let changes = req.batch.changes_credentials();
        let before = *head;
        let outcome = if req.batch.mutations.is_empty() {
            // Appending events cannot fail a precondition; an error here is an I/O-level
            // failure that dooms the transaction anyway, so no savepoint is needed.
            apply_batch(&tx, req.batch, head).inspect_err(|e| poisoned = Some(e.to_string()))
        } else {
            match exec_cached(&tx, "SAVEPOINT batch") {
                Err(e) => {
                    poisoned = Some(e.to_string());
                    Err(sql_error("cannot open a savepoint", e))
                }
                Ok(()) => match apply_batch(&tx, req.batch, head) {
                    Ok(receipt) => {
                        exec_cached(&tx, "RELEASE batch")
                            .map(|()| receipt)
                            .map_err(|e| {
                                poisoned = Some(e.to_string());
                                sql_error("cannot release a savepoint", e)
                            })
                    }
                    Err(e) => {
                        if let Err(undo) = exec_cached(&tx, "ROLLBACK TO batch")
                            .and_then(|()| exec_cached(&tx, "RELEASE batch"))
                        {
                            poisoned = Some(undo.to_string());
                        }
                        Err(e)
                    }
                },
            }
        };
        match &outcome {
            Err(_) => *head = before,
            Ok(_) if changes => generation += 1,
            Ok(_) => {}
        }
        results.push((req.reply, outcome));
    }
    let committed = match poisoned {
        Some(reason) => {
            drop(tx); // rolls back
            Err(format!(
                "the group transaction failed and was rolled back, nothing was written: {reason}"
            ))
        }
        None => tx
            .commit()
            .map_err(|e| format!("commit failed, nothing was written: {e}")),
    };
    match committed {
        Ok(()) => {
            published.fetch_max(generation, Ordering::Release);
            for (reply, outcome) in results {
                let _ = reply.send(outcome);
            }
        }
        Err(message) => {
            // Nothing of the group is on disk; restore the head from the database.
            *head = load_head(conn).unwrap_or(start_head);
            for (reply, outcome) in results {
                let _ = reply
                    .send(outcome.and(Err(Error::store(StoreErrorKind::Other, message.clone()))));
            }
        }
    }
}

fn apply_batch(
    conn: &Connection,
    batch: Batch,
    head: &mut Option<ChainHead>,
) -> Result<CommitReceipt> {
    if batch.changes_credentials() {
        exec_cached(
            conn,
            "UPDATE strongroom_generation SET value = value + 1 WHERE id = 1",
        )
        .map_err(|e| sql_error("cannot bump the data generation", e))?;
    }
    for mutation in batch.mutations {
        apply_mutation(conn, mutation)?;
    }
    let mut seqs = None;
    if !batch.events.is_empty() {
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO audit (seq, time, actor, action, credential_id, scope_kind, owner,
                    outcome, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(|e| sql_error("cannot prepare the audit insert", e))?;
        for event in batch.events {
            let record = ChainHead::append(head, event);
            let (credential_id, scope_kind, owner) = record.event.target.columns();
            let details = serde_json::to_string(&record.event.details)
                .map_err(|e| Error::invalid("audit details", e.to_string()))?;
            insert
                .execute(params![
                    record.seq as i64,
                    record.event.time.0,
                    record.event.actor,
                    record.event.action.as_str(),
                    credential_id,
                    scope_kind,
                    owner,
                    record.event.outcome.as_str(),
                    details,
                    &record.prev_hash[..],
                    &record.hash[..],
                ])
                .map_err(|e| sql_error("cannot append an audit row", e))?;
            seqs = Some((seqs.map_or(record.seq, |(first, _)| first), record.seq));
        }
    }
    Ok(CommitReceipt { seqs, head: *head })
}

fn stored_version(conn: &Connection, id: &CredentialId) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM credentials WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v.map(|v| v as u64))
        .map_err(|e| sql_error("cannot read a credential's version", e))
}

fn apply_mutation(conn: &Connection, mutation: Mutation) -> Result<()> {
    match mutation {
        Mutation::Put {
            record,
            precondition,
        } => {
            let stored = stored_version(conn, &record.id)?;
            check_version(precondition, stored, &record.describe(), true)?;
            let metadata = serde_json::to_string(&record.metadata)
                .map_err(|e| Error::invalid("metadata", e.to_string()))?;
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO credentials (id, name, scope_kind, owner, provider, handler_type,
                        state, metadata, agent_accessible, version, created_at, updated_at, key_id,
                        sealed, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                        scope_kind = excluded.scope_kind, owner = excluded.owner,
                        provider = excluded.provider, handler_type = excluded.handler_type,
                        state = excluded.state, metadata = excluded.metadata,
                        agent_accessible = excluded.agent_accessible, version = excluded.version,
                        created_at = excluded.created_at, updated_at = excluded.updated_at,
                        key_id = excluded.key_id, sealed = excluded.sealed,
                        expires_at = excluded.expires_at",
                )
                .map_err(|e| sql_error("cannot prepare the credential upsert", e))?;
            let result = stmt.execute(params![
                record.id.as_str(),
                record.name,
                record.scope.kind().as_str(),
                record.scope.owner(),
                record.provider,
                record.handler_type,
                record.state.as_str(),
                metadata,
                record.agent_accessible,
                record.version as i64,
                record.created_at.0,
                record.updated_at.0,
                record.key_id,
                record.sealed,
                record.expires_at.map(|t| t.0),
            ]);
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                    what: format!("a credential named `{}` in {}", record.name, record.scope),
                }),
                Err(e) => Err(sql_error("cannot write a credential", e)),
            }
        }
        Mutation::Delete { id, precondition } => {
            let stored = stored_version(conn, &id)?;
            check_version(precondition, stored, &format!("credential {id}"), false)?;
            conn.prepare_cached("DELETE FROM credentials WHERE id = ?1")
                .and_then(|mut s| s.execute([id.as_str()]))
                .and_then(|_| conn.prepare_cached("DELETE FROM grants WHERE credential_id = ?1"))
                .and_then(|mut s| s.execute([id.as_str()]))
                .map_err(|e| sql_error("cannot delete a credential", e))?;
            Ok(())
        }
        Mutation::PutGrant { grant } => {
            if stored_version(conn, &grant.credential_id)?.is_none() {
                return Err(grant_target_missing(&grant.credential_id));
            }
            conn.prepare_cached(
                "INSERT INTO grants (credential_id, app, granted_by, granted_at, revoked_at, revoked_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (credential_id, app) DO UPDATE SET granted_by = excluded.granted_by,
                    granted_at = excluded.granted_at, revoked_at = excluded.revoked_at,
                    revoked_by = excluded.revoked_by",
            )
            .and_then(|mut s| {
                s.execute(params![
                    grant.credential_id.as_str(),
                    grant.app,
                    grant.granted_by,
                    grant.granted_at.0,
                    grant.revoked_at.map(|t| t.0),
                    grant.revoked_by,
                ])
            })
            .map_err(|e| sql_error("cannot write a grant", e))?;
            Ok(())
        }
        Mutation::DeleteGrant { credential_id, app } => {
            let deleted = conn
                .prepare_cached("DELETE FROM grants WHERE credential_id = ?1 AND app = ?2")
                .and_then(|mut s| s.execute(params![credential_id.as_str(), app]))
                .map_err(|e| sql_error("cannot delete a grant", e))?;
            if deleted == 0 {
                return Err(grant_missing(&credential_id, &app));
            }
            Ok(())
        }
        Mutation::PutRecord {
            record,
            precondition,
        } => {
            let stored = stored_record_version(conn, &record.kind, &record.owner, &record.key)?;
            let body = check_record_put(precondition, stored, &record)?;
            conn.prepare_cached(
                "INSERT INTO records (kind, owner, key, version, created_at, updated_at,
                    expires_at, body, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (kind, owner, key) DO UPDATE SET version = excluded.version,
                    created_at = excluded.created_at, updated_at = excluded.updated_at,
                    expires_at = excluded.expires_at, body = excluded.body,
                    sealed = excluded.sealed",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.kind,
                    record.owner,
                    record.key,
                    record.version as i64,
                    record.created_at.0,
                    record.updated_at.0,
                    record.expires_at.map(|t| t.0),
                    body,
                    record.sealed,
                ])
            })
            .map_err(|e| sql_error("cannot write a record", e))?;
            Ok(())
        }
        Mutation::DeleteRecord { key, precondition } => {
            let stored = stored_record_version(conn, &key.kind, &key.owner, &key.key)?;
            check_record_delete(precondition, stored, &key)?;
            conn.prepare_cached("DELETE FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3")
                .and_then(|mut s| s.execute(params![key.kind, key.owner, key.key]))
                .map_err(|e| sql_error("cannot delete a record", e))?;
            Ok(())
        }
    }
}

fn stored_record_version(
    conn: &Connection,
    kind: &str,
    owner: &str,
    key: &str,
) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3")
        .and_then(|mut s| {
            s.query_row(params![kind, owner, key], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v.map(|v| v as u64))
        .map_err(|e| sql_error("cannot read a record's version", e))
}

const RECORD_COLUMNS: &str =
    "kind, owner, key, version, created_at, updated_at, expires_at, body, sealed";

/// Decodes a record row; one that does not decode is reported as corrupt by its key.
fn decode_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record>> {
    let c = Cols { row };
    let part = |i: usize, name: &str| {
        c.text(i, name)
            .unwrap_or_else(|_| format!("<unreadable {name}>"))
    };
    let what = || {
        format!(
            "record `{}` of kind `{}`, owner `{}`",
            part(2, "key"),
            part(0, "kind"),
            part(1, "owner")
        )
    };
    let decode = || -> std::result::Result<Record, String> {
        let body = serde_json::from_str(&c.text(7, "body")?)
            .map_err(|e| format!("body is not JSON: {e}"))?;
        let sealed = match row.get_ref(8) {
            Ok(ValueRef::Null) => None,
            _ => Some(c.bytes(8, "sealed")?),
        };
        Ok(Record {
            kind: c.text(0, "kind")?,
            owner: c.text(1, "owner")?,
            key: c.text(2, "key")?,
            version: u64::try_from(c.int(3, "version")?)
                .map_err(|_| "negative version".to_string())?,
            created_at: Timestamp(c.int(4, "created_at")?),
            updated_at: Timestamp(c.int(5, "updated_at")?),
            expires_at: c.opt_int(6, "expires_at")?.map(Timestamp),
            body,
            sealed,
        })
    };
    Ok(decode().map_err(|reason| Error::corrupt(what(), reason)))
}

/// Lists records matching `filter` on `conn`, in key order.
fn records_sync(conn: &Connection, filter: &RecordFilter) -> Result<Vec<Record>> {
    let (condition, values) = filter.sql_where(|n| format!("?{n}"));
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

const CREDENTIAL_COLUMNS: &str = "id, name, scope_kind, owner, provider, handler_type, state, \
    metadata, agent_accessible, version, created_at, updated_at, key_id, sealed, expires_at";

/// Reads one column of a row that may have been edited by hand: a missing value or a value
/// of the wrong type becomes a message, not a failed query.
struct Cols<'r, 's> {
    row: &'r rusqlite::Row<'s>,
}

impl Cols<'_, '_> {
    fn text(&self, i: usize, name: &str) -> std::result::Result<String, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Text(t)) => String::from_utf8(t.to_vec())
                .map_err(|_| format!("column `{name}` is not valid UTF-8")),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not text",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn int(&self, i: usize, name: &str) -> std::result::Result<i64, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Integer(v)) => Ok(v),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not an integer",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn opt_int(&self, i: usize, name: &str) -> std::result::Result<Option<i64>, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Null) => Ok(None),
            _ => self.int(i, name).map(Some),
        }
    }

    /// Bytes; text is taken as its bytes, so a mangled blob fails later, at decryption.
    fn bytes(&self, i: usize, name: &str) -> std::result::Result<Vec<u8>, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Blob(b)) | Ok(ValueRef::Text(b)) => Ok(b.to_vec()),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not bytes",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }
}

/// Decodes a credential row; a row that does not decode is reported as corrupt by id, so
/// one bad row never hides the others.
fn decode_credential(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<CredentialRecord>> {
    let c = Cols { row };
    let id = c
        .text(0, "id")
        .unwrap_or_else(|_| "<unreadable id>".to_string());
    let what = || format!("credential row {id}");
    let decode = || -> std::result::Result<CredentialRecord, String> {
        let scope_kind = c.text(2, "scope_kind")?;
        let owner = c.text(3, "owner")?;
        let scope = ScopeKind::parse(&scope_kind)
            .and_then(|k| Scope::from_parts(k, &owner))
            .map_err(|e| format!("bad scope: {e}"))?;
        let state =
            LifecycleState::parse(&c.text(6, "state")?).map_err(|e| format!("bad state: {e}"))?;
        let metadata: BTreeMap<String, String> = serde_json::from_str(&c.text(7, "metadata")?)
            .map_err(|e| format!("metadata is not a JSON object of strings: {e}"))?;
        Ok(CredentialRecord {
            id: CredentialId::new(id.clone()).map_err(|e| e.to_string())?,
            name: c.text(1, "name")?,
            scope,
            provider: c.text(4, "provider")?,
            handler_type: c.text(5, "handler_type")?,
            state,
            metadata,
            agent_accessible: c.int(8, "agent_accessible")? != 0,
            version: u64::try_from(c.int(9, "version")?)
                .map_err(|_| "negative version".to_string())?,
            created_at: Timestamp(c.int(10, "created_at")?),
            updated_at: Timestamp(c.int(11, "updated_at")?),
            key_id: c.text(12, "key_id")?,
            sealed: c.bytes(13, "sealed")?,
            expires_at: c.opt_int(14, "expires_at")?.map(Timestamp),
        })
    };
    Ok(decode().map_err(|reason| Error::corrupt(what(), reason)))
}

const AUDIT_SELECT: &str = "SELECT seq, time, actor, action, credential_id, scope_kind, owner, \
    outcome, details, prev_hash, hash FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2";

impl Cols<'_, '_> {
    fn str(&self, i: usize, name: &str) -> std::result::Result<&str, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Text(t)) => {
                std::str::from_utf8(t).map_err(|_| format!("column `{name}` is not valid UTF-8"))
            }
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not text",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn hash(&self, i: usize, name: &str) -> std::result::Result<[u8; 32], String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Blob(b)) => b.try_into().map_err(|_| format!("{name} is not 32 bytes")),
            _ => Err(format!("{name} is not a 32-byte blob")),
        }
    }
}

/// Hashes an audit row straight from its columns, without building an [`AuditRecord`]; it
/// applies the same checks as [`decode_audit`] so both paths agree on every row.
fn digest_row(row: &rusqlite::Row<'_>) -> AuditDigest {
    let c = Cols { row };
    let seq = c.int(0, "seq").map(|s| s as u64).unwrap_or(0);
    let prev_hash = c.hash(9, "prev_hash");
    let hash = c.hash(10, "hash");
    let computed = (|| -> std::result::Result<[u8; 32], String> {
        let (credential_id, scope_kind, owner) = (
            c.str(4, "credential_id")?,
            c.str(5, "scope_kind")?,
            c.str(6, "owner")?,
        );
        AuditTarget::check_columns(credential_id, scope_kind, owner)
            .map_err(|e| format!("bad target: {e}"))?;
        let action = c.str(3, "action")?;
        Action::parse(action).map_err(|e| e.to_string())?;
        let outcome = c.str(7, "outcome")?;
        Outcome::parse(outcome).map_err(|e| e.to_string())?;
        let details_text = c.str(8, "details")?;
        let not_object =
            |e: serde_json::Error| format!("details are not a JSON object of strings: {e}");
        // Borrow the strings when they need no unescaping; otherwise decode them owned.
        let owned: BTreeMap<String, String>;
        let pairs: Vec<(&str, &str)> =
            match serde_json::from_str::<BTreeMap<&str, &str>>(details_text) {
                Ok(map) => map.into_iter().collect(),
                Err(_) => {
                    owned = serde_json::from_str(details_text).map_err(not_object)?;
                    owned
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect()
                }
            };
        let prev = prev_hash.clone()?;
        hash.clone()?;
        Ok(CanonicalRow {
            seq,
            time: c.int(1, "time")?,
            actor: c.str(2, "actor")?,
            action,
            credential_id,
            scope_kind,
            owner,
            outcome,
            details: pairs.iter().copied(),
        }
        .hash(&prev))
    })();
    AuditDigest {
        seq,
        prev_hash: prev_hash.unwrap_or([0; 32]),
        hash: hash.unwrap_or([0; 32]),
        computed,
    }
}

fn decode_audit(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditRecord>> {
    let c = Cols { row };
    let seq = match c.int(0, "seq") {
        Ok(seq) => seq as u64,
        Err(reason) => return Ok(Err(Error::corrupt("an audit row", reason))),
    };
    let decode = || -> std::result::Result<AuditRecord, String> {
        let target = AuditTarget::from_columns(
            &c.text(4, "credential_id")?,
            &c.text(5, "scope_kind")?,
            &c.text(6, "owner")?,
        )
        .map_err(|e| format!("bad target: {e}"))?;
        let action = Action::parse(&c.text(3, "action")?).map_err(|e| e.to_string())?;
        let outcome = Outcome::parse(&c.text(7, "outcome")?).map_err(|e| e.to_string())?;
        let details: BTreeMap<String, String> = serde_json::from_str(&c.text(8, "details")?)
            .map_err(|e| format!("details are not a JSON object of strings: {e}"))?;
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                time: Timestamp(c.int(1, "time")?),
                actor: c.text(2, "actor")?,
                action,
                target,
                outcome,
                details,
            },
            prev_hash: c
                .bytes(9, "prev_hash")?
                .try_into()
                .map_err(|_| "prev_hash is not 32 bytes".to_string())?,
            hash: c
                .bytes(10, "hash")?
                .try_into()
                .map_err(|_| "hash is not 32 bytes".to_string())?,
        })
    };
    Ok(decode().map_err(|reason| Error::CorruptAuditRow { seq, reason }))
}

/// Turns on memory-mapped reads for one scan and off again afterwards.
struct MappedScan<'c>(&'c Connection);

impl<'c> MappedScan<'c> {
    fn new(conn: &'c Connection) -> MappedScan<'c> {
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

fn sql_value(value: SqlValue) -> Value {
    match value {
        SqlValue::Text(text) => Value::Text(text),
        SqlValue::Int(n) => Value::Integer(n),
    }
}

/// Lists credentials matching `filter` on `conn`, in id order.
fn list_sync(conn: &Connection, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
    let mut sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE 1");
    let mut values: Vec<Value> = Vec::new();
    for (clause, value) in filter.sql_conditions() {
        values.push(sql_value(value));
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| sql_error("cannot prepare a credential listing", e))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), decode_credential)
        .map_err(|e| sql_error("cannot list credentials", e))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(|e| sql_error("cannot list credentials", e))??);
    }
    Ok(out)
}

impl SqliteStore {
    /// The credential named `name` in exactly `scope` (zero or one), through the point
    /// cache, with the data generation of the read.
    fn named(
        &self,
        scope: &Scope,
        name: &str,
        stamped: bool,
    ) -> Result<(Option<Arc<CredentialRecord>>, i64)> {
        let key = PointKey::Name(scope.kind(), scope.owner(), name.to_string());
        match self.read_cached(key, stamped, |conn| {
            let only = ListFilter {
                scope: Some(scope.clone()),
                name: Some(name.to_string()),
                ..ListFilter::default()
            };
            list_sync(conn, &only)
                .map(|found| PointValue::Named(found.into_iter().next().map(Arc::new)))
        })? {
            (PointValue::Named(found), generation) => Ok((found, generation)),
            _ => Err(Error::store(
                StoreErrorKind::Other,
                "point cache kind mismatch",
            )),
        }
    }

    /// The grant rows of a credential through the point cache, with the data generation.
    fn grants_of(&self, credential_id: &CredentialId, stamped: bool) -> Result<(Vec<Grant>, i64)> {
        let id = credential_id.clone();
        let value = self.read_cached(PointKey::Grants(id.clone()), stamped, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT app, granted_by, granted_at, revoked_at, revoked_by FROM grants
                     WHERE credential_id = ?1 ORDER BY app",
                )
                .map_err(|e| sql_error("cannot prepare a grant listing", e))?;
            let rows = stmt
                .query_map([id.as_str()], |r| {
                    Ok(Grant {
                        credential_id: id.clone(),
                        app: r.get(0)?,
                        granted_by: r.get(1)?,
                        granted_at: Timestamp(r.get(2)?),
                        revoked_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                        revoked_by: r.get(4)?,
                    })
                })
                .map_err(|e| sql_error("cannot list grants", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map(PointValue::Grants)
                .map_err(|e| sql_error(&format!("cannot decode the grants of credential {id}"), e))
        })?;
        match value {
            (PointValue::Grants(grants), generation) => Ok((grants, generation)),
            _ => Err(Error::store(
                StoreErrorKind::Other,
                "point cache kind mismatch",
            )),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        let (value, _) = self.read_cached(PointKey::Id(id.clone()), false, |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"
                ))
                .map_err(|e| sql_error("cannot prepare a credential read", e))?;
            match stmt
                .query_row([id.as_str()], decode_credential)
                .optional()
                .map_err(|e| sql_error("cannot read a credential", e))?
            {
                Some(record) => record.map(|r| PointValue::Credential(Some(Box::new(r)))),
                None => Ok(PointValue::Credential(None)),
            }
        })?;
        match value {
            PointValue::Credential(record) => Ok(record.map(|r| *r)),
            _ => Err(Error::store(
                StoreErrorKind::Other,
                "point cache kind mismatch",
            )),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
        // A name within one scope is unique: a point read.
        if let (Some(scope), Some(name)) = (&filter.scope, &filter.name) {
            let (found, _) = self.named(scope, name, false)?;
            let limit = filter.limit.unwrap_or(usize::MAX);
            return Ok(found
                .into_iter()
                .filter(|r| filter.matches(r))
                .take(limit)
                .map(|r| (*r).clone())
                .collect());
        }
        let filter = filter.clone();
        self.read(move |conn| list_sync(conn, &filter)).await
    }

    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(AUDIT_SELECT)
                .map_err(|e| sql_error("cannot prepare an audit read", e))?;
            let rows = stmt
                .query_map(
                    params![
                        from.min(i64::MAX as u64) as i64,
                        limit.min(i64::MAX as usize) as i64
                    ],
                    decode_audit,
                )
                .map_err(|e| sql_error("cannot read the audit log", e))?;
            let mut out = Vec::with_capacity(limit.min(16_384));
            for row in rows {
                out.push(row.map_err(|e| sql_error("cannot read the audit log", e))??);
            }
            Ok(out)
        })
        .await
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.read_point(|conn| {
            load_head(conn).map_err(|e| sql_error("cannot read the audit head", e))
        })
    }

    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>> {
        Ok(self.grants_of(credential_id, false)?.0)
    }

    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        let (found, generation) = self.named(scope, name, true)?;
        Ok((found, ReadStamp::at(generation)))
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
        let (grants, generation) = self.grants_of(credential_id, true)?;
        Ok((grants, ReadStamp::at(generation)))
    }

    async fn commit_checked(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        self.send(batch, stamp).await
    }

    async fn audit_digests(&self, from: u64, limit: usize) -> Result<Vec<AuditDigest>> {
        self.read(move |conn| {
            // Memory-mapped reads skip a copy per page on this long scan. Only here: under
            // concurrent writes a mapped reader remaps as the file grows, which costs point
            // reads more than the copy saves (measured).
            let _map = MappedScan::new(conn);
            let mut stmt = conn
                .prepare_cached(AUDIT_SELECT)
                .map_err(|e| sql_error("cannot prepare an audit read", e))?;
            let mut rows = stmt
                .query(params![
                    from.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ])
                .map_err(|e| sql_error("cannot read the audit log", e))?;
            let mut out = Vec::with_capacity(limit.min(16_384));
            while let Some(row) = rows
                .next()
                .map_err(|e| sql_error("cannot read the audit log", e))?
            {
                out.push(digest_row(row));
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        self.send(batch, ReadStamp::UNCHECKED).await
    }

    // Records are read straight from the database (never through the point cache): a lease
    // claimer must see the lease another process just took.
    async fn record(&self, key: &RecordKey) -> Result<Option<Record>> {
        self.read_point(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE kind = ?1 AND owner = ?2 AND key = ?3"
                ))
                .map_err(|e| sql_error("cannot prepare a record read", e))?;
            stmt.query_row(params![key.kind, key.owner, key.key], decode_record)
                .optional()
                .map_err(|e| sql_error("cannot read a record", e))?
                .transpose()
        })
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>> {
        let filter = filter.clone();
        self.read(move |conn| records_sync(conn, &filter)).await
    }
}

impl SqliteStore {
    async fn send(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        let (reply, wait) = oneshot::channel();
        self.inner
            .writer
            .send(Request {
                batch,
                stamp,
                reply,
            })
            .map_err(|_| Error::store(StoreErrorKind::Closed, "the SQLite writer has stopped"))?;
        wait.await.map_err(|_| {
            Error::store(
                StoreErrorKind::Closed,
                "the SQLite writer stopped before answering; the batch may not have been written",
            )
        })?
    }
}

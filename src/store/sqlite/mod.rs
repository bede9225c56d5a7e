//! `SqliteStore`: the embedded default. One file, WAL, `synchronous=FULL` by default, schema
//! migrations with a version table, and group commit — one writer thread folds every batch
//! waiting at the moment into one transaction, and one sync covers every transaction
//! committed while the previous sync ran.
//!
//! The parts: `options` (settings and counters), `files` (the file before SQLite opens it),
//! `schema` (migrations, connection settings), `cache` and `packed` (the point cache and
//! its packed rows), `reads` (listings), `writer` (group commit and the closing
//! checkpoint), `sync` (the WAL syncs that make commits durable), `codec` (rows into
//! records) and `error` (SQLite's result codes into [`StoreErrorKind`]s).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::group;

use super::sql::Dialect;
use super::{AuditQuery, Batch, CommitReceipt, ListFilter, ReadStamp, RecordFilter, Store};
use crate::audit::encoding::{AuditDigest, AuditRecord, ChainHead};
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope};
use cache::{default_entries, PointCache, PointValue};
use codec::{
    decode_audit, decode_credential, decode_record, digest_row, AUDIT_SELECT, CREDENTIAL_COLUMNS,
    RECORD_COLUMNS,
};
use error::sql_error;
use files::{prepare_file, resolved, wal_of};
pub use options::{SqliteOptions, Synchronous, WriterStats};
use packed::PointKey;
use reads::{list_sync, records_sync, sql_value, MappedScan};
pub use schema::SQLITE_APPLICATION_ID;
use schema::{
    check_application, configure, count_credentials, load_head, migrate, read_generation,
};
use sync::Syncer;
use writer::{writer_loop, Message};

mod backup;
mod cache;
mod codec;
mod error;
mod files;
mod options;
mod packed;
mod reads;
mod schema;
mod sync;
mod writer;

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    /// Set when a sync of the WAL failed: nothing is committed or acknowledged afterwards.
    sync_failed: AtomicBool,
    /// The newest data generation the writer has seen committed (its own commits and, read
    /// at the start of each transaction, other processes'). Cached point reads older than
    /// this are known stale.
    generation: AtomicI64,
}

struct Inner {
    /// The path the caller gave (shown, and returned by [`SqliteStore::path`]).
    path: PathBuf,
    /// The database file as SQLite resolved it at open: what readers open.
    database: PathBuf,
    counters: Arc<Counters>,
    options: SqliteOptions,
    /// The way to the writer thread; taken out by [`SqliteStore::close`], so nothing can be
    /// queued behind the close.
    writer: Mutex<Option<mpsc::Sender<Message>>>,
    /// Set by [`SqliteStore::close`]: reads fail and pooled connections are not kept.
    closed: AtomicBool,
    readers: Mutex<Vec<Connection>>,
    cache: Mutex<PointCache>,
}

/// The embedded SQLite store. Cheap to clone (clones share the connection set, the writer
/// and the point cache).
///
/// Close it with [`SqliteStore::close`] before the process exits: that commits what is
/// queued, copies the WAL into the database and removes it. A store that is merely dropped
/// does the same on its writer thread, without blocking the thread that drops it, but a
/// process that exits right after may end that thread first and leave the WAL behind (it
/// is replayed on the next open; nothing is lost).
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

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the store at `path`, migrating its schema.
    ///
    /// Opening takes the database's write lock only when a migration is due: a store whose
    /// schema is current opens (and reads) while another process holds the write lock.
    /// With [`SqliteOptions::read_only`] the file must exist and nothing is written; with
    /// [`SqliteOptions::create_if_missing`] off it must exist and hold a database.
    ///
    /// Vault files carry SQLite's `application_id` ([`SQLITE_APPLICATION_ID`]). A database
    /// of another application (another id, or tables and no strongroom schema) is refused
    /// before anything is changed in it. A new database file is created with mode 0600
    /// (its `-wal` and `-shm` files take the same mode), in a folder created 0700.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        if !options.read_only {
            prepare_file(&path, options.create_if_missing)?;
        }
        let flags = if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            // The file exists by now (`prepare_file`): never let SQLite create another.
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| sql_error(&format!("cannot open {shown}"), e))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| sql_error(&format!("cannot configure {shown}"), e))?;
        // Before anything that writes (the WAL switch, a migration).
        check_application(&conn, &shown)?;
        configure(&conn, &options)
            .map_err(|e| sql_error(&format!("cannot configure {shown}"), e))?;
        migrate(&mut conn, &shown, options.read_only)?;
        let head = load_head(&conn).map_err(|e| sql_error("cannot read the audit head", e))?;
        let database = resolved(&conn, &path).map_err(|e| Error::io(&shown, e))?;
        let (tx, rx) = mpsc::channel::<Message>();
        let max_group = options.max_group.max(1);
        let counters = Arc::new(Counters::default());
        let generation = read_generation(&conn)
            .map_err(|e| sql_error(&format!("cannot read the data generation of {shown}"), e))?;
        counters.generation.store(generation, Ordering::Release);
        let cache_entries =
            match options.point_cache_entries {
                Some(entries) => entries,
                None => default_entries(count_credentials(&conn).map_err(|e| {
                    sql_error(&format!("cannot count the credentials of {shown}"), e)
                })?),
            };
        let cache_sized_from_file = options.point_cache_entries.is_none();
        // With `Full`, the syncer makes each group durable before its callers hear back;
        // SQLite itself then need not sync inside the commit (see `sync`).
        let syncer = if options.synchronous == Synchronous::Full && !options.read_only {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| sql_error(&format!("cannot configure {shown}"), e))?;
            Some(
                Syncer::start(wal_of(&database), counters.clone())
                    .map_err(|e| Error::io(&shown, e))?,
            )
        } else {
            None
        };
        let writer_counters = counters.clone();
        let read_only = options.read_only;
        std::thread::Builder::new()
            .name("strongroom-sqlite-writer".into())
            .spawn(move || {
                writer_loop(
                    conn,
                    head,
                    rx,
                    max_group,
                    &writer_counters,
                    read_only,
                    syncer,
                )
            })
            .map_err(|e| Error::io(&shown, e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                database,
                counters,
                options,
                writer: Mutex::new(Some(tx)),
                closed: AtomicBool::new(false),
                readers: Mutex::new(Vec::new()),
                cache: Mutex::new(PointCache::new(cache_entries, cache_sized_from_file)),
            }),
        })
    }

    /// Closes the store, for this handle and every clone of it: commits the batches already
    /// queued, copies the WAL into the database and truncates it (SQLite then deletes it as
    /// the last connection closes), and closes every connection. Afterwards commits and
    /// reads fail with [`StoreErrorKind::Closed`]; closing again does nothing.
    ///
    /// It waits for nobody: when another process is reading or writing the file, the
    /// checkpoint copies what it can and leaves the rest of the WAL to a later checkpoint
    /// (SQLite's automatic one, or that process's own close). An error means SQLite itself
    /// failed (an I/O error, say); the data committed before is safe either way.
    pub async fn close(&self) -> Result<()> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner.closed.store(true, Ordering::Release);
        // The writer should be the last connection, so that closing it removes the WAL.
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let Some(writer) = writer else {
            return Ok(());
        };
        let (reply, done) = oneshot::channel();
        if writer.send(Message::Close(reply)).is_err() {
            return Ok(()); // the writer had already stopped
        }
        drop(writer);
        done.await.unwrap_or(Ok(()))
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
            syncs: self.inner.counters.syncs.load(Ordering::Relaxed),
        }
    }

    /// Runs a point read (one row or a handful) on the calling thread with a pooled
    /// connection: in WAL mode readers never wait for the writer, and a lookup of a few
    /// microseconds costs less than handing it to another thread and back.
    pub(super) fn read_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.inner.take_reader()?;
        let out = f(&conn);
        self.inner.give_back(conn);
        out
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
        self.check_open()?;
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let shown = self.path.display().to_string();
        let conn = Connection::open_with_flags(
            &self.database,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(&format!("cannot open {shown} for reading"), e))?;
        conn.busy_timeout(self.options.busy_timeout)
            .map_err(|e| sql_error("cannot configure a reader", e))?;
        Ok(conn)
    }

    /// A closed store answers nothing, not even from its cache.
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::store(
                StoreErrorKind::Closed,
                format!(
                    "the SQLite store {} was closed; open it again",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if !self.closed.load(Ordering::Acquire) && pool.len() < self.options.readers.max(1) {
            pool.push(conn);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        let (value, _) = self.read_cached(&PointKey::Id(id.clone()), false, |conn| {
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

    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let (condition, values) = query.sql_where(Dialect::Sqlite);
        let sql = format!(
            "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, \
             details, prev_hash, hash FROM audit WHERE {condition}{}",
            query.sql_order_limit()
        );
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(|e| sql_error("cannot prepare an audit query", e))?;
            let rows = stmt
                .query_map(
                    rusqlite::params_from_iter(values.into_iter().map(sql_value)),
                    decode_audit,
                )
                .map_err(|e| sql_error("cannot read the audit log", e))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(|e| sql_error("cannot read the audit log", e))??);
            }
            Ok(out)
        })
        .await
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        let head = self.read_point(|conn| {
            load_head(conn).map_err(|e| sql_error("cannot read the audit head", e))
        })?;
        // The head read may be a group's that is committed but not yet synced (its callers
        // are not answered yet). A head is what a checkpoint vouches for, so it is returned
        // only once durable: the barrier is queued after that group and answered after the
        // sync covering it. `Normal` opted out of durability; read-only writes nothing.
        if self.inner.options.synchronous == Synchronous::Full && !self.inner.options.read_only {
            self.synced().await?;
        }
        Ok(head)
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
    /// Waits until every group the writer committed so far is durable.
    async fn synced(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let queued = {
            let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer
                .as_ref()
                .is_some_and(|w| w.send(Message::Barrier(reply)).is_ok())
        };
        let stopped = || {
            Error::store(
                StoreErrorKind::Closed,
                format!(
                    "the SQLite store {} was closed before the audit head could be made \
                     durable; open it again",
                    self.inner.path.display()
                ),
            )
        };
        if !queued {
            return Err(stopped());
        }
        done.await.map_err(|_| stopped())?
    }

    /// Queues a batch with the writer thread and waits for its answer.
    async fn send(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        group::send("SQLite", batch, stamp, |request| {
            let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer
                .as_ref()
                .is_some_and(|w| w.send(Message::Commit(request)).is_ok())
        })
        .await
    }
}

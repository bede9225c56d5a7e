//! `PostgresStore`: many vault instances on one PostgreSQL database.
//!
//! Reads go through a connection pool (deadpool-postgres over tokio-postgres). Writes go
//! through one writer task per instance that gathers the batches queued while it was busy
//! into one transaction (group commit). Every transaction first locks the one row of
//! `state`, which holds the audit chain head and the data generation: commits from every
//! instance serialise on it, so the chain never forks and sequence numbers have no gaps,
//! and a batch is applied whole or not at all.
//!
//! Hot paths (issue 14): scope + name lookups and grant reads are cached for the data
//! generation they were read at (`cache`), so an audited resolve costs no read round trip
//! when nothing changed; the writer keeps a few group transactions in flight and releases
//! the chain-head lock of an audit-only group before its WAL flush, waiting for the flush
//! before answering (see `writer::run_group`). Callers are answered only once their batch
//! is durable.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::group::{self, Request};
use super::sql::{Dialect, SqlValue};
use super::{AuditQuery, Batch, CommitReceipt, ListFilter, ReadStamp, RecordFilter, Store};
use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope};
use cache::{NameKey, PointCache, POINT_CACHE_ENTRIES};
use codec::{decode_audit, decode_credential, decode_grant, decode_record, decode_state};
use error::{db_error, pool_error};
use schema::{migrate, valid_schema};
use statements::{Sql, COLUMNS, RECORD_COLUMNS};
use writer::{writer, Counters, Shared};

mod cache;
mod codec;
mod error;
mod schema;
mod statements;
mod writer;

/// How a [`PostgresStore`] connects and behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The PostgreSQL schema (namespace) the tables live in; created if missing.
    pub schema: String,
    /// Pooled connections for reads (the writer uses one more).
    pub pool_size: usize,
    /// Run even when the server acknowledges commits before they are durable
    /// (`synchronous_commit = off`). A crash may then lose acknowledged credentials and
    /// audit rows. Off by default: the store refuses to open.
    pub allow_async_commit: bool,
    /// Most batches one group transaction takes.
    pub max_group: usize,
    /// Most scope + name lookups (and, apart, most credentials' grant lists) kept by the
    /// point-read cache; `0` turns it off. Entries are valid for one data generation only,
    /// so a change by any instance retires them (see [`Store::commit_checked`]).
    pub point_cache_entries: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "strongroom".into(),
            pool_size: 16,
            allow_async_commit: false,
            max_group: 512,
            point_cache_entries: POINT_CACHE_ENTRIES,
        }
    }
}

impl PostgresOptions {
    /// Options with this schema name.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Options with this pool size.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Options with this point-read cache size (`0`: no cache).
    pub fn point_cache_entries(mut self, entries: usize) -> Self {
        self.point_cache_entries = entries;
        self
    }

    /// Accept `synchronous_commit = off` (see the field).
    pub fn allow_async_commit(mut self, allow: bool) -> Self {
        self.allow_async_commit = allow;
        self
    }
}

/// A [`Store`] on PostgreSQL, safe to share between many processes.
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    writer: mpsc::UnboundedSender<Request>,
    cache: Arc<PointCache>,
    stats: Arc<Counters>,
    shown: String,
}

/// What a [`PostgresStore`]'s writer has done since the store was opened
/// ([`PostgresStore::writer_stats`]): committed group transactions, the batches and audit
/// events in them, and where their time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PostgresWriterStats {
    /// Group transactions committed.
    pub groups: u64,
    /// Batches in them (refused batches included).
    pub batches: u64,
    /// Audit events they appended.
    pub events: u64,
    /// Microseconds, summed over groups, from asking for the chain-head lock to holding it.
    pub lock_wait_us: u64,
    /// Microseconds, summed over groups, from holding the lock to the commit's answer (the
    /// lock is held that long).
    pub locked_us: u64,
    /// Microseconds, summed over groups, from the commit's answer to the WAL flush's.
    pub flush_wait_us: u64,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shown)
            .field("schema", &self.sql.schema)
            .finish()
    }
}

impl PostgresStore {
    /// Connects with default options (`postgres://user@host:port/db`, or the key=value
    /// form), creating the schema and tables on first use.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        PostgresStore::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<PostgresStore> {
        if !valid_schema(&options.schema) {
            return Err(Error::invalid(
                "schema",
                "a PostgreSQL schema name is 1 to 63 lowercase letters, digits or `_`, not \
                 starting with a digit",
            ));
        }
        let config: tokio_postgres::Config = url.parse().map_err(|_| {
            Error::invalid(
                "postgres URL",
                "is not a PostgreSQL connection string (postgres://user@host:5432/database)",
            )
        })?;
        let shown = describe(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size + writer::GROUPS_IN_FLIGHT)
            .build()
            .map_err(|e| Error::config(format!("cannot build the connection pool: {e}")))?;
        let sql = Arc::new(Sql::new(&options.schema));
        {
            let mut client = pool
                .get()
                .await
                .map_err(|e| pool_error(&format!("cannot connect to PostgreSQL at {shown}"), e))?;
            let sync: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| db_error("cannot read synchronous_commit", e))?;
            if sync == "off" && !options.allow_async_commit {
                return Err(Error::config(format!(
                    "PostgreSQL at {shown} has synchronous_commit = off, so a crash may lose \
                     commits it has acknowledged; turn it on (ALTER DATABASE ... SET \
                     synchronous_commit = on) or opt out with \
                     PostgresOptions::allow_async_commit(true)"
                )));
            }
            migrate(&mut client, &options.schema, &shown).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = Arc::new(PointCache::new(options.point_cache_entries));
        let stats = Arc::new(Counters::default());
        let shared = Shared {
            pool: pool.clone(),
            sql: sql.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            max_group: options.max_group.max(1),
        };
        tokio::spawn(writer(Arc::new(shared), rx));
        Ok(PostgresStore {
            pool,
            sql,
            writer: tx,
            cache,
            stats,
            shown,
        })
    }

    /// What the writer has done so far (group sizes, lock and flush times).
    pub fn writer_stats(&self) -> PostgresWriterStats {
        let s = &self.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        PostgresWriterStats {
            groups: get(&s.groups),
            batches: get(&s.batches),
            events: get(&s.events),
            lock_wait_us: get(&s.lock_wait_us),
            locked_us: get(&s.locked_us),
            flush_wait_us: get(&s.flush_wait_us),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error("cannot get a PostgreSQL connection", e))
    }

    /// A read through a pooled connection with a statement prepared once per connection;
    /// `what` names the read in errors.
    async fn read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| db_error("cannot prepare a read", e))?;
        client
            .query(&stmt, params)
            .await
            .map_err(|e| db_error(&format!("cannot read {what}"), e))
    }

    /// The flushing write of [`Store::chain_head`] was refused as read-only. On a standby
    /// that is expected: what it shows came from the primary's WAL, durable there. A
    /// primary whose sessions default to read-only transactions
    /// (`default_transaction_read_only`) still has to flush, so there the write is made in
    /// a transaction that asks to be read-write.
    async fn flush_read_only(&self, what: &str) -> Result<()> {
        let client = self.client().await?;
        let standby: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_error(&format!("cannot read {what}"), e))?;
        if standby {
            return Ok(());
        }
        let flushed = client
            .batch_execute(&format!(
                "START TRANSACTION READ WRITE; {}; COMMIT",
                self.sql.flush
            ))
            .await;
        if let Err(e) = flushed {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(db_error(&format!("cannot read {what}"), e));
        }
        Ok(())
    }

    /// Queues a batch with the writer task and waits for its answer.
    async fn send(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        group::send("PostgreSQL", batch, stamp, |request| {
            self.writer.send(request).is_ok()
        })
        .await
    }
}

fn sql_param(value: &SqlValue) -> &(dyn ToSql + Sync) {
    match value {
        SqlValue::Text(text) => text,
        SqlValue::Int(n) => n,
    }
}

/// `host:port/db` for messages (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default)")
    )
}

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        let rows = self
            .read(&self.sql.get, &[&id.as_str()], "a credential")
            .await?;
        rows.first().map(|r| decode_credential(r, 0)).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
        let (condition, values) = filter.sql_where(Dialect::Postgres);
        let mut query = format!(
            "SELECT {COLUMNS} FROM {}.credentials WHERE {condition} ORDER BY id",
            self.sql.schema
        );
        if let Some(limit) = filter.limit {
            query.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(sql_param).collect();
        let client = self.client().await?;
        let rows = client
            .query(&query, &refs)
            .await
            .map_err(|e| db_error("cannot list credentials", e))?;
        rows.iter().map(|r| decode_credential(r, 0)).collect()
    }

    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>> {
        let rows = self
            .read(&self.sql.grants, &[&credential_id.as_str()], "grants")
            .await?;
        rows.iter().map(|r| decode_grant(r, 0)).collect()
    }

    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read(
                &self.sql.audit_range,
                &[&(from as i64), &limit],
                "the audit log",
            )
            .await?;
        rows.iter().map(decode_audit).collect()
    }

    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let (condition, values) = query.sql_where(Dialect::Postgres);
        let sql = format!(
            "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, \
             details, prev_hash, hash FROM {}.audit WHERE {condition}{}",
            self.sql.schema,
            query.sql_order_limit()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(sql_param).collect();
        let client = self.client().await?;
        let rows = client
            .query(&sql, &refs)
            .await
            .map_err(|e| db_error("cannot read the audit log", e))?;
        rows.iter().map(decode_audit).collect()
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        let rows = self
            .read(&self.sql.read_state, &[], "the chain head")
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::corrupt("the store's state row", "it is missing"))?;
        let head = decode_state(row).map(|(_, head)| head)?;
        // The head read may be a group's whose WAL flush is still under way (its callers are
        // not answered yet). A head is what a checkpoint vouches for, so it is returned only
        // once durable: this synchronous write's commit record comes after the head's.
        let what = "the chain head (waiting for its flush)";
        match self.read(&self.sql.flush, &[], what).await {
            Ok(_) => Ok(head),
            Err(Error::Store {
                kind: StoreErrorKind::ReadOnly,
                ..
            }) => self.flush_read_only(what).await.map(|()| head),
            Err(e) => Err(e),
        }
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        self.send(batch, ReadStamp::UNCHECKED).await
    }

    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        let key: NameKey = (scope.kind().as_str(), scope.owner(), name.to_string());
        if let Some((found, generation)) = self.cache.name(&key) {
            return Ok((found, ReadStamp::at(generation)));
        }
        let rows = self
            .read(
                &self.sql.find_named,
                &[&key.0, &key.1, &key.2],
                "a credential",
            )
            .await?;
        // The LEFT JOIN from the state row always gives exactly one row.
        let row = rows
            .first()
            .ok_or_else(|| Error::corrupt("the store's state row", "it is missing"))?;
        let generation: i64 = row
            .try_get(0)
            .map_err(|e| db_error("cannot read the data generation", e))?;
        let present: Option<String> = row
            .try_get(1)
            .map_err(|e| db_error("cannot read a credential", e))?;
        let record = match present {
            None => None,
            Some(_) => Some(Arc::new(decode_credential(row, 1)?)),
        };
        self.cache.keep_name(key, generation, record.clone());
        Ok((record, ReadStamp::at(generation)))
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
        if let Some((grants, generation)) = self.cache.grants(credential_id) {
            return Ok((grants, ReadStamp::at(generation)));
        }
        let rows = self
            .read(
                &self.sql.grants_stamped,
                &[&credential_id.as_str()],
                "grants",
            )
            .await?;
        let mut generation = 0;
        let mut grants = Vec::new();
        for row in &rows {
            generation = row
                .try_get(0)
                .map_err(|e| db_error("cannot read the data generation", e))?;
            let present: Option<String> = row
                .try_get(1)
                .map_err(|e| db_error("cannot read grants", e))?;
            if present.is_some() {
                grants.push(decode_grant(row, 1)?);
            }
        }
        self.cache
            .keep_grants(credential_id.clone(), generation, grants.clone());
        Ok((grants, ReadStamp::at(generation)))
    }

    async fn commit_checked(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        self.send(batch, stamp).await
    }

    async fn record(&self, key: &RecordKey) -> Result<Option<Record>> {
        let rows = self
            .read(
                &self.sql.record,
                &[&key.kind, &key.owner, &key.key],
                "a record",
            )
            .await?;
        rows.first().map(decode_record).transpose()
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>> {
        let (condition, values) = filter.sql_where(Dialect::Postgres);
        let mut query = format!(
            "SELECT {RECORD_COLUMNS} FROM {}.records WHERE {condition} \
             ORDER BY kind, owner, key",
            self.sql.schema
        );
        if let Some(limit) = filter.limit {
            query.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(sql_param).collect();
        let client = self.client().await?;
        let rows = client
            .query(&query, &refs)
            .await
            .map_err(|e| db_error("cannot list records", e))?;
        rows.iter().map(decode_record).collect()
    }
}

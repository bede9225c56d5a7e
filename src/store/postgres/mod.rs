//! `PostgresStore`: many vault instances on one PostgreSQL database.
//!
//! Reads go through a connection pool (deadpool-postgres over tokio-postgres). Writes go
//! through one writer task per instance that gathers the batches queued while it was busy
//! into one transaction (group commit). Every transaction first locks the one row of
//! `state`, which holds the audit chain head and the data generation: commits from every
//! instance serialise on it, so the chain never forks and sequence numbers have no gaps,
//! and a batch is applied whole or not at all.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::rules::{
    check_record_delete, check_record_put, check_version, grant_missing, grant_target_missing,
};
use super::{
    stale_read, Batch, CommitReceipt, ListFilter, Mutation, ReadStamp, RecordFilter, SqlValue,
    Store,
};
use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::audit::event::{Action, AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Record, RecordKey, Scope, ScopeKind,
    Timestamp,
};

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
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "strongroom".into(),
            pool_size: 16,
            allow_async_commit: false,
            max_group: 512,
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
    shown: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shown)
            .field("schema", &self.sql.schema)
            .finish()
    }
}

struct Request {
    batch: Batch,
    stamp: ReadStamp,
    reply: oneshot::Sender<Result<CommitReceipt>>,
}

/// The statements, with the schema name in place.
struct Sql {
    schema: String,
    lock_state: String,
    update_state: String,
    read_state: String,
    get: String,
    find_named: String,
    grants: String,
    grants_stamped: String,
    audit_range: String,
    version_of: String,
    upsert: String,
    delete: String,
    delete_grants: String,
    put_grant: String,
    delete_grant: String,
    insert_audit: String,
    record: String,
    record_version: String,
    put_record: String,
    delete_record: String,
}

const COLUMNS: &str = "id, name, scope_kind, owner, provider, handler_type, state, metadata, \
    agent_accessible, version, created_at, updated_at, key_id, sealed, expires_at";

const RECORD_COLUMNS: &str =
    "kind, owner, key, version, created_at, updated_at, expires_at, body, sealed";

impl Sql {
    fn new(s: &str) -> Sql {
        let c_cols: String = COLUMNS
            .split(", ")
            .map(|c| format!("c.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Sql {
            schema: s.to_string(),
            lock_state: format!(
                "SELECT generation, head_seq, head_hash FROM {s}.state WHERE id = 1 FOR UPDATE"
            ),
            update_state: format!(
                "UPDATE {s}.state SET generation = $1, head_seq = $2, head_hash = $3 WHERE id = 1"
            ),
            read_state: format!(
                "SELECT generation, head_seq, head_hash FROM {s}.state WHERE id = 1"
            ),
            get: format!("SELECT {COLUMNS} FROM {s}.credentials WHERE id = $1"),
            find_named: format!(
                "SELECT st.generation, {c_cols} FROM {s}.state st LEFT JOIN {s}.credentials c \
                 ON c.scope_kind = $1 AND c.owner = $2 AND c.name = $3 WHERE st.id = 1"
            ),
            grants: format!(
                "SELECT credential_id, app, granted_by, granted_at, revoked_at, revoked_by \
                 FROM {s}.grants WHERE credential_id = $1 ORDER BY app"
            ),
            grants_stamped: format!(
                "SELECT st.generation, g.credential_id, g.app, g.granted_by, g.granted_at, \
                 g.revoked_at, g.revoked_by FROM {s}.state st LEFT JOIN {s}.grants g \
                 ON g.credential_id = $1 WHERE st.id = 1 ORDER BY g.app"
            ),
            audit_range: format!(
                "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, \
                 details, prev_hash, hash FROM {s}.audit WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ),
            version_of: format!("SELECT version FROM {s}.credentials WHERE id = $1"),
            upsert: format!(
                "INSERT INTO {s}.credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO UPDATE SET \
                 name = excluded.name, scope_kind = excluded.scope_kind, owner = excluded.owner, \
                 provider = excluded.provider, handler_type = excluded.handler_type, \
                 state = excluded.state, metadata = excluded.metadata, \
                 agent_accessible = excluded.agent_accessible, version = excluded.version, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 key_id = excluded.key_id, sealed = excluded.sealed, \
                 expires_at = excluded.expires_at"
            ),
            delete: format!("DELETE FROM {s}.credentials WHERE id = $1"),
            delete_grants: format!("DELETE FROM {s}.grants WHERE credential_id = $1"),
            put_grant: format!(
                "INSERT INTO {s}.grants (credential_id, app, granted_by, granted_at, revoked_at, \
                 revoked_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (credential_id, app) DO \
                 UPDATE SET granted_by = excluded.granted_by, granted_at = excluded.granted_at, \
                 revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by"
            ),
            delete_grant: format!("DELETE FROM {s}.grants WHERE credential_id = $1 AND app = $2"),
            record: format!(
                "SELECT {RECORD_COLUMNS} FROM {s}.records \
                 WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            record_version: format!(
                "SELECT version FROM {s}.records WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            put_record: format!(
                "INSERT INTO {s}.records ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                 $8, $9) ON CONFLICT (kind, owner, key) DO UPDATE SET \
                 version = excluded.version, created_at = excluded.created_at, \
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at, \
                 body = excluded.body, sealed = excluded.sealed"
            ),
            delete_record: format!(
                "DELETE FROM {s}.records WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            insert_audit: format!(
                "INSERT INTO {s}.audit (seq, time, actor, action, credential_id, scope_kind, \
                 owner, outcome, details, prev_hash, hash) SELECT * FROM UNNEST($1::bigint[], \
                 $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::bytea[], $11::bytea[])"
            ),
        }
    }
}

/// The schema migrations, in order; each runs once, under an advisory lock.
fn migrations(s: &str) -> Vec<String> {
    vec![
        // 1: credentials, grants, the audit chain and the state row.
        format!(
            "CREATE TABLE {s}.credentials (
            id               TEXT PRIMARY KEY,
            name             TEXT NOT NULL,
            scope_kind       TEXT NOT NULL,
            owner            TEXT NOT NULL,
            provider         TEXT NOT NULL,
            handler_type     TEXT NOT NULL,
            state            TEXT NOT NULL,
            metadata         TEXT NOT NULL,
            agent_accessible BOOLEAN NOT NULL,
            version          BIGINT NOT NULL,
            created_at       BIGINT NOT NULL,
            updated_at       BIGINT NOT NULL,
            key_id           TEXT NOT NULL,
            sealed           BYTEA NOT NULL,
            UNIQUE (scope_kind, owner, name)
        );
        CREATE INDEX credentials_key_id ON {s}.credentials (key_id);
        CREATE INDEX credentials_provider ON {s}.credentials (provider);
        CREATE TABLE {s}.grants (
            credential_id TEXT NOT NULL,
            app           TEXT NOT NULL,
            granted_by    TEXT NOT NULL,
            granted_at    BIGINT NOT NULL,
            revoked_at    BIGINT,
            revoked_by    TEXT,
            PRIMARY KEY (credential_id, app)
        );
        CREATE TABLE {s}.audit (
            seq           BIGINT PRIMARY KEY,
            time          BIGINT NOT NULL,
            actor         TEXT NOT NULL,
            action        TEXT NOT NULL,
            credential_id TEXT NOT NULL,
            scope_kind    TEXT NOT NULL,
            owner         TEXT NOT NULL,
            outcome       TEXT NOT NULL,
            details       TEXT NOT NULL,
            prev_hash     BYTEA NOT NULL,
            hash          BYTEA NOT NULL
        );
        CREATE TABLE {s}.state (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            generation BIGINT NOT NULL,
            head_seq   BIGINT NOT NULL,
            head_hash  BYTEA
        );
        INSERT INTO {s}.state (id, generation, head_seq, head_hash) VALUES (1, 0, 0, NULL);"
        ),
        // 2: `expires_at` as a column of its own (it was a metadata string of milliseconds;
        //    the values move over in `after_migration`), indexed for listing what expires
        //    first.
        format!(
            "ALTER TABLE {s}.credentials ADD COLUMN expires_at BIGINT;
            CREATE INDEX credentials_expires_at ON {s}.credentials (expires_at)
                WHERE expires_at IS NOT NULL;
            UPDATE {s}.state SET generation = generation + 1 WHERE id = 1;"
        ),
        // 3: records, keyed by kind, owner and key. The key columns use the "C" collation
        //    so that ordering and paging compare bytes, whatever the database's locale.
        format!(
            "CREATE TABLE {s}.records (
                kind       TEXT COLLATE \"C\" NOT NULL,
                owner      TEXT COLLATE \"C\" NOT NULL,
                key        TEXT COLLATE \"C\" NOT NULL,
                version    BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                expires_at BIGINT,
                body       TEXT NOT NULL,
                sealed     BYTEA,
                PRIMARY KEY (kind, owner, key)
            );
            CREATE INDEX records_owner ON {s}.records (owner, kind, key);
            CREATE INDEX records_expires_at ON {s}.records (expires_at)
                WHERE expires_at IS NOT NULL;"
        ),
    ]
}

/// Data changes that go with a schema step, run in the same transaction right after its SQL.
async fn after_migration(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    version: usize,
) -> std::result::Result<(), tokio_postgres::Error> {
    if version == 2 {
        // `expires_at` moves out of the metadata. A value the vault could not have written
        // (not an integer) stays where it is, and so does metadata that does not decode.
        let rows = tx
            .query(
                &format!(
                    "SELECT id, metadata FROM {schema}.credentials \
                     WHERE metadata LIKE '%\"expires_at\"%'"
                ),
                &[],
            )
            .await?;
        let update = tx
            .prepare(&format!(
                "UPDATE {schema}.credentials SET expires_at = $1, metadata = $2 WHERE id = $3"
            ))
            .await?;
        for row in rows {
            let (Ok(id), Ok(metadata)) = (row.try_get::<_, String>(0), row.try_get::<_, String>(1))
            else {
                continue;
            };
            if let Some((at, rest)) = super::split_old_expiry(&metadata) {
                tx.execute(&update, &[&at, &rest, &id]).await?;
            }
        }
    }
    Ok(())
}

fn db_error(context: &str, e: &tokio_postgres::Error) -> Error {
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

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::store(
        StoreErrorKind::Busy,
        format!("cannot get a PostgreSQL connection: {e}"),
    )
}

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
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
            .max_size(options.pool_size + 1)
            .build()
            .map_err(|e| Error::config(format!("cannot build the connection pool: {e}")))?;
        let sql = Arc::new(Sql::new(&options.schema));
        {
            let mut client = pool.get().await.map_err(|e| {
                Error::store(
                    StoreErrorKind::Busy,
                    format!("cannot connect to PostgreSQL at {shown}: {e}"),
                )
            })?;
            let sync: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| db_error("cannot read synchronous_commit", &e))?;
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
        tokio::spawn(writer(
            pool.clone(),
            sql.clone(),
            rx,
            options.max_group.max(1),
        ));
        Ok(PostgresStore {
            pool,
            sql,
            writer: tx,
            shown,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
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
            .map_err(|e| db_error("cannot prepare a read", &e))?;
        client
            .query(&stmt, params)
            .await
            .map_err(|e| db_error(&format!("cannot read {what}"), &e))
    }

    async fn send(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Request {
                batch,
                stamp,
                reply,
            })
            .map_err(|_| Error::store(StoreErrorKind::Other, "the store's writer has stopped"))?;
        answer.await.map_err(|_| {
            Error::store(
                StoreErrorKind::Other,
                "the store's writer stopped before answering; the batch may not be written",
            )
        })?
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

async fn migrate(client: &mut deadpool_postgres::Object, schema: &str, shown: &str) -> Result<()> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| db_error(what, &e);
    let tx = client
        .transaction()
        .await
        .map_err(fail("cannot start the migration"))?;
    // One migrating instance at a time, whatever the others do.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('strongroom migrate ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(fail("cannot take the migration lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version INTEGER NOT NULL);"
    ))
    .await
    .map_err(fail("cannot create the schema version table"))?;
    let current: Option<i32> = tx
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(fail("cannot read the schema version"))?;
    let current = current.unwrap_or(0) as usize;
    let steps = migrations(schema);
    if current > steps.len() {
        return Err(Error::store(
            StoreErrorKind::Schema,
            format!(
                "{shown} schema {schema} has version {current}, but this build of strongroom \
                 knows only up to {}; upgrade strongroom",
                steps.len()
            ),
        ));
    }
    for (i, step) in steps.iter().enumerate().skip(current) {
        tx.batch_execute(step)
            .await
            .map_err(fail("a schema migration failed"))?;
        after_migration(&tx, schema, i + 1)
            .await
            .map_err(fail("a schema migration failed"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&((i + 1) as i32)],
        )
        .await
        .map_err(fail("cannot record the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(fail("cannot commit the schema migration"))
}

async fn writer(
    pool: Pool,
    sql: Arc<Sql>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    max_group: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        run_group(&pool, &sql, group).await;
    }
}

/// The audit rows of a group, as columns for one `UNNEST` insert.
#[derive(Default)]
struct AuditColumns {
    seq: Vec<i64>,
    time: Vec<i64>,
    actor: Vec<String>,
    action: Vec<String>,
    credential_id: Vec<String>,
    scope_kind: Vec<String>,
    owner: Vec<String>,
    outcome: Vec<String>,
    details: Vec<String>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl AuditColumns {
    fn push(&mut self, record: &AuditRecord) -> Result<()> {
        let (credential_id, scope_kind, owner) = record.event.target.columns();
        self.details.push(
            serde_json::to_string(&record.event.details)
                .map_err(|e| Error::invalid("audit details", e.to_string()))?,
        );
        self.seq.push(record.seq as i64);
        self.time.push(record.event.time.0);
        self.actor.push(record.event.actor.clone());
        self.action.push(record.event.action.as_str().to_string());
        self.credential_id.push(credential_id);
        self.scope_kind.push(scope_kind);
        self.owner.push(owner);
        self.outcome.push(record.event.outcome.as_str().to_string());
        self.prev_hash.push(record.prev_hash.to_vec());
        self.hash.push(record.hash.to_vec());
        Ok(())
    }
}

async fn run_group(pool: &Pool, sql: &Sql, group: Vec<Request>) {
    let fail_all = |group: Vec<Request>, error: Error| {
        for req in group {
            let _ = req.reply.send(Err(clone_error(&error)));
        }
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail_all(group, pool_error(e)),
    };
    let tx: &deadpool_postgres::ClientWrapper = &client;
    let lock = match prepared(tx, &sql.lock_state).await {
        Ok(stmt) => stmt,
        Err(e) => return fail_all(group, e),
    };
    // BEGIN and the lock on the state row go out together (one round trip).
    let (begun, state) = tokio::join!(tx.batch_execute("BEGIN"), tx.query_one(&lock, &[]));
    let state = match (begun, state) {
        (Ok(()), Ok(row)) => row,
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            return fail_all(group, db_error("cannot lock the chain head", &e));
        }
    };
    let (mut generation, mut head) = match decode_state(&state) {
        Ok(s) => s,
        Err(e) => return fail_all(group, e),
    };
    let start_generation = generation;
    let mut audit = AuditColumns::default();
    let mut results: Vec<(
        oneshot::Sender<Result<CommitReceipt>>,
        Result<CommitReceipt>,
    )> = Vec::with_capacity(group.len());
    let mut poisoned: Option<Error> = None;
    for req in group {
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
        let bumps_generation = req.batch.changes_credentials();
        let Batch { mutations, events } = req.batch;
        if !mutations.is_empty() {
            if let Err(e) = tx.batch_execute("SAVEPOINT batch").await {
                poisoned = Some(db_error("cannot open a savepoint", &e));
                results.push((
                    req.reply,
                    Err(Error::store(StoreErrorKind::Other, "not written")),
                ));
                continue;
            }
            let mut outcome = Ok(());
            for m in mutations {
                outcome = apply_mutation(tx, sql, m).await;
                if outcome.is_err() {
                    break;
                }
            }
            let end = if outcome.is_ok() {
                "RELEASE SAVEPOINT batch"
            } else {
                "ROLLBACK TO SAVEPOINT batch; RELEASE SAVEPOINT batch"
            };
            if let Err(e) = tx.batch_execute(end).await {
                poisoned = Some(db_error("cannot close a savepoint", &e));
            }
            if let Err(e) = outcome {
                results.push((req.reply, Err(e)));
                continue;
            }
            if bumps_generation {
                generation += 1;
            }
        }
        let mut seqs = None;
        for event in events {
            let record = ChainHead::append(&mut head, event);
            if let Err(e) = audit.push(&record) {
                poisoned = Some(e);
                break;
            }
            seqs = Some((seqs.map_or(record.seq, |(first, _)| first), record.seq));
        }
        results.push((req.reply, Ok(CommitReceipt { seqs, head })));
    }
    let committed: Result<()> = async {
        if let Some(e) = poisoned {
            return Err(e);
        }
        let insert = prepared(tx, &sql.insert_audit).await?;
        let update = prepared(tx, &sql.update_state).await?;
        let (seq, hash) = match &head {
            Some(h) => (h.seq as i64, Some(h.hash.to_vec())),
            None => (0, None),
        };
        let params: [&(dyn ToSql + Sync); 11] = [
            &audit.seq,
            &audit.time,
            &audit.actor,
            &audit.action,
            &audit.credential_id,
            &audit.scope_kind,
            &audit.owner,
            &audit.outcome,
            &audit.details,
            &audit.prev_hash,
            &audit.hash,
        ];
        let moved = !audit.seq.is_empty() || generation != start_generation;
        // The audit rows, the new head and COMMIT go out together (one round trip). A
        // failed statement aborts the transaction, and COMMIT then rolls it back, so
        // success needs all three.
        let (inserted, updated, commit) = tokio::join!(
            async {
                if audit.seq.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&insert, &params).await
                }
            },
            async {
                if moved {
                    tx.execute(&update, &[&generation, &seq, &hash]).await
                } else {
                    Ok(0)
                }
            },
            tx.batch_execute("COMMIT")
        );
        inserted.map_err(|e| db_error("cannot append the audit rows", &e))?;
        match updated {
            Ok(1) => {}
            Ok(0) if !moved => {}
            Ok(_) => return Err(Error::corrupt("the store's state row", "it is missing")),
            Err(e) => return Err(db_error("cannot move the chain head", &e)),
        }
        commit.map_err(|e| {
            Error::store(
                StoreErrorKind::Busy,
                format!(
                    "the commit did not complete ({e}); the batch was applied whole or not at \
                     all — read again before retrying"
                ),
            )
        })
    }
    .await;
    if committed.is_err() {
        // Leaves the connection out of any transaction (a no-op after COMMIT/ROLLBACK).
        let _ = tx.batch_execute("ROLLBACK").await;
    }
    match committed {
        Ok(()) => {
            for (reply, outcome) in results {
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            for (reply, outcome) in results {
                let _ = reply.send(outcome.and(Err(clone_error(&error))));
            }
        }
    }
}

/// A store error for many callers (errors are not `Clone`).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Store { kind, message, .. } => Error::store(*kind, message.clone()),
        other => Error::store(StoreErrorKind::Other, other.to_string()),
    }
}

fn decode_state(row: &Row) -> Result<(i64, Option<ChainHead>)> {
    let bad = |what: &str| Error::corrupt("the store's state row", what.to_string());
    let generation: i64 = row
        .try_get(0)
        .map_err(|_| bad("generation is not a number"))?;
    let seq: i64 = row
        .try_get(1)
        .map_err(|_| bad("head_seq is not a number"))?;
    let hash: Option<Vec<u8>> = row.try_get(2).map_err(|_| bad("head_hash is not bytes"))?;
    let head = match (seq, hash) {
        (0, _) => None,
        (seq, Some(hash)) => Some(ChainHead {
            seq: seq as u64,
            hash: hash
                .try_into()
                .map_err(|_| bad("head_hash is not 32 bytes"))?,
        }),
        (_, None) => return Err(bad("head_hash is missing")),
    };
    Ok((generation, head))
}

/// A statement prepared once per connection (one round trip per use instead of two).
async fn prepared(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    tx.prepare_cached(sql)
        .await
        .map_err(|e| db_error("cannot prepare a statement", &e))
}

async fn stored_version(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    id: &CredentialId,
) -> Result<Option<u64>> {
    let stmt = prepared(tx, &sql.version_of).await?;
    tx.query_opt(&stmt, &[&id.as_str()])
        .await
        .map_err(|e| db_error("cannot read a credential's version", &e))?
        .map(|r| r.try_get::<_, i64>(0).map(|v| v as u64))
        .transpose()
        .map_err(|e| db_error("cannot read a credential's version", &e))
}

async fn apply_mutation(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    mutation: Mutation,
) -> Result<()> {
    match mutation {
        Mutation::Put {
            record,
            precondition,
        } => {
            let stored = stored_version(tx, sql, &record.id).await?;
            check_version(precondition, stored, &record.describe(), true)?;
            let metadata = serde_json::to_string(&record.metadata)
                .map_err(|e| Error::invalid("metadata", e.to_string()))?;
            let upsert = prepared(tx, &sql.upsert).await?;
            let result = tx
                .execute(
                    &upsert,
                    &[
                        &record.id.as_str(),
                        &record.name,
                        &record.scope.kind().as_str(),
                        &record.scope.owner(),
                        &record.provider,
                        &record.handler_type,
                        &record.state.as_str(),
                        &metadata,
                        &record.agent_accessible,
                        &(record.version as i64),
                        &record.created_at.0,
                        &record.updated_at.0,
                        &record.key_id,
                        &record.sealed,
                        &record.expires_at.map(|t| t.0),
                    ],
                )
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(Error::AlreadyExists {
                        what: format!("a credential named `{}` in {}", record.name, record.scope),
                    })
                }
                Err(e) => Err(db_error("cannot write a credential", &e)),
            }
        }
        Mutation::Delete { id, precondition } => {
            let stored = stored_version(tx, sql, &id).await?;
            check_version(precondition, stored, &format!("credential {id}"), false)?;
            tx.execute(&sql.delete, &[&id.as_str()])
                .await
                .map_err(|e| db_error("cannot delete a credential", &e))?;
            tx.execute(&sql.delete_grants, &[&id.as_str()])
                .await
                .map_err(|e| db_error("cannot delete a credential's grants", &e))?;
            Ok(())
        }
        Mutation::PutGrant { grant } => {
            if stored_version(tx, sql, &grant.credential_id)
                .await?
                .is_none()
            {
                return Err(grant_target_missing(&grant.credential_id));
            }
            tx.execute(
                &sql.put_grant,
                &[
                    &grant.credential_id.as_str(),
                    &grant.app,
                    &grant.granted_by,
                    &grant.granted_at.0,
                    &grant.revoked_at.map(|t| t.0),
                    &grant.revoked_by,
                ],
            )
            .await
            .map_err(|e| db_error("cannot write a grant", &e))?;
            Ok(())
        }
        Mutation::DeleteGrant { credential_id, app } => {
            let n = tx
                .execute(&sql.delete_grant, &[&credential_id.as_str(), &app])
                .await
                .map_err(|e| db_error("cannot delete a grant", &e))?;
            if n == 0 {
                return Err(grant_missing(&credential_id, &app));
            }
            Ok(())
        }
        Mutation::PutRecord {
            record,
            precondition,
        } => {
            let stored =
                stored_record_version(tx, sql, &record.kind, &record.owner, &record.key).await?;
            let body = check_record_put(precondition, stored, &record)?;
            let stmt = prepared(tx, &sql.put_record).await?;
            tx.execute(
                &stmt,
                &[
                    &record.kind,
                    &record.owner,
                    &record.key,
                    &(record.version as i64),
                    &record.created_at.0,
                    &record.updated_at.0,
                    &record.expires_at.map(|t| t.0),
                    &body,
                    &record.sealed,
                ],
            )
            .await
            .map_err(|e| db_error("cannot write a record", &e))?;
            Ok(())
        }
        Mutation::DeleteRecord { key, precondition } => {
            let stored = stored_record_version(tx, sql, &key.kind, &key.owner, &key.key).await?;
            check_record_delete(precondition, stored, &key)?;
            let stmt = prepared(tx, &sql.delete_record).await?;
            tx.execute(&stmt, &[&key.kind, &key.owner, &key.key])
                .await
                .map_err(|e| db_error("cannot delete a record", &e))?;
            Ok(())
        }
    }
}

async fn stored_record_version(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    kind: &str,
    owner: &str,
    key: &str,
) -> Result<Option<u64>> {
    let stmt = prepared(tx, &sql.record_version).await?;
    tx.query_opt(&stmt, &[&kind, &owner, &key])
        .await
        .map_err(|e| db_error("cannot read a record's version", &e))?
        .map(|r| r.try_get::<_, i64>(0).map(|v| v as u64))
        .transpose()
        .map_err(|e| db_error("cannot read a record's version", &e))
}

/// Decodes a record row; one that does not decode is reported as corrupt by its key.
fn decode_record(row: &Row) -> Result<Record> {
    let part = |i: usize, name: &str| {
        row.try_get::<_, String>(i)
            .unwrap_or_else(|_| format!("<unreadable {name}>"))
    };
    let decode = || -> std::result::Result<Record, String> {
        let text = |i: usize, name: &str| -> std::result::Result<String, String> {
            row.try_get::<_, String>(i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let int = |i: usize, name: &str| -> std::result::Result<i64, String> {
            row.try_get::<_, i64>(i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        Ok(Record {
            kind: text(0, "kind")?,
            owner: text(1, "owner")?,
            key: text(2, "key")?,
            version: u64::try_from(int(3, "version")?).map_err(|_| "negative version")?,
            created_at: Timestamp(int(4, "created_at")?),
            updated_at: Timestamp(int(5, "updated_at")?),
            expires_at: row
                .try_get::<_, Option<i64>>(6)
                .map_err(|e| format!("column `expires_at` cannot be read: {e}"))?
                .map(Timestamp),
            body: serde_json::from_str(&text(7, "body")?)
                .map_err(|e| format!("body is not JSON: {e}"))?,
            sealed: row
                .try_get::<_, Option<Vec<u8>>>(8)
                .map_err(|e| format!("column `sealed` cannot be read: {e}"))?,
        })
    };
    decode().map_err(|reason| {
        Error::corrupt(
            format!(
                "record `{}` of kind `{}`, owner `{}`",
                part(2, "key"),
                part(0, "kind"),
                part(1, "owner")
            ),
            reason,
        )
    })
}

/// Reads credential columns starting at `at`; a row that does not decode is reported as
/// corrupt by id, so one bad row never hides the others.
fn decode_credential(row: &Row, at: usize) -> Result<CredentialRecord> {
    let id: String = row
        .try_get::<_, String>(at)
        .unwrap_or_else(|_| "<unreadable id>".into());
    let decode = || -> std::result::Result<CredentialRecord, String> {
        let text = |i: usize, name: &str| -> std::result::Result<String, String> {
            row.try_get::<_, String>(at + i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let int = |i: usize, name: &str| -> std::result::Result<i64, String> {
            row.try_get::<_, i64>(at + i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let scope = ScopeKind::parse(&text(2, "scope_kind")?)
            .and_then(|k| Scope::from_parts(k, &text(3, "owner").unwrap_or_default()))
            .map_err(|e| format!("bad scope: {e}"))?;
        let state =
            LifecycleState::parse(&text(6, "state")?).map_err(|e| format!("bad state: {e}"))?;
        let metadata: BTreeMap<String, String> = serde_json::from_str(&text(7, "metadata")?)
            .map_err(|e| format!("metadata is not a JSON object of strings: {e}"))?;
        Ok(CredentialRecord {
            id: CredentialId::new(id.clone()).map_err(|e| e.to_string())?,
            name: text(1, "name")?,
            scope,
            provider: text(4, "provider")?,
            handler_type: text(5, "handler_type")?,
            state,
            metadata,
            agent_accessible: row
                .try_get::<_, bool>(at + 8)
                .map_err(|e| format!("column `agent_accessible` cannot be read: {e}"))?,
            version: u64::try_from(int(9, "version")?).map_err(|_| "negative version")?,
            created_at: Timestamp(int(10, "created_at")?),
            updated_at: Timestamp(int(11, "updated_at")?),
            key_id: text(12, "key_id")?,
            sealed: row
                .try_get::<_, Vec<u8>>(at + 13)
                .map_err(|e| format!("column `sealed` cannot be read: {e}"))?,
            expires_at: row
                .try_get::<_, Option<i64>>(at + 14)
                .map_err(|e| format!("column `expires_at` cannot be read: {e}"))?
                .map(Timestamp),
        })
    };
    decode().map_err(|reason| Error::corrupt(format!("credential row {id}"), reason))
}

fn decode_grant(row: &Row, at: usize) -> Result<Grant> {
    let bad = |e: tokio_postgres::Error| Error::corrupt("a grant row", e.to_string());
    Ok(Grant {
        credential_id: CredentialId::new(row.try_get::<_, String>(at).map_err(bad)?)?,
        app: row.try_get(at + 1).map_err(bad)?,
        granted_by: row.try_get(at + 2).map_err(bad)?,
        granted_at: Timestamp(row.try_get(at + 3).map_err(bad)?),
        revoked_at: row
            .try_get::<_, Option<i64>>(at + 4)
            .map_err(bad)?
            .map(Timestamp),
        revoked_by: row.try_get(at + 5).map_err(bad)?,
    })
}

fn decode_audit(row: &Row) -> Result<AuditRecord> {
    let seq = row
        .try_get::<_, i64>(0)
        .map_err(|e| Error::corrupt("an audit row", e.to_string()))? as u64;
    let decode = || -> std::result::Result<AuditRecord, String> {
        let text = |i: usize| -> std::result::Result<String, String> {
            row.try_get::<_, String>(i).map_err(|e| e.to_string())
        };
        let target = AuditTarget::from_columns(&text(4)?, &text(5)?, &text(6)?)
            .map_err(|e| format!("bad target: {e}"))?;
        let action = Action::parse(&text(3)?).map_err(|e| e.to_string())?;
        let outcome = Outcome::parse(&text(7)?).map_err(|e| e.to_string())?;
        let details: BTreeMap<String, String> = serde_json::from_str(&text(8)?)
            .map_err(|e| format!("details are not a JSON object of strings: {e}"))?;
        let hash = |i: usize| -> std::result::Result<[u8; 32], String> {
            row.try_get::<_, Vec<u8>>(i)
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| "a hash is not 32 bytes".to_string())
        };
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                time: Timestamp(row.try_get(1).map_err(|e| e.to_string())?),
                actor: text(2)?,
                action,
                target,
                outcome,
                details,
            },
            prev_hash: hash(9)?,
            hash: hash(10)?,
        })
    };
    decode().map_err(|reason| Error::CorruptAuditRow { seq, reason })
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
        let conditions = filter.sql_conditions();
        let clauses: Vec<String> = conditions
            .iter()
            .enumerate()
            .map(|(i, (clause, _))| format!("{clause} ${}", i + 1))
            .collect();
        let mut query = format!("SELECT {COLUMNS} FROM {}.credentials", self.sql.schema);
        if !clauses.is_empty() {
            query.push_str(" WHERE ");
            query.push_str(&clauses.join(" AND "));
        }
        query.push_str(" ORDER BY id");
        if let Some(limit) = filter.limit {
            query.push_str(&format!(" LIMIT {limit}"));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = conditions
            .iter()
            .map(|(_, value)| sql_param(value))
            .collect();
        let client = self.client().await?;
        let rows = client
            .query(&query, &refs)
            .await
            .map_err(|e| db_error("cannot list credentials", &e))?;
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

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        let rows = self
            .read(&self.sql.read_state, &[], "the chain head")
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::corrupt("the store's state row", "it is missing"))?;
        decode_state(row).map(|(_, head)| head)
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        self.send(batch, ReadStamp::UNCHECKED).await
    }

    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        let owner = scope.owner();
        let rows = self
            .read(
                &self.sql.find_named,
                &[&scope.kind().as_str(), &owner, &name],
                "a credential",
            )
            .await?;
        // The LEFT JOIN from the state row always gives exactly one row.
        let row = rows
            .first()
            .ok_or_else(|| Error::corrupt("the store's state row", "it is missing"))?;
        let generation: i64 = row
            .try_get(0)
            .map_err(|e| db_error("cannot read the data generation", &e))?;
        let present: Option<String> = row
            .try_get(1)
            .map_err(|e| db_error("cannot read a credential", &e))?;
        let record = match present {
            None => None,
            Some(_) => Some(Arc::new(decode_credential(row, 1)?)),
        };
        Ok((record, ReadStamp::at(generation)))
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
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
                .map_err(|e| db_error("cannot read the data generation", &e))?;
            let present: Option<String> = row
                .try_get(1)
                .map_err(|e| db_error("cannot read grants", &e))?;
            if present.is_some() {
                grants.push(decode_grant(row, 1)?);
            }
        }
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
        let (condition, values) = filter.sql_where(|n| format!("${n}"));
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
            .map_err(|e| db_error("cannot list records", &e))?;
        rows.iter().map(decode_record).collect()
    }
}

//! The SQLite schema: its migrations, the connection settings, and the state every opening
//! reads (schema version, chain head, data generation).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::sql_error;
use super::SqliteOptions;
use super::Synchronous;
use crate::audit::encoding::ChainHead;
use crate::error::{Error, Result, StoreErrorKind};
use crate::store::sql::split_old_expiry;

/// The schema, one entry per version. Never edit an entry that has shipped: add one.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 6: the file says it is a strongroom vault (`SQLITE_APPLICATION_ID`, 0x5374526D).
    "PRAGMA application_id = 1400132205;",
];

/// SQLite's `application_id` of a strongroom vault file (`PRAGMA application_id`, bytes
/// 68–71 of the file header): `"StRm"` as a big-endian integer. Written by schema step 6
/// (and so by the first opening of a new file); a file with another id is not opened.
pub const SQLITE_APPLICATION_ID: i32 = 0x5374_526D;

/// Refuses a database that belongs to another application: one whose `application_id` is
/// set to something else, or one with tables but no strongroom schema (an id of 0 is a new
/// file, or a vault from before the id was written). Reads only; changes nothing.
pub(super) fn check_application(conn: &Connection, shown: &str) -> Result<()> {
    let foreign = |why: String| {
        Error::store(
            StoreErrorKind::Schema,
            format!(
                "{shown} is not a strongroom vault: {why}; it was left untouched. Point the \
                 store at a strongroom vault file, or at a path where none exists yet"
            ),
        )
    };
    let id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| sql_error(&format!("cannot read the header of {shown}"), e))?;
    if id == SQLITE_APPLICATION_ID {
        return Ok(());
    }
    if id != 0 {
        return Err(foreign(format!(
            "it is the SQLite database of another application (application_id {id:#010x})"
        )));
    }
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(|e| sql_error(&format!("cannot read the tables of {shown}"), e))?;
    if tables.is_empty() || tables.iter().any(|t| t == "strongroom_schema") {
        return Ok(());
    }
    let mut named: Vec<String> = tables
        .iter()
        .take(5)
        .map(|t| format!("`{}`", t.escape_debug()))
        .collect();
    if tables.len() > 5 {
        named.push(format!("and {} more", tables.len() - 5));
    }
    Err(foreign(format!(
        "it is an SQLite database of another application (tables {}, no strongroom schema)",
        named.join(", ")
    )))
}

/// Data changes that go with a schema step, run in the same transaction right after its SQL.
pub(super) fn after_migration(tx: &Connection, version: usize) -> rusqlite::Result<()> {
    if version == 4 {
        move_expiry_out_of_metadata(tx)?;
    }
    Ok(())
}

/// Moves `expires_at` from each credential's metadata into the column. A value the vault
/// could not have written (not an integer) stays in the metadata, and a row whose metadata
/// does not decode is left as it is (it reads as corrupt, by id, as before).
pub(super) fn move_expiry_out_of_metadata(tx: &Connection) -> rusqlite::Result<()> {
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

/// Per-connection settings. Reads the journal mode before setting it, so that opening a
/// database already in WAL mode takes no lock at all (changing the mode would need one).
pub(super) fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    if !options.read_only {
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // SQLite's own automatic checkpoints (every 1000 WAL pages, about 4 MB) measured faster
    // here than a background checkpointer, whose syncs compete with the commit path's. The
    // limit truncates a WAL that a long reader let grow past it, once a checkpoint has
    // caught up.
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(options.wal_size_limit).unwrap_or(i64::MAX),
    )?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// The schema version recorded in the file (0 for a new, empty database).
fn schema_version(conn: &Connection) -> rusqlite::Result<usize> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'strongroom_schema'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(0);
    }
    let version: Option<i64> =
        conn.query_row("SELECT max(version) FROM strongroom_schema", [], |r| {
            r.get(0)
        })?;
    Ok(version.map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX)))
}

/// Brings the schema up to date. The version is read first, without a lock: in WAL mode a
/// read never waits for a writer, so opening a store whose schema is current never waits
/// for another process's write transaction (a read-only command next to a busy service).
/// Only when a migration is due does it take the write lock, and then it reads the version
/// again, since another process may have migrated meanwhile.
pub(super) fn migrate(conn: &mut Connection, shown: &str, read_only: bool) -> Result<()> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e| sql_error(&format!("{what} ({shown})"), e)
    };
    let too_new = |current: usize| {
        Error::store(
            StoreErrorKind::Schema,
            format!(
                "{shown} has schema version {current}, but this build of strongroom knows only up \
                 to {}; upgrade strongroom",
                MIGRATIONS.len()
            ),
        )
    };
    let current = schema_version(conn).map_err(fail("cannot read the schema version"))?;
    if current > MIGRATIONS.len() {
        return Err(too_new(current));
    }
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    if read_only {
        return Err(Error::store(
            StoreErrorKind::ReadOnly,
            format!(
                "{shown} has schema version {current} and needs migrating to version {}, which \
                 a store opened read-only cannot do; open it read-write once",
                MIGRATIONS.len()
            ),
        ));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail("cannot start the schema migration"))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS strongroom_schema (version INTEGER NOT NULL)")
        .map_err(fail("cannot create the schema version table"))?;
    let current = schema_version(&tx).map_err(fail("cannot read the schema version"))?;
    if current > MIGRATIONS.len() {
        return Err(too_new(current));
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

pub(super) fn load_head(conn: &Connection) -> rusqlite::Result<Option<ChainHead>> {
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
pub(super) fn read_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM strongroom_generation WHERE id = 1")?
        .query_row([], |r| r.get(0))
}

/// How many credentials the file holds (to size the point cache at open).
pub(super) fn count_credentials(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM credentials", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| u64::try_from(n).unwrap_or(0))
}

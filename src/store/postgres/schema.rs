//! The PostgreSQL schema: its migrations, run once each under an advisory lock.

use super::error::db_error;
use crate::error::{Error, Result, StoreErrorKind};
use crate::store::sql::split_old_expiry;

/// The schema migrations, in order; each runs once, under an advisory lock.
pub(super) fn migrations(s: &str) -> Vec<String> {
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
        // 4: one row per writing connection, updated by the synchronous write that waits for
        //    the WAL flush of a group committed asynchronously (see the writer).
        format!(
            "CREATE TABLE {s}.flushes (
                pid INTEGER PRIMARY KEY,
                n   BIGINT NOT NULL
            );"
        ),
    ]
}

/// Data changes that go with a schema step, run in the same transaction right after its SQL.
pub(super) async fn after_migration(
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
            if let Some((at, rest)) = split_old_expiry(&metadata) {
                tx.execute(&update, &[&at, &rest, &id]).await?;
            }
        }
    }
    Ok(())
}

pub(super) fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

pub(super) async fn migrate(
    client: &mut deadpool_postgres::Object,
    schema: &str,
    shown: &str,
) -> Result<()> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| db_error(what, e);
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

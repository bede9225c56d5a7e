//! `SqliteStore` when something goes wrong around it: another process holding the write
//! lock, a file it may not write, a trigger refusing a row — and closing: the WAL is
//! checkpointed away, bounded while open, and a closed store says so.

use std::error::Error as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};
use strongroom::conformance::sample_record;
use strongroom::store::Synchronous;
use strongroom::{
    Action, AuditEvent, AuditTarget, Batch, CredentialRecord, Error, Mutation, Precondition, Scope,
    SqliteOptions, SqliteStore, Store, StoreErrorKind,
};

fn create(record: &CredentialRecord) -> Batch {
    Batch {
        mutations: vec![Mutation::Put {
            record: record.clone(),
            precondition: Precondition::CreateOnly,
        }],
        events: vec![AuditEvent::new(
            "tester",
            Action::Create,
            AuditTarget::credential(&record.id, &record.scope),
        )],
    }
}

fn audit_only() -> Batch {
    Batch::events(vec![AuditEvent::new(
        "tester",
        Action::AuditVerify,
        AuditTarget::none(),
    )])
}

/// A store at `path` holding one credential, closed again.
async fn one_credential(path: &Path) -> CredentialRecord {
    let store = SqliteStore::open(path).expect("open");
    let record = sample_record("kept", Scope::per_user("alice").expect("scope"));
    store.commit(create(&record)).await.expect("create");
    store.close().await.expect("close");
    record
}

fn kind(err: &Error) -> StoreErrorKind {
    match err {
        Error::Store { kind, .. } => *kind,
        other => panic!("expected a store error, got {other:?}"),
    }
}

/// The `rusqlite::Error` somewhere in `err`'s source chain.
fn sqlite_cause(err: &Error) -> &rusqlite::Error {
    let mut cause = err.source();
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<rusqlite::Error>() {
            return found;
        }
        cause = c.source();
    }
    panic!("no rusqlite::Error in the source chain of {err:?}")
}

fn wal_len(db: &Path) -> Option<u64> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).ok().map(|m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opens_and_reads_at_once_while_another_connection_holds_the_write_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let record = one_credential(&path).await;
    // Another process in the middle of a write transaction (the CLI next to a service).
    let holder = Connection::open(&path).expect("open");
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE strongroom_generation SET value = value + 0;")
        .expect("take the write lock");

    let mut options = SqliteOptions::default();
    options.busy_timeout = Duration::from_secs(5);
    let started = Instant::now();
    let store = SqliteStore::open_with(&path, options).expect("open while the lock is held");
    assert_eq!(
        store.get(&record.id).await.expect("get").as_ref(),
        Some(&record)
    );
    let listed = store
        .list(&strongroom::ListFilter::default())
        .await
        .expect("list");
    assert_eq!(listed, vec![record.clone()]);
    assert_eq!(store.audit_range(1, 10).await.expect("audit").len(), 1);
    assert!(store.chain_head().await.expect("head").is_some());
    let (found, _) = store.find_named(&record.scope, "kept").await.expect("find");
    assert!(found.is_some());
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "opening and reading waited {waited:?} for a lock it does not need"
    );

    // Writing does need the lock: it waits out the busy timeout and says why.
    let mut options = SqliteOptions::default();
    options.busy_timeout = Duration::from_millis(200);
    let writer = SqliteStore::open_with(&path, options).expect("open");
    let err = writer
        .commit(audit_only())
        .await
        .expect_err("the write lock is held");
    assert_eq!(kind(&err), StoreErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("database is locked"), "{err}");
    assert_eq!(
        sqlite_cause(&err).sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy)
    );

    holder.execute_batch("ROLLBACK").expect("release");
    writer
        .commit(audit_only())
        .await
        .expect("the lock is free again");
    writer.close().await.expect("close");
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_new_file_still_migrates_under_the_write_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    let store = SqliteStore::open(&path).expect("create");
    store.close().await.expect("close");
    let conn = Connection::open(&path).expect("open");
    let version: i64 = conn
        .query_row("SELECT max(version) FROM strongroom_schema", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert!(
        version >= 5,
        "migrated to the current schema, got {version}"
    );
}

#[tokio::test]
async fn a_read_only_store_reads_and_its_commits_fail_with_sqlites_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let record = one_credential(&path).await;
    // As a read-only file or mount looks to SQLite (the tests run as root, for whom file
    // modes do not apply, so the file is opened read-only instead).
    let mut options = SqliteOptions::default();
    options.read_only = true;
    let store = SqliteStore::open_with(&path, options).expect("open read-only");
    assert_eq!(store.get(&record.id).await.expect("get"), Some(record));

    let err = store
        .commit(audit_only())
        .await
        .expect_err("a read-only store cannot commit");
    assert_eq!(kind(&err), StoreErrorKind::ReadOnly, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("readonly database") && message.contains("SQLITE_READONLY"),
        "SQLite's reason is in the message: {message}"
    );
    assert_eq!(
        sqlite_cause(&err).sqlite_error_code(),
        Some(ErrorCode::ReadOnly)
    );
    assert_eq!(
        store.chain_head().await.expect("head").map(|h| h.seq),
        Some(1)
    );

    let err = SqliteStore::open_with(dir.path().join("missing.db"), {
        let mut o = SqliteOptions::default();
        o.read_only = true;
        o
    })
    .expect_err("read-only creates nothing");
    assert_eq!(kind(&err), StoreErrorKind::Connection, "{err}");
    assert!(!dir.path().join("missing.db").exists());
}

#[tokio::test]
async fn a_failing_trigger_reaches_the_error_with_its_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let store = SqliteStore::open(&path).expect("open");
    let record = sample_record("first", Scope::SystemWide);
    store.commit(create(&record)).await.expect("create");
    Connection::open(&path)
        .expect("open")
        .execute_batch(
            "CREATE TRIGGER audit_frozen BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'audit is frozen for maintenance'); END;",
        )
        .expect("trigger");
    let head = store.chain_head().await.expect("head");

    // An audit-only batch fails the whole group transaction; the cause is kept.
    let err = store
        .commit(audit_only())
        .await
        .expect_err("the trigger refuses the row");
    let message = err.to_string();
    assert!(
        message.contains("cannot append an audit row")
            && message.contains("audit is frozen for maintenance")
            && message.contains("nothing in it was written"),
        "{message}"
    );
    assert_eq!(kind(&err), StoreErrorKind::Other, "{err}");
    assert_eq!(
        sqlite_cause(&err).sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation)
    );

    // A batch with mutations fails alone, inside its savepoint, with the same reason.
    let second = sample_record("second", Scope::SystemWide);
    let err = store
        .commit(create(&second))
        .await
        .expect_err("the trigger refuses the batch's audit row");
    assert!(
        err.to_string().contains("audit is frozen for maintenance"),
        "{err}"
    );
    assert!(store.get(&second.id).await.expect("get").is_none());
    assert_eq!(store.chain_head().await.expect("head"), head);

    Connection::open(&path)
        .expect("open")
        .execute_batch("DROP TRIGGER audit_frozen")
        .expect("drop");
    store.commit(create(&second)).await.expect("written now");
    store.close().await.expect("close");
}

#[tokio::test]
async fn close_checkpoints_the_wal_away_and_a_closed_store_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let store = SqliteStore::open(&path).expect("open");
    let clone = store.clone();
    let record = sample_record("kept", Scope::SystemWide);
    store.commit(create(&record)).await.expect("create");
    assert!(
        wal_len(&path).is_some_and(|n| n > 0),
        "the commit sits in the WAL"
    );

    store.close().await.expect("close");
    assert_eq!(wal_len(&path).unwrap_or(0), 0, "close leaves no WAL behind");
    let err = clone
        .commit(audit_only())
        .await
        .expect_err("closed, through a clone too");
    assert_eq!(kind(&err), StoreErrorKind::Closed, "{err}");
    let err = clone.get(&record.id).await.expect_err("no reads either");
    assert_eq!(kind(&err), StoreErrorKind::Closed, "{err}");
    let err = clone
        .find_named(&record.scope, "kept")
        .await
        .expect_err("not even from the cache");
    assert_eq!(kind(&err), StoreErrorKind::Closed, "{err}");
    clone.close().await.expect("closing twice is fine");

    let reopened = SqliteStore::open(&path).expect("reopen");
    assert_eq!(reopened.get(&record.id).await.expect("get"), Some(record));
    reopened.close().await.expect("close");
}

#[tokio::test]
async fn close_commits_what_was_queued_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let store = SqliteStore::open(&path).expect("open");
    let mut commits = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        commits.push(tokio::spawn(
            async move { store.commit(audit_only()).await },
        ));
    }
    tokio::task::yield_now().await;
    store.close().await.expect("close");
    let mut landed = 0;
    for commit in commits {
        match commit.await.expect("task") {
            Ok(_) => landed += 1,
            Err(e) => assert_eq!(kind(&e), StoreErrorKind::Closed, "{e}"),
        }
    }
    let reopened = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        reopened
            .chain_head()
            .await
            .expect("head")
            .map_or(0, |h| h.seq),
        landed,
        "every commit that was answered Ok is on disk, and no other"
    );
    reopened.close().await.expect("close");
}

#[test]
fn a_dropped_store_checkpoints_on_its_writer_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&path).expect("open");
        store
            .commit(create(&sample_record("kept", Scope::SystemWide)))
            .await
            .expect("create");
        assert!(wal_len(&path).is_some_and(|n| n > 0));
    });
    // The store is gone; its writer thread checkpoints on its own time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal_len(&path).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "the WAL is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_wal_is_cut_back_to_its_limit_after_a_long_reader_let_it_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let mut options = SqliteOptions::default();
    options.synchronous = Synchronous::Normal;
    options.wal_size_limit = 64 * 1024;
    let store = SqliteStore::open_with(&path, options).expect("open");
    // A reader holding one snapshot keeps every later frame in the WAL.
    let reader = Connection::open(&path).expect("open");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM credentials;")
        .expect("snapshot");
    let scope = Scope::per_user("bulk").expect("scope");
    for round in 0..14 {
        let mut batch = Batch::default();
        for i in 0..40 {
            let mut record = sample_record(&format!("r{round}_{i}"), scope.clone());
            record.sealed = vec![round as u8; 8 * 1024];
            batch.mutations.push(Mutation::Put {
                record,
                precondition: Precondition::CreateOnly,
            });
        }
        store.commit(batch).await.expect("commit");
    }
    let grown = wal_len(&path).expect("a WAL");
    assert!(grown > 4 * 1024 * 1024, "the WAL grew to {grown} bytes");
    reader.execute_batch("COMMIT").expect("end the snapshot");
    // The next commit's automatic checkpoint catches up; the one after restarts the WAL
    // from the beginning and cuts the file back to the limit.
    store.commit(audit_only()).await.expect("commit");
    store.commit(audit_only()).await.expect("commit");
    let after = wal_len(&path).expect("a WAL");
    assert!(
        after <= 64 * 1024,
        "the WAL is cut back to the 64 KiB limit, not {after} bytes (it had grown to {grown})"
    );
    store.close().await.expect("close");
}

//! `PostgresStore` when something goes wrong: a backend killed under a waiting commit, a
//! serialisation failure, a trigger refusing a row, a writer whose runtime has gone. Each
//! error is classified by what the server or the connection said (SQLSTATE, a closed
//! connection), carries the server's reason, and keeps the driver's error as its source.
//! Like `tests/postgres.rs`, these need the server on 127.0.0.1:5432 (or
//! `STRONGROOM_TEST_POSTGRES`) and fail when it is down.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{
    Action, AuditEvent, AuditTarget, Batch, Error, PostgresOptions, PostgresStore, Store,
    StoreErrorKind,
};
use tokio_postgres::error::SqlState;

fn url() -> String {
    std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The server URL with `application_name` set, so a test can find its store's backends.
fn url_named(app: &str) -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

fn fresh_schema() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    format!("f_{}", hex::encode(bytes))
}

async fn open_named(schema: &str, app: &str) -> PostgresStore {
    PostgresStore::connect_with(
        &url_named(app),
        PostgresOptions::default().schema(schema).pool_size(2),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} must be running for these tests: {e}",
            url()
        )
    })
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn drop_schema(schema: &str) {
    admin()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

fn audit_only() -> Batch {
    Batch::events(vec![AuditEvent::new(
        "tester",
        Action::AuditVerify,
        AuditTarget::none(),
    )])
}

fn kind(err: &Error) -> StoreErrorKind {
    match err {
        Error::Store { kind, .. } => *kind,
        other => panic!("expected a store error, got {other:?}"),
    }
}

/// The driver's error somewhere in `err`'s source chain.
fn driver_cause(err: &Error) -> &tokio_postgres::Error {
    let mut cause = err.source();
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<tokio_postgres::Error>() {
            return found;
        }
        cause = c.source();
    }
    panic!("no tokio_postgres::Error in the source chain of {err:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_a_waiting_commit_is_a_connection_error() {
    let schema = fresh_schema();
    let app = format!("sr_kill_{schema}");
    let store = Arc::new(open_named(&schema, &app).await);
    store.commit(audit_only()).await.expect("first commit");
    // Another instance holds the chain head, so this store's next commit waits for it.
    let holder = admin().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {schema}.state WHERE id = 1 FOR UPDATE"
        ))
        .await
        .expect("hold the state row");
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.commit(audit_only()).await }
    });
    let killer = admin().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let row = killer
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the commit never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let err = waiting
        .await
        .expect("task")
        .expect_err("its connection was killed mid-commit");
    assert_eq!(kind(&err), StoreErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    let cause = driver_cause(&err);
    assert!(
        cause.is_closed() || cause.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{cause:?}"
    );
    holder.batch_execute("ROLLBACK").await.expect("release");

    // The pool drops the dead connection; the store carries on.
    let mut landed = false;
    for _ in 0..3 {
        match store.commit(audit_only()).await {
            Ok(_) => {
                landed = true;
                break;
            }
            Err(e) => assert_eq!(kind(&e), StoreErrorKind::Connection, "{e}"),
        }
    }
    assert!(landed, "a commit lands once the pool has reconnected");
    let report = strongroom::audit::verify_chain(store.as_ref())
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.rows, 2, "the killed commit wrote nothing");
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_is_busy_and_a_refusing_trigger_keeps_its_message() {
    let schema = fresh_schema();
    let store = open_named(&schema, "sr_faults").await;
    store.commit(audit_only()).await.expect("first commit");
    let client = admin().await;
    let refuse = |errcode: &str, text: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION '{text}' USING ERRCODE = '{errcode}'; END $$;"
        )
    };
    client
        .batch_execute(&format!(
            "{} CREATE TRIGGER refuse BEFORE INSERT ON {schema}.audit \
             FOR EACH ROW EXECUTE FUNCTION {schema}.refuse();",
            refuse("40001", "audit rows are being re-keyed")
        ))
        .await
        .expect("trigger");

    let err = store
        .commit(audit_only())
        .await
        .expect_err("serialization failure");
    assert_eq!(kind(&err), StoreErrorKind::Busy, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("audit rows are being re-keyed") && message.contains("40001"),
        "{message}"
    );
    assert_eq!(
        driver_cause(&err).code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    );

    client
        .batch_execute(&refuse("P0001", "the audit log is frozen for maintenance"))
        .await
        .expect("replace the function");
    let err = store
        .commit(audit_only())
        .await
        .expect_err("the trigger refuses");
    assert_eq!(kind(&err), StoreErrorKind::Other, "{err}");
    assert!(
        err.to_string()
            .contains("the audit log is frozen for maintenance"),
        "{err}"
    );

    client
        .batch_execute(&format!("DROP TRIGGER refuse ON {schema}.audit"))
        .await
        .expect("drop trigger");
    store.commit(audit_only()).await.expect("written now");
    assert_eq!(
        store.chain_head().await.expect("head").map(|h| h.seq),
        Some(2),
        "the refused commits wrote nothing"
    );
    drop_schema(&schema).await;
}

#[test]
fn a_store_whose_writer_is_gone_answers_closed() {
    let schema = fresh_schema();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = first.block_on(open_named(&schema, "sr_closed"));
    // The writer task ends with the runtime it was spawned on.
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = second
        .block_on(store.commit(audit_only()))
        .expect_err("no writer");
    assert_eq!(kind(&err), StoreErrorKind::Closed, "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    drop(store);
    second.block_on(drop_schema(&schema));
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/test"))
        .await
        .expect_err("nothing listens");
    assert_eq!(kind(&err), StoreErrorKind::Connection, "{err}");
    assert!(err.source().is_some(), "the driver's error is kept");
}

/// `url()` with another database.
fn url_of_database(db: &str) -> String {
    let url = url();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base.to_string(), format!("?{query}")),
        None => (url.clone(), String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("a database in the URL");
    format!("{server}/{db}{query}")
}

/// A primary whose sessions default to read-only transactions (`default_transaction_read_only`
/// set after the store opened) still makes the chain head durable before reporting it: the
/// flushing write is made in a transaction that asks to be read-write, rather than taken
/// for a standby's refusal and skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_head_is_flushed_on_a_primary_that_defaults_to_read_only() {
    let schema = fresh_schema();
    let db = format!("sr_ro_{schema}");
    let admin = admin().await;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let app = format!("sr_ro_{schema}");
    let url = url_of_database(&db);
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::connect_with(
        &format!("{url}{sep}application_name={app}"),
        PostgresOptions::default().schema(&schema).pool_size(1),
    )
    .await
    .expect("open");
    store.commit(audit_only()).await.expect("commit");
    let (inside, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let flushes = || async {
        inside
            .query_one(
                &format!("SELECT coalesce(sum(n), 0)::bigint FROM {schema}.flushes"),
                &[],
            )
            .await
            .expect("flushes")
            .get::<_, i64>(0)
    };
    let before = flushes().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on"
        ))
        .await
        .expect("read-only default");
    // The store's connection started before the change: end it so the pool opens one that
    // has the read-only default.
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate");
    let mut head = None;
    for _ in 0..5 {
        match store.chain_head().await {
            Ok(h) => {
                head = h;
                break;
            }
            Err(e) => assert_eq!(kind(&e), StoreErrorKind::Connection, "{e}"),
        }
    }
    assert_eq!(head.map(|h| h.seq), Some(1));
    assert!(flushes().await > before, "the head was flushed by a write");
    drop(store);
    drop(inside);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .expect("drop database");
}

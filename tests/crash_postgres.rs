//! Crash safety of `PostgresStore` (issue 15, item 6): two vault instances share one schema
//! and write and resolve concurrently while their server connections are terminated with
//! `pg_terminate_backend` in the middle of commits (a trigger keeps each audit insert open
//! for a moment, so a backend that is `active` is inside a commit). Afterwards: every
//! acknowledged write is there; nothing is half-applied (a credential exists exactly when
//! its create row does, and a grant exactly when its grant row does); the chain has no gap
//! and no fork (sequence numbers 1..n, each row chained to the one before, verified alone
//! and against the newest checkpoint); and both vaults write again by themselves — no
//! reopening, no rebuilding.
//! Needs the server on 127.0.0.1:5432 (or `STRONGROOM_TEST_POSTGRES`) and fails when it is
//! down, like `tests/postgres.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::random_faults::SplitMix;
use strongroom::audit::{CheckpointSink, Outcome};
use strongroom::{
    Action, Checkpoint, CredentialId, CredentialRef, ErrorKind, ExposeSecret, LocalKey,
    NewCredential, PostgresOptions, PostgresStore, Principal, ResolveContext, Scope, SecretString,
    StoreErrorKind, Vault,
};

fn url() -> String {
    std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn url_named(app: &str) -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} must be running: {e}", url()));
    tokio::spawn(conn);
    client
}

fn p(text: &str) -> Principal {
    Principal::parse(text).expect("principal")
}

#[derive(Default)]
struct Sink(Mutex<Vec<Checkpoint>>);

impl CheckpointSink for Sink {
    fn publish(&self, checkpoint: &Checkpoint) {
        self.0.lock().expect("sink").push(checkpoint.clone());
    }
}

const KEY: [u8; 32] = [0x77; 32];

async fn instance(schema: &str, app: &str, sink: Arc<Sink>) -> Vault {
    let store = PostgresStore::connect_with(
        &url_named(app),
        PostgresOptions::default().schema(schema).pool_size(3),
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL at {} must be running: {e}", url()));
    Vault::builder()
        .store(Arc::new(store))
        .key_wrapper(Arc::new(LocalKey::from_bytes(&KEY, "pg crash key")))
        .checkpoints(sink, 10)
        .build()
        .await
        .expect("vault")
}

/// What one worker had acknowledged.
#[derive(Default)]
struct Acked {
    created: BTreeMap<CredentialId, String>,
    granted: BTreeSet<CredentialId>,
    resolved: usize,
    errors: usize,
}

/// Creates, grants and resolves until `stop`; every error must be a store error (the
/// connection was cut) — never a panic, never anything else.
async fn worker(vault: Vault, user: String, stop: Arc<AtomicBool>) -> Acked {
    let owner = p(&format!("app_user:crm:{user}"));
    let runtime = p(&format!("runtime:crm:{user}"));
    let ctx = ResolveContext::of(&runtime).expect("ctx");
    let mut acked = Acked::default();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let name = format!("{user}_{i}");
        let value = format!("sk-{user}-{i}-0123456789");
        let created = vault
            .create(
                &owner,
                NewCredential::new(
                    &name,
                    Scope::per_user(&user).expect("scope"),
                    "openai",
                    "",
                    [("api_key".to_string(), SecretString::from(value.clone()))].into(),
                ),
            )
            .await;
        let info = match created {
            Ok(info) => info,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Store, "create {name}: {e}");
                acked.errors += 1;
                continue;
            }
        };
        acked.created.insert(info.id.clone(), value.clone());
        match vault.grant_add(&owner, &info.id, "crm").await {
            Ok(_) => {
                acked.granted.insert(info.id.clone());
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Store, "grant {name}: {e}");
                acked.errors += 1;
                continue;
            }
        }
        match vault
            .resolve(&runtime, &CredentialRef::compact(&name), &ctx)
            .await
        {
            Ok(r) => {
                assert_eq!(r.fields["api_key"].expose_secret(), value);
                acked.resolved += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Store, "resolve {name}: {e}");
                acked.errors += 1;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_mid_commit_leave_no_half_write_gap_or_fork_and_the_vault_reconnects() {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let schema = format!("crash_{}", hex::encode(bytes));
    let app = format!("sr_crash_{}", hex::encode(bytes));
    let sink = Arc::new(Sink::default());
    let first = instance(&schema, &app, sink.clone()).await;
    let second = instance(&schema, &app, sink.clone()).await;
    let control = admin().await;
    // Hold every audit insert open for 2 ms: a backend seen `active` is inside a commit.
    control
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.002); RETURN NULL; END $$; \
             CREATE TRIGGER slow AFTER INSERT ON {schema}.audit \
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}.slow();"
        ))
        .await
        .expect("trigger");

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = [
        (first.clone(), "alice"),
        (first.clone(), "bob"),
        (second.clone(), "carol"),
        (second.clone(), "dave"),
    ]
    .into_iter()
    .map(|(vault, user)| tokio::spawn(worker(vault, user.to_string(), stop.clone())))
    .collect();

    let rng = SplitMix::new(0x9e_2026);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 40 {
        assert!(
            Instant::now() < deadline,
            "only {kills} commits caught in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5 + rng.below(30))).await;
        let killed: Vec<bool> = control
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'active' \
                 AND query NOT ILIKE '%pg_stat_activity%'",
                &[&app],
            )
            .await
            .expect("terminate")
            .iter()
            .map(|r| r.get(0))
            .collect();
        kills += killed.iter().filter(|k| **k).count();
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in workers {
        acked.push(w.await.expect("a worker panicked"));
    }
    let errors: usize = acked.iter().map(|a| a.errors).sum();
    assert!(errors > 0, "the kills cut some commits");

    // Both vaults write again by themselves: the pool drops the dead connections.
    for (vault, user) in [(&first, "erin"), (&second, "frank")] {
        let owner = p(&format!("app_user:crm:{user}"));
        let mut landed = None;
        for attempt in 0..3 {
            match vault
                .create(
                    &owner,
                    NewCredential::new(
                        "after_kills",
                        Scope::per_user(user).expect("scope"),
                        "openai",
                        "",
                        [(
                            "api_key".to_string(),
                            SecretString::from("sk-after-kills-0123456789".to_string()),
                        )]
                        .into(),
                    ),
                )
                .await
            {
                Ok(info) => {
                    landed = Some(attempt);
                    let _ = info;
                    break;
                }
                Err(e) => {
                    assert!(
                        matches!(
                            &e,
                            strongroom::Error::Store {
                                kind: StoreErrorKind::Connection,
                                ..
                            }
                        ),
                        "{e}"
                    );
                }
            }
        }
        assert!(landed.is_some(), "{user}'s vault never reconnected");
    }

    let store = first.store().clone();
    // Acknowledged writes are there.
    let admin_p = p("system_admin:root");
    for a in &acked {
        for (id, value) in &a.created {
            let owner_user = first.get(&admin_p, id).await;
            let info = owner_user.unwrap_or_else(|e| panic!("acknowledged {id} is gone: {e}"));
            let user = match &info.scope {
                Scope::PerUser { user } => user.clone(),
                other => panic!("{other:?}"),
            };
            let revealed = first
                .reveal(&p(&format!("app_user:crm:{user}")), id)
                .await
                .expect("reveal");
            assert_eq!(revealed.fields["api_key"].expose_secret(), value.as_str());
        }
        for id in &a.granted {
            let grants = store.grants(id).await.expect("grants");
            assert!(
                grants.iter().any(|g| g.app == "crm" && g.is_active()),
                "{id}"
            );
        }
    }

    // No gap, no fork: 1..n, each row chained to the one before.
    let rows = store.audit_range(1, usize::MAX).await.expect("rows");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i as u64 + 1, "a gap before row {}", row.seq);
        if i > 0 {
            assert_eq!(row.prev_hash, rows[i - 1].hash, "a fork at row {}", row.seq);
        }
    }
    let report = first.audit().verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.rows, rows.len() as u64);
    let newest = sink
        .0
        .lock()
        .expect("sink")
        .iter()
        .max_by_key(|c| c.seq)
        .cloned()
        .expect("checkpoints were made");
    let report = second
        .audit()
        .verify_against(std::slice::from_ref(&newest))
        .await
        .expect("verify against the checkpoint");
    assert!(report.is_ok(), "{report:?}");

    // Nothing half-applied: a credential exists exactly when its create row does, a grant
    // exactly when its grant row does.
    let created_rows: BTreeSet<CredentialId> = rows
        .iter()
        .filter(|r| r.event.action == Action::Create && r.event.outcome == Outcome::Success)
        .filter_map(|r| r.event.target.credential_id.clone())
        .collect();
    let stored: BTreeSet<CredentialId> = store
        .list(&strongroom::ListFilter::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        created_rows, stored,
        "credentials and their create rows differ"
    );
    let grant_rows: BTreeSet<CredentialId> = rows
        .iter()
        .filter(|r| r.event.action == Action::GrantAdd && r.event.outcome == Outcome::Success)
        .filter_map(|r| r.event.target.credential_id.clone())
        .collect();
    let mut granted = BTreeSet::new();
    for id in &stored {
        if !store.grants(id).await.expect("grants").is_empty() {
            granted.insert(id.clone());
        }
    }
    assert_eq!(grant_rows, granted, "grants and their grant rows differ");
    let resolves = rows
        .iter()
        .filter(|r| r.event.action == Action::Resolve && r.event.outcome == Outcome::Success)
        .count();
    let acked_resolves: usize = acked.iter().map(|a| a.resolved).sum();
    assert!(resolves >= acked_resolves, "{resolves} < {acked_resolves}");
    println!(
        "{kills} backends terminated mid-commit; {} writes acknowledged, {errors} calls cut, \
         {} audit rows",
        acked.iter().map(|a| a.created.len()).sum::<usize>(),
        rows.len()
    );
    control
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

//! `PostgresStore` against the machine's PostgreSQL server (127.0.0.1:5432, or
//! `STRONGROOM_TEST_POSTGRES`): the conformance suite, several instances and several
//! processes sharing one audit chain, a writer process killed mid-commit, and the
//! `synchronous_commit` guard. These tests fail (they never skip) when the server is down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use strongroom::conformance;
use strongroom::{
    AuditEvent, AuditTarget, Batch, CredentialRecord, Mutation, PostgresOptions, PostgresStore,
    Precondition, Scope, Store,
};

fn url() -> String {
    std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn fresh_schema() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    format!("t_{}", hex::encode(bytes))
}

async fn open(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        &url(),
        PostgresOptions::default().schema(schema).pool_size(8),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} must be running for these tests: {e}",
            url()
        )
    })
}

async fn drop_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let schemas = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let schema = fresh_schema();
        schemas.lock().expect("lock").push(schema.clone());
        // Two instances on one schema, as two service replicas would run.
        async move {
            let first = Arc::new(open(&schema).await) as Arc<dyn Store>;
            let second = Arc::new(open(&schema).await) as Arc<dyn Store>;
            (first, second)
        }
    })
    .await;
    for s in schemas.into_inner().expect("lock") {
        drop_schema(&s).await;
    }
}

fn record(name: &str) -> CredentialRecord {
    conformance::sample_record(name, Scope::SystemWide)
}

fn create_batch(names: &[String]) -> Batch {
    let mut mutations = Vec::new();
    let mut events = Vec::new();
    for name in names {
        let r = record(name);
        events.push(
            AuditEvent::new(
                "test",
                strongroom::Action::Create,
                AuditTarget::credential(&r.id, &r.scope),
            )
            .detail("name", name.clone()),
        );
        mutations.push(Mutation::Put {
            record: r,
            precondition: Precondition::CreateOnly,
        });
    }
    Batch { mutations, events }
}

/// Checks the chain: rows 1..=n with no gap, every hash right.
async fn verified_rows(store: &PostgresStore) -> u64 {
    let report = strongroom::audit::verify_chain(store)
        .await
        .expect("verify");
    assert!(report.is_ok(), "chain broken: {report:?}");
    let head = store.chain_head().await.expect("head").map_or(0, |h| h.seq);
    assert_eq!(report.rows, head, "rows 1..=head, no gaps");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_append_to_one_unbroken_chain() {
    let schema = fresh_schema();
    let a = Arc::new(open(&schema).await);
    let b = Arc::new(open(&schema).await);
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for w in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..10 {
                    store
                        .commit(create_batch(&[format!("i{i}-w{w}-k{k}")]))
                        .await
                        .expect("commit");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(verified_rows(&a).await, 2 * 16 * 10);
    assert_eq!(
        b.list(&strongroom::ListFilter::default())
            .await
            .expect("list")
            .len(),
        320
    );
    drop_schema(&schema).await;
}

/// The child side of the multi-process tests: run by the parent with
/// `STRONGROOM_PG_CHILD=<mode>:<schema>`; does nothing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run as a child process by the multi-process tests"]
async fn child_writer() {
    let Ok(spec) = std::env::var("STRONGROOM_PG_CHILD") else {
        return;
    };
    let (mode, rest) = spec.split_once(':').expect("mode:schema:id");
    let (schema, id) = rest.split_once(':').expect("schema:id");
    let store = Arc::new(open(schema).await);
    match mode {
        "writers" => {
            let mut tasks = Vec::new();
            for w in 0..16 {
                let store = store.clone();
                let id = id.to_string();
                tasks.push(tokio::spawn(async move {
                    for k in 0..10 {
                        store
                            .commit(create_batch(&[format!("p{id}-w{w}-k{k}")]))
                            .await
                            .expect("commit");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        }
        "forever" => {
            // Batches of three credentials and three events, until killed.
            let mut tasks = Vec::new();
            for w in 0..8 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for k in 0.. {
                        let names: Vec<String> = (0..3).map(|j| format!("w{w}-k{k}-{j}")).collect();
                        store.commit(create_batch(&names)).await.expect("commit");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn child(mode: &str, schema: &str, id: usize) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_writer", "--exact", "--ignored", "--nocapture"])
        .env("STRONGROOM_PG_CHILD", format!("{mode}:{schema}:{id}"))
        .env("STRONGROOM_TEST_POSTGRES", url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_sixteen_writers_make_one_verified_chain() {
    let schema = fresh_schema();
    let store = open(&schema).await; // creates the schema before the children race
    let children: Vec<_> = (0..4).map(|i| child("writers", &schema, i)).collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(verified_rows(&store).await, 4 * 16 * 10);
    let names: BTreeSet<String> = store
        .list(&strongroom::ListFilter::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names.len(), 640);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_commit_leaves_nothing_half_applied() {
    let schema = fresh_schema();
    let store = open(&schema).await;
    let mut c = child("forever", &schema, 0);
    // Let it write for a while, then kill it without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let head = store.chain_head().await.expect("head").map_or(0, |h| h.seq);
        if head >= 600 || std::time::Instant::now() > deadline {
            break;
        }
    }
    c.kill().expect("kill -9");
    c.wait().expect("reap");
    // Another instance keeps going on the same chain.
    store
        .commit(create_batch(&["after-kill".to_string()]))
        .await
        .expect("commit after the kill");
    let rows = verified_rows(&store).await;
    assert!(rows > 3, "the child wrote something");
    // Every batch is whole: its three credentials and its three audit rows, or nothing.
    let names: BTreeSet<String> = store
        .list(&strongroom::ListFilter::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    let events = store.audit_range(1, usize::MAX).await.expect("audit");
    let audited: BTreeSet<String> = events
        .iter()
        .filter_map(|r| r.event.details.get("name").cloned())
        .collect();
    assert_eq!(
        names, audited,
        "a credential without its audit row, or the reverse"
    );
    let mut batches: BTreeMap<String, usize> = BTreeMap::new();
    for n in names.iter().filter(|n| n.starts_with('w')) {
        let (batch, _) = n.rsplit_once('-').expect("w-k-j");
        *batches.entry(batch.to_string()).or_default() += 1;
    }
    assert!(
        batches.values().all(|&n| n == 3),
        "a half-applied batch: {:?}",
        batches.iter().find(|(_, &n)| n != 3)
    );
    drop_schema(&schema).await;
}

/// A row whose action is not one of the documented names is corrupt: reading it names its
/// sequence number, and verification reports it there.
#[tokio::test]
async fn an_unknown_action_in_a_row_is_a_corrupt_row() {
    let schema = fresh_schema();
    let store = open(&schema).await;
    let names: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    store.commit(create_batch(&names)).await.expect("commit");
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "UPDATE {schema}.audit SET action = 'credential.put' WHERE seq = 3"
        ))
        .await
        .expect("tamper");
    match store.audit_range(1, 10).await {
        Err(strongroom::Error::CorruptAuditRow { seq, .. }) => assert_eq!(seq, 3),
        other => panic!("expected a corrupt row 3, got {other:?}"),
    }
    let report = strongroom::audit::verify_chain(&store)
        .await
        .expect("verify");
    assert_eq!(report.first_bad_seq(), Some(3));
    assert_eq!(
        report.problem.map(|p| p.kind),
        Some(strongroom::audit::ProblemKind::Undecodable)
    );
    drop_schema(&schema).await;
}

#[tokio::test]
async fn synchronous_commit_off_is_refused_unless_the_host_opts_out() {
    let schema = fresh_schema();
    let off = format!("{}?options=-c%20synchronous_commit%3Doff", url());
    let err = PostgresStore::connect_with(&off, PostgresOptions::default().schema(&schema))
        .await
        .expect_err("async commit refused");
    let message = err.to_string();
    assert!(message.contains("synchronous_commit = off"), "{message}");
    assert!(message.contains("allow_async_commit"), "{message}");
    let store = PostgresStore::connect_with(
        &off,
        PostgresOptions::default()
            .schema(&schema)
            .allow_async_commit(true),
    )
    .await
    .expect("explicit opt-out");
    store
        .commit(create_batch(&["ok".into()]))
        .await
        .expect("commit");
    drop_schema(&schema).await;
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_give_clear_errors() {
    let err = PostgresStore::connect("not a url at all ::")
        .await
        .expect_err("bad url");
    assert!(err.to_string().contains("postgres URL"), "{err}");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = PostgresStore::connect(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/test"
    ))
    .await
    .expect_err("nothing listens");
    let message = err.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/test")),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "the password leaked: {message}"
    );
    let err = PostgresStore::connect_with(&url(), PostgresOptions::default().schema("Bad-Name"))
        .await
        .expect_err("bad schema");
    assert!(err.to_string().contains("schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_runs_on_postgres() {
    use strongroom::{
        CredentialRef, ExposeSecret, LocalKey, NewCredential, Principal, ResolveContext,
        SecretString, Vault,
    };
    let schema = fresh_schema();
    let vault = Vault::builder()
        .store(Arc::new(open(&schema).await))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    vault
        .create(
            &admin,
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "",
                BTreeMap::from([("api_key".into(), SecretString::from("sk-pg-1".to_string()))]),
            ),
        )
        .await
        .expect("create");
    let runtime = Principal::parse("runtime:crm:alice").expect("p");
    let got = vault
        .resolve(
            &runtime,
            &CredentialRef::explicit("openai_main", strongroom::ScopeKind::SystemWide, None),
            &ResolveContext {
                app: "crm".into(),
                user: "alice".into(),
            },
        )
        .await
        .expect("resolve");
    assert_eq!(got.fields["api_key"].expose_secret(), "sk-pg-1");
    let report = vault.verify_audit(&admin).await.expect("verify");
    assert!(report.is_ok());
    drop_schema(&schema).await;
}

/// Each instance caches scope + name lookups and grants for the data generation it read
/// them at. A change made through the other instance (new secret, revoked grant, deletion)
/// must show in the very next resolve here: the stale entry's checked commit is refused
/// under the chain-head lock and the resolve reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_instance_shows_in_the_next_resolve_on_the_other() {
    use strongroom::{
        CredentialRef, CredentialUpdate, Error, ExposeSecret, LocalKey, NewCredential, Principal,
        ResolveContext, ScopeKind, SecretString, Vault,
    };
    let schema = fresh_schema();
    let key = Arc::new(LocalKey::generate().expect("key"));
    let here_store = Arc::new(open(&schema).await);
    let here = Vault::builder()
        .store(here_store.clone())
        .key_wrapper(key.clone())
        .build()
        .await
        .expect("vault");
    let there = Vault::builder()
        .store(Arc::new(open(&schema).await))
        .key_wrapper(key)
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    let alice = Principal::parse("app_user:crm:alice").expect("p");
    let fields = |v: &str| BTreeMap::from([("api_key".into(), SecretString::from(v.to_string()))]);
    let info = there
        .create(
            &alice,
            NewCredential::new(
                "gh",
                Scope::per_user("alice").expect("scope"),
                "openai",
                "",
                fields("sk-one"),
            ),
        )
        .await
        .expect("create");
    there
        .grant_add(&alice, &info.id, "crm")
        .await
        .expect("grant");
    let runtime = Principal::parse("runtime:crm:alice").expect("p");
    let ctx = ResolveContext::of(&runtime).expect("ctx");
    let reference = CredentialRef::explicit("gh", ScopeKind::PerUser, None);
    let resolve = || here.resolve(&runtime, &reference, &ctx);
    for _ in 0..3 {
        let got = resolve().await.expect("resolve");
        assert_eq!(got.fields["api_key"].expose_secret(), "sk-one");
    }
    let before = here_store.writer_stats();
    assert!(before.groups >= 1 && before.events >= 3, "{before:?}");

    there
        .update(
            &alice,
            &info.id,
            info.version,
            CredentialUpdate {
                fields: Some(fields("sk-two")),
                ..CredentialUpdate::default()
            },
        )
        .await
        .expect("update");
    let got = resolve().await.expect("resolve after the update");
    assert_eq!(got.fields["api_key"].expose_secret(), "sk-two");

    there
        .grant_revoke(&alice, &info.id, "crm", false)
        .await
        .expect("revoke");
    let err = resolve().await.expect_err("the grant is revoked");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

    there.delete(&alice, &info.id, None).await.expect("delete");
    let err = resolve().await.expect_err("deleted");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");

    let report = here.verify_audit(&admin).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    drop_schema(&schema).await;
}

/// Schema version 1 exactly as it shipped (never edit: it is what old databases hold).
fn schema_v1(s: &str) -> String {
    format!(
        "CREATE SCHEMA {s};
        CREATE TABLE {s}.schema_version (version INTEGER NOT NULL);
        INSERT INTO {s}.schema_version (version) VALUES (1);
        CREATE TABLE {s}.credentials (
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
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_upgrades_and_its_expiry_moves_from_metadata_into_the_column() {
    let schema = fresh_schema();
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&schema_v1(&schema))
        .await
        .expect("schema 1");
    for (id, metadata) in [
        ("id-0", r#"{"expires_at":"1900000000123","label":"x"}"#),
        ("id-1", r#"{"label":"y"}"#),
        ("id-2", r#"{"expires_at":"next tuesday"}"#),
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.credentials VALUES ($1, $1, 'per_user', 'alice', \
                     'openai', 'api_key', 'filled', $2, false, 1, 1000, 1000, \
                     'local:0000000000000000', '\\x0102')"
                ),
                &[&id, &metadata],
            )
            .await
            .expect("row");
    }
    // Two instances open it at once: the advisory lock lets one migrate.
    let (a, b) = tokio::join!(open(&schema), open(&schema));
    async fn get(store: &PostgresStore, id: &str) -> CredentialRecord {
        let id = strongroom::CredentialId::new(id).expect("id");
        store.get(&id).await.expect("get").expect("present")
    }
    let expiring = get(&a, "id-0").await;
    assert_eq!(
        expiring.expires_at,
        Some(strongroom::Timestamp(1_900_000_000_123))
    );
    assert_eq!(
        expiring.metadata,
        BTreeMap::from([("label".to_string(), "x".to_string())])
    );
    assert_eq!(get(&b, "id-1").await.expires_at, None);
    let odd = get(&b, "id-2").await;
    assert_eq!(odd.expires_at, None);
    assert_eq!(odd.metadata["expires_at"], "next tuesday");
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {schema}.schema_version ORDER BY version"),
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=LATEST_SCHEMA).collect::<Vec<_>>());
    // The upgraded schema keeps records.
    let record = conformance::sample_stored_record("intent", "u1", "after-upgrade");
    a.commit(Batch {
        mutations: vec![Mutation::create_record(record.clone())],
        events: vec![],
    })
    .await
    .expect("a record on the upgraded schema");
    assert_eq!(
        b.record(&record.record_key()).await.expect("record"),
        Some(record)
    );
    drop_schema(&schema).await;
}

/// 32 claimers of one lease on two instances (two pools, two writers, as two service
/// replicas): one winner per round, several times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_lease_claimers_on_two_instances_have_one_winner() {
    for _ in 0..3 {
        let schema = fresh_schema();
        let first = Arc::new(open(&schema).await) as Arc<dyn Store>;
        let second = Arc::new(open(&schema).await) as Arc<dyn Store>;
        conformance::lease_claimers(conformance::StoreHandles::pair(first, second), 32).await;
        drop_schema(&schema).await;
    }
}

/// The schema version this build writes.
const LATEST_SCHEMA: i32 = 4;

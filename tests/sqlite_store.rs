//! SqliteStore specifics: no plaintext in the file, a corrupt row fails alone, a wrong key
//! loses nothing, and bad files give clear errors.

use std::sync::Arc;

use rusqlite::Connection;
use strongroom::conformance::sample_record;
use strongroom::{
    Batch, CredentialRecord, Error, ErrorKind, ExposeSecret, KeyRing, LocalKey, Mutation,
    Precondition, Scope, SqliteStore, Store, StoreErrorKind,
};

fn canary(i: usize) -> String {
    format!("CANARY-sk-live-{i:04}-8d1f0c2b9e7a")
}

async fn filled(
    dir: &std::path::Path,
    ring: &KeyRing,
    n: usize,
) -> (SqliteStore, Vec<CredentialRecord>) {
    let store = SqliteStore::open(dir.join("vault.db")).expect("open");
    let mut records = Vec::new();
    for i in 0..n {
        let mut r = sample_record(
            &format!("cred{i}"),
            Scope::per_user("alice").expect("scope"),
        );
        let sealed = ring
            .seal(canary(i).as_bytes(), &r.identity())
            .await
            .expect("seal");
        r.sealed = sealed.bytes;
        r.key_id = sealed.key_id;
        store
            .commit(Batch {
                mutations: vec![Mutation::Put {
                    record: r.clone(),
                    precondition: Precondition::CreateOnly,
                }],
                events: vec![strongroom::AuditEvent::new(
                    "alice",
                    strongroom::Action::Create,
                    strongroom::AuditTarget::credential(&r.id, &r.scope),
                )],
            })
            .await
            .expect("commit");
        records.push(r);
    }
    (store, records)
}

fn ring() -> KeyRing {
    KeyRing::new(Arc::new(LocalKey::generate().expect("key")))
}

#[tokio::test]
async fn no_plaintext_reaches_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring();
    let (store, records) = filled(dir.path(), &ring, 25).await;
    for r in &records {
        let got = store.get(&r.id).await.expect("get").expect("present");
        let plain = ring.open(&got.sealed, &got.identity()).await.expect("open");
        assert!(plain.expose_secret().starts_with(b"CANARY"));
        assert!(
            !format!("{got:?}").contains("CANARY"),
            "Debug of a record shows no secret"
        );
    }
    let scan = || {
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let path = entry.expect("entry").path();
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            assert!(
                !bytes.windows(6).any(|w| w == b"CANARY"),
                "{} contains a plaintext canary",
                path.display()
            );
        }
    };
    scan(); // with the write-ahead log still open
    drop(store);
    scan(); // and after the store closed
}

#[tokio::test]
async fn a_corrupt_row_fails_alone_and_the_others_still_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring();
    let (store, records) = filled(dir.path(), &ring, 6).await;
    let conn = Connection::open(store.path()).expect("open");
    // Row 1: a flipped byte in the sealed blob. Row 2: a sealed blob cut short.
    // Row 3: metadata that is not JSON. Row 4: an unknown state.
    conn.execute(
        "UPDATE credentials SET sealed = substr(sealed, 1, 100) || x'ff' || substr(sealed, 102) WHERE id = ?1",
        [records[1].id.as_str()],
    )
    .expect("tamper");
    conn.execute(
        "UPDATE credentials SET sealed = substr(sealed, 1, 30) WHERE id = ?1",
        [records[2].id.as_str()],
    )
    .expect("tamper");
    conn.execute(
        "UPDATE credentials SET metadata = '{oops' WHERE id = ?1",
        [records[3].id.as_str()],
    )
    .expect("tamper");
    conn.execute(
        "UPDATE credentials SET state = 'haunted' WHERE id = ?1",
        [records[4].id.as_str()],
    )
    .expect("tamper");

    let got = store
        .get(&records[1].id)
        .await
        .expect("get")
        .expect("present");
    let err = ring
        .open(&got.sealed, &got.identity())
        .await
        .expect_err("flipped byte");
    assert_eq!(err.kind(), ErrorKind::DecryptFailed);
    assert!(err.to_string().contains(records[1].id.as_str()), "{err}");
    let got = store
        .get(&records[2].id)
        .await
        .expect("get")
        .expect("present");
    let err = ring
        .open(&got.sealed, &got.identity())
        .await
        .expect_err("cut short");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    for r in &records[3..5] {
        let err = store.get(&r.id).await.expect_err("undecodable row");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(
            err.to_string().contains(r.id.as_str()),
            "names the row: {err}"
        );
    }
    for i in [0, 5] {
        let got = store
            .get(&records[i].id)
            .await
            .expect("get")
            .expect("present");
        let plain = ring
            .open(&got.sealed, &got.identity())
            .await
            .expect("the others open");
        assert_eq!(plain.expose_secret(), canary(i).as_bytes());
    }
    // A corrupt row can still be deleted by id, so an operator can clear it.
    store
        .commit(Batch {
            mutations: vec![Mutation::Delete {
                id: records[3].id.clone(),
                precondition: Precondition::None,
            }],
            events: vec![],
        })
        .await
        .expect("delete corrupt row");
}

#[tokio::test]
async fn the_wrong_master_key_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let right = ring();
    let (store, records) = filled(dir.path(), &right, 3).await;
    let wrong = ring();
    for r in &records {
        let got = store.get(&r.id).await.expect("get").expect("present");
        let err = wrong
            .open(&got.sealed, &got.identity())
            .await
            .expect_err("wrong key");
        assert_eq!(err.kind(), ErrorKind::KeyUnavailable);
    }
    drop(store);
    let store = SqliteStore::open(dir.path().join("vault.db")).expect("reopen");
    for (i, r) in records.iter().enumerate() {
        let got = store.get(&r.id).await.expect("get").expect("present");
        let plain = right
            .open(&got.sealed, &got.identity())
            .await
            .expect("right key opens");
        assert_eq!(plain.expose_secret(), canary(i).as_bytes());
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.db");
    let content = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).expect("write");
    let err = SqliteStore::open(&path).expect_err("not a database");
    match &err {
        strongroom::Error::Store { kind, .. } => assert_eq!(*kind, StoreErrorKind::Schema),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(err.to_string().contains("notes.db"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        content,
        "the file is untouched"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.db");
    drop(SqliteStore::open(&path).expect("create"));
    Connection::open(&path)
        .expect("open")
        .execute("UPDATE strongroom_schema SET version = 99", [])
        .expect("bump");
    let err = SqliteStore::open(&path).expect_err("too new");
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 99") && msg.contains("upgrade strongroom"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_database_is_in_wal_mode_with_a_schema_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    let _store = SqliteStore::open(&path).expect("create");
    let conn = Connection::open(&path).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("SELECT version FROM strongroom_schema", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, LATEST_SCHEMA);
}

/// The schema version this build writes.
const LATEST_SCHEMA: i64 = 6;

/// Schema version 3 exactly as it shipped (never edit: it is what old files hold).
const SCHEMA_V3: &str = "
    CREATE TABLE credentials (
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
    );
    CREATE TABLE grants (
        credential_id TEXT NOT NULL,
        app           TEXT NOT NULL,
        granted_by    TEXT NOT NULL,
        granted_at    INTEGER NOT NULL,
        revoked_at    INTEGER,
        revoked_by    TEXT,
        PRIMARY KEY (credential_id, app)
    ) WITHOUT ROWID;
    CREATE TABLE strongroom_generation (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO strongroom_generation (id, value) VALUES (1, 0);
    CREATE TABLE strongroom_schema (version INTEGER NOT NULL);
    INSERT INTO strongroom_schema (version) VALUES (3);";

/// Writes a version-3 file holding one credential per `(name, metadata)`, as the vault of
/// that version stored them (`expires_at` in the metadata, milliseconds as text).
fn old_file(path: &std::path::Path, rows: &[(&str, &str)]) {
    let conn = Connection::open(path).expect("create");
    conn.execute_batch(SCHEMA_V3).expect("schema 3");
    for (i, (name, metadata)) in rows.iter().enumerate() {
        conn.execute(
            "INSERT INTO credentials VALUES (?1, ?2, 'per_user', 'alice', 'openai', 'api_key',
             'filled', ?3, 0, 1, 1000, 1000, 'local:0000000000000000', x'0102')",
            rusqlite::params![format!("id-{i}"), name, metadata],
        )
        .expect("row");
    }
}

#[tokio::test]
async fn a_version_3_file_upgrades_and_its_expiry_moves_from_metadata_into_the_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v3.db");
    old_file(
        &path,
        &[
            ("expiring", r#"{"expires_at":"1900000000123","label":"x"}"#),
            ("forever", r#"{"label":"y"}"#),
            ("odd", r#"{"expires_at":"next tuesday"}"#),
            ("broken", r#"{"expires_at": oops"#),
        ],
    );
    let store = SqliteStore::open(&path).expect("the old file opens and upgrades");
    let get = |i: usize| {
        let store = store.clone();
        async move {
            store
                .get(&strongroom::CredentialId::new(format!("id-{i}")).expect("id"))
                .await
        }
    };
    let expiring = get(0).await.expect("get").expect("present");
    assert_eq!(
        expiring.expires_at,
        Some(strongroom::Timestamp(1_900_000_000_123))
    );
    assert_eq!(
        expiring.metadata,
        std::collections::BTreeMap::from([("label".to_string(), "x".to_string())]),
        "expires_at left the metadata"
    );
    let forever = get(1).await.expect("get").expect("present");
    assert_eq!(forever.expires_at, None);
    let odd = get(2).await.expect("get").expect("present");
    assert_eq!(
        odd.expires_at, None,
        "what the vault never wrote is not guessed at"
    );
    assert_eq!(odd.metadata["expires_at"], "next tuesday", "and is kept");
    let err = get(3).await.expect_err("a corrupt row stays corrupt");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let due = store
        .list(&strongroom::ListFilter {
            expires_before: Some(strongroom::Timestamp(2_000_000_000_000)),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        due.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["expiring"]
    );
    drop(store);
    let version: i64 = Connection::open(&path)
        .expect("open")
        .query_row("SELECT version FROM strongroom_schema", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, LATEST_SCHEMA);
    // Opening again migrates nothing twice.
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        get_id(&store, "id-0").await.expires_at,
        Some(strongroom::Timestamp(1_900_000_000_123))
    );
    // The upgraded file keeps records.
    let record = strongroom::conformance::sample_stored_record("intent", "u1", "after-upgrade");
    store
        .commit(Batch {
            mutations: vec![Mutation::create_record(record.clone())],
            events: vec![],
        })
        .await
        .expect("a record in the upgraded file");
    assert_eq!(
        store.record(&record.record_key()).await.expect("record"),
        Some(record)
    );
}

/// 32 claimers of one lease on two stores over one file (as a host service and a second
/// process would be): one winner per round, several times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_lease_claimers_on_two_stores_over_one_file_have_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..3 {
        let path = dir.path().join(format!("lease{round}.db"));
        let first = Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>;
        let second = Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>;
        strongroom::conformance::lease_claimers(
            strongroom::conformance::StoreHandles::pair(first, second),
            32,
        )
        .await;
    }
}

async fn get_id(store: &SqliteStore, id: &str) -> CredentialRecord {
    store
        .get(&strongroom::CredentialId::new(id).expect("id"))
        .await
        .expect("get")
        .expect("present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("g.db")).expect("open"));
    let mut handles = Vec::new();
    for t in 0..64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..20 {
                let ev = strongroom::AuditEvent::new(
                    format!("w{t}"),
                    strongroom::Action::Resolve,
                    strongroom::AuditTarget::none(),
                )
                .detail("i", i.to_string());
                store.commit(Batch::events(vec![ev])).await.expect("commit");
            }
        }));
    }
    for h in handles {
        h.await.expect("writer");
    }
    let stats = store.writer_stats();
    assert_eq!(stats.batches, 64 * 20);
    assert!(
        stats.transactions * 4 < stats.batches,
        "64 concurrent writers should share transactions: {stats:?}"
    );
    let report = strongroom::audit::verify_chain(store.as_ref())
        .await
        .expect("verify");
    assert!(report.is_ok() && report.rows == 1280);
}

#[tokio::test]
async fn cached_point_reads_see_changes_made_by_another_store_on_the_same_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b (another process would look the same)");
    let scope = Scope::per_user("alice").expect("scope");
    let record = sample_record("k", scope.clone());
    a.commit(Batch {
        mutations: vec![Mutation::Put {
            record: record.clone(),
            precondition: Precondition::CreateOnly,
        }],
        events: vec![],
    })
    .await
    .expect("create");
    let by_name = strongroom::ListFilter {
        scope: Some(scope.clone()),
        name: Some("k".into()),
        ..Default::default()
    };
    let grant = strongroom::Grant {
        credential_id: record.id.clone(),
        app: "crm".into(),
        granted_by: "alice".into(),
        granted_at: strongroom::Timestamp(1),
        revoked_at: None,
        revoked_by: None,
    };
    a.commit(Batch {
        mutations: vec![Mutation::PutGrant {
            grant: grant.clone(),
        }],
        events: vec![],
    })
    .await
    .expect("grant");
    // Warm a's cache.
    for _ in 0..3 {
        assert_eq!(a.list(&by_name).await.expect("list")[0].version, 1);
        assert!(a.grants(&record.id).await.expect("grants")[0].is_active());
        assert!(a.get(&record.id).await.expect("get").is_some());
    }
    // b revokes the grant and updates the credential.
    let mut revoked = grant.clone();
    revoked.revoked_at = Some(strongroom::Timestamp(2));
    let mut v2 = record.clone();
    v2.version = 2;
    b.commit(Batch {
        mutations: vec![
            Mutation::PutGrant { grant: revoked },
            Mutation::Put {
                record: v2,
                precondition: Precondition::IfVersion(1),
            },
        ],
        events: vec![],
    })
    .await
    .expect("b's change");
    assert!(
        !a.grants(&record.id).await.expect("grants")[0].is_active(),
        "a sees the revocation at once"
    );
    assert_eq!(a.list(&by_name).await.expect("list")[0].version, 2);
    assert_eq!(
        a.get(&record.id)
            .await
            .expect("get")
            .expect("present")
            .version,
        2
    );
    // And a deletion.
    b.commit(Batch {
        mutations: vec![Mutation::Delete {
            id: record.id.clone(),
            precondition: Precondition::None,
        }],
        events: vec![],
    })
    .await
    .expect("delete");
    assert!(a.get(&record.id).await.expect("get").is_none());
    assert!(a.list(&by_name).await.expect("list").is_empty());
    assert!(a.grants(&record.id).await.expect("grants").is_empty());
    // Audit-only commits do not disturb cached reads' correctness either.
    a.commit(Batch::events(vec![strongroom::AuditEvent::new(
        "x",
        strongroom::Action::Reveal,
        strongroom::AuditTarget::none(),
    )]))
    .await
    .expect("event");
    assert!(a.get(&record.id).await.expect("get").is_none());
}

#[tokio::test]
async fn a_checked_commit_on_a_stale_cached_read_fails_and_a_resolve_sees_the_new_value() {
    use std::collections::BTreeMap;
    use strongroom::{
        CredentialRef, CredentialUpdate, NewCredential, Principal, ResolveContext, SecretString,
        Vault,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let key = Arc::new(LocalKey::generate().expect("key"));
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b (another process would look the same)");
    let vault_a = Vault::builder()
        .store(Arc::new(a.clone()))
        .key_wrapper(key.clone())
        .build()
        .await
        .expect("vault a");
    let vault_b = Vault::builder()
        .store(Arc::new(b.clone()))
        .key_wrapper(key)
        .build()
        .await
        .expect("vault b");
    let owner = Principal::parse("app_user:crm:alice").expect("principal");
    let runtime = Principal::parse("runtime:crm:alice").expect("principal");
    let fields = |v: &str| BTreeMap::from([("api_key".to_string(), SecretString::from(v))]);
    let scope = Scope::per_app_per_user("crm", "alice").expect("scope");
    let created = vault_a
        .create(
            &owner,
            NewCredential::new("main", scope.clone(), "openai", "api_key", fields("sk-one")),
        )
        .await
        .expect("create");
    let reference = CredentialRef::explicit("main", strongroom::ScopeKind::PerAppPerUser, None);
    let ctx = ResolveContext {
        app: "crm".into(),
        user: "alice".into(),
    };
    let value = |r: strongroom::RevealedCredential| r.fields["api_key"].expose_secret().to_string();
    for _ in 0..3 {
        let got = vault_a
            .resolve(&runtime, &reference, &ctx)
            .await
            .expect("resolve");
        assert_eq!(value(got), "sk-one");
    }
    // The store level: a stamped (cached) read, then b changes the credential.
    let (_, stamp) = a.find_named(&scope, "main").await.expect("find");
    vault_b
        .update(
            &owner,
            &created.id,
            created.version,
            CredentialUpdate {
                fields: Some(fields("sk-two")),
                ..CredentialUpdate::default()
            },
        )
        .await
        .expect("update through b");
    let head = a.chain_head().await.expect("head");
    let err = a
        .commit_checked(
            Batch::events(vec![strongroom::AuditEvent::new(
                "x",
                strongroom::Action::Reveal,
                strongroom::AuditTarget::none(),
            )]),
            stamp,
        )
        .await
        .expect_err("b changed the data after a's read");
    assert!(
        matches!(
            err,
            strongroom::Error::Store {
                kind: StoreErrorKind::Stale,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(a.chain_head().await.expect("head"), head, "nothing written");
    // The vault level: a's next resolve returns b's value, never the cached one.
    let got = vault_a
        .resolve(&runtime, &reference, &ctx)
        .await
        .expect("resolve");
    assert_eq!(value(got), "sk-two");
    // b deletes it: a's resolve says not found, although its cache still has the row.
    let current = vault_b.get(&owner, &created.id).await.expect("get");
    vault_b
        .delete(&owner, &created.id, Some(current.version))
        .await
        .expect("delete");
    let err = vault_a
        .resolve(&runtime, &reference, &ctx)
        .await
        .expect_err("deleted through b");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn two_stores_on_one_file_append_to_one_unbroken_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b (another process would look the same)");
    let mut handles = Vec::new();
    for (i, store) in [a.clone(), b.clone()]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        handles.push(tokio::spawn(async move {
            for j in 0..25 {
                store
                    .commit(Batch::events(vec![strongroom::AuditEvent::new(
                        format!("writer{i}"),
                        strongroom::Action::ALL[j % strongroom::Action::ALL.len()],
                        strongroom::AuditTarget::none(),
                    )]))
                    .await
                    .expect("every append lands, whichever store makes it");
            }
        }));
    }
    for h in handles {
        h.await.expect("writer");
    }
    let report = strongroom::audit::verify_chain(&a).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.rows, 200);
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[tokio::test]
async fn a_new_vault_file_is_private_marked_and_its_folder_is_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("new-home");
    let path = folder.join("vault.db");
    let store = SqliteStore::open(&path).expect("create");
    // A reader on the file keeps the WAL and its index in place while we look at them.
    let reader = Connection::open(&path).expect("open");
    assert_eq!(mode(&folder), 0o700);
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let file = folder.join(name);
        assert!(file.exists(), "{name} exists while a reader holds the file");
        assert_eq!(mode(&file), 0o600, "{name}");
    }
    let id: i32 = reader
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(id, strongroom::store::SQLITE_APPLICATION_ID);
    drop(reader);
    store.close().await.expect("close");
}

#[tokio::test]
async fn another_applications_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An SQLite file of some other program: tables of its own, no application id.
    let theirs = dir.path().join("app.db");
    let conn = Connection::open(&theirs).expect("open");
    conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hi');")
        .expect("their schema");
    drop(conn);
    // And one that marks itself with an application id of its own.
    let marked = dir.path().join("marked.db");
    let conn = Connection::open(&marked).expect("open");
    conn.execute_batch("PRAGMA application_id = 42; CREATE TABLE t (x);")
        .expect("marked");
    drop(conn);
    for (path, needle) in [(&theirs, "tables `notes`"), (&marked, "0x0000002a")] {
        let before = std::fs::read(path).expect("read");
        let err = SqliteStore::open(path).expect_err("foreign");
        let msg = err.to_string();
        assert!(msg.contains("is not a strongroom vault"), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(matches!(
            err,
            strongroom::Error::Store {
                kind: StoreErrorKind::Schema,
                ..
            }
        ));
        assert_eq!(std::fs::read(path).expect("read"), before, "left as it was");
        let wal = path.with_extension("db-wal");
        assert!(!wal.exists(), "not switched to WAL");
    }
}

#[tokio::test]
async fn without_create_if_missing_a_missing_or_empty_file_is_not_made_a_vault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = || {
        let mut o = strongroom::SqliteOptions::default();
        o.create_if_missing = false;
        o
    };
    let missing = dir.path().join("missing.db");
    let err = SqliteStore::open_with(&missing, options()).expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!missing.exists(), "nothing was created");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("touch");
    let err = SqliteStore::open_with(&empty, options()).expect_err("empty");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("empty"), "{err}");
    assert_eq!(std::fs::metadata(&empty).expect("meta").len(), 0);
    // An existing vault opens as usual.
    let vault = dir.path().join("vault.db");
    SqliteStore::open(&vault)
        .expect("create")
        .close()
        .await
        .expect("close");
    SqliteStore::open_with(&vault, options())
        .expect("existing")
        .close()
        .await
        .expect("close");
}

#[tokio::test]
async fn a_vault_from_before_the_mark_is_opened_and_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    old_file(&path, &[]);
    let id: i32 = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(id, 0, "an old file has no mark");
    SqliteStore::open(&path)
        .expect("an old vault opens")
        .close()
        .await
        .expect("close");
    let id: i32 = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(id, strongroom::store::SQLITE_APPLICATION_ID);
}

/// With `Synchronous::Full` the store syncs the WAL itself before answering, once for every
/// transaction committed while the previous sync ran; a `Normal` store never syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_durability_syncs_before_answering_and_shares_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for synchronous in [
        strongroom::store::Synchronous::Full,
        strongroom::store::Synchronous::Normal,
    ] {
        let mut options = strongroom::SqliteOptions::default();
        options.synchronous = synchronous;
        let path = dir.path().join(format!("{synchronous:?}.db"));
        let store = Arc::new(SqliteStore::open_with(&path, options).expect("open"));
        let mut handles = Vec::new();
        for t in 0..64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..10 {
                    let ev = strongroom::AuditEvent::new(
                        format!("w{t}"),
                        strongroom::Action::Resolve,
                        strongroom::AuditTarget::none(),
                    )
                    .detail("i", i.to_string());
                    store.commit(Batch::events(vec![ev])).await.expect("commit");
                }
            }));
        }
        for h in handles {
            h.await.expect("writer");
        }
        let stats = store.writer_stats();
        assert_eq!(stats.batches, 640);
        match synchronous {
            strongroom::store::Synchronous::Full => assert!(
                stats.syncs >= 1 && stats.syncs <= stats.transactions,
                "{stats:?}"
            ),
            _ => assert_eq!(stats.syncs, 0, "{stats:?}"),
        }
        let report = strongroom::audit::verify_chain(store.as_ref())
            .await
            .expect("verify");
        assert!(report.is_ok() && report.rows == 640);
    }
}

/// A commit that cannot be made durable is not acknowledged, and nothing is committed after
/// it (fail closed): here the WAL's name is removed under the store, so the sync cannot even
/// open the file.
#[tokio::test]
async fn a_commit_that_cannot_be_synced_fails_and_so_does_every_later_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).expect("open");
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    std::fs::remove_file(&wal).expect("the WAL exists after open");
    let event = || {
        strongroom::AuditEvent::new(
            "w",
            strongroom::Action::Resolve,
            strongroom::AuditTarget::none(),
        )
    };
    let first = store
        .commit(Batch::events(vec![event()]))
        .await
        .expect_err("an unsynced commit is not acknowledged");
    assert!(
        matches!(&first, Error::Store { kind: StoreErrorKind::Io, message, .. } if message.contains("durable")),
        "{first}"
    );
    let later = store
        .commit(Batch::events(vec![event()]))
        .await
        .expect_err("nothing is acknowledged after a failed sync");
    assert!(
        matches!(&later, Error::Store { kind: StoreErrorKind::Io, message, .. } if message.contains("earlier sync")),
        "{later}"
    );
    assert_eq!(store.writer_stats().syncs, 1);
}

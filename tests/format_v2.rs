//! Format 2 through the vault: its namespace keeps another vault's blobs out, every column
//! the policy reads is bound (a database writer who edits one makes the record fail to
//! open), and version-1 records keep opening until a change seals them as version 2.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::Value;
use strongroom::audit::Outcome;
use strongroom::{
    CredentialId, CredentialRecord, CredentialUpdate, ErrorKind, ExposeSecret, KeyRing, KeyWrapper,
    LifecycleState, LocalKey, MemoryStore, Mutation, NewCredential, Precondition, Principal,
    RewrapOptions, Scope, ScopeKind, SecretString, SqliteStore, Store, Timestamp, Vault,
};

const CANARY: &str = "sk-CANARY-format-v2-6d1f0a";

fn p(text: &str) -> Principal {
    Principal::parse(text).expect("principal")
}

fn fields(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

async fn vault(store: Arc<dyn Store>, master: [u8; 32], namespace: Option<&str>) -> Vault {
    let mut builder = Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::from_bytes(&master, "test")));
    if let Some(ns) = namespace {
        builder = builder.namespace(ns);
    }
    builder.build().await.expect("vault")
}

#[tokio::test]
async fn a_vault_refuses_blobs_sealed_in_another_namespace() {
    let master = [0x11; 32];
    let (store_a, store_b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let a = vault(store_a.clone(), master, Some("tenant-a")).await;
    let b = vault(store_b.clone(), master, Some("tenant-b")).await;
    assert_eq!((a.namespace(), b.namespace()), ("tenant-a", "tenant-b"));
    let alice = p("app_user:crm:alice");
    let scope = Scope::per_user("alice").expect("scope");
    let created = a
        .create(
            &alice,
            NewCredential::new("openai_main", scope, "openai", "", fields(CANARY)),
        )
        .await
        .expect("create");
    // The row copied, as is, into B's database: same id, scope, owner, version, master key.
    let row = store_a
        .get(&created.id)
        .await
        .expect("get")
        .expect("present");
    store_b
        .commit(strongroom::Batch {
            mutations: vec![Mutation::Put {
                record: row,
                precondition: Precondition::CreateOnly,
            }],
            events: vec![],
        })
        .await
        .expect("copy");
    let e = b.reveal(&alice, &created.id).await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::DecryptFailed);
    let message = e.to_string();
    assert!(
        message.contains("`tenant-b`"),
        "names the namespace: {message}"
    );
    assert!(!message.contains(CANARY), "{message}");
    // A's own reveal works; a vault left at the default namespace is another namespace too.
    let revealed = a.reveal(&alice, &created.id).await.expect("reveal");
    assert_eq!(revealed.fields["api_key"].expose_secret(), CANARY);
    let default = vault(store_b.clone(), master, None).await;
    assert_eq!(default.namespace(), strongroom::DEFAULT_NAMESPACE);
    assert_eq!(
        default
            .reveal(&alice, &created.id)
            .await
            .expect_err("refused")
            .kind(),
        ErrorKind::DecryptFailed
    );
    // An empty namespace is refused when the vault is built.
    let e = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::from_bytes(&master, "test")))
        .namespace("")
        .build()
        .await
        .expect_err("empty namespace");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// Creates `name` for alice with a metadata `base_url`; returns its id.
async fn create_for_alice(vault: &Vault, name: &str) -> CredentialId {
    let mut new = NewCredential::new(
        name,
        Scope::per_user("alice").expect("scope"),
        "openai",
        "",
        fields(CANARY),
    );
    new.metadata
        .insert("base_url".into(), "https://api.openai.com/v1".into());
    new.expires_at = Some(Timestamp(4_102_444_800_000));
    vault
        .create(&p("app_user:crm:alice"), new)
        .await
        .expect("create")
        .id
}

#[tokio::test]
async fn a_database_writer_who_edits_a_policy_column_makes_the_record_fail_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let master = [0x22; 32];
    let v = vault(
        Arc::new(SqliteStore::open(&path).expect("store")),
        master,
        Some("prod"),
    )
    .await;
    let edits: [(&str, &str); 7] = [
        (
            "agent_accessible",
            "UPDATE credentials SET agent_accessible = 1 WHERE id = ?1",
        ),
        (
            "provider",
            "UPDATE credentials SET provider = 'anthropic' WHERE id = ?1",
        ),
        (
            "handler_type",
            "UPDATE credentials SET handler_type = 'bearer_token' WHERE id = ?1",
        ),
        (
            "expires_at",
            "UPDATE credentials SET expires_at = expires_at + 86400000 WHERE id = ?1",
        ),
        (
            "base_url",
            "UPDATE credentials SET metadata = json_set(metadata, '$.base_url', \
             'https://collector.evil.example') WHERE id = ?1",
        ),
        (
            "state",
            "UPDATE credentials SET state = 'valid' WHERE id = ?1",
        ),
        (
            "name",
            "UPDATE credentials SET name = 'renamed' WHERE id = ?1",
        ),
    ];
    let mut ids = Vec::new();
    for (column, _) in &edits {
        ids.push(create_for_alice(&v, &format!("cred_{column}")).await);
    }
    let untouched = create_for_alice(&v, "untouched").await;
    // An agent's own credential, not agent-accessible.
    let agent_scope = Scope::per_agent("agent-7").expect("scope");
    let agent_cred = v
        .create(
            &p("system_admin:root"),
            NewCredential::new("agent_key", agent_scope, "openai", "", fields(CANARY)),
        )
        .await
        .expect("create")
        .id;
    drop(v);

    let conn = Connection::open(&path).expect("open");
    for ((_, sql), id) in edits.iter().zip(&ids) {
        assert_eq!(conn.execute(sql, [id.as_str()]).expect("edit"), 1, "{sql}");
    }
    conn.execute(edits[0].1, [agent_cred.as_str()])
        .expect("edit");
    drop(conn);

    let v = vault(
        Arc::new(SqliteStore::open(&path).expect("store")),
        master,
        Some("prod"),
    )
    .await;
    let alice = p("app_user:crm:alice");
    for ((column, _), id) in edits.iter().zip(&ids) {
        let e = v
            .reveal(&alice, id)
            .await
            .expect_err(&format!("{column} edited: refused"));
        assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{column}: {e}");
        let message = e.to_string();
        assert!(
            message.contains("commitment does not match") && !message.contains(CANARY),
            "{column}: {message}"
        );
    }
    let revealed = v.reveal(&alice, &untouched).await.expect("untouched opens");
    assert_eq!(revealed.fields["api_key"].expose_secret(), CANARY);
    // The flipped flag lets the agent past the agent-accessible check, and the blob stops
    // it: nothing is released.
    let e = v
        .agent_secret(&p("agent:agent-7"), "agent_key")
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{e}");
}

/// A legitimate change through the vault seals the new version with the new values.
#[tokio::test]
async fn changes_through_the_vault_reseal_with_the_new_values() {
    let v = vault(Arc::new(MemoryStore::new()), [0x33; 32], Some("prod")).await;
    let alice = p("app_user:crm:alice");
    let id = create_for_alice(&v, "openai_main").await;
    let update = CredentialUpdate {
        metadata: Some(BTreeMap::from([(
            "base_url".to_string(),
            "https://eu.api.openai.com/v1".to_string(),
        )])),
        agent_accessible: Some(true),
        expires_at: Some(None),
        ..CredentialUpdate::default()
    };
    let info = v.update(&alice, &id, 1, update).await.expect("update");
    let info = v
        .set_state(&alice, &id, info.version, LifecycleState::Invalid, "test")
        .await
        .expect("state");
    let revealed = v.reveal(&alice, &id).await.expect("reveal");
    assert_eq!(revealed.info.version, info.version);
    assert_eq!(revealed.fields["api_key"].expose_secret(), CANARY);
    let row = v.store().get(&id).await.expect("get").expect("present");
    assert_eq!(row.sealed[0], 2);
    assert_eq!(row.metadata["base_url"], "https://eu.api.openai.com/v1");
}

/// A version-1 row (from `envelope_vectors.json`, sealed before namespaces and bound
/// fields) opens in a vault of any namespace; an update seals its next version as version
/// 2, and a key rotation moves an untouched one onto the key's 128-bit id, leaving it
/// version 1.
#[tokio::test]
async fn format_1_records_open_and_move_to_format_2_when_sealed_again() {
    let path = format!(
        "{}/tests/data/envelope_vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let v = doc["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .find(|v| v["scope_kind"] == "per_app_per_user")
        .expect("the per_app_per_user vector");
    let text = |field: &str| v[field].as_str().expect(field).to_string();
    let mut master = [0u8; 32];
    hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
    let scope = Scope::from_parts(ScopeKind::PerAppPerUser, &text("owner")).expect("scope");
    let owner = match &scope {
        Scope::PerAppPerUser { app, user } => p(&format!("app_user:{app}:{user}")),
        _ => unreachable!(),
    };
    let row = |id: &str| CredentialRecord {
        id: CredentialId::new(id).expect("id"),
        name: format!("legacy_{}", id.replace('-', "_")),
        scope: scope.clone(),
        provider: "stripe".into(),
        handler_type: "api_key".into(),
        state: LifecycleState::Filled,
        metadata: BTreeMap::new(),
        agent_accessible: false,
        version: v["version"].as_u64().expect("version"),
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
        expires_at: None,
        key_id: text("master_key_id"),
        sealed: hex::decode(text("blob_hex")).expect("hex"),
    };
    let store = Arc::new(MemoryStore::new());
    // The blob is bound to the vector's credential id: one row with it.
    let legacy = row(&text("credential_id"));
    store
        .commit(strongroom::Batch {
            mutations: vec![Mutation::Put {
                record: legacy.clone(),
                precondition: Precondition::CreateOnly,
            }],
            events: vec![],
        })
        .await
        .expect("put");
    let plaintext = hex::decode(text("plaintext_hex")).expect("hex");
    let expected: BTreeMap<String, String> = serde_json::from_slice(&plaintext).expect("json");
    let check = |revealed: &strongroom::RevealedCredential| {
        for (k, value) in &expected {
            assert_eq!(revealed.fields[k].expose_secret(), value);
        }
    };
    let v1 = vault(store.clone(), master, Some("any-namespace")).await;
    check(&v1.reveal(&owner, &legacy.id).await.expect("a v1 row opens"));

    // Key rotation onto the same master key: the row moves to the 128-bit id, still v1.
    let key = LocalKey::from_bytes(&master, "test");
    let ring = KeyRing::new(Arc::new(LocalKey::from_bytes(&master, "again")));
    let report = v1
        .rewrap_keys(&p("system_admin:root"), &ring, RewrapOptions::default())
        .await
        .expect("rewrap");
    assert_eq!((report.rewrapped, report.complete), (1, true));
    let moved = store.get(&legacy.id).await.expect("get").expect("present");
    assert_eq!(moved.key_id, key.key_id());
    assert_eq!(moved.sealed[0], 1, "a re-wrap keeps the format version");
    check(&v1.reveal(&owner, &legacy.id).await.expect("opens"));

    // An update seals the next version as version 2, bound to the namespace.
    let update = CredentialUpdate {
        metadata: Some(BTreeMap::from([("label".to_string(), "moved".to_string())])),
        ..CredentialUpdate::default()
    };
    v1.update(&owner, &legacy.id, legacy.version, update)
        .await
        .expect("update");
    let sealed = store.get(&legacy.id).await.expect("get").expect("present");
    assert_eq!(sealed.sealed[0], 2);
    assert_eq!(sealed.key_id, key.key_id());
    check(&v1.reveal(&owner, &legacy.id).await.expect("opens"));
    let elsewhere = vault(store.clone(), master, Some("another")).await;
    assert_eq!(
        elsewhere
            .reveal(&owner, &legacy.id)
            .await
            .expect_err("bound to its namespace now")
            .kind(),
        ErrorKind::DecryptFailed
    );
}

/// The version-1 rows of `envelope_vectors.json` (one master key, four identities), as a
/// store would hold them.
fn format_1_rows() -> ([u8; 32], Vec<(CredentialRecord, Vec<u8>)>) {
    let path = format!(
        "{}/tests/data/envelope_vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let mut master = [0u8; 32];
    let rows = doc["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = |field: &str| v[field].as_str().expect(field).to_string();
            hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
            let scope = Scope::from_parts(
                ScopeKind::parse(&text("scope_kind")).expect("kind"),
                &text("owner"),
            )
            .expect("scope");
            let record = CredentialRecord {
                id: CredentialId::new(text("credential_id")).expect("id"),
                name: format!("legacy_{i}"),
                scope,
                provider: "openai".into(),
                handler_type: "api_key".into(),
                state: LifecycleState::Filled,
                metadata: BTreeMap::new(),
                agent_accessible: false,
                version: v["version"].as_u64().expect("version"),
                created_at: Timestamp(0),
                updated_at: Timestamp(0),
                expires_at: None,
                key_id: text("master_key_id"),
                sealed: hex::decode(text("blob_hex")).expect("hex"),
            };
            (record, hex::decode(text("plaintext_hex")).expect("hex"))
        })
        .collect();
    (master, rows)
}

async fn put(store: &dyn Store, record: CredentialRecord, precondition: Precondition) {
    store
        .commit(strongroom::Batch {
            mutations: vec![Mutation::Put {
                record,
                precondition,
            }],
            events: vec![],
        })
        .await
        .expect("put");
}

async fn audit_actions(store: &dyn Store, action: &str) -> usize {
    store
        .audit_range(1, 10_000)
        .await
        .expect("audit")
        .iter()
        .filter(|r| r.event.action == action && r.event.outcome == Outcome::Success)
        .count()
}

/// `reseal_credentials` turns every version-1 row into version 2 (same version, new data
/// key, bound to the namespace), leaves version-2 rows alone, and has nothing left to do
/// on a second run.
#[tokio::test]
async fn resealing_moves_format_1_records_to_format_2() {
    let (master, rows) = format_1_rows();
    let store = Arc::new(MemoryStore::new());
    for (record, _) in &rows {
        put(store.as_ref(), record.clone(), Precondition::CreateOnly).await;
    }
    let v = vault(store.clone(), master, Some("prod")).await;
    let current = create_for_alice(&v, "already_v2").await;
    let before = store.get(&current).await.expect("get").expect("present");
    assert_eq!(before.sealed[0], 2);

    let admin = p("system_admin:root");
    let e = v
        .reseal_credentials(&p("viewer:v"), Default::default())
        .await
        .expect_err("viewers may not");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);

    let options = strongroom::ResealOptions {
        batch_size: 3,
        ..Default::default()
    };
    let report = v
        .reseal_credentials(&admin, options.clone())
        .await
        .expect("reseal");
    assert_eq!((report.resealed, report.batches), (4, 2));
    assert!(
        report.complete && report.unopenable.is_empty(),
        "{report:?}"
    );
    for (record, plaintext) in &rows {
        let row = store.get(&record.id).await.expect("get").expect("present");
        assert_eq!(row.sealed[0], 2, "now version 2");
        assert_eq!(row.version, record.version, "same credential version");
        assert_eq!(row.key_id, LocalKey::from_bytes(&master, "k").key_id());
        let plain = v
            .keys()
            .open(&row.sealed, &row.identity_in("prod"))
            .await
            .expect("opens in its namespace");
        assert_eq!(plain.expose_secret(), &plaintext[..]);
        assert!(v
            .keys()
            .open(&row.sealed, &row.identity_in("another"))
            .await
            .is_err());
    }
    let after = store.get(&current).await.expect("get").expect("present");
    assert_eq!(after.sealed, before.sealed, "a version-2 row is left alone");
    assert_eq!(audit_actions(store.as_ref(), "keys.reseal").await, 2);

    let again = v.reseal_credentials(&admin, options).await.expect("again");
    assert_eq!(
        (again.resealed, again.batches, again.complete),
        (0, 0, true)
    );
}

/// `ResealSelection::All` gives every credential a new data key, stepwise: a run stopped
/// after one batch goes on from its report's `next_after`. A row whose blob no longer
/// opens is named and left as it is.
#[tokio::test]
async fn resealing_everything_resumes_and_names_what_does_not_open() {
    let store = Arc::new(MemoryStore::new());
    let v = vault(store.clone(), [0x44; 32], Some("prod")).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_for_alice(&v, &format!("cred_{i}")).await);
    }
    ids.sort();
    let before: Vec<CredentialRecord> = {
        let mut rows = Vec::new();
        for id in &ids {
            rows.push(store.get(id).await.expect("get").expect("present"));
        }
        rows
    };
    // A database edit of one row's provider: that blob does not open any more.
    let mut edited = before[3].clone();
    edited.provider = "anthropic".into();
    put(store.as_ref(), edited, Precondition::None).await;

    let admin = p("system_admin:root");
    let step = strongroom::ResealOptions {
        selection: strongroom::ResealSelection::All,
        batch_size: 2,
        max_batches: Some(1),
        ..Default::default()
    };
    let first = v
        .reseal_credentials(&admin, step.clone())
        .await
        .expect("first step");
    assert_eq!((first.resealed, first.complete), (2, false));
    assert_eq!(first.next_after.as_ref(), Some(&ids[1]));
    let rest = v
        .reseal_credentials(
            &admin,
            strongroom::ResealOptions {
                after: first.next_after.clone(),
                max_batches: None,
                ..step
            },
        )
        .await
        .expect("the rest");
    assert!(rest.complete, "{rest:?}");
    assert_eq!(rest.resealed, 2);
    assert_eq!(rest.unopenable, vec![ids[3].clone()]);
    let alice = p("app_user:crm:alice");
    for (i, old) in before.iter().enumerate() {
        let row = store.get(&old.id).await.expect("get").expect("present");
        assert_eq!(row.version, old.version);
        if i == 3 {
            assert_eq!(row.sealed, old.sealed, "left as it was");
            continue;
        }
        assert_ne!(row.sealed, old.sealed, "a new data key and nonce");
        assert_ne!(
            row.sealed[5..60],
            old.sealed[5..60],
            "a new wrapped data key"
        );
        let revealed = v.reveal(&alice, &old.id).await.expect("opens");
        assert_eq!(revealed.fields["api_key"].expose_secret(), CANARY);
    }
    // One batch, then one more (ids 2 and 4; id 3 skipped).
    assert_eq!(audit_actions(store.as_ref(), "keys.reseal").await, 2);
}

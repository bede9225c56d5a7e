//! Quickstart: a vault in a temporary folder on SQLite with a file master key. Stores one
//! credential, reads it back, and verifies the audit chain.
//!
//! Run it with `cargo run --example quickstart`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::crypto::{key_wrapper_from_vars, ENV_HOME};
use strongroom::{
    AuditChain, AuditEvent, AuditTarget, Batch, CredentialId, CredentialRecord, ExposeSecret,
    KeyRing, LifecycleState, Mutation, Precondition, Scope, SqliteStore, Store, Timestamp,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A home folder; the `file` master key is created in it (mode 0600) on first use.
    let home = tempfile::tempdir()?;
    let home_path = home.path().to_string_lossy().into_owned();
    let master = key_wrapper_from_vars(|name| (name == ENV_HOME).then(|| home_path.clone()))?;
    let keys = KeyRing::new(master);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path().join("vault.db"))?);
    println!("vault at {}", home.path().display());
    println!(
        "master key {} (file {}/master.key)",
        keys.active().key_id(),
        home_path
    );

    // 2. Seal a credential's secret fields for its identity and store it with its audit row.
    let scope = Scope::per_user("alice")?;
    let now = Timestamp::now();
    let mut record = CredentialRecord {
        id: CredentialId::generate(),
        name: "openai_main".into(),
        scope,
        provider: "openai".into(),
        handler_type: "api_key".into(),
        state: LifecycleState::Filled,
        metadata: BTreeMap::from([("label".into(), "Alice's OpenAI key".into())]),
        agent_accessible: false,
        version: 1,
        created_at: now,
        updated_at: now,
        key_id: String::new(),
        sealed: Vec::new(),
    };
    let fields = serde_json::json!({ "api_key": "sk-proj-quickstart-0123456789abcdef" });
    let sealed = keys
        .seal(fields.to_string().as_bytes(), &record.identity())
        .await?;
    record.key_id = sealed.key_id;
    record.sealed = sealed.bytes;
    let created = AuditEvent::new(
        "alice",
        "credential.create",
        AuditTarget::credential(&record.id, &record.scope),
    )
    .detail("provider", "openai");
    store
        .commit(Batch {
            mutations: vec![Mutation::Put {
                record: record.clone(),
                precondition: Precondition::CreateOnly,
            }],
            events: vec![created],
        })
        .await?;
    println!(
        "stored {} ({} sealed bytes)",
        record.describe(),
        record.sealed.len()
    );

    // 3. Read it back: the audit row for the read is durable before the secret is opened.
    let stored = store
        .get(&record.id)
        .await?
        .ok_or("the credential vanished")?;
    let revealed = AuditEvent::new(
        "alice",
        "credential.reveal",
        AuditTarget::credential(&stored.id, &stored.scope),
    );
    store.commit(Batch::events(vec![revealed])).await?;
    let plaintext = keys.open(&stored.sealed, &stored.identity()).await?;
    let fields: serde_json::Value = serde_json::from_slice(plaintext.expose_secret())?;
    let api_key = fields["api_key"].as_str().unwrap_or_default();
    println!(
        "read back api_key = {}… ({} characters)",
        &api_key[..8.min(api_key.len())],
        api_key.len()
    );

    // 4. Verify the audit chain and sign a checkpoint of its head.
    let chain = AuditChain::new(store.clone(), keys.clone());
    let report = chain.verify().await?;
    for row in store.audit_range(1, 100).await? {
        println!(
            "  audit #{} {} {} by {} -> {}",
            row.seq,
            hex::encode(&row.hash[..6]),
            row.event.action,
            row.event.actor,
            row.event.outcome.as_str()
        );
    }
    match &report.problem {
        None => println!("audit chain verified: {} rows, intact", report.rows),
        Some(problem) => println!("audit chain BROKEN: {problem}"),
    }
    if let Some(cp) = chain.checkpoint().await? {
        println!(
            "checkpoint: seq {} head {} (authenticated with {})",
            cp.seq,
            hex::encode(&cp.head_hash[..8]),
            cp.key_id
        );
        println!(
            "checkpoint verifies: {}",
            chain.verify_against(&[cp]).await?.is_ok()
        );
    }
    Ok(())
}

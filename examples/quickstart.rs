//! Quickstart: a vault in a temporary folder on SQLite with a file master key. Stores
//! credentials in two scopes, grants one to an app, resolves it from the app's runtime,
//! shows a denied read, and verifies the audit chain.
//!
//! Run it with `cargo run --example quickstart`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::crypto::{key_wrapper_from_vars, ENV_HOME};
use strongroom::{
    CredentialRef, ExposeSecret, NewCredential, Principal, ResolveContext, Scope, SecretString,
    SqliteStore, Vault,
};

fn secret(name: &str, value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([(name.to_string(), SecretString::from(value.to_string()))])
}

fn masked(value: &str) -> String {
    let head: String = value.chars().take(6).collect();
    format!("{head}… ({} characters)", value.chars().count())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A home folder; the `file` master key is created in it (mode 0600) on first use.
    let home = tempfile::tempdir()?;
    let home_path = home.path().to_string_lossy().into_owned();
    let master = key_wrapper_from_vars(|name| (name == ENV_HOME).then(|| home_path.clone()))?;
    let vault = Vault::builder()
        .store(Arc::new(SqliteStore::open(home.path().join("vault.db"))?))
        .key_wrapper(master)
        .build()
        .await?;
    println!("vault at {}", home.path().display());

    // 2. Alice stores her own OpenAI key (per_user); an admin stores a shared one.
    let alice = Principal::parse("app_user:crm:alice")?;
    let admin = Principal::parse("system_admin:root")?;
    let mine = vault
        .create(
            &alice,
            NewCredential::new(
                "openai_main",
                Scope::per_user("alice")?,
                "openai",
                "api_key",
                secret("api_key", "sk-proj-alice-0123456789"),
            ),
        )
        .await?;
    vault
        .create(
            &admin,
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "api_key",
                secret("api_key", "sk-proj-shared-9876543210"),
            ),
        )
        .await?;
    println!(
        "stored {} ({}) and a system_wide one of the same name",
        mine.name, mine.scope
    );

    // 3. The crm app's runtime resolves `openai_main` for Alice's session: the compact ref
    //    means per_user, so it finds hers (never the system-wide one), once she grants crm.
    let runtime = Principal::parse("runtime:crm:alice")?;
    let session = ResolveContext {
        app: "crm".into(),
        user: "alice".into(),
    };
    let reference = CredentialRef::compact("openai_main");
    match vault.resolve(&runtime, &reference, &session).await {
        Err(e) => println!("before the grant: {e}"),
        Ok(_) => println!("unexpected: resolved without a grant"),
    }
    vault.grant_add(&alice, &mine.id, "crm").await?;
    let resolved = vault.resolve(&runtime, &reference, &session).await?;
    println!(
        "after the grant: api_key = {}",
        masked(resolved.fields["api_key"].expose_secret())
    );

    // 4. A viewer may see that it exists, never its value.
    let viewer = Principal::parse("viewer:vera")?;
    println!(
        "viewer sees: {} ({})",
        vault.get(&viewer, &mine.id).await?.name,
        mine.scope
    );
    match vault.reveal(&viewer, &mine.id).await {
        Err(e) => println!("viewer reveal: {e}"),
        Ok(_) => println!("unexpected: a viewer read a secret"),
    }

    // 5. Every step, including the denials, is in the hash-chained audit log.
    for row in vault.store().audit_range(1, 100).await? {
        println!(
            "  audit #{:<2} {} {:<24} {:<20} {}",
            row.seq,
            hex::encode(&row.hash[..4]),
            row.event.action,
            row.event.actor,
            row.event.outcome.as_str()
        );
    }
    let report = vault.verify_audit(&admin).await?;
    match &report.problem {
        None => println!("audit chain verified: {} rows, intact", report.rows),
        Some(problem) => println!("audit chain BROKEN: {problem}"),
    }
    if let Some(cp) = vault.audit().checkpoint().await? {
        println!("checkpoint at row {} signed with {}", cp.seq, cp.key_id);
    }
    Ok(())
}

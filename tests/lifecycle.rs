//! Lifecycle and grants over time: an `expires_at` that passes after creation, expiry taken
//! from a token's own fields, states set to expired or pending, the same through a
//! deployment's sessions, and grant revocation between sessions, through a second vault on
//! the same SQLite file, and racing resolves.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongroom::audit::Outcome;
use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::{
    AuditRecord, Batch, ChainHead, CommitReceipt, CredentialId, CredentialRecord, CredentialRef,
    CredentialUpdate, Error, ErrorKind, ExposeSecret, Grant, LifecycleState, ListFilter, LocalKey,
    MemoryStore, NewCredential, Principal, ReadStamp, ResolveContext, Scope, SecretString,
    SqliteStore, Store, Timestamp, Vault,
};
use tokio::sync::oneshot;

const APP: &str = "crm";

fn owner(user: &str) -> Principal {
    Principal::parse(&format!("app_user:{APP}:{user}")).expect("principal")
}

fn admin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}

fn runtime(user: &str) -> Principal {
    Principal::parse(&format!("runtime:{APP}:{user}")).expect("principal")
}

fn ctx(user: &str) -> ResolveContext {
    ResolveContext {
        app: APP.into(),
        user: user.into(),
    }
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect()
}

fn api_key(value: &str) -> BTreeMap<String, SecretString> {
    secrets(&[("api_key", value)])
}

fn now_secs() -> i64 {
    Timestamp::now().0 / 1000
}

/// Creates a per-user `openai` credential `name` for `user` and grants it to the app.
async fn per_user_key(
    vault: &Vault,
    user: &str,
    name: &str,
    value: &str,
    expires_at: Option<Timestamp>,
) -> CredentialId {
    let mut new = NewCredential::new(
        name,
        Scope::per_user(user).expect("scope"),
        "openai",
        "",
        api_key(value),
    );
    new.expires_at = expires_at;
    let info = vault.create(&owner(user), new).await.expect("create");
    vault
        .grant_add(&owner(user), &info.id, APP)
        .await
        .expect("grant");
    info.id
}

async fn resolve(vault: &Vault, user: &str, name: &str) -> strongroom::Result<String> {
    vault
        .resolve(&runtime(user), &CredentialRef::compact(name), &ctx(user))
        .await
        .map(|r| {
            let field = if r.fields.contains_key("api_key") {
                "api_key"
            } else if r.fields.contains_key("token") {
                "token"
            } else {
                "access_token"
            };
            r.fields[field].expose_secret().to_string()
        })
}

/// Asserts `result` is an `Unusable` refusal for state `state`.
fn assert_unusable<T: std::fmt::Debug>(result: strongroom::Result<T>, state: &str) -> Error {
    let err = result.expect_err("an unusable credential is not released");
    match &err {
        Error::Unusable { state: got, .. } => assert_eq!(got, state, "{err}"),
        other => panic!("expected an Unusable ({state}) refusal, got {other:?}: {other}"),
    }
    assert!(err.to_string().contains(state), "{err}");
    err
}

// ---------------------------------------------------------------------------------------
// Expiry

#[tokio::test]
async fn a_credential_whose_expires_at_passes_after_creation_becomes_expired_and_is_refused() {
    let vault = Vault::in_memory().await.expect("vault");
    let at = Timestamp(Timestamp::now().0 + 600);
    let id = per_user_key(&vault, "u1", "soon", "sk-soon", Some(at)).await;
    let info = vault.get(&owner("u1"), &id).await.expect("get");
    assert_eq!(info.state, LifecycleState::Filled);
    assert_eq!(info.expires_at, Some(at));
    assert_eq!(
        resolve(&vault, "u1", "soon")
            .await
            .expect("usable before expires_at"),
        "sk-soon"
    );

    let wait = (at.0 - Timestamp::now().0).max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    assert_unusable(resolve(&vault, "u1", "soon").await, "expired");
    let info = vault.get(&owner("u1"), &id).await.expect("get");
    assert_eq!(info.state, LifecycleState::Expired, "get shows it expired");
    let listed = vault
        .list(
            &owner("u1"),
            &strongroom::CredentialFilter {
                state: Some(LifecycleState::Expired),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|c| &c.id).collect::<Vec<_>>(),
        vec![&id],
        "a state filter sees it expired too"
    );
}

/// Token types whose handler takes the expiry from a field (`expires_at`, Unix seconds),
/// with a provider of the bundled catalog that uses each.
fn token_cases(expires_at: i64) -> Vec<(&'static str, BTreeMap<String, SecretString>)> {
    let at = expires_at.to_string();
    vec![
        // bearer_token (github_pat, gitlab, telegram)
        (
            "github_pat",
            secrets(&[("token", "ghp_token123"), ("expires_at", &at)]),
        ),
        // oauth2 (github_oauth, google_oauth, slack_oauth, notion, discord_oauth)
        (
            "google_oauth",
            secrets(&[
                ("access_token", "ya29.access"),
                ("refresh_token", "1//refresh"),
                ("expires_at", &at),
            ]),
        ),
    ]
}

#[tokio::test]
async fn a_token_whose_expires_at_field_is_past_is_unusable_and_one_in_the_future_is_usable() {
    let vault = Vault::in_memory().await.expect("vault");
    let past = now_secs() - 60;
    let future = now_secs() + 3600;
    for (when, secs) in [("past", past), ("future", future)] {
        for (provider, fields) in token_cases(secs) {
            let name = format!("{provider}_{when}");
            let info = vault
                .create(
                    &owner("u1"),
                    NewCredential::new(
                        name.clone(),
                        Scope::per_user("u1").expect("scope"),
                        provider,
                        "",
                        fields,
                    ),
                )
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            assert_eq!(
                info.expires_at,
                Some(Timestamp(secs * 1000)),
                "{name}: the field's Unix seconds become expires_at"
            );
            vault
                .grant_add(&owner("u1"), &info.id, APP)
                .await
                .expect("grant");
            let result = resolve(&vault, "u1", &name).await;
            if when == "past" {
                assert_eq!(info.state, LifecycleState::Expired, "{name}");
                assert_unusable(result, "expired");
            } else {
                assert_eq!(info.state, LifecycleState::Filled, "{name}");
                result.unwrap_or_else(|e| panic!("{name} is usable: {e}"));
            }
        }
    }
}

#[tokio::test]
async fn new_token_fields_with_a_later_expires_at_make_an_expired_token_usable_again() {
    let vault = Vault::in_memory().await.expect("vault");
    for (provider, fields) in token_cases(now_secs() - 60) {
        let info = vault
            .create(
                &owner("u1"),
                NewCredential::new(
                    provider,
                    Scope::per_user("u1").expect("scope"),
                    provider,
                    "",
                    fields,
                ),
            )
            .await
            .expect("create");
        vault
            .grant_add(&owner("u1"), &info.id, APP)
            .await
            .expect("grant");
        assert_unusable(resolve(&vault, "u1", provider).await, "expired");
        let later = now_secs() + 3600;
        let (_, refreshed) = token_cases(later)
            .into_iter()
            .find(|(p, _)| *p == provider)
            .expect("case");
        let updated = vault
            .update(
                &owner("u1"),
                &info.id,
                info.version,
                CredentialUpdate {
                    fields: Some(refreshed),
                    ..Default::default()
                },
            )
            .await
            .expect("update");
        assert_eq!(
            updated.expires_at,
            Some(Timestamp(later * 1000)),
            "{provider}"
        );
        assert_eq!(updated.state, LifecycleState::Filled, "{provider}");
        resolve(&vault, "u1", provider)
            .await
            .unwrap_or_else(|e| panic!("{provider} refreshed: {e}"));
    }
}

#[tokio::test]
async fn resolve_is_refused_after_set_state_to_expired_or_pending() {
    let vault = Vault::in_memory().await.expect("vault");
    for (name, to) in [
        ("exp", LifecycleState::Expired),
        ("pend", LifecycleState::Pending),
    ] {
        let id = per_user_key(&vault, "u1", name, "sk-x", None).await;
        resolve(&vault, "u1", name)
            .await
            .expect("usable while filled");
        let info = vault
            .set_state(&owner("u1"), &id, 1, to, "test")
            .await
            .expect("set_state");
        assert_eq!(info.state, to);
        assert_unusable(resolve(&vault, "u1", name).await, to.as_str());
        // Both may go to valid, which is resolved again.
        vault
            .set_state(&owner("u1"), &id, 2, LifecycleState::Valid, "re-verified")
            .await
            .expect("valid");
        resolve(&vault, "u1", name)
            .await
            .expect("usable when valid");
    }
}

// ---------------------------------------------------------------------------------------
// The session path

const APP_YAML: &str = "
agents:
  - id: assistant
    brain:
      provider: openai
      credential: openai_main
  - id: researcher
    brain:
      provider: openai
      credential:
        ref: shared_openai
        scope: system_wide
";

const ASSISTANT: &str = "agents[assistant].brain";
const RESEARCHER: &str = "agents[researcher].brain";
const SLOT: &str = "brain_credential";

fn slots() -> Slots {
    Slots::new().declare(
        "brain",
        CredentialSlot::new(SLOT, "LLM provider credential")
            .handler_types(["api_key"])
            .providers(["openai"])
            .inject("api_key", "{block}.config.api_key"),
    )
}

/// A vault with `shared_openai` (system_wide, expiring at `shared_expiry`) and alice's and
/// bob's per-user `openai_main` (granted), and the app deployed.
async fn deployed(vault: &Vault, shared_expiry: Option<Timestamp>) -> (Deployment, CredentialId) {
    let mut shared = NewCredential::new(
        "shared_openai",
        Scope::SystemWide,
        "openai",
        "",
        api_key("sk-shared"),
    );
    shared.expires_at = shared_expiry;
    let shared = vault.create(&admin(), shared).await.expect("shared");
    for user in ["alice", "bob"] {
        per_user_key(vault, user, "openai_main", &format!("sk-{user}"), None).await;
    }
    let config = AppConfig::parse("app.yaml", APP_YAML).expect("parse");
    let manifest = compile(APP, &config, &slots(), &vault.catalog()).expect("compile");
    (
        Deployment::new(vault, manifest).await.expect("deploy"),
        shared.id,
    )
}

async fn id_of(vault: &Vault, user: &str, name: &str) -> CredentialId {
    vault
        .list(&owner(user), &strongroom::CredentialFilter::default())
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.name == name)
        .expect("credential")
        .id
}

fn injected_key(session: &strongroom::config::InjectedConfig, agent: usize) -> String {
    session.expose()[0]["agents"][agent]["brain"]["config"]["api_key"]
        .as_str()
        .expect("injected")
        .to_string()
}

/// Asserts an error names the block and slot (and the ref).
fn names_block_and_slot(err: &Error, block: &str, reference: &str) {
    let message = err.to_string();
    assert!(
        message.contains(&format!("block {block}")),
        "names the block: {message}"
    );
    assert!(
        message.contains(&format!("slot {SLOT}")),
        "names the slot: {message}"
    );
    assert!(
        message.contains(&format!("ref {reference}")),
        "names the ref: {message}"
    );
}

#[tokio::test]
async fn a_session_fails_naming_block_and_slot_once_its_user_credential_is_expired_or_pending() {
    let vault = Vault::in_memory().await.expect("vault");
    let (deployment, _) = deployed(&vault, None).await;
    let alice = deployment.start_session("alice").await.expect("alice");
    assert_eq!(injected_key(&alice, 0), "sk-alice");
    let id = id_of(&vault, "alice", "openai_main").await;
    let mut version = 1;
    for to in [LifecycleState::Expired, LifecycleState::Pending] {
        version = vault
            .set_state(&owner("alice"), &id, version, to, "test")
            .await
            .expect("set_state")
            .version;
        let err = assert_unusable(deployment.start_session("alice").await, to.as_str());
        names_block_and_slot(&err, ASSISTANT, "openai_main (per_user)");
        let err = assert_unusable(
            deployment.resolve_slot("alice", ASSISTANT, SLOT).await,
            to.as_str(),
        );
        names_block_and_slot(&err, ASSISTANT, "openai_main (per_user)");
        // Another user's session is not affected.
        let bob = deployment.start_session("bob").await.expect("bob");
        assert_eq!(injected_key(&bob, 0), "sk-bob");
    }
}

#[tokio::test]
async fn a_deploy_time_credential_set_to_expired_or_pending_after_the_deploy_fails_the_session() {
    let vault = Vault::in_memory().await.expect("vault");
    let (deployment, shared) = deployed(&vault, None).await;
    let s = deployment.start_session("alice").await.expect("alice");
    assert_eq!(injected_key(&s, 1), "sk-shared");
    let mut version = 1;
    for to in [LifecycleState::Expired, LifecycleState::Pending] {
        version = vault
            .set_state(&admin(), &shared, version, to, "test")
            .await
            .expect("set_state")
            .version;
        // The fields held since the deploy are not injected for an unusable credential.
        let err = assert_unusable(deployment.start_session("alice").await, to.as_str());
        names_block_and_slot(&err, RESEARCHER, "shared_openai (system_wide)");
        let err = assert_unusable(
            deployment.resolve_slot("bob", RESEARCHER, SLOT).await,
            to.as_str(),
        );
        names_block_and_slot(&err, RESEARCHER, "shared_openai (system_wide)");
    }
}

#[tokio::test]
async fn a_deploy_time_credential_whose_expires_at_passes_after_the_deploy_fails_the_session() {
    let vault = Vault::in_memory().await.expect("vault");
    let at = Timestamp(Timestamp::now().0 + 600);
    let (deployment, _) = deployed(&vault, Some(at)).await;
    let s = deployment
        .start_session("alice")
        .await
        .expect("before expiry");
    assert_eq!(injected_key(&s, 1), "sk-shared");
    let wait = (at.0 - Timestamp::now().0).max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let err = assert_unusable(deployment.start_session("alice").await, "expired");
    names_block_and_slot(&err, RESEARCHER, "shared_openai (system_wide)");
    let err = assert_unusable(
        deployment.resolve_slot("alice", RESEARCHER, SLOT).await,
        "expired",
    );
    names_block_and_slot(&err, RESEARCHER, "shared_openai (system_wide)");
}

// ---------------------------------------------------------------------------------------
// Grants

fn assert_denied<T: std::fmt::Debug>(result: strongroom::Result<T>) -> Error {
    let err = result.expect_err("refused without a grant");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    err
}

#[tokio::test]
async fn revoking_a_grant_between_two_session_starts_refuses_the_second() {
    let vault = Vault::in_memory().await.expect("vault");
    let (deployment, _) = deployed(&vault, None).await;
    let first = deployment.start_session("alice").await.expect("first");
    assert_eq!(injected_key(&first, 0), "sk-alice");
    let id = id_of(&vault, "alice", "openai_main").await;
    vault
        .grant_revoke(&owner("alice"), &id, APP, false)
        .await
        .expect("revoke");
    let err = assert_denied(deployment.start_session("alice").await);
    names_block_and_slot(&err, ASSISTANT, "openai_main (per_user)");
    assert!(err.to_string().contains("holds no grant"), "{err}");
    let err = assert_denied(deployment.resolve_slot("alice", ASSISTANT, SLOT).await);
    names_block_and_slot(&err, ASSISTANT, "openai_main (per_user)");
    // The denial is audited against the credential.
    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    let last = rows.last().expect("rows");
    assert_eq!(last.event.outcome, Outcome::Denied);
    assert_eq!(last.event.target.credential_id.as_ref(), Some(&id));
    // Bob keeps his grant.
    let bob = deployment.start_session("bob").await.expect("bob");
    assert_eq!(injected_key(&bob, 0), "sk-bob");
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

/// Two vaults on two `SqliteStore`s of one file, with one master key (two processes, say).
async fn two_vaults_on_one_sqlite_file(dir: &tempfile::TempDir) -> (Vault, Vault) {
    let path = dir.path().join("vault.db");
    let key = Arc::new(LocalKey::generate().expect("key"));
    let a = Vault::builder()
        .store(Arc::new(SqliteStore::open(&path).expect("open a")))
        .key_wrapper(key.clone())
        .build()
        .await
        .expect("vault a");
    let b = Vault::builder()
        .store(Arc::new(SqliteStore::open(&path).expect("open b")))
        .key_wrapper(key)
        .build()
        .await
        .expect("vault b");
    (a, b)
}

#[tokio::test]
async fn a_revoke_through_a_second_vault_on_the_same_sqlite_file_is_honoured_by_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_vaults_on_one_sqlite_file(&dir).await;
    let id = per_user_key(&a, "u1", "k", "sk-shared-file", None).await;
    // Warm A's caches: several resolves just before the revoke.
    for _ in 0..3 {
        assert_eq!(
            resolve(&a, "u1", "k").await.expect("a resolves"),
            "sk-shared-file"
        );
    }
    resolve(&b, "u1", "k").await.expect("b sees A's credential");

    b.grant_revoke(&owner("u1"), &id, APP, false)
        .await
        .expect("revoke on b");
    assert_denied(resolve(&a, "u1", "k").await);
    assert_denied(resolve(&a, "u1", "k").await);
    assert_denied(resolve(&b, "u1", "k").await);

    // A grant added on B is seen by A, and a hard revoke on B as well.
    b.grant_add(&owner("u1"), &id, APP)
        .await
        .expect("grant on b");
    resolve(&a, "u1", "k").await.expect("a sees the new grant");
    b.grant_revoke(&owner("u1"), &id, APP, true)
        .await
        .expect("hard revoke on b");
    assert_denied(resolve(&a, "u1", "k").await);

    // Both vaults appended to one chain, which verifies from either side.
    assert!(a.audit().verify().await.expect("verify a").is_ok());
    assert!(b.audit().verify().await.expect("verify b").is_ok());
}

#[tokio::test]
async fn a_revoke_through_a_second_vault_on_the_same_sqlite_file_fails_the_firsts_next_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_vaults_on_one_sqlite_file(&dir).await;
    let (deployment, _) = deployed(&a, None).await;
    for _ in 0..2 {
        let s = deployment.start_session("alice").await.expect("alice");
        assert_eq!(injected_key(&s, 0), "sk-alice");
    }
    let id = id_of(&b, "alice", "openai_main").await;
    b.grant_revoke(&owner("alice"), &id, APP, false)
        .await
        .expect("revoke on b");
    let err = assert_denied(deployment.start_session("alice").await);
    names_block_and_slot(&err, ASSISTANT, "openai_main (per_user)");
}

#[tokio::test]
async fn a_state_change_through_a_second_vault_on_the_same_sqlite_file_is_honoured_by_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_vaults_on_one_sqlite_file(&dir).await;
    let id = per_user_key(&a, "u1", "k", "sk-1", None).await;
    for _ in 0..3 {
        resolve(&a, "u1", "k").await.expect("a resolves");
    }
    b.set_state(&owner("u1"), &id, 1, LifecycleState::Expired, "test")
        .await
        .expect("expire on b");
    assert_unusable(resolve(&a, "u1", "k").await, "expired");
    assert_eq!(
        a.get(&owner("u1"), &id).await.expect("get").state,
        LifecycleState::Expired
    );
    b.update(
        &owner("u1"),
        &id,
        2,
        CredentialUpdate {
            fields: Some(api_key("sk-2")),
            ..Default::default()
        },
    )
    .await
    .expect("new fields on b");
    assert_eq!(
        resolve(&a, "u1", "k").await.expect("a resolves again"),
        "sk-2",
        "A returns B's new version, not a cached one"
    );
}

/// Resolvers loop on one credential while another task revokes its grant. Every resolve
/// that starts after the revoke returned is refused; no successful resolve is audited after
/// the revoke's row; every success has exactly one row; the chain verifies. (With no other
/// writes, a resolve in flight at the revoke goes stale on its cached first attempt and
/// re-reads after the revoke; the window of a retry that read before the revoke is pinned
/// deterministically by the `PausingStore` tests below.)
async fn resolves_racing_a_revoke(vault: Vault) {
    const RESOLVERS: usize = 2;
    const BEFORE: usize = 20;
    const AFTER: usize = 50;
    let id = per_user_key(&vault, "u1", "k", "sk-race", None).await;
    let revoked = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut resolvers = Vec::new();
    for _ in 0..RESOLVERS {
        let (vault, revoked, successes) = (vault.clone(), revoked.clone(), successes.clone());
        resolvers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut after = 0;
            let started = std::time::Instant::now();
            while after < AFTER {
                assert!(started.elapsed() < STEP, "the revoke never landed");
                let started_after_revoke = revoked.load(Ordering::SeqCst);
                let result = resolve(&vault, "u1", "k").await;
                match &result {
                    Ok(value) => {
                        assert_eq!(value, "sk-race");
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}"),
                }
                outcomes.push((started_after_revoke, result.is_ok()));
                if started_after_revoke {
                    after += 1;
                }
            }
            outcomes
        }));
    }
    let revoker = {
        let (vault, id, revoked, successes) = (
            vault.clone(),
            id.clone(),
            revoked.clone(),
            successes.clone(),
        );
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            while successes.load(Ordering::SeqCst) < BEFORE {
                assert!(started.elapsed() < STEP, "the resolvers never succeeded");
                tokio::task::yield_now().await;
            }
            vault
                .grant_revoke(&owner("u1"), &id, APP, false)
                .await
                .expect("revoke");
            revoked.store(true, Ordering::SeqCst);
        })
    };
    revoker.await.expect("revoker");
    let mut outcomes = Vec::new();
    for r in resolvers {
        outcomes.extend(r.await.expect("resolver"));
    }
    let after_ok = outcomes.iter().filter(|(after, ok)| *after && *ok).count();
    assert_eq!(
        after_ok, 0,
        "a resolve that started after the revoke returned succeeded"
    );
    let ok = outcomes.iter().filter(|(_, ok)| *ok).count();
    assert!(ok >= BEFORE, "{ok} successes before the revoke");

    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    let for_id = |r: &&AuditRecord| r.event.target.credential_id.as_ref() == Some(&id);
    let revokes: Vec<u64> = rows
        .iter()
        .filter(for_id)
        .filter(|r| r.event.action == "grant.revoke")
        .map(|r| r.seq)
        .collect();
    assert_eq!(revokes.len(), 1);
    let revoke_seq = revokes[0];
    let successes: Vec<u64> = rows
        .iter()
        .filter(for_id)
        .filter(|r| {
            r.event.action == "credential.resolve"
                && r.event.outcome == Outcome::Success
                && r.event.details.get("app").map(String::as_str) == Some(APP)
        })
        .map(|r| r.seq)
        .collect();
    let late: Vec<u64> = successes
        .iter()
        .copied()
        .filter(|&s| s > revoke_seq)
        .collect();
    assert!(
        late.is_empty(),
        "successful resolves audited after the revoke (row {revoke_seq}): rows {late:?}"
    );
    assert_eq!(
        successes.len(),
        ok,
        "one success row per successful resolve"
    );
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolves_racing_a_revoke_on_memory_store_are_refused_from_the_revoke_on() {
    resolves_racing_a_revoke(Vault::in_memory().await.expect("vault")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolves_racing_a_revoke_on_sqlite_store_are_refused_from_the_revoke_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = common::sqlite_vault(dir.path().join("vault.db")).await;
    resolves_racing_a_revoke(vault).await;
}

// ---------------------------------------------------------------------------------------
// A revoke landing inside a resolve's retry, made deterministic

/// A one-shot pause: the next call through it signals `reached` and waits for `release`.
type Pause = Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>;

async fn pass(pause: &Pause) {
    let armed = pause.lock().expect("pause").take();
    if let Some((reached, release)) = armed {
        let _ = reached.send(());
        let _ = release.await;
    }
}

/// Arms `pause`; returns (reached, release).
fn arm(pause: &Pause) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    *pause.lock().expect("pause") = Some((reached_tx, release_rx));
    (reached_rx, release_tx)
}

/// A `MemoryStore` that can pause once after a stamped grant read (the first, cached
/// attempt of a resolve) or after a plain grant read (a fresh retry). Only timing changes:
/// every call is answered by the inner store.
#[derive(Debug, Default)]
struct PausingStore {
    inner: MemoryStore,
    after_grants_stamped: Pause,
    after_grants: Pause,
}

#[async_trait::async_trait]
impl Store for PausingStore {
    async fn get(&self, id: &CredentialId) -> strongroom::Result<Option<CredentialRecord>> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &ListFilter) -> strongroom::Result<Vec<CredentialRecord>> {
        self.inner.list(filter).await
    }
    async fn grants(&self, credential_id: &CredentialId) -> strongroom::Result<Vec<Grant>> {
        let grants = self.inner.grants(credential_id).await;
        pass(&self.after_grants).await;
        grants
    }
    async fn audit_range(&self, from: u64, limit: usize) -> strongroom::Result<Vec<AuditRecord>> {
        self.inner.audit_range(from, limit).await
    }
    async fn chain_head(&self) -> strongroom::Result<Option<ChainHead>> {
        self.inner.chain_head().await
    }
    async fn commit(&self, batch: Batch) -> strongroom::Result<CommitReceipt> {
        self.inner.commit(batch).await
    }
    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> strongroom::Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        self.inner.find_named(scope, name).await
    }
    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> strongroom::Result<(Vec<Grant>, ReadStamp)> {
        let grants = self.inner.grants_stamped(credential_id).await;
        pass(&self.after_grants_stamped).await;
        grants
    }
    async fn commit_checked(
        &self,
        batch: Batch,
        stamp: ReadStamp,
    ) -> strongroom::Result<CommitReceipt> {
        self.inner.commit_checked(batch, stamp).await
    }
    async fn record(
        &self,
        key: &strongroom::RecordKey,
    ) -> strongroom::Result<Option<strongroom::Record>> {
        self.inner.record(key).await
    }
    async fn records(
        &self,
        filter: &strongroom::RecordFilter,
    ) -> strongroom::Result<Vec<strongroom::Record>> {
        self.inner.records(filter).await
    }
}

const STEP: Duration = Duration::from_secs(10);

async fn reached(rx: oneshot::Receiver<()>, what: &str) {
    tokio::time::timeout(STEP, rx)
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached"))
        .unwrap_or_else(|_| panic!("{what}: the call went away"));
}

/// Sets up a vault on a [`PausingStore`] with alice's granted `openai_main` and an
/// unrelated credential to update.
async fn pausing_vault() -> (Vault, Arc<PausingStore>, CredentialId, CredentialId) {
    let store = Arc::new(PausingStore::default());
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    let id = per_user_key(&vault, "alice", "openai_main", "sk-alice", None).await;
    let other = vault
        .create(
            &admin(),
            NewCredential::new(
                "unrelated",
                Scope::SystemWide,
                "openai",
                "",
                api_key("sk-u"),
            ),
        )
        .await
        .expect("unrelated")
        .id;
    (vault, store, id, other)
}

/// Drives one resolve (or session start) through: cached grant read → an unrelated write
/// (so the checked commit is stale and the resolve retries with fresh reads) → fresh grant
/// read (still active) → the grant is revoked and the revoke committed → the resolve goes
/// on. Returns the resolve's outcome and the revoke's audit seq.
async fn revoke_inside_a_fresh_retry<T: Send + 'static>(
    vault: &Vault,
    store: &PausingStore,
    id: &CredentialId,
    other: &CredentialId,
    call: tokio::task::JoinHandle<strongroom::Result<T>>,
    first: (oneshot::Receiver<()>, oneshot::Sender<()>),
) -> (strongroom::Result<T>, u64) {
    let (first_reached, first_release) = first;
    reached(first_reached, "the cached grant read").await;
    vault
        .update(
            &admin(),
            other,
            1,
            CredentialUpdate {
                metadata: Some(BTreeMap::from([("note".into(), "x".into())])),
                ..Default::default()
            },
        )
        .await
        .expect("unrelated update");
    let (fresh_reached, fresh_release) = arm(&store.after_grants);
    let _ = first_release.send(());
    reached(fresh_reached, "the fresh grant read of the retry").await;
    vault
        .grant_revoke(&owner("alice"), id, APP, false)
        .await
        .expect("revoke");
    let revoke_seq = vault
        .store()
        .chain_head()
        .await
        .expect("head")
        .expect("rows")
        .seq;
    let _ = fresh_release.send(());
    let result = tokio::time::timeout(STEP, call)
        .await
        .expect("the call finishes")
        .expect("task");
    (result, revoke_seq)
}

async fn success_rows_after(vault: &Vault, id: &CredentialId, seq: u64) -> Vec<AuditRecord> {
    vault
        .store()
        .audit_range(seq + 1, usize::MAX)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| {
            r.event.target.credential_id.as_ref() == Some(id)
                && r.event.outcome == Outcome::Success
                && matches!(
                    r.event.action.as_str(),
                    "credential.resolve" | "credential.inject"
                )
        })
        .collect()
}

#[tokio::test]
async fn a_revoke_committed_during_a_resolves_fresh_retry_leaves_no_success_audited_after_it() {
    let (vault, store, id, other) = pausing_vault().await;
    resolve(&vault, "alice", "openai_main")
        .await
        .expect("granted");
    let first = arm(&store.after_grants_stamped);
    let call = {
        let vault = vault.clone();
        tokio::spawn(async move { resolve(&vault, "alice", "openai_main").await })
    };
    let (result, revoke_seq) =
        revoke_inside_a_fresh_retry(&vault, &store, &id, &other, call, first).await;
    let late = success_rows_after(&vault, &id, revoke_seq).await;
    assert!(
        late.is_empty(),
        "the resolve read the grant (fresh, unstamped) before the revoke, the revoke \
         committed as row {revoke_seq}, and the resolve then committed its success row \
         unchecked after it: rows {:?} (result: {result:?})",
        late.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    assert_denied(result);
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_revoke_committed_during_a_session_starts_fresh_retry_leaves_no_injection_after_it() {
    let (vault, store, id, other) = pausing_vault().await;
    let config =
        AppConfig::parse("app.yaml", "brain:\n  credential: openai_main\n").expect("parse");
    let manifest = compile(APP, &config, &slots(), &vault.catalog()).expect("compile");
    let deployment = Arc::new(Deployment::new(&vault, manifest).await.expect("deploy"));
    deployment.start_session("alice").await.expect("granted");
    let first = arm(&store.after_grants_stamped);
    let call = {
        let deployment = deployment.clone();
        tokio::spawn(async move {
            deployment
                .start_session("alice")
                .await
                .map(|s| s.injected_count())
        })
    };
    let (result, revoke_seq) =
        revoke_inside_a_fresh_retry(&vault, &store, &id, &other, call, first).await;
    let late = success_rows_after(&vault, &id, revoke_seq).await;
    assert!(
        late.is_empty(),
        "the session read the grant (fresh, unstamped) before the revoke, the revoke \
         committed as row {revoke_seq}, and the session then committed its injection row \
         unchecked after it: rows {:?} (result: {result:?})",
        late.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    let err = assert_denied(result);
    names_block_and_slot(&err, "brain", "openai_main (per_user)");
}

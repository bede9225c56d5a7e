//! The rules an attacker goes after: a resolve acts only for the principal's own app and
//! user (a context naming another app's grant is refused and audited), nothing unreadable
//! reaches a row (scopes, principals and grant apps are checked before anything is
//! written, on every store), permission is decided before input is inspected, an admin's
//! disable sticks, a repeated revoke keeps the first, and no secret (or success) is handed
//! back when its audit row did not commit.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{vault_on, FaultStore, INJECTED};
use strongroom::audit::Outcome;
use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::model::LifecycleState;
use strongroom::{
    CredentialFilter, CredentialId, CredentialRef, CredentialUpdate, Error, ErrorKind,
    ExposeSecret, MemoryStore, NewCredential, Principal, ResolveContext, Scope, ScopeKind,
    SecretString, SqliteStore, Store, Vault,
};

const CANARY: &str = "sk-CANARY-security-5e2b";

fn fields(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

fn p(text: &str) -> Principal {
    Principal::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn ctx(app: &str, user: &str) -> ResolveContext {
    ResolveContext {
        app: app.into(),
        user: user.into(),
    }
}

async fn rows(vault: &Vault) -> Vec<strongroom::audit::AuditRecord> {
    vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit rows")
}

/// A per-user `openai` credential of `owner` (an `app_user`), holding the canary.
async fn user_credential(
    vault: &Vault,
    owner: &Principal,
    name: &str,
) -> strongroom::CredentialInfo {
    let user = owner.user().expect("an app user");
    vault
        .create(
            owner,
            NewCredential::new(
                name,
                Scope::per_user(user).expect("scope"),
                "openai",
                "",
                fields(CANARY),
            ),
        )
        .await
        .expect("create")
}

/// alice's per-user credential, granted to `blog` only.
async fn alice_granted_to_blog(vault: &Vault) -> CredentialId {
    let alice = p("app_user:blog:alice");
    let info = vault
        .create(
            &alice,
            NewCredential::new(
                "openai_main",
                Scope::per_user("alice").expect("scope"),
                "openai",
                "",
                fields(CANARY),
            ),
        )
        .await
        .expect("create");
    vault
        .grant_add(&alice, &info.id, "blog")
        .await
        .expect("grant");
    info.id
}

#[tokio::test]
async fn a_runtime_cannot_use_another_apps_grant_by_naming_it_in_the_context() {
    let vault = Vault::in_memory().await.expect("vault");
    alice_granted_to_blog(&vault).await;
    let crm = p("runtime:crm:alice");
    let reference = CredentialRef::compact("openai_main");

    // The reproduction: acting as crm's runtime, a context that names blog.
    let err = vault
        .resolve(&crm, &reference, &ctx("blog", "alice"))
        .await
        .expect_err("the blog grant is not crm's");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.to_string().contains(CANARY));
    let last = rows(&vault).await.pop().expect("a row");
    assert_eq!(last.event.action, strongroom::Action::Resolve);
    assert_eq!(last.event.outcome, Outcome::Denied);
    assert_eq!(last.event.actor, "runtime:crm:alice");
    assert_eq!(
        last.event.details.get("app").map(String::as_str),
        Some("crm")
    );
    assert_eq!(
        last.event.details.get("context_app").map(String::as_str),
        Some("blog"),
        "both apps are in the row"
    );

    // Its own context: crm holds no grant, so still denied (and audited as such).
    let err = vault
        .resolve(&crm, &reference, &ctx("crm", "alice"))
        .await
        .expect_err("crm holds no grant");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let last = rows(&vault).await.pop().expect("a row");
    assert_eq!(
        last.event.details.get("reason").map(String::as_str),
        Some("no grant")
    );

    // blog's own runtime gets it.
    let blog = p("runtime:blog:alice");
    let ok = vault
        .resolve(&blog, &reference, &ResolveContext::of(&blog).expect("ctx"))
        .await
        .expect("blog is granted");
    assert_eq!(ok.fields["api_key"].expose_secret(), CANARY);
    let last = rows(&vault).await.pop().expect("a row");
    assert_eq!(last.event.actor, "runtime:blog:alice");
    assert_eq!(last.event.outcome, Outcome::Success);
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_context_for_another_user_is_refused_and_audited() {
    let vault = Vault::in_memory().await.expect("vault");
    alice_granted_to_blog(&vault).await;
    let mallory = p("runtime:blog:mallory");
    let before = rows(&vault).await.len();
    let err = vault
        .resolve(
            &mallory,
            &CredentialRef::compact("openai_main"),
            &ctx("blog", "alice"),
        )
        .await
        .expect_err("mallory's session cannot read alice's");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let after = rows(&vault).await;
    assert_eq!(after.len(), before + 1, "exactly one row: the denial");
    let row = &after[before].event;
    assert_eq!(row.outcome, Outcome::Denied);
    assert_eq!(row.details.get("user").map(String::as_str), Some("mallory"));
    assert_eq!(
        row.details.get("context_user").map(String::as_str),
        Some("alice")
    );
}

/// The every-cell policy test's mismatch cases: whoever acts, a context that is not its own
/// app and user is refused and audited, for every scope kind a reference can name, even
/// where the credential exists and a grant would cover the named app.
#[tokio::test]
async fn every_principal_is_refused_every_context_that_is_not_its_own() {
    let vault = Vault::in_memory().await.expect("vault");
    let admin = p("system_admin:root");
    // A credential named `main` in each app-addressable scope of app `blog` / user `bob`,
    // and in crm / u1, so that a wrong context would find something.
    for (app, user) in [("blog", "bob"), ("crm", "u1")] {
        let owner = p(&format!("app_user:{app}:{user}"));
        let scopes = [
            (admin.clone(), Scope::SystemWide),
            (
                p(&format!("app_admin:{app}:adm")),
                Scope::per_app_shared(app).expect("s"),
            ),
            (owner.clone(), Scope::per_user(user).expect("s")),
            (
                owner.clone(),
                Scope::per_app_per_user(app, user).expect("s"),
            ),
        ];
        for (creator, scope) in scopes {
            let name = if scope == Scope::SystemWide && app == "crm" {
                continue;
            } else {
                "main"
            };
            let info = vault
                .create(
                    &creator,
                    NewCredential::new(name, scope.clone(), "openai", "", fields(CANARY)),
                )
                .await
                .expect("seed");
            if matches!(scope, Scope::PerUser { .. }) {
                for granted in ["blog", "crm"] {
                    vault
                        .grant_add(&owner, &info.id, granted)
                        .await
                        .expect("grant");
                }
            }
        }
    }
    let principals = [
        p("system_admin:root"),
        p("app_admin:crm:adm"),
        p("app_user:crm:u1"),
        p("viewer:vera"),
        p("runtime:crm:u1"),
        p("runtime:crm:*"),
    ];
    let contexts = [
        ctx("blog", "u1"),
        ctx("crm", "bob"),
        ctx("blog", "bob"),
        ctx("", ""),
    ];
    let mut checked = 0;
    for actor in &principals {
        for context in &contexts {
            for kind in [
                ScopeKind::SystemWide,
                ScopeKind::PerAppShared,
                ScopeKind::PerUser,
                ScopeKind::PerAppPerUser,
            ] {
                let before = rows(&vault).await.len();
                let err = vault
                    .resolve(actor, &CredentialRef::explicit("main", kind, None), context)
                    .await
                    .expect_err("a context that is not the principal's own");
                assert_eq!(
                    err.kind(),
                    ErrorKind::PermissionDenied,
                    "{actor} in {context:?}, {kind}: {err}"
                );
                assert!(!err.to_string().contains(CANARY));
                let after = rows(&vault).await;
                assert_eq!(after.len(), before + 1, "{actor} {context:?} {kind}");
                let row = &after[before].event;
                assert_eq!(row.outcome, Outcome::Denied);
                assert_eq!(row.actor, actor.to_string());
                assert_eq!(
                    row.details.get("context_app").map(String::as_str),
                    Some(context.app.as_str())
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 4 * 4);
    // And no row of the whole run released a secret.
    assert!(rows(&vault)
        .await
        .iter()
        .all(|r| r.event.action != strongroom::Action::Resolve
            || r.event.outcome != Outcome::Success));
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

fn llm_slot() -> CredentialSlot {
    CredentialSlot::new("brain_credential", "LLM provider credential")
        .handler_types(["api_key"])
        .providers(["openai"])
        .scopes_preferred([ScopeKind::PerUser])
        .inject("api_key", "{block}.config.api_key")
}

const APP: &str = "
agents:
  - id: assistant
    brain:
      provider: openai
      credential: openai_main
";

#[tokio::test]
async fn a_deployment_never_uses_another_apps_grant() {
    let vault = Vault::in_memory().await.expect("vault");
    alice_granted_to_blog(&vault).await;
    let slots = Slots::new().declare("brain", llm_slot());
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    for (app, allowed) in [("crm", false), ("blog", true)] {
        let manifest = compile(app, &config, &slots, &vault.catalog()).expect("compiles");
        let deployment = Deployment::new(&vault, manifest).await.expect("deploy");
        let session = deployment.start_session("alice").await;
        let slot = deployment
            .resolve_slot("alice", "agents[assistant].brain", "brain_credential")
            .await;
        if allowed {
            let session = session.expect("blog's session");
            assert_eq!(session.injected_count(), 1);
            assert_eq!(
                slot.expect("blog's slot")["api_key"].expose_secret(),
                CANARY
            );
        } else {
            let err = session.expect_err("crm holds no grant");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
            assert!(err.to_string().contains("agents[assistant].brain"), "{err}");
            let err = slot.expect_err("crm holds no grant");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        }
    }
    // Every injection row names the app that used the credential, and only blog's succeed.
    for row in rows(&vault).await {
        if row.event.action == strongroom::Action::Inject && row.event.outcome == Outcome::Success {
            assert_eq!(row.event.actor, "runtime:blog:alice");
            assert_eq!(
                row.event.details.get("app").map(String::as_str),
                Some("blog")
            );
        }
    }
}

/// Scopes whose ids the vault must refuse, each built directly (skipping the checked
/// constructors), with why.
fn poisoned_scopes() -> Vec<(Scope, &'static str)> {
    vec![
        (
            Scope::PerAppShared {
                app: "crm/evil".into(),
            },
            "/",
        ),
        (
            Scope::PerAppPerUser {
                app: "x/y".into(),
                user: "u1".into(),
            },
            "/",
        ),
        (
            Scope::PerUser {
                user: "u1:x".into(),
            },
            ":",
        ),
        (Scope::PerUser { user: "*".into() }, "*"),
        (
            Scope::PerAppShared {
                app: "crm\u{1b}[31m".into(),
            },
            "control",
        ),
        (Scope::PerAgent { agent: "".into() }, "empty"),
    ]
}

/// On one store: a refused create with a poisoned scope writes no unreadable row, stores
/// nothing, and leaves the chain verifiable and every list working.
async fn poisoned_scopes_are_refused(vault: &Vault) {
    let viewer = p("viewer:vera");
    let admin = p("system_admin:root");
    for (scope, why) in poisoned_scopes() {
        // Someone who may not create at all: denied, audited without the scope.
        let before = rows(vault).await.len();
        let err = vault
            .create(
                &viewer,
                NewCredential::new("k", scope.clone(), "openai", "", fields(CANARY)),
            )
            .await
            .expect_err("a viewer never creates");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{why}: {err}");
        let after = rows(vault).await;
        assert_eq!(after.len(), before + 1, "{why}: the denial is audited");
        assert_eq!(after[before].event.outcome, Outcome::Denied);
        assert_eq!(after[before].event.target.scope, None, "{why}");

        // Someone the policy would let through: refused as bad input, nothing written.
        let creator = match &scope {
            Scope::PerAppPerUser { user, .. } => p(&format!("app_user:crm:{user}")),
            _ => admin.clone(),
        };
        let before = rows(vault).await.len();
        let result = vault
            .create(
                &creator,
                NewCredential::new("k", scope.clone(), "openai", "", fields(CANARY)),
            )
            .await;
        let err = result.expect_err("refused");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidInput | ErrorKind::PermissionDenied
            ),
            "{why}: {err}"
        );
        let after = rows(vault).await;
        for row in &after[before..] {
            assert_eq!(
                row.event.target.scope, None,
                "{why}: no poisoned scope in a row"
            );
        }
    }
    // Nothing was stored; listing works for everyone; the chain reads back and verifies.
    for actor in [&admin, &viewer, &p("app_user:crm:u1")] {
        let listed = vault
            .list(actor, &CredentialFilter::default())
            .await
            .unwrap_or_else(|e| panic!("{actor} lists: {e}"));
        assert!(listed.is_empty(), "{actor}: {listed:?}");
    }
    let report = vault.verify_audit(&admin).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn a_poisoned_scope_is_refused_on_the_memory_store() {
    let vault = vault_on(Arc::new(MemoryStore::new())).await;
    poisoned_scopes_are_refused(&vault).await;
}

#[tokio::test]
async fn a_poisoned_scope_is_refused_on_the_sqlite_store_and_the_file_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let vault = vault_on(Arc::new(SqliteStore::open(&path).expect("open"))).await;
    poisoned_scopes_are_refused(&vault).await;
    let count = rows(&vault).await.len();
    drop(vault);
    // Another handle on the file decodes every row and verifies the chain.
    let store = SqliteStore::open(&path).expect("reopen");
    let report = strongroom::audit::verify_chain(&store)
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        store.audit_range(1, usize::MAX).await.expect("rows").len(),
        count
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_poisoned_scope_is_refused_on_the_postgres_store() {
    let url = std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let schema = format!("t_{}", hex::encode(bytes));
    let store = strongroom::PostgresStore::connect_with(
        &url,
        strongroom::PostgresOptions::default().schema(&schema),
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL at {url} must be running for this test: {e}"));
    let vault = vault_on(Arc::new(store)).await;
    poisoned_scopes_are_refused(&vault).await;
    drop(vault);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

#[test]
fn deserialising_a_scope_checks_its_ids() {
    for bad in [
        r#"{"kind":"per_app_shared","app":"crm/evil"}"#,
        r#"{"kind":"per_app_per_user","app":"a/b","user":"u"}"#,
        r#"{"kind":"per_user","user":""}"#,
        r#"{"kind":"per_agent","agent":"a\u0007"}"#,
    ] {
        let err = serde_json::from_str::<Scope>(bad).expect_err(bad);
        assert!(err.to_string().contains("must"), "{bad}: {err}");
    }
    let ok: Scope =
        serde_json::from_str(r#"{"kind":"per_app_per_user","app":"crm","user":"bob@example.com"}"#)
            .expect("valid");
    assert_eq!(
        ok,
        Scope::per_app_per_user("crm", "bob@example.com").expect("s")
    );
    assert!(serde_json::from_str::<CredentialId>(r#""a/b""#).is_err());
}

#[tokio::test]
async fn principals_and_ids_that_print_ambiguously_are_refused() {
    // `*` is the deploy's user; `:` separates a printed principal's parts.
    assert!(Scope::per_user("*").is_err());
    assert!(Scope::per_app_shared("a:b").is_err());
    assert!(Principal::parse("app_user:crm:*").is_err());
    assert!(
        Principal::parse("runtime:crm:*").is_ok(),
        "the deploy principal"
    );
    let vault = Vault::in_memory().await.expect("vault");
    let owner = p("app_user:crm:u1");
    let info = user_credential(&vault, &owner, "k").await;
    let before = rows(&vault).await.len();
    // `app_user:crm:x:y` would print like the app_user `y` of app `crm:x`.
    let ambiguous = Principal::AppUser {
        id: "x:y".into(),
        app: "crm".into(),
    };
    let err = vault.get(&ambiguous, &info.id).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = vault
        .resolve(
            &Principal::AppRuntime {
                app: "crm".into(),
                user: "u1:z".into(),
            },
            &CredentialRef::compact("k"),
            &ctx("crm", "u1:z"),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = vault
        .list(&ambiguous, &CredentialFilter::default())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = vault
        .grant_add(&owner, &info.id, "blog:x")
        .await
        .expect_err("an app id with `:`");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(rows(&vault).await.len(), before, "nothing was written");
}

#[tokio::test]
async fn permission_is_decided_before_input_is_inspected() {
    let vault = Vault::in_memory().await.expect("vault");
    let viewer = p("viewer:vera");
    for (name, provider, fields) in [
        ("", "openai", fields(CANARY)),
        ("ok", "no such provider", fields(CANARY)),
        ("ok", "openai", BTreeMap::new()),
    ] {
        let before = rows(&vault).await.len();
        let err = vault
            .create(
                &viewer,
                NewCredential::new(name, Scope::SystemWide, provider, "", fields),
            )
            .await
            .expect_err("a viewer never creates");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        let after = rows(&vault).await;
        assert_eq!(after.len(), before + 1, "the refusal is audited");
        assert_eq!(after[before].event.outcome, Outcome::Denied);
    }
    // A grant for a bad app id on someone else's credential: denied first.
    let owner = p("app_user:crm:u1");
    let info = user_credential(&vault, &owner, "k").await;
    let err = vault
        .grant_add(&p("app_user:crm:u2"), &info.id, "bad/app")
        .await
        .expect_err("not the owner");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "u2 may not see it, so it does not exist for u2: {err}"
    );
    let last = rows(&vault).await.pop().expect("row");
    assert_eq!(
        last.event.outcome,
        Outcome::Denied,
        "and the refusal is audited"
    );
}

#[tokio::test]
async fn an_admins_disable_stays_until_an_admin_lifts_it() {
    let vault = Vault::in_memory().await.expect("vault");
    let admin = p("system_admin:root");
    let owner = p("app_user:crm:u1");
    let runtime = p("runtime:crm:u1");
    let info = user_credential(&vault, &owner, "k").await;
    vault
        .grant_add(&owner, &info.id, "crm")
        .await
        .expect("grant");
    let resolve = || async {
        vault
            .resolve(
                &runtime,
                &CredentialRef::compact("k"),
                &ResolveContext::of(&runtime).expect("ctx"),
            )
            .await
    };
    resolve().await.expect("usable");
    let disabled = vault
        .set_state(&admin, &info.id, 1, LifecycleState::Invalid, "leaked")
        .await
        .expect("admin disables");
    assert_eq!(
        disabled.metadata.get("disabled_by").map(String::as_str),
        Some("system_admin:root")
    );
    assert_eq!(
        resolve().await.expect_err("disabled").kind(),
        ErrorKind::Unusable
    );

    // The owner rewriting the same fields does not undo it.
    let updated = vault
        .update(
            &owner,
            &info.id,
            disabled.version,
            CredentialUpdate {
                fields: Some(fields(CANARY)),
                metadata: Some(BTreeMap::from([("label".into(), "mine".into())])),
                ..Default::default()
            },
        )
        .await
        .expect("the owner may still replace the fields");
    assert_eq!(updated.state, LifecycleState::Invalid);
    assert!(
        updated.metadata.contains_key("disabled_by"),
        "kept through a metadata rewrite"
    );
    assert_eq!(
        resolve().await.expect_err("still disabled").kind(),
        ErrorKind::Unusable
    );
    // Nor can the owner lift it, or forge or clear the marker.
    let err = vault
        .set_state(
            &owner,
            &info.id,
            updated.version,
            LifecycleState::Filled,
            "mine",
        )
        .await
        .expect_err("only an admin lifts it");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let last = rows(&vault).await.pop().expect("row");
    assert_eq!(last.event.outcome, Outcome::Denied);
    let err = vault
        .update(
            &owner,
            &info.id,
            updated.version,
            CredentialUpdate {
                metadata: Some(BTreeMap::from([("disabled_by".into(), "".into())])),
                ..Default::default()
            },
        )
        .await
        .expect_err("the marker is the vault's");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // The admin lifts it: back to filled, usable again.
    let lifted = vault
        .set_state(
            &admin,
            &info.id,
            updated.version,
            LifecycleState::Filled,
            "rotated",
        )
        .await
        .expect("admin lifts");
    assert_eq!(lifted.state, LifecycleState::Filled);
    assert!(!lifted.metadata.contains_key("disabled_by"));
    resolve().await.expect("usable again");

    // The owner's own `invalid` is the owner's to undo (by new fields), as before.
    let own = vault
        .set_state(
            &owner,
            &info.id,
            lifted.version,
            LifecycleState::Invalid,
            "mine",
        )
        .await
        .expect("owner disables");
    assert!(!own.metadata.contains_key("disabled_by"));
    let back = vault
        .update(
            &owner,
            &info.id,
            own.version,
            CredentialUpdate {
                fields: Some(fields(CANARY)),
                ..Default::default()
            },
        )
        .await
        .expect("new fields");
    assert_eq!(back.state, LifecycleState::Filled);
}

#[tokio::test]
async fn a_second_soft_revoke_keeps_the_first_revoker() {
    let vault = Vault::in_memory().await.expect("vault");
    let admin = p("system_admin:root");
    let owner = p("app_user:crm:u1");
    let info = user_credential(&vault, &owner, "k").await;
    vault
        .grant_add(&owner, &info.id, "crm")
        .await
        .expect("grant");
    vault
        .grant_revoke(&owner, &info.id, "crm", false)
        .await
        .expect("first revoke");
    let first = vault.grants(&owner, &info.id).await.expect("grants")[0].clone();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    vault
        .grant_revoke(&admin, &info.id, "crm", false)
        .await
        .expect("second revoke");
    let second = vault.grants(&owner, &info.id).await.expect("grants")[0].clone();
    assert_eq!(second.revoked_by.as_deref(), Some("app_user:crm:u1"));
    assert_eq!(second.revoked_at, first.revoked_at);
    let last = rows(&vault).await.pop().expect("row");
    assert_eq!(last.event.action, strongroom::Action::GrantRevoke);
    assert_eq!(last.event.actor, "system_admin:root");
    assert_eq!(
        last.event
            .details
            .get("already_revoked_by")
            .map(String::as_str),
        Some("app_user:crm:u1")
    );
}

/// True when `e` is the fault store's injected failure (the error says what failed).
fn is_injected(e: &Error) -> bool {
    e.kind() == ErrorKind::Store && e.to_string().contains(INJECTED)
}

#[tokio::test]
async fn no_secret_or_success_is_returned_when_its_audit_row_did_not_commit() {
    let faults = FaultStore::new(Arc::new(MemoryStore::new()));
    let vault = vault_on(faults.clone()).await;
    let admin = p("system_admin:root");
    let owner = p("app_user:crm:alice");
    let info = user_credential(&vault, &owner, "openai_main").await;
    vault
        .grant_add(&owner, &info.id, "crm")
        .await
        .expect("grant");
    let slots = Slots::new().declare("brain", llm_slot());
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let manifest = compile("crm", &config, &slots, &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, manifest).await.expect("deploy");
    let runtime = p("runtime:crm:alice");
    let reference = CredentialRef::compact("openai_main");
    let session_ctx = ResolveContext::of(&runtime).expect("ctx");
    // Everything works while commits do.
    vault.reveal(&owner, &info.id).await.expect("reveal");
    vault
        .resolve(&runtime, &reference, &session_ctx)
        .await
        .expect("resolve");
    deployment.start_session("alice").await.expect("session");

    faults.fail_commits(true);
    let count = rows(&vault).await.len();
    let check = |what: &str, e: Error| {
        assert!(is_injected(&e), "{what}: {e}");
        assert!(!e.to_string().contains(CANARY), "{what}: {e}");
    };
    check(
        "reveal",
        vault.reveal(&owner, &info.id).await.expect_err("reveal"),
    );
    check(
        "resolve",
        vault
            .resolve(&runtime, &reference, &session_ctx)
            .await
            .expect_err("resolve"),
    );
    check(
        "session start",
        deployment
            .start_session("alice")
            .await
            .expect_err("session"),
    );
    check(
        "resolve_slot",
        deployment
            .resolve_slot("alice", "agents[assistant].brain", "brain_credential")
            .await
            .expect_err("slot"),
    );
    // Denials: the refusal is reported as the store failure, not as a plain denial that
    // no row records.
    check(
        "denied reveal",
        vault.reveal(&admin, &info.id).await.expect_err("denied"),
    );
    check(
        "mismatched context",
        vault
            .resolve(&runtime, &reference, &ctx("blog", "alice"))
            .await
            .expect_err("denied"),
    );
    check(
        "set_state",
        vault
            .set_state(&admin, &info.id, 1, LifecycleState::Invalid, "x")
            .await
            .expect_err("set_state"),
    );
    assert_eq!(rows(&vault).await.len(), count, "nothing was written");
    assert_eq!(faults.injected(), 7, "one injected failure per attempt");

    // Commits failing one in three: every secret handed back has its success row.
    faults.fail_commits(false);
    faults.fail_every(3);
    let before = rows(&vault).await.len();
    let mut released = 0;
    for _ in 0..60 {
        match vault.resolve(&runtime, &reference, &session_ctx).await {
            Ok(r) => {
                assert_eq!(r.fields["api_key"].expose_secret(), CANARY);
                released += 1;
            }
            Err(e) => check("resolve under faults", e),
        }
    }
    let resolve_rows = rows(&vault).await[before..]
        .iter()
        .filter(|r| {
            r.event.action == strongroom::Action::Resolve && r.event.outcome == Outcome::Success
        })
        .count();
    assert_eq!(
        released, resolve_rows,
        "one durable row per secret released"
    );
    assert!(released > 0 && released < 60);
    faults.fail_every(0);
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

/// One of the calls that name a credential by id.
async fn probe(
    vault: &Vault,
    actor: &Principal,
    what: &str,
    id: &CredentialId,
) -> Result<(), Error> {
    match what {
        "show" => vault.get(actor, id).await.map(drop),
        "grants" => vault.grants(actor, id).await.map(drop),
        "grant-add" => vault.grant_add(actor, id, "crm").await.map(drop),
        _ => vault.reveal(actor, id).await.map(drop),
    }
}

#[tokio::test]
async fn a_forbidden_id_and_a_missing_id_get_the_same_answer() {
    let vault = Vault::in_memory().await.expect("vault");
    let owner = p("app_user:crm:u1");
    let info = user_credential(&vault, &owner, "secret_name_7f3").await;
    let missing = CredentialId::generate();
    let other = p("app_user:crm:u2");
    let admin_of_other_app = p("app_admin:blog:adm");
    for actor in [&other, &admin_of_other_app] {
        for what in ["show", "grants", "grant-add", "reveal"] {
            let before = rows(&vault).await.len();
            let forbidden = probe(&vault, actor, what, &info.id)
                .await
                .expect_err("forbidden");
            let after = rows(&vault).await;
            assert_eq!(
                after.len(),
                before + 1,
                "{actor} {what}: the denial is audited"
            );
            let row = &after[before].event;
            assert_eq!(row.outcome, Outcome::Denied);
            assert_eq!(
                row.target.credential_id.as_ref(),
                Some(&info.id),
                "full target"
            );
            assert_eq!(row.target.scope, Some(Scope::per_user("u1").expect("s")));
            let absent = probe(&vault, actor, what, &missing)
                .await
                .expect_err("missing");
            assert_eq!(
                forbidden.kind(),
                ErrorKind::NotFound,
                "{actor} {what}: {forbidden}"
            );
            assert_eq!(
                forbidden.to_string().replace(info.id.as_str(), "ID"),
                absent.to_string().replace(missing.as_str(), "ID"),
                "{actor} {what}: the same answer"
            );
            assert!(!forbidden.to_string().contains("secret_name_7f3"));
            assert!(!forbidden.to_string().contains("u1"));
        }
    }
    // Someone who may see it exists (a viewer) is told why they may not read it.
    let err = vault
        .reveal(&p("viewer:vera"), &info.id)
        .await
        .expect_err("viewer");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

async fn agent_credential(
    vault: &Vault,
    agent: &str,
    name: &str,
    accessible: bool,
) -> CredentialId {
    let mut new = NewCredential::new(
        name,
        Scope::per_agent(agent).expect("scope"),
        "openai",
        "",
        fields(&format!("{CANARY}-{agent}-{name}")),
    );
    new.agent_accessible = accessible;
    vault
        .create(&p("system_admin:root"), new)
        .await
        .expect("create")
        .id
}

#[tokio::test]
async fn an_agent_reads_only_its_own_agent_accessible_secrets() {
    let vault = Vault::in_memory().await.expect("vault");
    agent_credential(&vault, "a1", "llm", true).await;
    let hidden = agent_credential(&vault, "a1", "github:token", false).await;
    agent_credential(&vault, "a2", "only_a2", true).await;
    let a1 = p("agent:a1");

    let got = vault
        .agent_secret(&a1, "llm")
        .await
        .expect("its own, accessible");
    assert_eq!(
        got.fields["api_key"].expose_secret(),
        format!("{CANARY}-a1-llm")
    );
    let last = rows(&vault).await.pop().expect("row");
    assert_eq!(last.event.actor, "agent:a1");
    assert_eq!(last.event.outcome, Outcome::Success);

    // Its own, but not agent-accessible: refused and audited, whatever the scope says.
    let before = rows(&vault).await.len();
    let err = vault
        .agent_secret(&a1, "github:token")
        .await
        .expect_err("not agent-accessible");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("agent-accessible"), "{err}");
    assert!(!err.to_string().contains(CANARY));
    let after = rows(&vault).await;
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].event.outcome, Outcome::Denied);
    assert_eq!(
        after[before].event.target.credential_id.as_ref(),
        Some(&hidden)
    );
    // Nor by any other door: reveal is not an agent's action.
    let err = vault.reveal(&a1, &hidden).await.expect_err("no reveal");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);

    // Another agent's secret is not in a1's scope at all.
    let err = vault.agent_secret(&a1, "only_a2").await.expect_err("a2's");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // An agent lists its own credentials only.
    let listed = vault
        .list(&a1, &CredentialFilter::default())
        .await
        .expect("list");
    let mut names: Vec<_> = listed.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["github:token", "llm"]);
    // An agent has no app or user: app references are not its door.
    let err = vault
        .resolve(&a1, &CredentialRef::compact("llm"), &ctx("crm", "a1"))
        .await
        .expect_err("no app context");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    // And the agent door is for agents only.
    let err = vault
        .agent_secret(&p("runtime:crm:u1"), "llm")
        .await
        .expect_err("not an agent");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        rows(&vault).await.pop().expect("row").event.outcome,
        Outcome::Denied
    );
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn the_service_principal_keeps_credentials_current_without_reading_them() {
    let vault = Vault::in_memory().await.expect("vault");
    let owner = p("app_user:crm:u1");
    let service = p("service:oauth-refresher");
    let info = user_credential(&vault, &owner, "k").await;
    let updated = vault
        .update(
            &service,
            &info.id,
            1,
            CredentialUpdate {
                fields: Some(fields("sk-refreshed")),
                ..Default::default()
            },
        )
        .await
        .expect("the service writes new fields");
    let valid = vault
        .set_state(
            &service,
            &info.id,
            updated.version,
            LifecycleState::Valid,
            "refreshed",
        )
        .await
        .expect("and moves the state");
    assert_eq!(valid.state, LifecycleState::Valid);
    let err = vault
        .reveal(&service, &info.id)
        .await
        .expect_err("no reveal");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = vault
        .delete(&service, &info.id, None)
        .await
        .expect_err("no delete");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let revealed = vault.reveal(&owner, &info.id).await.expect("owner");
    assert_eq!(revealed.fields["api_key"].expose_secret(), "sk-refreshed");
    let actors: Vec<String> = rows(&vault)
        .await
        .into_iter()
        .map(|r| r.event.actor)
        .collect();
    assert!(actors.contains(&"service:oauth-refresher".to_string()));
}

#[tokio::test]
async fn list_asks_the_store_only_for_the_scopes_the_principal_may_see() {
    use strongroom::store::{OwnerMatch, ScopeMatch};
    let faults = FaultStore::new(Arc::new(MemoryStore::new()));
    let vault = vault_on(faults.clone()).await;
    let u1 = p("app_user:crm:u1");
    let u2 = p("app_user:crm:u2");
    user_credential(&vault, &u1, "mine").await;
    user_credential(&vault, &u2, "theirs").await;
    vault
        .create(
            &u1,
            NewCredential::new(
                "mine_in_blog",
                Scope::per_app_per_user("blog", "u1").expect("s"),
                "openai",
                "",
                fields(CANARY),
            ),
        )
        .await
        .expect("create");
    let listed = vault
        .list(&u1, &CredentialFilter::default())
        .await
        .expect("list");
    let mut names: Vec<_> = listed.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["mine", "mine_in_blog"]);
    let asked = faults
        .last_list
        .lock()
        .expect("lock")
        .clone()
        .expect("a list");
    let scopes = asked.scopes.expect("the vault names the scopes");
    let exactly = |kind: ScopeKind, owner: &str| ScopeMatch {
        kind,
        owner: OwnerMatch::Exactly(owner.into()),
    };
    for want in [
        exactly(ScopeKind::PerUser, "u1"),
        exactly(ScopeKind::PerAppShared, "crm"),
        exactly(ScopeKind::PerAppPerUser, "crm/u1"),
        ScopeMatch::user_in_any_app("u1"),
    ] {
        assert!(scopes.contains(&want), "{want:?} in {scopes:?}");
    }
    assert!(
        scopes.iter().all(|m| m.owner != OwnerMatch::Any),
        "a user never asks for a whole kind: {scopes:?}"
    );
    // A viewer sees every kind; an agent only its own scope.
    vault
        .list(&p("viewer:vera"), &CredentialFilter::default())
        .await
        .expect("list");
    let asked = faults
        .last_list
        .lock()
        .expect("lock")
        .clone()
        .expect("a list");
    assert!(asked
        .scopes
        .expect("scopes")
        .contains(&ScopeMatch::kind(ScopeKind::PerUser)));
    vault
        .list(&p("agent:a1"), &CredentialFilter::default())
        .await
        .expect("list");
    let asked = faults
        .last_list
        .lock()
        .expect("lock")
        .clone()
        .expect("a list");
    assert_eq!(
        asked.scopes.expect("scopes"),
        vec![exactly(ScopeKind::PerAgent, "a1")]
    );
}

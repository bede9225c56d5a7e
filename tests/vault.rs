//! The Vault façade: scope strictness, grants, the whole RBAC table (as data and through the
//! vault), stale-version conflicts, lifecycle, and canaries. Concurrent updaters are in
//! tests/concurrency.rs.

use std::collections::BTreeMap;

use strongroom::audit::Outcome;
use strongroom::model::LifecycleState;
use strongroom::vault::policy::{allows, Action, Relation, Role};
use strongroom::vault::transition_allowed;
use strongroom::{
    CredentialFilter, CredentialId, CredentialRef, CredentialUpdate, Error, ErrorKind,
    ExposeSecret, NewCredential, Principal, ResolveContext, Scope, ScopeKind, SecretString,
    Timestamp, Vault,
};

const CANARY: &str = "sk-CANARY-vault-5c2e9b1d";

fn fields(value: &str) -> BTreeMap<String, SecretString> {
    // OpenAI keys start with `sk-` (the provider's prefix check).
    let value = if value.starts_with("sk-") {
        value.to_string()
    } else {
        format!("sk-{value}")
    };
    BTreeMap::from([("api_key".to_string(), SecretString::from(value))])
}

fn sysadmin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}
fn app_admin(app: &str) -> Principal {
    Principal::parse(&format!("app_admin:{app}:adm")).expect("principal")
}
fn user(app: &str, id: &str) -> Principal {
    Principal::parse(&format!("app_user:{app}:{id}")).expect("principal")
}
fn viewer() -> Principal {
    Principal::parse("viewer:v").expect("principal")
}
fn runtime(app: &str, u: &str) -> Principal {
    Principal::parse(&format!("runtime:{app}:{u}")).expect("principal")
}

/// A principal allowed to create in `scope`.
fn owner_of(scope: &Scope) -> Principal {
    match scope {
        Scope::SystemWide | Scope::PerAgent { .. } => sysadmin(),
        Scope::PerAppShared { app } => app_admin(app),
        Scope::PerUser { user: u } => user("crm", u),
        Scope::PerAppPerUser { app, user: u } => user(app, u),
        _ => sysadmin(),
    }
}

async fn seed(vault: &Vault, name: &str, scope: &Scope, provider: &str) -> CredentialId {
    let info = vault
        .create(
            &owner_of(scope),
            NewCredential::new(name, scope.clone(), provider, "api_key", fields(CANARY)),
        )
        .await
        .unwrap_or_else(|e| panic!("seed {name} in {scope}: {e}"));
    info.id
}

fn ctx(app: &str, u: &str) -> ResolveContext {
    ResolveContext {
        app: app.into(),
        user: u.into(),
    }
}

fn scopes() -> Vec<Scope> {
    vec![
        Scope::SystemWide,
        Scope::per_app_shared("crm").expect("s"),
        Scope::per_user("u1").expect("s"),
        Scope::per_app_per_user("crm", "u1").expect("s"),
    ]
}

#[tokio::test]
async fn references_resolve_in_their_own_scope_only() {
    let vault = Vault::in_memory().await.expect("vault");
    let rt = runtime("crm", "u1");
    // One credential named `main` in each scope; each may only be found by a ref of its own
    // scope kind.
    for stored in scopes() {
        let vault = Vault::in_memory().await.expect("vault");
        let id = seed(&vault, "main", &stored, "openai").await;
        if matches!(stored, Scope::PerUser { .. }) {
            vault
                .grant_add(&user("crm", "u1"), &id, "crm")
                .await
                .expect("grant");
        }
        for kind in [
            ScopeKind::SystemWide,
            ScopeKind::PerAppShared,
            ScopeKind::PerUser,
            ScopeKind::PerAppPerUser,
        ] {
            let result = vault
                .resolve(
                    &rt,
                    &CredentialRef::explicit("main", kind, None),
                    &ctx("crm", "u1"),
                )
                .await;
            if kind == stored.kind() {
                let got = result
                    .unwrap_or_else(|e| panic!("{kind} ref finds the {stored} credential: {e}"));
                assert_eq!(got.fields["api_key"].expose_secret(), CANARY);
            } else {
                let err = result.expect_err("no fallback across scopes");
                assert_eq!(
                    err.kind(),
                    ErrorKind::NotFound,
                    "{kind} ref vs {stored}: {err}"
                );
                let msg = err.to_string();
                assert!(
                    msg.contains("scopes are strict") && msg.contains(kind.as_str()),
                    "{msg}"
                );
            }
        }
    }
    // The compact form means per_user.
    let id = seed(
        &vault,
        "openai_main",
        &Scope::per_user("u1").expect("s"),
        "openai",
    )
    .await;
    seed(&vault, "openai_main", &Scope::SystemWide, "openai").await;
    vault
        .grant_add(&user("crm", "u1"), &id, "crm")
        .await
        .expect("grant");
    let got = vault
        .resolve(
            &rt,
            &CredentialRef::compact("openai_main"),
            &ctx("crm", "u1"),
        )
        .await
        .expect("compact ref");
    assert_eq!(got.info.id, id, "the per_user one, not the system_wide one");
    // Another user's per_user credential of the same name is not visible to u2's session.
    let err = vault
        .resolve(
            &runtime("crm", "u2"),
            &CredentialRef::compact("openai_main"),
            &ctx("crm", "u2"),
        )
        .await
        .expect_err("u2 has none");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // The provider in a ref is checked.
    let err = vault
        .resolve(
            &rt,
            &CredentialRef::explicit("openai_main", ScopeKind::PerUser, Some("anthropic".into())),
            &ctx("crm", "u1"),
        )
        .await
        .expect_err("provider mismatch");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("anthropic"), "{err}");
}

#[tokio::test]
async fn grants_gate_per_user_credentials() {
    let vault = Vault::in_memory().await.expect("vault");
    let owner = user("crm", "u1");
    let id = seed(&vault, "gh", &Scope::per_user("u1").expect("s"), "deepseek").await;
    let r = CredentialRef::compact("gh");
    let denied = |e: Error| assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    denied(
        vault
            .resolve(&runtime("crm", "u1"), &r, &ctx("crm", "u1"))
            .await
            .expect_err("no grant yet"),
    );
    vault
        .grant_add(&owner, &id, "crm")
        .await
        .expect("grant crm");
    vault
        .resolve(&runtime("crm", "u1"), &r, &ctx("crm", "u1"))
        .await
        .expect("granted");
    denied(
        vault
            .resolve(&runtime("blog", "u1"), &r, &ctx("blog", "u1"))
            .await
            .expect_err("blog not granted"),
    );
    vault
        .grant_add(&owner, &id, "blog")
        .await
        .expect("grant blog");
    vault
        .grant_revoke(&owner, &id, "crm", false)
        .await
        .expect("revoke");
    denied(
        vault
            .resolve(&runtime("crm", "u1"), &r, &ctx("crm", "u1"))
            .await
            .expect_err("revoked"),
    );
    let grants = vault.grants(&owner, &id).await.expect("grants");
    assert_eq!(grants.len(), 2, "a revoked grant is kept as history");
    assert!(grants.iter().any(|g| g.app == "crm" && !g.is_active()));
    vault
        .grant_revoke(&owner, &id, "crm", true)
        .await
        .expect("hard revoke");
    let grants = vault.grants(&owner, &id).await.expect("grants");
    assert_eq!(
        grants.iter().map(|g| g.app.as_str()).collect::<Vec<_>>(),
        vec!["blog"]
    );
    // Grants only apply to per_user credentials (the policy already refuses the rest).
    let shared = seed(
        &vault,
        "shared",
        &Scope::per_app_per_user("crm", "u1").expect("s"),
        "openai",
    )
    .await;
    let err = vault
        .grant_add(&owner, &shared, "blog")
        .await
        .expect_err("not per_user");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = vault
        .grant_revoke(&sysadmin(), &shared, "blog", false)
        .await
        .expect_err("not per_user");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // Every resolve and denial is in the audit chain.
    let rows = vault.store().audit_range(1, 1000).await.expect("audit");
    assert!(
        rows.iter()
            .filter(|r| r.event.action == strongroom::Action::Resolve
                && r.event.outcome == Outcome::Denied)
            .count()
            >= 3
    );
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

/// The expected policy, written out independently of the implementation: for each role,
/// relation → the actions allowed, as letters (the table of docs/ACCESS.md).
/// C create, U update, D delete, M read metadata, R reveal, X resolve, S set state,
/// T test live (verify), L grant list, G grant add, V grant revoke, A audit verify,
/// I inject, K re-wrap keys, E re-seal every credential, O start an OAuth flow, Q complete
/// it, F refresh an OAuth token, Y revoke it at the provider, N link an agent's integration,
/// W unlink it, J list an agent's integrations, P its credentials through the credentials
/// path, B register a credential provider, H remove one, Z list them.
fn expected(role: Role, relation: Relation) -> &'static str {
    use Relation::*;
    match (role, relation) {
        (Role::SystemAdmin, SystemWide | OtherAppShared) => "CUDMRST",
        (Role::SystemAdmin, Agent) => "CUDMRSTNWJP",
        (Role::SystemAdmin, OtherUser) => "MDSTLVFY",
        (Role::SystemAdmin, OtherUserOtherApp) => "MDSTLV",
        (Role::SystemAdmin, NoScope) => "AKEBHZ",
        (Role::AppAdmin, OwnAppShared) => "CUDMRST",
        (Role::AppAdmin, SystemWide | OtherUserOwnApp) => "M",
        (Role::AppUser, OwnUser) => "CUDMRSTLGVOQFY",
        (Role::AppUser, OwnUserOwnApp | OwnUserOtherApp) => "CUDMRST",
        (Role::AppUser, OwnAppShared) => "M",
        (Role::Viewer, NoScope) => "A",
        (Role::Viewer, _) => "M",
        (Role::AppRuntime, OwnUser) => "XIOQ",
        (Role::AppRuntime, SystemWide | OwnAppShared | OwnUserOwnApp) => "XI",
        (Role::Agent, OwnAgent) => "MXP",
        (Role::Service, NoScope) => "",
        (Role::Service, _) => "UMSTF",
        _ => "",
    }
}

fn letter(action: Action) -> char {
    match action {
        Action::Create => 'C',
        Action::Update => 'U',
        Action::Delete => 'D',
        Action::ReadMetadata => 'M',
        Action::Reveal => 'R',
        Action::Resolve => 'X',
        Action::SetState => 'S',
        Action::GrantList => 'L',
        Action::GrantAdd => 'G',
        Action::GrantRevoke => 'V',
        Action::AuditVerify => 'A',
        Action::Inject => 'I',
        Action::Verify => 'T',
        Action::Rewrap => 'K',
        Action::Reseal => 'E',
        Action::OAuthStart => 'O',
        Action::OAuthComplete => 'Q',
        Action::Refresh => 'F',
        Action::Revoke => 'Y',
        Action::IntegrationLink => 'N',
        Action::IntegrationUnlink => 'W',
        Action::IntegrationList => 'J',
        Action::IntegrationCredentials => 'P',
        Action::ProviderAdd => 'B',
        Action::ProviderRemove => 'H',
        Action::ProviderList => 'Z',
        _ => '?',
    }
}

#[test]
fn the_policy_table_matches_the_specification_in_every_cell() {
    let mut cells = 0;
    for role in Role::ALL {
        for relation in Relation::ALL {
            for action in Action::ALL {
                let want = expected(role, relation).contains(letter(action));
                assert_eq!(
                    allows(role, action, relation),
                    want,
                    "{role:?} {action:?} on {relation:?}"
                );
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 7 * 12 * 26);
}

fn all_scopes() -> Vec<Scope> {
    vec![
        Scope::SystemWide,
        Scope::per_app_shared("crm").expect("s"),
        Scope::per_app_shared("blog").expect("s"),
        Scope::per_user("u1").expect("s"),
        Scope::per_user("u2").expect("s"),
        Scope::per_app_per_user("crm", "u1").expect("s"),
        Scope::per_app_per_user("blog", "u1").expect("s"),
        Scope::per_app_per_user("crm", "u2").expect("s"),
        Scope::per_app_per_user("blog", "u2").expect("s"),
        Scope::per_agent("agent7").expect("s"),
        Scope::per_agent("agent8").expect("s"),
    ]
}

/// Runs `action` as `actor` on a fresh credential in `scope`; returns whether the vault
/// denied it.
async fn attempt(
    vault: &Vault,
    actor: &Principal,
    action: Action,
    scope: &Scope,
    n: usize,
) -> bool {
    let name = format!("c{n}");
    let id = seed(vault, &name, scope, "openai").await;
    if let Scope::PerUser { user: u } = scope {
        vault
            .grant_add(&user("crm", u), &id, "crm")
            .await
            .expect("grant");
        vault
            .grant_add(&user("crm", u), &id, "blog")
            .await
            .expect("grant");
    }
    let result: Result<(), Error> = match action {
        Action::Create => vault
            .create(
                actor,
                NewCredential::new(
                    format!("new{n}"),
                    scope.clone(),
                    "openai",
                    "api_key",
                    fields("x"),
                ),
            )
            .await
            .map(drop),
        Action::Update => vault
            .update(
                actor,
                &id,
                1,
                CredentialUpdate {
                    fields: Some(fields("y")),
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        Action::Delete => vault.delete(actor, &id, Some(1)).await,
        Action::ReadMetadata => vault.get(actor, &id).await.map(drop),
        Action::Reveal => vault.reveal(actor, &id).await.map(drop),
        Action::Resolve => {
            let (app, u) = match scope {
                Scope::PerAppShared { app } => (app.clone(), "u1".to_string()),
                Scope::PerUser { user } => ("crm".to_string(), user.clone()),
                Scope::PerAppPerUser { app, user } => (app.clone(), user.clone()),
                _ => ("crm".to_string(), "u1".to_string()),
            };
            if matches!(scope, Scope::PerAgent { .. }) {
                return true; // not addressable by an app reference at all
            }
            vault
                .resolve(
                    actor,
                    &CredentialRef::explicit(name.clone(), scope.kind(), None),
                    &ctx(&app, &u),
                )
                .await
                .map(drop)
        }
        Action::SetState => vault
            .set_state(actor, &id, 1, LifecycleState::Valid, "test")
            .await
            .map(drop),
        Action::GrantList => vault.grants(actor, &id).await.map(drop),
        Action::GrantAdd => vault.grant_add(actor, &id, "crm").await.map(drop),
        Action::GrantRevoke => vault.grant_revoke(actor, &id, "crm", false).await.map(drop),
        // The vault has no HTTP client: an allowed check stops there, before any request.
        Action::Verify => vault.test_live_connection(actor, &id).await.map(drop),
        Action::Inject => inject(vault, actor, &name, scope).await,
        // An allowed refresh or revoke of an `api_key` credential is refused as not OAuth.
        Action::Refresh => vault.oauth_refresh(actor, &id).await.map(drop),
        Action::Revoke => vault.oauth_revoke(actor, &id).await.map(drop),
        _ => unreachable!("not a credential action"),
    };
    match result {
        // A principal who may not even see the credential is told it does not exist.
        Err(Error::NotFound { .. })
            if !allows(
                actor.role(),
                Action::ReadMetadata,
                Relation::of(actor, Some(scope)),
            ) =>
        {
            let rows = vault
                .store()
                .audit_range(1, usize::MAX)
                .await
                .expect("audit");
            let last = rows.last().expect("a row");
            assert_eq!(last.event.outcome, Outcome::Denied, "the denial is audited");
            assert_eq!(last.event.actor, actor.to_string());
            assert_eq!(
                last.event.target.credential_id.as_ref(),
                Some(&id),
                "with the full target"
            );
            true
        }
        Err(Error::PermissionDenied { .. }) => {
            let rows = vault
                .store()
                .audit_range(1, usize::MAX)
                .await
                .expect("audit");
            let last = rows.last().expect("a row");
            assert_eq!(last.event.outcome, Outcome::Denied, "the denial is audited");
            assert_eq!(last.event.actor, actor.to_string());
            true
        }
        Ok(()) => false,
        // Allowed by the policy but refused for another reason (a grant on a credential
        // that is not per_user; a live check without an HTTP client).
        Err(e) => {
            let expected = match action {
                Action::Verify => ErrorKind::Config,
                _ => ErrorKind::InvalidInput,
            };
            assert_eq!(e.kind(), expected, "{actor} {action:?} {scope}: {e}");
            false
        }
    }
}

/// Can `actor` inject credentials in `scope` through the public API at all? Injection runs
/// only through a deployment, as the deployed app's runtime for its own sessions, so a
/// runtime reaches its own app's and its own user's scopes and nothing else, and no other
/// principal reaches any (those cells are checked by the policy table test alone).
fn injectable(actor: &Principal, scope: &Scope) -> bool {
    let Principal::AppRuntime { app, user: u } = actor else {
        return false;
    };
    match scope {
        Scope::SystemWide => true,
        Scope::PerAppShared { app: a } => a == app,
        Scope::PerUser { user: s } => s == u,
        Scope::PerAppPerUser { app: a, user: s } => a == app && s == u,
        _ => false,
    }
}

/// Deploys an app whose one block names credential `name` in `scope`, as `actor`'s app, and
/// starts `actor`'s session: the injection the policy decides as `Action::Inject`.
async fn inject(vault: &Vault, actor: &Principal, name: &str, scope: &Scope) -> Result<(), Error> {
    use strongroom::config::{compile, AppConfig, CredentialSlot, Slots};
    let (Some(app), Some(u)) = (actor.app(), actor.user()) else {
        unreachable!("only runtimes inject")
    };
    let yaml = format!(
        "agents:\n  - id: a\n    brain:\n      provider: openai\n      credential:\n        \
         ref: {name}\n        scope: {}\n",
        scope.kind().as_str()
    );
    let config = AppConfig::parse("app.yaml", &yaml).expect("parse");
    let slots = Slots::new().declare(
        "brain",
        CredentialSlot::new("brain_credential", "LLM")
            .handler_types(["api_key"])
            .providers(["openai"])
            .inject("api_key", "{block}.config.api_key"),
    );
    let manifest = compile(app, &config, &slots, &vault.catalog()).expect("compiles");
    let deployment = strongroom::config::Deployment::new(vault, manifest).await?;
    let session = deployment.start_session(u).await?;
    assert_eq!(session.injected_count(), 1);
    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    let last = rows.last().expect("a row");
    assert_eq!(
        (last.event.action, last.event.outcome),
        (Action::Inject, Outcome::Success),
        "the injection is audited"
    );
    Ok(())
}

#[tokio::test]
async fn the_vault_enforces_every_cell_of_the_policy() {
    let vault = Vault::in_memory().await.expect("vault");
    let principals = [
        sysadmin(),
        app_admin("crm"),
        user("crm", "u1"),
        viewer(),
        runtime("crm", "u1"),
        Principal::parse("agent:agent7").expect("p"),
        Principal::parse("service:refresher").expect("p"),
    ];
    let mut n = 0;
    let mut checked = 0;
    for actor in &principals {
        for scope in all_scopes() {
            for action in Action::ALL {
                if matches!(
                    action,
                    Action::AuditVerify | Action::Rewrap | Action::Reseal
                ) {
                    continue; // about no credential: below
                }
                if matches!(action, Action::OAuthStart | Action::OAuthComplete) {
                    continue; // about the actor's own user, not a credential: tests/oauth.rs
                }
                if matches!(
                    action,
                    Action::IntegrationLink
                        | Action::IntegrationUnlink
                        | Action::IntegrationList
                        | Action::IntegrationCredentials
                        | Action::ProviderAdd
                        | Action::ProviderRemove
                        | Action::ProviderList
                ) {
                    // About an agent's integrations, not a credential: tests/integrations.rs
                    // runs them for every role on an own and another agent.
                    continue;
                }
                if action == Action::Resolve && matches!(scope, Scope::PerAgent { .. }) {
                    continue;
                }
                if action == Action::Inject && !injectable(actor, &scope) {
                    continue;
                }
                n += 1;
                let relation = Relation::of(actor, Some(&scope));
                let denied = attempt(&vault, actor, action, &scope, n).await;
                assert_eq!(
                    !denied,
                    allows(actor.role(), action, relation),
                    "{actor} {action:?} on {scope} ({relation:?})"
                );
                checked += 1;
            }
        }
        let verified = vault.verify_audit(actor).await;
        assert_eq!(
            verified.is_ok(),
            allows(actor.role(), Action::AuditVerify, Relation::NoScope),
            "{actor} audit verify"
        );
        // Every record is on the vault's own key already: an allowed re-wrap has nothing
        // to move.
        let rewrapped = vault
            .rewrap_keys(actor, vault.keys(), Default::default())
            .await;
        assert_eq!(
            rewrapped.is_ok(),
            allows(actor.role(), Action::Rewrap, Relation::NoScope),
            "{actor} re-wrap: {rewrapped:?}"
        );
        // Every record is of the current format already: an allowed re-seal has nothing
        // to do either.
        let resealed = vault.reseal_credentials(actor, Default::default()).await;
        assert_eq!(
            resealed.is_ok(),
            allows(actor.role(), Action::Reseal, Relation::NoScope),
            "{actor} re-seal: {resealed:?}"
        );
    }
    // 7 principals × 11 scopes × 14 credential actions (refresh and revoke among them), less resolve on the two per_agent
    // scopes (7 × 2; an agent's own door is `agent_secret`, tested on its own) and the
    // injections no public call can make (6 principals × 11 scopes, and the runtime's 7
    // scopes of other apps, users and agents).
    assert_eq!(checked, 7 * 11 * 14 - 7 * 2 - (6 * 11 + 7));
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn viewers_never_get_secrets_and_users_never_see_each_other() {
    let vault = Vault::in_memory().await.expect("vault");
    let id = seed(&vault, "k", &Scope::per_user("u1").expect("s"), "openai").await;
    seed(&vault, "k2", &Scope::per_user("u2").expect("s"), "openai").await;
    let err = vault.reveal(&viewer(), &id).await.expect_err("viewer");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let listed = vault
        .list(&user("crm", "u2"), &CredentialFilter::default())
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["k2"]
    );
    let listed = vault
        .list(&viewer(), &CredentialFilter::default())
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    let err = vault
        .reveal(&app_admin("crm"), &id)
        .await
        .expect_err("admin");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "an app admin may not even see a user's credential"
    );
    let revealed = vault.reveal(&user("crm", "u1"), &id).await.expect("owner");
    let shown = format!("{revealed:?} {err} {err:?}");
    assert!(!shown.contains("CANARY"), "{shown}");
}

#[tokio::test]
async fn stale_versions_conflict_on_update_and_delete() {
    let vault = Vault::in_memory().await.expect("vault");
    let owner = user("crm", "u1");
    let id = seed(&vault, "k", &Scope::per_user("u1").expect("s"), "openai").await;
    vault
        .update(
            &owner,
            &id,
            1,
            CredentialUpdate {
                fields: Some(fields("v2")),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let err = vault
        .update(
            &owner,
            &id,
            1,
            CredentialUpdate {
                fields: Some(fields("stale")),
                ..Default::default()
            },
        )
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            Error::VersionConflict {
                expected: 1,
                found: Some(2),
                ..
            }
        ),
        "{err}"
    );
    let err = vault
        .delete(&owner, &id, Some(1))
        .await
        .expect_err("stale delete");
    assert_eq!(err.kind(), ErrorKind::VersionConflict);
}

#[tokio::test]
async fn lifecycle_transitions_are_checked_and_audited() {
    use LifecycleState::*;
    for from in LifecycleState::ALL {
        for to in LifecycleState::ALL {
            let want = matches!(
                (from, to),
                (Filled, Valid | Expired | Invalid | Pending)
                    | (Pending, Valid | Expired | Invalid)
                    | (Valid, Expired | Invalid | Pending)
                    | (Expired, Valid | Invalid | Pending)
            );
            assert_eq!(transition_allowed(from, to), want, "{from} -> {to}");
        }
    }
    let vault = Vault::in_memory().await.expect("vault");
    let owner = user("crm", "u1");
    let id = seed(&vault, "k", &Scope::per_user("u1").expect("s"), "openai").await;
    vault.grant_add(&owner, &id, "crm").await.expect("grant");
    let info = vault
        .set_state(&owner, &id, 1, Valid, "verified")
        .await
        .expect("valid");
    assert_eq!((info.state, info.version), (Valid, 2));
    let err = vault
        .set_state(&owner, &id, 2, Filled, "x")
        .await
        .expect_err("valid -> filled");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    vault
        .set_state(&owner, &id, 2, Invalid, "revoked upstream")
        .await
        .expect("invalid");
    let rt = runtime("crm", "u1");
    let err = vault
        .resolve(&rt, &CredentialRef::compact("k"), &ctx("crm", "u1"))
        .await
        .expect_err("invalid is never resolved");
    assert_eq!(err.kind(), ErrorKind::Unusable);
    // New fields bring it back to filled.
    vault
        .update(
            &owner,
            &id,
            3,
            CredentialUpdate {
                fields: Some(fields("fresh")),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(vault.get(&owner, &id).await.expect("get").state, Filled);
    vault
        .resolve(&rt, &CredentialRef::compact("k"), &ctx("crm", "u1"))
        .await
        .expect("usable again");
    // expires_at in the past reads as expired and is not resolved.
    let mut new = NewCredential::new(
        "old",
        Scope::per_user("u1").expect("s"),
        "openai",
        "api_key",
        fields("x"),
    );
    new.expires_at = Some(Timestamp(Timestamp::now().0 - 1_000));
    let old = vault.create(&owner, new).await.expect("create");
    assert_eq!(old.state, Expired);
    vault
        .grant_add(&owner, &old.id, "crm")
        .await
        .expect("grant");
    let err = vault
        .resolve(&rt, &CredentialRef::compact("old"), &ctx("crm", "u1"))
        .await
        .expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::Unusable);
    let filtered = vault
        .list(
            &owner,
            &CredentialFilter {
                state: Some(Expired),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(filtered.len(), 1);
    let rows = vault.store().audit_range(1, 1000).await.expect("audit");
    let transitions: Vec<_> = rows
        .iter()
        .filter(|r| r.event.action == strongroom::Action::SetState)
        .map(|r| {
            (
                r.event.details["from"].clone(),
                r.event.details["to"].clone(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        vec![
            ("filled".to_string(), "valid".to_string()),
            ("valid".into(), "invalid".into())
        ]
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let vault = Vault::in_memory().await.expect("vault");
    let owner = user("crm", "u1");
    let scope = Scope::per_user("u1").expect("s");
    let err = vault
        .create(
            &owner,
            NewCredential::new("k", scope.clone(), "openai", "api_key", BTreeMap::new()),
        )
        .await
        .expect_err("no fields");
    assert!(
        err.to_string().contains("at least one secret field"),
        "{err}"
    );
    let bad = BTreeMap::from([("api key!".to_string(), SecretString::from("x".to_string()))]);
    let err = vault
        .create(
            &owner,
            NewCredential::new("k", scope.clone(), "openai", "api_key", bad),
        )
        .await
        .expect_err("bad field name");
    assert!(err.to_string().contains("api key!"), "{err}");
    let err = vault
        .create(
            &owner,
            NewCredential::new("a/b", scope.clone(), "openai", "api_key", fields("x")),
        )
        .await
        .expect_err("bad name");
    assert!(err.to_string().contains("credential name"), "{err}");
    seed(&vault, "dup", &scope, "openai").await;
    let err = vault
        .create(
            &owner,
            NewCredential::new("dup", scope, "openai", "api_key", fields("x")),
        )
        .await
        .expect_err("duplicate");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(Principal::parse("root").is_err());
    assert!(Principal::parse("app_user:crm").is_err());
}

//! Per-agent integrations end to end against local stand-ins of GitHub, GitLab and
//! Telegram (tests/common/service_servers.rs): link, list, unlink; rejected credentials
//! store nothing; one integration per provider and agent, also under a race; the
//! credentials path and the secrets path; who may do what; no token anywhere it should
//! not be.

mod common;

use std::sync::Arc;

use common::service_servers::*;
use strongroom::integrations::{
    AuthType, IntegrationProvider, GITHUB_TOKEN, GITLAB_TOKEN, TELEGRAM_ALLOWED_USERS,
    TELEGRAM_BOT_TOKEN,
};
use strongroom::store::{ListFilter, RecordFilter};
use strongroom::vault::policy::{allows, Relation};
use strongroom::{
    Action, Error, ErrorKind, ExposeSecret, Outcome, Principal, ReqwestTransport, Scope,
    SecretString, SqliteStore, Vault,
};

struct Fixture {
    vault: Vault,
    server: ServiceServer,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let server = ServiceServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("vault.db")).expect("sqlite");
    let vault = Vault::builder()
        .store(Arc::new(store))
        .key_wrapper(Arc::new(strongroom::LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .integration_base_url(IntegrationProvider::Github, server.github())
        .integration_base_url(IntegrationProvider::Gitlab, server.gitlab())
        .integration_base_url(IntegrationProvider::Telegram, server.telegram())
        .build()
        .await
        .expect("vault");
    Fixture {
        vault,
        server,
        _dir: dir,
    }
}

fn admin() -> Principal {
    Principal::parse("system_admin:ops").expect("p")
}

fn agent(id: &str) -> Principal {
    Principal::parse(&format!("agent:{id}")).expect("p")
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_string())
}

async fn link(vault: &Vault, provider: IntegrationProvider, id: &str) {
    let linked = match provider {
        IntegrationProvider::Github => {
            vault
                .link_github_token(&admin(), id, secret(GITHUB_GOOD))
                .await
        }
        IntegrationProvider::Gitlab => {
            vault
                .link_gitlab_token(&admin(), id, secret(GITLAB_GOOD))
                .await
        }
        _ => {
            vault
                .link_telegram(&admin(), id, secret(TELEGRAM_GOOD), "111, 222")
                .await
        }
    };
    linked.expect("link");
}

/// The agent's per-agent credentials, by name.
async fn secrets_of(vault: &Vault, id: &str) -> Vec<(String, bool)> {
    vault
        .store()
        .list(&ListFilter {
            scope: Some(Scope::per_agent(id).expect("scope")),
            ..ListFilter::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.name, r.agent_accessible))
        .collect()
}

async fn integration_records(vault: &Vault) -> usize {
    vault
        .store()
        .records(&RecordFilter::kind("integration"))
        .await
        .expect("records")
        .len()
}

async fn audit_rows(vault: &Vault) -> Vec<strongroom::AuditRecord> {
    vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit")
}

#[tokio::test]
async fn link_list_and_unlink_each_provider() {
    let f = fixture().await;
    let v = &f.vault;
    let a = "agent7";
    let linked = v
        .link_github_token(&admin(), a, secret(GITHUB_GOOD))
        .await
        .expect("github");
    assert_eq!(
        (linked.username.as_str(), linked.auth_type),
        ("octo-agent", AuthType::Token)
    );
    assert_eq!(
        linked.external_ids.get("user_id").map(String::as_str),
        Some("123")
    );
    assert_eq!(linked.linked_by, "system_admin:ops");
    let gl = v
        .link_gitlab_token(&admin(), a, secret(GITLAB_GOOD))
        .await
        .expect("gitlab");
    assert_eq!(gl.username, "agent-7");
    let tg = v
        .link_telegram(&admin(), a, secret(TELEGRAM_GOOD), "111,222")
        .await
        .expect("telegram");
    assert_eq!(tg.username, "agent_bot");
    assert_eq!(
        tg.external_ids.get("bot_id").map(String::as_str),
        Some("4242")
    );
    // The GitHub request carried the documented headers.
    let gh = f
        .server
        .seen()
        .into_iter()
        .find(|s| s.path == "/github/user")
        .expect("github asked");
    assert_eq!(gh.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(gh.header("x-github-api-version"), Some("2022-11-28"));

    let listed = v.integrations(&admin(), a).await.expect("list");
    let providers: Vec<_> = listed.iter().map(|i| i.provider).collect();
    assert_eq!(
        providers,
        vec![
            IntegrationProvider::Github,
            IntegrationProvider::Gitlab,
            IntegrationProvider::Telegram
        ]
    );
    let mut names = secrets_of(v, a).await;
    names.sort();
    assert_eq!(
        names,
        vec![
            (GITHUB_TOKEN.to_string(), false),
            (GITLAB_TOKEN.to_string(), false),
            (TELEGRAM_ALLOWED_USERS.to_string(), false),
            (TELEGRAM_BOT_TOKEN.to_string(), false),
        ],
        "every integration secret is per-agent and not agent-accessible"
    );
    // Another agent's list is its own.
    assert!(v
        .integrations(&admin(), "agent8")
        .await
        .expect("l")
        .is_empty());

    for provider in IntegrationProvider::ALL {
        let gone = v.unlink(&admin(), a, provider).await.expect("unlink");
        assert_eq!(gone.provider, provider);
    }
    assert!(v.integrations(&admin(), a).await.expect("list").is_empty());
    assert!(secrets_of(v, a).await.is_empty(), "the secrets went too");
    let err = v
        .unlink(&admin(), a, IntegrationProvider::Github)
        .await
        .expect_err("nothing to unlink");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let rows = audit_rows(v).await;
    let count = |action: Action| {
        rows.iter()
            .filter(|r| r.event.action == action && r.event.outcome == Outcome::Success)
            .count()
    };
    assert_eq!(count(Action::IntegrationLink), 3);
    assert_eq!(count(Action::IntegrationUnlink), 3);
    assert_eq!(count(Action::Create), 4);
    assert_eq!(count(Action::Delete), 4);
    // Linking again after an unlink works.
    link(v, IntegrationProvider::Github, a).await;
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_rejected_or_unchecked_credential_stores_nothing() {
    let f = fixture().await;
    let v = &f.vault;
    let a = "agent7";
    let errors = [
        v.link_github_token(&admin(), a, secret(GITHUB_BAD))
            .await
            .expect_err("github refuses"),
        v.link_gitlab_token(&admin(), a, secret(GITLAB_BAD))
            .await
            .expect_err("gitlab refuses"),
        v.link_telegram(&admin(), a, secret(TELEGRAM_BAD), "111")
            .await
            .expect_err("telegram refuses"),
    ];
    for err in &errors {
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("rejected"), "{err}");
        assert!(!err.to_string().contains(CANARY), "{err}");
    }
    // A service that cannot be reached: nothing stored either.
    f.server.set_down(true);
    let err = v
        .link_github_token(&admin(), a, secret(GITHUB_GOOD))
        .await
        .expect_err("down");
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(err.to_string().contains("could not be reached"), "{err}");
    let err = v
        .link_telegram(&admin(), a, secret(TELEGRAM_GOOD), "111")
        .await
        .expect_err("down");
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(!err.to_string().contains(CANARY), "{err}");
    f.server.set_down(false);
    // Refused before any request: a token of the wrong shape, allowed users that are not
    // integers.
    let before = f.server.requests();
    let err = v
        .link_github_token(&admin(), a, secret("not-a-github-CANARY-token"))
        .await
        .expect_err("prefix");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = v
        .link_telegram(&admin(), a, secret(TELEGRAM_GOOD), "111,bob")
        .await
        .expect_err("users");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(f.server.requests(), before, "nothing was sent");

    assert!(secrets_of(v, a).await.is_empty(), "no credential");
    assert_eq!(integration_records(v).await, 0, "no record");
    let rows = audit_rows(v).await;
    let failures: Vec<_> = rows
        .iter()
        .filter(|r| r.event.action == Action::IntegrationLink)
        .map(|r| {
            (
                r.event.outcome,
                r.event.details.get("reason").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        failures,
        vec![
            (Outcome::Failure, "rejected".to_string()),
            (Outcome::Failure, "rejected".to_string()),
            (Outcome::Failure, "rejected".to_string()),
            (Outcome::Failure, "unreachable".to_string()),
            (Outcome::Failure, "unreachable".to_string()),
        ]
    );
    assert!(!rows.iter().any(|r| r.event.action == Action::Create));
}

#[tokio::test]
async fn one_integration_per_provider_and_agent_even_when_sixteen_race() {
    let f = fixture().await;
    let v = &f.vault;
    link(v, IntegrationProvider::Github, "agent7").await;
    let err = v
        .link_github_token(&admin(), "agent7", secret(GITHUB_GOOD))
        .await
        .expect_err("second");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("unlink it first"), "{err}");
    // Another provider, or another agent, is fine.
    link(v, IntegrationProvider::Gitlab, "agent7").await;
    link(v, IntegrationProvider::Github, "agent8").await;

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            v.link_github_token(&admin(), "racer", secret(GITHUB_GOOD))
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one racing link wins");
    assert_eq!(v.integrations(&admin(), "racer").await.expect("l").len(), 1);
    assert_eq!(
        secrets_of(v, "racer").await,
        vec![(GITHUB_TOKEN.to_string(), false)]
    );
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn the_credentials_path_serves_the_agent_and_admins_only() {
    let f = fixture().await;
    let v = &f.vault;
    link(v, IntegrationProvider::Github, "agent7").await;
    link(v, IntegrationProvider::Telegram, "agent7").await;
    let own = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect("own");
    assert_eq!(own.token.expose_secret(), GITHUB_GOOD);
    assert_eq!(own.username, "octo-agent");
    assert!(!format!("{own:?}").contains(CANARY), "{own:?}");
    let by_admin = v
        .credentials_for(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("admin");
    assert_eq!(by_admin.token.expose_secret(), GITHUB_GOOD);
    let tg = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Telegram)
        .await
        .expect("telegram");
    assert_eq!(tg.token.expose_secret(), TELEGRAM_GOOD);
    assert_eq!(tg.allowed_users, vec![111, 222]);

    let err = v
        .credentials_for(&agent("agent8"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("another agent");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let rows = audit_rows(v).await;
    let last = rows.last().expect("row");
    assert_eq!(
        (
            last.event.action,
            last.event.outcome,
            last.event.actor.as_str()
        ),
        (
            Action::IntegrationCredentials,
            Outcome::Denied,
            "agent:agent8"
        )
    );
    let served = rows
        .iter()
        .filter(|r| {
            r.event.action == Action::IntegrationCredentials && r.event.outcome == Outcome::Success
        })
        .count();
    assert_eq!(
        served, 4,
        "every release is audited (telegram: two secrets)"
    );

    // Unlinking takes effect at the next call.
    v.unlink(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("unlink");
    let err = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("unlinked");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let last = audit_rows(v).await.pop().expect("row");
    assert_eq!(
        (last.event.action, last.event.outcome),
        (Action::IntegrationCredentials, Outcome::Failure)
    );
}

#[tokio::test]
async fn the_secrets_path_refuses_integration_secrets_to_the_agent() {
    let f = fixture().await;
    let v = &f.vault;
    link(v, IntegrationProvider::Github, "agent7").await;
    let err = v
        .agent_secret(&agent("agent7"), GITHUB_TOKEN)
        .await
        .expect_err("not agent-accessible");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("credentials path"), "{err}");
    let last = audit_rows(v).await.pop().expect("row");
    assert_eq!(
        (last.event.action, last.event.outcome),
        (Action::Resolve, Outcome::Denied)
    );
    assert_eq!(
        last.event.details.get("reason").map(String::as_str),
        Some("not agent-accessible")
    );
    let creds = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect("the credentials path gives it");
    assert_eq!(creds.token.expose_secret(), GITHUB_GOOD);
}

/// Every role, on its own agent's integrations and another's: link, unlink, list and the
/// credentials path are allowed exactly where the policy table says, and every denial is
/// audited.
#[tokio::test]
async fn who_may_do_what_with_integrations() {
    let f = fixture().await;
    let v = &f.vault;
    let principals = [
        admin(),
        Principal::parse("app_admin:crm:ann").expect("p"),
        Principal::parse("app_user:crm:u1").expect("p"),
        Principal::parse("viewer:vic").expect("p"),
        Principal::parse("runtime:crm:u1").expect("p"),
        agent("agent7"),
        Principal::parse("service:refresher").expect("p"),
    ];
    link(v, IntegrationProvider::Github, "agent7").await;
    link(v, IntegrationProvider::Github, "agent8").await;
    let mut checked = 0;
    for actor in &principals {
        for target in ["agent7", "agent8"] {
            let relation = Relation::of(actor, Some(&Scope::per_agent(target).expect("s")));
            for action in [
                Action::IntegrationLink,
                Action::IntegrationUnlink,
                Action::IntegrationList,
                Action::IntegrationCredentials,
            ] {
                let result: Result<(), Error> = match action {
                    // A refused token: an allowed link gets as far as the service.
                    Action::IntegrationLink => v
                        .link_gitlab_token(actor, target, secret(GITLAB_BAD))
                        .await
                        .map(drop),
                    // Nothing linked for GitLab: an allowed unlink finds nothing.
                    Action::IntegrationUnlink => v
                        .unlink(actor, target, IntegrationProvider::Gitlab)
                        .await
                        .map(drop),
                    Action::IntegrationList => v.integrations(actor, target).await.map(drop),
                    _ => v
                        .credentials_for(actor, target, IntegrationProvider::Github)
                        .await
                        .map(drop),
                };
                let denied = match result {
                    Err(Error::PermissionDenied { .. }) => {
                        let last = audit_rows(v).await.pop().expect("row");
                        assert_eq!(
                            (last.event.action, last.event.outcome),
                            (action, Outcome::Denied),
                            "{actor} {action:?} {target}"
                        );
                        assert_eq!(last.event.actor, actor.to_string());
                        true
                    }
                    Ok(()) => false,
                    Err(e) => {
                        let want = match action {
                            Action::IntegrationLink => ErrorKind::Rejected,
                            _ => ErrorKind::NotFound,
                        };
                        assert_eq!(e.kind(), want, "{actor} {action:?} {target}: {e}");
                        false
                    }
                };
                assert_eq!(
                    !denied,
                    allows(actor.role(), action, relation),
                    "{actor} {action:?} on {target} ({relation:?})"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 2 * 4);
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

/// No test token appears in an error, a Debug output, an audit row or a record body.
#[tokio::test]
async fn no_token_in_errors_debug_audit_or_records() {
    let f = fixture().await;
    let v = &f.vault;
    let mut seen = Vec::new();
    let mut note = |e: Error| seen.push(format!("{e} {e:?}"));
    note(
        v.link_github_token(&admin(), "a1", secret(GITHUB_BAD))
            .await
            .expect_err("bad"),
    );
    note(
        v.link_telegram(&admin(), "a1", secret(TELEGRAM_BAD), "1")
            .await
            .expect_err("bad"),
    );
    note(
        v.link_telegram(&admin(), "a1", secret("4242:bad/CANARY?x"), "1")
            .await
            .expect_err("shape"),
    );
    f.server.set_down(true);
    note(
        v.link_telegram(&admin(), "a1", secret(TELEGRAM_GOOD), "1")
            .await
            .expect_err("down"),
    );
    f.server.set_down(false);
    link(v, IntegrationProvider::Github, "a1").await;
    link(v, IntegrationProvider::Gitlab, "a1").await;
    link(v, IntegrationProvider::Telegram, "a1").await;
    note(
        v.link_github_token(&admin(), "a1", secret(GITHUB_GOOD))
            .await
            .expect_err("twice"),
    );
    note(
        v.credentials_for(&agent("a2"), "a1", IntegrationProvider::Gitlab)
            .await
            .expect_err("other agent"),
    );
    note(
        v.agent_secret(&agent("a1"), TELEGRAM_BOT_TOKEN)
            .await
            .expect_err("secrets path"),
    );
    for provider in IntegrationProvider::ALL {
        let creds = v
            .credentials_for(&agent("a1"), "a1", provider)
            .await
            .expect("creds");
        assert!(creds.token.expose_secret().contains(CANARY));
        seen.push(format!("{creds:?}"));
    }
    seen.push(format!(
        "{:?}",
        v.integrations(&admin(), "a1").await.expect("l")
    ));
    for row in audit_rows(v).await {
        seen.push(format!("{row:?}"));
    }
    for record in v
        .store()
        .records(&RecordFilter::default())
        .await
        .expect("records")
    {
        seen.push(format!("{record:?}"));
    }
    assert!(seen.len() > 20);
    for text in seen {
        assert!(!text.contains(CANARY), "a token leaked: {text}");
    }
}

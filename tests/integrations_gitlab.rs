//! The GitLab credential provider in the vault, against the local GitLab stand-in
//! (tests/common/gitlab_server.rs): registering a provider, provisioned links in both
//! modes, one link per agent, deprovisioning on unlink (and a failed one reported), a
//! crashed link cleaned up by the next run, rotation under a lease, and no token anywhere
//! it should not be.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gitlab_server::{MockGitlab, Seen, ADMIN};
use serde_json::json;
use strongroom::integrations::gitlab_provider::{self as glp, GitlabProviderConfig, Mode, Target};
use strongroom::integrations::{AuthType, IntegrationProvider};
use strongroom::model::{Record, RecordKey, Scope};
use strongroom::store::{Batch, ListFilter, Mutation, RecordFilter, Store};
use strongroom::{
    Action, ErrorKind, ExposeSecret, Outcome, Principal, ReqwestTransport, RotationOutcome,
    SecretString, SqliteStore, Timestamp, Vault,
};

struct Fixture {
    vault: Vault,
    store: Arc<SqliteStore>,
    gitlab: MockGitlab,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let gitlab = MockGitlab::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("vault.db")).expect("sqlite"));
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(Arc::new(strongroom::LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .build()
        .await
        .expect("vault");
    let f = Fixture {
        vault,
        store,
        gitlab,
        _dir: dir,
    };
    f.vault
        .add_credential_provider(
            &admin(),
            "sa",
            f.gitlab.service_account_cfg(),
            admin_token(),
        )
        .await
        .expect("service account provider");
    f.vault
        .add_credential_provider(&admin(), "pat", f.gitlab.project_cfg(), admin_token())
        .await
        .expect("project provider");
    f.gitlab.clear_seen();
    f
}

fn admin() -> Principal {
    Principal::parse("system_admin:ops").expect("p")
}

fn agent(id: &str) -> Principal {
    Principal::parse(&format!("agent:{id}")).expect("p")
}

fn admin_token() -> SecretString {
    SecretString::from(ADMIN.to_string())
}

fn requests(gitlab: &MockGitlab, method: &str, contains: &str) -> Vec<Seen> {
    gitlab
        .seen()
        .into_iter()
        .filter(|s| s.method == method && s.path.contains(contains))
        .collect()
}

async fn audit_rows(vault: &Vault) -> Vec<strongroom::AuditRecord> {
    vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit")
}

async fn intents(store: &SqliteStore) -> Vec<Record> {
    store
        .records(&RecordFilter::kind("provisioning"))
        .await
        .expect("records")
}

async fn secret_count(store: &SqliteStore, agent: &str) -> usize {
    store
        .list(&ListFilter {
            scope: Some(Scope::PerAgent {
                agent: agent.to_string(),
            }),
            ..ListFilter::default()
        })
        .await
        .expect("list")
        .len()
}

#[tokio::test]
async fn register_list_and_refuse_bad_providers() {
    let f = fixture().await;
    let v = &f.vault;
    let listed = v.list_credential_providers(&admin()).await.expect("list");
    let names: Vec<_> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["pat", "sa"]);
    assert_eq!(listed[1].config, f.gitlab.service_account_cfg());
    // The admin token is sealed, not in the body.
    let record = f
        .store
        .record(&RecordKey::new("credential_provider", "org", "sa").expect("key"))
        .await
        .expect("read")
        .expect("stored");
    assert!(record.sealed.is_some());
    assert!(!record.body.to_string().contains(ADMIN));

    let e = v
        .add_credential_provider(
            &admin(),
            "bad",
            f.gitlab.service_account_cfg(),
            SecretString::from("wrong-admin-CANARY".to_string()),
        )
        .await
        .expect_err("refused token");
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(!format!("{e} {e:?}").contains("CANARY"));
    let mut bad = f.gitlab.service_account_cfg();
    bad.target = Target::Project("acme/api".into());
    let e = v
        .add_credential_provider(&admin(), "bad", bad, admin_token())
        .await
        .expect_err("invalid config");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = v
        .add_credential_provider(&admin(), "sa", f.gitlab.project_cfg(), admin_token())
        .await
        .expect_err("taken");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let e = v
        .add_credential_provider(&agent("a1"), "x", f.gitlab.project_cfg(), admin_token())
        .await
        .expect_err("agents may not");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        v.list_credential_providers(&admin())
            .await
            .expect("l")
            .len(),
        2
    );
    let rows = audit_rows(v).await;
    let adds = rows
        .iter()
        .filter(|r| r.event.action == Action::ProviderAdd)
        .map(|r| r.event.outcome)
        .collect::<Vec<_>>();
    assert_eq!(
        adds,
        [
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure,
            Outcome::Failure,
            Outcome::Failure,
            Outcome::Denied
        ]
    );
}

#[tokio::test]
async fn provisioned_links_in_each_mode() {
    let f = fixture().await;
    let v = &f.vault;
    // Service account mode.
    let linked = v
        .link_gitlab_provisioned(&admin(), "a1", "sa")
        .await
        .expect("link sa");
    assert_eq!(linked.auth_type, AuthType::Provisioned);
    let username = f
        .gitlab
        .service_account_cfg()
        .service_account_username("a1")
        .expect("name");
    assert_eq!(linked.username, username);
    let account = requests(&f.gitlab, "POST", "/groups/acme/service_accounts");
    assert_eq!(account.len(), 2, "the account, then its token");
    assert_eq!(account[0].path, "/api/v4/groups/acme/service_accounts");
    assert_eq!(
        account[0].body,
        Some(json!({"name": "strongroom agent a1", "username": username}))
    );
    let body = account[1].body.clone().expect("token body");
    assert_eq!(body["name"], glp::token_name("a1").expect("name"));
    assert_eq!(body["scopes"], json!(["read_api", "read_repository"]));
    assert!(body["expires_at"].as_str().is_some());
    for seen in f.gitlab.seen() {
        assert_eq!(
            seen.headers.get("private-token").map(String::as_str),
            Some(ADMIN)
        );
    }
    let creds = v
        .credentials_for(&agent("a1"), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("credentials");
    let issued = f
        .gitlab
        .tokens()
        .into_iter()
        .find(|t| !t.project)
        .expect("issued");
    assert_eq!(creds.token.expose_secret(), issued.token);
    assert_eq!(creds.auth_type, AuthType::Provisioned);
    let expected = glp::parse_date(&issued.expires_at).expect("date");
    let at = creds.expires_at.expect("expiry").as_millis() / 1000;
    assert_eq!(
        time::OffsetDateTime::from_unix_timestamp(at)
            .expect("t")
            .date(),
        expected
    );

    // Project access token mode.
    f.gitlab.clear_seen();
    let linked = v
        .link_gitlab_provisioned(&admin(), "a2", "pat")
        .await
        .expect("link pat");
    assert_eq!(
        linked.external_ids.get("mode").map(String::as_str),
        Some("project_access_token")
    );
    let posts = requests(&f.gitlab, "POST", "/access_tokens");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/api/v4/projects/acme%2Fapi/access_tokens");
    let body = posts[0].body.clone().expect("body");
    assert_eq!(body["name"], glp::token_name("a2").expect("name"));
    assert_eq!(body["access_level"], 30);
    assert_eq!(body["scopes"], json!(["api"]));

    // One per agent: a second link is refused without a remote call.
    f.gitlab.clear_seen();
    for provider in ["sa", "pat"] {
        let e = v
            .link_gitlab_provisioned(&admin(), "a1", provider)
            .await
            .expect_err("twice");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    }
    let e = v
        .link_gitlab_token(&admin(), "a2", SecretString::from("glpat-x".to_string()))
        .await
        .expect_err("a token link too");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(requests(&f.gitlab, "POST", "").is_empty());
    assert!(intents(&f.store).await.is_empty());

    // The provider cannot go while it is in use.
    let e = v
        .remove_credential_provider(&admin(), "sa")
        .await
        .expect_err("in use");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("a1"), "{e}");
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn unlink_deprovisions_and_a_failure_is_reported() {
    let f = fixture().await;
    let v = &f.vault;
    let sa = v
        .link_gitlab_provisioned(&admin(), "a1", "sa")
        .await
        .expect("sa");
    let pat = v
        .link_gitlab_provisioned(&admin(), "a2", "pat")
        .await
        .expect("pat");
    f.gitlab.clear_seen();

    let report = v
        .unlink_provisioned(&admin(), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("unlink");
    let d = report.deprovision.expect("provisioned");
    assert!(d.complete(), "{d:?}");
    let uid = &sa.external_ids["user_id"];
    let tid = &sa.external_ids["token_id"];
    let deletes: Vec<String> = requests(&f.gitlab, "DELETE", "")
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(
        deletes,
        [
            format!("/api/v4/groups/acme/service_accounts/{uid}/personal_access_tokens/{tid}"),
            format!("/api/v4/groups/acme/service_accounts/{uid}"),
        ]
    );
    assert!(f.gitlab.accounts().is_empty());
    assert_eq!(secret_count(&f.store, "a1").await, 0);

    f.gitlab.clear_seen();
    v.unlink(&admin(), "a2", IntegrationProvider::Gitlab)
        .await
        .expect("unlink pat");
    let tid = &pat.external_ids["token_id"];
    let deletes: Vec<String> = requests(&f.gitlab, "DELETE", "")
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(
        deletes,
        [format!("/api/v4/projects/acme%2Fapi/access_tokens/{tid}")]
    );
    assert!(f.gitlab.tokens().iter().all(|t| t.revoked));

    // A 500 on the account's delete: the local state goes anyway, and the failure is in
    // the report and the audit row.
    let sa = v
        .link_gitlab_provisioned(&admin(), "a3", "sa")
        .await
        .expect("sa");
    let uid = &sa.external_ids["user_id"];
    f.gitlab.fault(
        "DELETE",
        &format!("/api/v4/groups/acme/service_accounts/{uid}"),
        500,
        r#"{"message":"500 Internal Server Error"}"#,
    );
    let report = v
        .unlink_provisioned(&admin(), "a3", IntegrationProvider::Gitlab)
        .await
        .expect("unlinked anyway");
    let d = report.deprovision.expect("provisioned");
    assert!(!d.complete());
    assert!(d.steps[0].outcome.is_ok(), "the token was revoked: {d:?}");
    assert!(d.steps[1].outcome.is_err());
    assert!(v
        .integrations(&admin(), "a3")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(secret_count(&f.store, "a3").await, 0);
    let row = audit_rows(v)
        .await
        .into_iter()
        .rev()
        .find(|r| r.event.action == Action::IntegrationUnlink)
        .expect("row");
    assert_eq!(row.event.outcome, Outcome::Success);
    assert_eq!(
        row.event.details.get("deprovision").map(String::as_str),
        Some("failed")
    );

    // Unused now: the providers can go.
    v.remove_credential_provider(&admin(), "sa")
        .await
        .expect("remove");
    assert_eq!(
        v.list_credential_providers(&admin())
            .await
            .expect("l")
            .len(),
        1
    );
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

/// Writes what a crashed link leaves: its intent (lapsed), and what it created remotely.
async fn crashed_intent(f: &Fixture, agent_id: &str, provider: &str, cfg: &GitlabProviderConfig) {
    let username = match cfg.mode {
        Mode::ServiceAccount { .. } => Some(cfg.service_account_username(agent_id).expect("u")),
        Mode::ProjectAccessToken { .. } => None,
    };
    let mode = match cfg.mode {
        Mode::ServiceAccount { .. } => "service_account",
        Mode::ProjectAccessToken { .. } => "project_access_token",
    };
    let key = RecordKey::new("provisioning", format!("agent:{agent_id}"), "gitlab").expect("key");
    let mut record = Record::new(
        key,
        json!({
            "provider": provider, "mode": mode, "username": username,
            "token_name": glp::token_name(agent_id).expect("n"), "step": "started",
        }),
        Timestamp(Timestamp::now().0 - 600_000),
    );
    record.expires_at = Some(Timestamp(Timestamp::now().0 - 480_000));
    f.store
        .commit(Batch {
            mutations: vec![Mutation::create_record(record)],
            events: vec![],
        })
        .await
        .expect("intent");
    let http = ReqwestTransport::new().expect("http");
    let expires = time::Date::from_calendar_date(2099, time::Month::January, 1).expect("d");
    match &cfg.mode {
        Mode::ServiceAccount { scopes, .. } => {
            let account = glp::create_service_account(&http, cfg, &admin_token(), agent_id)
                .await
                .expect("account");
            glp::create_service_account_token(
                &http,
                cfg,
                &admin_token(),
                account.id,
                &glp::token_name(agent_id).expect("n"),
                scopes,
                expires,
            )
            .await
            .expect("token");
        }
        Mode::ProjectAccessToken {
            scopes,
            access_level,
            ..
        } => {
            glp::create_project_access_token(
                &http,
                cfg,
                &admin_token(),
                &glp::token_name(agent_id).expect("n"),
                scopes,
                *access_level,
                expires,
            )
            .await
            .expect("token");
        }
    }
}

#[tokio::test]
async fn a_crashed_link_is_cleaned_up_by_the_next_run() {
    let f = fixture().await;
    let v = &f.vault;
    // Service account: the next link for that agent cleans up, then links afresh.
    crashed_intent(&f, "a1", "sa", &f.gitlab.service_account_cfg()).await;
    let stale = f.gitlab.accounts()[0].id;
    let linked = v
        .link_gitlab_provisioned(&admin(), "a1", "sa")
        .await
        .expect("link");
    assert!(
        requests(&f.gitlab, "DELETE", &format!("/service_accounts/{stale}")).len() == 1,
        "the crashed run's account is deleted"
    );
    let accounts = f.gitlab.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].id.to_string(), linked.external_ids["user_id"]);
    assert!(f.gitlab.tokens().iter().filter(|t| !t.revoked).count() == 1);
    assert!(intents(&f.store).await.is_empty());

    // Project token: Vault::finish_provisioning cleans up; the link can run again.
    crashed_intent(&f, "a2", "pat", &f.gitlab.project_cfg()).await;
    let e = v
        .finish_provisioning(&agent("a2"))
        .await
        .expect_err("admins only");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let report = v.finish_provisioning(&admin()).await.expect("finish");
    assert_eq!(report.recovered.len(), 1);
    assert!(report.recovered[0].resolved);
    assert_eq!(report.recovered[0].agent, "a2");
    assert!(f
        .gitlab
        .tokens()
        .iter()
        .filter(|t| t.project)
        .all(|t| t.revoked));
    assert!(intents(&f.store).await.is_empty());
    assert_eq!(secret_count(&f.store, "a2").await, 0);
    v.link_gitlab_provisioned(&admin(), "a2", "pat")
        .await
        .expect("again");

    // A cleanup that fails keeps the intent for a later run.
    crashed_intent(&f, "a3", "pat", &f.gitlab.project_cfg()).await;
    f.gitlab.fault(
        "GET",
        "/api/v4/projects/acme%2Fapi/access_tokens",
        503,
        "{}",
    );
    let report = v.finish_provisioning(&admin()).await.expect("finish");
    assert!(!report.recovered[0].resolved);
    assert_eq!(intents(&f.store).await.len(), 1);
    let report = v.finish_provisioning(&admin()).await.expect("finish again");
    assert!(report.recovered[0].resolved);
    assert!(intents(&f.store).await.is_empty());

    // A failure after a remote create undoes it: no account, no intent, nothing stored.
    f.gitlab.fault(
        "POST",
        &format!(
            "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens",
            f.gitlab.state.lock().expect("s").next_id + 1
        ),
        500,
        "{}",
    );
    let before = f.gitlab.accounts().len();
    let e = v
        .link_gitlab_provisioned(&admin(), "a4", "sa")
        .await
        .expect_err("500");
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert_eq!(
        f.gitlab.accounts().len(),
        before,
        "the new account is deleted again"
    );
    assert!(intents(&f.store).await.is_empty());
    assert!(v.integrations(&admin(), "a4").await.expect("l").is_empty());
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn racing_rotations_call_gitlab_once() {
    let f = fixture().await;
    let v = &f.vault;
    v.link_gitlab_provisioned(&admin(), "a1", "sa")
        .await
        .expect("link");
    let old = v
        .credentials_for(&admin(), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("creds");
    // Not due yet.
    let report = v
        .rotate_provisioned_tokens(Timestamp::now())
        .await
        .expect("rotate");
    assert!(report.tokens.is_empty());
    // 25 days on (30-day tokens): due; two racing passes rotate once.
    let later = Timestamp::now().saturating_add(Duration::from_secs(25 * 86_400));
    f.gitlab.clear_seen();
    let (a, b) = tokio::join!(
        v.rotate_provisioned_tokens(later),
        v.rotate_provisioned_tokens(later)
    );
    let outcomes: Vec<RotationOutcome> = a
        .expect("a")
        .tokens
        .into_iter()
        .chain(b.expect("b").tokens)
        .map(|(_, o)| o)
        .collect();
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, RotationOutcome::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert_eq!(requests(&f.gitlab, "POST", "/rotate").len(), 1);
    let new = v
        .credentials_for(&admin(), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("creds");
    assert_ne!(new.token.expose_secret(), old.token.expose_secret());
    assert!(new.expires_at > old.expires_at);
    assert!(f
        .gitlab
        .tokens()
        .iter()
        .any(|t| t.token == old.token.expose_secret() && t.revoked));
    // The lease is gone with the batch; the row is the service's.
    assert!(f
        .store
        .records(&RecordFilter::kind("lease"))
        .await
        .expect("leases")
        .is_empty());
    let row = audit_rows(v)
        .await
        .into_iter()
        .rev()
        .find(|r| r.event.action == Action::Refresh)
        .expect("row");
    assert_eq!(row.event.outcome, Outcome::Success);
    assert_eq!(
        row.event.details.get("integration").map(String::as_str),
        Some("gitlab")
    );
    // Unlink revokes the rotated token (its id is the new one).
    f.gitlab.clear_seen();
    let report = v
        .unlink_provisioned(&admin(), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("unlink");
    assert!(report.deprovision.expect("d").complete());
    assert!(f.gitlab.tokens().iter().all(|t| t.revoked));
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

/// No admin or agent token in an error, a Debug output, an audit row or a record body.
#[tokio::test]
async fn no_token_in_errors_debug_audit_or_records() {
    // The logs too: everything the vault writes through `tracing` is kept and grepped.
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = fixture().await;
    let v = &f.vault;
    let mut seen = Vec::new();
    let linked = v
        .link_gitlab_provisioned(&admin(), "a1", "sa")
        .await
        .expect("link");
    seen.push(format!("{linked:?}"));
    f.gitlab.fault(
        "POST",
        "/api/v4/projects/acme%2Fapi/access_tokens",
        400,
        r#"{"message":"token glpat-issued-CANARY1234567890abcdef admin-token refused"}"#,
    );
    let e = v
        .link_gitlab_provisioned(&admin(), "a2", "pat")
        .await
        .expect_err("400");
    seen.push(format!("{e} {e:?}"));
    seen.push(format!(
        "{:?}",
        v.list_credential_providers(&admin()).await.expect("l")
    ));
    let creds = v
        .credentials_for(&agent("a1"), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("creds");
    seen.push(format!("{creds:?}"));
    let later = Timestamp::now().saturating_add(Duration::from_secs(25 * 86_400));
    seen.push(format!(
        "{:?}",
        v.rotate_provisioned_tokens(later).await.expect("r")
    ));
    let uid = &linked.external_ids["user_id"];
    f.gitlab.fault(
        "DELETE",
        &format!("/api/v4/groups/acme/service_accounts/{uid}"),
        500,
        r#"{"message":"glpat-issued-CANARY1234567890abcdef"}"#,
    );
    let report = v
        .unlink_provisioned(&admin(), "a1", IntegrationProvider::Gitlab)
        .await
        .expect("unlink");
    seen.push(format!("{report:?}"));
    seen.push(format!("{:?}", audit_rows(v).await));
    for kind in ["credential_provider", "integration", "provisioning"] {
        seen.push(format!(
            "{:?}",
            f.store.records(&RecordFilter::kind(kind)).await.expect("r")
        ));
    }
    seen.push(String::from_utf8_lossy(&log.0.lock().expect("log")).to_string());
    let tokens: Vec<String> = f.gitlab.tokens().into_iter().map(|t| t.token).collect();
    assert!(tokens.len() >= 2);
    for text in &seen {
        assert!(!text.contains(ADMIN), "{text}");
        assert!(!text.contains("glpat-"), "{text}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "{text}");
        }
    }
}

/// A `tracing` writer that keeps everything written, to grep.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ids rotation and unlink act on are the vault's: no caller's metadata may set them, so
/// a credential made by hand can never point rotation at someone else's GitLab token.
#[tokio::test]
async fn a_provisioned_identitys_ids_cannot_be_forged_in_metadata() {
    let f = fixture().await;
    let user = Principal::parse("app_user:crm:mallory").expect("p");
    for key in [
        "credential_provider",
        "gitlab_user_id",
        "gitlab_token_id",
        "gitlab_mode",
    ] {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "token".to_string(),
            SecretString::from("glpat-forged0123456789abcdef".to_string()),
        );
        let mut new = strongroom::NewCredential::new(
            "gitlab:token",
            strongroom::Scope::per_user("mallory").expect("scope"),
            "gitlab",
            "",
            fields,
        );
        new.metadata.insert(key.to_string(), "1".to_string());
        let e = f.vault.create(&user, new).await.expect_err(key);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{key}: {e}");
    }
}

//! The GitHub integration in App mode end to end against a local GitHub API
//! (tests/common/github_app_server.rs, which verifies every JWT with the `rsa` crate): link
//! (a rejected key or an unknown installation stores nothing), installation tokens through
//! the credentials path, served from the vault's cache (audited every time) until five
//! minutes before they expire, unlink, the secrets path refusing the key, and no key, JWT
//! or token anywhere it should not be.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::github_app_server::*;
use strongroom::integrations::github_app::TokenNarrowing;
use strongroom::integrations::{AuthType, IntegrationProvider, GITHUB_PRIVATE_KEY};
use strongroom::store::{ListFilter, RecordFilter};
use strongroom::{
    Action, ErrorKind, ExposeSecret, GithubAppLink, Outcome, Principal, ReqwestTransport, Scope,
    SecretString, SqliteStore, Vault,
};

struct Fixture {
    vault: Vault,
    server: GithubServer,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let server = GithubServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("vault.db")).expect("sqlite");
    let vault = Vault::builder()
        .store(Arc::new(store))
        .key_wrapper(Arc::new(strongroom::LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .integration_base_url(IntegrationProvider::Github, server.base())
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

fn the_link() -> GithubAppLink {
    GithubAppLink::new(
        APP_ID.to_string(),
        INSTALLATION,
        SecretString::from(APP_KEY.to_string()),
    )
    .client_id(CLIENT_ID)
}

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

async fn creds(v: &Vault, who: &Principal) -> strongroom::AgentCredentials {
    v.credentials_for(who, "agent7", IntegrationProvider::Github)
        .await
        .expect("credentials")
}

#[tokio::test]
async fn link_in_app_mode_stores_the_key_and_the_record() {
    let f = fixture().await;
    let v = &f.vault;
    let narrowing = TokenNarrowing {
        repositories: vec!["docs".into()],
        ..TokenNarrowing::default()
    };
    let linked = v
        .link_github_app(&admin(), "agent7", the_link().narrowing(narrowing))
        .await
        .expect("link");
    assert_eq!(linked.auth_type, AuthType::App);
    assert_eq!(linked.username, "strongroom-test");
    let ids = &linked.external_ids;
    assert_eq!(ids.get("app_id").map(String::as_str), Some("123456"));
    assert_eq!(ids.get("installation_id").map(String::as_str), Some("42"));
    assert_eq!(ids.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(ids.get("repositories").map(String::as_str), Some("docs"));
    // The check: GET /app and one mint, each with a JWT the server verified.
    let requests = f.server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/app")
    );
    assert_eq!(f.server.mints(), 1);
    assert_eq!(
        secrets_of(v, "agent7").await,
        vec![(GITHUB_PRIVATE_KEY.to_string(), false)]
    );
    let listed = v.integrations(&admin(), "agent7").await.expect("list");
    assert_eq!(listed, vec![linked]);
    let rows = audit_rows(v).await;
    let link = rows
        .iter()
        .find(|r| r.event.action == Action::IntegrationLink)
        .expect("link row");
    assert_eq!(link.event.outcome, Outcome::Success);
    assert_eq!(
        link.event.details.get("auth_type").map(String::as_str),
        Some("app")
    );
    assert!(rows.iter().any(|r| r.event.action == Action::Create));
    // One integration per provider and agent.
    let err = v
        .link_github_app(&admin(), "agent7", the_link())
        .await
        .expect_err("linked already");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_rejected_key_or_an_unknown_installation_stores_nothing() {
    let f = fixture().await;
    let v = &f.vault;
    let other = GithubAppLink::new(
        APP_ID.to_string(),
        INSTALLATION,
        SecretString::from(OTHER_KEY.to_string()),
    );
    let err = v
        .link_github_app(&admin(), "agent7", other)
        .await
        .expect_err("not the App's key");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let unknown = GithubAppLink::new(
        APP_ID.to_string(),
        999,
        SecretString::from(APP_KEY.to_string()),
    );
    let err = v
        .link_github_app(&admin(), "agent7", unknown)
        .await
        .expect_err("no such installation");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let not_a_key = GithubAppLink::new(
        APP_ID.to_string(),
        INSTALLATION,
        SecretString::from("-----BEGIN RSA PRIVATE KEY-----\nnope\n".to_string()),
    );
    let err = v
        .link_github_app(&admin(), "agent7", not_a_key)
        .await
        .expect_err("not a key");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(f.server.mints(), 0);
    assert!(secrets_of(v, "agent7").await.is_empty());
    assert_eq!(integration_records(v).await, 0);
    let failures = audit_rows(v)
        .await
        .into_iter()
        .filter(|r| r.event.action == Action::IntegrationLink)
        .map(|r| r.event.outcome)
        .collect::<Vec<_>>();
    assert_eq!(failures, vec![Outcome::Failure; 3]);
    // Nobody but a system admin links.
    let err = v
        .link_github_app(&agent("agent7"), "agent7", the_link())
        .await
        .expect_err("an agent links nothing");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[tokio::test]
async fn credentials_come_from_the_cache_and_are_audited_every_time() {
    let f = fixture().await;
    let v = &f.vault;
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    let minted = f.server.mints();
    let first = creds(v, &agent("agent7")).await;
    assert_eq!(f.server.mints(), minted + 1, "a miss mints");
    assert_eq!(first.auth_type, AuthType::App);
    assert_eq!(first.username, "strongroom-test");
    let live = f.server.state().tokens.last().cloned().expect("token");
    assert_eq!(first.token.expose_secret(), live);
    let expires = first.expires_at.expect("expiry").as_millis();
    let now = strongroom::Timestamp::now().as_millis();
    assert!(expires > now + 55 * 60 * 1000 && expires <= now + 3_601_000);
    let rows_before = audit_rows(v).await.len();
    // The second call (a system admin's, for the same agent) is served from the cache.
    let second = creds(v, &admin()).await;
    assert_eq!(second.token.expose_secret(), live);
    assert_eq!(second.expires_at, first.expires_at);
    assert_eq!(f.server.mints(), minted + 1, "a hit mints nothing");
    let rows = audit_rows(v).await;
    assert_eq!(rows.len(), rows_before + 1, "one row per call");
    let last = rows.last().expect("row");
    assert_eq!(
        (last.event.action, last.event.outcome),
        (Action::IntegrationCredentials, Outcome::Success)
    );
    assert_eq!(
        last.event.details.get("token").map(String::as_str),
        Some("cached")
    );
    assert_eq!(
        last.event.details.get("name").map(String::as_str),
        Some(GITHUB_PRIVATE_KEY)
    );
    let minted_row = &rows[rows_before - 1];
    assert_eq!(
        minted_row.event.details.get("token").map(String::as_str),
        Some("minted")
    );
    // Another agent may not ask for agent7's.
    let err = v
        .credentials_for(&agent("agent8"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("not its own");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(f.server.mints(), minted + 1);
    assert!(v.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_token_close_to_expiry_is_reminted() {
    let f = fixture().await;
    let v = &f.vault;
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    // Tokens that live four minutes: inside the five-minute margin from the start.
    f.server.state().token_ttl = Duration::from_secs(4 * 60);
    let minted = f.server.mints();
    let first = creds(v, &agent("agent7")).await;
    let second = creds(v, &agent("agent7")).await;
    assert_eq!(f.server.mints(), minted + 2, "each call re-minted");
    assert_ne!(first.token.expose_secret(), second.token.expose_secret());
    // Long-lived again: the next one is cached.
    f.server.state().token_ttl = Duration::from_secs(3600);
    let third = creds(v, &agent("agent7")).await;
    let fourth = creds(v, &agent("agent7")).await;
    assert_eq!(f.server.mints(), minted + 3);
    assert_eq!(third.token.expose_secret(), fourth.token.expose_secret());
}

#[tokio::test]
async fn unlink_removes_key_and_record_and_ends_the_tokens() {
    let f = fixture().await;
    let v = &f.vault;
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    creds(v, &agent("agent7")).await;
    let gone = v
        .unlink(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("unlink");
    assert_eq!(gone.auth_type, AuthType::App);
    assert!(secrets_of(v, "agent7").await.is_empty());
    assert_eq!(integration_records(v).await, 0);
    let rows = audit_rows(v).await;
    assert!(rows.iter().any(|r| r.event.action == Action::Delete
        && r.event.details.get("name").map(String::as_str) == Some(GITHUB_PRIVATE_KEY)));
    let err = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("unlinked");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Linked again: a new key, so a new token (the old cache entry is gone).
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link again");
    let minted = f.server.mints();
    creds(v, &agent("agent7")).await;
    assert_eq!(f.server.mints(), minted + 1);
}

#[tokio::test]
async fn the_secrets_path_refuses_the_key_to_the_agent() {
    let f = fixture().await;
    let v = &f.vault;
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    let err = v
        .agent_secret(&agent("agent7"), GITHUB_PRIVATE_KEY)
        .await
        .expect_err("not agent-accessible");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let last = audit_rows(v).await.pop().expect("row");
    assert_eq!(
        (last.event.action, last.event.outcome),
        (Action::Resolve, Outcome::Denied)
    );
}

#[tokio::test]
async fn no_key_jwt_or_token_in_errors_debug_or_audit_rows() {
    let f = fixture().await;
    let v = &f.vault;
    let mut seen = Vec::new();
    // Failed links first, with a server that quotes what it was sent.
    f.server.state().echo_credentials = true;
    let other = GithubAppLink::new(
        APP_ID.to_string(),
        INSTALLATION,
        SecretString::from(OTHER_KEY.to_string()),
    );
    seen.push(format!("{other:?}"));
    let err = v
        .link_github_app(&admin(), "agent7", other)
        .await
        .expect_err("refused");
    seen.push(format!("{err} {err:?}"));
    let link = the_link();
    seen.push(format!("{link:?}"));
    let linked = v
        .link_github_app(&admin(), "agent7", link)
        .await
        .expect("link");
    seen.push(format!("{linked:?}"));
    for who in [agent("agent7"), admin(), agent("agent7")] {
        let c = creds(v, &who).await;
        seen.push(format!("{c:?}"));
    }
    // A refused mint (the installation went away) quoting the live token.
    v.unlink(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("unlink");
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    f.server.state().installations.clear();
    let err = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("installation gone");
    seen.push(format!("{err} {err:?}"));
    seen.push(format!("{v:?}"));
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
    // Canaries: every token minted, every JWT sent and a line from the middle of each key.
    let mut canaries: Vec<String> = f.server.state().tokens.clone();
    for request in f.server.requests() {
        let auth = request.header("authorization").expect("auth");
        canaries.push(auth.trim_start_matches("Bearer ").to_string());
    }
    for key in [APP_KEY, OTHER_KEY] {
        let lines: Vec<&str> = key.lines().collect();
        canaries.push(lines[lines.len() / 2].to_string());
    }
    assert!(canaries.len() > 8 && seen.len() > 15);
    for text in &seen {
        for canary in &canaries {
            assert!(!text.contains(canary.as_str()), "leaked: {text}");
        }
    }
}

/// An unlink made by another vault instance on the same store (whose cache this one never
/// hears of) ends this instance's cached token at its next call all the same.
#[tokio::test]
async fn an_unlink_elsewhere_ends_a_cached_token_here() {
    let f = fixture().await;
    let path = f._dir.path().join("vault.db");
    let key = Arc::new(strongroom::LocalKey::generate().expect("key"));
    let build = |store: SqliteStore, key: Arc<strongroom::LocalKey>| {
        let server = f.server.base();
        async move {
            Vault::builder()
                .store(Arc::new(store))
                .key_wrapper(key)
                .http(Arc::new(ReqwestTransport::new().expect("http")))
                .integration_base_url(IntegrationProvider::Github, server)
                .build()
                .await
                .expect("vault")
        }
    };
    let here = build(SqliteStore::open(&path).expect("sqlite"), key.clone()).await;
    let there = build(SqliteStore::open(&path).expect("sqlite"), key).await;
    here.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    creds(&here, &agent("agent7")).await;
    creds(&here, &agent("agent7")).await; // from the cache
    there
        .unlink(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("unlink elsewhere");
    let err = here
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await
        .expect_err("unlinked elsewhere");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A `tracing` writer that keeps everything written, to grep.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line the vault writes while linking (a refused key too), minting, serving
/// from the cache and unlinking holds no key line and no token.
#[tokio::test]
async fn no_key_or_token_in_the_logs() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = fixture().await;
    let v = &f.vault;
    let wrong = GithubAppLink::new(
        "999999".to_string(),
        INSTALLATION,
        SecretString::from(APP_KEY.to_string()),
    );
    let _ = v.link_github_app(&admin(), "agent7", wrong).await;
    v.link_github_app(&admin(), "agent7", the_link())
        .await
        .expect("link");
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(
            creds(v, &agent("agent7"))
                .await
                .token
                .expose_secret()
                .to_string(),
        );
    }
    v.unlink(&admin(), "agent7", IntegrationProvider::Github)
        .await
        .expect("unlink");
    let _ = v
        .credentials_for(&agent("agent7"), "agent7", IntegrationProvider::Github)
        .await;
    let logged = String::from_utf8_lossy(&log.0.lock().expect("log")).to_string();
    for token in &tokens {
        assert!(!logged.contains(token.as_str()), "a token in the logs");
    }
    for line in APP_KEY
        .lines()
        .filter(|l| l.len() > 20 && !l.starts_with("-----"))
    {
        assert!(!logged.contains(line), "a key line in the logs");
    }
}

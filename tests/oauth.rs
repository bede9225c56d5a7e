//! OAuth against a real authorization server on 127.0.0.1 (tests/common/oauth_server.rs)
//! that rotates refresh tokens (each usable once) and revokes the whole token family when a
//! used one comes back: the code flow with PKCE; state replay, lapse and another user's
//! state refused; the device flow with `authorization_pending` and `slow_down`; exactly one
//! refresh for 64 concurrent resolves across two vault instances (SQLite, PostgreSQL); an
//! omitted refresh token kept; `invalid_grant` → expired; a 5xx tolerated until the token
//! runs out; revocation; the background refresher; no token in errors, logs or audit rows.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::oauth_server::{OAuthServer, CONFIDENTIAL_CLIENT};
use strongroom::audit::Outcome;
use strongroom::model::{LifecycleState, Record};
use strongroom::store::{Batch, Mutation, RecordFilter, Store};
use strongroom::vault::{
    DeviceStart, DeviceStatus, OAuthEvent, OAuthStart, RefreshOutcome, RefresherConfig,
};
use strongroom::{
    CredentialInfo, CredentialRef, ErrorKind, ExposeSecret, LocalKey, Principal, ResolveContext,
    SecretString, SqliteStore, Timestamp, Vault,
};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn alice() -> Principal {
    Principal::parse("runtime:crm:alice").expect("principal")
}

fn alice_user() -> Principal {
    Principal::parse("app_user:crm:alice").expect("principal")
}

fn bob() -> Principal {
    Principal::parse("runtime:crm:bob").expect("principal")
}

/// A vault on `store` whose provider `local` is the test server, with its confidential
/// client registered.
async fn vault(
    server: &OAuthServer,
    store: Arc<dyn Store>,
    key: Arc<LocalKey>,
    dir: &Path,
) -> Vault {
    common::oauth_server::local_vault(server, store, key, dir, Some(REDIRECT.into())).await
}

struct Setup {
    server: OAuthServer,
    vault: Vault,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let server = OAuthServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn Store> = Arc::new(strongroom::MemoryStore::new());
    let key = Arc::new(LocalKey::generate().expect("key"));
    let vault = vault(&server, store, key, dir.path()).await;
    Setup {
        server,
        vault,
        _dir: dir,
    }
}

/// Plays the browser: follows the authorize URL the vault built (the server consents at
/// once and redirects) and returns the `code` and `state` of the redirect.
async fn consent(server: &OAuthServer, authorize_url: &str) -> (String, String) {
    let url = url::Url::parse(authorize_url).expect("authorize url");
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(
        query.get("redirect_uri").map(String::as_str),
        Some(REDIRECT)
    );
    let target = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let reply = server.call("GET", &target, &[], "").await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let location = reply.header("Location").expect("location").to_string();
    let back = url::Url::parse(&location).expect("redirect");
    let params: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    (params["code"].clone(), params["state"].clone())
}

/// A full login as `actor`: the credential `name` in the actor's per-user scope.
async fn login(
    server: &OAuthServer,
    vault: &Vault,
    actor: &Principal,
    name: &str,
) -> CredentialInfo {
    let started = vault
        .oauth_start(actor, OAuthStart::new("local", name))
        .await
        .expect("start");
    let (code, state) = consent(server, &started.authorize_url).await;
    assert_eq!(state, started.state.expose_secret());
    vault
        .oauth_complete(actor, &SecretString::from(state), &SecretString::from(code))
        .await
        .expect("complete")
}

async fn resolve(vault: &Vault, actor: &Principal, name: &str) -> strongroom::Result<String> {
    let ctx = ResolveContext::of(actor).expect("context");
    vault
        .resolve(actor, &CredentialRef::compact(name), &ctx)
        .await
        .map(|r| r.fields["access_token"].expose_secret().to_string())
}

async fn fields(vault: &Vault, id: &strongroom::CredentialId) -> BTreeMap<String, String> {
    vault
        .reveal(&alice_user(), id)
        .await
        .expect("reveal")
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
        .collect()
}

#[tokio::test]
async fn the_code_flow_with_pkce_stores_a_valid_credential_granted_to_the_app() {
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "local_main").await;
    assert_eq!(info.state, LifecycleState::Valid);
    assert_eq!(
        info.scope,
        strongroom::Scope::per_user("alice").expect("scope")
    );
    assert_eq!(info.handler_type, "oauth2");
    assert!(info.expires_at.is_some());
    // Only the tokens are sealed; what the provider said of them is metadata.
    assert_eq!(info.field_names, vec!["access_token", "refresh_token"]);
    assert_eq!(info.metadata["oauth_token_type"], "Bearer");
    assert_eq!(info.metadata["oauth_scope"], "read");
    assert_eq!(info.metadata["oauth_client_id"], CONFIDENTIAL_CLIENT);
    // The runtime resolves it at once: the grant to crm came with the login.
    let token = resolve(&s.vault, &alice(), "local_main")
        .await
        .expect("resolve");
    assert!(s.server.is_access_token_live(&token));
    // The token request carried the verifier and the client's Basic credentials.
    let token_calls = s.server.requests_to("/token");
    assert_eq!(token_calls.len(), 1);
    let form = token_calls[0].form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert!(form["code_verifier"].len() >= 43);
    assert_eq!(form["redirect_uri"], REDIRECT);
    assert!(
        !form.contains_key("client_secret"),
        "basic auth, not the body"
    );
    assert!(token_calls[0]
        .header("Authorization")
        .is_some_and(|h| h.starts_with("Basic ")));
    // Audited: the start, the completion and the grant; the chain holds.
    let rows = s.vault.store().audit_range(1, 1000).await.expect("audit");
    let actions: Vec<&str> = rows.iter().map(|r| r.event.action.as_str()).collect();
    for action in [
        "oauth.start",
        "oauth.complete",
        "grant.add",
        "credential.resolve",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert!(s.vault.audit().verify().await.expect("verify").is_ok());
    // Nothing pending is left behind.
    let pending = s
        .vault
        .store()
        .records(&RecordFilter::kind("oauth.pending"))
        .await
        .expect("records");
    assert!(pending.is_empty());
}

#[tokio::test]
async fn a_state_is_single_use_lapses_and_is_its_users_own() {
    let s = setup().await;
    // Replay: the same state (and code) a second time.
    let started = s
        .vault
        .oauth_start(&alice(), OAuthStart::new("local", "first"))
        .await
        .expect("start");
    let (code, state) = consent(&s.server, &started.authorize_url).await;
    let (state, code) = (SecretString::from(state), SecretString::from(code));
    s.vault
        .oauth_complete(&alice(), &state, &code)
        .await
        .expect("complete");
    let err = s
        .vault
        .oauth_complete(&alice(), &state, &code)
        .await
        .expect_err("replayed");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // Another user's state: refused for bob, still good for alice.
    let started = s
        .vault
        .oauth_start(&alice(), OAuthStart::new("local", "second"))
        .await
        .expect("start");
    let (code, state) = consent(&s.server, &started.authorize_url).await;
    let (state, code) = (SecretString::from(state), SecretString::from(code));
    let err = s
        .vault
        .oauth_complete(&bob(), &state, &code)
        .await
        .expect_err("bob");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    s.vault
        .oauth_complete(&alice(), &state, &code)
        .await
        .expect("alice completes her own");
    // Unknown.
    let err = s
        .vault
        .oauth_complete(
            &alice(),
            &SecretString::from("not-a-state"),
            &SecretString::from("x"),
        )
        .await
        .expect_err("unknown");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Lapsed: the pending record's expiry moved into the past.
    let started = s
        .vault
        .oauth_start(&alice(), OAuthStart::new("local", "third"))
        .await
        .expect("start");
    let (code, state) = consent(&s.server, &started.authorize_url).await;
    let pending: Vec<Record> = s
        .vault
        .store()
        .records(&RecordFilter::kind("oauth.pending"))
        .await
        .expect("records");
    assert_eq!(pending.len(), 1);
    let mut lapsed = pending[0].next_version(Timestamp::now());
    lapsed.sealed = pending[0].sealed.clone();
    lapsed.expires_at = Some(Timestamp(Timestamp::now().0 - 1));
    s.vault
        .store()
        .commit(Batch {
            mutations: vec![Mutation::update_record(lapsed)],
            events: vec![],
        })
        .await
        .expect("lapse it");
    let err = s
        .vault
        .oauth_complete(
            &alice(),
            &SecretString::from(state),
            &SecretString::from(code),
        )
        .await
        .expect_err("lapsed");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Every refusal is audited, without the state.
    let rows = s.vault.store().audit_range(1, 1000).await.expect("audit");
    let refused = rows
        .iter()
        .filter(|r| {
            r.event.action.as_str() == "oauth.complete" && r.event.outcome == Outcome::Denied
        })
        .count();
    assert_eq!(refused, 4);
    assert_eq!(
        s.server.code_reuses(),
        0,
        "a replayed state never reaches the server"
    );
}

#[tokio::test]
async fn the_device_flow_waits_slows_down_and_ends_valid_or_invalid() {
    let s = setup().await;
    s.server.set_device_interval(1);
    s.server.set_slow_down_step(1);
    let flow = s
        .vault
        .oauth_device_start(&alice(), DeviceStart::new("local", "tv"))
        .await
        .expect("start");
    assert_eq!(flow.credential.state, LifecycleState::Pending);
    assert!(flow.verification_uri.starts_with(&s.server.base_url()));
    let id = flow.credential.id.clone();
    let first = s
        .vault
        .oauth_device_poll(&alice(), &id)
        .await
        .expect("poll");
    assert!(
        matches!(first, DeviceStatus::Pending { interval: 1 }),
        "{first:?}"
    );
    // Too soon: the server says slow_down, and the vault adds five seconds.
    let second = s
        .vault
        .oauth_device_poll(&alice(), &id)
        .await
        .expect("poll");
    assert!(
        matches!(second, DeviceStatus::SlowDown { interval: 6 }),
        "{second:?}"
    );
    assert_eq!(s.server.slow_downs(&flow.user_code), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = s
        .vault
        .oauth_device_poll(&alice(), &id)
        .await
        .expect("poll");
    assert!(matches!(third, DeviceStatus::Pending { .. }), "{third:?}");
    assert!(s.server.approve_device(&flow.user_code));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let done = s
        .vault
        .oauth_device_poll(&alice(), &id)
        .await
        .expect("poll");
    let DeviceStatus::Done(info) = done else {
        panic!("not done: {done:?}")
    };
    assert_eq!(info.state, LifecycleState::Valid);
    assert_eq!(s.server.device_polls(&flow.user_code), 4);
    assert_eq!(s.server.slow_downs(&flow.user_code), 1);
    let token = resolve(&s.vault, &alice(), "tv").await.expect("resolve");
    assert!(s.server.is_access_token_live(&token));
    assert!(!fields(&s.vault, &id).await.contains_key("device_code"));

    // A refusal makes the credential invalid; so does a lapsed code.
    let flow = s
        .vault
        .oauth_device_start(&alice(), DeviceStart::new("local", "tv2"))
        .await
        .expect("start");
    assert!(s.server.deny_device(&flow.user_code));
    let denied = s
        .vault
        .oauth_device_wait(&alice(), &flow.credential.id)
        .await
        .expect("wait");
    assert!(matches!(denied, DeviceStatus::Denied), "{denied:?}");
    let info = s
        .vault
        .get(&alice_user(), &flow.credential.id)
        .await
        .expect("get");
    assert_eq!(info.state, LifecycleState::Invalid);
    s.server.set_device_expires_in(1);
    let flow = s
        .vault
        .oauth_device_start(&alice(), DeviceStart::new("local", "tv3"))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lapsed = s
        .vault
        .oauth_device_poll(&alice(), &flow.credential.id)
        .await
        .expect("poll");
    assert!(matches!(lapsed, DeviceStatus::Expired), "{lapsed:?}");
    let info = s
        .vault
        .get(&alice_user(), &flow.credential.id)
        .await
        .expect("get");
    assert_eq!(info.state, LifecycleState::Invalid);
}

/// 64 resolves at once of one token inside the refresh window, half on each of two vault
/// instances sharing `a` and `b`'s store: exactly one refresh reaches the server, and no
/// refresh token is used twice (which would revoke the family).
async fn one_refresh_across_instances(server: &OAuthServer, a: Vault, b: Vault) {
    let resolve_all = |name: &'static str| {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let vault = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                resolve(&vault, &alice(), name).await
            }));
        }
        tasks
    };
    // A token that has run out: every resolve waits for the one refresh, and gets the
    // new token (an expired one is never handed out).
    server.set_expires_in(Some(1));
    let expired = login(server, &a, &alice(), "expired").await;
    // One inside the window but still good for two minutes, for the second half.
    server.set_expires_in(Some(120));
    let due = login(server, &a, &alice(), "due").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.set_expires_in(Some(3600)); // refreshed tokens are not due again
    server.set_refresh_delay(Duration::from_millis(200));
    let mut tokens = std::collections::BTreeSet::new();
    for task in resolve_all("expired") {
        let token = task.await.expect("task").expect("resolve");
        assert!(server.is_access_token_live(&token), "a live token");
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), 1, "everyone got the one new token");
    assert_eq!(server.refresh_count(), 1, "exactly one refresh");
    // A token inside the window but still good: handed out at once, refreshed once in
    // the background.
    let mut handed = std::collections::BTreeSet::new();
    for task in resolve_all("due") {
        let token = task.await.expect("task").expect("resolve");
        assert!(server.is_access_token_live(&token), "a live token");
        handed.insert(token);
    }
    for _ in 0..200 {
        if server.refresh_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.refresh_count(), 2, "exactly one background refresh");
    assert_eq!(
        server.family_revocations(),
        0,
        "no refresh token used twice"
    );
    assert_eq!(server.refresh_reuses(), 0);
    for info in [&expired, &due] {
        let now = a.get(&alice_user(), &info.id).await.expect("get");
        assert_eq!(now.version, 2, "one new version");
        assert!(now.expires_at > info.expires_at);
    }
    let rows = a.store().audit_range(1, 100_000).await.expect("audit");
    let refreshes = rows
        .iter()
        .filter(|r| {
            r.event.action.as_str() == "credential.refresh" && r.event.outcome == Outcome::Success
        })
        .count();
    assert_eq!(refreshes, 2);
    assert!(a.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_resolves_on_two_sqlite_instances_refresh_once() {
    let server = OAuthServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let key = Arc::new(LocalKey::generate().expect("key"));
    let path = dir.path().join("vault.db");
    let a = vault(
        &server,
        Arc::new(SqliteStore::open(&path).expect("open")),
        key.clone(),
        dir.path(),
    )
    .await;
    let b = vault(
        &server,
        Arc::new(SqliteStore::open(&path).expect("open")),
        key,
        dir.path(),
    )
    .await;
    one_refresh_across_instances(&server, a, b).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_resolves_on_two_postgres_instances_refresh_once() {
    use strongroom::{PostgresOptions, PostgresStore};
    let url = std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let schema = format!("t_oauth_{}", hex::encode(bytes));
    let open = || async {
        PostgresStore::connect_with(
            &url,
            PostgresOptions::default().schema(&schema).pool_size(8),
        )
        .await
        .expect("PostgreSQL must be running for this test")
    };
    let server = OAuthServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let key = Arc::new(LocalKey::generate().expect("key"));
    let a = vault(&server, Arc::new(open().await), key.clone(), dir.path()).await;
    let b = vault(&server, Arc::new(open().await), key, dir.path()).await;
    one_refresh_across_instances(&server, a, b).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

#[tokio::test]
async fn a_refresh_that_omits_the_refresh_token_keeps_the_old_one() {
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "keep").await;
    let before = fields(&s.vault, &info.id).await;
    s.server.set_omit_refresh_token(true);
    let outcome = s
        .vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    assert!(
        matches!(outcome, RefreshOutcome::Refreshed { version: 2, .. }),
        "{outcome:?}"
    );
    let after = fields(&s.vault, &info.id).await;
    assert_ne!(after["access_token"], before["access_token"]);
    assert_eq!(after["refresh_token"], before["refresh_token"], "kept");
    // And it still works.
    let outcome = s
        .vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    assert!(
        matches!(outcome, RefreshOutcome::Refreshed { version: 3, .. }),
        "{outcome:?}"
    );
    assert_eq!(s.server.family_revocations(), 0);
}

#[tokio::test]
async fn invalid_grant_expires_the_credential() {
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "dead").await;
    let mut events = s.vault.oauth_events();
    s.server.invalidate_refresh_tokens();
    let outcome = s
        .vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    assert_eq!(
        outcome,
        RefreshOutcome::Expired {
            reason: "invalid_grant".into()
        }
    );
    let now = s.vault.get(&alice_user(), &info.id).await.expect("get");
    assert_eq!(now.state, LifecycleState::Expired);
    let err = resolve(&s.vault, &alice(), "dead")
        .await
        .expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::Unusable, "{err}");
    assert_eq!(
        events.recv().await.expect("event"),
        OAuthEvent::Expired {
            id: info.id.clone()
        }
    );
}

#[tokio::test]
async fn server_errors_keep_the_credential_usable_until_it_runs_out() {
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "flaky").await;
    s.server.fail_next(1, 503);
    let outcome = s
        .vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    assert!(
        matches!(outcome, RefreshOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    let token = resolve(&s.vault, &alice(), "flaky")
        .await
        .expect("still usable");
    assert!(s.server.is_access_token_live(&token));
    // A token that runs out while the provider fails is expired, not handed out.
    s.server.set_expires_in(Some(1));
    let short = login(&s.server, &s.vault, &alice(), "short").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.server.fail_next(5, 503);
    let err = resolve(&s.vault, &alice(), "short")
        .await
        .expect_err("ran out");
    assert_eq!(err.kind(), ErrorKind::Unusable, "{err}");
    let now = s.vault.get(&alice_user(), &short.id).await.expect("get");
    assert_eq!(now.state, LifecycleState::Expired);
}

#[tokio::test]
async fn revocation_sends_the_refresh_token_first_and_the_credential_is_invalid_at_once() {
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "gone").await;
    let tokens = fields(&s.vault, &info.id).await;
    let revoked = s
        .vault
        .oauth_revoke(&alice_user(), &info.id)
        .await
        .expect("revoke");
    assert_eq!(revoked.state, LifecycleState::Invalid);
    let sent = s.server.revocations();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].token, tokens["refresh_token"]);
    assert_eq!(sent[0].hint.as_deref(), Some("refresh_token"));
    assert_eq!(sent[1].token, tokens["access_token"]);
    assert_eq!(sent[1].hint.as_deref(), Some("access_token"));
    assert!(sent.iter().all(|r| r.client_id == CONFIDENTIAL_CLIENT));
    assert!(!s.server.is_refresh_token_live(&tokens["refresh_token"]));
    // Deleting an OAuth credential revokes too; a provider that fails does not stop it.
    let other = login(&s.server, &s.vault, &alice(), "deleted").await;
    s.vault
        .delete(&alice_user(), &other.id, None)
        .await
        .expect("delete");
    assert_eq!(s.server.revocations().len(), 4);
    let rows = s.vault.store().audit_range(1, 1000).await.expect("audit");
    let revokes: Vec<_> = rows
        .iter()
        .filter(|r| r.event.action.as_str() == "credential.revoke")
        .collect();
    assert_eq!(revokes.len(), 2);
    assert!(revokes.iter().all(|r| r.event.outcome == Outcome::Success));
}

#[tokio::test]
async fn the_background_refresher_renews_due_tokens_and_stops() {
    let s = setup().await;
    s.server.set_expires_in(Some(120));
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            login(&s.server, &s.vault, &alice(), &format!("bg{i}"))
                .await
                .id,
        );
    }
    s.server.set_expires_in(Some(3600));
    let mut events = s.vault.oauth_events();
    let handle = s
        .vault
        .start_refresher(RefresherConfig::default().interval(Duration::from_millis(100)));
    let mut refreshed = Vec::new();
    while refreshed.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(OAuthEvent::Refreshed { id, .. })) => refreshed.push(id),
            Ok(Ok(_)) => {}
            other => panic!("no refresh event: {other:?}"),
        }
    }
    handle.stop().await;
    refreshed.sort();
    ids.sort();
    assert_eq!(refreshed, ids);
    assert_eq!(s.server.refresh_count(), 3);
}

#[tokio::test]
async fn a_token_without_expiry_is_reported() {
    let s = setup().await;
    s.server.set_expires_in(None);
    let mut events = s.vault.oauth_events();
    let info = login(&s.server, &s.vault, &alice(), "forever").await;
    assert_eq!(info.expires_at, None);
    assert_eq!(
        events.recv().await.expect("event"),
        OAuthEvent::NoExpiry {
            id: info.id.clone()
        }
    );
    let rows = s.vault.store().audit_range(1, 1000).await.expect("audit");
    assert!(rows
        .iter()
        .any(|r| r.event.action.as_str() == "oauth.complete"
            && r.event.details.get("expiry").map(String::as_str) == Some("not reported")));
}

/// A `tracing` writer that keeps everything written, to grep.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_reaches_errors_logs_or_audit_rows() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let s = setup().await;
    let mut seen: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let info = login(&s.server, &s.vault, &alice(), "canary").await;
    seen.extend(fields(&s.vault, &info.id).await.into_values());
    s.server.set_omit_refresh_token(false);
    s.vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    seen.extend(fields(&s.vault, &info.id).await.into_values());
    s.server.fail_next(1, 503);
    let outcome = s
        .vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    errors.push(format!("{outcome:?}"));
    s.server.invalidate_refresh_tokens();
    s.vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    if let Err(e) = resolve(&s.vault, &alice(), "canary").await {
        errors.push(format!("{e} {e:?}"));
    }
    let started = s
        .vault
        .oauth_start(&alice(), OAuthStart::new("local", "canary2"))
        .await
        .expect("start");
    let (code, state) = consent(&s.server, &started.authorize_url).await;
    errors.push(format!("{started:?}"));
    seen.push(code.clone());
    seen.push(state.clone());
    s.server.fail_next(1, 400);
    if let Err(e) = s
        .vault
        .oauth_complete(
            &alice(),
            &SecretString::from(state),
            &SecretString::from(code),
        )
        .await
    {
        errors.push(format!("{e} {e:?}"));
    }
    s.vault
        .oauth_revoke(&alice_user(), &info.id)
        .await
        .expect("revoke");
    let rows = s.vault.store().audit_range(1, 10_000).await.expect("audit");
    let audit = format!("{rows:?}");
    let logged = String::from_utf8_lossy(&log.0.lock().expect("log")).to_string();
    assert!(!logged.is_empty(), "the vault logged something");
    for value in seen.iter().filter(|v| v.len() >= 16) {
        assert!(!audit.contains(value.as_str()), "a token in the audit rows");
        assert!(!logged.contains(value.as_str()), "a token in the logs");
        for e in &errors {
            assert!(!e.contains(value.as_str()), "a token in an error: {e}");
        }
    }
}

/// The stdio supervisor with the vault as its token source: a real child sees the access
/// token in its environment, and after a refresh a new child sees the new one.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_restarts_the_stdio_mcp_server_with_the_new_token() {
    use strongroom::mcp::{StdioServerConfig, StdioSupervisor, VaultTokenSource};
    let s = setup().await;
    let info = login(&s.server, &s.vault, &alice(), "mcp_token").await;
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("seen");
    let source = VaultTokenSource::new(
        &s.vault,
        &alice(),
        CredentialRef::compact("mcp_token"),
        "access_token",
    )
    .await
    .expect("source");
    let config = StdioServerConfig {
        args: vec![
            "-c".into(),
            format!(
                "printf '%s\\n' \"$MCP_TOKEN\" >> '{}'; cat >/dev/null",
                out.display()
            ),
        ],
        stop_timeout: Duration::from_millis(1000),
        ..StdioServerConfig::new("/bin/sh")
    };
    let handle = StdioSupervisor::start(config, Arc::new(source))
        .await
        .expect("start");
    let read_lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let wait_lines = |n: usize| async move {
        for _ in 0..250 {
            if read_lines().len() >= n {
                return read_lines();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the child did not start {n} times: {:?}", read_lines());
    };
    let first = wait_lines(1).await;
    let before = fields(&s.vault, &info.id).await;
    assert_eq!(first[0], before["access_token"]);
    s.vault
        .oauth_refresh(&alice_user(), &info.id)
        .await
        .expect("refresh");
    let lines = wait_lines(2).await;
    let after = fields(&s.vault, &info.id).await;
    assert_ne!(after["access_token"], before["access_token"]);
    assert_eq!(
        lines[1], after["access_token"],
        "the new child has the new token"
    );
    assert_eq!(handle.restarts(), 1);
    handle.stop().await.expect("stop");
}

#[tokio::test]
async fn a_refresher_pass_sweeps_lapsed_logins() {
    let s = setup().await;
    for name in ["a", "b"] {
        s.vault
            .oauth_start(&alice(), OAuthStart::new("local", name))
            .await
            .expect("start");
    }
    let pending = s
        .vault
        .store()
        .records(&RecordFilter::kind("oauth.pending"))
        .await
        .expect("records");
    assert_eq!(pending.len(), 2);
    // The first lapses; the second is still within its 10 minutes.
    let mut lapsed = pending[0].next_version(Timestamp::now());
    lapsed.expires_at = Some(Timestamp(Timestamp::now().0 - 1));
    s.vault
        .store()
        .commit(Batch {
            mutations: vec![Mutation::update_record(lapsed)],
            events: vec![],
        })
        .await
        .expect("lapse it");
    let pass = s
        .vault
        .refresh_due_now(&RefresherConfig::default())
        .await
        .expect("pass");
    assert_eq!(pass.swept, 1);
    let left = s
        .vault
        .store()
        .records(&RecordFilter::kind("oauth.pending"))
        .await
        .expect("records");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, pending[1].key);
}

/// Two completions racing on one state: one sends the code, the other is refused before it
/// reaches the provider (a code sent twice would make the provider revoke the tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_completions_send_the_code_once() {
    let s = setup().await;
    s.server.set_refresh_delay(Duration::ZERO);
    for round in 0..8 {
        let started = s
            .vault
            .oauth_start(&alice(), OAuthStart::new("local", format!("race{round}")))
            .await
            .expect("start");
        let (code, state) = consent(&s.server, &started.authorize_url).await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let vault = s.vault.clone();
            let (code, state) = (code.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                vault
                    .oauth_complete(
                        &alice(),
                        &SecretString::from(state),
                        &SecretString::from(code),
                    )
                    .await
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            if let Ok(info) = task.await.expect("task") {
                won.push(info);
            }
        }
        assert_eq!(won.len(), 1, "exactly one completion");
        let token = resolve(&s.vault, &alice(), &format!("race{round}"))
            .await
            .expect("resolve");
        assert!(s.server.is_access_token_live(&token));
    }
    assert_eq!(s.server.code_reuses(), 0, "no code was sent twice");
}

/// A provider whose tokens live no longer than the refresh window: resolves keep working
/// and do not ask it again and again.
#[tokio::test]
async fn short_lived_tokens_do_not_make_resolves_loop() {
    let s = setup().await;
    s.server.set_expires_in(Some(60)); // always inside the 10-minute window
    login(&s.server, &s.vault, &alice(), "short_lived").await;
    for _ in 0..20 {
        let token = resolve(&s.vault, &alice(), "short_lived")
            .await
            .expect("resolve");
        assert!(s.server.is_access_token_live(&token));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.server.refresh_count() <= 3,
        "{} refreshes for 20 resolves",
        s.server.refresh_count()
    );
}

/// A refresh never lifts a revocation or an admin's disable.
#[tokio::test]
async fn a_refresh_does_not_revive_a_revoked_or_disabled_credential() {
    let s = setup().await;
    let revoked = login(&s.server, &s.vault, &alice(), "revoked").await;
    s.vault
        .oauth_revoke(&alice_user(), &revoked.id)
        .await
        .expect("revoke");
    let err = s
        .vault
        .oauth_refresh(&alice_user(), &revoked.id)
        .await
        .expect_err("revoked");
    assert_eq!(err.kind(), ErrorKind::Unusable, "{err}");
    let disabled = login(&s.server, &s.vault, &alice(), "disabled").await;
    let admin = Principal::parse("system_admin:root").expect("admin");
    s.vault
        .set_state(
            &admin,
            &disabled.id,
            disabled.version,
            LifecycleState::Invalid,
            "suspicious",
        )
        .await
        .expect("disable");
    let err = s
        .vault
        .oauth_refresh(&alice_user(), &disabled.id)
        .await
        .expect_err("disabled");
    assert_eq!(err.kind(), ErrorKind::Unusable, "{err}");
    let now = s.vault.get(&alice_user(), &disabled.id).await.expect("get");
    assert_eq!(now.state, LifecycleState::Invalid);
    assert_eq!(s.server.refresh_count(), 0);
}

/// Logging in again under the same name replaces the tokens (a new version of the same
/// credential); a name held by something else is refused before any code is spent.
#[tokio::test]
async fn a_login_again_replaces_the_tokens_and_a_taken_name_is_refused_early() {
    let s = setup().await;
    let first = login(&s.server, &s.vault, &alice(), "again").await;
    let second = login(&s.server, &s.vault, &alice(), "again").await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.version, first.version + 1);
    let token = resolve(&s.vault, &alice(), "again").await.expect("resolve");
    assert!(s.server.is_access_token_live(&token));
    let mut key = BTreeMap::new();
    key.insert(
        "api_key".to_string(),
        SecretString::from("sk-taken-0123456789"),
    );
    s.vault
        .create(
            &alice_user(),
            strongroom::NewCredential::new(
                "taken",
                strongroom::Scope::per_user("alice").expect("scope"),
                "openai",
                "api_key",
                key,
            ),
        )
        .await
        .expect("create");
    let err = s
        .vault
        .oauth_start(&alice(), OAuthStart::new("local", "taken"))
        .await
        .expect_err("taken");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(s.server.token_requests(), 2, "no code was spent on it");
}

//! The GitLab credential provider's protocol against a local HTTP/1.1 server on 127.0.0.1
//! that speaks the documented GitLab REST API v4 endpoints (group service accounts and
//! their tokens, project access tokens, the personal access token revoke endpoint) with
//! their documented status codes and bodies, requires `PRIVATE-TOKEN: admin-token`, and
//! records every request (method, path, headers, JSON body).

#[path = "common/gitlab_server.rs"]
mod gitlab_server;

use gitlab_server::*;
use serde_json::json;
use strongroom::integrations::gitlab_provider::{
    create_project_access_token, create_service_account, create_service_account_token,
    delete_service_account, find_project_token, find_service_account, revoke_token, rotate_token,
    token_name, GitlabProviderConfig, Removal, TokenRef,
};
use strongroom::transport::ReqwestTransport;
use strongroom::{ErrorKind, ExposeSecret, SecretString};
use time::{Date, Month};
use tokio::net::TcpListener;

fn transport() -> ReqwestTransport {
    ReqwestTransport::new().expect("client")
}

fn admin() -> SecretString {
    SecretString::from(ADMIN.to_string())
}

fn date(y: i32, m: Month, d: u8) -> Date {
    Date::from_calendar_date(y, m, d).expect("date")
}

fn assert_admin_headers(seen: &Seen) {
    assert_eq!(
        seen.headers.get("private-token").map(String::as_str),
        Some(ADMIN)
    );
    assert_eq!(
        seen.headers.get("accept").map(String::as_str),
        Some("application/json")
    );
    assert!(!seen.headers.contains_key("authorization"), "{seen:?}");
    if seen.body.is_some() {
        assert_eq!(
            seen.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}

#[tokio::test]
async fn service_account_then_its_token_with_the_documented_requests() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let username = cfg.service_account_username("agent-7").expect("username");

    let account = create_service_account(&http, &cfg, &admin(), "agent-7")
        .await
        .expect("service account");
    assert_eq!(account.username, username);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/v4/groups/acme/service_accounts");
    assert_admin_headers(&seen[0]);
    assert_eq!(
        seen[0].body,
        Some(json!({"name": "strongroom agent agent-7", "username": username}))
    );

    let name = token_name("agent-7").expect("token name");
    let expires = cfg
        .expiry_date(date(2026, Month::January, 1))
        .expect("expiry");
    assert_eq!(expires, date(2026, Month::January, 31));
    let token = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        &name,
        cfg.scopes(),
        expires,
    )
    .await
    .expect("token");
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(
        seen[1].path,
        format!(
            "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens",
            account.id
        )
    );
    assert_admin_headers(&seen[1]);
    assert_eq!(
        seen[1].body,
        Some(json!({
            "name": name,
            "scopes": ["read_api", "read_repository"],
            "expires_at": "2026-01-31",
        }))
    );
    let stored = api.token(token.id).expect("stored token");
    assert_eq!(token.token.expose_secret(), stored.token);
    assert_eq!(token.user_id, Some(account.id));
    assert_eq!(token.name, name);
    assert_eq!(token.expires_at, expires);
    assert!(!format!("{token:?}").contains(&stored.token));
}

#[tokio::test]
async fn project_access_token_with_the_documented_request() {
    let api = MockGitlab::start().await;
    let cfg = api.project_cfg();
    let http = transport();
    let expires = cfg
        .expiry_date(date(2026, Month::January, 1))
        .expect("expiry");
    let token = create_project_access_token(
        &http,
        &cfg,
        &admin(),
        "strongroom agent agent-9",
        cfg.scopes(),
        30,
        expires,
    )
    .await
    .expect("token");
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/v4/projects/acme%2Fapi/access_tokens");
    assert_admin_headers(&seen[0]);
    assert_eq!(
        seen[0].body,
        Some(json!({
            "name": "strongroom agent agent-9",
            "scopes": ["api"],
            "access_level": 30,
            "expires_at": "2026-04-01",
        }))
    );
    let stored = api.token(token.id).expect("stored");
    assert_eq!(token.token.expose_secret(), stored.token);
    assert_eq!(token.expires_at, date(2026, Month::April, 1));
    assert!(token.user_id.is_some());
}

#[tokio::test]
async fn a_later_run_finds_what_a_crashed_run_created() {
    let api = MockGitlab::start().await;
    // 150 other accounts: the one we look for is on the second page.
    api.add_accounts(150);
    let cfg = api.service_account_cfg();
    let http = transport();
    let username = cfg.service_account_username("agent-crash").expect("name");
    assert_eq!(
        find_service_account(&http, &cfg, &admin(), &username)
            .await
            .expect("find before"),
        None
    );

    // The run that crashed: the account was created remotely, its answer lost.
    let created = create_service_account(&http, &cfg, &admin(), "agent-crash")
        .await
        .expect("create");
    drop(created.clone());
    // Creating it again is refused with GitLab's message, naming no secret.
    let again = create_service_account(&http, &cfg, &admin(), "agent-crash")
        .await
        .expect_err("taken");
    assert_eq!(again.kind(), ErrorKind::InvalidInput);
    assert!(
        again
            .to_string()
            .contains("Username has already been taken"),
        "{again}"
    );

    api.clear_seen();
    let found = find_service_account(&http, &cfg, &admin(), &username.to_uppercase())
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found, created);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "two pages: {seen:?}");
    assert_eq!(
        seen[0].path,
        "/api/v4/groups/acme/service_accounts?per_page=100&page=1"
    );
    assert_eq!(
        seen[1].path,
        "/api/v4/groups/acme/service_accounts?per_page=100&page=2"
    );
    seen.iter().for_each(assert_admin_headers);

    // Project mode: the crashed run's token is found by name (and gone once revoked).
    let pcfg = api.project_cfg();
    let name = token_name("agent-crash").expect("name");
    let expires = date(2026, Month::March, 1);
    let lost =
        create_project_access_token(&http, &pcfg, &admin(), &name, pcfg.scopes(), 30, expires)
            .await
            .expect("create");
    let found = find_project_token(&http, &pcfg, &admin(), &name)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.id, lost.id);
    assert_eq!(found.user_id, lost.user_id);
    assert!(found.active && !found.revoked);
    assert_eq!(found.expires_at, Some(expires));
    assert_eq!(found.access_level, Some(30));
    assert_eq!(
        find_project_token(&http, &pcfg, &admin(), "someone else")
            .await
            .expect("find"),
        None
    );
    let gone = revoke_token(
        &http,
        &pcfg,
        &admin(),
        &TokenRef::ProjectAccessToken { token_id: lost.id },
    )
    .await
    .expect("revoke");
    assert_eq!(gone, Removal::Removed);
    assert_eq!(
        find_project_token(&http, &pcfg, &admin(), &name)
            .await
            .expect("find"),
        None
    );
}

#[tokio::test]
async fn revoke_and_delete_count_404_as_already_gone() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let account = create_service_account(&http, &cfg, &admin(), "agent-bye")
        .await
        .expect("create");
    let token = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        "t",
        cfg.scopes(),
        date(2026, Month::May, 1),
    )
    .await
    .expect("token");
    let handle = TokenRef::ServiceAccount {
        user_id: account.id,
        token_id: token.id,
    };

    api.clear_seen();
    assert_eq!(
        revoke_token(&http, &cfg, &admin(), &handle)
            .await
            .expect("revoke"),
        Removal::Removed
    );
    assert!(api.token(token.id).expect("token").revoked);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(
        seen[0].path,
        format!(
            "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens/{}",
            account.id, token.id
        )
    );
    assert_admin_headers(&seen[0]);
    assert_eq!(seen[0].body, None);

    // Again: the group endpoint answers 404, so does the instance-wide one: already gone.
    api.clear_seen();
    assert_eq!(
        revoke_token(&http, &cfg, &admin(), &handle)
            .await
            .expect("revoke again"),
        Removal::AlreadyGone
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].path,
        format!("/api/v4/personal_access_tokens/{}", token.id)
    );

    // An older GitLab without the group revoke endpoint: the fallback revokes it.
    let older = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        "t2",
        cfg.scopes(),
        date(2026, Month::May, 1),
    )
    .await
    .expect("token");
    api.fault(
        "DELETE",
        &format!(
            "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens/{}",
            account.id, older.id
        ),
        404,
        r#"{"error":"404 Not Found"}"#,
    );
    assert_eq!(
        revoke_token(
            &http,
            &cfg,
            &admin(),
            &TokenRef::ServiceAccount {
                user_id: account.id,
                token_id: older.id
            }
        )
        .await
        .expect("fallback"),
        Removal::Removed
    );
    assert!(api.token(older.id).expect("token").revoked);

    api.clear_seen();
    assert_eq!(
        delete_service_account(&http, &cfg, &admin(), account.id)
            .await
            .expect("delete"),
        Removal::Removed
    );
    assert!(api.accounts().iter().all(|a| a.id != account.id));
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(
        seen[0].path,
        format!("/api/v4/groups/acme/service_accounts/{}", account.id)
    );
    assert_admin_headers(&seen[0]);
    assert_eq!(
        delete_service_account(&http, &cfg, &admin(), account.id)
            .await
            .expect("delete again"),
        Removal::AlreadyGone
    );

    // Project tokens too.
    let pcfg = api.project_cfg();
    let p = create_project_access_token(
        &http,
        &pcfg,
        &admin(),
        "p",
        pcfg.scopes(),
        20,
        date(2026, Month::May, 1),
    )
    .await
    .expect("project token");
    let handle = TokenRef::ProjectAccessToken { token_id: p.id };
    api.clear_seen();
    assert_eq!(
        revoke_token(&http, &pcfg, &admin(), &handle)
            .await
            .expect("revoke"),
        Removal::Removed
    );
    assert_eq!(
        api.seen()[0].path,
        format!("/api/v4/projects/acme%2Fapi/access_tokens/{}", p.id)
    );
    assert_eq!(
        revoke_token(&http, &pcfg, &admin(), &handle)
            .await
            .expect("revoke again"),
        Removal::AlreadyGone
    );
}

#[tokio::test]
async fn a_500_on_delete_is_a_failure_the_caller_decides_about() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let account = create_service_account(&http, &cfg, &admin(), "agent-stuck")
        .await
        .expect("create");
    api.fault(
        "DELETE",
        &format!("/api/v4/groups/acme/service_accounts/{}", account.id),
        500,
        r#"{"message":"500 Internal Server Error"}"#,
    );
    let e = delete_service_account(&http, &cfg, &admin(), account.id)
        .await
        .expect_err("500");
    assert_eq!(e.kind(), ErrorKind::Transport);
    let text = e.to_string();
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains("500"), "{text}");
    assert!(text.contains("retry"), "{text}");
    assert!(api.accounts().iter().any(|a| a.id == account.id));
    // The caller retries later, and then it works.
    assert_eq!(
        delete_service_account(&http, &cfg, &admin(), account.id)
            .await
            .expect("retry"),
        Removal::Removed
    );

    // A closed port is unreachable too.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let down = GitlabProviderConfig {
        base_url: format!("http://127.0.0.1:{port}/api/v4"),
        ..cfg
    };
    let e = delete_service_account(&http, &down, &admin(), 1)
        .await
        .expect_err("down");
    assert_eq!(e.kind(), ErrorKind::Transport);
}

#[tokio::test]
async fn rotation_uses_the_admin_side_endpoints() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let account = create_service_account(&http, &cfg, &admin(), "agent-rot")
        .await
        .expect("create");
    let old = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        "rot",
        cfg.scopes(),
        date(2026, Month::January, 31),
    )
    .await
    .expect("token");
    api.clear_seen();
    let new = rotate_token(
        &http,
        &cfg,
        &admin(),
        &TokenRef::ServiceAccount {
            user_id: account.id,
            token_id: old.id,
        },
        date(2026, Month::March, 2),
    )
    .await
    .expect("rotate");
    assert_ne!(new.id, old.id);
    assert_ne!(new.token.expose_secret(), old.token.expose_secret());
    assert_eq!(new.expires_at, date(2026, Month::March, 2));
    assert_eq!(new.name, "rot");
    assert!(api.token(old.id).expect("old").revoked);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path,
        format!(
            "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens/{}/rotate",
            account.id, old.id
        )
    );
    assert_admin_headers(&seen[0]);
    assert_eq!(seen[0].body, Some(json!({"expires_at": "2026-03-02"})));

    // Rotating the revoked one again is refused, with GitLab's message.
    let e = rotate_token(
        &http,
        &cfg,
        &admin(),
        &TokenRef::ServiceAccount {
            user_id: account.id,
            token_id: old.id,
        },
        date(2026, Month::March, 2),
    )
    .await
    .expect_err("revoked");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("Token already revoked"), "{e}");

    // A project access token.
    let pcfg = api.project_cfg();
    let p = create_project_access_token(
        &http,
        &pcfg,
        &admin(),
        "p",
        pcfg.scopes(),
        40,
        date(2026, Month::January, 31),
    )
    .await
    .expect("project token");
    api.clear_seen();
    let rotated = rotate_token(
        &http,
        &pcfg,
        &admin(),
        &TokenRef::ProjectAccessToken { token_id: p.id },
        date(2026, Month::February, 28),
    )
    .await
    .expect("rotate");
    assert_ne!(rotated.id, p.id);
    assert_eq!(rotated.expires_at, date(2026, Month::February, 28));
    let seen = api.seen();
    assert_eq!(
        seen[0].path,
        format!("/api/v4/projects/acme%2Fapi/access_tokens/{}/rotate", p.id)
    );
    assert_eq!(seen[0].body, Some(json!({"expires_at": "2026-02-28"})));
}

#[tokio::test]
async fn a_wrong_admin_token_is_a_clear_configuration_error() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let wrong = SecretString::from("glpat-WRONGwrongWRONG0987654321".to_string());
    let e = create_service_account(&http, &cfg, &wrong, "agent-1")
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config);
    let text = e.to_string();
    assert!(
        text.contains("rejected the provider's admin token"),
        "{text}"
    );
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("group `acme`"), "{text}");
    assert!(!text.contains("WRONG"), "{text}");
    assert!(!format!("{e:?}").contains("WRONG"));
    let seen = api.seen();
    assert_eq!(
        seen[0].headers.get("private-token").map(String::as_str),
        Some("glpat-WRONGwrongWRONG0987654321")
    );
    // Nothing was created.
    assert!(api.accounts().is_empty());

    // Deprovisioning with a wrong token is an error too, never "already gone".
    let e = delete_service_account(&http, &cfg, &wrong, 5)
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn no_token_in_errors_or_debug() {
    let api = MockGitlab::start().await;
    let cfg = api.service_account_cfg();
    let http = transport();
    let account = create_service_account(&http, &cfg, &admin(), "agent-canary")
        .await
        .expect("create");
    let path = format!(
        "/api/v4/groups/acme/service_accounts/{}/personal_access_tokens",
        account.id
    );
    // GitLab's message echoes the admin token and a token-shaped canary.
    api.fault(
        "POST",
        &path,
        400,
        &json!({"message": {"name": [format!("{CANARY} is invalid for {ADMIN}")]}}).to_string(),
    );
    let e = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        "t",
        cfg.scopes(),
        date(2026, Month::May, 1),
    )
    .await
    .expect_err("400");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(!shown.contains(ADMIN), "{shown}");
        assert!(shown.contains("is invalid"), "{shown}");
    }

    // 404 and 500 bodies with the canary.
    for status in [404, 500, 403] {
        api.fault(
            "POST",
            &path,
            status,
            &json!({"message": CANARY}).to_string(),
        );
        let e = create_service_account_token(
            &http,
            &cfg,
            &admin(),
            account.id,
            "t",
            cfg.scopes(),
            date(2026, Month::May, 1),
        )
        .await
        .expect_err("error");
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains("CANARY"), "{status}: {shown}");
            assert!(!shown.contains(ADMIN), "{status}: {shown}");
        }
    }

    // A successful answer: the issued token shows in no Debug output.
    let token = create_service_account_token(
        &http,
        &cfg,
        &admin(),
        account.id,
        "t",
        cfg.scopes(),
        date(2026, Month::May, 1),
    )
    .await
    .expect("token");
    let secret = token.token.expose_secret().to_string();
    assert!(secret.starts_with("glpat-"));
    let shown = format!("{token:?} {account:?} {cfg:?}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(!shown.contains(ADMIN), "{shown}");
}

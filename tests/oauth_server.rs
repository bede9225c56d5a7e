//! The test suite's OAuth 2.0 authorization server (tests/common/oauth_server.rs), driven
//! with plain HTTP: the code flow with PKCE, refresh rotation and reuse detection, the device
//! flow, revocation and the failure knobs.

mod common;

use std::time::{Duration, Instant};

use common::oauth_server::{
    basic_auth, s256, HttpReply, OAuthServer, Revocation, CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET,
    DEVICE_GRANT, PUBLIC_CLIENT,
};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K9aF0NpgANOO_FE-Kv9oA0oSxG3x0Gt";

fn basic() -> String {
    basic_auth(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET)
}

/// A code grant for the confidential client (Basic auth).
async fn redeem(server: &OAuthServer, code: &str, verifier: &str) -> HttpReply {
    let auth = basic();
    server
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
            &[("Authorization", &auth)],
        )
        .await
}

/// A refresh grant for the confidential client (credentials in the body).
async fn refresh(server: &OAuthServer, refresh_token: &str) -> HttpReply {
    server
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", CONFIDENTIAL_CLIENT),
                ("client_secret", CONFIDENTIAL_SECRET),
            ],
            &[],
        )
        .await
}

async fn userinfo(server: &OAuthServer, access: &str) -> u16 {
    let auth = format!("Bearer {access}");
    server
        .call("GET", "/userinfo", &[("Authorization", &auth)], "")
        .await
        .status
}

/// Access and refresh tokens from a fresh code grant.
async fn tokens(server: &OAuthServer) -> (String, String) {
    let code = server.authorize(CONFIDENTIAL_CLIENT, REDIRECT, "read", Some(&s256(VERIFIER)));
    let r = redeem(server, &code, VERIFIER).await;
    assert_eq!(r.status, 200, "{}", r.body);
    (
        r.field("access_token").expect("access_token"),
        r.field("refresh_token").expect("refresh_token"),
    )
}

#[tokio::test]
async fn code_flow_with_pkce_refuses_a_wrong_verifier_and_a_reused_code() {
    let server = OAuthServer::start().await;
    let code = server.authorize(CONFIDENTIAL_CLIENT, REDIRECT, "read", Some(&s256(VERIFIER)));

    let wrong = redeem(&server, &code, &"x".repeat(43)).await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.error().as_deref(), Some("invalid_grant"));

    let auth = basic();
    let other_redirect = server
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/other"),
                ("code_verifier", VERIFIER),
            ],
            &[("Authorization", &auth)],
        )
        .await;
    assert_eq!(other_redirect.error().as_deref(), Some("invalid_grant"));

    let ok = redeem(&server, &code, VERIFIER).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let body = ok.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let access = ok.field("access_token").expect("access");
    let refresh_token = ok.field("refresh_token").expect("refresh");
    assert_eq!(userinfo(&server, &access).await, 200);

    // The code again: refused, and everything issued from it is revoked.
    let again = redeem(&server, &code, VERIFIER).await;
    assert_eq!(again.error().as_deref(), Some("invalid_grant"));
    assert_eq!(server.code_reuses(), 1);
    assert_eq!(userinfo(&server, &access).await, 401);
    assert!(!server.is_access_token_live(&access));
    assert!(!server.is_refresh_token_live(&refresh_token));
    assert_eq!(
        refresh(&server, &refresh_token).await.error().as_deref(),
        Some("invalid_grant")
    );
}

#[tokio::test]
async fn client_authentication() {
    let server = OAuthServer::start().await;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "rt_unknown"),
    ];
    // Wrong secret, through Basic and through the body.
    let wrong = basic_auth(CONFIDENTIAL_CLIENT, "nope");
    let r = server
        .post_form("/token", &form, &[("Authorization", &wrong)])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error().as_deref(), Some("invalid_client"));
    assert!(r.header("www-authenticate").is_some());
    let r = server
        .post_form(
            "/token",
            &[
                form[0],
                form[1],
                ("client_id", CONFIDENTIAL_CLIENT),
                ("client_secret", "nope"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, 401);
    // No secret at all for the confidential client.
    let r = server
        .post_form(
            "/token",
            &[form[0], form[1], ("client_id", CONFIDENTIAL_CLIENT)],
            &[],
        )
        .await;
    assert_eq!(r.status, 401);
    // A public client sending a secret.
    let r = server
        .post_form(
            "/token",
            &[
                form[0],
                form[1],
                ("client_id", PUBLIC_CLIENT),
                ("client_secret", "anything"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.error().as_deref(), Some("invalid_client"));
    // Authenticated, but the token is unknown.
    let r = server
        .post_form(
            "/token",
            &[form[0], form[1], ("client_id", PUBLIC_CLIENT)],
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error().as_deref(), Some("invalid_grant"));
    // A JSON body works too.
    let json = serde_json::json!({
        "grant_type": "refresh_token", "refresh_token": "rt_unknown", "client_id": PUBLIC_CLIENT,
    })
    .to_string();
    let r = server
        .call(
            "POST",
            "/token",
            &[("Content-Type", "application/json")],
            &json,
        )
        .await;
    assert_eq!(r.error().as_deref(), Some("invalid_grant"));
    assert_eq!(server.token_requests(), 6);
}

#[tokio::test]
async fn authorize_endpoint_redirects_with_a_code_a_public_client_redeems() {
    let server = OAuthServer::start().await;
    let challenge = s256(VERIFIER);
    let path = format!(
        "/authorize?response_type=code&client_id={PUBLIC_CLIENT}&redirect_uri={}&state=st4te\
         &code_challenge={challenge}&code_challenge_method=S256&scope=read%20write",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let r = server.call("GET", &path, &[], "").await;
    assert_eq!(r.status, 302);
    let location = url::Url::parse(r.header("location").expect("location")).expect("url");
    assert!(location.as_str().starts_with(REDIRECT), "{location}");
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("st4te"));
    let code = q.get("code").expect("code");

    let r = server
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", PUBLIC_CLIENT),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "read write");
    let recorded = server.requests_to("/token");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].header("accept"), Some("application/json"));
    assert_eq!(
        recorded[0].form().get("client_id").map(String::as_str),
        Some(PUBLIC_CLIENT)
    );

    // The plain method is refused with an error redirect.
    let plain = path.replace("S256", "plain");
    let r = server.call("GET", &plain, &[], "").await;
    assert_eq!(r.status, 302);
    let location = r.header("location").expect("location");
    assert!(location.contains("error=invalid_request"), "{location}");
    assert!(!location.contains("code="), "{location}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let server = OAuthServer::start().await;
    let (_access1, rt1) = tokens(&server).await;

    let r = refresh(&server, &rt1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access2 = r.field("access_token").expect("access");
    let rt2 = r.field("refresh_token").expect("rotated refresh token");
    assert_ne!(rt1, rt2);
    assert_eq!(server.refresh_count(), 1);
    assert!(!server.is_refresh_token_live(&rt1));

    let r = refresh(&server, &rt2).await;
    let access3 = r.field("access_token").expect("access");
    let rt3 = r.field("refresh_token").expect("rotated");
    assert_eq!(userinfo(&server, &access3).await, 200);
    assert_eq!(server.family_revocations(), 0);

    // rt2 again: refused, and the whole family dies.
    let r = refresh(&server, &rt2).await;
    assert_eq!(r.error().as_deref(), Some("invalid_grant"));
    assert_eq!(server.family_revocations(), 1);
    assert_eq!(userinfo(&server, &access3).await, 401);
    assert_eq!(userinfo(&server, &access2).await, 401);
    assert_eq!(
        refresh(&server, &rt3).await.error().as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(server.refresh_count(), 2);

    // invalidate_refresh_tokens: a fresh family's refresh token stops working, its access
    // token does not.
    let (access, rt) = tokens(&server).await;
    server.invalidate_refresh_tokens();
    assert_eq!(
        refresh(&server, &rt).await.error().as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(userinfo(&server, &access).await, 200);
    assert_eq!(server.family_revocations(), 1);
}

#[tokio::test]
async fn omit_refresh_token_and_expires_in_knobs() {
    let server = OAuthServer::start().await;
    server.set_expires_in(None);
    let (_, rt) = tokens(&server).await;
    server.set_omit_refresh_token(true);
    for _ in 0..2 {
        let r = refresh(&server, &rt).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert!(body.get("expires_in").is_none(), "{body}");
    }
    assert!(server.is_refresh_token_live(&rt));
    server.set_omit_refresh_token(false);
    server.set_expires_in(Some(1));
    let r = refresh(&server, &rt).await;
    assert_eq!(r.json()["expires_in"], 1);
    let access = r.field("access_token").expect("access");
    assert!(server.is_access_token_live(&access));
    server.expire_access_tokens();
    assert_eq!(userinfo(&server, &access).await, 401);
    assert_eq!(server.refresh_count(), 3);
}

#[tokio::test]
async fn fail_next_and_refresh_delay() {
    let server = OAuthServer::start().await;
    let (_, rt) = tokens(&server).await;
    server.fail_next(2, 503);
    for _ in 0..2 {
        let r = refresh(&server, &rt).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.error().as_deref(), Some("temporarily_unavailable"));
    }
    assert!(server.is_refresh_token_live(&rt));
    server.set_refresh_delay(Duration::from_millis(300));
    let started = Instant::now();
    let r = refresh(&server, &rt).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.token_requests(), 4);
    assert_eq!(server.refresh_count(), 1);
}

async fn device_code(server: &OAuthServer) -> (String, String) {
    let r = server
        .post_form(
            "/device/code",
            &[("client_id", PUBLIC_CLIENT), ("scope", "read")],
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let uc = r.field("user_code").expect("user_code");
    assert_eq!(
        body["verification_uri"],
        format!("{}/device", server.base_url())
    );
    assert!(r
        .field("verification_uri_complete")
        .expect("complete")
        .ends_with(&uc));
    assert!(body["expires_in"].is_u64());
    assert!(body["interval"].is_u64());
    (r.field("device_code").expect("device_code"), uc)
}

async fn poll(server: &OAuthServer, device_code: &str) -> HttpReply {
    server
        .post_form(
            "/token",
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code),
                ("client_id", PUBLIC_CLIENT),
            ],
            &[],
        )
        .await
}

#[tokio::test]
async fn device_flow_pending_slow_down_approved() {
    let server = OAuthServer::start().await;
    server.set_device_interval(1);
    server.set_slow_down_step(1);
    let (dc, uc) = device_code(&server).await;
    assert_eq!(server.last_user_code().as_deref(), Some(uc.as_str()));

    let r = poll(&server, &dc).await;
    assert_eq!(r.error().as_deref(), Some("authorization_pending"));
    // Too soon after the previous poll.
    let r = poll(&server, &dc).await;
    assert_eq!(r.error().as_deref(), Some("slow_down"));
    assert_eq!(server.slow_downs(&uc), 1);
    assert_eq!(server.device_interval(&uc), Some(2));

    assert!(server.approve_device(&uc));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = poll(&server, &dc).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access = r.field("access_token").expect("access");
    assert!(r.field("refresh_token").is_some());
    assert_eq!(userinfo(&server, &access).await, 200);
    assert_eq!(server.device_polls(&uc), 3);

    // One use only.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        poll(&server, &dc).await.error().as_deref(),
        Some("invalid_grant")
    );
}

#[tokio::test]
async fn device_flow_denied_and_expired() {
    let server = OAuthServer::start().await;
    server.set_device_interval(1);
    let (dc, uc) = device_code(&server).await;
    assert!(server.deny_device(&uc));
    assert_eq!(
        poll(&server, &dc).await.error().as_deref(),
        Some("access_denied")
    );

    server.set_device_expires_in(1);
    let (dc, uc) = device_code(&server).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        poll(&server, &dc).await.error().as_deref(),
        Some("expired_token")
    );
    assert_eq!(server.device_polls(&uc), 1);
    assert_eq!(server.slow_downs(&uc), 0);
}

#[tokio::test]
async fn revocation_is_recorded_and_revokes_the_family() {
    let server = OAuthServer::start().await;
    let (access, rt) = tokens(&server).await;
    let auth = basic();
    let r = server
        .post_form(
            "/revoke",
            &[("token", &rt), ("token_type_hint", "refresh_token")],
            &[("Authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(userinfo(&server, &access).await, 401);
    assert_eq!(
        refresh(&server, &rt).await.error().as_deref(),
        Some("invalid_grant")
    );
    // Unknown tokens get 200 too.
    let r = server
        .post_form(
            "/revoke",
            &[("token", "never-issued"), ("client_id", PUBLIC_CLIENT)],
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    // Bad credentials are refused and not recorded.
    let wrong = basic_auth(CONFIDENTIAL_CLIENT, "nope");
    let r = server
        .post_form("/revoke", &[("token", &rt)], &[("Authorization", &wrong)])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        server.revocations(),
        vec![
            Revocation {
                token: rt.clone(),
                hint: Some("refresh_token".into()),
                client_id: CONFIDENTIAL_CLIENT.into(),
            },
            Revocation {
                token: "never-issued".into(),
                hint: None,
                client_id: PUBLIC_CLIENT.into(),
            },
        ]
    );
    // Revoking a family this way is not a reuse detection.
    assert_eq!(server.family_revocations(), 0);
}

#[tokio::test]
async fn many_concurrent_connections_and_the_provider_toml() {
    let server = OAuthServer::start().await;
    let (access, _) = tokens(&server).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let server = server.clone();
        let access = access.clone();
        tasks.push(tokio::spawn(
            async move { userinfo(&server, &access).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(server.requests_to("/userinfo").len(), 100);

    let text = server.provider_toml("local-oauth", "oauth2");
    let doc: toml::Table = toml::from_str(&text).expect("toml");
    let base = server.base_url();
    assert_eq!(doc["provider"]["name"].as_str(), Some("local-oauth"));
    assert_eq!(doc["provider"]["handler_type"].as_str(), Some("oauth2"));
    assert_eq!(
        doc["oauth"]["token_url"].as_str(),
        Some(format!("{base}/token").as_str())
    );
    assert_eq!(
        doc["verify"]["auth_template"].as_str(),
        Some("Authorization: Bearer {access_token}")
    );
    assert_eq!(doc["oauth"]["pkce"].as_bool(), Some(true));
}

/// The vault's own transport (reqwest, with its connection pool) against the server: a code
/// grant, then rotations back to back on one client.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_transport_interoperates() {
    use bytes::Bytes;
    use strongroom::transport::{HttpTransport, ReqwestTransport};

    let server = OAuthServer::start().await;
    let http = ReqwestTransport::new().expect("client");
    let post = |form: &[(&str, &str)]| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        http::Request::post(format!("{}/token", server.base_url()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .header("Authorization", basic())
            .body(Bytes::from(body))
            .expect("request")
    };
    let code = server.authorize(CONFIDENTIAL_CLIENT, REDIRECT, "read", Some(&s256(VERIFIER)));
    let r = http
        .send(post(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ]))
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
    let mut rt = body["refresh_token"].as_str().expect("rt").to_string();
    for _ in 0..5 {
        let r = http
            .send(post(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
            ]))
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        rt = body["refresh_token"].as_str().expect("rt").to_string();
    }
    assert_eq!(server.refresh_count(), 5);
    assert_eq!(server.family_revocations(), 0);
}

//! GitHub App installation tokens against a local GitHub API on 127.0.0.1.
//!
//! The server (tests/common/github_app_server.rs) is a small hand-written HTTP/1.1 server
//! (every answer `Connection: close`) that speaks the documented endpoints:
//!
//! - `GET /app`: 200 `{"id", "slug", "name", ...}` for a valid App JWT.
//! - `POST /app/installations/{id}/access_tokens`: 201 `{"token", "expires_at", ...}`; 401
//!   for a bad JWT, 404 for an unknown installation, 422 when the narrowing names a
//!   repository the installation cannot reach.
//!
//! It verifies the JWT independently of the library that signed it (ring): the RS256
//! signature by hand with the `rsa` crate's `pkcs1v15::VerifyingKey<Sha256>`, and GitHub's
//! rules on the claims (`iss` the App id or client id, `iat` at least 50 s in the past, `exp`
//! at most 600 s ahead and not passed).

#[path = "common/github_app_server.rs"]
mod github_app_server;

use std::sync::Arc;
use std::time::Duration;

use github_app_server::*;
use serde_json::{json, Value};
use strongroom::integrations::github_app::{
    check_app, installation_token, GithubApp, InstallationTokenCache, TokenNarrowing,
};
use strongroom::{
    ErrorKind, ExposeSecret, HttpTransport, ReqwestTransport, SecretString, Timestamp,
};

fn http() -> ReqwestTransport {
    ReqwestTransport::new().expect("transport")
}

fn app_with(app_id: &str, client_id: Option<&str>, installation: u64, key: &str) -> GithubApp {
    GithubApp::new(
        app_id,
        client_id.map(str::to_string),
        installation,
        SecretString::from(key.to_string()),
    )
    .expect("app")
}

fn the_app() -> GithubApp {
    app_with(&APP_ID.to_string(), None, INSTALLATION, APP_KEY)
}

fn repos(names: &[&str]) -> TokenNarrowing {
    TokenNarrowing {
        repositories: names.iter().map(|s| s.to_string()).collect(),
        ..TokenNarrowing::default()
    }
}

#[tokio::test]
async fn a_token_is_minted_once_and_served_from_the_cache() {
    let server = GithubServer::start().await;
    let http = http();
    let cache = InstallationTokenCache::new();
    let app = the_app();
    let none = TokenNarrowing::none();
    let first = cache
        .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
        .await
        .expect("mint");
    let second = cache
        .get_or_mint(
            &http,
            &format!("{}/", server.base()),
            &app,
            &none,
            Timestamp::now(),
        )
        .await
        .expect("cached");
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(server.mints(), 1, "the second call made no request");
    assert_eq!(
        server.state().tokens,
        vec![first.expose_secret().to_string()]
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        format!("/app/installations/{INSTALLATION}/access_tokens")
    );
    assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(r.header("user-agent"), Some("strongroom"));
    assert_eq!(r.body, "", "no narrowing, no body");
    assert_eq!(cache.len(), 1);

    // Eight callers at once on a fresh cache: one request.
    let cache = Arc::new(InstallationTokenCache::new());
    let http: Arc<dyn HttpTransport> = Arc::new(http);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, http, app, base) = (
            Arc::clone(&cache),
            Arc::clone(&http),
            app.clone(),
            server.base(),
        );
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_mint(
                    http.as_ref(),
                    &base,
                    &app,
                    &TokenNarrowing::none(),
                    Timestamp::now(),
                )
                .await
                .expect("mint")
                .expose_secret()
                .to_string()
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("task"));
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the one token");
    assert_eq!(
        server.mints(),
        2,
        "single flight: one more mint for eight callers"
    );
}

#[tokio::test]
async fn a_token_within_five_minutes_of_expiry_is_reminted() {
    let server = GithubServer::start().await;
    server.state().token_ttl = Duration::from_secs(4 * 60);
    let http = http();
    let cache = InstallationTokenCache::new();
    let app = the_app();
    let none = TokenNarrowing::none();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let t = cache
            .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
            .await
            .expect("mint");
        seen.push(t.expose_secret().to_string());
    }
    assert_eq!(
        server.mints(),
        3,
        "a token with 4 minutes left is never reused"
    );
    seen.dedup();
    assert_eq!(seen.len(), 3);

    // An hour-long token is kept; invalidating the installation forgets it.
    server.state().token_ttl = Duration::from_secs(3600);
    let a = cache
        .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
        .await
        .expect("mint");
    let b = cache
        .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
        .await
        .expect("cached");
    assert_eq!(a.expose_secret(), b.expose_secret());
    assert_eq!(server.mints(), 4);
    cache.invalidate(INSTALLATION + 1);
    assert_eq!(
        cache.len(),
        1,
        "another installation's invalidation keeps this one"
    );
    cache.invalidate(INSTALLATION);
    assert!(cache.is_empty());
    let c = cache
        .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
        .await
        .expect("mint");
    assert_ne!(a.expose_secret(), c.expose_secret());
    assert_eq!(server.mints(), 5);
}

#[tokio::test]
async fn narrowing_is_sent_in_the_body_and_keys_the_cache() {
    let server = GithubServer::start().await;
    let http = http();
    let cache = InstallationTokenCache::new();
    let app = app_with(&APP_ID.to_string(), Some(CLIENT_ID), INSTALLATION, APP_KEY);
    let mut narrow = repos(&["docs"]);
    narrow.repository_ids = vec![1296269];
    narrow.permissions.insert("contents".into(), "read".into());
    narrow.permissions.insert("issues".into(), "write".into());
    let minted = installation_token(&http, &server.base(), &app, &narrow)
        .await
        .expect("mint");
    let left = minted.expires_at.as_millis() - Timestamp::now().as_millis();
    assert!((3_590_000..=3_600_000).contains(&left), "{left} ms left");
    let r = server.requests().pop().expect("request");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).expect("json body");
    assert_eq!(
        body,
        json!({
            "repositories": ["docs"],
            "repository_ids": [1296269],
            "permissions": { "contents": "read", "issues": "write" },
        })
    );

    // One entry per narrowing; the order of names does not matter.
    let now = Timestamp::now;
    let both = repos(&["docs", "site"]);
    let both_reordered = repos(&["site", "docs"]);
    let none = TokenNarrowing::none();
    for n in [&both, &both_reordered, &none, &both, &none] {
        cache
            .get_or_mint(&http, &server.base(), &app, n, now())
            .await
            .expect("mint");
    }
    assert_eq!(
        server.mints(),
        3,
        "one for the first call, then docs+site, then none"
    );
    assert_eq!(cache.len(), 2);
}

#[tokio::test]
async fn refusals_are_mapped_and_cache_nothing() {
    let server = GithubServer::start().await;
    let http = http();
    let cache = InstallationTokenCache::new();
    let none = TokenNarrowing::none();
    let base = server.base();

    // Another key: the signature fails (401).
    let wrong_key = app_with(&APP_ID.to_string(), None, INSTALLATION, OTHER_KEY);
    let e = installation_token(&http, &base, &wrong_key, &none)
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("401") && text.contains("JWT") && text.contains("private key"),
        "{text}"
    );
    assert!(
        text.contains("Signature verification failed"),
        "GitHub's message kept: {text}"
    );

    // Another App id as the issuer (401).
    let wrong_id = app_with("999", None, INSTALLATION, APP_KEY);
    let e = cache
        .get_or_mint(&http, &base, &wrong_id, &none, Timestamp::now())
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("App id"), "{e}");

    // A JWT for a moment outside GitHub's window (401).
    let e = cache
        .get_or_mint(
            &http,
            &base,
            &the_app(),
            &none,
            Timestamp(Timestamp::now().as_millis() + 3_600_000),
        )
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("clock"), "{e}");

    // An installation GitHub does not know (404).
    let elsewhere = app_with(&APP_ID.to_string(), None, 77, APP_KEY);
    let e = installation_token(&http, &base, &elsewhere, &none)
        .await
        .expect_err("404");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("installation 77") && text.contains("Integration not found"),
        "{text}"
    );

    // A repository the installation cannot reach (422).
    let e = cache
        .get_or_mint(
            &http,
            &base,
            &the_app(),
            &repos(&["docs", "private-elsewhere"]),
            Timestamp::now(),
        )
        .await
        .expect_err("422");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("narrowing") && e.to_string().contains("422"),
        "{e}"
    );

    // A server error and a closed port: unreachable.
    server.state().forced = Some(503);
    let e = installation_token(&http, &base, &the_app(), &none)
        .await
        .expect_err("503");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(
        e.to_string().contains("503") && e.to_string().contains("retry"),
        "{e}"
    );
    server.state().forced = None;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let e = installation_token(&http, &format!("http://{closed}"), &the_app(), &none)
        .await
        .expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");

    assert_eq!(server.mints(), 0);
    // Failed mints left nothing behind to serve: the next call mints.
    cache
        .get_or_mint(&http, &base, &the_app(), &none, Timestamp::now())
        .await
        .expect("mint");
    assert_eq!(server.mints(), 1);
}

#[tokio::test]
async fn check_app_reads_the_app_and_catches_a_wrong_app_id() {
    let server = GithubServer::start().await;
    let http = http();
    for app in [
        the_app(),
        app_with(&APP_ID.to_string(), Some(CLIENT_ID), INSTALLATION, APP_KEY),
    ] {
        let info = check_app(&http, &server.base(), &app).await.expect("app");
        assert_eq!(
            (info.id, info.slug.as_str(), info.name.as_str()),
            (APP_ID, "strongroom-test", "Strongroom Test")
        );
    }
    let r = server.requests().pop().expect("request");
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/app"));
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(server.mints(), 0);

    // Signed as the client id, so GitHub accepts it, but the App id is someone else's.
    let mislabelled = app_with("654321", Some(CLIENT_ID), INSTALLATION, APP_KEY);
    let e = check_app(&http, &server.base(), &mislabelled)
        .await
        .expect_err("wrong id");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("123456"), "{e}");

    let wrong_key = app_with(&APP_ID.to_string(), None, INSTALLATION, OTHER_KEY);
    let e = check_app(&http, &server.base(), &wrong_key)
        .await
        .expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");

    // Plain http to a host that is not loopback is refused before sending.
    let e = check_app(&http, "http://api.github.com", &the_app())
        .await
        .expect_err("insecure");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test]
async fn no_key_jwt_or_token_reaches_an_error_or_a_debug() {
    let server = GithubServer::start().await;
    server.state().echo_credentials = true;
    let http = http();
    let cache = InstallationTokenCache::new();
    let app = the_app();
    let none = TokenNarrowing::none();
    let live = cache
        .get_or_mint(&http, &server.base(), &app, &none, Timestamp::now())
        .await
        .expect("mint");
    let minted = installation_token(&http, &server.base(), &app, &none)
        .await
        .expect("mint");

    let mut texts = vec![
        format!("{app:?}"),
        format!("{cache:?}"),
        format!("{minted:?}"),
        format!("{none:?}"),
    ];
    let wrong_key = app_with(&APP_ID.to_string(), None, INSTALLATION, OTHER_KEY);
    let mut jwts = vec![
        app.jwt(Timestamp::now()).expect("jwt"),
        wrong_key.jwt(Timestamp::now()).expect("jwt"),
    ];
    // The server answers a bad JWT quoting the Authorization header and a live token.
    for (a, n) in [(&wrong_key, &none), (&app, &repos(&["nope"]))] {
        let e = installation_token(&http, &server.base(), a, n)
            .await
            .expect_err("refused");
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }
    let e = check_app(&http, &server.base(), &wrong_key)
        .await
        .expect_err("refused");
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    // A key that is refused outright.
    let e = GithubApp::new(
        "1",
        None,
        1,
        SecretString::from(APP_KEY.replace("RSA PRIVATE", "EC PRIVATE")),
    )
    .expect_err("not RSA");
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));

    let mut canaries: Vec<String> = vec![
        live.expose_secret().to_string(),
        minted.token.expose_secret().to_string(),
    ];
    for jwt in jwts.drain(..) {
        let jwt = jwt.expose_secret().to_string();
        canaries.push(jwt.rsplit('.').next().expect("signature").to_string());
        canaries.push(jwt);
    }
    for key in [APP_KEY, OTHER_KEY] {
        canaries.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| l[..24].to_string()),
        );
    }
    let echoed = texts.iter().any(|t| t.contains("withheld"));
    assert!(
        echoed,
        "the server's echo was seen and withheld: {texts:#?}"
    );
    for text in &texts {
        for canary in &canaries {
            assert!(!text.contains(canary.as_str()), "a secret in {text}");
        }
    }
}

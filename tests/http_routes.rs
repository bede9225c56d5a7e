//! The axum OAuth routes (`strongroom::http::routes::oauth_router`) served on 127.0.0.1 in
//! front of a vault whose provider is the local OAuth server (tests/common/oauth_server.rs):
//! start → the provider's consent → callback → a valid credential, status, 401 without a
//! principal, another user's callback refused without spending the flow, error callbacks,
//! repeated and missing parameters, replay; no code, state or token in any answer.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::oauth_server::{HttpReply, OAuthServer};
use strongroom::{
    CredentialRef, ExposeSecret, LocalKey, Principal, ResolveContext, SqliteStore, Vault,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER_HEADER: &str = "X-Test-User";
const ROLE_HEADER: &str = "X-Test-Role";

struct Setup {
    server: OAuthServer,
    vault: Vault,
    /// The router's address.
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The principal a request carries: `X-Test-User: NAME` → `runtime:crm:NAME` (the app's
/// runtime acting for its user), or `app_user:crm:NAME` with `X-Test-Role: user` (the user
/// themself, who may also read their credentials' metadata).
fn principal_of(parts: &http::request::Parts) -> Option<Principal> {
    let user = parts.headers.get(USER_HEADER)?.to_str().ok()?;
    let role = match parts.headers.get(ROLE_HEADER).map(|r| r.to_str()) {
        None => "runtime",
        Some(Ok("user")) => "app_user",
        Some(_) => return None,
    };
    Principal::parse(&format!("{role}:crm:{user}")).ok()
}

async fn setup() -> Setup {
    let server = OAuthServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    // The router's address first: the client's registered redirect URI is its callback.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = Arc::new(SqliteStore::open(dir.path().join("vault.db")).expect("store"));
    let vault = common::oauth_server::local_vault(
        &server,
        store,
        Arc::new(LocalKey::generate().expect("key")),
        dir.path(),
        Some(format!("http://{addr}/oauth/callback")),
    )
    .await;
    let router = strongroom::http::routes::oauth_router(vault.clone(), principal_of);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Setup {
        server,
        vault,
        addr,
        _dir: dir,
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`), the whole answer read. A plain
/// client: it follows no redirect.
/// `user` is `NAME` (`runtime:crm:NAME`) or `NAME/user` (`app_user:crm:NAME`).
async fn call(addr: SocketAddr, method: &str, target: &str, user: Option<&str>) -> HttpReply {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(user) = user {
        let (name, role) = match user.split_once('/') {
            Some((name, role)) => (name, Some(role)),
            None => (user, None),
        };
        req.push_str(&format!("{USER_HEADER}: {name}\r\n"));
        if let Some(role) = role {
            req.push_str(&format!("{ROLE_HEADER}: {role}\r\n"));
        }
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    socket.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The path and query of `url`.
fn target_of(url: &str) -> String {
    let url = url::Url::parse(url).expect("url");
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no `{name}` in the URL"))
}

/// The `error.kind` of a JSON error answer.
fn error_kind(reply: &HttpReply) -> String {
    reply.json()["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error answer: {}", reply.body))
        .to_string()
}

fn error_message(reply: &HttpReply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Starts a flow on the router as `user`: the authorize URL it redirected to.
async fn start(s: &Setup, user: &str, name: &str) -> String {
    let reply = call(
        s.addr,
        "GET",
        &format!("/oauth/local/start?name={name}"),
        Some(user),
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));
    assert_eq!(reply.header("Referrer-Policy"), Some("no-referrer"));
    assert!(reply.body.is_empty(), "{}", reply.body);
    let location = reply.header("Location").expect("location").to_string();
    assert!(
        location.starts_with(&format!("{}/authorize?", s.server.base_url())),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "redirect_uri"),
        format!("http://{}/oauth/callback", s.addr)
    );
    location
}

/// Plays the browser at the provider: the callback URL it redirects back to (on the router).
async fn consent(s: &Setup, authorize_url: &str) -> String {
    let reply = s
        .server
        .call("GET", &target_of(authorize_url), &[], "")
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let back = reply.header("Location").expect("location").to_string();
    assert!(
        back.starts_with(&format!("http://{}/oauth/callback?", s.addr)),
        "{back}"
    );
    back
}

/// `body` repeats none of `secrets`.
fn assert_clean(body: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!body.contains(secret), "an answer repeats a secret: {body}");
    }
}

#[tokio::test]
async fn a_login_through_the_routes_stores_a_valid_credential() {
    let s = setup().await;
    let authorize = start(&s, "alice", "x").await;
    let back = consent(&s, &authorize).await;
    let (code, state) = (query_param(&back, "code"), query_param(&back, "state"));
    assert_eq!(state, query_param(&authorize, "state"));

    let reply = call(s.addr, "GET", &target_of(&back), Some("alice")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));
    let info = reply.json();
    assert_eq!(info["state"], "valid", "{info}");
    assert_eq!(info["name"], "x");
    assert_eq!(info["provider"], "local");
    let id = info["id"].as_str().expect("id").to_string();

    // The tokens are stored (and the app that started the flow may use them) ...
    let alice = Principal::parse("runtime:crm:alice").expect("principal");
    let resolved = s
        .vault
        .resolve(
            &alice,
            &CredentialRef::compact("x"),
            &ResolveContext::of(&alice).expect("context"),
        )
        .await
        .expect("resolve");
    let access = resolved.fields["access_token"].expose_secret().to_string();
    let refresh = resolved.fields["refresh_token"].expose_secret().to_string();
    assert!(s.server.is_access_token_live(&access));
    let secrets = [code.as_str(), state.as_str(), &access, &refresh];
    assert_clean(&reply.body, &secrets);

    // ... status answers for alice herself; her app's runtime, which resolves but does not
    // read metadata, gets a 404 (the policy hides what it may not see); 401 without a
    // principal; bob does not see it.
    let runtime = call(s.addr, "GET", &format!("/oauth/status/{id}"), Some("alice")).await;
    assert_eq!(runtime.status, 404, "{}", runtime.body);
    let status = call(
        s.addr,
        "GET",
        &format!("/oauth/status/{id}"),
        Some("alice/user"),
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["id"], id.as_str());
    assert_eq!(status.json()["state"], "valid");
    let anonymous = call(s.addr, "GET", &format!("/oauth/status/{id}"), None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(error_kind(&anonymous), "unauthenticated");
    let bob = call(
        s.addr,
        "GET",
        &format!("/oauth/status/{id}"),
        Some("bob/user"),
    )
    .await;
    assert_eq!(bob.status, 404, "{}", bob.body);
    let missing = call(
        s.addr,
        "GET",
        "/oauth/status/0190a000-0000-7000-8000-000000000000",
        Some("alice/user"),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(error_kind(&missing), "not_found");

    // The callback is single-use: a replay is refused and says nothing of the state.
    let replay = call(s.addr, "GET", &target_of(&back), Some("alice")).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(error_kind(&replay), "invalid_input");
    for r in [&runtime, &status, &anonymous, &bob, &missing, &replay] {
        assert_clean(&r.body, &secrets);
    }
}

#[tokio::test]
async fn the_callback_needs_the_user_who_started_the_flow() {
    let s = setup().await;
    let back = consent(&s, &start(&s, "alice", "y").await).await;
    let (code, state) = (query_param(&back, "code"), query_param(&back, "state"));

    // No principal: 401 before the vault is asked.
    let anonymous = call(s.addr, "GET", &target_of(&back), None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    // Bob with alice's callback: refused as an unknown flow ...
    let bob = call(s.addr, "GET", &target_of(&back), Some("bob")).await;
    assert_eq!(bob.status, 400, "{}", bob.body);
    assert_eq!(error_kind(&bob), "invalid_input");
    assert!(error_message(&bob).contains("oauth state"), "{}", bob.body);
    // ... without spending it: alice still completes.
    let alice = call(s.addr, "GET", &target_of(&back), Some("alice")).await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    assert_eq!(alice.json()["state"], "valid");
    for r in [&anonymous, &bob, &alice] {
        assert_clean(&r.body, &[&code, &state]);
    }
}

#[tokio::test]
async fn error_and_malformed_callbacks_are_refused() {
    let s = setup().await;
    let authorize = start(&s, "alice", "z").await;
    let state = query_param(&authorize, "state");
    let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();

    // The user declined: 400 naming the error, not the description or the state.
    let denied = call(
        s.addr,
        "GET",
        &format!(
            "/oauth/callback?error=access_denied&error_description=description-{}&state={}",
            enc(&state),
            enc(&state)
        ),
        Some("alice"),
    )
    .await;
    assert_eq!(denied.status, 400, "{}", denied.body);
    assert_eq!(error_kind(&denied), "invalid_input");
    assert!(
        error_message(&denied).contains("access_denied"),
        "{}",
        denied.body
    );
    assert!(!denied.body.contains("description-"), "{}", denied.body);

    // A missing code, a missing state, a repeated state.
    let no_code = call(
        s.addr,
        "GET",
        &format!("/oauth/callback?state={}", enc(&state)),
        Some("alice"),
    )
    .await;
    assert_eq!(no_code.status, 400, "{}", no_code.body);
    assert!(
        error_message(&no_code).contains("`code`"),
        "{}",
        no_code.body
    );
    let no_state = call(
        s.addr,
        "GET",
        "/oauth/callback?code=some-code-value",
        Some("alice"),
    )
    .await;
    assert_eq!(no_state.status, 400, "{}", no_state.body);
    assert!(
        error_message(&no_state).contains("`state`"),
        "{}",
        no_state.body
    );
    let twice = call(
        s.addr,
        "GET",
        &format!(
            "/oauth/callback?code=some-code-value&state={}&state=other-state-value",
            enc(&state)
        ),
        Some("alice"),
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert!(
        error_message(&twice).contains("more than once"),
        "{}",
        twice.body
    );
    // Only GET, and only the query: a POST is not a callback.
    let post = call(
        s.addr,
        "POST",
        &format!("/oauth/callback?code=c&state={}", enc(&state)),
        Some("alice"),
    )
    .await;
    assert_eq!(post.status, 405, "{}", post.body);
    for r in [&denied, &no_code, &no_state, &twice, &post] {
        assert_clean(&r.body, &[&state, "some-code-value", "other-state-value"]);
    }

    // None of that spent the flow: the real callback still completes it.
    let back = consent(&s, &authorize).await;
    let done = call(s.addr, "GET", &target_of(&back), Some("alice")).await;
    assert_eq!(done.status, 200, "{}", done.body);
}

#[tokio::test]
async fn a_bad_start_is_refused() {
    let s = setup().await;
    let anonymous = call(s.addr, "GET", "/oauth/local/start?name=x", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.header("Location").is_none());
    // No name; a parameter the route does not take; a redirect URI not registered.
    for target in [
        "/oauth/local/start",
        "/oauth/local/start?name=x&state=mine",
        "/oauth/local/start?name=x&redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
    ] {
        let reply = call(s.addr, "GET", target, Some("alice")).await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
        assert_eq!(error_kind(&reply), "invalid_input", "{target}");
        assert!(reply.header("Location").is_none(), "{target}");
    }
    // An unknown provider: refused, no redirect.
    let unknown = call(s.addr, "GET", "/oauth/nope/start?name=x", Some("alice")).await;
    assert!(
        unknown.status >= 400 && unknown.header("Location").is_none(),
        "{} {}",
        unknown.status,
        unknown.body
    );
    // Scopes pass through to the authorize URL.
    let reply = call(
        s.addr,
        "GET",
        "/oauth/local/start?name=w&scope=read&scope=write",
        Some("alice"),
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let location = reply.header("Location").expect("location");
    assert_eq!(query_param(location, "scope"), "read write");
}

//! The OAuth routes as an [`axum::Router`] (feature `axum`): start, callback, status.
//!
//! ```no_run
//! # async fn mount(vault: strongroom::Vault) -> std::io::Result<()> {
//! use strongroom::Principal;
//!
//! // The host says who is asking: here a header its own auth layer has set.
//! let router = strongroom::http::routes::oauth_router(vault, |parts: &http::request::Parts| {
//!     let user = parts.headers.get("x-user")?.to_str().ok()?;
//!     Principal::parse(&format!("runtime:crm:{user}")).ok()
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router).await
//! # }
//! ```
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /oauth/{provider}/start?name=N[&scope=S]...` | `302 Found` to the provider's authorize URL |
//! | `GET /oauth/callback?code=..&state=..` | `200` with the new credential's metadata ([`CredentialInfo`] as JSON) |
//! | `GET /oauth/status/{id}` | `200` with the credential's metadata ([`Vault::oauth_status`]) |
//!
//! Every answer carries `Cache-Control: no-store` and `Referrer-Policy: no-referrer` (a
//! redirect's `Location` and the callback's own URL carry the flow's `state`). A request
//! whose principal the host's `principal_of` does not know is `401`. Errors are JSON,
//! `{"error": {"kind": "invalid_input", "message": "..."}}`, with the status of their kind:
//!
//! | kind | status |
//! | --- | --- |
//! | `invalid_input` | 400 |
//! | `unauthenticated` (no principal) | 401 |
//! | `permission_denied` | 403 |
//! | `not_found` | 404 |
//! | `already_exists`, `version_conflict`, `unusable` | 409 |
//! | `config`, `corrupt`, `decrypt_failed`, `io`, `store` | 500 |
//! | `transport` | 502 |
//! | `key_unavailable`; `store` when busy or disconnected | 503 |
//!
//! The message of a 500 or 503 is generic (it is shown to the user; the error itself, which
//! never carries a secret, is logged at `error` level); the others carry the vault's
//! message, which never repeats a code, a state or a token. The routes read `code` and
//! `state` from the query only (never a body, a header or a cookie), make no request of
//! their own (the vault's transport talks to the token endpoint and follows no redirect),
//! and log no URL.
//!
//! `start` takes `name` once (the credential's name), `scope` any number of times (each
//! value may hold several space-separated scopes; none: the provider's); any other parameter
//! is refused — `redirect_uri` too: the browser comes back to the client's registered
//! redirect URI (this router's callback), never to one a link names. A provider named
//! `callback` or `status` cannot be started through these routes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERRER_POLICY};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::error::{Error, ErrorKind, Result, StoreErrorKind};
use crate::model::CredentialId;
use crate::vault::{CredentialInfo, OAuthStart, Principal, Vault};

/// What the handlers share.
struct Shared<F> {
    vault: Vault,
    principal_of: F,
}

/// A router with `GET /oauth/{provider}/start`, `GET /oauth/callback` and
/// `GET /oauth/status/{id}` (see the [module docs](self)). `principal_of` maps a request to
/// the principal acting (from the host's session cookie, a header its auth layer set, ...);
/// `None` answers `401`. It must be a principal with a user (`runtime:APP:USER` or
/// `app_user:APP:USER`): the credential lands in that user's `per_user` scope, and only the
/// same user may complete the flow.
///
/// Mount it with [`Router::merge`] or [`Router::nest`] (the callback's public URL must then
/// be the client's registered `redirect_uri`).
pub fn oauth_router<F>(vault: Vault, principal_of: F) -> Router
where
    F: Fn(&Parts) -> Option<Principal> + Clone + Send + Sync + 'static,
{
    let shared = Arc::new(Shared {
        vault,
        principal_of,
    });
    Router::new()
        .route("/oauth/callback", get(callback::<F>))
        .route("/oauth/status/{id}", get(status::<F>))
        .route("/oauth/{provider}/start", get(start::<F>))
        .with_state(shared)
}

async fn start<F>(
    State(shared): State<Arc<Shared<F>>>,
    Path(provider): Path<String>,
    parts: Parts,
) -> Response
where
    F: Fn(&Parts) -> Option<Principal> + Clone + Send + Sync + 'static,
{
    let Some(actor) = (shared.principal_of)(&parts) else {
        return unauthenticated();
    };
    let started = match start_request(&provider, parts.uri.query().unwrap_or("")) {
        Ok(start) => super::oauth_start(&shared.vault, &actor, start).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(redirect) => match HeaderValue::from_str(&redirect.location) {
            Ok(location) => {
                let mut response = answer(StatusCode::FOUND, Body::empty());
                response.headers_mut().insert(LOCATION, location);
                response
            }
            Err(_) => error_response(&Error::config(
                "the provider's authorize URL cannot be sent in a Location header",
            )),
        },
        Err(e) => error_response(&e),
    }
}

async fn callback<F>(State(shared): State<Arc<Shared<F>>>, parts: Parts) -> Response
where
    F: Fn(&Parts) -> Option<Principal> + Clone + Send + Sync + 'static,
{
    let Some(actor) = (shared.principal_of)(&parts) else {
        return unauthenticated();
    };
    let query = parts.uri.query().unwrap_or("");
    metadata(super::oauth_callback(&shared.vault, &actor, query).await)
}

async fn status<F>(
    State(shared): State<Arc<Shared<F>>>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response
where
    F: Fn(&Parts) -> Option<Principal> + Clone + Send + Sync + 'static,
{
    let Some(actor) = (shared.principal_of)(&parts) else {
        return unauthenticated();
    };
    let info = match CredentialId::new(id) {
        Ok(id) => shared.vault.oauth_status(&actor, &id).await,
        Err(e) => Err(e),
    };
    metadata(info)
}

/// The [`OAuthStart`] a start route's query asks for.
fn start_request(provider: &str, query: &str) -> Result<OAuthStart> {
    const FIELD: &str = "oauth start";
    let mut name = None;
    let mut scopes: Option<Vec<String>> = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "name" => {
                if name.is_some() {
                    return Err(Error::invalid(
                        FIELD,
                        "the parameter `name` appears more than once",
                    ));
                }
                name = Some(value.into_owned());
            }
            "scope" => scopes
                .get_or_insert_with(Vec::new)
                .extend(value.split_whitespace().map(str::to_string)),
            _ => {
                return Err(Error::invalid(
                    FIELD,
                    "unknown parameter; the start route takes `name` and `scope` (the \
                     browser returns to the client's registered redirect URI)",
                ))
            }
        }
    }
    let Some(name) = name else {
        return Err(Error::invalid(
            FIELD,
            "the `name` parameter (the credential's name) is missing",
        ));
    };
    let mut start = OAuthStart::new(provider, name);
    if let Some(scopes) = scopes.filter(|s| !s.is_empty()) {
        start = start.scopes(scopes);
    }
    Ok(start)
}

/// `200` with `info` as JSON, or the error's answer.
fn metadata(info: Result<CredentialInfo>) -> Response {
    match info {
        Ok(info) => match serde_json::to_vec(&info) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_response(&Error::invalid("credential metadata", e.to_string())),
        },
        Err(e) => error_response(&e),
    }
}

/// An answer with the headers every route sets.
fn answer(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = answer(status, Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_json(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "kind": kind, "message": message } });
    json(status, body.to_string().into_bytes())
}

fn unauthenticated() -> Response {
    error_json(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "this request has no signed-in user; sign in and try again",
    )
}

/// The status and JSON answer for `e`.
fn error_response(e: &Error) -> Response {
    let (status, kind) = status_of(e);
    if status.is_server_error() && status != StatusCode::BAD_GATEWAY {
        tracing::error!(error = %e, kind, "an OAuth route failed");
        error_json(
            status,
            kind,
            "the server could not complete this request; its log has the details",
        )
    } else {
        if status.is_server_error() {
            tracing::warn!(error = %e, kind, "an OAuth route's provider failed");
        }
        error_json(status, kind, &e.to_string())
    }
}

/// The HTTP status and the `kind` text of `e`.
fn status_of(e: &Error) -> (StatusCode, &'static str) {
    match e.kind() {
        ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        ErrorKind::VersionConflict => (StatusCode::CONFLICT, "version_conflict"),
        ErrorKind::Unusable => (StatusCode::CONFLICT, "unusable"),
        ErrorKind::Rejected => (StatusCode::BAD_REQUEST, "rejected"),
        ErrorKind::Config => (StatusCode::INTERNAL_SERVER_ERROR, "config"),
        ErrorKind::Corrupt => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        ErrorKind::DecryptFailed => (StatusCode::INTERNAL_SERVER_ERROR, "decrypt_failed"),
        ErrorKind::Io => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
        ErrorKind::Transport => (StatusCode::BAD_GATEWAY, "transport"),
        ErrorKind::KeyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "key_unavailable"),
        ErrorKind::Store => match e {
            Error::Store {
                kind: StoreErrorKind::Busy | StoreErrorKind::Connection,
                ..
            } => (StatusCode::SERVICE_UNAVAILABLE, "store"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_query_is_read() {
        let s = start_request("local", "name=x").expect("start");
        assert_eq!((s.provider.as_str(), s.name.as_str()), ("local", "x"));
        assert_eq!((s.redirect_uri, s.scopes), (None, None));
        let s = start_request("local", "name=x&scope=read&scope=write+admin").expect("start");
        assert_eq!(
            s.scopes,
            Some(vec!["read".into(), "write".into(), "admin".into()])
        );
    }

    #[test]
    fn a_bad_start_query_is_refused() {
        for q in [
            "",
            "scope=read",
            "name=x&name=y",
            "name=x&redirect_uri=https%3A%2F%2Fh%2Fcb",
            "name=x&state=s",
            "name=x&code=c",
        ] {
            let e = start_request("local", q).expect_err(q);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{q}: {e}");
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (Error::invalid("f", "r"), 400),
            (
                Error::PermissionDenied {
                    actor: "a".into(),
                    action: "b".into(),
                    target: "c".into(),
                },
                403,
            ),
            (
                Error::NotFound {
                    what: "x".into(),
                    hint: None,
                },
                404,
            ),
            (Error::config("c"), 500),
            (Error::transport("p", "m"), 502),
            (Error::store(StoreErrorKind::Busy, "m"), 503),
            (Error::store(StoreErrorKind::Schema, "m"), 500),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(&e).0.as_u16(), code, "{e}");
        }
    }
}

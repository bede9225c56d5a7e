//! GitHub's REST API, as far as linking needs it: `GET /user` with a token tells whose it
//! is. The base URL is `https://api.github.com`, or a GitHub Enterprise Server's
//! `https://HOST/api/v3`. (GitHub App mode, minting installation tokens from the app's
//! private key, is `integrations::github_app`.)

use secrecy::{ExposeSecret, SecretString};

use super::{get_json, id_text, malformed, secret_header, IntegrationProvider, ServiceIdentity};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// github.com's API.
pub const DEFAULT_BASE_URL: &str = "https://api.github.com";
/// The REST API version the requests ask for.
pub const API_VERSION: &str = "2022-11-28";

/// Who `token` belongs to (`GET {base}/user`): the login and the numeric user id. A token
/// GitHub refuses (401/403) is `InvalidInput`; a 5xx or no answer is `Transport`.
pub async fn user(
    http: &dyn HttpTransport,
    base_url: &str,
    token: &SecretString,
) -> Result<ServiceIdentity> {
    let field = "GitHub token";
    let auth = secret_header(field, &format!("Bearer {}", token.expose_secret()))?;
    let url = format!("{}/user", base_url.trim_end_matches('/'));
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(url.as_str())
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
        .header(
            http::header::USER_AGENT,
            concat!("strongroom/", env!("CARGO_PKG_VERSION")),
        )
        .body(Bytes::new())
        .map_err(|_| {
            Error::config(format!(
                "the GitHub base URL `{base_url}` does not make a request URL; fix \
                 VaultBuilder::integration_base_url"
            ))
        })?;
    let peer = peer_of(request.uri());
    let body = get_json(http, IntegrationProvider::Github, field, token, request).await?;
    let login = body
        .get("login")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(IntegrationProvider::Github, &peer, "a `login`"))?;
    let id = id_text(body.get("id"))
        .ok_or_else(|| malformed(IntegrationProvider::Github, &peer, "an `id`"))?;
    Ok(ServiceIdentity {
        username: login.to_string(),
        id,
    })
}

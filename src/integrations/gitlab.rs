//! GitLab's REST API, as far as linking needs it: `GET /user` with a token tells whose it
//! is. The base URL is `https://gitlab.com/api/v4`, or a self-managed instance's
//! `https://HOST/api/v4`. (Provisioning per-agent identities through a credential provider
//! is `integrations::gitlab_provider`.)

use secrecy::{ExposeSecret, SecretString};

use super::{get_json, id_text, malformed, secret_header, IntegrationProvider, ServiceIdentity};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// gitlab.com's API.
pub const DEFAULT_BASE_URL: &str = "https://gitlab.com/api/v4";

/// Who `token` belongs to (`GET {base}/user` with `PRIVATE-TOKEN`): the username and the
/// numeric user id. A token GitLab refuses (401/403) is `InvalidInput`; a 5xx or no answer
/// is `Transport`.
pub async fn user(
    http: &dyn HttpTransport,
    base_url: &str,
    token: &SecretString,
) -> Result<ServiceIdentity> {
    let field = "GitLab token";
    let auth = secret_header(field, token.expose_secret())?;
    let url = format!("{}/user", base_url.trim_end_matches('/'));
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(url.as_str())
        .header("PRIVATE-TOKEN", auth)
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|_| {
            Error::config(format!(
                "the GitLab base URL `{base_url}` does not make a request URL; fix \
                 VaultBuilder::integration_base_url"
            ))
        })?;
    let peer = peer_of(request.uri());
    let body = get_json(http, IntegrationProvider::Gitlab, field, token, request).await?;
    let username = body
        .get("username")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(IntegrationProvider::Gitlab, &peer, "a `username`"))?;
    let id = id_text(body.get("id"))
        .ok_or_else(|| malformed(IntegrationProvider::Gitlab, &peer, "an `id`"))?;
    Ok(ServiceIdentity {
        username: username.to_string(),
        id,
    })
}

//! GitHub's App endpoints: installation tokens (`POST /app/installations/{id}/access_tokens`)
//! and the App itself (`GET /app`), and what their refusals mean.

use super::*;

/// A caller-given name, cut short and without control characters, for an error message.
pub(super) fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// An installation access token and when GitHub says it expires (an hour after minting).
///
/// `Debug` shows the expiry only.
#[non_exhaustive]
pub struct InstallationToken {
    /// The token, for `Authorization: Bearer` (or `token`). Opaque.
    pub token: SecretString,
    /// When it stops working.
    pub expires_at: Timestamp,
}

impl fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The App as GitHub describes it (`GET /app`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppInfo {
    /// The numeric App id.
    pub id: u64,
    /// The App's slug (`github.com/apps/{slug}`).
    pub slug: String,
    /// The App's display name.
    pub name: String,
}

/// Mints an installation access token: `POST {base_url}/app/installations/{id}/access_tokens`
/// with the App's JWT, narrowed by `narrow` (nothing narrowed: no body).
///
/// `base_url` is [`GITHUB_API`] or a GitHub Enterprise Server's `https://HOST/api/v3`
/// (`http://` only to a loopback address). Errors: a refused JWT (401) is
/// [`Error::Config`]; a missing installation (404) is [`Error::NotFound`]; a narrowing GitHub
/// refuses (422) is [`Error::InvalidInput`]; a refusal to act (403) is
/// [`Error::PermissionDenied`]; 5xx, 429 and network failures are [`Error::Transport`]
/// (retry later).
pub async fn installation_token(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
    narrow: &TokenNarrowing,
) -> Result<InstallationToken> {
    installation_token_at(http, base_url, app, narrow, Timestamp::now()).await
}

pub(super) async fn installation_token_at(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
    narrow: &TokenNarrowing,
    now: Timestamp,
) -> Result<InstallationToken> {
    narrow.check()?;
    let base = api_base(base_url)?;
    let url = format!(
        "{base}/app/installations/{}/access_tokens",
        app.installation_id
    );
    let body =
        match narrow.body() {
            Some(v) => Bytes::from(serde_json::to_vec(&v).map_err(|_| {
                Error::invalid("GitHub token narrowing", "cannot be written as JSON")
            })?),
            None => Bytes::new(),
        };
    let jwt = app.jwt(now)?;
    let request = github_request(http::Method::POST, &url, &jwt, body)?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(refusal(
            app,
            &peer,
            status,
            response.body(),
            &jwt,
            Call::Mint,
        ));
    }
    #[derive(Deserialize)]
    struct Minted {
        token: SecretString,
        expires_at: String,
    }
    let minted: Minted = serde_json::from_slice(response.body()).map_err(|_| {
        Error::transport(
            &peer,
            format!(
                "GitHub answered {status} to the installation token request without a `token` \
                 and an `expires_at`; check that the base URL is the GitHub API \
                 ({GITHUB_API}, or https://HOST/api/v3 for GitHub Enterprise Server)"
            ),
        )
    })?;
    if minted.token.expose_secret().is_empty() {
        return Err(Error::transport(
            &peer,
            "GitHub answered the installation token request with an empty `token`",
        ));
    }
    let expires_at = Timestamp::parse_rfc3339(&minted.expires_at).map_err(|_| {
        Error::transport(
            &peer,
            "GitHub's `expires_at` for the installation token is not an RFC 3339 time",
        )
    })?;
    Ok(InstallationToken {
        token: minted.token,
        expires_at,
    })
}

/// Checks the App's id and key with GitHub (`GET {base_url}/app` with the JWT) and returns
/// what GitHub says the App is; used when linking an App. An App id that is not the one the
/// key (and client id) belong to is [`Error::InvalidInput`]; other errors as for
/// [`installation_token`].
pub async fn check_app(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
) -> Result<AppInfo> {
    let base = api_base(base_url)?;
    let jwt = app.jwt(Timestamp::now())?;
    let request = github_request(
        http::Method::GET,
        &format!("{base}/app"),
        &jwt,
        Bytes::new(),
    )?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(refusal(
            app,
            &peer,
            status,
            response.body(),
            &jwt,
            Call::App,
        ));
    }
    #[derive(Deserialize)]
    struct Described {
        id: u64,
        slug: String,
        name: String,
    }
    let info: Described = serde_json::from_slice(response.body()).map_err(|_| {
        Error::transport(
            &peer,
            format!(
                "GitHub answered {status} to GET /app without the App's `id`, `slug` and \
                 `name`; check that the base URL is the GitHub API ({GITHUB_API}, or \
                 https://HOST/api/v3 for GitHub Enterprise Server)"
            ),
        )
    })?;
    if info.id.to_string() != app.app_id {
        return Err(Error::invalid(
            "GitHub App id",
            format!(
                "is {}, but GitHub says the private key and client id belong to App {} (`{}`); \
                 set the App id to {}",
                app.app_id,
                info.id,
                shown(&info.slug),
                info.id
            ),
        ));
    }
    Ok(AppInfo {
        id: info.id,
        slug: info.slug,
        name: info.name,
    })
}

/// The base URL without a trailing `/`, refused unless `https` (or `http` to loopback) and
/// free of credentials, query and fragment.
pub(super) fn api_base(base_url: &str) -> Result<&str> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let ok = url::Url::parse(trimmed).ok().is_some_and(|u| {
        secure_endpoint(&u)
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    });
    if ok {
        Ok(trimmed)
    } else {
        Err(Error::invalid(
            "GitHub API base URL",
            format!(
                "must be an https:// URL without credentials, query or fragment ({GITHUB_API}, \
                 or https://HOST/api/v3 for GitHub Enterprise Server; http:// only to a \
                 loopback address)"
            ),
        ))
    }
}

pub(super) fn github_request(
    method: http::Method,
    url: &str,
    jwt: &SecretString,
    body: Bytes,
) -> Result<http::Request<Bytes>> {
    let bearer = Zeroizing::new(format!("Bearer {}", jwt.expose_secret()));
    let mut authorization = http::HeaderValue::from_str(&bearer).map_err(|_| {
        Error::config("the GitHub App JWT cannot be sent in a header (this is a bug)")
    })?;
    authorization.set_sensitive(true);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, authorization)
        .header(http::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", GITHUB_API_VERSION)
        .header(http::header::USER_AGENT, "strongroom");
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    builder.body(body).map_err(|_| {
        Error::invalid(
            "GitHub API base URL",
            "does not make a valid request URL; write it like https://api.github.com",
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Mint,
    App,
}

/// A non-2xx answer as an error, with GitHub's `message` when it quotes no credential.
pub(super) fn refusal(
    app: &GithubApp,
    peer: &str,
    status: u16,
    body: &[u8],
    jwt: &SecretString,
    call: Call,
) -> Error {
    let said = github_message(body, jwt);
    let app_id = &app.app_id;
    let installation = app.installation_id;
    match status {
        401 => Error::config(format!(
            "GitHub ({peer}) refused GitHub App {app_id}'s JWT (401{said}): check the App id \
             (and client id, if set), that the private key is this App's current one, and \
             this machine's clock"
        )),
        403 => Error::PermissionDenied {
            actor: format!("GitHub App {app_id}"),
            action: if call == Call::Mint {
                "mint a token for".to_string()
            } else {
                "read".to_string()
            },
            target: format!(
                "{} on {peer} (403{said}; a suspended installation, or a blocked App)",
                if call == Call::Mint {
                    format!("installation {installation}")
                } else {
                    "its own description".to_string()
                }
            ),
        },
        404 if call == Call::Mint => Error::NotFound {
            what: format!("GitHub App {app_id}'s installation {installation} on {peer}"),
            hint: Some(format!(
                "404{said}: the App was uninstalled, or the installation id belongs to another \
                 App; link the App again with the id from the installation's settings URL"
            )),
        },
        404 => Error::NotFound {
            what: format!("the GitHub App API (/app) on {peer}"),
            hint: Some(format!(
                "404{said}: check the base URL ({GITHUB_API}, or https://HOST/api/v3 for GitHub \
                 Enterprise Server)"
            )),
        },
        422 => Error::invalid(
            "GitHub token narrowing",
            format!(
                "GitHub ({peer}) refused it for installation {installation} (422{said}): name \
                 only repositories the installation can reach, and permissions at or below \
                 what it was granted"
            ),
        ),
        429 | 500..=599 => Error::transport(
            peer,
            format!("GitHub is unavailable or overloaded (HTTP {status}{said}); retry later"),
        ),
        _ => Error::transport(
            peer,
            format!("GitHub answered HTTP {status}{said}, which this client does not expect"),
        ),
    }
}

/// `": GitHub's message"` from a JSON error body, one line, at most 200 characters, and
/// empty when the body is not GitHub's error shape or quotes the JWT's signature.
pub(super) fn github_message(body: &[u8], jwt: &SecretString) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    let Some(message) = message else {
        return String::new();
    };
    let jwt = jwt.expose_secret();
    let signature = jwt.rsplit('.').next().unwrap_or(jwt);
    let quotes_credential = !signature.is_empty()
        && (message.contains(signature) || message.contains(jwt) || message.contains("Bearer "));
    if quotes_credential {
        return ": GitHub's message withheld, it quoted the request's credentials".to_string();
    }
    let line: String = redact_token_shaped(&message)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

/// `text` with every token-shaped word (16 characters or more of letters, digits and
/// `_-.+/=`, with at least one letter and one digit) replaced by `[redacted]`: a server that
/// quotes a credential back does not get it into an error. GitHub's own messages keep
/// their words.
pub(super) fn redact_token_shaped(text: &str) -> String {
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let shaped = word.len() >= 16
            && word.chars().any(|c| c.is_ascii_digit())
            && word.chars().any(|c| c.is_ascii_alphabetic());
        out.push_str(if shaped { "[redacted]" } else { word.as_str() });
        word.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

//! Requests and answers: building a request, reading an answer, telling GitLab's refusals
//! apart, and keeping tokens out of its messages.

use super::*;

/// What a call does, for messages: "create a service account in" + "group `acme`".
pub(super) struct Op<'a> {
    pub(super) action: String,
    pub(super) target: &'a Target,
}

impl<'a> Op<'a> {
    pub(super) fn new(action: impl Into<String>, target: &'a Target) -> Op<'a> {
        Op {
            action: action.into(),
            target,
        }
    }
}

pub(super) fn group_of(cfg: &GitlabProviderConfig) -> Result<&Target> {
    cfg.validate()?;
    match &cfg.target {
        t @ Target::Group(_) => Ok(t),
        Target::Project(_) => Err(Error::invalid(
            "gitlab provider target",
            "this call needs a group target (service_account mode)",
        )),
    }
}

pub(super) fn project_of(cfg: &GitlabProviderConfig) -> Result<&Target> {
    cfg.validate()?;
    match &cfg.target {
        t @ Target::Project(_) => Ok(t),
        Target::Group(_) => Err(Error::invalid(
            "gitlab provider target",
            "this call needs a project target (project_access_token mode)",
        )),
    }
}

/// One API request: `PRIVATE-TOKEN` (marked sensitive), `Accept: application/json`, and a
/// JSON body when there is one.
pub(super) fn build(
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    method: http::Method,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
) -> Result<http::Request<Bytes>> {
    let mut token = http::HeaderValue::from_str(admin_token.expose_secret()).map_err(|_| {
        Error::invalid(
            "gitlab provider admin token",
            "contains characters an HTTP header cannot carry; paste the token again",
        )
    })?;
    if admin_token.expose_secret().trim().is_empty() {
        return Err(Error::invalid(
            "gitlab provider admin token",
            "is empty; store the provider's GitLab token",
        ));
    }
    token.set_sensitive(true);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(cfg.api_url(path_and_query))
        .header("PRIVATE-TOKEN", token)
        .header(http::header::ACCEPT, "application/json");
    let bytes = match body {
        Some(value) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(value).map_err(|e| {
                Error::invalid("gitlab request body", format!("cannot encode: {e}"))
            })?)
        }
        None => Bytes::new(),
    };
    builder.body(bytes).map_err(|_| {
        Error::invalid(
            "gitlab provider base_url",
            "does not make a valid request URL; use e.g. `https://gitlab.example.com/api/v4`",
        )
    })
}

/// Sends `request`; a success status gives the response, anything else the mapped error.
pub(super) async fn exchange(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>> {
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if matches!(status, 200 | 201 | 204) {
        Ok(response)
    } else {
        Err(status_error(cfg, admin_token, op, status, response.body()))
    }
}

/// A deprovisioning call: 2xx is removed, 404 already gone, anything else an error.
pub(super) async fn removal(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    path: &str,
) -> Result<Removal> {
    let request = build(cfg, admin_token, http::Method::DELETE, path, None)?;
    match exchange(http, cfg, admin_token, op, request).await {
        Ok(_) => Ok(Removal::Removed),
        Err(Error::NotFound { .. }) => Ok(Removal::AlreadyGone),
        Err(e) => Err(e),
    }
}

/// The error for a status GitLab answered with (never a success).
pub(super) fn status_error(
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    status: u16,
    body: &[u8],
) -> Error {
    let peer = cfg.peer();
    let target = op.target.describe();
    let action = &op.action;
    let said = gitlab_message(body, admin_token);
    let said_suffix = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    match status {
        401 => Error::config(format!(
            "GitLab at {peer} rejected the provider's admin token (401 Unauthorized) trying to \
             {action} {target}: the token is invalid, expired or revoked; give the provider a \
             new token with the `api` scope"
        )),
        403 => Error::config(format!(
            "GitLab at {peer} refused the provider's admin token (403 Forbidden) trying to \
             {action} {target}: the token needs the `api` scope and the Owner role on the \
             {} (or an administrator's token){said_suffix}",
            match op.target {
                Target::Group(_) => "group",
                Target::Project(_) => "project (Maintainer at least)",
            }
        )),
        404 => Error::NotFound {
            what: format!("GitLab resource (trying to {action} {target} at {peer})"),
            hint: Some(format!(
                "check that {target} exists and the admin token can see it{said_suffix}"
            )),
        },
        400 | 422 => Error::invalid(
            format!("GitLab request to {action} {target}"),
            format!("GitLab at {peer} answered {status}{said_suffix}"),
        ),
        409 => Error::AlreadyExists {
            what: format!("GitLab resource (trying to {action} {target} at {peer}){said_suffix}"),
        },
        300..=399 => Error::config(format!(
            "GitLab at {peer} answered {status} (a redirect) trying to {action} {target}; \
             redirects are not followed: set base_url to the API itself, e.g. \
             `https://gitlab.example.com/api/v4`"
        )),
        429 | 500..=599 => Error::transport(
            peer,
            format!("GitLab answered {status} trying to {action} {target}; retry later"),
        ),
        _ => Error::transport(
            peer,
            format!("GitLab answered an unexpected {status} trying to {action} {target}"),
        ),
    }
}

/// GitLab's `message` (or `error`) from an error body, flattened to one line, scrubbed of
/// control characters and anything token-like, at most [`MAX_MESSAGE`] characters.
pub(super) fn gitlab_message(body: &[u8], admin_token: &SecretString) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let mut parts = Vec::new();
    if let Some(v) = value.as_ref() {
        for key in ["message", "error", "error_description"] {
            if let Some(m) = v.get(key) {
                flatten(None, m, &mut parts);
                break;
            }
        }
    }
    let text = parts.join("; ");
    sanitise(&text, admin_token)
}

pub(super) fn flatten(prefix: Option<&str>, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(match prefix {
            Some(p) => format!("{p} {s}"),
            None => s.clone(),
        }),
        serde_json::Value::Array(items) => {
            for item in items {
                flatten(prefix, item, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(Some(k), v, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push(other.to_string()),
    }
}

/// Removes the admin token, GitLab-token-shaped words (`glpat-…`, `gloas-…`) and long
/// random-looking words, and control characters; keeps at most [`MAX_MESSAGE`] characters.
pub(super) fn sanitise(text: &str, admin_token: &SecretString) -> String {
    let secret = admin_token.expose_secret();
    let mut text = text.to_string();
    if secret.len() >= 4 {
        text = text.replace(secret, "[REDACTED]");
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            if looks_like_token(w) {
                "[REDACTED]".to_string()
            } else {
                w.chars().filter(|c| !c.is_control()).collect()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > MAX_MESSAGE {
        let cut: String = joined.chars().take(MAX_MESSAGE - 1).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// A GitLab token prefix (`gl` + 2 to 6 letters + `-`), or a long run of letters and
/// digits mixing upper case, lower case and digits (a secret, not a word or a username).
pub(super) fn looks_like_token(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let prefixed = lower.match_indices("gl").any(|(i, _)| {
        let rest = &lower[i + 2..];
        let letters = rest.chars().take_while(char::is_ascii_lowercase).count();
        (2..=6).contains(&letters) && rest[letters..].starts_with('-')
    });
    let random = word
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|piece| {
            piece.len() >= 20
                && piece.chars().any(|c| c.is_ascii_digit())
                && piece.chars().any(|c| c.is_ascii_lowercase())
                && piece.chars().any(|c| c.is_ascii_uppercase())
        });
    prefixed || random
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    cfg: &GitlabProviderConfig,
    op: &Op<'_>,
    body: &[u8],
) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::transport(
            cfg.peer(),
            format!(
                "GitLab's answer trying to {} {} is not what its API documents (line {}, \
                 column {}); is base_url the API (`…/api/v4`)?",
                op.action,
                op.target.describe(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// A token-bearing answer (create or rotate) as an [`IssuedToken`]; the body is wiped.
pub(super) fn issued(
    cfg: &GitlabProviderConfig,
    op: &Op<'_>,
    response: http::Response<Bytes>,
) -> Result<IssuedToken> {
    let body = response.into_body();
    let parsed: Result<TokenAnswer> = parse(cfg, op, &body);
    if let Ok(mut bytes) = body.try_into_mut() {
        bytes.as_mut().zeroize();
    }
    let answer = parsed?;
    let expires_at = answer
        .expires_at
        .as_deref()
        .and_then(parse_date)
        .ok_or_else(|| {
            Error::transport(
                cfg.peer(),
                format!(
                    "GitLab's answer trying to {} {} has no valid `expires_at`",
                    op.action,
                    op.target.describe()
                ),
            )
        })?;
    if answer.token.expose_secret().is_empty() {
        return Err(Error::transport(
            cfg.peer(),
            format!(
                "GitLab's answer trying to {} {} carries no token",
                op.action,
                op.target.describe()
            ),
        ));
    }
    Ok(IssuedToken {
        id: answer.id,
        user_id: answer.user_id,
        name: answer.name,
        token: answer.token,
        expires_at,
    })
}

/// Whether a list answer was the last page: GitLab's `X-Next-Page` header when present
/// (empty on the last page), else a short page.
pub(super) fn is_last_page(response: &http::Response<Bytes>, count: usize) -> bool {
    match response.headers().get("x-next-page") {
        Some(next) => next.to_str().map(|s| s.trim().is_empty()).unwrap_or(true),
        None => count < PER_PAGE,
    }
}

#[derive(Deserialize)]
pub(super) struct AccountAnswer {
    pub(super) id: u64,
    pub(super) username: String,
}

#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) user_id: Option<u64>,
    #[serde(default)]
    pub(super) name: String,
    pub(super) token: SecretString,
    #[serde(default)]
    pub(super) expires_at: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct TokenListAnswer {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) user_id: Option<u64>,
    #[serde(default)]
    pub(super) active: Option<bool>,
    #[serde(default)]
    pub(super) revoked: bool,
    #[serde(default)]
    pub(super) expires_at: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) access_level: Option<u32>,
}

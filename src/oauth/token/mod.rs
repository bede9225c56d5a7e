//! Authorization URLs and token requests (RFC 6749 4.1, 6; RFC 7636; RFC 8628 3.4), with the
//! providers' request and response quirks, and the request plumbing the device and
//! revocation calls share.

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::OAuthError;
use crate::catalog::{
    secure_endpoint, ClientAuthMethod, OAuthSpec, ResponseStyle, TokenRequestFormat,
};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

/// The URL to send the user's browser to (RFC 6749 4.1.1): `response_type=code`,
/// `client_id`, `redirect_uri`, `scope` (joined by the provider's separator, left out when
/// `scopes` is empty), `state`, the PKCE `code_challenge` with `code_challenge_method=S256`
/// when given, then the provider's `authorize_params`.
///
/// Errors when the provider has no (usable) `authorize_url`, when `state` is empty (it is
/// the CSRF protection RFC 9700 4.7 asks for; make one with [`super::random_state`]), or
/// when `authorize_params` tries to set one of the parameters above.
pub fn authorize_url(
    spec: &OAuthSpec,
    client_id: &str,
    redirect_uri: &str,
    scopes: &[String],
    state: &str,
    code_challenge: Option<&str>,
) -> Result<url::Url> {
    let Some(base) = spec.authorize_url.as_deref() else {
        return Err(Error::config(
            "the provider's [oauth] table has no authorize_url, so it has no browser sign-in; \
             add authorize_url or use the device flow",
        ));
    };
    let mut url = url::Url::parse(base)
        .ok()
        .filter(secure_endpoint)
        .ok_or_else(|| {
            Error::config(
                "the provider's authorize_url must be an https URL (http only to this machine)",
            )
        })?;
    if state.is_empty() {
        return Err(Error::invalid(
            "state",
            "must not be empty: it ties the callback to this request (RFC 9700 4.7); make one \
             with oauth::random_state",
        ));
    }
    if redirect_uri.is_empty() {
        return Err(Error::invalid(
            "redirect_uri",
            "must not be empty; set it in oauth_providers.toml (http://127.0.0.1:8765/callback)",
        ));
    }
    if client_id.is_empty() {
        return Err(Error::invalid(
            "client_id",
            "must not be empty; set it in oauth_providers.toml",
        ));
    }
    if let Some(key) = spec
        .authorize_params
        .keys()
        .find(|k| crate::catalog::RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()))
    {
        return Err(Error::config(format!(
            "the provider's authorize_params may not set `{key}`: the protocol sets it"
        )));
    }
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(&spec.scope_separator));
        }
        q.append_pair("state", state);
        if let Some(challenge) = code_challenge {
            q.append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &spec.authorize_params {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

/// What is exchanged for tokens at the token endpoint.
#[derive(Debug, Clone, Copy)]
pub enum TokenGrant<'a> {
    /// The code from the authorization callback (RFC 6749 4.1.3), with the same
    /// `redirect_uri` and, under PKCE, the verifier.
    AuthorizationCode {
        /// The authorization code.
        code: &'a SecretString,
        /// The redirect URI the authorization request named.
        redirect_uri: &'a str,
        /// The PKCE code verifier, when a challenge was sent.
        code_verifier: Option<&'a SecretString>,
    },
    /// A refresh token (RFC 6749 6).
    RefreshToken {
        /// The refresh token.
        refresh_token: &'a SecretString,
    },
    /// A device code the user has (or has not yet) approved (RFC 8628 3.4).
    DeviceCode {
        /// The device code from [`super::start_device`].
        device_code: &'a SecretString,
    },
}

/// How the client identifies itself. With a secret it authenticates as the provider's
/// `client_auth` says; without (a public client) it sends `client_id` in the body and never
/// an `Authorization` header.
#[derive(Debug, Clone, Copy)]
pub struct ClientAuth<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The client secret of a confidential client; `None` for a public client.
    pub client_secret: Option<&'a SecretString>,
}

/// A successful token response (RFC 6749 5.1). `Debug` shows no token.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// A refresh token, when the server issued one (a rotating server issues a new one on
    /// every refresh: keep it in place of the old one).
    pub refresh_token: Option<SecretString>,
    /// The access token's lifetime in seconds, when given.
    pub expires_in: Option<u64>,
    /// `Bearer`, usually.
    pub token_type: Option<String>,
    /// The scopes granted, as the server wrote them, when given (they may differ from those
    /// asked for).
    pub scope: Option<String>,
}

/// Exchanges a grant for tokens: a POST to the provider's `token_url` with
/// `Accept: application/json`, encoded as its `token_request` says, the client
/// authenticated as its `client_auth` says, and the answer read with its `response` quirks.
pub async fn request_token(
    http: &dyn HttpTransport,
    spec: &OAuthSpec,
    client: &ClientAuth<'_>,
    grant: &TokenGrant<'_>,
) -> std::result::Result<TokenResponse, OAuthError> {
    let mut params: Vec<(&'static str, &str)> = Vec::with_capacity(6);
    let mut secrets: Vec<&str> = Vec::with_capacity(3);
    match grant {
        TokenGrant::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            params.push(("grant_type", "authorization_code"));
            params.push(("code", code.expose_secret()));
            params.push(("redirect_uri", redirect_uri));
            secrets.push(code.expose_secret());
            if let Some(v) = code_verifier {
                params.push(("code_verifier", v.expose_secret()));
                secrets.push(v.expose_secret());
            }
        }
        TokenGrant::RefreshToken { refresh_token } => {
            params.push(("grant_type", "refresh_token"));
            params.push(("refresh_token", refresh_token.expose_secret()));
            secrets.push(refresh_token.expose_secret());
        }
        TokenGrant::DeviceCode { device_code } => {
            params.push(("grant_type", "urn:ietf:params:oauth:grant-type:device_code"));
            params.push(("device_code", device_code.expose_secret()));
            secrets.push(device_code.expose_secret());
        }
    }
    let response = post(http, spec, "token_url", &spec.token_url, client, params).await?;
    let fields = check_response(spec, &response, &secrets_with(client, &secrets))?;
    token_from(spec, &fields)
}

/// The request's secrets plus the client secret, for scrubbing error descriptions.
pub(super) fn secrets_with<'a>(client: &ClientAuth<'a>, secrets: &[&'a str]) -> Vec<&'a str> {
    let mut all = secrets.to_vec();
    if let Some(s) = client.client_secret {
        all.push(s.expose_secret());
    }
    all
}

/// POSTs `params` (plus the client's authentication) to `url`, the provider's `key`
/// endpoint, encoded as the provider's `token_request` says.
pub(super) async fn post<'p>(
    http: &dyn HttpTransport,
    spec: &OAuthSpec,
    key: &'static str,
    url: &str,
    client: &ClientAuth<'p>,
    mut params: Vec<(&'static str, &'p str)>,
) -> std::result::Result<http::Response<Bytes>, OAuthError> {
    if url::Url::parse(url).ok().filter(secure_endpoint).is_none() {
        return Err(OAuthError::Malformed(format!(
            "the provider's {key} must be an https URL (http only to this machine), since the \
             request carries codes, tokens and client secrets"
        )));
    }
    let mut authorization = None;
    match (client.client_secret, spec.client_auth) {
        (Some(secret), ClientAuthMethod::Basic) => {
            // RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
            let pair = Zeroizing::new(format!(
                "{}:{}",
                form_encode(client.client_id).as_str(),
                form_encode(secret.expose_secret()).as_str()
            ));
            let value = Zeroizing::new(format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair.as_bytes())
            ));
            let mut header = http::HeaderValue::from_str(&value).map_err(|_| {
                OAuthError::Malformed("the client id cannot go in an HTTP header".into())
            })?;
            header.set_sensitive(true);
            authorization = Some(header);
        }
        (Some(secret), _) => {
            params.push(("client_id", client.client_id));
            params.push(("client_secret", secret.expose_secret()));
        }
        (None, _) => params.push(("client_id", client.client_id)),
    }
    let (content_type, body) = match spec.token_request {
        TokenRequestFormat::Json => {
            let object: Map<String, Value> = params
                .iter()
                .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                .collect();
            let body = serde_json::to_vec(&Value::Object(object)).map_err(|_| {
                OAuthError::Malformed("the request could not be encoded as JSON".into())
            })?;
            ("application/json", body)
        }
        // `TokenRequestFormat` is non-exhaustive for other crates only.
        TokenRequestFormat::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                form.append_pair(k, v);
            }
            (
                "application/x-www-form-urlencoded",
                form.finish().into_bytes(),
            )
        }
    };
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(url)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::CONTENT_TYPE, content_type);
    if let Some(header) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, header);
    }
    let request = builder.body(Bytes::from(body)).map_err(|_| {
        OAuthError::Malformed(format!(
            "the provider's {key} is not a URL an HTTP request can be sent to"
        ))
    })?;
    http.send(request).await.map_err(OAuthError::Transport)
}

fn form_encode(s: &str) -> Zeroizing<String> {
    Zeroizing::new(url::form_urlencoded::byte_serialize(s.as_bytes()).collect())
}

/// The response's fields: a JSON object, or a form-encoded body when the Content-Type
/// says so. `None` when it is neither.
pub(super) fn response_fields(response: &http::Response<Bytes>) -> Option<Map<String, Value>> {
    let form = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form {
        return Some(
            url::form_urlencoded::parse(response.body())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        );
    }
    match serde_json::from_slice::<Value>(response.body()) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The OAuth error a response's fields carry, if any: an `error` (RFC 6749 5.2, and in a
/// 200 body for GitHub, or anywhere defensively), or Slack's `"ok": false`.
pub(super) fn error_in(
    spec: &OAuthSpec,
    fields: &Map<String, Value>,
    status: u16,
    secrets: &[&str],
) -> Option<OAuthError> {
    let description = fields.get("error_description").and_then(Value::as_str);
    match fields.get("error") {
        Some(Value::String(code)) if !code.is_empty() => {
            return Some(OAuthError::rejected(code, description, status, secrets))
        }
        None | Some(Value::Null) => {}
        Some(Value::String(_)) => {}
        // An `error` that is an object or a number: a refusal, but not an OAuth code.
        Some(_) => {
            return Some(OAuthError::rejected(
                "unknown_error",
                description,
                status,
                secrets,
            ))
        }
    }
    if spec.response == ResponseStyle::Slack && fields.get("ok") == Some(&Value::Bool(false)) {
        return Some(OAuthError::rejected(
            "unknown_error",
            description,
            status,
            secrets,
        ));
    }
    None
}

/// Reads a response: 5xx and 429 are [`OAuthError::Unavailable`]; an OAuth error is
/// [`OAuthError::Rejected`]; a 2xx without one gives its fields; anything else is
/// [`OAuthError::Malformed`].
pub(super) fn check_response(
    spec: &OAuthSpec,
    response: &http::Response<Bytes>,
    secrets: &[&str],
) -> std::result::Result<Map<String, Value>, OAuthError> {
    let status = response.status().as_u16();
    if status == 429 || status >= 500 {
        return Err(OAuthError::Unavailable { status });
    }
    let success = response.status().is_success();
    let Some(fields) = response_fields(response) else {
        return Err(OAuthError::Malformed(if success {
            format!("the server answered HTTP {status} with a body that is not a JSON object")
        } else {
            format!("the server answered HTTP {status} without an OAuth error")
        }));
    };
    if let Some(e) = error_in(spec, &fields, status, secrets) {
        return Err(e);
    }
    if !success {
        return Err(OAuthError::Malformed(format!(
            "the server answered HTTP {status} without an OAuth `error` field"
        )));
    }
    Ok(fields)
}

/// A whole number of seconds, as a JSON number or a numeric string.
pub(super) fn seconds(
    fields: &Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<u64>, OAuthError> {
    let bad = || OAuthError::Malformed(format!("`{key}` is not a whole number of seconds"));
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// A non-empty string field.
pub(super) fn text<'m>(fields: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The tokens of a success (for Slack, the user's under `authed_user` when the top level
/// has none).
fn token_from(
    spec: &OAuthSpec,
    fields: &Map<String, Value>,
) -> std::result::Result<TokenResponse, OAuthError> {
    let mut source = fields;
    if spec.response == ResponseStyle::Slack && text(fields, "access_token").is_none() {
        if let Some(Value::Object(user)) = fields.get("authed_user") {
            if text(user, "access_token").is_some() {
                source = user;
            }
        }
    }
    let access_token = text(source, "access_token")
        .ok_or_else(|| OAuthError::Malformed("the token response has no access_token".into()))?;
    let scope = match source.get("scope") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Array(items)) => {
            let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!names.is_empty()).then(|| names.join(" "))
        }
        _ => None,
    };
    Ok(TokenResponse {
        access_token: SecretString::from(access_token.to_string()),
        refresh_token: text(source, "refresh_token").map(|t| SecretString::from(t.to_string())),
        expires_in: seconds(source, "expires_in")?,
        token_type: text(source, "token_type").map(str::to_string),
        scope,
    })
}

#[cfg(test)]
mod tests;

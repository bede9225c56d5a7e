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
mod tests {
    use base64::Engine as _;

    use super::super::testing::FakeTransport;
    use super::*;

    fn spec() -> OAuthSpec {
        let mut spec = OAuthSpec::new("http://127.0.0.1:9/token");
        spec.authorize_url = Some("https://auth.example.com/authorize?tenant=a".into());
        spec
    }

    fn query(url: &url::Url) -> Vec<(String, String)> {
        url.query_pairs().into_owned().collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn authorize_url_carries_every_parameter_encoded() {
        let mut spec = spec();
        spec.authorize_params
            .insert("access_type".into(), "offline".into());
        let url = authorize_url(
            &spec,
            "id&1",
            "http://127.0.0.1:8765/callback",
            &["openid".into(), "email".into()],
            "st ate",
            Some("chal"),
        )
        .expect("url");
        assert!(url
            .as_str()
            .starts_with("https://auth.example.com/authorize?tenant=a&"));
        assert!(url.as_str().contains("client_id=id%261"), "{url}");
        assert!(url.as_str().contains("scope=openid+email"), "{url}");
        assert_eq!(
            query(&url),
            pairs(&[
                ("tenant", "a"),
                ("response_type", "code"),
                ("client_id", "id&1"),
                ("redirect_uri", "http://127.0.0.1:8765/callback"),
                ("scope", "openid email"),
                ("state", "st ate"),
                ("code_challenge", "chal"),
                ("code_challenge_method", "S256"),
                ("access_type", "offline"),
            ])
        );
    }

    #[test]
    fn authorize_url_uses_the_scope_separator_and_omits_empty_scopes() {
        let mut spec = spec();
        spec.scope_separator = ",".into();
        let url = authorize_url(
            &spec,
            "id",
            "https://r",
            &["a".into(), "b".into()],
            "s",
            None,
        )
        .expect("url");
        assert!(query(&url).contains(&("scope".into(), "a,b".into())));
        assert!(!url.as_str().contains("code_challenge"));
        let url = authorize_url(&spec, "id", "https://r", &[], "s", None).expect("url");
        assert!(!query(&url).iter().any(|(k, _)| k == "scope"));
    }

    #[test]
    fn authorize_url_refuses_overrides_empty_state_and_no_endpoint() {
        let mut spec = spec();
        spec.authorize_params.insert("state".into(), "fixed".into());
        assert!(authorize_url(&spec, "id", "https://r", &[], "s", None).is_err());
        let spec2 = self::spec();
        assert!(authorize_url(&spec2, "id", "https://r", &[], "", None).is_err());
        let mut spec3 = self::spec();
        spec3.authorize_url = None;
        assert!(authorize_url(&spec3, "id", "https://r", &[], "s", None).is_err());
        spec3.authorize_url = Some("http://example.com/a".into());
        assert!(authorize_url(&spec3, "id", "https://r", &[], "s", None).is_err());
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    async fn exchange(
        spec: &OAuthSpec,
        fake: &FakeTransport,
        client_secret: Option<&SecretString>,
    ) -> std::result::Result<TokenResponse, OAuthError> {
        let code = secret("the-code");
        let verifier = secret("the-verifier");
        request_token(
            fake,
            spec,
            &ClientAuth {
                client_id: "my id",
                client_secret,
            },
            &TokenGrant::AuthorizationCode {
                code: &code,
                redirect_uri: "https://app/cb",
                code_verifier: Some(&verifier),
            },
        )
        .await
    }

    const OK: &str = r#"{"access_token":"at-1","refresh_token":"rt-1","expires_in":3600,"token_type":"Bearer","scope":"a b"}"#;

    #[tokio::test]
    async fn basic_client_auth_form_encodes_then_base64s() {
        let fake = FakeTransport::json(200, OK);
        let s = secret("s3cr:t/+");
        let t = exchange(&spec(), &fake, Some(&s)).await.expect("tokens");
        assert_eq!(t.access_token.expose_secret(), "at-1");
        assert_eq!(
            t.refresh_token.as_ref().map(|r| r.expose_secret()),
            Some("rt-1")
        );
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(t.token_type.as_deref(), Some("Bearer"));
        assert_eq!(t.scope.as_deref(), Some("a b"));
        let (method, uri, headers, body) = fake.last();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "http://127.0.0.1:9/token")
        );
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .expect("basic header");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim_start_matches("Basic "))
            .expect("base64");
        assert_eq!(decoded, b"my+id:s3cr%3At%2F%2B");
        assert_eq!(
            headers.get("accept").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            FakeTransport::form(&body),
            pairs(&[
                ("grant_type", "authorization_code"),
                ("code", "the-code"),
                ("redirect_uri", "https://app/cb"),
                ("code_verifier", "the-verifier"),
            ])
        );
    }

    #[tokio::test]
    async fn body_client_auth_puts_id_and_secret_in_the_form() {
        let mut spec = spec();
        spec.client_auth = ClientAuthMethod::Body;
        let fake = FakeTransport::json(200, OK);
        let s = secret("sec");
        exchange(&spec, &fake, Some(&s)).await.expect("tokens");
        let (_, _, headers, body) = fake.last();
        assert!(headers.get("authorization").is_none());
        let form = FakeTransport::form(&body);
        assert!(form.contains(&("client_id".into(), "my id".into())));
        assert!(form.contains(&("client_secret".into(), "sec".into())));
    }

    #[tokio::test]
    async fn a_public_client_sends_its_id_and_no_secret() {
        for method in [ClientAuthMethod::Basic, ClientAuthMethod::Body] {
            let mut spec = spec();
            spec.client_auth = method;
            let fake = FakeTransport::json(200, OK);
            exchange(&spec, &fake, None).await.expect("tokens");
            let (_, _, headers, body) = fake.last();
            assert!(headers.get("authorization").is_none());
            let form = FakeTransport::form(&body);
            assert!(form.contains(&("client_id".into(), "my id".into())));
            assert!(!form.iter().any(|(k, _)| k == "client_secret"));
        }
    }

    #[tokio::test]
    async fn notion_takes_a_json_request() {
        let mut spec = spec();
        spec.token_request = TokenRequestFormat::Json;
        let fake = FakeTransport::json(
            200,
            r#"{"access_token":"secret_x","token_type":"bearer","bot_id":"b"}"#,
        );
        let s = secret("sec");
        let t = exchange(&spec, &fake, Some(&s)).await.expect("tokens");
        assert_eq!(t.access_token.expose_secret(), "secret_x");
        assert!(t.refresh_token.is_none() && t.expires_in.is_none());
        let (_, _, headers, body) = fake.last();
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert!(headers.get("authorization").is_some());
        let json: Value = serde_json::from_str(&body).expect("json body");
        assert_eq!(json["grant_type"], "authorization_code");
        assert_eq!(json["code"], "the-code");
        assert_eq!(json["redirect_uri"], "https://app/cb");
    }

    #[tokio::test]
    async fn slack_user_tokens_come_from_authed_user() {
        let mut spec = spec();
        spec.response = ResponseStyle::Slack;
        let fake = FakeTransport::json(
            200,
            r#"{"ok":true,"app_id":"A1","authed_user":{"id":"U1","scope":"chat:write","access_token":"xoxp-1","token_type":"user","refresh_token":"xoxe-1","expires_in":"43200"},"team":{"id":"T1"}}"#,
        );
        let t = exchange(&spec, &fake, None).await.expect("tokens");
        assert_eq!(t.access_token.expose_secret(), "xoxp-1");
        assert_eq!(
            t.refresh_token.as_ref().map(|r| r.expose_secret()),
            Some("xoxe-1")
        );
        assert_eq!(t.expires_in, Some(43200));
        assert_eq!(t.scope.as_deref(), Some("chat:write"));
        assert_eq!(t.token_type.as_deref(), Some("user"));
        // A bot token at the top level wins.
        let fake = FakeTransport::json(
            200,
            r#"{"ok":true,"access_token":"xoxb-1","token_type":"bot","authed_user":{"access_token":"xoxp-1"}}"#,
        );
        let t = exchange(&spec, &fake, None).await.expect("tokens");
        assert_eq!(t.access_token.expose_secret(), "xoxb-1");
    }

    #[tokio::test]
    async fn slack_ok_false_is_a_refusal() {
        let mut spec = spec();
        spec.response = ResponseStyle::Slack;
        let fake = FakeTransport::json(200, r#"{"ok":false,"error":"invalid_code"}"#);
        let e = exchange(&spec, &fake, None).await.expect_err("refused");
        assert_eq!(e.code(), Some("invalid_code"));
        assert!(matches!(e, OAuthError::Rejected { status: 200, .. }));
        let fake = FakeTransport::json(200, r#"{"ok":false}"#);
        let e = exchange(&spec, &fake, None).await.expect_err("refused");
        assert_eq!(e.code(), Some("unknown_error"));
    }

    #[tokio::test]
    async fn github_errors_in_a_200_and_form_bodies() {
        let mut spec = spec();
        spec.response = ResponseStyle::Github;
        let fake = FakeTransport::json(
            200,
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired.","error_uri":"https://docs.github.com"}"#,
        );
        let e = exchange(&spec, &fake, None).await.expect_err("refused");
        assert_eq!(e.code(), Some("bad_verification_code"));
        assert!(e.to_string().contains("incorrect or expired"), "{e}");
        let fake = FakeTransport::answering(vec![FakeTransport::response(
            200,
            "application/x-www-form-urlencoded; charset=utf-8",
            "access_token=gho_abc&scope=repo%2Cgist&token_type=bearer",
        )]);
        let t = exchange(&spec, &fake, None).await.expect("tokens");
        assert_eq!(t.access_token.expose_secret(), "gho_abc");
        assert_eq!(t.scope.as_deref(), Some("repo,gist"));
        let fake = FakeTransport::answering(vec![FakeTransport::response(
            200,
            "application/x-www-form-urlencoded",
            "error=incorrect_client_credentials&error_description=The+client_id",
        )]);
        let e = exchange(&spec, &fake, None).await.expect_err("refused");
        assert_eq!(e.code(), Some("incorrect_client_credentials"));
    }

    #[tokio::test]
    async fn rfc_6749_errors_unavailability_and_malformed_answers() {
        let fake = FakeTransport::json(
            400,
            r#"{"error":"invalid_grant","error_description":"Bad Request"}"#,
        );
        let e = exchange(&spec(), &fake, None).await.expect_err("refused");
        match &e {
            OAuthError::Rejected {
                code,
                description,
                status,
            } => {
                assert_eq!((code.as_str(), *status), ("invalid_grant", 400));
                assert_eq!(description.as_deref(), Some("Bad Request"));
            }
            other => panic!("rejected expected, got {other:?}"),
        }
        assert!(!e.is_retryable());
        // Standard providers: an error in a 200 is still an error.
        let fake = FakeTransport::json(200, r#"{"error":"invalid_request"}"#);
        let e = exchange(&spec(), &fake, None).await.expect_err("refused");
        assert_eq!(e.code(), Some("invalid_request"));
        for status in [503, 500, 429] {
            let fake = FakeTransport::json(status, r#"{"error":"invalid_grant"}"#);
            let e = exchange(&spec(), &fake, None)
                .await
                .expect_err("unavailable");
            assert!(matches!(e, OAuthError::Unavailable { status: s } if s == status));
            assert!(e.is_retryable());
        }
        let fake = FakeTransport::json(200, r#"{"token_type":"Bearer"}"#);
        let e = exchange(&spec(), &fake, None).await.expect_err("malformed");
        assert!(
            matches!(&e, OAuthError::Malformed(m) if m.contains("access_token")),
            "{e}"
        );
        let fake = FakeTransport::answering(vec![FakeTransport::response(
            200,
            "text/html",
            "<html>at-1</html>",
        )]);
        let e = exchange(&spec(), &fake, None).await.expect_err("malformed");
        assert!(matches!(e, OAuthError::Malformed(_)));
        let fake = FakeTransport::answering(vec![FakeTransport::response(401, "text/plain", "no")]);
        let e = exchange(&spec(), &fake, None).await.expect_err("malformed");
        assert!(matches!(e, OAuthError::Malformed(_)));
        let fake = FakeTransport::json(200, r#"{"access_token":"a","expires_in":"soon"}"#);
        let e = exchange(&spec(), &fake, None).await.expect_err("malformed");
        assert!(matches!(e, OAuthError::Malformed(_)));
        // No answer at all.
        let fake = FakeTransport::answering(vec![]);
        let e = exchange(&spec(), &fake, None).await.expect_err("transport");
        assert!(matches!(e, OAuthError::Transport(_)) && e.is_retryable());
    }

    #[tokio::test]
    async fn expires_in_may_be_a_numeric_string() {
        let fake = FakeTransport::json(200, r#"{"access_token":"a","expires_in":"3599"}"#);
        let t = exchange(&spec(), &fake, None).await.expect("tokens");
        assert_eq!(t.expires_in, Some(3599));
    }

    #[tokio::test]
    async fn refresh_and_device_grants_send_their_parameters() {
        let fake = FakeTransport::json(200, OK);
        let rt = secret("rt-old");
        let client = ClientAuth {
            client_id: "id",
            client_secret: None,
        };
        request_token(
            &fake,
            &spec(),
            &client,
            &TokenGrant::RefreshToken { refresh_token: &rt },
        )
        .await
        .expect("tokens");
        let form = FakeTransport::form(&fake.last().3);
        assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
        assert!(form.contains(&("refresh_token".into(), "rt-old".into())));
        let fake = FakeTransport::json(200, OK);
        let dc = secret("dc-1");
        request_token(
            &fake,
            &spec(),
            &client,
            &TokenGrant::DeviceCode { device_code: &dc },
        )
        .await
        .expect("tokens");
        let form = FakeTransport::form(&fake.last().3);
        assert!(form.contains(&(
            "grant_type".into(),
            "urn:ietf:params:oauth:grant-type:device_code".into()
        )));
        assert!(form.contains(&("device_code".into(), "dc-1".into())));
    }

    #[tokio::test]
    async fn an_insecure_token_url_is_refused_before_sending() {
        let mut spec = spec();
        spec.token_url = "http://example.com/token".into();
        let fake = FakeTransport::json(200, OK);
        let e = exchange(&spec, &fake, None).await.expect_err("refused");
        assert!(matches!(e, OAuthError::Malformed(_)));
        assert!(fake.requests.lock().expect("lock").is_empty());
    }

    /// Canary: the code, verifier, refresh token, device code and client secret of a request
    /// never appear in any error it ends in, even when the server echoes them.
    #[tokio::test]
    async fn canary_secrets_never_reach_an_error() {
        const CANARY: &str = "CANARY-7f3a9c";
        let answers: Vec<(u16, &str, String)> = vec![
            (
                400,
                "application/json",
                format!(r#"{{"error":"invalid_grant","error_description":"grant {CANARY} bad"}}"#),
            ),
            (
                400,
                "application/json",
                format!(r#"{{"error":"{CANARY}"}}"#),
            ),
            (
                200,
                "application/json",
                format!(r#"{{"error":"x","error_description":"{CANARY}"}}"#),
            ),
            (
                200,
                "application/json",
                format!(r#"{{"ok":false,"error":"e","error_description":"{CANARY}"}}"#),
            ),
            (
                200,
                "application/json",
                format!(r#"{{"refresh_token":"{CANARY}"}}"#),
            ),
            (
                200,
                "application/json",
                format!(r#"{{"access_token":"{CANARY}","expires_in":"{CANARY}"}}"#),
            ),
            (200, "text/html", format!("<p>{CANARY}</p>")),
            (401, "text/plain", CANARY.to_string()),
            (
                503,
                "application/json",
                format!(r#"{{"error":"{CANARY}"}}"#),
            ),
            (302, "text/plain", CANARY.to_string()),
        ];
        let canary = secret(&format!("{CANARY}-code"));
        let canary_secret = secret(CANARY);
        for style in [
            ResponseStyle::Standard,
            ResponseStyle::Slack,
            ResponseStyle::Github,
        ] {
            for (status, content_type, body) in &answers {
                let mut spec = spec();
                spec.response = style;
                let grants = [
                    TokenGrant::AuthorizationCode {
                        code: &canary,
                        redirect_uri: "https://app/cb",
                        code_verifier: Some(&canary),
                    },
                    TokenGrant::RefreshToken {
                        refresh_token: &canary,
                    },
                    TokenGrant::DeviceCode {
                        device_code: &canary,
                    },
                ];
                for grant in &grants {
                    let fake = FakeTransport::answering(vec![FakeTransport::response(
                        *status,
                        content_type,
                        body,
                    )]);
                    let client = ClientAuth {
                        client_id: "id",
                        client_secret: Some(&canary_secret),
                    };
                    if let Err(e) = request_token(&fake, &spec, &client, grant).await {
                        let mut shown = format!("{e} {e:?}");
                        let e = crate::error::Error::from(e);
                        shown.push_str(&format!(" {e} {e:?}"));
                        assert!(!shown.contains(CANARY), "{shown}");
                    }
                }
            }
        }
    }
}

//! Unit tests of the module above.

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

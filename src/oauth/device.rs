//! The device authorization grant (RFC 8628): ask for a user code, show it, poll the token
//! endpoint until the user approves. One call per step; the caller owns the loop and the
//! waiting (at least `interval` seconds between polls, 5 more after each `SlowDown`).

use secrecy::SecretString;
use serde_json::Value;

use super::token::{check_response, post, request_token, seconds, secrets_with, text};
use super::{ClientAuth, OAuthError, TokenGrant, TokenResponse};
use crate::catalog::OAuthSpec;
use crate::transport::HttpTransport;

/// The polling interval when the server names none (RFC 8628 3.2).
const DEFAULT_INTERVAL_SECS: u64 = 5;

/// A started device authorization (RFC 8628 3.2). `Debug` shows no device code.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The code the device polls with: secret.
    pub device_code: SecretString,
    /// The code the user types at `verification_uri`.
    pub user_code: String,
    /// Where the user goes (`verification_uri`, or Google's `verification_url`).
    pub verification_uri: String,
    /// A URL with the user code filled in, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds to wait between polls (5 when the server names none; at least 1).
    pub interval: u64,
}

/// What one poll found.
#[derive(Debug)]
pub enum DevicePoll {
    /// The user approved: the tokens.
    Done(TokenResponse),
    /// Not approved yet (`authorization_pending`): poll again after the interval.
    Pending,
    /// Polling too fast (`slow_down`): add 5 seconds to the interval, then poll again.
    SlowDown,
    /// The user refused (`access_denied`).
    Denied,
    /// The device code expired (`expired_token`): start again.
    Expired,
}

/// Starts a device authorization: a POST to the provider's `device_authorization_url` with
/// the client and `scopes` (joined by the provider's separator; none when empty). A provider
/// without that endpoint is [`OAuthError::Malformed`].
pub async fn start_device(
    http: &dyn HttpTransport,
    spec: &OAuthSpec,
    client: &ClientAuth<'_>,
    scopes: &[String],
) -> Result<DeviceAuthorization, OAuthError> {
    let Some(url) = spec.device_authorization_url.as_deref() else {
        return Err(OAuthError::Malformed(
            "the provider's [oauth] table has no device_authorization_url, so it does not offer \
             the device flow; add the key, or sign in through the browser"
                .into(),
        ));
    };
    let scope = scopes.join(&spec.scope_separator);
    let mut params: Vec<(&'static str, &str)> = Vec::new();
    if !scope.is_empty() {
        params.push(("scope", &scope));
    }
    let response = post(http, spec, "device_authorization_url", url, client, params).await?;
    let fields = check_response(spec, &response, &secrets_with(client, &[]))?;
    let missing = |key: &str| {
        OAuthError::Malformed(format!("the device authorization response has no {key}"))
    };
    let device_code = text(&fields, "device_code").ok_or_else(|| missing("device_code"))?;
    let user_code = text(&fields, "user_code").ok_or_else(|| missing("user_code"))?;
    let verification_uri = text(&fields, "verification_uri")
        .or_else(|| text(&fields, "verification_url"))
        .ok_or_else(|| missing("verification_uri"))?;
    let web_url = |key: &str, value: &str| {
        url::Url::parse(value)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .map(|_| value.to_string())
            .ok_or_else(|| OAuthError::Malformed(format!("{key} is not an http(s) URL")))
    };
    let verification_uri = web_url("verification_uri", verification_uri)?;
    let verification_uri_complete = match fields.get("verification_uri_complete") {
        Some(Value::String(s)) if !s.is_empty() => Some(web_url("verification_uri_complete", s)?),
        _ => None,
    };
    let expires_in = seconds(&fields, "expires_in")?.ok_or_else(|| missing("expires_in"))?;
    let interval = seconds(&fields, "interval")?
        .unwrap_or(DEFAULT_INTERVAL_SECS)
        .max(1);
    Ok(DeviceAuthorization {
        device_code: SecretString::from(device_code.to_string()),
        user_code: user_code.to_string(),
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
    })
}

/// Polls the token endpoint once with the device code (RFC 8628 3.4, 3.5). The refusals
/// the flow expects are [`DevicePoll`] values; any other error is an `Err`.
pub async fn poll_device(
    http: &dyn HttpTransport,
    spec: &OAuthSpec,
    client: &ClientAuth<'_>,
    device_code: &SecretString,
) -> Result<DevicePoll, OAuthError> {
    match request_token(http, spec, client, &TokenGrant::DeviceCode { device_code }).await {
        Ok(tokens) => Ok(DevicePoll::Done(tokens)),
        Err(e) => match e.code() {
            Some("authorization_pending") => Ok(DevicePoll::Pending),
            Some("slow_down") => Ok(DevicePoll::SlowDown),
            Some("access_denied") => Ok(DevicePoll::Denied),
            Some("expired_token") => Ok(DevicePoll::Expired),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::testing::FakeTransport;
    use super::*;

    fn spec() -> OAuthSpec {
        let mut spec = OAuthSpec::new("http://127.0.0.1:9/token");
        spec.device_authorization_url = Some("http://127.0.0.1:9/device".into());
        spec
    }

    const CLIENT: ClientAuth<'static> = ClientAuth {
        client_id: "cid",
        client_secret: None,
    };

    #[tokio::test]
    async fn github_style_device_start() {
        let fake = FakeTransport::json(
            200,
            r#"{"device_code":"dc-1","user_code":"WDJB-MJHT","verification_uri":"https://github.com/login/device","expires_in":900,"interval":5}"#,
        );
        let d = start_device(&fake, &spec(), &CLIENT, &["repo".into(), "gist".into()])
            .await
            .expect("started");
        assert_eq!(d.device_code.expose_secret(), "dc-1");
        assert_eq!(d.user_code, "WDJB-MJHT");
        assert_eq!(d.verification_uri, "https://github.com/login/device");
        assert_eq!((d.expires_in, d.interval), (900, 5));
        assert!(!format!("{d:?}").contains("dc-1"));
        let (method, uri, headers, body) = fake.last();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "http://127.0.0.1:9/device")
        );
        assert!(headers.get("authorization").is_none());
        assert_eq!(
            FakeTransport::form(&body),
            vec![
                ("scope".to_string(), "repo gist".to_string()),
                ("client_id".to_string(), "cid".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn google_style_verification_url_and_default_interval() {
        let fake = FakeTransport::json(
            200,
            r#"{"device_code":"dc","user_code":"GQVQ-JKEC","verification_url":"https://www.google.com/device","expires_in":"1800","verification_uri_complete":"https://www.google.com/device?user_code=GQVQ-JKEC"}"#,
        );
        let d = start_device(&fake, &spec(), &CLIENT, &[])
            .await
            .expect("started");
        assert_eq!(d.verification_uri, "https://www.google.com/device");
        assert_eq!(d.interval, 5);
        assert_eq!(d.expires_in, 1800);
        assert!(d.verification_uri_complete.is_some());
        assert!(!FakeTransport::form(&fake.last().3)
            .iter()
            .any(|(k, _)| k == "scope"));
    }

    #[tokio::test]
    async fn a_device_start_without_the_endpoint_or_fields_is_malformed() {
        let mut no_endpoint = spec();
        no_endpoint.device_authorization_url = None;
        let fake = FakeTransport::json(200, "{}");
        let e = start_device(&fake, &no_endpoint, &CLIENT, &[])
            .await
            .expect_err("none");
        assert!(e.to_string().contains("device_authorization_url"), "{e}");
        let fake = FakeTransport::json(200, r#"{"device_code":"dc","user_code":"u"}"#);
        let e = start_device(&fake, &spec(), &CLIENT, &[])
            .await
            .expect_err("fields");
        assert!(matches!(e, OAuthError::Malformed(_)));
        let fake = FakeTransport::json(
            200,
            r#"{"device_code":"dc","user_code":"u","verification_uri":"javascript:alert(1)","expires_in":5}"#,
        );
        let e = start_device(&fake, &spec(), &CLIENT, &[])
            .await
            .expect_err("scheme");
        assert!(matches!(e, OAuthError::Malformed(_)));
    }

    #[tokio::test]
    async fn polls_map_the_rfc_8628_codes() {
        let dc = SecretString::from("dc-1".to_string());
        let cases = [
            (400, r#"{"error":"authorization_pending"}"#, "pending"),
            (400, r#"{"error":"slow_down"}"#, "slow"),
            (400, r#"{"error":"access_denied"}"#, "denied"),
            (400, r#"{"error":"expired_token"}"#, "expired"),
            // GitHub answers 200 with the error.
            (200, r#"{"error":"authorization_pending"}"#, "pending"),
            (
                200,
                r#"{"access_token":"at","token_type":"bearer"}"#,
                "done",
            ),
        ];
        for (status, body, want) in cases {
            let fake = FakeTransport::json(status, body);
            let got = match poll_device(&fake, &spec(), &CLIENT, &dc)
                .await
                .expect("mapped")
            {
                DevicePoll::Done(t) => {
                    assert_eq!(t.access_token.expose_secret(), "at");
                    "done"
                }
                DevicePoll::Pending => "pending",
                DevicePoll::SlowDown => "slow",
                DevicePoll::Denied => "denied",
                DevicePoll::Expired => "expired",
            };
            assert_eq!(got, want, "{body}");
            let form = FakeTransport::form(&fake.last().3);
            assert!(form.contains(&("device_code".into(), "dc-1".into())));
        }
        let fake = FakeTransport::json(400, r#"{"error":"invalid_client"}"#);
        let e = poll_device(&fake, &spec(), &CLIENT, &dc)
            .await
            .expect_err("other");
        assert_eq!(e.code(), Some("invalid_client"));
        let fake = FakeTransport::json(503, "");
        let e = poll_device(&fake, &spec(), &CLIENT, &dc)
            .await
            .expect_err("down");
        assert!(e.is_retryable());
    }
}

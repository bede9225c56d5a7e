//! Token revocation (RFC 7009): tell the provider a token is no longer wanted, so a token
//! deleted from the vault stops working too.

use secrecy::{ExposeSecret, SecretString};

use super::token::{check_response, error_in, post, response_fields, secrets_with};
use super::{ClientAuth, OAuthError};
use crate::catalog::OAuthSpec;
use crate::transport::HttpTransport;

/// Which kind of token is revoked: the `token_type_hint` (RFC 7009 2.1). Revoking a refresh
/// token usually revokes its access tokens too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `refresh_token`.
    RefreshToken,
    /// `access_token`.
    AccessToken,
}

impl TokenKind {
    fn hint(self) -> &'static str {
        match self {
            TokenKind::RefreshToken => "refresh_token",
            TokenKind::AccessToken => "access_token",
        }
    }
}

/// Revokes `token`: a POST of `token` and `token_type_hint` to the provider's
/// `revocation_url`, encoded (form or JSON) and with the client authenticated as for the
/// token endpoint. Any 2xx is success (RFC 7009 2.2: a token the server does not know also
/// answers 200); 503 and other 5xx are [`OAuthError::Unavailable`]. A provider without a
/// revocation endpoint is [`OAuthError::Malformed`].
pub async fn revoke(
    http: &dyn HttpTransport,
    spec: &OAuthSpec,
    client: &ClientAuth<'_>,
    token: &SecretString,
    kind: TokenKind,
) -> Result<(), OAuthError> {
    let Some(url) = spec.revocation_url.as_deref() else {
        return Err(OAuthError::Malformed(
            "provider has no revocation_url in its [oauth] table, so its tokens cannot be \
             revoked through RFC 7009; revoke them in the provider's own settings"
                .into(),
        ));
    };
    let params = vec![
        ("token", token.expose_secret()),
        ("token_type_hint", kind.hint()),
    ];
    let response = post(http, spec, "revocation_url", url, client, params).await?;
    let secrets = secrets_with(client, &[token.expose_secret()]);
    if response.status().is_success() {
        // The body is usually empty; an OAuth error in it (defensively) is still an error.
        let status = response.status().as_u16();
        return match response_fields(&response).and_then(|f| error_in(spec, &f, status, &secrets)) {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    check_response(spec, &response, &secrets).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::testing::FakeTransport;
    use super::*;

    fn spec() -> OAuthSpec {
        let mut spec = OAuthSpec::new("http://127.0.0.1:9/token");
        spec.revocation_url = Some("http://127.0.0.1:9/revoke".into());
        spec
    }

    #[tokio::test]
    async fn revocation_posts_the_token_and_its_hint() {
        let fake = FakeTransport::answering(vec![FakeTransport::response(200, "text/plain", "")]);
        let token = SecretString::from("rt-1".to_string());
        let secret = SecretString::from("sec".to_string());
        let client = ClientAuth {
            client_id: "cid",
            client_secret: Some(&secret),
        };
        revoke(&fake, &spec(), &client, &token, TokenKind::RefreshToken)
            .await
            .expect("revoked");
        let (method, uri, headers, body) = fake.last();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "http://127.0.0.1:9/revoke")
        );
        assert!(headers.get("authorization").is_some());
        assert_eq!(
            FakeTransport::form(&body),
            vec![
                ("token".to_string(), "rt-1".to_string()),
                ("token_type_hint".to_string(), "refresh_token".to_string())
            ]
        );
        let fake = FakeTransport::json(200, "{}");
        let public = ClientAuth {
            client_id: "cid",
            client_secret: None,
        };
        revoke(&fake, &spec(), &public, &token, TokenKind::AccessToken)
            .await
            .expect("revoked");
        let form = FakeTransport::form(&fake.last().3);
        assert!(form.contains(&("token_type_hint".into(), "access_token".into())));
        assert!(form.contains(&("client_id".into(), "cid".into())));
    }

    #[tokio::test]
    async fn revocation_errors() {
        let token = SecretString::from("tok-CANARY".to_string());
        let client = ClientAuth {
            client_id: "cid",
            client_secret: None,
        };
        let fake = FakeTransport::json(503, "");
        let e = revoke(&fake, &spec(), &client, &token, TokenKind::AccessToken)
            .await
            .expect_err("down");
        assert!(matches!(e, OAuthError::Unavailable { status: 503 }));
        let fake = FakeTransport::json(
            400,
            r#"{"error":"unsupported_token_type","error_description":"tok-CANARY"}"#,
        );
        let e = revoke(&fake, &spec(), &client, &token, TokenKind::AccessToken)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some("unsupported_token_type"));
        assert!(!format!("{e} {e:?}").contains("tok-CANARY"));
        let mut none = spec();
        none.revocation_url = None;
        let e = revoke(&fake, &none, &client, &token, TokenKind::AccessToken)
            .await
            .expect_err("no endpoint");
        assert!(
            e.to_string().contains("provider has no revocation_url"),
            "{e}"
        );
    }
}

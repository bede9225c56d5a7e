//! The OAuth 2.0 protocol, with no vault and no store: PKCE (RFC 7636), authorization URLs
//! and token requests (RFC 6749), the device flow (RFC 8628) and revocation (RFC 7009),
//! following the security BCP (RFC 9700). The vault drives these calls and keeps the tokens.
//!
//! A provider's endpoints and quirks come from its `[oauth]` table
//! ([`crate::catalog::OAuthSpec`]); a host's client ids and secrets from
//! `oauth_providers.toml` ([`OAuthClients`]). Every request goes through the host's
//! [`crate::transport::HttpTransport`].
//!
//! ```rust,ignore
//! let spec = catalog.require("google_oauth")?.oauth.as_ref().ok_or(...)?;
//! let client = clients.get("google_oauth").ok_or(...)?;
//! let (pkce, state) = (oauth::Pkce::generate()?, oauth::random_state()?);
//! let url = oauth::authorize_url(spec, &client.client_id, redirect, &spec.scopes, &state,
//!                                spec.pkce.then(|| pkce.challenge()))?;
//! // ... the browser comes back to `redirect` with `code` and the same `state` ...
//! let auth = oauth::ClientAuth { client_id: &client.client_id, client_secret: secret.as_ref() };
//! let grant = oauth::TokenGrant::AuthorizationCode {
//!     code: &code, redirect_uri: redirect, code_verifier: spec.pkce.then(|| pkce.verifier()),
//! };
//! let tokens = oauth::request_token(&*http, spec, &auth, &grant).await?;
//! ```
//!
//! Secrets (codes, verifiers, tokens, client secrets) are [`secrecy::SecretString`]s and
//! never reach an error: [`OAuthError`] carries the server's error code and its (shortened,
//! escaped) description, never a request or response body, and never a URL's query.

mod client;
mod device;
mod pkce;
mod revoke;
mod token;

use std::fmt;

pub use crate::catalog::{ClientAuthMethod, OAuthSpec, ResponseStyle, TokenRequestFormat};
pub use client::{ClientSecret, OAuthClient, OAuthClients};
pub use device::{poll_device, start_device, DeviceAuthorization, DevicePoll};
pub use pkce::{random_state, Pkce};
pub use revoke::{revoke, TokenKind};
pub use token::{authorize_url, request_token, ClientAuth, TokenGrant, TokenResponse};

/// The most characters of a server's `error_description` an error keeps.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// The most characters of a server's `error` code an error keeps.
const MAX_CODE_CHARS: usize = 64;

/// Why an OAuth exchange failed.
///
/// Converted into a [`crate::error::Error`] (with `?` in a function returning [`crate::error::Result`]):
/// [`Unavailable`](Self::Unavailable) becomes an [`crate::error::Error::Transport`] to
/// `oauth server`, [`Transport`](Self::Transport) the transport's own error, and
/// [`Rejected`](Self::Rejected) and [`Malformed`](Self::Malformed) an
/// [`crate::error::Error::Config`] (a refusal is fixed by the operator: a new sign-in, the right
/// client secret, the right endpoint). Match on this type first when the difference matters.
#[derive(Debug)]
#[non_exhaustive]
pub enum OAuthError {
    /// The server refused with an OAuth error code (`invalid_grant`, `authorization_pending`,
    /// `slow_down`, `expired_token`, `access_denied`, ...).
    Rejected {
        /// The `error` code (at most 64 characters, control characters escaped).
        code: String,
        /// The server's `error_description`: untrusted text, at most 200 characters, control
        /// characters escaped.
        description: Option<String>,
        /// The HTTP status (200 for providers that report errors in a 200 body).
        status: u16,
    },
    /// The server failed (5xx, or 429): worth retrying later.
    Unavailable {
        /// The HTTP status.
        status: u16,
    },
    /// No response at all (the transport's error): worth retrying.
    Transport(crate::error::Error),
    /// A response that is not OAuth (bad JSON, no access_token, ...), or a spec that cannot
    /// be used: says what was wrong, never the body.
    Malformed(String),
}

impl OAuthError {
    /// The server's OAuth error code, for [`Rejected`](Self::Rejected).
    pub fn code(&self) -> Option<&str> {
        match self {
            OAuthError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: no answer, a 5xx or 429, or the server's own
    /// `server_error` / `temporarily_unavailable` codes (RFC 6749 4.1.2.1).
    pub fn is_retryable(&self) -> bool {
        match self {
            OAuthError::Unavailable { .. } | OAuthError::Transport(_) => true,
            OAuthError::Rejected { code, .. } => {
                matches!(code.as_str(), "server_error" | "temporarily_unavailable")
            }
            OAuthError::Malformed(_) => false,
        }
    }

    /// A refusal built from a server's `error` and `error_description`, shortened and
    /// escaped; any of `secrets` the description repeats is replaced by `[REDACTED]`, and a
    /// description (or code) that repeats one encoded — the base64 of an `Authorization:
    /// Basic` header a server echoes, a form-encoded body — is withheld whole.
    pub(crate) fn rejected(
        code: &str,
        description: Option<&str>,
        status: u16,
        secrets: &[&str],
    ) -> OAuthError {
        let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
        let description = description.filter(|d| !d.trim().is_empty()).map(|d| {
            let mut d = d.to_string();
            for s in &secrets {
                d = d.replace(s, "[REDACTED]");
            }
            if secrets
                .iter()
                .any(|s| crate::redact::repeats_encoded(&d, s))
            {
                return "[REDACTED: the description repeated a secret of the request]".into();
            }
            untrusted(&d, MAX_DESCRIPTION_CHARS)
        });
        let mut code = untrusted(code, MAX_CODE_CHARS);
        for s in &secrets {
            if code.contains(s) || crate::redact::repeats_encoded(&code, s) {
                code = "[REDACTED]".to_string();
            }
        }
        OAuthError::Rejected {
            code,
            description,
            status,
        }
    }
}

/// At most `max` characters of `text`, with control characters escaped.
fn untrusted(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// What to do about the common refusals (RFC 6749 5.2, RFC 8628 3.5).
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "invalid_grant" => {
            "the code or refresh token is invalid, expired, revoked or was issued to another \
             client; sign in again"
        }
        "invalid_client" => {
            "the client id or secret is wrong, or the client authentication method \
             (client_auth in the provider's [oauth] table) is not the one the server expects; \
             check oauth_providers.toml"
        }
        "unauthorized_client" => "the client is not allowed this grant type; check its settings",
        "invalid_scope" => "a requested scope is unknown or not allowed for this client",
        "access_denied" => "the user (or the server) refused the authorization",
        "expired_token" => "the device code expired before the user approved; start again",
        "authorization_pending" => "the user has not approved yet; keep polling",
        "slow_down" => "polling too fast; wait 5 seconds longer between polls",
        _ => return None,
    })
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OAuthError::Rejected {
                code,
                description,
                status,
            } => {
                write!(f, "the OAuth server refused (HTTP {status}): `{code}`")?;
                if let Some(d) = description {
                    write!(f, " ({d})")?;
                }
                if let Some(h) = hint(code) {
                    write!(f, "; {h}")?;
                }
                Ok(())
            }
            OAuthError::Unavailable { status } => write!(
                f,
                "the OAuth server is unavailable (HTTP {status}); try again later"
            ),
            OAuthError::Transport(e) => write!(f, "{e}"),
            OAuthError::Malformed(m) => write!(f, "unusable OAuth exchange: {m}"),
        }
    }
}

impl std::error::Error for OAuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OAuthError::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<OAuthError> for crate::error::Error {
    fn from(e: OAuthError) -> crate::error::Error {
        match e {
            OAuthError::Transport(e) => e,
            OAuthError::Unavailable { .. } => {
                crate::error::Error::transport("oauth server", e.to_string())
            }
            // The client's own registration is wrong: the operator's to fix.
            OAuthError::Rejected { ref code, .. }
                if matches!(code.as_str(), "invalid_client" | "unauthorized_client") =>
            {
                crate::error::Error::config(e.to_string())
            }
            OAuthError::Rejected { .. } => crate::error::Error::Rejected {
                peer: "the OAuth provider".into(),
                message: e.to_string(),
            },
            OAuthError::Malformed(_) => crate::error::Error::config(e.to_string()),
        }
    }
}

/// A fake [`crate::transport::HttpTransport`] for the tests: canned responses, recorded
/// requests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use bytes::Bytes;

    /// Answers each request with the next canned response and keeps the requests.
    #[derive(Debug, Default)]
    pub(crate) struct FakeTransport {
        responses: Mutex<Vec<http::Response<Bytes>>>,
        pub(crate) requests: Mutex<Vec<http::Request<Bytes>>>,
    }

    impl FakeTransport {
        /// A transport that answers with these, in order.
        pub(crate) fn answering(responses: Vec<http::Response<Bytes>>) -> FakeTransport {
            let mut responses = responses;
            responses.reverse();
            FakeTransport {
                responses: Mutex::new(responses),
                requests: Mutex::new(Vec::new()),
            }
        }

        /// One response of this status, content type and body.
        pub(crate) fn response(
            status: u16,
            content_type: &str,
            body: &str,
        ) -> http::Response<Bytes> {
            let mut r = http::Response::new(Bytes::from(body.to_string()));
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(content_type).expect("content type"),
            );
            r
        }

        /// A transport answering once with JSON.
        pub(crate) fn json(status: u16, body: &str) -> FakeTransport {
            FakeTransport::answering(vec![FakeTransport::response(
                status,
                "application/json; charset=utf-8",
                body,
            )])
        }

        /// The last request: (method, uri, headers, body as text).
        pub(crate) fn last(&self) -> (String, String, http::HeaderMap, String) {
            let requests = self.requests.lock().expect("lock");
            let r = requests.last().expect("a request was sent");
            (
                r.method().to_string(),
                r.uri().to_string(),
                r.headers().clone(),
                String::from_utf8(r.body().to_vec()).expect("utf-8 body"),
            )
        }

        /// A form body as pairs.
        pub(crate) fn form(body: &str) -> Vec<(String, String)> {
            url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl crate::transport::HttpTransport for FakeTransport {
        async fn send(
            &self,
            request: http::Request<Bytes>,
        ) -> crate::error::Result<http::Response<Bytes>> {
            let peer = crate::transport::peer_of(request.uri());
            self.requests.lock().expect("lock").push(request);
            self.responses
                .lock()
                .expect("lock")
                .pop()
                .ok_or_else(|| crate::error::Error::transport(peer, "connection refused"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_shortened_and_escaped() {
        let long = format!("bad\n\u{1b}[31m{}", "x".repeat(300));
        let e = OAuthError::rejected("invalid_grant", Some(&long), 400, &[]);
        let OAuthError::Rejected { description, .. } = &e else {
            panic!("rejected")
        };
        let d = description.as_deref().unwrap_or_default();
        assert!(d.starts_with("bad\\n\\u{1b}[31m"), "{d}");
        assert!(d.ends_with('…'));
        assert!(!d.chars().any(char::is_control));
        assert!(e.to_string().contains("sign in again"));
    }

    #[test]
    fn a_description_repeating_a_secret_is_redacted() {
        let e = OAuthError::rejected(
            "invalid_grant",
            Some("code abc123 is bad"),
            400,
            &["abc123"],
        );
        assert!(!format!("{e} {e:?}").contains("abc123"));
    }

    /// Found by tests/canary_leak.rs: a server echoing the request's `Authorization: Basic`
    /// header put the client secret, base64-encoded, into the error.
    #[test]
    fn a_description_repeating_a_secret_encoded_is_withheld() {
        use base64::Engine;
        let secret = "cs-7f3a9c+/x";
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("client:{secret}"));
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for echoed in [
            format!("Authorization: Basic {basic}"),
            format!("body: client_secret={form}"),
            format!("hex {}", hex::encode(secret)),
        ] {
            let e = OAuthError::rejected("invalid_client", Some(&echoed), 401, &[secret]);
            let text = format!("{e} {e:?}");
            assert!(!text.contains(&basic) && !text.contains(&form), "{text}");
            assert!(text.contains("[REDACTED"), "{text}");
        }
        // An ordinary description stays.
        let e = OAuthError::rejected("invalid_grant", Some("code expired"), 400, &[secret]);
        assert!(e.to_string().contains("code expired"), "{e}");
    }

    #[test]
    fn retryable_and_codes() {
        assert!(OAuthError::Unavailable { status: 503 }.is_retryable());
        assert!(OAuthError::rejected("temporarily_unavailable", None, 400, &[]).is_retryable());
        assert!(!OAuthError::rejected("invalid_grant", None, 400, &[]).is_retryable());
        assert_eq!(
            OAuthError::rejected("slow_down", None, 400, &[]).code(),
            Some("slow_down")
        );
        assert!(!OAuthError::Malformed("x".into()).is_retryable());
    }

    #[test]
    fn conversion_into_the_crate_error() {
        use crate::error::ErrorKind;
        let e: crate::error::Error = OAuthError::Unavailable { status: 502 }.into();
        assert_eq!(e.kind(), ErrorKind::Transport);
        let e: crate::error::Error = OAuthError::rejected("invalid_grant", None, 400, &[]).into();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        let e: crate::error::Error = OAuthError::rejected("invalid_client", None, 401, &[]).into();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e: crate::error::Error = OAuthError::Malformed("no access_token".into()).into();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e: crate::error::Error =
            OAuthError::Transport(crate::error::Error::transport("h", "down")).into();
        assert_eq!(e.kind(), ErrorKind::Transport);
    }
}

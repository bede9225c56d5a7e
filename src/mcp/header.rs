//! `Authorization: Bearer <token>` for an HTTP MCP server (handler type `mcp_http`).

use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::TokenSource;
use crate::error::{Error, Result};

/// Builds `Authorization: Bearer <current token>` for each request to an HTTP MCP server.
///
/// The token is fetched from the [`TokenSource`] on every call, so a refreshed token is sent
/// from the next request on. The header value is marked sensitive
/// ([`HeaderValue::set_sensitive`]), so `http`'s own `Debug` hides it; this type's `Debug`
/// shows no token either.
#[derive(Clone)]
pub struct BearerHeaderSource {
    source: Arc<dyn TokenSource>,
}

impl BearerHeaderSource {
    /// A header source over `source`.
    pub fn new(source: Arc<dyn TokenSource>) -> Self {
        BearerHeaderSource { source }
    }

    /// `(Authorization, "Bearer <current token>")`, the value marked sensitive.
    ///
    /// Fails with the source's error, or with [`Error::InvalidInput`] (field `token`, no value)
    /// when the token is empty or holds a character a header value may not (a control
    /// character such as a newline, or a non-visible byte).
    pub async fn header(&self) -> Result<(HeaderName, HeaderValue)> {
        let token = self.source.token().await?;
        let token = token.expose_secret();
        if token.is_empty() {
            return Err(Error::invalid(
                "token",
                "is empty; a bearer token is required",
            ));
        }
        // Visible ASCII only: refuses control characters, spaces and bytes above 0x7e, which
        // an HTTP library or proxy might otherwise mangle or split on.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "token",
                "is not a valid HTTP header value (only visible ASCII characters may appear \
                 in a bearer token)",
            ));
        }
        let mut text = Zeroizing::new(String::with_capacity(7 + token.len()));
        text.push_str("Bearer ");
        text.push_str(token);
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| Error::invalid("token", "is not a valid HTTP header value"))?;
        value.set_sensitive(true);
        Ok((AUTHORIZATION, value))
    }

    /// Set the `Authorization` header of `req` to the current bearer token, replacing any
    /// there was.
    pub async fn apply<B>(&self, req: &mut http::Request<B>) -> Result<()> {
        let (name, value) = self.header().await?;
        req.headers_mut().insert(name, value);
        Ok(())
    }
}

impl fmt::Debug for BearerHeaderSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerHeaderSource")
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::StaticTokenSource;
    use secrecy::SecretString;

    fn source(token: &str) -> BearerHeaderSource {
        BearerHeaderSource::new(Arc::new(StaticTokenSource::new(SecretString::from(
            token.to_owned(),
        ))))
    }

    #[tokio::test]
    async fn a_token_with_a_newline_is_refused_without_its_value() {
        for bad in [
            "line\nbreak-canary",
            "",
            "sp ace-canary",
            "caf\u{e9}-canary",
        ] {
            let err = source(bad).header().await.err();
            let text = format!(
                "{err:?} {}",
                err.as_ref().map(|e| e.to_string()).unwrap_or_default()
            );
            assert!(err.is_some(), "accepted {bad:?}");
            assert!(!text.contains("canary"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_good_token_becomes_a_sensitive_bearer_value() {
        let (name, value) = match source("abc.DEF-123_~+/=").header().await {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(name, AUTHORIZATION);
        assert!(value.is_sensitive());
        assert_eq!(value.as_bytes(), b"Bearer abc.DEF-123_~+/=");
    }
}

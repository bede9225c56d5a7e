//! The HTTP side of the OAuth code flow, for a host to mount on its own server.
//!
//! Two framework-neutral functions (always compiled) do the work a host's handlers need:
//!
//! - [`oauth_start`] starts a flow for the signed-in user and gives the [`OAuthRedirect`]
//!   to send the browser to (the flow's `state` stays inside that URL and in the vault's
//!   pending record; the host never handles it).
//! - [`oauth_callback`] takes the raw query string the provider redirected back with
//!   (RFC 6749 4.1.2 / 4.1.2.1), checks it, and completes the flow
//!   ([`Vault::oauth_complete`]).
//!
//! With the `axum` feature, `routes::oauth_router` mounts both (and a status route) as an
//! `axum::Router`. See docs/OAUTH.md, "Mounting the callback".
//!
//! # The callback's query
//!
//! - `code` and `state` must each be present, non-empty, and appear once; a missing one is
//!   [`Error::InvalidInput`] naming it.
//! - Any parameter that appears twice is refused ([`Error::InvalidInput`]): RFC 6749 3.1
//!   forbids repeating a response parameter, and a repeated `state` or `code` is the shape
//!   of parameter pollution (which copy would a proxy, a log, the vault have read?).
//! - An `error` parameter (the provider's refusal, e.g. `access_denied` when the user
//!   declined consent) wins over everything else and is [`Error::InvalidInput`] for the
//!   field `oauth callback`, whose message names the error code when it is a well-formed
//!   RFC 6749 code (at most 64 characters of `%x20-21 / %x23-5B / %x5D-7E`) and says "a
//!   malformed error code" otherwise. The `error_description` is *not* repeated: it is text
//!   chosen by whoever wrote the URL, and the message is shown to the user. The pending flow
//!   is left to lapse (10 minutes); it cannot be completed without a code.
//! - Unknown parameters (`iss`, `session_state`, ...) are ignored, as RFC 6749 3.1 asks.
//! - No message ever repeats a `code` or a `state`.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::vault::{CredentialInfo, OAuthStart, Principal, Vault};

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod routes;

/// The most bytes of a callback query [`oauth_callback`] reads; a longer one is refused.
pub const MAX_CALLBACK_QUERY: usize = 8 * 1024;

/// Where to send the browser to log in: answer with a redirect (`302 Found` or
/// `303 See Other`) whose `Location` is [`location`](Self::location), and
/// `Cache-Control: no-store`.
///
/// `Debug` shows the URL without its query (the query carries the flow's `state`).
#[derive(Clone)]
#[non_exhaustive]
pub struct OAuthRedirect {
    /// The provider's authorize URL, with the flow's parameters (`state` among them).
    pub location: String,
    /// When the flow lapses: the callback must come before.
    pub expires_at: Timestamp,
}

impl fmt::Debug for OAuthRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthRedirect")
            .field("location", &redacted_url(&self.location))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `url` without its query or fragment (`?[REDACTED]` in its place when it had one), or
/// `[REDACTED]` when it does not parse.
fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some() || u.fragment().is_some();
            u.set_query(None);
            u.set_fragment(None);
            if had_query {
                format!("{u}?[REDACTED]")
            } else {
                u.to_string()
            }
        }
        Err(_) => "[REDACTED]".to_string(),
    }
}

/// Starts an authorization-code flow for `actor`'s user ([`Vault::oauth_start`]) and gives
/// the redirect to send the browser on. The flow's `state` is only inside
/// [`OAuthRedirect::location`] and the vault's pending record.
pub async fn oauth_start(
    vault: &Vault,
    actor: &Principal,
    start: OAuthStart,
) -> Result<OAuthRedirect> {
    let started = vault.oauth_start(actor, start).await?;
    Ok(OAuthRedirect {
        location: started.authorize_url,
        expires_at: started.expires_at,
    })
}

/// Completes a flow from the query string of the provider's redirect back (with or without
/// its leading `?`): checks it as the [module docs](self) say, then
/// [`Vault::oauth_complete`] as `actor`, which must be the user who started the flow.
///
/// An `error=` callback (the user declined, the provider refused) is
/// [`Error::InvalidInput`]; so are a missing `code` or `state` and a repeated parameter.
pub async fn oauth_callback(
    vault: &Vault,
    actor: &Principal,
    query: &str,
) -> Result<CredentialInfo> {
    let callback = parse_callback(query)?;
    vault
        .oauth_complete(actor, &callback.state, &callback.code)
        .await
}

/// A callback's `code` and `state`.
struct Callback {
    code: SecretString,
    state: SecretString,
}

/// The field every callback refusal names.
const FIELD: &str = "oauth callback";

/// Parses and checks a callback query (see the module docs).
fn parse_callback(query: &str) -> Result<Callback> {
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > MAX_CALLBACK_QUERY {
        return Err(Error::invalid(
            FIELD,
            format!(
                "the query is longer than {MAX_CALLBACK_QUERY} bytes; this is not a provider's \
                 redirect"
            ),
        ));
    }
    let mut params: BTreeMap<String, Zeroizing<String>> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let name = name.into_owned();
        if params.contains_key(&name) {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "the parameter `{}` appears more than once (RFC 6749 3.1 forbids repeated \
                     parameters); start the login again",
                    param_name(&name)
                ),
            ));
        }
        params.insert(name, Zeroizing::new(value.into_owned()));
    }
    if let Some(code) = params.get("error") {
        let shown = if is_error_code(code) {
            format!("`{}`", code.as_str())
        } else {
            "a malformed error code".to_string()
        };
        let hint = match code.as_str() {
            "access_denied" => " (the user declined, or the provider refused, the consent)",
            "server_error" | "temporarily_unavailable" => " (try again later)",
            _ => "",
        };
        return Err(Error::invalid(
            FIELD,
            format!(
                "the provider answered {shown}{hint} instead of an authorization code; the \
                 login did not complete, start it again"
            ),
        ));
    }
    let take = |name: &str| -> Result<SecretString> {
        match params.get(name) {
            Some(v) if !v.is_empty() => Ok(SecretString::from(v.as_str())),
            Some(_) => Err(Error::invalid(
                FIELD,
                format!("the `{name}` parameter is empty; start the login again"),
            )),
            None => Err(Error::invalid(
                FIELD,
                format!(
                    "the `{name}` parameter is missing (a provider's redirect carries `code` \
                     and `state`); start the login again"
                ),
            )),
        }
    };
    let code = take("code")?;
    let state = take("state")?;
    Ok(Callback { code, state })
}

/// Whether `code` is an RFC 6749 4.1.2.1 error code: 1 to 64 characters of
/// `%x20-21 / %x23-5B / %x5D-7E`.
fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// A parameter name fit for a message: short names of plain characters as they are,
/// anything else summarised.
fn param_name(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        name.to_string()
    } else {
        "(an unusual name)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use secrecy::ExposeSecret;

    fn refused(query: &str) -> String {
        match parse_callback(query) {
            Ok(_) => panic!("`{query}` was accepted"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn code_and_state_are_read() {
        let c = parse_callback("code=the-code&state=the-state").expect("parse");
        assert_eq!(c.code.expose_secret(), "the-code");
        assert_eq!(c.state.expose_secret(), "the-state");
        // A leading `?`, unknown parameters (RFC 9207's `iss`) and any order.
        let c = parse_callback("?iss=https%3A%2F%2Fidp&state=s&code=c").expect("parse");
        assert_eq!(c.code.expose_secret(), "c");
        assert_eq!(c.state.expose_secret(), "s");
    }

    #[test]
    fn values_are_url_decoded() {
        let c = parse_callback("code=a%2Fb%2Bc+d%3D&state=x%26y%3Dz").expect("parse");
        assert_eq!(c.code.expose_secret(), "a/b+c d=");
        assert_eq!(c.state.expose_secret(), "x&y=z");
    }

    #[test]
    fn a_missing_or_empty_code_or_state_is_named() {
        let m = refused("state=secret-state-value");
        assert!(m.contains("`code` parameter is missing"), "{m}");
        assert!(!m.contains("secret-state-value"), "{m}");
        let m = refused("code=secret-code-value");
        assert!(m.contains("`state` parameter is missing"), "{m}");
        assert!(!m.contains("secret-code-value"), "{m}");
        let m = refused("code=&state=s");
        assert!(m.contains("`code` parameter is empty"), "{m}");
        let m = refused("");
        assert!(m.contains("`code` parameter is missing"), "{m}");
    }

    #[test]
    fn an_error_callback_is_refused_with_its_code_only() {
        let m = refused(
            "error=access_denied&error_description=secret-description&state=secret-state-value",
        );
        assert!(m.contains("`access_denied`"), "{m}");
        assert!(m.contains("declined"), "{m}");
        assert!(!m.contains("secret-description"), "{m}");
        assert!(!m.contains("secret-state-value"), "{m}");
        // `error` wins even beside a code.
        let m = refused("code=secret-code-value&state=s&error=server_error");
        assert!(m.contains("`server_error`"), "{m}");
        assert!(!m.contains("secret-code-value"), "{m}");
        // A code outside the RFC's character set is not repeated.
        let m = refused("error=%22%3Cscript%3E%0A&state=s");
        assert!(m.contains("a malformed error code"), "{m}");
        assert!(!m.contains("<script>"), "{m}");
        let long = "e".repeat(65);
        let m = refused(&format!("error={long}"));
        assert!(m.contains("a malformed error code"), "{m}");
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let m = refused("code=c&state=secret-one&state=secret-two");
        assert!(m.contains("`state` appears more than once"), "{m}");
        assert!(
            !m.contains("secret-one") && !m.contains("secret-two"),
            "{m}"
        );
        let m = refused("code=secret-one&code=secret-two&state=s");
        assert!(m.contains("`code` appears more than once"), "{m}");
        // Any parameter, not just code and state; encoded names count as the same name.
        let m = refused("code=c&state=s&iss=a&%69ss=b");
        assert!(m.contains("`iss` appears more than once"), "{m}");
        let m = refused("code=c&state=s&%3Cx%3E=1&%3Cx%3E=2");
        assert!(m.contains("(an unusual name)"), "{m}");
    }

    #[test]
    fn an_oversized_query_is_refused() {
        let big = format!("code=c&state={}", "s".repeat(MAX_CALLBACK_QUERY));
        let m = refused(&big);
        assert!(m.contains("longer than"), "{m}");
    }

    #[test]
    fn the_redirect_debug_hides_the_query() {
        let r = OAuthRedirect {
            location: "https://idp.example/authorize?client_id=c&state=secret-state-value"
                .to_string(),
            expires_at: Timestamp::now(),
        };
        let d = format!("{r:?}");
        assert!(!d.contains("secret-state-value"), "{d}");
        assert!(
            d.contains("https://idp.example/authorize?[REDACTED]"),
            "{d}"
        );
        assert_eq!(redacted_url("not a url ?state=x"), "[REDACTED]");
        assert_eq!(redacted_url("https://a.example/p"), "https://a.example/p");
    }
}

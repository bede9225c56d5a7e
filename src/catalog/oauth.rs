//! A provider's `[oauth]` table: where its authorization server is and which quirks it has.
//! The protocol itself (authorize URLs, token requests) is in [`crate::oauth`].
//!
//! ```toml
//! [oauth]
//! authorize_url = "https://accounts.google.com/o/oauth2/v2/auth"
//! token_url = "https://oauth2.googleapis.com/token"
//! device_authorization_url = "https://oauth2.googleapis.com/device/code"
//! revocation_url = "https://oauth2.googleapis.com/revoke"
//! scopes = ["openid", "email"]
//! scope_separator = " "
//! client_auth = "body"
//! pkce = true
//! token_request = "form"
//! response = "standard"
//!
//! [oauth.authorize_params]
//! access_type = "offline"
//! prompt = "consent"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::handlers::formats::secure_endpoint;

/// How the client authenticates to the token, device and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 2.3.1); the default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as request parameters.
    Body,
}

/// How token requests are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TokenRequestFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749); the default.
    #[default]
    Form,
    /// A JSON object with the same parameters (Notion).
    Json,
}

/// Which deviations from RFC 6749 the token endpoint's answers have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ResponseStyle {
    /// RFC 6749 5.1/5.2: errors are 400/401 with `error` (an `error` in a 2xx body is still
    /// taken as an error).
    #[default]
    Standard,
    /// Slack: HTTP 200 with `"ok": false` for errors; a user token may be under `authed_user`.
    Slack,
    /// GitHub: errors are an `error` field in an HTTP 200 body, which is form-encoded unless
    /// JSON is asked for.
    Github,
}

/// The authorization-server side of a provider, from its `[oauth]` table. Every URL is https
/// (or http to this machine, for tests), checked when the file is loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct OAuthSpec {
    /// The authorization endpoint (RFC 6749 3.1); `None` for a device-only provider.
    pub authorize_url: Option<String>,
    /// The token endpoint (RFC 6749 3.2).
    pub token_url: String,
    /// The device authorization endpoint (RFC 8628 3.1), when the provider has one.
    pub device_authorization_url: Option<String>,
    /// The revocation endpoint (RFC 7009), when the provider has one.
    pub revocation_url: Option<String>,
    /// The scopes asked for when the caller names none.
    pub scopes: Vec<String>,
    /// What joins scopes in the `scope` parameter (`" "` by RFC 6749 3.3; `","` for Slack).
    pub scope_separator: String,
    /// How the client authenticates.
    pub client_auth: ClientAuthMethod,
    /// Send a PKCE S256 challenge with every authorization request (RFC 7636, RFC 9700 2.1.1).
    pub pkce: bool,
    /// How token requests are encoded.
    pub token_request: TokenRequestFormat,
    /// Which response quirks to expect.
    pub response: ResponseStyle,
    /// Extra query parameters of the authorization request (`access_type = "offline"`).
    pub authorize_params: BTreeMap<String, String>,
}

impl OAuthSpec {
    /// A spec with this token endpoint and every default: no other endpoint, no default
    /// scopes, `" "` as separator, Basic client auth, PKCE on, form requests, standard
    /// responses, no extra parameters. Set the other fields after.
    pub fn new(token_url: impl Into<String>) -> OAuthSpec {
        OAuthSpec {
            authorize_url: None,
            token_url: token_url.into(),
            device_authorization_url: None,
            revocation_url: None,
            scopes: Vec::new(),
            scope_separator: " ".to_string(),
            client_auth: ClientAuthMethod::Basic,
            pkce: true,
            token_request: TokenRequestFormat::Form,
            response: ResponseStyle::Standard,
            authorize_params: BTreeMap::new(),
        }
    }
}

/// The authorization parameters the protocol sets itself, which `authorize_params` may not
/// replace.
pub(crate) const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// The handler types a provider with an `[oauth]` table may have.
pub(crate) const OAUTH_HANDLER_TYPES: &[&str] = &["oauth2", "oauth2_pkce", "device_code"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OAuthToml {
    authorize_url: Option<Spanned<String>>,
    token_url: Spanned<String>,
    device_authorization_url: Option<Spanned<String>>,
    revocation_url: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    scope_separator: Option<Spanned<String>>,
    client_auth: Option<ClientAuthMethod>,
    pkce: Option<Spanned<bool>>,
    token_request: Option<TokenRequestFormat>,
    response: Option<ResponseStyle>,
    authorize_params: Option<BTreeMap<String, Spanned<String>>>,
}

type Problem = (std::ops::Range<usize>, String);

/// Checks an `[oauth]` table; a problem is the span it is at and the message.
pub(super) fn check_oauth(
    table: Spanned<OAuthToml>,
    handler_type: &Spanned<String>,
) -> std::result::Result<OAuthSpec, Problem> {
    let table_span = table.span();
    let t = table.into_inner();
    if !OAUTH_HANDLER_TYPES.contains(&handler_type.get_ref().as_str()) {
        return Err((
            handler_type.span(),
            format!(
                "a provider with an [oauth] table must have handler type {}, not `{}`",
                OAUTH_HANDLER_TYPES
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                handler_type.get_ref()
            ),
        ));
    }
    let url = |key: &str, value: Spanned<String>| -> std::result::Result<String, Problem> {
        let ok = url::Url::parse(value.get_ref())
            .ok()
            .filter(|u| secure_endpoint(u) && u.fragment().is_none());
        match ok {
            Some(_) => Ok(value.into_inner()),
            None => Err((
                value.span(),
                format!(
                    "{key} must be an https URL without a fragment (plain http only to this \
                     machine: localhost, 127.0.0.1 or ::1), since requests to it carry codes, \
                     tokens and client secrets"
                ),
            )),
        }
    };
    let authorize_url = t
        .authorize_url
        .map(|u| url("authorize_url", u))
        .transpose()?;
    let token_url = url("token_url", t.token_url)?;
    let device_authorization_url = t
        .device_authorization_url
        .map(|u| url("device_authorization_url", u))
        .transpose()?;
    let revocation_url = t
        .revocation_url
        .map(|u| url("revocation_url", u))
        .transpose()?;
    if authorize_url.is_none() && device_authorization_url.is_none() {
        return Err((
            table_span,
            "[oauth] needs authorize_url (the authorization-code flow), \
             device_authorization_url (the device flow), or both"
                .into(),
        ));
    }
    let scope_separator = match t.scope_separator {
        None => " ".to_string(),
        Some(s) => {
            if s.get_ref().is_empty() || s.get_ref().chars().any(char::is_control) {
                return Err((
                    s.span(),
                    "scope_separator must be a non-empty string such as \" \" or \",\"".into(),
                ));
            }
            s.into_inner()
        }
    };
    let scopes = match t.scopes {
        None => Vec::new(),
        Some(s) => {
            let bad = s.get_ref().iter().any(|scope| {
                scope.is_empty()
                    || scope.contains(scope_separator.as_str())
                    || scope.chars().any(|c| c == ' ' || c.is_control())
            });
            if bad {
                return Err((
                    s.span(),
                    "each scope must be a non-empty name without spaces, control characters or \
                     the scope_separator"
                        .into(),
                ));
            }
            s.into_inner()
        }
    };
    let pkce = match t.pkce {
        None => true,
        Some(p) => {
            if !*p.get_ref() && handler_type.get_ref() == "oauth2_pkce" {
                return Err((
                    p.span(),
                    "handler type `oauth2_pkce` is a public client, which must use PKCE \
                     (RFC 9700 2.1.1); remove `pkce = false`"
                        .into(),
                ));
            }
            *p.get_ref()
        }
    };
    let mut authorize_params = BTreeMap::new();
    for (key, value) in t.authorize_params.unwrap_or_default() {
        if RESERVED_AUTHORIZE_PARAMS.contains(&key.as_str()) {
            return Err((
                value.span(),
                format!(
                    "authorize_params may not set `{key}`: the protocol sets it (reserved: {})",
                    RESERVED_AUTHORIZE_PARAMS.join(", ")
                ),
            ));
        }
        if key.is_empty() {
            return Err((
                value.span(),
                "authorize_params keys must not be empty".into(),
            ));
        }
        authorize_params.insert(key, value.into_inner());
    }
    Ok(OAuthSpec {
        authorize_url,
        token_url,
        device_authorization_url,
        revocation_url,
        scopes,
        scope_separator,
        client_auth: t.client_auth.unwrap_or_default(),
        pkce,
        token_request: t.token_request.unwrap_or_default(),
        response: t.response.unwrap_or_default(),
        authorize_params,
    })
}

#[cfg(test)]
mod tests {
    use crate::catalog::CatalogProblem;
    use crate::handlers::HandlerRegistry;

    fn parse(oauth: &str, handler: &str) -> Result<super::OAuthSpec, CatalogProblem> {
        let text = format!(
            "[provider]\nname = \"p\"\ndisplay_name = \"P\"\nhandler_type = \"{handler}\"\n\n{oauth}"
        );
        let registry = HandlerRegistry::builtin();
        super::super::parse::parse_provider(&registry, "p.toml", &text).map(|(p, _)| {
            p.oauth
                .unwrap_or_else(|| super::OAuthSpec::new("no [oauth] table"))
        })
    }

    const GOOD: &str = r#"[oauth]
authorize_url = "https://example.com/authorize"
token_url = "https://example.com/token"
"#;

    #[test]
    fn defaults_fill_an_oauth_table() {
        let spec = parse(GOOD, "oauth2").expect("valid");
        assert_eq!(
            spec.authorize_url.as_deref(),
            Some("https://example.com/authorize")
        );
        assert_eq!(spec.token_url, "https://example.com/token");
        assert_eq!(spec.scope_separator, " ");
        assert!(spec.pkce);
        assert_eq!(spec.client_auth, super::ClientAuthMethod::Basic);
        assert_eq!(spec.token_request, super::TokenRequestFormat::Form);
        assert_eq!(spec.response, super::ResponseStyle::Standard);
        assert!(spec.scopes.is_empty() && spec.authorize_params.is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let text = r#"[oauth]
authorize_url = "http://127.0.0.1:8080/authorize"
token_url = "http://localhost:8080/token"
device_authorization_url = "https://example.com/device"
revocation_url = "https://example.com/revoke"
scopes = ["a", "b"]
scope_separator = ","
client_auth = "body"
pkce = false
token_request = "json"
response = "slack"
[oauth.authorize_params]
access_type = "offline"
"#;
        let spec = parse(text, "oauth2").expect("valid");
        assert_eq!(spec.scopes, ["a", "b"]);
        assert_eq!(spec.scope_separator, ",");
        assert_eq!(spec.client_auth, super::ClientAuthMethod::Body);
        assert!(!spec.pkce);
        assert_eq!(spec.token_request, super::TokenRequestFormat::Json);
        assert_eq!(spec.response, super::ResponseStyle::Slack);
        assert_eq!(
            spec.revocation_url.as_deref(),
            Some("https://example.com/revoke")
        );
        assert_eq!(
            spec.authorize_params.get("access_type").map(String::as_str),
            Some("offline")
        );
    }

    #[test]
    fn a_plain_http_url_to_another_host_is_refused() {
        let text = GOOD.replace("https://example.com/token", "http://example.com/token");
        let p = parse(&text, "oauth2").expect_err("http refused");
        assert_eq!((p.line, p.file.as_str()), (8, "p.toml"));
        assert!(p.message.contains("token_url must be an https URL"), "{p}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let p = parse(&format!("{GOOD}tokn_url = \"x\"\n"), "oauth2").expect_err("unknown key");
        assert!(p.message.contains("tokn_url"), "{p}");
        assert_eq!(p.line, 9);
    }

    #[test]
    fn a_handler_type_that_is_not_oauth_is_refused() {
        let p = parse(GOOD, "api_key").expect_err("wrong handler");
        assert!(p.message.contains("handler type"), "{p}");
        assert!(p.message.contains("`api_key`"), "{p}");
        assert_eq!(p.line, 4);
        parse(GOOD, "oauth2_pkce").expect("pkce handler");
        parse(GOOD, "device_code").expect("device handler");
    }

    #[test]
    fn authorize_params_may_not_override_the_protocol() {
        for key in super::RESERVED_AUTHORIZE_PARAMS {
            let text = format!("{GOOD}[oauth.authorize_params]\n{key} = \"mine\"\n");
            let p = parse(&text, "oauth2").expect_err("reserved key");
            assert!(p.message.contains(&format!("`{key}`")), "{p}");
            assert_eq!(p.line, 10);
        }
    }

    #[test]
    fn a_table_with_neither_flow_is_refused() {
        let p = parse("[oauth]\ntoken_url = \"https://e.com/t\"\n", "oauth2").expect_err("no flow");
        assert!(p.message.contains("authorize_url"), "{p}");
    }

    #[test]
    fn bad_enum_values_and_scopes_are_refused() {
        let p = parse(&format!("{GOOD}client_auth = \"jwt\"\n"), "oauth2").expect_err("enum");
        assert!(p.message.contains("jwt"), "{p}");
        let p = parse(&format!("{GOOD}scopes = [\"a b\"]\n"), "oauth2").expect_err("scope");
        assert!(p.message.contains("scope"), "{p}");
        let p = parse(&format!("{GOOD}pkce = false\n"), "oauth2_pkce").expect_err("pkce");
        assert!(p.message.contains("PKCE"), "{p}");
    }

    #[test]
    fn the_bundled_oauth_providers_have_oauth_tables() {
        let registry = HandlerRegistry::builtin();
        let catalog = crate::catalog::Catalog::bundled(&registry);
        assert!(catalog.problems().is_empty(), "{:?}", catalog.problems());
        for name in [
            "notion",
            "google_oauth",
            "github_oauth",
            "slack_oauth",
            "discord_oauth",
        ] {
            let p = catalog.get(name).expect("bundled");
            let spec = p.oauth.as_ref().expect("an [oauth] table");
            assert!(spec.token_url.starts_with("https://"), "{name}");
            assert!(spec.authorize_url.is_some(), "{name}");
        }
        let slack = catalog.get("slack_oauth").and_then(|p| p.oauth.clone());
        assert_eq!(
            slack.map(|s| (s.scope_separator, s.response)),
            Some((",".to_string(), super::ResponseStyle::Slack))
        );
        let notion = catalog.get("notion").and_then(|p| p.oauth.clone());
        assert_eq!(
            notion.map(|s| s.token_request),
            Some(super::TokenRequestFormat::Json)
        );
    }
}

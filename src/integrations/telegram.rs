//! Telegram's Bot API, as far as linking needs it: `GET {base}/bot<token>/getMe` tells which
//! bot a token is. The token is part of the URL, so no URL of a request is ever put in an
//! error or a log line: messages name the host only.

use secrecy::{ExposeSecret, SecretString};

use super::{get_json, id_text, malformed, IntegrationProvider, ServiceIdentity};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// The public Bot API.
pub const DEFAULT_BASE_URL: &str = "https://api.telegram.org";

/// Most user ids accepted in one allowed-users list.
pub const MAX_ALLOWED_USERS: usize = 1000;

/// Which bot `token` is (`getMe`): its username and id. A token Telegram refuses (401/403,
/// or 404 — the Bot API's answer to a malformed token) is `InvalidInput`; a 5xx or no
/// answer is `Transport`.
pub async fn get_me(
    http: &dyn HttpTransport,
    base_url: &str,
    token: &SecretString,
) -> Result<ServiceIdentity> {
    let field = "Telegram bot token";
    let secret = token.expose_secret();
    // Only what a bot token is made of, so the token cannot change the URL's meaning.
    if secret.is_empty()
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        return Err(Error::invalid(
            field,
            "a bot token is `<bot id>:<secret>` (letters, digits, `:`, `_`, `-`); paste the \
             token @BotFather gave, alone",
        ));
    }
    let base = base_url.trim_end_matches('/');
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{base}/bot{secret}/getMe"))
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|_| {
            // Never the URL: it holds the token.
            Error::config(
                "the Telegram base URL does not make a request URL; fix \
                 VaultBuilder::integration_base_url",
            )
        })?;
    let peer = peer_of(request.uri());
    let answer = get_json(http, IntegrationProvider::Telegram, field, token, request).await;
    let body = match answer {
        // The Bot API answers 404 to a token of the wrong shape.
        Err(Error::Config { .. }) => {
            return Err(Error::invalid(
                field,
                format!(
                    "Telegram at {peer} does not know this bot token; nothing was stored — \
                     check the token (or the Telegram base URL)"
                ),
            ))
        }
        other => other?,
    };
    if body.get("ok").and_then(|v| v.as_bool()) != Some(true) {
        return Err(Error::invalid(
            field,
            format!("Telegram at {peer} refused the bot token; nothing was stored"),
        ));
    }
    let result = body
        .get("result")
        .ok_or_else(|| malformed(IntegrationProvider::Telegram, &peer, "a `result`"))?;
    let username = result
        .get("username")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(IntegrationProvider::Telegram, &peer, "the bot's `username`"))?;
    let id = id_text(result.get("id"))
        .ok_or_else(|| malformed(IntegrationProvider::Telegram, &peer, "the bot's `id`"))?;
    Ok(ServiceIdentity {
        username: username.to_string(),
        id,
    })
}

/// Parses an allowed-users list: Telegram user ids (integers), comma-separated, spaces
/// around them ignored; at least one, at most [`MAX_ALLOWED_USERS`], no repeats. Errors say
/// which entry is wrong by position, never echo it.
pub fn parse_allowed_users(text: &str) -> Result<Vec<i64>> {
    let field = "Telegram allowed users";
    if text.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "name at least one Telegram user id (comma-separated integers, e.g. 12345,67890)",
        ));
    }
    let mut out = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        let entry = entry.trim();
        let id: i64 = entry.parse().map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "entry {} is not an integer; write Telegram user ids as comma-separated \
                     integers (e.g. 12345,67890)",
                    i + 1
                ),
            )
        })?;
        if out.contains(&id) {
            return Err(Error::invalid(
                field,
                format!("entry {} repeats an earlier user id; name each once", i + 1),
            ));
        }
        out.push(id);
        if out.len() > MAX_ALLOWED_USERS {
            return Err(Error::invalid(
                field,
                format!("at most {MAX_ALLOWED_USERS} user ids are allowed"),
            ));
        }
    }
    Ok(out)
}

/// The stored form of an allowed-users list: the ids, comma-separated, no spaces.
pub fn format_allowed_users(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_users_are_integers() {
        assert_eq!(
            parse_allowed_users(" 1, 22 ,333").expect("ok"),
            vec![1, 22, 333]
        );
        assert_eq!(format_allowed_users(&[1, 22, 333]), "1,22,333");
        for bad in ["", " ", "1,,2", "1,x", "1;2", "1,1", "99999999999999999999"] {
            let err = parse_allowed_users(bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
        let err = parse_allowed_users("1,secret-ish").expect_err("bad");
        assert!(!err.to_string().contains("secret-ish"), "{err}");
    }
}

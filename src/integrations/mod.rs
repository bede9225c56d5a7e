//! Per-agent integrations: an agent's identity in an external service (GitHub, GitLab) or a
//! channel to message it (Telegram), linked by an operator and delivered to the agent through
//! the audited credentials path ([`crate::Vault::credentials_for`]).
//!
//! The model lives here, with the service clients that check a credential before it is
//! stored ([`github`], [`gitlab`], [`telegram`]). The vault drives them
//! (`Vault::link_github_token`, `Vault::link_gitlab_token`, `Vault::link_telegram`,
//! `Vault::integrations`, `Vault::unlink`); see docs/INTEGRATIONS.md.
//!
//! An integration is a record of kind [`INTEGRATION_KIND`], owner `agent:<agent id>`
//! ([`owner_of`]) and key the provider's name, written create-only: an agent has at most one
//! active integration per provider, decided by the store, not by a check before the write.
//! Its secrets are per-agent credentials named `provider:key` ([`GITHUB_TOKEN`], …), never
//! agent-accessible.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::transport::{peer_of, Bytes, HttpTransport};

pub mod github;
pub mod github_app;
pub mod gitlab;
pub mod gitlab_provider;
pub mod telegram;

/// The record kind of an integration (owner `agent:<agent id>`, key the provider's name).
pub const INTEGRATION_KIND: &str = "integration";

/// A GitHub personal access token (PAT integrations).
pub const GITHUB_TOKEN: &str = "github:token";
/// A GitHub App's private key, PEM (GitHub App integrations).
pub const GITHUB_PRIVATE_KEY: &str = "github:private_key";
/// A GitLab access token (PAT or provisioned integrations).
pub const GITLAB_TOKEN: &str = "gitlab:token";
/// A Telegram bot token.
pub const TELEGRAM_BOT_TOKEN: &str = "telegram:bot_token";
/// The Telegram user ids allowed to talk to the bot, comma-separated.
pub const TELEGRAM_ALLOWED_USERS: &str = "telegram:allowed_users";

/// The record owner of `agent`'s integrations: `agent:<agent id>`.
pub fn owner_of(agent: &str) -> String {
    format!("agent:{agent}")
}

/// The external service an integration is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IntegrationProvider {
    /// GitHub (github.com or GitHub Enterprise Server).
    Github,
    /// GitLab (gitlab.com or self-managed).
    Gitlab,
    /// Telegram (a bot: a channel to message the agent).
    Telegram,
}

impl IntegrationProvider {
    /// Every provider.
    pub const ALL: [IntegrationProvider; 3] = [
        IntegrationProvider::Github,
        IntegrationProvider::Gitlab,
        IntegrationProvider::Telegram,
    ];

    /// The stable name (`github`, `gitlab`, `telegram`): the integration record's key and
    /// the prefix of its secrets' names.
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationProvider::Github => "github",
            IntegrationProvider::Gitlab => "gitlab",
            IntegrationProvider::Telegram => "telegram",
        }
    }

    /// Parses a stable name.
    pub fn parse(text: &str) -> Result<IntegrationProvider> {
        IntegrationProvider::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
                Error::invalid(
                    "integration provider",
                    format!("unknown provider `{shown}`; use github, gitlab or telegram"),
                )
            })
    }

    /// The API base URL used unless the vault is given another
    /// ([`crate::VaultBuilder::integration_base_url`]).
    pub fn default_base_url(self) -> &'static str {
        match self {
            IntegrationProvider::Github => github::DEFAULT_BASE_URL,
            IntegrationProvider::Gitlab => gitlab::DEFAULT_BASE_URL,
            IntegrationProvider::Telegram => telegram::DEFAULT_BASE_URL,
        }
    }

    /// The names of every per-agent secret an integration with this provider may hold
    /// (unlinking removes those that exist).
    pub fn secret_names(self) -> &'static [&'static str] {
        match self {
            IntegrationProvider::Github => &[GITHUB_TOKEN, GITHUB_PRIVATE_KEY],
            IntegrationProvider::Gitlab => &[GITLAB_TOKEN],
            IntegrationProvider::Telegram => &[TELEGRAM_BOT_TOKEN, TELEGRAM_ALLOWED_USERS],
        }
    }

    /// The service's name for messages (`GitHub`, `GitLab`, `Telegram`).
    pub fn display_name(self) -> &'static str {
        match self {
            IntegrationProvider::Github => "GitHub",
            IntegrationProvider::Gitlab => "GitLab",
            IntegrationProvider::Telegram => "Telegram",
        }
    }
}

impl fmt::Display for IntegrationProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How an integration's credential came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthType {
    /// A token the operator supplied (a PAT, a bot token): delivered as stored.
    Token,
    /// A GitHub App: the vault keeps the private key and mints installation tokens.
    App,
    /// Minted by a credential provider (GitLab), deprovisioned on unlink.
    Provisioned,
}

impl AuthType {
    /// The stable name (`token`, `app`, `provisioned`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Token => "token",
            AuthType::App => "app",
            AuthType::Provisioned => "provisioned",
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One agent's integration with one provider. Holds no secret: its credentials are the
/// agent's per-agent secrets ([`IntegrationProvider::secret_names`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Integration {
    /// The agent id.
    pub agent: String,
    /// The service.
    pub provider: IntegrationProvider,
    /// How the credential came to be.
    pub auth_type: AuthType,
    /// The identity's name at the service (GitHub login, GitLab username, bot username).
    pub username: String,
    /// The service's ids of the identity (`user_id`, `bot_id`, …), as text.
    pub external_ids: BTreeMap<String, String>,
    /// When it was linked.
    pub linked_at: Timestamp,
    /// Who linked it (the principal, as audit rows write it).
    pub linked_by: String,
}

impl Integration {
    /// Reads an integration from its record's body.
    pub fn from_record(record: &crate::model::Record) -> Result<Integration> {
        Integration::deserialize(&record.body)
            .map_err(|e| Error::corrupt(record.describe(), format!("not an integration: {e}")))
    }

    /// The record body.
    pub(crate) fn to_body(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::invalid("integration", e.to_string()))
    }
}

/// Who a credential belongs to at the service, as the service said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceIdentity {
    /// The login / username.
    pub username: String,
    /// The service's id of it.
    pub id: String,
}

/// The base URL of each provider's API ([`crate::VaultBuilder::integration_base_url`]):
/// GitHub Enterprise, self-managed GitLab, a local Bot API server.
#[derive(Debug, Clone, Default)]
pub struct IntegrationsConfig {
    base_urls: BTreeMap<IntegrationProvider, String>,
}

impl IntegrationsConfig {
    /// Sets `provider`'s base URL (checked: an `http` or `https` URL; a trailing `/` is
    /// dropped).
    pub fn set_base_url(&mut self, provider: IntegrationProvider, url: &str) -> Result<()> {
        let trimmed = url.trim_end_matches('/');
        let parsed = url::Url::parse(trimmed).map_err(|e| {
            Error::invalid(
                "integration base URL",
                format!("{provider}: `{}` is not a URL ({e})", printable(trimmed)),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::invalid(
                "integration base URL",
                format!(
                    "{provider}: `{}` must be an http(s) URL with a host, such as {}",
                    printable(trimmed),
                    provider.default_base_url()
                ),
            ));
        }
        self.base_urls.insert(provider, trimmed.to_string());
        Ok(())
    }

    /// `provider`'s base URL: the one set, or its default.
    pub fn base_url(&self, provider: IntegrationProvider) -> &str {
        self.base_urls
            .get(&provider)
            .map(String::as_str)
            .unwrap_or_else(|| provider.default_base_url())
    }
}

fn printable(text: &str) -> String {
    text.chars()
        .take(256)
        .flat_map(char::escape_debug)
        .collect()
}

/// Sends a `GET` to a service and reads its JSON answer: 2xx → the body; 401/403 → the
/// credential is rejected (`InvalidInput` naming `field`); anything else or no answer → the
/// service could not be reached (`Transport`) or is misconfigured (`Config`). Messages name
/// the host only, never the URL's path (it may carry a token) nor any header.
pub(crate) async fn get_json(
    http: &dyn HttpTransport,
    provider: IntegrationProvider,
    field: &str,
    secret: &secrecy::SecretString,
    request: http::Request<Bytes>,
) -> Result<serde_json::Value> {
    use secrecy::ExposeSecret;
    let peer = peer_of(request.uri());
    let name = provider.display_name();
    let response = http.send(request).await.map_err(|e| {
        // A host's transport may name the URL (Telegram's carries the token): a message
        // that holds the secret is not repeated.
        let why = match &e {
            Error::Transport { message, .. } => message.clone(),
            other => format!("{:?}", other.kind()),
        };
        let why = if why.contains(secret.expose_secret()) {
            "the transport failed".to_string()
        } else {
            why
        };
        Error::Transport {
            peer: peer.clone(),
            message: format!(
                "{name} could not be reached ({why}); nothing was stored — try again later"
            ),
        }
    })?;
    let status = response.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        let _ = field;
        return Err(Error::Rejected {
            peer: peer.clone(),
            message: format!(
                "{name} rejected the credential (HTTP {}); nothing was stored — check that it \
                 is current, not revoked, and for this {name} instance",
                status.as_u16()
            ),
        });
    }
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        return Err(Error::Transport {
            peer,
            message: format!(
                "{name} could not be reached (HTTP {}); nothing was stored — try again later",
                status.as_u16()
            ),
        });
    }
    if !status.is_success() {
        return Err(Error::config(format!(
            "{name} at {peer} answered HTTP {} to the identity check; nothing was stored — \
             check the {provider} base URL (VaultBuilder::integration_base_url)",
            status.as_u16()
        )));
    }
    serde_json::from_slice(response.body()).map_err(|_| Error::Transport {
        peer,
        message: format!(
            "{name} answered with a body that is not JSON; nothing was stored — check the \
             {provider} base URL (VaultBuilder::integration_base_url)"
        ),
    })
}

/// An id in a JSON answer (a number or a string), as text.
pub(crate) fn id_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The error for an answer that lacks what the identity check needs.
pub(crate) fn malformed(provider: IntegrationProvider, peer: &str, what: &str) -> Error {
    Error::Transport {
        peer: peer.to_string(),
        message: format!(
            "{} answered without {what}; nothing was stored — check the {provider} base URL \
             (VaultBuilder::integration_base_url)",
            provider.display_name()
        ),
    }
}

/// A header value holding a secret: marked sensitive; a value that is no valid header is
/// refused without echoing it.
pub(crate) fn secret_header(field: &str, value: &str) -> Result<http::HeaderValue> {
    let mut header = http::HeaderValue::from_str(value).map_err(|_| {
        Error::invalid(
            field,
            "contains characters a token cannot have (spaces, line breaks, non-ASCII); \
             paste the token alone",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_base_urls_are_checked() {
        for p in IntegrationProvider::ALL {
            assert_eq!(IntegrationProvider::parse(p.as_str()).expect("parses"), p);
            assert!(p.secret_names().iter().all(|n| n.starts_with(p.as_str())));
        }
        assert!(IntegrationProvider::parse("bitbucket").is_err());
        let mut config = IntegrationsConfig::default();
        assert_eq!(
            config.base_url(IntegrationProvider::Github),
            "https://api.github.com"
        );
        config
            .set_base_url(
                IntegrationProvider::Gitlab,
                "https://git.example.com/api/v4/",
            )
            .expect("ok");
        assert_eq!(
            config.base_url(IntegrationProvider::Gitlab),
            "https://git.example.com/api/v4"
        );
        assert!(config
            .set_base_url(IntegrationProvider::Github, "ftp://x")
            .is_err());
        assert!(config
            .set_base_url(IntegrationProvider::Github, "not a url")
            .is_err());
    }
}

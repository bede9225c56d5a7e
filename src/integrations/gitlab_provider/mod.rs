//! The GitLab credential provider's protocol: the REST API v4 calls that mint, find, rotate
//! and remove a dedicated GitLab identity per agent, authenticated with the provider's one
//! privileged token (sent as the `PRIVATE-TOKEN` header).
//!
//! Two modes ([`Mode`]):
//!
//! - **service account** (a top-level group, [`Target::Group`]): one group service account
//!   per agent (`POST /groups/:id/service_accounts`), then a personal access token for it
//!   (`POST /groups/:id/service_accounts/:user_id/personal_access_tokens`). The admin token
//!   needs the `api` scope and the Owner role on the group (or an instance administrator).
//! - **project access token** ([`Target::Project`]): one project access token per agent
//!   (`POST /projects/:id/access_tokens`), whose bot user GitLab creates and removes itself.
//!
//! Every step is a separate call, so the vault can write an intent record before a remote
//! call and finish (or clean up) after a crash: [`find_service_account`] and
//! [`find_project_token`] find what a crashed run created. The service account's username
//! is derived from the target and the agent id ([`GitlabProviderConfig::service_account_username`]),
//! so it can be written into the intent record before anything is sent.
//!
//! Deprovisioning is best effort per step: [`revoke_token`] and [`delete_service_account`]
//! each say what happened ([`Removal`]); a resource GitLab no longer knows (404) counts as
//! [`Removal::AlreadyGone`]. Rotation ([`rotate_token`]) uses the admin-side endpoints, so
//! the issued token needs no `self_rotate` scope.
//!
//! How GitLab's answers become errors:
//!
//! | GitLab answers | Result |
//! |---|---|
//! | 200, 201, 204 | success |
//! | 401, 403 | [`Error::Config`]: the provider's admin token was rejected (the message says how to fix it) |
//! | 404 | [`Error::NotFound`] (for a deprovisioning step: [`Removal::AlreadyGone`]) |
//! | 400, 422 | [`Error::InvalidInput`] naming GitLab's `message` (control characters and anything token-like removed, at most 200 characters) |
//! | 409 | [`Error::AlreadyExists`] |
//! | 429, 5xx, no answer | [`Error::Transport`]: unreachable, retry later |
//!
//! No error message and no `Debug` output ever contains a token: the admin token is never
//! formatted, an issued token lives in a [`SecretString`], and GitLab's messages are scrubbed
//! of the admin token and of anything shaped like a GitLab token (`glpat-…`).

use std::fmt;

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Date, Month};
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::transport::{peer_of, HttpTransport};

mod calls;
mod names;
mod wire;

pub use calls::*;
use names::*;
pub use names::{format_date, is_valid_username, parse_date};
use wire::*;

/// The scopes GitLab documents for personal, group and project access tokens.
pub const KNOWN_SCOPES: &[&str] = &[
    "api",
    "read_api",
    "read_user",
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
    "create_runner",
    "manage_runner",
    "ai_features",
    "k8s_proxy",
    "self_rotate",
];

/// The roles a project access token may have: Guest, Planner, Reporter, Developer,
/// Maintainer, Owner.
pub const ACCESS_LEVELS: &[u32] = &[10, 15, 20, 30, 40, 50];

/// The longest token lifetime this provider asks for (GitLab's default maximum).
pub const MAX_EXPIRES_IN_DAYS: u32 = 365;

/// How many list pages a `find_*` call reads (100 entries each) before giving up.
const MAX_PAGES: u32 = 100;
const PER_PAGE: usize = 100;
/// The longest piece of a GitLab message an error carries.
const MAX_MESSAGE: usize = 200;

/// Where the provider mints identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A top-level group, by numeric id or full path (`acme`). Service accounts only work on
    /// top-level groups.
    Group(String),
    /// A project, by numeric id or full path (`acme/backend/api`).
    Project(String),
}

impl Target {
    /// The id or path, as configured.
    pub fn id(&self) -> &str {
        match self {
            Target::Group(id) | Target::Project(id) => id,
        }
    }

    /// "group `acme`" or "project `acme/api`", for messages.
    fn describe(&self) -> String {
        match self {
            Target::Group(id) => format!("group `{id}`"),
            Target::Project(id) => format!("project `{id}`"),
        }
    }

    /// `/groups/<encoded>` or `/projects/<encoded>`.
    fn path(&self) -> String {
        match self {
            Target::Group(id) => format!("/groups/{}", encode_segment(id)),
            Target::Project(id) => format!("/projects/{}", encode_segment(id)),
        }
    }
}

/// What the provider mints per agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mode {
    /// A group service account with a personal access token (works on GitLab.com's free
    /// tier). Needs a [`Target::Group`] naming a top-level group.
    ServiceAccount {
        /// The token's scopes (from [`KNOWN_SCOPES`]).
        scopes: Vec<String>,
        /// The token's lifetime in days, 1 to [`MAX_EXPIRES_IN_DAYS`].
        expires_in_days: u32,
    },
    /// A project access token. Needs a [`Target::Project`].
    ProjectAccessToken {
        /// The token's scopes (from [`KNOWN_SCOPES`]).
        scopes: Vec<String>,
        /// The token's role (one of [`ACCESS_LEVELS`]: 10 Guest, 15 Planner, 20 Reporter,
        /// 30 Developer, 40 Maintainer, 50 Owner).
        access_level: u32,
        /// The token's lifetime in days, 1 to [`MAX_EXPIRES_IN_DAYS`].
        expires_in_days: u32,
    },
}

/// One GitLab credential provider: where the API is, where identities are minted, and how.
/// The privileged admin token is not part of it: it is a secret the vault keeps sealed and
/// passes to each call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabProviderConfig {
    /// The REST API's base URL, e.g. `https://gitlab.example.com/api/v4` (https, or http to
    /// a loopback address only).
    pub base_url: String,
    /// The group or project identities are minted in.
    pub target: Target,
    /// What is minted.
    pub mode: Mode,
}

impl GitlabProviderConfig {
    /// Checks every field; the error names the field and the fix. Every call in this module
    /// checks the configuration first.
    pub fn validate(&self) -> Result<()> {
        let url = url::Url::parse(self.base_url.trim()).map_err(|e| {
            Error::invalid(
                "gitlab provider base_url",
                format!("not a URL ({e}); use e.g. `https://gitlab.example.com/api/v4`"),
            )
        })?;
        if !crate::handlers::formats::secure_endpoint(&url) {
            return Err(Error::invalid(
                "gitlab provider base_url",
                "must be https (http only to a loopback address): the admin token travels in \
                 every request",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(Error::invalid(
                "gitlab provider base_url",
                "must not carry credentials, a query or a fragment; use e.g. \
                 `https://gitlab.example.com/api/v4`",
            ));
        }
        let id = self.target.id();
        if id.trim().is_empty() || id.trim() != id || id.chars().any(char::is_control) {
            return Err(Error::invalid(
                "gitlab provider target",
                "must be a numeric id or a full path such as `acme` or `acme/api`, without \
                 surrounding spaces",
            ));
        }
        if id.starts_with('/') || id.ends_with('/') || id.contains("//") {
            return Err(Error::invalid(
                "gitlab provider target",
                "a path must not start or end with `/` or contain `//`; use e.g. `acme/api`",
            ));
        }
        let (scopes, days) = match (&self.mode, &self.target) {
            (
                Mode::ServiceAccount {
                    scopes,
                    expires_in_days,
                },
                Target::Group(group),
            ) => {
                if group.contains('/') {
                    return Err(Error::invalid(
                        "gitlab provider target",
                        format!(
                            "service accounts can only be created in a top-level group, and \
                             `{group}` is a subgroup; name its top-level group (the service \
                             account can then be invited to the subgroup)"
                        ),
                    ));
                }
                (scopes, *expires_in_days)
            }
            (Mode::ServiceAccount { .. }, Target::Project(_)) => {
                return Err(Error::invalid(
                    "gitlab provider target",
                    "service_account mode needs a group target (a top-level group)",
                ))
            }
            (
                Mode::ProjectAccessToken {
                    scopes,
                    access_level,
                    expires_in_days,
                },
                Target::Project(_),
            ) => {
                check_access_level(*access_level)?;
                (scopes, *expires_in_days)
            }
            (Mode::ProjectAccessToken { .. }, Target::Group(_)) => {
                return Err(Error::invalid(
                    "gitlab provider target",
                    "project_access_token mode needs a project target",
                ))
            }
        };
        check_scopes(scopes)?;
        if !(1..=MAX_EXPIRES_IN_DAYS).contains(&days) {
            return Err(Error::invalid(
                "gitlab provider expires_in_days",
                format!("must be between 1 and {MAX_EXPIRES_IN_DAYS} (got {days})"),
            ));
        }
        Ok(())
    }

    /// The token scopes of either mode.
    pub fn scopes(&self) -> &[String] {
        match &self.mode {
            Mode::ServiceAccount { scopes, .. } | Mode::ProjectAccessToken { scopes, .. } => scopes,
        }
    }

    /// The token lifetime of either mode, in days.
    pub fn expires_in_days(&self) -> u32 {
        match &self.mode {
            Mode::ServiceAccount {
                expires_in_days, ..
            }
            | Mode::ProjectAccessToken {
                expires_in_days, ..
            } => *expires_in_days,
        }
    }

    /// The expiry date of a token issued `today` (UTC): `today` plus
    /// [`expires_in_days`](Self::expires_in_days).
    pub fn expiry_date(&self, today: Date) -> Result<Date> {
        today
            .checked_add(time::Duration::days(i64::from(self.expires_in_days())))
            .ok_or_else(|| Error::invalid("gitlab token expiry", "the date is out of range"))
    }

    /// The username of the service account for `agent_id`:
    /// `strongroom-<agent slug>-<12 hex digits>`, where the digits are the start of the
    /// SHA-256 of the target and the agent id. The same inputs give the same name (a later
    /// run can find what a crashed one created); two agents, or one agent in two groups,
    /// get different names. Always a valid GitLab username: letters, digits, `-`; starts
    /// and ends with a letter or digit; no consecutive special characters; at most 56
    /// characters.
    pub fn service_account_username(&self, agent_id: &str) -> Result<String> {
        check_agent_id(agent_id)?;
        Ok(derive_username(self.target.id(), agent_id))
    }

    fn api_url(&self, path_and_query: &str) -> String {
        format!(
            "{}{path_and_query}",
            self.base_url.trim().trim_end_matches('/')
        )
    }

    fn peer(&self) -> String {
        self.base_url
            .trim()
            .parse::<http::Uri>()
            .map(|u| peer_of(&u))
            .unwrap_or_else(|_| "the GitLab API".to_string())
    }
}

/// The name a provisioned token gets for `agent_id`: `strongroom agent <agent> <hash>` (the
/// agent id with characters GitLab may refuse replaced by `-`, then 12 hex digits of a hash
/// of the whole id, so that two ids that read alike never share a name).
/// Deterministic, so [`find_project_token`] can find a token a crashed run created.
pub fn token_name(agent_id: &str) -> Result<String> {
    check_agent_id(agent_id)?;
    // The label alone is lossy (`bot:1` and `bot-1` read alike), and cleanup revokes tokens
    // by name: a hash of the whole id keeps two agents' token names apart.
    let mut hasher = Sha256::new();
    hasher.update(b"strongroom gitlab token name\0");
    hasher.update(agent_id.as_bytes());
    let digest = hex::encode(hasher.finalize());
    Ok(format!("{} {}", display_name(agent_id), &digest[..12]))
}

/// A group service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its user id.
    pub id: u64,
    /// Its username.
    pub username: String,
}

/// A token GitLab has just issued. Its `Debug` output never shows the token.
#[derive(Clone)]
pub struct IssuedToken {
    /// The token's id (for revocation and rotation).
    pub id: u64,
    /// The user the token belongs to: the service account, or the project's bot user.
    pub user_id: Option<u64>,
    /// The token's name.
    pub name: String,
    /// The token itself (`glpat-…`).
    pub token: SecretString,
    /// The last day the token is valid.
    pub expires_at: Date,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A project access token as GitLab lists it (never with its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectToken {
    /// The token's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its bot user.
    pub user_id: Option<u64>,
    /// Whether it can still be used (not revoked, not expired).
    pub active: bool,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Its last valid day, if it has one.
    pub expires_at: Option<Date>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its role, when GitLab says.
    pub access_level: Option<u32>,
}

/// A token the provider issued, as the vault remembers it for revocation and rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRef {
    /// A service account's personal access token.
    ServiceAccount {
        /// The service account's user id.
        user_id: u64,
        /// The token's id.
        token_id: u64,
    },
    /// A project access token.
    ProjectAccessToken {
        /// The token's id.
        token_id: u64,
    },
}

/// What a deprovisioning step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Removal {
    /// GitLab removed (or revoked) it now.
    Removed,
    /// GitLab no longer knew it (404): an earlier run, or someone else, removed it.
    AlreadyGone,
}

#[cfg(test)]
mod tests;

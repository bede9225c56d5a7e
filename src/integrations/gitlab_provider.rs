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

// ---------------------------------------------------------------------------------------
// Provisioning.

/// Creates the service account for `agent_id` in the configured top-level group
/// (`POST /groups/:id/service_accounts`, body `{"name", "username"}`). The username is
/// [`GitlabProviderConfig::service_account_username`]; a name already taken is an
/// [`Error::InvalidInput`] naming GitLab's message (use [`find_service_account`] first when
/// resuming a crashed run).
pub async fn create_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    agent_id: &str,
) -> Result<ServiceAccount> {
    let group = group_of(cfg)?;
    let username = cfg.service_account_username(agent_id)?;
    let body = serde_json::json!({
        "name": display_name(agent_id),
        "username": username,
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!("{}/service_accounts", group.path()),
        Some(&body),
    )?;
    let op = Op::new("create a service account in", group);
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    let account: AccountAnswer = parse(cfg, &op, response.body())?;
    Ok(ServiceAccount {
        id: account.id,
        username: account.username,
    })
}

/// Finds the service account named `username` in the configured group
/// (`GET /groups/:id/service_accounts`, every page); the match ignores ASCII case, as
/// GitLab's usernames do.
pub async fn find_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    username: &str,
) -> Result<Option<ServiceAccount>> {
    let group = group_of(cfg)?;
    let op = Op::new("list the service accounts of", group);
    for page in 1..=MAX_PAGES {
        let request = build(
            cfg,
            admin_token,
            http::Method::GET,
            &format!(
                "{}/service_accounts?per_page={PER_PAGE}&page={page}",
                group.path()
            ),
            None,
        )?;
        let response = exchange(http, cfg, admin_token, &op, request).await?;
        let accounts: Vec<AccountAnswer> = parse(cfg, &op, response.body())?;
        if let Some(found) = accounts
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(username))
        {
            return Ok(Some(ServiceAccount {
                id: found.id,
                username: found.username.clone(),
            }));
        }
        if is_last_page(&response, accounts.len()) {
            break;
        }
    }
    Ok(None)
}

/// Creates a personal access token for service account `user_id`
/// (`POST /groups/:id/service_accounts/:user_id/personal_access_tokens`, body
/// `{"name", "scopes", "expires_at": "YYYY-MM-DD"}`).
pub async fn create_service_account_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    user_id: u64,
    name: &str,
    scopes: &[String],
    expires_at: Date,
) -> Result<IssuedToken> {
    let group = group_of(cfg)?;
    check_token_name(name)?;
    check_scopes(scopes)?;
    let body = serde_json::json!({
        "name": name,
        "scopes": scopes,
        "expires_at": format_date(expires_at),
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!(
            "{}/service_accounts/{user_id}/personal_access_tokens",
            group.path()
        ),
        Some(&body),
    )?;
    let op = Op::new(
        format!("create a token for service account {user_id} in"),
        group,
    );
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}

/// Creates a project access token in the configured project
/// (`POST /projects/:id/access_tokens`, body `{"name", "scopes", "access_level",
/// "expires_at"}`).
pub async fn create_project_access_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    name: &str,
    scopes: &[String],
    access_level: u32,
    expires_at: Date,
) -> Result<IssuedToken> {
    let project = project_of(cfg)?;
    check_token_name(name)?;
    check_scopes(scopes)?;
    check_access_level(access_level)?;
    let body = serde_json::json!({
        "name": name,
        "scopes": scopes,
        "access_level": access_level,
        "expires_at": format_date(expires_at),
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!("{}/access_tokens", project.path()),
        Some(&body),
    )?;
    let op = Op::new("create an access token in", project);
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}

/// Finds the newest active (not revoked) project access token named `name`
/// (`GET /projects/:id/access_tokens`, every page). `None` when there is none: a revoked
/// token of that name needs no cleanup.
pub async fn find_project_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    name: &str,
) -> Result<Option<ProjectToken>> {
    let project = project_of(cfg)?;
    let op = Op::new("list the access tokens of", project);
    let mut best: Option<ProjectToken> = None;
    for page in 1..=MAX_PAGES {
        let request = build(
            cfg,
            admin_token,
            http::Method::GET,
            &format!(
                "{}/access_tokens?per_page={PER_PAGE}&page={page}",
                project.path()
            ),
            None,
        )?;
        let response = exchange(http, cfg, admin_token, &op, request).await?;
        let tokens: Vec<TokenListAnswer> = parse(cfg, &op, response.body())?;
        let count = tokens.len();
        for t in tokens {
            if t.name != name || t.revoked || !t.active.unwrap_or(true) {
                continue;
            }
            if best.as_ref().is_some_and(|b| b.id >= t.id) {
                continue;
            }
            best = Some(ProjectToken {
                id: t.id,
                name: t.name,
                user_id: t.user_id,
                active: t.active.unwrap_or(true),
                revoked: t.revoked,
                expires_at: t.expires_at.as_deref().and_then(parse_date),
                scopes: t.scopes,
                access_level: t.access_level,
            });
        }
        if is_last_page(&response, count) {
            break;
        }
    }
    Ok(best)
}

// ---------------------------------------------------------------------------------------
// Deprovisioning and rotation.

/// Revokes an issued token. A service account's token goes through
/// `DELETE /groups/:id/service_accounts/:user_id/personal_access_tokens/:token_id`
/// (GitLab 17.11 and later); when that answers 404, through
/// `DELETE /personal_access_tokens/:id` (older instances; needs an administrator token),
/// whose 404 means the token is gone. A project access token goes through
/// `DELETE /projects/:id/access_tokens/:token_id`.
pub async fn revoke_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    token: &TokenRef,
) -> Result<Removal> {
    cfg.validate()?;
    match *token {
        TokenRef::ServiceAccount { user_id, token_id } => {
            let group = group_of(cfg)?;
            let op = Op::new(
                format!("revoke token {token_id} of service account {user_id} in"),
                group,
            );
            let request = build(
                cfg,
                admin_token,
                http::Method::DELETE,
                &format!(
                    "{}/service_accounts/{user_id}/personal_access_tokens/{token_id}",
                    group.path()
                ),
                None,
            )?;
            if removal(http, cfg, admin_token, &op, request).await? == Removal::Removed {
                return Ok(Removal::Removed);
            }
            let request = build(
                cfg,
                admin_token,
                http::Method::DELETE,
                &format!("/personal_access_tokens/{token_id}"),
                None,
            )?;
            removal(http, cfg, admin_token, &op, request).await
        }
        TokenRef::ProjectAccessToken { token_id } => {
            let project = project_of(cfg)?;
            let op = Op::new(format!("revoke access token {token_id} of"), project);
            let request = build(
                cfg,
                admin_token,
                http::Method::DELETE,
                &format!("{}/access_tokens/{token_id}", project.path()),
                None,
            )?;
            removal(http, cfg, admin_token, &op, request).await
        }
    }
}

/// Deletes service account `user_id` (`DELETE /groups/:id/service_accounts/:user_id`),
/// which also ends all its tokens. GitLab deletes users in the background, so the account
/// may still be listed for a short while.
pub async fn delete_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    user_id: u64,
) -> Result<Removal> {
    let group = group_of(cfg)?;
    let op = Op::new(format!("delete service account {user_id} of"), group);
    let request = build(
        cfg,
        admin_token,
        http::Method::DELETE,
        &format!("{}/service_accounts/{user_id}", group.path()),
        None,
    )?;
    removal(http, cfg, admin_token, &op, request).await
}

/// Rotates an issued token through the admin-side endpoints
/// (`POST /groups/:id/service_accounts/:user_id/personal_access_tokens/:token_id/rotate`
/// or `POST /projects/:id/access_tokens/:token_id/rotate`, body `{"expires_at"}`): GitLab
/// revokes the old token and returns a new one with a new id, which the caller must keep.
/// Rotating a token that was already revoked makes GitLab revoke its whole family.
pub async fn rotate_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    token: &TokenRef,
    expires_at: Date,
) -> Result<IssuedToken> {
    cfg.validate()?;
    let body = serde_json::json!({ "expires_at": format_date(expires_at) });
    let (op, path) = match *token {
        TokenRef::ServiceAccount { user_id, token_id } => {
            let group = group_of(cfg)?;
            (
                Op::new(
                    format!("rotate token {token_id} of service account {user_id} in"),
                    group,
                ),
                format!(
                    "{}/service_accounts/{user_id}/personal_access_tokens/{token_id}/rotate",
                    group.path()
                ),
            )
        }
        TokenRef::ProjectAccessToken { token_id } => {
            let project = project_of(cfg)?;
            (
                Op::new(format!("rotate access token {token_id} of"), project),
                format!("{}/access_tokens/{token_id}/rotate", project.path()),
            )
        }
    };
    let request = build(cfg, admin_token, http::Method::POST, &path, Some(&body))?;
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}

// ---------------------------------------------------------------------------------------
// Requests and answers.

/// What a call does, for messages: "create a service account in" + "group `acme`".
struct Op<'a> {
    action: String,
    target: &'a Target,
}

impl<'a> Op<'a> {
    fn new(action: impl Into<String>, target: &'a Target) -> Op<'a> {
        Op {
            action: action.into(),
            target,
        }
    }
}

fn group_of(cfg: &GitlabProviderConfig) -> Result<&Target> {
    cfg.validate()?;
    match &cfg.target {
        t @ Target::Group(_) => Ok(t),
        Target::Project(_) => Err(Error::invalid(
            "gitlab provider target",
            "this call needs a group target (service_account mode)",
        )),
    }
}

fn project_of(cfg: &GitlabProviderConfig) -> Result<&Target> {
    cfg.validate()?;
    match &cfg.target {
        t @ Target::Project(_) => Ok(t),
        Target::Group(_) => Err(Error::invalid(
            "gitlab provider target",
            "this call needs a project target (project_access_token mode)",
        )),
    }
}

/// One API request: `PRIVATE-TOKEN` (marked sensitive), `Accept: application/json`, and a
/// JSON body when there is one.
fn build(
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    method: http::Method,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
) -> Result<http::Request<Bytes>> {
    let mut token = http::HeaderValue::from_str(admin_token.expose_secret()).map_err(|_| {
        Error::invalid(
            "gitlab provider admin token",
            "contains characters an HTTP header cannot carry; paste the token again",
        )
    })?;
    if admin_token.expose_secret().trim().is_empty() {
        return Err(Error::invalid(
            "gitlab provider admin token",
            "is empty; store the provider's GitLab token",
        ));
    }
    token.set_sensitive(true);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(cfg.api_url(path_and_query))
        .header("PRIVATE-TOKEN", token)
        .header(http::header::ACCEPT, "application/json");
    let bytes = match body {
        Some(value) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(value).map_err(|e| {
                Error::invalid("gitlab request body", format!("cannot encode: {e}"))
            })?)
        }
        None => Bytes::new(),
    };
    builder.body(bytes).map_err(|_| {
        Error::invalid(
            "gitlab provider base_url",
            "does not make a valid request URL; use e.g. `https://gitlab.example.com/api/v4`",
        )
    })
}

/// Sends `request`; a success status gives the response, anything else the mapped error.
async fn exchange(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>> {
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if matches!(status, 200 | 201 | 204) {
        Ok(response)
    } else {
        Err(status_error(cfg, admin_token, op, status, response.body()))
    }
}

/// A deprovisioning call: 2xx is removed, 404 already gone, anything else an error.
async fn removal(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    request: http::Request<Bytes>,
) -> Result<Removal> {
    match exchange(http, cfg, admin_token, op, request).await {
        Ok(_) => Ok(Removal::Removed),
        Err(Error::NotFound { .. }) => Ok(Removal::AlreadyGone),
        Err(e) => Err(e),
    }
}

/// The error for a status GitLab answered with (never a success).
fn status_error(
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    op: &Op<'_>,
    status: u16,
    body: &[u8],
) -> Error {
    let peer = cfg.peer();
    let target = op.target.describe();
    let action = &op.action;
    let said = gitlab_message(body, admin_token);
    let said_suffix = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    match status {
        401 => Error::config(format!(
            "GitLab at {peer} rejected the provider's admin token (401 Unauthorized) trying to \
             {action} {target}: the token is invalid, expired or revoked; give the provider a \
             new token with the `api` scope"
        )),
        403 => Error::config(format!(
            "GitLab at {peer} refused the provider's admin token (403 Forbidden) trying to \
             {action} {target}: the token needs the `api` scope and the Owner role on the \
             {} (or an administrator's token){said_suffix}",
            match op.target {
                Target::Group(_) => "group",
                Target::Project(_) => "project (Maintainer at least)",
            }
        )),
        404 => Error::NotFound {
            what: format!("GitLab resource (trying to {action} {target} at {peer})"),
            hint: Some(format!(
                "check that {target} exists and the admin token can see it{said_suffix}"
            )),
        },
        400 | 422 => Error::invalid(
            format!("GitLab request to {action} {target}"),
            format!("GitLab at {peer} answered {status}{said_suffix}"),
        ),
        409 => Error::AlreadyExists {
            what: format!("GitLab resource (trying to {action} {target} at {peer}){said_suffix}"),
        },
        300..=399 => Error::config(format!(
            "GitLab at {peer} answered {status} (a redirect) trying to {action} {target}; \
             redirects are not followed: set base_url to the API itself, e.g. \
             `https://gitlab.example.com/api/v4`"
        )),
        429 | 500..=599 => Error::transport(
            peer,
            format!("GitLab answered {status} trying to {action} {target}; retry later"),
        ),
        _ => Error::transport(
            peer,
            format!("GitLab answered an unexpected {status} trying to {action} {target}"),
        ),
    }
}

/// GitLab's `message` (or `error`) from an error body, flattened to one line, scrubbed of
/// control characters and anything token-like, at most [`MAX_MESSAGE`] characters.
fn gitlab_message(body: &[u8], admin_token: &SecretString) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let mut parts = Vec::new();
    if let Some(v) = value.as_ref() {
        for key in ["message", "error", "error_description"] {
            if let Some(m) = v.get(key) {
                flatten(None, m, &mut parts);
                break;
            }
        }
    }
    let text = parts.join("; ");
    sanitise(&text, admin_token)
}

fn flatten(prefix: Option<&str>, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(match prefix {
            Some(p) => format!("{p} {s}"),
            None => s.clone(),
        }),
        serde_json::Value::Array(items) => {
            for item in items {
                flatten(prefix, item, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(Some(k), v, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push(other.to_string()),
    }
}

/// Removes the admin token, GitLab-token-shaped words (`glpat-…`, `gloas-…`) and long
/// random-looking words, and control characters; keeps at most [`MAX_MESSAGE`] characters.
fn sanitise(text: &str, admin_token: &SecretString) -> String {
    let secret = admin_token.expose_secret();
    let mut text = text.to_string();
    if secret.len() >= 4 {
        text = text.replace(secret, "[REDACTED]");
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            if looks_like_token(w) {
                "[REDACTED]".to_string()
            } else {
                w.chars().filter(|c| !c.is_control()).collect()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > MAX_MESSAGE {
        let cut: String = joined.chars().take(MAX_MESSAGE - 1).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// A GitLab token prefix (`gl` + 2 to 6 letters + `-`), or a long run of letters and
/// digits mixing upper case, lower case and digits (a secret, not a word or a username).
fn looks_like_token(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let prefixed = lower.match_indices("gl").any(|(i, _)| {
        let rest = &lower[i + 2..];
        let letters = rest.chars().take_while(char::is_ascii_lowercase).count();
        (2..=6).contains(&letters) && rest[letters..].starts_with('-')
    });
    let random = word
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|piece| {
            piece.len() >= 20
                && piece.chars().any(|c| c.is_ascii_digit())
                && piece.chars().any(|c| c.is_ascii_lowercase())
                && piece.chars().any(|c| c.is_ascii_uppercase())
        });
    prefixed || random
}

fn parse<T: serde::de::DeserializeOwned>(
    cfg: &GitlabProviderConfig,
    op: &Op<'_>,
    body: &[u8],
) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::transport(
            cfg.peer(),
            format!(
                "GitLab's answer trying to {} {} is not what its API documents (line {}, \
                 column {}); is base_url the API (`…/api/v4`)?",
                op.action,
                op.target.describe(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// A token-bearing answer (create or rotate) as an [`IssuedToken`]; the body is wiped.
fn issued(
    cfg: &GitlabProviderConfig,
    op: &Op<'_>,
    response: http::Response<Bytes>,
) -> Result<IssuedToken> {
    let body = response.into_body();
    let parsed: Result<TokenAnswer> = parse(cfg, op, &body);
    if let Ok(mut bytes) = body.try_into_mut() {
        bytes.as_mut().zeroize();
    }
    let answer = parsed?;
    let expires_at = answer
        .expires_at
        .as_deref()
        .and_then(parse_date)
        .ok_or_else(|| {
            Error::transport(
                cfg.peer(),
                format!(
                    "GitLab's answer trying to {} {} has no valid `expires_at`",
                    op.action,
                    op.target.describe()
                ),
            )
        })?;
    if answer.token.expose_secret().is_empty() {
        return Err(Error::transport(
            cfg.peer(),
            format!(
                "GitLab's answer trying to {} {} carries no token",
                op.action,
                op.target.describe()
            ),
        ));
    }
    Ok(IssuedToken {
        id: answer.id,
        user_id: answer.user_id,
        name: answer.name,
        token: answer.token,
        expires_at,
    })
}

/// Whether a list answer was the last page: GitLab's `X-Next-Page` header when present
/// (empty on the last page), else a short page.
fn is_last_page(response: &http::Response<Bytes>, count: usize) -> bool {
    match response.headers().get("x-next-page") {
        Some(next) => next.to_str().map(|s| s.trim().is_empty()).unwrap_or(true),
        None => count < PER_PAGE,
    }
}

#[derive(Deserialize)]
struct AccountAnswer {
    id: u64,
    username: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id: u64,
    #[serde(default)]
    user_id: Option<u64>,
    #[serde(default)]
    name: String,
    token: SecretString,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct TokenListAnswer {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    user_id: Option<u64>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    access_level: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Checks, names, dates, encoding.

fn check_scopes(scopes: &[String]) -> Result<()> {
    if scopes.is_empty() {
        return Err(Error::invalid(
            "gitlab provider scopes",
            format!(
                "at least one scope is needed, from: {}",
                KNOWN_SCOPES.join(", ")
            ),
        ));
    }
    for (i, scope) in scopes.iter().enumerate() {
        if !KNOWN_SCOPES.contains(&scope.as_str()) {
            let shown: String = scope.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(Error::invalid(
                "gitlab provider scopes",
                format!(
                    "`{shown}` is not a GitLab token scope; use one of: {}",
                    KNOWN_SCOPES.join(", ")
                ),
            ));
        }
        if scopes[..i].contains(scope) {
            return Err(Error::invalid(
                "gitlab provider scopes",
                format!("`{scope}` is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_access_level(level: u32) -> Result<()> {
    if ACCESS_LEVELS.contains(&level) {
        Ok(())
    } else {
        Err(Error::invalid(
            "gitlab provider access_level",
            format!(
                "{level} is not a GitLab role; use 10 (Guest), 15 (Planner), 20 (Reporter), \
                 30 (Developer), 40 (Maintainer) or 50 (Owner)"
            ),
        ))
    }
}

fn check_agent_id(agent_id: &str) -> Result<()> {
    if agent_id.trim().is_empty() {
        return Err(Error::invalid("agent id", "is empty"));
    }
    if agent_id.chars().count() > 255 || agent_id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "agent id",
            "must be at most 255 characters without control characters",
        ));
    }
    Ok(())
}

fn check_token_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("gitlab token name", "is empty"));
    }
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "gitlab token name",
            "must be at most 255 characters without control characters",
        ));
    }
    Ok(())
}

/// The agent id with characters outside letters, digits, space, `_ . - ( )` replaced by `-`,
/// at most 180 characters (so the display name stays under GitLab's 255).
fn agent_label(agent_id: &str) -> String {
    agent_id
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-' | '(' | ')') {
                c
            } else {
                '-'
            }
        })
        .take(180)
        .collect()
}

fn display_name(agent_id: &str) -> String {
    format!("strongroom agent {}", agent_label(agent_id))
}

/// `strongroom-<slug>-<hash12>` (see [`GitlabProviderConfig::service_account_username`]).
fn derive_username(target: &str, agent_id: &str) -> String {
    let mut slug = String::new();
    for c in agent_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.truncate(32);
    let slug = slug.trim_end_matches('-');
    let mut hasher = Sha256::new();
    hasher.update(b"strongroom gitlab service account\0");
    hasher.update(target.as_bytes());
    hasher.update(b"\0");
    hasher.update(agent_id.as_bytes());
    let digest = hex::encode(hasher.finalize());
    let short = &digest[..12];
    if slug.is_empty() {
        format!("strongroom-{short}")
    } else {
        format!("strongroom-{slug}-{short}")
    }
}

/// GitLab's username rules: 1 to 255 characters of letters, digits, `_`, `.`, `-`;
/// starting and ending with a letter or digit; no two special characters in a row; not
/// ending in `.git` or `.atom`.
pub fn is_valid_username(name: &str) -> bool {
    let special = |c: char| matches!(c, '_' | '.' | '-');
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || special(c))
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && !name
            .as_bytes()
            .windows(2)
            .any(|w| special(w[0] as char) && special(w[1] as char))
        && !name.ends_with(".git")
        && !name.ends_with(".atom")
}

/// `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// A `YYYY-MM-DD` date (GitLab's `expires_at`); `None` when it is not one.
pub fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.get(..2)?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// One path segment percent-encoded: everything but `A-Z a-z 0-9 - . _ ~` (so
/// `group/sub` becomes `group%2Fsub`).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-CANARY-tok-9f3b";

    fn group_cfg() -> GitlabProviderConfig {
        GitlabProviderConfig {
            base_url: "https://gitlab.example.com/api/v4/".into(),
            target: Target::Group("acme".into()),
            mode: Mode::ServiceAccount {
                scopes: vec!["read_api".into(), "read_repository".into()],
                expires_in_days: 30,
            },
        }
    }

    fn project_cfg() -> GitlabProviderConfig {
        GitlabProviderConfig {
            base_url: "https://gitlab.example.com/api/v4".into(),
            target: Target::Project("acme/backend/api".into()),
            mode: Mode::ProjectAccessToken {
                scopes: vec!["api".into()],
                access_level: 30,
                expires_in_days: 365,
            },
        }
    }

    fn admin() -> SecretString {
        SecretString::from(ADMIN.to_string())
    }

    fn date(y: i32, m: u8, d: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).expect("month"), d).expect("date")
    }

    fn invalid_field(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn valid_configs_pass() {
        group_cfg().validate().expect("group");
        project_cfg().validate().expect("project");
        let mut c = group_cfg();
        c.base_url = "http://127.0.0.1:8080/api/v4".into();
        c.validate().expect("loopback http");
        c.target = Target::Group("12345".into());
        c.validate().expect("numeric id");
        let mut p = project_cfg();
        for level in [10, 15, 20, 30, 40, 50] {
            if let Mode::ProjectAccessToken { access_level, .. } = &mut p.mode {
                *access_level = level;
            }
            p.validate().expect("level");
        }
        let mut all = group_cfg();
        if let Mode::ServiceAccount { scopes, .. } = &mut all.mode {
            *scopes = KNOWN_SCOPES.iter().map(|s| s.to_string()).collect();
        }
        all.validate().expect("every documented scope");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let mut c = group_cfg();
        c.base_url = "http://gitlab.example.com/api/v4".into();
        assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");
        c.base_url = "not a url".into();
        assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");
        c.base_url = "https://u:p@gitlab.example.com/api/v4".into();
        assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");

        let mut c = group_cfg();
        c.target = Target::Group("acme/sub".into());
        let e = c.validate().expect_err("subgroup");
        assert!(e.to_string().contains("top-level group"), "{e}");
        c.target = Target::Group(" acme".into());
        assert_eq!(invalid_field(c.validate()), "gitlab provider target");
        c.target = Target::Project("acme/api".into());
        let e = c.validate().expect_err("project target");
        assert!(e.to_string().contains("needs a group target"), "{e}");

        let mut p = project_cfg();
        p.target = Target::Group("acme".into());
        let e = p.validate().expect_err("group target");
        assert!(e.to_string().contains("needs a project target"), "{e}");

        for (scopes, days, level) in [
            (vec![], 30, 30),
            (vec!["sudo".to_string()], 30, 30),
            (vec!["api".to_string(), "api".to_string()], 30, 30),
            (vec!["api".to_string()], 0, 30),
            (vec!["api".to_string()], 366, 30),
            (vec!["api".to_string()], 30, 35),
            (vec!["api".to_string()], 30, 60),
        ] {
            let p = GitlabProviderConfig {
                mode: Mode::ProjectAccessToken {
                    scopes: scopes.clone(),
                    access_level: level,
                    expires_in_days: days,
                },
                ..project_cfg()
            };
            let field = invalid_field(p.validate());
            assert!(field.starts_with("gitlab provider "), "{field}");
        }
        let e = GitlabProviderConfig {
            mode: Mode::ServiceAccount {
                scopes: vec!["sudo".into()],
                expires_in_days: 1,
            },
            ..group_cfg()
        }
        .validate()
        .expect_err("sudo");
        assert!(e.to_string().contains("`sudo` is not a GitLab token scope"));
    }

    #[test]
    fn config_round_trips_through_json() {
        let json = serde_json::to_string(&project_cfg()).expect("json");
        assert!(json.contains(r#""mode":"project_access_token""#), "{json}");
        assert!(json.contains(r#""project":"acme/backend/api""#), "{json}");
        let back: GitlabProviderConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, project_cfg());
    }

    #[test]
    fn expiry_date_adds_the_configured_days() {
        assert_eq!(
            group_cfg().expiry_date(date(2025, 12, 15)).expect("date"),
            date(2026, 1, 14)
        );
        assert_eq!(format_date(date(2026, 1, 4)), "2026-01-04");
        assert_eq!(parse_date("2026-01-04"), Some(date(2026, 1, 4)));
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("soon"), None);
    }

    #[test]
    fn usernames_follow_gitlab_rules_and_are_stable() {
        let cfg = group_cfg();
        let a = cfg.service_account_username("agent-1").expect("name");
        assert_eq!(a, cfg.service_account_username("agent-1").expect("again"));
        assert!(a.starts_with("strongroom-agent-1-"), "{a}");
        assert_ne!(a, cfg.service_account_username("agent-2").expect("other"));
        let other_group = GitlabProviderConfig {
            target: Target::Group("other".into()),
            ..group_cfg()
        };
        assert_ne!(
            a,
            other_group.service_account_username("agent-1").expect("x")
        );
        for agent in [
            "agent-1",
            "Agent One!",
            "__weird..name--",
            "ünïcödé agent",
            "日本",
            "a",
            ".git",
            "x.atom",
            "-",
            &"long-agent-name-".repeat(10),
            "UPPER_case.dots-and-dashes_123",
        ] {
            let name = cfg.service_account_username(agent).expect("name");
            assert!(is_valid_username(&name), "{agent:?} gave {name:?}");
            assert!(name.len() <= 56, "{name}");
        }
        assert_eq!(
            cfg.service_account_username("日本").expect("x").len(),
            "strongroom-".len() + 12
        );
        assert!(cfg.service_account_username("").is_err());
        assert!(cfg.service_account_username("a\nb").is_err());
    }

    #[test]
    fn username_rules() {
        for ok in ["a", "a1", "a_b.c-d", "sidney.jones", "x9"] {
            assert!(is_valid_username(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a._b",
            "a b",
            "a/b",
            "repo.git",
            "feed.atom",
            "ü",
        ] {
            assert!(!is_valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn token_names_are_deterministic_and_tame() {
        let name = token_name("agent-1").expect("name");
        assert!(name.starts_with("strongroom agent agent-1 "), "{name}");
        assert_eq!(name, token_name("agent-1").expect("again"));
        let tame = token_name("a<b>/c").expect("name");
        assert!(tame.starts_with("strongroom agent a-b--c "), "{tame}");
        // Ids whose labels read alike still name different tokens.
        let (colon, dash) = (
            token_name("bot:1").expect("name"),
            token_name("bot-1").expect("name"),
        );
        assert_ne!(colon, dash);
        assert!(token_name(" ").is_err());
    }

    #[test]
    fn paths_are_url_encoded() {
        assert_eq!(encode_segment("group/sub"), "group%2Fsub");
        assert_eq!(encode_segment("a b&c"), "a%20b%26c");
        assert_eq!(encode_segment("123"), "123");
        assert_eq!(
            Target::Project("acme/backend/api".into()).path(),
            "/projects/acme%2Fbackend%2Fapi"
        );
    }

    #[test]
    fn requests_carry_the_admin_token_and_json() {
        let cfg = project_cfg();
        let body = serde_json::json!({"name": "n", "scopes": ["api"]});
        let req = build(
            &cfg,
            &admin(),
            http::Method::POST,
            &format!("{}/access_tokens", cfg.target.path()),
            Some(&body),
        )
        .expect("request");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "https://gitlab.example.com/api/v4/projects/acme%2Fbackend%2Fapi/access_tokens"
        );
        let token = req.headers().get("PRIVATE-TOKEN").expect("header");
        assert_eq!(token.to_str().expect("ascii"), ADMIN);
        assert!(token.is_sensitive());
        assert_eq!(
            req.headers().get("content-type").expect("ct"),
            "application/json"
        );
        let sent: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(sent, body);

        // The trailing slash of base_url is dropped; GETs carry no body or content type.
        let get = build(
            &group_cfg(),
            &admin(),
            http::Method::GET,
            "/groups/acme/service_accounts?per_page=100&page=1",
            None,
        )
        .expect("request");
        assert_eq!(
            get.uri().to_string(),
            "https://gitlab.example.com/api/v4/groups/acme/service_accounts?per_page=100&page=1"
        );
        assert!(get.body().is_empty());
        assert!(get.headers().get("content-type").is_none());

        let bad = SecretString::from("bad\ntoken".to_string());
        let e = build(&cfg, &bad, http::Method::GET, "/x", None).expect_err("header");
        assert!(!e.to_string().contains("bad\ntoken"));
        let empty = SecretString::from(String::new());
        assert!(build(&cfg, &empty, http::Method::GET, "/x", None).is_err());
    }

    #[test]
    fn status_mapping() {
        let cfg = group_cfg();
        let op = Op::new("create a service account in", &cfg.target);
        let kind = |status: u16, body: &str| {
            status_error(&cfg, &admin(), &op, status, body.as_bytes()).kind()
        };
        use crate::error::ErrorKind;
        assert_eq!(
            kind(401, r#"{"message":"401 Unauthorized"}"#),
            ErrorKind::Config
        );
        assert_eq!(
            kind(403, r#"{"message":"403 Forbidden"}"#),
            ErrorKind::Config
        );
        assert_eq!(
            kind(404, r#"{"message":"404 Group Not Found"}"#),
            ErrorKind::NotFound
        );
        assert_eq!(kind(400, r#"{"message":"bad"}"#), ErrorKind::InvalidInput);
        assert_eq!(kind(422, "not json"), ErrorKind::InvalidInput);
        assert_eq!(kind(409, "{}"), ErrorKind::AlreadyExists);
        assert_eq!(kind(429, ""), ErrorKind::Transport);
        assert_eq!(kind(500, "oops"), ErrorKind::Transport);
        assert_eq!(kind(503, ""), ErrorKind::Transport);
        assert_eq!(kind(302, ""), ErrorKind::Config);

        let e = status_error(&cfg, &admin(), &op, 401, b"{}").to_string();
        assert!(e.contains("gitlab.example.com"), "{e}");
        assert!(e.contains("admin token"), "{e}");
        assert!(e.contains("group `acme`"), "{e}");
    }

    #[test]
    fn gitlab_messages_are_flattened_scrubbed_and_short() {
        let body = format!(
            r#"{{"message":{{"username":["has already been taken"],"token":["glpat-AbC123xyz is bad","{ADMIN} leaked"]}}}}"#
        );
        let m = gitlab_message(body.as_bytes(), &admin());
        assert!(m.contains("username has already been taken"), "{m}");
        assert!(!m.contains("glpat-"), "{m}");
        assert!(!m.contains(ADMIN), "{m}");
        assert!(m.contains("[REDACTED]"), "{m}");

        let old_style = r#"{"error":"token Zx9Qw8Er7Ty6Ui5Op4As3Df is invalid\u0007"}"#;
        let m = gitlab_message(old_style.as_bytes(), &admin());
        assert_eq!(m, "token [REDACTED] is invalid");

        let long = format!(r#"{{"message":"{}"}}"#, "word ".repeat(100));
        let m = gitlab_message(long.as_bytes(), &admin());
        assert!(m.chars().count() <= MAX_MESSAGE, "{}", m.chars().count());

        // A derived username is not mistaken for a token.
        let m = gitlab_message(
            br#"{"message":"strongroom-agent-1-0123456789ab exists"}"#,
            &admin(),
        );
        assert_eq!(m, "strongroom-agent-1-0123456789ab exists");
        assert_eq!(gitlab_message(b"<html>", &admin()), "");
    }

    #[test]
    fn issued_token_debug_hides_the_token() {
        let t = IssuedToken {
            id: 7,
            user_id: Some(71),
            name: "n".into(),
            token: SecretString::from("glpat-CANARY-secret".to_string()),
            expires_at: date(2026, 1, 1),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn issued_answers_parse_and_require_a_token_and_date() {
        let cfg = project_cfg();
        let op = Op::new("create an access token in", &cfg.target);
        let ok = http::Response::new(Bytes::from_static(
            br#"{"id":58,"user_id":166,"name":"t","token":"glpat-x","expires_at":"2021-01-31","scopes":["api"]}"#,
        ));
        let t = issued(&cfg, &op, ok).expect("token");
        assert_eq!((t.id, t.user_id), (58, Some(166)));
        assert_eq!(t.token.expose_secret(), "glpat-x");
        assert_eq!(t.expires_at, date(2021, 1, 31));
        let no_date = http::Response::new(Bytes::from_static(
            br#"{"id":58,"token":"glpat-x","expires_at":null}"#,
        ));
        assert!(issued(&cfg, &op, no_date).is_err());
        let no_token = http::Response::new(Bytes::from_static(br#"{"id":58}"#));
        let e = issued(&cfg, &op, no_token).expect_err("no token");
        assert_eq!(e.kind(), crate::error::ErrorKind::Transport);
    }
}

//! What an audit row records: the action (the one vocabulary the policy decides and the rows
//! name), the event (actor, action, target, outcome, details) before the store numbers and
//! chains it. Depends on the model only, so every layer may write events.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CredentialId, Scope, Timestamp};

/// Something a principal asks to do: the policy table decides it, and the audit row that
/// records it names it by [`Action::as_str`]. The names are stable (they are hashed into the
/// chain) and listed in `docs/AUDIT.md`; a stored row whose action is not one of them does
/// not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// Create a credential.
    Create,
    /// Update its fields or metadata.
    Update,
    /// Delete it.
    Delete,
    /// See its metadata (never secret values); listing shows only these.
    ReadMetadata,
    /// See its secret values (a person, through `reveal`).
    Reveal,
    /// Get its secret values for injection (an app runtime, through `resolve`).
    Resolve,
    /// Move it through its lifecycle.
    SetState,
    /// List the apps granted a per-user credential.
    GrantList,
    /// Grant an app a per-user credential.
    GrantAdd,
    /// Revoke a grant.
    GrantRevoke,
    /// Verify the audit chain.
    AuditVerify,
    /// Inject its secret values into an app's config (a deploy or session start, through
    /// slots).
    Inject,
    /// Test it live against its provider's API (its secret is sent there).
    Verify,
    /// Re-wrap every data key onto the active master key (key rotation).
    Rewrap,
    /// Open every (selected) credential blob and seal it afresh: new data keys, the
    /// current format (how version-1 records become version 2).
    Reseal,
    /// Start an OAuth flow (authorization code or device code) that will create a per-user
    /// credential.
    OAuthStart,
    /// Complete an OAuth flow: exchange its code (or device code) for tokens.
    OAuthComplete,
    /// Refresh an OAuth credential's access token with its refresh token.
    Refresh,
    /// Revoke an OAuth credential's tokens at the provider (RFC 7009).
    Revoke,
    /// Link an agent's integration (GitHub, GitLab, Telegram): its credential checked with
    /// the service and stored as the agent's not-agent-accessible secret.
    IntegrationLink,
    /// Unlink an agent's integration: the record and its secrets removed.
    IntegrationUnlink,
    /// List an agent's integrations (metadata only).
    IntegrationList,
    /// Get an agent's integration credentials through the credentials path (the one
    /// audited chokepoint through which an agent reaches them).
    IntegrationCredentials,
    /// Register an org-level credential provider (GitLab): its config and sealed admin token.
    ProviderAdd,
    /// Remove a credential provider (refused while an integration uses it).
    ProviderRemove,
    /// List the credential providers (metadata only), or sweep their leftover provisioning.
    ProviderList,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 26] = [
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::ReadMetadata,
        Action::Reveal,
        Action::Resolve,
        Action::SetState,
        Action::GrantList,
        Action::GrantAdd,
        Action::GrantRevoke,
        Action::AuditVerify,
        Action::Inject,
        Action::Verify,
        Action::Rewrap,
        Action::Reseal,
        Action::OAuthStart,
        Action::OAuthComplete,
        Action::Refresh,
        Action::Revoke,
        Action::IntegrationLink,
        Action::IntegrationUnlink,
        Action::IntegrationList,
        Action::IntegrationCredentials,
        Action::ProviderAdd,
        Action::ProviderRemove,
        Action::ProviderList,
    ];

    /// The stable name written into audit rows (`credential.create`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "credential.create",
            Action::Update => "credential.update",
            Action::Delete => "credential.delete",
            Action::ReadMetadata => "credential.read_metadata",
            Action::Reveal => "credential.reveal",
            Action::Resolve => "credential.resolve",
            Action::SetState => "credential.set_state",
            Action::GrantList => "grant.list",
            Action::GrantAdd => "grant.add",
            Action::GrantRevoke => "grant.revoke",
            Action::AuditVerify => "audit.verify",
            Action::Inject => "credential.inject",
            Action::Verify => "credential.verify",
            Action::Rewrap => "keys.rewrap",
            Action::Reseal => "keys.reseal",
            Action::OAuthStart => "oauth.start",
            Action::OAuthComplete => "oauth.complete",
            Action::Refresh => "credential.refresh",
            Action::Revoke => "credential.revoke",
            Action::IntegrationLink => "integration.link",
            Action::IntegrationUnlink => "integration.unlink",
            Action::IntegrationList => "integration.list",
            Action::IntegrationCredentials => "integration.credentials",
            Action::ProviderAdd => "provider.add",
            Action::ProviderRemove => "provider.remove",
            Action::ProviderList => "provider.list",
        }
    }

    /// The audit name; use [`Action::as_str`].
    #[deprecated(note = "use Action::as_str")]
    pub fn audit_name(self) -> &'static str {
        self.as_str()
    }

    /// Parses a stable name (what [`Action::as_str`] gives).
    pub fn parse(text: &str) -> Result<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == text)
            .ok_or_else(|| {
                let shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
                Error::invalid(
                    "action",
                    format!(
                        "unknown action `{shown}` (the known ones are listed in docs/AUDIT.md)"
                    ),
                )
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An action equals its stable name (`Action::Reveal == "credential.reveal"`).
impl PartialEq<str> for Action {
    fn eq(&self, name: &str) -> bool {
        self.as_str() == name
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Action, D::Error> {
        let text = String::deserialize(d)?;
        Action::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It was done.
    Success,
    /// The policy refused it.
    Denied,
    /// It was attempted and failed.
    Failure,
}

impl Outcome {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Outcome> {
        match text {
            "success" => Ok(Outcome::Success),
            "denied" => Ok(Outcome::Denied),
            "failure" => Ok(Outcome::Failure),
            other => Err(Error::invalid(
                "outcome",
                format!("unknown outcome `{other}`; use success, denied or failure"),
            )),
        }
    }
}

/// What an audit event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTarget {
    /// The credential, when the action concerns one.
    pub credential_id: Option<CredentialId>,
    /// Its scope (kind and owner), when known.
    pub scope: Option<Scope>,
}

impl AuditTarget {
    /// No particular target (key operations, admin actions).
    pub fn none() -> AuditTarget {
        AuditTarget::default()
    }

    /// A credential in a scope.
    pub fn credential(id: &CredentialId, scope: &Scope) -> AuditTarget {
        AuditTarget {
            credential_id: Some(id.clone()),
            scope: Some(scope.clone()),
        }
    }

    /// A scope without a particular credential.
    pub fn scope(scope: &Scope) -> AuditTarget {
        AuditTarget {
            credential_id: None,
            scope: Some(scope.clone()),
        }
    }

    /// The owner column as stored (empty without a scope), borrowed where the scope holds
    /// it as one string.
    pub(crate) fn owner(&self) -> std::borrow::Cow<'_, str> {
        self.scope
            .as_ref()
            .map_or(std::borrow::Cow::Borrowed(""), Scope::owner_text)
    }

    /// `(credential id, scope kind, owner)` as stored, empty strings for absent parts.
    pub fn columns(&self) -> (String, String, String) {
        (
            self.credential_id
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            self.scope
                .as_ref()
                .map(|s| s.kind().as_str().to_string())
                .unwrap_or_default(),
            self.scope.as_ref().map(Scope::owner).unwrap_or_default(),
        )
    }

    /// Checks stored columns the way [`AuditTarget::from_columns`] does, without building
    /// anything (for stores that hash rows straight from their columns).
    pub fn check_columns(credential_id: &str, scope_kind: &str, owner: &str) -> Result<()> {
        if !credential_id.is_empty() {
            crate::model::validate_id("credential id", credential_id)?;
        }
        if scope_kind.is_empty() {
            return no_owner_without_scope(owner);
        }
        match crate::model::ScopeKind::parse(scope_kind)? {
            crate::model::ScopeKind::SystemWide if owner.is_empty() => Ok(()),
            crate::model::ScopeKind::SystemWide => Err(Error::invalid(
                "scope owner",
                "a system_wide scope has no owner",
            )),
            crate::model::ScopeKind::PerAppPerUser => match owner.split_once('/') {
                Some((app, user)) => {
                    crate::model::validate_id("app id", app)?;
                    crate::model::validate_id("user id", user)
                }
                None => Err(Error::invalid(
                    "scope owner",
                    "a per_app_per_user owner is written `app/user`",
                )),
            },
            _ => crate::model::validate_id("scope owner", owner),
        }
    }

    /// Rebuilds a target from its stored columns.
    pub fn from_columns(credential_id: &str, scope_kind: &str, owner: &str) -> Result<AuditTarget> {
        let credential_id = if credential_id.is_empty() {
            None
        } else {
            Some(CredentialId::new(credential_id)?)
        };
        let scope = if scope_kind.is_empty() {
            no_owner_without_scope(owner)?;
            None
        } else {
            Some(Scope::from_parts(
                crate::model::ScopeKind::parse(scope_kind)?,
                owner,
            )?)
        };
        Ok(AuditTarget {
            credential_id,
            scope,
        })
    }
}

/// A row without a scope kind is written with an empty owner ([`AuditTarget::columns`]); an
/// owner there was put in by hand, and a decoded row would silently drop it (so the row
/// would decode to an event whose hash is not the stored row's).
fn no_owner_without_scope(owner: &str) -> Result<()> {
    if owner.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            "scope owner",
            "a row without a scope kind has no owner",
        ))
    }
}

/// One audited action, before the store numbers and chains it. Never put secret values in
/// any field: details are for ids, counts, reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: Timestamp,
    /// Who did it (principal id).
    pub actor: String,
    /// What was done (written as [`Action::as_str`]).
    pub action: Action,
    /// What it was done to.
    pub target: AuditTarget,
    /// How it ended.
    pub outcome: Outcome,
    /// Non-secret details, sorted by key.
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// A successful event at the current time.
    pub fn new(actor: impl Into<String>, action: Action, target: AuditTarget) -> Self {
        AuditEvent {
            time: Timestamp::now(),
            actor: actor.into(),
            action,
            target,
            outcome: Outcome::Success,
            details: BTreeMap::new(),
        }
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Adds a non-secret detail.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Sets the time.
    pub fn at(mut self, time: Timestamp) -> Self {
        self.time = time;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_its_name() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()).expect("parses"), action);
            let json = serde_json::to_string(&action).expect("serialises");
            assert_eq!(json, format!("\"{}\"", action.as_str()));
            assert_eq!(
                serde_json::from_str::<Action>(&json).expect("deserialises"),
                action
            );
        }
        let mut names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len(), "names are distinct");
        for unknown in [
            "",
            "read",
            "credential.put",
            "Credential.Create",
            "keys.rewrap ",
        ] {
            let err = Action::parse(unknown).expect_err(unknown);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
    }

    /// The `## Actions` table of docs/AUDIT.md, as (name, variant) in row order.
    fn documented_actions() -> Vec<(String, String)> {
        let doc = include_str!("../../docs/AUDIT.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Actions\n"))
            .expect("docs/AUDIT.md has an `## Actions` section");
        section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let unquote = |cell: &str| cell.trim_matches('`').to_string();
                (unquote(cells[1]), unquote(cells[2]))
            })
            .collect()
    }

    #[test]
    fn the_actions_are_exactly_the_documented_list() {
        let documented = documented_actions();
        let code: Vec<(String, String)> = Action::ALL
            .iter()
            .map(|a| (a.as_str().to_string(), format!("Action::{a:?}")))
            .collect();
        assert_eq!(
            documented, code,
            "docs/AUDIT.md's `## Actions` table and Action::ALL must list the same actions, \
             in the same order"
        );
    }
}

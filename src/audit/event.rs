//! What an audit row records: the event (actor, action, target, outcome, details) before the
//! store numbers and chains it. Depends on the model only, so every layer may write events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CredentialId, Scope, Timestamp};

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
            return Ok(());
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

/// One audited action, before the store numbers and chains it. Never put secret values in
/// any field: details are for ids, counts, reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: Timestamp,
    /// Who did it (principal id).
    pub actor: String,
    /// What was done (`credential.create`, `credential.reveal`, `keys.rewrap`, …).
    pub action: String,
    /// What it was done to.
    pub target: AuditTarget,
    /// How it ended.
    pub outcome: Outcome,
    /// Non-secret details, sorted by key.
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// A successful event at the current time.
    pub fn new(actor: impl Into<String>, action: impl Into<String>, target: AuditTarget) -> Self {
        AuditEvent {
            time: Timestamp::now(),
            actor: actor.into(),
            action: action.into(),
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

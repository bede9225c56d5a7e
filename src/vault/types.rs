//! What callers hand the vault and get back: new credentials, updates, metadata, revealed
//! fields, references and their session context, list filters.

use super::*;

/// What `create` needs.
#[derive(Debug)]
#[non_exhaustive]
pub struct NewCredential {
    /// The `ref` name, unique within scope and owner.
    pub name: String,
    /// Where it lives.
    pub scope: Scope,
    /// Provider name (`openai`, …).
    pub provider: String,
    /// Handler type (`api_key`, …).
    pub handler_type: String,
    /// Secret fields.
    pub fields: BTreeMap<String, SecretString>,
    /// Non-secret metadata.
    pub metadata: BTreeMap<String, String>,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// When it stops being usable.
    pub expires_at: Option<Timestamp>,
}

impl NewCredential {
    /// A credential with these secret fields and no metadata.
    pub fn new(
        name: impl Into<String>,
        scope: Scope,
        provider: impl Into<String>,
        handler_type: impl Into<String>,
        fields: BTreeMap<String, SecretString>,
    ) -> NewCredential {
        NewCredential {
            name: name.into(),
            scope,
            provider: provider.into(),
            handler_type: handler_type.into(),
            fields,
            metadata: BTreeMap::new(),
            agent_accessible: false,
            expires_at: None,
        }
    }
}

/// Changes for `update`; unset parts stay as they are. New fields make a new version with a
/// new data key and put the credential back to `filled`.
#[derive(Debug, Default)]
pub struct CredentialUpdate {
    /// Replacement secret fields.
    pub fields: Option<BTreeMap<String, SecretString>>,
    /// Replacement metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// New `agent_accessible`.
    pub agent_accessible: Option<bool>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<Timestamp>>,
}

/// A credential's metadata as a caller sees it (never secret values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    /// Stable id.
    pub id: CredentialId,
    /// The `ref` name.
    pub name: String,
    /// Where it lives.
    pub scope: Scope,
    /// Provider name.
    pub provider: String,
    /// Handler type.
    pub handler_type: String,
    /// Lifecycle state as of now (`expired` once `expires_at` has passed).
    pub state: LifecycleState,
    /// Non-secret metadata.
    pub metadata: BTreeMap<String, String>,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// Version (pass it back to `update`/`delete`).
    pub version: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Expiry, if any.
    pub expires_at: Option<Timestamp>,
    /// Names of the secret fields (not their values).
    pub field_names: Vec<String>,
}

/// A credential with its secret values. `Debug` shows field names only.
pub struct RevealedCredential {
    /// Its metadata.
    pub info: CredentialInfo,
    /// Its secret fields.
    pub fields: BTreeMap<String, SecretString>,
}

impl fmt::Debug for RevealedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevealedCredential")
            .field("info", &self.info)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A reference from an app config: `{ref, scope, provider?}`. The compact form (a bare
/// name) means `per_user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// The credential's name.
    pub name: String,
    /// The one scope kind it is looked up in.
    pub scope: ScopeKind,
    /// When given, the stored credential's provider must match.
    pub provider: Option<String>,
}

impl CredentialRef {
    /// The compact form: `per_user`, any provider.
    pub fn compact(name: impl Into<String>) -> CredentialRef {
        CredentialRef {
            name: name.into(),
            scope: ScopeKind::PerUser,
            provider: None,
        }
    }

    /// The explicit form.
    pub fn explicit(
        name: impl Into<String>,
        scope: ScopeKind,
        provider: Option<String>,
    ) -> CredentialRef {
        CredentialRef {
            name: name.into(),
            scope,
            provider,
        }
    }
}

/// Where a reference is resolved: the app and the user of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveContext {
    /// The app.
    pub app: String,
    /// The session's user.
    pub user: String,
}

impl ResolveContext {
    /// The context a principal resolves in: its own app and user. A context passed to
    /// [`Vault::resolve`] must be exactly this one.
    pub fn of(principal: &Principal) -> Option<ResolveContext> {
        Some(ResolveContext {
            app: principal.app()?.to_string(),
            user: principal.user()?.to_string(),
        })
    }

    /// Is this the principal's own context?
    pub(super) fn belongs_to(&self, principal: &Principal) -> bool {
        principal.app() == Some(self.app.as_str()) && principal.user() == Some(self.user.as_str())
    }

    /// The concrete scope a reference of kind `kind` names in this context.
    pub fn scope_for(&self, kind: ScopeKind) -> Result<Scope> {
        match kind {
            ScopeKind::SystemWide => Ok(Scope::SystemWide),
            ScopeKind::PerAppShared => Scope::per_app_shared(self.app.clone()),
            ScopeKind::PerUser => Scope::per_user(self.user.clone()),
            ScopeKind::PerAppPerUser => {
                Scope::per_app_per_user(self.app.clone(), self.user.clone())
            }
            ScopeKind::PerAgent => Err(Error::invalid(
                "scope",
                "per_agent credentials are not resolved through app references",
            )),
        }
    }
}

/// Which credentials `list` returns; each set field must match. Results hold only what the
/// principal may see.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    /// Exactly this scope.
    pub scope: Option<Scope>,
    /// Any scope of this kind.
    pub scope_kind: Option<ScopeKind>,
    /// This provider.
    pub provider: Option<String>,
    /// This state (as of now).
    pub state: Option<LifecycleState>,
}

/// The metadata half of what a release returns, copied from `record`.
pub(super) fn info(record: &CredentialRecord, field_names: Vec<String>) -> CredentialInfo {
    info_owned(
        CredentialRecord {
            id: record.id.clone(),
            name: record.name.clone(),
            scope: record.scope.clone(),
            provider: record.provider.clone(),
            handler_type: record.handler_type.clone(),
            state: record.state,
            metadata: record.metadata.clone(),
            agent_accessible: record.agent_accessible,
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: record.expires_at,
            key_id: String::new(),
            sealed: Vec::new(),
        },
        field_names,
    )
}

/// [`info`] of a record no longer needed: its strings move rather than being copied.
pub(super) fn info_owned(record: CredentialRecord, field_names: Vec<String>) -> CredentialInfo {
    let state = effective_state(&record, Timestamp::now());
    let expires_at = expires_at(&record);
    let mut metadata = record.metadata;
    let stored = metadata.remove(FIELD_NAMES);
    let field_names = if field_names.is_empty() {
        stored
            .map(|names| {
                names
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        field_names
    };
    CredentialInfo {
        id: record.id,
        name: record.name,
        scope: record.scope,
        provider: record.provider,
        handler_type: record.handler_type,
        state,
        metadata,
        agent_accessible: record.agent_accessible,
        version: record.version,
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at,
        field_names,
    }
}

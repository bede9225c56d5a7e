//! Credentials through their life: create, update, delete, get, list, reveal, and the
//! lifecycle transitions.

use super::*;
use crate::store::{OwnerMatch, ScopeMatch};

/// Is `from → to` a lifecycle transition the vault allows?
pub fn transition_allowed(from: LifecycleState, to: LifecycleState) -> bool {
    use LifecycleState::*;
    matches!(
        (from, to),
        (Filled, Valid | Expired | Invalid | Pending)
            | (Pending, Valid | Expired | Invalid)
            | (Valid, Expired | Invalid | Pending)
            | (Expired, Valid | Invalid | Pending)
    )
}

impl Vault {
    /// Creates a credential (version 1, state `filled`).
    ///
    /// The permission is checked first (a denial is audited); a scope whose ids the vault
    /// refuses ([`Scope::validate`]) is left out of the denial's audit row, so that nothing
    /// unreadable is ever written.
    pub async fn create(&self, actor: &Principal, new: NewCredential) -> Result<CredentialInfo> {
        trace::op("create")
            .actor(actor)
            .scope(&new.scope)
            .run(async move {
                let scope_ok = new.scope.validate();
                let target = match scope_ok {
                    Ok(()) => AuditTarget::scope(&new.scope),
                    Err(_) => AuditTarget::none(),
                };
                let what = format!(
                    "credential `{}` ({})",
                    printable(&new.name),
                    printable(&new.scope.to_string())
                );
                self.authorize(actor, Action::Create, Some(&new.scope), target, &what)
                    .await?;
                scope_ok?;
                validate_id("credential name", &new.name)?;
                validate_id("provider", &new.provider)?;
                if !new.handler_type.is_empty() {
                    validate_id("handler type", &new.handler_type)?;
                }
                check_fields(&new.fields)?;
                check_metadata(&new.metadata)?;
                let handler_type =
                    self.check_against_catalog(&new.provider, &new.handler_type, &new.fields)?;
                let now = Timestamp::now();
                let expires_at = new
                    .expires_at
                    .or_else(|| self.expiry_from_fields(&handler_type, &new.fields));
                let mut metadata = new.metadata;
                metadata.insert(FIELD_NAMES.into(), field_names_text(&new.fields));
                let mut record = CredentialRecord {
                    id: CredentialId::generate(),
                    name: new.name,
                    scope: new.scope,
                    provider: new.provider,
                    handler_type,
                    state: LifecycleState::Filled,
                    metadata,
                    agent_accessible: new.agent_accessible,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    expires_at,
                    key_id: String::new(),
                    sealed: Vec::new(),
                };
                let plain = encode_fields(&new.fields)?;
                self.seal_into(&mut record, &plain).await?;
                let mut event = Vault::event(
                    actor,
                    Action::Create,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("name", record.name.clone())
                .detail("provider", record.provider.clone());
                // A definition from the drop-in folder is named, and one that replaces a bundled
                // provider says so: it decides the prefix checks and where a verification goes.
                let catalog = self.catalog();
                if let Some(p) = catalog
                    .get(&record.provider)
                    .filter(|p| !p.source.starts_with("bundled:"))
                {
                    event = event.detail("provider_source", p.source.clone());
                    if catalog.overrides().any(|o| o.name == p.name) {
                        event = event.detail("override", "used");
                    }
                }
                let field_names = new.fields.keys().cloned().collect();
                self.commit_one(
                    Mutation::Put {
                        record: record.clone(),
                        precondition: Precondition::CreateOnly,
                    },
                    event,
                )
                .await?;
                Ok(info(&record, field_names))
            })
            .await
    }

    /// Updates a credential at `expected_version`, making a new version (new fields get a
    /// new data key; the blob is re-sealed for the new version either way).
    pub async fn update(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: u64,
        update: CredentialUpdate,
    ) -> Result<CredentialInfo> {
        trace::op("update")
            .actor(actor)
            .id(id)
            .run(async move {
                let mut record = self
                    .load_at(actor, Action::Update, id, expected_version)
                    .await?;
                if let Some(metadata) = &update.metadata {
                    check_metadata(metadata)?;
                }
                let previous = record.clone();
                let new_fields = match update.fields {
                    Some(fields) => {
                        check_fields(&fields)?;
                        self.check_against_catalog(
                            &record.provider,
                            &record.handler_type,
                            &fields,
                        )?;
                        if update.expires_at.is_none() {
                            if let Some(at) = self.expiry_from_fields(&record.handler_type, &fields)
                            {
                                record.expires_at = Some(at);
                            }
                        }
                        // New fields start over as `filled` — unless someone other than the owner
                        // disabled the credential: that stays until they (or another admin) lift it.
                        if !record.metadata.contains_key(DISABLED_BY) {
                            record.state = LifecycleState::Filled;
                        }
                        Some(fields)
                    }
                    None => None,
                };
                if let Some(metadata) = update.metadata {
                    let kept: Vec<(String, String)> = KEPT_METADATA
                        .into_iter()
                        .filter_map(|k| record.metadata.remove_entry(k))
                        .collect();
                    record.metadata = metadata;
                    record.metadata.extend(kept);
                }
                if let Some(fields) = &new_fields {
                    record
                        .metadata
                        .insert(FIELD_NAMES.into(), field_names_text(fields));
                }
                if let Some(flag) = update.agent_accessible {
                    record.agent_accessible = flag;
                }
                if let Some(expires_at) = update.expires_at {
                    record.expires_at = expires_at;
                }
                record.version += 1;
                record.updated_at = Timestamp::now();
                match &new_fields {
                    Some(fields) => {
                        let plain = encode_fields(fields)?;
                        self.seal_into(&mut record, &plain).await?;
                    }
                    // The same fields, bound to the new version.
                    None => self.reseal(&previous, &mut record).await?,
                }
                let event = Vault::event(
                    actor,
                    Action::Update,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("version", record.version.to_string())
                .detail("state", record.state.as_str())
                .detail(
                    "fields",
                    if new_fields.is_some() {
                        "replaced"
                    } else {
                        "kept"
                    },
                );
                self.put_over(&record, expected_version, event).await?;
                let names = new_fields
                    .map(|f| f.keys().cloned().collect())
                    .unwrap_or_default();
                Ok(info(&record, names))
            })
            .await
    }

    /// Deletes a credential (and its grants); `expected_version` guards against deleting a
    /// version the caller has not seen.
    pub async fn delete(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: Option<u64>,
    ) -> Result<()> {
        trace::op("delete")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::Delete, id).await?;
                // An OAuth credential's tokens are revoked at the provider once the delete is
                // durable (best effort, audited).
                let tokens = self.tokens_to_revoke(&record).await;
                let event = Vault::event(
                    actor,
                    Action::Delete,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("name", record.name.clone());
                self.commit_one(
                    Mutation::Delete {
                        id: record.id.clone(),
                        precondition: Precondition::IfVersion(
                            expected_version.unwrap_or(record.version),
                        ),
                    },
                    event,
                )
                .await?;
                if let Some(tokens) = tokens {
                    self.revoke_at_provider(actor, &record, &tokens).await;
                    self.emit(super::oauth::OAuthEvent::Revoked {
                        id: record.id.clone(),
                    });
                }
                Ok(())
            })
            .await
    }

    /// A credential's metadata.
    pub async fn get(&self, actor: &Principal, id: &CredentialId) -> Result<CredentialInfo> {
        trace::op("get")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::ReadMetadata, id).await?;
                Ok(info(&record, Vec::new()))
            })
            .await
    }

    /// Credentials matching `filter` that `actor` may see, in id order.
    pub async fn list(
        &self,
        actor: &Principal,
        filter: &CredentialFilter,
    ) -> Result<Vec<CredentialInfo>> {
        trace::op("list")
            .actor(actor)
            .run(async move {
                actor.validate()?;
                if let Some(scope) = &filter.scope {
                    scope.validate()?;
                }
                // Ask the store only for the scopes the policy lets the actor see; the rows that
                // come back are still checked one by one (a pattern may be wider than the policy).
                let scopes = visible_scopes(actor);
                if scopes.is_empty() {
                    return Ok(Vec::new());
                }
                let store_filter = ListFilter {
                    scope: filter.scope.clone(),
                    scope_kind: filter.scope_kind,
                    provider: filter.provider.clone(),
                    scopes: Some(scopes),
                    ..ListFilter::default()
                };
                let records = self.inner.store.list(&store_filter).await?;
                Ok(records
                    .iter()
                    .filter(|r| {
                        policy::allows(
                            actor.role(),
                            Action::ReadMetadata,
                            Relation::of(actor, Some(&r.scope)),
                        )
                    })
                    .map(|r| info(r, Vec::new()))
                    .filter(|i| filter.state.is_none_or(|s| s == i.state))
                    .collect())
            })
            .await
    }

    /// Opens a record's fields and audits the release before returning them (see
    /// [`Vault::release`]).
    pub(super) async fn release_revealed(
        &self,
        actor: &Principal,
        action: Action,
        record: Arc<CredentialRecord>,
        detail: Option<(&str, &str)>,
        stamp: ReadStamp,
    ) -> Result<RevealedCredential> {
        // A reveal's span has the id from its call and the scope from its load.
        if action != Action::Reveal {
            trace::found(&record);
        }
        let mut event = Vault::event(
            actor,
            action,
            AuditTarget::credential(&record.id, &record.scope),
        );
        if let Some((k, v)) = detail {
            event = event.detail(k, v);
        }
        let fields = self.release_one(actor, &record, event, stamp).await?;
        let names = fields.keys().cloned().collect();
        // The record read for this call alone (the usual case): its strings move into
        // the info instead of being copied.
        let info = match Arc::try_unwrap(record) {
            Ok(record) => info_owned(record, names),
            Err(shared) => info(&shared, names),
        };
        Ok(RevealedCredential { info, fields })
    }

    /// A credential's secret values, for a person allowed to read them. Audited.
    pub async fn reveal(&self, actor: &Principal, id: &CredentialId) -> Result<RevealedCredential> {
        trace::op("reveal")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::Reveal, id).await?;
                self.release_revealed(
                    actor,
                    Action::Reveal,
                    Arc::new(record),
                    None,
                    ReadStamp::UNCHECKED,
                )
                .await
            })
            .await
    }

    /// Moves a credential through its lifecycle (see [`transition_allowed`]). Audited.
    pub async fn set_state(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: u64,
        to: LifecycleState,
        reason: &str,
    ) -> Result<CredentialInfo> {
        trace::op("set_state").actor(actor).id(id).run(async move {
            let mut record = self
                .load_at(actor, Action::SetState, id, expected_version)
                .await?;
            let from = effective_state(&record, Timestamp::now());
            let owner = is_owner(actor, &record.scope);
            let disabled_by = record.metadata.get(DISABLED_BY).cloned();
            // Lifting a disable that someone other than the owner set: only a non-owner with
            // the right to set the state may, back to `filled`.
            let lift = disabled_by.is_some() && from == LifecycleState::Invalid;
            if lift && owner {
                let event = Vault::event(
                    actor,
                    Action::SetState,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .outcome(Outcome::Denied)
                .detail("reason", "disabled by an admin")
                .detail("disabled_by", disabled_by.clone().unwrap_or_default());
                self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                    .await?;
                return Err(Error::PermissionDenied {
                    actor: actor.to_string(),
                    action: Action::SetState.as_str().into(),
                    target: format!(
                        "{}: it was disabled by {}; only an admin may lift that (set_state to filled)",
                        record.describe(),
                        disabled_by.unwrap_or_default()
                    ),
                });
            }
            let allowed = if lift {
                to == LifecycleState::Filled
            } else {
                transition_allowed(from, to)
            };
            if !allowed {
                return Err(Error::invalid(
                    "state",
                    format!("{} cannot go from {from} to {to}", record.describe()),
                ));
            }
            let previous = record.clone();
            if lift {
                record.metadata.remove(DISABLED_BY);
            } else if to == LifecycleState::Invalid && !owner {
                record
                    .metadata
                    .insert(DISABLED_BY.into(), actor.to_string());
            }
            record.state = to;
            record.version += 1;
            record.updated_at = Timestamp::now();
            // The blob is bound to the version: seal it again for the new one.
            self.reseal(&previous, &mut record).await?;
            let event = Vault::event(
                actor,
                Action::SetState,
                AuditTarget::credential(&record.id, &record.scope),
            )
            .detail("from", from.as_str())
            .detail("to", to.as_str())
            .detail("reason", reason)
            .detail("version", record.version.to_string());
            self.put_over(&record, expected_version, event)
            .await?;
            Ok(info(&record, Vec::new()))
        })
        .await
    }
}

/// The scope patterns covering every credential `actor` may see the metadata of, from the
/// policy table: one pattern per relation the policy allows for reading metadata.
fn visible_scopes(actor: &Principal) -> Vec<ScopeMatch> {
    use crate::model::ScopeKind as K;
    let exactly = |kind: K, owner: String| ScopeMatch {
        kind,
        owner: OwnerMatch::Exactly(owner),
    };
    let (app, user, agent) = (actor.app(), actor.user(), actor.agent());
    Relation::ALL
        .into_iter()
        .filter(|r| policy::allows(actor.role(), Action::ReadMetadata, *r))
        .filter_map(|relation| match relation {
            Relation::SystemWide => Some(ScopeMatch::kind(K::SystemWide)),
            Relation::OwnAppShared => app.map(|a| exactly(K::PerAppShared, a.to_string())),
            Relation::OtherAppShared => Some(ScopeMatch::kind(K::PerAppShared)),
            Relation::OwnUser => user.map(|u| exactly(K::PerUser, u.to_string())),
            Relation::OtherUser => Some(ScopeMatch::kind(K::PerUser)),
            Relation::OwnUserOwnApp => {
                Some(exactly(K::PerAppPerUser, format!("{}/{}", app?, user?)))
            }
            Relation::OwnUserOtherApp => user.map(ScopeMatch::user_in_any_app),
            Relation::OtherUserOwnApp => app.map(ScopeMatch::app_for_any_user),
            Relation::OtherUserOtherApp => Some(ScopeMatch::kind(K::PerAppPerUser)),
            Relation::Agent => Some(ScopeMatch::kind(K::PerAgent)),
            Relation::OwnAgent => agent.map(|a| exactly(K::PerAgent, a.to_string())),
            Relation::NoScope => None,
        })
        .collect()
}

/// The names of `fields`, as [`FIELD_NAMES`] keeps them.
pub(super) fn field_names_text(fields: &BTreeMap<String, SecretString>) -> String {
    fields
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

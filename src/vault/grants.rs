//! Grants of per-user credentials to apps: list, add, revoke (kept as history or deleted).

use super::*;

impl Vault {
    /// The grant rows of a per-user credential (active and revoked).
    pub async fn grants(&self, actor: &Principal, id: &CredentialId) -> Result<Vec<Grant>> {
        trace::op("grants")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::GrantList, id).await?;
                self.inner.store.grants(&record.id).await
            })
            .await
    }

    pub(super) fn per_user_only(record: &CredentialRecord) -> Result<()> {
        match record.scope {
            Scope::PerUser { .. } => Ok(()),
            _ => Err(Error::invalid(
                "credential",
                format!(
                    "{} is not per_user; only per_user credentials take grants",
                    record.describe()
                ),
            )),
        }
    }

    /// Grants `app` the use of a per-user credential. Audited.
    pub async fn grant_add(
        &self,
        actor: &Principal,
        id: &CredentialId,
        app: &str,
    ) -> Result<Grant> {
        trace::op("grant_add")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::GrantAdd, id).await?;
                validate_owner_id("app id", app)?;
                Vault::per_user_only(&record)?;
                let grant = Grant {
                    credential_id: record.id.clone(),
                    app: app.to_string(),
                    granted_by: actor.to_string(),
                    granted_at: Timestamp::now(),
                    revoked_at: None,
                    revoked_by: None,
                };
                let event = Vault::event(
                    actor,
                    Action::GrantAdd,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("app", app);
                self.commit_one(
                    Mutation::PutGrant {
                        grant: grant.clone(),
                    },
                    event,
                )
                .await?;
                Ok(grant)
            })
            .await
    }

    /// Revokes `app`'s grant: kept as history, or deleted with `hard`. Audited.
    pub async fn grant_revoke(
        &self,
        actor: &Principal,
        id: &CredentialId,
        app: &str,
        hard: bool,
    ) -> Result<()> {
        trace::op("grant_revoke")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::GrantRevoke, id).await?;
                Vault::per_user_only(&record)?;
                let grants = self.inner.store.grants(&record.id).await?;
                let Some(mut grant) = grants.into_iter().find(|g| g.app == app) else {
                    return Err(Error::NotFound {
                        what: format!("grant of {} to app `{app}`", record.describe()),
                        hint: None,
                    });
                };
                let event = Vault::event(
                    actor,
                    Action::GrantRevoke,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("app", app)
                .detail("hard", hard.to_string());
                let mutation = if hard {
                    Mutation::DeleteGrant {
                        credential_id: record.id.clone(),
                        app: app.to_string(),
                    }
                } else if !grant.is_active() {
                    // Already revoked: the first revocation's who and when stand; the repeat is
                    // recorded and changes nothing.
                    let event = event.detail(
                        "already_revoked_by",
                        grant.revoked_by.clone().unwrap_or_default(),
                    );
                    self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                        .await?;
                    return Ok(());
                } else {
                    grant.revoked_at = Some(Timestamp::now());
                    grant.revoked_by = Some(actor.to_string());
                    Mutation::PutGrant { grant }
                };
                self.commit_one(mutation, event).await?;
                Ok(())
            })
            .await
    }
}

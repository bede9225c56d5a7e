//! Rotation of provisioned GitLab tokens nearing expiry, each under a lease.

use super::*;

impl Vault {
    /// Rotates every provisioned GitLab token that expires within [`ROTATE_WINDOW`] of
    /// `now`: each under a lease (`Lease::key("gitlab.rotate", credential id)`), so that of
    /// racing rotations exactly one calls GitLab; the new token is stored in the batch that
    /// releases the lease, with a `credential.refresh` row (by service `gitlab-rotation`).
    pub async fn rotate_provisioned_tokens(&self, now: Timestamp) -> Result<RotationReport> {
        trace::op("rotate_provisioned_tokens")
            .actor(&rotation_service())
            .run(async move {
                let mut report = RotationReport::default();
                let horizon = now.saturating_add(ROTATE_WINDOW);
                let mut after = None;
                loop {
                    let page = self
                        .inner
                        .store
                        .list(&ListFilter {
                            name: Some(GITLAB_TOKEN.to_string()),
                            after_id: after.clone(),
                            limit: Some(200),
                            ..ListFilter::default()
                        })
                        .await?;
                    let Some(last) = page.last() else {
                        break;
                    };
                    after = Some(last.id.clone());
                    for record in &page {
                        if !record.metadata.contains_key(META_PROVIDER)
                            || record.expires_at.is_none_or(|at| at > horizon)
                        {
                            continue;
                        }
                        let outcome = match self.rotate_one(&record.id, now).await {
                            Ok(o) => o,
                            Err(e) => RotationOutcome::Failed(e.to_string()),
                        };
                        report.tokens.push((record.id.clone(), outcome));
                    }
                    if page.len() < 200 {
                        break;
                    }
                }
                Ok(report)
            })
            .await
    }

    pub(super) async fn rotate_one(
        &self,
        id: &CredentialId,
        now: Timestamp,
    ) -> Result<RotationOutcome> {
        let store = &self.inner.store;
        let key = Lease::key(ROTATE_LEASE_OWNER, id.as_str())?;
        let holder = format!("rotate-{}", CredentialId::generate());
        let Some(lease) = self.claim_lease(&key, &holder, ROTATE_LEASE_TTL).await? else {
            return Ok(RotationOutcome::Busy);
        };
        let release = |lease: &Lease| Batch {
            mutations: vec![lease.release()],
            events: vec![],
        };
        let result = self.rotate_under_lease(id, now, &lease).await;
        match &result {
            Ok(RotationOutcome::Rotated { .. }) => {}
            Ok(_) => {
                let _ = self.commit(release(&lease), ReadStamp::UNCHECKED).await;
            }
            Err(e) => {
                let _ = self.commit(release(&lease), ReadStamp::UNCHECKED).await;
                if let Ok(Some(record)) = store.get(id).await {
                    self.commit_quietly(
                        Vault::event(
                            &rotation_service(),
                            Action::Refresh,
                            AuditTarget::credential(&record.id, &record.scope),
                        )
                        .outcome(Outcome::Failure)
                        .detail("integration", "gitlab")
                        .detail("error", format!("{:?}", e.kind())),
                    )
                    .await;
                }
            }
        }
        result
    }

    pub(super) async fn rotate_under_lease(
        &self,
        id: &CredentialId,
        now: Timestamp,
        lease: &Lease,
    ) -> Result<RotationOutcome> {
        let Some(record) = self.inner.store.get(id).await? else {
            return Ok(RotationOutcome::NotDue);
        };
        if record
            .expires_at
            .is_none_or(|at| at > now.saturating_add(ROTATE_WINDOW))
        {
            return Ok(RotationOutcome::NotDue);
        }
        let provider_name = record
            .metadata
            .get(META_PROVIDER)
            .cloned()
            .unwrap_or_default();
        // Only the vault's own provisioned tokens are rotated: an agent's `gitlab:token`
        // whose agent has a provisioned GitLab integration of this provider and this
        // identity. Metadata alone proves nothing (a credential anyone creates could name
        // someone else's GitLab token).
        let Scope::PerAgent { agent } = &record.scope else {
            return Ok(RotationOutcome::NotDue);
        };
        let owned = match self
            .inner
            .store
            .record(&integration_key(agent, IntegrationProvider::Gitlab)?)
            .await?
        {
            Some(found) => Integration::from_record(&found).is_ok_and(|i| {
                i.auth_type == AuthType::Provisioned
                    && i.external_ids.get(META_PROVIDER) == Some(&provider_name)
                    && i.external_ids.get("user_id") == record.metadata.get(META_USER_ID)
            }),
            None => false,
        };
        if !owned {
            return Ok(RotationOutcome::NotDue);
        }
        let (cfg, admin) = self.credential_provider_of(&provider_name).await?;
        let token_id = parse_id(record.metadata.get(META_TOKEN_ID));
        let user_id = parse_id(record.metadata.get(META_USER_ID));
        let token = match (&cfg.mode, token_id, user_id) {
            (Mode::ServiceAccount { .. }, Some(token_id), Some(user_id)) => {
                TokenRef::ServiceAccount { user_id, token_id }
            }
            (Mode::ProjectAccessToken { .. }, Some(token_id), _) => {
                TokenRef::ProjectAccessToken { token_id }
            }
            _ => {
                return Err(Error::corrupt(
                    record.describe(),
                    "it names no GitLab token id to rotate",
                ))
            }
        };
        let http = self.http_for("rotating a GitLab token")?;
        let expires = cfg.expiry_date(date_of(now)?)?;
        let issued = glp::rotate_token(http.as_ref(), &cfg, &admin, &token, expires).await?;
        self.minted(&issued.token);
        let at = Timestamp::now();
        let fields = token_fields("token", issued.token.clone());
        let mut next = record.clone();
        next.metadata
            .insert(META_TOKEN_ID.to_string(), issued.id.to_string());
        next.state = LifecycleState::Valid;
        next.expires_at = Some(timestamp_of(issued.expires_at));
        next.version = record.version + 1;
        next.updated_at = at;
        let plain = encode_fields(&fields)?;
        self.seal_into(&mut next, &plain).await?;
        let version = next.version;
        let expires_at = timestamp_of(issued.expires_at);
        let event = Vault::event(
            &rotation_service(),
            Action::Refresh,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("integration", "gitlab")
        .detail("trigger", "rotation")
        .detail("version", version.to_string())
        .detail("expires_at", glp::format_date(issued.expires_at));
        self.commit(
            Batch {
                mutations: vec![
                    Mutation::Put {
                        record: next,
                        precondition: Precondition::IfVersion(record.version),
                    },
                    lease.release(),
                ],
                events: vec![event],
            },
            ReadStamp::UNCHECKED,
        )
        .await?;
        Ok(RotationOutcome::Rotated {
            version,
            expires_at,
        })
    }
}

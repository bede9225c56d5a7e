//! Unlinking a provisioned identity: deprovisioning at GitLab (best effort, reported), then
//! the local state removed anyway.

use super::*;

impl Vault {
    /// [`Vault::unlink`], returning what the remote deprovisioning of a provisioned GitLab
    /// identity did: the token is revoked and the service account deleted (best effort),
    /// then the integration and its secret are removed in one batch either way; a failed
    /// step is in the report and the `integration.unlink` row (`deprovision=failed`).
    pub async fn unlink_provisioned(
        &self,
        actor: &Principal,
        agent: &str,
        provider: IntegrationProvider,
    ) -> Result<UnlinkReport> {
        trace::op("unlink_provisioned")
            .actor(actor)
            .run(async move {
                let (integration, deprovision) =
                    self.unlink_reported(actor, agent, provider).await?;
                Ok(UnlinkReport {
                    integration,
                    deprovision,
                })
            })
            .await
    }

    /// The unlink hook: deprovisions a provisioned GitLab integration (best effort) and
    /// returns the report, or `None` for any other integration.
    pub(in crate::vault::integrations) async fn deprovision_for_unlink(
        &self,
        scope: &Scope,
        integration: &Integration,
    ) -> Option<DeprovisionReport> {
        if integration.provider != IntegrationProvider::Gitlab
            || integration.auth_type != AuthType::Provisioned
        {
            return None;
        }
        let name = integration
            .external_ids
            .get(META_PROVIDER)
            .cloned()
            .unwrap_or_default();
        let mut report = DeprovisionReport {
            provider: name.clone(),
            steps: Vec::new(),
        };
        let (cfg, admin) = match self.credential_provider_of(&name).await {
            Ok(found) => found,
            Err(e) => {
                report.step("open the credential provider".into(), Err(e));
                return Some(report);
            }
        };
        let http = match self.http_for("deprovisioning a GitLab identity") {
            Ok(http) => http,
            Err(e) => {
                report.step("reach GitLab".into(), Err(e));
                return Some(report);
            }
        };
        // The current token id is the secret's (rotation changes it).
        let secret = self.named(scope, GITLAB_TOKEN).await.ok().and_then(|r| r.0);
        let meta = |k: &str| secret.as_ref().and_then(|s| s.metadata.get(k).cloned());
        let token_id = parse_id(meta(META_TOKEN_ID).as_ref())
            .or_else(|| parse_id(integration.external_ids.get("token_id")));
        let user_id = parse_id(meta(META_USER_ID).as_ref())
            .or_else(|| parse_id(integration.external_ids.get("user_id")));
        match (&cfg.mode, token_id, user_id) {
            (Mode::ServiceAccount { .. }, token_id, Some(user_id)) => {
                if let Some(token_id) = token_id {
                    let outcome = glp::revoke_token(
                        http.as_ref(),
                        &cfg,
                        &admin,
                        &TokenRef::ServiceAccount { user_id, token_id },
                    )
                    .await;
                    report.step(format!("revoke token {token_id}"), outcome);
                }
                let outcome =
                    glp::delete_service_account(http.as_ref(), &cfg, &admin, user_id).await;
                report.step(format!("delete service account {user_id}"), outcome);
            }
            (Mode::ProjectAccessToken { .. }, token_id, _) => {
                if let Some(token_id) = token_id {
                    let outcome = glp::revoke_token(
                        http.as_ref(),
                        &cfg,
                        &admin,
                        &TokenRef::ProjectAccessToken { token_id },
                    )
                    .await;
                    report.step(format!("revoke token {token_id}"), outcome);
                }
                // A token of this agent's name that the vault does not know (a rotation
                // whose answer was never stored) is revoked too: found by its name.
                if let Ok(name) = glp::token_name(&integration.agent) {
                    match glp::find_project_token(http.as_ref(), &cfg, &admin, &name).await {
                        Ok(Some(live)) if Some(live.id) != token_id => {
                            let outcome = glp::revoke_token(
                                http.as_ref(),
                                &cfg,
                                &admin,
                                &TokenRef::ProjectAccessToken { token_id: live.id },
                            )
                            .await;
                            report.step(format!("revoke token {}", live.id), outcome);
                        }
                        Ok(_) => {}
                        Err(e) => report.step("look for the agent's tokens".into(), Err(e)),
                    }
                }
            }
            _ => report.step(
                "find the identity's ids".into(),
                Err(Error::corrupt(
                    describe(IntegrationProvider::Gitlab, &integration.agent),
                    "it names no GitLab user or token id",
                )),
            ),
        }
        if !report.complete() {
            tracing::warn!(
                agent = %printable(&integration.agent),
                "GitLab deprovisioning failed; the local state is removed anyway"
            );
        }
        Some(report)
    }
}

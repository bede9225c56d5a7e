//! Provisioned links: the intent record first, then the remote calls, then one batch; and
//! recovery of what a crashed link created.

use super::*;

impl Vault {
    /// Links a GitLab identity minted by credential provider `provider_name` to `agent`
    /// (system admins): a leftover intent of a crashed run for this agent is cleaned up
    /// first; then an intent record (kind `provisioning`, owner `agent:<id>`, key `gitlab`)
    /// is written; then the remote calls (a service account and its token, or a project
    /// access token); then one batch stores the `gitlab:token` secret (expiring with the
    /// token), the integration record (`auth_type` provisioned), deletes the intent and
    /// writes the audit rows. A failure after a remote create undoes it (best effort); the
    /// intent is kept only when that cleanup failed. An agent with a GitLab integration is
    /// refused with `AlreadyExists`.
    pub async fn link_gitlab_provisioned(
        &self,
        actor: &Principal,
        agent: &str,
        provider_name: &str,
    ) -> Result<Integration> {
        trace::op("link_gitlab_provisioned")
            .actor(actor)
            .run(async move {
                let provider = IntegrationProvider::Gitlab;
                let scope = self
                    .authorize_integration(actor, Action::IntegrationLink, agent, provider)
                    .await?;
                let scope_ref = &scope;
                let refuse = |e: Error| async move {
                    self.link_failed(actor, scope_ref, provider, &e).await;
                    Err(e)
                };
                if self
                    .inner
                    .store
                    .record(&integration_key(agent, provider)?)
                    .await?
                    .is_some()
                {
                    return refuse(already_linked(provider, agent)).await;
                }
                // A crashed run's leftovers for this agent first.
                if let Some(record) = self.inner.store.record(&intent_key(agent)?).await? {
                    if !record.is_expired_at(Timestamp::now()) {
                        return refuse(Error::AlreadyExists {
                            what: format!(
                                "a GitLab provisioning of agent `{}` (under way; or run \
                             Vault::finish_provisioning once it is {}s old)",
                                printable(agent),
                                PROVISIONING_TTL.as_secs()
                            ),
                        })
                        .await;
                    }
                    let recovered = self.recover_intent(actor, &scope, agent, record).await?;
                    if !recovered.resolved {
                        return Err(Error::transport(
                            "gitlab",
                            format!(
                                "what a crashed provisioning of agent `{}` created could not be \
                             cleaned up yet; try again later",
                                printable(agent)
                            ),
                        ));
                    }
                }
                let (cfg, admin) = match self.credential_provider_of(provider_name).await {
                    Ok(found) => found,
                    Err(e) => return refuse(e).await,
                };
                let http = self.http_for("provisioning a GitLab identity")?;
                let token_name = glp::token_name(agent)?;
                let username = match cfg.mode {
                    Mode::ServiceAccount { .. } => Some(cfg.service_account_username(agent)?),
                    Mode::ProjectAccessToken { .. } => None,
                };
                let now = Timestamp::now();
                let intent = Intent {
                    provider: provider_name.to_string(),
                    mode: mode_name(&cfg).to_string(),
                    username: username.clone(),
                    token_name: token_name.clone(),
                    step: "started".into(),
                };
                let mut intent_record = Record::new(
                    intent_key(agent)?,
                    serde_json::to_value(&intent)
                        .map_err(|e| Error::invalid("intent", e.to_string()))?,
                    now,
                );
                intent_record.expires_at = Some(now.saturating_add(PROVISIONING_TTL));
                if let Err(e) = self
                    .commit(
                        Batch {
                            mutations: vec![Mutation::create_record(intent_record.clone())],
                            events: vec![],
                        },
                        ReadStamp::UNCHECKED,
                    )
                    .await
                {
                    return match e {
                        Error::AlreadyExists { .. } => {
                            refuse(Error::AlreadyExists {
                                what: format!(
                                    "a GitLab provisioning of agent `{}` (under way)",
                                    printable(agent)
                                ),
                            })
                            .await
                        }
                        e => Err(e),
                    };
                }
                // The remote calls.
                let expires = cfg.expiry_date(date_of(now)?)?;
                let minted: Result<IssuedToken> = match &cfg.mode {
                    Mode::ServiceAccount { scopes, .. } => {
                        match glp::create_service_account(http.as_ref(), &cfg, &admin, agent).await
                        {
                            Ok(account) => glp::create_service_account_token(
                                http.as_ref(),
                                &cfg,
                                &admin,
                                account.id,
                                &token_name,
                                scopes,
                                expires,
                            )
                            .await
                            .map(|mut t| {
                                t.user_id = Some(account.id);
                                t
                            }),
                            Err(e) => Err(e),
                        }
                    }
                    Mode::ProjectAccessToken {
                        scopes,
                        access_level,
                        ..
                    } => {
                        glp::create_project_access_token(
                            http.as_ref(),
                            &cfg,
                            &admin,
                            &token_name,
                            scopes,
                            *access_level,
                            expires,
                        )
                        .await
                    }
                };
                let outcome = match minted {
                    Ok(token) => {
                        self.minted(&token.token);
                        self.commit_provisioned(
                            actor,
                            agent,
                            &scope,
                            provider_name,
                            &cfg,
                            username.as_deref(),
                            token,
                            &intent_record,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(integration) => Ok(integration),
                    Err(e) => {
                        // Undo whatever the remote calls created (found by the deterministic names),
                        // then drop the intent unless the cleanup failed.
                        let cleanup = self.cleanup_remote(&cfg, &admin, &intent).await;
                        let done = cleanup.complete();
                        if done {
                            let _ = self
                                .commit(
                                    Batch {
                                        mutations: vec![Mutation::delete_record(&intent_record)],
                                        events: vec![],
                                    },
                                    ReadStamp::UNCHECKED,
                                )
                                .await;
                        }
                        let e = match e {
                            Error::AlreadyExists { .. }
                                if self
                                    .inner
                                    .store
                                    .record(&integration_key(agent, provider)?)
                                    .await?
                                    .is_some() =>
                            {
                                already_linked(provider, agent)
                            }
                            e => e,
                        };
                        let event = Vault::event(
                            actor,
                            Action::IntegrationLink,
                            AuditTarget::scope(&scope),
                        )
                        .outcome(Outcome::Failure)
                        .detail("provider", provider.as_str())
                        .detail("auth_type", AuthType::Provisioned.as_str())
                        .detail("credential_provider", provider_name.to_string())
                        .detail("reason", reason_of(&e))
                        .detail("cleanup", if done { "done" } else { "failed" });
                        self.commit_quietly(event).await;
                        Err(e)
                    }
                }
            })
            .await
    }

    /// The batch of a provisioned link: the secret, the integration, the intent's delete,
    /// the audit rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_provisioned(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        provider_name: &str,
        cfg: &GitlabProviderConfig,
        username: Option<&str>,
        token: IssuedToken,
        intent: &Record,
    ) -> Result<Integration> {
        let provider = IntegrationProvider::Gitlab;
        let now = Timestamp::now();
        let user_id = token.user_id.map(|u| u.to_string()).unwrap_or_default();
        let mut external_ids = BTreeMap::new();
        external_ids.insert("user_id".to_string(), user_id.clone());
        external_ids.insert("token_id".to_string(), token.id.to_string());
        external_ids.insert(META_PROVIDER.to_string(), provider_name.to_string());
        external_ids.insert("mode".to_string(), mode_name(cfg).to_string());
        let integration = Integration {
            agent: agent.to_string(),
            provider,
            auth_type: AuthType::Provisioned,
            username: username
                .map(str::to_string)
                .unwrap_or_else(|| token.name.clone()),
            external_ids,
            linked_at: now,
            linked_by: actor.to_string(),
        };
        let fields = token_fields("token", token.token.clone());
        let handler_type = self.check_against_catalog("gitlab", "", &fields)?;
        let mut metadata = BTreeMap::new();
        metadata.insert(
            FIELD_NAMES.to_string(),
            super::super::credentials::field_names_text(&fields),
        );
        metadata.insert("integration".to_string(), provider.as_str().to_string());
        metadata.insert(META_PROVIDER.to_string(), provider_name.to_string());
        metadata.insert(META_MODE.to_string(), mode_name(cfg).to_string());
        metadata.insert(META_USER_ID.to_string(), user_id);
        metadata.insert(META_TOKEN_ID.to_string(), token.id.to_string());
        let mut record = CredentialRecord {
            id: CredentialId::generate(),
            name: GITLAB_TOKEN.to_string(),
            scope: scope.clone(),
            provider: "gitlab".to_string(),
            handler_type,
            state: LifecycleState::Valid,
            metadata,
            agent_accessible: false,
            version: 1,
            created_at: now,
            updated_at: now,
            expires_at: Some(timestamp_of(token.expires_at)),
            key_id: String::new(),
            sealed: Vec::new(),
        };
        let plain = encode_fields(&fields)?;
        self.seal_into(&mut record, &plain).await?;
        let events = vec![
            Vault::event(
                actor,
                Action::Create,
                AuditTarget::credential(&record.id, &record.scope),
            )
            .detail("name", record.name.clone())
            .detail("provider", record.provider.clone())
            .detail("integration", provider.as_str()),
            Vault::event(actor, Action::IntegrationLink, AuditTarget::scope(scope))
                .detail("provider", provider.as_str())
                .detail("auth_type", AuthType::Provisioned.as_str())
                .detail("username", printable(&integration.username))
                .detail("credential_provider", provider_name.to_string())
                .detail("mode", mode_name(cfg)),
        ];
        let mutations = vec![
            Mutation::Put {
                record,
                precondition: Precondition::CreateOnly,
            },
            Mutation::create_record(Record::new(
                integration_key(agent, provider)?,
                integration.to_body()?,
                now,
            )),
            Mutation::delete_record(intent),
        ];
        self.commit(Batch { mutations, events }, ReadStamp::UNCHECKED)
            .await?;
        Ok(integration)
    }

    /// Removes what a provisioning described by `intent` may have created, found by its
    /// deterministic names: the service account (deleting it ends its tokens), or every
    /// active project access token of that name.
    pub(super) async fn cleanup_remote(
        &self,
        cfg: &GitlabProviderConfig,
        admin: &SecretString,
        intent: &Intent,
    ) -> DeprovisionReport {
        let mut report = DeprovisionReport {
            provider: intent.provider.clone(),
            steps: Vec::new(),
        };
        let http = match self.http_for("cleaning up a GitLab provisioning") {
            Ok(http) => http,
            Err(e) => {
                report.step("reach GitLab".into(), Err(e));
                return report;
            }
        };
        match &cfg.mode {
            Mode::ServiceAccount { .. } => {
                let username = match &intent.username {
                    Some(u) => u.clone(),
                    None => return report,
                };
                match glp::find_service_account(http.as_ref(), cfg, admin, &username).await {
                    Ok(Some(account)) => {
                        let outcome =
                            glp::delete_service_account(http.as_ref(), cfg, admin, account.id)
                                .await;
                        report.step(format!("delete service account {}", account.id), outcome);
                    }
                    Ok(None) => {}
                    Err(e) => report.step(format!("find service account {username}"), Err(e)),
                }
            }
            Mode::ProjectAccessToken { .. } => {
                for _ in 0..8 {
                    match glp::find_project_token(http.as_ref(), cfg, admin, &intent.token_name)
                        .await
                    {
                        Ok(Some(token)) => {
                            let outcome = glp::revoke_token(
                                http.as_ref(),
                                cfg,
                                admin,
                                &TokenRef::ProjectAccessToken { token_id: token.id },
                            )
                            .await;
                            let failed = outcome.is_err();
                            report.step(format!("revoke token {}", token.id), outcome);
                            if failed {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            report.step("find project access token".into(), Err(e));
                            break;
                        }
                    }
                }
            }
        }
        report
    }

    /// Cleans up one leftover intent (a crashed run's) and deletes it when that worked.
    pub(super) async fn recover_intent(
        &self,
        actor: &Principal,
        scope: &Scope,
        agent: &str,
        record: Record,
    ) -> Result<RecoveredIntent> {
        let intent: Intent = serde_json::from_value(record.body.clone()).map_err(|e| {
            Error::corrupt(record.describe(), format!("not a provisioning intent: {e}"))
        })?;
        let cleanup = match self.credential_provider_of(&intent.provider).await {
            Ok((cfg, admin)) => self.cleanup_remote(&cfg, &admin, &intent).await,
            Err(e) => {
                let mut r = DeprovisionReport {
                    provider: intent.provider.clone(),
                    steps: Vec::new(),
                };
                r.step("open the credential provider".into(), Err(e));
                r
            }
        };
        let resolved = cleanup.complete();
        let event = Vault::event(actor, Action::IntegrationUnlink, AuditTarget::scope(scope))
            .detail("provider", IntegrationProvider::Gitlab.as_str())
            .detail("credential_provider", intent.provider.clone())
            .detail("reason", "recovery")
            .detail("step", printable(&intent.step))
            .detail("cleanup", if resolved { "done" } else { "failed" });
        if resolved {
            self.commit(
                Batch {
                    mutations: vec![Mutation::delete_record(&record)],
                    events: vec![event],
                },
                ReadStamp::UNCHECKED,
            )
            .await?;
        } else {
            self.commit_quietly(event.outcome(Outcome::Failure)).await;
        }
        Ok(RecoveredIntent {
            agent: agent.to_string(),
            cleanup,
            resolved,
        })
    }

    /// Cleans up after crashed provisioned links (system admins): for each intent older
    /// than [`PROVISIONING_TTL`], finds what the crashed run created at GitLab (the
    /// service account by its deterministic username, or the project access token by its
    /// name) and removes it — a token's value cannot be recovered, so the link is to be run
    /// again — then deletes the intent (kept when the cleanup failed). Younger intents are
    /// links under way, left alone. Also run by [`Vault::link_gitlab_provisioned`] for its
    /// agent.
    pub async fn finish_provisioning(&self, actor: &Principal) -> Result<ProvisioningReport> {
        trace::op("finish_provisioning")
            .actor(actor)
            .run(async move {
                self.authorize(
                    actor,
                    Action::ProviderList,
                    None,
                    AuditTarget::none(),
                    "the leftover GitLab provisionings",
                )
                .await?;
                let mut report = ProvisioningReport::default();
                let now = Timestamp::now();
                for record in self
                    .inner
                    .store
                    .records(&RecordFilter::kind(PROVISIONING_KIND))
                    .await?
                {
                    let Some(agent) = record.owner.strip_prefix("agent:").map(str::to_string)
                    else {
                        continue;
                    };
                    if !record.is_expired_at(now) {
                        report.in_progress.push(agent);
                        continue;
                    }
                    let scope = Scope::PerAgent {
                        agent: agent.clone(),
                    };
                    if scope.validate().is_err() {
                        continue;
                    }
                    report
                        .recovered
                        .push(self.recover_intent(actor, &scope, &agent, record).await?);
                }
                Ok(report)
            })
            .await
    }
}

//! The credentials path of per-agent integrations: [`Vault::credentials_for`].

use super::*;

impl Vault {
    /// The credentials path: `agent`'s credential for its `provider` integration — for a
    /// token integration the stored token (for Telegram the bot token and the allowed
    /// users). Callable by the agent itself (`Principal::Agent` with that id) and by system
    /// admins; refused (and audited) for anyone else, another agent included. Every call is
    /// audited (`integration.credentials`), and the token is handed back only once its row
    /// is durable. Reads the integration afresh each time, so an unlink takes effect at the
    /// next call (`NotFound`).
    pub async fn credentials_for(
        &self,
        actor: &Principal,
        agent: &str,
        provider: IntegrationProvider,
    ) -> Result<AgentCredentials> {
        trace::op("credentials_for")
            .actor(actor)
            .run(async move {
                let scope = self
                    .authorize_integration(actor, Action::IntegrationCredentials, agent, provider)
                    .await?;
                let mut attempts = 0;
                loop {
                    match self.credentials_once(actor, agent, &scope, provider).await {
                        Err(e) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                        other => return other,
                    }
                }
            })
            .await
    }

    async fn credentials_once(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        provider: IntegrationProvider,
    ) -> Result<AgentCredentials> {
        let failed = |reason: &'static str| {
            Vault::event(
                actor,
                Action::IntegrationCredentials,
                AuditTarget::scope(scope),
            )
            .outcome(Outcome::Failure)
            .detail("provider", provider.as_str())
            .detail("reason", reason)
        };
        // A GitHub App token this instance holds is handed out without reading the
        // integration record: the key it was minted for still being there (same id and
        // version) is the proof the integration is (unlink deletes both in one batch).
        if provider == IntegrationProvider::Github {
            if let Some(done) = self.app_credentials_cached(actor, agent, scope).await? {
                return Ok(done);
            }
        }
        let key = integration_key(agent, provider)?;
        let Some(record) = self.inner.store.record(&key).await? else {
            self.commit(
                Batch::events(vec![failed("not_linked")]),
                ReadStamp::UNCHECKED,
            )
            .await?;
            return Err(Error::NotFound {
                what: describe(provider, agent),
                hint: Some("a system admin links one (Vault::link_*)".into()),
            });
        };
        let integration = Integration::from_record(&record)?;
        let names: &[&str] = match (provider, integration.auth_type) {
            (_, AuthType::App) => {
                return self.app_credentials(actor, agent, scope, integration).await;
            }
            (IntegrationProvider::Github, _) => &[GITHUB_TOKEN],
            (IntegrationProvider::Gitlab, _) => &[GITLAB_TOKEN],
            (IntegrationProvider::Telegram, _) => &[TELEGRAM_BOT_TOKEN, TELEGRAM_ALLOWED_USERS],
        };
        let mut stamp = ReadStamp::UNCHECKED;
        let mut records = Vec::with_capacity(names.len());
        let now = Timestamp::now();
        for name in names {
            let (found, read) = self.named(scope, name).await?;
            stamp = if records.is_empty() {
                read
            } else {
                stamp.and(read)
            };
            let Some(secret) = found else {
                self.commit(Batch::events(vec![failed("secret_missing")]), stamp)
                    .await?;
                return Err(Error::NotFound {
                    what: format!("secret `{name}` of agent `{}`", printable(agent)),
                    hint: Some(format!(
                        "{} is linked but its secret is gone; unlink it and link it again",
                        describe(provider, agent)
                    )),
                });
            };
            let state = effective_state(&secret, now);
            if !matches!(state, LifecycleState::Filled | LifecycleState::Valid) {
                self.commit(Batch::events(vec![failed("unusable")]), stamp)
                    .await?;
                return Err(Error::Unusable {
                    what: secret.describe(),
                    state: state.as_str().into(),
                });
            }
            records.push(secret);
        }
        let items = records
            .iter()
            .map(|secret| {
                let event = Vault::event(
                    actor,
                    Action::IntegrationCredentials,
                    AuditTarget::credential(&secret.id, &secret.scope),
                )
                .detail("provider", provider.as_str())
                .detail("auth_type", integration.auth_type.as_str())
                .detail("name", secret.name.clone());
                (secret, event)
            })
            .collect();
        let mut opened = self.release_integration(items, stamp).await?.into_iter();
        let missing = |what: &str| {
            Error::corrupt(
                describe(provider, agent),
                format!("its secret has no `{what}` field"),
            )
        };
        let token = opened
            .next()
            .and_then(|mut f| f.remove("token"))
            .ok_or_else(|| missing("token"))?;
        let allowed_users = match opened.next() {
            Some(mut fields) => {
                let text = fields
                    .remove("allowed_users")
                    .ok_or_else(|| missing("allowed_users"))?;
                telegram::parse_allowed_users(text.expose_secret())?
            }
            None => Vec::new(),
        };
        Ok(AgentCredentials {
            agent: agent.to_string(),
            provider,
            auth_type: integration.auth_type,
            username: integration.username,
            token,
            expires_at: records.first().and_then(|r| r.expires_at),
            allowed_users,
        })
    }
}

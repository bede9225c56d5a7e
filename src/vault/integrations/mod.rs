//! Agents' integrations as the vault keeps them (see [`crate::integrations`] and
//! docs/INTEGRATIONS.md): linking checks the credential with the service, then stores the
//! agent's secrets (never agent-accessible), the integration record (create-only) and their
//! audit rows in one batch; unlinking removes them in one batch; the credentials path
//! ([`Vault::credentials_for`]) is the one audited door through which an agent gets them.

use super::*;
use crate::integrations::{
    github, gitlab, owner_of, telegram, AuthType, Integration, IntegrationProvider,
    ServiceIdentity, GITHUB_TOKEN, GITLAB_TOKEN, INTEGRATION_KIND, TELEGRAM_ALLOWED_USERS,
    TELEGRAM_BOT_TOKEN,
};
use crate::model::{Record, RecordKey};
use crate::store::RecordFilter;

mod gitlab_provider;
pub(crate) use gitlab_provider::KEPT_METADATA;
pub use gitlab_provider::{
    CredentialProviderInfo, DeprovisionReport, DeprovisionStep, ProvisioningReport,
    RecoveredIntent, RotationOutcome, RotationReport, UnlinkReport,
};
mod github_app;
mod release;
pub(crate) use github_app::AppTokenCache;
pub use github_app::GithubAppLink;

/// What the credentials path hands an agent (or a system admin) for one integration. Its
/// `Debug` shows no secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct AgentCredentials {
    /// The agent.
    pub agent: String,
    /// The service.
    pub provider: IntegrationProvider,
    /// How the credential came to be.
    pub auth_type: AuthType,
    /// The identity's name at the service.
    pub username: String,
    /// The token to use: the stored PAT or provisioned token, or the bot token.
    pub token: SecretString,
    /// When the token stops working, if known.
    pub expires_at: Option<Timestamp>,
    /// Telegram: the user ids allowed to talk to the bot (empty for other providers).
    pub allowed_users: Vec<i64>,
}

impl fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("agent", &self.agent)
            .field("provider", &self.provider)
            .field("auth_type", &self.auth_type)
            .field("username", &self.username)
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("allowed_users", &self.allowed_users.len())
            .finish()
    }
}

/// One secret a link stores: its name, catalog provider, handler type and fields.
struct NewSecret {
    name: &'static str,
    provider: &'static str,
    /// Empty: the provider's (checked against the catalog).
    handler_type: &'static str,
    fields: BTreeMap<String, SecretString>,
}

fn token_fields(field: &str, value: SecretString) -> BTreeMap<String, SecretString> {
    let mut fields = BTreeMap::new();
    fields.insert(field.to_string(), value);
    fields
}

fn describe(provider: IntegrationProvider, agent: &str) -> String {
    format!("the {provider} integration of agent `{}`", printable(agent))
}

fn integration_key(agent: &str, provider: IntegrationProvider) -> Result<RecordKey> {
    RecordKey::new(INTEGRATION_KIND, owner_of(agent), provider.as_str())
}

/// A short, fixed reason for an audit row of a failed link.
fn reason_of(e: &Error) -> &'static str {
    match e {
        Error::Rejected { .. } | Error::InvalidInput { .. } => "rejected",
        Error::Transport { .. } => "unreachable",
        Error::Config { .. } => "misconfigured",
        Error::AlreadyExists { .. } => "already_linked",
        _ => "error",
    }
}

impl Vault {
    /// Links a GitHub personal access token to `agent` (system admins): the token is
    /// checked with `GET /user` at the GitHub base URL, then stored as the agent's
    /// `github:token` (provider `github_pat`, not agent-accessible) with an integration
    /// record naming the login — all in one batch. A token GitHub refuses stores nothing
    /// (`Rejected`); so does an unreachable GitHub (`Transport`). An agent that already
    /// has a GitHub integration is refused with `AlreadyExists` (unlink it first).
    pub async fn link_github_token(
        &self,
        actor: &Principal,
        agent: &str,
        token: SecretString,
    ) -> Result<Integration> {
        trace::op("link_github_token")
            .actor(actor)
            .run(async move {
                self.link_token(actor, agent, IntegrationProvider::Github, token)
                    .await
            })
            .await
    }

    /// Links a GitLab access token to `agent` (system admins): checked with `GET /user`
    /// (`PRIVATE-TOKEN`) at the GitLab base URL, then stored as the agent's `gitlab:token`
    /// (provider `gitlab`, not agent-accessible) with the integration record, in one batch.
    /// Refusals as [`Vault::link_github_token`].
    pub async fn link_gitlab_token(
        &self,
        actor: &Principal,
        agent: &str,
        token: SecretString,
    ) -> Result<Integration> {
        trace::op("link_gitlab_token")
            .actor(actor)
            .run(async move {
                self.link_token(actor, agent, IntegrationProvider::Gitlab, token)
                    .await
            })
            .await
    }

    /// A token integration: the token checked with the service's `GET /user`, then stored
    /// as the agent's secret with the integration record, in one batch.
    async fn link_token(
        &self,
        actor: &Principal,
        agent: &str,
        provider: IntegrationProvider,
        token: SecretString,
    ) -> Result<Integration> {
        let scope = self
            .authorize_integration(actor, Action::IntegrationLink, agent, provider)
            .await?;
        let (name, catalog_provider, what) = match provider {
            IntegrationProvider::Gitlab => (GITLAB_TOKEN, "gitlab", "linking a GitLab integration"),
            _ => (GITHUB_TOKEN, "github_pat", "linking a GitHub integration"),
        };
        let secrets = vec![NewSecret {
            name,
            provider: catalog_provider,
            handler_type: "",
            fields: token_fields("token", token.clone()),
        }];
        self.precheck_link(actor, agent, &scope, provider, &secrets)
            .await?;
        let http = self.http_for(what)?;
        let base = self.inner.integrations.base_url(provider);
        let identity = match provider {
            IntegrationProvider::Gitlab => gitlab::user(http.as_ref(), base, &token).await,
            _ => github::user(http.as_ref(), base, &token).await,
        };
        let identity = self.checked(actor, &scope, provider, identity).await?;
        self.commit_link(
            actor,
            agent,
            &scope,
            provider,
            AuthType::Token,
            identity,
            "user_id",
            secrets,
        )
        .await
    }

    /// Links a Telegram bot to `agent` (system admins): `allowed_users` must be
    /// comma-separated Telegram user ids (integers); the bot token is checked with `getMe`,
    /// then stored as `telegram:bot_token` (provider `telegram`) and the list as
    /// `telegram:allowed_users` (both not agent-accessible) with the integration record, in
    /// one batch. Refusals as [`Vault::link_github_token`].
    pub async fn link_telegram(
        &self,
        actor: &Principal,
        agent: &str,
        bot_token: SecretString,
        allowed_users: &str,
    ) -> Result<Integration> {
        trace::op("link_telegram")
            .actor(actor)
            .run(async move {
                let provider = IntegrationProvider::Telegram;
                let scope = self
                    .authorize_integration(actor, Action::IntegrationLink, agent, provider)
                    .await?;
                let users = telegram::parse_allowed_users(allowed_users)?;
                let secrets = vec![
                    NewSecret {
                        name: TELEGRAM_BOT_TOKEN,
                        provider: "telegram",
                        handler_type: "",
                        fields: token_fields("token", bot_token.clone()),
                    },
                    // No bundled provider describes a list of user ids: kept under `telegram` as a
                    // `custom` credential with one field.
                    NewSecret {
                        name: TELEGRAM_ALLOWED_USERS,
                        provider: "telegram",
                        handler_type: "custom",
                        fields: token_fields(
                            "allowed_users",
                            SecretString::from(telegram::format_allowed_users(&users)),
                        ),
                    },
                ];
                self.precheck_link(actor, agent, &scope, provider, &secrets)
                    .await?;
                let http = self.http_for("linking a Telegram bot")?;
                let base = self.inner.integrations.base_url(provider);
                let identity = telegram::get_me(http.as_ref(), base, &bot_token).await;
                let identity = self.checked(actor, &scope, provider, identity).await?;
                self.commit_link(
                    actor,
                    agent,
                    &scope,
                    provider,
                    AuthType::Token,
                    identity,
                    "bot_id",
                    secrets,
                )
                .await
            })
            .await
    }

    /// `agent`'s integrations, in provider order (system admins; metadata only, no secret).
    pub async fn integrations(&self, actor: &Principal, agent: &str) -> Result<Vec<Integration>> {
        trace::op("integrations")
            .actor(actor)
            .run(async move {
                actor.validate()?;
                let raw = Scope::PerAgent {
                    agent: agent.to_string(),
                };
                let valid = raw.validate();
                let target = match valid {
                    Ok(()) => AuditTarget::scope(&raw),
                    Err(_) => AuditTarget::none(),
                };
                let what = format!("the integrations of agent `{}`", printable(agent));
                self.authorize(actor, Action::IntegrationList, Some(&raw), target, &what)
                    .await?;
                valid?;
                let records = self
                    .inner
                    .store
                    .records(&RecordFilter::kind(INTEGRATION_KIND).owner(owner_of(agent)))
                    .await?;
                records.iter().map(Integration::from_record).collect()
            })
            .await
    }

    /// Unlinks `agent`'s integration with `provider` (system admins): the integration
    /// record and every secret it holds ([`IntegrationProvider::secret_names`]) are removed
    /// in one batch, with an `integration.unlink` row and a `credential.delete` row per
    /// secret. Takes effect at the next [`Vault::credentials_for`]. Returns what was
    /// unlinked; an agent with no such integration is `NotFound`.
    pub async fn unlink(
        &self,
        actor: &Principal,
        agent: &str,
        provider: IntegrationProvider,
    ) -> Result<Integration> {
        trace::op("unlink")
            .actor(actor)
            .run(async move { Ok(self.unlink_reported(actor, agent, provider).await?.0) })
            .await
    }

    /// [`Vault::unlink`] with the remote deprovisioning's report (provisioned GitLab only).
    async fn unlink_reported(
        &self,
        actor: &Principal,
        agent: &str,
        provider: IntegrationProvider,
    ) -> Result<(Integration, Option<DeprovisionReport>)> {
        let scope = self
            .authorize_integration(actor, Action::IntegrationUnlink, agent, provider)
            .await?;
        let key = integration_key(agent, provider)?;
        let Some(record) = self.inner.store.record(&key).await? else {
            return Err(Error::NotFound {
                what: describe(provider, agent),
                hint: Some("list the agent's integrations with Vault::integrations".into()),
            });
        };
        let integration = Integration::from_record(&record)?;
        // A provisioned GitLab identity is deprovisioned in GitLab first (best effort; a
        // failure is in the row and the report, and the local state goes anyway); a GitHub
        // App integration's `github:private_key` is among the secrets removed below.
        let deprovision = self.deprovision_for_unlink(&scope, &integration).await;
        let mut mutations = vec![Mutation::DeleteRecord {
            key,
            precondition: Precondition::IfVersion(record.version),
        }];
        let mut events =
            vec![
                Vault::event(actor, Action::IntegrationUnlink, AuditTarget::scope(&scope))
                    .detail("provider", provider.as_str())
                    .detail("auth_type", integration.auth_type.as_str())
                    .detail("username", printable(&integration.username)),
            ];
        if let Some(report) = &deprovision {
            let first = events.remove(0);
            let first = first
                .detail("credential_provider", printable(&report.provider))
                .detail(
                    "deprovision",
                    if report.complete() { "done" } else { "failed" },
                );
            events.insert(0, first);
        }
        for name in provider.secret_names() {
            let Some(secret) = self.named(&scope, name).await?.0 else {
                continue;
            };
            mutations.push(Mutation::Delete {
                id: secret.id.clone(),
                precondition: Precondition::IfVersion(secret.version),
            });
            events.push(
                Vault::event(
                    actor,
                    Action::Delete,
                    AuditTarget::credential(&secret.id, &secret.scope),
                )
                .detail("name", secret.name.clone())
                .detail("integration", provider.as_str()),
            );
        }
        self.commit(Batch { mutations, events }, ReadStamp::UNCHECKED)
            .await?;
        if provider == IntegrationProvider::Github {
            self.inner.app_tokens.invalidate(agent);
        }
        Ok((integration, deprovision))
    }

    /// Decides `action` on `agent`'s integrations (a denial audited); an agent id the vault
    /// refuses is refused after the decision and left out of the audit row.
    async fn authorize_integration(
        &self,
        actor: &Principal,
        action: Action,
        agent: &str,
        provider: IntegrationProvider,
    ) -> Result<Scope> {
        actor.validate()?;
        let raw = Scope::PerAgent {
            agent: agent.to_string(),
        };
        let valid = raw.validate();
        // The allowed path builds no message (the credentials path is a hot one).
        if !super::policy::allows(actor.role(), action, super::Relation::of(actor, Some(&raw))) {
            let target = match valid {
                Ok(()) => AuditTarget::scope(&raw),
                Err(_) => AuditTarget::none(),
            };
            self.authorize(
                actor,
                action,
                Some(&raw),
                target,
                &describe(provider, agent),
            )
            .await?;
        }
        valid?;
        Ok(raw)
    }

    /// The credential named `name` in `scope`, read exactly, with the stamp of a stamped
    /// read taken just before (as a fresh resolve reads).
    async fn named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<CredentialRecord>, ReadStamp)> {
        let store = &self.inner.store;
        let (_, before) = store.find_named(scope, name).await?;
        let found = store
            .list(&ListFilter {
                scope: Some(scope.clone()),
                name: Some(name.to_string()),
                limit: Some(1),
                ..ListFilter::default()
            })
            .await?;
        Ok((found.into_iter().next(), before))
    }

    /// What a link can refuse before asking the service: the secrets' fields against the
    /// catalog (a token of the wrong shape), and an integration that exists already (the
    /// create-only write decides races; this spares the service a call).
    async fn precheck_link(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        provider: IntegrationProvider,
        secrets: &[NewSecret],
    ) -> Result<()> {
        for secret in secrets {
            if secret.handler_type.is_empty() {
                self.check_against_catalog(secret.provider, "", &secret.fields)?;
            }
        }
        if self
            .inner
            .store
            .record(&integration_key(agent, provider)?)
            .await?
            .is_some()
        {
            let e = already_linked(provider, agent);
            self.link_failed(actor, scope, provider, &e).await;
            return Err(e);
        }
        Ok(())
    }

    /// A service check's answer: an error is audited as a failed link (nothing stored).
    async fn checked(
        &self,
        actor: &Principal,
        scope: &Scope,
        provider: IntegrationProvider,
        identity: Result<ServiceIdentity>,
    ) -> Result<ServiceIdentity> {
        match identity {
            Ok(identity) => Ok(identity),
            Err(e) => {
                self.link_failed(actor, scope, provider, &e).await;
                Err(e)
            }
        }
    }

    /// Audits a link that stored nothing. A row that cannot be written is logged: the
    /// caller returns the link's own error either way.
    async fn link_failed(
        &self,
        actor: &Principal,
        scope: &Scope,
        provider: IntegrationProvider,
        error: &Error,
    ) {
        let event = Vault::event(actor, Action::IntegrationLink, AuditTarget::scope(scope))
            .outcome(Outcome::Failure)
            .detail("provider", provider.as_str())
            .detail("reason", reason_of(error));
        if let Err(e) = self
            .commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await
        {
            tracing::warn!(error = %e, "audit row of a failed integration link not written");
        }
    }

    /// Stores a checked link in one batch: each secret sealed as a new per-agent credential
    /// (create-only, not agent-accessible), the integration record (create-only), an
    /// `integration.link` row and a `credential.create` row per secret.
    #[allow(clippy::too_many_arguments)]
    async fn commit_link(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        provider: IntegrationProvider,
        auth_type: AuthType,
        identity: ServiceIdentity,
        id_name: &str,
        secrets: Vec<NewSecret>,
    ) -> Result<Integration> {
        let now = Timestamp::now();
        let mut external_ids = BTreeMap::new();
        external_ids.insert(id_name.to_string(), identity.id);
        let integration = Integration {
            agent: agent.to_string(),
            provider,
            auth_type,
            username: identity.username,
            external_ids,
            linked_at: now,
            linked_by: actor.to_string(),
        };
        self.commit_integration(actor, agent, scope, integration, secrets)
            .await
    }

    /// Stores a checked link in one batch (see [`Vault::commit_link`]): `integration` as
    /// given, with its secrets.
    async fn commit_integration(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        integration: Integration,
        secrets: Vec<NewSecret>,
    ) -> Result<Integration> {
        let now = integration.linked_at;
        let provider = integration.provider;
        let auth_type = integration.auth_type;
        let mut mutations = Vec::with_capacity(secrets.len() + 1);
        let mut events = Vec::with_capacity(secrets.len() + 1);
        for secret in secrets {
            let handler_type = if secret.handler_type.is_empty() {
                self.check_against_catalog(secret.provider, "", &secret.fields)?
            } else {
                secret.handler_type.to_string()
            };
            let mut metadata = BTreeMap::new();
            metadata.insert(
                FIELD_NAMES.to_string(),
                super::credentials::field_names_text(&secret.fields),
            );
            metadata.insert("integration".to_string(), provider.as_str().to_string());
            let mut record = CredentialRecord {
                id: CredentialId::generate(),
                name: secret.name.to_string(),
                scope: scope.clone(),
                provider: secret.provider.to_string(),
                handler_type,
                state: LifecycleState::Valid,
                metadata,
                agent_accessible: false,
                version: 1,
                created_at: now,
                updated_at: now,
                expires_at: None,
                key_id: String::new(),
                sealed: Vec::new(),
            };
            let plain = encode_fields(&secret.fields)?;
            self.seal_into(&mut record, &plain).await?;
            events.push(
                Vault::event(
                    actor,
                    Action::Create,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("name", record.name.clone())
                .detail("provider", record.provider.clone())
                .detail("integration", provider.as_str()),
            );
            mutations.push(Mutation::Put {
                record,
                precondition: Precondition::CreateOnly,
            });
        }
        let key = integration_key(agent, provider)?;
        mutations.push(Mutation::create_record(Record::new(
            key,
            integration.to_body()?,
            now,
        )));
        events.push(
            Vault::event(actor, Action::IntegrationLink, AuditTarget::scope(scope))
                .detail("provider", provider.as_str())
                .detail("auth_type", auth_type.as_str())
                .detail("username", printable(&integration.username)),
        );
        match self
            .commit(Batch { mutations, events }, ReadStamp::UNCHECKED)
            .await
        {
            Ok(_) => Ok(integration),
            Err(Error::AlreadyExists { what }) => {
                // The integration record won a race, or a secret of that name was made by
                // hand: say which.
                let linked = self
                    .inner
                    .store
                    .record(&integration_key(agent, provider)?)
                    .await?
                    .is_some();
                let e = if linked {
                    already_linked(provider, agent)
                } else {
                    Error::AlreadyExists {
                        what: format!(
                            "{what} (a secret the {provider} integration stores; delete it \
                             before linking)"
                        ),
                    }
                };
                self.link_failed(actor, scope, provider, &e).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

fn already_linked(provider: IntegrationProvider, agent: &str) -> Error {
    Error::AlreadyExists {
        what: format!(
            "{} (an agent has at most one per provider; unlink it first with Vault::unlink)",
            describe(provider, agent)
        ),
    }
}

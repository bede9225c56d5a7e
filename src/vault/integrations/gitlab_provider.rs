//! The GitLab credential provider as the vault drives it (docs/INTEGRATIONS.md): org-level
//! providers (a config and a sealed admin token), provisioned links (an intent record
//! first, then the remote calls, then one batch), recovery of what a crashed link created,
//! deprovisioning on unlink, and rotation of provisioned tokens under a lease.
//!
//! The protocol is [`crate::integrations::gitlab_provider`]; the admin token is opened only
//! in `vault/unseal.rs` (`open_provider_token`).

use std::time::Duration;

use super::*;
use crate::integrations::gitlab_provider::{
    self as glp, GitlabProviderConfig, IssuedToken, Mode, Removal, Target, TokenRef,
};
use crate::store::lease::Lease;

/// The record kind of an org-level credential provider (owner [`PROVIDER_OWNER`], key its
/// name; body the config, sealed the admin token).
pub const CREDENTIAL_PROVIDER_KIND: &str = "credential_provider";
/// The owner of credential provider records.
pub const PROVIDER_OWNER: &str = "org";
/// The record kind of a provisioning intent (owner `agent:<id>`, key `gitlab`).
pub const PROVISIONING_KIND: &str = "provisioning";
/// The lease owner under which provisioned GitLab tokens are rotated.
pub const ROTATE_LEASE_OWNER: &str = "gitlab.rotate";
/// Provisioned tokens expiring within this window are rotated.
pub const ROTATE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an intent is taken to be a link in progress; after it, a leftover intent is a
/// crashed run's and [`Vault::finish_provisioning`] cleans it up.
pub const PROVISIONING_TTL: Duration = Duration::from_secs(120);
/// How long a rotation lease lasts.
const ROTATE_LEASE_TTL: Duration = Duration::from_secs(60);

/// The secret metadata of a provisioned token: the provider's name, the mode, and GitLab's
/// ids of the identity (the token id changes with every rotation).
const META_PROVIDER: &str = "credential_provider";
/// The metadata keys a provisioned token's credential carries, kept by the vault: a
/// caller's metadata may not set them (they name what rotation and unlink act on).
pub(crate) const KEPT_METADATA: [&str; 4] = [
    META_PROVIDER,
    "gitlab_mode",
    "gitlab_user_id",
    "gitlab_token_id",
];
const META_MODE: &str = "gitlab_mode";
const META_USER_ID: &str = "gitlab_user_id";
const META_TOKEN_ID: &str = "gitlab_token_id";

/// A registered credential provider (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialProviderInfo {
    /// Its name.
    pub name: String,
    /// Where and what it mints.
    pub config: GitlabProviderConfig,
    /// When it was registered.
    pub created_at: Timestamp,
}

/// One step of a deprovisioning (or a cleanup) and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeprovisionStep {
    /// What was asked: `revoke token 7`, `delete service account 5`, …
    pub what: String,
    /// `Ok` with what GitLab did, or the error's message (never a token).
    pub outcome: std::result::Result<Removal, String>,
}

/// What deprovisioning a provisioned identity did, step by step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeprovisionReport {
    /// The credential provider.
    pub provider: String,
    /// Each remote step.
    pub steps: Vec<DeprovisionStep>,
}

impl DeprovisionReport {
    /// Did every step succeed (removed, or already gone)?
    pub fn complete(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }

    fn step(&mut self, what: String, outcome: Result<Removal>) {
        self.steps.push(DeprovisionStep {
            what,
            outcome: outcome.map_err(|e| e.to_string()),
        });
    }
}

/// What [`Vault::unlink_provisioned`] did: the integration removed, and the remote
/// deprovisioning (`None` for an integration that was not provisioned).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UnlinkReport {
    /// What was unlinked.
    pub integration: Integration,
    /// The remote deprovisioning, when the integration was provisioned.
    pub deprovision: Option<DeprovisionReport>,
}

/// One leftover intent [`Vault::finish_provisioning`] handled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecoveredIntent {
    /// The agent.
    pub agent: String,
    /// The cleanup of what the crashed run created.
    pub cleanup: DeprovisionReport,
    /// Whether the intent was deleted (the cleanup succeeded).
    pub resolved: bool,
}

/// What [`Vault::finish_provisioning`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProvisioningReport {
    /// The leftover intents handled.
    pub recovered: Vec<RecoveredIntent>,
    /// Agents whose intent is recent (a link may be under way): left alone.
    pub in_progress: Vec<String>,
}

/// What one rotation attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationOutcome {
    /// A new token is stored at this version.
    Rotated {
        /// The new version.
        version: u64,
        /// The new token's expiry.
        expires_at: Timestamp,
    },
    /// Another task holds the rotation lease.
    Busy,
    /// No longer due once the lease was held (rotated just before).
    NotDue,
    /// The rotation failed (the error's message; the old token is kept).
    Failed(String),
}

/// What [`Vault::rotate_provisioned_tokens`] did, per credential.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RotationReport {
    /// Each due credential and what happened to it.
    pub tokens: Vec<(CredentialId, RotationOutcome)>,
}

/// The intent a provisioned link writes before any remote call.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Intent {
    /// The credential provider's name.
    provider: String,
    /// `service_account` or `project_access_token`.
    mode: String,
    /// The deterministic service account username (service account mode).
    #[serde(default)]
    username: Option<String>,
    /// The deterministic token name.
    token_name: String,
    /// `started`, `account_created`, `token_created`.
    step: String,
}

fn mode_name(cfg: &GitlabProviderConfig) -> &'static str {
    match cfg.mode {
        Mode::ServiceAccount { .. } => "service_account",
        Mode::ProjectAccessToken { .. } => "project_access_token",
    }
}

fn target_text(cfg: &GitlabProviderConfig) -> String {
    match &cfg.target {
        Target::Group(g) => format!("group:{}", printable(g)),
        Target::Project(p) => format!("project:{}", printable(p)),
    }
}

fn provider_key(name: &str) -> Result<RecordKey> {
    RecordKey::new(CREDENTIAL_PROVIDER_KIND, PROVIDER_OWNER, name)
}

fn intent_key(agent: &str) -> Result<RecordKey> {
    RecordKey::new(PROVISIONING_KIND, owner_of(agent), "gitlab")
}

fn check_provider_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "credential provider name",
            "1 to 64 characters of letters, digits, `-`, `_` and `.`",
        ))
    }
}

/// Midnight UTC of `date`: GitLab's tokens stop working on their `expires_at` day.
fn timestamp_of(date: time::Date) -> Timestamp {
    Timestamp(
        date.midnight()
            .assume_utc()
            .unix_timestamp()
            .saturating_mul(1000),
    )
}

fn date_of(at: Timestamp) -> Result<time::Date> {
    time::OffsetDateTime::from_unix_timestamp(at.0.div_euclid(1000))
        .map(|t| t.date())
        .map_err(|_| Error::invalid("time", "out of range"))
}

fn parse_id(text: Option<&String>) -> Option<u64> {
    text.and_then(|t| t.parse().ok())
}

/// The service principal provisioned-token rotation acts as.
fn rotation_service() -> Principal {
    Principal::Service {
        id: "gitlab-rotation".to_string(),
    }
}

impl Vault {
    // -----------------------------------------------------------------------------------
    // Registration.

    /// Registers GitLab credential provider `name` (system admins): the config is checked
    /// ([`GitlabProviderConfig::validate`]) and so is the admin token (`GET /user` at the
    /// config's base URL must accept it), then one record of kind `credential_provider`
    /// (owner `org`, key `name`, create-only) keeps the config as its body and the admin
    /// token sealed. A name in use is `AlreadyExists`. Audited (`provider.add`).
    pub async fn add_credential_provider(
        &self,
        actor: &Principal,
        name: &str,
        config: GitlabProviderConfig,
        admin_token: SecretString,
    ) -> Result<CredentialProviderInfo> {
        let what = format!("credential provider `{}`", printable(name));
        self.authorize(actor, Action::ProviderAdd, None, AuditTarget::none(), &what)
            .await?;
        let failed = |reason: &'static str| {
            Vault::event(actor, Action::ProviderAdd, AuditTarget::none())
                .outcome(Outcome::Failure)
                .detail("name", printable(name))
                .detail("reason", reason)
        };
        let checked = async {
            check_provider_name(name)?;
            config.validate()?;
            if self
                .inner
                .store
                .record(&provider_key(name)?)
                .await?
                .is_some()
            {
                return Err(Error::AlreadyExists { what: what.clone() });
            }
            let http = self.http_for("registering a GitLab credential provider")?;
            gitlab::user(http.as_ref(), config.base_url.trim(), &admin_token)
                .await
                .map_err(|e| match e {
                    Error::InvalidInput { .. } => Error::invalid(
                        "gitlab provider admin token",
                        format!(
                            "GitLab at {} refused it (GET /user); use a token with the `api` \
                             scope of a group Owner or an administrator",
                            printable(config.base_url.trim())
                        ),
                    ),
                    other => other,
                })?;
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            self.commit_quietly(failed(reason_of(&e))).await;
            return Err(e);
        }
        let now = Timestamp::now();
        let body = serde_json::to_value(&config)
            .map_err(|e| Error::invalid("gitlab provider", e.to_string()))?;
        let mut record = Record::new(provider_key(name)?, body, now);
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "admin_token": admin_token.expose_secret() }))
                .map_err(|e| Error::invalid("gitlab provider", e.to_string()))?,
        );
        let sealed = self
            .inner
            .keys
            .seal_record(&plain, &record.aad_in(&self.inner.namespace))
            .await?;
        record.sealed = Some(sealed.bytes);
        let event = Vault::event(actor, Action::ProviderAdd, AuditTarget::none())
            .detail("name", name.to_string())
            .detail("kind", "gitlab")
            .detail("mode", mode_name(&config))
            .detail("target", target_text(&config));
        match self
            .commit(
                Batch {
                    mutations: vec![Mutation::create_record(record)],
                    events: vec![event],
                },
                ReadStamp::UNCHECKED,
            )
            .await
        {
            Ok(_) => Ok(CredentialProviderInfo {
                name: name.to_string(),
                config,
                created_at: now,
            }),
            Err(e) => {
                if matches!(e, Error::AlreadyExists { .. }) {
                    self.commit_quietly(failed("already_exists")).await;
                    return Err(Error::AlreadyExists { what });
                }
                Err(e)
            }
        }
    }

    /// The registered credential providers, by name (system admins; no secret).
    pub async fn list_credential_providers(
        &self,
        actor: &Principal,
    ) -> Result<Vec<CredentialProviderInfo>> {
        self.authorize(
            actor,
            Action::ProviderList,
            None,
            AuditTarget::none(),
            "the credential providers",
        )
        .await?;
        let records = self
            .inner
            .store
            .records(&RecordFilter::kind(CREDENTIAL_PROVIDER_KIND).owner(PROVIDER_OWNER))
            .await?;
        records.iter().map(provider_info).collect()
    }

    /// Removes credential provider `name` (system admins). Refused (`InvalidInput`, audited)
    /// while an integration it provisioned exists or a provisioning intent names it: unlink
    /// those first (unlinking deprovisions with the provider's admin token). Unknown:
    /// `NotFound`. Audited (`provider.remove`).
    pub async fn remove_credential_provider(
        &self,
        actor: &Principal,
        name: &str,
    ) -> Result<CredentialProviderInfo> {
        let what = format!("credential provider `{}`", printable(name));
        self.authorize(
            actor,
            Action::ProviderRemove,
            None,
            AuditTarget::none(),
            &what,
        )
        .await?;
        let key = provider_key(name)?;
        let Some(record) = self.inner.store.record(&key).await? else {
            return Err(Error::NotFound {
                what,
                hint: Some("list them with Vault::list_credential_providers".into()),
            });
        };
        let info = provider_info(&record)?;
        let users = self.provider_users(name).await?;
        if !users.is_empty() {
            self.commit_quietly(
                Vault::event(actor, Action::ProviderRemove, AuditTarget::none())
                    .outcome(Outcome::Failure)
                    .detail("name", name.to_string())
                    .detail("reason", "in_use"),
            )
            .await;
            return Err(Error::invalid(
                "credential provider",
                format!(
                    "{what} is in use by agent(s) {}; unlink their GitLab integrations first \
                     (Vault::unlink deprovisions them), or run Vault::finish_provisioning",
                    users.join(", ")
                ),
            ));
        }
        let event = Vault::event(actor, Action::ProviderRemove, AuditTarget::none())
            .detail("name", name.to_string())
            .detail("kind", "gitlab");
        self.commit(
            Batch {
                mutations: vec![Mutation::delete_record(&record)],
                events: vec![event],
            },
            ReadStamp::UNCHECKED,
        )
        .await?;
        Ok(info)
    }

    /// The agents whose provisioned integration or intent names provider `name`.
    async fn provider_users(&self, name: &str) -> Result<Vec<String>> {
        let mut users = Vec::new();
        for record in self
            .inner
            .store
            .records(&RecordFilter::kind(INTEGRATION_KIND))
            .await?
        {
            let Ok(i) = Integration::from_record(&record) else {
                continue;
            };
            if i.auth_type == AuthType::Provisioned
                && i.external_ids.get(META_PROVIDER).map(String::as_str) == Some(name)
            {
                users.push(printable(&i.agent));
            }
        }
        for record in self
            .inner
            .store
            .records(&RecordFilter::kind(PROVISIONING_KIND))
            .await?
        {
            if serde_json::from_value::<Intent>(record.body.clone())
                .is_ok_and(|i| i.provider == name)
            {
                users.push(printable(
                    record.owner.strip_prefix("agent:").unwrap_or(&record.owner),
                ));
            }
        }
        Ok(users)
    }

    /// Provider `name`'s config and admin token.
    async fn credential_provider_of(
        &self,
        name: &str,
    ) -> Result<(GitlabProviderConfig, SecretString)> {
        let record = self
            .inner
            .store
            .record(&provider_key(name)?)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("credential provider `{}`", printable(name)),
                hint: Some("register it with Vault::add_credential_provider".into()),
            })?;
        let info = provider_info(&record)?;
        let token = self.open_provider_token(&record).await?;
        Ok((info.config, token))
    }

    /// Commits an audit row on its own; a row that cannot be written is logged.
    async fn commit_quietly(&self, event: AuditEvent) {
        if let Err(e) = self
            .commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await
        {
            tracing::warn!(error = %e, "audit row not written");
        }
    }

    // -----------------------------------------------------------------------------------
    // Provisioned links.

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
            serde_json::to_value(&intent).map_err(|e| Error::invalid("intent", e.to_string()))?,
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
                match glp::create_service_account(http.as_ref(), &cfg, &admin, agent).await {
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
                let event =
                    Vault::event(actor, Action::IntegrationLink, AuditTarget::scope(&scope))
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
    }

    /// The batch of a provisioned link: the secret, the integration, the intent's delete,
    /// the audit rows.
    #[allow(clippy::too_many_arguments)]
    async fn commit_provisioned(
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
    async fn cleanup_remote(
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
    async fn recover_intent(
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
            let Some(agent) = record.owner.strip_prefix("agent:").map(str::to_string) else {
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
    }

    // -----------------------------------------------------------------------------------
    // Unlink.

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
        let (integration, deprovision) = self.unlink_reported(actor, agent, provider).await?;
        Ok(UnlinkReport {
            integration,
            deprovision,
        })
    }

    /// The unlink hook: deprovisions a provisioned GitLab integration (best effort) and
    /// returns the report, or `None` for any other integration.
    pub(super) async fn deprovision_for_unlink(
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

    // -----------------------------------------------------------------------------------
    // Rotation.

    /// Rotates every provisioned GitLab token that expires within [`ROTATE_WINDOW`] of
    /// `now`: each under a lease (`Lease::key("gitlab.rotate", credential id)`), so that of
    /// racing rotations exactly one calls GitLab; the new token is stored in the batch that
    /// releases the lease, with a `credential.refresh` row (by service `gitlab-rotation`).
    pub async fn rotate_provisioned_tokens(&self, now: Timestamp) -> Result<RotationReport> {
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
    }

    async fn rotate_one(&self, id: &CredentialId, now: Timestamp) -> Result<RotationOutcome> {
        let store = &self.inner.store;
        let key = Lease::key(ROTATE_LEASE_OWNER, id.as_str())?;
        let holder = format!("rotate-{}", CredentialId::generate());
        let current = store.record(&key).await?;
        let Some(claim) = Lease::claim(
            &key,
            current.as_ref(),
            &holder,
            Timestamp::now(),
            ROTATE_LEASE_TTL,
        )?
        else {
            return Ok(RotationOutcome::Busy);
        };
        if let Err(e) = self
            .commit(
                Batch {
                    mutations: vec![claim.mutation],
                    events: vec![],
                },
                ReadStamp::UNCHECKED,
            )
            .await
        {
            return if Lease::lost_race(&e) {
                Ok(RotationOutcome::Busy)
            } else {
                Err(e)
            };
        }
        let lease = claim.lease;
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

    async fn rotate_under_lease(
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

fn provider_info(record: &Record) -> Result<CredentialProviderInfo> {
    let config: GitlabProviderConfig = serde_json::from_value(record.body.clone())
        .map_err(|e| Error::corrupt(record.describe(), format!("not a GitLab provider: {e}")))?;
    Ok(CredentialProviderInfo {
        name: record.key.clone(),
        config,
        created_at: record.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        let d = time::Date::from_calendar_date(2026, time::Month::January, 2).expect("d");
        let t = timestamp_of(d);
        assert_eq!(date_of(t).expect("date"), d);
        assert!(check_provider_name("gitlab-main").is_ok());
        assert!(check_provider_name("a b").is_err());
        assert!(check_provider_name("").is_err());
    }

    #[test]
    fn a_report_is_complete_only_without_errors() {
        let mut r = DeprovisionReport::default();
        r.step("x".into(), Ok(Removal::AlreadyGone));
        assert!(r.complete());
        r.step("y".into(), Err(Error::transport("gitlab", "down")));
        assert!(!r.complete());
    }
}

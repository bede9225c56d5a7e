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

mod provision;
mod rotation;
mod unlink;

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
        trace::op("add_credential_provider")
            .actor(actor)
            .run(async move {
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
                    serde_json::to_vec(
                        &serde_json::json!({ "admin_token": admin_token.expose_secret() }),
                    )
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
            })
            .await
    }

    /// The registered credential providers, by name (system admins; no secret).
    pub async fn list_credential_providers(
        &self,
        actor: &Principal,
    ) -> Result<Vec<CredentialProviderInfo>> {
        trace::op("list_credential_providers")
            .actor(actor)
            .run(async move {
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
            })
            .await
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
        trace::op("remove_credential_provider")
            .actor(actor)
            .run(async move {
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
            })
            .await
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

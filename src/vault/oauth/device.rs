//! The device flow (RFC 8628): `start` asks the provider for a user code and stores a
//! `pending` credential holding the device code (sealed); polling honours the interval, adds
//! five seconds on every `slow_down`, and ends in `valid` (tokens stored) or `invalid`
//! (`access_denied`, `expired_token`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::credentials::field_names_text;
use super::super::{info, Action, CredentialInfo, Principal, Vault, FIELD_NAMES};
use super::{token_fields, OAuthEvent};
use crate::audit::{AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::model::{CredentialId, CredentialRecord, Grant, LifecycleState, Timestamp};
use crate::oauth::{ClientAuth, DevicePoll};
use crate::store::{Mutation, Precondition, ReadStamp};
use crate::vault::trace;

/// Metadata keys of a device flow in progress (non-secret).
const DEVICE_INTERVAL: &str = "device_interval";
/// The longest polling interval taken from a provider, in seconds.
const MAX_INTERVAL: u64 = 300;
const DEVICE_EXPIRES_AT: &str = "device_expires_at";
const DEVICE_APP: &str = "device_app";

/// What [`Vault::oauth_device_start`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceStart {
    /// The provider (its `[oauth]` table needs a `device_authorization_url`).
    pub provider: String,
    /// The name (`ref`) of the credential in the user's `per_user` scope.
    pub name: String,
    /// Scopes to ask for. Default: the provider's.
    pub scopes: Option<Vec<String>>,
}

impl DeviceStart {
    /// A device flow for `provider` that will store its tokens as `name`.
    pub fn new(provider: impl Into<String>, name: impl Into<String>) -> DeviceStart {
        DeviceStart {
            provider: provider.into(),
            name: name.into(),
            scopes: None,
        }
    }
}

/// A started device flow: show the user `user_code` and `verification_uri`, then poll
/// ([`Vault::oauth_device_wait`] or [`Vault::oauth_device_poll`]).
#[derive(Debug, Clone)]
pub struct DeviceFlow {
    /// The `pending` credential the tokens will go into.
    pub credential: CredentialInfo,
    /// The code the user types in.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// When the flow lapses.
    pub expires_at: Timestamp,
    /// Seconds to wait between polls.
    pub interval: u64,
}

/// Where a device flow stands after a poll.
#[derive(Debug, Clone)]
#[non_exhaustive]
// `Done` is as large as a credential's metadata; a poll's answer is not kept in bulk.
pub enum DeviceStatus {
    /// The user has not finished yet; poll again after `interval` seconds.
    Pending {
        /// Seconds to wait.
        interval: u64,
    },
    /// The provider asked to poll more slowly; the interval grew by five seconds.
    SlowDown {
        /// Seconds to wait from now on.
        interval: u64,
    },
    /// Tokens are stored; the credential is `valid`.
    Done(Box<CredentialInfo>),
    /// The user refused; the credential is `invalid`.
    Denied,
    /// The code lapsed before the user finished; the credential is `invalid`.
    Expired,
}

impl Vault {
    /// Starts a device flow for the actor's user: a `pending` per-user credential (its
    /// sealed field is the device code) and the code to show the user. Audited
    /// (`oauth.start`).
    pub async fn oauth_device_start(
        &self,
        actor: &Principal,
        start: DeviceStart,
    ) -> Result<DeviceFlow> {
        trace::op("oauth_device_start")
            .actor(actor)
            .run(async move {
                let (_, scope) = self.oauth_user(actor, Action::OAuthStart).await?;
                let (provider, spec, client) = self
                    .authorize_login(actor, &scope, &start.provider, &start.name)
                    .await?;
                let secret = self.client_secret(&client, &provider.handler_type).await?;
                let scopes = start.scopes.clone().unwrap_or_else(|| spec.scopes.clone());
                let http = self.http_for("a device login")?;
                let device = crate::oauth::start_device(
                    http.as_ref(),
                    &spec,
                    &ClientAuth {
                        client_id: &client.client_id,
                        client_secret: secret.as_ref(),
                    },
                    &scopes,
                )
                .await;
                let device = match device {
                    Ok(device) => device,
                    Err(e) => {
                        let event =
                            Vault::event(actor, Action::OAuthStart, AuditTarget::scope(&scope))
                                .outcome(Outcome::Failure)
                                .detail("flow", "device")
                                .detail("provider", provider.name.clone())
                                .detail("reason", super::reason_of(&e));
                        self.commit(
                            crate::store::Batch::events(vec![event]),
                            ReadStamp::UNCHECKED,
                        )
                        .await?;
                        return Err(e.into());
                    }
                };
                let now = Timestamp::now();
                let expires_at = now.saturating_add(Duration::from_secs(device.expires_in));
                // A provider's interval is bounded (1 s to 5 min), so a bad answer can neither make
                // the vault hammer it nor wait for ever.
                let interval = device.interval.clamp(1, MAX_INTERVAL);
                let mut fields = BTreeMap::new();
                fields.insert("device_code".to_string(), device.device_code.clone());
                let mut metadata = BTreeMap::new();
                metadata.insert(FIELD_NAMES.to_string(), field_names_text(&fields));
                metadata.insert(DEVICE_INTERVAL.to_string(), interval.to_string());
                metadata.insert(DEVICE_EXPIRES_AT.to_string(), expires_at.0.to_string());
                if let Some(app) = actor.app() {
                    metadata.insert(DEVICE_APP.to_string(), app.to_string());
                }
                let mut record = CredentialRecord {
                    id: CredentialId::generate(),
                    name: start.name.clone(),
                    scope: scope.clone(),
                    provider: provider.name.clone(),
                    handler_type: provider.handler_type.clone(),
                    state: LifecycleState::Pending,
                    metadata,
                    agent_accessible: false,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                    key_id: String::new(),
                    sealed: Vec::new(),
                };
                let plain = super::super::encode_fields(&fields)?;
                self.seal_into(&mut record, &plain).await?;
                let event = Vault::event(
                    actor,
                    Action::OAuthStart,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("flow", "device")
                .detail("provider", provider.name.clone())
                .detail("name", record.name.clone());
                self.commit_one(
                    Mutation::Put {
                        record: record.clone(),
                        precondition: Precondition::CreateOnly,
                    },
                    event,
                )
                .await?;
                Ok(DeviceFlow {
                    credential: info(&record, vec!["device_code".into()]),
                    user_code: device.user_code,
                    verification_uri: device.verification_uri,
                    verification_uri_complete: device.verification_uri_complete,
                    expires_at,
                    interval,
                })
            })
            .await
    }

    /// Polls a device flow once (the caller waits the interval between polls; see
    /// [`Vault::oauth_device_wait`]). Success stores the tokens (`valid`, granted to the app
    /// that started it); a refusal or a lapsed code makes the credential `invalid`. Each end
    /// is audited (`oauth.complete`).
    pub async fn oauth_device_poll(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<DeviceStatus> {
        trace::op("oauth_device_poll")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::OAuthComplete, id).await?;
                if record.state != LifecycleState::Pending
                    || !super::has_field(&record, "device_code")
                {
                    return Err(Error::invalid(
                        "credential",
                        format!("{} is not a device login in progress", record.describe()),
                    ));
                }
                let interval: u64 = record
                    .metadata
                    .get(DEVICE_INTERVAL)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5);
                let now = Timestamp::now();
                let lapsed = record
                    .metadata
                    .get(DEVICE_EXPIRES_AT)
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|at| at <= now.0);
                if lapsed {
                    self.end_device(actor, &record, "expired_token").await?;
                    return Ok(DeviceStatus::Expired);
                }
                let (provider, spec) = self.oauth_provider(&record.provider)?;
                let client = self.oauth_client(&provider.name)?;
                let secret = self.client_secret(&client, &record.handler_type).await?;
                let fields = self.open_for_change(&record).await?;
                let device_code = fields.get("device_code").ok_or_else(|| {
                    Error::corrupt(record.describe(), "its device code is missing")
                })?;
                let http = self.http_for("polling a device login")?;
                let polled = crate::oauth::poll_device(
                    http.as_ref(),
                    &spec,
                    &ClientAuth {
                        client_id: &client.client_id,
                        client_secret: secret.as_ref(),
                    },
                    device_code,
                )
                .await;
                let polled = match polled {
                    Ok(polled) => polled,
                    Err(e) => {
                        let event = Vault::event(
                            actor,
                            Action::OAuthComplete,
                            AuditTarget::credential(&record.id, &record.scope),
                        )
                        .outcome(Outcome::Failure)
                        .detail("flow", "device")
                        .detail("reason", super::reason_of(&e));
                        self.commit(
                            crate::store::Batch::events(vec![event]),
                            ReadStamp::UNCHECKED,
                        )
                        .await?;
                        return Err(e.into());
                    }
                };
                match polled {
                    DevicePoll::Pending => Ok(DeviceStatus::Pending { interval }),
                    DevicePoll::SlowDown => {
                        // RFC 8628 section 3.5: every slow_down adds five seconds, for good.
                        let interval = interval.saturating_add(5).min(MAX_INTERVAL + 60);
                        self.set_device_interval(&record, interval).await?;
                        Ok(DeviceStatus::SlowDown { interval })
                    }
                    DevicePoll::Denied => {
                        self.end_device(actor, &record, "access_denied").await?;
                        Ok(DeviceStatus::Denied)
                    }
                    DevicePoll::Expired => {
                        self.end_device(actor, &record, "expired_token").await?;
                        Ok(DeviceStatus::Expired)
                    }
                    DevicePoll::Done(tokens) => {
                        let no_expiry = tokens.expires_in.is_none();
                        let stored = token_fields(None, tokens, &client.client_id, now);
                        self.minted_fields(&stored.fields);
                        let (fields, expires_at) = (stored.fields, stored.expires_at);
                        let app = record.metadata.get(DEVICE_APP).cloned();
                        let mut next = record.clone();
                        next.metadata.remove(DEVICE_INTERVAL);
                        next.metadata.remove(DEVICE_EXPIRES_AT);
                        next.metadata.remove(DEVICE_APP);
                        next.metadata
                            .insert(FIELD_NAMES.to_string(), field_names_text(&fields));
                        for (key, value) in stored.metadata {
                            next.metadata.insert(key.to_string(), value);
                        }
                        next.state = LifecycleState::Valid;
                        next.expires_at = expires_at;
                        next.version += 1;
                        next.updated_at = now;
                        let plain = super::super::encode_fields(&fields)?;
                        self.seal_into(&mut next, &plain).await?;
                        let target = AuditTarget::credential(&next.id, &next.scope);
                        let mut event = Vault::event(actor, Action::OAuthComplete, target.clone())
                            .detail("flow", "device")
                            .detail("provider", next.provider.clone())
                            .detail("version", next.version.to_string());
                        if no_expiry {
                            event = event.detail("expiry", "not reported");
                        }
                        let mut mutations = vec![Mutation::Put {
                            record: next.clone(),
                            precondition: Precondition::IfVersion(record.version),
                        }];
                        let mut events = vec![event];
                        if let Some(app) = app {
                            mutations.push(Mutation::PutGrant {
                                grant: Grant {
                                    credential_id: next.id.clone(),
                                    app: app.clone(),
                                    granted_by: actor.to_string(),
                                    granted_at: now,
                                    revoked_at: None,
                                    revoked_by: None,
                                },
                            });
                            events.push(
                                Vault::event(actor, Action::GrantAdd, target)
                                    .detail("app", app)
                                    .detail("via", "oauth"),
                            );
                        }
                        self.commit(
                            crate::store::Batch { mutations, events },
                            ReadStamp::UNCHECKED,
                        )
                        .await?;
                        if no_expiry {
                            self.emit(OAuthEvent::NoExpiry {
                                id: next.id.clone(),
                            });
                        }
                        let names = fields.keys().cloned().collect();
                        Ok(DeviceStatus::Done(Box::new(info(&next, names))))
                    }
                }
            })
            .await
    }

    /// Polls until the device flow ends: waits the interval between polls (growing it on
    /// `slow_down`) and stops at success, refusal or lapse.
    pub async fn oauth_device_wait(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<DeviceStatus> {
        trace::op("oauth_device_wait")
            .actor(actor)
            .id(id)
            .run(async move {
                loop {
                    match self.oauth_device_poll(actor, id).await? {
                        DeviceStatus::Pending { interval }
                        | DeviceStatus::SlowDown { interval } => {
                            tokio::time::sleep(Duration::from_secs(interval)).await;
                        }
                        done => return Ok(done),
                    }
                }
            })
            .await
    }

    /// Keeps a grown polling interval (a new version; the sealed device code is sealed
    /// again for it).
    async fn set_device_interval(&self, record: &CredentialRecord, interval: u64) -> Result<()> {
        let mut next = record.clone();
        next.metadata
            .insert(DEVICE_INTERVAL.to_string(), interval.to_string());
        let event = Vault::event(
            &Vault::oauth_service(),
            Action::Update,
            AuditTarget::credential(&next.id, &next.scope),
        )
        .detail("reason", "slow_down")
        .detail("fields", "kept");
        self.put_next_version(record, next, event).await.map(drop)
    }

    /// Ends a device flow that will give no tokens: the credential becomes `invalid`.
    async fn end_device(
        &self,
        actor: &Principal,
        record: &CredentialRecord,
        reason: &str,
    ) -> Result<()> {
        let mut next = record.clone();
        next.state = LifecycleState::Invalid;
        let event = Vault::event(
            actor,
            Action::OAuthComplete,
            AuditTarget::credential(&next.id, &next.scope),
        )
        .outcome(Outcome::Failure)
        .detail("flow", "device")
        .detail("reason", reason.to_string())
        .detail("to", "invalid");
        self.put_next_version(record, next, event).await.map(drop)
    }
}

//! Refreshing one credential, exactly once across every vault instance sharing the store: a
//! lease record claimed with a precondition, the credential re-read under it, the refresh
//! sent, and the new tokens stored in the batch that releases the lease and audits it.

use std::time::Duration;

use super::super::{encode_fields, Action, CredentialInfo, Principal, Vault, FIELD_NAMES};
use super::{has_field, is_oauth_type, reason_of, token_fields, OAuthEvent, REFRESH_LEASE_OWNER};
use crate::audit::{AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::model::{CredentialId, CredentialRecord, LifecycleState, Timestamp};
use crate::oauth::{ClientAuth, OAuthError, TokenGrant};
use crate::store::lease::Lease;
use crate::store::{Batch, Mutation, Precondition, ReadStamp};
use crate::vault::trace;

/// How long a refresh lease lasts: longer than any token request should take (the HTTP
/// client's timeout), short enough that a crashed holder does not block refreshes for long.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(60);
/// How long a failed refresh that may be retried keeps others from trying at once.
const RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshOutcome {
    /// New tokens are stored at this version.
    Refreshed {
        /// The new version.
        version: u64,
        /// When the new access token expires, if the provider said.
        expires_at: Option<Timestamp>,
    },
    /// Another instance (or task) holds the refresh lease: it is refreshing right now.
    Busy,
    /// It was no longer due when the lease was taken (someone refreshed it just before).
    NotDue,
    /// The refresh failed; the credential is usable while its access token is valid, and a
    /// later pass tries again.
    Retrying {
        /// Why (an OAuth error code or `http_503`, `unreachable`, …).
        reason: String,
    },
    /// The refresh token was refused (`invalid_grant`), or the access token ran out while
    /// the provider could not be reached: the credential is now `expired`.
    Expired {
        /// Why.
        reason: String,
    },
}

/// Why the vault refreshes, for the audit row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    /// The background refresher found it due.
    Schedule,
    /// A resolve found it inside the window.
    Resolve,
    /// Someone asked (`Vault::oauth_refresh`).
    Request,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Resolve => "resolve",
            Trigger::Request => "request",
        }
    }
}

impl Vault {
    /// Refreshes an OAuth credential now, whether or not it is due (the CLI's `oauth
    /// refresh`). Exactly one refresh runs per credential at a time across every instance;
    /// a refresh already under way elsewhere gives [`RefreshOutcome::Busy`].
    pub async fn oauth_refresh(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<RefreshOutcome> {
        trace::op("oauth_refresh")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::Refresh, id).await?;
                if !is_oauth_type(&record.handler_type) {
                    return Err(Error::invalid(
                        "credential",
                        format!(
                        "{} is a `{}` credential, not an OAuth token; only oauth2, oauth2_pkce \
                         and device_code credentials are refreshed",
                        record.describe(),
                        record.handler_type
                    ),
                    ));
                }
                if !has_field(&record, "refresh_token") {
                    return Err(Error::invalid(
                        "credential",
                        format!(
                            "{} has no refresh token (the provider gave none); log in again",
                            record.describe()
                        ),
                    ));
                }
                self.refresh_record(actor, &record.id, Trigger::Request, true)
                    .await
            })
            .await
    }

    /// The metadata of an OAuth credential as it stands (the CLI's `oauth status`).
    pub async fn oauth_status(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<CredentialInfo> {
        trace::op("oauth_status")
            .actor(actor)
            .id(id)
            .run(async move { self.get(actor, id).await })
            .await
    }

    /// Refreshes credential `id` under its lease. `force` refreshes even when it is no longer
    /// due once the lease is held (an explicit request); otherwise a credential someone just
    /// refreshed is left alone.
    pub(crate) async fn refresh_record(
        &self,
        actor: &Principal,
        id: &CredentialId,
        trigger: Trigger,
        force: bool,
    ) -> Result<RefreshOutcome> {
        let store = &self.inner.store;
        let key = Lease::key(REFRESH_LEASE_OWNER, id.as_str())?;
        // One holder per attempt: two tasks of one instance must not take each other's
        // lease for their own (a holder may renew its lease).
        let holder = self.inner.oauth.next_holder();
        let Some(lease) = self.claim_lease(&key, &holder, LEASE_TTL).await? else {
            return Ok(RefreshOutcome::Busy);
        };
        // Under the lease, what is stored now is what counts.
        let record = match store.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.release_lease(&lease).await;
                return Err(Vault::not_found(id));
            }
            Err(e) => {
                self.release_lease(&lease).await;
                return Err(e);
            }
        };
        if !force && !self.refresh_due(&record, Timestamp::now()) {
            self.release_lease(&lease).await;
            return Ok(RefreshOutcome::NotDue);
        }
        // A refresh never lifts a revocation, an admin's disable or a login in progress: it
        // renews a credential that is usable, or expired only for want of a refresh.
        let disabled = record.metadata.contains_key(super::super::DISABLED_BY);
        if disabled
            || !matches!(
                record.state,
                LifecycleState::Filled | LifecycleState::Valid | LifecycleState::Expired
            )
        {
            self.release_lease(&lease).await;
            return Err(Error::Unusable {
                what: record.describe(),
                state: if disabled {
                    "disabled".into()
                } else {
                    record.state.as_str().into()
                },
            });
        }
        let outcome = self
            .refresh_under_lease(actor, &record, &lease, trigger)
            .await;
        if let Err(e) = &outcome {
            // Nothing was sent, or nothing could be stored: the row says why; the lease is
            // kept for the back-off so that no instance tries again at once.
            let event = Vault::event(
                actor,
                Action::Refresh,
                AuditTarget::credential(&record.id, &record.scope),
            )
            .outcome(Outcome::Failure)
            .detail("trigger", trigger.as_str())
            .detail("error", format!("{:?}", e.kind()));
            let mutations = match lease.renew(Timestamp::now(), RETRY_BACKOFF) {
                Ok(renewal) => vec![renewal.mutation],
                Err(_) => vec![lease.release()],
            };
            if let Err(e) = self
                .commit(
                    Batch {
                        mutations,
                        events: vec![event],
                    },
                    ReadStamp::UNCHECKED,
                )
                .await
            {
                tracing::warn!(credential = %record.id, error = %e, "refresh failure not audited");
            }
        }
        outcome
    }

    /// Lets go of a lease whose work wrote nothing (it would lapse by itself; this only
    /// lets the next refresh start sooner).
    async fn release_lease(&self, lease: &Lease) {
        let batch = Batch {
            mutations: vec![lease.release()],
            events: vec![],
        };
        if let Err(e) = self.commit(batch, ReadStamp::UNCHECKED).await {
            tracing::debug!(error = %e, "refresh lease left to lapse");
        }
    }

    async fn refresh_under_lease(
        &self,
        actor: &Principal,
        record: &CredentialRecord,
        lease: &Lease,
        trigger: Trigger,
    ) -> Result<RefreshOutcome> {
        let (provider, spec) = self.oauth_provider(&record.provider)?;
        let client = self.oauth_client(&provider.name)?;
        let secret = self.client_secret(&client, &record.handler_type).await?;
        let old = self.open_for_change(record).await?;
        let refresh_token = old.get("refresh_token").ok_or_else(|| {
            Error::invalid(
                "credential",
                format!("{} has no refresh token; log in again", record.describe()),
            )
        })?;
        let http = self.http_for("refreshing an OAuth token")?;
        // The answer must come while the lease still holds, with time to store it.
        let left = lease.expires_at().0.saturating_sub(Timestamp::now().0) - 10_000;
        let budget = Duration::from_millis(u64::try_from(left).unwrap_or(0).max(1_000));
        let auth = ClientAuth {
            client_id: &client.client_id,
            client_secret: secret.as_ref(),
        };
        let grant = TokenGrant::RefreshToken { refresh_token };
        let request = crate::oauth::request_token(http.as_ref(), &spec, &auth, &grant);
        let sent = match tokio::time::timeout(budget, request).await {
            Ok(sent) => sent,
            Err(_) => Err(OAuthError::Transport(Error::transport(
                "oauth server",
                "no answer before the refresh lease ran out",
            ))),
        };
        let now = Timestamp::now();
        let target = AuditTarget::credential(&record.id, &record.scope);
        let event = |outcome: Outcome| {
            Vault::event(actor, Action::Refresh, target.clone())
                .outcome(outcome)
                .detail("trigger", trigger.as_str())
        };
        match sent {
            Ok(tokens) => {
                let no_expiry = tokens.expires_in.is_none();
                let stored = token_fields(Some(&old), tokens, &client.client_id, now);
                self.minted_fields(&stored.fields);
                let expires_at = stored.expires_at;
                let audit = |version: u64| {
                    let audit = event(Outcome::Success).detail("version", version.to_string());
                    if no_expiry {
                        audit.detail("expiry", "not reported")
                    } else {
                        audit
                    }
                };
                let next = self.with_tokens(record, &stored, now).await?;
                let next = match self
                    .store_refresh(record, next.clone(), lease, audit(next.version))
                    .await
                {
                    Ok(()) => next,
                    // The credential changed under the lease (its metadata, a rename) after
                    // the provider had rotated the token: the new tokens go onto what is
                    // stored now, once, unless it may no longer be refreshed.
                    Err(e) if Lease::lost_race(&e) => {
                        let latest = match self.inner.store.get(&record.id).await? {
                            Some(latest)
                                if latest.version != record.version
                                    && !latest.metadata.contains_key(super::super::DISABLED_BY)
                                    && matches!(
                                        latest.state,
                                        LifecycleState::Filled
                                            | LifecycleState::Valid
                                            | LifecycleState::Expired
                                    ) =>
                            {
                                latest
                            }
                            _ => return Err(e),
                        };
                        let next = self.with_tokens(&latest, &stored, now).await?;
                        self.store_refresh(&latest, next.clone(), lease, audit(next.version))
                            .await?;
                        next
                    }
                    Err(e) => return Err(e),
                };
                if no_expiry {
                    tracing::warn!(
                        credential = %record.id,
                        "the provider refreshed the token without expires_in; it cannot be \
                         refreshed ahead of time"
                    );
                    self.emit(OAuthEvent::NoExpiry {
                        id: record.id.clone(),
                    });
                }
                self.emit(OAuthEvent::Refreshed {
                    id: record.id.clone(),
                    version: next.version,
                    expires_at,
                });
                Ok(RefreshOutcome::Refreshed {
                    version: next.version,
                    expires_at,
                })
            }
            Err(e) => {
                self.refresh_failed(record, lease, e, event(Outcome::Failure), now)
                    .await
            }
        }
    }

    /// A refresh that failed: `invalid_grant` (the refresh token is dead) or a token that
    /// has run out makes the credential `expired`; anything else is retried while the
    /// access token lasts (the lease is kept a while, so that no instance retries at once).
    async fn refresh_failed(
        &self,
        record: &CredentialRecord,
        lease: &Lease,
        error: OAuthError,
        event: AuditEvent,
        now: Timestamp,
    ) -> Result<RefreshOutcome> {
        let reason = reason_of(&error);
        let dead = error.code() == Some("invalid_grant");
        let ran_out = record.expires_at.is_some_and(|at| at <= now);
        if dead || ran_out {
            let mut next = record.clone();
            next.state = LifecycleState::Expired;
            next.version += 1;
            next.updated_at = now;
            self.reseal(record, &mut next).await?;
            let audit = event
                .detail("reason", reason.clone())
                .detail("to", "expired")
                .detail("version", next.version.to_string());
            self.store_refresh(record, next, lease, audit).await?;
            tracing::warn!(credential = %record.id, %reason, "OAuth credential expired");
            self.emit(OAuthEvent::Expired {
                id: record.id.clone(),
            });
            return Ok(RefreshOutcome::Expired { reason });
        }
        let retrying = error.is_retryable();
        // Keep the lease for the back-off, so that no instance (and no resolve) hammers a
        // failing provider; the next pass after it tries again.
        let mutation = lease.renew(now, RETRY_BACKOFF)?.mutation;
        let audit = event
            .detail("reason", reason.clone())
            .detail("retry", if retrying { "yes" } else { "no" });
        self.commit(
            Batch {
                mutations: vec![mutation],
                events: vec![audit],
            },
            ReadStamp::UNCHECKED,
        )
        .await?;
        tracing::warn!(credential = %record.id, %reason, retrying, "OAuth refresh failed");
        self.emit(OAuthEvent::RefreshFailed {
            id: record.id.clone(),
            reason: reason.clone(),
            retrying,
        });
        Ok(RefreshOutcome::Retrying { reason })
    }

    /// `base`'s next version holding the refreshed tokens: `valid`, the new expiry, the
    /// provider's token type and scope, sealed afresh.
    async fn with_tokens(
        &self,
        base: &CredentialRecord,
        stored: &super::StoredTokens,
        now: Timestamp,
    ) -> Result<CredentialRecord> {
        let mut next = base.clone();
        for (key, value) in &stored.metadata {
            next.metadata.insert(key.to_string(), value.clone());
        }
        next.metadata.insert(
            FIELD_NAMES.to_string(),
            super::super::credentials::field_names_text(&stored.fields),
        );
        next.state = LifecycleState::Valid;
        next.expires_at = stored.expires_at;
        next.version = base.version + 1;
        next.updated_at = now;
        let plain = encode_fields(&stored.fields)?;
        self.seal_into(&mut next, &plain).await?;
        Ok(next)
    }

    /// Stores a refreshed (or expired) credential, releases the lease and commits the audit
    /// row, all in one batch: if the lease was lost meanwhile, nothing is written.
    async fn store_refresh(
        &self,
        before: &CredentialRecord,
        next: CredentialRecord,
        lease: &Lease,
        event: AuditEvent,
    ) -> Result<()> {
        self.commit(
            Batch {
                mutations: vec![
                    Mutation::Put {
                        record: next,
                        precondition: Precondition::IfVersion(before.version),
                    },
                    lease.release(),
                ],
                events: vec![event],
            },
            ReadStamp::UNCHECKED,
        )
        .await
        .map(drop)
    }

    /// The on-demand refresh of a resolve that found `record` inside the refresh window.
    ///
    /// A token that is still good for a while ([`SYNC_MARGIN`]) is handed out as it is and
    /// refreshed in the background (one task per credential and instance at a time), so a
    /// resolve never waits for the provider, and a provider whose tokens live no longer
    /// than the window is not asked again by every resolve. A token that has run out (or
    /// nearly) is refreshed first; a refresh under way elsewhere is waited for, a little.
    /// Returns true when the caller should read the credential again; false to go on with
    /// the token read (the state then decides).
    ///
    /// The refresh itself runs in a task of its own, so a caller that stops waiting (a
    /// request timeout) never cancels a refresh the provider has already answered.
    pub(crate) async fn refresh_for_resolve(&self, record: &CredentialRecord) -> bool {
        // Nothing to try without a client or an HTTP client: the state decides.
        if self.inner.http.is_none() || self.oauth_client(&record.provider).is_err() {
            return false;
        }
        let urgent = |now: Timestamp| {
            record
                .expires_at
                .is_some_and(|at| at.0.saturating_sub(now.0) < margin_ms())
        };
        if !urgent(Timestamp::now()) {
            self.refresh_in_background(record.id.clone());
            return false;
        }
        for _ in 0..100 {
            match self.refresh_detached(&record.id, Trigger::Resolve).await {
                Ok(RefreshOutcome::Refreshed { .. }) | Ok(RefreshOutcome::NotDue) => return true,
                Ok(RefreshOutcome::Expired { .. }) => return true,
                Ok(RefreshOutcome::Busy) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(Some(now)) = self.inner.store.get(&record.id).await {
                        if now.version != record.version {
                            return true;
                        }
                    }
                }
                Ok(RefreshOutcome::Retrying { .. }) => return false,
                Err(e) => {
                    tracing::warn!(credential = %record.id, error = %e, "on-demand refresh failed");
                    return false;
                }
            }
        }
        false
    }

    /// [`Vault::refresh_record`] as the OAuth service, in a task of its own: dropping the
    /// caller does not cancel it.
    pub(crate) async fn refresh_detached(
        &self,
        id: &CredentialId,
        trigger: Trigger,
    ) -> Result<RefreshOutcome> {
        let vault = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            vault
                .refresh_record(&Vault::oauth_service(), &id, trigger, false)
                .await
        })
        .await
        .map_err(|e| Error::config(format!("the refresh task ended early: {e}")))?
    }

    /// Starts a background refresh of `id` unless this instance has one running already.
    fn refresh_in_background(&self, id: CredentialId) {
        {
            let mut running = self
                .inner
                .oauth
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !running.insert(id.clone()) {
                return;
            }
        }
        let vault = self.clone();
        tokio::spawn(async move {
            let outcome = vault
                .refresh_record(&Vault::oauth_service(), &id, Trigger::Resolve, false)
                .await;
            if let Err(e) = outcome {
                tracing::warn!(credential = %id, error = %e, "background refresh failed");
            }
            vault
                .inner
                .oauth
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }
}

/// A token with less than this left is refreshed before a resolve hands it out; one with
/// more is handed out and refreshed in the background.
pub const SYNC_MARGIN: Duration = Duration::from_secs(30);

fn margin_ms() -> i64 {
    i64::try_from(SYNC_MARGIN.as_millis()).unwrap_or(i64::MAX)
}

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
    }

    /// The metadata of an OAuth credential as it stands (the CLI's `oauth status`).
    pub async fn oauth_status(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<CredentialInfo> {
        self.get(actor, id).await
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
        let now = Timestamp::now();
        let current = store.record(&key).await?;
        let Some(claim) = Lease::claim(&key, current.as_ref(), &holder, now, LEASE_TTL)? else {
            return Ok(RefreshOutcome::Busy);
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
                Ok(RefreshOutcome::Busy)
            } else {
                Err(e)
            };
        }
        let lease = claim.lease;
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
        let outcome = self
            .refresh_under_lease(actor, &record, &lease, trigger)
            .await;
        if outcome.is_err() {
            self.release_lease(&lease).await;
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
        let sent = crate::oauth::request_token(
            http.as_ref(),
            &spec,
            &ClientAuth {
                client_id: &client.client_id,
                client_secret: secret.as_ref(),
            },
            &TokenGrant::RefreshToken { refresh_token },
        )
        .await;
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
                let (fields, expires_at) = (stored.fields, stored.expires_at);
                let mut next = record.clone();
                for (key, value) in stored.metadata {
                    next.metadata.insert(key.to_string(), value);
                }
                next.metadata.insert(
                    FIELD_NAMES.to_string(),
                    super::super::credentials::field_names_text(&fields),
                );
                next.state = LifecycleState::Valid;
                next.expires_at = expires_at;
                next.version += 1;
                next.updated_at = now;
                let plain = encode_fields(&fields)?;
                self.seal_into(&mut next, &plain).await?;
                let mut audit = event(Outcome::Success).detail("version", next.version.to_string());
                if no_expiry {
                    audit = audit.detail("expiry", "not reported");
                }
                self.store_refresh(record, next.clone(), lease, audit)
                    .await?;
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
        // Keep the lease for the back-off, so that no instance hammers a failing provider;
        // a failure that retrying cannot mend lets it go.
        let mutation = if retrying {
            lease.renew(now, RETRY_BACKOFF)?.mutation
        } else {
            lease.release()
        };
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
    /// Returns true when the caller should read the credential again (it was refreshed, or
    /// another instance's refresh of an already expired token has ended); false to go on
    /// with the token read (still valid, or the refresh failed and the state decides).
    pub(crate) async fn refresh_for_resolve(&self, record: &CredentialRecord) -> bool {
        // Nothing to try without a client or an HTTP client: the state decides.
        if self.inner.http.is_none() || self.oauth_client(&record.provider).is_err() {
            return false;
        }
        let service = Vault::oauth_service();
        let expired = || record.expires_at.is_some_and(|at| at <= Timestamp::now());
        // A token that has run out waits (a little) for a refresh under way elsewhere.
        for _ in 0..100 {
            match self
                .refresh_record(&service, &record.id, Trigger::Resolve, false)
                .await
            {
                Ok(RefreshOutcome::Refreshed { .. }) | Ok(RefreshOutcome::NotDue) => return true,
                Ok(RefreshOutcome::Expired { .. }) => return true,
                Ok(RefreshOutcome::Busy) if expired() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(Some(now)) = self.inner.store.get(&record.id).await {
                        if now.version != record.version {
                            return true;
                        }
                    }
                }
                Ok(RefreshOutcome::Busy) | Ok(RefreshOutcome::Retrying { .. }) => return false,
                Err(e) => {
                    tracing::warn!(credential = %record.id, error = %e, "on-demand refresh failed");
                    return false;
                }
            }
        }
        false
    }
}

//! Revocation (RFC 7009): the credential is `invalid` (or deleted) at once, whatever the
//! provider answers; the provider's revocation endpoint is then asked, refresh token first,
//! best effort, and its answer audited.

use super::super::{Action, CredentialInfo, Principal, Vault};
use super::{is_oauth_type, OAuthEvent};
use crate::audit::{AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::handlers::Fields;
use crate::model::{CredentialId, CredentialRecord, LifecycleState};
use crate::oauth::{ClientAuth, TokenKind};
use crate::store::{Batch, ReadStamp};
use crate::vault::trace;

impl Vault {
    /// Revokes an OAuth credential: it becomes `invalid` at once (audited), then its tokens
    /// are revoked at the provider when it has a revocation endpoint (refresh token first),
    /// best effort; what the provider answered is audited (`credential.revoke`).
    pub async fn oauth_revoke(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<CredentialInfo> {
        trace::op("oauth_revoke")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::Revoke, id).await?;
                if !is_oauth_type(&record.handler_type) {
                    return Err(Error::invalid(
                        "credential",
                        format!(
                        "{} is a `{}` credential, not an OAuth token; there is nothing to revoke \
                         at a provider (delete it or set it invalid)",
                        record.describe(),
                        record.handler_type
                    ),
                    ));
                }
                let fields = self.open_for_change(&record).await?;
                let mut next = record.clone();
                next.state = LifecycleState::Invalid;
                let event = Vault::event(
                    actor,
                    Action::SetState,
                    AuditTarget::credential(&next.id, &next.scope),
                )
                .detail("from", record.state.as_str())
                .detail("to", "invalid")
                .detail("reason", "revoked");
                let next = self.put_next_version(&record, next, event).await?;
                self.revoke_at_provider(actor, &record, &fields).await;
                self.emit(OAuthEvent::Revoked {
                    id: record.id.clone(),
                });
                Ok(super::super::info(&next, Vec::new()))
            })
            .await
    }

    /// Opens an OAuth credential's tokens before it is deleted, so that they can be revoked
    /// once the delete is durable. `None` for anything else (or when it does not open: the
    /// delete goes ahead).
    pub(crate) async fn tokens_to_revoke(&self, record: &CredentialRecord) -> Option<Fields> {
        if !is_oauth_type(&record.handler_type) || record.state == LifecycleState::Pending {
            return None;
        }
        let spec = self.provider(&record.provider).ok()?.oauth.clone()?;
        if spec.revocation_url.is_none() {
            // Nothing to send, but the delete still says so in its `credential.revoke` row.
            return Some(Fields::new());
        }
        self.open_for_change(record).await.ok()
    }

    /// Asks the provider to revoke the tokens in `fields` (refresh token first: revoking it
    /// ends the access tokens of its grant too, RFC 7009 section 2.1), best effort; each
    /// answer is audited. Nothing is returned: the credential is already unusable here.
    pub(crate) async fn revoke_at_provider(
        &self,
        actor: &Principal,
        record: &CredentialRecord,
        fields: &Fields,
    ) {
        let target = AuditTarget::credential(&record.id, &record.scope);
        let result = self.send_revocations(record, fields).await;
        let event = match &result {
            Ok(None) => Vault::event(actor, Action::Revoke, target)
                .outcome(Outcome::Failure)
                .detail("reason", "no revocation endpoint"),
            Ok(Some(sent)) if sent.revoked.is_empty() && sent.failed.is_empty() => {
                Vault::event(actor, Action::Revoke, target)
                    .outcome(Outcome::Failure)
                    .detail("reason", "no tokens to revoke")
            }
            Ok(Some(sent)) if sent.failed.is_empty() => {
                Vault::event(actor, Action::Revoke, target).detail("tokens", sent.revoked.join(","))
            }
            Ok(Some(sent)) => Vault::event(actor, Action::Revoke, target)
                .outcome(Outcome::Failure)
                .detail("tokens", sent.revoked.join(","))
                .detail("reason", sent.failed.join(",")),
            Err(reason) => Vault::event(actor, Action::Revoke, target)
                .outcome(Outcome::Failure)
                .detail("reason", reason.clone()),
        };
        if let Err(e) = self
            .commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await
        {
            tracing::warn!(credential = %record.id, error = %e, "revocation not audited");
        }
    }

    /// Sends the revocation requests; the token kinds revoked, or why not.
    async fn send_revocations(
        &self,
        record: &CredentialRecord,
        fields: &Fields,
    ) -> std::result::Result<Option<Revocations>, String> {
        let (provider, spec) = self
            .oauth_provider(&record.provider)
            .map_err(|_| "no [oauth] table".to_string())?;
        if spec.revocation_url.is_none() {
            return Ok(None);
        }
        let client = self
            .oauth_client(&provider.name)
            .map_err(|_| "no client registered".to_string())?;
        let secret = self
            .client_secret(&client, &record.handler_type)
            .await
            .map_err(|_| "client secret unavailable".to_string())?;
        let http = self
            .http_for("revoking an OAuth token")
            .map_err(|_| "no HTTP client".to_string())?;
        let auth = ClientAuth {
            client_id: &client.client_id,
            client_secret: secret.as_ref(),
        };
        // Each token on its own: a failed refresh-token revocation still sends the access
        // token's.
        let mut sent = Revocations::default();
        for (field, kind) in [
            ("refresh_token", TokenKind::RefreshToken),
            ("access_token", TokenKind::AccessToken),
        ] {
            let Some(token) = fields.get(field) else {
                continue;
            };
            match crate::oauth::revoke(http.as_ref(), &spec, &auth, token, kind).await {
                Ok(()) => sent.revoked.push(field.to_string()),
                Err(e) => sent
                    .failed
                    .push(format!("{field}: {}", super::reason_of(&e))),
            }
        }
        Ok(Some(sent))
    }
}

/// What the revocation requests came to, per token kind.
#[derive(Default)]
struct Revocations {
    revoked: Vec<String>,
    failed: Vec<String>,
}

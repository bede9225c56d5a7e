//! A [`TokenSource`] backed by the vault: the current token is a resolve of one credential
//! reference (policy-checked and audited like any resolve, refreshed on demand when it is
//! inside the refresh window), and a change is every refresh of that credential the vault
//! reports ([`Vault::oauth_events`]).

use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::{broadcast, watch};

use super::TokenSource;
use crate::error::{Error, Result};
use crate::vault::{CredentialRef, OAuthEvent, Principal, ResolveContext, Vault};

/// How often a [`VaultTokenSource`] reads its credential's version, to hear of refreshes
/// made by other vault instances sharing the store.
pub const VERSION_POLL: std::time::Duration = std::time::Duration::from_secs(15);

/// The token of one credential, as `actor` resolves it: an OAuth credential's
/// `access_token`, or any other field. Dropping it stops its listener.
pub struct VaultTokenSource {
    vault: Vault,
    actor: Principal,
    context: ResolveContext,
    reference: CredentialRef,
    field: String,
    changes: watch::Receiver<u64>,
    listener: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for VaultTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTokenSource")
            .field("actor", &self.actor.to_string())
            .field("reference", &self.reference)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultTokenSource {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl VaultTokenSource {
    /// The field `field` (`access_token` for OAuth credentials, `token` for `mcp_server` /
    /// `mcp_http` ones) of the credential `reference` resolves to for `actor` (an app
    /// runtime in its own session). Resolves once to find the credential (audited), and
    /// listens for its refreshes; call on a tokio runtime.
    pub async fn new(
        vault: &Vault,
        actor: &Principal,
        reference: CredentialRef,
        field: impl Into<String>,
    ) -> Result<VaultTokenSource> {
        let context = ResolveContext::of(actor).ok_or_else(|| {
            Error::invalid(
                "principal",
                "a token source resolves as an app runtime in its own session (runtime:APP:USER)",
            )
        })?;
        let field = field.into();
        let first = vault.resolve(actor, &reference, &context).await?;
        if !first.fields.contains_key(&field) {
            return Err(Error::invalid(
                "field",
                format!(
                    "credential `{}` has no field `{field}`; its fields are {}",
                    reference.name,
                    first.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let id = first.info.id.clone();
        let (tx, changes) = watch::channel(0u64);
        let mut events = vault.oauth_events();
        let store = vault.store().clone();
        let mut seen = first.info.version;
        let listener = tokio::spawn(async move {
            // Another vault instance on the same store refreshes without telling this one:
            // the credential's version (read from its metadata, nothing decrypted) is
            // checked every `VERSION_POLL` as well.
            let mut poll = tokio::time::interval(VERSION_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        // A version already seen (the poll may read it first) changes
                        // nothing: one refresh, one restart.
                        Ok(OAuthEvent::Refreshed { id: refreshed, version, .. })
                            if refreshed == id && version > seen =>
                        {
                            seen = version;
                            tx.send_modify(|n| *n += 1);
                        }
                        Ok(_) => {}
                        // Missed events may have held a refresh: a spurious restart is
                        // harmless, a missed one is not.
                        Err(broadcast::error::RecvError::Lagged(_)) => tx.send_modify(|n| *n += 1),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = poll.tick() => {
                        if let Ok(Some(now)) = store.get(&id).await {
                            if now.version > seen {
                                seen = now.version;
                                tx.send_modify(|n| *n += 1);
                            }
                        }
                    }
                }
            }
        });
        Ok(VaultTokenSource {
            vault: vault.clone(),
            actor: actor.clone(),
            context,
            reference,
            field,
            changes,
            listener,
        })
    }
}

#[async_trait]
impl TokenSource for VaultTokenSource {
    async fn token(&self) -> Result<SecretString> {
        let resolved = self
            .vault
            .resolve(&self.actor, &self.reference, &self.context)
            .await?;
        resolved.fields.get(&self.field).cloned().ok_or_else(|| {
            Error::invalid(
                "field",
                format!(
                    "credential `{}` has no field `{}`",
                    self.reference.name, self.field
                ),
            )
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

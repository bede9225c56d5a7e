//! Master keys through the vault: re-wrapping every data key onto a new master key is an
//! action like any other, decided by the policy ([`Action::Rewrap`]) and audited.

use super::{Action, Principal, Vault};
use crate::audit::AuditTarget;
use crate::crypto::{KeyRing, RewrapOptions, RewrapReport};
use crate::error::Result;
use crate::store::CommitReceipt;

impl Vault {
    /// Decides `action` on no credential in particular ([`crate::vault::Relation::NoScope`]:
    /// verifying the audit chain, re-wrapping the keys) for `actor`; a denial is audited
    /// before the error is returned. For a host that checks before it prepares the work
    /// (the CLI, before it opens or creates the new key of a rotation).
    pub async fn authorize_unscoped(&self, actor: &Principal, action: Action) -> Result<()> {
        let what = match action {
            Action::AuditVerify => "the audit chain",
            Action::Rewrap => "the master keys",
            _ => "the vault",
        };
        self.authorize(actor, action, None, AuditTarget::none(), what)
            .await
    }

    /// Moves every stored data key onto `ring`'s active master key ([`KeyRing::rewrap`]:
    /// resumable atomic batches, payloads untouched), as `actor`. The policy must allow
    /// [`Action::Rewrap`] (system admins); a denial is audited and nothing is touched. Every
    /// batch's `keys.rewrap` row names `actor`, whatever `options.actor` says.
    ///
    /// `ring` holds the new key as its active key and, as retired keys, every key the stored
    /// blobs may name (the vault's own master key included): the vault's ring is not added.
    pub async fn rewrap_keys(
        &self,
        actor: &Principal,
        ring: &KeyRing,
        options: RewrapOptions,
    ) -> Result<RewrapReport> {
        self.authorize_unscoped(actor, Action::Rewrap).await?;
        let options = RewrapOptions {
            actor: actor.to_string(),
            ..options
        };
        let report = ring.rewrap(self.store().as_ref(), &options).await;
        // The key ring committed its batches itself: give the audit chain the head they
        // left, so a checkpoint covers them (after an error too: some batches may be in).
        match self.store().chain_head().await {
            Ok(head) => {
                self.checkpoint_after(&CommitReceipt { seqs: None, head })
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "audit checkpoint not made"),
        }
        report
    }
}

//! Vault-wide operations: re-wrapping every data key onto a new master key and verifying
//! the audit chain are actions like any other, decided by the policy ([`Action::Rewrap`],
//! [`Action::AuditVerify`]) and audited.

use std::fmt;
use std::sync::Arc;

use super::*;
use crate::audit::{AuditEvent, AuditTarget, Outcome};
use crate::crypto::KeyRing;
use crate::error::{Error, Result};
use crate::store::{Batch, ListFilter, Mutation, Precondition, ReadStamp};

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

    /// Moves every stored data key onto `ring`'s active master key, as `actor`, in atomic
    /// batches of `options.batch_size` records, each with one `keys.rewrap` audit row naming
    /// `actor`; payloads are untouched ([`KeyRing::rewrap_blob`] re-wraps one data key). The
    /// policy must allow [`Action::Rewrap`] (system admins); a denial is audited and nothing
    /// is touched. Safe to re-run after a crash or an error: it picks up whatever still
    /// names another key. A record updated meanwhile is re-read on the next pass (its new
    /// version is sealed with the vault's key).
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
        let store = self.store();
        let batch_size = options.batch_size.max(1);
        let active = ring.active().key_id().to_string();
        let mut report = RewrapReport::default();
        let mut conflicts_in_a_row = 0;
        loop {
            if options.max_batches.is_some_and(|max| report.batches >= max) {
                break;
            }
            let filter = ListFilter {
                key_id_not: Some(active.clone()),
                limit: Some(batch_size),
                ..ListFilter::default()
            };
            let records = store.list(&filter).await?;
            if records.is_empty() {
                report.complete = true;
                break;
            }
            let mut mutations = Vec::with_capacity(records.len());
            let mut from_keys: Vec<String> = Vec::new();
            for mut record in records {
                let Some(sealed) = ring
                    .rewrap_blob(&record.sealed, &self.identity_of(&record))
                    .await?
                else {
                    continue;
                };
                if !from_keys.contains(&record.key_id) {
                    from_keys.push(record.key_id.clone());
                }
                let expected = record.version;
                record.sealed = sealed.bytes;
                record.key_id = sealed.key_id;
                mutations.push(Mutation::Put {
                    record,
                    precondition: Precondition::IfVersion(expected),
                });
            }
            let count = mutations.len();
            from_keys.sort();
            let event = AuditEvent::new(actor.to_string(), Action::Rewrap, AuditTarget::none())
                .outcome(Outcome::Success)
                .detail("records", count.to_string())
                .detail("from_keys", from_keys.join(","))
                .detail("to_key", active.clone());
            let batch = Batch {
                mutations,
                events: vec![event],
            };
            match self.commit(batch, ReadStamp::UNCHECKED).await {
                Ok(_) => {
                    report.rewrapped += count as u64;
                    report.batches += 1;
                    conflicts_in_a_row = 0;
                }
                // Someone updated one of these records meanwhile; its new version is sealed
                // with the vault's key, so the next listing no longer returns it.
                Err(Error::VersionConflict { .. }) | Err(Error::NotFound { .. }) => {
                    report.conflicts += 1;
                    conflicts_in_a_row += 1;
                    if conflicts_in_a_row >= MAX_CONFLICTS_IN_A_ROW {
                        return Err(Error::store(
                            crate::StoreErrorKind::Busy,
                            format!(
                                "re-wrapping gave up after {MAX_CONFLICTS_IN_A_ROW} batches in a row \
                                 conflicted with concurrent updates; run it again (it resumes), \
                                 or with a smaller batch size"
                            ),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
            if let Some(progress) = &options.progress {
                progress(&report);
            }
        }
        Ok(report)
    }
}

/// Consecutive conflicting batches after which [`Vault::rewrap_keys`] stops with an error.
const MAX_CONFLICTS_IN_A_ROW: usize = 100;

/// A callback that receives the running totals after each re-wrap batch.
pub type RewrapProgress = Arc<dyn Fn(&RewrapReport) + Send + Sync>;

/// Settings for [`Vault::rewrap_keys`].
#[derive(Clone)]
pub struct RewrapOptions {
    /// Records per atomic batch (default 500).
    pub batch_size: usize,
    /// Stop after this many batches (for stepwise operation); `None` runs to the end.
    pub max_batches: Option<usize>,
    /// Called after each batch with the running totals (drives a progress bar).
    pub progress: Option<RewrapProgress>,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        RewrapOptions {
            batch_size: 500,
            max_batches: None,
            progress: None,
        }
    }
}

impl fmt::Debug for RewrapOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RewrapOptions")
            .field("batch_size", &self.batch_size)
            .field("max_batches", &self.max_batches)
            .finish_non_exhaustive()
    }
}

/// What a [`Vault::rewrap_keys`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Records moved onto the active key.
    pub rewrapped: u64,
    /// Batches committed.
    pub batches: usize,
    /// Batches dropped because a record changed underneath (they are retried).
    pub conflicts: usize,
    /// True when nothing is left that names another key.
    pub complete: bool,
}

impl Vault {
    /// Verifies the audit chain (system admins and viewers) against a checkpoint the host
    /// kept (the newest one, from the sink given to [`VaultBuilder::checkpoints`]): besides
    /// what [`Vault::verify_audit`] finds, rows cut from the tail up to the checkpoint, an
    /// emptied chain, and rows rewritten with their hashes recomputed are reported, and a
    /// forged checkpoint too. The checkpoint's master key must be in the key ring (active
    /// or retired).
    pub async fn verify_audit_with(
        &self,
        actor: &Principal,
        checkpoint: &Checkpoint,
    ) -> Result<VerifyReport> {
        self.authorize_unscoped(actor, Action::AuditVerify).await?;
        self.inner
            .audit
            .verify_against(std::slice::from_ref(checkpoint))
            .await
    }

    /// Verifies the audit chain (system admins and viewers). The chain alone cannot show a
    /// cut tail or a rewrite with recomputed hashes: [`Vault::verify_audit_with`] can.
    pub async fn verify_audit(&self, actor: &Principal) -> Result<VerifyReport> {
        self.authorize(
            actor,
            Action::AuditVerify,
            None,
            AuditTarget::none(),
            "the audit chain",
        )
        .await?;
        self.inner.audit.verify().await
    }
}

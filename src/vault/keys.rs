//! Vault-wide operations: re-wrapping every data key onto a new master key, sealing every
//! credential afresh, and verifying the audit chain are actions like any other, decided by
//! the policy ([`Action::Rewrap`], [`Action::Reseal`], [`Action::AuditVerify`]) and audited.

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
            Action::Reseal => "every credential's sealed fields",
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
        trace::op("rewrap_keys").actor(actor).run(async move {
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
        })
        .await
    }
}

/// Consecutive conflicting batches after which [`Vault::rewrap_keys`] (or
/// [`Vault::reseal_credentials`]) stops with an error.
const MAX_CONFLICTS_IN_A_ROW: usize = 100;

impl Vault {
    /// Opens every selected credential blob and seals it again for the same credential
    /// version — a fresh data key and nonce, under the vault's active master key, in the
    /// current format, bound to the vault's namespace and the record's columns — as `actor`,
    /// in atomic batches of `options.batch_size` records, each with one `keys.reseal` audit
    /// row. Where re-wrapping ([`Vault::rewrap_keys`]) moves data keys and never touches a
    /// payload, this replaces the data keys themselves: the way version-1 records become
    /// version 2 ([`ResealSelection::OlderFormat`], the default), and the answer to a data
    /// key that may have leaked ([`ResealSelection::All`]).
    ///
    /// The policy must allow [`Action::Reseal`] (system admins); a denial is audited and
    /// nothing is touched. Nothing leaves the vault: the plaintext of each blob is sealed
    /// again in place. Versions do not change, so a record updated meanwhile makes its batch
    /// conflict, and the batch is tried again (the update sealed that record afresh anyway).
    ///
    /// Resumable: `OlderFormat` finds on every run whatever is still older; `All` goes
    /// through the credentials in id order from `options.after`, and the report's
    /// `next_after` is where a run stopped (pass it back as `after` to go on). A blob that
    /// does not open (tampered, or bound to columns that were edited) is left as it is and
    /// named in the report; a master key the ring does not hold stops the run with
    /// [`Error::KeyUnavailable`].
    pub async fn reseal_credentials(
        &self,
        actor: &Principal,
        options: ResealOptions,
    ) -> Result<ResealReport> {
        trace::op("reseal_credentials").actor(actor).run(async move {
            self.authorize_unscoped(actor, Action::Reseal).await?;
            let store = self.store();
            let batch_size = options.batch_size.max(1);
            let to_key = self.keys().active().key_id().to_string();
            let mut report = ResealReport {
                next_after: options.after.clone(),
                ..ResealReport::default()
            };
            let mut conflicts_in_a_row = 0;
            loop {
                if options.max_batches.is_some_and(|max| report.batches >= max) {
                    break;
                }
                let mut mutations = Vec::with_capacity(batch_size);
                let mut cursor = report.next_after.clone();
                let mut exhausted = false;
                let mut unopenable = Vec::new();
                'fill: while mutations.len() < batch_size {
                    let page = store
                        .list(&ListFilter {
                            after_id: cursor.clone(),
                            limit: Some(batch_size),
                            ..ListFilter::default()
                        })
                        .await?;
                    if page.is_empty() {
                        exhausted = true;
                        break;
                    }
                    for record in page {
                        cursor = Some(record.id.clone());
                        if !options.selection.wants(&record) {
                            continue;
                        }
                        let mut fresh = record.clone();
                        match self.reseal(&record, &mut fresh).await {
                            Ok(()) => {}
                            Err(Error::DecryptFailed { .. } | Error::Corrupt { .. }) => {
                                unopenable.push(record.id.clone());
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                        mutations.push(Mutation::Put {
                            record: fresh,
                            precondition: Precondition::IfVersion(record.version),
                        });
                        if mutations.len() == batch_size {
                            break 'fill;
                        }
                    }
                }
                if mutations.is_empty() {
                    // The filling loop ends with a full batch or at the end of the store.
                    report.next_after = cursor;
                    merge_unopenable(&mut report, unopenable);
                    report.complete = exhausted;
                    break;
                }
                let count = mutations.len();
                let event = AuditEvent::new(actor.to_string(), Action::Reseal, AuditTarget::none())
                    .outcome(Outcome::Success)
                    .detail("records", count.to_string())
                    .detail("selection", options.selection.as_str())
                    .detail("to_key", to_key.clone());
                let batch = Batch {
                    mutations,
                    events: vec![event],
                };
                match self.commit(batch, ReadStamp::UNCHECKED).await {
                    Ok(_) => {
                        report.resealed += count as u64;
                        report.batches += 1;
                        report.next_after = cursor;
                        merge_unopenable(&mut report, unopenable);
                        conflicts_in_a_row = 0;
                        if exhausted {
                            report.complete = true;
                            break;
                        }
                    }
                    // Someone changed one of these records meanwhile: its update sealed it
                    // afresh; the same range is tried again from the same cursor.
                    Err(Error::VersionConflict { .. }) | Err(Error::NotFound { .. }) => {
                        report.conflicts += 1;
                        conflicts_in_a_row += 1;
                        if conflicts_in_a_row >= MAX_CONFLICTS_IN_A_ROW {
                            return Err(Error::store(
                                crate::StoreErrorKind::Busy,
                                format!(
                                    "re-sealing gave up after {MAX_CONFLICTS_IN_A_ROW} batches in a \
                                     row conflicted with concurrent updates; run it again (it \
                                     resumes), or with a smaller batch size"
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
        })
        .await
    }
}

fn merge_unopenable(report: &mut ResealReport, ids: Vec<CredentialId>) {
    for id in ids {
        if !report.unopenable.contains(&id) {
            report.unopenable.push(id);
        }
    }
}

/// Which credentials [`Vault::reseal_credentials`] seals again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResealSelection {
    /// Those whose blob is of an older format version than the one this build writes
    /// (version-1 blobs, today). A rerun finds whatever is left.
    #[default]
    OlderFormat,
    /// Every credential (new data keys for all, after a data key may have leaked).
    All,
}

impl ResealSelection {
    fn wants(self, record: &CredentialRecord) -> bool {
        match self {
            ResealSelection::OlderFormat => record
                .sealed
                .first()
                .is_some_and(|&v| v < crate::crypto::envelope::FORMAT_VERSION),
            ResealSelection::All => true,
        }
    }

    /// The name written into the audit rows (`older_format`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResealSelection::OlderFormat => "older_format",
            ResealSelection::All => "all",
        }
    }
}

/// A callback that receives the running totals after each re-seal batch.
pub type ResealProgress = Arc<dyn Fn(&ResealReport) + Send + Sync>;

/// Settings for [`Vault::reseal_credentials`].
#[derive(Clone)]
pub struct ResealOptions {
    /// Which credentials (default: those of an older format).
    pub selection: ResealSelection,
    /// Records per atomic batch (default 500).
    pub batch_size: usize,
    /// Stop after this many batches (for stepwise operation); `None` runs to the end.
    pub max_batches: Option<usize>,
    /// Start after this credential id (a previous report's `next_after`).
    pub after: Option<CredentialId>,
    /// Called after each batch with the running totals (drives a progress bar).
    pub progress: Option<ResealProgress>,
}

impl Default for ResealOptions {
    fn default() -> Self {
        ResealOptions {
            selection: ResealSelection::default(),
            batch_size: 500,
            max_batches: None,
            after: None,
            progress: None,
        }
    }
}

impl fmt::Debug for ResealOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResealOptions")
            .field("selection", &self.selection)
            .field("batch_size", &self.batch_size)
            .field("max_batches", &self.max_batches)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// What a [`Vault::reseal_credentials`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResealReport {
    /// Records sealed afresh.
    pub resealed: u64,
    /// Batches committed.
    pub batches: usize,
    /// Batches dropped because a record changed underneath (they are retried).
    pub conflicts: usize,
    /// Credentials whose blob did not open (left as they are; see the audit chain and
    /// `Vault::reveal` for why).
    pub unopenable: Vec<CredentialId>,
    /// The last credential id this run went past: pass it as [`ResealOptions::after`] to
    /// go on where it stopped.
    pub next_after: Option<CredentialId>,
    /// True when every credential after the starting point was looked at.
    pub complete: bool,
}

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
        trace::op("verify_audit_with")
            .actor(actor)
            .run(async move {
                self.authorize_unscoped(actor, Action::AuditVerify).await?;
                self.inner
                    .audit
                    .verify_against(std::slice::from_ref(checkpoint))
                    .await
            })
            .await
    }

    /// Verifies the audit chain (system admins and viewers). The chain alone cannot show a
    /// cut tail or a rewrite with recomputed hashes: [`Vault::verify_audit_with`] can.
    pub async fn verify_audit(&self, actor: &Principal) -> Result<VerifyReport> {
        trace::op("verify_audit")
            .actor(actor)
            .run(async move {
                self.authorize(
                    actor,
                    Action::AuditVerify,
                    None,
                    AuditTarget::none(),
                    "the audit chain",
                )
                .await?;
                self.inner.audit.verify().await
            })
            .await
    }
}

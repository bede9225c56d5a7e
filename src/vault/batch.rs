//! Resolving many references at once (a session start): every lookup, every decryption,
//! and one commit that holds one audit row per reference, checked against what was read.

use std::sync::Arc;

use super::unseal::Release;
use super::{is_stale, policy, Action, Principal, Relation, Vault, STALE_RETRIES};
use crate::audit::{AuditEvent, AuditTarget};
use crate::error::Error;
use crate::handlers::Fields;
use crate::model::CredentialRecord;
use crate::store::ReadStamp;
use crate::vault::{CredentialRef, ResolveContext};

/// One reference of a batch, with the details its audit row carries (block, slot).
pub(crate) struct BatchItem<'a> {
    pub reference: &'a CredentialRef,
    pub details: Vec<(&'static str, String)>,
}

/// A resolved reference: the record read and its fields.
pub(crate) struct Released {
    pub record: Arc<CredentialRecord>,
    pub fields: Arc<Fields>,
}

/// Decrypted fields a caller already holds for a record (same id and version), so the
/// batch need not open the blob again.
pub(crate) type Reuse<'a> = &'a (dyn Fn(usize, &CredentialRecord) -> Option<Arc<Fields>> + Sync);

impl Vault {
    /// Resolves every item for `actor` in `ctx` with the checks of [`Vault::resolve`], the
    /// policy deciding `action` (an injection is [`Action::Inject`]), then commits one audit
    /// row per item (`action`, with the item's details) in one batch, checked against every
    /// read. On an error, the index of the item that failed.
    pub(crate) async fn resolve_batch(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
        action: Action,
        items: &[BatchItem<'_>],
        reuse: Reuse<'_>,
    ) -> std::result::Result<Vec<Released>, (usize, Error)> {
        self.check_context(actor, ctx).await.map_err(|e| (0, e))?;
        let mut scopes = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let scope = ctx.scope_for(item.reference.scope).map_err(|e| (i, e))?;
            let relation = Relation::of(actor, Some(&scope));
            if !policy::allows(actor.role(), action, relation) {
                let what = format!("credential `{}` ({scope})", item.reference.name);
                self.authorize(
                    actor,
                    action,
                    Some(&scope),
                    AuditTarget::scope(&scope),
                    &what,
                )
                .await
                .map_err(|e| (i, e))?;
            }
            scopes.push(scope);
        }
        let mut attempts = 0;
        'attempt: loop {
            let fresh = attempts > 0;
            let mut stamp = ReadStamp::UNCHECKED;
            let mut records = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match self
                    .lookup(actor, action, item.reference, &scopes[i], fresh)
                    .await
                {
                    Ok((record, s)) => {
                        stamp = stamp.and(s);
                        records.push(record);
                    }
                    Err(e) if is_stale(&e) && attempts < STALE_RETRIES => {
                        attempts += 1;
                        continue 'attempt;
                    }
                    Err(e) => return Err((i, e)),
                }
            }
            let releases = items
                .iter()
                .zip(&records)
                .enumerate()
                .map(|(i, (item, record))| {
                    let target = AuditTarget::credential(&record.id, &record.scope);
                    let mut event = AuditEvent::new(actor.to_string(), action, target)
                        .detail("app", ctx.app.clone());
                    for (k, v) in &item.details {
                        event = event.detail(*k, v.clone());
                    }
                    Release {
                        record,
                        event,
                        held: reuse(i, record),
                    }
                })
                .collect();
            match self.release(releases, stamp).await {
                Ok(fields) => {
                    return Ok(records
                        .into_iter()
                        .zip(fields)
                        .map(|(record, fields)| Released { record, fields })
                        .collect())
                }
                Err((_, e)) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

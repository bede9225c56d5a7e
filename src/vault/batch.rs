//! Resolving many references at once (a session start): every lookup, every decryption,
//! and one commit that holds one audit row per reference, checked against what was read.

use std::fmt;
use std::sync::Arc;

use super::unseal::Release;
use super::{info, is_stale, policy, Action, Principal, Relation, Vault, STALE_RETRIES};
use crate::audit::{AuditEvent, AuditTarget};
use crate::error::Error;
use crate::handlers::Fields;
use crate::model::CredentialId;
use crate::store::ReadStamp;
use crate::vault::trace;
use crate::vault::{CredentialInfo, CredentialRef, ResolveContext};

/// One reference of a [`Vault::resolve_many`], with the details its audit row carries (a
/// deployment's block and slot).
#[derive(Debug, Clone)]
pub struct ResolveItem<'a> {
    /// The reference.
    pub reference: &'a CredentialRef,
    /// Non-secret details for its audit row.
    pub details: Vec<(&'static str, String)>,
    /// Fields the caller already holds for one version of a credential: when the record
    /// read is still that id and version, they are released again without decrypting.
    pub held: Option<HeldFields>,
}

impl<'a> ResolveItem<'a> {
    /// An item with no details and nothing held.
    pub fn new(reference: &'a CredentialRef) -> ResolveItem<'a> {
        ResolveItem {
            reference,
            details: Vec::new(),
            held: None,
        }
    }
}

/// Decrypted fields of one credential version, as a caller keeps them.
#[derive(Clone)]
pub struct HeldFields {
    /// The credential.
    pub id: CredentialId,
    /// The version they belong to.
    pub version: u64,
    /// The fields.
    pub fields: Arc<Fields>,
}

impl fmt::Debug for HeldFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldFields")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A resolved reference: the credential's metadata and its fields. `Debug` shows field
/// names only.
#[derive(Clone)]
pub struct Resolved {
    /// What was resolved.
    pub info: CredentialInfo,
    /// Its secret fields.
    pub fields: Arc<Fields>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("info", &self.info)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A [`Vault::resolve_many`] that failed: which item, and why.
#[derive(Debug)]
pub struct ResolveManyError {
    /// The index of the item that failed (0 for a failure of the whole batch).
    pub index: usize,
    /// What went wrong.
    pub error: Error,
}

impl fmt::Display for ResolveManyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {}: {}", self.index, self.error)
    }
}

impl std::error::Error for ResolveManyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Vault {
    /// Resolves every item for `actor` in `ctx` (a session start, a deploy) with the checks
    /// of [`Vault::resolve`], the policy deciding [`Action::Inject`], then commits one
    /// `credential.inject` audit row per item (with
    /// the item's details) in one batch, checked against every read, and only then returns
    /// the fields. On an error, the index of the item that failed.
    pub async fn resolve_many(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
        items: &[ResolveItem<'_>],
    ) -> std::result::Result<Vec<Resolved>, ResolveManyError> {
        trace::op("resolve_many")
            .actor(actor)
            .run_many(async move {
                self.resolve_many_inner(actor, ctx, items)
                    .await
                    .map_err(|(index, error)| ResolveManyError { index, error })
            })
            .await
    }

    async fn resolve_many_inner(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
        items: &[ResolveItem<'_>],
    ) -> std::result::Result<Vec<Resolved>, (usize, Error)> {
        let action = Action::Inject;
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
                .map(|(item, record)| {
                    let target = AuditTarget::credential(&record.id, &record.scope);
                    let mut event = AuditEvent::new(actor.to_string(), action, target)
                        .detail("app", ctx.app.clone());
                    for (k, v) in &item.details {
                        event = event.detail(*k, v.clone());
                    }
                    let held = item
                        .held
                        .as_ref()
                        .filter(|h| h.id == record.id && h.version == record.version)
                        .map(|h| h.fields.clone());
                    Release {
                        record,
                        event,
                        held,
                    }
                })
                .collect();
            match self.release(actor, releases, stamp).await {
                Ok(fields) => {
                    return Ok(records
                        .iter()
                        .zip(fields)
                        .map(|(record, fields)| Resolved {
                            info: info(record, fields.keys().cloned().collect()),
                            fields,
                        })
                        .collect())
                }
                Err((_, e)) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

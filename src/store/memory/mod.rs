//! `MemoryStore`: everything in process memory, for test suites. Fast, no disk, same
//! semantics as the durable stores (it runs the same conformance suite).
//!
//! Its audit log keeps every row, or with [`MemoryStore::with_audit_window`] only the newest
//! rows (`audit_log`), for test suites that run long enough for the log to matter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::rules::{
    check_credential_delete, check_credential_put, check_record_delete, check_record_put,
    grant_missing, grant_target_missing, name_taken, stale_read,
};
use super::{
    AuditQuery, Batch, CommitReceipt, ListFilter, Mutation, ReadStamp, RecordFilter, Store,
};
use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::error::Result;
use audit_log::AuditLog;
pub use audit_log::AuditWindow;

mod audit_log;
use crate::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope, ScopeKind};

type NameKey = (ScopeKind, String, String);

/// What to put back if a batch fails part way.
enum Undo {
    Credential(CredentialId, Option<Arc<CredentialRecord>>),
    Grant((CredentialId, String), Option<Grant>),
    Record(RecordKey, Option<Record>),
}

#[derive(Default)]
struct State {
    credentials: BTreeMap<CredentialId, Arc<CredentialRecord>>,
    grants: BTreeMap<(CredentialId, String), Grant>,
    names: HashMap<NameKey, Arc<CredentialRecord>>,
    records: BTreeMap<RecordKey, Record>,
    audit: AuditLog,
    head: Option<ChainHead>,
    /// Bumped by every batch that changes credentials or grants (see [`ReadStamp`]).
    generation: i64,
}

fn name_key(record: &CredentialRecord) -> NameKey {
    (
        record.scope.kind(),
        record.scope.owner(),
        record.name.clone(),
    )
}

impl State {
    /// Sets `id` to `value`, keeping the name index in step; returns the old value.
    fn set(
        &mut self,
        id: &CredentialId,
        value: Option<Arc<CredentialRecord>>,
    ) -> Option<Arc<CredentialRecord>> {
        let old = match value {
            Some(record) => {
                self.names.insert(name_key(&record), record.clone());
                self.credentials.insert(id.clone(), record)
            }
            None => self.credentials.remove(id),
        };
        if let Some(old) = &old {
            let key = name_key(old);
            let still_ours = self.credentials.get(id).map(|r| name_key(r)) == Some(key.clone());
            if !still_ours && self.names.get(&key).is_some_and(|r| r.id == *id) {
                self.names.remove(&key);
            }
        }
        old
    }

    fn apply(&mut self, mutation: Mutation, undo: &mut Vec<Undo>) -> Result<()> {
        match mutation {
            Mutation::Put {
                record,
                precondition,
            } => {
                let stored = self.credentials.get(&record.id).map(|r| r.version);
                check_credential_put(precondition, stored, &record)?;
                if let Some(other) = self.names.get(&name_key(&record)) {
                    if other.id != record.id {
                        return Err(name_taken(&record));
                    }
                }
                let id = record.id.clone();
                let old = self.set(&id, Some(Arc::new(record)));
                undo.push(Undo::Credential(id, old));
            }
            Mutation::Delete { id, precondition } => {
                let stored = self.credentials.get(&id).map(|r| r.version);
                check_credential_delete(precondition, stored, &id)?;
                let keys: Vec<_> = self
                    .grants
                    .range((id.clone(), String::new())..)
                    .take_while(|((cid, _), _)| *cid == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    let old = self.grants.remove(&key);
                    undo.push(Undo::Grant(key, old));
                }
                let old = self.set(&id, None);
                undo.push(Undo::Credential(id, old));
            }
            Mutation::PutGrant { grant } => {
                if !self.credentials.contains_key(&grant.credential_id) {
                    return Err(grant_target_missing(&grant.credential_id));
                }
                let key = (grant.credential_id.clone(), grant.app.clone());
                let old = self.grants.insert(key.clone(), grant);
                undo.push(Undo::Grant(key, old));
            }
            Mutation::DeleteGrant { credential_id, app } => {
                let key = (credential_id, app);
                match self.grants.remove(&key) {
                    Some(old) => undo.push(Undo::Grant(key, Some(old))),
                    None => return Err(grant_missing(&key.0, &key.1)),
                }
            }
            Mutation::PutRecord {
                record,
                precondition,
            } => {
                let key = record.record_key();
                let stored = self.records.get(&key).map(|r| r.version);
                check_record_put(precondition, stored, &record)?;
                let old = self.records.insert(key.clone(), record);
                undo.push(Undo::Record(key, old));
            }
            Mutation::DeleteRecord { key, precondition } => {
                let stored = self.records.get(&key).map(|r| r.version);
                check_record_delete(precondition, stored, &key)?;
                let old = self.records.remove(&key);
                undo.push(Undo::Record(key, old));
            }
        }
        Ok(())
    }
}

/// An in-memory store for test suites.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store that keeps every audit row.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store that keeps only the newest `rows` audit rows (at least 1), for test
    /// suites that run long: the log's memory stays bounded, and so does the cost of a
    /// commit (an unbounded log keeps asking the system for new pages).
    ///
    /// What it keeps: the newest `rows` rows, the chain head, and the *anchor* — the
    /// sequence number and hash of the last row it dropped, which the oldest kept row's
    /// `prev_hash` must equal. So the kept rows stay verifiable on their own:
    /// [`MemoryStore::verify_kept_audit`] checks them from the anchor to the head (and
    /// [`MemoryStore::audit_window`] says what is kept). Commits, sequence numbers and
    /// hashes are exactly those of an unbounded store.
    ///
    /// What it no longer has: rows `1..=dropped`. A read that needs them fails with
    /// [`crate::Error::NotFound`] naming the dropped rows and the first kept one:
    /// [`Store::audit_range`] from a dropped row, an oldest-first [`Store::audit_query`]
    /// whose range starts in them, and a newest-first one that runs out of kept rows
    /// before its limit. Verifying the whole chain (`Vault::verify_audit`,
    /// `audit::verify_chain`, checkpoints) starts at row 1, so it fails with that error
    /// too rather than reporting a chain it cannot see. Reads within the kept rows answer
    /// as an unbounded store would.
    pub fn with_audit_window(rows: usize) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State {
                audit: AuditLog::window(rows),
                ..State::default()
            }),
        }
    }

    /// What the audit log holds: its capacity, the rows kept and dropped, the anchor and
    /// the head.
    pub fn audit_window(&self) -> AuditWindow {
        let state = self.lock();
        state.audit.describe(state.head)
    }

    /// Verifies the kept audit rows on their own: consecutive sequence numbers from the
    /// anchor (row 1 when nothing was dropped), each row chained to the one before (the
    /// oldest to the anchor's hash), each hash recomputed from the row, and the newest row
    /// the chain head. The first bad row is reported as [`crate::Error::CorruptAuditRow`]
    /// with its sequence number; otherwise the window is returned.
    pub fn verify_kept_audit(&self) -> Result<AuditWindow> {
        let state = self.lock();
        state.audit.verify(state.head)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (commit undoes
        // before returning an error), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Test hook: replaces audit row `seq` as a tamperer with write access would.
    #[doc(hidden)]
    pub fn tamper_audit(&self, f: impl FnOnce(&mut Vec<AuditRecord>)) {
        let mut state = self.lock();
        let mut rows = state.audit.take_rows();
        f(&mut rows);
        for row in rows {
            let _ = state.audit.push(row);
        }
        state.head = state.audit.last().map(|r| ChainHead {
            seq: r.seq,
            hash: r.hash,
        });
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        Ok(self.lock().credentials.get(id).map(|r| (**r).clone()))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
        let state = self.lock();
        let limit = filter.limit.unwrap_or(usize::MAX);
        // A name in one scope is unique: answer from the name index.
        if let (Some(scope), Some(name)) = (&filter.scope, &filter.name) {
            let key = (scope.kind(), scope.owner(), name.clone());
            return Ok(state
                .names
                .get(&key)
                .filter(|r| filter.matches(r) && limit > 0)
                .map(|r| (**r).clone())
                .into_iter()
                .collect());
        }
        let range = match &filter.after_id {
            Some(after) => state.credentials.range((
                std::ops::Bound::Excluded(after.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => state.credentials.range(..),
        };
        Ok(range
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(limit)
            .map(|r| (**r).clone())
            .collect())
    }

    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>> {
        let state = self.lock();
        Ok(state
            .grants
            .range((credential_id.clone(), String::new())..)
            .take_while(|((cid, _), _)| cid == credential_id)
            .map(|(_, g)| g.clone())
            .collect())
    }

    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let state = self.lock();
        state.audit.range(from, limit)
    }

    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.lock().audit.query(query)
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        Ok(self.lock().head)
    }

    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        let key = (scope.kind(), scope.owner(), name.to_string());
        let state = self.lock();
        let found = state.names.get(&key).cloned();
        Ok((found, ReadStamp::at(state.generation)))
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
        let state = self.lock();
        let grants = state
            .grants
            .range((credential_id.clone(), String::new())..)
            .take_while(|((cid, _), _)| cid == credential_id)
            .map(|(_, g)| g.clone())
            .collect();
        Ok((grants, ReadStamp::at(state.generation)))
    }

    async fn commit_checked(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        let state = self.lock();
        if stamp.current_at(state.generation) == Some(false) {
            return Err(stale_read());
        }
        Self::commit_locked(state, batch)
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        Self::commit_locked(self.lock(), batch)
    }

    async fn record(&self, key: &RecordKey) -> Result<Option<Record>> {
        Ok(self.lock().records.get(key).cloned())
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>> {
        let state = self.lock();
        let range = match &filter.after {
            Some(after) => state.records.range((
                std::ops::Bound::Excluded(after.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => state.records.range(..),
        };
        Ok(range
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }
}

impl MemoryStore {
    fn commit_locked(mut state: MutexGuard<'_, State>, batch: Batch) -> Result<CommitReceipt> {
        let changes = batch.changes_credentials();
        let mut undo = Vec::with_capacity(batch.mutations.len());
        for mutation in batch.mutations {
            if let Err(e) = state.apply(mutation, &mut undo) {
                for step in undo.into_iter().rev() {
                    match step {
                        Undo::Credential(id, old) => {
                            state.set(&id, old);
                        }
                        Undo::Grant(key, Some(old)) => {
                            state.grants.insert(key, old);
                        }
                        Undo::Grant(key, None) => {
                            state.grants.remove(&key);
                        }
                        Undo::Record(key, Some(old)) => {
                            state.records.insert(key, old);
                        }
                        Undo::Record(key, None) => {
                            state.records.remove(&key);
                        }
                    }
                }
                return Err(e);
            }
        }
        let mut seqs = None;
        let mut head = state.head;
        // Rows a window drops are freed once the lock is released.
        let mut dropped = Vec::new();
        for event in batch.events {
            let record = ChainHead::append(&mut head, event);
            seqs = Some((seqs.map_or(record.seq, |(first, _)| first), record.seq));
            dropped.extend(state.audit.push(record));
        }
        state.head = head;
        if changes {
            state.generation += 1;
        }
        drop(state);
        drop(dropped);
        Ok(CommitReceipt { seqs, head })
    }
}

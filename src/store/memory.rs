//! `MemoryStore`: everything in process memory, for test suites. Fast, no disk, same
//! semantics as the durable stores (it runs the same conformance suite).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::rules::{
    check_credential_delete, check_credential_put, check_record_delete, check_record_put,
    grant_missing, grant_target_missing, name_taken, stale_read,
};
use super::{Batch, CommitReceipt, ListFilter, Mutation, ReadStamp, RecordFilter, Store};
use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::error::Result;
use crate::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope, ScopeKind};

type NameKey = (ScopeKind, String, String);

/// The audit rows in fixed-size chunks, so a long-running store never copies its whole log
/// to grow it (a copy that would hold the lock for as long as it takes).
#[derive(Default)]
struct AuditLog {
    chunks: Vec<Vec<AuditRecord>>,
}

const AUDIT_CHUNK: usize = 1 << 14;

impl AuditLog {
    fn push(&mut self, record: AuditRecord) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < AUDIT_CHUNK => chunk.push(record),
            _ => {
                let mut chunk = Vec::with_capacity(AUDIT_CHUNK);
                chunk.push(record);
                self.chunks.push(chunk);
            }
        }
    }

    fn last(&self) -> Option<&AuditRecord> {
        self.chunks.last().and_then(|c| c.last())
    }

    /// Rows with `seq >= from` (rows are in sequence order), at most `limit`.
    fn range(&self, from: u64, limit: usize) -> Vec<AuditRecord> {
        let first_chunk = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|r| r.seq < from));
        let mut out = Vec::new();
        for chunk in &self.chunks[first_chunk..] {
            let start = chunk.partition_point(|r| r.seq < from);
            for row in &chunk[start..] {
                if out.len() == limit {
                    return out;
                }
                out.push(row.clone());
            }
        }
        out
    }

    fn flatten(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.chunks)
            .into_iter()
            .flatten()
            .collect()
    }
}

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
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
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
        let mut rows = state.audit.flatten();
        f(&mut rows);
        for row in rows {
            state.audit.push(row);
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
        Ok(state.audit.range(from, limit))
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
        for event in batch.events {
            let record = ChainHead::append(&mut head, event);
            seqs = Some((seqs.map_or(record.seq, |(first, _)| first), record.seq));
            state.audit.push(record);
        }
        state.head = head;
        if changes {
            state.generation += 1;
        }
        Ok(CommitReceipt { seqs, head })
    }
}

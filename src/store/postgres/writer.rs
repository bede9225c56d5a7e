//! The group-commit writer: one task per instance that takes the batches queued while it
//! was busy into one transaction, serialised with every other instance on the state row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::cache::PointCache;
use super::codec::decode_state;
use super::error::{db_error, kind_of, pool_error, reason};
use super::statements::Sql;
use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::error::{Error, Result};
use crate::model::CredentialId;
use crate::store::group::{answer, GroupFailure, Outcome, Reply, Request};
use crate::store::rules::{
    check_credential_delete, check_credential_put, check_record_delete, check_record_put,
    grant_missing, grant_target_missing, name_taken, stale_read,
};
use crate::store::{Batch, CommitReceipt, Mutation};

/// Group transactions of one instance in flight at once: the ones before it waiting for
/// their WAL flush, one holding the chain-head lock, the next one waiting for the lock.
/// Only one at a time waits for the lock: it takes everything queued meanwhile, so groups
/// stay as large as the callers make them.
pub(super) const GROUPS_IN_FLIGHT: usize = 4;

/// What the writer shares with its group tasks.
pub(super) struct Shared {
    pub(super) pool: Pool,
    pub(super) sql: Arc<Sql>,
    pub(super) cache: Arc<PointCache>,
    pub(super) stats: Arc<Counters>,
    pub(super) max_group: usize,
}

/// Running totals of the writer, for [`super::PostgresStore::writer_stats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) groups: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) lock_wait_us: AtomicU64,
    pub(super) locked_us: AtomicU64,
    pub(super) flush_wait_us: AtomicU64,
}

fn add(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// Takes the batches queued so far, up to `max` in all.
fn drain(queue: &Mutex<mpsc::UnboundedReceiver<Request>>, group: &mut Vec<Request>, max: usize) {
    // The writer loop holds the queue only while it waits for an empty queue to fill.
    if let Ok(mut rx) = queue.try_lock() {
        while group.len() < max {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
    }
}

pub(super) async fn writer(shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Request>) {
    let queue = Arc::new(Mutex::new(rx));
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let asking = Arc::new(Semaphore::new(1));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Ok(asking) = asking.clone().acquire_owned().await else {
            return;
        };
        let mut group = {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(first) => vec![first],
                None => return,
            }
        };
        drain(&queue, &mut group, shared.max_group);
        let shared = shared.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            run_group(&shared, &queue, group, asking).await;
            drop(permit);
        });
    }
}

/// The audit rows of a group, as columns for one `UNNEST` insert.
#[derive(Default)]
pub(super) struct AuditColumns {
    seq: Vec<i64>,
    time: Vec<i64>,
    actor: Vec<String>,
    action: Vec<String>,
    credential_id: Vec<String>,
    scope_kind: Vec<String>,
    owner: Vec<String>,
    outcome: Vec<String>,
    details: Vec<String>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl AuditColumns {
    fn push(&mut self, record: &AuditRecord) -> Result<()> {
        let (credential_id, scope_kind, owner) = record.event.target.columns();
        self.details.push(
            serde_json::to_string(&record.event.details)
                .map_err(|e| Error::invalid("audit details", e.to_string()))?,
        );
        self.seq.push(record.seq as i64);
        self.time.push(record.event.time.0);
        self.actor.push(record.event.actor.clone());
        self.action.push(record.event.action.as_str().to_string());
        self.credential_id.push(credential_id);
        self.scope_kind.push(scope_kind);
        self.owner.push(owner);
        self.outcome.push(record.event.outcome.as_str().to_string());
        self.prev_hash.push(record.prev_hash.to_vec());
        self.hash.push(record.hash.to_vec());
        Ok(())
    }
}

/// Runs one group in one transaction and answers every caller in it.
///
/// The transaction locks the state row (the chain head and the data generation), so the
/// groups of every instance serialise on it. A group that changes no credential, grant or
/// record (audited reads, denials: the common case) commits with `synchronous_commit` off
/// for that transaction only, which releases the lock as soon as its commit record is in
/// the WAL, and then waits for the flush with a one-row write of its own
/// (`sql.flush`) committed synchronously: its commit record comes after the group's, so
/// once it is durable the group is too. The callers are answered only then. So the next
/// group (of any instance) takes the lock while this one's WAL is flushed, and the flushes
/// of both overlap. Another instance may read the group's audit rows and head during that
/// flush; it builds on them only through its own commit, whose flush covers them (the WAL
/// is one sequence). A group with mutations commits synchronously, holding the lock until
/// its data is durable, so no credential, grant or record is visible before it is durable.
async fn run_group(
    shared: &Shared,
    queue: &Mutex<mpsc::UnboundedReceiver<Request>>,
    mut group: Vec<Request>,
    asking: OwnedSemaphorePermit,
) {
    let sql = &*shared.sql;
    let fail_all = |group: Vec<Request>, error: Error| {
        let failure = GroupFailure::from(error);
        let skipped = group.into_iter().map(|req| (req.reply, Outcome::Skipped));
        answer(skipped.collect(), Some(&failure));
    };
    let client = match shared.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            return fail_all(
                group,
                pool_error("cannot get a connection, nothing was written", e),
            )
        }
    };
    let tx: &deadpool_postgres::ClientWrapper = &client;
    let lock = match prepared(tx, &sql.lock_state).await {
        Ok(stmt) => stmt,
        Err(e) => return fail_all(group, e),
    };
    // BEGIN and the lock on the state row go out together (one round trip).
    let asked = Instant::now();
    let (begun, state) = tokio::join!(
        tx.batch_execute("BEGIN; SET LOCAL synchronous_commit TO off"),
        tx.query_one(&lock, &[])
    );
    add(&shared.stats.lock_wait_us, asked);
    let locked = Instant::now();
    let state = match (begun, state) {
        (Ok(()), Ok(row)) => row,
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            return fail_all(
                group,
                db_error("cannot lock the chain head, nothing was written", e),
            );
        }
    };
    // What was queued while the lock was awaited joins this group: it would otherwise
    // wait for the lock again behind it.
    drain(queue, &mut group, shared.max_group);
    // The next group may ask for the lock now (it queues behind this one).
    drop(asking);
    let (mut generation, mut head) = match decode_state(&state) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.batch_execute("ROLLBACK").await;
            return fail_all(group, e);
        }
    };
    shared.cache.set_generation(generation);
    let start_generation = generation;
    let batches = group.len() as u64;
    let mut audit = AuditColumns::default();
    let mut results: Vec<(Reply, Outcome)> = Vec::with_capacity(group.len());
    // Set when something fails outside a savepoint: then the whole group rolls back.
    let mut poisoned: Option<GroupFailure> = None;
    // Set once a batch's mutations are applied: the commit is then synchronous.
    let mut mutated = false;
    for req in group {
        if poisoned.is_some() {
            results.push((req.reply, Outcome::Skipped));
            continue;
        }
        if req.stamp.current_at(generation) == Some(false) {
            results.push((req.reply, Outcome::Refused(stale_read())));
            continue;
        }
        let bumps_generation = req.batch.changes_credentials();
        let Batch { mutations, events } = req.batch;
        if !mutations.is_empty() {
            if let Err(e) = tx.batch_execute("SAVEPOINT batch").await {
                poisoned = Some(db_error("cannot open a savepoint", e).into());
                results.push((req.reply, Outcome::Skipped));
                continue;
            }
            let mut outcome = Ok(());
            for m in mutations {
                outcome = apply_mutation(tx, sql, m).await;
                if outcome.is_err() {
                    break;
                }
            }
            let end = if outcome.is_ok() {
                "RELEASE SAVEPOINT batch"
            } else {
                "ROLLBACK TO SAVEPOINT batch; RELEASE SAVEPOINT batch"
            };
            if let Err(e) = tx.batch_execute(end).await {
                poisoned = Some(db_error("cannot close a savepoint", e).into());
            }
            if let Err(e) = outcome {
                results.push((req.reply, Outcome::Refused(e)));
                continue;
            }
            mutated = true;
            if bumps_generation {
                generation += 1;
            }
        }
        let mut seqs = None;
        for event in events {
            let record = ChainHead::append(&mut head, event);
            if let Err(e) = audit.push(&record) {
                poisoned = Some(e.into());
                break;
            }
            seqs = Some((seqs.map_or(record.seq, |(first, _)| first), record.seq));
        }
        results.push((req.reply, Outcome::Applied(CommitReceipt { seqs, head })));
    }
    let events = audit.seq.len() as u64;
    let mut flush_started = None;
    let committed: std::result::Result<(), GroupFailure> = async {
        if let Some(failure) = poisoned {
            return Err(failure.rolled_back());
        }
        let rolled_back = |failure: Error| GroupFailure::from(failure).rolled_back();
        let insert = prepared(tx, &sql.insert_audit).await.map_err(rolled_back)?;
        let update = prepared(tx, &sql.update_state).await.map_err(rolled_back)?;
        let flush = prepared(tx, &sql.flush).await.map_err(rolled_back)?;
        let (seq, hash) = match &head {
            Some(h) => (h.seq as i64, Some(h.hash.to_vec())),
            None => (0, None),
        };
        let params: [&(dyn ToSql + Sync); 11] = [
            &audit.seq,
            &audit.time,
            &audit.actor,
            &audit.action,
            &audit.credential_id,
            &audit.scope_kind,
            &audit.owner,
            &audit.outcome,
            &audit.details,
            &audit.prev_hash,
            &audit.hash,
        ];
        let moved = !audit.seq.is_empty() || generation != start_generation;
        // The audit rows, the new head, COMMIT and (after an asynchronous commit) the
        // flushing write go out together (one round trip). A failed statement aborts the
        // transaction, and COMMIT then rolls it back, so success needs all of them.
        let (inserted, updated, commit, flushed) = tokio::join!(
            async {
                if audit.seq.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&insert, &params).await
                }
            },
            async {
                if moved {
                    tx.execute(&update, &[&generation, &seq, &hash]).await
                } else {
                    Ok(0)
                }
            },
            async {
                // A group with mutations commits synchronously (see above).
                let end = if mutated {
                    "RESET synchronous_commit; COMMIT"
                } else {
                    "COMMIT"
                };
                let done = tx.batch_execute(end).await;
                flush_started = Some(Instant::now());
                done
            },
            async {
                if mutated || !moved {
                    Ok(0)
                } else {
                    tx.execute(&flush, &[]).await
                }
            }
        );
        inserted.map_err(|e| rolled_back(db_error("cannot append the audit rows", e)))?;
        match updated {
            Ok(1) => {}
            Ok(0) if !moved => {}
            Ok(_) => {
                return Err(rolled_back(Error::corrupt(
                    "the store's state row",
                    "it is missing",
                )))
            }
            Err(e) => return Err(rolled_back(db_error("cannot move the chain head", e))),
        }
        let unsure = |e: tokio_postgres::Error, what: &str| -> GroupFailure {
            let kind = kind_of(&e);
            let message = format!(
                "{what} ({}); the batch was applied whole or not at all: read again before \
                 retrying",
                reason(&e)
            );
            Error::store_with_source(kind, message, e).into()
        };
        commit.map_err(|e| unsure(e, "the commit did not complete"))?;
        flushed
            .map(|_| ())
            .map_err(|e| unsure(e, "the commit was not confirmed durable"))
    }
    .await;
    if let Some(t) = flush_started {
        let stats = &shared.stats;
        stats
            .locked_us
            .fetch_add((t - locked).as_micros() as u64, Ordering::Relaxed);
        add(&stats.flush_wait_us, t);
    }
    if committed.is_err() {
        // Leaves the connection out of any transaction (a no-op after COMMIT/ROLLBACK).
        let _ = tx.batch_execute("ROLLBACK").await;
    } else {
        shared.cache.raise_generation(generation);
        let stats = &shared.stats;
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.batches.fetch_add(batches, Ordering::Relaxed);
        stats.events.fetch_add(events, Ordering::Relaxed);
    }
    answer(results, committed.err().as_ref());
}

/// A statement prepared once per connection (one round trip per use instead of two).
pub(super) async fn prepared(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    tx.prepare_cached(sql)
        .await
        .map_err(|e| db_error("cannot prepare a statement", e))
}

pub(super) async fn stored_version(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    id: &CredentialId,
) -> Result<Option<u64>> {
    let stmt = prepared(tx, &sql.version_of).await?;
    tx.query_opt(&stmt, &[&id.as_str()])
        .await
        .map_err(|e| db_error("cannot read a credential's version", e))?
        .map(|r| r.try_get::<_, i64>(0).map(|v| v as u64))
        .transpose()
        .map_err(|e| db_error("cannot read a credential's version", e))
}

pub(super) async fn apply_mutation(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    mutation: Mutation,
) -> Result<()> {
    match mutation {
        Mutation::Put {
            record,
            precondition,
        } => {
            let stored = stored_version(tx, sql, &record.id).await?;
            check_credential_put(precondition, stored, &record)?;
            let metadata = serde_json::to_string(&record.metadata)
                .map_err(|e| Error::invalid("metadata", e.to_string()))?;
            let upsert = prepared(tx, &sql.upsert).await?;
            let result = tx
                .execute(
                    &upsert,
                    &[
                        &record.id.as_str(),
                        &record.name,
                        &record.scope.kind().as_str(),
                        &record.scope.owner(),
                        &record.provider,
                        &record.handler_type,
                        &record.state.as_str(),
                        &metadata,
                        &record.agent_accessible,
                        &(record.version as i64),
                        &record.created_at.0,
                        &record.updated_at.0,
                        &record.key_id,
                        &record.sealed,
                        &record.expires_at.map(|t| t.0),
                    ],
                )
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(name_taken(&record)),
                Err(e) => Err(db_error("cannot write a credential", e)),
            }
        }
        Mutation::Delete { id, precondition } => {
            let stored = stored_version(tx, sql, &id).await?;
            check_credential_delete(precondition, stored, &id)?;
            tx.execute(&sql.delete, &[&id.as_str()])
                .await
                .map_err(|e| db_error("cannot delete a credential", e))?;
            tx.execute(&sql.delete_grants, &[&id.as_str()])
                .await
                .map_err(|e| db_error("cannot delete a credential's grants", e))?;
            Ok(())
        }
        Mutation::PutGrant { grant } => {
            if stored_version(tx, sql, &grant.credential_id)
                .await?
                .is_none()
            {
                return Err(grant_target_missing(&grant.credential_id));
            }
            tx.execute(
                &sql.put_grant,
                &[
                    &grant.credential_id.as_str(),
                    &grant.app,
                    &grant.granted_by,
                    &grant.granted_at.0,
                    &grant.revoked_at.map(|t| t.0),
                    &grant.revoked_by,
                ],
            )
            .await
            .map_err(|e| db_error("cannot write a grant", e))?;
            Ok(())
        }
        Mutation::DeleteGrant { credential_id, app } => {
            let n = tx
                .execute(&sql.delete_grant, &[&credential_id.as_str(), &app])
                .await
                .map_err(|e| db_error("cannot delete a grant", e))?;
            if n == 0 {
                return Err(grant_missing(&credential_id, &app));
            }
            Ok(())
        }
        Mutation::PutRecord {
            record,
            precondition,
        } => {
            let stored =
                stored_record_version(tx, sql, &record.kind, &record.owner, &record.key).await?;
            let body = check_record_put(precondition, stored, &record)?;
            let stmt = prepared(tx, &sql.put_record).await?;
            tx.execute(
                &stmt,
                &[
                    &record.kind,
                    &record.owner,
                    &record.key,
                    &(record.version as i64),
                    &record.created_at.0,
                    &record.updated_at.0,
                    &record.expires_at.map(|t| t.0),
                    &body,
                    &record.sealed,
                ],
            )
            .await
            .map_err(|e| db_error("cannot write a record", e))?;
            Ok(())
        }
        Mutation::DeleteRecord { key, precondition } => {
            let stored = stored_record_version(tx, sql, &key.kind, &key.owner, &key.key).await?;
            check_record_delete(precondition, stored, &key)?;
            let stmt = prepared(tx, &sql.delete_record).await?;
            tx.execute(&stmt, &[&key.kind, &key.owner, &key.key])
                .await
                .map_err(|e| db_error("cannot delete a record", e))?;
            Ok(())
        }
    }
}

pub(super) async fn stored_record_version(
    tx: &deadpool_postgres::ClientWrapper,
    sql: &Sql,
    kind: &str,
    owner: &str,
    key: &str,
) -> Result<Option<u64>> {
    let stmt = prepared(tx, &sql.record_version).await?;
    tx.query_opt(&stmt, &[&kind, &owner, &key])
        .await
        .map_err(|e| db_error("cannot read a record's version", e))?
        .map(|r| r.try_get::<_, i64>(0).map(|v| v as u64))
        .transpose()
        .map_err(|e| db_error("cannot read a record's version", e))
}

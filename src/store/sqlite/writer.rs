//! The group-commit writer: one thread that folds every batch waiting at the moment into
//! one transaction and one sync, and that checkpoints the WAL when the store closes.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::error::{is_unique_violation, sql_error};
use super::schema::{load_head, read_generation};
use super::sync::{earlier_failure, Syncer};
use super::Counters;
use crate::audit::encoding::ChainHead;
use crate::error::{Error, Result};
use crate::model::CredentialId;
use crate::store::group::{answer, GroupFailure, Outcome, Reply, Request};
use crate::store::rules::{
    check_credential_delete, check_credential_put, check_record_delete, check_record_put,
    grant_missing, grant_target_missing, name_taken, stale_read,
};
use crate::store::{Batch, CommitReceipt, Mutation};

/// What the writer is asked to do.
pub(super) enum Message {
    /// Commit one caller's batch.
    Commit(Request),
    /// Commit what was queued before, checkpoint the WAL into the database, close the
    /// connection and stop; the answer says whether the checkpoint could run.
    Close(oneshot::Sender<Result<()>>),
    /// Answer once every group committed before is durable (at once without a syncer).
    Barrier(oneshot::Sender<Result<()>>),
}

/// Passes a barrier on: every group this writer committed was handed to the syncer before
/// it reads the next message, so the syncer answers it after the sync covering them.
fn barrier(syncer: Option<&Syncer>, reply: oneshot::Sender<Result<()>>) {
    match syncer {
        Some(syncer) => syncer.barrier(reply),
        None => {
            let _ = reply.send(Ok(()));
        }
    }
}

/// The single writer: waits for one batch, takes every other batch already waiting (up to
/// `max_group`), and commits them all in one transaction — one sync for the group. Each
/// batch runs inside its own savepoint so a failed precondition undoes only that batch.
///
/// It stops on [`Message::Close`], or when every sender is gone (the store was dropped);
/// either way it first tries a checkpoint that waits for nobody (see [`checkpoint`]), so
/// a store that is dropped without [`SqliteStore::close`](super::SqliteStore::close) still
/// leaves no WAL behind, provided the process lives long enough for this thread to finish.
pub(super) fn writer_loop(
    mut conn: Connection,
    mut head: Option<ChainHead>,
    rx: mpsc::Receiver<Message>,
    max_group: usize,
    counters: &Counters,
    read_only: bool,
    mut syncer: Option<Syncer>,
) {
    let mut group: Vec<Request> = Vec::with_capacity(max_group);
    // How many callers the last group served: the concurrency to wait for.
    let mut expected = 1usize;
    let mut closing = None;
    while let Ok(first) = rx.recv() {
        match first {
            Message::Commit(req) => group.push(req),
            Message::Close(reply) => {
                closing = Some(reply);
                break;
            }
            Message::Barrier(reply) => {
                barrier(syncer.as_ref(), reply);
                continue;
            }
        }
        let started = std::time::Instant::now();
        let mut slept = false;
        loop {
            let before = group.len();
            while group.len() < max_group {
                match rx.try_recv() {
                    Ok(Message::Commit(req)) => group.push(req),
                    Ok(Message::Close(reply)) => {
                        closing = Some(reply);
                        break;
                    }
                    Ok(Message::Barrier(reply)) => barrier(syncer.as_ref(), reply),
                    Err(_) => break,
                }
            }
            // A lone caller never waits. With concurrent callers, the ones just answered
            // are still on their way back; waiting briefly for them (while they keep
            // arriving) folds them into this sync instead of the next one. A gap that
            // brought nobody ends the wait.
            if closing.is_some()
                || group.len() >= expected.min(max_group)
                || started.elapsed() >= LINGER_MAX
                || (slept && group.len() == before)
            {
                break;
            }
            // Asleep rather than waiting on the channel: a caller that queues meanwhile
            // does not wake this thread (a wake per arrival cost every caller a system
            // call and this thread a context switch); whoever came is taken after the gap.
            std::thread::sleep(LINGER_GAP);
            slept = true;
        }
        // Remember the concurrency seen lately: jump up at once, decay slowly, so one
        // short group (a straggler cut off by the time limit) does not shrink the next.
        expected = group.len().max(expected - expected / 8);
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters
            .batches
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        run_group(&mut conn, &mut head, &mut group, counters, syncer.as_ref());
        if closing.is_some() {
            break;
        }
    }
    // Everything committed is synced and answered before the closing checkpoint.
    if let Some(syncer) = syncer.as_mut() {
        syncer.finish();
    }
    let checkpointed = if read_only { Ok(()) } else { checkpoint(&conn) };
    // Closing the last connection to the file also deletes the (now empty) WAL.
    let closed = conn
        .close()
        .map_err(|(_, e)| sql_error("cannot close the database", e));
    if let Some(reply) = closing {
        let _ = reply.send(checkpointed.and(closed));
    }
}

/// Copies the WAL into the database and truncates it to nothing, waiting for nobody: with
/// no busy timeout, a reader or writer in another process that still needs part of the WAL
/// makes SQLite checkpoint what it can (as a passive checkpoint would) and leave the rest,
/// and the file, to a later checkpoint. Only a failure of SQLite itself is an error.
fn checkpoint(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::ZERO)
        .map_err(|e| sql_error("cannot configure the closing checkpoint", e))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| sql_error("cannot checkpoint the WAL into the database", e))
}

/// Longest pause between arrivals while a group is still filling.
// Short: a group that waits long holds every caller in it idle, while a group cut early
// lets the callers it answers compute (read, decrypt) during the next group's sync. 30 µs /
// 100 µs measured best for audited resolves (which compute between commits) without
// hurting pure audited commits; 100 µs / 1 ms held resolves to ~60% of this.
const LINGER_GAP: Duration = Duration::from_micros(30);
/// Longest a group waits to fill.
const LINGER_MAX: Duration = Duration::from_micros(100);

pub(super) fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one group in one transaction and answers every caller in it: at once when nothing
/// needs syncing (or the group failed), otherwise through the `syncer` once it is durable.
fn run_group(
    conn: &mut Connection,
    head: &mut Option<ChainHead>,
    group: &mut Vec<Request>,
    counters: &Counters,
    syncer: Option<&Syncer>,
) {
    let published = &counters.generation;
    let start_head = *head;
    let mut results: Vec<(Reply, Outcome)> = Vec::with_capacity(group.len());
    if counters.sync_failed.load(Ordering::Acquire) {
        // Committing now would show rows that no sync can vouch for.
        let failure = GroupFailure::from(earlier_failure());
        let skipped = group.drain(..).map(|req| (req.reply, Outcome::Skipped));
        answer(skipped.collect(), Some(&failure));
        return;
    }
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let failure = GroupFailure::from(sql_error(
                "cannot start a write transaction, nothing was written",
                e,
            ));
            let skipped = group.drain(..).map(|req| (req.reply, Outcome::Skipped));
            answer(skipped.collect(), Some(&failure));
            return;
        }
    };
    // Set when something fails outside a savepoint: then the whole group rolls back.
    let mut poisoned: Option<GroupFailure> = None;
    // The data generation as this transaction sees it, kept up to date as batches with
    // mutations bump it, to check stamped reads against.
    let mut generation = match read_generation(&tx) {
        Ok(g) => g,
        Err(e) => {
            poisoned = Some(sql_error("cannot read the data generation", e).into());
            0
        }
    };
    // Another process (the CLI next to a host service, say) may have appended to the chain
    // since this writer's last group: continue from the head that is on disk.
    match load_head(&tx) {
        Ok(on_disk) => *head = on_disk,
        Err(e) => poisoned = Some(sql_error("cannot read the audit head", e).into()),
    }
    // The audit insert, prepared once for the whole group (on its first event).
    let mut insert = None;
    // The `details` column of one event, the buffer reused across the group.
    let mut details = Vec::new();
    for req in group.drain(..) {
        if poisoned.is_some() {
            results.push((req.reply, Outcome::Skipped));
            continue;
        }
        if req.stamp.current_at(generation) == Some(false) {
            results.push((req.reply, Outcome::Refused(stale_read())));
            continue;
        }
        let changes = req.batch.changes_credentials();
        let before = *head;
        let outcome = if req.batch.mutations.is_empty() {
            // Appending events cannot fail a precondition; an error here is an I/O-level
            // failure (or a trigger) that dooms the transaction anyway, so no savepoint is
            // needed: the group fails with this batch's error as its cause.
            match apply_batch(&tx, req.batch, head, &mut insert, &mut details) {
                Ok(receipt) => Outcome::Applied(receipt),
                Err(e) => {
                    poisoned = Some(e.into());
                    Outcome::Skipped
                }
            }
        } else {
            match exec_cached(&tx, "SAVEPOINT batch") {
                Err(e) => {
                    poisoned = Some(sql_error("cannot open a savepoint", e).into());
                    Outcome::Skipped
                }
                Ok(()) => match apply_batch(&tx, req.batch, head, &mut insert, &mut details) {
                    Ok(receipt) => match exec_cached(&tx, "RELEASE batch") {
                        Ok(()) => Outcome::Applied(receipt),
                        Err(e) => {
                            poisoned = Some(sql_error("cannot release a savepoint", e).into());
                            Outcome::Skipped
                        }
                    },
                    Err(e) => {
                        if let Err(undo) = exec_cached(&tx, "ROLLBACK TO batch")
                            .and_then(|()| exec_cached(&tx, "RELEASE batch"))
                        {
                            poisoned =
                                Some(sql_error("cannot roll back a failed batch", undo).into());
                        }
                        Outcome::Refused(e)
                    }
                },
            }
        };
        match &outcome {
            Outcome::Applied(_) if changes => generation += 1,
            Outcome::Applied(_) => {}
            _ => *head = before,
        }
        results.push((req.reply, outcome));
    }
    // The statement borrows the transaction.
    drop(insert);
    let failure = match poisoned {
        Some(failure) => {
            drop(tx); // rolls back
            Some(failure.rolled_back())
        }
        None => tx
            .commit()
            .err()
            .map(|e| sql_error("the commit failed, nothing was written", e).into()),
    };
    match &failure {
        None => {
            published.fetch_max(generation, Ordering::Release);
            if let Some(syncer) = syncer {
                syncer.push(results);
                return;
            }
        }
        Some(_) => {
            // Nothing of the group is on disk; restore the head from the database.
            *head = load_head(conn).unwrap_or(start_head);
        }
    }
    answer(results, failure.as_ref());
}

/// The audit insert; prepared once per group by [`apply_batch`].
const AUDIT_INSERT: &str = "INSERT INTO audit (seq, time, actor, action, credential_id, scope_kind,
        owner, outcome, details, prev_hash, hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

fn apply_batch<'c>(
    conn: &'c Connection,
    batch: Batch,
    head: &mut Option<ChainHead>,
    insert: &mut Option<CachedStatement<'c>>,
    details: &mut Vec<u8>,
) -> Result<CommitReceipt> {
    if batch.changes_credentials() {
        exec_cached(
            conn,
            "UPDATE strongroom_generation SET value = value + 1 WHERE id = 1",
        )
        // The batch's first write: when the database refuses writes, this is where it shows,
        // so the message names the database rather than the counter.
        .map_err(|e| sql_error(&format!("cannot write to {}", database_name(conn)), e))?;
    }
    for mutation in batch.mutations {
        apply_mutation(conn, mutation)?;
    }
    let mut seqs = None;
    if !batch.events.is_empty() {
        let insert = match insert {
            Some(insert) => insert,
            None => insert.insert(
                conn.prepare_cached(AUDIT_INSERT)
                    .map_err(|e| sql_error("cannot prepare the audit insert", e))?,
            ),
        };
        for event in &batch.events {
            // The columns borrowed from the event: one owner string is all that is built.
            let owner = event.target.owner();
            let link = ChainHead::link(head, event, &owner);
            details.clear();
            serde_json::to_writer(&mut *details, &event.details)
                .map_err(|e| Error::invalid("audit details", e.to_string()))?;
            let details = std::str::from_utf8(details)
                .map_err(|e| Error::invalid("audit details", e.to_string()))?;
            insert
                .execute(params![
                    link.seq as i64,
                    event.time.0,
                    event.actor,
                    event.action.as_str(),
                    event
                        .target
                        .credential_id
                        .as_ref()
                        .map_or("", |c| c.as_str()),
                    event
                        .target
                        .scope
                        .as_ref()
                        .map_or("", |s| s.kind().as_str()),
                    &*owner,
                    event.outcome.as_str(),
                    details,
                    &link.prev_hash[..],
                    &link.hash[..],
                ])
                .map_err(|e| sql_error("cannot append an audit row", e))?;
            seqs = Some((seqs.map_or(link.seq, |(first, _)| first), link.seq));
        }
    }
    Ok(CommitReceipt { seqs, head: *head })
}

pub(super) fn stored_version(conn: &Connection, id: &CredentialId) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM credentials WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v.map(|v| v as u64))
        .map_err(|e| sql_error("cannot read a credential's version", e))
}

pub(super) fn apply_mutation(conn: &Connection, mutation: Mutation) -> Result<()> {
    match mutation {
        Mutation::Put {
            record,
            precondition,
        } => {
            let stored = stored_version(conn, &record.id)?;
            check_credential_put(precondition, stored, &record)?;
            let metadata = serde_json::to_string(&record.metadata)
                .map_err(|e| Error::invalid("metadata", e.to_string()))?;
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO credentials (id, name, scope_kind, owner, provider, handler_type,
                        state, metadata, agent_accessible, version, created_at, updated_at, key_id,
                        sealed, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                        scope_kind = excluded.scope_kind, owner = excluded.owner,
                        provider = excluded.provider, handler_type = excluded.handler_type,
                        state = excluded.state, metadata = excluded.metadata,
                        agent_accessible = excluded.agent_accessible, version = excluded.version,
                        created_at = excluded.created_at, updated_at = excluded.updated_at,
                        key_id = excluded.key_id, sealed = excluded.sealed,
                        expires_at = excluded.expires_at",
                )
                .map_err(|e| sql_error("cannot prepare the credential upsert", e))?;
            let result = stmt.execute(params![
                record.id.as_str(),
                record.name,
                record.scope.kind().as_str(),
                record.scope.owner(),
                record.provider,
                record.handler_type,
                record.state.as_str(),
                metadata,
                record.agent_accessible,
                record.version as i64,
                record.created_at.0,
                record.updated_at.0,
                record.key_id,
                record.sealed,
                record.expires_at.map(|t| t.0),
            ]);
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(name_taken(&record)),
                Err(e) => Err(sql_error("cannot write a credential", e)),
            }
        }
        Mutation::Delete { id, precondition } => {
            let stored = stored_version(conn, &id)?;
            check_credential_delete(precondition, stored, &id)?;
            conn.prepare_cached("DELETE FROM credentials WHERE id = ?1")
                .and_then(|mut s| s.execute([id.as_str()]))
                .and_then(|_| conn.prepare_cached("DELETE FROM grants WHERE credential_id = ?1"))
                .and_then(|mut s| s.execute([id.as_str()]))
                .map_err(|e| sql_error("cannot delete a credential", e))?;
            Ok(())
        }
        Mutation::PutGrant { grant } => {
            if stored_version(conn, &grant.credential_id)?.is_none() {
                return Err(grant_target_missing(&grant.credential_id));
            }
            conn.prepare_cached(
                "INSERT INTO grants (credential_id, app, granted_by, granted_at, revoked_at, revoked_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (credential_id, app) DO UPDATE SET granted_by = excluded.granted_by,
                    granted_at = excluded.granted_at, revoked_at = excluded.revoked_at,
                    revoked_by = excluded.revoked_by",
            )
            .and_then(|mut s| {
                s.execute(params![
                    grant.credential_id.as_str(),
                    grant.app,
                    grant.granted_by,
                    grant.granted_at.0,
                    grant.revoked_at.map(|t| t.0),
                    grant.revoked_by,
                ])
            })
            .map_err(|e| sql_error("cannot write a grant", e))?;
            Ok(())
        }
        Mutation::DeleteGrant { credential_id, app } => {
            let deleted = conn
                .prepare_cached("DELETE FROM grants WHERE credential_id = ?1 AND app = ?2")
                .and_then(|mut s| s.execute(params![credential_id.as_str(), app]))
                .map_err(|e| sql_error("cannot delete a grant", e))?;
            if deleted == 0 {
                return Err(grant_missing(&credential_id, &app));
            }
            Ok(())
        }
        Mutation::PutRecord {
            record,
            precondition,
        } => {
            let stored = stored_record_version(conn, &record.kind, &record.owner, &record.key)?;
            let body = check_record_put(precondition, stored, &record)?;
            conn.prepare_cached(
                "INSERT INTO records (kind, owner, key, version, created_at, updated_at,
                    expires_at, body, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (kind, owner, key) DO UPDATE SET version = excluded.version,
                    created_at = excluded.created_at, updated_at = excluded.updated_at,
                    expires_at = excluded.expires_at, body = excluded.body,
                    sealed = excluded.sealed",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.kind,
                    record.owner,
                    record.key,
                    record.version as i64,
                    record.created_at.0,
                    record.updated_at.0,
                    record.expires_at.map(|t| t.0),
                    body,
                    record.sealed,
                ])
            })
            .map_err(|e| sql_error("cannot write a record", e))?;
            Ok(())
        }
        Mutation::DeleteRecord { key, precondition } => {
            let stored = stored_record_version(conn, &key.kind, &key.owner, &key.key)?;
            check_record_delete(precondition, stored, &key)?;
            conn.prepare_cached("DELETE FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3")
                .and_then(|mut s| s.execute(params![key.kind, key.owner, key.key]))
                .map_err(|e| sql_error("cannot delete a record", e))?;
            Ok(())
        }
    }
}

pub(super) fn stored_record_version(
    conn: &Connection,
    kind: &str,
    owner: &str,
    key: &str,
) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM records WHERE kind = ?1 AND owner = ?2 AND key = ?3")
        .and_then(|mut s| {
            s.query_row(params![kind, owner, key], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v.map(|v| v as u64))
        .map_err(|e| sql_error("cannot read a record's version", e))
}

/// The database file of `conn`, for messages.
fn database_name(conn: &Connection) -> String {
    conn.path()
        .filter(|p| !p.is_empty())
        .map_or_else(|| "the database".to_string(), str::to_string)
}

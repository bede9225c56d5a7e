//! Storage: the small async `Store` trait (read a credential, list, read the audit range and
//! head, commit an atomic batch) and its implementations.
//!
//! Beside the trait: `filter` (what to list), `rules` (preconditions, record versions and
//! the errors every store gives alike), `lease`, and `MemoryStore` in `memory`. The SQL
//! stores share `sql` (filters as SQL) and `group` (queueing a batch with a group-commit
//! writer, and answering a failed group); each is a folder of its own (`sqlite/`,
//! `postgres/`: schema, writer, row codec, errors).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::encoding::{AuditDigest, AuditRecord, ChainHead};
use crate::audit::event::AuditEvent;
use crate::error::{Error, Result};
use crate::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope};

mod audit_query;
mod filter;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group;
pub mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod rules;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use audit_query::{audit_query_by_scan, AuditQuery};
pub use filter::{ListFilter, OwnerMatch, RecordFilter, ScopeMatch};
pub use rules::stale_read;

pub use memory::{AuditWindow, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore, PostgresWriterStats};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, WriterStats, SQLITE_APPLICATION_ID};

/// What must hold for a mutation to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Precondition {
    /// Nothing: a put creates or replaces, a delete removes whatever is there.
    None,
    /// The record must not exist yet (puts only).
    CreateOnly,
    /// The stored record must exist and have exactly this version.
    IfVersion(u64),
}

/// One change to the stored credentials, grants or records.
// Batches are short-lived and `Put` is by far the common variant, so boxing the record
// would cost an allocation per write for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Mutation {
    /// Create or replace a credential (its `version` field is written as given).
    Put {
        /// The full record to store.
        record: CredentialRecord,
        /// What must hold first.
        precondition: Precondition,
    },
    /// Remove a credential (and its grants).
    Delete {
        /// Which one.
        id: CredentialId,
        /// What must hold first.
        precondition: Precondition,
    },
    /// Create or replace the grant of `grant.app` on `grant.credential_id`; the credential
    /// must exist.
    PutGrant {
        /// The grant as it should be stored.
        grant: Grant,
    },
    /// Delete a grant row (a hard revoke); it must exist.
    DeleteGrant {
        /// The credential.
        credential_id: CredentialId,
        /// The app.
        app: String,
    },
    /// Create or replace a record. Whatever the precondition, its `version` must be 1 for a
    /// new record and the stored version + 1 otherwise (see [`Record`]); with
    /// [`Precondition::None`] a version that does not follow the stored one is a version
    /// conflict. The record is checked ([`Record::validate`]) first.
    PutRecord {
        /// The full record to store.
        record: Record,
        /// What must hold first.
        precondition: Precondition,
    },
    /// Remove a record; with [`Precondition::None`] it must exist.
    DeleteRecord {
        /// Which one.
        key: RecordKey,
        /// What must hold first ([`Precondition::CreateOnly`] is refused).
        precondition: Precondition,
    },
}

impl Mutation {
    /// Creates `record` (create-only; a new record's version is 1).
    pub fn create_record(record: Record) -> Mutation {
        Mutation::PutRecord {
            record,
            precondition: Precondition::CreateOnly,
        }
    }

    /// Writes `record` over the version before it (if-version `record.version - 1`): the
    /// commit of a read-modify-write, with `record` from [`Record::next_version`].
    pub fn update_record(record: Record) -> Mutation {
        let precondition = Precondition::IfVersion(record.version.saturating_sub(1));
        Mutation::PutRecord {
            record,
            precondition,
        }
    }

    /// Deletes `record` if it is still at the version read (if-version).
    pub fn delete_record(record: &Record) -> Mutation {
        Mutation::DeleteRecord {
            key: record.record_key(),
            precondition: Precondition::IfVersion(record.version),
        }
    }

    /// Does it change a credential or a grant (rather than a record)? Only those bump the
    /// data generation that [`ReadStamp`]s are checked against.
    pub fn changes_credentials(&self) -> bool {
        !matches!(
            self,
            Mutation::PutRecord { .. } | Mutation::DeleteRecord { .. }
        )
    }
}

/// Mutations and the audit events that record them, applied together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Changes, applied in order.
    pub mutations: Vec<Mutation>,
    /// Audit events, chained in order after the current head.
    pub events: Vec<AuditEvent>,
}

impl Batch {
    /// A batch with only audit events (audited reads, denials).
    pub fn events(events: Vec<AuditEvent>) -> Batch {
        Batch {
            mutations: Vec::new(),
            events,
        }
    }

    /// Does any mutation change a credential or a grant? A batch that changes only records
    /// (and appends audit events) leaves the data generation alone, so it never makes a
    /// [`ReadStamp`] stale.
    pub fn changes_credentials(&self) -> bool {
        self.mutations.iter().any(Mutation::changes_credentials)
    }
}

/// The data generation a read saw. Passed back to [`Store::commit_checked`], it makes the
/// commit fail with a [`StoreErrorKind::Stale`](crate::StoreErrorKind::Stale) error when any
/// credential or grant changed after the read, so a caller can act on a read (audit it,
/// return it) knowing the read was still current when the commit landed. Record changes do
/// not count ([`Batch::changes_credentials`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStamp(Stamp);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stamp {
    /// The store does not stamp reads; nothing is checked.
    #[default]
    Unchecked,
    /// Read at this generation.
    At(i64),
    /// Reads at different generations: one of them is already stale.
    Mixed,
}

impl ReadStamp {
    /// A stamp that checks nothing. Only a store whose reads are never stale (every read
    /// sees every change committed before it, through any handle) may return it.
    pub const UNCHECKED: ReadStamp = ReadStamp(Stamp::Unchecked);

    /// A read at data generation `generation`.
    pub fn at(generation: i64) -> ReadStamp {
        ReadStamp(Stamp::At(generation))
    }

    /// The stamp of two reads together: current only if both saw the same generation.
    pub fn and(self, other: ReadStamp) -> ReadStamp {
        ReadStamp(match (self.0, other.0) {
            (Stamp::Unchecked, s) | (s, Stamp::Unchecked) => s,
            (Stamp::At(a), Stamp::At(b)) if a == b => Stamp::At(a),
            _ => Stamp::Mixed,
        })
    }

    /// Is the stamp still current when the data generation is `current`? `None` when
    /// the stamp checks nothing.
    pub fn current_at(self, current: i64) -> Option<bool> {
        match self.0 {
            Stamp::Unchecked => None,
            Stamp::At(g) => Some(g == current),
            Stamp::Mixed => Some(false),
        }
    }
}

/// What a successful commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitReceipt {
    /// Sequence numbers given to this batch's events (`None` when it had none).
    pub seqs: Option<(u64, u64)>,
    /// The chain head right after this batch (it may have moved on since).
    pub head: Option<ChainHead>,
}

/// Where credentials and the audit chain live.
///
/// The core is deliberately small. `commit` is the only write: it checks every mutation's
/// precondition, applies the mutations, and appends the events to the audit chain — all in
/// one atomic step, or nothing at all. Names are unique within a scope: a put that would
/// give two credentials of one scope the same name fails with
/// [`crate::Error::AlreadyExists`]. Run [`crate::conformance`] (feature `conformance`)
/// against any new implementation, with two handles over the same data when the store can
/// be opened twice (see `conformance::run_all`).
///
/// Reads that may be stale — served from a cache, a replica, anything that can miss a write
/// made through another handle or process — must be stamped and checked: such a store MUST
/// override [`Store::find_named`] and [`Store::grants_stamped`] to return a [`ReadStamp`]
/// that checks something, and [`Store::commit_checked`] to refuse a commit whose stamp went
/// stale. The provided implementations stamp nothing and check nothing, which is right only
/// for a store whose every read is current.
///
/// # Records and leases
///
/// Besides credentials, grants and the audit chain, a store keeps *records* ([`Record`]):
/// small versioned documents keyed by `(kind, owner, key)` — OAuth pending flows, refresh
/// leases, integrations, provider registrations, provisioning intents. `commit` writes them
/// ([`Mutation::PutRecord`], [`Mutation::DeleteRecord`]) with the same preconditions and in
/// the same atomic batch as credential changes and audit events; [`Store::record`] and
/// [`Store::records`] read them, always current. A record's version only moves forward by
/// one (1 when created), so an if-version put is a compare-and-swap that exactly one of
/// many concurrent writers wins. A batch that changes only records does not move the data
/// generation: it never makes a [`ReadStamp`] stale.
///
/// A *lease* ([`lease::Lease`]) is a record of kind `lease` that one holder at a time may
/// claim — exactly one refresher per credential across every instance sharing the store.
/// It is claimed by a create-only put (or an if-version put over an expired lease) and
/// released by an if-version delete committed in the same batch as the work it guarded, so
/// a holder whose lease expired and was claimed by someone else cannot write that work.
/// There is no second trait for leases: see [`lease`] for the pattern and its helpers.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// One credential by id.
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>>;

    /// Credentials matching `filter`, in id order.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>>;

    /// Every grant row (active and revoked) of a credential, in app order.
    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>>;

    /// Up to `limit` audit rows with `seq >= from`, in sequence order.
    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// The last audit row's sequence number and hash; `None` while the chain is empty.
    async fn chain_head(&self) -> Result<Option<ChainHead>>;

    /// Applies `batch` atomically (see the trait's documentation). Returns once the batch is
    /// durable.
    async fn commit(&self, batch: Batch) -> Result<CommitReceipt>;

    /// One record by kind, owner and key. Record reads are never stamped, so they must be
    /// current: every read sees every record change committed before it, through any handle.
    async fn record(&self, key: &RecordKey) -> Result<Option<Record>>;

    /// Records matching `filter`, ordered by kind, owner and key (byte order), current as
    /// [`Store::record`] is.
    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>>;

    /// The credential named `name` in exactly `scope`, and the stamp of the read. The
    /// provided implementation uses [`Store::list`] and stamps nothing, so it is right only
    /// if `list` is always current. A store whose reads may be stale (a cache, a replica)
    /// MUST override it to stamp the read and override [`Store::commit_checked`] to check
    /// the stamp. The conformance check `fresh_reads_across_handles` fails a store that
    /// returns an old record after another handle changed it and then lets a checked
    /// commit with that read's stamp through.
    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        let found = self
            .list(&ListFilter {
                scope: Some(scope.clone()),
                name: Some(name.to_string()),
                limit: Some(1),
                ..ListFilter::default()
            })
            .await?;
        Ok((found.into_iter().next().map(Arc::new), ReadStamp::UNCHECKED))
    }

    /// [`Store::grants`] with the stamp of the read. The provided implementation stamps
    /// nothing; as for [`Store::find_named`], a store whose grant reads may be stale MUST
    /// override it to stamp them, and [`Store::commit_checked`] to check the stamp.
    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
        Ok((self.grants(credential_id).await?, ReadStamp::UNCHECKED))
    }

    /// [`Store::commit`], but only if no credential or grant changed since the reads that
    /// produced `stamp`; otherwise nothing is written and the error is [`stale_read`]
    /// ([`StoreErrorKind::Stale`](crate::StoreErrorKind::Stale)). The check and the commit
    /// must be one atomic step, and a change made through any handle or process counts.
    ///
    /// The provided implementation ignores the stamp and commits unconditionally. That is
    /// right only for a store whose reads are never stale: every read sees every change
    /// committed before it, whichever handle or process made it. A store whose reads may be
    /// stale MUST stamp them ([`Store::find_named`], [`Store::grants_stamped`]) and override
    /// this method to check the stamp; otherwise callers such as `Vault::resolve` act on
    /// (and audit) data that has already changed. The conformance suite checks this with
    /// two handles over the same data.
    async fn commit_checked(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        let _ = stamp;
        self.commit(batch).await
    }

    /// The audit rows matching `query` (see [`AuditQuery`]: filters by credential, actor,
    /// action, outcome and time, a `seq` cursor, oldest or newest first, a limit). The
    /// provided implementation scans the chain with [`Store::audit_range`]
    /// ([`audit_query_by_scan`]); a store may override it with a query of its own, which must
    /// return the same rows in the same order (the conformance suite compares them). A row
    /// that does not decode fails the read with [`Error::CorruptAuditRow`] naming it.
    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        audit_query_by_scan(self, query).await
    }

    /// Up to `limit` rows from `from`, reduced to what chain verification needs (see
    /// [`AuditDigest`]). The provided implementation decodes rows with
    /// [`Store::audit_range`] and hashes them; a store may override it with a faster path
    /// that hashes rows straight from storage (it must agree with the provided one).
    async fn audit_digests(&self, from: u64, limit: usize) -> Result<Vec<AuditDigest>> {
        digests_from_records(self, from, limit).await
    }
}

/// The default [`Store::audit_digests`]: reads rows with [`Store::audit_range`] and hashes
/// them. A row the store cannot decode ends the page as an undecodable digest.
pub async fn digests_from_records<S: Store + ?Sized>(
    store: &S,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditDigest>> {
    match store.audit_range(from, limit).await {
        Ok(rows) => Ok(rows.iter().map(AuditDigest::of).collect()),
        Err(Error::CorruptAuditRow { seq, reason }) if seq >= from => {
            // Read the good rows before it. Rows may be missing below `seq`, so their count
            // is unknown: find the largest limit that stops short of the bad row.
            let (mut lo, mut hi) = (0usize, ((seq - from) as usize).min(limit));
            let mut best = Vec::new();
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                match store.audit_range(from, mid).await {
                    Ok(rows) => {
                        best = rows;
                        lo = mid;
                    }
                    Err(Error::CorruptAuditRow { .. }) => hi = mid - 1,
                    Err(e) => return Err(e),
                }
            }
            if best.len() != lo {
                best = store.audit_range(from, lo).await?;
            }
            let mut out: Vec<AuditDigest> = best.iter().map(AuditDigest::of).collect();
            out.push(AuditDigest {
                seq,
                prev_hash: [0; 32],
                hash: [0; 32],
                computed: Err(reason),
            });
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

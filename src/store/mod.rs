//! Storage: the small async `Store` trait (read a credential, list, read the audit range and
//! head, commit an atomic batch) and its implementations.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::encoding::{AuditDigest, AuditRecord, ChainHead};
use crate::audit::event::AuditEvent;
use crate::error::{Error, Result};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Record, RecordKey, Scope, ScopeKind,
    Timestamp,
};

pub mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod rules;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, WriterStats};

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

/// The error [`Store::commit_checked`] returns when a stamped read went stale.
pub fn stale_read() -> crate::Error {
    crate::Error::store(
        crate::StoreErrorKind::Stale,
        "the data changed after it was read; read again and retry",
    )
}

/// What a successful commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitReceipt {
    /// Sequence numbers given to this batch's events (`None` when it had none).
    pub seqs: Option<(u64, u64)>,
    /// The chain head right after this batch (it may have moved on since).
    pub head: Option<ChainHead>,
}

/// A value bound to a SQL placeholder by the SQL stores.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    /// Text.
    Text(String),
    /// A 64-bit integer.
    Int(i64),
}

/// The `expires_at` (milliseconds) of a credential's metadata text as stores kept it before
/// it had a column of its own, and the metadata text without it; `None` when the text does
/// not decode or holds no integer `expires_at` (such a row is left as it is).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn split_old_expiry(metadata: &str) -> Option<(i64, String)> {
    const OLD_KEY: &str = "expires_at";
    let mut map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(metadata).ok()?;
    let at: i64 = map.get(OLD_KEY)?.parse().ok()?;
    map.remove(OLD_KEY);
    Some((at, serde_json::to_string(&map).ok()?))
}

/// Which credentials to list. Every set field must match; results come in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exactly this scope (kind and owner).
    pub scope: Option<Scope>,
    /// Any scope of this kind.
    pub scope_kind: Option<ScopeKind>,
    /// This name (`ref`).
    pub name: Option<String>,
    /// This provider.
    pub provider: Option<String>,
    /// This handler type (`oauth2`, `api_key`, …).
    pub handler_type: Option<String>,
    /// Only credentials whose `expires_at` is set and earlier than this (strictly): what a
    /// refresher has to renew, found without decrypting anything.
    pub expires_before: Option<Timestamp>,
    /// This lifecycle state (as stored: a credential past its `expires_at` is still stored
    /// as `filled` or `valid`; use `expires_before` to find it).
    pub state: Option<LifecycleState>,
    /// Wrapped by this master key.
    pub key_id: Option<String>,
    /// Wrapped by any master key but this one (what re-wrapping still has to do).
    pub key_id_not: Option<String>,
    /// Only ids greater than this one (for paging).
    pub after_id: Option<CredentialId>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Does `record` match every set field (except `limit`)?
    pub fn matches(&self, record: &CredentialRecord) -> bool {
        self.scope.as_ref().is_none_or(|s| *s == record.scope)
            && self.scope_kind.is_none_or(|k| k == record.scope.kind())
            && self.name.as_ref().is_none_or(|n| *n == record.name)
            && self.provider.as_ref().is_none_or(|p| *p == record.provider)
            && self
                .handler_type
                .as_ref()
                .is_none_or(|h| *h == record.handler_type)
            && self
                .expires_before
                .is_none_or(|t| record.expires_at.is_some_and(|at| at < t))
            && self.state.is_none_or(|s| s == record.state)
            && self.key_id.as_ref().is_none_or(|k| *k == record.key_id)
            && self.key_id_not.as_ref().is_none_or(|k| *k != record.key_id)
            && self.after_id.as_ref().is_none_or(|a| record.id > *a)
    }

    /// The filter as SQL conditions on the credential columns, `(column and operator,
    /// value)`, for the SQL stores to add their placeholders to.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn sql_conditions(&self) -> Vec<(&'static str, SqlValue)> {
        use SqlValue::{Int, Text};
        let mut out = Vec::new();
        if let Some(scope) = &self.scope {
            out.push(("scope_kind =", Text(scope.kind().as_str().to_string())));
            out.push(("owner =", Text(scope.owner())));
        }
        if let Some(kind) = self.scope_kind {
            out.push(("scope_kind =", Text(kind.as_str().to_string())));
        }
        if let Some(name) = &self.name {
            out.push(("name =", Text(name.clone())));
        }
        if let Some(provider) = &self.provider {
            out.push(("provider =", Text(provider.clone())));
        }
        if let Some(handler_type) = &self.handler_type {
            out.push(("handler_type =", Text(handler_type.clone())));
        }
        if let Some(before) = self.expires_before {
            // `NULL < x` is not true, so credentials without an expiry never match.
            out.push(("expires_at <", Int(before.0)));
        }
        if let Some(state) = self.state {
            out.push(("state =", Text(state.as_str().to_string())));
        }
        if let Some(key_id) = &self.key_id {
            out.push(("key_id =", Text(key_id.clone())));
        }
        if let Some(key_id) = &self.key_id_not {
            out.push(("key_id <>", Text(key_id.clone())));
        }
        if let Some(after) = &self.after_id {
            out.push(("id >", Text(after.as_str().to_string())));
        }
        out
    }

    /// Only this scope.
    pub fn in_scope(scope: Scope) -> ListFilter {
        ListFilter {
            scope: Some(scope),
            ..ListFilter::default()
        }
    }
}

/// Which records to list. Every set field must match; results come ordered by kind, owner
/// and key, each compared byte by byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this owner.
    pub owner: Option<String>,
    /// Only records whose `expires_at` is set and earlier than this (strictly).
    pub expires_before: Option<Timestamp>,
    /// Only records after this one in the listing order (for paging: pass the last key of
    /// the previous page).
    pub after: Option<RecordKey>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl RecordFilter {
    /// Records of this kind.
    pub fn kind(kind: impl Into<String>) -> RecordFilter {
        RecordFilter {
            kind: Some(kind.into()),
            ..RecordFilter::default()
        }
    }

    /// Only this owner's.
    pub fn owner(mut self, owner: impl Into<String>) -> RecordFilter {
        self.owner = Some(owner.into());
        self
    }

    /// Only those with an `expires_at` earlier than `at`.
    pub fn expires_before(mut self, at: Timestamp) -> RecordFilter {
        self.expires_before = Some(at);
        self
    }

    /// Only those that have expired at `now` ([`Record::is_expired_at`]: `expires_at` is
    /// `now` or earlier).
    pub fn expired_at(self, now: Timestamp) -> RecordFilter {
        self.expires_before(Timestamp(now.0.saturating_add(1)))
    }

    /// Only those after `key` in the listing order.
    pub fn after(mut self, key: RecordKey) -> RecordFilter {
        self.after = Some(key);
        self
    }

    /// At most `limit`.
    pub fn limit(mut self, limit: usize) -> RecordFilter {
        self.limit = Some(limit);
        self
    }

    /// Does `record` match every set field (except `limit`)?
    pub fn matches(&self, record: &Record) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == record.kind)
            && self.owner.as_ref().is_none_or(|o| *o == record.owner)
            && self
                .expires_before
                .is_none_or(|t| record.expires_at.is_some_and(|at| at < t))
            && self.after.as_ref().is_none_or(|a| {
                (a.kind.as_str(), a.owner.as_str(), a.key.as_str())
                    < (
                        record.kind.as_str(),
                        record.owner.as_str(),
                        record.key.as_str(),
                    )
            })
    }

    /// The filter as a SQL `WHERE` condition on the record columns (`1 = 1` when empty) and
    /// its values; `placeholder(n)` writes the n-th placeholder (from 1).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn sql_where(&self, placeholder: fn(usize) -> String) -> (String, Vec<SqlValue>) {
        let mut clauses = Vec::new();
        let mut values = Vec::new();
        let mut bind = |value: SqlValue| {
            values.push(value);
            placeholder(values.len())
        };
        if let Some(kind) = &self.kind {
            clauses.push(format!("kind = {}", bind(SqlValue::Text(kind.clone()))));
        }
        if let Some(owner) = &self.owner {
            clauses.push(format!("owner = {}", bind(SqlValue::Text(owner.clone()))));
        }
        if let Some(before) = self.expires_before {
            clauses.push(format!("expires_at < {}", bind(SqlValue::Int(before.0))));
        }
        if let Some(after) = &self.after {
            let (k, o, key) = (
                bind(SqlValue::Text(after.kind.clone())),
                bind(SqlValue::Text(after.owner.clone())),
                bind(SqlValue::Text(after.key.clone())),
            );
            clauses.push(format!("(kind, owner, key) > ({k}, {o}, {key})"));
        }
        if clauses.is_empty() {
            clauses.push("1 = 1".into());
        }
        (clauses.join(" AND "), values)
    }
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

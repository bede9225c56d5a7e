//! Leases: one holder at a time for a piece of work (refreshing one credential, rotating one
//! token), across every instance that shares the store.
//!
//! A lease is a [`Record`] of kind [`LEASE_KIND`] whose body names its holder and whose
//! `expires_at` ends it. It needs no API of its own, only the store's preconditions:
//!
//! 1. Read the lease ([`Store::record`](super::Store::record)) and ask [`Lease::claim`] for the mutation that
//!    claims it: create-only when there is none, if-version when the one there has expired
//!    (or is the holder's own, which renews it). `None` means someone else holds it.
//! 2. Commit that mutation. Of any number of instances claiming at once, exactly one commit
//!    lands; the others fail with [`Lease::lost_race`] errors.
//! 3. Do the work, then commit its result **together with** [`Lease::release`] (an
//!    if-version delete) in one batch. If the lease expired meanwhile and someone else
//!    claimed it, the release fails and so does the whole batch: a holder that lost its
//!    lease never writes what the lease guarded.
//!
//! ```
//! use std::time::Duration;
//! use strongroom::store::lease::Lease;
//! use strongroom::{Batch, MemoryStore, Store, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> strongroom::Result<()> {
//! let store = MemoryStore::new();
//! let key = Lease::key("refresh", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")?;
//! let ttl = Duration::from_secs(60);
//!
//! let current = store.record(&key).await?;
//! let Some(claim) = Lease::claim(&key, current.as_ref(), "instance-a", Timestamp::now(), ttl)?
//! else {
//!     return Ok(()); // someone else is refreshing it
//! };
//! match store.commit(Batch { mutations: vec![claim.mutation], events: vec![] }).await {
//!     Ok(_) => {}
//!     Err(e) if Lease::lost_race(&e) => return Ok(()), // another instance was faster
//!     Err(e) => return Err(e),
//! }
//!
//! // Another instance finds it held.
//! let current = store.record(&key).await?;
//! assert!(Lease::claim(&key, current.as_ref(), "instance-b", Timestamp::now(), ttl)?.is_none());
//!
//! // ... refresh the credential, then store the result and release the lease at once:
//! let mutations = vec![/* Mutation::Put { .. } of the refreshed credential, */ claim.lease.release()];
//! store.commit(Batch { mutations, events: vec![] }).await?;
//! assert!(store.record(&key).await?.is_none());
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use super::{Mutation, Precondition};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{validate_record_part, Record, RecordKey, Timestamp};

/// The record kind of leases.
pub const LEASE_KIND: &str = "lease";

/// A lease as claimed or read: who holds it, until when, at which record version.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    record: Record,
    holder: String,
}

/// What [`Lease::claim`] gives: the lease as it will be once the mutation commits, and the
/// mutation that claims it.
#[derive(Debug, Clone)]
pub struct LeaseClaim {
    /// The lease once claimed (pass it to [`Lease::release`] with the guarded work).
    pub lease: Lease,
    /// The put that claims it; commit it before doing the work.
    pub mutation: Mutation,
}

impl Lease {
    /// The key of the lease named `key` of `owner` (kind [`LEASE_KIND`]), e.g.
    /// `Lease::key("refresh", credential_id)`.
    pub fn key(owner: impl Into<String>, key: impl Into<String>) -> Result<RecordKey> {
        RecordKey::new(LEASE_KIND, owner, key)
    }

    /// Reads a lease record: kind [`LEASE_KIND`], a body `{"holder": "…"}` and an expiry.
    pub fn from_record(record: Record) -> Result<Lease> {
        let not_a_lease =
            |why: &str| Error::invalid("lease", format!("{}: {why}", record.describe()));
        if record.kind != LEASE_KIND {
            return Err(not_a_lease("its kind is not `lease`"));
        }
        let holder = record
            .body
            .get("holder")
            .and_then(|h| h.as_str())
            .ok_or_else(|| not_a_lease("its body has no `holder`"))?
            .to_string();
        if record.expires_at.is_none() {
            return Err(not_a_lease("it has no expiry"));
        }
        Ok(Lease { record, holder })
    }

    /// The mutation that claims the lease `key` for `holder` from `now` for `ttl`, given
    /// what the store holds (`current`, from [`Store::record`](super::Store::record)): a create-only put when
    /// there is no lease, an if-version put of the next version when the lease there has
    /// expired at `now` or is `holder`'s own (a renewal). `None` while someone else holds
    /// it. A record under the key that is not a readable lease counts as expired.
    ///
    /// `holder` names one claimant (an instance id and task, say); two claimants with the
    /// same name would each take the other's lease for their own.
    pub fn claim(
        key: &RecordKey,
        current: Option<&Record>,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<LeaseClaim>> {
        key.validate()?;
        validate_record_part("lease holder", holder)?;
        if ttl.is_zero() {
            return Err(Error::invalid("lease ttl", "must be longer than zero"));
        }
        if key.kind != LEASE_KIND {
            return Err(Error::invalid(
                "lease",
                format!("{key} is not a lease (kind `{LEASE_KIND}`); use Lease::key"),
            ));
        }
        if let Some(current) = current {
            if current.record_key() != *key {
                return Err(Error::invalid(
                    "lease",
                    format!("the record read is {}, not {key}", current.describe()),
                ));
            }
        }
        let body = serde_json::json!({ "holder": holder });
        let expires_at = Some(now.saturating_add(ttl));
        let (record, precondition) = match current {
            None => {
                let mut record = Record::new(key.clone(), body, now);
                record.expires_at = expires_at;
                (record, Precondition::CreateOnly)
            }
            Some(current) => {
                let claimable = match Lease::from_record(current.clone()) {
                    Ok(lease) => lease.is_expired_at(now) || lease.holder == holder,
                    Err(_) => true,
                };
                if !claimable {
                    return Ok(None);
                }
                let mut record = current.next_version(now);
                record.body = body;
                record.expires_at = expires_at;
                (record, Precondition::IfVersion(current.version))
            }
        };
        Ok(Some(LeaseClaim {
            lease: Lease {
                record: record.clone(),
                holder: holder.to_string(),
            },
            mutation: Mutation::PutRecord {
                record,
                precondition,
            },
        }))
    }

    /// [`Lease::claim`] by this lease's holder over this lease: the mutation that extends it
    /// to `now + ttl` (an if-version put; it fails if the lease changed since).
    pub fn renew(&self, now: Timestamp, ttl: Duration) -> Result<LeaseClaim> {
        let key = self.record.record_key();
        Lease::claim(&key, Some(&self.record), &self.holder, now, ttl)?
            .ok_or_else(|| Error::invalid("lease", "a holder can always renew its own lease"))
    }

    /// The mutation that releases the lease: an if-version delete. Commit it in the batch
    /// that stores the work the lease guarded, so that neither lands if the lease was lost.
    pub fn release(&self) -> Mutation {
        Mutation::delete_record(&self.record)
    }

    /// Is `error` (from committing a claim, a renewal or a release) the sign that someone
    /// else got there first — the lease exists already, or changed since it was read?
    pub fn lost_race(error: &Error) -> bool {
        matches!(
            error.kind(),
            ErrorKind::AlreadyExists | ErrorKind::VersionConflict
        )
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// When it ends.
    pub fn expires_at(&self) -> Timestamp {
        // `from_record` and `claim` make sure it is set.
        self.record.expires_at.unwrap_or(Timestamp(i64::MIN))
    }

    /// The record version the lease is at.
    pub fn version(&self) -> u64 {
        self.record.version
    }

    /// The record behind it.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Has it ended at `now` (its expiry is `now` or earlier)?
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.record.is_expired_at(now)
    }
}

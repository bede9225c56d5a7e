//! The store conformance suite (feature `conformance`): every `Store` — the bundled ones and
//! any third-party one — must pass it. Each check takes a fresh, empty store and panics with
//! a message naming the broken rule.
//!
//! [`run_all`] takes a factory called once per check. A store that can be opened twice over
//! the same data (another connection, another instance on the same file or database) returns
//! two handles, so that [`fresh_reads_across_handles`] can catch reads that miss the other
//! handle's writes:
//!
//! ```ignore
//! strongroom::conformance::run_all(|| async {
//!     let place = MyStore::fresh_place(); // a new, empty database for this check
//!     let first = Arc::new(MyStore::open(&place).await) as Arc<dyn Store>;
//!     let second = Arc::new(MyStore::open(&place).await) as Arc<dyn Store>;
//!     (first, second)
//! })
//! .await;
//! ```
//!
//! A store whose data lives in the handle itself (nothing else can open it) returns the one
//! handle, `Arc::new(MyStore::new()) as Arc<dyn Store>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::audit::{Action, AuditEvent, AuditTarget};
use crate::model::{CredentialId, CredentialRecord, LifecycleState, Scope, Timestamp};
use crate::store::{Batch, Mutation, Precondition, Store};

mod audit;
mod credentials;
mod freshness;
mod leases;
mod records;
mod scopes;

pub use audit::{audit_chain, audit_queries, concurrent_commits};
pub use credentials::{
    atomicity, grants, list_filters, names_unique_within_scope, precondition_conflicts, round_trip,
};
pub use freshness::{fresh_reads_across_handles, stamped_reads};
use freshness::{is_stale, stamps, FRESH_ATTEMPTS};
pub use leases::lease_claimers;
pub use records::{
    record_filters, record_only_batches_keep_stamps, record_preconditions, record_round_trip,
    records_atomic_with_credentials, sample_stored_record,
};
pub use scopes::list_scope_patterns;

/// A plausible record (its `sealed` bytes are opaque to stores, so they are not real).
pub fn sample_record(name: &str, scope: Scope) -> CredentialRecord {
    let now = Timestamp::now();
    CredentialRecord {
        id: CredentialId::generate(),
        name: name.to_string(),
        scope,
        provider: "openai".into(),
        handler_type: "api_key".into(),
        state: LifecycleState::Filled,
        metadata: BTreeMap::from([("label".to_string(), name.to_string())]),
        agent_accessible: false,
        version: 1,
        created_at: now,
        updated_at: now,
        expires_at: None,
        key_id: "local:0000000000000000".into(),
        sealed: vec![1, 2, 3, 4, 5],
    }
}

fn event(action: Action, record: &CredentialRecord) -> AuditEvent {
    AuditEvent::new(
        "conformance",
        action,
        AuditTarget::credential(&record.id, &record.scope),
    )
    .detail("name", record.name.clone())
}

fn put(record: CredentialRecord, precondition: Precondition) -> Batch {
    let action = match precondition {
        Precondition::CreateOnly => Action::Create,
        _ => Action::Update,
    };
    let ev = event(action, &record);
    Batch {
        mutations: vec![Mutation::Put {
            record,
            precondition,
        }],
        events: vec![ev],
    }
}

/// The handles a check runs on: two handles over the same data, `first` and `second`. The
/// checks that need only one use `first`.
///
/// Two handles are two separate openings of one store — another connection, another
/// instance on the same file or database — each with whatever caches an instance keeps.
/// The same handle twice (see [`StoreHandles::single`]) is only honest for a store that
/// cannot be opened twice, such as one whose data lives in the handle itself: through one
/// handle, a cache that misses other writers' changes cannot be told from a fresh read.
#[derive(Debug, Clone)]
pub struct StoreHandles {
    first: Arc<dyn Store>,
    second: Arc<dyn Store>,
}

impl StoreHandles {
    /// Two handles over the same data (separately opened, sharing no cache).
    pub fn pair(first: Arc<dyn Store>, second: Arc<dyn Store>) -> StoreHandles {
        StoreHandles { first, second }
    }

    /// One handle used as both, for a store that cannot be opened twice.
    pub fn single(store: Arc<dyn Store>) -> StoreHandles {
        StoreHandles {
            second: store.clone(),
            first: store,
        }
    }

    /// The handle that reads (and the one the single-handle checks use).
    pub fn first(&self) -> &Arc<dyn Store> {
        &self.first
    }

    /// The handle that changes the data under `first`.
    pub fn second(&self) -> &Arc<dyn Store> {
        &self.second
    }

    /// Are both handles the same object?
    pub fn is_single(&self) -> bool {
        Arc::ptr_eq(&self.first, &self.second)
    }
}

/// One handle used as both ([`StoreHandles::single`]).
impl From<Arc<dyn Store>> for StoreHandles {
    fn from(store: Arc<dyn Store>) -> StoreHandles {
        StoreHandles::single(store)
    }
}

/// Two handles over the same data ([`StoreHandles::pair`]).
impl From<(Arc<dyn Store>, Arc<dyn Store>)> for StoreHandles {
    fn from((first, second): (Arc<dyn Store>, Arc<dyn Store>)) -> StoreHandles {
        StoreHandles::pair(first, second)
    }
}

/// Runs every check, each on a fresh, empty store from `make`.
///
/// `make` returns anything that converts into [`StoreHandles`]: an `Arc<dyn Store>` (one
/// handle, used as both) or `(Arc<dyn Store>, Arc<dyn Store>)` (two handles over the same
/// data; each call of `make` must give a new, empty store, which its two handles share).
///
/// A store that can be opened twice — another connection, another instance on the same file
/// or database — must return two handles: one handle cannot reveal a stale cache, because a
/// store sees its own writes, so a store that serves stale reads to other handles passes
/// [`fresh_reads_across_handles`] through one handle. Only a store that cannot be opened
/// twice (its data lives in the handle, like `MemoryStore`'s) returns one.
pub async fn run_all<F, Fut, H>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
    H: Into<StoreHandles>,
{
    let fresh = || async {
        let handles: StoreHandles = make().await.into();
        handles
    };
    let first_of = |handles: StoreHandles| handles.first;
    round_trip(first_of(fresh().await)).await;
    list_filters(first_of(fresh().await)).await;
    list_scope_patterns(first_of(fresh().await)).await;
    precondition_conflicts(first_of(fresh().await)).await;
    names_unique_within_scope(first_of(fresh().await)).await;
    atomicity(first_of(fresh().await)).await;
    audit_chain(first_of(fresh().await)).await;
    audit_queries(first_of(fresh().await)).await;
    grants(first_of(fresh().await)).await;
    concurrent_commits(first_of(fresh().await), 32, 20).await;
    stamped_reads(first_of(fresh().await)).await;
    fresh_reads_across_handles(fresh().await).await;
    record_round_trip(fresh().await).await;
    record_preconditions(first_of(fresh().await)).await;
    records_atomic_with_credentials(fresh().await).await;
    record_filters(first_of(fresh().await)).await;
    lease_claimers(fresh().await, 32).await;
    record_only_batches_keep_stamps(fresh().await).await;
}
